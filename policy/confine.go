package policy

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// Bounds on the files of a config directory (docs/admins.md, "Where config
// files may live"): a config file is something an admin wrote, so a file
// far larger than that is a mistake or an attack on the gateway's memory.
const (
	defaultMaxFileBytes = 4 << 20
	// maxMaxFileBytes bounds config.max_file_bytes itself.
	maxMaxFileBytes = 64 << 20
	// maxLinkHops bounds the symbolic links followed for one path, as the
	// kernel does (ELOOP).
	maxLinkHops = 40
)

// fileRules are gateway.yaml's config section as the file reader needs it:
// read before anything else, since it bounds the reading of everything
// else. Values that do not validate leave the defaults here; the builder
// reports them at their line.
type fileRules struct {
	maxBytes   int64
	allowPaths []string // as written: absolute, or relative to the config directory
}

// peekFileRules reads the config section from gateway.yaml's data without
// judging the rest of the file. Anything wrong with it leaves the
// defaults, which are the strictest rules.
func peekFileRules(data []byte) fileRules {
	r := fileRules{maxBytes: defaultMaxFileBytes}
	var gf struct {
		Config configSectionFile `yaml:"config"`
	}
	if yaml.Unmarshal(data, &gf) != nil {
		return r
	}
	if s := gf.Config.MaxFileBytes; s != nil && *s > 0 && *s <= maxMaxFileBytes {
		r.maxBytes = int64(*s)
	}
	for _, p := range gf.Config.AllowPaths {
		if validAllowPath(p) {
			r.allowPaths = append(r.allowPaths, p)
		}
	}
	return r
}

// validAllowPath refuses what would switch confinement off: an empty path
// and the root directory.
func validAllowPath(p string) bool {
	return p != "" && filepath.Clean(p) != string(filepath.Separator)
}

// reader reads the files of one config directory under its rules. Every
// file, the YAML and the files it refers to, must resolve — after every
// symbolic link — inside the config directory or an allowed directory, be
// a regular file and hold at most maxBytes: otherwise it is refused
// unread, and its content can appear in no error.
type reader struct {
	fsys     fs.FS
	maxBytes int64
	// root is the config directory's own resolved path; "" when fsys has
	// no directory on disk behind it (the embedded quickstart, tests).
	root  string
	allow []string // allowed directories, resolved
}

func newReader(fsys fs.FS, rules fileRules) *reader {
	r := &reader{fsys: fsys, maxBytes: rules.maxBytes}
	d, onDisk := fsys.(diskDir)
	if onDisk {
		if abs, err := filepath.Abs(d.dir); err == nil {
			if resolved, err := filepath.EvalSymlinks(abs); err == nil {
				r.root = resolved
			}
		}
	}
	for _, p := range rules.allowPaths {
		if !filepath.IsAbs(p) {
			if !onDisk {
				continue // reported by the builder
			}
			p = filepath.Join(d.dir, p)
		}
		if resolved, err := filepath.EvalSymlinks(p); err == nil {
			r.allow = append(r.allow, resolved)
		}
	}
	return r
}

// location is where a file a config names was found.
type location struct {
	// path is the resolved path: on disk for a directory on disk or an
	// allowed directory, else inside fsys.
	path string
	// allowed: in one of config.allow_paths, outside the config directory.
	allowed bool
}

// outsideError is a file that resolves outside the config directory and
// every allowed directory.
type outsideError struct {
	name, resolved string
}

func (e *outsideError) Error() string {
	if e.name == e.resolved {
		return fmt.Sprintf("%s is outside the config directory; move it inside or list its directory in config.allow_paths", e.name)
	}
	return fmt.Sprintf("%s resolves to %s, outside the config directory; move it inside or list its directory in config.allow_paths", e.name, e.resolved)
}

// tooLargeError is a file over config.max_file_bytes.
type tooLargeError struct {
	name      string
	size, max int64 // size -1: more than max, found while reading
}

func (e *tooLargeError) Error() string {
	if e.size < 0 {
		return fmt.Sprintf("%s is larger than config.max_file_bytes (%d bytes)", e.name, e.max)
	}
	return fmt.Sprintf("%s is %d bytes, over config.max_file_bytes (%d bytes)", e.name, e.size, e.max)
}

// read reads the file name: relative to the config directory, or absolute.
func (r *reader) read(name string) ([]byte, location, error) {
	if filepath.IsAbs(name) || r.root != "" {
		return r.readDisk(name)
	}
	rel := path.Clean(filepath.ToSlash(name))
	if !fs.ValidPath(rel) {
		return nil, location{}, fmt.Errorf("%s leaves the config directory; move it inside or list its directory in config.allow_paths", name)
	}
	if rl, ok := r.fsys.(fs.ReadLinkFS); ok {
		resolved, err := resolveInFS(rl, rel)
		if err != nil {
			return nil, location{}, err
		}
		rel = resolved
	}
	f, err := r.fsys.Open(rel)
	if err != nil {
		return nil, location{}, err
	}
	defer f.Close()
	data, err := r.readLimited(f, name)
	return data, location{path: rel}, err
}

// readDisk reads name from disk: the config directory's own files and
// anything absolute. The path is resolved first, then opened through an
// os.Root of the directory it must lie in, so a symbolic link swapped in
// between cannot lead the open elsewhere.
func (r *reader) readDisk(name string) ([]byte, location, error) {
	p := name
	if !filepath.IsAbs(p) {
		if r.root == "" {
			return nil, location{}, fmt.Errorf("%s: no config directory to resolve it against", name)
		}
		p = filepath.Join(r.root, filepath.FromSlash(name))
	}
	resolved, err := filepath.EvalSymlinks(p)
	if err != nil {
		return nil, location{}, err
	}
	base, allowed := "", false
	if r.root != "" && within(resolved, r.root) {
		base = r.root
	} else {
		for _, a := range r.allow {
			if within(resolved, a) {
				base, allowed = a, true
				break
			}
		}
	}
	if base == "" {
		return nil, location{}, &outsideError{name: name, resolved: resolved}
	}
	rel, err := filepath.Rel(base, resolved)
	if err != nil {
		return nil, location{}, err
	}
	f, err := os.OpenInRoot(base, rel)
	if err != nil {
		return nil, location{}, err
	}
	defer f.Close()
	data, err := r.readLimited(f, name)
	return data, location{path: resolved, allowed: allowed}, err
}

// readLimited reads an open file of at most maxBytes without ever holding
// more than maxBytes+1 of it; name is for errors.
func (r *reader) readLimited(f fs.File, name string) ([]byte, error) {
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		// A device or a pipe may never end, or block.
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	if info.Size() > r.maxBytes {
		return nil, &tooLargeError{name: name, size: info.Size(), max: r.maxBytes}
	}
	data, err := io.ReadAll(io.LimitReader(f, r.maxBytes+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > r.maxBytes { // it grew since the stat
		return nil, &tooLargeError{name: name, size: -1, max: r.maxBytes}
	}
	return data, nil
}

// within reports whether the clean absolute path p is dir or inside it.
func within(p, dir string) bool {
	if p == dir {
		return true
	}
	if !strings.HasSuffix(dir, string(filepath.Separator)) {
		dir += string(filepath.Separator)
	}
	return strings.HasPrefix(p, dir)
}

// resolveInFS resolves the symbolic links of name inside fsys, for a file
// system with no directory on disk to check against: links that stay
// inside it are followed (ConfigMap-style "..data" links are relative),
// links that are absolute or climb out of it are refused.
func resolveInFS(fsys fs.ReadLinkFS, name string) (string, error) {
	pending := strings.Split(name, "/")
	done := "."
	for hops := 0; len(pending) > 0; {
		part := pending[0]
		pending = pending[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if done == "." {
				return "", fmt.Errorf("%s leaves the config directory through a symbolic link; move it inside", name)
			}
			done = path.Dir(done)
			continue
		}
		next := path.Join(done, part)
		info, err := fsys.Lstat(next)
		if err != nil {
			return "", err
		}
		if info.Mode()&fs.ModeSymlink == 0 {
			done = next
			continue
		}
		if hops++; hops > maxLinkHops {
			return "", fmt.Errorf("%s: too many levels of symbolic links", name)
		}
		target, err := fsys.ReadLink(next)
		if err != nil {
			return "", err
		}
		target = filepath.ToSlash(target)
		if path.IsAbs(target) || filepath.IsAbs(target) {
			return "", fmt.Errorf("%s leads through a symbolic link to the absolute path %s, which only a config directory on disk can check; use a relative link", name, target)
		}
		pending = append(strings.Split(target, "/"), pending...)
	}
	return done, nil
}
