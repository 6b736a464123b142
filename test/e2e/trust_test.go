package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/test/testbed"
)

// secretMarkers are what must never appear in a roam process's argv or a
// copy's environment: the testbed user's token, private keys, and the
// names of the secrets roam used to take from flags and the environment.
func secretMarkers(tb *testbed.Testbed) []string {
	return []string{tb.State().Secrets.UserToken, "PRIVATE KEY", "--token", "--peer-secret", "--agent-token", "--api-token",
		"--nats-password=", "ROAM_TOKEN=", "ROAM_PEER_SECRET=", "ROAM_AGENT_TOKEN="}
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at ')'.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// TestNoSecretInArgvOrCopies: on the running testbed (mutual TLS between
// every controller and to the agents, by default), after a service moved
// between clusters, no roam process has a secret in its argv and no
// deployed copy (home's or a foreign one started at a peer's request) has
// one in its environment, and no process's log holds a secret value (the
// user token, a NATS password, a private key). A call without a
// certificate on a peer route is refused.
func TestNoSecretInArgvOrCopies(t *testing.T) {
	need(t)
	tb, _ := launch(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	hc := deployClassifier(ctx, t, tb, backend.Port{Port: 80, Protocol: lb.TCP})
	if m, err := hc.Migrate(ctx, "classifier", "edge", "manual"); err != nil || m.State != ctrl.StateDone {
		logs(t, tb)
		t.Fatalf("migrate to edge over mTLS: %+v %v", m, err)
	}
	markers := secretMarkers(tb)
	// What the processes must never print: the secret values themselves
	// (the user token, each cluster's NATS password) and private keys.
	values := []string{tb.State().Secrets.UserToken, "PRIVATE KEY"}
	work, err := tb.WorkDir()
	if err != nil {
		t.Fatal(err)
	}
	pws, _ := filepath.Glob(filepath.Join(work, "nats", "password-*"))
	for _, f := range pws {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if pw := strings.TrimSpace(string(b)); pw != "" {
			values = append(values, pw)
			markers = append(markers, pw)
		}
	}
	if len(pws) == 0 {
		t.Fatalf("no NATS password file under %s", work)
	}
	copies, logged := 0, 0
	for _, p := range tb.State().Procs {
		if b, err := os.ReadFile(p.Log); err == nil {
			logged++
			for _, v := range values {
				if bytes.Contains(b, []byte(v)) {
					t.Errorf("%s: its log (%s) holds a secret (%.4s...)", p.Name, p.Log, v)
				}
			}
		}
		argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		for _, m := range markers {
			if bytes.Contains(argv, []byte(m)) {
				t.Errorf("%s argv holds %q: %q", p.Name, m, bytes.ReplaceAll(argv, []byte{0}, []byte{' '}))
			}
		}
		if !strings.HasPrefix(p.Name, "roam-ctrl-") {
			continue
		}
		for _, c := range childrenOf(t, p.PID) {
			env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", c))
			if err != nil {
				continue // gone meanwhile
			}
			copies++
			for _, m := range markers {
				if bytes.Contains(env, []byte(m)) {
					t.Errorf("copy %d of %s: environment holds %q", c, p.Name, m)
				}
			}
			for _, kv := range bytes.Split(env, []byte{0}) {
				name := strings.ToUpper(string(bytes.SplitN(kv, []byte("="), 2)[0]))
				for _, w := range []string{"TOKEN", "SECRET", "PASSWORD", "KEY", "CREDENTIAL"} {
					if strings.Contains(name, w) {
						t.Errorf("copy %d of %s: environment holds %s", c, p.Name, name)
					}
				}
			}
		}
	}
	if copies == 0 {
		t.Fatal("no deployed copy found under any controller")
	}
	if logged == 0 {
		t.Fatal("no process log read")
	}
	// A peer route without a client certificate, from the camera's host.
	cam, _ := tb.Client("camera")
	home, _ := tb.Cluster("home")
	c := tb.HTTPSClient(cam.NS, 10*time.Second)
	resp, err := c.Get(home.CtrlURL() + "/v1/peer/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("peer route without a certificate: %s", resp.Status)
	}
}
