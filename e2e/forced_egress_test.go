package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestForcedEgress proves the deployment model egressgw relies on: a
// sandbox in its own network namespace whose only route leads to the
// gateway reaches an allowed upstream through it, gets a 403 for a denied
// one, and cannot reach the upstream directly at all.
//
// The upstream listens on the host's 127.0.0.1, which the sandbox cannot
// reach (loopback is per namespace) and which the gateway may dial
// (network.allow_cidrs). The sandbox and the host are joined by a veth
// pair on a private /30 with no default route, so no packet of the test
// leaves this machine. It needs Linux, root and iproute2, and skips, saying
// why, only when a network namespace cannot be made.
func TestForcedEgress(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("network namespaces are Linux only")
	}
	t.Parallel()
	sb := newSandboxNetwork(t)
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl is needed as the sandbox's client (apt-get install curl): %v", err)
	}

	plain := startHTTPUpstream(t, "127.0.0.1", nil)
	secure := startTLSUpstream(t, "127.0.0.1", nil)
	g := newGateway(t)
	// The proxy listens on the host's end of the veth, the only address the
	// sandbox can reach; the admin listener stays on the host's loopback.
	g.proxyAddr = freeAddrOn(t, sb.hostIP)
	g.serve(t, configFiles{
		"gateway.yaml":      gatewayYAML(""),
		"tenants/acme.yaml": tenantYAML(acme, allowRule("api", []string{hostAPI}, plain.port, secure.port)),
	})
	proxyURL := g.proxyURL(acme)
	viaProxy := clientEnv("http_proxy="+proxyURL, "HTTP_PROXY="+proxyURL, "https_proxy="+proxyURL, "HTTPS_PROXY="+proxyURL)

	t.Run("the sandbox has no route but to the gateway", func(t *testing.T) {
		routes := sb.exec(t, nil, "ip", "route", "show")
		if strings.Contains(routes.stdout, "default") || routes.exitCode != 0 {
			t.Errorf("sandbox routes (exit %d):\n%s; want only the veth /30", routes.exitCode, routes.output())
		}
		for _, dst := range []string{"192.0.2.1", "10.0.0.1", "8.8.8.8"} {
			// A route lookup: no packet is sent.
			if res := sb.exec(t, nil, "ip", "route", "get", dst); res.exitCode == 0 {
				t.Errorf("the sandbox has a route to %s: %s", dst, res.stdout)
			}
		}
	})

	t.Run("an allowed upstream is reached through the gateway", func(t *testing.T) {
		res := sb.exec(t, viaProxy, curl, "-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", plain.url(hostAPI, "/forced"))
		body, status := splitStatus(res.stdout)
		if res.exitCode != 0 || status != "200" || body != greeting("/forced") {
			t.Fatalf("curl in the sandbox via HTTP_PROXY: exit %d, status %s, body %q; want 200 and the upstream's greeting\n%s", res.exitCode, status, body, res.stderr)
		}
		rec := g.waitAudit(t, auditWith("tenant", acme.tenant, "path", "/forced"))
		if client, _ := rec["client"].(string); !strings.HasPrefix(client, sb.sandboxIP+":") {
			t.Errorf("audit client %q, want the sandbox's address %s", client, sb.sandboxIP)
		}
	})

	t.Run("an allowed HTTPS upstream is reached through a tunnel", func(t *testing.T) {
		res := sb.exec(t, viaProxy, curl, "-sS", "--max-time", "20", "--cacert", testPKI.caFile, "-o", "-", "-w", "\n%{http_code}", secure.url(hostAPI, "/forced-tls"))
		body, status := splitStatus(res.stdout)
		if res.exitCode != 0 || status != "200" || body != greeting("/forced-tls") {
			t.Fatalf("curl in the sandbox via HTTPS_PROXY: exit %d, status %s, body %q; want 200 and the upstream's greeting\n%s", res.exitCode, status, body, res.stderr)
		}
	})

	t.Run("a denied host gets 403 destination_not_allowed", func(t *testing.T) {
		before := snapshotReach(plain)
		res := sb.exec(t, viaProxy, curl, "-sS", "--max-time", "20", "-i", plain.url(hostOther, "/denied"))
		if res.exitCode != 0 {
			t.Fatalf("curl in the sandbox: exit %d\n%s", res.exitCode, res.output())
		}
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(res.stdout)), nil)
		if err != nil {
			t.Fatalf("reading curl's output as a response: %v\n%s", err, res.stdout)
		}
		e := assertGatewayError(t, resp, http.StatusForbidden, "destination_not_allowed")
		if !strings.Contains(e.Message, hostOther) {
			t.Errorf("message %q does not name the denied host", e.Message)
		}
		before.assertUnchanged(t)
	})

	t.Run("a direct connection to the upstream fails", func(t *testing.T) {
		before := snapshotReach(plain, secure)
		for _, target := range []string{
			plain.url("127.0.0.1", "/direct"),                                     // the host's loopback: not the sandbox's
			plain.url(sb.hostIP, "/direct"),                                       // the upstream does not listen on the veth
			fmt.Sprintf("http://%s:%d/direct", sb.hostIP, portOf(t, g.adminAddr)), // nor does the admin listener
		} {
			res := sb.exec(t, clientEnv(), curl, "-sS", "--noproxy", "*", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", target)
			if res.exitCode == 0 {
				t.Errorf("curl --noproxy '*' %s from the sandbox succeeded (status %s); want a failed connection", target, res.stdout)
			}
		}
		// Nor by name: the sandbox has no resolver route either.
		res := sb.exec(t, clientEnv(), curl, "-sS", "--noproxy", "*", "--max-time", "5", "-o", "/dev/null", plain.url(hostAPI, "/direct"))
		if res.exitCode == 0 {
			t.Errorf("curl --noproxy '*' %s from the sandbox succeeded", plain.url(hostAPI, "/direct"))
		}
		before.assertUnchanged(t)
	})
}

// sandboxNetwork is a network namespace joined to the host by a veth pair.
type sandboxNetwork struct {
	ns                string
	hostIP, sandboxIP string
}

// newSandboxNetwork creates a namespace and a veth pair with unique names
// on a free /30 of 10.213.0.0/16, and removes both when the test ends,
// whether it passed or not.
func newSandboxNetwork(t *testing.T) *sandboxNetwork {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("cannot make a network namespace: `ip` (iproute2) is not installed: %v", err)
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(suffix)
	sb := &sandboxNetwork{ns: "egwsbx-" + id}
	hostIf, sandboxIf := "egwh"+id, "egws"+id // at most 15 bytes, as Linux wants

	if res := run(t, nil, "", "ip", "netns", "add", sb.ns); res.exitCode != 0 {
		t.Skipf("cannot make a network namespace (needs root on Linux): ip netns add: exit %d: %s", res.exitCode, strings.TrimSpace(res.output()))
	}
	t.Cleanup(func() {
		// Deleting the namespace deletes the veth end inside it, and with it
		// the host's end; the second command covers a failure in between.
		if res := run(t, nil, "", "ip", "netns", "del", sb.ns); res.exitCode != 0 {
			t.Errorf("removing network namespace %s: %s", sb.ns, res.output())
		}
		if res := run(t, nil, "", "ip", "link", "show", hostIf); res.exitCode == 0 {
			// The kernel may finish removing it between the two commands.
			if res := run(t, nil, "", "ip", "link", "del", hostIf); res.exitCode != 0 && !strings.Contains(res.output(), "Cannot find device") {
				t.Errorf("removing veth %s: %s", hostIf, res.output())
			}
		}
	})

	prefix := freeSubnet(t)
	hostAddr := prefix.Addr().Next()
	sb.hostIP, sb.sandboxIP = hostAddr.String(), hostAddr.Next().String()
	bits := strconv.Itoa(prefix.Bits())
	for _, args := range [][]string{
		{"link", "add", hostIf, "type", "veth", "peer", "name", sandboxIf},
		{"link", "set", sandboxIf, "netns", sb.ns},
		{"addr", "add", sb.hostIP + "/" + bits, "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"-n", sb.ns, "addr", "add", sb.sandboxIP + "/" + bits, "dev", sandboxIf},
		{"-n", sb.ns, "link", "set", sandboxIf, "up"},
		{"-n", sb.ns, "link", "set", "lo", "up"},
	} {
		if res := run(t, nil, "", "ip", args...); res.exitCode != 0 {
			t.Fatalf("ip %s: exit %d: %s", strings.Join(args, " "), res.exitCode, res.output())
		}
	}
	// The sandbox's end must be up and addressed before anything listens
	// on the host's end.
	eventually(t, 10*time.Second, func() error {
		res := run(t, nil, "", "ip", "-n", sb.ns, "-j", "addr", "show", "dev", sandboxIf)
		var links []struct {
			OperState string `json:"operstate"`
		}
		if err := json.Unmarshal([]byte(res.stdout), &links); err != nil || len(links) != 1 {
			return fmt.Errorf("ip -j addr show: %v: %s", err, res.output())
		}
		if links[0].OperState != "UP" {
			return fmt.Errorf("%s is %s", sandboxIf, links[0].OperState)
		}
		return nil
	})
	return sb
}

// freeSubnet picks a /30 of 10.213.0.0/16 that no address of this
// machine is in, so parallel runs and other interfaces do not collide.
func freeSubnet(t *testing.T) netip.Prefix {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for range 64 {
		b := make([]byte, 2)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 213, b[0], b[1] &^ 3}), 30)
		taken := false
		for _, a := range addrs {
			if ipnet, ok := a.(*net.IPNet); ok {
				if other, ok := netip.AddrFromSlice(ipnet.IP); ok && prefix.Contains(other.Unmap()) {
					taken = true
				}
			}
		}
		if !taken {
			return prefix
		}
	}
	t.Fatal("no free /30 in 10.213.0.0/16")
	return netip.Prefix{}
}

// exec runs a command inside the sandbox's namespace with env (nil =
// childEnv).
func (sb *sandboxNetwork) exec(t *testing.T, env []string, name string, args ...string) commandResult {
	t.Helper()
	return run(t, env, "", "ip", append([]string{"netns", "exec", sb.ns, name}, args...)...)
}

// freeAddrOn returns ip:P for a port of ip that was free a moment ago.
func freeAddrOn(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// splitStatus splits curl output written with -w "\n%{http_code}" into
// the body and the status code.
func splitStatus(out string) (body, status string) {
	i := strings.LastIndex(out, "\n")
	if i < 0 {
		return "", out
	}
	return out[:i], out[i+1:]
}
