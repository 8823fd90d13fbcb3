package policy

import (
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// The types in this file mirror the YAML files of a config directory
// (docs/reference.md) key for key. They are decoded strictly and then validated and
// compiled into a Snapshot; nothing outside this package sees them.

type gatewayFile struct {
	Listen      string                      `yaml:"listen"`
	AdminListen string                      `yaml:"admin_listen"`
	Network     networkFile                 `yaml:"network"`
	Limits      limitsFile                  `yaml:"limits"`
	TLS         tlsFile                     `yaml:"tls"`
	Quota       quotaBackendFile            `yaml:"quota"`
	Hooks       hooksFile                   `yaml:"hooks"`
	Secrets     map[string]secretSourceFile `yaml:"secrets"`
	Redaction   redactionFile               `yaml:"redaction"`
	Audit       auditFile                   `yaml:"audit"`
	Metrics     metricsFile                 `yaml:"metrics"`
	// TenantDefaults apply to every tenant, field by field, where its own
	// file is silent.
	TenantDefaults tenantDefaultsFile `yaml:"tenant_defaults"`
	Config         configSectionFile  `yaml:"config"`
	Admin          adminFile          `yaml:"admin"`
	State          stateFile          `yaml:"state"`
	Access         accessFile         `yaml:"access"`
	SelfService    selfServiceFile    `yaml:"self_service"`
	Budgets        budgetsFile        `yaml:"budgets"`
}

// budgetsFile is gateway.yaml's budgets section (docs/reference.md,
// "Budgets and cost").
type budgetsFile struct {
	Currency string `yaml:"currency"`
}

// adminFile lists who may use the admin API (docs/admins.md, "Admin
// tokens").
type adminFile struct {
	Tokens []adminTokenFile `yaml:"tokens"`
}

type adminTokenFile struct {
	Name        string   `yaml:"name"`
	TokenSHA256 string   `yaml:"token_sha256"`
	Role        string   `yaml:"role"`
	Tenants     []string `yaml:"tenants"`
}

// stateFile says where access requests and grants are kept.
type stateFile struct {
	Backend string `yaml:"backend"`
	Dir     string `yaml:"dir"`
}

// accessFile bounds access requests and grants.
type accessFile struct {
	MaxPending       *int      `yaml:"max_pending"`
	MaxGrantDuration *Duration `yaml:"max_grant_duration"`
}

// selfServiceFile names the host through which a sandbox asks the
// gateway about itself (docs/sandbox-runtimes.md, "Asking the gateway").
type selfServiceFile struct {
	Enabled *bool   `yaml:"enabled"`
	Host    *string `yaml:"host"`
}

type tenantDefaultsFile struct {
	Quota *tenantQuotaFile `yaml:"quota"`
}

// configSectionFile bounds the reading of the config directory itself.
type configSectionFile struct {
	MaxFileBytes *Size    `yaml:"max_file_bytes"`
	AllowPaths   []string `yaml:"allow_paths"`
}

// reset sets the given top-level sections (by YAML key) back to their
// zero value, which means their defaults; "" stands for every section.
func (g *gatewayFile) reset(sections map[string]bool) {
	if sections[""] {
		*g = gatewayFile{}
		return
	}
	v := reflect.ValueOf(g).Elem()
	for i := range v.NumField() {
		key, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
		if sections[key] {
			v.Field(i).SetZero()
		}
	}
}

type networkFile struct {
	DenyCIDRs             []string  `yaml:"deny_cidrs"`
	AllowCIDRs            []string  `yaml:"allow_cidrs"`
	DNSServers            []string  `yaml:"dns_servers"`
	DNSTimeout            *Duration `yaml:"dns_timeout"`
	DialTimeout           *Duration `yaml:"dial_timeout"`
	ResponseHeaderTimeout *Duration `yaml:"response_header_timeout"`
}

type limitsFile struct {
	MaxHeaderBytes       *Size     `yaml:"max_header_bytes"`
	IdleTimeout          *Duration `yaml:"idle_timeout"`
	MaxConnections       *int      `yaml:"max_connections"`
	ShutdownGrace        *Duration `yaml:"shutdown_grace"`
	RequestBodyTimeout   *Duration `yaml:"request_body_timeout"`
	ResponseWriteTimeout *Duration `yaml:"response_write_timeout"`
	MaxUnauthenticated   *int      `yaml:"max_unauthenticated"`
}

type tlsFile struct {
	CACert        string   `yaml:"ca_cert"`
	CAKey         string   `yaml:"ca_key"`
	UpstreamRoots []string `yaml:"upstream_roots"`
}

type quotaBackendFile struct {
	Backend  string    `yaml:"backend"`
	Redis    redisFile `yaml:"redis"`
	Replicas *int      `yaml:"replicas"`
}

type redisFile struct {
	Addr    string `yaml:"addr"`
	Prefix  string `yaml:"prefix"`
	OnError string `yaml:"on_error"`
}

type hooksFile struct {
	Defaults      hookLimitsFile `yaml:"defaults"`
	MaxConcurrent *int           `yaml:"max_concurrent"`
}

type hookLimitsFile struct {
	MaxAllocs    *int64    `yaml:"max_allocs"`
	MaxMemory    *Size     `yaml:"max_memory"`
	Timeout      *Duration `yaml:"timeout"`
	MaxBodyBytes *Size     `yaml:"max_body_bytes"`
}

type secretSourceFile struct {
	Env  string `yaml:"env"`
	File string `yaml:"file"`
}

type redactionFile struct {
	HMACKey       *secretSourceFile               `yaml:"hmac_key"`
	MaxBodyBytes  *Size                           `yaml:"max_body_bytes"`
	MaxEventBytes *Size                           `yaml:"max_event_bytes"`
	Profiles      map[string]redactionProfileFile `yaml:"profiles"`
}

type redactionProfileFile struct {
	Detectors         []string               `yaml:"detectors"`
	Patterns          []redactionPatternFile `yaml:"patterns"`
	JSONFields        []string               `yaml:"json_fields"`
	Headers           []string               `yaml:"headers"`
	QueryParams       []string               `yaml:"query_params"`
	Action            string                 `yaml:"action"`
	OnUnsupportedBody string                 `yaml:"on_unsupported_body"`
}

type redactionPatternFile struct {
	Name  string `yaml:"name"`
	Regex string `yaml:"regex"`
}

type auditFile struct {
	Output string `yaml:"output"`
}

type metricsFile struct {
	MaxTenantLabels *int `yaml:"max_tenant_labels"`
}

type tenantFile struct {
	ID         string           `yaml:"id"`
	Auth       tenantAuthFile   `yaml:"auth"`
	Mode       string           `yaml:"mode"`
	Quota      *tenantQuotaFile `yaml:"quota"`
	Connectors []string         `yaml:"connectors"`
	Rules      []ruleFile       `yaml:"rules"`
	Budgets    []budgetFile     `yaml:"budgets"`
}

// budgetFile is one of a tenant's budgets: totals over a UTC calendar
// period (docs/reference.md, "Budgets and cost").
type budgetFile struct {
	Name       string   `yaml:"name"`
	Period     string   `yaml:"period"`
	Requests   *int64   `yaml:"requests"`
	Egress     *Size    `yaml:"egress"`
	Ingress    *Size    `yaml:"ingress"`
	Cost       *float64 `yaml:"cost"`
	Connectors []string `yaml:"connectors"`
	WarnAt     *float64 `yaml:"warn_at"`
}

type tenantAuthFile struct {
	TokenSHA256 string   `yaml:"token_sha256"`
	SourceCIDRs []string `yaml:"source_cidrs"`
}

type tenantQuotaFile struct {
	RequestsPerSecond *float64       `yaml:"requests_per_second"`
	Burst             *int           `yaml:"burst"`
	MaxConcurrent     *int           `yaml:"max_concurrent"`
	Bandwidth         *bandwidthFile `yaml:"bandwidth"`
}

type bandwidthFile struct {
	Egress  *Size `yaml:"egress"`
	Ingress *Size `yaml:"ingress"`
}

type ruleFile struct {
	Name    string   `yaml:"name"`
	Action  string   `yaml:"action"`
	Hosts   []string `yaml:"hosts"`
	Ports   []int    `yaml:"ports"`
	Methods []string `yaml:"methods"`
	Paths   []string `yaml:"paths"`
	Upgrade bool     `yaml:"upgrade"`
}

type connectorFile struct {
	Name    string      `yaml:"name"`
	Version *int        `yaml:"version"`
	Hosts   []string    `yaml:"hosts"`
	Ports   []int       `yaml:"ports"`
	Methods []string    `yaml:"methods"`
	Paths   []string    `yaml:"paths"`
	Inspect bool        `yaml:"inspect"`
	Upgrade bool        `yaml:"upgrade"`
	Inject  *injectFile `yaml:"inject"`
	// RequestIDHeader: nil (unset) means DefaultRequestIDHeader, "" none.
	RequestIDHeader *string             `yaml:"request_id_header"`
	Hooks           *connectorHooksFile `yaml:"hooks"`
	Redact          *redactRefsFile     `yaml:"redact"`
	Quota           *connectorQuotaFile `yaml:"quota"`
	Price           *priceFile          `yaml:"price"`
}

// priceFile is what a connector's traffic costs, in budgets.currency.
type priceFile struct {
	PerRequest    *float64 `yaml:"per_request"`
	PerGiBEgress  *float64 `yaml:"per_gib_egress"`
	PerGiBIngress *float64 `yaml:"per_gib_ingress"`
}

type injectFile struct {
	Headers        map[string]string `yaml:"headers"`
	AllowPlaintext bool              `yaml:"allow_plaintext"`
}

type connectorHooksFile struct {
	Request          string `yaml:"request"`
	Response         string `yaml:"response"`
	ResponsePerEvent bool   `yaml:"response_per_event"`
	hookLimitsFile   `yaml:",inline"`
}

type redactRefsFile struct {
	Request  []string `yaml:"request"`
	Response []string `yaml:"response"`
}

type connectorQuotaFile struct {
	RequestsPerSecond *float64 `yaml:"requests_per_second"`
	Burst             *int     `yaml:"burst"`
}

// DefaultRequestIDHeader is the header that carries the gateway's request
// id to upstreams, for requests that no connector allows and connectors
// that do not set request_id_header (docs/reference.md).
const DefaultRequestIDHeader = "X-Request-Id"

// requestIDHeader validates a connector's request_id_header and returns
// the canonical header name, "" for none. A key written with no value is
// refused rather than read as either: "" turns the header off, and an
// admin who meant that should say so.
func (b *builder) requestIDHeader(doc *yamlDoc, cf connectorFile) string {
	line := doc.line("request_id_header")
	if cf.RequestIDHeader == nil {
		if doc.root != nil && child(doc.root, "request_id_header") != nil {
			b.errorf(doc, line, `request_id_header: write "" to send no request id, or a header name`)
		}
		return DefaultRequestIDHeader
	}
	name := *cf.RequestIDHeader
	if name == "" {
		return ""
	}
	canonical := http.CanonicalHeaderKey(name)
	if !headerName.MatchString(name) || isHopOrFraming(canonical) {
		b.errorf(doc, line, "request_id_header %q: not a header a connector may set", name)
		return ""
	}
	if cf.Inject != nil {
		for injected := range cf.Inject.Headers {
			if http.CanonicalHeaderKey(injected) == canonical {
				// One would overwrite the other: a credential replaced by
				// an id, or an id by a credential.
				b.errorf(doc, line, "request_id_header %q: the connector injects that header (inject.headers)", name)
				return ""
			}
		}
	}
	return canonical
}

// Size is a byte count written as a plain number or with a unit:
// B, KiB, MiB, GiB (powers of 1024) or KB, MB, GB (powers of 1000).
type Size int64

var sizeUnits = []struct {
	suffix string
	factor int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseSize parses a size such as "64KiB", "1MiB" or "4096".
func ParseSize(s string) (Size, error) {
	text := strings.TrimSpace(s)
	factor := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(text, u.suffix) {
			text, factor = strings.TrimSpace(strings.TrimSuffix(text, u.suffix)), u.factor
			break
		}
	}
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: want a whole number of bytes with an optional unit (B, KiB, MiB, GiB)", s)
	}
	if n > (1<<62)/factor {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return Size(n * factor), nil
}

// UnmarshalYAML decodes a size, reporting errors with the value's line.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineError(n, "want a size such as 64KiB")
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		// The value is not quoted: the file it is in did not decode, and
		// may not be config at all (docs/admins.md).
		msg := "invalid size: want a whole number of bytes with an optional unit (B, KiB, MiB, GiB)"
		if strings.HasSuffix(err.Error(), "too large") {
			msg = "invalid size: too large"
		}
		return lineError(n, msg)
	}
	*s = v
	return nil
}

// Duration is a Go duration string such as "250ms" or "2s".
type Duration time.Duration

// UnmarshalYAML decodes a duration, reporting errors with the value's line.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineError(n, "want a duration such as 2s")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return lineError(n, "invalid duration: want e.g. 250ms, 2s, 1m")
	}
	*d = Duration(v)
	return nil
}

// lineError reports a decoding error the way yaml.v3 reports its own, so
// that one parser turns them all into file:line errors.
func lineError(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, msg)}}
}
