package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

func TestParseServerError(t *testing.T) {
	cases := []struct {
		name   string
		write  string
		status int
		detail string
		ok     bool
	}{
		{"header too large", "HTTP/1.1 431 Request Header Fields Too Large" + serverErrorHeaders + "431 Request Header Fields Too Large", 431, "", true},
		{"unsupported transfer encoding", "HTTP/1.1 501 Not Implemented" + serverErrorHeaders + "Unsupported transfer encoding", 501, "", true},
		{"status error with detail", "HTTP/1.1 400 Bad Request: missing required Host header" + serverErrorHeaders + "400 Bad Request: missing required Host header", 400, "missing required Host header", true},
		{"plain bad request", "HTTP/1.1 400 Bad Request" + serverErrorHeaders + "400 Bad Request", 400, "", true},
		{"a handler's response: sorted headers and a Date", "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Mon, 23 Nov 2026 08:00:00 GMT\r\n\r\nno", 0, "", false},
		{"a success", "HTTP/1.1 200 OK" + serverErrorHeaders + "fine", 0, "", false},
		{"error head further down", "HTTP/1.1 400 Bad Request\r\nX-Other: 1" + serverErrorHeaders, 0, "", false},
		{"body bytes", "some body bytes" + serverErrorHeaders, 0, "", false},
		{"HTTP/1.0", "HTTP/1.0 400 Bad Request" + serverErrorHeaders, 0, "", false},
		{"not a number", "HTTP/1.1 4x0 Bad Request" + serverErrorHeaders, 0, "", false},
		{"short", "HTTP/1.1 40", 0, "", false},
		{"empty", "", 0, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, detail, ok := parseServerError([]byte(c.write))
			if status != c.status || detail != c.detail || ok != c.ok {
				t.Errorf("parseServerError = %d, %q, %v; want %d, %q, %v", status, detail, ok, c.status, c.detail, c.ok)
			}
		})
	}
}

// On a real server, net/http's own error replies are replaced, on a fresh
// connection and after a kept-alive request alike, and a handler's
// response is never touched, even one shaped like an error.
func TestServerErrorsReplacedHandlerResponsesNot(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const replaced = "HTTP/1.1 400 Bad Request\r\nContent-Length: 8\r\nConnection: close\r\n\r\nreplaced"
	ln := newLimitListener(inner, 10, discardLogger(), func(net.Addr, int, string) []byte { return []byte(replaced) })
	srv := &http.Server{
		ConnContext: connContext,
		ConnState:   connState,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			markHandling(r)
			if r.URL.Path == "/refuse" {
				w.Header().Set("Connection", "close")
				http.Error(w, "the handler refuses", http.StatusBadRequest)
				return
			}
			io.WriteString(w, "fine")
		}),
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	exchange := func(c *rawConn, raw string) (int, string) {
		t.Helper()
		status, body, err := c.exchange(raw)
		if err != nil {
			t.Fatal(err)
		}
		return status, body
	}
	addr := inner.Addr().String()

	if status, body := exchange(dialRaw(t, addr), "GET /refuse HTTP/1.1\r\nHost: x\r\n\r\n"); status != 400 || body != "the handler refuses\n" {
		t.Errorf("handler's error: %d %q, want it untouched", status, body)
	}
	if _, body := exchange(dialRaw(t, addr), "GET / HTTP/1.1\r\n\r\n"); body != "replaced" {
		t.Errorf("missing Host on a fresh connection: %q, want the replacement", body)
	}
	kept := dialRaw(t, addr)
	if _, body := exchange(kept, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); body != "fine" {
		t.Fatalf("kept-alive request: %q", body)
	}
	if _, body := exchange(kept, "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\nHost: x\r\n\r\n"); body != "replaced" {
		t.Errorf("conflicting Content-Length after a kept-alive request: %q, want the replacement", body)
	}
}

// rawConn is a client connection for raw HTTP/1.1 exchanges.
type rawConn struct {
	net.Conn
	reader *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawConn{Conn: conn, reader: bufio.NewReader(conn)}
}

// exchange writes raw and reads the response to it, body and all.
func (c *rawConn) exchange(raw string) (int, string, error) {
	if _, err := io.WriteString(c, raw); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(c.reader, nil)
	if err != nil {
		return 0, "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(body), err
}

func FuzzParseServerError(f *testing.F) {
	f.Add([]byte("HTTP/1.1 431 Request Header Fields Too Large" + serverErrorHeaders + "431"))
	f.Add([]byte("HTTP/1.1 400 Bad Request: x" + serverErrorHeaders))
	f.Add([]byte("HTTP/1.1 200 OK\r\n\r\n"))
	f.Fuzz(func(t *testing.T, p []byte) {
		status, detail, ok := parseServerError(p)
		if !ok {
			return
		}
		head, _, found := bytes.Cut(p, []byte(serverErrorHeaders))
		if !found || !bytes.HasPrefix(p, []byte("HTTP/1.1 ")) || status < 400 || status > 599 ||
			bytes.ContainsAny(head, "\r\n") || strings.ContainsAny(detail, "\r\n") {
			t.Errorf("accepted %q as status %d detail %q", p, status, detail)
		}
	})
}
