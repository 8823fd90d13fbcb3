package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"
)

func testCA(t testing.TB) *tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func TestLeafCache(t *testing.T) {
	ca := testCA(t)
	now := time.Now()
	cache := newLeafCache(ca, "fp", func() time.Time { return now })
	roots := x509.NewCertPool()
	roots.AddCert(ca.Leaf)

	for _, host := range []string{"api.example.com", "203.0.113.7", "2001:db8::1"} {
		cert, err := cache.get(host)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, CurrentTime: now}); err != nil {
			t.Errorf("leaf for %s does not verify: %v", host, err)
		}
		if cert.Leaf.NotAfter.After(ca.Leaf.NotAfter) {
			t.Errorf("leaf outlives its CA")
		}
	}

	// Many tunnels to one new host at once: one signature.
	var wg sync.WaitGroup
	certs := make([]*tls.Certificate, 50)
	for i := range certs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			certs[i], _ = cache.get("busy.example.com")
		}()
	}
	wg.Wait()
	for _, c := range certs {
		if c == nil || c != certs[0] {
			t.Fatal("concurrent requests for one host got different leaves")
		}
	}

	// Close to expiry, a leaf is made anew; the CA's end caps it (48h).
	now = now.Add(47 * time.Hour)
	renewed, err := cache.get("busy.example.com")
	if err != nil || renewed == certs[0] {
		t.Errorf("a leaf close to expiry was served from the cache (err %v)", err)
	}
	if cache.cache.Len() > leafCacheSize {
		t.Errorf("cache holds %d leaves", cache.cache.Len())
	}
}

func BenchmarkLeafCacheHit(b *testing.B) {
	cache := newLeafCache(testCA(b), "fp", time.Now)
	if _, err := cache.get("api.example.com"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cache.get("api.example.com"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLeafCacheMiss(b *testing.B) {
	cache := newLeafCache(testCA(b), "fp", time.Now)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, err := cache.get("h" + strings.Repeat("x", i%7) + itoa(uint16(i)) + ".example.com"); err != nil {
			b.Fatal(err)
		}
	}
}
