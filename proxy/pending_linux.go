package proxy

import (
	"net"
	"syscall"
	"unsafe"
)

// hasUnreadInput reports whether bytes have arrived on c that nobody has
// read yet (the socket's receive queue, TIOCINQ): a request a client has
// already sent. False when it cannot tell.
func hasUnreadInput(c *net.TCPConn) bool {
	if c == nil {
		return false
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var queued int32 // TIOCINQ writes a C int
	var ioctlErr syscall.Errno
	if err := raw.Control(func(fd uintptr) {
		_, _, ioctlErr = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&queued)))
	}); err != nil || ioctlErr != 0 {
		return false
	}
	return queued > 0
}
