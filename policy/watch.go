package policy

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WatchOptions tune Watch; zero values take the defaults.
type WatchOptions struct {
	// Debounce collects a burst of events (an editor's save is several)
	// into one reload. Default 150ms.
	Debounce time.Duration
	// Resync reloads periodically whatever the events said: a backstop for
	// lost events. Default 30s. The reload is skipped cheaply when the
	// files' fingerprint is unchanged.
	Resync time.Duration
	Logger *slog.Logger
}

// Watch calls reload whenever something in the config directory dir may
// have changed, until ctx is done. It watches the directory and its
// tenants/, connectors/ and hooks/ subdirectories rather than files, and
// never filters by file name: editors save by rename, and Kubernetes
// ConfigMap volumes swap a "..data" symlink without ever naming the files.
// Watches are renewed after each reload, since such a swap replaces the
// directories being watched.
func Watch(ctx context.Context, dir string, opts WatchOptions, reload func(reason string)) error {
	if opts.Debounce <= 0 {
		opts.Debounce = 150 * time.Millisecond
	}
	if opts.Resync <= 0 {
		opts.Resync = 30 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	watchDirs(w, dir, log)

	// The timer starts at the first event of a burst and is not pushed back
	// by later ones: a steady stream of edits still reloads every Debounce,
	// rather than never.
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	pending := false
	schedule := func() {
		if !pending {
			pending = true
			debounce.Reset(opts.Debounce)
		}
	}
	resync := time.NewTicker(opts.Resync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return errors.New("config watcher closed")
			}
			schedule()
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("config watcher closed")
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				schedule() // events were lost: reload fully
				continue
			}
			log.Warn("config watcher error", "error", err)
		case <-debounce.C:
			pending = false
			reload("file change")
			watchDirs(w, dir, log)
		case <-resync.C:
			reload("periodic resync")
			watchDirs(w, dir, log)
		}
	}
}

// watchDirs (re)adds watches on the config directory and its policy
// subdirectories, following symlinks to where they point now.
func watchDirs(w *fsnotify.Watcher, dir string, log *slog.Logger) {
	for _, d := range []string{dir, filepath.Join(dir, TenantsDir), filepath.Join(dir, ConnectorsDir), filepath.Join(dir, "hooks")} {
		info, err := os.Stat(d)
		if err != nil || !info.IsDir() {
			continue
		}
		if err := w.Add(d); err != nil {
			log.Warn("cannot watch config directory", "dir", d, "error", err)
		}
	}
}

// Unchanged reports whether fsys still holds the files s was loaded from —
// the YAML files and every file they refer to (hook scripts, secrets, the
// CA, upstream roots) — reading them without decoding anything: a cheap way
// to tell whether a reload would change anything. A file that cannot be
// read counts as a change, so that the reload that follows reports it.
func (s *Snapshot) Unchanged(fsys fs.FS) bool {
	files, err := readConfigFiles(fsys)
	if err != nil {
		return false
	}
	referenced := make([]configFile, 0, len(s.referenced))
	for _, name := range s.referenced {
		data, err := readReferenced(fsys, name)
		if err != nil {
			return false
		}
		referenced = append(referenced, configFile{name: name, data: data})
	}
	return hashFiles(files, referenced) == s.Hash
}
