package proxy

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"testing"
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
	upstream := cannedUpstream(b)
	host, port, _ := net.SplitHostPort(upstream)
	g := benchGateway(b, "listen: \"127.0.0.1:3128\"\nnetwork: { allow_cidrs: [\"127.0.0.1/32\"] }\n",
		"quota: { requests_per_second: 1000000000, burst: 1000000000, max_concurrent: 1000000, bandwidth: { egress: 64GiB, ingress: 64GiB } }\n"+
			"rules:\n  - { name: upstream, hosts: [\""+host+"\"], ports: ["+port+"] }\n")
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
