package proxy

import (
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"
)

func TestHasUnreadInput(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("only Linux tells unread input apart")
	}
	client, server := tcpPair(t)
	if hasUnreadInput(server) {
		t.Fatal("unread input on a connection nothing was sent on")
	}
	if _, err := io.WriteString(client, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return hasUnreadInput(server) })
	if _, err := io.ReadFull(server, make([]byte, len("GET / HTTP/1.1\r\n\r\n"))); err != nil {
		t.Fatal(err)
	}
	if hasUnreadInput(server) {
		t.Error("unread input after everything was read")
	}
	if hasUnreadInput(nil) {
		t.Error("unread input on no connection")
	}
}

// At the end of the shutdown window, a lingering idle connection whose
// next request has arrived, unread, stays open to be served; one with
// nothing on it is closed.
func TestCloseLingeringKeepsConnectionsWithARequestOnTheWay(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("only Linux tells unread input apart")
	}
	ln := newLimitListener(nil, 10, discardLogger(), nil)
	ln.lingerUntil.Store(time.Now().Add(time.Hour).UnixNano())
	quietClient, quietServer := tcpPair(t)
	busyClient, busyServer := tcpPair(t)
	for _, server := range []*net.TCPConn{quietServer, busyServer} {
		cc := &countedConn{meteredConn: meteredConn{Conn: server}, ln: ln}
		cc.idleSince.Store(time.Now().UnixNano())
		ln.conns[cc] = struct{}{}
		if err := cc.Close(); err != nil { // the server asks; the window keeps it
			t.Fatal(err)
		}
	}
	if _, err := io.WriteString(busyClient, "GET / HTTP/1.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, func() bool { return hasUnreadInput(busyServer) })

	ln.closeLingering()

	_ = quietClient.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := quietClient.Read(make([]byte, 1)); err == nil {
		t.Error("the quiet lingering connection was not closed")
	}
	if _, err := busyServer.Write([]byte("HTTP/1.1 200 OK\r\n")); err != nil {
		t.Errorf("the connection with a request on its way was closed: %v", err)
	}
}

// The server makes a connection idle, where its shutdown sees and closes
// it, a moment before connState hears of it. Closed in that moment, the
// connection still lingers: a request on its way is served, and the
// window's end closes it if none came. One the server is done with closes
// when it says so.
func TestCloseInTheWindowBeforeTheIdleHookLingers(t *testing.T) {
	ln := newLimitListener(nil, 10, discardLogger(), nil)
	ln.lingerUntil.Store(time.Now().Add(time.Hour).UnixNano())
	idleClient, idleServer := tcpPair(t)
	doneClient, doneServer := tcpPair(t)
	idle := &countedConn{meteredConn: meteredConn{Conn: idleServer}, ln: ln}
	done := &countedConn{meteredConn: meteredConn{Conn: doneServer}, ln: ln}
	for _, cc := range []*countedConn{idle, done} {
		ln.conns[cc] = struct{}{}
		if err := cc.Close(); err != nil { // before any connState
			t.Fatal(err)
		}
	}
	if _, err := idleServer.Write([]byte("HTTP/1.1 200 OK\r\n")); err != nil {
		t.Fatalf("closed in the window before it was marked idle: %v", err)
	}
	connState(idle, http.StateIdle)
	connState(done, http.StateClosed)
	_ = doneClient.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(doneClient); err != nil {
		t.Errorf("the connection the server was done with: %v, want it closed", err)
	}
	ln.closeLingering()
	_ = idleClient.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(idleClient); err != nil || string(got) != "HTTP/1.1 200 OK\r\n" {
		t.Errorf("the idle connection at the window's end: read %q, %v; want it closed after what was written", got, err)
	}
}
