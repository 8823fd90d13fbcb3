package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestSelfServiceDefaults(t *testing.T) {
	snap, err := loadGateway("# nothing set\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Gateway.SelfService; got != (SelfServiceSettings{Enabled: true, Host: "egressgw.internal"}) {
		t.Errorf("self_service = %+v, want enabled on egressgw.internal", got)
	}
}

func TestSelfServiceKeys(t *testing.T) {
	for _, c := range []struct {
		name, yaml string
		want       SelfServiceSettings
	}{
		{"renamed", "self_service: { host: Gateway.Sandbox.Example. }\n", SelfServiceSettings{Enabled: true, Host: "gateway.sandbox.example"}},
		{"off", "self_service: { enabled: false }\n", SelfServiceSettings{Enabled: false, Host: "egressgw.internal"}},
		{"single label", "self_service: { host: gateway }\n", SelfServiceSettings{Enabled: true, Host: "gateway"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			snap, err := loadGateway(c.yaml)
			if err != nil {
				t.Fatal(err)
			}
			if got := snap.Gateway.SelfService; got != c.want {
				t.Errorf("self_service = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestSelfServiceErrors(t *testing.T) {
	for _, c := range []struct {
		name, yaml string
		want       string
	}{
		{"unknown key", "self_service:\n  hostname: x.internal\n", `gateway.yaml:2: unknown key "hostname"`},
		{"ip literal", "self_service:\n  host: 10.0.0.1\n", `gateway.yaml:2: self_service.host: want a host name such as egressgw.internal, not an address or pattern`},
		{"wildcard", "self_service:\n  host: \"*.internal\"\n", `gateway.yaml:2: self_service.host: want a host name such as egressgw.internal, not an address or pattern`},
		{"not a host", "self_service:\n  host: \"a b\"\n", `gateway.yaml:2: self_service.host: want a host name such as egressgw.internal, not an address or pattern`},
		{"empty", "self_service:\n  host: \"\"\n", `gateway.yaml:2: self_service.host: want a host name such as egressgw.internal, not an address or pattern`},
		{"not a bool", "self_service:\n  enabled: sometimes\n", `gateway.yaml:2:`},
	} {
		t.Run(c.name, func(t *testing.T) {
			snap, err := loadGateway(c.yaml)
			var le *LoadError
			if snap != nil || !errors.As(err, &le) {
				t.Fatalf("loaded (%v); want %s", err, c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want it to contain %q", err, c.want)
			}
		})
	}
}
