package redaction

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestURLForMessage(t *testing.T) {
	for in, want := range map[string]string{
		"https://api.example.com/v1/items":                   "https://api.example.com/v1/items",
		"https://api.example.com/v1/items?token=abc&x=1":     "https://api.example.com/v1/items?…",
		"https://api.example.com?token=abc":                  "https://api.example.com?…",
		"https://user:pw@api.example.com/x?token=abc#frag":   "https://api.example.com/x?…",
		"https://api.example.com/x#frag?token=abc":           "https://api.example.com/x",
		"http://api.example.com:8080/":                       "http://api.example.com:8080/",
		"/v1/items?token=abc":                                "/v1/items?…",
		"not a url ?token=abc":                               "not a url ?…",
		"":                                                   "",
		"https://a@b@api.example.com/p/a@b?x":                "https://api.example.com/p/a@b?…",
		"https://api.example.com/%zz?token=query-marker-9c1": "https://api.example.com/%zz?…",
	} {
		if got := URLForMessage(in); got != want {
			t.Errorf("URLForMessage(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestErrorForMessage drives the errors Go itself builds around a URL: the
// URL parser's and the HTTP client's.
func TestErrorForMessage(t *testing.T) {
	const marker = "query-marker-51b7"
	_, parseErr := url.Parse("http://api.example.com/%zz?token=" + marker)
	client := &http.Client{Transport: failingTransport{}}
	_, clientErr := client.Get("http://user:" + marker + "@api.example.com/v1?token=" + marker)
	for name, err := range map[string]error{
		"parse":   parseErr,
		"client":  clientErr,
		"wrapped": fmt.Errorf("forwarding: %w", clientErr),
	} {
		if err == nil || !strings.Contains(err.Error(), marker) {
			t.Fatalf("%s: the test's error %v does not hold the marker to begin with", name, err)
		}
		got := ErrorForMessage(err)
		if strings.Contains(got, marker) {
			t.Errorf("%s: ErrorForMessage = %q, holds the query value", name, got)
		}
		if !strings.Contains(got, "api.example.com") {
			t.Errorf("%s: ErrorForMessage = %q, lost the host", name, got)
		}
	}
	if got := ErrorForMessage(errors.New("plain")); got != "plain" {
		t.Errorf("ErrorForMessage(plain) = %q", got)
	}
}

type failingTransport struct{}

func (failingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("connection refused")
}
