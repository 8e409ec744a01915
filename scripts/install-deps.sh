#!/usr/bin/env bash
# Installs, by Debian package name, what building and testing the project needs on a
# fresh Debian 12 machine (run as root). Idempotent: packages already present are skipped.
set -euo pipefail

pkgs=(
  iproute2                      # ip: namespaces, links, addresses in tests and scripts
  util-linux                    # nsenter, unshare
  nftables                      # nft: the ip-masq / macspoofchk backend
  iptables                      # removal of the Go plugin's legacy CNI-* chains; Go bridge's masq
  containernetworking-plugins   # the Go reference bridge/host-local in /usr/lib/cni
  jq
  libc6-dev                     # libc.a: scripts/build-release.sh links the plugins statically
  etcd-server                   # etcd v3 for the overlay agent's store tests (started by the tests, in namespaces)
  etcd-client                   # etcdctl: the tests write leases as an operator or real flanneld would
  iputils-ping
  golang-go                     # builds the upstream cnitool (../shared/tools/build-cnitool.sh)
  golang-github-appc-cni-dev
  qemu-system-x86               # boots Debian's stock kernel for the VLAN tests (scripts/vm/): the CI kernel has no VLAN filtering
  busybox-static                # init and tools of that VM's initramfs (the dynamic busybox would need its libraries there)
  xz-utils                      # kernel packages that ship .ko.xz modules: busybox insmod reads only plain .ko
  cpio                          # packs the VM's initramfs
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# etcd-server's package enables a system etcd on localhost; the tests start their own
# inside their namespaces, so keep the system one off where systemd runs it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled etcd >/dev/null 2>&1; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
