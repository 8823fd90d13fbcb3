package proxy

import (
	"strconv"
	"time"

	"github.com/egressgw/egressgw/internal/jsonstr"
)

// appendJSON appends rec to b as the object json.Marshal(rec) gives, byte
// for byte, without reflection: one line is written per request, and the
// same bytes keep every consumer of the audit log working unchanged.
func (rec *auditRecord) appendJSON(b []byte) []byte {
	// Time.MarshalJSON writes RFC3339Nano too; its digits need no escaping.
	b = append(b, `{"time":"`...)
	b = appendTimestamp(b, rec.Time)
	b = append(b, `","request_id":`...)
	b = appendJSONString(b, rec.RequestID)
	b = append(b, `,"tenant":`...)
	b = appendJSONString(b, rec.Tenant)
	b = append(b, `,"client":`...)
	b = appendJSONString(b, rec.Client)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, rec.Method)
	b = append(b, `,"scheme":`...)
	b = appendJSONString(b, rec.Scheme)
	b = append(b, `,"host":`...)
	b = appendJSONString(b, rec.Host)
	b = append(b, `,"port":`...)
	b = strconv.AppendUint(b, uint64(rec.Port), 10)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, rec.Path)
	b = append(b, `,"decision":`...)
	b = appendJSONString(b, rec.Decision)
	b = append(b, `,"code":`...)
	b = appendJSONString(b, rec.Code)
	b = append(b, `,"rule":`...)
	b = appendJSONString(b, rec.Rule)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(rec.Status), 10)
	b = append(b, `,"bytes_up":`...)
	b = strconv.AppendInt(b, rec.BytesUp, 10)
	b = append(b, `,"bytes_down":`...)
	b = strconv.AppendInt(b, rec.BytesDown, 10)
	b = append(b, `,"duration_ms":`...)
	b = jsonstr.AppendFloat(b, rec.DurationMS) // finite: whole microseconds
	b = append(b, `,"hooks":`...)
	b = appendJSONStrings(b, rec.Hooks)
	b = append(b, `,"redactions":`...)
	b = appendJSONStrings(b, rec.Redactions)
	if rec.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendJSONString(b, rec.Reason)
	}
	if rec.ReportCode != "" {
		b = append(b, `,"report_code":`...)
		b = appendJSONString(b, rec.ReportCode)
	}
	if rec.ReportReason != "" {
		b = append(b, `,"report_reason":`...)
		b = appendJSONString(b, rec.ReportReason)
	}
	if rec.Connector != "" {
		b = append(b, `,"connector":`...)
		b = appendJSONString(b, rec.Connector)
	}
	if rec.ConnectorVersion != 0 {
		b = append(b, `,"connector_version":`...)
		b = strconv.AppendInt(b, int64(rec.ConnectorVersion), 10)
	}
	if rec.Budget != "" {
		b = append(b, `,"budget":`...)
		b = appendJSONString(b, rec.Budget)
	}
	return append(b, '}')
}

// appendTimestamp appends t as t.AppendFormat(b, time.RFC3339Nano) does,
// without interpreting the layout on every line: for a UTC time of years
// 0-9999 (the audit log's), the fields directly; otherwise through
// AppendFormat.
func appendTimestamp(b []byte, t time.Time) []byte {
	year, month, day := t.Date()
	if year < 0 || year > 9999 || t.Location() != time.UTC {
		return t.AppendFormat(b, time.RFC3339Nano)
	}
	hour, minute, second := t.Clock()
	n := len(b)
	b = append(b, "0000-00-00T00:00:00"...)
	d := b[n:]
	put2(d[0:], year/100)
	put2(d[2:], year%100)
	put2(d[5:], int(month))
	put2(d[8:], day)
	put2(d[11:], hour)
	put2(d[14:], minute)
	put2(d[17:], second)
	if ns := t.Nanosecond(); ns != 0 {
		// Nine digits with the trailing zeros dropped, as ".999999999".
		var frac [10]byte
		frac[0] = '.'
		frac[1] = byte('0' + ns/100_000_000)
		put2(frac[2:], ns/1_000_000%100)
		put2(frac[4:], ns/10_000%100)
		put2(frac[6:], ns/100%100)
		put2(frac[8:], ns%100)
		end := len(frac)
		for frac[end-1] == '0' {
			end--
		}
		b = append(b, frac[:end]...)
	}
	return append(b, 'Z')
}

// twoDigits holds "00" to "99" back to back.
const twoDigits = "00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899"

// put2 writes v, 0 <= v < 100, as two digits at d[0:2].
func put2(d []byte, v int) {
	d[0], d[1] = twoDigits[2*v], twoDigits[2*v+1]
}

// appendJSONStrings appends s as encoding/json does: a nil slice is null.
func appendJSONStrings(b []byte, s []string) []byte {
	if s == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, v := range s {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, v)
	}
	return append(b, ']')
}

// appendJSONString appends s quoted as json.Marshal does (HTML characters
// escaped too). Path, host and method come from the client: no value can
// end the line or forge another record.
func appendJSONString(b []byte, s string) []byte { return jsonstr.Append(b, s, true) }
