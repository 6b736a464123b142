//go:build k8s

package k8s

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Two clusters, each a real control plane with kwok nodes: "a" (the
// all-in-one overlay, home of the services) and "b" (a member).
var clusters = map[string]*ControlPlane{}

// binDir is where tools/build.sh put the control plane (make test-k8s
// passes K8S_BIN).
func binDir() string {
	if d := os.Getenv("K8S_BIN"); d != "" {
		return d
	}
	h, _ := os.UserHomeDir()
	return filepath.Join(h, ".cache", "roam-k8s", "v1.37.2")
}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "roam-k8s-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []string
	for _, o := range []Options{
		{Name: "a", Nodes: 3, NodeNet: 1},
		{Name: "b", Nodes: 2, NodeNet: 2},
	} {
		o.Bin, o.Dir = binDir(), filepath.Join(dir, o.Name)
		wg.Go(func() {
			cp, err := Start(ctx, o)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err.Error())
				return
			}
			clusters[o.Name] = cp
		})
	}
	wg.Wait()
	code := 1
	if len(errs) == 0 {
		fmt.Fprintf(os.Stderr, "test/k8s: two control planes up in %s (a: %s, b: %s)\n",
			time.Since(start).Round(time.Millisecond), clusters["a"].URL, clusters["b"].URL)
		code = m.Run()
	} else {
		fmt.Fprintln(os.Stderr, strings.Join(errs, "\n"))
	}

	// Everything started is stopped by PID, and nothing that names the
	// state directory may be left running.
	var pids []int
	for _, cp := range clusters {
		if err := cp.Exited(); err != nil {
			fmt.Fprintf(os.Stderr, "test/k8s: a component died during the tests: %v%s\n", err, cp.logTails())
			code = 1
		}
		pids = append(pids, cp.PIDs()...)
		cp.Stop()
	}
	if left := Leftovers(dir); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "test/k8s: processes left behind:\n%s\n", strings.Join(left, "\n"))
		code = 1
	} else {
		fmt.Fprintf(os.Stderr, "test/k8s: stopped %d processes (pids %v), none left\n", len(pids), pids)
	}
	return code
}

// kubectl runs the built kubectl against cp as its admin.
func kubectl(ctx context.Context, cp *ControlPlane, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(cp.Bin, "kubectl"), append([]string{"--kubeconfig=" + cp.Kubeconfig}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s%s", strings.Join(args, " "), err, errb.String(), out.String())
	}
	return out.String(), nil
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
