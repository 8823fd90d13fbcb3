package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/egressgw/egressgw/redaction"
)

// grpcFrame is one uncompressed gRPC message with its head.
func grpcFrame(msg string) []byte {
	b := make([]byte, grpcMessageHead, grpcMessageHead+len(msg))
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

// grpcMessages splits a stream of gRPC messages, failing on a malformed one.
func grpcMessages(t testing.TB, b []byte) []string {
	t.Helper()
	var out []string
	for len(b) > 0 {
		if len(b) < grpcMessageHead || b[0] != 0 {
			t.Fatalf("malformed message head in %q", b)
		}
		n := int(binary.BigEndian.Uint32(b[1:grpcMessageHead]))
		if len(b) < grpcMessageHead+n {
			t.Fatalf("message of %d bytes cut short: %q", n, b)
		}
		out = append(out, string(b[grpcMessageHead:grpcMessageHead+n]))
		b = b[grpcMessageHead+n:]
	}
	return out
}

func grpcTestScrubber(t testing.TB) *redaction.SecretScrubber {
	t.Helper()
	s, err := redaction.NewSecretScrubber([][]byte{[]byte(pathInjected)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestGRPCScrubber(t *testing.T) {
	scrubber := grpcTestScrubber(t)
	stream := append(append(grpcFrame("token="+pathInjected+"!"), grpcFrame("")...), grpcFrame("nothing secret")...)
	cases := []struct {
		name    string
		src     io.Reader
		limit   int64
		want    []string
		wantErr error
	}{
		{"whole messages, the secret replaced and the length set anew", bytes.NewReader(stream), 1 << 20,
			[]string{"token=" + redaction.SecretMask + "!", "", "nothing secret"}, nil},
		{"a message arriving a byte at a time", iotest.OneByteReader(bytes.NewReader(stream)), 1 << 20,
			[]string{"token=" + redaction.SecretMask + "!", "", "nothing secret"}, nil},
		{"a compressed message fails closed", bytes.NewReader(append([]byte{1}, grpcFrame("x")[1:]...)), 1 << 20, nil, errGRPCCompressed},
		{"a message over the limit fails closed", bytes.NewReader(grpcFrame(strings.Repeat("x", 65))), 64, nil, errGRPCTooLarge},
		{"a stream cut inside a head", bytes.NewReader([]byte{0, 0, 0}), 1 << 20, nil, errGRPCTruncated},
		{"a stream cut inside a message", bytes.NewReader(grpcFrame("cut short")[:8]), 1 << 20, nil, errGRPCTruncated},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := io.ReadAll(&grpcScrubber{src: c.src, scrubber: scrubber, limit: c.limit})
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("error %v, want %v", err, c.wantErr)
				}
				if bytes.Contains(out, []byte(pathInjected)) {
					t.Errorf("the secret passed before the error: %q", out)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := grpcMessages(t, out); fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Errorf("messages %q, want %q", got, c.want)
			}
		})
	}

	t.Run("a message is passed on as soon as it is whole", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		g := &grpcScrubber{src: pr, scrubber: scrubber, limit: 1 << 20}
		go pw.Write(grpcFrame("first"))
		got := make(chan string, 1)
		go func() {
			buf := make([]byte, 64)
			n, err := io.ReadAtLeast(g, buf, grpcMessageHead+len("first"))
			got <- fmt.Sprintf("%q %v", buf[:n], err)
		}()
		if msg := <-got; msg != fmt.Sprintf("%q <nil>", grpcFrame("first")) {
			t.Errorf("read %s, want the first message while the stream stays open", msg)
		}
	})

	t.Run("trailers are scrubbed once the stream ends", func(t *testing.T) {
		resp := &http.Response{Trailer: http.Header{"Grpc-Message": {"bad token " + pathInjected}}}
		if _, err := io.ReadAll(&grpcScrubber{src: bytes.NewReader(grpcFrame("x")), resp: resp, scrubber: scrubber, limit: 1 << 20}); err != nil {
			t.Fatal(err)
		}
		if got := resp.Trailer.Get("Grpc-Message"); strings.Contains(got, pathInjected) {
			t.Errorf("trailer %q still holds the secret", got)
		}
	})
}

func TestIsGRPC(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc":               true,
		"application/grpc+proto":         true,
		"Application/GRPC; charset=utf8": true,
		"application/grpc-web":           false,
		"application/grpc-web-text":      false,
		"application/json":               false,
		"":                               false,
		"application/grpc;;":             false,
	} {
		if got := isGRPC(http.Header{"Content-Type": {ct}}); got != want {
			t.Errorf("isGRPC(%q) = %v, want %v", ct, got, want)
		}
	}
}

// FuzzGRPCScrubber feeds the scrubber any bytes an upstream could send:
// it must never panic, and whatever it passes on is whole messages
// without the secret.
func FuzzGRPCScrubber(f *testing.F) {
	f.Add(grpcFrame("token=" + pathInjected))
	f.Add(append(grpcFrame("a"), grpcFrame(pathInjected[:10])...))
	f.Add([]byte{1, 0, 0, 0, 1, 'x'})
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0})
	scrubber := grpcTestScrubber(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := io.ReadAll(&grpcScrubber{src: bytes.NewReader(in), scrubber: scrubber, limit: 1 << 10})
		if err == nil {
			grpcMessages(t, out)
		}
		if bytes.Contains(out, []byte(pathInjected)) {
			t.Fatalf("the secret passed: %q", out)
		}
	})
}
