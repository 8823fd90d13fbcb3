package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/egressgw/egressgw/budget"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
)

// counterFailure is what unreadableCounters answers; no reply may show
// it.
const counterFailure = "connection refused"

// Every way an admin can ask for a statement wrongly gets the admin API's
// typed error: a bad period or date is bad_request, an unknown tenant
// not_found, counters that cannot be read state_unavailable (never a
// statement of zeros), a missing token admin_auth_required.
func TestAdminStatementErrors(t *testing.T) {
	f := newAdminFixture(t, adminTokensYAML())
	cases := []struct {
		name, path, token string
		status            int
		code              policy.Code
	}{
		{"no token", "/v1/tenants/acme/statement", "", http.StatusUnauthorized, codeAdminAuthRequired},
		{"unknown tenant", "/v1/tenants/nobody/statement", viewerTok, http.StatusNotFound, codeNotFound},
		{"unknown period", "/v1/tenants/acme/statement?period=week", viewerTok, http.StatusBadRequest, policy.CodeBadRequest},
		{"period in capitals", "/v1/tenants/acme/statement?period=DAY", viewerTok, http.StatusBadRequest, policy.CodeBadRequest},
		{"date not ISO", "/v1/tenants/acme/statement?at=06/12/2026", viewerTok, http.StatusBadRequest, policy.CodeBadRequest},
		{"date out of range", "/v1/tenants/acme/statement?at=2026-13-01", viewerTok, http.StatusBadRequest, policy.CodeBadRequest},
		{"time without zone", "/v1/tenants/acme/statement?at=2026-12-06T10:00:00", viewerTok, http.StatusBadRequest, policy.CodeBadRequest},
		{"year zero", "/v1/tenants/acme/statement?at=0000-01-01", viewerTok, http.StatusBadRequest, policy.CodeBadRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := f.do("GET", c.path, c.token, "")
			if w.Code != c.status || errorCode(t, w) != c.code {
				t.Errorf("GET %s: %d %s, want %d %s", c.path, w.Code, w.Body.String(), c.status, c.code)
			}
		})
	}

	t.Run("counters unreadable", func(t *testing.T) {
		ledger := budget.New(budget.Options{Backend: unreadableCounters{budget.NewMemory(nil)}, FlushEvery: -1})
		t.Cleanup(func() { ledger.Close() })
		f.gw.ledger = ledger
		w := f.do("GET", "/v1/tenants/acme/statement?period=month", viewerTok, "")
		if w.Code != http.StatusServiceUnavailable || errorCode(t, w) != codeStateUnavailable {
			t.Errorf("statement with unreadable counters: %d %s, want 503 state_unavailable", w.Code, w.Body.String())
		}
		if strings.Contains(w.Body.String(), counterFailure) {
			t.Errorf("the reply shows the backend's error: %s", w.Body.String())
		}
		// The usage shows the quota state all the same, and says why no
		// budget is shown rather than showing nothing used.
		ledger.SetBudgets(map[string][]budget.Budget{"acme": {{Name: "daily", Period: budget.Day, Limit: budget.Usage{Requests: 100}}}})
		w = f.do("GET", "/v1/tenants/acme/usage", viewerTok, "")
		var u struct {
			Tenant             string `json:"tenant"`
			Budgets            []any  `json:"budgets"`
			BudgetsUnavailable string `json:"budgets_unavailable"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &u); w.Code != http.StatusOK || err != nil || u.Tenant != "acme" || u.Budgets != nil || u.BudgetsUnavailable == "" {
			t.Errorf("usage with unreadable counters: %d %s; want 200, budgets null and budgets_unavailable", w.Code, w.Body.String())
		}
		if strings.Contains(w.Body.String(), counterFailure) {
			t.Errorf("the usage shows the backend's error: %s", w.Body.String())
		}
	})
}

// The query's period and date: day and now by default, a calendar date
// or an RFC 3339 time (in any zone, read as the UTC instant it names).
func TestParseStatementQuery(t *testing.T) {
	now := time.Date(2026, 12, 6, 22, 30, 0, 0, time.FixedZone("CET", 3600))
	cases := []struct {
		period, at string
		wantPeriod budget.Period
		wantAt     time.Time
	}{
		{"", "", budget.Day, now.UTC()},
		{"hour", "", budget.Hour, now.UTC()},
		{"month", "2026-11-30", budget.Month, time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)},
		{"day", "2026-12-06T00:30:00+01:00", budget.Day, time.Date(2026, 12, 5, 23, 30, 0, 0, time.UTC)},
		{"", "2026-12-06T15:04:05Z", budget.Day, time.Date(2026, 12, 6, 15, 4, 5, 0, time.UTC)},
	}
	for _, c := range cases {
		p, at, err := parseStatementQuery(c.period, c.at, now)
		if err != nil || p != c.wantPeriod || !at.Equal(c.wantAt) || at.Location() != time.UTC {
			t.Errorf("parseStatementQuery(%q, %q) = %s, %v, %v; want %s, %v", c.period, c.at, p, at, err, c.wantPeriod, c.wantAt)
		}
	}
}

// unreadableQuota is a quota backend that cannot be read.
type unreadableQuota struct{ quota.Limiter }

func (unreadableQuota) Peek(context.Context, string, quota.Limit) (quota.Result, error) {
	return quota.Result{}, fmt.Errorf("%w: dial tcp 10.1.2.3:6379: %s", quota.ErrUnavailable, counterFailure)
}

func (unreadableQuota) InUse(context.Context, string) (int, error) {
	return 0, fmt.Errorf("%w: dial tcp 10.1.2.3:6379: %s", quota.ErrUnavailable, counterFailure)
}

// The usage and explain endpoints answer with the admin API's typed
// errors too, as the reference documents them for every admin endpoint:
// the code in "error" and in X-Egressgw-Error, what went wrong in
// "message", and never the quota backend's own error.
func TestAdminUsageAndExplainErrors(t *testing.T) {
	f := newAdminFixture(t, adminTokensYAML())
	for _, c := range []struct {
		name, path string
		status     int
		code       policy.Code
	}{
		{"usage of an unknown tenant", "/v1/tenants/nobody/usage", http.StatusNotFound, codeNotFound},
		{"explain for an unknown tenant", "/v1/explain?tenant=nobody&method=GET&url=https://docs.python.org/", http.StatusNotFound, codeNotFound},
		{"explain of a URL it cannot read", "/v1/explain?tenant=acme&method=GET&url=%25zz", http.StatusBadRequest, policy.CodeBadRequest},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := f.do("GET", c.path, viewerTok, "")
			if w.Code != c.status || errorCode(t, w) != c.code || w.Header().Get("X-Egressgw-Error") != string(c.code) {
				t.Errorf("GET %s: %d %v %s, want %d %s", c.path, w.Code, w.Header(), w.Body.String(), c.status, c.code)
			}
		})
	}
	t.Run("usage with the quota backend unreadable", func(t *testing.T) {
		f.gw.quota = unreadableQuota{f.gw.quota}
		w := f.do("GET", "/v1/tenants/acme/usage", viewerTok, "")
		if w.Code != http.StatusServiceUnavailable || errorCode(t, w) != policy.CodeQuotaUnavailable {
			t.Errorf("usage with the quota backend unreadable: %d %s, want 503 quota_unavailable", w.Code, w.Body.String())
		}
		if body := w.Body.String(); strings.Contains(body, counterFailure) || strings.Contains(body, "10.1.2.3") {
			t.Errorf("the reply shows the backend's error: %s", body)
		}
	})
}
