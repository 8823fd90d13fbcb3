package proxy

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/quota"
	"github.com/egressgw/egressgw/redaction"
	"github.com/egressgw/egressgw/state"
)

// exchange is one request or tunnel from the moment it arrives until its
// audit line is written. It holds the policy generation it started under
// for its whole life: requests in flight finish under the policy they
// started with (docs/admins.md, "Saving: reload").
type exchange struct {
	gw     *Gateway
	rt     *runtimeState
	id     string
	start  time.Time
	client string
	conn   *countedConn // the client connection, nil where there is none of the gateway's
	tunnel bool
	// inner marks a request inside an inspected tunnel or a tunnel read
	// as plain HTTP, whose bytes the tunnel's own line already counts.
	inner bool
	// plainTunnel marks a CONNECT let in only to carry plain HTTP, which
	// is read and decided request by request (docs/design.md).
	plainTunnel bool
	// upgrade marks a request that asks to switch protocols, which the
	// policy decides on its own terms (policy.Request.Upgrade); grpc a
	// gRPC request (transform).
	upgrade, grpc bool
	port          uint16

	method string
	scheme string
	host   string
	path   string

	tenant   *policy.Tenant
	ts       *tenantState      // the tenant's keys and series in this generation
	tokenSum [sha256.Size]byte // how the tenant was identified: a token's hash,
	source   netip.Addr        // or, when no token was sent, the client address
	// connector is the one that allowed the exchange (setDecision), whose
	// quota, hooks, redaction and credentials the later steps apply.
	connector *policy.Connector
	// connectorBucket is the connector's request bucket for this tenant,
	// compiled at load.
	connectorBucket quota.Bucket
	out             outcome // how it ended: what the reply, audit line and metrics read
	status          int
	// grants is the grant set the decision saw (grants.go); accessRequest
	// the access request its refusal was recorded as, shown in the reply.
	grants        *policy.Grants
	accessRequest *state.RequestRef

	// rate is a tunnel's rate decision, for the RateLimit headers of its
	// 200 (connectEstablished); requests take theirs from admit.
	rate quota.Result
	slot quota.Slot // the concurrency slot, released by finish

	hooks      []string // scripts run, for the audit line
	redactions []string // profile:detector=count, for the audit line
	// uploadRedactions counts what a request body streamed line by line
	// had redacted (streamRequestEvents); nil for any other.
	uploadRedactions *eventTally

	body      *requestBody // the client's request body, nil without one
	bytesUp   atomic.Int64
	bytesDown atomic.Int64
	// usageUp and usageDown are how much of bytesUp and bytesDown is in
	// the tenant's usage already (accountUsage).
	usageUp, usageDown atomic.Int64
	budget             exchangeBudget // its meter and what it charged (budget.go)
	// requestIDValue is the X-Request-Id header's value, shared by the
	// headers that carry it (setAllowedHeaders).
	requestIDValue [1]string
	// rateLimitValues are the RateLimit headers' values, sharing one
	// backing array (setRateLimitHeaders).
	rateLimitValues [3]string
	// streamHold holds the response in flight for revocation (stream.go),
	// in the exchange so that it costs no allocation of its own.
	streamHold tunnel
	finished   sync.Once
}

// begin starts the exchange of r, which came on conn (nil where it did not
// come through the gateway's listener or an inspected tunnel).
func (g *Gateway) begin(r *http.Request, conn *countedConn, tunnel bool) *exchange {
	now := g.now()
	body, _ := r.Body.(*requestBody)
	id := newRequestID(now)
	return &exchange{
		// Set once, so that the headers that carry the id share it.
		requestIDValue: [1]string{id},
		gw:             g,
		rt:             g.runtime.Load(),
		id:             id,
		start:          now,
		client:         r.RemoteAddr,
		conn:           conn,
		tunnel:         tunnel,
		method:         r.Method,
		body:           body,
	}
}

// end records o, a step's outcome, as how the exchange ended; an ok one
// changes nothing.
func (ex *exchange) end(o outcome) {
	if !o.ok() {
		ex.out = ex.out.then(o)
	}
}

// setDecision makes d the exchange's decision: its connector the one the
// later steps apply, its outcome the exchange's.
func (ex *exchange) setDecision(d policy.Decision) outcome {
	ex.connector, ex.connectorBucket = d.Connector, d.ConnectorBucket
	o := decided(d)
	ex.out = o
	return o
}

// upstreamFailed is the outcome of a failed dial or upstream exchange. An
// address the dialer refused is the gateway's denial; the rest are
// upstream faults.
func (ex *exchange) upstreamFailed(err error) outcome {
	var refusal *outcome
	if errors.As(err, &refusal) {
		return *refusal
	}
	target := net.JoinHostPort(ex.host, strconv.Itoa(int(ex.port)))
	if ex.body.timedOut() {
		// What the transport reports is the request's context, which a
		// failed body read cancels; the client stalled, it did not leave.
		err = fmt.Errorf("%w: %w", errBodyStalled, err)
	}
	var undecodable *encodingError
	if errors.As(err, &undecodable) {
		// Scrubbing, redaction and hooks read the body decoded: one
		// the gateway cannot decode is never passed on unread.
		return failed(policy.CodeUpstreamUnreachable, fmt.Sprintf("%s answered with %s encoding, which the gateway cannot decode to scrub, redact or hook the response, so it is not passed on", target, undecodable.encoding))
	}
	if errors.Is(err, errUnsolicitedUpgrade) {
		return failed(policy.CodeUpstreamUnreachable, target+" answered 101 Switching Protocols to a request that asked for no such switch; the gateway does not relay it")
	}
	o := classify(err, ex.tenantID(), target)
	// Go's errors can carry the request's URL, query and all.
	ex.gw.log.Debug("upstream failed", "request_id", ex.id, "code", o.code, "error", redaction.ErrorForMessage(err))
	ex.gw.resolverWarning.note(ex.gw, ex.id, err)
	return o
}

// setTenant records who the exchange is for, with the tenant's state in
// the exchange's generation.
func (ex *exchange) setTenant(t *policy.Tenant) {
	ex.tenant, ex.ts = t, ex.rt.tenantState(t)
}

func (ex *exchange) tenantID() string {
	if ex.tenant == nil {
		return ""
	}
	return ex.tenant.ID
}

// recheck asks whether a new policy, with the grants in ga, still allows
// what this exchange was allowed to do. It returns why not, or "" when it
// still may.
func (ex *exchange) recheck(snap *policy.Snapshot, ga policy.GrantsAt) string {
	tenant, why := ex.reidentify(snap, ex.tenant.ID)
	if tenant == nil {
		return why
	}
	d := tenant.DecideGranted(ex.policyRequest(), ga)
	if !d.Allow {
		return d.Reason
	}
	return ""
}

// finish writes the audit line and metrics, once.
func (ex *exchange) finish() {
	ex.finished.Do(func() {
		ex.slot.Release()
		ex.gw.record(ex, ex.gw.now().Sub(ex.start))
	})
}

// clientClosed is the outcome of the client going away before the
// exchange was complete.
func (ex *exchange) clientClosed() outcome {
	return failed(policy.CodeClientClosed, "the client went away before the response was complete")
}

// upstreamBrokeOff is the outcome of an upstream that failed after its
// response's head had gone to the client: it closed, reset or went silent
// for idle_timeout mid-body. The client has its status already; its
// connection is aborted.
func (ex *exchange) upstreamBrokeOff(err error) outcome {
	if o, ok := eventStreamEnded(err); ok {
		return o
	}
	target := net.JoinHostPort(ex.host, strconv.Itoa(int(ex.port)))
	ex.gw.log.Debug("upstream failed mid-response", "request_id", ex.id, "error", err)
	return failed(policy.CodeUpstreamFailedMidway, fmt.Sprintf("%s broke off its response after %d bytes of the body", target, ex.bytesDown.Load()))
}

// forwardFailed is why sending r on failed: r's context ends when the
// client's connection does, so a forward cut short by that, or by a
// request body the client broke off (uploadFailed), is the client's doing
// (client_closed), unless the body stalled; anything else is the
// upstream's.
func (ex *exchange) forwardFailed(r *http.Request, err error, uploadFailed bool) outcome {
	var refusal *outcome
	if !errors.As(err, &refusal) && !ex.body.timedOut() && (uploadFailed || r.Context().Err() != nil) {
		// Not an upstream failure: counted apart, so the upstream-errors
		// alert (docs/operators.md) does not fire on clients that give up.
		return failed(policy.CodeClientClosed, "the client went away before the upstream answered")
	}
	return ex.upstreamFailed(err)
}
