package api

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/internal/reread"
)

// Role is what a user may do.
type Role string

// Roles: read sees services and migrations; operate also deploys,
// deletes and migrates.
const (
	RoleRead    Role = "read"
	RoleOperate Role = "operate"
)

func (r Role) allows(need Role) bool {
	return r == RoleOperate || (r == RoleRead && need == RoleRead)
}

// User is one API user: a name, a role and the SHA-256 of its token (the
// token itself is shown once, when roamctl creates it, and kept nowhere).
type User struct {
	Name string
	Role Role
	Hash string // hex SHA-256 of the token
}

// HashToken is the form a token is kept in.
func HashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

// NewToken makes a random user token.
func NewToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("new token: %w", err)
	}
	return "roamu_" + hex.EncodeToString(b), nil
}

// UserLine is u as a line of a users file.
func UserLine(name string, role Role, tok string) string {
	return fmt.Sprintf("%s %s sha256:%s", name, role, HashToken(tok))
}

// ParseUsers reads a users file: one user a line, "NAME ROLE sha256:HEX"
// ('#' starts a comment).
func ParseUsers(b []byte) ([]User, error) {
	var out []User
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("users line %d: want NAME ROLE sha256:HEX", n)
		}
		role := Role(f[1])
		if role != RoleRead && role != RoleOperate {
			return nil, fmt.Errorf("users line %d: role %q: want read or operate", n, f[1])
		}
		h, ok := strings.CutPrefix(f[2], "sha256:")
		if b, err := hex.DecodeString(h); !ok || err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("users line %d: want sha256:<64 hex digits> (the token's hash, never the token)", n)
		}
		if seen[f[0]] {
			return nil, fmt.Errorf("users line %d: user %q twice", n, f[0])
		}
		seen[f[0]] = true
		out = append(out, User{Name: f[0], Role: role, Hash: strings.ToLower(h)})
	}
	return out, sc.Err()
}

// Users are the API's users, from a file re-read when it changes (a user
// added or revoked takes effect without a restart), or a fixed list.
type Users struct {
	file  *reread.Files[[]User]
	fixed []User
}

// LoadUsers reads a users file.
func LoadUsers(path string) (*Users, error) {
	f, err := reread.New(func([]User) ([]User, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		us, err := ParseUsers(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return us, nil
	}, path)
	if err != nil {
		return nil, fmt.Errorf("read users: %w", err)
	}
	return &Users{file: f}, nil
}

// StaticUsers is a fixed list (tests, in-process controllers).
func StaticUsers(us ...User) *Users { return &Users{fixed: us} }

func (u *Users) current() []User {
	switch {
	case u == nil:
		return nil
	case u.file != nil:
		return u.file.Get()
	}
	return u.fixed
}

// Len is how many users there are.
func (u *Users) Len() int { return len(u.current()) }

// lookup finds the user whose token tok is, comparing every entry in
// constant time.
func (u *Users) lookup(tok string) (User, bool) {
	h := HashToken(tok)
	var found User
	ok := false
	for _, us := range u.current() {
		if pki.Equal(h, us.Hash) && !ok {
			found, ok = us, true
		}
	}
	return found, ok
}
