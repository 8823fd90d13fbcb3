//go:build !linux

package proxy

import "net"

// hasUnreadInput cannot tell here: a lingering idle connection is closed
// when the shutdown window ends, as if nothing had arrived.
func hasUnreadInput(*net.TCPConn) bool { return false }
