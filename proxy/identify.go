package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/egressgw/egressgw/policy"
)

// identify finds the tenant: Basic proxy credentials when the client sends
// any (and then they must be right), else the client's source address.
func (ex *exchange) identify(r *http.Request) outcome {
	snap := ex.rt.live.Snapshot
	// The server has canonicalised the keys: a direct lookup, the first
	// value as Get would return.
	if values := r.Header["Proxy-Authorization"]; len(values) > 0 && values[0] != "" {
		header := values[0]
		memo := ex.authMemo(r)
		if t, sum, ok := memo.recall(ex.rt, header); ok {
			ex.setTenant(t)
			ex.tokenSum = sum
			ex.authenticated()
			return outcome{}
		}
		var buf [basicBuffer]byte
		if user, token, ok := parseBasic(header, buf[:0]); ok {
			sum := sha256.Sum256(token)
			clear(token) // needed no longer than its hash
			if t, ok := snap.AuthenticateSum(string(user), sum); ok {
				ex.setTenant(t)
				ex.tokenSum = sum
				memo.remember(ex.rt, header, t, sum)
				ex.authenticated()
				return outcome{}
			}
		}
		memo.forget()
		return refused(policy.CodeProxyAuthRequired,
			"the proxy credentials were not accepted; send Proxy-Authorization: Basic base64(TENANT:TOKEN), e.g. HTTP_PROXY=http://TENANT:TOKEN@gateway:3128")
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		if t := snap.TenantBySource(ap.Addr()); t != nil {
			ex.setTenant(t)
			ex.source = ap.Addr()
			ex.authenticated()
			return outcome{}
		}
	}
	return refused(policy.CodeProxyAuthRequired,
		"this gateway needs proxy credentials; set HTTP_PROXY=http://TENANT:TOKEN@gateway:3128 (and HTTPS_PROXY likewise)")
}

// identifyAs identifies a request inside an inspected tunnel as the
// tenant the tunnel was opened as, the same way, in the exchange's own
// policy generation: a reload since may have taken the tenant's access.
func (ex *exchange) identifyAs(tunnelEx *exchange) outcome {
	ex.tokenSum, ex.source = tunnelEx.tokenSum, tunnelEx.source
	tenant, why := ex.reidentify(ex.rt.live.Snapshot, tunnelEx.tenant.ID)
	if tenant == nil {
		ex.host, ex.port = tunnelEx.host, tunnelEx.port
		return refused(policy.CodeDestinationNotAllowed, why)
	}
	ex.setTenant(tenant)
	return outcome{}
}

// basicBuffer is room for the decoded credentials of a typical client, so
// that identifying one allocates nothing; longer ones still work.
const basicBuffer = 192

// parseBasic decodes Basic credentials into buf (appending, so it may
// outgrow it) and splits them at the first colon.
func parseBasic(header string, buf []byte) (user, password []byte, ok bool) {
	scheme, encoded, found := strings.Cut(header, " ")
	if !found || !strings.EqualFold(scheme, "Basic") {
		return nil, nil, false
	}
	raw, err := base64.StdEncoding.AppendDecode(buf, []byte(strings.TrimSpace(encoded)))
	if err != nil {
		return nil, nil, false
	}
	return bytes.Cut(raw, []byte{':'})
}

// reidentify finds, in snap, the tenant this exchange was identified as,
// the same way it was identified: by its token's hash or by its source
// address. It returns why not when that no longer works.
func (ex *exchange) reidentify(snap *policy.Snapshot, id string) (*policy.Tenant, string) {
	if ex.source.IsValid() {
		if t := snap.TenantBySource(ex.source); t != nil && t.ID == id {
			return t, ""
		}
		return nil, fmt.Sprintf("the client address no longer identifies tenant %q", id)
	}
	if t, ok := snap.AuthenticateSum(id, ex.tokenSum); ok {
		return t, ""
	}
	return nil, fmt.Sprintf("the credentials of tenant %q are no longer valid", id)
}
