package proxy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/netip"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

const (
	leafValidity   = 7 * 24 * time.Hour
	leafRenewAhead = time.Hour // a cached leaf this close to expiry is made anew
	leafCacheSize  = 4096
)

// leafCache makes and keeps the certificates an inspected tunnel presents
// to the sandbox, signed by the operator's CA. Generation happens once per
// host even when many tunnels to it open at once, and the cache is bounded.
type leafCache struct {
	ca          *tls.Certificate
	fingerprint string
	now         func() time.Time
	cache       *lru.Cache[string, *tls.Certificate]

	mu       sync.Mutex
	inflight map[string]*leafCall
}

type leafCall struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

func newLeafCache(ca *tls.Certificate, fingerprint string, now func() time.Time) *leafCache {
	cache, _ := lru.New[string, *tls.Certificate](leafCacheSize) // only fails for a size <= 0
	return &leafCache{ca: ca, fingerprint: fingerprint, now: now, cache: cache, inflight: map[string]*leafCall{}}
}

// get returns a leaf for host (a normalised name or IP literal).
func (c *leafCache) get(host string) (*tls.Certificate, error) {
	if cert, ok := c.cache.Get(host); ok && c.now().Add(leafRenewAhead).Before(cert.Leaf.NotAfter) {
		return cert, nil
	}
	c.mu.Lock()
	if call, ok := c.inflight[host]; ok {
		c.mu.Unlock()
		<-call.done
		return call.cert, call.err
	}
	call := &leafCall{done: make(chan struct{})}
	c.inflight[host] = call
	c.mu.Unlock()

	call.cert, call.err = c.sign(host)
	if call.err == nil {
		c.cache.Add(host, call.cert)
	}
	c.mu.Lock()
	delete(c.inflight, host)
	c.mu.Unlock()
	close(call.done)
	return call.cert, call.err
}

// sign makes an ECDSA P-256 leaf for host: fast to make (a fraction of a
// millisecond, against tens for RSA) and accepted by every current client.
func (c *leafCache) sign(host string) (*tls.Certificate, error) {
	signer, ok := c.ca.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("the inspection CA key cannot sign")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := c.now()
	notAfter := now.Add(leafValidity)
	if caEnd := c.ca.Leaf.NotAfter; notAfter.After(caEnd) {
		notAfter = caEnd
	}
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: host},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		template.IPAddresses = append(template.IPAddresses, ip.AsSlice())
	} else {
		template.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, template, c.ca.Leaf, &key.PublicKey, signer)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der, c.ca.Certificate[0]}, PrivateKey: key, Leaf: leaf}, nil
}
