#!/usr/bin/env bash
# Benchmarks moat side by side with its peers on this machine; prints a
# markdown table (see bench.py). Run through `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
MOAT=${MOAT:-$PWD/target/release/moat}
KDIR=${MOAT_KERNEL_DIR:-$PWD/target/vm-kernel}
export MOAT_KERNEL_DIR=$KDIR
WORK=$(mktemp -d /tmp/moat-bench.XXXXXX)
cleanup() {
  ids=$("$MOAT" --root "$WORK/root" ps -aq --no-trunc 2>/dev/null || true)
  [ -z "$ids" ] || "$MOAT" --root "$WORK/root" rm -f $ids >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
command -v cpio >/dev/null || { apt-get install -y -qq cpio >/dev/null; }

# the image
MOAT="$MOAT" scripts/mkbusybox.sh --root "$WORK/root" >/dev/null

# the bare-QEMU floor: the same kernel booting an init that powers off at once
mkdir -p "$WORK/floor/bin"
cp /bin/busybox "$WORK/floor/bin/busybox"
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' > "$WORK/floor/init"
chmod +x "$WORK/floor/init"
(cd "$WORK/floor" && find . | cpio -o -H newc --quiet > "$WORK/floor.cpio")
VER=$(cat "$KDIR/current")
TSC=$(awk -F: '/cpu MHz/ {printf "%d", $2*1000; exit}' /proc/cpuinfo)
ACCEL=$("$MOAT" --root "$WORK/root" info --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["Hypervisor"]["Accelerator"])')
FLOOR="qemu-system-x86_64 -accel $ACCEL -smp 1 -m 512M -M microvm,pit=on,pic=on,rtc=on -nodefaults -no-user-config \
 -display none -serial null -kernel $KDIR/$VER/vmlinux -initrd $WORK/floor.cpio \
 -append 'console=ttyS0 panic=-1 quiet tsc=reliable cryptomgr.notests mitigations=off pci=off tsc_early_khz=$TSC' -no-reboot"

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r), accelerator $ACCEL, guest kernel $VER"
python3 bench/bench.py --moat "$MOAT" --root "$WORK/root" --floor-cmd "$FLOOR" "$@"
