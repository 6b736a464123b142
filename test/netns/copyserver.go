package netns

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
)

// Ports a CopyServer listens on at each of its addresses.
const (
	CopyTCPPort = 80
	CopyUDPPort = 7000
)

// CopyServer is one copy of a service at one location, for the tests and
// benchmarks that move it: in namespace ns, TCP on port 80 and UDP on port
// 7000 of each address. TCP answers a line "get N" with N bytes (N up to
// 1 MiB), a line "bulk N" and the N bytes after it with those bytes, and any
// other line L with "<name> <client address> L"; UDP answers a datagram D
// with "<name> <client address> D". It counts the client addresses it sees.
type CopyServer struct {
	name  string
	lns   []net.Listener
	pcs   []net.PacketConn
	mu    sync.Mutex
	conns []net.Conn
	seen  map[netip.Addr]int
	wg    sync.WaitGroup
}

// StartCopyServer starts a CopyServer called name in ns on addrs.
func StartCopyServer(ns, name string, addrs ...netip.Addr) (*CopyServer, error) {
	s := &CopyServer{name: name, seen: map[netip.Addr]int{}}
	for _, a := range addrs {
		ln, err := Listen(ns, "tcp", netip.AddrPortFrom(a, CopyTCPPort).String())
		if err != nil {
			s.Close()
			return nil, err
		}
		pc, err := ListenPacket(ns, "udp", netip.AddrPortFrom(a, CopyUDPPort).String())
		if err != nil {
			ln.Close()
			s.Close()
			return nil, err
		}
		s.lns, s.pcs = append(s.lns, ln), append(s.pcs, pc)
		s.wg.Add(2)
		go s.accept(ln)
		go s.udp(pc)
	}
	return s, nil
}

// Seen is how many connections and datagrams came from each client
// address (IPv4 addresses unmapped).
func (s *CopyServer) Seen() map[netip.Addr]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[netip.Addr]int, len(s.seen))
	for a, n := range s.seen {
		m[a] = n
	}
	return m
}

func (s *CopyServer) saw(a netip.Addr) {
	s.mu.Lock()
	s.seen[a]++
	s.mu.Unlock()
}

func (s *CopyServer) accept(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, c)
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *CopyServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	s.saw(remote)
	r := bufio.NewReader(c)
	var out []byte
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "get "); ok {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 1<<20 {
				return
			}
			if len(out) < n {
				out = make([]byte, 1<<20)
			}
			if _, err := c.Write(out[:n]); err != nil {
				return
			}
			continue
		}
		var n int
		if _, err := fmt.Sscanf(line, "bulk %d", &n); err == nil {
			buf := make([]byte, n)
			if _, err := io.ReadFull(r, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
			continue
		}
		fmt.Fprintf(c, "%s %s %s\n", s.name, remote, line)
	}
}

func (s *CopyServer) udp(pc net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		remote := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
		s.saw(remote)
		_, _ = pc.WriteTo(fmt.Appendf(nil, "%s %s %s", s.name, remote, buf[:n]), from)
	}
}

// Close stops the server: its listeners and every connection.
func (s *CopyServer) Close() {
	for _, ln := range s.lns {
		ln.Close()
	}
	for _, pc := range s.pcs {
		pc.Close()
	}
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
