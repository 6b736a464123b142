// Command roam-meta runs roam's meta-orchestrator: an embedded NATS server
// (or a connection to an external one), the cluster registry fed by hellos
// and the placement endpoint. See meta/README.md for subjects and auth.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/internal/cli"
	"github.com/roamnet/roam/meta"
)

func main() { cli.Main("roam-meta", run) }

// run starts the MO with args and serves until ctx ends.
func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("roam-meta", flag.ContinueOnError)
	listen := fs.String("listen", "0.0.0.0:4222", "embedded NATS client address")
	natsURL := fs.String("nats-url", "", "use this external NATS instead of the embedded one")
	natsUser := fs.String("nats-user", "", "user for --nats-url (or the meta user of --auth-file)")
	natsPassword := fs.String("nats-password", "", "password for --nats-url (prefer --nats-password-file: argv is visible in ps)")
	natsPasswordFile := fs.String("nats-password-file", "", "file holding the password for --nats-url")
	storeDir := fs.String("store-dir", "", "JetStream directory (registry, audit log); empty: memory only")
	httpAddr := fs.String("http-addr", ":9600", "serves /metrics, /healthz, /readyz, /v1/clusters, /v1/explain")
	policyName := fs.String("policy", "least-loaded", "placement policy: least-loaded or tier")
	interval := fs.Duration("hello-interval", time.Second, "expected hello interval")
	downAfter := fs.Int("down-after", 3, "missed hellos after which a cluster is down")
	authFile := fs.String("auth-file", "", "per-cluster NATS users (YAML or JSON, see meta/README.md)")
	tlsCert := fs.String("tls-cert", "", "TLS certificate (PEM) for the embedded NATS server; re-read when the file changes")
	tlsKey := fs.String("tls-key", "", "TLS key (PEM)")
	tlsCA := fs.String("tls-ca", "", "CA (PEM) to verify client certificates (embedded) or the server (--nats-url)")
	insecure := fs.Bool("insecure", false, "let the embedded NATS run without TLS or without --auth-file (anyone reaching it can publish any cluster's hellos)")
	name := fs.String("name", "", "replica name (default hostname and a random suffix)")
	clusterListen := fs.String("cluster-listen", "", "make the embedded NATS a cluster node accepting routes here (host:port)")
	routes := fs.String("routes", "", "comma-separated nats://host:port of the cluster's nodes (with --cluster-listen)")
	clusterName := fs.String("cluster-name", "roam-meta", "NATS cluster name, the same on every node")
	auditSpool := fs.String("audit-spool", "", "this replica's own directory where audit records wait for the stream's ack, republished at the next start after a crash (default <store-dir>/audit-spool; none without --store-dir)")
	jsReplicas := fs.Int("js-replicas", 0, "replicas of the view bucket and audit stream (0: 3 on a NATS cluster, else 1)")
	warmUp := fs.Duration("warm-up", 0, "hellos heard before answering placements, after start or reconnect (0: 1.5 hello intervals)")
	reservationTTL := fs.Duration("reservation-ttl", time.Minute, "a placement counts against its destination this long unless its hellos show it first (negative: off)")
	if err := fs.Parse(args); err != nil {
		return err
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// GOGC 400 and a memory limit under the cgroup's, unless set in the
	// environment (meta/gctune.go says why).
	gogc, memLimit := meta.TuneGC()
	log.Info("garbage collector", "gogc", gogc, "gomemlimit", meta.MemLimitText(memLimit))
	policy, err := meta.NewPolicy(*policyName)
	if err != nil {
		return err
	}
	cfg := meta.ServerConfig{
		Listen: *listen, NATSURL: *natsURL, StoreDir: *storeDir, HTTPAddr: *httpAddr,
		Policy: policy, HelloInterval: *interval, DownAfter: *downAfter, Name: *name, Logger: log,
		Replicas: *jsReplicas, WarmUp: *warmUp, ReservationTTL: *reservationTTL, AuditSpool: *auditSpool,
	}
	if *clusterListen != "" {
		if *natsURL != "" {
			return errors.New("--cluster-listen makes the embedded server a cluster node: not with --nats-url")
		}
		cfg.Cluster = &meta.ClusterConfig{Name: *clusterName, Listen: *clusterListen}
		for _, r := range strings.Split(*routes, ",") {
			if r = strings.TrimSpace(r); r != "" {
				cfg.Cluster.Routes = append(cfg.Cluster.Routes, r)
			}
		}
	}
	if *authFile != "" {
		if cfg.Auth, err = meta.LoadAuthFile(*authFile); err != nil {
			return err
		}
	}
	if *natsPasswordFile != "" {
		b, err := os.ReadFile(*natsPasswordFile)
		if err != nil {
			return fmt.Errorf("read --nats-password-file: %w", err)
		}
		*natsPassword = strings.TrimSpace(string(b))
	}
	if *natsUser != "" {
		cfg.NATSOptions = append(cfg.NATSOptions, nats.UserInfo(*natsUser, *natsPassword))
	}
	if *tlsCert != "" || *tlsKey != "" {
		if *natsURL != "" {
			return errors.New("--tls-cert/--tls-key apply to the embedded server; with --nats-url use --tls-ca")
		}
		kp, err := meta.NewKeyPairReloader(*tlsCert, *tlsKey)
		if err != nil {
			return err
		}
		cfg.TLS = &tls.Config{GetCertificate: kp.GetCertificate, MinVersion: tls.VersionTLS12}
	}
	if *natsURL == "" && !*insecure {
		var missing []string
		if cfg.TLS == nil {
			missing = append(missing, "--tls-cert/--tls-key")
		}
		if cfg.Auth == nil {
			missing = append(missing, "--auth-file")
		}
		if len(missing) > 0 {
			return fmt.Errorf("the embedded NATS needs %s (per-cluster users and TLS: see meta/README.md), or --insecure on a trusted network",
				strings.Join(missing, " and "))
		}
	}
	if *natsURL == "" && *insecure && (cfg.TLS == nil || cfg.Auth == nil) {
		log.Warn("--insecure: the embedded NATS runs without TLS or per-cluster users; anyone reaching it can publish any cluster's hellos",
			"tls", cfg.TLS != nil, "auth", cfg.Auth != nil)
	}
	if *tlsCA != "" {
		pool, err := pki.ReadCAPool(*tlsCA)
		if err != nil {
			return fmt.Errorf("read tls ca: %w", err)
		}
		if cfg.TLS != nil {
			cfg.TLS.ClientCAs, cfg.TLS.ClientAuth = pool, tls.RequireAndVerifyClientCert
		} else {
			cfg.NATSOptions = append(cfg.NATSOptions, nats.Secure(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
		}
	}

	srv, err := meta.NewServer(cfg)
	if err != nil {
		return err
	}
	log.Info("serving", "nats", srv.ClientURL(), "http", srv.HTTPAddr())
	<-ctx.Done()
	log.Info("shutting down")
	return srv.Close()
}
