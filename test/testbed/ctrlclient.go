package testbed

import (
	"time"

	"github.com/roamnet/roam/ctrl/client"
)

// CtrlClient talks to one controller's REST API (ctrl/client).
type CtrlClient = client.Client

// HTTPError is a controller's answer outside 2xx.
type HTTPError = client.HTTPError

// Ctrl returns a client for cluster's controller, dialling from its node
// namespace.
func (tb *Testbed) Ctrl(cluster string) (*CtrlClient, error) {
	c, err := tb.Cluster(cluster)
	if err != nil {
		return nil, err
	}
	return client.New(c.CtrlURL(), tb.State().Secrets.UserToken, tb.HTTPSClient(c.NS, 60*time.Second)), nil
}
