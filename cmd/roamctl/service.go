package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/roamnet/roam/ctrl"
	"github.com/roamnet/roam/ctrl/backend"
	"github.com/roamnet/roam/ctrl/client"
	"github.com/roamnet/roam/ctrl/pki"
	"github.com/roamnet/roam/dataplane/lb"
)

func init() {
	register(command{name: "service", summary: "deploy|list|get|delete|migrate services through a controller", run: runService})
}

const serviceUsage = `usage: roamctl service SUBCOMMAND [--ctrl URL] [--ca ca.crt] [--token-file F] ...
  deploy  --name N (--demo | --command "argv..." | --image I) --port 80[/tcp],... [--cpu M] [--memory MB] [--need-mbps X]
  deploy  -f descriptor.json
  list
  get     NAME
  delete  NAME
  migrate NAME [--to CLUSTER] [--reason manual] [--return committed|removed]
  migrations`

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printResult prints a call's result as printJSON does, or returns its error.
func printResult[T any](v T, err error) error {
	if err != nil {
		return err
	}
	return printJSON(v)
}

func parsePorts(s string) ([]backend.Port, error) {
	var out []backend.Port
	for _, p := range strings.Split(s, ",") {
		num, proto, ok := strings.Cut(p, "/")
		if !ok {
			proto = "tcp"
		}
		n, err := strconv.ParseUint(num, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port %q: %w", p, err)
		}
		pr, err := lb.ParseProto(proto)
		if err != nil {
			return nil, err
		}
		out = append(out, backend.Port{Port: uint16(n), Protocol: pr})
	}
	return out, nil
}

func runService(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New(serviceUsage)
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("service "+sub, flag.ContinueOnError)
	base := fs.String("ctrl", svcEnvOr("ROAM_CTRL", "https://127.0.0.1:8080"), "controller URL")
	tokenFile := fs.String("token-file", "", "file holding the user's token (roamctl token create; default $ROAM_TOKEN)")
	caFile := fs.String("ca", "", "the installation's CA certificate, to verify the controller (default $ROAM_CA; none: the system's roots)")
	timeout := fs.Duration("timeout", 2*time.Minute, "request timeout")
	name := fs.String("name", "", "deploy: service name")
	file := fs.String("f", "", "deploy: descriptor JSON file")
	demoF := fs.Bool("demo", false, "deploy: the built-in demo service")
	command := fs.String("command", "", "deploy: command line (local backend)")
	image := fs.String("image", "", "deploy: container image (kubernetes backend)")
	ports := fs.String("port", "", "deploy: ports 80[/tcp],...")
	cpu := fs.Int64("cpu", 0, "deploy: milli-CPUs")
	mem := fs.Int64("memory", 0, "deploy: memory MB")
	need := fs.Float64("need-mbps", 0, "deploy: bandwidth the service needs")
	to := fs.String("to", "", "migrate: destination cluster (empty: ask the MO)")
	reason := fs.String("reason", "manual", "migrate: reason")
	answer := fs.String("return", ctrl.ReturnCommitted, `migrate: when the call answers: "committed" (once the new copy serves and the home committed it; the old copy's drain and cleanup run behind the answer, "service migrations" says when they are done) or "removed" (once the old copy is removed)`)
	// Flags may follow the positional NAME.
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return err
		}
		args = fs.Args()
		if len(args) > 0 {
			pos = append(pos, args[0])
			args = args[1:]
		}
	}
	token := os.Getenv("ROAM_TOKEN") // read here, never a flag's default: -h must not print it
	if *tokenFile != "" {
		var err error
		if token, err = pki.ReadSecretFile(*tokenFile); err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
	}
	if *caFile == "" {
		*caFile = os.Getenv("ROAM_CA")
	}
	hc := http.Client{Timeout: *timeout}
	if *caFile != "" {
		pool, err := pki.ReadCAPool(*caFile)
		if err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
		hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	c := client.New(*base, token, &hc)
	var svc string // the service get, delete and migrate act on
	switch sub {
	case "get", "delete", "migrate":
		if len(pos) != 1 {
			return fmt.Errorf("service %s: want one NAME\n%s", sub, serviceUsage)
		}
		svc = pos[0]
	}
	switch sub {
	case "deploy":
		var d ctrl.Descriptor
		if *file != "" {
			b, err := os.ReadFile(*file)
			if err != nil {
				return err
			}
			if err := json.Unmarshal(b, &d); err != nil {
				return fmt.Errorf("read %s: %w", *file, err)
			}
		} else {
			p, err := parsePorts(*ports)
			if err != nil {
				return err
			}
			d = ctrl.Descriptor{Name: *name, Demo: *demoF, Image: *image, Ports: p,
				Resources: backend.Resources{MilliCPU: *cpu, MemoryMB: *mem}, NeedMbps: *need}
			if *command != "" {
				d.Command = strings.Fields(*command)
			}
		}
		return printResult(c.Deploy(ctx, d))
	case "list":
		rs, err := c.List(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tKIND\tHOME\tRUNS AT\tENDPOINTS\tFRONTENDS")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\n", r.Service.Name, r.Kind, r.Home, r.Cluster, r.Endpoints, r.Frontends)
		}
		return tw.Flush()
	case "get":
		return printResult(c.Get(ctx, svc))
	case "delete":
		return c.Delete(ctx, svc)
	case "migrate":
		return printResult(c.MigrateWith(ctx, svc, ctrl.MigrateRequest{Destination: *to, Reason: *reason, Return: *answer}))
	case "migrations":
		return printResult(c.Migrations(ctx))
	}
	return fmt.Errorf("service: unknown subcommand %q\n%s", sub, serviceUsage)
}

func svcEnvOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
