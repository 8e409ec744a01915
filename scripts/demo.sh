#!/usr/bin/env bash
# The main job, end to end, in a sandbox: builds the release plugins, makes a throwaway
# "node" (a private network + mount namespace, so the machine's own network, /run/netns,
# /etc/cni, /opt/cni and /var/lib/cni are never touched), writes subnet.env as the
# overlay agent would, installs the binaries and the kube-flannel conflist into temp dirs
# as a node has them, adds two pods through flannel -> bridge -> host-local exactly as a
# runtime calls them, proves pod-to-pod and pod-to-gateway connectivity, deletes both pods
# and shows that nothing is left.
# Part 2 is the full system: two node namespaces on a switch namespace, the overlay agent
# (flanneld, agent/) on each with the embedded lease store, a pod on each node added
# through the same chain, cross-node ping over VXLAN, then cleanup.
# DEMO_BIN_DIR=<dir with cni-plugins and flanneld> skips the release build (development).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ "${1:-}" != "--inside" ]; then
  [ "$(id -u)" = 0 ] || { echo "demo.sh must run as root (it creates network namespaces)" >&2; exit 1; }
  "$here/scripts/install-deps.sh"
  if [ -z "${DEMO_BIN_DIR:-}" ]; then
    echo "== building the release binaries (the multi-call plugin binary and flanneld)"
    "$here/scripts/build-release.sh"
  fi
  # A new network namespace is the node; a private mount namespace keeps /run/netns
  # (where `ip netns add` puts the pods) and everything mounted here out of the machine's view.
  exec unshare --net --mount --propagation private -- "$0" --inside
fi

mount -t tmpfs tmpfs /run/netns 2>/dev/null || { mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns; }
ip link set lo up
T="$(mktemp -d /tmp/flannel-demo.XXXXXX)"
rel="${DEMO_BIN_DIR:-$here/target/dist}"
declare -A agent_pid=()
cleanup() {
  for pid in "${agent_pid[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for p in pod-a pod-b pod-a2 pod-b2 node-a node-b sw; do ip netns del "$p" 2>/dev/null || true; done
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
  --from "$rel" | sed 's/^/   /'
echo "   binaries: $(cd "$BIN" && ls -i | awk '{printf "%s(inode %s) ", $2, $1}')"

# What libcni sends the first plugin of the list: the plugin object with name and
# cniVersion injected.
plugin_conf() { jq -c '.plugins[0] + {name: .name, cniVersion: .cniVersion}' "$CONF/10-flannel.conflist"; }
plugin_conf > "$T/flannel-stdin.json" # built once, so the timings below are the plugins' own

cni() { # COMMAND CONTAINERID NETNS
  env -i PATH="$PATH" CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="$3" \
    CNI_IFNAME=eth0 CNI_PATH="$BIN" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=$2" \
    "$BIN/flannel" <"$T/flannel-stdin.json" 2>>"$T/plugins.stderr" # plugin logs, kept as a runtime does
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
  echo "   $p got ${ip[$p]}: ADD took $(( (end - start) / 1000 )) us as timed by this shell (fork+exec included)"
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
if [ "$left" = 0 ]; then echo "== clean: nothing left behind"; else echo "== LEAK: something was left behind" >&2; fi

echo
echo "== part 2: two nodes, an overlay agent on each, VXLAN between them"
# The underlay: a switch namespace with a bridge; each node plugs into it with a veth.
ip netns add sw
ip -n sw link set lo up
ip -n sw link add br0 type bridge
ip -n sw addr add 10.250.0.254/24 dev br0
ip -n sw link set br0 up
# The embedded lease store: a directory shared by both agents (no server needed).
echo '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}' > "$T/net-conf.json"
"$rel/flanneld" store --store-dir "$T/store" set-config "$T/net-conf.json"
echo "   network config: $(cat "$T/net-conf.json")"
declare -A node_ip=([node-a]=10.250.0.1 [node-b]=10.250.0.2)
for n in node-a node-b; do
  ip netns add "$n"
  ip -n sw link add "v-$n" type veth peer name eth0 netns "$n"
  ip -n sw link set "v-$n" master br0 up
  ip -n "$n" link set lo up
  ip -n "$n" addr add "${node_ip[$n]}/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" route add default via 10.250.0.254
  mkdir -p "$T/$n"
  ip netns exec "$n" "$rel/flanneld" --store-dir "$T/store" --subnet-file "$T/$n/subnet.env" \
    --vtep-mac-file "$T/$n/vtep.mac" --ip-masq --healthz-port 10280 >"$T/$n/flanneld.log" 2>&1 &
  agent_pid[$n]=$!
done
for n in node-a node-b; do
  for _ in $(seq 100); do [ -s "$T/$n/subnet.env" ] && break; sleep 0.1; done
  [ -s "$T/$n/subnet.env" ] || { echo "$n: agent wrote no subnet.env:" >&2; cat "$T/$n/flanneld.log" >&2; exit 1; }
  echo "   $n (${node_ip[$n]}): $(tr '\n' ' ' < "$T/$n/subnet.env")"
done

node_cni() { # NODE COMMAND CONTAINERID NETNS: the same chain, with the node's own paths
  plugin_conf | jq -c --arg sf "$T/$1/subnet.env" --arg dd "$T/$1/cni/flannel" --arg ipd "$T/$1/cni/networks" \
    '. + {subnetFile: $sf, dataDir: $dd, ipam: {dataDir: $ipd}}' |
    ip netns exec "$1" env -i PATH="$PATH" CNI_COMMAND="$2" CNI_CONTAINERID="$3" CNI_NETNS="$4" \
      CNI_IFNAME=eth0 CNI_PATH="$BIN" CNI_ARGS="IgnoreUnknown=1" "$BIN/flannel" 2>>"$T/plugins.stderr"
}
declare -A pod_ip
for n in node-a node-b; do
  p="pod-${n#node-}2"
  ip netns add "$p"
  pod_ip[$p]="$(node_cni "$n" ADD "$p" "/run/netns/$p" | jq -r '.ips[0].address' | cut -d/ -f1)"
  echo "   ADD $p on $n: ${pod_ip[$p]}"
done
for _ in $(seq 100); do ip -n node-a route show dev flannel.1 | grep -q onlink && break; sleep 0.1; done
echo "== cross-node connectivity"
ip -n node-a route show dev flannel.1 | sed 's/^/   node-a route: /'
ip netns exec pod-a2 ping -c 3 -W 1 -q "${pod_ip[pod-b2]}" | tail -2 | sed 's/^/   pod-a2 -> pod-b2: /'
ip netns exec pod-b2 ping -c 3 -W 1 -q "${pod_ip[pod-a2]}" | tail -2 | sed 's/^/   pod-b2 -> pod-a2: /'
ready="$(ip netns exec node-a bash -c 'exec 3<>/dev/tcp/127.0.0.1/10280 && printf "GET /readyz HTTP/1.0\r\n\r\n" >&3 && tail -1 <&3')"
echo "   node-a /readyz: $ready"

echo "== cleanup: DEL both pods, SIGTERM both agents, remove the nodes"
for n in node-a node-b; do
  p="pod-${n#node-}2"
  node_cni "$n" DEL "$p" "/run/netns/$p"
  ip netns del "$p"
done
for n in node-a node-b; do
  kill -TERM "${agent_pid[$n]}"
  st=0; wait "${agent_pid[$n]}" || st=$?
  unset "agent_pid[$n]"
  echo "   $n agent exited with status $st"
  [ "$st" = 0 ] || left=1
  res=$(find "$T/$n/cni/networks" -type f ! -name lock ! -name 'last_reserved_ip.*' ! -path '*/.host-local/*' | wc -l)
  echo "   $n IP reservations left: $res"; [ "$res" = 0 ] || left=1
done
for n in node-a node-b sw; do ip netns del "$n"; done
echo "   namespaces left: $(ip netns list | wc -l)"
if [ "$left" = 0 ]; then echo "== clean: nothing left behind"; else echo "== LEAK or failure, see above" >&2; exit 1; fi
