package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionalphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
)

// grpcUpstream is a gRPC server over TLS (h2 by ALPN) with the health
// service (unary Check, server-streaming Watch) and server reflection
// (bidirectional), recording each call's method and credential and
// echoing the credential in a trailer.
type grpcUpstream struct {
	port   int
	health *health.Server
	mu     sync.Mutex
	calls  []grpcCall
}

type grpcCall struct{ method, authorization string }

func startGRPCUpstream(t *testing.T) *grpcUpstream {
	t.Helper()
	ln := listenOrSkip(t, "127.0.0.1")
	u := &grpcUpstream{port: ln.Addr().(*net.TCPAddr).Port, health: health.NewServer()}
	record := func(ctx context.Context, method string) {
		md, _ := metadata.FromIncomingContext(ctx)
		auth := strings.Join(md.Get("authorization"), ",")
		u.mu.Lock()
		u.calls = append(u.calls, grpcCall{method, auth})
		u.mu.Unlock()
	}
	server := grpc.NewServer(
		grpc.Creds(grpccreds.NewTLS(&tls.Config{Certificates: []tls.Certificate{testPKI.leaf}})),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			record(ctx, info.FullMethod)
			md, _ := metadata.FromIncomingContext(ctx)
			_ = grpc.SetTrailer(ctx, metadata.Pairs("x-echo-authorization", strings.Join(md.Get("authorization"), ",")))
			return handler(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			record(ss.Context(), info.FullMethod)
			return handler(srv, ss)
		}),
	)
	healthpb.RegisterHealthServer(server, u.health)
	reflection.Register(server)
	u.health.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	go server.Serve(ln)
	t.Cleanup(server.Stop)
	return u
}

func (u *grpcUpstream) callsTo(method string) []grpcCall {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []grpcCall
	for _, c := range u.calls {
		if c.method == method {
			out = append(out, c)
		}
	}
	return out
}

// grpcFixture is a gateway with an inspecting connector for the gRPC
// upstream that injects a credential and allows the health and
// reflection v1 services only, and one for an HTTPS upstream that speaks
// HTTP/2 (for curl).
type grpcFixture struct {
	g      *gateway
	grpc   *grpcUpstream
	web    *httptest.Server // HTTPS, h2 by ALPN, answers with the protocol it was spoken to in
	caPool *x509.CertPool
	caFile string
}

func startGRPCFixture(t *testing.T) *grpcFixture {
	t.Helper()
	fx := &grpcFixture{grpc: startGRPCUpstream(t)}
	fx.web = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "upstream spoken to in %s, credential %q", r.Proto, r.Header.Get("Authorization"))
	}))
	fx.web.Listener.Close()
	fx.web.Listener = listenOrSkip(t, "127.0.0.1")
	fx.web.EnableHTTP2 = true
	fx.web.TLS = &tls.Config{Certificates: []tls.Certificate{testPKI.leaf}}
	fx.web.StartTLS()
	t.Cleanup(fx.web.Close)

	dir := t.TempDir()
	if res := egressgw(t, "ca", "init", "--out", filepath.Join(dir, "ca")); res.exitCode != 0 {
		t.Fatalf("ca init: exit %d\n%s", res.exitCode, res.stderr)
	}
	fx.caFile = filepath.Join(dir, "ca", "ca.pem")
	pem, err := os.ReadFile(fx.caFile)
	if err != nil {
		t.Fatal(err)
	}
	fx.caPool = x509.NewCertPool()
	fx.caPool.AppendCertsFromPEM(pem)
	files := configFiles{
		"gateway.yaml": inspectingGatewayYAML(yamlf(`
			secrets:
			  api_token: { env: E2E_API_TOKEN }
		`)),
		"connectors/grpcapi.yaml": yamlf(`
			name: grpcapi
			hosts: [%q, %q]
			ports: [%d, %d]
			methods: [POST, GET]
			paths: ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/web/"]
			inspect: true
			inject:
			  headers: { Authorization: "Bearer ${secret:api_token}" }
		`, hostAPI, hostSub, fx.grpc.port, portOf(t, fx.web.Listener.Addr().String())),
		"tenants/inspector.yaml": tenantYAML(inspector, "connectors: [grpcapi]\n"),
	}
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, path, content)
	}
	fx.g = newGateway(t)
	fx.g.env = append(fx.g.env, "E2E_API_TOKEN="+injectedSecret)
	fx.g.start(t, "--config", dir, "--log-format", "json")
	return fx
}

// dialThroughGateway opens a CONNECT tunnel to addr through the gateway
// as tenant c: what a gRPC channel dials when it uses the proxy.
func (g *gateway) dialThroughGateway(ctx context.Context, c credentials, addr string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", g.proxyAddr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n", addr, addr, c.header())
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		conn.Close()
		return nil, fmt.Errorf("CONNECT %s: %s", addr, resp.Status)
	}
	if br.Buffered() > 0 {
		conn.Close()
		return nil, fmt.Errorf("CONNECT %s: bytes behind the 200", addr)
	}
	return conn, nil
}

// channel is a gRPC client channel to the gRPC upstream through the
// gateway, trusting the gateway's inspection CA.
func (fx *grpcFixture) channel(t *testing.T) *grpc.ClientConn {
	t.Helper()
	target := net.JoinHostPort(hostAPI, fmt.Sprint(fx.grpc.port))
	cc, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(grpccreds.NewTLS(&tls.Config{RootCAs: fx.caPool})),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return fx.g.dialThroughGateway(ctx, inspector, addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestGRPCThroughInspectedConnector(t *testing.T) {
	t.Parallel()
	fx := startGRPCFixture(t)
	cc := fx.channel(t)
	ctx, cancel := context.WithTimeout(context.Background(), scaled(20*time.Second))
	defer cancel()
	healthClient := healthpb.NewHealthClient(cc)

	t.Run("unary: the credential reaches the upstream, trailers come back scrubbed", func(t *testing.T) {
		var trailer metadata.MD
		resp, err := healthClient.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"}, grpc.Trailer(&trailer))
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("status %v, want SERVING", resp.Status)
		}
		calls := fx.grpc.callsTo("/grpc.health.v1.Health/Check")
		if len(calls) == 0 || calls[len(calls)-1].authorization != "Bearer "+injectedSecret {
			t.Errorf("the upstream did not get the injected credential: %+v", calls)
		}
		echoed := strings.Join(trailer.Get("x-echo-authorization"), ",")
		if strings.Contains(echoed, injectedSecret) || !strings.Contains(echoed, "[REDACTED:secret]") {
			t.Errorf("trailer x-echo-authorization %q: want the credential scrubbed", echoed)
		}
	})

	t.Run("an error status comes back as the upstream sent it", func(t *testing.T) {
		_, err := healthClient.Check(ctx, &healthpb.HealthCheckRequest{Service: "no-such-service"})
		if st := status.Convert(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), "unknown service") {
			t.Errorf("Check of an unknown service: %v; want NotFound, unknown service", err)
		}
	})

	t.Run("server streaming: each message arrives as it is sent", func(t *testing.T) {
		watchCtx, stop := context.WithCancel(ctx)
		defer stop()
		stream, err := healthClient.Watch(watchCtx, &healthpb.HealthCheckRequest{Service: "watched"})
		if err != nil {
			t.Fatal(err)
		}
		fx.grpc.health.SetServingStatus("watched", healthpb.HealthCheckResponse_SERVING)
		for _, want := range []healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING} {
			// The first message must arrive while the stream stays open;
			// only then does the upstream send the next.
			msg, err := stream.Recv()
			for err == nil && msg.Status != want {
				msg, err = stream.Recv()
			}
			if err != nil {
				t.Fatalf("waiting for %v: %v", want, err)
			}
			if want == healthpb.HealthCheckResponse_SERVING {
				fx.grpc.health.SetServingStatus("watched", healthpb.HealthCheckResponse_NOT_SERVING)
			}
		}
	})

	t.Run("bidirectional streaming: requests and answers alternate on one stream", func(t *testing.T) {
		stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			req := &reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: ""}}
			if err := stream.Send(req); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("answer %d: %v", i, err)
			}
			if !strings.Contains(fmt.Sprint(resp.GetListServicesResponse()), "grpc.health.v1.Health") {
				t.Errorf("answer %d does not list the health service: %v", i, resp)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Errorf("after CloseSend: %v, want the end of the stream", err)
		}
	})

	t.Run("a method outside the connector's paths gets the gateway's refusal as its status", func(t *testing.T) {
		const refused = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
		stream, err := reflectionalphapb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
		if err == nil {
			err = stream.Send(&reflectionalphapb.ServerReflectionRequest{MessageRequest: &reflectionalphapb.ServerReflectionRequest_ListServices{}})
		}
		if err == nil {
			_, err = stream.Recv()
		}
		st := status.Convert(err)
		if st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "destination_not_allowed") {
			t.Errorf("refused method: %v; want PermissionDenied with the gateway's destination_not_allowed", err)
		}
		if calls := fx.grpc.callsTo(refused); len(calls) != 0 {
			t.Errorf("the refused method reached the upstream: %+v", calls)
		}
		fx.g.waitAudit(t, auditWith("tenant", inspector.tenant, "path", refused, "decision", "deny", "code", "destination_not_allowed"))
		// The channel goes on: the refusal ended its stream only.
		if _, err := healthClient.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"}); err != nil {
			t.Errorf("Check after the refusal: %v", err)
		}
	})

	t.Run("curl --http2 gets HTTP/2 inside the tunnel", func(t *testing.T) {
		curl := lookPathOrSkip(t, "curl")
		if res := run(t, clientEnv(), "", curl, "--version"); !strings.Contains(res.stdout, "HTTP2") {
			t.Skip("this curl has no HTTP/2")
		}
		webURL := "https://" + net.JoinHostPort(hostSub, fmt.Sprint(portOf(t, fx.web.Listener.Addr().String()))) + "/web/page"
		res := run(t, clientEnv("CURL_CA_BUNDLE="+fx.caFile), "", curl, "-sS", "--http2", "--max-time", "20",
			"-w", "\nversion %{http_version} status %{http_code}\n", "--cacert", fx.caFile,
			"-x", "http://"+fx.g.proxyAddr, "--proxy-user", inspector.tenant+":"+inspector.token, webURL)
		if res.exitCode != 0 || !strings.Contains(res.stdout, "version 2 status 200") {
			t.Fatalf("curl exit %d, want HTTP/2 and status 200; output:\n%s", res.exitCode, res.output())
		}
		if !strings.Contains(res.stdout, "upstream spoken to in HTTP/2.0") || strings.Contains(res.stdout, injectedSecret) ||
			!strings.Contains(res.stdout, "[REDACTED:secret]") {
			t.Errorf("curl got %q; want the upstream spoken to over HTTP/2 and the credential scrubbed", res.stdout)
		}
	})
}
