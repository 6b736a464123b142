// Command roam-ctrl is roam's cluster controller: REST API, resource
// records, the five-stage migration engine, forwarding, fail-safe, hellos to
// the meta-orchestrator. `roam-ctrl demo --listen ADDR:PORT --cluster ID`
// runs the built-in demo service.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/roamnet/roam/ctrl/api"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/backend/kube"
	"github.com/roamnet/roam/ctrl/backend/local"
	"github.com/roamnet/roam/ctrl/controller"
	"github.com/roamnet/roam/ctrl/demo"
	"github.com/roamnet/roam/ctrl/migrate"
	"github.com/roamnet/roam/ctrl/netprobe"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane/lb"
	"github.com/roamnet/roam/internal/cli"
	"github.com/roamnet/roam/internal/schedslice"
)

func main() {
	cli.Main("roam-ctrl", func(ctx context.Context, args []string) error {
		if len(args) > 0 && args[0] == "demo" {
			return demo.Main(ctx, args[1:])
		}
		return run(ctx, args)
	})
}

func parseMap(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("parse %q: want comma-separated k=v pairs", s)
		}
		m[k] = v
	}
	return m, nil
}

func parseAddr(name, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, fmt.Errorf("--%s: %w", name, err)
	}
	return a, nil
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("roam-ctrl", flag.ContinueOnError)
	var (
		clusterID  = fs.String("cluster-id", "", "this cluster's id (required)")
		tier       = fs.String("tier", "edge", "tier: deep-edge, edge, cloud, ...")
		labels     = fs.String("labels", "", "labels k=v,...")
		apiAddr    = fs.String("api-addr", ":8080", "REST API, /metrics, /healthz, /readyz listen address")
		advertise  = fs.String("advertise-url", "", "URL peers reach this API at (default from --api-addr and --data-addr)")
		natsURL    = fs.String("nats-url", "", "meta-orchestrator NATS URL (empty: no MO; destinations from --peers)")
		natsUser   = fs.String("nats-user", "", "NATS user (default the cluster id)")
		natsPass   = fs.String("nats-password", "", "NATS password (prefer --nats-password-file: argv is visible in ps)")
		natsPassF  = fs.String("nats-password-file", "", "file holding the NATS password")
		natsCA     = fs.String("nats-tls-ca", "", "CA (PEM) of the MO's NATS certificate: TLS required")
		natsCert   = fs.String("nats-tls-cert", "", "client certificate (PEM) for an MO that asks for one")
		natsKey    = fs.String("nats-tls-key", "", "client key (PEM) for --nats-tls-cert")
		agents     = fs.String("agents", "", "comma list of agent API URLs, e.g. https://10.0.0.5:9701 (mutual TLS with --tls-dir)")
		tlsDir     = fs.String("tls-dir", "", "this cluster's identity: ca.crt, tls.crt, tls.key (roamctl cert issue; a kubernetes.io/tls Secret); re-read when they change")
		usersFile  = fs.String("users-file", "", "API users, one 'NAME ROLE sha256:HASH' a line (roamctl token create); re-read when it changes")
		insecure   = fs.Bool("insecure", false, "serve plain HTTP without --tls-dir (no peer call is made or accepted; tests only)")
		allowCmd   = fs.Bool("allow-command", false, "let users deploy a service given as a command line (runs on this host with the local backend); peers never may")
		frontend   = fs.String("frontend-addr", "", "address users hit at this cluster")
		dataAddr   = fs.String("data-addr", "", "address where this cluster exposes foreign copies")
		listenAddr = fs.String("listen-addr", "", "address local copies bind (default every address)")
		backendF   = fs.String("backend", "local", "local or kubernetes")
		kubeconfig = fs.String("kubeconfig", "", "kubeconfig for --backend kubernetes (empty: in-cluster)")
		namespace  = fs.String("namespace", "", "namespace for --backend kubernetes")
		storePath  = fs.String("store", "", "bbolt file (default roam-ctrl-<id>.db)")
		stateDir   = fs.String("state-dir", "", "local backend: where running copies are recorded so a restarted controller adopts them (default <store>.copies; \"none\": copies die with the controller)")
		hello      = fs.Duration("hello-interval", time.Second, "hello period")
		failsafe   = fs.Duration("failsafe-after", 3*time.Second, "take services home after an abroad cluster is unreachable this long")
		drain      = fs.Duration("drain-timeout", 10*time.Second, "longest wait for old flows after a commit")
		peers      = fs.String("peers", "", "static controller directory id=url,... (besides the MO's view)")
		capCPU     = fs.Int64("capacity-cpu", 4000, "local backend: milli-CPUs")
		capMem     = fs.Int64("capacity-memory", 8192, "local backend: memory MB")
		capPods    = fs.Int64("capacity-pods", 64, "local backend: copies")
		logLevel   = fs.String("log-level", "info", "debug, info, warn, error")
		linksFile  = fs.String("links-file", "", "JSON list of links [{\"peer\":\"b\",\"bandwidth_mbps\":100,\"rtt_ms\":5,\"up\":true}], re-read at every hello: overrides what is measured toward those peers")
		probeAddr  = fs.String("probe-addr", ":8081", "where peers probe this cluster (UDP echo and TCP bulk, same port) and from where it measures its paths to them; empty: measure nothing")
		probeHot   = fs.Duration("probe-bulk-interval", time.Second, "bandwidth probe period toward peers hosting this cluster's services (a slow path's transfer, longer, is repeated less often: at most 10% of the time)")
		probeCold  = fs.Duration("probe-cold-interval", 10*time.Second, "bandwidth probe period toward the other placement candidates")
		policyEv   = fs.Duration("policy-interval", 250*time.Millisecond, "how often the zero-touch triggers look at the measured paths")
		cooldown   = fs.Duration("policy-cooldown", 30*time.Second, "least time between two moves of one service the triggers start")
		hold       = fs.Duration("trigger-hold", 5*time.Second, "how long a better place must stay better before the service moves there")
		margin     = fs.Float64("trigger-margin", 0.3, "a better place must meet the need, and beat the current path in its tier, by this fraction")
		locator    = fs.String("srv6-locator", "", "this cluster's SRv6 locator, an IPv6 prefix /16-/96 announced in hellos (nodes' SIDs come from it)")
		redirect   = fs.String("redirect-mode", "nat", "default redirect of services whose descriptor names none: nat or srv6 (needs --srv6-locator)")
		direct     = fs.Bool("srv6-direct-return", false, "SRv6 services whose descriptor says nothing answer clients directly from abroad (direct server return; see README for its risks)")
		slice      = fs.Duration("sched-slice", 0, "the scheduler slice the controller's threads ask for (Linux 6.12 and later; 0: the kernel's default; else 100µs to 100ms): "+
			"a short one lets an agent's answer woken on a busy node preempt the running thread instead of waiting out its slice (bench-migration measures 100µs beside the default)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	slog.SetDefault(log)
	if err := schedslice.Check(*slice); err != nil {
		return fmt.Errorf("--sched-slice: %w", err)
	}
	if _, err := schedslice.Apply(*slice); err != nil {
		log.Warn("scheduler slice not set: agents' answers on a busy node wait for a thread's slice to end", "err", err)
	}
	if *clusterID == "" {
		return errors.New("--cluster-id is required")
	}
	var err error
	var src *pki.Source
	switch {
	case *tlsDir != "":
		if src, err = pki.Load(*tlsDir); err != nil {
			return err
		}
		if id := src.ID(); id != (pki.ID{Cluster: *clusterID}) {
			return fmt.Errorf("--tls-dir: the certificate names %s, not this cluster (%s)", id, pki.ID{Cluster: *clusterID})
		}
	case !*insecure:
		return errors.New("--tls-dir is required (roamctl cert issue makes one); --insecure serves plain HTTP for tests")
	default:
		log.Warn("--insecure: plain HTTP, peer calls disabled")
	}
	var users *api.Users
	if *usersFile != "" {
		if users, err = api.LoadUsers(*usersFile); err != nil {
			return err
		}
	} else {
		log.Warn("no --users-file: every user route is refused")
	}
	natsPassword := *natsPass
	if *natsPassF != "" {
		if natsPassword, err = pki.ReadSecretFile(*natsPassF); err != nil {
			return fmt.Errorf("--nats-password-file: %w", err)
		}
	}
	lab, err := parseMap(*labels)
	if err != nil {
		return fmt.Errorf("--labels: %w", err)
	}
	pm, err := parseMap(*peers)
	if err != nil {
		return fmt.Errorf("--peers: %w", err)
	}
	fa, err := parseAddr("frontend-addr", *frontend)
	if err != nil {
		return err
	}
	da, err := parseAddr("data-addr", *dataAddr)
	if err != nil {
		return err
	}
	la, err := parseAddr("listen-addr", *listenAddr)
	if err != nil {
		return err
	}
	if !da.IsValid() {
		da = fa
	}
	var loc netip.Prefix
	if *locator != "" {
		if loc, err = netip.ParsePrefix(*locator); err != nil {
			return fmt.Errorf("--srv6-locator: %w", err)
		}
	}
	mode, err := lb.ParseMode(*redirect)
	if err != nil {
		return fmt.Errorf("--redirect-mode: %w", err)
	}
	var be backend.Backend
	switch *backendF {
	case "local":
		if !da.IsValid() {
			return errors.New("--backend local needs --data-addr or --frontend-addr")
		}
		sd := *stateDir
		switch sd {
		case "":
			sp := *storePath
			if sp == "" {
				sp = "roam-ctrl-" + *clusterID + ".db"
			}
			sd = sp + ".copies"
		case "none":
			sd = ""
		}
		lbk, err := local.New(local.Config{ClusterID: *clusterID, ListenAddr: la, ExposeAddr: da, StateDir: sd,
			MilliCPU: *capCPU, MemoryMB: *capMem, Pods: *capPods, Logger: log})
		if err != nil {
			return err
		}
		defer lbk.Close()
		be = lbk
	case "kubernetes":
		kcfg := kube.Config{Namespace: *namespace, DataAddr: da}
		var kb *kube.Backend
		if *kubeconfig == "" {
			kb, err = kube.NewInCluster(kcfg)
		} else {
			kb, err = kube.NewFromKubeconfig(*kubeconfig, kcfg)
		}
		if err != nil {
			return err
		}
		be = kb
	default:
		return fmt.Errorf("--backend %q: want local or kubernetes", *backendF)
	}
	var agentURLs []string
	if *agents != "" {
		agentURLs = strings.Split(*agents, ",")
	}
	c, err := controller.New(ctx, controller.Config{NATSTLSCA: *natsCA, NATSTLSCert: *natsCert, NATSTLSKey: *natsKey,
		ClusterID: *clusterID, Tier: *tier, Labels: lab, APIAddr: *apiAddr,
		AdvertiseURL: *advertise, NATSURL: *natsURL, NATSUser: *natsUser, NATSPassword: natsPassword, Agents: agentURLs,
		FrontendAddr: fa, DataAddr: da, StorePath: *storePath, HelloInterval: *hello,
		FailsafeAfter: *failsafe, DrainTimeout: *drain, TLS: src, Users: users, AllowCommand: *allowCmd, Peers: pm,
		Backend: be, LinksFile: *linksFile, ProbeAddr: *probeAddr, Probe: netprobe.Config{BulkInterval: *probeHot, ColdBulkInterval: *probeCold}, PolicyInterval: *policyEv, PolicyCooldown: *cooldown,
		Trigger: migrate.TriggerConfig{Hold: *hold, Margin: *margin}, Logger: log, Locator: loc, RedirectMode: mode, SRv6DirectReturn: *direct})
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	return c.Close()
}
