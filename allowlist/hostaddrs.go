package allowlist

import (
	"context"
	"net/netip"
	"sync/atomic"
	"time"
)

// HostAddrsRefresh is how often a running gateway lists its host's
// addresses again: an address that an interface gains (DHCP, a new
// container network, a VPN) is refused within this time at the latest,
// and at once where the kernel announces the change (see Run).
const HostAddrsRefresh = 30 * time.Second

// HostAddrs is the set of the gateway host's own addresses that an
// AddressPolicy refuses. It is refreshed in place (Refresh, Run), so a
// policy built once sees addresses that interfaces gain later. It is safe
// for concurrent use, and Contains does not allocate.
type HostAddrs struct {
	list func() ([]netip.Addr, error)
	set  atomic.Pointer[map[netip.Addr]struct{}]
}

// NewHostAddrs lists the addresses once with list (LocalAddrs in the
// gateway) and returns the set, or the listing's error.
func NewHostAddrs(list func() ([]netip.Addr, error)) (*HostAddrs, error) {
	h := &HostAddrs{list: list}
	if err := h.Refresh(); err != nil {
		return nil, err
	}
	return h, nil
}

// StaticHostAddrs returns a set of fixed addresses that Refresh leaves
// as they are, for tools and tests.
func StaticHostAddrs(addrs ...netip.Addr) *HostAddrs {
	h := &HostAddrs{}
	h.store(addrs)
	return h
}

// Refresh lists the addresses again and replaces the set. On error the
// set stays as it was: an address is never let through because listing
// failed.
func (h *HostAddrs) Refresh() error {
	if h.list == nil {
		return nil
	}
	addrs, err := h.list()
	if err != nil {
		return err
	}
	h.store(addrs)
	return nil
}

func (h *HostAddrs) store(addrs []netip.Addr) {
	set := make(map[netip.Addr]struct{}, len(addrs))
	for _, addr := range addrs {
		if addr.IsValid() {
			set[unmapAddr(addr)] = struct{}{}
		}
	}
	h.set.Store(&set)
}

// Run calls Refresh every interval, and as soon as the kernel announces an
// address change where it can (rtnetlink on Linux), until ctx is done,
// passing each failure to onError (which may be nil).
func (h *HostAddrs) Run(ctx context.Context, interval time.Duration, onError func(error)) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	changes := addressChanges(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-changes:
		}
		if err := h.Refresh(); err != nil && onError != nil {
			onError(err)
		}
	}
}

// Contains reports whether addr (unmapped, without zone) is one of the
// host's addresses.
func (h *HostAddrs) Contains(addr netip.Addr) bool {
	_, ok := (*h.set.Load())[addr]
	return ok
}
