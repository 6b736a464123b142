// Command roam-meta runs roam's meta-orchestrator: an embedded NATS server
// (or a connection to an external one), the cluster registry fed by hellos
// and the placement endpoint. See meta/README.md for subjects and auth.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/roamnet/roam/meta"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "roam-meta:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "0.0.0.0:4222", "embedded NATS client address")
	natsURL := flag.String("nats-url", "", "use this external NATS instead of the embedded one")
	natsUser := flag.String("nats-user", "", "user for --nats-url (or the meta user of --auth-file)")
	natsPassword := flag.String("nats-password", "", "password for --nats-url")
	storeDir := flag.String("store-dir", "", "JetStream directory (registry, audit log); empty: memory only")
	httpAddr := flag.String("http-addr", ":9600", "serves /metrics, /healthz, /readyz, /v1/clusters, /v1/explain")
	policyName := flag.String("policy", "least-loaded", "placement policy: least-loaded or tier")
	interval := flag.Duration("hello-interval", time.Second, "expected hello interval")
	downAfter := flag.Int("down-after", 3, "missed hellos after which a cluster is down")
	authFile := flag.String("auth-file", "", "per-cluster NATS users (YAML or JSON, see meta/README.md)")
	tlsCert := flag.String("tls-cert", "", "TLS certificate (PEM) for the embedded NATS server")
	tlsKey := flag.String("tls-key", "", "TLS key (PEM)")
	tlsCA := flag.String("tls-ca", "", "CA (PEM) to verify client certificates (embedded) or the server (--nats-url)")
	name := flag.String("name", "", "replica name (default hostname and a random suffix)")
	clusterListen := flag.String("cluster-listen", "", "make the embedded NATS a cluster node accepting routes here (host:port)")
	routes := flag.String("routes", "", "comma-separated nats://host:port of the cluster's nodes (with --cluster-listen)")
	clusterName := flag.String("cluster-name", "roam-meta", "NATS cluster name, the same on every node")
	jsReplicas := flag.Int("js-replicas", 0, "replicas of the view bucket and audit stream (0: 3 on a NATS cluster, else 1)")
	warmUp := flag.Duration("warm-up", 0, "hellos heard before answering placements, after start or reconnect (0: 1.5 hello intervals)")
	reservationTTL := flag.Duration("reservation-ttl", time.Minute, "a placement counts against its destination this long unless its hellos show it first (negative: off)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	policy, err := meta.NewPolicy(*policyName)
	if err != nil {
		return err
	}
	cfg := meta.ServerConfig{
		Listen: *listen, NATSURL: *natsURL, StoreDir: *storeDir, HTTPAddr: *httpAddr,
		Policy: policy, HelloInterval: *interval, DownAfter: *downAfter, Name: *name, Logger: log,
		Replicas: *jsReplicas, WarmUp: *warmUp, ReservationTTL: *reservationTTL,
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
	if *natsUser != "" {
		cfg.NATSOptions = append(cfg.NATSOptions, nats.UserInfo(*natsUser, *natsPassword))
	}
	if *tlsCert != "" || *tlsKey != "" {
		if *natsURL != "" {
			return errors.New("--tls-cert/--tls-key apply to the embedded server; with --nats-url use --tls-ca")
		}
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return fmt.Errorf("load tls key pair: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if *tlsCA != "" {
		pem, err := os.ReadFile(*tlsCA)
		if err != nil {
			return fmt.Errorf("read tls ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("parse tls ca %s: no certificate", *tlsCA)
		}
		if cfg.TLS != nil {
			cfg.TLS.ClientCAs, cfg.TLS.ClientAuth = pool, tls.RequireAndVerifyClientCert
		} else {
			cfg.NATSOptions = append(cfg.NATSOptions, nats.Secure(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := meta.NewServer(cfg)
	if err != nil {
		return err
	}
	log.Info("serving", "nats", srv.ClientURL(), "http", srv.HTTPAddr())
	<-ctx.Done()
	log.Info("shutting down")
	return srv.Close()
}
