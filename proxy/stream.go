package proxy

import (
	"net/http"
	"time"
)

// A response in flight, plain or inside an inspected tunnel, is held in the
// same set as tunnels and upgraded connections (tunnelSet), so that a
// reload rechecks it the same way (revokeTunnels). What differs is the
// timing: a request in flight finishes under the policy it started with,
// so a response is ended only if it is still running streamGrace after the
// reload that no longer allows it. A short exchange is long over by then;
// a stream (server-sent events, a long poll, a large download) is ended,
// and its client sees the body cut short (docs/admins.md, "Saving:
// reload").

// streamGrace is how long a response may still run after a reload that no
// longer allows it. With the reload itself, that ends it within the 2 s
// the docs promise for a saved change.
const streamGrace = time.Second

// holdStream registers ex's response, answered on r's connection, for
// revocation. The caller ends the hold with releaseStream. The hold is
// part of the exchange (exchange.streamHold), not a tunnel of its own: a
// small request then costs no allocation for it. An exchange holds one
// response at most.
func (g *Gateway) holdStream(ex *exchange, r *http.Request) *tunnel {
	t := &ex.streamHold
	t.ex, t.stream = ex, true
	if cancel, ok := streamCancel(r); ok {
		t.endStream = cancel // an HTTP/2 stream: its connection carries others
	} else if ex.conn != nil {
		t.client = ex.conn
	}
	g.tunnels.add(t) // never refused: see tunnelSet.add
	// A reload between the decision and now was not seen by revokeTunnels.
	if reason := g.reloadedMeanwhile(t); reason != "" {
		g.revokeStreamLater(t)
	}
	return t
}

// releaseStream ends the hold of holdStream (a second call changes
// nothing) and returns why a reload revoked the response, or "". From here
// on a revocation leaves the client's connection alone: it goes on to the
// client's next request.
func (g *Gateway) releaseStream(t *tunnel) string {
	g.tunnels.remove(t)
	t.closeOnce.Do(func() {})
	if reason := t.revoked.Load(); reason != nil {
		return *reason
	}
	return ""
}

// revokeStreamLater ends the response t streamGrace from now unless it is
// over by then, or a later reload has allowed it again.
func (g *Gateway) revokeStreamLater(t *tunnel) {
	time.AfterFunc(streamGrace, func() {
		rt := g.runtime.Load()
		if reason := t.recheck(rt); reason != "" && t.revoke(reason) {
			g.log.Info("response revoked by policy reload", "request_id", t.ex.id, "tenant", t.ex.tenantID(),
				"generation", rt.live.Generation, "reason", reason)
		}
	})
}

// revokedBy names what revoked t, for the reason its audit line gives: a
// spent budget, the end of the grant that allowed it, or else a policy
// reload.
func (t *tunnel) revokedBy() string {
	switch {
	case t.ex.budget.name.Load() != nil:
		return "a spent budget"
	case t.grantEnded.Load():
		return "the end of its grant"
	default:
		return "a policy reload"
	}
}
