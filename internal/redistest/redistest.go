// Package redistest starts real redis-server processes for the tests of
// the packages that keep state in Redis (quota, state). It is for tests
// only: no mock stands in for Redis where the real one can run.
package redistest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a redis-server on a free loopback port, private to one test,
// without persistence. It can be stopped and started again on the same
// port, as a restart that loses every key.
type Server struct {
	Addr string // 127.0.0.1:PORT

	tb    testing.TB
	bin   string
	dir   string
	port  int
	extra []string // more redis-server arguments

	mu  sync.Mutex
	cmd *exec.Cmd
	out *bytes.Buffer
}

// Start starts a redis-server for tb, with extra arguments, and stops it
// at the end of the test. It skips only when the binary is not installed.
func Start(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Skip("redis-server not installed (apt-get install redis-server): Redis backend not tested")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		tb.Fatal(err)
	}
	s := &Server{tb: tb, bin: bin, dir: tb.TempDir(), port: port, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), extra: extra}
	s.Start()
	tb.Cleanup(s.Stop)
	return s
}

// Start runs redis-server (again) on the server's port and waits until it
// answers.
func (s *Server) Start() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out = &bytes.Buffer{}
	s.cmd = exec.Command(s.bin, append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir}, s.extra...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatalf("starting redis-server: %v", err)
	}
	client := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DisableIdentity: true})
	defer client.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := client.Ping(context.Background()).Err()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("redis-server on %s did not answer: %v\n%s", s.Addr, err, s.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills redis-server, as a crash would; its keys are gone.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	if err := s.cmd.Process.Kill(); err != nil {
		s.tb.Errorf("stopping redis-server: %v", err)
	}
	// Killed on purpose: the exit status says so and is not an error here.
	_ = s.cmd.Wait()
	s.cmd = nil
}

// UniquePrefix is a key prefix that keeps tests sharing one server apart.
func UniquePrefix(tb testing.TB) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return "egressgw-test-" + hex.EncodeToString(b) + ":"
}
