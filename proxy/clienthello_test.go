package proxy

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// realClientHello is the first flight of a crypto/tls client asking for
// serverName ("" sends no server_name), as it appears on the wire.
func realClientHello(t testing.TB, serverName string) []byte {
	t.Helper()
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		cfg := &tls.Config{ServerName: serverName, InsecureSkipVerify: serverName == ""}
		_ = tls.Client(client, cfg).Handshake()
		client.Close()
	}()
	_ = server.SetDeadline(time.Now().Add(5 * time.Second))
	header := make([]byte, recordHeaderLen)
	if _, err := io.ReadFull(server, header); err != nil {
		t.Fatal(err)
	}
	record := make([]byte, recordHeaderLen+(int(header[3])<<8|int(header[4])))
	copy(record, header)
	if _, err := io.ReadFull(server, record[recordHeaderLen:]); err != nil {
		t.Fatal(err)
	}
	return record
}

// refragment puts the handshake bytes of hello's one record into records
// of at most size bytes.
func refragment(hello []byte, size int) []byte {
	msg := hello[recordHeaderLen:]
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// Builders for hand-made hellos.

func u16(n int) []byte { return []byte{byte(n >> 8), byte(n)} }

func vec16(b []byte) []byte { return append(u16(len(b)), b...) }

func extension(typ int, data []byte) []byte { return append(u16(typ), vec16(data)...) }

// sni is a server_name extension's data with one entry per name.
func sni(names ...string) []byte {
	var list []byte
	for _, n := range names {
		list = append(list, serverNameTypeHostName)
		list = append(list, vec16([]byte(n))...)
	}
	return vec16(list)
}

// helloBody is a ClientHello body with the given session id and extension
// block (nil: none at all).
func helloBody(sessionID []byte, extensions []byte) []byte {
	b := append([]byte{3, 3}, make([]byte, 32)...)
	b = append(b, byte(len(sessionID)))
	b = append(b, sessionID...)
	b = append(b, vec16([]byte{0x13, 0x01})...) // one cipher suite
	b = append(b, 1, 0)                         // null compression
	if extensions != nil {
		b = append(b, vec16(extensions)...)
	}
	return b
}

// handshakeRecord wraps a handshake message of type typ in one record.
func handshakeRecord(typ byte, body []byte) []byte {
	msg := append([]byte{typ, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	return append([]byte{recordTypeHandshake, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
}

func hello(extensions ...[]byte) []byte {
	return handshakeRecord(handshakeTypeHello, helloBody(nil, bytes.Join(extensions, nil)))
}

func TestParseClientHello(t *testing.T) {
	withName := realClientHello(t, "api.example.com")
	withoutName := realClientHello(t, "")
	other := extension(10, []byte{0, 2, 0, 29}) // supported_groups
	cases := []struct {
		name     string
		data     []byte
		complete bool
		sni      string // "-" for none
		inErr    string
	}{
		{"crypto/tls with a server name", withName, true, "api.example.com", ""},
		{"crypto/tls without a server name", withoutName, true, "-", ""},
		{"split over records of 100 bytes", refragment(withName, 100), true, "api.example.com", ""},
		{"split over one-byte records", refragment(withName, 1), true, "api.example.com", ""},
		{"followed by more records", append(bytes.Clone(withName), 20, 3, 3, 0, 1, 1), true, "api.example.com", ""},
		{"without extensions (TLS 1.2 and older)", handshakeRecord(handshakeTypeHello, helloBody(nil, nil)), true, "-", ""},
		{"server name among other extensions", hello(other, extension(extensionServerName, sni("a.example")), other), true, "a.example", ""},
		{"truncated record", withName[:len(withName)-1], false, "-", ""},
		{"record header only", withName[:recordHeaderLen], false, "-", ""},
		{"handshake header split", refragment(withName, 2)[:9], false, "-", ""},

		{"not a ClientHello", handshakeRecord(2, helloBody(nil, nil)), false, "-", "not a ClientHello"},
		{"an alert first", []byte{21, 3, 1, 0, 2, 2, 40}, false, "-", "record of type 21"},
		{"not TLS's record version", []byte{22, 2, 0, 0, 4, 1, 0, 0, 0}, false, "-", "not TLS"},
		{"empty record", []byte{22, 3, 1, 0, 0}, false, "-", "of 0 bytes"},
		{"oversized record", []byte{22, 3, 1, 0x40, 1}, false, "-", "of 16385 bytes"},
		{"hello larger than the gateway reads", []byte{22, 3, 1, 0, 4, 1, 0, 0x40, 1}, false, "-", "larger than"},
		{"two server_name extensions", hello(extension(0, sni("a.example")), extension(0, sni("b.example"))), false, "-", "two server_name"},
		{"two names in one extension", hello(extension(0, sni("a.example", "b.example"))), false, "-", "more than one name"},
		{"another name type", hello(extension(0, vec16(append([]byte{1}, vec16([]byte("a.example"))...)))), false, "-", "other than a host"},
		{"empty name", hello(extension(0, sni(""))), false, "-", "host name is malformed"},
		{"empty server_name extension", hello(extension(0, nil)), false, "-", "server_name extension is malformed"},
		{"list longer than the extension", hello(extension(0, append(u16(40), 0, 0, 1, 'a'))), false, "-", "malformed"},
		{"bytes after the list", hello(extension(0, append(sni("a.example"), 0))), false, "-", "malformed"},
		{"extension longer than the block", handshakeRecord(1, helloBody(nil, append(u16(0), u16(50)...))), false, "-", "truncated"},
		{"bytes after the extensions", handshakeRecord(1, append(helloBody(nil, other), 0)), false, "-", "extensions are malformed"},
		{"session id over 32 bytes", handshakeRecord(1, helloBody(make([]byte, 33), nil)), false, "-", "session id"},
		{"odd cipher suites", handshakeRecord(1, append(append([]byte{3, 3}, make([]byte, 33)...), 0, 3, 1, 2, 3, 1, 0)), false, "-", "cipher suites"},
		{"body too short", handshakeRecord(1, []byte{3, 3, 0}), false, "-", "truncated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, complete, err := parseClientHello(c.data)
			name := "-"
			if h.hasServerName {
				name = h.serverName
			}
			switch {
			case c.inErr == "" && err != nil:
				t.Fatalf("error %v", err)
			case c.inErr != "" && (err == nil || !strings.Contains(err.Error(), c.inErr)):
				t.Fatalf("error %v, want one containing %q", err, c.inErr)
			}
			if complete != c.complete || (complete && name != c.sni) {
				t.Errorf("complete=%v name=%q, want complete=%v name=%q", complete, name, c.complete, c.sni)
			}
		})
	}
}

// TestParseClientHelloEveryPrefix: a hello that arrives a byte at a time
// is incomplete, never wrong, until its last byte.
func TestParseClientHelloEveryPrefix(t *testing.T) {
	for _, data := range [][]byte{realClientHello(t, "api.example.com"), refragment(realClientHello(t, "x.example"), 300)} {
		for n := range len(data) {
			if _, complete, err := parseClientHello(data[:n]); complete || err != nil {
				t.Fatalf("prefix of %d of %d bytes: complete=%v err=%v", n, len(data), complete, err)
			}
		}
		if _, complete, err := parseClientHello(data); !complete || err != nil {
			t.Fatalf("whole: complete=%v err=%v", complete, err)
		}
	}
}

func TestCheckClientHello(t *testing.T) {
	ex := &exchange{host: "api.example.com"}
	cases := []struct {
		name  string
		data  []byte
		inWhy string // "" for allowed
	}{
		{"same host", realClientHello(t, "api.example.com"), ""},
		{"upper case and trailing dot", hello(extension(0, sni("API.Example.COM."))), ""},
		{"no server name", realClientHello(t, ""), ""},
		{"another host", realClientHello(t, "evil.example.com"), `asks for server "evil.example.com"`},
		{"a subdomain", realClientHello(t, "x.api.example.com"), "asks for server"},
		{"an IP literal", hello(extension(0, sni("127.0.0.1"))), "asks for server"},
		{"not a host name", hello(extension(0, sni("api.example.com\x00.evil"))), "asks for server"},
		{"unreadable", hello(extension(0, sni("a", "b"))), "cannot read"},
		{"incomplete at the bound", realClientHello(t, "api.example.com")[:100], "cannot read"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			why := ex.checkClientHello(c.data)
			if c.inWhy == "" && why != "" || !strings.Contains(why, c.inWhy) {
				t.Errorf("got %q, want %q", why, c.inWhy)
			}
		})
	}
	idn := &exchange{host: "xn--bcher-kva.example"}
	if why := idn.checkClientHello(hello(extension(0, sni("bücher.example")))); why != "" {
		t.Errorf("an IDNA name against its punycode host: %q", why)
	}
}

// FuzzParseClientHello: the parser never panics or reads past its input,
// and the same handshake message split over other record sizes gives the
// same answer.
func FuzzParseClientHello(f *testing.F) {
	f.Add(realClientHello(f, "api.example.com"))
	f.Add(realClientHello(f, ""))
	f.Add(refragment(realClientHello(f, "a.example"), 7))
	f.Add(hello(extension(0, sni("a.example", "b.example"))))
	f.Add(handshakeRecord(1, helloBody(nil, nil)))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxFirstBytes {
			return
		}
		h, complete, err := parseClientHello(data)
		if complete && err != nil {
			t.Fatalf("complete with an error: %v", err)
		}
		if h.hasServerName && (h.serverName == "" || len(h.serverName) > len(data)) {
			t.Fatalf("server name %q cannot come from the input", h.serverName)
		}
		if !complete || err != nil || len(data) < recordHeaderLen {
			return
		}
		// Gather the handshake message as parsed and send it again in
		// records of another size.
		var msg []byte
		for rest := data; len(msg) < handshakeHeaderLen || len(msg) < handshakeHeaderLen+(int(msg[1])<<16|int(msg[2])<<8|int(msg[3])); {
			n := int(rest[3])<<8 | int(rest[4])
			msg = append(msg, rest[recordHeaderLen:recordHeaderLen+n]...)
			rest = rest[recordHeaderLen+n:]
		}
		single := append([]byte{22, 3, 1, 0, 0}, msg...)
		for _, size := range []int{1, 3, 64} {
			again, complete2, err2 := parseClientHello(refragment(single, size))
			if !complete2 || err2 != nil || again != h {
				t.Fatalf("in records of %d: %+v %v %v, want %+v", size, again, complete2, err2, h)
			}
		}
	})
}
