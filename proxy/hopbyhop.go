package proxy

import (
	"errors"
	"net/http"
	"net/textproto"
	"strings"
)

// isHopByHop says whether name is a header that describes one connection,
// not the message (RFC 9110 §7.6.1); forwarding it would let a client steer
// the gateway's own connection to the upstream, or the upstream the
// client's.
func isHopByHop(name string) bool {
	switch name {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// removeHopByHop strips hop-by-hop headers in place, and those that
// Connection names; for a protocol upgrade (WebSocket) it keeps
// Connection: Upgrade and Upgrade, which the handshake needs end to end.
// One pass over the header, rather than a lookup per name: it runs twice
// per request.
func removeHopByHop(h http.Header, upgrade bool) {
	for _, value := range h["Connection"] {
		for _, name := range strings.Split(value, ",") {
			name = textproto.TrimString(name)
			if name != "" && !(upgrade && strings.EqualFold(name, "Upgrade")) {
				h.Del(name)
			}
		}
	}
	for name, values := range h {
		switch {
		case !isHopByHop(name):
		case upgrade && (name == "Connection" || name == "Upgrade"):
		case name == "Te" && asksForTrailers(values):
			// Asks for trailers (gRPC needs them), which pass end to end;
			// the rest of TE is the connection's, and HTTP/2 allows
			// nothing else in it.
			h[name] = teTrailers
		default:
			delete(h, name)
		}
	}
}

// teTrailers is the one TE value that is forwarded; shared, as the
// transport only reads it.
var teTrailers = []string{"trailers"}

// asksForTrailers says whether a TE header names "trailers" among its
// transfer codings.
func asksForTrailers(values []string) bool {
	for _, v := range values {
		for _, token := range strings.Split(v, ",") {
			token, _, _ = strings.Cut(token, ";")
			if strings.EqualFold(textproto.TrimString(token), "trailers") {
				return true
			}
		}
	}
	return false
}

// errUnsolicitedUpgrade is an upstream switching protocols when the client
// asked for no such switch.
var errUnsolicitedUpgrade = errors.New("the upstream switched protocols without being asked to")

// sameUpgrade reports whether a 101 answers the upgrade the request asked
// for: the request is an upgrade, and to the protocol the response names.
func sameUpgrade(request, response http.Header) bool {
	return isUpgrade(request) && isUpgrade(response) &&
		strings.EqualFold(request.Get("Upgrade"), response.Get("Upgrade"))
}

func isUpgrade(h http.Header) bool {
	for _, v := range h["Connection"] {
		for _, token := range strings.Split(v, ",") {
			if strings.EqualFold(textproto.TrimString(token), "upgrade") {
				return h.Get("Upgrade") != ""
			}
		}
	}
	return false
}
