package policy

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/egressgw/egressgw/allowlist"
)

// TestCoverIndexFindsEveryCoveringRule holds the shadow check's index to
// the comparison of every pair: on random rules, the first earlier rule
// that covers each rule is the same either way.
func TestCoverIndexFindsEveryCoveringRule(t *testing.T) {
	hosts := []string{"a.example.com", "b.example.com", "*.example.com", "x.a.example.com",
		"*.a.example.com", "example.com", "10.1.2.3", "10.0.0.0/8", "::ffff:10.1.2.3", "other.net", "*.other.net", "*.example.org"}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 300 {
		var rules []allowlist.Rule
		for range 1 + rng.IntN(12) {
			r := allowlist.Rule{Action: allowlist.Allow}
			for range 1 + rng.IntN(3) {
				p, err := allowlist.ParsePattern(hosts[rng.IntN(len(hosts))])
				if err != nil {
					t.Fatal(err)
				}
				r.Hosts = append(r.Hosts, p)
			}
			rules = append(rules, r)
		}
		var index coverIndex
		for k, r := range rules {
			want := slices.IndexFunc(rules[:k], func(e allowlist.Rule) bool { return ruleCovers(e, r) })
			got := -1
			for _, i := range index.candidates(r.Hosts) {
				if ruleCovers(rules[i], r) {
					got = i
					break
				}
			}
			if got != want {
				t.Fatalf("round %d, rule %d %v: the index found covering rule %d, every pair %d", round, k, r.Hosts, got, want)
			}
			index.add(k, r.Hosts)
		}
	}
}
