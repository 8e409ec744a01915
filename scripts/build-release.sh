#!/usr/bin/env bash
# Builds what a node runs into target/dist/ (install.sh installs from there):
#   cni-plugins   flannel + bridge + host-local in one file, statically linked
#   flanneld      the overlay agent
# (benchmark and stress scripts build what else they need themselves).
#
# Why static: a plugin is a process started for every pod operation, and for such a short
# life the dynamic loader is a large share of the cost, in time and in memory. Measured
# here (same code, scripts/bench.sh method): against the dynamically linked build, glibc
# static-pie saves 0.5 ms per ADD and 1.1 MB of peak RSS; musl, with the size-optimised
# `plugin-release` profile, also saves the 0.7 MB of glibc's static part and its
# CPU-feature probing at start (peak RSS 1.6-1.8 MB against 4.2 MB dynamic, the Go
# bridge's 5.1 MB); its allocator is replaced by dlmalloc (plugins/multicall), since
# musl's own maps and unmaps some 55 pages per ADD (0.3 ms). Both
# stay position-independent (ASLR). Nothing in the plugins resolves names through NSS,
# the part of glibc that misbehaves when linked statically. musl is used when rustup has
# (or can fetch) its target; otherwise glibc static-pie. flanneld stays dynamic: it is
# long-lived, and it may resolve etcd host names.
#
# Text layout: the functions each plugin runs are grouped at the start of the text
# (plugins/multicall/text-order.ld, made by scripts/gen-text-order.sh; see
# plugins/multicall/build.rs). The kernel maps the executable's page cache in 64 kB folios,
# so with the linker's own order a host-local run had 95% of the text resident; grouped,
# peak RSS measured 1584 -> 600 kB for host-local, ~1.7 -> 1.35 MB for bridge. The
# unstripped binary and its link map stay in target/static for the generator.
#
# The static build has its own target dir: RUSTFLAGS reach only the --target artifacts
# (build scripts and proc macros stay dynamic, as they must), and the ordinary build's
# cache is left alone.
#   scripts/build-release.sh        (CARGO_BUILD_JOBS limits the build)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
host="$(rustc -vV | sed -n 's/^host: //p')"
dist="$target_dir/dist"
static_dir="$target_dir/static"

cargo build --release --quiet -p flanneld-rs
# The plugins' text layout (plugins/multicall/build.rs); unset, the linker's own order.
order="$PWD/plugins/multicall/text-order.ld"
if [ -f "$order" ]; then export CNI_PLUGINS_TEXT_ORDER="$order"; fi
export CNI_PLUGINS_LINK_MAP="$static_dir/cni-plugins.map"
musl="${host/-linux-gnu/-linux-musl}"
if [ "$musl" != "$host" ] && command -v rustup >/dev/null 2>&1 &&
  { rustup target list --installed 2>/dev/null | grep -qx "$musl" ||
    rustup target add "$musl" >/dev/null 2>&1; }; then
  cargo build --profile plugin-release --quiet -p multicall --target "$musl" --target-dir "$static_dir"
  plugins="$static_dir/$musl/plugin-release/cni-plugins" libc="musl"
elif [[ "$host" == *-linux-gnu* ]]; then
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --profile plugin-release --quiet -p multicall --target "$host" --target-dir "$static_dir"
  plugins="$static_dir/$host/plugin-release/cni-plugins" libc="glibc"
else
  cargo build --profile plugin-release --quiet -p multicall --target-dir "$static_dir"
  plugins="$static_dir/plugin-release/cni-plugins" libc="host default"
fi

mkdir -p "$dist"
place() { # src name: a temp name then rename, so a process exec'ing it never sees half a file
  cp "$1" "$dist/.$2.new"
  mv -f "$dist/.$2.new" "$dist/$2"
}
cp "$plugins" "$static_dir/cni-plugins.unstripped"
strip -o "$static_dir/cni-plugins.stripped" "$plugins"
place "$static_dir/cni-plugins.stripped" cni-plugins
place "$target_dir/release/flanneld" flanneld
for p in flannel bridge host-local; do
  ln -f "$dist/cni-plugins" "$dist/.$p.new"
  mv -f "$dist/.$p.new" "$dist/$p"
done
linkage="dynamically linked"
if ! ldd "$dist/cni-plugins" 2>&1 | grep -q '=>'; then linkage="statically linked"; fi
hot=$(readelf -SW "$dist/cni-plugins" |
  sed -n 's/.*\.text\.plugins_hot *PROGBITS *[0-9a-f]* [0-9a-f]* \([0-9a-f]*\) .*/\1/p')
layout="text layout: $([ -n "$hot" ] && echo "$((16#$hot / 1024)) kB" || echo none) grouped by plugins/multicall/text-order.ld"
echo "built $dist: $(cd "$dist" && ls | tr '\n' ' ')(cni-plugins $linkage, $libc, $(stat -c %s "$dist/cni-plugins") bytes, $layout)"
