package state

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func newTestFile(t *testing.T, dir string, opts Options) *File {
	t.Helper()
	f, err := NewFile(FileOptions{Options: opts, Dir: dir, FlushInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f
}

func TestFileContract(t *testing.T) {
	testStoreContract(t, func(t *testing.T, opts Options) Store {
		return newTestFile(t, t.TempDir(), opts)
	})
}

func TestFileRestartKeepsState(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	dir := t.TempDir()
	f, err := NewFile(FileOptions{Options: Options{Now: c.Now}, Dir: dir, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pending, err := f.RecordRefusal(ctx, Sighting{Tenant: "t1", Host: "pypi.org", Port: 443, Method: "GET", Path: "/simple/"})
	if err != nil {
		t.Fatal(err)
	}
	// Count updates wait for the flush (an hour here): Close writes them.
	for range 4 {
		if _, err := f.RecordRefusal(ctx, Sighting{Tenant: "t1", Host: "pypi.org", Port: 443, Method: "HEAD", Path: "/last"}); err != nil {
			t.Fatal(err)
		}
	}
	approved, err := f.RecordRefusal(ctx, Sighting{Tenant: "t2", Host: "a.example", Port: 443})
	if err != nil {
		t.Fatal(err)
	}
	g, err := f.Approve(ctx, approved.ID, GrantSpec{ExpiresAt: c.Now().Add(time.Hour), By: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	v, _ := f.Version(ctx)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Grants(ctx, c.Now()); err == nil {
		t.Fatal("Grants on a closed store: no error")
	}

	f2 := newTestFile(t, dir, Options{Now: c.Now})
	rs, err := f2.ListRequests(ctx, Filter{Tenant: "t1"})
	if err != nil || len(rs) != 1 || rs[0].ID != pending.ID || rs[0].Count != 5 || rs[0].Method != "HEAD" || rs[0].Status != StatusPending {
		t.Fatalf("pending requests after restart: %+v, %v", rs, err)
	}
	gs, err := f2.Grants(ctx, c.Now())
	if err != nil || len(gs) != 1 || gs[0].ID != g.ID || !gs[0].ExpiresAt.Equal(g.ExpiresAt) {
		t.Fatalf("grants after restart: %+v, %v; want %s", gs, err, g.ID)
	}
	if v2, _ := f2.Version(ctx); v2 != v {
		t.Fatalf("version %d after restart, want %d", v2, v)
	}
}

// A crash (no Close) loses at most the count updates of the last
// FlushInterval: new requests and grants are on disk when the call returns.
func TestFileWritesBeforeReturning(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	f := newTestFile(t, dir, Options{})
	ref, err := f.RecordRefusal(ctx, Sighting{Tenant: "t1", Host: "a.example", Port: 443})
	if err != nil {
		t.Fatal(err)
	}
	g, err := f.AddGrant(ctx, GrantSpec{Tenant: "t1", Host: "b.example", Ports: []int{443}, ExpiresAt: time.Now().Add(time.Hour), By: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	onDisk := func() *fileState {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(dir, accessFile))
		if err != nil {
			t.Fatal(err)
		}
		st, err := decodeFile(data)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := onDisk()
	if _, ok := st.requests[ref.ID]; !ok {
		t.Fatalf("new request %s not on disk", ref.ID)
	}
	if _, ok := st.grants[g.ID]; !ok {
		t.Fatalf("new grant %s not on disk", g.ID)
	}
	if _, err := f.RecordRefusal(ctx, Sighting{Tenant: "t1", Host: "a.example", Port: 443}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for onDisk().requests[ref.ID].Count != 2 {
		if time.Now().After(deadline) {
			t.Fatal("count update not flushed within 10s (flush interval 50ms)")
		}
		time.Sleep(20 * time.Millisecond)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != accessFile && e.Name() != "lock" {
			t.Errorf("left in the state directory: %s", e.Name())
		}
	}
}

func TestFileCorruptStateGrantsNothing(t *testing.T) {
	exp := time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano)
	grant := `{"id":"gr_x","tenant":"t1","host":"a.example","ports":[443],"expires_at":"` + exp + `","created_at":"2026-01-01T00:00:00Z","approved_by":"a"}`
	for _, tc := range []struct {
		name, content, want string
	}{
		{"not json", "\x00\x01garbage", "invalid character"},
		{"truncated", `{"format":1,"version":3,"grants":[` + grant, "unexpected EOF"},
		{"empty", "", "EOF"},
		{"unknown format", `{"format":2,"version":1,"requests":[],"grants":[` + grant + `]}`, "format 2"},
		{"unknown field", `{"format":1,"version":1,"requests":[],"grants":[],"extra":1}`, "unknown field"},
		{"trailing data", `{"format":1,"version":1,"requests":[],"grants":[]} {}`, "data after"},
		{"port 0 grant", `{"format":1,"version":1,"requests":[],"grants":[` + strings.Replace(grant, "[443]", "[0]", 1) + `]}`, "port 0"},
		{"grant without expiry", `{"format":1,"version":1,"requests":[],"grants":[` + strings.Replace(grant, `"expires_at":"`+exp+`",`, "", 1) + `]}`, "expires_at is required"},
		{"grant twice", `{"format":1,"version":1,"requests":[],"grants":[` + grant + `,` + grant + `]}`, "twice"},
		{"string port", `{"format":1,"version":1,"requests":[],"grants":[` + strings.Replace(grant, "[443]", `["443"]`, 1) + `]}`, "cannot unmarshal"},
		{"bad status", `{"format":1,"version":1,"requests":[{"id":"r","tenant":"t","host":"h","port":1,"count":1,"first_seen":"2026-01-01T00:00:00Z","last_seen":"2026-01-01T00:00:00Z","status":"granted"}],"grants":[]}`, "status"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, accessFile), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := NewFile(FileOptions{Dir: dir})
			if err == nil {
				gs, gerr := f.Grants(context.Background(), time.Now())
				f.Close()
				t.Fatalf("opened a corrupt store; grants %+v, %v", gs, gerr)
			}
			if !errors.Is(err, ErrCorrupt) && tc.name != "empty" {
				t.Errorf("err %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %q, want it to say %q", err, tc.want)
			}
		})
	}
	// The valid document these cases break opens.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, accessFile), []byte(`{"format":1,"version":1,"requests":[],"grants":[`+grant+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newTestFile(t, dir, Options{})
	if gs, err := f.Grants(context.Background(), time.Now()); err != nil || len(gs) != 1 {
		t.Fatalf("valid file: %+v, %v", gs, err)
	}
}

// A change that cannot be written is not applied: the grant is not
// returned, and the caller is told.
func TestFileFailedWriteAppliesNothing(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "state")
	f := newTestFile(t, dir, Options{})
	// Replace the directory by a file: every write fails, for root too.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.AddGrant(ctx, GrantSpec{Tenant: "t1", Host: "a.example", Ports: []int{443}, ExpiresAt: time.Now().Add(time.Hour), By: "a"}); err == nil {
		t.Fatal("AddGrant succeeded without a writable directory")
	}
	if _, err := f.RecordRefusal(ctx, Sighting{Tenant: "t1", Host: "a.example", Port: 443}); err == nil {
		t.Fatal("RecordRefusal succeeded without a writable directory")
	}
	if gs, err := f.Grants(ctx, time.Now()); err != nil || len(gs) != 0 {
		t.Fatalf("grants after a failed write: %+v, %v", gs, err)
	}
	if rs, err := f.ListRequests(ctx, Filter{}); err != nil || len(rs) != 0 {
		t.Fatalf("requests after a failed write: %+v, %v", rs, err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
}

// Two gateways on one directory would lose each other's writes: the second
// is refused until the first closes.
func TestFileOneProcessPerDir(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no flock on windows")
	}
	dir := t.TempDir()
	first, err := NewFile(FileOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if second, err := NewFile(FileOptions{Dir: dir}); err == nil {
		second.Close()
		t.Fatal("a second store opened the directory in use")
	} else if !strings.Contains(err.Error(), "in use by another gateway") {
		t.Fatalf("err %q, want it to say the directory is in use", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := NewFile(FileOptions{Dir: dir})
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
}
