// Command etcd is etcd's server (go.etcd.io/etcd/server/v3) built from the
// module proxy for test/k8s's control planes; the Debian package is 3.4,
// which lacks the watch progress requests client-go makes.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
