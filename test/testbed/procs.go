package testbed

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/test/netns"
)

type runningProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs bin with args inside namespace ns, in its own process group,
// stdout and stderr appended to a log file under the testbed's work dir.
// The process is recorded in the state file before Start returns, so Down
// (or a later Up) stops it. health, if set, is a URL inside ns that
// WaitHealthy polls.
func (tb *Testbed) Start(ns, name, bin string, args []string, health string) (Proc, error) {
	dir, err := tb.workDir()
	if err != nil {
		return Proc{}, err
	}
	logPath := filepath.Join(dir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return Proc{}, fmt.Errorf("open log %s: %w", logPath, err)
	}
	defer lf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := netns.Do(ns, cmd.Start); err != nil {
		return Proc{}, fmt.Errorf("start %s in %s: %w", name, ns, err)
	}
	rp := &runningProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(rp.done) }()
	p := Proc{Name: name, NS: ns, PID: cmd.Process.Pid, Binary: bin, Args: args, Log: logPath, Health: health}
	tb.mu.Lock()
	tb.st.Procs = append(tb.st.Procs, p)
	tb.procs[p.PID] = rp
	err = tb.save()
	tb.mu.Unlock()
	tb.log.Info("started", "proc", name, "pid", p.PID, "netns", ns, "log", logPath)
	return p, err
}

// AddPinPath records a bpffs path Down must remove.
func (tb *Testbed) AddPinPath(p string) error {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.st.PinPaths = append(tb.st.PinPaths, p)
	return tb.save()
}

func (tb *Testbed) workDir() (string, error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if tb.st.WorkDir != "" {
		return tb.st.WorkDir, nil
	}
	d, err := os.MkdirTemp("", "roam-testbed-"+tb.st.Name+"-")
	if err != nil {
		return "", fmt.Errorf("create work dir: %w", err)
	}
	tb.st.WorkDir = d
	return d, tb.save()
}

// WorkDir is where logs and built binaries go (a temp dir removed on Down).
func (tb *Testbed) WorkDir() (string, error) { return tb.workDir() }

// Exited reports whether a process this testbed started has exited, with
// the tail of its log when it has.
func (tb *Testbed) Exited(p Proc) (bool, string) {
	tb.mu.Lock()
	rp := tb.procs[p.PID]
	tb.mu.Unlock()
	if rp != nil {
		select {
		case <-rp.done:
			return true, tailFile(p.Log, 2000)
		default:
			return false, ""
		}
	}
	if procAlive(p) {
		return false, ""
	}
	return true, tailFile(p.Log, 2000)
}

func tailFile(p string, n int) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// procAlive reports whether pid still runs the recorded binary (so a
// recycled pid is never mistaken for ours).
func procAlive(p Proc) bool {
	if p.PID <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
	if err != nil || len(b) == 0 {
		return false
	}
	argv0, _, _ := strings.Cut(string(b), "\x00")
	if st, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/stat"); err == nil {
		// zombie: gone for our purpose
		if i := strings.LastIndexByte(string(st), ')'); i > 0 && i+2 < len(st) && st[i+2] == 'Z' {
			return false
		}
	}
	return argv0 == p.Binary
}

// stopProc ends p's process group: SIGTERM, then SIGKILL after 5 s.
func stopProc(ctx context.Context, p Proc, rp *runningProc) error {
	alive := func() bool {
		if rp != nil {
			select {
			case <-rp.done:
				return false
			default:
				return true
			}
		}
		return procAlive(p)
	}
	if !alive() {
		// The leader is gone; its group may still hold children.
		_ = unix.Kill(-p.PID, unix.SIGKILL)
		return nil
	}
	_ = unix.Kill(-p.PID, unix.SIGTERM)
	_ = unix.Kill(p.PID, unix.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for alive() && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			deadline = time.Now()
		case <-time.After(50 * time.Millisecond):
		}
	}
	_ = unix.Kill(-p.PID, unix.SIGKILL)
	if alive() {
		_ = unix.Kill(p.PID, unix.SIGKILL)
		deadline = time.Now().Add(5 * time.Second)
		for alive() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive() {
			return fmt.Errorf("stop %s (pid %d): still running", p.Name, p.PID)
		}
	}
	return nil
}

// killNSProcs SIGKILLs every process whose network namespace is the named
// one (children the testbed's processes spawned, e.g. service copies).
func killNSProcs(ns string, log *slog.Logger) {
	var want unix.Stat_t
	if err := unix.Stat(filepath.Join(netns.Dir, ns), &want); err != nil {
		return
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 1 {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat("/proc/"+e.Name()+"/ns/net", &st); err != nil {
			continue
		}
		if st.Ino == want.Ino && st.Dev == want.Dev {
			log.Info("killing process left in netns", "netns", ns, "pid", pid)
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// HTTPClient returns a client whose connections are opened inside the
// named namespace (so it reaches addresses only that namespace can).
func HTTPClient(ns string, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return netns.Dial(ctx, ns, network, addr)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// WaitHealthy polls url from inside ns until it answers 200, the process
// exits, or ctx ends.
func (tb *Testbed) WaitHealthy(ctx context.Context, p Proc, url string) error {
	c := tb.HTTPSClient(p.NS, 2*time.Second)
	defer c.CloseIdleConnections()
	var last error
	for {
		if ended, tail := tb.Exited(p); ended {
			return fmt.Errorf("%s exited before it was healthy; log %s:\n%s", p.Name, p.Log, tail)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s at %s: %w (last: %v); log %s", p.Name, url, ctx.Err(), last, p.Log)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
