package proxy

import (
	"bufio"
	"io"
	"net/http"
	"testing"
)

// What a client sends in the same write as its upgrade request, before
// the 101 has come back, is relayed to the upstream first, then the rest
// of the connection; counted once.
func TestPathUpgradeRelaysBytesSentBehindTheRequest(t *testing.T) {
	t.Parallel()
	origin := startPathUpstream(t, "127.0.0.1", false, upgradeEcho)
	g := startPathGateway(t, "", map[string]string{
		"tenants/acme.yaml": pathAcme.yaml(pathRule("ws", []string{zoneAPI}, origin.port)),
	})
	conn := g.dial(t)
	const early, later = "sent with the upgrade request", "after the 101"
	head := "GET " + origin.url(zoneAPI, "/socket") + " HTTP/1.1\r\nHost: " + origin.authority(zoneAPI) +
		"\r\nProxy-Authorization: " + pathAcme.auth() +
		"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := io.WriteString(conn, head+early); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v; want 101", resp, err)
	}
	got := make([]byte, len(early))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != early {
		t.Fatalf("echo of the bytes behind the request: %q, %v; want %q", got, err, early)
	}
	if _, err := io.WriteString(conn, later); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(later))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != later {
		t.Fatalf("echo after the early bytes: %q, %v; want %q", got, err, later)
	}
	conn.Close()
	rec := g.audit.wait(t, "tenant", pathAcme.id, "path", "/socket")
	if want := float64(len(early) + len(later)); auditNumber(rec, "bytes_up") != want || auditNumber(rec, "bytes_down") != want {
		t.Errorf("audit bytes_up %v, bytes_down %v; want %v each", rec["bytes_up"], rec["bytes_down"], want)
	}
}
