package allowlist

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

func patterns(tb testing.TB, texts ...string) []Pattern {
	tb.Helper()
	ps := make([]Pattern, len(texts))
	for i, text := range texts {
		p, err := ParsePattern(text)
		if err != nil {
			tb.Fatal(err)
		}
		ps[i] = p
	}
	return ps
}

func TestSetMatch(t *testing.T) {
	type query = Query
	tests := []struct {
		name  string
		rules []Rule
		query query
		want  Result
	}{
		{
			name:  "no rules",
			query: query{Host: "example.com", Port: 443},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name:  "nothing matches",
			rules: []Rule{{Hosts: patterns(t, "api.github.com")}},
			query: query{Host: "evil.example", Port: 443, Method: "GET", Path: "/"},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name:  "exact host",
			rules: []Rule{{Hosts: patterns(t, "api.github.com")}},
			query: query{Host: "api.github.com", Port: 443, Method: "GET", Path: "/"},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name: "first allow by order",
			rules: []Rule{
				{Hosts: patterns(t, "other.example")},
				{Hosts: patterns(t, "*.github.com")},
				{Hosts: patterns(t, "api.github.com")},
			},
			query: query{Host: "api.github.com", Port: 443},
			want:  Result{Deny: -1, Allow: 1},
		},
		{
			name: "exact before wildcard by order",
			rules: []Rule{
				{Hosts: patterns(t, "api.github.com")},
				{Hosts: patterns(t, "*.github.com")},
			},
			query: query{Host: "api.github.com", Port: 443},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name: "deny after allow is reported",
			rules: []Rule{
				{Hosts: patterns(t, "*.example.com")},
				{Action: Deny, Hosts: patterns(t, "paste.example.com")},
			},
			query: query{Host: "paste.example.com", Port: 443},
			want:  Result{Deny: 1, Allow: 0},
		},
		{
			name: "deny does not hide a later allow",
			rules: []Rule{
				{Action: Deny, Hosts: patterns(t, "paste.example.com")},
				{Hosts: patterns(t, "paste.example.com")},
			},
			query: query{Host: "paste.example.com", Port: 443},
			want:  Result{Deny: 0, Allow: 1},
		},
		{
			name: "first deny by order",
			rules: []Rule{
				{Action: Deny, Hosts: patterns(t, "*.a.example")},
				{Action: Deny, Hosts: patterns(t, "x.a.example")},
			},
			query: query{Host: "x.a.example", Port: 80},
			want:  Result{Deny: 0, Allow: -1},
		},
		{
			name:  "wildcard matches deep subdomain",
			rules: []Rule{{Hosts: patterns(t, "*.example.com")}},
			query: query{Host: "a.b.c.example.com", Port: 443},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name:  "wildcard never matches apex",
			rules: []Rule{{Hosts: patterns(t, "*.example.com")}},
			query: query{Host: "example.com", Port: 443},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name:  "wildcard does not match sibling name",
			rules: []Rule{{Hosts: patterns(t, "*.example.com")}},
			query: query{Host: "a.notexample.com", Port: 443},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name:  "default port 80",
			rules: []Rule{{Hosts: patterns(t, "example.com")}},
			query: query{Host: "example.com", Port: 80},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name:  "default ports exclude others",
			rules: []Rule{{Hosts: patterns(t, "example.com")}},
			query: query{Host: "example.com", Port: 8443},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name:  "listed port",
			rules: []Rule{{Hosts: patterns(t, "example.com"), Ports: []uint16{8443}}},
			query: query{Host: "example.com", Port: 8443},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name:  "listed ports replace the defaults",
			rules: []Rule{{Hosts: patterns(t, "example.com"), Ports: []uint16{8443}}},
			query: query{Host: "example.com", Port: 443},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name:  "deny rule without ports covers every port",
			rules: []Rule{{Action: Deny, Hosts: patterns(t, "example.com")}},
			query: query{Host: "example.com", Port: 22},
			want:  Result{Deny: 0, Allow: -1},
		},
		{
			name:  "deny rule with ports covers only those",
			rules: []Rule{{Action: Deny, Hosts: patterns(t, "example.com"), Ports: []uint16{443}}},
			query: query{Host: "example.com", Port: 22},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name:  "method allowed",
			rules: []Rule{{Hosts: patterns(t, "api.github.com"), Methods: []string{"GET", "POST"}}},
			query: query{Host: "api.github.com", Port: 443, Method: "POST", Path: "/"},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name:  "method not allowed",
			rules: []Rule{{Hosts: patterns(t, "api.github.com"), Methods: []string{"GET"}}},
			query: query{Host: "api.github.com", Port: 443, Method: "DELETE", Path: "/"},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name:  "rule methods are upper-cased",
			rules: []Rule{{Hosts: patterns(t, "api.github.com"), Methods: []string{"get"}}},
			query: query{Host: "api.github.com", Port: 443, Method: "GET", Path: "/"},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name:  "allow compares methods exactly",
			rules: []Rule{{Hosts: patterns(t, "api.github.com"), Methods: []string{"GET"}}},
			query: query{Host: "api.github.com", Port: 443, Method: "get", Path: "/"},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name: "deny matches methods in any case",
			rules: []Rule{
				{Action: Deny, Hosts: patterns(t, "api.github.com"), Methods: []string{"DELETE"}},
				{Hosts: patterns(t, "api.github.com")},
			},
			query: query{Host: "api.github.com", Port: 443, Method: "delete", Path: "/"},
			want:  Result{Deny: 0, Allow: 1},
		},
		{
			name:  "path prefix",
			rules: []Rule{{Hosts: patterns(t, "api.github.com"), Paths: []string{"/repos/", "/user"}}},
			query: query{Host: "api.github.com", Port: 443, Method: "GET", Path: "/repos/x/y"},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name:  "path prefix second entry",
			rules: []Rule{{Hosts: patterns(t, "api.github.com"), Paths: []string{"/repos/", "/user"}}},
			query: query{Host: "api.github.com", Port: 443, Method: "GET", Path: "/users/x"},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name:  "path outside prefixes",
			rules: []Rule{{Hosts: patterns(t, "api.github.com"), Paths: []string{"/repos/"}}},
			query: query{Host: "api.github.com", Port: 443, Method: "GET", Path: "/repos"},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name: "methods and paths both required",
			rules: []Rule{{
				Hosts: patterns(t, "api.github.com"), Methods: []string{"GET"}, Paths: []string{"/repos/"},
			}},
			query: query{Host: "api.github.com", Port: 443, Method: "POST", Path: "/repos/x"},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name: "tunnel ignores methods and paths",
			rules: []Rule{{
				Hosts: patterns(t, "api.github.com"), Methods: []string{"GET"}, Paths: []string{"/repos/"},
			}},
			query: query{Host: "api.github.com", Port: 443, Tunnel: true, Method: "CONNECT", Path: ""},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name:  "tunnel checks ports",
			rules: []Rule{{Hosts: patterns(t, "api.github.com")}},
			query: query{Host: "api.github.com", Port: 22, Tunnel: true},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name: "deny path ignores case and path parameters",
			rules: []Rule{
				{Action: Deny, Hosts: patterns(t, "x.example.com"), Paths: []string{"/admin/"}},
				{Hosts: patterns(t, "x.example.com")},
			},
			query: query{Host: "x.example.com", Port: 443, Method: "GET", Path: "/ADMIN;jsessionid=1/users"},
			want:  Result{Deny: 0, Allow: 1},
		},
		{
			name:  "allow path stays exact",
			rules: []Rule{{Hosts: patterns(t, "x.example.com"), Paths: []string{"/v1/"}}},
			query: query{Host: "x.example.com", Port: 443, Method: "GET", Path: "/V1;x/items"},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name: "tunnel prefers unconditional deny",
			rules: []Rule{
				{Action: Deny, Hosts: patterns(t, "*.example.com"), Methods: []string{"DELETE"}},
				{Action: Deny, Hosts: patterns(t, "*.example.com"), Paths: []string{"/admin"}},
				{Action: Deny, Hosts: patterns(t, "x.example.com")},
				{Action: Deny, Hosts: patterns(t, "*.example.com")},
				{Hosts: patterns(t, "x.example.com")},
			},
			query: query{Host: "x.example.com", Port: 443, Tunnel: true},
			want:  Result{Deny: 2, Allow: 4},
		},
		{
			name: "tunnel falls back to conditional deny",
			rules: []Rule{
				{Hosts: patterns(t, "x.example.com")},
				{Action: Deny, Hosts: patterns(t, "*.example.com"), Paths: []string{"/admin"}},
				{Action: Deny, Hosts: patterns(t, "x.example.com"), Methods: []string{"DELETE"}},
			},
			query: query{Host: "x.example.com", Port: 443, Tunnel: true},
			want:  Result{Deny: 1, Allow: 0},
		},
		{
			name: "plain request reports first deny by order",
			rules: []Rule{
				{Action: Deny, Hosts: patterns(t, "x.example.com"), Methods: []string{"DELETE"}},
				{Action: Deny, Hosts: patterns(t, "x.example.com")},
			},
			query: query{Host: "x.example.com", Port: 443, Method: "DELETE", Path: "/"},
			want:  Result{Deny: 0, Allow: -1},
		},
		{
			name: "plain request skips conditional deny that does not apply",
			rules: []Rule{
				{Action: Deny, Hosts: patterns(t, "x.example.com"), Methods: []string{"DELETE"}},
				{Action: Deny, Hosts: patterns(t, "x.example.com")},
			},
			query: query{Host: "x.example.com", Port: 443, Method: "GET", Path: "/"},
			want:  Result{Deny: 1, Allow: -1},
		},
		{
			name: "IP host matches CIDR",
			rules: []Rule{
				{Hosts: patterns(t, "example.com")},
				{Hosts: patterns(t, "198.51.100.0/24")},
			},
			query: query{Host: "198.51.100.7", Port: 443},
			want:  Result{Deny: -1, Allow: 1},
		},
		{
			name:  "IPv4-mapped host matches IPv4 pattern",
			rules: []Rule{{Hosts: patterns(t, "203.0.113.7")}},
			query: query{Host: "::ffff:203.0.113.7", Port: 443},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name: "IP deny and allow",
			rules: []Rule{
				{Hosts: patterns(t, "198.51.100.0/24")},
				{Action: Deny, Hosts: patterns(t, "198.51.100.66")},
			},
			query: query{Host: "198.51.100.66", Port: 80},
			want:  Result{Deny: 1, Allow: 0},
		},
		{
			name:  "IP host outside CIDR",
			rules: []Rule{{Hosts: patterns(t, "198.51.100.0/24")}},
			query: query{Host: "198.51.101.7", Port: 443},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name:  "name never matches address pattern",
			rules: []Rule{{Hosts: patterns(t, "0.0.0.0/0", "::/0")}},
			query: query{Host: "example.com", Port: 443},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name:  "rule without hosts matches nothing",
			rules: []Rule{{}, {Action: Deny}},
			query: query{Host: "example.com", Port: 443},
			want:  Result{Deny: -1, Allow: -1},
		},
		{
			name:  "host named twice in one rule",
			rules: []Rule{{Hosts: patterns(t, "example.com", "EXAMPLE.com", "*.example.com", "*.example.com")}},
			query: query{Host: "example.com", Port: 443},
			want:  Result{Deny: -1, Allow: 0},
		},
		{
			name:  "unnormalised host does not match",
			rules: []Rule{{Hosts: patterns(t, "example.com")}},
			query: query{Host: "EXAMPLE.com", Port: 443},
			want:  Result{Deny: -1, Allow: -1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := NewSet(tt.rules).Match(tt.query)
			if got != tt.want {
				t.Errorf("Match(%+v) = %+v; want %+v", tt.query, got, tt.want)
			}
			if naive := naiveMatch(tt.rules, tt.query); naive != got {
				t.Errorf("Match(%+v) = %+v; the rule-by-rule reading gives %+v", tt.query, got, naive)
			}
		})
	}
}

func TestRuleConditional(t *testing.T) {
	tests := []struct {
		name string
		rule Rule
		want bool
	}{
		{"hosts and ports only", Rule{Hosts: patterns(t, "a.example"), Ports: []uint16{443}}, false},
		{"methods", Rule{Methods: []string{"GET"}}, true},
		{"paths", Rule{Paths: []string{"/x"}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.rule.Conditional(); got != tt.want {
				t.Errorf("Conditional() = %v; want %v", got, tt.want)
			}
		})
	}
}

func TestNewSetCopiesRules(t *testing.T) {
	rules := []Rule{{Hosts: patterns(t, "example.com"), Ports: []uint16{443}, Methods: []string{"GET"}, Paths: []string{"/a"}}}
	s := NewSet(rules)
	rules[0].Ports[0] = 22
	rules[0].Methods[0] = "POST"
	rules[0].Paths[0] = "/b"
	rules[0].Action = Deny
	got := s.Match(Query{Host: "example.com", Port: 443, Method: "GET", Path: "/a"})
	if got != (Result{Deny: -1, Allow: 0}) {
		t.Errorf("after changing the caller's rules, Match = %+v; want the original rule to hold", got)
	}
}

// naiveMatch is the specification of Set.Match read rule by rule.
func naiveMatch(rules []Rule, q Query) Result {
	result := Result{Deny: -1, Allow: -1}
	firstConditionalDeny := -1
	for i, r := range rules {
		hostMatches := false
		for _, p := range r.Hosts {
			hostMatches = hostMatches || p.Match(q.Host)
		}
		ports := r.Ports
		if len(ports) == 0 && r.Action == Allow {
			ports = []uint16{80, 443}
		}
		portMatches := len(ports) == 0
		for _, p := range ports {
			portMatches = portMatches || p == q.Port
		}
		methodMatches := len(r.Methods) == 0 || q.Tunnel
		for _, m := range r.Methods {
			if r.Action == Deny {
				methodMatches = methodMatches || strings.EqualFold(m, q.Method)
			} else {
				methodMatches = methodMatches || strings.ToUpper(m) == q.Method
			}
		}
		pathMatches := len(r.Paths) == 0 || q.Tunnel
		ambiguous := !q.Tunnel && len(r.Paths) > 0 && PathAmbiguity(q.Path) != ""
		for _, p := range r.Paths {
			if r.Action == Deny {
				loose := StripPathParams(naiveUnescape(q.Path))
				pathMatches = pathMatches || ambiguous ||
					strings.HasPrefix(strings.ToLower(loose), strings.ToLower(StripPathParams(naiveUnescape(p))))
			}
			pathMatches = pathMatches || !ambiguous && strings.HasPrefix(q.Path, p)
		}
		if !hostMatches || !portMatches || !methodMatches {
			continue
		}
		result.AmbiguousPath = result.AmbiguousPath || ambiguous
		if !pathMatches {
			continue
		}
		switch {
		case r.Action == Allow:
			if result.Allow < 0 {
				result.Allow = i
			}
		case q.Tunnel && r.Conditional():
			if firstConditionalDeny < 0 {
				firstConditionalDeny = i
			}
		default:
			if result.Deny < 0 {
				result.Deny = i
			}
		}
	}
	if result.Deny < 0 {
		result.Deny = firstConditionalDeny
	}
	return result
}

// TestSetMatchAgainstNaive compares the index with the rule-by-rule reading
// on random rule lists, where many rules share hosts.
func TestSetMatchAgainstNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	hostPool := []string{
		"example.com", "a.example.com", "b.a.example.com", "other.example", "x.other.example",
		"198.51.100.7", "198.51.100.200", "::ffff:198.51.100.7", "2001:db8::1", "203.0.113.9",
	}
	patternPool := []string{
		"example.com", "a.example.com", "*.example.com", "*.a.example.com", "other.example",
		"*.other.example", "198.51.100.7", "198.51.100.0/25", "::ffff:198.51.100.0/120",
		"2001:db8::/32", "203.0.113.9",
	}
	methods := []string{"GET", "POST", "DELETE", "get"}
	paths := []string{"/", "/repos/x", "/user", "/admin/x", "/Admin/x", "/admin;v=1/x", "/REPOS;a/x",
		"/%41dmin/x", "/admin%3Bx/y", "/\uff41dmin/x", "/admin./x", "/repos%2Fx", "/user%20"}
	pick := func(pool []string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = pool[rng.IntN(len(pool))]
		}
		return out
	}
	for round := range 500 {
		rules := make([]Rule, rng.IntN(12))
		for i := range rules {
			rules[i] = Rule{
				Action: Action(rng.IntN(2)),
				Hosts:  patterns(t, pick(patternPool, rng.IntN(3))...),
			}
			if rng.IntN(3) == 0 {
				rules[i].Ports = []uint16{443, 8443}[:1+rng.IntN(2)]
			}
			if rng.IntN(3) == 0 {
				rules[i].Methods = pick(methods[:3], 1+rng.IntN(2))
			}
			if rng.IntN(3) == 0 {
				rules[i].Paths = pick([]string{"/repos/", "/user", "/admin"}, 1+rng.IntN(2))
			}
		}
		set := NewSet(rules)
		for range 20 {
			q := Query{
				Host:   hostPool[rng.IntN(len(hostPool))],
				Port:   []uint16{80, 443, 8443}[rng.IntN(3)],
				Method: methods[rng.IntN(len(methods))],
				Path:   paths[rng.IntN(len(paths))],
				Tunnel: rng.IntN(3) == 0,
			}
			// The index stops at the first deciding rules, so it may not
			// meet every rule naming paths that the naive reading does.
			got, want := set.Match(q), naiveMatch(rules, q)
			if got.Deny != want.Deny || got.Allow != want.Allow || got.AmbiguousPath && !want.AmbiguousPath {
				t.Fatalf("round %d: Match(%+v) = %+v; want %+v\nrules: %+v", round, q, got, want, rules)
			}
		}
	}
}

func TestSetMatchConcurrent(t *testing.T) {
	set := NewSet([]Rule{
		{Hosts: patterns(t, "*.example.com")},
		{Action: Deny, Hosts: patterns(t, "bad.example.com")},
	})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				if got := set.Match(Query{Host: "bad.example.com", Port: 443}); got != (Result{Deny: 1, Allow: 0}) {
					t.Errorf("Match = %+v", got)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestSetMatchDoesNotAllocate(t *testing.T) {
	set := NewSet(manyRules(t, 1000))
	queries := []Query{
		{Host: "host-500.example.com", Port: 443, Method: "GET", Path: "/repos/x"},
		{Host: "a.b.tenant-500.example.net", Port: 443, Tunnel: true},
		{Host: "198.51.100.7", Port: 443},
		{Host: "2001:db8::1", Port: 443},
		{Host: "nothing.example.org", Port: 443},
	}
	for _, q := range queries {
		if allocs := testing.AllocsPerRun(100, func() { set.Match(q) }); allocs != 0 {
			t.Errorf("Match(%+v) allocates %v times", q, allocs)
		}
	}
}

// manyRules builds n rules of each kind in turn: exact hosts, wildcards, and
// every tenth a conditional or deny rule.
func manyRules(tb testing.TB, n int) []Rule {
	tb.Helper()
	rules := make([]Rule, 0, n)
	for i := range n {
		r := Rule{
			Hosts: patterns(tb,
				fmt.Sprintf("host-%d.example.com", i),
				fmt.Sprintf("*.tenant-%d.example.net", i),
			),
			Ports: []uint16{443},
		}
		if i%10 == 0 {
			r.Methods = []string{"GET"}
			r.Paths = []string{"/repos/"}
		}
		if i%10 == 5 {
			r.Action = Deny
		}
		rules = append(rules, r)
	}
	rules = append(rules, Rule{Hosts: patterns(tb, "198.51.100.0/24", "2001:db8::/32")})
	return rules
}

func BenchmarkMatchExact10k(b *testing.B) {
	set := NewSet(manyRules(b, 10000))
	q := Query{Host: "host-9999.example.com", Port: 443, Method: "GET", Path: "/repos/x"}
	if r := set.Match(q); r.Allow != 9999 {
		b.Fatalf("Match = %+v", r)
	}
	b.ReportAllocs()
	for b.Loop() {
		set.Match(q)
	}
}

func BenchmarkMatchWildcard10k(b *testing.B) {
	set := NewSet(manyRules(b, 10000))
	q := Query{Host: "a.b.c.tenant-9999.example.net", Port: 443, Method: "GET", Path: "/repos/x"}
	if r := set.Match(q); r.Allow != 9999 {
		b.Fatalf("Match = %+v", r)
	}
	b.ReportAllocs()
	for b.Loop() {
		set.Match(q)
	}
}

func BenchmarkMatchMiss10k(b *testing.B) {
	set := NewSet(manyRules(b, 10000))
	q := Query{Host: "www.nothing-here.example.org", Port: 443, Method: "GET", Path: "/"}
	b.ReportAllocs()
	for b.Loop() {
		set.Match(q)
	}
}

// naiveUnescape percent-decodes what it can, byte by byte.
func naiveUnescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+3], "%02x", &c); err == nil && !strings.ContainsAny(s[i+1:i+3], "+- ") {
				b.WriteByte(c)
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func TestStripPathParams(t *testing.T) {
	for in, want := range map[string]string{
		"/":                     "/",
		"/a/b":                  "/a/b",
		"/a;x=1/b;y":            "/a/b",
		"/admin;jsessionid=9/u": "/admin/u",
		"/..;/admin":            "/../admin",
		";x/y":                  "/y",
		"/a/;b":                 "/a/",
	} {
		if got := StripPathParams(in); got != want {
			t.Errorf("StripPathParams(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPathAmbiguity(t *testing.T) {
	for _, tc := range []struct {
		path      string
		ambiguous bool
	}{
		{"/", false},
		{"/admin", false},
		{"/v1/repos/x", false},
		{"/file.tar.gz", false},
		{"/a%20b/c", false},
		{"/a;b=c/d", false},
		{"/a%3Ab", false},
		{"/100%25", false},
		{"/100%25/x", false},
		{"/a;x./b", false},
		{"/repos/group%2Fproject", true},
		{"/repos/group%2fproject", true},
		{"/a%5Cb", true},
		{"/a\\b", true},
		{"/%EF%BD%81dmin", true},
		{"/\uff41dmin", true},
		{"/caf%C3%A9", true},
		{"/caf\u00e9", true},
		{"/%252e%252e/admin", true},
		{"/%2541dmin", true},
		{"/admin.", true},
		{"/admin./x", true},
		{"/admin%2e/x", true},
		{"/admin%20", true},
		{"/admin%20/x", true},
		{"/admin.;x/y", true},
		{"/v1/.../x", true},
	} {
		why := PathAmbiguity(tc.path)
		if (why != "") != tc.ambiguous {
			t.Errorf("PathAmbiguity(%q) = %q, want ambiguous %v", tc.path, why, tc.ambiguous)
		}
	}
}

// TestPathsAsServersReadThem: a deny rule's prefix catches every spelling
// an upstream reads as the denied path; a spelling that no prefix
// comparison can settle is refused where rules name paths, and makes no
// difference where none does.
func TestPathsAsServersReadThem(t *testing.T) {
	set := NewSet([]Rule{
		{Action: Deny, Hosts: patterns(t, "api.example.com"), Paths: []string{"/admin/", "/v1/users:batch"}},
		{Hosts: patterns(t, "api.example.com")},
		{Hosts: patterns(t, "files.example.com"), Paths: []string{"/public/"}},
		{Hosts: patterns(t, "open.example.com")},
	})
	for _, tc := range []struct {
		host, path string
		want       Result
	}{
		{"api.example.com", "/admin/users", Result{Deny: 0, Allow: 1}},
		{"api.example.com", "/ADMIN/users", Result{Deny: 0, Allow: 1}},
		{"api.example.com", "/admin;x=1/users", Result{Deny: 0, Allow: 1}},
		{"api.example.com", "/admin%3Bx=1/users", Result{Deny: 0, Allow: 1}},
		{"api.example.com", "/v1/users%3Abatch", Result{Deny: 0, Allow: 1}},
		{"api.example.com", "/V1/USERS%3abatch", Result{Deny: 0, Allow: 1}},
		{"api.example.com", "/\uff41dmin/users", Result{Deny: 0, Allow: 1, AmbiguousPath: true}},
		{"api.example.com", "/%EF%BD%81dmin/users", Result{Deny: 0, Allow: 1, AmbiguousPath: true}},
		{"api.example.com", "/admin./users", Result{Deny: 0, Allow: 1, AmbiguousPath: true}},
		{"api.example.com", "/admin%20/users", Result{Deny: 0, Allow: 1, AmbiguousPath: true}},
		{"api.example.com", "/x/..%2Fadmin/users", Result{Deny: 0, Allow: 1, AmbiguousPath: true}},
		{"api.example.com", "/%252e%252e/admin/", Result{Deny: 0, Allow: 1, AmbiguousPath: true}},
		{"api.example.com", "/v1/users", Result{Deny: -1, Allow: 1}},
		{"files.example.com", "/public/a.txt", Result{Deny: -1, Allow: 2}},
		{"files.example.com", "/public/a%2Fb", Result{Deny: -1, Allow: -1, AmbiguousPath: true}},
		{"files.example.com", "/public/\uff41", Result{Deny: -1, Allow: -1, AmbiguousPath: true}},
		{"open.example.com", "/\uff41dmin/%2F", Result{Deny: -1, Allow: 3}},
	} {
		if got := set.Match(Query{Host: tc.host, Port: 443, Method: "GET", Path: tc.path}); got != tc.want {
			t.Errorf("Match(%s%s) = %+v, want %+v", tc.host, tc.path, got, tc.want)
		}
	}
}
