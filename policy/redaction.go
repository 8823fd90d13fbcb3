package policy

import (
	"sort"

	"github.com/egressgw/egressgw/redaction"
)

// Redaction is gateway.yaml's redaction section, compiled.
type Redaction struct {
	MaxBodyBytes int64
	// MaxEventBytes bounds one event of a stream redacted event by event
	// (docs/reference.md, "Streamed bodies").
	MaxEventBytes int64
	Profiles      map[string]*redaction.Profile
}

// ConnectorRedaction holds the profile chains a connector applies to what
// leaves (Request) and what comes back (Response).
type ConnectorRedaction struct {
	Request  redaction.Chain
	Response redaction.Chain
}

func (b *builder) redactionSettings(doc *yamlDoc, f redactionFile) Redaction {
	r := Redaction{MaxBodyBytes: int64(sizeOr(f.MaxBodyBytes, 16<<20)), Profiles: map[string]*redaction.Profile{}}
	if r.MaxBodyBytes < 1 {
		b.errorf(doc, doc.line("redaction", "max_body_bytes"), "max_body_bytes: must be greater than zero")
	}
	r.MaxEventBytes = int64(sizeOr(f.MaxEventBytes, 1<<20))
	if r.MaxEventBytes < 1 || r.MaxEventBytes > 1<<30 {
		b.errorf(doc, doc.line("redaction", "max_event_bytes"), "max_event_bytes: must be between 1 byte and 1GiB")
	}
	var key []byte
	if f.HMACKey != nil {
		if v, ok := b.resolveSecret(doc, doc.line("redaction", "hmac_key"), "redaction.hmac_key", *f.HMACKey); ok {
			key = []byte(v)
		}
	}
	names := make([]string, 0, len(f.Profiles))
	for name := range f.Profiles {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		pf := f.Profiles[name]
		cfg := redaction.ProfileConfig{
			Name: name, Detectors: pf.Detectors, JSONFields: pf.JSONFields, Headers: pf.Headers,
			QueryParams: pf.QueryParams, Action: pf.Action, OnUnsupportedBody: pf.OnUnsupportedBody,
		}
		for _, p := range pf.Patterns {
			cfg.Patterns = append(cfg.Patterns, redaction.Pattern{Name: p.Name, Regex: p.Regex})
		}
		profile, err := redaction.NewProfile(cfg, key)
		if err != nil {
			b.errorf(doc, doc.line("redaction", "profiles", name), "%v", err)
			continue
		}
		r.Profiles[name] = profile
	}
	return r
}

// connectorRedaction resolves a connector's redact: profile names.
func (b *builder) connectorRedaction(doc *yamlDoc, f *redactRefsFile) *ConnectorRedaction {
	if f == nil {
		return nil
	}
	cr := &ConnectorRedaction{}
	chain := func(names []string, key string) redaction.Chain {
		var c redaction.Chain
		for i, name := range names {
			p, ok := b.snap.Gateway.Redaction.Profiles[name]
			if !ok {
				b.errorf(doc, doc.line("redact", key, i), "redaction profile %q is not defined in %s", name, GatewayFileName)
				continue
			}
			c = append(c, p)
		}
		return c
	}
	cr.Request, cr.Response = chain(f.Request, "request"), chain(f.Response, "response")
	return cr
}
