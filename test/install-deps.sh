#!/usr/bin/env bash
# Installs the system packages roam's build, tests, benchmarks and demo need
# (Debian/Ubuntu, as root), and mounts bpffs. Quick and silent when all is there.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "roam: run as root (sudo): BPF, XDP and network namespaces need it" >&2
	exit 1
fi

# command -> package
declare -A want=(
	[clang]=clang
	[llc]=llvm
	[llvm-strip]=llvm
	[bpftool]=bpftool
	[ip]=iproute2
	[tc]=iproute2
	[iptables]=iptables
	[nft]=nftables
	[iperf3]=iperf3
	[wrk]=wrk
	[curl]=curl
	[promtool]=prometheus
)
missing=()
for cmd in "${!want[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
# libbpf headers (bpf_helpers.h) for the BPF C sources.
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)

if [ ${#missing[@]} -gt 0 ]; then
	pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
	echo "roam: installing $pkgs"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# prometheus is only wanted for promtool: don't let its service start.
	apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
	systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

if ! mountpoint -q /sys/fs/bpf; then
	mount -t bpf bpf /sys/fs/bpf
fi
