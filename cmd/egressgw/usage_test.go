package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/egressgw/egressgw/budget"
)

const usageToken = "usage-viewer-token-0123456789"

// usageAPI is an admin API answering the statement and usage of tenant
// acme, as the gateway does, and recording what it was asked.
type usageAPI struct {
	url       string
	statement budget.Statement
	budgets   []budget.Status

	mu    sync.Mutex
	asked []string // path?query of each request
}

func startUsageAPI(t *testing.T, budgetsUnavailable string) *usageAPI {
	t.Helper()
	start := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	api := &usageAPI{
		statement: budget.Statement{
			Tenant: "acme", Period: budget.Day, Start: start, End: start.AddDate(0, 0, 1), Currency: "USD",
			Lines: []budget.Line{
				{Connector: "openai", Version: 2, Usage: budget.Usage{Requests: 1200, Egress: 3 << 20, Ingress: 40 << 20, Cost: 2.4123}},
				{Usage: budget.Usage{Requests: 30, Egress: 512, Ingress: 4 << 10}},
			},
			Total: budget.Usage{Requests: 1230, Egress: 3<<20 + 512, Ingress: 40<<20 + 4<<10, Cost: 2.4123},
		},
		budgets: []budget.Status{{
			Name: "daily", Period: budget.Day, Limit: budget.Usage{Requests: 100000, Egress: 1 << 30, Cost: 25},
			Used: budget.Usage{Requests: 1230, Egress: 3<<20 + 512, Ingress: 40<<20 + 4<<10, Cost: 2.4123}, WarnAt: 0.8,
			Reset: time.Now().Add(3*time.Hour + 12*time.Minute + 20*time.Second),
		}},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		api.mu.Lock()
		api.asked = append(api.asked, r.URL.RequestURI())
		api.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer "+usageToken {
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(map[string]string{"error": "admin_auth_required", "message": "send an admin token as Authorization: Bearer TOKEN"})
			return
		}
		switch r.URL.Path {
		case "/v1/tenants/acme/statement":
			if p := r.URL.Query().Get("period"); p != "day" && p != "hour" && p != "month" {
				w.WriteHeader(http.StatusBadRequest)
				json.NewEncoder(w).Encode(map[string]string{"error": "bad_request", "message": `period "` + p + `": want hour, day or month`})
				return
			}
			json.NewEncoder(w).Encode(api.statement)
		case "/v1/tenants/acme/usage":
			reply := map[string]any{"tenant": "acme", "open": 0, "bandwidth": []any{}, "budgets": api.budgets}
			if budgetsUnavailable != "" {
				reply["budgets"], reply["budgets_unavailable"] = nil, budgetsUnavailable
			}
			json.NewEncoder(w).Encode(reply)
		default:
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"error": "not_found", "message": "tenant \"nobody\" is not defined in the live policy"})
		}
	}))
	t.Cleanup(srv.Close)
	api.url = srv.URL
	return api
}

func usageCLI(t *testing.T, token string, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv(adminTokenEnv, token)
	var stdout, stderr bytes.Buffer
	code := run(append([]string{"usage"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// usage prints the statement per connector with a total line, then the
// budgets with used/limit and when they reset.
func TestUsagePrintsStatementAndBudgets(t *testing.T) {
	api := startUsageAPI(t, "")
	code, stdout, stderr := usageCLI(t, usageToken, "--admin-url", api.url, "--tenant", "acme", "--period", "day", "--at", "2026-12-06")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	want := `tenant acme, day from 2026-12-06T00:00:00Z to 2026-12-07T00:00:00Z (UTC)

CONNECTOR           REQUESTS  BYTES UP  BYTES DOWN  COST
openai@2            1200      3.0 MiB   40.0 MiB    2.4123 USD
(rules and grants)  30        512 B     4.0 KiB     0.0000 USD
TOTAL               1230      3.0 MiB   40.0 MiB    2.4123 USD

BUDGET  PERIOD  REQUESTS     EGRESS           INGRESS  COST                STATE  RESET
daily   day     1230/100000  3.0 MiB/1.0 GiB  -        2.4123/25.0000 USD  ok     ` + api.budgets[0].Reset.UTC().Format(time.RFC3339) + " (in 3h12m)\n"
	if stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout, want)
	}
	if got := strings.Join(api.asked, " "); got != "/v1/tenants/acme/statement?at=2026-12-06&period=day /v1/tenants/acme/usage" {
		t.Errorf("asked %s", got)
	}
}

// --json prints the statement exactly as the API gives it.
func TestUsageJSONIsTheStatement(t *testing.T) {
	api := startUsageAPI(t, "")
	code, stdout, stderr := usageCLI(t, usageToken, "--admin-url", api.url, "--tenant", "acme", "--json")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var got budget.Statement
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("stdout is not a statement: %v\n%s", err, stdout)
	}
	want, _ := json.Marshal(api.statement)
	have, _ := json.Marshal(got)
	if !bytes.Equal(want, have) {
		t.Errorf("--json printed %s, want %s", have, want)
	}
	if got := strings.Join(api.asked, " "); got != "/v1/tenants/acme/statement?period=day" {
		t.Errorf("asked %s; the default period is day, and --json needs no budgets", got)
	}
}

// Every failure exits non-zero with the API's message on stderr and
// nothing on stdout: usage errors 2, the gateway's refusals 1.
func TestUsageErrors(t *testing.T) {
	api := startUsageAPI(t, "")
	unavailable := startUsageAPI(t, "the budget counters could not be read; try again")
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	cases := []struct {
		name, token string
		args        []string
		code        int
		stderr      string
	}{
		{"no tenant", usageToken, []string{"--admin-url", api.url}, exitUsage, "--tenant is required"},
		{"bad admin url", usageToken, []string{"--admin-url", "ftp://x", "--tenant", "acme"}, exitUsage, "--admin-url"},
		{"stray argument", usageToken, []string{"--admin-url", api.url, "--tenant", "acme", "extra"}, exitUsage, "unexpected argument"},
		{"unknown tenant", usageToken, []string{"--admin-url", api.url, "--tenant", "nobody"}, exitFail, "not_found"},
		{"bad period", usageToken, []string{"--admin-url", api.url, "--tenant", "acme", "--period", "week"}, exitFail, "bad_request"},
		{"no token", "", []string{"--admin-url", api.url, "--tenant", "acme"}, exitFail, "set " + adminTokenEnv},
		{"budgets unreadable", usageToken, []string{"--admin-url", unavailable.url, "--tenant", "acme"}, exitFail, "could not be read"},
		{"gateway down", usageToken, []string{"--admin-url", closed.URL, "--tenant", "acme"}, exitFail, "cannot reach"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := usageCLI(t, c.token, c.args...)
			if code != c.code || stdout != "" || !strings.Contains(stderr, c.stderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, no stdout, stderr with %q", code, stdout, stderr, c.code, c.stderr)
			}
		})
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 1 << 30: "1.0 GiB", 20 << 30: "20.0 GiB", 1<<62 + 1<<61: "6.0 EiB"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
