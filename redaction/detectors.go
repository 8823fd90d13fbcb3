package redaction

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
)

// detector is one built-in detector (docs/connector-authors.md, "Redaction").
type detector uint8

const (
	detEmail detector = iota
	detCreditCard
	detUSSSN
	detPhone
	detIBAN
	detAWSAccessKey
	detGitHubToken
	detJWT
	detPrivateKey
	detBearerToken
	numDetectors
)

// String is the detector's name in configs, masks and metrics.
func (d detector) String() string {
	switch d {
	case detEmail:
		return "email"
	case detCreditCard:
		return "credit_card"
	case detUSSSN:
		return "us_ssn"
	case detPhone:
		return "phone"
	case detIBAN:
		return "iban"
	case detAWSAccessKey:
		return "aws_access_key"
	case detGitHubToken:
		return "github_token"
	case detJWT:
		return "jwt"
	case detPrivateKey:
		return "private_key"
	case detBearerToken:
		return "bearer_token"
	}
	return "unknown"
}

// DetectorNames lists the built-in detectors a profile may name, in the
// order docs/connector-authors.md, "Redaction" lists them.
func DetectorNames() []string {
	names := make([]string, numDetectors)
	for d := range numDetectors {
		names[d] = d.String()
	}
	return names
}

func parseDetector(name string) (detector, bool) {
	for d := range numDetectors {
		if d.String() == name {
			return d, true
		}
	}
	return 0, false
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }
func isLower(c byte) bool { return c >= 'a' && c <= 'z' }
func isAlnum(c byte) bool { return isDigit(c) || isUpper(c) || isLower(c) }

// isWord reports whether c continues an identifier. Detectors only match
// values that stand on their own: "x4111111111111111" is an identifier that
// happens to end in digits, not a card number.
func isWord(c byte) bool { return isAlnum(c) || c == '_' }

func isBase64URL(c byte) bool { return isAlnum(c) || c == '-' || c == '_' }

// isToken68 reports whether c may appear in an RFC 9110 token68, the
// credential syntax of the Bearer scheme.
func isToken68(c byte) bool {
	return isAlnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/'
}

func wordEnd(s []byte, i int) int {
	for i < len(s) && isWord(s[i]) {
		i++
	}
	return i
}

func digitsEnd(s []byte, i int) int {
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return i
}

// wordBefore reports whether the byte before s[i] continues a word.
func wordBefore(s []byte, i int) bool { return i > 0 && isWord(s[i-1]) }

// wordAt reports whether s[i] exists and continues a word.
func wordAt(s []byte, i int) bool { return i < len(s) && isWord(s[i]) }

// Email addresses: an RFC 5321 dot-atom local part of common characters
// (letters, digits, . _ % + -), '@', and a DNS name of at least two labels
// whose last label is alphabetic. Quoted local parts and internationalised
// addresses are not detected.
const (
	maxEmailLocal  = 64
	maxEmailDomain = 253
)

func isEmailLocal(c byte) bool {
	return isAlnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-'
}

func isDomainByte(c byte) bool { return isAlnum(c) || c == '.' || c == '-' }

// emailAt finds an address around the '@' at s[at].
func emailAt(s []byte, at int) (start, end int, ok bool) {
	start = at
	for start > 0 && at-start < maxEmailLocal && isEmailLocal(s[start-1]) {
		start--
	}
	for start < at && s[start] == '.' {
		start++
	}
	if start == at {
		return 0, 0, false
	}
	d := at + 1
	end = d
	for end < len(s) && isDomainByte(s[end]) {
		if end-d > maxEmailDomain {
			return 0, 0, false
		}
		end++
	}
	// A sentence may end right after the address: "write to a@b.com."
	for end > d && (s[end-1] == '.' || s[end-1] == '-') {
		end--
	}
	if k := bytes.Index(s[d:end], []byte("..")); k >= 0 {
		end = d + k
	}
	if end == d || wordAt(s, end) {
		return 0, 0, false
	}
	labels, tld := 0, s[d:end]
	for label := range bytes.SplitSeq(s[d:end], []byte(".")) {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return 0, 0, false
		}
		labels++
		tld = label
	}
	if labels < 2 || len(tld) < 2 {
		return 0, 0, false
	}
	for _, c := range tld {
		if !isUpper(c) && !isLower(c) {
			return 0, 0, false
		}
	}
	return start, end, true
}

// Card numbers: 13 to 19 digits, written as one run or as groups of 3 to 6
// digits after a first group of 4 (the printed forms of every major
// network), separated by single spaces or by single dashes. The number must
// pass the Luhn check and start with an issuer prefix of a major network at
// a length that network uses; that keeps order numbers, timestamps and
// snowflake IDs out.
const maxCardGroups = 8

func cardAt(s []byte, i int) (end int, ok bool) {
	var groups [maxCardGroups]span
	n, sep, j := 0, byte(0), i
	for n < maxCardGroups {
		k := digitsEnd(s, j)
		groups[n] = span{j, k}
		n++
		if k+1 < len(s) && (s[k] == ' ' || s[k] == '-') && (sep == 0 || s[k] == sep) && isDigit(s[k+1]) {
			sep, j = s[k], k+1
			continue
		}
		break
	}
	// Try the longest run of groups first: a 19-digit number must not be
	// read as the 16-digit number it starts with.
	var digits [19]byte
	for last := n - 1; last >= 0; last-- {
		if last == n-1 && wordAt(s, groups[last].end) {
			continue
		}
		total := 0
		valid := true
		for g := 0; g <= last; g++ {
			size := groups[g].end - groups[g].start
			total += size
			if last > 0 && (size < 3 || size > 6 || (g == 0 && size != 4)) {
				valid = false
			}
		}
		if !valid || total < 13 || total > 19 {
			continue
		}
		d := digits[:0]
		for g := 0; g <= last; g++ {
			d = append(d, s[groups[g].start:groups[g].end]...)
		}
		if luhnValid(d) && issuerKnown(d) {
			return groups[last].end, true
		}
	}
	return 0, false
}

func luhnValid(d []byte) bool {
	sum, double := 0, false
	for k := len(d) - 1; k >= 0; k-- {
		v := int(d[k] - '0')
		if double {
			v *= 2
			if v > 9 {
				v -= 9
			}
		}
		sum += v
		double = !double
	}
	return sum%10 == 0
}

// issuerKnown reports whether d starts like a card of Visa, Mastercard,
// American Express, Discover, JCB, Diners Club, UnionPay, Maestro or Mir
// and has a length that network issues.
func issuerKnown(d []byte) bool {
	n := len(d)
	prefix := func(k int) int {
		v := 0
		for _, c := range d[:k] {
			v = v*10 + int(c-'0')
		}
		return v
	}
	p2, p3, p4 := prefix(2), prefix(3), prefix(4)
	switch d[0] {
	case '2':
		switch {
		case p4 >= 2221 && p4 <= 2720:
			return n == 16
		case p4 >= 2200 && p4 <= 2204:
			return n >= 16 && n <= 19
		}
	case '3':
		switch {
		case p2 == 34 || p2 == 37:
			return n == 15
		case p4 >= 3528 && p4 <= 3589:
			return n >= 16 && n <= 19
		case (p3 >= 300 && p3 <= 305) || p2 == 36 || p2 == 38 || p2 == 39:
			return n >= 14 && n <= 19
		}
	case '4':
		return n == 13 || n == 16 || n == 19
	case '5':
		switch {
		case p2 >= 51 && p2 <= 55:
			return n == 16
		case p2 == 50 || (p2 >= 56 && p2 <= 58):
			return n >= 13 && n <= 19
		}
	case '6':
		return n >= 16 && n <= 19
	}
	return false
}

// US social security numbers: AAA-GG-SSSS or AAA GG SSSS, with the areas
// the SSA never assigns (000, 666, 900-999), group 00 and serial 0000
// excluded, and the two numbers printed in SSA samples and on a wallet
// insert. Nine bare digits are not detected: too many other identifiers
// look like that; name the field in json_fields instead.
func ssnAt(s []byte, i int) (end int, ok bool) {
	if i+11 > len(s) {
		return 0, false
	}
	sep := s[i+3]
	if (sep != '-' && sep != ' ') || s[i+6] != sep {
		return 0, false
	}
	if digitsEnd(s, i) != i+3 || digitsEnd(s, i+4) != i+6 || digitsEnd(s, i+7) != i+11 {
		return 0, false
	}
	end = i + 11
	if wordAt(s, end) || (end+1 < len(s) && s[end] == sep && isDigit(s[end+1])) {
		return 0, false
	}
	if i >= 2 && s[i-1] == sep && isDigit(s[i-2]) {
		return 0, false
	}
	num := func(b []byte) int {
		v := 0
		for _, c := range b {
			v = v*10 + int(c-'0')
		}
		return v
	}
	area, group, serial := num(s[i:i+3]), num(s[i+4:i+6]), num(s[i+7:i+11])
	if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
		return 0, false
	}
	if (area == 78 && group == 5 && serial == 1120) || (area == 219 && group == 9 && serial == 9999) {
		return 0, false
	}
	return end, true
}

func isPhoneSep(c byte) bool { return c == ' ' || c == '-' || c == '.' }

// nanpAt finds a North American number at s[i] (a digit or '('):
// (NXX) NXX-XXXX, NXX-NXX-XXXX, NXX.NXX.XXXX or NXX NXX XXXX, optionally
// after "1" and a separator, where N is 2-9. Ten bare digits are not
// detected: timestamps and IDs look like that.
func nanpAt(s []byte, i int) (end int, ok bool) {
	j := i
	if s[j] == '1' && j+2 < len(s) && isPhoneSep(s[j+1]) && (isDigit(s[j+2]) || s[j+2] == '(') {
		j += 2
	}
	three := func(k int) bool { return k+3 <= len(s) && digitsEnd(s, k) == k+3 && s[k] >= '2' }
	var sep byte
	if j < len(s) && s[j] == '(' {
		if !three(j+1) || j+4 >= len(s) || s[j+4] != ')' {
			return 0, false
		}
		j += 5
		if j < len(s) && isPhoneSep(s[j]) {
			j++
		}
		if !three(j) || j+3 >= len(s) || !isPhoneSep(s[j+3]) {
			return 0, false
		}
		sep = s[j+3]
		j += 4
	} else {
		if !three(j) || j+3 >= len(s) || !isPhoneSep(s[j+3]) {
			return 0, false
		}
		sep = s[j+3]
		if !three(j+4) || j+7 >= len(s) || s[j+7] != sep {
			return 0, false
		}
		j += 8
	}
	if j+4 > len(s) || digitsEnd(s, j) != j+4 {
		return 0, false
	}
	end = j + 4
	if wordAt(s, end) || (end+1 < len(s) && s[end] == sep && isDigit(s[end+1])) {
		return 0, false
	}
	if s[i] != '(' && i >= 2 && s[i-1] == sep && isDigit(s[i-2]) {
		return 0, false
	}
	return end, true
}

// intlPhoneAt finds an E.164-style number at the '+' in s[i]: a country
// code that does not start with 0, then digit groups separated by single
// spaces, dashes or dots, or wrapped in parentheses, 8 to 15 digits in all.
func intlPhoneAt(s []byte, i int) (end int, ok bool) {
	j := i + 1
	if j >= len(s) || !isDigit(s[j]) || s[j] == '0' {
		return 0, false
	}
	digits := 0
	end = -1
	for j < len(s) {
		k, d := j, 0
		switch {
		case s[j] == '(':
			k = digitsEnd(s, j+1)
			d = k - j - 1
			if d > 4 || k >= len(s) || s[k] != ')' {
				d = 0
			}
			k++
		case isDigit(s[j]):
			k = digitsEnd(s, j)
			d = k - j
		}
		if d == 0 || digits+d > 15 {
			break
		}
		digits += d
		end, j = k, k
		if j+1 < len(s) && isPhoneSep(s[j]) && (isDigit(s[j+1]) || s[j+1] == '(') {
			j++
			continue
		}
		// "(0)20" and "44(20)": a parenthesised group may touch its neighbours.
		if j < len(s) && (s[j] == '(' || (s[j-1] == ')' && isDigit(s[j]))) {
			continue
		}
		break
	}
	if digits < 8 || wordAt(s, end) {
		return 0, false
	}
	return end, true
}

// IBANs: the electronic form (DE89370400440532013000) or the printed form
// in groups of four (DE89 3704 0044 0532 0130 00), upper case, with the
// length registered for the country and a valid ISO 7064 mod-97 check.
func ibanAt(s []byte, st int) (end int, ok bool) {
	if wordBefore(s, st) || st+4 > len(s) || !isDigit(s[st+2]) || !isDigit(s[st+3]) {
		return 0, false
	}
	want := ibanLength(s[st], s[st+1])
	if want == 0 {
		return 0, false
	}
	var chars [34]byte
	n, j := 0, st
	for n < want && j < len(s) {
		c := s[j]
		if isUpper(c) || isDigit(c) {
			chars[n] = c
			n++
			j++
			continue
		}
		if c == ' ' && n%4 == 0 && n > 0 && j+1 < len(s) && (isUpper(s[j+1]) || isDigit(s[j+1])) {
			j++
			continue
		}
		break
	}
	if n != want || wordAt(s, j) {
		return 0, false
	}
	if !ibanChecksumValid(chars[:n]) {
		return 0, false
	}
	return j, true
}

func ibanChecksumValid(iban []byte) bool {
	rem := 0
	for k := range iban {
		c := iban[(k+4)%len(iban)]
		if isDigit(c) {
			rem = (rem*10 + int(c-'0')) % 97
		} else {
			rem = (rem*100 + int(c-'A') + 10) % 97
		}
	}
	return rem == 1
}

// ibanLength is the IBAN length registered for a country (SWIFT IBAN
// registry), or 0 for a country without IBANs.
func ibanLength(a, b byte) int {
	switch string([]byte{a, b}) {
	case "NO":
		return 15
	case "BE":
		return 16
	case "DK", "FI", "FK", "FO", "GL", "NL", "SD":
		return 18
	case "MK", "SI":
		return 19
	case "AT", "BA", "EE", "KZ", "LT", "LU", "MN", "XK":
		return 20
	case "CH", "HR", "LI", "LV":
		return 21
	case "BG", "BH", "CR", "DE", "GB", "GE", "IE", "ME", "RS", "VA":
		return 22
	case "AE", "GI", "IL", "IQ", "OM", "SO", "TL":
		return 23
	case "AD", "CZ", "ES", "MD", "PK", "RO", "SA", "SE", "SK", "TN", "VG":
		return 24
	case "LY", "PT", "ST":
		return 25
	case "IS", "TR":
		return 26
	case "BI", "DJ", "FR", "GR", "IT", "MC", "MR", "SM":
		return 27
	case "AL", "AZ", "BY", "CY", "DO", "GT", "HU", "LB", "NI", "PL", "SV":
		return 28
	case "BR", "EG", "PS", "QA", "UA":
		return 29
	case "JO", "KW", "MU", "YE":
		return 30
	case "MT", "SC":
		return 31
	case "LC":
		return 32
	case "RU":
		return 33
	}
	return 0
}

// awsKeyAt finds an AWS access key ID at s[i]: a four-letter prefix for
// long-term (AKIA), temporary (ASIA) or service-specific (ABIA, ACCA)
// credentials and 16 upper-case letters or digits. Secret access keys are
// not detected: 40 base64 characters look like too many other things.
func awsKeyAt(s []byte, i int) (end int, ok bool) {
	if i+20 > len(s) {
		return 0, false
	}
	switch string(s[i : i+4]) {
	case "AKIA", "ASIA", "ABIA", "ACCA":
	default:
		return 0, false
	}
	for _, c := range s[i+4 : i+20] {
		if !isUpper(c) && !isDigit(c) {
			return 0, false
		}
	}
	if wordAt(s, i+20) {
		return 0, false
	}
	return i + 20, true
}

// githubTokenAt finds a GitHub token at s[i]: classic and app tokens
// (ghp_, gho_, ghu_, ghs_, ghr_ and at least 36 letters or digits) and
// fine-grained personal access tokens (github_pat_ and at least 22 letters,
// digits or underscores).
func githubTokenAt(s []byte, i int) (end int, ok bool) {
	rest := s[i:]
	if bytes.HasPrefix(rest, []byte("github_pat_")) {
		end = wordEnd(s, i+11)
		return end, end-i-11 >= 22
	}
	if len(rest) < 4 || rest[1] != 'h' || rest[3] != '_' || bytes.IndexByte([]byte("pousr"), rest[2]) < 0 {
		return 0, false
	}
	end = i + 4
	for end < len(s) && isAlnum(s[end]) {
		end++
	}
	if end-i-4 < 36 || wordAt(s, end) {
		return 0, false
	}
	return end, true
}

// maxJWTHeader bounds the header a JWT candidate may have before it is
// decoded, so a long base64 run costs one scan and no allocation.
const maxJWTHeader = 4096

// jwtAt finds a JSON Web Token at s[i]: three base64url parts separated by
// dots (five for an encrypted token), the signature possibly empty, whose
// first part decodes to a JSON object with an "alg" member.
func jwtAt(s []byte, i int) (end int, ok bool) {
	// A token starts where a base64url run starts: "-eyJ" inside a run is
	// not a start, so a long run is scanned once, not once per "eyJ".
	if !bytes.HasPrefix(s[i:], []byte("eyJ")) || (i > 0 && isBase64URL(s[i-1])) {
		return 0, false
	}
	part := func(k int) int {
		for k < len(s) && isBase64URL(s[k]) {
			k++
		}
		return k
	}
	h := i
	for h < len(s) && h-i <= maxJWTHeader && isBase64URL(s[h]) {
		h++
	}
	if h >= len(s) || s[h] != '.' {
		return 0, false
	}
	p := part(h + 1)
	if p == h+1 || p >= len(s) || s[p] != '.' {
		return 0, false
	}
	end = part(p + 1)
	// An encrypted token (JWE) has two more parts; take them too.
	if end < len(s) && s[end] == '.' {
		if e4 := part(end + 1); e4 < len(s) && s[e4] == '.' {
			if e5 := part(e4 + 1); e5 == len(s) || s[e5] != '.' {
				end = e5
			}
		}
	}
	header := make([]byte, base64.RawURLEncoding.DecodedLen(h-i))
	n, err := base64.RawURLEncoding.Decode(header, s[i:h])
	if err != nil {
		return 0, false
	}
	var fields struct {
		Alg *string `json:"alg"`
	}
	if json.Unmarshal(header[:n], &fields) != nil || fields.Alg == nil {
		return 0, false
	}
	return end, true
}

// privateKeyAt finds a PEM private key block at s[i] ("-----BEGIN RSA
// PRIVATE KEY-----", "... OPENSSH PRIVATE KEY...", "... PGP PRIVATE KEY
// BLOCK..." and so on) through its END line. A block that never ends is
// redacted to the end of the text: a truncated key is still a secret.
func privateKeyAt(s []byte, i int) (end int, ok bool) {
	const begin, dashes = "-----BEGIN ", "-----"
	if !bytes.HasPrefix(s[i:], []byte(begin)) {
		return 0, false
	}
	l := i + len(begin)
	k := bytes.Index(s[l:min(len(s), l+64)], []byte(dashes))
	if k < 0 {
		return 0, false
	}
	label := s[l : l+k]
	for _, c := range label {
		if !isUpper(c) && !isDigit(c) && c != ' ' {
			return 0, false
		}
	}
	if !bytes.HasSuffix(label, []byte("PRIVATE KEY")) && !bytes.HasSuffix(label, []byte("PRIVATE KEY BLOCK")) {
		return 0, false
	}
	from := l + k + len(dashes)
	for {
		e := bytes.Index(s[from:], []byte("-----END "))
		if e < 0 {
			return len(s), true
		}
		e += from + len("-----END ")
		if bytes.HasPrefix(s[e:], label) && bytes.HasPrefix(s[e+len(label):], []byte(dashes)) {
			return e + len(label) + len(dashes), true
		}
		from = e
	}
}

// bearerAt finds the credential of "Bearer <token>" at s[i] (the scheme
// name in any case). Only the token is redacted, so "Authorization: Bearer
// [REDACTED:bearer_token]" still reads as what it was. The token must be at
// least 8 characters with a digit in it, so prose such as "bearer
// authentication" is left alone.
func bearerAt(s []byte, i int) (start, end int, ok bool) {
	if i+7 > len(s) || !bytes.EqualFold(s[i:i+6], []byte("bearer")) {
		return 0, 0, false
	}
	start = i + 6
	for start < len(s) && (s[start] == ' ' || s[start] == '\t') && start-i-6 < 8 {
		start++
	}
	if start == i+6 {
		return 0, 0, false
	}
	end = start
	digit := false
	for end < len(s) && isToken68(s[end]) {
		digit = digit || isDigit(s[end])
		end++
	}
	if end-start < 8 || !digit {
		return 0, 0, false
	}
	for end < len(s) && s[end] == '=' {
		end++
	}
	return start, end, true
}
