#!/bin/busybox sh
# shellcheck shell=dash
# /init of the test VM (busybox sh): mounts the pseudo filesystems, loads the modules in
# dependency order, runs /vmtest/cases.sh and powers off. Markers go to the serial
# console, where scripts/vm/run-kernel-test.sh reads them.
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/bin
mount -t devtmpfs dev /dev
# The initramfs has no /dev/console node, so the kernel gave init no stdio at all.
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
# /run/netns holds the bind mounts `ip netns add` makes: a mount of its own, as on a
# booted system, rather than the initramfs root.
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp

fail_all() {
  echo "VMTEST FAIL init: $*"
  echo "VMTEST DONE"
  poweroff -f
}

while read -r m; do
  insmod "/lib/modules/$m.ko" || fail_all "insmod $m failed"
done </lib/modules/load

# The host's timeout is the hard limit; this one lets the guest report a hang itself.
watchdog=$(sed -n 's/.*vmtest_watchdog=\([0-9]*\).*/\1/p' /proc/cmdline)
(
  sleep "${watchdog:-250}"
  echo "VMTEST FAIL watchdog: the cases did not finish within ${watchdog:-250}s"
  poweroff -f
) &

echo "VMTEST START kernel $(uname -r)"
if sh /vmtest/cases.sh; then
  echo "VMTEST DONE"
else
  echo "VMTEST FAIL cases: /vmtest/cases.sh exited with status $?"
  echo "VMTEST DONE"
fi
poweroff -f
