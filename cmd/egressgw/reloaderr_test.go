package main

import (
	"testing"
	"time"
)

// /v1/config reads the last load error while a reload, which can take
// seconds on a large policy, runs: it must not wait for that reload.
func TestLastErrorDoesNotWaitForAReload(t *testing.T) {
	r := &reloader{}
	r.setLastError("tenants/acme.yaml:3: unknown key", time.Unix(1, 0))
	r.mu.Lock() // a reload in progress
	defer r.mu.Unlock()
	got := make(chan string, 1)
	go func() {
		msg, _ := r.lastError()
		got <- msg
	}()
	select {
	case msg := <-got:
		if msg != "tenants/acme.yaml:3: unknown key" {
			t.Errorf("last error %q", msg)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reading the last error waited for the reload")
	}
}
