#!/usr/bin/env bash
# Build the control plane test/k8s runs into $1 (default: $K8S_BIN or
# ~/.cache/roam-k8s/v1.37.2): kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok and etcd, from the Go module proxy, in the modules
# next to this script. GOCACHE holds the compiled packages, so only a cold
# machine pays the build (about 15 min on 2 cores); a warm one relinks or
# finds the binaries up to date in seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-${K8S_BIN:-$HOME/.cache/roam-k8s/v1.37.2}}"
mkdir -p "$out"

# Without these the servers report v0.0.0-master and clients refuse them.
ver=v1.37.2 major=1 minor=37
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$ver -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done

start=$(date +%s)
(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$out/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kubectl \
	sigs.k8s.io/kwok/cmd/kwok)
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" .)
# kwok's own fast node and pod stages (Ready at once, a heartbeat with
# leases so the node lifecycle controller never taints the nodes), from the
# pinned kwok module.
kwok="$(cd "$here" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage"
for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
	pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
	echo "---"
	cat "$kwok/$f"
done > "$out/kwok-stages.yaml.tmp"
mv "$out/kwok-stages.yaml.tmp" "$out/kwok-stages.yaml"
echo "test/k8s/tools: control plane in $out ($(($(date +%s) - start)) s)" >&2
