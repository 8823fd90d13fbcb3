package redaction

import (
	"errors"
	"testing"
)

func TestChainOpaque(t *testing.T) {
	pass := mustProfile(t, ProfileConfig{Name: "lenient", Detectors: []string{"email"}, OnUnsupportedBody: "pass"})
	block := mustProfile(t, ProfileConfig{Name: "strict", Detectors: []string{"email"}})
	headersOnly := mustProfile(t, ProfileConfig{Name: "headers", Headers: []string{"X-Contact"}})
	cases := []struct {
		name        string
		chain       Chain
		wantProfile string // "" for no error
	}{
		{"no profiles", nil, ""},
		{"every profile passes what it cannot parse", Chain{pass}, ""},
		{"a profile without body rules reads no body", Chain{headersOnly}, ""},
		{"one blocking profile refuses", Chain{pass, block}, "strict"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.chain.Opaque("application/grpc+proto")
			var unsupported *UnsupportedBodyError
			switch {
			case c.wantProfile == "" && err != nil:
				t.Fatalf("error %v, want none", err)
			case c.wantProfile != "" && !errors.As(err, &unsupported):
				t.Fatalf("error %v, want an *UnsupportedBodyError", err)
			case c.wantProfile != "" && (unsupported.Profile != c.wantProfile || unsupported.MediaType != "application/grpc+proto"):
				t.Errorf("profile %q, media type %q; want %q, application/grpc+proto", unsupported.Profile, unsupported.MediaType, c.wantProfile)
			}
		})
	}
}
