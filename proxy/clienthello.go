package proxy

import (
	"errors"
	"fmt"
)

// The first bytes of an opaque tunnel are read once, before anything is
// relayed, to learn the server name a TLS client asks for
// (docs/sandbox-runtimes.md). Only what locates server_name is parsed; everything
// else of the handshake is left to the upstream. The parser fails closed:
// what it cannot read as exactly one ClientHello with at most one host
// name is an error, never a hello without a name.

// TLS constants (RFC 8446 §5.1, §4, RFC 6066 §3).
const (
	recordTypeHandshake    = 22
	recordHeaderLen        = 5
	maxRecordPayload       = 1 << 14 // a plaintext record's fragment
	handshakeTypeHello     = 1
	handshakeHeaderLen     = 4
	extensionServerName    = 0
	serverNameTypeHostName = 0
)

// maxClientHello bounds the ClientHello the gateway reads, and
// maxFirstBytes the record stream that carries it (room for the headers of
// a hello split over several records). Real hellos take a few KiB,
// post-quantum key shares included.
const (
	maxClientHello = 16 << 10
	maxFirstBytes  = maxClientHello + 4<<10
)

// errHelloTooLarge is a ClientHello that does not fit the bounds above.
var errHelloTooLarge = errors.New("the ClientHello is larger than the gateway reads")

// clientHello is what the gateway learns from a ClientHello.
type clientHello struct {
	serverName    string // as sent, not normalised
	hasServerName bool
}

// looksLikeTLS reports whether a tunnel's first byte opens a TLS
// handshake record; everything else is relayed without a check.
func looksLikeTLS(first byte) bool { return first == recordTypeHandshake }

// parseClientHello reads the ClientHello at the start of data, the first
// bytes a client sent into a tunnel, possibly split over several TLS
// records and TCP segments. complete is false, with no error, while data
// ends before the ClientHello does; the caller reads more and asks again.
func parseClientHello(data []byte) (hello clientHello, complete bool, err error) {
	var msg []byte // the handshake bytes gathered from the records so far
	for rest := data; ; {
		if len(msg) >= handshakeHeaderLen {
			if msg[0] != handshakeTypeHello {
				return hello, false, fmt.Errorf("the first handshake message is of type %d, not a ClientHello", msg[0])
			}
			n := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
			if n > maxClientHello {
				return hello, false, errHelloTooLarge
			}
			if len(msg) >= handshakeHeaderLen+n {
				hello, err = parseHelloBody(msg[handshakeHeaderLen : handshakeHeaderLen+n])
				return hello, err == nil, err
			}
		}
		if len(rest) < recordHeaderLen {
			return hello, false, nil
		}
		if rest[0] != recordTypeHandshake {
			return hello, false, fmt.Errorf("a record of type %d came before the ClientHello was complete", rest[0])
		}
		if rest[1] != 3 {
			return hello, false, fmt.Errorf("record version %d.%d is not TLS", rest[1], rest[2])
		}
		n := int(rest[3])<<8 | int(rest[4])
		if n == 0 || n > maxRecordPayload {
			return hello, false, fmt.Errorf("a handshake record of %d bytes", n)
		}
		if len(rest) < recordHeaderLen+n {
			return hello, false, nil
		}
		if msg == nil && n >= handshakeHeaderLen {
			// The common case, a hello in one record: no copy.
			msg = rest[recordHeaderLen : recordHeaderLen+n : recordHeaderLen+n]
		} else {
			msg = append(msg, rest[recordHeaderLen:recordHeaderLen+n]...)
		}
		rest = rest[recordHeaderLen+n:]
	}
}

// parseHelloBody finds the server name in a ClientHello's body (RFC 8446
// §4.1.2; the TLS 1.2 form, whose extensions may be absent, is the same).
func parseHelloBody(body []byte) (clientHello, error) {
	var hello clientHello
	r := byteReader(body)
	if !r.skip(2 + 32) { // legacy_version, random
		return hello, errors.New("the ClientHello is truncated")
	}
	sessionID, ok := r.vector(1)
	if !ok || len(sessionID) > 32 {
		return hello, errors.New("the ClientHello's session id is malformed")
	}
	suites, ok := r.vector(2)
	if !ok || len(suites) < 2 || len(suites)%2 != 0 {
		return hello, errors.New("the ClientHello's cipher suites are malformed")
	}
	if compression, ok := r.vector(1); !ok || len(compression) < 1 {
		return hello, errors.New("the ClientHello's compression methods are malformed")
	}
	if len(r) == 0 {
		return hello, nil // no extensions at all (TLS 1.2 and older)
	}
	extensions, ok := r.vector(2)
	if !ok || len(r) != 0 {
		return hello, errors.New("the ClientHello's extensions are malformed")
	}
	for len(extensions) > 0 {
		var typ uint16
		var data []byte
		if typ, ok = extensions.uint16(); !ok {
			return hello, errors.New("an extension is truncated")
		}
		if data, ok = extensions.vector(2); !ok {
			return hello, errors.New("an extension is truncated")
		}
		if typ != extensionServerName {
			continue
		}
		if hello.hasServerName {
			// Servers differ in which copy they would read.
			return hello, errors.New("the ClientHello has two server_name extensions")
		}
		name, err := parseServerName(data)
		if err != nil {
			return hello, err
		}
		hello.serverName, hello.hasServerName = name, true
	}
	return hello, nil
}

// parseServerName reads a server_name extension (RFC 6066 §3): a list
// holding exactly one host_name. Other name types were never defined and
// servers refuse them; a second host name is forbidden.
func parseServerName(data []byte) (string, error) {
	r := byteReader(data)
	list, ok := r.vector(2)
	if !ok || len(r) != 0 || len(list) == 0 {
		return "", errors.New("the server_name extension is malformed")
	}
	typ, ok := list.uint8()
	if !ok || typ != serverNameTypeHostName {
		return "", errors.New("the server_name extension names something other than a host")
	}
	name, ok := list.vector(2)
	if !ok || len(name) == 0 {
		return "", errors.New("the server_name extension's host name is malformed")
	}
	if len(list) != 0 {
		return "", errors.New("the server_name extension holds more than one name")
	}
	return string(name), nil
}

// byteReader reads the length-prefixed vectors of TLS's presentation
// language, consuming itself; a read past the end fails and leaves it as
// it was.
type byteReader []byte

func (r *byteReader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

func (r *byteReader) uint8() (uint8, bool) {
	if len(*r) < 1 {
		return 0, false
	}
	v := (*r)[0]
	*r = (*r)[1:]
	return v, true
}

func (r *byteReader) uint16() (uint16, bool) {
	if len(*r) < 2 {
		return 0, false
	}
	v := uint16((*r)[0])<<8 | uint16((*r)[1])
	*r = (*r)[2:]
	return v, true
}

// vector reads a vector whose length takes lenBytes (1 or 2) bytes.
func (r *byteReader) vector(lenBytes int) (byteReader, bool) {
	if len(*r) < lenBytes {
		return nil, false
	}
	n := int((*r)[0])
	if lenBytes == 2 {
		n = n<<8 | int((*r)[1])
	}
	if len(*r) < lenBytes+n {
		return nil, false
	}
	v := (*r)[lenBytes : lenBytes+n : lenBytes+n]
	*r = (*r)[lenBytes+n:]
	return v, true
}
