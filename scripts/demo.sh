#!/usr/bin/env bash
# The main job, end to end, in a sandbox: builds the release plugins, makes a throwaway
# "node" (a private network + mount namespace, so the machine's own network, /run/netns,
# /etc/cni, /opt/cni and /var/lib/cni are never touched), writes subnet.env as the
# overlay agent would, installs the binaries and the kube-flannel conflist into temp dirs
# as a node has them, adds two pods through flannel -> bridge -> host-local exactly as a
# runtime calls them, proves pod-to-pod and pod-to-gateway connectivity, deletes both pods
# and shows that nothing is left.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ "${1:-}" != "--inside" ]; then
  [ "$(id -u)" = 0 ] || { echo "demo.sh must run as root (it creates network namespaces)" >&2; exit 1; }
  "$here/scripts/install-deps.sh"
  echo "== building release binaries"
  (cd "$here" && cargo build --release --workspace --bins --quiet)
  # A new network namespace is the node; a private mount namespace keeps /run/netns
  # (where `ip netns add` puts the pods) and everything mounted here out of the machine's view.
  exec unshare --net --mount --propagation private -- "$0" --inside
fi

mount -t tmpfs tmpfs /run/netns 2>/dev/null || { mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns; }
ip link set lo up
T="$(mktemp -d /tmp/flannel-demo.XXXXXX)"
cleanup() {
  for p in pod-a pod-b; do ip netns del "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT

BIN="$T/opt/cni/bin" CONF="$T/etc/cni/net.d"
mkdir -p "$T/run/flannel"
cat > "$T/run/flannel/subnet.env" <<ENV
FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.1.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
ENV
echo "== node: a fresh network namespace; subnet.env as flanneld writes it:"
sed 's/^/   /' "$T/run/flannel/subnet.env"

# The kube-flannel conflist, with its paths pointed into the sandbox.
jq --arg sf "$T/run/flannel/subnet.env" --arg dd "$T/var/lib/cni/flannel" --arg ipd "$T/var/lib/cni/networks" \
  '.plugins[0] += {subnetFile: $sf, dataDir: $dd, ipam: {dataDir: $ipd}} | .plugins |= [.[0]]' \
  "$here/conf-examples/10-flannel.conflist" > "$T/10-flannel.conflist"
"$here/scripts/install.sh" --bin-dir "$BIN" --conf-dir "$CONF" --conflist "$T/10-flannel.conflist" \
  --from "$here/target/release" | sed 's/^/   /'
echo "   binaries: $(cd "$BIN" && ls -i | awk '{printf "%s(inode %s) ", $2, $1}')"

# What libcni sends the first plugin of the list: the plugin object with name and
# cniVersion injected.
plugin_conf() { jq -c '.plugins[0] + {name: .name, cniVersion: .cniVersion}' "$CONF/10-flannel.conflist"; }

cni() { # COMMAND CONTAINERID NETNS
  plugin_conf | env -i PATH="$PATH" CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="$3" \
    CNI_IFNAME=eth0 CNI_PATH="$BIN" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=$2" \
    "$BIN/flannel"
}

declare -A ip
for p in pod-a pod-b; do
  ip netns add "$p"
  echo "== ADD $p (flannel -> bridge -> host-local)"
  start=$(date +%s%N)
  out="$(cni ADD "$p" "/run/netns/$p")"
  end=$(date +%s%N)
  echo "$out" | jq -c '{cniVersion, interfaces: [.interfaces[] | .name], ips: [.ips[] | .address], routes}' | sed 's/^/   /'
  ip[$p]="$(echo "$out" | jq -r '.ips[0].address' | cut -d/ -f1)"
  echo "   $p got ${ip[$p]} in $(( (end - start) / 1000 )) us"
done

echo "== connectivity"
ip netns exec pod-a ping -c 2 -W 1 -q "${ip[pod-b]}" | tail -2 | sed 's/^/   pod-a -> pod-b: /'
ip netns exec pod-b ping -c 2 -W 1 -q "${ip[pod-a]}" | tail -2 | sed 's/^/   pod-b -> pod-a: /'
ip netns exec pod-a ping -c 2 -W 1 -q 10.244.1.1 | tail -2 | sed 's/^/   pod-a -> gateway 10.244.1.1: /'
echo "   node bridge: $(ip -br addr show cni0)"

echo "== DEL both pods (pod-b after its namespace is already gone, as after a crash)"
cni DEL pod-a /run/netns/pod-a
ip netns del pod-b
cni DEL pod-b /run/netns/pod-b
ip netns del pod-a

echo "== what is left"
left=0
veths=$(ip -o link show type veth | wc -l)
echo "   veths on the node: $veths"; [ "$veths" = 0 ] || left=1
res=$(find "$T/var/lib/cni/networks" -type f ! -name lock ! -name 'last_reserved_ip.*' ! -path '*/.host-local/*' | wc -l)
echo "   IP reservations: $res"; [ "$res" = 0 ] || left=1
saved=$(find "$T/var/lib/cni/flannel" -type f 2>/dev/null | wc -l)
echo "   saved flannel configs: $saved"; [ "$saved" = 0 ] || left=1
rules=$(nft list ruleset 2>/dev/null | grep -c 'masquerade' || true)
echo "   masquerade rules: $rules"; [ "$rules" = 0 ] || left=1
if [ "$left" = 0 ]; then echo "== clean: nothing left behind"; else echo "== LEAK: something was left behind" >&2; exit 1; fi
