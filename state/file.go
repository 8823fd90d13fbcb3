package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// DefaultDir is where the file backend keeps its state (state.dir).
const DefaultDir = "./egressgw-state"

// DefaultFlushInterval is how long a count update of an existing access
// request may stay unwritten (see File).
const DefaultFlushInterval = time.Second

// accessFile is the file of access requests and grants inside the
// directory. Other kinds of state get files of their own beside it.
const accessFile = "access.json"

// fileFormat is the format number written and the only one read.
const fileFormat = 1

// maxFileSize bounds what is read back: max_pending requests of bounded
// size fit many times over, and a larger file is not ours.
const maxFileSize = 256 << 20

// FileOptions configures a file backend.
type FileOptions struct {
	Options
	// Dir holds the state; it is created if missing. Empty means
	// DefaultDir.
	Dir string
	// FlushInterval: see File. 0 means DefaultFlushInterval.
	FlushInterval time.Duration
}

// File is the Store of one replica, kept in one directory.
//
// The state is held in memory and written whole, atomically (a temporary
// file, fsync, rename, fsync of the directory), so a crash leaves either
// the old or the new file and never a torn one. A new access request,
// a decision and a grant change are written before the call returns; the
// count, last-seen time, method and path of an existing request are
// written within FlushInterval (and by Close), so a sandbox repeating a
// refused request costs no disk write per refusal, and a crash loses at
// most those updates.
//
// Only one process may use a directory: two replicas each writing the
// whole file would lose each other's changes, so NewFile takes a lock on
// the directory and refuses one that another store holds. Replicas share
// state through the Redis backend.
type File struct {
	opts Options
	dir  string
	path string
	lock *os.File // held until Close: see lockDir

	mu    sync.Mutex
	st    *fileState
	dirty bool // st has updates not yet written

	stop      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once
	closeErr  error
}

var _ Store = (*File)(nil)

// fileState is the content of accessFile in memory.
type fileState struct {
	version  uint64
	requests map[string]AccessRequest // by id
	byKey    map[string]string        // dedupKey -> id
	grants   map[string]Grant         // by id
}

func (s *fileState) clone() *fileState {
	return &fileState{
		version:  s.version,
		requests: maps.Clone(s.requests),
		byKey:    maps.Clone(s.byKey),
		grants:   maps.Clone(s.grants),
	}
}

// fileDoc is the JSON form of accessFile.
type fileDoc struct {
	Format   int             `json:"format"`
	Version  uint64          `json:"version"`
	Requests []AccessRequest `json:"requests"`
	Grants   []Grant         `json:"grants"`
}

// NewFile opens the store in opts.Dir, reading what an earlier run wrote.
// A file that cannot be read or decoded is an error: the caller starts
// without grants rather than with a guess.
func NewFile(opts FileOptions) (*File, error) {
	o, err := opts.Options.withDefaults()
	if err != nil {
		return nil, err
	}
	dir := opts.Dir
	if dir == "" {
		dir = DefaultDir
	}
	flush := opts.FlushInterval
	if flush <= 0 {
		flush = DefaultFlushInterval
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	f := &File{
		opts:    o,
		dir:     dir,
		path:    filepath.Join(dir, accessFile),
		lock:    lock,
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	data, err := readBounded(f.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		f.st = &fileState{requests: map[string]AccessRequest{}, byKey: map[string]string{}, grants: map[string]Grant{}}
	case err != nil:
		lock.Close()
		return nil, fmt.Errorf("state: %w", err)
	default:
		st, err := decodeFile(data)
		if err != nil {
			lock.Close()
			return nil, fmt.Errorf("state: %s: %w", f.path, err)
		}
		f.st = st
	}
	go f.flushLoop(flush)
	return f, nil
}

func readBounded(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if n > maxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes: %w", path, maxFileSize, ErrCorrupt)
	}
	return buf.Bytes(), nil
}

// decodeFile parses and checks accessFile's content. Anything odd (an
// unknown format, a field of the wrong type, an invalid grant, a duplicate
// id) is ErrCorrupt: nothing of a file that is not exactly ours is used.
func decodeFile(data []byte) (*fileState, error) {
	var doc fileDoc
	if err := strictJSON(data, &doc); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if doc.Format != fileFormat {
		return nil, fmt.Errorf("%w: format %d, want %d", ErrCorrupt, doc.Format, fileFormat)
	}
	st := &fileState{
		version:  doc.Version,
		requests: make(map[string]AccessRequest, len(doc.Requests)),
		byKey:    make(map[string]string, len(doc.Requests)),
		grants:   make(map[string]Grant, len(doc.Grants)),
	}
	for _, r := range doc.Requests {
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		k := dedupKey(r.Tenant, r.Host, r.Port)
		if _, dup := st.requests[r.ID]; dup {
			return nil, fmt.Errorf("%w: access request %s twice", ErrCorrupt, r.ID)
		}
		if _, dup := st.byKey[k]; dup {
			return nil, fmt.Errorf("%w: two access requests for one tenant, host and port", ErrCorrupt)
		}
		st.requests[r.ID] = r
		st.byKey[k] = r.ID
	}
	for _, g := range doc.Grants {
		if err := g.validate(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
		}
		if _, dup := st.grants[g.ID]; dup {
			return nil, fmt.Errorf("%w: grant %s twice", ErrCorrupt, g.ID)
		}
		st.grants[g.ID] = g
	}
	return st, nil
}

// encodeFile is the inverse of decodeFile, in a stable order.
func encodeFile(st *fileState) ([]byte, error) {
	doc := fileDoc{
		Format:   fileFormat,
		Version:  st.version,
		Requests: make([]AccessRequest, 0, len(st.requests)),
		Grants:   make([]Grant, 0, len(st.grants)),
	}
	for _, r := range st.requests {
		doc.Requests = append(doc.Requests, r)
	}
	for _, g := range st.grants {
		doc.Grants = append(doc.Grants, g)
	}
	sortRequests(doc.Requests)
	sortGrants(doc.Grants)
	return json.MarshalIndent(doc, "", "  ")
}

// writeAtomic replaces dir/name with data so that a crash leaves the old or
// the new content: write a temporary file, fsync it, rename it over the
// old one, fsync the directory so the rename itself is durable.
func writeAtomic(dir, name string, data []byte) (err error) {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			// The temporary file is ours and useless now; a failure to
			// remove it leaves only litter, and err says what matters.
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return err
	}
	return d.Close()
}

// write stores st; called with f.mu held.
func (f *File) write(st *fileState) error {
	data, err := encodeFile(st)
	if err != nil {
		return fmt.Errorf("state: encoding: %w", err)
	}
	if err := writeAtomic(f.dir, accessFile, data); err != nil {
		return fmt.Errorf("state: writing %s: %w", f.path, err)
	}
	return nil
}

// commit applies change to a copy of the state, writes it and only then
// makes it the state: a change that could not be written is not applied.
func (f *File) commit(change func(st *fileState) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st == nil {
		return errClosed
	}
	st := f.st.clone()
	if err := change(st); err != nil {
		return err
	}
	st.version++
	f.pruneGrants(st)
	if err := f.write(st); err != nil {
		return err
	}
	f.st, f.dirty = st, false
	return nil
}

var errClosed = errors.New("state: store is closed")

// pruneGrants drops the grants that have expired, so the file does not
// grow with them.
func (f *File) pruneGrants(st *fileState) {
	now := f.opts.Now()
	for id, g := range st.grants {
		if !g.Active(now) {
			delete(st.grants, id)
		}
	}
}

// RecordRefusal implements Store.
func (f *File) RecordRefusal(ctx context.Context, s Sighting) (RequestRef, error) {
	return f.sighting(ctx, s, false)
}

// FileRequest implements Store.
func (f *File) FileRequest(ctx context.Context, s Sighting) (RequestRef, error) {
	return f.sighting(ctx, s, true)
}

func (f *File) sighting(_ context.Context, s Sighting, filing bool) (RequestRef, error) {
	s, err := cleanSighting(s)
	if err != nil {
		return RequestRef{}, err
	}
	now := f.opts.Now().UTC()
	key := dedupKey(s.Tenant, s.Host, s.Port)

	f.mu.Lock()
	if f.st == nil {
		f.mu.Unlock()
		return RequestRef{}, errClosed
	}
	if id, ok := f.st.byKey[key]; ok {
		r := f.st.requests[id]
		if !reopens(r, f.st.grantLive(r.GrantID, now), filing) {
			// Only counts and last-seen change: written within
			// FlushInterval, not now.
			fold(&r, s, now)
			f.st.requests[id] = r
			f.dirty = true
			f.mu.Unlock()
			return RequestRef{ID: r.ID, Status: r.Status}, nil
		}
	}
	f.mu.Unlock()

	var ref RequestRef
	err = f.commit(func(st *fileState) error {
		if id, ok := st.byKey[key]; ok {
			r := st.requests[id]
			fold(&r, s, now)
			if reopens(r, st.grantLive(r.GrantID, now), filing) {
				reopenRequest(&r)
			}
			st.requests[id] = r
			ref = RequestRef{ID: r.ID, Status: r.Status}
			return nil
		}
		r := AccessRequest{
			ID: newID("req_"), Tenant: s.Tenant, Host: s.Host, Port: s.Port,
			Count: 1, FirstSeen: now, LastSeen: now, Method: s.Method, Path: s.Path,
			Reason: s.Reason, Status: StatusPending, ReportMode: s.ReportMode,
		}
		st.requests[r.ID] = r
		st.byKey[key] = r.ID
		for len(st.requests) > f.opts.MaxPending {
			evictOldest(st)
		}
		ref = RequestRef{ID: r.ID, Status: r.Status}
		return nil
	})
	return ref, err
}

// fold adds one sighting to r.
func fold(r *AccessRequest, s Sighting, now time.Time) {
	r.Count++
	if now.After(r.LastSeen) {
		r.LastSeen = now
	}
	r.Method, r.Path, r.ReportMode = s.Method, s.Path, s.ReportMode
	if s.Reason != "" {
		r.Reason = s.Reason
	}
}

// reopens reports whether a sighting makes decided request r pending
// again: a filing always does (the tenant asks anew, perhaps with a new
// reason); a refusal only once the grant of an approval has ended, so the
// refusals other replicas make before they apply a new grant (up to 2 s)
// do not undo the approval.
func reopens(r AccessRequest, grantLive, filing bool) bool {
	switch r.Status {
	case StatusApproved:
		return filing || !grantLive
	case StatusDenied:
		return filing
	}
	return false
}

// grantLive reports whether grant id exists and is active at now.
func (st *fileState) grantLive(id string, now time.Time) bool {
	g, ok := st.grants[id]
	return ok && g.Active(now)
}

func reopenRequest(r *AccessRequest) {
	r.Status, r.DecidedBy, r.DecidedAt, r.GrantID = StatusPending, "", time.Time{}, ""
}

// evictOldest drops the least recently seen request. A linear scan: it
// runs only when a new request is written, which rewrites the whole file
// anyway.
func evictOldest(st *fileState) {
	var old AccessRequest
	first := true
	for _, r := range st.requests {
		if first || r.LastSeen.Before(old.LastSeen) || (r.LastSeen.Equal(old.LastSeen) && r.ID < old.ID) {
			old, first = r, false
		}
	}
	delete(st.requests, old.ID)
	delete(st.byKey, dedupKey(old.Tenant, old.Host, old.Port))
}

// ListRequests implements Store.
func (f *File) ListRequests(_ context.Context, flt Filter) ([]AccessRequest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st == nil {
		return nil, errClosed
	}
	out := []AccessRequest{}
	for _, r := range f.st.requests {
		if flt.match(r) {
			out = append(out, r)
		}
	}
	sortRequests(out)
	return out, nil
}

// Approve implements Store.
func (f *File) Approve(_ context.Context, id string, spec GrantSpec) (Grant, error) {
	var g Grant
	err := f.commit(func(st *fileState) error {
		r, ok := st.requests[id]
		if !ok {
			return fmt.Errorf("access request %q: %w", id, ErrNotFound)
		}
		if r.Status != StatusPending {
			return fmt.Errorf("access request %q is %s: %w", id, r.Status, ErrNotPending)
		}
		now := f.opts.Now()
		var err error
		if g, err = newGrant(approveSpec(r, spec), now, f.opts.MaxGrantDuration, r.ID); err != nil {
			return err
		}
		r.Status, r.DecidedBy, r.DecidedAt, r.GrantID = StatusApproved, g.ApprovedBy, now.UTC(), g.ID
		st.requests[id] = r
		st.grants[g.ID] = g
		return nil
	})
	if err != nil {
		return Grant{}, err
	}
	return g, nil
}

// Deny implements Store.
func (f *File) Deny(_ context.Context, id, by string) (AccessRequest, error) {
	if by == "" || len(by) > maxNameLen {
		return AccessRequest{}, fmt.Errorf("%w: deciding needs who decides, 1 to %d bytes", ErrInvalid, maxNameLen)
	}
	var r AccessRequest
	err := f.commit(func(st *fileState) error {
		var ok bool
		if r, ok = st.requests[id]; !ok {
			return fmt.Errorf("access request %q: %w", id, ErrNotFound)
		}
		if r.Status != StatusPending {
			return fmt.Errorf("access request %q is %s: %w", id, r.Status, ErrNotPending)
		}
		r.Status, r.DecidedBy, r.DecidedAt = StatusDenied, by, f.opts.Now().UTC()
		st.requests[id] = r
		return nil
	})
	if err != nil {
		return AccessRequest{}, err
	}
	return r, nil
}

// AddGrant implements Store.
func (f *File) AddGrant(_ context.Context, spec GrantSpec) (Grant, error) {
	g, err := newGrant(spec, f.opts.Now(), f.opts.MaxGrantDuration, "")
	if err != nil {
		return Grant{}, err
	}
	err = f.commit(func(st *fileState) error {
		st.grants[g.ID] = g
		return nil
	})
	if err != nil {
		return Grant{}, err
	}
	return g, nil
}

// RevokeGrant implements Store.
func (f *File) RevokeGrant(_ context.Context, id string) error {
	return f.commit(func(st *fileState) error {
		g, ok := st.grants[id]
		if !ok || !g.Active(f.opts.Now()) {
			return fmt.Errorf("grant %q: %w", id, ErrNotFound)
		}
		delete(st.grants, id)
		return nil
	})
}

// Grants implements Store.
func (f *File) Grants(_ context.Context, now time.Time) ([]Grant, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st == nil {
		return nil, errClosed
	}
	out := []Grant{}
	for _, g := range f.st.grants {
		if g.Active(now) {
			// The caller gets its own slices: the stored grant is not
			// the caller's to change.
			g.Ports, g.Methods, g.Paths = slices.Clone(g.Ports), slices.Clone(g.Methods), slices.Clone(g.Paths)
			out = append(out, g)
		}
	}
	sortGrants(out)
	return out, nil
}

// Version implements Store.
func (f *File) Version(context.Context) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st == nil {
		return 0, errClosed
	}
	return f.st.version, nil
}

// flushLoop writes count updates every interval until Close.
func (f *File) flushLoop(every time.Duration) {
	defer close(f.stopped)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
			f.mu.Lock()
			if f.st != nil && f.dirty {
				// A failure keeps the updates dirty; the next tick, a
				// synchronous write or Close tries again, and Close
				// reports it.
				f.dirty = f.write(f.st) != nil
			}
			f.mu.Unlock()
		}
	}
}

// Close writes the pending count updates and stops the store.
func (f *File) Close() error {
	f.closeOnce.Do(func() {
		close(f.stop)
		<-f.stopped
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.dirty {
			f.closeErr = f.write(f.st)
		}
		f.st = nil
		if err := f.lock.Close(); err != nil && f.closeErr == nil {
			f.closeErr = fmt.Errorf("state: releasing %s: %w", f.dir, err)
		}
	})
	return f.closeErr
}
