package budget

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// CountersFile is the file the file backend keeps in its directory,
// beside the state store's own.
const CountersFile = "budgets.json"

// maxCountersFile bounds what is read back: a larger file is not ours.
const maxCountersFile = 256 << 20

// File is a Backend kept in memory and written whole to CountersFile,
// atomically (a temporary file, fsync, rename), on every Add: a Ledger
// adds once a flush, so a crash loses at most the last flush interval.
// One process per directory, as the state store's file backend it sits
// beside.
type File struct {
	*Memory
	dir string
}

type countersFileContent struct {
	Format   int             `json:"format"`
	Counters []storedCounter `json:"counters"`
}

type storedCounter struct {
	Tenant    string    `json:"tenant"`
	Budget    string    `json:"budget,omitempty"`
	Connector string    `json:"connector,omitempty"`
	Version   int       `json:"version,omitempty"`
	Period    Period    `json:"period"`
	Start     time.Time `json:"start"`
	Counts    Counts    `json:"counts"`
	Price     *Price    `json:"price,omitempty"`
}

// NewFile opens the counters kept in dir, creating the directory if
// missing; a file that cannot be read is an error, never a fresh start.
func NewFile(dir string, now func() time.Time) (*File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("budget counters: %w", err)
	}
	f := &File{Memory: NewMemory(now), dir: dir}
	if err := f.read(); err != nil {
		return nil, err
	}
	f.Memory.onChange = f.write
	return f, nil
}

func (f *File) read() error {
	path := filepath.Join(f.dir, CountersFile)
	file, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("budget counters: %w", err)
	}
	defer file.Close()
	data, err := io.ReadAll(io.LimitReader(file, maxCountersFile+1))
	if err != nil {
		return fmt.Errorf("budget counters %s: %w", path, err)
	}
	if len(data) > maxCountersFile {
		return fmt.Errorf("budget counters %s: larger than %d bytes", path, maxCountersFile)
	}
	var content countersFileContent
	if err := json.Unmarshal(data, &content); err != nil {
		return fmt.Errorf("budget counters %s: %w", path, err)
	}
	if content.Format != 1 {
		return fmt.Errorf("budget counters %s: format %d, want 1", path, content.Format)
	}
	for _, c := range content.Counters {
		if !c.Period.Valid() {
			return fmt.Errorf("budget counters %s: period %q", path, c.Period)
		}
		k := Key{Tenant: c.Tenant, Budget: c.Budget, Connector: c.Connector, Version: c.Version, Period: c.Period, Start: c.Start.UTC()}
		f.counts[k] = c.Counts
		if c.Price != nil {
			f.prices[k] = *c.Price
		}
	}
	return nil
}

// write writes every counter; called with the Memory's lock held.
func (f *File) write() error {
	content := countersFileContent{Format: 1, Counters: make([]storedCounter, 0, len(f.counts))}
	for k, c := range f.counts {
		sc := storedCounter{Tenant: k.Tenant, Budget: k.Budget, Connector: k.Connector, Version: k.Version, Period: k.Period, Start: k.Start, Counts: c}
		if p, ok := f.prices[k]; ok {
			sc.Price = &p
		}
		content.Counters = append(content.Counters, sc)
	}
	data, err := json.Marshal(content)
	if err != nil {
		return err
	}
	return writeAtomic(f.dir, CountersFile, data)
}

// writeAtomic replaces dir/name with data so that a crash leaves the old
// file or the new one, never a torn one.
func writeAtomic(dir, name string, data []byte) (err error) {
	tmp, err := os.CreateTemp(dir, name+".tmp*")
	if err != nil {
		return fmt.Errorf("budget counters: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("budget counters: %w", err)
	}
	if err = os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("budget counters: %w", err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // best effort: the rename is what makes the write atomic
		d.Close()
	}
	return nil
}
