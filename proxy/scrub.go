package proxy

import (
	"compress/gzip"
	"io"
	"net/http"
	"strings"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/redaction"
)

// scrubResponse removes the connector's injected secrets from what goes
// back to the sandbox: header values at once, the body as it streams (its
// plain, JSON-escaped and URL-escaped forms), trailers when the body ends.
// A gzip body is decoded first; other encodings cannot be scrubbed and
// fail closed.
func scrubResponse(resp *http.Response, c *policy.Connector) error {
	if c == nil || c.Scrubber == nil {
		return nil
	}
	c.Scrubber.Headers(resp.Header)
	if err := decodeBody(resp); err != nil {
		return err
	}
	resp.Header.Del("Content-Length")
	resp.ContentLength = -1
	resp.Body = struct {
		io.Reader
		io.Closer
	}{&trailerScrubber{body: c.Scrubber.Reader(resp.Body), resp: resp, scrubber: c.Scrubber}, resp.Body}
	return nil
}

// trailerScrubber scrubs a response's trailers once its body has been read
// to the end, which is when the HTTP client fills them in, and before
// anything copies them on to the sandbox.
type trailerScrubber struct {
	body     io.Reader
	resp     *http.Response
	scrubber *redaction.SecretScrubber
	done     bool
}

func (t *trailerScrubber) Read(p []byte) (int, error) {
	n, err := t.body.Read(p)
	if err == io.EOF && !t.done {
		t.done = true
		t.scrubber.Headers(t.resp.Trailer)
	}
	return n, err
}

// decodeBody undoes a gzip Content-Encoding so the body can be read by
// the gateway; an encoding it cannot decode fails closed.
func decodeBody(resp *http.Response) error {
	// Every Content-Encoding line counts: "identity" then "gzip" is gzip.
	enc := strings.ToLower(strings.Join(resp.Header.Values("Content-Encoding"), ","))
	switch enc {
	case "", "identity":
		return nil
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			return &encodingError{encoding: "corrupt gzip"}
		}
		resp.Body = struct {
			io.Reader
			io.Closer
		}{zr, resp.Body}
		resp.Header.Del("Content-Encoding")
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
		return nil
	default:
		return &encodingError{encoding: enc}
	}
}

type encodingError struct{ encoding string }

func (e *encodingError) Error() string { return "cannot scrub " + e.encoding + " body" }
