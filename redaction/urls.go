package redaction

import (
	"errors"
	"net/url"
	"strconv"
	"strings"
)

// URLForMessage renders rawURL for a log line, an audit reason or a
// client's error message: without its query, fragment or userinfo, which
// can hold tokens and personal data that the audit log never holds
// (docs/operators.md, "What the logs hold"). A query is shown as "?…" so
// the reader still sees that there was one. Text that does not parse as a
// URL is cut at its first "?" or "#" all the same.
func URLForMessage(rawURL string) string {
	rest, hadQuery := rawURL, false
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		hadQuery = rest[i] == '?'
		rest = rest[:i]
	}
	if scheme, after, ok := strings.Cut(rest, "://"); ok {
		authority, path, _ := strings.Cut(after, "/")
		if at := strings.LastIndexByte(authority, '@'); at >= 0 {
			authority = authority[at+1:]
		}
		rest = scheme + "://" + authority
		if path != "" || strings.Contains(after, "/") {
			rest += "/" + path
		}
	}
	if hadQuery {
		rest += "?…"
	}
	return rest
}

// ErrorForMessage is err's text with the URL of every *url.Error in its
// chain rendered by URLForMessage: Go's HTTP client and URL parser put the
// whole URL, query included, into their errors.
func ErrorForMessage(err error) string {
	if err == nil {
		return ""
	}
	text := err.Error()
	for e := err; e != nil; {
		var ue *url.Error
		if !errors.As(e, &ue) {
			break
		}
		safe := URLForMessage(ue.URL)
		text = strings.ReplaceAll(text, strconv.Quote(ue.URL), strconv.Quote(safe))
		text = strings.ReplaceAll(text, ue.URL, safe)
		e = ue.Err
	}
	return text
}
