package policy

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// WatchOptions tune Watch; zero values take the defaults.
type WatchOptions struct {
	// Debounce is the quiet window: a reload waits until no event has
	// arrived for this long, so a file written slowly in place is read
	// once the writer has finished, never half-written, and a burst of
	// events (an editor's save is several) is one reload. Default 150ms.
	Debounce time.Duration
	// MaxWait bounds how long a steady stream of events can put a reload
	// off, counted from the first event of the stream: a file that is
	// written to for ever is still read. Default 2s.
	MaxWait time.Duration
	// Resync reloads periodically whatever the events said: a backstop for
	// lost events. Default 30s. The reload is skipped cheaply when the
	// files' fingerprint is unchanged.
	Resync time.Duration
	// Files returns the files the live policy refers to besides its YAML
	// (Snapshot.Referenced): relative to dir, or absolute. Their
	// directories are watched too, and asked for again after every reload,
	// since a new config may refer to other files. Nil watches only dir
	// and its policy subdirectories.
	Files func() []string
	// Ignore lists files whose changes never call for a reload: what the
	// gateway itself writes, such as an audit log kept in a watched
	// directory, which would otherwise trigger a check on every line.
	Ignore []string
	// Started, if set, is called once the watches are in place: an edit
	// made after it returns is seen. The gateway reports ready only then.
	Started func()
	Logger  *slog.Logger
}

// Watch calls reload whenever something in the config directory dir may
// have changed, until ctx is done. It watches the directory, its tenants/,
// connectors/ and hooks/ subdirectories and the directories of
// opts.Files rather than files. In the config's own directories it never
// filters by file name (only opts.Ignore): editors save by rename, and
// Kubernetes ConfigMap volumes swap a "..data" symlink without ever naming
// the files. In the directories of referenced files, which may be busy
// (/run/secrets, a shared certificate directory), only events naming a
// referenced file, a directory on the way to one, or a ".." entry of such
// a swap count. Watches are renewed after each reload, since a swap
// replaces the directories being watched.
func Watch(ctx context.Context, dir string, opts WatchOptions, reload func(reason string)) error {
	if opts.Debounce <= 0 {
		opts.Debounce = 150 * time.Millisecond
	}
	if opts.Resync <= 0 {
		opts.Resync = 30 * time.Second
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = 2 * time.Second
	}
	opts.MaxWait = max(opts.MaxWait, opts.Debounce)
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs // event names then compare with absolute paths
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	var relevant eventFilter
	rewatch := func() {
		var files []string
		if opts.Files != nil {
			files = opts.Files()
		}
		watchDirs(w, watchedDirs(dir, files), log)
		relevant = newEventFilter(dir, files, opts.Ignore)
	}
	rewatch()
	if opts.Started != nil {
		opts.Started()
	}

	// Every event pushes the reload back to Debounce after it, so a file is
	// read only once the directory has been quiet that long: a save that
	// writes in chunks with pauses shorter than Debounce is read whole (a
	// file cut after its first rule may validate, and would be applied).
	// A stream that never pauses is read MaxWait after its first event,
	// rather than never.
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	var deadline time.Time // of the pending reload; zero when none is pending
	schedule := func() {
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(opts.MaxWait)
		}
		debounce.Reset(min(opts.Debounce, deadline.Sub(now)))
	}
	resync := time.NewTicker(opts.Resync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("config watcher closed")
			}
			if relevant.counts(ev.Name) {
				schedule()
			}
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
			deadline = time.Time{}
			reload("file change")
			rewatch()
		case <-resync.C:
			reload("periodic resync")
			rewatch()
		}
	}
}

// watchedDirs lists the directories to watch: dir and its policy
// subdirectories, and the directory of each file the policy refers to
// (relative to dir, or absolute). A referenced file's directory that is
// missing (removed after the load, or a dangling symlink) is stood in for
// by its nearest existing parent, where its return shows as an event;
// the standard subdirectories need no stand-in, as dir is always watched.
func watchedDirs(dir string, files []string) []string {
	dir = filepath.Clean(dir)
	var dirs []string
	for i, d := range configDirs(dir) {
		if i == 0 || isDir(d) {
			dirs = append(dirs, d)
		}
	}
	for _, f := range files {
		d := filepath.Dir(referencedPath(dir, f))
		for !isDir(d) && filepath.Dir(d) != d {
			d = filepath.Dir(d)
		}
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// eventFilter tells which watch events may change the policy.
type eventFilter struct {
	configDirs map[string]bool // dir and its policy subdirectories: any entry counts
	referenced map[string]bool // referenced files and every directory above them
	ignore     map[string]bool
}

func newEventFilter(dir string, files, ignore []string) eventFilter {
	f := eventFilter{configDirs: map[string]bool{}, referenced: map[string]bool{}, ignore: map[string]bool{}}
	for _, d := range configDirs(dir) {
		f.configDirs[d] = true
	}
	for _, name := range files {
		for p := referencedPath(dir, name); !f.referenced[p]; p = filepath.Dir(p) {
			f.referenced[p] = true
		}
	}
	for _, name := range ignore {
		if abs, err := filepath.Abs(name); err == nil {
			f.ignore[abs] = true
		}
	}
	return f
}

// counts reports whether an event naming path may change the policy.
func (f eventFilter) counts(path string) bool {
	path = filepath.Clean(path)
	switch {
	case f.ignore[path]:
		return false
	case f.configDirs[path], f.configDirs[filepath.Dir(path)], f.referenced[path]:
		return true
	}
	return strings.HasPrefix(filepath.Base(path), "..") // a ConfigMap-style swap
}

// configDirs lists the config directory dir first, then its policy
// subdirectories, whether they exist or not.
func configDirs(dir string) []string {
	return []string{dir, filepath.Join(dir, TenantsDir), filepath.Join(dir, ConnectorsDir), filepath.Join(dir, "hooks")}
}

// referencedPath is where a file the config names lies: name relative to
// dir, or absolute.
func referencedPath(dir, name string) string {
	if filepath.IsAbs(name) {
		return filepath.Clean(name)
	}
	return filepath.Join(dir, filepath.FromSlash(name))
}

func isDir(path string) bool {
	info, err := os.Stat(path) // follows symlinks: watch where they point now
	return err == nil && info.IsDir()
}

// watchDirs makes dirs the watched set: it drops watches on directories
// no longer wanted, then (re)adds every one so that each follows its
// symlinks to where they point now. Dropping first matters: two names for
// one directory share a single inotify watch, which must not be removed
// on behalf of the name that is going.
func watchDirs(w *fsnotify.Watcher, dirs []string, log *slog.Logger) {
	for _, d := range w.WatchList() {
		if slices.Contains(dirs, d) {
			continue
		}
		// A directory deleted since has lost its watch already.
		if err := w.Remove(d); err != nil && !errors.Is(err, fsnotify.ErrNonExistentWatch) {
			log.Debug("cannot drop config directory watch", "dir", d, "error", err)
		}
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
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
		data, _, err := files.reader.read(name)
		if err != nil {
			return false
		}
		referenced = append(referenced, configFile{name: name, data: data})
	}
	return hashFiles(files, referenced) == s.Hash
}
