package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func sampleAuditRecord() auditRecord {
	return auditRecord{
		Time:       time.Date(2025, 3, 14, 9, 26, 53, 589793000, time.UTC),
		RequestID:  "01JPBX3M5Q8Z4N7R2T6V9W0Y1A",
		Tenant:     "acme",
		Client:     "10.20.0.7:51234",
		Method:     "GET",
		Scheme:     "https",
		Host:       "api.github.com",
		Port:       443,
		Path:       "/repos/acme/widgets/pulls",
		Decision:   "allow",
		Code:       "ok",
		Rule:       "github",
		Status:     200,
		BytesUp:    512,
		BytesDown:  48213,
		DurationMS: 12.345,
		Hooks:      []string{"label-pulls"},
		Redactions: []string{"pii:email=2"},
	}
}

// checkAuditLine asserts that appendJSON writes what json.Marshal does and
// that the line cannot be split or left unparsable by any field.
func checkAuditLine(t *testing.T, rec *auditRecord) {
	t.Helper()
	want, err := json.Marshal(rec)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	prefix := []byte("earlier line\n")
	got := rec.appendJSON(bytes.Clone(prefix))
	if !bytes.HasPrefix(got, prefix) {
		t.Fatalf("appendJSON overwrote what the buffer held: %q", got)
	}
	got = got[len(prefix):]
	if !bytes.Equal(got, want) {
		t.Fatalf("appendJSON differs from json.Marshal\n got: %s\nwant: %s", got, want)
	}
	// The time was a preformatted string before; its bytes are unchanged.
	before, err := json.Marshal(rec.Time.Format(time.RFC3339Nano))
	if err != nil || !bytes.HasPrefix(got, append([]byte(`{"time":`), before...)) {
		t.Fatalf("time encoded unlike %s: %s", before, got)
	}
	if i := bytes.IndexAny(got, "\n\r\u2028\u2029"); i >= 0 {
		t.Fatalf("line breaks at byte %d: %q", i, got)
	}
	if !json.Valid(got) {
		t.Fatalf("line is not valid JSON: %q", got)
	}
}

func TestAuditAppendJSON(t *testing.T) {
	tests := []struct {
		name string
		edit func(*auditRecord)
	}{
		{"typical", func(*auditRecord) {}},
		{"empty strings and lists", func(r *auditRecord) {
			*r = auditRecord{Time: r.Time, Hooks: []string{}, Redactions: []string{}}
		}},
		{"nil lists", func(r *auditRecord) { r.Hooks, r.Redactions = nil, nil }},
		{"several names", func(r *auditRecord) {
			r.Hooks = []string{"a", "b\"c", ""}
			r.Redactions = []string{"pii:email=2", "secrets:aws_key=1", "x<y>"}
		}},
		{"unicode", func(r *auditRecord) { r.Host, r.Path = "bücher.example", "/日本語/😀/é" }},
		{"invalid utf8", func(r *auditRecord) {
			r.Path, r.Host, r.Method = "/a\xffb\xc3", "\xed\xa0\x80x", "\xf4\x90\x80\x80"
		}},
		{"truncated rune at end", func(r *auditRecord) { r.Path = "/é\xe2\x82" }},
		{"control characters", func(r *auditRecord) {
			r.Path = "/a\x00b\x01\x07\b\t\n\v\f\r\x1b\x1f\x7f"
		}},
		{"forged record", func(r *auditRecord) {
			r.Path = "/x\n{\"time\":\"2025-01-01T00:00:00Z\",\"decision\":\"allow\"}\r\n"
		}},
		{"quotes and backslashes", func(r *auditRecord) { r.Path, r.Client = `/"\\"\`, `\u0041"` }},
		{"html characters", func(r *auditRecord) { r.Path, r.Host = "/<script>&amp;</script>", "a&b>c<d" }},
		{"line and paragraph separators", func(r *auditRecord) { r.Path = "/a\u2028b\u2029c\u2027\u202a" }},
		{"large byte counts", func(r *auditRecord) {
			r.BytesUp, r.BytesDown, r.Port, r.Status = math.MaxInt64, math.MinInt64, math.MaxUint16, -1
		}},
		{"zero duration", func(r *auditRecord) { r.DurationMS = 0 }},
		{"one microsecond", func(r *auditRecord) { r.DurationMS = float64(time.Microsecond.Microseconds()) / 1000 }},
		{"longest duration", func(r *auditRecord) { r.DurationMS = float64(time.Duration(math.MaxInt64).Microseconds()) / 1000 }},
		{"negative duration", func(r *auditRecord) { r.DurationMS = -0.001 }},
		{"tiny duration", func(r *auditRecord) { r.DurationMS = 1e-7 }},
		{"smallest float", func(r *auditRecord) { r.DurationMS = math.SmallestNonzeroFloat64 }},
		{"just below 1e-6", func(r *auditRecord) { r.DurationMS = math.Nextafter(1e-6, 0) }},
		{"1e-6", func(r *auditRecord) { r.DurationMS = 1e-6 }},
		{"just below 1e21", func(r *auditRecord) { r.DurationMS = math.Nextafter(1e21, 0) }},
		{"huge duration", func(r *auditRecord) { r.DurationMS = 1e21 }},
		{"most negative float", func(r *auditRecord) { r.DurationMS = -math.MaxFloat64 }},
		{"whole nanoseconds", func(r *auditRecord) { r.Time = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC) }},
		{"trailing zero nanoseconds", func(r *auditRecord) { r.Time = time.Date(2025, 1, 2, 3, 4, 5, 120000000, time.UTC) }},
		{"offset time", func(r *auditRecord) { r.Time = r.Time.In(time.FixedZone("", -(3*3600 + 30*60))) }},
		{"report", func(r *auditRecord) {
			r.Decision, r.Code, r.Reason = "report", "destination_not_allowed", `host "evil.example" is not in tenant "acme"'s allowlist`
			r.ReportCode, r.ReportReason = r.Code, r.Reason
		}},
		{"report the upstream failed", func(r *auditRecord) {
			r.Decision, r.Code, r.Status = "report", "upstream_unreachable", 502
			r.ReportCode, r.ReportReason = "destination_not_allowed", "no rule for \"a<b>\"\n\u2028"
		}},
		{"deny", func(r *auditRecord) {
			r.Decision, r.Code, r.Status, r.Reason = "deny", "bad_request", 400, "the request target is malformed or ambiguous: bad\x00host\n<&>"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := sampleAuditRecord()
			tt.edit(&rec)
			checkAuditLine(t, &rec)
		})
	}
}

func TestAuditAppendJSONAllocs(t *testing.T) {
	rec := sampleAuditRecord()
	rec.Path = "/a\u2028\xff<&>\n"
	rec.Decision, rec.Code, rec.Reason = "report", "upstream_unreachable", "the connection to a.example:443 failed"
	rec.ReportCode, rec.ReportReason = "destination_not_allowed", "no rule for a.example:443"
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { buf = rec.appendJSON(buf[:0]) }); n != 0 {
		t.Fatalf("appendJSON allocated %v times per line", n)
	}
}

func TestAuditLogWholeLines(t *testing.T) {
	var out bytes.Buffer
	a := newAuditLog(&out, auditOptions{})
	rec := sampleAuditRecord()
	rec.Path = "/" + strings.Repeat("p", auditLineReuse) // not pooled
	if err := a.write(&rec); err != nil {
		t.Fatal(err)
	}
	rec.Path, rec.Reason = "/x\ny", "denied"
	if err := a.write(&rec); err != nil {
		t.Fatal(err)
	}
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), out.String())
	}
	var got auditRecord
	if err := json.Unmarshal([]byte(lines[1]), &got); err != nil {
		t.Fatal(err)
	}
	if got.Path != "/x\ny" || got.Reason != "denied" || !got.Time.Equal(rec.Time) {
		t.Fatalf("read back %+v", got)
	}
}

func BenchmarkAuditMarshal(b *testing.B) {
	rec := sampleAuditRecord()
	b.ReportAllocs()
	for b.Loop() {
		line, err := json.Marshal(&rec)
		if err != nil {
			b.Fatal(err)
		}
		_ = append(line, '\n')
	}
}

func BenchmarkAuditAppendJSON(b *testing.B) {
	rec := sampleAuditRecord()
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = append(rec.appendJSON(buf[:0]), '\n')
	}
}

// BenchmarkAuditWrite is a whole line's way into the buffered log.
func BenchmarkAuditWrite(b *testing.B) {
	a := newAuditLog(io.Discard, auditOptions{})
	defer func() {
		if err := a.close(); err != nil {
			b.Error(err)
		}
	}()
	rec := sampleAuditRecord()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := a.write(&rec); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// FuzzAuditLine feeds client-controlled values (method, host, path, and a
// reason that quotes them) through the audit encoder.
func FuzzAuditLine(f *testing.F) {
	f.Add("GET", "api.github.com", "/repos/acme/widgets", "", "label-pulls,pii:email=2", uint16(443), 200, int64(512), 12.345, int64(1741944413589793000))
	f.Add("CONNECT", "evil.example", "/x\n{\"decision\":\"allow\"}", "host \"evil.example\" is not allowed", "", uint16(0), 403, int64(0), 0.0, int64(0))
	f.Add("G\x00T", "a<b>&c", "/\u2028\u2029\xff\xc3", "\\\"\t\r", ",", uint16(65535), -1, int64(math.MaxInt64), 1e-7, int64(-1))
	f.Fuzz(func(t *testing.T, method, host, path, reason, names string, port uint16, status int, count int64, durationMS float64, unixNano int64) {
		if math.IsNaN(durationMS) || math.IsInf(durationMS, 0) {
			t.Skip("json.Marshal refuses it; a duration is never one")
		}
		rec := auditRecord{
			Time:       time.Unix(0, unixNano).UTC(),
			RequestID:  names,
			Tenant:     reason,
			Client:     host,
			Method:     method,
			Scheme:     "https",
			Host:       host,
			Port:       port,
			Path:       path,
			Decision:   "deny",
			Code:       method,
			Rule:       path,
			Status:     status,
			BytesUp:    count,
			BytesDown:  -count,
			DurationMS: durationMS,
			Hooks:      []string{},
			Redactions: []string{},
			Reason:     reason,
		}
		if names != "" {
			rec.Hooks, rec.Redactions = strings.Split(names, ","), strings.Split(names, ";")
			rec.ReportCode, rec.ReportReason = method, reason
		}
		checkAuditLine(t, &rec)

		var back auditRecord
		if err := json.Unmarshal(rec.appendJSON(nil), &back); err != nil {
			t.Fatalf("line does not read back: %v", err)
		}
		if utf8.ValidString(path) && utf8.ValidString(host) && (back.Path != path || back.Host != host) {
			t.Fatalf("read back host %q path %q, want %q %q", back.Host, back.Path, host, path)
		}
	})
}

// FuzzTimestamp holds appendTimestamp to time's own RFC3339Nano, for
// every time the audit log could carry and some it never will.
func FuzzTimestamp(f *testing.F) {
	f.Add(int64(1741944413589793000), false)
	f.Add(int64(1741944413000000000), false)
	f.Add(int64(1741944413100000000), true)
	f.Add(int64(-62135596800000000), false) // year 1
	f.Add(int64(0), true)
	f.Fuzz(func(t *testing.T, unixNano int64, local bool) {
		at := time.Unix(0, unixNano).UTC()
		if local {
			at = at.In(time.FixedZone("X", 5*3600+30*60))
		}
		if got, want := string(appendTimestamp([]byte("x"), at)), "x"+at.Format(time.RFC3339Nano); got != want {
			t.Fatalf("appendTimestamp(%v) = %q, want %q", at, got, want)
		}
	})
}
