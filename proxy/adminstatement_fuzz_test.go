package proxy

import (
	"testing"
	"time"
)

// FuzzStatementQuery: whatever an admin sends as ?period= and ?at=, the
// parser never panics, and what it accepts is a valid period and a UTC
// instant inside a period with sane bounds.
func FuzzStatementQuery(f *testing.F) {
	for _, seed := range [][2]string{
		{"", ""}, {"day", "2026-12-06"}, {"month", "2026-12-06T15:04:05Z"}, {"hour", "2026-12-06T15:04:05.999999999+14:00"},
		{"week", ""}, {"day", "9999-12-31T23:59:59-23:59"}, {"day", "0001-01-01"}, {"Day", "2026-02-30"},
	} {
		f.Add(seed[0], seed[1])
	}
	now := time.Date(2026, 12, 6, 22, 30, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, period, at string) {
		p, when, err := parseStatementQuery(period, at, now)
		if err != nil {
			return
		}
		if !p.Valid() || when.Location() != time.UTC {
			t.Fatalf("accepted (%q, %q) as %q at %v", period, at, p, when)
		}
		start, end := p.Bounds(when)
		if when.Before(start) || !when.Before(end) || start.Year() < minStatementYear || end.Year() > maxStatementYear+1 {
			t.Fatalf("(%q, %q): %v is not inside its period [%v, %v)", period, at, when, start, end)
		}
	})
}
