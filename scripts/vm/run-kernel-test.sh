#!/usr/bin/env bash
# Runs a guest test script under Debian 12's stock kernel in a throwaway QEMU VM, with our
# plugin binary inside, and checks the per-case markers it prints on the serial console.
#
#   scripts/vm/run-kernel-test.sh [--cache DIR] [--keep-log FILE] PLUGIN_BINARY [GUEST_SCRIPT]
#
# GUEST_SCRIPT defaults to scripts/vm/vlan-cases.sh. The host kernel this project's CI runs
# on lacks bridge VLAN filtering and 802.1Q, so features that need them are tested here.
# Nothing is installed on the host: the kernel package is fetched with `apt-get download`
# and unpacked into DIR (default: <cargo target dir>/vm), where later runs reuse it.
#
# Exit status: 0 when every case printed `VMTEST ok`, and `VMTEST DONE` was seen; 1 on a
# failed case, a missing DONE or a timeout; 2 on a set-up problem. VMTEST_ACCEL=kvm|tcg
# forces the accelerator.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

# The modules the guest loads; their dependencies are added from each module's modinfo.
wanted_modules=(bridge veth 8021q)

cache=""
keep_log=""
while (($#)); do
  case "$1" in
    --cache) cache="$2"; shift 2 ;;
    --keep-log) keep_log="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;;
    --) shift; break ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if (($# < 1 || $# > 2)); then
  echo "usage: $0 [--cache DIR] [--keep-log FILE] PLUGIN_BINARY [GUEST_SCRIPT]" >&2
  exit 2
fi
plugin="$(realpath "$1")"
guest_script="$(realpath "${2:-$here/vlan-cases.sh}")"
[ -f "$plugin" ] || { echo "plugin binary $plugin missing" >&2; exit 2; }
[ -f "$guest_script" ] || { echo "guest script $guest_script missing" >&2; exit 2; }
cache="${cache:-${CARGO_TARGET_DIR:-$root/target}/vm}"
mkdir -p "$cache"
cache="$(realpath "$cache")"

for tool in qemu-system-x86_64 apt-get apt-cache dpkg-deb cpio gzip xz ldd timeout setpriv; do
  command -v "$tool" >/dev/null || {
    echo "$tool missing: run scripts/install-deps.sh" >&2
    exit 2
  }
done
busybox=/bin/busybox
# Debian's dynamic `busybox` package has the same path; only busybox-static runs in an
# initramfs without its libraries.
if ! [ -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
  echo "a static $busybox is needed: apt-get install busybox-static" >&2
  exit 2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/vmtest.XXXXXX")"
qemu_pid=""
# shellcheck disable=SC2317  # reached through the traps below
cleanup() {
  # When the caller died, stdout and stderr are pipes without a reader: a job notice from
  # bash would raise SIGPIPE and end the script before the temp dir is gone.
  trap '' PIPE
  {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid"; then
      kill "$qemu_pid" || true
      wait "$qemu_pid" || true
    fi
    rm -rf "$work"
  } >/dev/null 2>&1
}
trap cleanup EXIT
# PIPE too: once the caller is gone, the next message to its pipe would otherwise end the
# script on the spot, without the EXIT trap.
trap 'exit 1' INT TERM HUP PIPE

log() { echo "vmtest: $*" >&2; }

# ---------------------------------------------------------------- the kernel, cached
# The concrete image package behind the metapackage, so the cache key follows Debian's
# kernel updates (a new ABI number is a new package name).
kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null |
  awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')" || true
if [ -z "$kpkg" ]; then
  kpkg="$(find "$cache" -maxdepth 1 -type d -name 'linux-image-*' -printf '%f\n' | sort -V | tail -n1)"
  [ -n "$kpkg" ] || { log "apt-cache knows no linux-image-amd64 (apt-get update?)"; exit 2; }
  log "apt-cache gave no kernel package; using the cached $kpkg"
fi
kdir="$cache/$kpkg"
stamp="$kpkg ${wanted_modules[*]}"
if [ "$(cat "$kdir/stamp" 2>/dev/null)" != "$stamp" ]; then
  mkdir -p "$kdir"
  deb="$(find "$kdir" -maxdepth 1 -name "${kpkg}_*.deb" | head -n1)"
  if [ -z "$deb" ]; then
    log "downloading $kpkg"
    # A download cut short must not pass for the package next time: it lands in a dir
    # of its own and moves in whole.
    rm -rf "$kdir/download"
    mkdir "$kdir/download"
    # apt drops to the _apt user for downloads, which cannot write into root's cache dir
    # (it warns, then downloads as root anyway).
    (cd "$kdir/download" && apt-get download -o APT::Sandbox::User=root "$kpkg" >/dev/null)
    mv "$kdir"/download/*.deb "$kdir/"
    rmdir "$kdir/download"
    deb="$(find "$kdir" -maxdepth 1 -name "${kpkg}_*.deb" | head -n1)"
    [ -n "$deb" ] || { log "apt-get download $kpkg left no .deb"; exit 2; }
  fi
  log "unpacking $(basename "$deb")"
  rm -rf "$kdir/x" "$kdir/modules" "$kdir/vmlinuz" "$kdir/modules.load"
  if ! dpkg-deb -x "$deb" "$kdir/x"; then
    rm -rf "$deb" "$kdir/x"
    log "$deb is damaged; removed, the next run downloads it again"
    exit 2
  fi
  kver="$(find "$kdir/x/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n1)"
  mdir="$kdir/x/lib/modules/$kver"
  cp "$kdir/x/boot/vmlinuz-$kver" "$kdir/vmlinuz"
  mkdir -p "$kdir/modules"
  # The package ships no modules.dep (depmod runs at install time), so dependencies come
  # from each module's .modinfo `depends=` entry; the list is written in load order.
  declare -A done_mod=()
  load_order=()
  resolve() {
    local m="$1" f deps d
    [ -n "${done_mod[$m]:-}" ] && return 0
    done_mod[$m]=1
    f="$(find "$mdir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" \) | head -n1)"
    if [ -z "$f" ]; then
      log "module $m is not in $kpkg"
      exit 2
    fi
    case "$f" in
      # busybox insmod cannot read compressed modules.
      *.xz) xz -dc "$f" >"$kdir/modules/$m.ko" ;;
      *) cp "$f" "$kdir/modules/$m.ko" ;;
    esac
    deps="$(tr '\0' '\n' <"$kdir/modules/$m.ko" | sed -n 's/^depends=//p' | head -n1)"
    for d in ${deps//,/ }; do
      resolve "${d//-/_}"
    done
    load_order+=("$m")
  }
  for m in "${wanted_modules[@]}"; do
    resolve "$m"
  done
  printf '%s\n' "${load_order[@]}" >"$kdir/modules.load"
  echo "$kver" >"$kdir/release"
  # The full tree is ~400 MB; only the image, the chosen modules and the .deb are kept.
  rm -rf "$kdir/x"
  echo "$stamp" >"$kdir/stamp"
  # Older kernel packages are never needed again.
  find "$cache" -mindepth 1 -maxdepth 1 -type d -name 'linux-image-*' ! -name "$kpkg" -exec rm -rf {} +
fi
kver="$(cat "$kdir/release")"

# ---------------------------------------------------------------- the initramfs
ir="$work/root"
mkdir -p "$ir"/{bin,usr/sbin,proc,sys,dev,run,tmp,lib/modules,vmtest/cni}
cp "$busybox" "$ir/bin/busybox"

# Copies a dynamically linked program and the libraries ldd names, at their own paths
# (the loader looks them up there).
copy_with_libs() {
  local src="$1" dst="$2" lib
  cp -L "$src" "$ir$dst"
  # A static build (scripts/build-release.sh) has no libraries, and ldd fails on it.
  { ldd "$src" 2>/dev/null || true; } | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' | while read -r lib; do
    [ -e "$ir$lib" ] && continue
    mkdir -p "$ir$(dirname "$lib")"
    cp -L "$lib" "$ir$lib"
  done
}
# busybox's ip has no netns or vlan support and it has no `bridge`: iproute2's are used.
copy_with_libs "$(command -v ip)" /usr/sbin/ip
copy_with_libs "$(command -v bridge)" /usr/sbin/bridge
copy_with_libs "$plugin" /vmtest/cni/cni-plugins
# Debug builds carry ~40 MB of debug info that TCG would otherwise decompress at boot.
if command -v strip >/dev/null; then
  strip --strip-debug "$ir/vmtest/cni/cni-plugins"
fi
# The multi-call binary dispatches on argv[0]: CNI_PATH holds it under the plugin names.
ln -s cni-plugins "$ir/vmtest/cni/bridge"
ln -s cni-plugins "$ir/vmtest/cni/host-local"
cp "$kdir"/modules/*.ko "$ir/lib/modules/"
cp "$kdir/modules.load" "$ir/lib/modules/load"
cp "$here/init.sh" "$ir/init"
cp "$guest_script" "$ir/vmtest/cases.sh"
chmod +x "$ir/init"
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/initrd.gz")
log "initramfs: $(du -k "$work/initrd.gz" | cut -f1) kB"

# ---------------------------------------------------------------- boot
accel="${VMTEST_ACCEL:-}"
if [ -z "$accel" ]; then
  accel=tcg
  # /dev/kvm alone is not enough: under nested virtualisation without VT-x/AMD-V exposed
  # to this machine (firecracker guests), a KVM guest hangs in early boot.
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    accel=kvm
  fi
fi

vm_log="$work/serial.log"
boot() {
  local accel="$1" limit="$2" args
  args=(-m 512 -nographic -no-reboot -nodefaults -serial stdio -nic none
    -kernel "$kdir/vmlinuz" -initrd "$work/initrd.gz"
    -append "console=ttyS0 panic=-1 quiet loglevel=4 vmtest_watchdog=$((limit - 5))")
  if [ "$accel" = kvm ]; then
    args=(-enable-kvm -cpu host "${args[@]}")
  else
    args=(-accel tcg "${args[@]}")
  fi
  : >"$vm_log"
  # setpriv: timeout dies with this script even when a SIGKILL leaves the trap no chance
  # to run, and qemu dies with timeout; timeout bounds a guest whose own watchdog never
  # fires.
  setpriv --pdeathsig KILL -- timeout -k 5 "$limit" setpriv --pdeathsig KILL -- \
    qemu-system-x86_64 "${args[@]}" </dev/null >"$vm_log" 2>&1 &
  qemu_pid=$!
}

# Waits for the VM started by boot; returns timeout's status (124: the limit was hit).
wait_vm() {
  local rc=0
  wait "$qemu_pid" || rc=$?
  qemu_pid=""
  return "$rc"
}

start=$(date +%s)
rc=0
if [ "$accel" = kvm ]; then
  boot kvm 60
  # A KVM guest that works reaches init in a second or two; one that stalls in early
  # boot (see above) never does, and TCG gets the rest of the time.
  for _ in $(seq 40); do
    grep -q 'VMTEST START' "$vm_log" && break
    kill -0 "$qemu_pid" 2>/dev/null || break
    sleep 0.5
  done
  if grep -q 'VMTEST START' "$vm_log"; then
    wait_vm || rc=$?
  else
    kill "$qemu_pid" 2>/dev/null || true
    wait_vm || rc=$?
    log "KVM did not boot the guest within 20 s (qemu status $rc); falling back to TCG"
    sed 's/^/  | /' "$vm_log" | tail -n 20 >&2
    accel=tcg
    rc=0
  fi
fi
if [ "$accel" = tcg ]; then
  boot tcg 300
  wait_vm || rc=$?
fi
elapsed=$(($(date +%s) - start))

if [ -n "$keep_log" ]; then
  cp "$vm_log" "$keep_log"
fi

# ---------------------------------------------------------------- verdict
# Serial lines end in CR LF; kernel messages may share a line with a marker.
clean="$work/serial.txt"
tr -d '\r' <"$vm_log" >"$clean"
ok=$(grep -c 'VMTEST ok ' "$clean" || true)
failed=$(grep -c 'VMTEST FAIL ' "$clean" || true)
echo "---- guest console ($kpkg, $accel, ${elapsed}s) ----"
cat "$clean"
echo "---- summary ----"
grep -oE 'VMTEST (ok|FAIL) .*' "$clean" || true
verdict=0
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "TIMEOUT: the VM ran longer than its limit"
  verdict=1
fi
if ! grep -q 'VMTEST DONE' "$clean"; then
  echo "the guest did not reach VMTEST DONE (qemu status $rc)"
  verdict=1
fi
if ((failed > 0)) || ((ok == 0)); then
  verdict=1
fi
echo "kernel $kver ($kpkg), accel $accel, ${elapsed}s in the VM: $ok ok, $failed failed"
exit "$verdict"
