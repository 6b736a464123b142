package dataplane

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// redirectTextSymbols are the kernel functions whose frees of a packet are
// a tc redirect's failure (bpf/counters.h roam_tc_redirect_drop): the
// redirect itself (its cold part too), and the plain redirect's transmit.
var redirectTextSymbols = []string{"skb_do_redirect", "skb_do_redirect.cold", "__bpf_redirect"}

// redirectText reads where redirectTextSymbols lie in kernel text from
// kallsyms (path: /proc/kallsyms): for each, [its address, the next
// symbol's), as roam_tc_redirect_text holds them. A symbol the kernel does
// not have (inlined), or addresses it hides (kptr_restrict), is left 0, 0.
func redirectText(path string) ([8]uint64, error) {
	var out [8]uint64
	f, err := os.Open(path)
	if err != nil {
		return out, fmt.Errorf("read kernel symbols: %w", err)
	}
	defer f.Close()
	var addrs []uint64
	start := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		a, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil || a == 0 {
			continue
		}
		addrs = append(addrs, a)
		for _, s := range redirectTextSymbols {
			if fields[2] == s && len(fields) == 3 {
				start[s] = a
			}
		}
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("read kernel symbols: %w", err)
	}
	for i, s := range redirectTextSymbols {
		a, ok := start[s]
		if !ok {
			continue
		}
		end := ^uint64(0)
		for _, b := range addrs {
			if b > a && b < end {
				end = b
			}
		}
		if end != ^uint64(0) {
			out[2*i], out[2*i+1] = a, end
		}
	}
	return out, nil
}
