package proxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// auditReports tells the operator about audit output trouble: a failed
// write once per run of failures, and dropped lines when they start and
// when they end (docs/operators.md, "When the audit disk fails").
func auditReports(log *slog.Logger, reg prometheus.Registerer) auditOptions {
	return auditOptions{
		registry: reg,
		onError: func(err error) {
			log.Error("audit log write failed; retrying every 100 ms, lines are kept (up to 8 MiB) until it works", "error", err)
		},
		onDrop: func(dropped int64, ended bool) {
			if !ended {
				log.Error("audit backlog full for 1s: dropping audit lines until the output takes writes again (egressgw_audit_dropped_lines_total)")
				return
			}
			log.Warn("audit output takes writes again", "dropped_lines", dropped)
		},
	}
}

// SetAuditOutput sends the audit log to w from now on: every line not yet
// written goes to w, none is written twice. Once it returns, the previous
// output gets no more writes, so the caller may close it.
func (g *Gateway) SetAuditOutput(w io.Writer) {
	g.audit.setOutput(w)
}

// auditCheckEvery is how often an AuditFile checks that its path still
// names the file it writes: a stat a second, not one per write.
const auditCheckEvery = time.Second

// AuditFile is the audit log's file, reopened at its path when the path no
// longer names the open file (renamed or removed: logrotate without
// copytruncate) and on Reopen (SIGHUP). Lines written between a rename
// and the next check land in the renamed file, so a rotation loses none.
type AuditFile struct {
	path       string
	checkEvery time.Duration

	mu      sync.Mutex
	f       *os.File // nil after a failed reopen: the next write tries again
	info    os.FileInfo
	checked time.Time
}

// OpenAuditFile opens path for appending, creating it if need be.
func OpenAuditFile(path string) (*AuditFile, error) {
	a := &AuditFile{path: path, checkEvery: auditCheckEvery}
	if _, err := a.open(); err != nil {
		return nil, err
	}
	return a, nil
}

// Path is the file's path as given to OpenAuditFile.
func (a *AuditFile) Path() string { return a.path }

// open (re)opens the path; a.mu is held or a is not shared yet. It
// returns the previous file, for the caller to close, or nil.
func (a *AuditFile) open() (*os.File, error) {
	f, err := os.OpenFile(a.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	info, err := f.Stat()
	if err != nil {
		return nil, errors.Join(err, f.Close())
	}
	prev := a.f
	a.f, a.info, a.checked = f, info, time.Now()
	return prev, nil
}

// Write appends p to the file the path names, reopening it first if the
// path has named another file (or none) since the last check.
func (a *AuditFile) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil || time.Since(a.checked) >= a.checkEvery {
		a.checked = time.Now()
		if a.f == nil || !a.stillNamed() {
			prev, err := a.open()
			if err != nil {
				// The path cannot be opened again (its directory is
				// gone, no permission): fail rather than write on into
				// a file nobody may read; the lines are kept and the
				// next write tries again.
				if a.f != nil {
					err = errors.Join(err, a.f.Close())
					a.f = nil
				}
				return 0, fmt.Errorf("reopen audit file: %w", err)
			}
			if prev != nil {
				if err := prev.Close(); err != nil {
					// Lines already written may be lost (a network file
					// system reports write errors at close).
					return 0, fmt.Errorf("close the replaced audit file: %w", err)
				}
			}
		}
	}
	return a.f.Write(p)
}

// stillNamed reports whether the path names the open file.
func (a *AuditFile) stillNamed() bool {
	cur, err := os.Stat(a.path)
	return err == nil && os.SameFile(cur, a.info)
}

// Reopen opens the path again and closes the file it replaces. If the
// path cannot be opened, the current file stays in use.
func (a *AuditFile) Reopen() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	prev, err := a.open()
	if err != nil {
		return err
	}
	if prev != nil {
		return prev.Close()
	}
	return nil
}

// Close closes the file; a later Write reopens it.
func (a *AuditFile) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return nil
	}
	err := a.f.Close()
	a.f = nil
	return err
}
