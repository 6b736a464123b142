package testbed

import (
	"context"
	"fmt"
	"net/http"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape reads one series of a controller's /metrics (on its API's TLS
// listener): the metric name, with label peer when peer is not empty.
func Scrape(ctx context.Context, cl *http.Client, ctrlURL, name, peer string) (float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ctrlURL+"/metrics", nil)
	resp, err := cl.Do(req)
	if err != nil {
		return 0, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("scrape metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("parse metrics: %w", err)
	}
	mf := mfs[name]
	if mf == nil {
		return 0, fmt.Errorf("metrics: no %s", name)
	}
	for _, m := range mf.GetMetric() {
		if peer == "" {
			return m.GetCounter().GetValue() + m.GetGauge().GetValue(), nil
		}
		for _, l := range m.GetLabel() {
			if l.GetName() == "peer" && l.GetValue() == peer {
				return m.GetGauge().GetValue(), nil
			}
		}
	}
	return 0, fmt.Errorf("metrics: no %s for peer %q", name, peer)
}
