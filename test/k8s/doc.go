// Package k8s is roam's Kubernetes lane: deploy/'s manifests and the
// Kubernetes backend (ctrl/backend/kube) against real control planes —
// etcd, kube-apiserver, kube-controller-manager, kube-scheduler, built from
// the Go module proxy by tools/build.sh — with kwok standing in for the
// kubelets. `make test-k8s` builds them (cached) and runs the tests, which
// sit behind the k8s build tag so `go test ./...` does not start them.
//
// What kwok cannot give (no container runs, pod and node addresses reach
// nothing) is named in the tests that stop there and in deploy/README.md.
package k8s
