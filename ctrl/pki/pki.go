// Package pki gives every roam cluster and every node an identity: a CA per
// installation issues each controller a certificate for
// spiffe://roam/cluster/<id> and each agent one for
// spiffe://roam/cluster/<id>/node/<node>, and both sides of every call
// (controller to controller, controller to agent) verify the other's.
//
// The identity is a URI SAN in the SPIFFE form, not a DNS name, because
// roam's peers are reached at addresses that say nothing about who they
// are: a controller is dialled at an IP, a NodePort or a load balancer
// that differs per domain and changes with a migration, and the URL it is
// dialled at is exactly what must not be trusted. A URI SAN names the
// cluster whatever address serves it, cannot be mistaken for a host name a
// public CA would certify, and is what SPIFFE-aware issuers (cert-manager's
// csi-driver-spiffe, SPIRE) emit, so an operator can bring their own. The
// certificates still carry the DNS names and IPs they are served at, so a
// user's curl or roamctl verifies the API the ordinary way.
//
// Files use the Kubernetes TLS Secret's names (ca.crt, tls.crt, tls.key),
// which is also what cert-manager writes; a Source re-reads them when they
// change, so a rotated certificate is used at the next handshake without a
// restart. The package imports nothing of roam: roam-agent uses it too.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// TrustDomain is the SPIFFE trust domain of every roam identity. Two
// installations are told apart by their CA, not by the domain.
const TrustDomain = "roam"

// File names inside an identity directory (those of a kubernetes.io/tls
// Secret with its ca.crt, as cert-manager writes them).
const (
	CAFile   = "ca.crt"
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
	// CAKeyFile is the CA's private key: only in the directory roamctl
	// keeps the CA in, never handed to a daemon.
	CAKeyFile = "ca.key"
)

var idPart = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// ID is a roam identity: a cluster's controller (Node empty) or one of its
// nodes' agents.
type ID struct {
	Cluster string
	Node    string
}

// Validate reports why id cannot be put in a certificate.
func (id ID) Validate() error {
	if !idPart.MatchString(id.Cluster) {
		return fmt.Errorf("identity: cluster %q: want lowercase letters, digits, '.', '_' or '-' (at most 63)", id.Cluster)
	}
	if id.Node != "" && !idPart.MatchString(id.Node) {
		return fmt.Errorf("identity: node %q: want lowercase letters, digits, '.', '_' or '-' (at most 63)", id.Node)
	}
	return nil
}

// IsNode reports whether id is an agent's.
func (id ID) IsNode() bool { return id.Node != "" }

// URI is id as a SPIFFE ID.
func (id ID) URI() *url.URL {
	p := "/cluster/" + id.Cluster
	if id.Node != "" {
		p += "/node/" + id.Node
	}
	return &url.URL{Scheme: "spiffe", Host: TrustDomain, Path: p}
}

func (id ID) String() string { return id.URI().String() }

// ParseID reads a SPIFFE ID of roam's trust domain.
func ParseID(u *url.URL) (ID, error) {
	if u.Scheme != "spiffe" || u.Host != TrustDomain || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return ID{}, fmt.Errorf("parse identity %q: not a spiffe://%s/ ID", u, TrustDomain)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	var id ID
	switch {
	case len(parts) == 2 && parts[0] == "cluster":
		id = ID{Cluster: parts[1]}
	case len(parts) == 4 && parts[0] == "cluster" && parts[2] == "node":
		id = ID{Cluster: parts[1], Node: parts[3]}
	default:
		return ID{}, fmt.Errorf("parse identity %q: want /cluster/<id> or /cluster/<id>/node/<node>", u)
	}
	if err := id.Validate(); err != nil {
		return ID{}, fmt.Errorf("parse identity %q: %w", u, err)
	}
	return id, nil
}

// IDOf is the identity a certificate names: exactly one roam SPIFFE ID
// among its URI SANs.
func IDOf(c *x509.Certificate) (ID, error) {
	var ids []ID
	for _, u := range c.URIs {
		if u.Scheme != "spiffe" {
			continue
		}
		id, err := ParseID(u)
		if err != nil {
			return ID{}, err
		}
		ids = append(ids, id)
	}
	if len(ids) != 1 {
		return ID{}, fmt.Errorf("certificate %q: want exactly one spiffe://%s/ URI SAN, found %d", c.Subject.CommonName, TrustDomain, len(ids))
	}
	return ids[0], nil
}

// CA is an installation's certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewCA makes a self-signed CA named name, valid for validity.
func NewCA(name string, validity time.Duration) (*CA, error) {
	key, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("new ca: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("new ca: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: name, Organization: []string{"roam"}},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(validity), IsCA: true, BasicConstraintsValid: true,
		MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new ca: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new ca: %w", err)
	}
	return &CA{Cert: c, Key: key}, nil
}

// Issue signs a certificate for id, also valid for the host names and IPs
// in hosts (what users dial), for both server and client use. It returns
// the certificate and its key in PEM.
func (ca *CA) Issue(id ID, hosts []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := id.Validate(); err != nil {
		return nil, nil, err
	}
	cn := id.Cluster
	if id.Node != "" {
		cn = id.Cluster + "/" + id.Node
	}
	certPEM, keyPEM, err = ca.sign(&x509.Certificate{Subject: pkix.Name{CommonName: cn}, URIs: []*url.URL{id.URI()},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, hosts, validity)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: %w", id, err)
	}
	return certPEM, keyPEM, nil
}

// IssueServer signs a TLS server certificate named name for the host
// names and IPs in hosts, for a server that is not a roam identity (the
// MO's NATS, a test's API server). It returns the certificate and its key
// in PEM.
func (ca *CA) IssueServer(name string, hosts []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	certPEM, keyPEM, err = ca.sign(&x509.Certificate{Subject: pkix.Name{CommonName: name},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, hosts, validity)
	if err != nil {
		return nil, nil, fmt.Errorf("issue server certificate %s: %w", name, err)
	}
	return certPEM, keyPEM, nil
}

// sign completes tmpl (a new key, serial, validity from a minute ago, the
// roam organization, hosts as IP and DNS names) and signs it.
func (ca *CA) sign(tmpl *x509.Certificate, hosts []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl.Subject.Organization = []string{"roam"}
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Minute), now.Add(validity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// CertPEM is the CA's certificate in PEM.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// WriteIdentity issues a certificate for id and writes ca.crt, tls.crt and
// tls.key into dir (created 0700; the key 0600). Files are replaced
// atomically, so a Source reading them sees the old set or the new one.
func (ca *CA) WriteIdentity(dir string, id ID, hosts []string, validity time.Duration) error {
	c, k, err := ca.Issue(id, hosts, validity)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write identity %s: %w", id, err)
	}
	for _, f := range []struct {
		name string
		b    []byte
		mode os.FileMode
	}{{CAFile, ca.CertPEM(), 0o644}, {KeyFile, k, 0o600}, {CertFile, c, 0o644}} {
		if err := writeAtomic(filepath.Join(dir, f.name), f.b, f.mode); err != nil {
			return fmt.Errorf("write identity %s: %w", id, err)
		}
	}
	return nil
}

// Save writes the CA's certificate and key (0600) into dir.
func (ca *CA) Save(dir string) error {
	kder, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return fmt.Errorf("save ca: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save ca: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, CAKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return fmt.Errorf("save ca: %w", err)
	}
	if err := writeAtomic(filepath.Join(dir, CAFile), ca.CertPEM(), 0o644); err != nil {
		return fmt.Errorf("save ca: %w", err)
	}
	return nil
}

// LoadCA reads a CA saved by Save.
func LoadCA(dir string) (*CA, error) {
	cb, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("load ca: %w (create one with roamctl cert ca)", err)
	}
	kb, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	cert, err := parseCert(cb)
	if err != nil {
		return nil, fmt.Errorf("load ca %s: %w", dir, err)
	}
	kp, _ := pem.Decode(kb)
	if kp == nil {
		return nil, fmt.Errorf("load ca %s: no PEM key", dir)
	}
	key, err := x509.ParsePKCS8PrivateKey(kp.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load ca %s: %w", dir, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok || !cert.IsCA {
		return nil, fmt.Errorf("load ca %s: not a CA certificate and signing key", dir)
	}
	return &CA{Cert: cert, Key: s}, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	p, _ := pem.Decode(b)
	if p == nil || p.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(p.Bytes)
}

func writeAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Equal compares two secrets in constant time (in their length too: both
// are hashed first). Every comparison of a presented secret goes through it.
func Equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// ReadCAPool reads a PEM file of CA certificates into a pool; a file that
// holds none is an error.
func ReadCAPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no certificate", path)
	}
	return pool, nil
}

// ReadSecretFile reads a secret from a file (trailing newline trimmed);
// an empty file is an error, so a missing mount is not taken for "no
// secret".
func ReadSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read secret: %w", err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("read secret %s: empty", path)
	}
	return s, nil
}
