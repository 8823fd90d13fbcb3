package allowlist

import (
	"context"
	"errors"
	"os"
	"syscall"
)

// Multicast groups of rtnetlink that announce added and removed interface
// addresses (linux/rtnetlink.h).
const (
	rtmgrpIPv4IfAddr = 0x10
	rtmgrpIPv6IfAddr = 0x100
)

// addressChanges returns a channel that receives a value soon after the
// kernel adds or removes an address of any interface, until ctx is done.
// It returns nil when it cannot listen (no netlink, a seccomp filter):
// the periodic refresh still runs.
func addressChanges(ctx context.Context) <-chan struct{} {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, syscall.NETLINK_ROUTE)
	if err != nil {
		return nil
	}
	if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK, Groups: rtmgrpIPv4IfAddr | rtmgrpIPv6IfAddr}); err != nil {
		syscall.Close(fd)
		return nil
	}
	// A non-blocking descriptor goes to the runtime's poller, so Close
	// ends a pending Read.
	f := os.NewFile(uintptr(fd), "rtnetlink")
	changes := make(chan struct{}, 1)
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			// The content does not matter: any message means the list
			// may have changed. ENOBUFS means messages were lost, which
			// is a change too.
			if _, err := f.Read(buf); err != nil && !errors.Is(err, syscall.ENOBUFS) {
				return
			}
			select {
			case changes <- struct{}{}:
			default: // a refresh is already due
			}
		}
	}()
	return changes
}
