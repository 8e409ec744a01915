#!/usr/bin/env bash
# Installs the three plugins into a CNI bin dir and one conflist into a CNI conf dir, as a
# node operator would. The plugins are one multi-call binary (target/dist/cni-plugins, built
# by scripts/build-release.sh)
# installed as three hard links, so delegation between them runs in-process. Every file
# is written to a temp name in the target dir and renamed into place: a runtime may exec a
# plugin while it is being replaced, and rename(2) means it sees the old binary or the
# new one, never a half-written file ("text file busy").
#
#   scripts/install.sh [--bin-dir DIR] [--conf-dir DIR] [--conflist FILE] [--from DIR]
#   scripts/install.sh --uninstall [--bin-dir DIR] [--conf-dir DIR] [--conflist FILE]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_dir=/opt/cni/bin
conf_dir=/etc/cni/net.d
conflist="$here/conf-examples/10-flannel.conflist"
from="$here/target/dist"
uninstall=0
plugins=(flannel bridge host-local)

while (($#)); do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --conf-dir) conf_dir="$2"; shift 2 ;;
    --conflist) conflist="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

atomic_copy() { # src dst mode
  local tmp
  tmp="$(mktemp "$(dirname "$2")/.install.XXXXXX")"
  cp "$1" "$tmp"
  chmod "$3" "$tmp"
  sync "$tmp" 2>/dev/null || true
  mv -f "$tmp" "$2"
}

if ((uninstall)); then
  for p in "${plugins[@]}"; do rm -f "$bin_dir/$p"; done
  rm -f "$conf_dir/$(basename "$conflist")"
  echo "removed ${plugins[*]} from $bin_dir and $(basename "$conflist") from $conf_dir"
  exit 0
fi

[ -x "$from/cni-plugins" ] || { echo "install.sh: $from/cni-plugins is missing (run scripts/build-release.sh)" >&2; exit 1; }
jq -e . "$conflist" >/dev/null || { echo "install.sh: $conflist is not valid JSON" >&2; exit 1; }
mkdir -p "$bin_dir" "$conf_dir"
staged="$(mktemp "$bin_dir/.cni-plugins.XXXXXX")"
trap 'rm -f "$staged"' EXIT
cp "$from/cni-plugins" "$staged"
chmod 0755 "$staged"
sync "$staged" 2>/dev/null || true
for p in "${plugins[@]}"; do
  ln -f "$staged" "$bin_dir/.$p.new"
  mv -f "$bin_dir/.$p.new" "$bin_dir/$p"
done
atomic_copy "$conflist" "$conf_dir/$(basename "$conflist")" 0644
echo "installed ${plugins[*]} into $bin_dir and $(basename "$conflist") into $conf_dir"
