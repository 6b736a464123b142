// This file holds TLS helpers for the MO's NATS: a server key pair that is
// re-read when its files change (rotation without a restart) and the
// options a controller connects with.

package meta

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// KeyPairReloader serves a certificate and key from files and re-reads
// them when either file's modification time or size changes (checked at
// most once a second, on a handshake). A pair that fails to load keeps the
// previous one in service.
type KeyPairReloader struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string
	checked time.Time
	// Err is the last reload error (nil once a reload succeeds).
	err error
}

// NewKeyPairReloader loads the pair once (an error if it cannot).
func NewKeyPairReloader(certFile, keyFile string) (*KeyPairReloader, error) {
	k := &KeyPairReloader{certFile: certFile, keyFile: keyFile}
	if err := k.reload(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *KeyPairReloader) fileStamp() (string, error) {
	var stamp string
	for _, f := range []string{k.certFile, k.keyFile} {
		st, err := os.Stat(f)
		if err != nil {
			return "", fmt.Errorf("tls key pair: %w", err)
		}
		stamp += fmt.Sprintf("%d/%d;", st.ModTime().UnixNano(), st.Size())
	}
	return stamp, nil
}

func (k *KeyPairReloader) reload() error {
	stamp, err := k.fileStamp()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		return fmt.Errorf("load tls key pair %s, %s: %w", k.certFile, k.keyFile, err)
	}
	k.cert, k.stamp = &cert, stamp
	return nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (k *KeyPairReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if now := time.Now(); now.Sub(k.checked) >= time.Second {
		k.checked = now
		if stamp, err := k.fileStamp(); err == nil && stamp != k.stamp {
			k.err = k.reload()
		}
	}
	return k.cert, nil
}

// Err is the last reload error: the files changed but did not load, and
// the previous pair is still served.
func (k *KeyPairReloader) Err() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.err
}

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
