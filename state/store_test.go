package state

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"
)

// clock is an injected clock tests move by hand. It starts at the real
// time, so that Redis keys expiring with grants live while tests run.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now().UTC().Truncate(time.Millisecond)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newStoreFunc builds a fresh, empty store of one backend for a test.
type newStoreFunc func(t *testing.T, opts Options) Store

var idPattern = regexp.MustCompile(`^(req|gr)_[a-z2-7]{26}$`)

// testStoreContract runs the behaviour every backend must have.
func testStoreContract(t *testing.T, newStore newStoreFunc) {
	ctx := context.Background()
	refusal := func(tenant, host string, port int) Sighting {
		return Sighting{Tenant: tenant, Host: host, Port: port, Method: "GET", Path: "/"}
	}
	mustRecord := func(t *testing.T, s Store, sg Sighting) RequestRef {
		t.Helper()
		ref, err := s.RecordRefusal(ctx, sg)
		if err != nil {
			t.Fatalf("RecordRefusal(%+v): %v", sg, err)
		}
		return ref
	}
	getRequest := func(t *testing.T, s Store, id string) AccessRequest {
		t.Helper()
		rs, err := s.ListRequests(ctx, Filter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.ID == id {
				return r
			}
		}
		t.Fatalf("request %s not listed in %+v", id, rs)
		return AccessRequest{}
	}

	t.Run("dedup", func(t *testing.T) {
		c := newClock()
		s := newStore(t, Options{Now: c.Now})
		first := c.Now()
		a := mustRecord(t, s, Sighting{Tenant: "t1", Host: "pypi.org", Port: 443, Method: "get", Path: "/simple/?token=secret#frag"})
		if !idPattern.MatchString(a.ID) || a.Status != StatusPending {
			t.Fatalf("first refusal: %+v, want a pending req_ id", a)
		}
		c.Add(time.Second)
		b := mustRecord(t, s, Sighting{Tenant: "t1", Host: "pypi.org", Port: 443, Method: "POST", Path: "/upload?x=1"})
		if b != a {
			t.Fatalf("same tenant, host, port: %+v, want %+v", b, a)
		}
		others := []Sighting{refusal("t1", "pypi.org", 80), refusal("t2", "pypi.org", 443), refusal("t1", "files.pypi.org", 443)}
		ids := map[string]bool{a.ID: true}
		for _, o := range others {
			ref := mustRecord(t, s, o)
			if ids[ref.ID] {
				t.Fatalf("%+v shares id %s", o, ref.ID)
			}
			ids[ref.ID] = true
		}
		r := getRequest(t, s, a.ID)
		want := AccessRequest{ID: a.ID, Tenant: "t1", Host: "pypi.org", Port: 443, Count: 2,
			FirstSeen: first, LastSeen: first.Add(time.Second), Method: "POST", Path: "/upload", Status: StatusPending}
		if !r.FirstSeen.Equal(want.FirstSeen) || !r.LastSeen.Equal(want.LastSeen) {
			t.Fatalf("seen %v..%v, want %v..%v", r.FirstSeen, r.LastSeen, want.FirstSeen, want.LastSeen)
		}
		r.FirstSeen, r.LastSeen, want.FirstSeen, want.LastSeen = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		if r != want {
			t.Fatalf("request\n got %+v\nwant %+v", r, want)
		}
	})

	t.Run("invalid sightings", func(t *testing.T) {
		s := newStore(t, Options{})
		for name, sg := range map[string]Sighting{
			"no tenant":  refusal("", "a.example", 443),
			"no host":    refusal("t", "", 443),
			"port 0":     refusal("t", "a.example", 0),
			"port 65536": refusal("t", "a.example", 65536),
			"long host":  refusal("t", string(make([]byte, 300)), 443),
		} {
			if _, err := s.RecordRefusal(ctx, sg); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: err %v, want ErrInvalid", name, err)
			}
			if _, err := s.FileRequest(ctx, sg); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: filing: err %v, want ErrInvalid", name, err)
			}
		}
		if rs, err := s.ListRequests(ctx, Filter{}); err != nil || len(rs) != 0 {
			t.Fatalf("after invalid sightings: %v, %v; want none", rs, err)
		}
	})

	t.Run("long strings are cut", func(t *testing.T) {
		s := newStore(t, Options{})
		long := make([]byte, 5000)
		for i := range long {
			long[i] = 'a'
		}
		ref, err := s.FileRequest(ctx, Sighting{Tenant: "t", Host: "a.example", Port: 443, Method: "GET", Path: "/" + string(long), Reason: string(long)})
		if err != nil {
			t.Fatal(err)
		}
		r := getRequest(t, s, ref.ID)
		if len(r.Path) != maxPathLen || len(r.Reason) != maxReasonLen {
			t.Fatalf("path %d, reason %d bytes; want %d, %d", len(r.Path), len(r.Reason), maxPathLen, maxReasonLen)
		}
	})

	t.Run("approve", func(t *testing.T) {
		c := newClock()
		s := newStore(t, Options{Now: c.Now})
		ref := mustRecord(t, s, refusal("t1", "pypi.org", 443))
		v0, err := s.Version(ctx)
		if err != nil {
			t.Fatal(err)
		}
		exp := c.Now().Add(2 * time.Hour)
		g, err := s.Approve(ctx, ref.ID, GrantSpec{ExpiresAt: exp, By: "alice", Note: "build deps", Methods: []string{"GET"}})
		if err != nil {
			t.Fatal(err)
		}
		if !idPattern.MatchString(g.ID) || g.Tenant != "t1" || g.Host != "pypi.org" || !slices.Equal(g.Ports, []int{443}) ||
			!g.ExpiresAt.Equal(exp) || g.ApprovedBy != "alice" || g.RequestID != ref.ID || g.Note != "build deps" {
			t.Fatalf("grant %+v", g)
		}
		if v1, err := s.Version(ctx); err != nil || v1 == v0 {
			t.Fatalf("version %d after approval (was %d), %v: want a change", v1, v0, err)
		}
		r := getRequest(t, s, ref.ID)
		if r.Status != StatusApproved || r.GrantID != g.ID || r.DecidedBy != "alice" || !r.DecidedAt.Equal(c.Now()) {
			t.Fatalf("request after approval: %+v", r)
		}
		gs, err := s.Grants(ctx, c.Now())
		if err != nil || len(gs) != 1 || gs[0].ID != g.ID || !slices.Equal(gs[0].Methods, []string{"GET"}) {
			t.Fatalf("Grants: %+v, %v; want [%s]", gs, err, g.ID)
		}
		if _, err := s.Approve(ctx, ref.ID, GrantSpec{ExpiresAt: exp, By: "bob"}); !errors.Is(err, ErrNotPending) {
			t.Fatalf("second approval: %v, want ErrNotPending", err)
		}
		if _, err := s.Deny(ctx, ref.ID, "bob"); !errors.Is(err, ErrNotPending) {
			t.Fatalf("deny after approval: %v, want ErrNotPending", err)
		}
		if _, err := s.Approve(ctx, "req_nosuchrequest", GrantSpec{ExpiresAt: exp, By: "bob"}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("approving an unknown id: %v, want ErrNotFound", err)
		}

		// An approver may choose a wider pattern and other ports.
		ref2 := mustRecord(t, s, refusal("t1", "files.pythonhosted.org", 443))
		g2, err := s.Approve(ctx, ref2.ID, GrantSpec{Host: "*.pythonhosted.org", Ports: []int{443, 8443}, ExpiresAt: exp, By: "alice"})
		if err != nil || g2.Host != "*.pythonhosted.org" || !slices.Equal(g2.Ports, []int{443, 8443}) {
			t.Fatalf("wider grant %+v, %v", g2, err)
		}

		// Replicas refuse until they apply the grant: that keeps the
		// approval.
		c.Add(time.Second)
		if got := mustRecord(t, s, refusal("t1", "pypi.org", 443)); got != (RequestRef{ID: ref.ID, Status: StatusApproved}) {
			t.Fatalf("refusal while the grant is active: %+v, want %s approved", got, ref.ID)
		}
		// Once the grant has expired, a refusal reopens the request.
		c.Add(2 * time.Hour)
		again := mustRecord(t, s, refusal("t1", "pypi.org", 443))
		if again.ID != ref.ID || again.Status != StatusPending {
			t.Fatalf("refusal after the grant expired: %+v, want %s pending", again, ref.ID)
		}
		if r := getRequest(t, s, ref.ID); r.GrantID != "" || r.DecidedBy != "" || r.Count != 3 {
			t.Fatalf("reopened request %+v", r)
		}
		// So does revoking a grant; and a filing reopens even an approval
		// whose grant is active.
		exp = c.Now().Add(time.Hour)
		g3, err := s.Approve(ctx, ref.ID, GrantSpec{ExpiresAt: exp, By: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeGrant(ctx, g3.ID); err != nil {
			t.Fatal(err)
		}
		if got := mustRecord(t, s, refusal("t1", "pypi.org", 443)); got.Status != StatusPending {
			t.Fatalf("refusal after revocation: %+v, want pending", got)
		}
		if _, err := s.Approve(ctx, ref.ID, GrantSpec{ExpiresAt: exp, By: "alice", Methods: []string{"GET"}}); err != nil {
			t.Fatal(err)
		}
		got, err := s.FileRequest(ctx, Sighting{Tenant: "t1", Host: "pypi.org", Port: 443, Method: "POST", Reason: "uploads too"})
		if err != nil || got.Status != StatusPending {
			t.Fatalf("filing while the grant is active: %+v, %v; want pending", got, err)
		}
	})

	t.Run("invalid approvals grant nothing", func(t *testing.T) {
		c := newClock()
		s := newStore(t, Options{Now: c.Now, MaxGrantDuration: 24 * time.Hour})
		ref := mustRecord(t, s, refusal("t1", "pypi.org", 443))
		in := func(d time.Duration) time.Time { return c.Now().Add(d) }
		for _, tc := range []struct {
			name string
			spec GrantSpec
		}{
			{"no expiry", GrantSpec{By: "a"}},
			{"expiry in the past", GrantSpec{ExpiresAt: in(-time.Second), By: "a"}},
			{"expiry now", GrantSpec{ExpiresAt: in(0), By: "a"}},
			{"over max duration", GrantSpec{ExpiresAt: in(24*time.Hour + time.Second), By: "a"}},
			{"port 0", GrantSpec{Ports: []int{443, 0}, ExpiresAt: in(time.Hour), By: "a"}},
			{"port 65536", GrantSpec{Ports: []int{65536}, ExpiresAt: in(time.Hour), By: "a"}},
			{"lower-case method", GrantSpec{Methods: []string{"get"}, ExpiresAt: in(time.Hour), By: "a"}},
			{"empty method", GrantSpec{Methods: []string{""}, ExpiresAt: in(time.Hour), By: "a"}},
			{"empty path", GrantSpec{Paths: []string{""}, ExpiresAt: in(time.Hour), By: "a"}},
			{"nobody approved", GrantSpec{ExpiresAt: in(time.Hour)}},
		} {
			if _, err := s.Approve(ctx, ref.ID, tc.spec); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: %v, want ErrInvalid", tc.name, err)
			}
			tc.spec.Tenant, tc.spec.Host = "t1", "pypi.org"
			if len(tc.spec.Ports) == 0 {
				tc.spec.Ports = []int{443}
			}
			if _, err := s.AddGrant(ctx, tc.spec); !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: AddGrant: %v, want ErrInvalid", tc.name, err)
			}
		}
		for name, spec := range map[string]GrantSpec{
			"no host":   {Tenant: "t1", Ports: []int{443}, ExpiresAt: in(time.Hour), By: "a"},
			"no tenant": {Host: "a.example", Ports: []int{443}, ExpiresAt: in(time.Hour), By: "a"},
			"no ports":  {Tenant: "t1", Host: "a.example", ExpiresAt: in(time.Hour), By: "a"},
		} {
			if _, err := s.AddGrant(ctx, spec); !errors.Is(err, ErrInvalid) {
				t.Errorf("AddGrant %s: %v, want ErrInvalid", name, err)
			}
		}
		if gs, err := s.Grants(ctx, c.Now()); err != nil || len(gs) != 0 {
			t.Fatalf("grants after invalid input: %+v, %v", gs, err)
		}
		if r := getRequest(t, s, ref.ID); r.Status != StatusPending {
			t.Fatalf("request after invalid approvals: %+v", r)
		}
		// Exactly the maximum is allowed.
		if _, err := s.Approve(ctx, ref.ID, GrantSpec{ExpiresAt: in(24 * time.Hour), By: "a"}); err != nil {
			t.Fatalf("approval for max_grant_duration: %v", err)
		}
	})

	t.Run("deny and file again", func(t *testing.T) {
		c := newClock()
		s := newStore(t, Options{Now: c.Now})
		ref := mustRecord(t, s, refusal("t1", "evil.example", 443))
		r, err := s.Deny(ctx, ref.ID, "alice")
		if err != nil || r.Status != StatusDenied || r.DecidedBy != "alice" {
			t.Fatalf("Deny: %+v, %v", r, err)
		}
		if _, err := s.Deny(ctx, ref.ID, ""); !errors.Is(err, ErrInvalid) {
			t.Fatalf("deny by nobody: %v, want ErrInvalid", err)
		}
		// A refusal keeps it denied; the tenant asking again reopens it.
		if got := mustRecord(t, s, refusal("t1", "evil.example", 443)); got != (RequestRef{ID: ref.ID, Status: StatusDenied}) {
			t.Fatalf("refusal after deny: %+v", got)
		}
		got, err := s.FileRequest(ctx, Sighting{Tenant: "t1", Host: "evil.example", Port: 443, Method: "GET", Path: "/x", Reason: "needed for the report"})
		if err != nil || got != (RequestRef{ID: ref.ID, Status: StatusPending}) {
			t.Fatalf("filing after deny: %+v, %v", got, err)
		}
		r = getRequest(t, s, ref.ID)
		if r.Count != 3 || r.Reason != "needed for the report" || r.DecidedBy != "" {
			t.Fatalf("request after filing: %+v", r)
		}
		if gs, err := s.Grants(ctx, c.Now()); err != nil || len(gs) != 0 {
			t.Fatalf("grants after deny: %+v, %v", gs, err)
		}
	})

	t.Run("report mode", func(t *testing.T) {
		s := newStore(t, Options{})
		sg := refusal("t1", "a.example", 443)
		sg.ReportMode = true
		ref := mustRecord(t, s, sg)
		if r := getRequest(t, s, ref.ID); !r.ReportMode || r.Status != StatusPending {
			t.Fatalf("report-mode request %+v", r)
		}
	})

	t.Run("filter", func(t *testing.T) {
		s := newStore(t, Options{})
		a := mustRecord(t, s, refusal("t1", "a.example", 443))
		mustRecord(t, s, refusal("t1", "b.example", 443))
		c := mustRecord(t, s, refusal("t2", "a.example", 443))
		if _, err := s.Deny(ctx, a.ID, "x"); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			f    Filter
			want int
		}{
			{Filter{}, 3},
			{Filter{Tenant: "t1"}, 2},
			{Filter{Tenant: "t2"}, 1},
			{Filter{Tenant: "t3"}, 0},
			{Filter{Status: StatusDenied}, 1},
			{Filter{Tenant: "t1", Status: StatusPending}, 1},
		} {
			rs, err := s.ListRequests(ctx, tc.f)
			if err != nil || len(rs) != tc.want {
				t.Errorf("%+v: %d requests, %v; want %d", tc.f, len(rs), err, tc.want)
			}
			for _, r := range rs {
				if !tc.f.match(r) {
					t.Errorf("%+v listed %+v", tc.f, r)
				}
			}
		}
		if rs, _ := s.ListRequests(ctx, Filter{Tenant: "t2"}); len(rs) != 1 || rs[0].ID != c.ID {
			t.Errorf("tenant t2 sees %+v", rs)
		}
	})

	t.Run("expiry and revocation", func(t *testing.T) {
		c := newClock()
		s := newStore(t, Options{Now: c.Now})
		start := c.Now()
		short, err := s.AddGrant(ctx, GrantSpec{Tenant: "t1", Host: "a.example", Ports: []int{443}, ExpiresAt: start.Add(time.Hour), By: "admin"})
		if err != nil {
			t.Fatal(err)
		}
		long, err := s.AddGrant(ctx, GrantSpec{Tenant: "t1", Host: "b.example", Ports: []int{443}, ExpiresAt: start.Add(2 * time.Hour), By: "admin"})
		if err != nil {
			t.Fatal(err)
		}
		if short.RequestID != "" {
			t.Fatalf("grant without request has request id %q", short.RequestID)
		}
		ids := func(now time.Time) []string {
			t.Helper()
			gs, err := s.Grants(ctx, now)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, g := range gs {
				out = append(out, g.ID)
			}
			slices.Sort(out)
			return out
		}
		both := []string{short.ID, long.ID}
		slices.Sort(both)
		for _, tc := range []struct {
			at   time.Duration
			want []string
		}{
			{0, both},
			{time.Hour - time.Millisecond, both},
			{time.Hour, []string{long.ID}},
			{2 * time.Hour, nil},
		} {
			if got := ids(start.Add(tc.at)); !slices.Equal(got, tc.want) {
				t.Errorf("grants at +%v: %v, want %v", tc.at, got, tc.want)
			}
		}
		v0, _ := s.Version(ctx)
		if err := s.RevokeGrant(ctx, long.ID); err != nil {
			t.Fatal(err)
		}
		if v1, err := s.Version(ctx); err != nil || v1 == v0 {
			t.Fatalf("version %d after revocation (was %d), %v", v1, v0, err)
		}
		if got := ids(start); !slices.Equal(got, []string{short.ID}) {
			t.Fatalf("after revoking %s: %v", long.ID, got)
		}
		if err := s.RevokeGrant(ctx, long.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("revoking twice: %v, want ErrNotFound", err)
		}
		c.Add(time.Hour)
		if err := s.RevokeGrant(ctx, short.ID); !errors.Is(err, ErrNotFound) {
			t.Fatalf("revoking an expired grant: %v, want ErrNotFound", err)
		}
	})

	t.Run("max pending", func(t *testing.T) {
		c := newClock()
		s := newStore(t, Options{Now: c.Now, MaxPending: 3})
		refs := map[string]RequestRef{}
		for _, h := range []string{"a.example", "b.example", "c.example"} {
			refs[h] = mustRecord(t, s, refusal("t1", h, 443))
			c.Add(time.Second)
		}
		// a is seen again, so b is now the least recently seen.
		mustRecord(t, s, refusal("t1", "a.example", 443))
		c.Add(time.Second)
		refs["d.example"] = mustRecord(t, s, refusal("t1", "d.example", 443))
		rs, err := s.ListRequests(ctx, Filter{})
		if err != nil {
			t.Fatal(err)
		}
		var hosts []string
		for _, r := range rs {
			hosts = append(hosts, r.Host)
		}
		if want := []string{"d.example", "a.example", "c.example"}; !slices.Equal(hosts, want) {
			t.Fatalf("kept %v, want %v (most recent first)", hosts, want)
		}
		if _, err := s.Approve(ctx, refs["b.example"].ID, GrantSpec{ExpiresAt: c.Now().Add(time.Hour), By: "a"}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("approving an evicted request: %v, want ErrNotFound", err)
		}
		// b comes back as a new request.
		if ref := mustRecord(t, s, refusal("t1", "b.example", 443)); ref.ID == refs["b.example"].ID {
			t.Fatalf("evicted request came back with its old id")
		}
	})

	t.Run("concurrent refusals count exactly", func(t *testing.T) {
		s := newStore(t, Options{})
		const workers, each = 8, 40
		hosts := []string{"a.example", "b.example", "c.example"}
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					if _, err := s.RecordRefusal(ctx, refusal(fmt.Sprintf("t%d", w%2), hosts[i%len(hosts)], 443)); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		rs, err := s.ListRequests(ctx, Filter{})
		if err != nil {
			t.Fatal(err)
		}
		var total int64
		for _, r := range rs {
			total += r.Count
		}
		if len(rs) != 6 || total != workers*each {
			t.Fatalf("%d requests counting %d refusals, want 6 counting %d", len(rs), total, workers*each)
		}
	})

	t.Run("decision during a flood of refusals", func(t *testing.T) {
		s := newStore(t, Options{})
		ref := mustRecord(t, s, refusal("t1", "pypi.org", 443))
		const workers, each = 4, 50
		var wg sync.WaitGroup
		errs := make(chan error, workers+1)
		for range workers {
			wg.Go(func() {
				for range each {
					if _, err := s.RecordRefusal(ctx, refusal("t1", "pypi.org", 443)); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Go(func() {
			if _, err := s.Approve(ctx, ref.ID, GrantSpec{ExpiresAt: time.Now().Add(time.Hour), By: "alice"}); err != nil {
				errs <- fmt.Errorf("Approve: %w", err)
			}
		})
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		r := getRequest(t, s, ref.ID)
		if r.Count != 1+workers*each || r.Status != StatusApproved || r.GrantID == "" {
			t.Fatalf("request %+v, want approved with count %d", r, 1+workers*each)
		}
	})
}
