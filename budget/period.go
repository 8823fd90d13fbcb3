package budget

import "time"

// Period is a UTC calendar period a budget bounds and a statement covers.
type Period string

// The periods, each aligned on UTC calendar boundaries.
const (
	Hour  Period = "hour"
	Day   Period = "day"
	Month Period = "month"
)

// Valid reports whether p is one of Hour, Day and Month.
func (p Period) Valid() bool {
	return p == Hour || p == Day || p == Month
}

// Bounds is the period holding t: start inclusive, end exclusive, in UTC.
// An invalid period has the zero bounds.
func (p Period) Bounds(t time.Time) (start, end time.Time) {
	t = t.UTC()
	switch p {
	case Hour:
		start = t.Truncate(time.Hour)
		return start, start.Add(time.Hour)
	case Day:
		start = time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 0, 1)
	case Month:
		start = time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 1, 0)
	}
	return time.Time{}, time.Time{}
}
