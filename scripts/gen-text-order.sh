#!/usr/bin/env bash
# Regenerates plugins/multicall/text-order.ld, the list of functions the plugins run, in
# the order the shipped binary should lay them out (see plugins/multicall/build.rs for
# why). Run it after changes to the plugins' hot paths or to Cargo.lock/toolchain (the
# symbol names carry crate hashes; a stale list only costs memory, never correctness).
#
# How: builds the release binary (scripts/build-release.sh keeps an unstripped copy), runs
# every command of each plugin under callgrind in throwaway namespaces, in a private
# network + mount namespace so the machine's own network and CNI dirs are never touched,
# and collects the functions each run executed. Groups, in this order: what host-local
# runs; what bridge (with in-process host-local, ipMasq on) adds; what the flannel chain
# adds. A plugin's run then maps only its own group's folios and those before it.
#   scripts/gen-text-order.sh     (root; installs valgrind if missing)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$here/plugins/multicall/text-order.ld"

if [ "${1:-}" != "--inside" ]; then
  [ "$(id -u)" = 0 ] || { echo "gen-text-order.sh must run as root (it creates network namespaces)" >&2; exit 1; }
  command -v valgrind >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
  }
  "$here/scripts/build-release.sh" >/dev/null
  TEXT_ORDER_OUTER_NETNS="$(readlink /proc/self/ns/net)" \
    exec unshare --net --mount --propagation private -- "$0" --inside
fi

# Only ever inside the private namespaces made above: the tmpfs below would hide the
# machine's /run/netns.
if [ -z "${TEXT_ORDER_OUTER_NETNS:-}" ] || [ "$(readlink /proc/self/ns/net)" = "$TEXT_ORDER_OUTER_NETNS" ]; then
  echo "gen-text-order.sh --inside: not in a private network namespace" >&2
  exit 1
fi
target_dir="${CARGO_TARGET_DIR:-$here/target}"
unstripped="$target_dir/static/cni-plugins.unstripped"
[ -x "$unstripped" ] || { echo "$unstripped missing (scripts/build-release.sh makes it)" >&2; exit 1; }
mount -t tmpfs tmpfs /run/netns 2>/dev/null || { mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns; }
T="$(mktemp -d /tmp/text-order.XXXXXX)"
trap 'for n in node pod1 pod2 pod3; do ip netns del "$n" 2>/dev/null || true; done; rm -rf "$T"' EXIT
for n in node pod1 pod2 pod3; do ip netns add "$n"; done
mkdir -p "$T/bin"
for p in flannel bridge host-local; do ln -s "$unstripped" "$T/bin/$p"; done

# run GROUP PLUGIN COMMAND CONTAINER NETNS CONF: one plugin process, as a runtime starts
# it, in the node namespace, under valgrind's lackey, which logs the address of every
# block of code it runs (without chasing branches into the next block: a chased callee
# would be logged under its caller's address).
n=0
run() {
  local group=$1 plugin=$2 cmd=$3 cid=$4 netns=$5 conf=$6
  n=$((n + 1))
  # A runtime passes its own environment too (containerd: all of it), which takes other
  # paths (sorting and copying a map of a few dozen entries) than the bare CNI variables
  # a test harness sends.
  local envs=(env -i PATH="$PATH")
  if [ "$env_mode" = runtime ]; then
    for i in $(seq 1 30); do envs+=("RUNTIME_ENV_$i=value-$i"); done
  fi
  "${envs[@]}" CNI_COMMAND="$cmd" CNI_CONTAINERID="$cid" CNI_NETNS="$netns" \
    CNI_IFNAME=eth0 CNI_PATH="$T/bin" \
    ip netns exec node valgrind --tool=lackey --vex-guest-chase=no --trace-superblocks=yes \
    --log-file="$T/sb.$group.$n" "$T/bin/$plugin" <"$conf" >"$T/out.$n" 2>"$T/err.$n" || {
    echo "$plugin $cmd $cid failed:" >&2
    cat "$T/out.$n" >&2
    exit 1
  }
}

# with CONF VERSION [JQ]: CONF with that cniVersion (and JQ's fields merged in), as a file.
# (Both run in command substitutions, so the file names come from mktemp, not a counter.)
with() {
  local f
  f=$(mktemp "$T/conf.XXXXXX")
  jq --arg v "$2" ". + {cniVersion: \$v} + ${3:-{\}}" "$1" >"$f"
  echo "$f"
}
# check_of CONF: CONF with the last ADD's result as prevResult, as a runtime sends CHECK.
check_of() {
  local f
  f=$(mktemp "$T/conf.XXXXXX")
  jq --slurpfile r "$T/out.$n" '. + {prevResult: $r[0]}' "$1" >"$f"
  echo "$f"
}

for env_mode in bare runtime; do
  # host-local alone: every command, in each CNI version a runtime may send.
  cat >"$T/hl.json" <<EOF
{"cniVersion":"1.1.0","name":"ordnet","type":"host-local",
 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.77.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"$T/hl"}}
EOF
  run 1 host-local VERSION "" "" "$T/hl.json"
  for v in 0.3.1 0.4.0 1.0.0 1.1.0; do
    c=$(with "$T/hl.json" "$v")
    run 1 host-local ADD "h$v" /run/netns/pod1 "$c"
    [ "$v" = 0.3.1 ] || run 1 host-local CHECK "h$v" /run/netns/pod1 "$(check_of "$c")"
  done
  run 1 host-local STATUS "" "" "$T/hl.json"
  run 1 host-local GC "" "" "$(with "$T/hl.json" 1.1.0 '{validAttachments: [{containerID: "h1.0.0", ifname: "eth0"}]}')"
  for v in 0.3.1 0.4.0 1.0.0 1.1.0; do
    run 1 host-local DEL "h$v" /run/netns/pod1 "$(with "$T/hl.json" "$v")"
  done

  # bridge with host-local in-process: kube-flannel's delegate config, ipMasq on and off;
  # the first ADD creates the bridge.
  cat >"$T/br.json" <<EOF
{"cniVersion":"1.0.0","name":"ordnet","type":"bridge","bridge":"cni0","isGateway":true,
 "isDefaultGateway":true,"hairpinMode":true,"mtu":1450,"ipMasq":true,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.77.1.0/24"}]],"routes":[{"dst":"10.77.0.0/16"}],"dataDir":"$T/br"}}
EOF
  for v in 0.4.0 1.0.0 1.1.0; do
    for masq in true false; do
      c=$(with "$T/br.json" "$v" "{ipMasq: $masq}")
      run 2 bridge ADD "b$v$masq" /run/netns/pod1 "$c"
      run 2 bridge CHECK "b$v$masq" /run/netns/pod1 "$(check_of "$c")"
      run 2 bridge DEL "b$v$masq" /run/netns/pod1 "$c"
    done
  done
  c=$(with "$T/br.json" 1.0.0)
  run 2 bridge ADD b1 /run/netns/pod1 "$c"
  run 2 bridge ADD b2 /run/netns/pod2 "$c"
  run 2 bridge STATUS "" "" "$(with "$T/br.json" 1.1.0)"
  run 2 bridge GC "" "" "$(with "$T/br.json" 1.1.0 '{validAttachments: [{containerID: "b1", ifname: "eth0"}]}')"
  run 2 bridge DEL b2 /run/netns/pod2 "$c"
  run 2 bridge DEL b1 /run/netns/pod1 "$c"
  run 2 bridge DEL b1 /run/netns/pod1 "$c"

  # The flannel chain, with flanneld masquerading and without.
  cat >"$T/fl.json" <<EOF
{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","subnetFile":"$T/subnet.env","dataDir":"$T/fl",
 "delegate":{"bridge":"cni1","hairpinMode":true,"isDefaultGateway":true},"ipam":{"dataDir":"$T/fl-ipam"}}
EOF
  for masq in true false; do
    printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=%s\n' \
      "$masq" >"$T/subnet.env"
    for v in 1.0.0 1.1.0; do
      c=$(with "$T/fl.json" "$v")
      run 3 flannel ADD "f$v$masq" /run/netns/pod3 "$c"
      run 3 flannel CHECK "f$v$masq" /run/netns/pod3 "$(check_of "$c")"
      run 3 flannel DEL "f$v$masq" /run/netns/pod3 "$c"
    done
  done

done

# Every executed block's address, mapped through the link map to the input section that
# holds it; each such section becomes a pattern in its group.
python3 - "$T" "$out" "$unstripped" "$target_dir/static/cni-plugins.map" \
  "$(git -C "$here" rev-parse --short HEAD)" "$(rustc -V)" <<'PY'
import bisect, glob, os, re, subprocess, sys
tmp, out, binary, link_map, commit, rustc = sys.argv[1:7]
entry = int(re.search(r'Entry point address:\s+(0x[0-9a-f]+)',
                      subprocess.run(['readelf', '-h', binary], capture_output=True, text=True).stdout).group(1), 16)

# GNU ld map: ` .text.NAME  0xADDR  0xSIZE  OBJECT`, a long NAME alone on its line with
# the rest on the next.
sections = []  # (addr, size, name, object)
pending = None
for line in open(link_map, errors='replace'):
    m = re.match(r'^ (\.text\S*)(?:\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(.*))?$', line.rstrip('\n'))
    if m:
        if m.group(2):
            sections.append((int(m.group(2), 16), int(m.group(3), 16), m.group(1), m.group(4)))
            pending = None
        else:
            pending = m.group(1)
        continue
    m = re.match(r'^\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(\S.*)$', line.rstrip('\n'))
    if pending and m:
        sections.append((int(m.group(1), 16), int(m.group(2), 16), pending, m.group(3)))
    pending = None
sections = sorted(s for s in sections if s[1] > 0)
starts = [s[0] for s in sections]

# Function symbols by address: a merged function's body may be named after any of its
# aliases, and which one wins can change with unrelated code changes.
aliases = {}
for line in subprocess.run(['nm', '--defined-only', binary], capture_output=True, text=True).stdout.splitlines():
    f = line.split()
    if len(f) == 3 and f[1] in 'tTwW' and re.fullmatch(r'[A-Za-z_][A-Za-z0-9_.$]*', f[2]):
        aliases.setdefault(int(f[0], 16), []).append(f[2])

def patterns(addr, name, obj):
    member = re.match(r'.*/([^/]+\.a)\((.+)\)$', obj)
    if member:
        return [f'*{member.group(1)}:{member.group(2)}({name})']
    if name == '.text':
        # Rust objects have one section per function; a plain .text is the C runtime's.
        return [f'*{os.path.basename(obj)}({name})']
    names = [name] + [f'.text.{a}' for a in aliases.get(addr, [])]
    # LLVM numbers local copies (`alloc_impl_runtime.979`) in module order, which any
    # change renumbers: match every copy of the function instead.
    return [f'*({re.sub(r"[.][0-9]+$", ".*", n)})' for n in names]

groups = {}
for path in sorted(glob.glob(f'{tmp}/sb.*')):
    g = int(path.split('.')[-2])
    blocks = [int(l[3:], 16) for l in open(path) if l.startswith('SB ')]
    if not blocks:
        sys.exit(f'{path}: no blocks traced')
    base = blocks[0] - entry  # the first block is the entry point
    hit = groups.setdefault(g, set())
    for b in blocks:
        i = bisect.bisect_right(starts, b - base) - 1
        if i >= 0 and b - base < sections[i][0] + sections[i][1]:
            hit.add(i)
seen = set()
lines = [
    f'/* Generated by scripts/gen-text-order.sh at {commit} with {rustc}: do not edit.',
    '   The code each plugin run executed, grouped (host-local, then what bridge adds,',
    '   then what the flannel chain adds), for plugins/multicall/build.rs. */',
    'SECTIONS',
    '{',
    '  .text.plugins_hot :',
    '  {',
]
titles = {1: 'host-local', 2: 'bridge (with host-local in-process)', 3: 'flannel chain'}
summary = []
for g in sorted(groups):
    mine = sorted(i for i in groups[g] if i not in seen)
    seen.update(mine)
    size = sum(sections[i][1] for i in mine)
    summary.append(f'{titles[g]} +{len(mine)} sections, {size // 1024} kB')
    lines.append(f'    /* {titles[g]}: {len(mine)} sections, {size} bytes */')
    lines += ['    ' + p for p in dict.fromkeys(p for i in mine for p in patterns(*sections[i][:1], *sections[i][2:]))]
lines += ['  }', '}', 'INSERT BEFORE .text;', '']
open(out, 'w').write('\n'.join(lines))
print(f'{out}: ' + '; '.join(summary))
PY
