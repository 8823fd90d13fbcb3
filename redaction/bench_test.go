package redaction

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
)

// piiProfile is the pii profile of docs/reference.md.
func piiProfile(tb testing.TB) *Profile {
	tb.Helper()
	p, err := NewProfile(ProfileConfig{
		Name:              "pii",
		Detectors:         []string{"email", "credit_card", "us_ssn", "phone"},
		JSONFields:        []string{"password", "*.ssn", "user.date_of_birth"},
		Action:            "mask",
		OnUnsupportedBody: "pass",
	}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// benchJSON builds a realistic API document of about size bytes: an array
// of customer records with identifiers, timestamps, prices, free text and
// a little personal data (about one record in four carries a finding).
func benchJSON(size int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	words := []string{"order", "shipped", "the", "customer", "asked", "about", "delivery", "invoice",
		"refund", "please", "contact", "support", "tomorrow", "package", "warehouse", "status"}
	text := func(n int) string {
		var b bytes.Buffer
		for i := range n {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(words[rng.IntN(len(words))])
		}
		return b.String()
	}
	var buf bytes.Buffer
	buf.WriteString("[")
	for i := 0; buf.Len() < size-600; i++ {
		if i > 0 {
			buf.WriteString(",\n")
		}
		rec := map[string]any{
			"id":         fmt.Sprintf("cus_%016x", rng.Uint64()),
			"created_at": "2024-03-15T10:22:31.123Z",
			"amount":     rng.IntN(100000),
			"price":      fmt.Sprintf("%d.%02d", rng.IntN(1000), rng.IntN(100)),
			"currency":   "EUR",
			"active":     rng.IntN(2) == 0,
			"tags":       []string{"vip", "newsletter", "b2b"},
			"note":       text(12),
			"address":    map[string]any{"street": "42 Market Street", "city": "Springfield", "zip": "62704"},
			"items":      []any{map[string]any{"sku": "SKU-12345", "qty": 2}, map[string]any{"sku": "SKU-67890", "qty": 1}},
			"user": map[string]any{
				"name":          "Jane Roe",
				"date_of_birth": "1990-01-01",
				"ssn":           "123-45-6789",
			},
		}
		switch i % 4 {
		case 0:
			rec["contact"] = map[string]any{"email": fmt.Sprintf("jane.roe%d@example.com", i), "phone": "+1 415 555 2671"}
		case 1:
			rec["payment"] = map[string]any{"card": "4111 1111 1111 1111", "password": "hunter2"}
		}
		b, _ := json.Marshal(rec)
		buf.Write(b)
	}
	buf.WriteString("]")
	return buf.Bytes()
}

// benchText builds about size bytes of application log lines, one in
// twenty with personal data.
func benchText(size int) []byte {
	var buf bytes.Buffer
	for i := 0; buf.Len() < size; i++ {
		switch i % 20 {
		case 0:
			fmt.Fprintf(&buf, "2024-03-15T10:22:31.%03dZ INFO user jane.roe%d@example.com logged in from 203.0.113.%d\n", i%1000, i, i%250)
		case 10:
			fmt.Fprintf(&buf, "2024-03-15T10:22:31.%03dZ WARN payment card 4111-1111-1111-1111 declined, call +44 20 7946 0958\n", i%1000)
		default:
			fmt.Fprintf(&buf, "2024-03-15T10:22:31.%03dZ DEBUG GET /api/v2/orders/%d?page=%d took %dms status=200 bytes=%d\n", i%1000, 100000+i, i%7, i%300, 1000+i)
		}
	}
	return buf.Bytes()
}

func benchmarkBody(b *testing.B, contentType string, body []byte) {
	p := piiProfile(b)
	out, rep, err := p.Body(contentType, body)
	if err != nil || rep.Total() == 0 {
		b.Fatalf("Body: %v, %d findings", err, rep.Total())
	}
	if contentType == "application/json" && !json.Valid(out) {
		b.Fatal("output is not valid JSON")
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := p.Body(contentType, body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRedactJSON64K(b *testing.B) { benchmarkBody(b, "application/json", benchJSON(64<<10)) }
func BenchmarkRedactJSON4M(b *testing.B)  { benchmarkBody(b, "application/json", benchJSON(4<<20)) }
func BenchmarkRedactText1M(b *testing.B)  { benchmarkBody(b, "text/plain", benchText(1<<20)) }

// cleanJSON is 64 KiB of product records without personal data.
func cleanJSON() []byte {
	var buf bytes.Buffer
	buf.WriteString("[")
	for i := 0; buf.Len() < 64<<10; i++ {
		if i > 0 {
			buf.WriteString(",")
		}
		fmt.Fprintf(&buf, `{"id":%d,"name":"item %d","description":"a plain product description without personal data","price":%d.99,"tags":["a","b"]}`, i, i, i%100)
	}
	buf.WriteString("]")
	return buf.Bytes()
}

// BenchmarkRedactJSONClean measures a document with nothing to redact,
// the common case for most responses.
func BenchmarkRedactJSONClean(b *testing.B) {
	p := piiProfile(b)
	body := cleanJSON()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		p.Body("application/json", body)
	}
}

func BenchmarkScrubSecrets1M(b *testing.B) {
	s, err := NewSecretScrubber([][]byte{[]byte("ghp_0123456789abcdefghijABCDEFGHIJ012345"), []byte("sk_live_51Hxyz0123456789")})
	if err != nil {
		b.Fatal(err)
	}
	body := benchText(1 << 20)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		s.Scrub(body)
	}
}

func BenchmarkScrubManySecrets1M(b *testing.B) {
	var secrets [][]byte
	for i := range 40 {
		secrets = append(secrets, fmt.Appendf(nil, "secret-value-%02d-0123456789", i))
	}
	s, err := NewSecretScrubber(secrets)
	if err != nil {
		b.Fatal(err)
	}
	body := benchText(1 << 20)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		s.Scrub(body)
	}
}

// BenchmarkScrubOneSecret1M is the common connector: one injected token.
func BenchmarkScrubOneSecret1M(b *testing.B) {
	s, err := NewSecretScrubber([][]byte{[]byte("s3cr3t-injected-4f1e9a7c0b2d")})
	if err != nil {
		b.Fatal(err)
	}
	body := benchText(1 << 20)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		s.Scrub(body)
	}
}

// BenchmarkScrubEscapedText1M is text full of the bytes that start
// escapes ("%", "\"), where escaped echoes are looked for.
func BenchmarkScrubEscapedText1M(b *testing.B) {
	s, err := NewSecretScrubber([][]byte{[]byte("s3cr3t-injected-4f1e9a7c0b2d")})
	if err != nil {
		b.Fatal(err)
	}
	var buf bytes.Buffer
	for buf.Len() < 1<<20 {
		buf.WriteString(`{"q":"a%20b%2Fc","s":"line\nnext \u00e9 \"x\" s3cr3t"}` + "\n")
	}
	body := buf.Bytes()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		s.Scrub(body)
	}
}

// benchEvents is a server-sent event stream of n events, each a compact
// JSON document of about 1 KiB from benchJSON.
func benchEvents(n int) []byte {
	var doc bytes.Buffer
	if err := json.Compact(&doc, benchJSON(1200)); err != nil {
		panic(err)
	}
	one := doc.Bytes()
	if len(one) > 1024 {
		// Cut to the first records that fit, still valid JSON.
		var recs []json.RawMessage
		_ = json.Unmarshal(one, &recs)
		for len(recs) > 1 && len(one) > 1024 {
			recs = recs[:len(recs)-1]
			one, _ = json.Marshal(recs)
		}
	}
	var stream bytes.Buffer
	for range n {
		stream.WriteString("data: ")
		stream.Write(one)
		stream.WriteString("\n\n")
	}
	return stream.Bytes()
}

// BenchmarkEventReader1KiB measures event-by-event throughput on 1 KiB
// JSON events: parsed and re-serialised only ("none"), with the pii
// profile, and with the pii profile and an injected secret's scrubbing
// across events. It reports events/s; compare the cases of one run.
func BenchmarkEventReader1KiB(b *testing.B) {
	const n = 256
	stream := benchEvents(n)
	scrubber, err := NewSecretScrubber([][]byte{[]byte("sk-live-0123456789abcdef0123")})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cfg  EventStreamConfig
	}{
		{"none", EventStreamConfig{}},
		{"pii", EventStreamConfig{Redact: Chain{piiProfile(b)}}},
		{"pii+secret", EventStreamConfig{Redact: Chain{piiProfile(b)}, Scrubber: scrubber}},
	} {
		b.Run(c.name, func(b *testing.B) {
			c.cfg.Format = ServerSentEvents
			b.ReportAllocs()
			b.SetBytes(int64(len(stream)))
			for b.Loop() {
				r := NewEventReader(context.Background(), bytes.NewReader(stream), c.cfg)
				if _, err := io.Copy(io.Discard, r); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
