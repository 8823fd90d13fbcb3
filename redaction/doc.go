// Package redaction scrubs sensitive data from what crosses the gateway
// (docs/connector-authors.md, "Redaction"): request bodies, headers and queries on their way out,
// response bodies and headers on their way back, and any text bound for a
// log.
//
// A [Profile] is compiled once per policy load from a [ProfileConfig]
// (gateway.yaml redaction.profiles) by [NewProfile], which refuses unknown
// detectors, bad regular expressions and bad field paths with an error
// naming the entry. A connector applies a [Chain] of profiles per
// direction: [Chain.Body], [Chain.Headers] and [Chain.Query] return the
// redacted data and a [Report] of names and counts, for
// redactions_total{profile,detector} and the audit log; a Report never
// holds a value. A [SecretScrubber] replaces the exact values of the
// credentials the gateway injects, whatever the profiles say, in bytes,
// strings, headers and streams. An [EventReader] redacts and scrubs a
// stream of server-sent events or JSON lines event by event, each event
// returned as soon as it is complete ([EventDecoder] splits the stream),
// keeping a secret whole across events (docs/reference.md, "Streamed
// bodies").
//
// What a profile matches:
//   - detectors (email, credit_card, us_ssn, phone, iban, aws_access_key,
//     github_token, jwt, private_key, bearer_token) and custom RE2
//     patterns, over JSON string values, form values, text bodies, query
//     values and header values. Detectors validate what they find (Luhn and
//     issuer prefixes, SSA area rules, mod 97, a JWT header that decodes,
//     a whole PEM block), so a 16-digit number that fails Luhn stays;
//   - json_fields: a key or a dotted path with "*" for one key; a field
//     matches when its path ends with the pattern, keys compare ASCII
//     case-insensitively and arrays are transparent. The whole value is
//     replaced, whatever its type; null stays null. Single-segment names
//     also name form fields and query parameters;
//   - headers and query parameters by name.
//
// Actions: mask writes "[REDACTED:<name>]" (name = the detector, pattern,
// field pattern, header or parameter); hash writes "hmac:" and the first 8
// bytes of HMAC-SHA256(key, value) in hex, the same for the same value on
// every replica with the same key (a string field is hashed by its decoded
// value, so a field and a detector hash the same value alike); drop
// removes a JSON member, form field, query parameter or header, and masks
// a detector match inside a text, since part of a string cannot be
// dropped.
//
// Redacting twice changes nothing more: markers already in the data are
// never redacted again, and a text is rescanned after replacing until
// nothing more matches, because a replacement can change what its
// neighbours look like.
//
// It is fast because it never runs a regular expression per detector over
// the data and never decodes JSON into values: one pass over the bytes
// stops only at trigger bytes of the enabled detectors ('@', digits, '+',
// '(', 'A', 'g', 'e', '-', 'B'), where targeted code validates; JSON is
// tokenized in one validating pass that copies untouched bytes through,
// so structure, white space, numbers and untouched strings come out byte
// for byte, and the output is always valid JSON.
//
// It deliberately does not:
//   - read bodies from the network, enforce redaction.max_body_bytes or
//     undo Content-Encoding: the caller passes a whole, decoded body and
//     refuses larger ones with 413 body_too_large, or a decoded stream to
//     an EventReader, which bounds only its events;
//   - parse multipart bodies, or text in encodings other than
//     ASCII-compatible ones. NDJSON and server-sent events passed to Body
//     whole are scanned as text; an [EventReader] reads them event by
//     event (each event's JSON as JSON) for a caller that streams them;
//   - look inside JSON numbers (a card number sent as a number is left
//     alone: turning it into a string would break typed clients; name the
//     field in json_fields instead) or object keys;
//   - detect quoted or internationalised e-mail addresses, nine bare
//     digits as an SSN, ten bare digits as a phone number, or AWS secret
//     access keys: each would match too much that is not personal data;
//   - stop a sandbox that wants to smuggle data out: anything encoded
//     (base64, split, spelled out) passes. Redaction keeps sensitive data
//     that is sent as it is from leaving or coming back by accident;
//   - log, print or keep any matched value.
package redaction
