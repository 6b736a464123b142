// Package demo is roam's built-in demo service: an HTTP server that says which
// cluster answered, so the quick start and the tests need no image.
package demo

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Handler answers every GET with "cluster <id> (<host>)\n".
func Handler(cluster string) http.Handler {
	host, _ := os.Hostname()
	if i := strings.IndexByte(host, '.'); i > 0 {
		host = host[:i]
	}
	body := fmt.Sprintf("cluster %s (%s)\n", cluster, host)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Roam-Cluster", cluster)
		fmt.Fprint(w, body)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	return mux
}

// Serve listens on addr and serves until ctx ends.
func Serve(ctx context.Context, addr, cluster string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen demo %s: %w", addr, err)
	}
	srv := &http.Server{Handler: Handler(cluster), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve demo: %w", err)
	}
	return nil
}

// Main parses `demo --listen ADDR:PORT --cluster ID` arguments and serves.
func Main(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	listen := fs.String("listen", os.Getenv("ROAM_LISTEN"), "address:port to listen on")
	cluster := fs.String("cluster", os.Getenv("ROAM_CLUSTER"), "cluster id to report")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *listen == "" {
		return errors.New("demo: --listen is required")
	}
	return Serve(ctx, *listen, *cluster)
}
