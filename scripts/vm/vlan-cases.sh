#!/bin/sh
# shellcheck shell=dash
# The bridge plugin's VLAN options tested by effect, inside the test VM (busybox sh, run
# by scripts/vm/init.sh under a kernel with bridge VLAN filtering and 8021q).
#
# As in the project's e2e tests, the plugin runs in a throwaway "node" namespace, every pod
# is its own namespace, and configs and host-local's dataDir live in a temp dir. The
# plugin is exec'd as a runtime does: CNI_* environment only, config on stdin, result on
# stdout, exit status checked. CNI_PATH holds the multi-call binary as `bridge` and
# `host-local`.
#
# Each case prints `VMTEST ok <name>` or `VMTEST FAIL <name>: <why>`.
set -u

# Debian's busybox-static runs its own applets before searching PATH (standalone shell),
# and its `ip` knows no netns, vlan or bridge VLANs: iproute2's are called by path.
ip() { /usr/sbin/ip "$@"; }

CNI_BIN=/vmtest/cni
W=$(mktemp -d /tmp/cni.XXXXXX)
mkdir -p "$W/ipam"
NET=vlannet
GWNET=gwnet

ip netns add node
ip -n node link set lo up
for p in a b c d n t p1 g1; do
  ip netns add "$p"
  ip -n "$p" link set lo up
done

why=""
fail() {
  why="$*"
  return 1
}

run_case() {
  why=""
  if "$2"; then
    echo "VMTEST ok $1"
  else
    echo "VMTEST FAIL $1: $why"
  fi
}

# conf NAME BRIDGE SUBNET EXTRA: a network config; EXTRA is a list of top-level
# `"key": value` members (or empty).
conf() {
  printf '{"cniVersion":"1.0.0","name":"%s","type":"bridge","bridge":"%s"%s,' "$1" "$2" "${4:+,$4}"
  printf '"ipam":{"type":"host-local","dataDir":"%s","ranges":[[{"subnet":"%s"}]]}}' "$W/ipam" "$3"
}

# cni COMMAND CID POD CONFFILE: runs the plugin in the node namespace; stdout to
# $W/out.CID, stderr to $W/err.CID; returns its exit status.
cni() {
  ip netns exec node env -i PATH=/usr/sbin:/bin \
    CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$3" CNI_IFNAME=eth0 \
    CNI_PATH="$CNI_BIN" "$CNI_BIN/bridge" <"$4" >"$W/out.$2" 2>"$W/err.$2"
}

# add CID POD NAME BRIDGE SUBNET EXTRA: ADD; the config is kept for CHECK and DEL.
add() {
  conf "$3" "$4" "$5" "$6" >"$W/conf.$1"
  cni ADD "$1" "$2" "$W/conf.$1" || fail "ADD $1 exited $?: $(cat "$W/out.$1" "$W/err.$1")" || return 1
  cp "$W/out.$1" "$W/result.$1"
}

del() {
  cni DEL "$1" "$2" "$W/conf.$1" || fail "DEL $1 exited $?: $(cat "$W/out.$1" "$W/err.$1")"
}

# The pod's IPv4 address, as the kernel has it.
pod_ip() {
  ip -n "$1" -4 -o addr show dev eth0 | awk '{ split($4, a, "/"); print a[1]; exit }'
}

# The host end of the pod's veth: the node-side link whose index eth0 names as its peer.
host_veth() {
  local peer
  peer=$(ip -n "$1" -o link show dev eth0 | sed -n 's/^[0-9]*: eth0@if\([0-9]*\):.*/\1/p')
  ip -n node -o link show | sed -n "s/^$peer: \([^:@]*\)[:@].*/\1/p"
}

# The VLANs on a bridge port, one per line as `bridge vlan show` words them without the
# port name: `100 PVID Egress Untagged`, `300`.
port_vlans() {
  ip netns exec node bridge vlan show dev "$1" | sed 1d | sed "s/^$1//" |
    awk 'NF { $1 = $1; print }'
}

# expect_vlans POD LINE...: the pod's host port carries exactly these VLAN lines.
expect_vlans() {
  local pod=$1 veth got want
  shift
  veth=$(host_veth "$pod")
  [ -n "$veth" ] || fail "no host veth found for pod $pod" || return 1
  got=$(port_vlans "$veth" | sort)
  want=$(for l in "$@"; do echo "$l"; done | sort)
  [ "$got" = "$want" ] || fail "port $veth of pod $pod has VLANs [$(echo "$got" | tr '\n' ';')], want [$(echo "$want" | tr '\n' ';')]"
}

# reach POD IP: pings succeed (a few tries: the first ARP under TCG can be slow).
reach() {
  local try=0
  while [ "$try" -lt 3 ]; do
    ip netns exec "$1" ping -c1 -W2 "$2" >/dev/null 2>&1 && return 0
    try=$((try + 1))
  done
  fail "$1 cannot reach $2"
}

# unreachable POD IP: no ping gets an answer.
unreachable() {
  if ip netns exec "$1" ping -c2 -W1 "$2" >/dev/null 2>&1; then
    fail "$1 reaches $2"
  fi
}

# Pods A, B on access VLAN 100, C, D on 200, one bridge, one subnet, no gateway.
case_vlan() {
  local v='"vlan":100,"isGateway":false' w='"vlan":200,"isGateway":false' ia ib ic id
  add a a "$NET" cni0 10.99.0.0/24 "$v" || return 1
  add b b "$NET" cni0 10.99.0.0/24 "$v" || return 1
  add c c "$NET" cni0 10.99.0.0/24 "$w" || return 1
  add d d "$NET" cni0 10.99.0.0/24 "$w" || return 1
  ip -n node -d link show dev cni0 | grep -q 'vlan_filtering 1' ||
    fail "cni0 has no VLAN filtering" || return 1
  ia=$(pod_ip a) ib=$(pod_ip b) ic=$(pod_ip c) id=$(pod_ip d)
  [ -n "$ia" ] && [ -n "$ib" ] && [ -n "$ic" ] && [ -n "$id" ] ||
    fail "a pod has no address: a=$ia b=$ib c=$ic d=$id" || return 1
  reach a "$ib" || return 1
  reach b "$ia" || return 1
  reach c "$id" || return 1
  unreachable a "$ic" || return 1
  unreachable d "$ib" || return 1
  # preserveDefaultVlan defaults to false: VLAN 1 is gone, the access VLAN is the PVID.
  expect_vlans a "100 PVID Egress Untagged" || return 1
  expect_vlans b "100 PVID Egress Untagged" || return 1
  expect_vlans c "200 PVID Egress Untagged" || return 1
  expect_vlans d "200 PVID Egress Untagged" || return 1
  # CHECK of an attachment with a VLAN, against its ADD result. The last pod added: without
  # a gateway address the bridge's MAC is not pinned and follows its lowest port MAC, so
  # an earlier result's bridge MAC is stale (CHECK says so, as the Go plugin's does).
  sed 's/}$//' "$W/conf.d" >"$W/check.d"
  printf ',"prevResult":%s}' "$(cat "$W/result.d")" >>"$W/check.d"
  cni CHECK d d "$W/check.d" || fail "CHECK d exited $?: $(cat "$W/out.d" "$W/err.d")"
}

# Pod T is a trunk for 100 and 300-302: an 802.1Q subinterface in VLAN 100 reaches A,
# one in VLAN 200 (not in the trunk) does not reach C, which D reaches.
case_vlan_trunk() {
  local ia ic ib
  add t t "$NET" cni0 10.99.0.0/24 \
    '"vlanTrunk":[{"id":100},{"minID":300,"maxID":302}],"isGateway":false' || return 1
  # Untagged frames of a trunk port stay in VLAN 1; the trunk VLANs are tagged only.
  expect_vlans t "1 PVID Egress Untagged" 100 300 301 302 || return 1
  ia=$(pod_ip a) ib=$(pod_ip b) ic=$(pod_ip c)
  # Addresses host-local does not hand out first (it counts up from .2); the /32 routes
  # send only the target's traffic through the subinterface.
  ip -n t link add link eth0 name eth0.100 type vlan id 100 &&
    ip -n t addr add 10.99.0.200/32 dev eth0.100 &&
    ip -n t link set eth0.100 up &&
    ip -n t route add "$ia/32" dev eth0.100 src 10.99.0.200 ||
    fail "cannot set up eth0.100 in pod t" || return 1
  ip -n t link add link eth0 name eth0.200 type vlan id 200 &&
    ip -n t addr add 10.99.0.201/32 dev eth0.200 &&
    ip -n t link set eth0.200 up &&
    ip -n t route add "$ic/32" dev eth0.200 src 10.99.0.201 ||
    fail "cannot set up eth0.200 in pod t" || return 1
  reach t "$ia" || return 1
  reach a 10.99.0.200 || return 1
  unreachable t "$ic" || return 1
  reach d "$ic" || return 1
  # T's untagged eth0 is in VLAN 1, which access ports without preserveDefaultVlan left.
  unreachable t "$ib" || return 1
}

# An access port with preserveDefaultVlan keeps VLAN 1 (egress untagged, no longer the
# PVID): it hears VLAN 1's broadcasts, a port without it does not. N is a pod without any
# VLAN option, so its port is in VLAN 1 only (the kernel's default PVID).
case_preserve_default_vlan() {
  local ip1 ia in
  add p1 p1 "$NET" cni0 10.99.0.0/24 '"vlan":100,"preserveDefaultVlan":true,"isGateway":false' ||
    return 1
  add n n "$NET" cni0 10.99.0.0/24 '"isGateway":false' || return 1
  expect_vlans p1 "1 Egress Untagged" "100 PVID Egress Untagged" || return 1
  expect_vlans n "1 PVID Egress Untagged" || return 1
  ip1=$(pod_ip p1) ia=$(pod_ip a) in=$(pod_ip n)
  # N's ARP requests go out in VLAN 1: P1 receives them and learns N as a neighbour (its
  # replies enter VLAN 100, so N's pings still fail); A never sees them.
  unreachable n "$ip1" || return 1
  unreachable n "$ia" || return 1
  ip -n p1 neigh show | grep -q "^$in " || fail "p1 never heard n's ARP in VLAN 1" || return 1
  if ip -n a neigh show | grep -q "^$in "; then
    fail "a heard n's ARP although VLAN 1 was removed from its port"
    return 1
  fi
  # P1 and A share VLAN 100.
  reach p1 "$ia" || return 1
}

# The bridge end of a VLAN gateway veth: both ends are in the node, so `ip` names the
# peer after the `@` instead of giving its index.
gateway_peer() {
  ip -n node -o link show dev "$1" 2>/dev/null | sed -n "s/^[0-9]*: $1@\([^:]*\):.*/\1/p"
}

# vlan with isGateway: the gateway address lives on <bridge>.<vlan> in the node, a veth
# whose bridge end is an access port of the VLAN.
case_vlan_gateway() {
  local gw
  add g1 g1 "$GWNET" cni1 10.98.0.0/24 '"vlan":300,"isGateway":true' || return 1
  ip -n node -4 -o addr show dev cni1.300 | grep -q ' 10.98.0.1/24 ' ||
    fail "cni1.300 lacks 10.98.0.1/24: $(ip -n node -o addr show dev cni1.300 2>&1)" || return 1
  gw=$(gateway_peer cni1.300)
  [ -n "$gw" ] || fail "no bridge end for cni1.300" || return 1
  [ "$(port_vlans "$gw")" = "300 PVID Egress Untagged" ] ||
    fail "gateway port $gw has VLANs [$(port_vlans "$gw" | tr '\n' ';')]" || return 1
  expect_vlans g1 "300 PVID Egress Untagged" || return 1
  reach g1 10.98.0.1
}

# The node's veths, by name.
node_veths() {
  ip -n node -o link show type veth | sed -n 's/^[0-9]*: \([^:@]*\)[:@].*/\1/p'
}

# Reservations: host-local's files named after an IP, under both networks.
reservations() {
  find "$W/ipam" -type f | grep -E '/[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$'
}

case_del_twice() {
  local p left gwpeer
  for p in a b c d t p1 n g1; do
    [ -f "$W/conf.$p" ] || continue
    del "$p" "$p" || return 1
  done
  for p in a b c d t p1 n g1; do
    [ -f "$W/conf.$p" ] || continue
    del "$p" "$p" || { why="second $why" && return 1; }
  done
  for p in a b c d t p1 n g1; do
    if ip -n "$p" link show dev eth0 >/dev/null 2>&1; then
      fail "pod $p still has eth0"
      return 1
    fi
  done
  # The VLAN gateway pair is shared by the VLAN's pods and stays, as in the Go plugin.
  gwpeer=$(gateway_peer cni1.300)
  left=$(node_veths | awk -v g="$gwpeer" '$1 != "cni1.300" && $1 != g { print $1 }')
  [ -z "$left" ] || fail "veths left in the node: $(echo "$left" | tr '\n' ' ')" || return 1
  left=$(reservations)
  [ -z "$left" ] || fail "reservations left: $(echo "$left" | tr '\n' ' ')"
}

run_case vlan case_vlan
run_case vlanTrunk case_vlan_trunk
run_case preserveDefaultVlan case_preserve_default_vlan
run_case vlan-gateway case_vlan_gateway
run_case del-twice case_del_twice
rm -rf "$W"
