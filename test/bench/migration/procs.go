package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// pidsIn are the processes of ns whose command (comm) is one of comms.
func pidsIn(ns string, comms ...string) ([]int, error) {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil, fmt.Errorf("list processes of %s: %w", ns, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		comm, err := os.ReadFile("/proc/" + f + "/comm")
		if err != nil {
			continue // ended meanwhile
		}
		c := strings.TrimSpace(string(comm))
		for _, want := range comms {
			if c == want {
				pid, _ := strconv.Atoi(f)
				pids = append(pids, pid)
			}
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("no %s in %s", strings.Join(comms, " or "), ns)
	}
	return pids, nil
}
