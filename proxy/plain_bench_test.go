package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"testing/fstest"
	"time"

	"github.com/egressgw/egressgw/policy"
)

// cannedUpstream answers every request on its keep-alive connections with
// the same 200-byte response, parsing no more than it must, so that a
// benchmark of the gateway measures the gateway.
func cannedUpstream(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return serveCanned(tb, ln)
}

// serveCanned serves cannedUpstream's response on ln until the test ends,
// and returns ln's address.
func serveCanned(tb testing.TB, ln net.Listener) string {
	tb.Helper()
	tb.Cleanup(func() { ln.Close() })
	body := bytes.Repeat([]byte("x"), 200)
	response := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + string(body))
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				for {
					for { // the request's head, up to its empty line
						line, err := r.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
					}
					if _, err := conn.Write(response); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// discardResponse is a ResponseWriter that keeps the status and drops the
// body, reusable across iterations.
type discardResponse struct {
	header http.Header
	status int
}

func (d *discardResponse) Header() http.Header         { return d.header }
func (d *discardResponse) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardResponse) WriteHeader(status int)      { d.status = status }

// BenchmarkServePlain is one small plain request through the gateway's
// request path, from the decision to the audit line, against an upstream
// on loopback: what the gateway adds per request, without a client-side
// server or a network client in the figure.
func BenchmarkServePlain(b *testing.B) {
	for _, c := range []struct{ name, budgets string }{{"no-budgets", ""}, {"three-budgets", threeBudgets}} {
		b.Run(c.name, func(b *testing.B) { benchServePlain(b, c.budgets) })
	}
}

// benchServePlain is BenchmarkServePlain for a tenant with budgets, the
// given tenant-file section.
func benchServePlain(b *testing.B, budgets string) {
	upstream := cannedUpstream(b)
	host, port, _ := net.SplitHostPort(upstream)
	g := benchGateway(b, "listen: \"127.0.0.1:3128\"\nnetwork: { allow_cidrs: [\"127.0.0.1/32\"] }\n",
		"quota: { requests_per_second: 1000000000, burst: 1000000000, max_concurrent: 1000000, bandwidth: { egress: 64GiB, ingress: 64GiB } }\n"+
			"rules:\n  - { name: upstream, hosts: [\""+host+"\"], ports: ["+port+"] }\n"+budgets)
	target, _ := url.Parse("http://" + upstream + "/small")
	authorization := "Basic " + basicEncode("acme", benchToken)
	w := &discardResponse{header: http.Header{}}
	// One client connection's context for every request, as on a
	// keep-alive connection: credentials are proven by the first.
	conn := withAuthMemo(context.Background(), nil)
	b.ReportAllocs()
	for b.Loop() {
		r := &http.Request{
			Method: http.MethodGet, URL: target, Host: upstream, RequestURI: target.String(),
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Proxy-Authorization": {authorization}}, Body: http.NoBody,
			RemoteAddr: "10.0.0.7:40000",
		}
		clear(w.header)
		g.ServeHTTP(w, r.WithContext(conn))
		if w.status != http.StatusOK {
			b.Fatalf("status %d: %s", w.status, w.header.Get("X-Egressgw-Error"))
		}
	}
}

// cannedTLSUpstream is cannedUpstream over TLS, with a leaf for 127.0.0.1
// signed by ca.
func cannedTLSUpstream(tb testing.TB, ca *tls.Certificate) string {
	tb.Helper()
	leaf, err := newLeafCache(ca, "bench", time.Now).get("127.0.0.1")
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*leaf}})
	if err != nil {
		tb.Fatal(err)
	}
	return serveCanned(tb, ln)
}

// BenchmarkServeInner is one small request inside an inspected tunnel,
// from its decision to its audit line, forwarded over TLS to an upstream
// on loopback: what the gateway adds per inner request, without the
// tunnel's own TLS to the client.
func BenchmarkServeInner(b *testing.B) {
	ca := testCA(b)
	upstream := cannedTLSUpstream(b, ca)
	host, port, _ := net.SplitHostPort(upstream)
	sum := sha256.Sum256([]byte(benchToken))
	caKey, err := x509.MarshalPKCS8PrivateKey(ca.PrivateKey)
	if err != nil {
		b.Fatal(err)
	}
	snap, err := policy.Load(fstest.MapFS{
		"gateway.yaml": {Data: []byte("listen: \"127.0.0.1:3128\"\nnetwork: { allow_cidrs: [\"127.0.0.1/32\"] }\n" +
			"tls: { ca_cert: ca.pem, ca_key: ca-key.pem }\n")},
		"ca.pem":              {Data: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate[0]})},
		"ca-key.pem":          {Data: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: caKey})},
		"connectors/api.yaml": {Data: []byte("name: api\nhosts: [\"" + host + "\"]\nports: [" + port + "]\ninspect: true\n")},
		"tenants/acme.yaml": {Data: []byte("id: acme\nauth: { token_sha256: \"" + hex.EncodeToString(sum[:]) + "\" }\n" +
			"quota: { requests_per_second: 1000000000, burst: 1000000000, max_concurrent: 1000000 }\nconnectors: [api]\n")},
	}, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Leaf)
	snap.Gateway.UpstreamRoots = roots
	g := testGateway(b, snap, io.Discard)

	connect := &http.Request{Method: http.MethodConnect, URL: &url.URL{Host: upstream}, Host: upstream,
		Header: http.Header{"Proxy-Authorization": {"Basic " + basicEncode("acme", benchToken)}}, Body: http.NoBody,
		RemoteAddr: "10.0.0.7:40000"}
	connect = connect.WithContext(withAuthMemo(context.Background(), nil))
	outer := &tunnel{ex: g.begin(connect, nil, true)}
	if o := admitConnect(context.Background(), outer.ex, connect, upstream); !o.ok() {
		b.Fatalf("CONNECT refused: %s", o.reason)
	}
	target := &url.URL{Path: "/small"}
	w := &discardResponse{header: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		r := &http.Request{
			Method: http.MethodGet, URL: target, Host: upstream, RequestURI: "/small",
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{}, Body: http.NoBody, RemoteAddr: "10.0.0.7:40000",
		}
		clear(w.header)
		g.serveInner(outer, "https", w, r.WithContext(context.Background()))
		if w.status != http.StatusOK {
			b.Fatalf("status %d: %s", w.status, w.header.Get("X-Egressgw-Error"))
		}
	}
}
