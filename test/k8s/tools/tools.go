//go:build tools

// Package tools pins the Kubernetes control plane test/k8s runs: a real
// kube-apiserver, kube-controller-manager and kube-scheduler from
// k8s.io/kubernetes, and kwok for nodes and pods without kubelets. It is a
// module of its own so roam's go.mod stays free of k8s.io/kubernetes.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
