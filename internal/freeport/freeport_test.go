package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestLoopbackPortsAreDistinctBindableAndNotEphemeral(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		addr, err := Loopback()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, portText, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(portText)
		if start := ephemeralStart(); start > lowest+1 && (port < lowest || port >= start) {
			t.Fatalf("port %d outside [%d, %d)", port, lowest, start)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("cannot bind %s: %v", addr, err)
		}
		ln.Close()
	}
}
