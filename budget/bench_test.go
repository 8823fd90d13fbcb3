package budget

import (
	"context"
	"testing"
	"time"
)

func benchMeter(b *testing.B, budgets int) *Meter {
	l := New(Options{FlushEvery: -1})
	b.Cleanup(func() { _ = l.Close() })
	list := []Budget{
		{Name: "hourly", Period: Hour, Limit: Usage{Requests: 1 << 60, Egress: 1 << 60}},
		{Name: "daily", Period: Day, Limit: Usage{Ingress: 1 << 60, Cost: 1e6}, WarnAt: 0.8},
		{Name: "monthly", Period: Month, Limit: Usage{Requests: 1 << 60}},
	}
	l.SetBudgets(map[string][]Budget{"acme": list[:budgets]})
	return l.Meter(Source{Tenant: "acme", Connector: "openai", Version: 1, Price: Price{PerRequest: 0.002, PerGiBEgress: 0.09}})
}

// BenchmarkCharge is the per-chunk cost of counting a 32 KiB relay step.
func BenchmarkCharge(b *testing.B) {
	for _, n := range []int{0, 3} {
		b.Run(map[int]string{0: "no-budgets", 3: "three-budgets"}[n], func(b *testing.B) {
			m := benchMeter(b, n)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					m.Charge(32<<10, 0)
				}
			})
		})
	}
}

// BenchmarkAdmit is the per-request cost of the budget check.
func BenchmarkAdmit(b *testing.B) {
	for _, n := range []int{0, 3} {
		b.Run(map[int]string{0: "no-budgets", 3: "three-budgets"}[n], func(b *testing.B) {
			m := benchMeter(b, n)
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := m.Admit(ctx, time.Now()); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
