package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzRawRequest sends arbitrary bytes to the gateway's listener as a
// client would, with a tenant that may only GET paths under /ok/ of one
// upstream. Whatever the bytes, the gateway must not crash, must answer
// with a parsable response or close, and the upstream must never see a
// request the policy does not allow or the sandbox's proxy credentials.
//
// In the input, PORT stands for the upstream's port and AUTH for the
// tenant's Proxy-Authorization value, so that seeds reach the upstream.
func FuzzRawRequest(f *testing.F) {
	for _, seed := range []string{
		"GET http://127.0.0.1:PORT/ok/a HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok/../admin HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok/%2e%2e/admin HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok/%2E%2E%2Fadmin HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok/..;/admin HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok/%C0%AE%C0%AE/admin HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET http://127.0.0.1:PORT//ok/../admin HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok\\..\\admin HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\n",
		"DELETE http://127.0.0.1:PORT/ok/a HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\n",
		"get http://127.0.0.1:PORT/ok/a HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok/a HTTP/1.1\r\nHost: evil.test\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET /ok/a HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok/a HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\nConnection: Proxy-Authorization\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok/a HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\nDELETE http://127.0.0.1:PORT/admin HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok/a HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://127.0.0.1:PORT/admin HTTP/1.1\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok/a HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
		"POST http://127.0.0.1:PORT/ok/a HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\nContent-Length: 3\r\n\r\nabc",
		"CONNECT 127.0.0.1:PORT HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nProxy-Authorization: AUTH\r\n\r\nDELETE /admin HTTP/1.1\r\n\r\n",
		"GET http://127.0.0.1:PORT/ok/a HTTP/1.0\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET http://[::ffff:127.0.0.1]:PORT/ok/a HTTP/1.1\r\nProxy-Authorization: AUTH\r\n\r\n",
		"GET http://2130706433:PORT/ok/a HTTP/1.1\r\nProxy-Authorization: AUTH\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
		"\x16\x03\x01\x00\x05hello",
	} {
		f.Add([]byte(seed))
	}

	violations := make(chan string, 16)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch clean := path.Clean("/" + r.URL.Path); {
		case r.Method != http.MethodGet:
			violations <- "the upstream got method " + strconv.Quote(r.Method)
		case !strings.HasPrefix(clean, "/ok/") || strings.Contains(r.URL.Path, "..") || strings.ContainsRune(r.URL.Path, '\\'):
			violations <- "the upstream got path " + strconv.Quote(r.URL.Path)
		case r.Header.Get("Proxy-Authorization") != "":
			violations <- "the upstream got the sandbox's Proxy-Authorization"
		}
		io.WriteString(w, "ok")
	}))
	defer upstream.Close()
	port := strconv.Itoa(upstream.Listener.Addr().(*net.TCPAddr).Port)

	g := benchGateway(f, "listen: \"127.0.0.1:3128\"\nnetwork: { allow_cidrs: [\"127.0.0.1/32\"] }\nlimits: { idle_timeout: 2s, request_body_timeout: 1s }\n",
		fmt.Sprintf("rules:\n  - { name: ok, hosts: [\"127.0.0.1\"], ports: [%s], methods: [GET], paths: [\"/ok/\"] }\n", port))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go g.Serve(ln)
	auth := basicEncode("acme", benchToken)

	f.Fuzz(func(t *testing.T, raw []byte) {
		raw = bytes.ReplaceAll(raw, []byte("PORT"), []byte(port))
		raw = bytes.ReplaceAll(raw, []byte("AUTH"), []byte(auth))
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		client := conn.(*net.TCPConn)
		defer client.Close()
		go client.Write(raw)
		// A whole request is answered at once; for an input the gateway
		// still waits on, the end of the input is said by half-closing,
		// which it must answer or close on.
		reader := bufio.NewReader(client)
		client.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := reader.Peek(1); err != nil {
			client.CloseWrite()
		}
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		// Read as many responses as the input has request lines, then
		// stop: a keep-alive connection with nothing more to say need not
		// be waited on.
		for range max(1, bytes.Count(raw, []byte(" HTTP/1."))) {
			resp, err := http.ReadResponse(reader, nil)
			if err != nil {
				break // closed, or a tunnel's bytes: both are fine
			}
			if resp.StatusCode >= 400 && resp.Header.Get("X-Egressgw-Error") == "" {
				t.Fatalf("the gateway answered %d without its error code", resp.StatusCode)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			// A pipelined request is answered at once, or never (it was
			// the first one's body, or the connection is done).
			client.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		}
		select {
		case v := <-violations:
			t.Fatal(v)
		default:
		}
	})
	ln.Close()
}
