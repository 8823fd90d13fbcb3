package redaction

// Opaque is what the chain does with a body of contentType that it is not
// given to parse, as a stream of gRPC messages is not: nil when every
// profile would let a body it cannot parse pass (on_unsupported_body:
// pass, or no body rules), otherwise the *UnsupportedBodyError of the
// first profile that would block it. The body itself is never read.
func (c Chain) Opaque(contentType string) error {
	for _, p := range c {
		if !p.InspectsBody() || p.passOther {
			continue
		}
		mt := mediaType(contentType)
		if len(mt) > maxMediaTypeInError {
			mt = mt[:maxMediaTypeInError]
		}
		return &UnsupportedBodyError{Profile: p.name, MediaType: mt, Reason: "its messages stream and are not parsed by redaction"}
	}
	return nil
}
