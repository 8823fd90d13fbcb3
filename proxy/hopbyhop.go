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
		case name == "Te" && len(values) > 0 && strings.EqualFold(values[0], "trailers"):
			// asks for trailers, which the transport handles end to end
		default:
			delete(h, name)
		}
	}
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
