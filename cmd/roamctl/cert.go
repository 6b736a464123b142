package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/roamnet/roam/ctrl/api"
	"github.com/roamnet/roam/ctrl/pki"
)

func init() {
	register(command{name: "cert", summary: "an installation's CA and the clusters' and nodes' certificates (cert ca | cert issue)", run: runCert})
	register(command{name: "token", summary: "a user's API token with its role (token create)", run: runToken})
}

const certUsage = `usage:
  roamctl cert ca    --dir DIR [--name NAME] [--days 3650]
      a CA for this installation: DIR/ca.crt and DIR/ca.key (keep ca.key off the clusters)
  roamctl cert issue --ca DIR --cluster ID [--node NODE] [--host NAME|IP,...] --out DIR [--days 365]
      a controller's (or, with --node, an agent's) identity, spiffe://roam/cluster/ID[/node/NODE]:
      OUT/ca.crt, OUT/tls.crt, OUT/tls.key, the files of a kubernetes.io/tls Secret
      (kubectl -n roam create secret generic roam-ctrl-tls --from-file=OUT/)`

func runCert(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New(certUsage)
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("cert "+sub, flag.ContinueOnError)
	switch sub {
	case "ca":
		dir := fs.String("dir", "", "directory for ca.crt and ca.key")
		name := fs.String("name", "roam", "the CA's common name")
		days := fs.Int("days", 3650, "validity in days")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if *dir == "" {
			return errors.New("cert ca: --dir is required")
		}
		if _, err := os.Stat(filepath.Join(*dir, pki.CAKeyFile)); err == nil {
			return fmt.Errorf("cert ca: %s already holds a CA (not replaced: every certificate it issued would stop working)", *dir)
		}
		ca, err := pki.NewCA(*name, time.Duration(*days)*24*time.Hour)
		if err != nil {
			return err
		}
		if err := ca.Save(*dir); err != nil {
			return err
		}
		fmt.Printf("CA %q written to %s (%s, %s)\n", *name, *dir, pki.CAFile, pki.CAKeyFile)
		return nil
	case "issue":
		caDir := fs.String("ca", "", "the CA's directory (roamctl cert ca)")
		cluster := fs.String("cluster", "", "cluster id")
		node := fs.String("node", "", "node name (an agent's identity)")
		hosts := fs.String("host", "", "DNS names and IPs the certificate is served at, comma separated")
		out := fs.String("out", "", "output directory")
		days := fs.Int("days", 365, "validity in days")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if *caDir == "" || *cluster == "" || *out == "" {
			return errors.New("cert issue: --ca, --cluster and --out are required")
		}
		ca, err := pki.LoadCA(*caDir)
		if err != nil {
			return err
		}
		id := pki.ID{Cluster: *cluster, Node: *node}
		var hs []string
		for _, h := range strings.Split(*hosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hs = append(hs, h)
			}
		}
		if err := ca.WriteIdentity(*out, id, hs, time.Duration(*days)*24*time.Hour); err != nil {
			return err
		}
		fmt.Printf("%s written to %s\n", id, *out)
		return nil
	}
	return errors.New(certUsage)
}

const tokenUsage = `usage: roamctl token create --user NAME --role read|operate --users-file FILE
  appends the user to FILE (roam-ctrl --users-file; a Secret's key on Kubernetes) and prints its token once`

func runToken(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "create" {
		return errors.New(tokenUsage)
	}
	fs := flag.NewFlagSet("token create", flag.ContinueOnError)
	user := fs.String("user", "", "user name")
	role := fs.String("role", "read", "read or operate")
	file := fs.String("users-file", "", "the users file to append to")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *user == "" || *file == "" || strings.ContainsAny(*user, " \t\n#") {
		return errors.New(tokenUsage)
	}
	r := api.Role(*role)
	if r != api.RoleRead && r != api.RoleOperate {
		return fmt.Errorf("token create: --role %q: want read or operate", *role)
	}
	tok, err := api.NewToken()
	if err != nil {
		return err
	}
	b, err := os.ReadFile(*file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if us, err := api.ParseUsers(b); err != nil {
		return err
	} else {
		for _, u := range us {
			if u.Name == *user {
				return fmt.Errorf("token create: %s already has user %q (remove its line first)", *file, *user)
			}
		}
	}
	f, err := os.OpenFile(*file, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(f, api.UserLine(*user, r, tok)); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Println(tok)
	return nil
}
