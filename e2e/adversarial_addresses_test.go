//go:build linux

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// specialTargets are addresses the gateway must never dial, each one
// made to exist in the canary namespace. They are the forms an attacker
// reaches for: cloud metadata, and the IPv6 spellings that embed it or
// that fall outside the ranges people remember.
var specialTargets = []string{
	"169.254.169.254",      // link-local cloud metadata
	"168.63.129.16",        // cloud metadata outside the private ranges
	"100.100.100.200",      // metadata in shared address space
	"::ffff:0:a9fe:a9fe",   // IPv4-translated, embeds 169.254.169.254
	"::a9fe:a9fe",          // IPv4-compatible, embeds 169.254.169.254
	"fec0::1",              // site-local
	"64:ff9b::a9fe:a9fe",   // NAT64
	"64:ff9b:1::a9fe:a9fe", // local-use NAT64
	"2002:a9fe:a9fe::1",    // 6to4
	"2001:0:a9fe:a9fe::1",  // Teredo
	"2001:2::1",            // benchmarking, inside 2000::/3
	"2620:4f:8000::1",      // AS112 direct delegation, inside 2000::/3
	"3fff::1",              // documentation, inside 2000::/3
	"fd00:ec2::254",        // unique local, a cloud's IPv6 metadata
	"5f00::1",              // segment routing, outside 2000::/3
	"4000::1",              // unassigned, outside 2000::/3
	"100::1",               // discard-only
}

// TestAdversarialAddresses dials nothing special, by any spelling: a
// tenant allowed every IP address and a wildcard of names sends plain
// GETs and CONNECTs to special addresses that really exist and listen,
// and none of them is ever reached.
//
// Two fresh network namespaces are joined by a veth pair: the gateway
// and the client in one, the special addresses (and a canary listening
// on all of them) in the other, with a route for each address over the
// veth. The gateway does not own the addresses, so only its built-in
// table stands between the tenant and the canary. No packet can leave
// the machine: neither namespace has any other link or a default route.
// It needs Linux, root and iproute2, and skips, saying why, only when a
// namespace cannot be made.
func TestAdversarialAddresses(t *testing.T) {
	t.Parallel()
	const canaryPort, probePort = 8080, 8081
	gwNS, netNS := newNetns(t, "egwadr-gw-"), newNetns(t, "egwadr-net-")
	linkNamespaces(t, gwNS, netNS, specialTargets)

	client, canaryThread := enterNetns(t, gwNS), enterNetns(t, netNS)
	canary := startCanary(t, canaryThread, canaryPort)

	// The canary is reachable on every special address from the gateway's
	// namespace, so a dial the gateway let through would be counted.
	for _, a := range specialTargets {
		before := canary.reached()
		conn, err := client.dial("tcp", net.JoinHostPort(a, strconv.Itoa(canaryPort)))
		if err != nil {
			t.Fatalf("the canary is not reachable on %s from the gateway's namespace: %v", a, err)
		}
		conn.Close()
		eventually(t, 5*time.Second, func() error {
			if canary.reached() == before {
				return fmt.Errorf("the canary did not count a direct connection to %s", a)
			}
			return nil
		})
	}

	zone := map[string][]netip.Addr{}
	names := make([]string, len(specialTargets))
	for i, a := range specialTargets {
		names[i] = fmt.Sprintf("s%d.special.test", i)
		zone[names[i]] = []netip.Addr{netip.MustParseAddr(a)}
	}
	var dns *dnsServer
	var dnsErr error
	client.run(func() { dns, dnsErr = startDNSServer(zone) })
	if dnsErr != nil {
		t.Fatal(dnsErr)
	}
	t.Cleanup(func() { dns.Close() })

	g := startGatewayInNetns(t, gwNS, client, configFiles{
		"gateway.yaml": yamlf(`
			network:
			  dns_servers: [%q]
		`, dns.Addr()),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("everything", []string{"0.0.0.0/0", "::/0", "*.special.test"}, canaryPort, probePort)),
	})

	authority := func(host string) string { return net.JoinHostPort(host, strconv.Itoa(canaryPort)) }
	refused := func(t *testing.T, method, target string, status int, code string) {
		t.Helper()
		before := snapshotReach(canary)
		resp, err := client.exchange(g.proxyAddr, method, proxyRequest(method, target))
		if err != nil {
			t.Fatalf("%s %s: %v", method, target, err)
		}
		assertGatewayError(t, resp, status, code)
		before.assertUnchanged(t)
	}

	for i, a := range specialTargets {
		literal := a
		if strings.Contains(a, ":") {
			literal = "[" + a + "]"
		}
		t.Run(a, func(t *testing.T) {
			refused(t, http.MethodGet, "http://"+literal+":"+strconv.Itoa(canaryPort)+"/canary", http.StatusForbidden, "destination_ip_denied")
			refused(t, http.MethodConnect, authority(a), http.StatusForbidden, "destination_ip_denied")
			refused(t, http.MethodGet, "http://"+names[i]+":"+strconv.Itoa(canaryPort)+"/canary", http.StatusForbidden, "destination_ip_denied")
			refused(t, http.MethodConnect, authority(names[i]), http.StatusForbidden, "destination_ip_denied")
		})
	}
	t.Run("IPv4-mapped spelling", func(t *testing.T) {
		refused(t, http.MethodGet, "http://[::ffff:169.254.169.254]:"+strconv.Itoa(canaryPort)+"/", http.StatusForbidden, "destination_ip_denied")
		refused(t, http.MethodConnect, authority("::ffff:a9fe:a9fe"), http.StatusForbidden, "destination_ip_denied")
	})
	t.Run("numeric IPv4 spellings", func(t *testing.T) {
		for _, host := range []string{"2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518", "0xa9.0xfe.0xa9.0xfe", "169.254.169.254."} {
			refused(t, http.MethodGet, "http://"+host+":"+strconv.Itoa(canaryPort)+"/", http.StatusBadRequest, "bad_request")
			refused(t, http.MethodConnect, authority(host), http.StatusBadRequest, "bad_request")
		}
	})
	t.Run("an address the gateway host gains is refused", func(t *testing.T) {
		// An ordinary address, in no special range, appears on the
		// gateway's host after it started: from then on it is the
		// gateway's own. Nothing listens on probePort, so until the
		// gateway has listed it again a probe fails to connect (502) and
		// reaches nothing; the wait is far below the 30 s periodic
		// refresh, so this passes because the gateway heard of the change.
		const gained = "93.184.215.99"
		local := startCanary(t, client, canaryPort)
		if res := run(t, nil, "", "ip", "-n", gwNS, "addr", "add", gained+"/32", "dev", "lo"); res.exitCode != 0 {
			t.Fatalf("ip addr add: %s", res.output())
		}
		probe := "http://" + gained + ":" + strconv.Itoa(probePort) + "/"
		eventually(t, 10*time.Second, func() error {
			resp, err := client.exchange(g.proxyAddr, http.MethodGet, proxyRequest(http.MethodGet, probe))
			if err != nil {
				return err
			}
			if code := resp.Header.Get("X-Egressgw-Error"); code != "destination_ip_denied" {
				return fmt.Errorf("%s: status %d %s; the gateway does not yet refuse its new address", probe, resp.StatusCode, code)
			}
			return nil
		})
		before := snapshotReach(local)
		refused(t, http.MethodGet, "http://"+gained+":"+strconv.Itoa(canaryPort)+"/", http.StatusForbidden, "destination_ip_denied")
		refused(t, http.MethodConnect, authority(gained), http.StatusForbidden, "destination_ip_denied")
		before.assertUnchanged(t)
	})
	if canary.reached() != int64(len(specialTargets)) {
		t.Errorf("the canary was reached %d times; want only the %d direct checks", canary.reached(), len(specialTargets))
	}
}

// proxyRequest is a request of acme for target written out as it goes to
// the proxy: target is an absolute http:// URL, or a CONNECT authority.
// It is built by hand so that hosts no URL parser accepts go out as
// written.
func proxyRequest(method, target string) string {
	host := target
	if method != http.MethodConnect {
		host = strings.TrimPrefix(target, "http://")
		if i := strings.IndexByte(host, '/'); i >= 0 {
			host = host[:i]
		}
	}
	return method + " " + target + " HTTP/1.1\r\nHost: " + host + "\r\nProxy-Authorization: " + acme.header() + "\r\nConnection: close\r\n\r\n"
}

// newNetns makes a network namespace named prefix+random, with lo up and
// IPv6 duplicate address detection off, and removes it when the test
// ends. It skips the test when no namespace can be made.
func newNetns(t *testing.T, prefix string) string {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("cannot make a network namespace: `ip` (iproute2) is not installed: %v", err)
	}
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	ns := prefix + hex.EncodeToString(suffix)
	if res := run(t, nil, "", "ip", "netns", "add", ns); res.exitCode != 0 {
		t.Skipf("cannot make a network namespace (needs root on Linux): ip netns add: exit %d: %s", res.exitCode, strings.TrimSpace(res.output()))
	}
	t.Cleanup(func() {
		if res := run(t, nil, "", "ip", "netns", "del", ns); res.exitCode != 0 {
			t.Errorf("removing network namespace %s: %s", ns, res.output())
		}
	})
	steps := [][]string{{"ip", "-n", ns, "link", "set", "lo", "up"}}
	if _, err := exec.LookPath("sysctl"); err == nil {
		// The test's own addresses skip it (nodad); this spares the veth's
		// link-local addresses the wait as well.
		steps = append(steps, []string{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"})
	}
	for _, args := range steps {
		if res := run(t, nil, "", args[0], args[1:]...); res.exitCode != 0 {
			t.Fatalf("%s: exit %d: %s", strings.Join(args, " "), res.exitCode, res.output())
		}
	}
	return ns
}

// linkNamespaces joins from and to with a veth pair on private addresses,
// puts every address of targets on to's end and routes each of them from
// from over the pair.
func linkNamespaces(t *testing.T, from, to string, targets []string) {
	t.Helper()
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(suffix)
	fromIf, toIf := "egwa"+id, "egwb"+id
	cmds := [][]string{
		{"link", "add", fromIf, "netns", from, "type", "veth", "peer", "name", toIf, "netns", to},
		{"-n", from, "addr", "add", "10.213.255.1/30", "dev", fromIf},
		{"-n", to, "addr", "add", "10.213.255.2/30", "dev", toIf},
		{"-n", from, "addr", "add", "fd71:6567:7700::1/64", "dev", fromIf, "nodad"},
		{"-n", to, "addr", "add", "fd71:6567:7700::2/64", "dev", toIf, "nodad"},
		{"-n", from, "link", "set", fromIf, "up"},
		{"-n", to, "link", "set", toIf, "up"},
	}
	for _, a := range targets {
		bits := "/32"
		if strings.Contains(a, ":") {
			bits = "/128"
		}
		cmds = append(cmds,
			[]string{"-n", to, "addr", "add", a + bits, "dev", toIf, "nodad"},
			[]string{"-n", from, "route", "add", a + bits, "dev", fromIf},
		)
	}
	for _, args := range cmds {
		if res := run(t, nil, "", "ip", args...); res.exitCode != 0 {
			t.Fatalf("ip %s: exit %d: %s", strings.Join(args, " "), res.exitCode, res.output())
		}
	}
}

// netnsThread runs functions on one OS thread that has entered a network
// namespace, so that the sockets they create live there; the sockets may
// then be used from any goroutine.
type netnsThread struct {
	work chan func()
}

// enterNetns starts a goroutine locked to its own thread inside ns. The
// goroutine never unlocks the thread, so the thread ends with it and no
// other goroutine ever runs in the namespace.
func enterNetns(t *testing.T, ns string) *netnsThread {
	t.Helper()
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		t.Fatalf("opening network namespace %s: %v", ns, err)
	}
	defer f.Close()
	th := &netnsThread{work: make(chan func())}
	entered := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			entered <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		entered <- nil
		for fn := range th.work {
			fn()
		}
	}()
	if err := <-entered; err != nil {
		t.Skipf("cannot enter a network namespace: %v", err)
	}
	t.Cleanup(func() { close(th.work) })
	return th
}

func (th *netnsThread) run(fn func()) {
	done := make(chan struct{})
	th.work <- func() {
		defer close(done)
		fn()
	}
	<-done
}

func (th *netnsThread) dial(network, addr string) (conn net.Conn, err error) {
	th.run(func() { conn, err = net.DialTimeout(network, addr, 5*time.Second) })
	return conn, err
}

// exchange sends raw to the proxy at addr on a fresh connection and reads
// one response to method, body included.
func (th *netnsThread) exchange(addr, method, raw string) (*http.Response, error) {
	conn, err := th.dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(scaled(requestTimeout)))
	if _, err := io.WriteString(conn, raw); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp, nil
}

// canary counts the connections made to any address of its namespace on
// its port.
type canary struct {
	ln       net.Listener
	accepted atomic.Int64
}

func startCanary(t *testing.T, th *netnsThread, port int) *canary {
	t.Helper()
	var ln net.Listener
	var err error
	th.run(func() { ln, err = net.Listen("tcp", net.JoinHostPort("::", strconv.Itoa(port))) })
	if err != nil {
		t.Fatalf("canary: %v", err)
	}
	c := &canary{ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.accepted.Add(1)
			conn.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return c
}

func (c *canary) reached() int64 { return c.accepted.Load() }

func (c *canary) String() string { return "canary on every special address" }

// startGatewayInNetns runs egressgw serve inside ns on fixed loopback
// ports of that namespace, and waits until its /readyz answers there.
func startGatewayInNetns(t *testing.T, ns string, client *netnsThread, files configFiles) *gateway {
	t.Helper()
	g := &gateway{proxyAddr: "127.0.0.1:3128", adminAddr: "127.0.0.1:9128", env: childEnv()}
	g.cmd = exec.Command("ip", "netns", "exec", ns, gatewayBinary, "serve",
		"--listen", g.proxyAddr, "--admin-listen", g.adminAddr,
		"--config", writeConfig(t, files), "--log-format", "json")
	g.cmd.Env = g.env
	g.cmd.Stdout = &g.stdout
	g.cmd.Stderr = &g.stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("starting egressgw in %s: %v", ns, err)
	}
	g.exited = make(chan struct{})
	go func() {
		g.waitErr = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(func() { g.cleanup(t) })
	httpClient := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{Proxy: nil, DialContext: func(_ context.Context, network, addr string) (net.Conn, error) {
			return client.dial(network, addr)
		}},
	}
	defer httpClient.CloseIdleConnections()
	eventually(t, 10*time.Second, func() error {
		select {
		case <-g.exited:
			return fmt.Errorf("egressgw exited (%v); stderr:\n%s", g.waitErr, g.stderr.String())
		default:
		}
		resp, err := httpClient.Get("http://" + g.adminAddr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz: %d", resp.StatusCode)
		}
		return nil
	})
	return g
}
