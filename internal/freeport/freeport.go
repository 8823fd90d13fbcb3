// Package freeport picks loopback ports for processes that bind them
// later: the gateway the tests and the load harness start.
package freeport

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the bottom of the range ports are picked from.
const lowest = 20000

// handedOut are the ports returned in this process, so that two callers
// never get the same one.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// Loopback returns 127.0.0.1:P for a port that was free a moment ago. The
// port lies below the kernel's ephemeral range: a port from that range
// (what listening on :0 gives) can meanwhile become the local port of any
// outgoing connection, and the process that meant to listen on it then
// fails with "address already in use".
func Loopback() (string, error) {
	hi := ephemeralStart() - 1
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 1000 {
		if hi <= lowest {
			break
		}
		port := lowest + rand.IntN(hi-lowest+1)
		if handedOut.ports[port] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		ln.Close()
		handedOut.ports[port] = true
		return ln.Addr().String(), nil
	}
	// No room below the ephemeral range: take what the kernel picks.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// ephemeralStart is the first port the kernel gives outgoing connections
// (32768, Linux's default, when it cannot be read).
func ephemeralStart() int {
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if fields := strings.Fields(string(data)); len(fields) > 0 {
			if start, err := strconv.Atoi(fields[0]); err == nil {
				return start
			}
		}
	}
	return 32768
}
