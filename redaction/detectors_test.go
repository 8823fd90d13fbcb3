package redaction

import (
	"strings"
	"testing"
)

// redactText runs a profile with only the given detectors over a text body.
func redactTextWith(t *testing.T, in string, detectors ...string) (string, Report) {
	t.Helper()
	p, err := NewProfile(ProfileConfig{Name: "t", Detectors: detectors}, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, rep, err := p.Body("text/plain", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	return string(out), rep
}

type detectorCase struct {
	name string
	in   string
	want string // "" means the input comes back unchanged
}

func runDetectorCases(t *testing.T, detector string, cases []detectorCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := c.want
			if want == "" {
				want = c.in
			}
			got, rep := redactTextWith(t, c.in, detector)
			if got != want {
				t.Errorf("%s over %q\n got %q\nwant %q", detector, c.in, got, want)
			}
			wantCount := strings.Count(want, "[REDACTED:"+detector+"]")
			if rep.Total() != wantCount {
				t.Errorf("report %v, want %d findings", rep, wantCount)
			}
		})
	}
}

func TestDetectEmail(t *testing.T) {
	runDetectorCases(t, "email", []detectorCase{
		{"plain", "jane.doe@example.com", "[REDACTED:email]"},
		{"tags and subdomains", "write to a+tag@mail.example.co.uk now", "write to [REDACTED:email] now"},
		{"odd but valid local part", "x_y-z%1@Example.ORG", "[REDACTED:email]"},
		{"sentence end", "mail jane@example.com.", "mail [REDACTED:email]."},
		{"angle brackets", "Jane <jane@example.com>", "Jane <[REDACTED:email]>"},
		{"mailto", "mailto:jane@example.com", "mailto:[REDACTED:email]"},
		{"two", "a@example.com,b@example.org", "[REDACTED:email],[REDACTED:email]"},
		{"in a URL path", "https://x.test/u/jane@example.com/", "https://x.test/u/[REDACTED:email]/"},
		{"no dot in domain", "root@localhost", ""},
		{"numeric tld (package version)", "npm i left-pad@1.3.0", ""},
		{"one-letter tld", "jane@example.c", ""},
		{"label starts with hyphen", "jane@-example.com", ""},
		{"nothing before @", "@example.com", ""},
		{"decorator", "@media screen", ""},
		{"underscore after domain", "jane@example.com_suffix", ""},
		{"empty label", "jane@.example.com", ""},
	})
}

func TestDetectCreditCard(t *testing.T) {
	runDetectorCases(t, "credit_card", []detectorCase{
		{"visa", "4111111111111111", "[REDACTED:credit_card]"},
		{"visa spaces", "card 4111 1111 1111 1111 ok", "card [REDACTED:credit_card] ok"},
		{"visa dashes", "4111-1111-1111-1111", "[REDACTED:credit_card]"},
		{"visa 13", "4222222222222", "[REDACTED:credit_card]"},
		{"mastercard", "5555555555554444", "[REDACTED:credit_card]"},
		{"mastercard 2-series", "2223003122003222", "[REDACTED:credit_card]"},
		{"amex", "378282246310005", "[REDACTED:credit_card]"},
		{"amex printed", "3782 822463 10005", "[REDACTED:credit_card]"},
		{"discover", "6011111111111117", "[REDACTED:credit_card]"},
		{"jcb", "3530111333300000", "[REDACTED:credit_card]"},
		{"diners 14", "30569309025904", "[REDACTED:credit_card]"},
		{"unionpay", "6200000000000005", "[REDACTED:credit_card]"},
		{"maestro", "6759649826438453", "[REDACTED:credit_card]"},
		{"followed by expiry", "4111 1111 1111 1111 12/29", "[REDACTED:credit_card] 12/29"},
		{"followed by another group", "4111 1111 1111 1111 2025", "[REDACTED:credit_card] 2025"},
		{"after a short number", "ref 12 4111 1111 1111 1111", "ref 12 [REDACTED:credit_card]"},
		{"sentence end", "paid with 4111111111111111.", "paid with [REDACTED:credit_card]."},
		{"fails luhn", "4111111111111112", ""},
		{"fails luhn printed", "4111 1111 1111 1112", ""},
		{"luhn valid, no issuer", "1234567812345670", ""},
		{"snowflake id", "1234567890123456789", ""},
		{"visa with wrong length", "411111111111111", ""},
		{"mixed separators", "4111-1111 1111-1111", ""},
		{"dots", "4111.1111.1111.1111", ""},
		{"glued to letters before", "x4111111111111111", ""},
		{"glued to letters after", "4111111111111111x", ""},
		{"too long", "41111111111111111111", ""},
		{"two-digit groups", "41 11 11 11 11 11 11 11", ""},
	})
}

func TestDetectUSSSN(t *testing.T) {
	runDetectorCases(t, "us_ssn", []detectorCase{
		{"dashes", "123-45-6789", "[REDACTED:us_ssn]"},
		{"spaces", "ssn 123 45 6789.", "ssn [REDACTED:us_ssn]."},
		{"in text", "SSN: 078-05-1121, thanks", "SSN: [REDACTED:us_ssn], thanks"},
		{"area 000", "000-12-3456", ""},
		{"area 666", "666-12-3456", ""},
		{"area 9xx", "900-12-3456", ""},
		{"group 00", "123-00-4567", ""},
		{"serial 0000", "123-45-0000", ""},
		{"advertised sample", "078-05-1120", ""},
		{"bare nine digits", "123456789", ""},
		{"long serial", "123-45-67890", ""},
		{"long area", "1123-45-6789", ""},
		{"part of a longer number", "123-45-6789-1", ""},
		{"after a longer number", "9-123-45-6789", ""},
		{"mixed separators", "123-45 6789", ""},
		{"date", "2024-01-15", ""},
	})
}

func TestDetectPhone(t *testing.T) {
	runDetectorCases(t, "phone", []detectorCase{
		{"E.164", "+14155552671", "[REDACTED:phone]"},
		{"international spaced", "call +1 415 555 2671 now", "call [REDACTED:phone] now"},
		{"UK", "+44 20 7946 0958", "[REDACTED:phone]"},
		{"UK trunk prefix", "+44 (0)20 7946 0958", "[REDACTED:phone]"},
		{"dashes", "+49-30-1234567", "[REDACTED:phone]"},
		{"NANP parentheses", "(415) 555-2671", "[REDACTED:phone]"},
		{"NANP parentheses no space", "tel:(415)555-2671", "tel:[REDACTED:phone]"},
		{"NANP dashes", "415-555-2671", "[REDACTED:phone]"},
		{"NANP dots", "415.555.2671", "[REDACTED:phone]"},
		{"NANP spaces", "415 555 2671", "[REDACTED:phone]"},
		{"NANP with 1", "1-800-555-0199", "[REDACTED:phone]"},
		{"NANP with 1 and parentheses", "1 (800) 555-0199", "[REDACTED:phone]"},
		{"bare ten digits", "4155552671", ""},
		{"unix timestamp", "1700000000", ""},
		{"country code 0", "+0123456789", ""},
		{"too few digits", "+1234567", ""},
		{"too many digits", "+1234567890123456", ""},
		{"area code starting with 1", "123-456-7890", ""},
		{"exchange starting with 0", "415-055-2671", ""},
		{"date", "2024-01-15", ""},
		{"IP address", "192.168.100.1", ""},
		{"version", "v1.22.333.4444", ""},
		{"longer number", "415-555-26711", ""},
		{"continued number", "415-555-2671-99", ""},
		{"timezone offset", "10:00:00+05:30", ""},
		{"plus after word", "c+14155552671", ""},
	})
}

func TestDetectIBAN(t *testing.T) {
	runDetectorCases(t, "iban", []detectorCase{
		{"germany", "DE89370400440532013000", "[REDACTED:iban]"},
		{"germany printed", "IBAN DE89 3704 0044 0532 0130 00.", "IBAN [REDACTED:iban]."},
		{"uk letters in BBAN", "GB82WEST12345698765432", "[REDACTED:iban]"},
		{"uk printed", "GB82 WEST 1234 5698 7654 32", "[REDACTED:iban]"},
		{"france", "FR1420041010050500013M02606", "[REDACTED:iban]"},
		{"norway shortest", "NO9386011117947", "[REDACTED:iban]"},
		{"bad checksum", "DE89370400440532013001", ""},
		{"unknown country", "XX89370400440532013000", ""},
		{"too short", "DE8937040044053201300", ""},
		{"too long", "DE893704004405320130001", ""},
		{"lower case", "de89370400440532013000", ""},
		{"glued to a word", "ADE89370400440532013000", ""},
	})
}

func TestDetectAWSAccessKey(t *testing.T) {
	runDetectorCases(t, "aws_access_key", []detectorCase{
		{"long-term", "AKIAIOSFODNN7EXAMPLE", "[REDACTED:aws_access_key]"},
		{"temporary", "id=ASIAY34FZKBOKMUTVV7A;", "id=[REDACTED:aws_access_key];"},
		{"too short", "AKIAIOSFODNN7EXAMPL", ""},
		{"too long", "AKIAIOSFODNN7EXAMPLEX", ""},
		{"glued", "xAKIAIOSFODNN7EXAMPLE", ""},
		{"lower case", "AKIAiosfodnn7example", ""},
		{"user id, not a key", "AIDAIOSFODNN7EXAMPLE", ""},
	})
}

func TestDetectGitHubToken(t *testing.T) {
	const body36 = "0123456789abcdefghijABCDEFGHIJ012345"
	runDetectorCases(t, "github_token", []detectorCase{
		{"classic", "token ghp_" + body36, "token [REDACTED:github_token]"},
		{"oauth", "gho_" + body36, "[REDACTED:github_token]"},
		{"server to server", `"ghs_` + body36 + `"`, `"[REDACTED:github_token]"`},
		{"fine-grained", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456", "[REDACTED:github_token]"},
		{"too short", "ghp_0123456789", ""},
		{"unknown kind", "ghx_" + body36, ""},
		{"glued", "xghp_" + body36, ""},
		{"fine-grained too short", "github_pat_short", ""},
	})
}

func TestDetectJWT(t *testing.T) {
	const signed = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
	runDetectorCases(t, "jwt", []detectorCase{
		{"signed", "token=" + signed + "&x=1", "token=[REDACTED:jwt]&x=1"},
		{"unsigned", "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "[REDACTED:jwt]"},
		{"encrypted", "eyJhbGciOiJSUzI1NiIsImVuYyI6IkEyNTZHQ00ifQ.a.b.c.d", "[REDACTED:jwt]"},
		{"header without alg", "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.sig", ""},
		{"header not JSON", "eyJhbGciOjE.eyJzdWIiOiIxIn0.sig", ""},
		{"one part", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", ""},
		{"empty payload", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9..sig", ""},
		{"not base64", "eyJ!.a.b", ""},
		{"inside a base64url run", "x-eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", ""},
	})
}

func TestDetectPrivateKey(t *testing.T) {
	const rsa = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n-----END RSA PRIVATE KEY-----"
	runDetectorCases(t, "private_key", []detectorCase{
		{"rsa", "key:\n" + rsa + "\nend", "key:\n[REDACTED:private_key]\nend"},
		{"openssh", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n", "[REDACTED:private_key]\n"},
		{"pkcs8 escaped in text", `{"key":"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----"}`, `{"key":"[REDACTED:private_key]"}`},
		{"pgp", "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----", "[REDACTED:private_key]"},
		{"truncated key", "x -----BEGIN EC PRIVATE KEY-----\nMHcCAQEE", "x [REDACTED:private_key]"},
		{"certificate", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", ""},
		{"public key", "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----", ""},
		{"markdown rule", "-----\n-----BEGIN", ""},
	})
}

func TestDetectBearerToken(t *testing.T) {
	runDetectorCases(t, "bearer_token", []detectorCase{
		{"header value", "Bearer abc123def456ghi789", "Bearer [REDACTED:bearer_token]"},
		{"in a log line", `auth="bearer 0123456789abcdef==" ok`, `auth="bearer [REDACTED:bearer_token]" ok`},
		{"upper case", "BEARER mF_9.B5f-4.1JqM", "BEARER [REDACTED:bearer_token]"},
		{"prose", "bearer authentication is simple", ""},
		{"short", "Bearer abc1", ""},
		{"no token", "Bearer", ""},
		{"glued scheme", "XBearer abc123def456ghi789", ""},
	})
}

func TestDetectCustomPattern(t *testing.T) {
	p, err := NewProfile(ProfileConfig{Name: "t", Patterns: []Pattern{{Name: "order_id", Regex: `ord_[0-9]{6}`}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, rep, err := p.Body("text/plain", []byte("orders ord_123456 and ord_12345"))
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "orders [REDACTED:order_id] and ord_12345" || rep.Total() != 1 {
		t.Errorf("got %q %v", out, rep)
	}
}

// Overlapping matches are merged so that no part of either survives, and
// a replacement that changes a neighbour's context is followed by a rescan.
func TestOverlapsAndRescan(t *testing.T) {
	all := DetectorNames()
	for _, c := range []struct{ name, in, want string }{
		{"phone inside an address", "john+415-555-2671@example.com", "[REDACTED:email]"},
		{"card then ssn", "4111111111111111-123-45-6789", "[REDACTED:credit_card]-[REDACTED:us_ssn]"},
		{"bearer jwt", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "Bearer [REDACTED:bearer_token]"},
		{"marker is not redacted again", "[REDACTED:email] and hmac:4111111111111111", "[REDACTED:email] and hmac:4111111111111111"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, _ := redactTextWith(t, c.in, all...)
			if got != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}
