package policy

import (
	"fmt"
	"math"
	"time"

	"github.com/egressgw/egressgw/quota"
)

// Quota keys, compiled into the snapshot so the request path only reads
// them (docs/design.md). The connector's name, not its version, keys its
// bucket, so moving a tenant to a new version hands out no fresh burst.
// The keys name state in the quota backend: changing them resets every
// tenant's buckets on upgrade.
func tenantQuotaKey(tenant string) string { return "t:" + tenant }
func connectorQuotaKey(tenant, connector string) string {
	return "t:" + tenant + "|c:" + connector
}

// TenantQuota is what a tenant may use (docs/reference.md); zero fields
// mean no limit.
type TenantQuota struct {
	// Rate is the request-rate bucket's limit; the zero Limit: none.
	Rate          quota.Limit
	MaxConcurrent int
	EgressBytes   int64 // bytes a second, client to upstream
	IngressBytes  int64 // bytes a second, upstream to client
}

// QuotaBackend is gateway.yaml's quota section with defaults applied.
type QuotaBackend struct {
	Backend     string // memory or redis
	RedisAddr   string
	RedisPrefix string
	FailOpen    bool // on_error: allow
	Replicas    int  // bandwidth is divided by it: shaping stays per replica
	DialTimeout time.Duration
}

func (b *builder) quotaBackend(doc *yamlDoc, f quotaBackendFile) QuotaBackend {
	q := QuotaBackend{
		Backend:     orDefault(f.Backend, "memory"),
		RedisAddr:   orDefault(f.Redis.Addr, "127.0.0.1:6379"),
		RedisPrefix: orDefault(f.Redis.Prefix, "egressgw:"),
		Replicas:    intOr(f.Replicas, 1),
		DialTimeout: time.Second,
	}
	switch q.Backend {
	case "memory", "redis":
	default:
		b.errorf(doc, doc.line("quota", "backend"), "quota.backend: want memory or redis, got %q", q.Backend)
	}
	switch f.Redis.OnError {
	case "", "deny":
	case "allow":
		q.FailOpen = true
	default:
		b.errorf(doc, doc.line("quota", "redis", "on_error"), "on_error: want deny or allow, got %q", f.Redis.OnError)
	}
	if q.Replicas < 1 {
		b.errorf(doc, doc.line("quota", "replicas"), "replicas: must be 1 or more")
	}
	return q
}

// The bounds of a request rate: beyond them a limit means nothing a token
// bucket can hold (a token a year, more requests than a gateway serves)
// and arithmetic on it overflows.
const (
	minRequestsPerSecond = 0.001
	maxRequestsPerSecond = 1_000_000_000
	maxBurst             = 1_000_000_000
)

// rate validates a requests_per_second / burst pair; burst defaults to the
// rate rounded up, so one second's worth can arrive at once.
func (b *builder) rate(doc *yamlDoc, perSecond *float64, burst *int, path ...any) quota.Limit {
	if perSecond == nil {
		if burst != nil {
			b.errorf(doc, doc.line(append(path, "burst")...), "burst: set requests_per_second too")
		}
		return quota.Limit{}
	}
	if !(*perSecond >= minRequestsPerSecond && *perSecond <= maxRequestsPerSecond) { // NaN too
		b.errorf(doc, doc.line(append(path, "requests_per_second")...), "requests_per_second: %v is outside %g to %d",
			*perSecond, minRequestsPerSecond, maxRequestsPerSecond)
		return quota.Limit{}
	}
	r := quota.Limit{Rate: *perSecond, Burst: int(math.Ceil(*perSecond))}
	if burst != nil {
		if *burst < 1 || *burst > maxBurst {
			b.errorf(doc, doc.line(append(path, "burst")...), "burst: %d is outside 1 to %d", *burst, maxBurst)
			return quota.Limit{}
		}
		r.Burst = *burst
	}
	return r
}

// defaultMaxConcurrent is tenant_defaults.quota.max_concurrent when
// gateway.yaml does not set it: no tenant is unbounded unless its own file
// says so, so one tenant cannot hold every connection (docs/admins.md).
const defaultMaxConcurrent = 256

// tenantQuota validates a quota mapping at path (a tenant's "quota", or
// gateway.yaml's "tenant_defaults", "quota").
func (b *builder) tenantQuota(doc *yamlDoc, f *tenantQuotaFile, path ...any) TenantQuota {
	var q TenantQuota
	if f == nil {
		return q
	}
	at := func(steps ...any) []any { return append(append([]any{}, path...), steps...) }
	q.Rate = b.rate(doc, f.RequestsPerSecond, f.Burst, path...)
	if f.MaxConcurrent != nil {
		if *f.MaxConcurrent < 1 {
			b.errorf(doc, doc.line(at("max_concurrent")...), "max_concurrent: must be 1 or more")
		}
		q.MaxConcurrent = *f.MaxConcurrent
	}
	if bw := f.Bandwidth; bw != nil {
		q.EgressBytes = b.bandwidth(doc, bw.Egress, "egress", path)
		q.IngressBytes = b.bandwidth(doc, bw.Ingress, "ingress", path)
	}
	return q
}

// tenantDefaults validates tenant_defaults; its max_concurrent defaults
// to defaultMaxConcurrent.
func (b *builder) tenantDefaults(doc *yamlDoc, f tenantDefaultsFile) TenantQuota {
	q := b.tenantQuota(doc, f.Quota, "tenant_defaults", "quota")
	if f.Quota == nil || f.Quota.MaxConcurrent == nil {
		q.MaxConcurrent = defaultMaxConcurrent
	}
	return q
}

// withDefaults fills in, from d, each field that the tenant's quota file f
// does not set. The rate is one field: requests_per_second with its burst.
func (q TenantQuota) withDefaults(f *tenantQuotaFile, d TenantQuota) TenantQuota {
	if f == nil {
		f = &tenantQuotaFile{}
	}
	if f.RequestsPerSecond == nil {
		q.Rate = d.Rate
	}
	if f.MaxConcurrent == nil {
		q.MaxConcurrent = d.MaxConcurrent
	}
	var bw bandwidthFile
	if f.Bandwidth != nil {
		bw = *f.Bandwidth
	}
	if bw.Egress == nil {
		q.EgressBytes = d.EgressBytes
	}
	if bw.Ingress == nil {
		q.IngressBytes = d.IngressBytes
	}
	return q
}

func (b *builder) bandwidth(doc *yamlDoc, s *Size, direction string, path []any) int64 {
	if s == nil {
		return 0
	}
	if *s < 1024 {
		b.errorf(doc, doc.line(append(append([]any{}, path...), "bandwidth", direction)...), "bandwidth.%s: %d bytes a second is below the 1KiB minimum", direction, *s)
		return 0
	}
	return int64(*s)
}

// String describes a quota for explain and usage.
func (q TenantQuota) String() string {
	if q == (TenantQuota{}) {
		return "none configured"
	}
	s := ""
	if !q.Rate.Unlimited() {
		s += fmt.Sprintf("%g requests/s, burst %d; ", q.Rate.Rate, q.Rate.Burst)
	}
	if q.MaxConcurrent > 0 {
		s += fmt.Sprintf("%d concurrent; ", q.MaxConcurrent)
	}
	if q.EgressBytes > 0 {
		s += fmt.Sprintf("egress %d B/s; ", q.EgressBytes)
	}
	if q.IngressBytes > 0 {
		s += fmt.Sprintf("ingress %d B/s; ", q.IngressBytes)
	}
	return s[:len(s)-2]
}
