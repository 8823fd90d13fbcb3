package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The admin listener serves /debug/pprof/ with the handler the program
// passes in, and nothing there without one; the proxy package itself
// registers nothing on http.DefaultServeMux (as importing net/http/pprof
// would), so a program embedding it exposes no profiling it did not ask for.
func TestAdminProfiling(t *testing.T) {
	if _, pattern := http.DefaultServeMux.Handler(httptest.NewRequest(http.MethodGet, "/debug/pprof/", nil)); pattern != "" {
		t.Errorf("http.DefaultServeMux serves /debug/pprof/ (pattern %q) in a program that only imports proxy", pattern)
	}

	profiling := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "profiles for "+r.URL.Path)
	})
	cases := []struct {
		name      string
		profiling http.Handler
		path      string
		status    int
		body      string
	}{
		{"without a handler", nil, "/debug/pprof/", http.StatusNotFound, ""},
		{"without a handler, a profile", nil, "/debug/pprof/heap", http.StatusNotFound, ""},
		{"with a handler", profiling, "/debug/pprof/", http.StatusOK, "profiles for /debug/pprof/"},
		{"with a handler, a profile", profiling, "/debug/pprof/heap", http.StatusOK, "profiles for /debug/pprof/heap"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := benchGateway(t, "listen: \"127.0.0.1:3128\"\n", "")
			g.profiling = c.profiling
			admin := g.AdminHandler(&ConfigStatus{})
			w := httptest.NewRecorder()
			admin.ServeHTTP(w, httptest.NewRequest(http.MethodGet, c.path, nil))
			if w.Code != c.status || (c.body != "" && w.Body.String() != c.body) {
				t.Errorf("GET %s: status %d, body %q; want %d %q", c.path, w.Code, w.Body.String(), c.status, c.body)
			}
		})
	}
}
