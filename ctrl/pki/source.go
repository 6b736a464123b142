package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Source is one identity read from a directory (ca.crt, tls.crt, tls.key)
// and kept current: every handshake checks the files' size and time and
// re-reads them when they changed, so a rotated certificate or CA bundle
// takes effect without a restart. A set that fails to load (a half
// written rotation) leaves the previous one in use; Err says why.
type Source struct {
	dir string

	mu      sync.Mutex
	stamp   [3]fileStamp
	cert    *tls.Certificate
	pool    *x509.CertPool
	id      ID
	loadErr error
	loads   int
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// Load reads the identity in dir.
func Load(dir string) (*Source, error) {
	s := &Source{dir: dir}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Source) files() [3]string {
	return [3]string{filepath.Join(s.dir, CAFile), filepath.Join(s.dir, CertFile), filepath.Join(s.dir, KeyFile)}
}

func (s *Source) stamps() ([3]fileStamp, error) {
	var out [3]fileStamp
	for i, f := range s.files() {
		fi, err := os.Stat(f)
		if err != nil {
			return out, err
		}
		out[i] = fileStamp{fi.ModTime(), fi.Size()}
	}
	return out, nil
}

// reload reads the files (s.mu held or s not shared yet).
func (s *Source) reload() error {
	st, err := s.stamps()
	if err != nil {
		return fmt.Errorf("load identity %s: %w (create one with roamctl cert issue)", s.dir, err)
	}
	f := s.files()
	pool, err := ReadCAPool(f[0])
	if err != nil {
		return fmt.Errorf("load identity %s: %w", s.dir, err)
	}
	cert, err := tls.LoadX509KeyPair(f[1], f[2])
	if err != nil {
		return fmt.Errorf("load identity %s: %w", s.dir, err)
	}
	id, err := IDOf(cert.Leaf)
	if err != nil {
		return fmt.Errorf("load identity %s: %w", s.dir, err)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("load identity %s: %s is not issued by %s: %w", s.dir, CertFile, CAFile, err)
	}
	if s.cert != nil && id != s.id {
		return fmt.Errorf("load identity %s: the new certificate names %s, not %s (an identity does not change at a rotation)", s.dir, id, s.id)
	}
	s.stamp, s.cert, s.pool, s.id, s.loadErr = st, &cert, pool, id, nil
	s.loads++
	return nil
}

// current returns the certificate and pool, re-read if the files changed.
func (s *Source) current() (*tls.Certificate, *x509.CertPool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, err := s.stamps(); err == nil && st != s.stamp {
		if err := s.reload(); err != nil {
			s.loadErr = err
			s.stamp = st // do not retry until the files change again
		}
	}
	return s.cert, s.pool
}

// ID is the identity this source holds.
func (s *Source) ID() ID {
	s.current()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id
}

// Err is why the latest change of the files could not be used (nil: the
// files in use are the latest).
func (s *Source) Err() error {
	s.current()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loadErr
}

// Loads counts the sets read (1 after Load; one more per rotation).
func (s *Source) Loads() int {
	s.current()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads
}

// Leaf is the certificate in use (re-read if its files changed).
func (s *Source) Leaf() *x509.Certificate {
	c, _ := s.current()
	return c.Leaf
}

// Verify checks a peer's chain against the current CA bundle and returns
// the identity it names. usage is x509.ExtKeyUsageClientAuth for a caller,
// ExtKeyUsageServerAuth for a server.
func (s *Source) Verify(chain []*x509.Certificate, usage x509.ExtKeyUsage) (ID, error) {
	if len(chain) == 0 {
		return ID{}, errors.New("no certificate")
	}
	_, pool := s.current()
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return ID{}, fmt.Errorf("verify certificate: %w", err)
	}
	return IDOf(chain[0])
}

// ServerConfig serves this identity. Client certificates are requested,
// not required: the handler verifies them with Verify (so a refusal is an
// HTTP 401 with a counted reason, and users may call with a token alone).
func (s *Source) ServerConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, ClientAuth: tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, _ := s.current()
			return c, nil
		}}
}

// ClientConfig dials as this identity and accepts only a server whose
// certificate the CA issued and whose identity expect accepts (the cluster
// the caller looked up, never the host name of a URL).
func (s *Source) ClientConfig(expect func(ID) error) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13,
		// The chain and the identity are checked in VerifyConnection
		// below, against the current CA bundle; the host name is not an
		// identity here.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, _ := s.current()
			return c, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := s.Verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("verify server: %w", err)
			}
			if expect != nil {
				if err := expect(id); err != nil {
					return fmt.Errorf("verify server %s: %w", id, err)
				}
			}
			return nil
		}}
}

// Expect accepts exactly want.
func Expect(want ID) func(ID) error {
	return func(got ID) error {
		if got != want {
			return fmt.Errorf("want %s", want)
		}
		return nil
	}
}

// ExpectNodeOf accepts any node of cluster.
func ExpectNodeOf(cluster string) func(ID) error {
	return func(got ID) error {
		if got.Cluster != cluster || !got.IsNode() {
			return fmt.Errorf("want a node of cluster %s", cluster)
		}
		return nil
	}
}
