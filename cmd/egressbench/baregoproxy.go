package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/elazarl/goproxy"
)

// The harness re-executes itself to run the bare goproxy in a process of
// its own, so that the process's RSS is the proxy's alone. The child is
// selected by environment (not arguments) so that a test binary, whose
// arguments belong to the testing package, can be re-executed the same way.
const (
	childRoleEnv        = "EGRESSBENCH_CHILD"       // the role a re-executed harness plays
	childRoleBare       = "bare-goproxy"            // the one role there is
	childUpstreamCAEnv  = "EGRESSBENCH_UPSTREAM_CA" // PEM file of the CA the TLS upstream's certificate chains to
	bareListeningPrefix = "listening on "           // first stdout line of the child: "listening on 127.0.0.1:P"
)

// runChildRole runs the role named by the environment, if any, and reports
// whether it did; the process should then exit with code.
func runChildRole() (handled bool, code int) {
	role := os.Getenv(childRoleEnv)
	if role == "" {
		return false, 0
	}
	if role != childRoleBare {
		fmt.Fprintf(os.Stderr, "egressbench: unknown child role %q\n", role)
		return true, 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serveBareGoproxy(ctx, os.Getenv(childUpstreamCAEnv), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "egressbench bare-goproxy:", err)
		return true, 1
	}
	return true, 0
}

// newBareGoproxy is the floor the gateway's library gives: a
// goproxy.NewProxyHttpServer() with no handlers. Three things differ from
// its defaults, none of which adds work to a request:
//   - Tr does not follow the environment's proxy variables and trusts the
//     harness CA, so HTTPS upstreams verify (as they do in the gateway);
//     it keeps 64 idle connections per host like the gateway's transport,
//     so both pool upstream connections alike (Go's default of 2 would make
//     the floor re-dial at any concurrency above 2);
//   - ConnectDial is nil, so CONNECT dials directly rather than through
//     $HTTPS_PROXY;
//   - its logger is discarded, as the gateway discards it.
func newBareGoproxy(upstreamRoots *x509.CertPool) *goproxy.ProxyHttpServer {
	gp := goproxy.NewProxyHttpServer()
	gp.Logger = log.New(io.Discard, "", 0)
	gp.Tr = &http.Transport{
		Proxy:               nil,
		TLSClientConfig:     &tls.Config{RootCAs: upstreamRoots},
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 64,
	}
	gp.ConnectDial = nil
	return gp
}

// serveBareGoproxy listens on a free loopback port, prints it on out and
// serves the bare goproxy until ctx ends.
func serveBareGoproxy(ctx context.Context, caFile string, out io.Writer) error {
	roots := x509.NewCertPool()
	if caFile != "" {
		pemData, err := os.ReadFile(caFile)
		if err != nil {
			return fmt.Errorf("read upstream CA: %w", err)
		}
		if !roots.AppendCertsFromPEM(pemData) {
			return fmt.Errorf("upstream CA %s: no PEM certificate", caFile)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if _, err := fmt.Fprintln(out, bareListeningPrefix+ln.Addr().String()); err != nil {
		ln.Close()
		return fmt.Errorf("announce address: %w", err)
	}
	srv := &http.Server{Handler: newBareGoproxy(roots), ErrorLog: discardLogger()}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		return srv.Close()
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// discardLogger silences net/http's per-connection error log (e.g. TLS
// handshakes cut short when a measurement window ends).
func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }
