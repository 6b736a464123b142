// This file holds NATS authentication for the embedded server: per-cluster
// users whose permissions confine them to their own hello subject and inbox.

package meta

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"sigs.k8s.io/yaml"
)

// Credentials is a NATS user and password.
type Credentials struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// ClusterCredentials is one cluster's NATS login; the user name is the
// cluster id.
type ClusterCredentials struct {
	ID       string `json:"id"`
	Password string `json:"password"`
}

// AuthConfig is the --auth-file content (YAML or JSON):
//
//	meta: {user: roam-meta, password: s3cret}   # the MO's own user (optional)
//	clusters:
//	  - {id: c1, password: p1}
//	admins:                                     # full access (operators)
//	  - {user: ops, password: p2}
type AuthConfig struct {
	Meta     Credentials          `json:"meta"`
	Clusters []ClusterCredentials `json:"clusters"`
	Admins   []Credentials        `json:"admins"`
}

// LoadAuthFile reads and validates an auth file.
func LoadAuthFile(path string) (*AuthConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read auth file: %w", err)
	}
	var a AuthConfig
	if err := yaml.UnmarshalStrict(b, &a); err != nil {
		return nil, fmt.Errorf("parse auth file %s: %w", path, err)
	}
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("auth file %s: %w", path, err)
	}
	return &a, nil
}

// Validate reports missing or duplicate users.
func (a *AuthConfig) Validate() error {
	seen := map[string]bool{}
	add := func(u, p string) error {
		if u == "" || p == "" {
			return fmt.Errorf("user %q: user and password must be set", u)
		}
		if seen[u] {
			return fmt.Errorf("user %q defined twice", u)
		}
		seen[u] = true
		return nil
	}
	if a.Meta.User != "" || a.Meta.Password != "" {
		if err := add(a.Meta.User, a.Meta.Password); err != nil {
			return err
		}
	}
	for _, c := range a.Clusters {
		if err := ValidateClusterID(c.ID); err != nil {
			return err
		}
		if err := add(c.ID, c.Password); err != nil {
			return err
		}
	}
	for _, u := range a.Admins {
		if err := add(u.User, u.Password); err != nil {
			return err
		}
	}
	return nil
}

// InboxPrefix is the only inbox a cluster may subscribe under; clients
// must connect with nats.CustomInboxPrefix(InboxPrefix(id)).
func InboxPrefix(clusterID string) string { return "_INBOX." + clusterID }

// viewStream is the stream behind the compact view's bucket.
const viewStream = "KV_" + KVBucket

// ClusterPermissions are what cluster id may do on the MO's NATS: publish
// its own hellos and placement requests, read the compact view (look the
// bucket up, create and delete its own ordered consumer on it, answer its
// flow control) and its own inbox. It can write nothing in JetStream.
func ClusterPermissions(id string) *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			HelloSubject(id), SubjectPlace,
			"$JS.API.STREAM.INFO." + viewStream,
			"$JS.API.CONSUMER.CREATE." + viewStream, "$JS.API.CONSUMER.CREATE." + viewStream + ".>",
			"$JS.API.CONSUMER.DELETE." + viewStream + ".>",
			"$JS.FC." + viewStream + ".>",
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{InboxPrefix(id) + ".>"}},
	}
}

// ClusterConnectOptions are the nats options a cluster's controller needs
// on a server with per-cluster permissions.
func ClusterConnectOptions(id, password string) []nats.Option {
	opts := []nats.Option{nats.CustomInboxPrefix(InboxPrefix(id)), nats.Name("roam-ctrl " + id)}
	if password != "" {
		opts = append(opts, nats.UserInfo(id, password))
	}
	return opts
}

// users builds the embedded server's users; the MO itself logs in as meta
// (generated when the file names none).
func (a *AuthConfig) users() (users []*server.User, meta Credentials, err error) {
	meta = a.Meta
	if meta.User == "" {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return nil, meta, fmt.Errorf("generate meta password: %w", err)
		}
		meta = Credentials{User: "roam-meta-internal", Password: hex.EncodeToString(b)}
	}
	users = append(users, &server.User{Username: meta.User, Password: meta.Password})
	for _, c := range a.Clusters {
		users = append(users, &server.User{Username: c.ID, Password: c.Password, Permissions: ClusterPermissions(c.ID)})
	}
	for _, u := range a.Admins {
		users = append(users, &server.User{Username: u.User, Password: u.Password})
	}
	return users, meta, nil
}
