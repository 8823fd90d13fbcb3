package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// caValidity bounds how long a leaked inspection CA stays useful.
const caValidity = 5 * 365 * 24 * time.Hour

// caInit writes a new ECDSA P-256 CA for TLS inspection: ca.pem for the
// sandboxes to trust, ca-key.pem (mode 0600) for the gateway only.
func caInit(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("ca init", stderr)
	out := fs.String("out", "", "directory to write ca.pem and ca-key.pem into")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 || *out == "" {
		fmt.Fprintln(stderr, "usage: egressgw ca init --out DIR")
		return exitUsage
	}
	dir, err := filepath.Abs(*out)
	if err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return exitFail
	}
	certPath, keyPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := writeCA(dir, certPath, keyPath, time.Now()); err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return exitFail
	}
	fmt.Fprintf(stdout, "wrote %s (give it to the sandboxes to trust) and %s (mode 0600; the gateway's only)\n", certPath, keyPath)
	fmt.Fprintf(stdout, "in gateway.yaml (paths may also be relative to the config directory; outside it, list the directory in config.allow_paths):\ntls:\n  ca_cert: %s\n  ca_key: %s\n", certPath, keyPath)
	return exitOK
}

func writeCA(dir, certPath, keyPath string, now time.Time) error {
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s exists; refusing to overwrite a CA", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "egressgw inspection CA", Organization: []string{"egressgw"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	// The key first, created 0600 from the start, so it is never readable
	// by others even for a moment.
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
