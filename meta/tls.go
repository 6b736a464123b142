// This file holds TLS helpers for the MO's NATS: a server key pair that is
// re-read when its files change (rotation without a restart) and the
// options a controller connects with.

package meta

import (
	"crypto/tls"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/roamnet/roam/internal/reread"
)

// KeyPairReloader serves a certificate and key from files and re-reads
// them when either file's modification time or size changes (checked on
// a handshake, by internal/reread). A pair that fails to load keeps the
// previous one in service.
type KeyPairReloader struct {
	files *reread.Files[*tls.Certificate]
}

// NewKeyPairReloader loads the pair once (an error if it cannot).
func NewKeyPairReloader(certFile, keyFile string) (*KeyPairReloader, error) {
	f, err := reread.New(func(*tls.Certificate) (*tls.Certificate, error) {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load tls key pair %s, %s: %w", certFile, keyFile, err)
		}
		return &cert, nil
	}, certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls key pair: %w", err)
	}
	return &KeyPairReloader{files: f}, nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (k *KeyPairReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return k.files.Get(), nil
}

// Err is the last reload error: the files changed but did not load, and
// the previous pair is still served.
func (k *KeyPairReloader) Err() error { return k.files.Err() }

// NATSTLSOptions are the options a client of the MO's NATS needs for TLS:
// the CA that signed the server's certificate and, when the server asks
// for client certificates, this client's pair. An empty caFile returns no
// option. The options make TLS required (TLS 1.2 at least).
func NATSTLSOptions(caFile, certFile, keyFile string) ([]nats.Option, error) {
	var opts []nats.Option
	if caFile != "" {
		if _, err := os.Stat(caFile); err != nil {
			return nil, fmt.Errorf("nats tls ca: %w", err)
		}
		opts = append(opts, nats.RootCAs(caFile))
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("nats tls: give both the certificate and the key, or neither")
	}
	if certFile != "" {
		opts = append(opts, nats.ClientCert(certFile, keyFile))
	}
	return opts, nil
}
