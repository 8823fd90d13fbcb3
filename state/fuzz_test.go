package state

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// FuzzDecodeFile feeds arbitrary bytes to the file backend's decoder, the
// one piece that reads what may have been edited or damaged on disk. What it
// accepts must be valid through and through and must survive a write and a
// read unchanged; what it refuses must be refused without a panic.
func FuzzDecodeFile(f *testing.F) {
	// A real file, written by the backend.
	dir := f.TempDir()
	s, err := NewFile(FileOptions{Dir: dir})
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	ref, err := s.RecordRefusal(ctx, Sighting{Tenant: "t1", Host: "pypi.org", Port: 443, Method: "GET", Path: "/simple/", ReportMode: true})
	if err != nil {
		f.Fatal(err)
	}
	if _, err := s.Approve(ctx, ref.ID, GrantSpec{Methods: []string{"GET"}, Paths: []string{"/simple/"}, ExpiresAt: time.Now().Add(time.Hour), By: "alice", Note: "ü"}); err != nil {
		f.Fatal(err)
	}
	if _, err := s.FileRequest(ctx, Sighting{Tenant: "t2", Host: "a.example", Port: 8443, Reason: "need it"}); err != nil {
		f.Fatal(err)
	}
	s.mu.Lock()
	data, err := encodeFile(s.st)
	s.mu.Unlock()
	if err != nil {
		f.Fatal(err)
	}
	if err := s.Close(); err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add([]byte(`{"format":1,"version":0,"requests":[],"grants":[]}`))
	f.Add([]byte(`{"format":1,"version":1,"requests":null,"grants":[{"id":"g","tenant":"t","host":"h","ports":[1],"expires_at":"2030-01-01T00:00:00Z","created_at":"2026-01-01T00:00:00Z","approved_by":"a"}]}`))
	f.Add([]byte(`{"format":1,"grants":[{"ports":[0]}]}`))
	f.Add([]byte(`{"format":1} x`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := decodeFile(data)
		if err != nil {
			return
		}
		for _, g := range st.grants {
			if err := g.validate(); err != nil {
				t.Fatalf("accepted an invalid grant %+v: %v", g, err)
			}
		}
		for _, r := range st.requests {
			if err := r.validate(); err != nil {
				t.Fatalf("accepted an invalid request %+v: %v", r, err)
			}
		}
		enc, err := encodeFile(st)
		if err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		st2, err := decodeFile(enc)
		if err != nil {
			t.Fatalf("re-reading what was written: %v\n%s", err, enc)
		}
		enc2, err := encodeFile(st2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("a write and a read changed the state:\n%s\n%s", enc, enc2)
		}
	})
}
