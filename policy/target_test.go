package policy

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestCheckPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"/", true},
		{"/v1/repos/acme/widgets", true},
		{"/file.tar.gz", true},
		{"/v1/..hidden/x", true},
		{"/a%20b/%41", true},
		{"/v1/.../x", true},
		{"/v1/../admin", false},
		{"/v1/./admin", false},
		{"/..", false},
		{"/v1/%2e%2e/admin", false},
		{"/v1/%2E%2E/admin", false},
		{"/v1/.%2e/admin", false},
		{"/v1/..%2fadmin", false},
		{"/v1/..%2Fadmin", false},
		{"/v1/..%5cadmin", false},
		{"/v1\\..\\admin", false},
		{"/v1/%2e/admin", false},
	} {
		err := CheckPath(tc.path)
		if (err == nil) != tc.ok {
			t.Errorf("CheckPath(%q) = %v, want ok %v", tc.path, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrBadTarget) {
			t.Errorf("CheckPath(%q) = %v, want ErrBadTarget", tc.path, err)
		}
	}
}

// FuzzCheckPath checks CheckPath against a decoder of its own: a path it
// lets through has no dot segment once percent-decoded, with either slash
// or backslash as the separator.
func FuzzCheckPath(f *testing.F) {
	for _, seed := range []string{"/", "/v1/../admin", "/a/%2e%2E/b", "/a\\.\\b", "/x..y/.z", "/%252e%252e/", "/%zz/.."} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, path string) {
		if CheckPath(path) != nil {
			return
		}
		decoded, err := url.PathUnescape(path)
		if err != nil {
			decoded = path // not valid escaping: an upstream sees it as written
		}
		for _, form := range []string{path, decoded} {
			for _, segment := range strings.FieldsFunc(form, func(r rune) bool { return r == '/' || r == '\\' }) {
				if segment == "." || segment == ".." {
					t.Fatalf("CheckPath(%q) let through a dot segment (%q)", path, form)
				}
			}
		}
	})
}
