package local

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/roamnet/roam/dataplane/lb"
)

// A copy is ready only when its own process holds the socket its port
// names: a port that merely accepts may be another tenant's (migrating a
// port-80 service to a cluster that already runs another one), and the
// readiness probe would then pass while the new process fails to bind.
// The kernel's socket tables (/proc/<pid>/net/{tcp,udp}{,6}, in the
// copy's network namespace) name the inode of each listening or bound
// socket; /proc/<pid>/fd of every process in the copy's process group
// names the sockets it holds.

// boundInodes returns the inodes of the sockets listening on (TCP) or
// bound to (UDP) port in pid's network namespace.
func boundInodes(pid int, port uint16, proto lb.Proto) (map[uint64]bool, error) {
	files, state := []string{"tcp", "tcp6"}, "0A" // TCP_LISTEN
	if proto == lb.UDP {
		files, state = []string{"udp", "udp6"}, "07" // TCP_CLOSE: an unconnected, bound UDP socket
	}
	out := map[uint64]bool{}
	hexPort := fmt.Sprintf(":%04X", port)
	for _, f := range files {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			if os.IsNotExist(err) {
				continue // no IPv6
			}
			return nil, fmt.Errorf("read socket table: %w", err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Scan() // header
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || !strings.HasSuffix(fs[1], hexPort) || fs[3] != state {
				continue
			}
			ino, err := strconv.ParseUint(fs[9], 10, 64)
			if err == nil && ino != 0 {
				out[ino] = true
			}
		}
	}
	return out, nil
}

// groupPIDs lists the processes of process group pgid (the copy and the
// children it started).
func groupPIDs(pgid int) []int {
	pids := []int{pgid}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return pids
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == pgid {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fs := strings.Fields(string(stat[i+1:]))
		if len(fs) >= 3 && fs[2] == strconv.Itoa(pgid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// holds reports whether a process of group pgid holds one of inodes.
func holds(pgid int, inodes map[uint64]bool) bool {
	if len(inodes) == 0 {
		return false
	}
	// The leader first (the usual case), then the rest of its group.
	if pidHolds(pgid, inodes) {
		return true
	}
	for _, pid := range groupPIDs(pgid)[1:] {
		if pidHolds(pid, inodes) {
			return true
		}
	}
	return false
}

func pidHolds(pid int, inodes map[uint64]bool) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, fd := range fds {
		l, err := os.Readlink(dir + "/" + fd.Name())
		if err != nil || !strings.HasPrefix(l, "socket:[") {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]"), 10, 64)
		if err == nil && inodes[ino] {
			return true
		}
	}
	return false
}

// ownsPort reports whether the copy whose process group leader is pid
// holds the socket of port.
func ownsPort(pid int, port uint16, proto lb.Proto) bool {
	if pid <= 0 {
		return false
	}
	inodes, err := boundInodes(pid, port, proto)
	if err != nil {
		return false
	}
	return holds(pid, inodes)
}

// copyMark is the environment variable that marks a copy as started by the
// backend whose state file for it is its value.
const copyMark = "ROAM_COPY_STATE"

// reapUnrecorded kills the copies an earlier run of this backend started
// but was killed before recording (between the start and the state
// file): nothing adopts them, nothing tracks them, and they hold their
// ports, so the next copy of that service could never bind (a duplicate
// no record owns). They are found by copyMark, in this network
// namespace, as process group leaders; their Deploy never returned, so
// no one relies on them.
func (b *Backend) reapUnrecorded() {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return
	}
	adopted := map[int]bool{}
	for _, r := range b.runs {
		adopted[r.adopt] = true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	prefix := []byte(copyMark + "=" + b.cfg.StateDir + string(os.PathSeparator))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || adopted[pid] || pid == os.Getpid() {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || ns != self {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !bytes.Contains(env, prefix) {
			continue
		}
		if pgid, err := syscall.Getpgid(pid); err != nil || pgid != pid {
			continue
		}
		b.log.Warn("killing a copy an earlier run started but never recorded", "pid", pid)
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		for i := 0; i < 200 && syscall.Kill(pid, 0) == nil; i++ {
			if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
				if i := bytes.LastIndexByte(st, ')'); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
					break // a zombie holds no socket
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
