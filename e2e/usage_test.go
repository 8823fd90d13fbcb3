package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestUsageAlwaysShowsBandwidth: /v1/tenants/ID/usage lists both
// bandwidth directions for every tenant, with bytes this minute, also
// before any traffic and for a tenant without a limit, whose bytes are
// counted too.
func TestUsageAlwaysShowsBandwidth(t *testing.T) {
	t.Parallel()
	const size = 100 << 10
	origin := startHTTPUpstream(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			io.Copy(io.Discard, r.Body)
		case "/download":
			w.Write(bytes.Repeat([]byte("d"), size))
		default:
			greet.ServeHTTP(w, r)
		}
	}))
	limited := credentials{tenant: "limited", token: "limited-token-usage"}
	open := credentials{tenant: "open", token: "open-token-usage"}
	g := startGateway(t, configFiles{
		"gateway.yaml": gatewayYAML(""),
		"tenants/limited.yaml": tenantYAML(limited, yamlf(`
			quota:
			  bandwidth: { egress: 64KiB, ingress: 128KiB }
		`)+allowRule("api", []string{hostAPI}, origin.port)),
		"tenants/open.yaml": tenantYAML(open, allowRule("api", []string{hostAPI}, origin.port)),
	})
	type direction struct {
		Direction       string `json:"direction"`
		BytesPerSecond  *int64 `json:"bytes_per_second"`
		BytesThisMinute *int64 `json:"bytes_this_minute"`
		Counted         *bool  `json:"counted"`
	}
	usage := func(tenant string) map[string]direction {
		var u struct {
			Bandwidth []direction `json:"bandwidth"`
		}
		body := g.admin(t, "/v1/tenants/"+tenant+"/usage")
		if err := json.Unmarshal([]byte(body), &u); err != nil {
			t.Fatalf("usage of %s: %v; body %q", tenant, err, body)
		}
		m := map[string]direction{}
		for _, d := range u.Bandwidth {
			if d.BytesPerSecond == nil || d.BytesThisMinute == nil || d.Counted == nil {
				t.Errorf("usage of %s: %q lacks a field: %s", tenant, d.Direction, body)
				continue
			}
			m[d.Direction] = d
		}
		if len(m) != 2 || m["egress"].Direction == "" || m["ingress"].Direction == "" {
			t.Fatalf("usage of %s does not list egress and ingress: %s", tenant, body)
		}
		return m
	}
	cases := []struct {
		tenant          string
		egress, ingress int64
		counted         bool
	}{
		{limited.tenant, 64 << 10, 128 << 10, true},
		{open.tenant, 0, 0, true},
	}
	for _, c := range cases {
		u := usage(c.tenant)
		if e, i := u["egress"], u["ingress"]; *e.BytesPerSecond != c.egress || *i.BytesPerSecond != c.ingress ||
			*e.Counted != c.counted || *i.Counted != c.counted || *e.BytesThisMinute != 0 || *i.BytesThisMinute != 0 {
			t.Errorf("usage of %s before any traffic: egress %+v, ingress %+v; want limits %d/%d, counted %v, 0 bytes",
				c.tenant, e, i, c.egress, c.ingress, c.counted)
		}
	}
	// The count starts again each minute: download until one lands in the
	// same minute as the look.
	eventually(t, 10*time.Second, func() error {
		g.expectAllowedGET(t, limited, origin.url(hostAPI, "/counted"))
		if n := *usage(limited.tenant)["ingress"].BytesThisMinute; n <= 0 {
			return fmt.Errorf("ingress bytes this minute %d after a download", n)
		}
		return nil
	})
	// Without a limit, as many bytes as moved, each way.
	client := g.client(t, open)
	eventually(t, 10*time.Second, func() error {
		resp, err := client.Post(origin.url(hostAPI, "/upload"), "application/octet-stream", bytes.NewReader(bytes.Repeat([]byte("u"), size)))
		if err != nil {
			t.Fatal(err)
		}
		if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
			t.Fatalf("POST /upload: status %d, body %q", resp.StatusCode, body)
		}
		if status, body := fetch(t, client, origin.url(hostAPI, "/download")); status != http.StatusOK || len(body) != size {
			t.Fatalf("GET /download: status %d, %d bytes; want 200 and %d", status, len(body), size)
		}
		u := usage(open.tenant)
		if e, i := *u["egress"].BytesThisMinute, *u["ingress"].BytesThisMinute; e < size || i < size {
			return fmt.Errorf("after a %d-byte upload and download: egress %d, ingress %d bytes this minute", size, e, i)
		}
		return nil
	})
}
