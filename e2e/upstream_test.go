package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pki is the test certificate authority. TLS upstreams serve a leaf it signed
// for every name of the test zone; clients trust it through caFile or pool.
// The gateway never needs it: CONNECT tunnels are not inspected here.
type pki struct {
	caFile string // PEM of the CA certificate, for curl --cacert and friends
	pool   *x509.CertPool
	leaf   tls.Certificate
}

func newPKI(dir string) (*pki, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "egressgw e2e test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}

	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leafTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: hostAPI},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(victimAddress)},
	}
	for name := range testZone {
		leafTemplate.DNSNames = append(leafTemplate.DNSNames, name)
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTemplate, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}

	caFile := filepath.Join(dir, "upstream-ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &pki{
		caFile: caFile,
		pool:   pool,
		leaf:   tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey},
	}, nil
}

// reachable is anything a refused request must not reach.
type reachable interface {
	// reached counts connections accepted plus requests served; requests
	// matter because a wrongly forwarded request may reuse a pooled
	// connection.
	reached() int64
	String() string
}

// reachSnapshot remembers how often some targets were reached, so a test can
// prove that a refused request never left the gateway.
type reachSnapshot map[reachable]int64

func snapshotReach(targets ...reachable) reachSnapshot {
	s := make(reachSnapshot, len(targets))
	for _, target := range targets {
		s[target] = target.reached()
	}
	return s
}

// assertUnchanged fails if any target was reached since the snapshot. Only
// meaningful while nothing else sends allowed traffic to those targets.
func (s reachSnapshot) assertUnchanged(t *testing.T) {
	t.Helper()
	for target, before := range s {
		if now := target.reached(); now != before {
			t.Errorf("%s was reached %d time(s) by a request the gateway should have refused", target, now-before)
		}
	}
}

// seenRequest is what an upstream recorded about one request it served.
type seenRequest struct {
	Method string
	Host   string // the Host header, port included if the client sent one
	Path   string
	Query  string
	Header http.Header
}

// upstream is an HTTP or HTTPS origin server on a chosen loopback address
// that records every connection and request it receives.
type upstream struct {
	server *httptest.Server
	ip     string
	port   int
	scheme string

	conns atomic.Int64
	mu    sync.Mutex
	seen  []seenRequest
}

// greeting is the body the default upstream handler answers with.
func greeting(path string) string { return "hello from upstream, path " + path }

// greet is the default upstream handler.
var greet = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, greeting(r.URL.Path))
})

// startHTTPUpstream serves handler (greet when nil) over plain HTTP on ip.
func startHTTPUpstream(t *testing.T, ip string, handler http.Handler) *upstream {
	return startUpstream(t, ip, false, handler)
}

// startTLSUpstream serves handler (greet when nil) over HTTPS on ip, with a
// certificate for every test-zone name signed by the test CA.
func startTLSUpstream(t *testing.T, ip string, handler http.Handler) *upstream {
	return startUpstream(t, ip, true, handler)
}

func startUpstream(t *testing.T, ip string, useTLS bool, handler http.Handler) *upstream {
	t.Helper()
	return startUpstreamOn(t, listenOrSkip(t, ip), useTLS, handler)
}

// startUpstreamOn is startUpstream on a listener of the caller's.
func startUpstreamOn(t *testing.T, ln net.Listener, useTLS bool, handler http.Handler) *upstream {
	t.Helper()
	if handler == nil {
		handler = greet
	}
	addr := ln.Addr().(*net.TCPAddr)
	u := &upstream{ip: addr.IP.String(), port: addr.Port, scheme: "http"}
	u.server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, seenRequest{
			Method: r.Method,
			Host:   r.Host,
			Path:   r.URL.Path,
			Query:  r.URL.RawQuery,
			Header: r.Header.Clone(),
		})
		u.mu.Unlock()
		handler.ServeHTTP(w, r)
	}))
	u.server.Listener.Close()
	u.server.Listener = ln
	u.server.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			u.conns.Add(1)
		}
	}
	if useTLS {
		u.scheme = "https"
		u.server.TLS = &tls.Config{Certificates: []tls.Certificate{testPKI.leaf}}
		u.server.StartTLS()
	} else {
		u.server.Start()
	}
	t.Cleanup(u.server.Close)
	return u
}

// url is the address of path on this upstream under the given host name.
func (u *upstream) url(host, path string) string {
	return u.scheme + "://" + net.JoinHostPort(host, strconv.Itoa(u.port)) + path
}

// authority is host:port for CONNECT.
func (u *upstream) authority(host string) string {
	return net.JoinHostPort(host, strconv.Itoa(u.port))
}

func (u *upstream) reached() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.conns.Load() + int64(len(u.seen))
}

func (u *upstream) String() string {
	return fmt.Sprintf("%s upstream %s:%d", u.scheme, u.ip, u.port)
}

// requests returns the requests served so far that match.
func (u *upstream) requests(match func(seenRequest) bool) []seenRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []seenRequest
	for _, r := range u.seen {
		if match(r) {
			out = append(out, r)
		}
	}
	return out
}

// requestsTo returns the requests served so far for path.
func (u *upstream) requestsTo(path string) []seenRequest {
	return u.requests(func(r seenRequest) bool { return r.Path == path })
}

// tcpServer accepts raw TCP connections and hands each to handle. It stands
// in for upstreams that are not HTTP: an echo service behind a tunnel, or a
// server that accepts and never answers.
type tcpServer struct {
	ln       net.Listener
	port     int
	accepted atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// echo writes back everything it reads.
func echo(c net.Conn) { io.Copy(c, c) }

// silent reads and discards everything and never writes.
func silent(c net.Conn) { io.Copy(io.Discard, c) }

func startTCPServer(t *testing.T, ip string, handle func(net.Conn)) *tcpServer {
	t.Helper()
	ln := listenOrSkip(t, ip)
	s := &tcpServer{ln: ln, port: ln.Addr().(*net.TCPAddr).Port, conns: map[net.Conn]struct{}{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // listener closed
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for c := range s.conns {
			c.Close() // releases handlers blocked in Read, e.g. silent
		}
	})
	return s
}

func (s *tcpServer) reached() int64 { return s.accepted.Load() }

func (s *tcpServer) String() string { return "tcp server " + s.ln.Addr().String() }

// authority is host:port for CONNECT.
func (s *tcpServer) authority(host string) string {
	return net.JoinHostPort(host, strconv.Itoa(s.port))
}

// listenOrSkip listens on a free TCP port of ip. Addresses other than
// 127.0.0.1 are loopback on Linux but not everywhere, hence the skip.
func listenOrSkip(t *testing.T, ip string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Skipf("cannot listen on %s (this test needs it as a loopback address): %v", ip, err)
	}
	return ln
}
