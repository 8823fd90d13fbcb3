package budget

import (
	"math"
	"testing"
	"time"
)

func TestPeriodBounds(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name       string
		p          Period
		t          string
		start, end string
	}{
		{"hour mid", Hour, "2026-03-10T14:35:12.5Z", "2026-03-10T14:00:00Z", "2026-03-10T15:00:00Z"},
		{"hour at its start", Hour, "2026-03-10T14:00:00Z", "2026-03-10T14:00:00Z", "2026-03-10T15:00:00Z"},
		{"hour last nanosecond", Hour, "2026-03-10T14:59:59.999999999Z", "2026-03-10T14:00:00Z", "2026-03-10T15:00:00Z"},
		{"hour across midnight", Hour, "2026-12-31T23:30:00Z", "2026-12-31T23:00:00Z", "2027-01-01T00:00:00Z"},
		{"day in another zone is UTC", Day, "2026-03-10T01:00:00+05:00", "2026-03-09T00:00:00Z", "2026-03-10T00:00:00Z"},
		{"day last of year", Day, "2026-12-31T12:00:00Z", "2026-12-31T00:00:00Z", "2027-01-01T00:00:00Z"},
		{"leap day", Day, "2028-02-29T08:00:00Z", "2028-02-29T00:00:00Z", "2028-03-01T00:00:00Z"},
		{"month of 31 days", Month, "2026-01-31T23:59:59Z", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"},
		{"february", Month, "2026-02-15T00:00:00Z", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"},
		{"february of a leap year", Month, "2028-02-29T23:00:00Z", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"},
		{"december", Month, "2026-12-31T23:59:59Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"},
		{"month of 30 days", Month, "2026-04-30T10:00:00Z", "2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start, end := tc.p.Bounds(at(tc.t))
			if !start.Equal(at(tc.start)) || !end.Equal(at(tc.end)) {
				t.Errorf("Bounds(%s) = %v, %v; want %s, %s", tc.t, start, end, tc.start, tc.end)
			}
			if start.Location() != time.UTC {
				t.Errorf("start %v is not in UTC", start)
			}
		})
	}
	if s, e := Period("week").Bounds(at(tests[0].t)); !s.IsZero() || !e.IsZero() {
		t.Errorf("an invalid period has bounds %v %v", s, e)
	}
}

func TestPriceCost(t *testing.T) {
	tests := []struct {
		name  string
		price Price
		use   Usage
		want  float64
	}{
		{"nothing is free", Price{}, Usage{Requests: 10, Egress: 1 << 30}, 0},
		{"per request", Price{PerRequest: 0.002}, Usage{Requests: 1000}, 2},
		{"a GiB each way", Price{PerGiBEgress: 0.09, PerGiBIngress: 0.01}, Usage{Egress: 1 << 30, Ingress: 1 << 30}, 0.10},
		{"half a GiB", Price{PerGiBEgress: 0.09}, Usage{Egress: 1 << 29}, 0.045},
		{"all three", Price{PerRequest: 0.002, PerGiBEgress: 0.09, PerGiBIngress: 0.01}, Usage{Requests: 500, Egress: 2 << 30, Ingress: 10 << 30}, 1 + 0.18 + 0.1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.price.Cost(tc.use); math.Abs(got-tc.want) > 1e-9 {
				t.Errorf("Cost = %v, want %v", got, tc.want)
			}
		})
	}
}
