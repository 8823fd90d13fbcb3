package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// Upstream paths. Every response but pathEvents' has a Content-Length, so
// proxies can pass it through without chunking.
const (
	pathSmall  = "/small"  // smallBodySize bytes
	pathLarge  = "/large"  // largeBodySize bytes
	pathStream = "/stream" // ?bytes=N, up to maxStreamBytes
	pathEcho   = "/submit" // POST; drains the request body, answers like pathSmall
)

// What the submit endpoint tells about the request it got, so the inspected
// scenarios can prove the gateway's hook and redaction ran (or did not).
const (
	headerHookSeen  = "X-Egressbench-Hook-Seen"  // "yes" when the request carried the hook's header
	headerEmailSeen = "X-Egressbench-Email-Seen" // "yes" when the body still held the e-mail address
	hookHeader      = "X-Egressbench"            // the header the benchmark's hook sets
	sampleEmail     = "ada@example.com"          // the e-mail address in the submitted body
)

const (
	smallBodySize  = 200
	largeBodySize  = 1 << 20
	maxStreamBytes = 1 << 30
	streamChunk    = 64 << 10
)

// authority is a CA the harness makes for one run; it signs the TLS
// upstream's certificate (and, for the inspected path, the gateway's
// interception certificates). Clients trust it and nothing else.
type authority struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	keyPEM  []byte
}

// newAuthority makes a self-signed ECDSA P-256 CA valid for a day.
func newAuthority(commonName string) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"egressbench"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode CA key: %w", err)
	}
	return &authority{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// serverCertificate issues a P-256 leaf for 127.0.0.1 and localhost.
func (a *authority) serverCertificate() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generate leaf key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &key.PublicKey, a.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("sign leaf: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der, a.cert.Raw}, PrivateKey: key}, nil
}

// writeFiles writes the CA certificate and key as PEM (key mode 0600).
func (a *authority) writeFiles(certPath, keyPath string) error {
	if err := os.WriteFile(certPath, a.certPEM, 0o644); err != nil {
		return fmt.Errorf("write CA certificate: %w", err)
	}
	if err := os.WriteFile(keyPath, a.keyPEM, 0o600); err != nil {
		return fmt.Errorf("write CA key: %w", err)
	}
	return nil
}

// upstreams are the origin servers every target reaches: one plain HTTP
// and one TLS listener on 127.0.0.1, both HTTP/1.1, serving fixed bodies
// from memory so that they cost as little as possible.
type upstreams struct {
	plainAddr string    // 127.0.0.1:P
	tlsAddr   string    // 127.0.0.1:Q
	events    *eventLog // when each registered event stream's events were written
	servers   []*http.Server
}

// startUpstreams listens on two loopback ports and serves until Close.
func startUpstreams(ca *authority) (*upstreams, error) {
	leaf, err := ca.serverCertificate()
	if err != nil {
		return nil, err
	}
	u := &upstreams{events: newEventLog()}
	handler := newUpstreamHandler(u.events)
	plainLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the plain upstream: %w", err)
	}
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		plainLn.Close()
		return nil, fmt.Errorf("listen for the TLS upstream: %w", err)
	}
	tlsLn := tls.NewListener(tcpLn, &tls.Config{
		Certificates: []tls.Certificate{leaf},
		NextProtos:   []string{"http/1.1"},
		MinVersion:   tls.VersionTLS12,
	})
	u.plainAddr, u.tlsAddr = plainLn.Addr().String(), tcpLn.Addr().String()
	for _, ln := range []net.Listener{plainLn, tlsLn} {
		srv := &http.Server{
			Handler:           handler,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       5 * time.Minute, // idle tunnels stay open for the whole RSS measurement
			ErrorLog:          discardLogger(),
		}
		u.servers = append(u.servers, srv)
		go func() { _ = srv.Serve(ln) }()
	}
	return u, nil
}

// Close stops both servers and their connections.
func (u *upstreams) Close() error {
	var errs []error
	for _, srv := range u.servers {
		if err := srv.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (u *upstreams) plainURL(path string) string { return "http://" + u.plainAddr + path }
func (u *upstreams) tlsURL(path string) string   { return "https://" + u.tlsAddr + path }

// ports returns the two listening ports, for rules and ConnectPort lines.
func (u *upstreams) ports() (plain, tls int) {
	return portOf(u.plainAddr), portOf(u.tlsAddr)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func portOf(addr string) int {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(port)
	return n
}

// newUpstreamHandler serves the upstream paths from preallocated buffers;
// event streams record their write times in events.
func newUpstreamHandler(events *eventLog) http.Handler {
	small := make([]byte, smallBodySize)
	for i := range small {
		small[i] = 'a' + byte(i%26)
	}
	large := make([]byte, largeBodySize)
	for i := range large {
		large[i] = byte(i)
	}
	chunk := large[:streamChunk]
	writeFixed := func(w http.ResponseWriter, body []byte) {
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+pathSmall, func(w http.ResponseWriter, _ *http.Request) { writeFixed(w, small) })
	mux.HandleFunc("GET "+pathLarge, func(w http.ResponseWriter, _ *http.Request) { writeFixed(w, large) })
	mux.HandleFunc("POST "+pathEcho, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set(headerHookSeen, yesNo(r.Header.Get(hookHeader) != ""))
		w.Header().Set(headerEmailSeen, yesNo(bytes.Contains(body, []byte(sampleEmail))))
		writeFixed(w, small)
	})
	mux.HandleFunc("GET "+pathEvents, serveEvents(events))
	mux.HandleFunc("GET "+pathStream, func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		if err != nil || n <= 0 || n > maxStreamBytes {
			http.Error(w, "want ?bytes=N with 0 < N <= 1GiB", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			part := chunk[:min(n, int64(len(chunk)))]
			if _, err := w.Write(part); err != nil {
				return // the client stopped reading: the measurement window ended
			}
			n -= int64(len(part))
		}
	})
	return mux
}
