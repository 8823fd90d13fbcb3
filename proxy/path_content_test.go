package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// rawInTunnel opens an inspected tunnel to authority as c, sends raw (a
// request head whose target is written byte for byte) inside it and
// returns the gateway's or upstream's response, body buffered.
func (g *pathGateway) rawInTunnel(t *testing.T, c pathTenant, authority, raw string) *http.Response {
	t.Helper()
	tunnel := g.tunnel(t, c, authority)
	host, _, _ := strings.Cut(authority, ":")
	conn := tls.Client(tunnel, &tls.Config{ServerName: host, RootCAs: zoneRoots(t), NextProtos: []string{"http/1.1"}})
	if _, err := conn.Write([]byte(raw)); err != nil {
		t.Fatalf("writing inside the tunnel: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodGet})
	if err != nil {
		t.Fatalf("reading the response inside the tunnel: %v", err)
	}
	body := pathBody(t, resp)
	resp.Body = io.NopCloser(strings.NewReader(body))
	return resp
}

// assertRefusedSpelling checks a refusal of a path spelling: 400
// bad_request or 403 destination_not_allowed, made by the gateway (JSON
// with X-Egressgw-Error).
func assertRefusedSpelling(t *testing.T, resp *http.Response, spelling string) {
	t.Helper()
	switch code := resp.Header.Get("X-Egressgw-Error"); {
	case resp.StatusCode == http.StatusBadRequest && code == "bad_request":
		assertPathRefusal(t, resp, http.StatusBadRequest, "bad_request")
	case resp.StatusCode == http.StatusForbidden && code == "destination_not_allowed":
		assertPathRefusal(t, resp, http.StatusForbidden, "destination_not_allowed")
	default:
		t.Errorf("%q: status %d, X-Egressgw-Error %q; want the gateway's 400 bad_request or 403 destination_not_allowed (body %q)",
			spelling, resp.StatusCode, code, pathBody(t, resp))
	}
}

// Moved from e2e/adversarial_content_test.go: spellings of a denied path
// that upstreams read as that path (overlong UTF-8, fullwidth letters,
// double or IIS encoding, control characters, encoded or back slashes,
// trailing dots and spaces, parameters, case), as plain HTTP and inside
// an inspected tunnel: each is refused by the gateway and the upstream
// behind the deny sees none of them.
func TestPathSpellingsCannotPassADeny(t *testing.T) {
	t.Parallel()
	spelled := pathTenant{"spelled", "spelled-token-0c4e19a6b3"}
	plain := startPathUpstream(t, "127.0.0.1", false, nil)
	secure := startPathUpstream(t, "127.0.0.1", true, nil)
	g := startPathGateway(t, pathInspecting, pathInspectingFiles(t, map[string]string{
		"connectors/plain.yaml":  fmt.Sprintf("name: plain\nhosts: [%q]\nports: [%d]\n", zoneAPI, plain.port),
		"connectors/secure.yaml": fmt.Sprintf("name: secure\nhosts: [%q]\nports: [%d]\ninspect: true\npaths: [\"/\"]\n", zoneAPI, secure.port),
		"connectors/open.yaml":   fmt.Sprintf("name: open\nhosts: [%q]\nports: [%d]\n", zoneOther, plain.port),
		"tenants/spelled.yaml": spelled.yaml(fmt.Sprintf("connectors: [plain, secure, open]\nrules:\n  - { name: no-admin, action: deny, hosts: [%q], paths: [\"/admin\"] }\n",
			zoneAPI)),
	}))
	spellings := []string{
		"/%C0%AE%C0%AE/admin",   // overlong UTF-8 for ".."
		"/x/%C0%AE%C0%AE/admin", //
		"/%C0%AFadmin",          // overlong "/"
		"/\xef\xbd\x81dmin",     // fullwidth a, raw
		"/%EF%BD%81dmin",        // fullwidth a, encoded
		"/%EF%BC%8Fadmin",       // fullwidth solidus
		"/\xf0\x9d\x97\xaedmin", // mathematical sans-serif a, NFKC "a"
		"/%ED%A0%80admin",       // a surrogate
		"/%E2%82admin",          // a cut-off sequence
		"/%252e%252e/admin",     // double encoding
		"/x/%252e%252e/admin",   //
		"/%2541dmin",            //
		"/%u002e%u002e/admin",   // IIS encoding
		"/%u0061dmin",           //
		"/x/%2E%2e/admin",       // mixed-case hex
		"/%41dmin",              // needless encoding
		"/adm%69n",              //
		"/admin%20",             // trailing space
		"/admin%20/users",       //
		"/admin.",               // trailing dot
		"/admin./users",         //
		"/admin%2e/users",       //
		"/admin;x=1/users",      // parameters
		"/admin%3Bx=1/users",    //
		"/ADMIN/users",          // case
		"/Admin",                //
		"/admin%00",             // NUL
		"/admin%00.json",        //
		"/admin%09",             // tab
		"/admin%0A",             // line feed
		"/x%2F..%2Fadmin",       // encoded slash
		"/x%2f%2e%2e%2fadmin",   //
		"/x%5C..%5Cadmin",       // encoded backslash
		"/x\\..\\admin",         // raw backslash
		"/x/..;/admin",          // dot segment with parameters
		"//admin",               // empty segment
	}
	get := func(host, path string) *http.Response {
		raw := fmt.Sprintf("GET http://%s:%d%s HTTP/1.1\r\nHost: %s:%d\r\nProxy-Authorization: %s\r\nConnection: close\r\n\r\n",
			host, plain.port, path, host, plain.port, spelled.auth())
		resp, _ := g.exchange(t, http.MethodGet, []byte(raw))
		return resp
	}
	t.Run("plain", func(t *testing.T) {
		for _, path := range spellings {
			before := pathSnapshotReach(plain)
			assertRefusedSpelling(t, get(zoneAPI, path), path)
			before.assertUnchanged(t)
		}
	})
	t.Run("inspected tunnel", func(t *testing.T) {
		for _, path := range spellings {
			before := pathSnapshotReach(secure)
			raw := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n", path, zoneAPI, secure.port)
			assertRefusedSpelling(t, g.rawInTunnel(t, spelled, secure.authority(zoneAPI), raw), path)
			// The tunnel itself reached the upstream only if the gateway
			// dialled it for the inner request, which it must not.
			before.assertUnchanged(t)
		}
	})
	t.Run("clean paths still pass", func(t *testing.T) {
		for _, path := range []string{"/v1/users", "/a%20b", "/v1/users%3Abatch", "/file.tar.gz"} {
			if resp := get(zoneAPI, path); resp.StatusCode != http.StatusOK {
				t.Errorf("%s: status %d, want 200 (body %q)", path, resp.StatusCode, pathBody(t, resp))
			}
		}
		assertPathRefusal(t, get(zoneAPI, "/administrator-guide"), http.StatusForbidden, "destination_not_allowed") // under the /admin prefix
	})
	t.Run("spellings only rules naming paths care about", func(t *testing.T) {
		for _, path := range []string{"/caf%C3%A9", "/repos/group%2Fproject", "/\xef\xbd\x81dmin", "/v1/.../x"} {
			before := pathSnapshotReach(plain)
			assertPathRefusal(t, get(zoneAPI, path), http.StatusBadRequest, "bad_request")
			before.assertUnchanged(t)
			if resp := get(zoneOther, path); resp.StatusCode != http.StatusOK {
				t.Errorf("%s on a host whose rules name no paths: status %d, want 200 (body %q)", path, resp.StatusCode, pathBody(t, resp))
			}
		}
	})
}

// echoEncoding is a spelling an upstream may echo a credential in, with
// the decoding that reads it back.
type echoEncoding struct {
	encode func(string) string
	decode func(string) string // "" when it cannot be decoded
}

func percentEvery(s, format string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, format, s[i])
	}
	return b.String()
}

func jsonEvery(s string, every int) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if i%every == 0 {
			fmt.Fprintf(&b, `\u%04x`, s[i])
		} else {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func decodeWith(f func(string) ([]byte, error)) func(string) string {
	return func(s string) string {
		b, err := f(s)
		if err != nil {
			return ""
		}
		return string(b)
	}
}

func unescapeJSON(s string) string {
	var out string
	if json.Unmarshal([]byte(`"`+s+`"`), &out) != nil {
		return ""
	}
	return out
}

var echoEncodings = map[string]echoEncoding{
	"plain":      {func(s string) string { return s }, func(s string) string { return s }},
	"upper":      {strings.ToUpper, strings.ToLower},
	"lower":      {strings.ToLower, func(s string) string { return s }},
	"hex":        {func(s string) string { return hex.EncodeToString([]byte(s)) }, decodeWith(hex.DecodeString)},
	"HEX":        {func(s string) string { return strings.ToUpper(hex.EncodeToString([]byte(s))) }, decodeWith(hex.DecodeString)},
	"base64":     {func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }, decodeWith(base64.StdEncoding.DecodeString)},
	"base64-raw": {func(s string) string { return base64.RawStdEncoding.EncodeToString([]byte(s)) }, decodeWith(base64.RawStdEncoding.DecodeString)},
	"base64url":  {func(s string) string { return base64.URLEncoding.EncodeToString([]byte(s)) }, decodeWith(base64.URLEncoding.DecodeString)},
	"base64url-raw-in-blob": {
		func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(`{"auth":"` + s + `"}`)) },
		decodeWith(base64.RawURLEncoding.DecodeString),
	},
	"base64-in-blob-2": {
		func(s string) string { return base64.StdEncoding.EncodeToString([]byte("u:" + s)) },
		decodeWith(base64.StdEncoding.DecodeString),
	},
	"percent":       {url.QueryEscape, func(s string) string { u, _ := url.QueryUnescape(s); return u }},
	"percent-every": {func(s string) string { return percentEvery(s, "%%%02x") }, func(s string) string { u, _ := url.PathUnescape(s); return u }},
	"json-every":    {func(s string) string { return jsonEvery(s, 1) }, unescapeJSON},
	"json-mixed":    {func(s string) string { return jsonEvery(s, 3) }, unescapeJSON},
}

// echoEncoded answers /enc/NAME with the Authorization header it received
// in encoding NAME, in a header and in a JSON string.
var echoEncoded = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	e, ok := echoEncodings[strings.TrimPrefix(r.URL.Path, "/enc/")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	encoded := e.encode(r.Header.Get("Authorization"))
	w.Header().Set("X-Echo", encoded)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"echo":"%s"}`, encoded)
})

// Moved from e2e/adversarial_content_test.go: an upstream behind an
// inspected, injecting connector echoes the injected Authorization value
// in each common encoding, in a header and in the body; the sandbox reads
// none of them back, whatever decoding it tries.
func TestPathSecretEchoesInOtherSpellings(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-echoed-8d2f6b1a9c4e"
	echoed := pathTenant{"echoed", "echoed-token-7a41c9e2d0"}
	origin := startPathUpstream(t, "127.0.0.1", true, echoEncoded)
	g := startPathGateway(t, pathInspecting+"secrets:\n  api_token: { file: secrets/api_token }\n", pathInspectingFiles(t, map[string]string{
		"secrets/api_token": secret,
		"connectors/api.yaml": fmt.Sprintf("name: api\nhosts: [%q]\nports: [%d]\ninspect: true\ninject:\n  headers: { Authorization: \"Bearer ${secret:api_token}\" }\n",
			zoneAPI, origin.port),
		"tenants/echoed.yaml": echoed.yaml("connectors: [api]\n"),
	}))
	client := g.client(t, echoed, zoneRoots(t))
	mid := strings.ToLower(secret[2 : len(secret)-2]) // an encoding's edges may keep a byte
	for name, e := range echoEncodings {
		t.Run(name, func(t *testing.T) {
			// The upstream got the secret and encoded it: the test is real.
			if got := e.decode(e.encode("Bearer " + secret)); !strings.Contains(got, secret) {
				t.Fatalf("the test's own decoding gives %q", got)
			}
			resp, err := client.Get(origin.url(zoneAPI, "/enc/"+name))
			if err != nil {
				t.Fatal(err)
			}
			body := pathBody(t, resp)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			var fields struct{ Echo string }
			if err := json.Unmarshal([]byte(body), &fields); err != nil {
				t.Fatalf("body %q: %v", body, err)
			}
			for what, seen := range map[string]string{"header": resp.Header.Get("X-Echo"), "body": fields.Echo, "raw body": body} {
				if !strings.Contains(seen, "[REDACTED:secret]") {
					t.Errorf("%s %q: the echo was not scrubbed", what, seen)
				}
				for _, reading := range []string{seen, e.decode(seen), unescapeJSON(seen)} {
					if strings.Contains(strings.ToLower(reading), mid) {
						t.Errorf("%s %q reads back as %q, which holds the secret", what, seen, reading)
					}
				}
			}
		})
	}
}
