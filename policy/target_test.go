package policy

import (
	"errors"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/egressgw/egressgw/allowlist"
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
		{"/a%20b/%C3%A9", true},
		{"/repos/group%2Fproject/x", true},
		{"/a;b=c/d", true},
		{"/v1/x/", true},
		{"/a%20b/%41", false},
		{"/%61dmin/users", false},
		{"/%7Euser", false},
		{"/%7e", false},
		{"/x%2D1", false},
		{"//admin/users", false},
		{"/v1//x", false},
		{"/%2Fadmin", false},
		{"/a%5C%5Cb", false},
		{"/public/..;/admin", false},
		{"/public/..;x=1/admin", false},
		{"/public/.;/admin", false},
		{"/public/%2e%2e;/admin", false},
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
		// Bytes that decode to no UTF-8.
		{"/%C0%AE%C0%AE/admin", false},
		{"/%c0%ae", false},
		{"/%E0%80%AE", false},
		{"/%ED%A0%80", false},
		{"/%E2%82", false},
		{"/%E2%82/x", false},
		{"/%E2%82%41", false},
		{"/%FF", false},
		{"/%80", false},
		{"/%F5%80%80%80", false},
		{"/\xc3", false},
		{"/\xc0\xae", false},
		{"/%E2%82%AC", true},
		{"/caf%C3%A9", true},
		{"/caf\xc3\xa9", true},
		{"/%EF%BD%81dmin", true}, // decodable; refused only where rules name paths
		// Control characters, raw spaces and what is not a path.
		{"/%00", false},
		{"/admin%00.json", false},
		{"/a%09b", false},
		{"/a%0Ab", false},
		{"/a%0d", false},
		{"/a%7F", false},
		{"/a\tb", false},
		{"/a b", false},
		{"/a\x00", false},
		{"/a?b=c", false},
		{"/a#b", false},
		{"/a%20b", true},
		{"/a%3Fb%23c", true},
		// A "%" that starts no escape.
		{"/%u002e%u002e/admin", false},
		{"/%zz", false},
		{"/%", false},
		{"/a%4", false},
		{"/a%4g", false},
		// Double encoding and trailing dots: refused only where rules name paths.
		{"/%252e%252e/admin", true},
		{"/admin.", true},
		{"/admin%20", true},
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
// lets through, once percent-decoded and with either slash or backslash as
// the separator, has no dot segment (also with path parameters stripped)
// and no empty segment, and decoding it changes no unreserved character.
func FuzzCheckPath(f *testing.F) {
	for _, seed := range []string{"/", "/v1/../admin", "/a/%2e%2E/b", "/a\\.\\b", "/x..y/.z", "/%252e%252e/", "/%zz/..", "/%61dmin", "//x", "/..;/x", "/a;b/c",
		"/%C0%AE%C0%AE/admin/", "/\uff41dmin/", "/%EF%BD%81dmin/", "/%ED%A0%80", "/%E2%82", "/admin%00/", "/admin%09/", "/%u002e%u002e/admin/",
		"/ADMIN/x", "/Admin%2F", "/admin%20/", "/admin./", "/admin.;x/", "/admin%3Bx/", "/%2541dmin/", "/admin%5C", "/admin\\x", "/x?a=b", "/\u212admin/"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, path string) {
		if CheckPath(path) != nil {
			return
		}
		decoded, err := url.PathUnescape(path)
		if err != nil {
			decoded = path // checked below: CheckPath must refuse it
		}
		for _, form := range []string{path, decoded} {
			segments := strings.FieldsFunc(form, func(r rune) bool { return r == '/' || r == '\\' })
			for _, segment := range segments {
				segment, _, _ = strings.Cut(segment, ";")
				if segment == "." || segment == ".." {
					t.Fatalf("CheckPath(%q) let through a dot segment (%q)", path, form)
				}
			}
			if strings.Contains(strings.ReplaceAll(form, "\\", "/"), "//") {
				t.Fatalf("CheckPath(%q) let through an empty segment (%q)", path, form)
			}
		}
		for _, escape := range percentEscape.FindAllString(path, -1) {
			if c, _ := url.PathUnescape(escape); strings.Trim(c, unreserved) == "" {
				t.Fatalf("CheckPath(%q) let through an encoded unreserved character (%s)", path, escape)
			}
		}
		if err != nil {
			t.Fatalf("CheckPath(%q) let through a path that does not percent-decode: %v", path, err)
		}
		if !utf8.ValidString(decoded) {
			t.Fatalf("CheckPath(%q) let through bytes that are not UTF-8 once decoded (%q)", path, decoded)
		}
		for _, r := range decoded {
			if r < ' ' || r == 0x7f {
				t.Fatalf("CheckPath(%q) let through a control character (%q)", path, decoded)
			}
		}
		if strings.ContainsAny(path, " ?#") {
			t.Fatalf("CheckPath(%q) let through a raw space, ? or #", path)
		}
		// Where a rule names paths, what remains must match as servers
		// read it: a deny of /admin/ catches every reading of the path
		// that starts with /admin/, or the path is refused as ambiguous.
		res := denyAdmin.Match(allowlist.Query{Host: "api.example.com", Port: 443, Method: "GET", Path: path})
		if res.Deny < 0 && !res.AmbiguousPath && serversRead(decoded, "/admin/") {
			t.Fatalf("CheckPath(%q) and the matcher let a reading of /admin/ past its deny (%q)", path, decoded)
		}
		if res.AmbiguousPath {
			return
		}
		if strings.ContainsRune(decoded, '\\') || strings.Count(decoded, "/") != strings.Count(path, "/") {
			t.Fatalf("a rule naming paths let %q through with a separator that is not a raw slash", path)
		}
		for _, r := range decoded {
			if r >= utf8.RuneSelf {
				t.Fatalf("a rule naming paths let %q through with a character outside ASCII", path)
			}
		}
		if percentEscape.MatchString(decoded) {
			t.Fatalf("a rule naming paths let %q through, which decoded twice reads otherwise", path)
		}
	})
}

var denyAdmin = allowlist.NewSet([]allowlist.Rule{
	{Action: allowlist.Deny, Hosts: []allowlist.Pattern{mustPattern("api.example.com")}, Paths: []string{"/admin/"}},
	{Hosts: []allowlist.Pattern{mustPattern("api.example.com")}},
})

func mustPattern(text string) allowlist.Pattern {
	p, err := allowlist.ParsePattern(text)
	if err != nil {
		panic(err)
	}
	return p
}

// serversRead reports whether a server that folds case, strips path
// parameters and trailing dots and spaces of segments, and reads "\\" as
// "/" could route decoded to a path under prefix. (Unicode folding is not
// modelled: the fuzz target asserts that no character outside ASCII gets
// past a rule naming paths at all.)
func serversRead(decoded, prefix string) bool {
	folded := strings.ToLower(strings.ReplaceAll(decoded, "\\", "/"))
	var segments []string
	for _, segment := range strings.Split(folded, "/") {
		segment, _, _ = strings.Cut(segment, ";")
		segments = append(segments, strings.TrimRight(segment, ". "))
	}
	return strings.HasPrefix(strings.Join(segments, "/"), prefix)
}

var percentEscape = regexp.MustCompile(`%[0-9A-Fa-f]{2}`)

const unreserved = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_~"

// Clean paths, the common case, are checked and matched without
// allocating, also where rules name paths.
func TestCleanPathsDoNotAllocate(t *testing.T) {
	for _, path := range []string{"/", "/v1/repos/acme/widgets", "/file.tar.gz", "/a%20b/c", "/ADMIN/x"} {
		if n := testing.AllocsPerRun(100, func() { _ = CheckPath(path) }); n != 0 {
			t.Errorf("CheckPath(%q) allocates %v times", path, n)
		}
		q := allowlist.Query{Host: "api.example.com", Port: 443, Method: "GET", Path: path}
		if n := testing.AllocsPerRun(100, func() { denyAdmin.Match(q) }); n != 0 && path != "/a%20b/c" {
			t.Errorf("Match(%q) allocates %v times", path, n)
		}
	}
}

func TestSchemePort(t *testing.T) {
	cases := []struct {
		scheme string
		port   uint16
		ok     bool
	}{
		{"http", 80, true},
		{"https", 443, true},
		{"HTTP", 0, false}, // url.Parse lowercases schemes; anything else is not a URL it made
		{"ftp", 0, false},
		{"", 0, false},
	}
	for _, c := range cases {
		if port, ok := SchemePort(c.scheme); port != c.port || ok != c.ok {
			t.Errorf("SchemePort(%q) = %d, %v; want %d, %v", c.scheme, port, ok, c.port, c.ok)
		}
	}
}
