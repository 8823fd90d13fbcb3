package e2e

import (
	"net"
	"net/netip"
	"strings"

	"golang.org/x/net/dns/dnsmessage"
)

// Names of the test zone. Every gateway under test resolves through testDNS
// (network.dns_servers), so these names behave like real ones: the gateway
// sees a hostname, resolves it, and must check the address it dials.
const (
	hostAPI       = "api.allowed.test"   // → 127.0.0.1, the usual allowed upstream
	hostApex      = "allowed.test"       // → 127.0.0.1, never matched by *.allowed.test
	hostSub       = "a.allowed.test"     // → 127.0.0.1
	hostSubSub    = "a.b.allowed.test"   // → 127.0.0.1
	hostReadOnly  = "ro.allowed.test"    // → 127.0.0.1, behind a methods/paths connector
	hostPaste     = "paste.allowed.test" // → 127.0.0.1, denied by a tenant rule
	hostOther     = "other.test"         // → 127.0.0.1, resolvable but in no policy
	hostV1        = "v1.connector.test"  // → 127.0.0.1, host of connector version 1
	hostV2        = "v2.connector.test"  // → 127.0.0.1, host of connector version 2
	hostRebind    = "rebind.test"        // → 127.0.0.2, outside network.allow_cidrs
	hostMetadata  = "meta.test"          // → 169.254.169.254, cloud metadata
	hostNXDomain  = "nx.test"            // not in the zone: NXDOMAIN
	victimAddress = "127.0.0.2"          // where a denied name points; an upstream there must stay untouched
)

// testZone is what testDNS answers; anything else is NXDOMAIN.
var testZone = map[string][]netip.Addr{
	hostAPI:      {loopback},
	hostApex:     {loopback},
	hostSub:      {loopback},
	hostSubSub:   {loopback},
	hostReadOnly: {loopback},
	hostPaste:    {loopback},
	hostOther:    {loopback},
	hostV1:       {loopback},
	hostV2:       {loopback},
	hostRebind:   {netip.MustParseAddr(victimAddress)},
	hostMetadata: {netip.MustParseAddr("169.254.169.254")},
}

var loopback = netip.MustParseAddr("127.0.0.1")

// dnsServer is a minimal authoritative DNS server over UDP. It answers A and
// AAAA questions from a fixed table and NXDOMAIN for unknown names, which is
// all the gateway's resolver needs.
type dnsServer struct {
	conn    net.PacketConn
	records map[string][]netip.Addr // keyed by lowercased FQDN ("name.")
}

// startDNSServer serves records on a free UDP port of 127.0.0.1 until Close.
func startDNSServer(records map[string][]netip.Addr) (*dnsServer, error) {
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &dnsServer{conn: conn, records: make(map[string][]netip.Addr, len(records))}
	for name, addrs := range records {
		s.records[strings.ToLower(name)+"."] = addrs
	}
	go s.serve()
	return s, nil
}

// Addr is the server's host:port, as written into network.dns_servers.
func (s *dnsServer) Addr() string { return s.conn.LocalAddr().String() }

// Close stops the server.
func (s *dnsServer) Close() error { return s.conn.Close() }

func (s *dnsServer) serve() {
	buf := make([]byte, 65535)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		reply, err := s.answer(buf[:n])
		if err != nil {
			continue // unparseable datagram: drop it, as a real server would
		}
		if _, err := s.conn.WriteTo(reply, from); err != nil {
			return
		}
	}
}

// answer builds the reply to one query. The reply is authoritative and
// claims recursion, because Go's resolver treats a non-authoritative,
// non-recursive empty answer as a lame referral and tries the next server.
func (s *dnsServer) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	addrs, known := s.records[strings.ToLower(q.Name.String())]
	reply := dnsmessage.Header{
		ID:                 h.ID,
		Response:           true,
		Authoritative:      true,
		RecursionDesired:   h.RecursionDesired,
		RecursionAvailable: true,
	}
	if !known {
		reply.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, reply)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	for _, addr := range addrs {
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
		switch {
		case q.Type == dnsmessage.TypeA && addr.Is4():
			err = b.AResource(rh, dnsmessage.AResource{A: addr.As4()})
		case q.Type == dnsmessage.TypeAAAA && addr.Is6():
			err = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: addr.As16()})
		}
		if err != nil {
			return nil, err
		}
	}
	return b.Finish()
}
