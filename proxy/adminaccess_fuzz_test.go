package proxy

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/egressgw/egressgw/allowlist"
	"github.com/egressgw/egressgw/state"
)

// fuzzNow and fuzzMaxFor are the clock and bound the body fuzzers decide
// at.
var (
	fuzzNow    = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	fuzzMaxFor = 720 * time.Hour
)

var adminBodySeeds = []string{
	`{"for": "2h", "host": "*.pypi.org", "ports": [443], "methods": [], "paths": [], "note": "build"}`,
	`{"for": "30m"}`,
	`{"for": "1h", "host": "203.0.113.0/24"}`,
	`{"for": "1h", "host": "*"}`,
	`{"for": "1h", "host": "*.co.uk"}`,
	`{"for": "721h"}`,
	`{"for": "1h", "hosts": []}`,
	`{"for": "1h"} []`,
	`{"for": "1h", "methods": ["GET"], "paths": ["/simple/", "/%2e%2e/"]}`,
	`{"tenant": "acme", "for": "1h", "host": "api.example.org", "ports": [80, 443]}`,
	`{"for": "1h", "host": "xn--bcher-kva.example", "ports": [65535]}`,
	`{"for": "1h", "host": "2001:db8::/40"}`,
	`null`,
	``,
}

// checkGrantSpec asserts what every accepted body must give: an expiry
// within the bound, a host pattern in canonical form that is not wide, and
// ports, methods, paths and note within their limits.
func checkGrantSpec(t *testing.T, spec state.GrantSpec, hostRequired bool) {
	t.Helper()
	if !spec.ExpiresAt.After(fuzzNow) || spec.ExpiresAt.Sub(fuzzNow) > fuzzMaxFor {
		t.Fatalf("accepted expiry %v, outside (now, now+%v]", spec.ExpiresAt, fuzzMaxFor)
	}
	if spec.Host == "" && hostRequired {
		t.Fatal("accepted a grant without host")
	}
	if spec.Host != "" {
		p, err := allowlist.ParsePattern(spec.Host)
		if err != nil || p.String() != spec.Host {
			t.Fatalf("accepted host %q, not a canonical pattern (%v)", spec.Host, err)
		}
		if pre, err := netip.ParsePrefix(spec.Host); err == nil && ((pre.Addr().Is4() && pre.Bits() < 24) || (pre.Addr().Is6() && pre.Bits() < 48)) {
			t.Fatalf("accepted a wide range %q", spec.Host)
		}
	}
	for _, p := range spec.Ports {
		if p < 1 || p > 65535 {
			t.Fatalf("accepted port %d", p)
		}
	}
	for _, m := range spec.Methods {
		if !grantMethod.MatchString(m) {
			t.Fatalf("accepted method %q", m)
		}
	}
	for _, p := range spec.Paths {
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "?#\x00") {
			t.Fatalf("accepted path %q", p)
		}
	}
	if len(spec.Note) > maxGrantNote {
		t.Fatalf("accepted a note of %d bytes", len(spec.Note))
	}
}

func FuzzApproveBody(f *testing.F) {
	for _, s := range adminBodySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := parseApproveBody(data, fuzzNow, fuzzMaxFor)
		if err != nil {
			return
		}
		checkGrantSpec(t, spec, false)
	})
}

func FuzzGrantBody(f *testing.F) {
	for _, s := range adminBodySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := parseGrantBody(data, fuzzNow, fuzzMaxFor)
		if err != nil {
			return
		}
		if spec.Tenant == "" || len(spec.Ports) == 0 {
			t.Fatalf("accepted a grant without tenant or ports: %+v", spec)
		}
		checkGrantSpec(t, spec, true)
	})
}

// FuzzAdminAuthorization: whatever Authorization header arrives, a read
// passes only with exactly a configured token after "Bearer ", and a
// viewer's token never writes.
func FuzzAdminAuthorization(f *testing.F) {
	for _, s := range []string{"Bearer " + viewerTok, "bearer " + adminTok, "Bearer  " + adminTok + " ", "Basic " + adminTok, "Bearer", "Bearer " + viewerTok + "x", "Bearer " + hexSum(adminTok), ""} {
		f.Add(s, false)
		f.Add(s, true)
	}
	fx := newAdminFixture(f, adminTokensYAML())
	f.Fuzz(func(t *testing.T, header string, write bool) {
		method, body := "GET", ""
		if write {
			// A tenant the policy lacks: an authorised write answers 400
			// and leaves the store as it was.
			method, body = "POST", `{"tenant": "nobody", "for": "1h", "host": "api.example.org"}`
		}
		req := httptest.NewRequest(method, "/v1/grants", strings.NewReader(body))
		req.Header.Set("Authorization", header)
		w := httptest.NewRecorder()
		fx.handler.ServeHTTP(w, req)
		scheme, token, _ := strings.Cut(req.Header.Get("Authorization"), " ")
		token = strings.TrimSpace(token)
		valid := strings.EqualFold(scheme, "Bearer") && (token == adminTok || token == viewerTok || token == approverAcme || token == approverAllTok)
		switch {
		case !valid && w.Code != http.StatusUnauthorized:
			t.Fatalf("header %q: status %d, want 401", header, w.Code)
		case valid && !write && w.Code != http.StatusOK:
			t.Fatalf("header %q: read status %d, want 200", header, w.Code)
		case valid && write && token == viewerTok && w.Code != http.StatusForbidden:
			t.Fatalf("viewer write: status %d, want 403", w.Code)
		}
	})
}
