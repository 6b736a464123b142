package migrate

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/dataplane/lb"
)

// verifyTimeout bounds each check of a new copy.
const verifyTimeout = 3 * time.Second

// verify checks that the new copy answers through its endpoints (TCP
// connect; an HTTP GET for the demo service).
func verify(ctx context.Context, d ctrl.Descriptor, eps []netip.AddrPort) error {
	for i, p := range d.Ports {
		if p.Protocol != lb.TCP || i >= len(eps) {
			continue
		}
		addr := eps[i].String()
		if d.Demo {
			if err := verifyHTTP(ctx, "http://"+addr+"/"); err != nil {
				return fmt.Errorf("verify %s: %w", addr, err)
			}
			continue
		}
		dl := net.Dialer{Timeout: verifyTimeout}
		c, err := dl.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("verify %s: %w", addr, err)
		}
		c.Close()
	}
	return nil
}

func verifyHTTP(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	// No keep-alive: a pooled connection would hold the new copy busy
	// when it is later stopped.
	c := http.Client{Timeout: verifyTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}
