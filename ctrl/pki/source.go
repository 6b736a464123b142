package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/roamnet/roam/internal/reread"
)

// Source is one identity read from a directory (ca.crt, tls.crt, tls.key)
// and kept current: every handshake checks the files' size and time and
// re-reads them when they changed, so a rotated certificate or CA bundle
// takes effect without a restart. A set that fails to load (a half
// written rotation) leaves the previous one in use; Err says why.
type Source struct {
	dir   string
	files *reread.Files[keySet]
}

// keySet is one set read from a Source's directory.
type keySet struct {
	cert *tls.Certificate
	pool *x509.CertPool
	id   ID
}

// Load reads the identity in dir.
func Load(dir string) (*Source, error) {
	s := &Source{dir: dir}
	f, err := reread.New(s.read, filepath.Join(dir, CAFile), filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load identity %s: %w (create one with roamctl cert issue)", dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load identity %s: %w", dir, err)
	}
	s.files = f
	return s, nil
}

// read reads the files; prev is the set in use (none at the first read).
func (s *Source) read(prev keySet) (keySet, error) {
	pool, err := ReadCAPool(filepath.Join(s.dir, CAFile))
	if err != nil {
		return keySet{}, err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(s.dir, CertFile), filepath.Join(s.dir, KeyFile))
	if err != nil {
		return keySet{}, err
	}
	id, err := IDOf(cert.Leaf)
	if err != nil {
		return keySet{}, err
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return keySet{}, fmt.Errorf("%s is not issued by %s: %w", CertFile, CAFile, err)
	}
	if prev.cert != nil && id != prev.id {
		return keySet{}, fmt.Errorf("the new certificate names %s, not %s (an identity does not change at a rotation)", id, prev.id)
	}
	return keySet{&cert, pool, id}, nil
}

// current returns the certificate and pool, re-read if the files changed.
func (s *Source) current() (*tls.Certificate, *x509.CertPool) {
	in := s.files.Get()
	return in.cert, in.pool
}

// ID is the identity this source holds.
func (s *Source) ID() ID { return s.files.Get().id }

// Err is why the latest change of the files could not be used (nil: the
// files in use are the latest).
func (s *Source) Err() error {
	if err := s.files.Err(); err != nil {
		return fmt.Errorf("load identity %s: %w", s.dir, err)
	}
	return nil
}

// Loads counts the sets read (1 after Load; one more per rotation).
func (s *Source) Loads() int { return s.files.Loads() }

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
