#!/usr/bin/env bash
# moat demo: one engine, two isolation types, and a container moving between
# them. Every step is a plain moat command, echoed, and every claim is checked:
# the demo exits non-zero if moat does not show what it says.
set -euo pipefail
MOAT=${MOAT:-moat}
ROOT=$(mktemp -d /tmp/moat-demo.XXXXXX)
SWITCH="Demo Switch"
cleanup() {
  # every container, VM, mount and switch of the demo's root (the default
  # switch's bridge and rules too), then the root
  [ ! -e "$ROOT/moat.db" ] || "$MOAT" --root "$ROOT" system reset --force >/dev/null 2>&1 || true
  rm -rf "$ROOT"
}
trap cleanup EXIT
m() { echo "+ moat $*" >&2; "$MOAT" --root "$ROOT" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { echo "DEMO FAILED: $*" >&2; exit 1; }
ok() { echo "   ✔ $*"; }

HOST_KERNEL=$(uname -r)
step "setup: the busybox image (from Debian's busybox-static) and a switch"
MOAT="$MOAT" scripts/mkbusybox.sh --root "$ROOT" >/dev/null
m images
m switch create "$SWITCH" >/dev/null
m switch ls
m info | grep -E 'isolation|accel|kernel' || true

step "1. WINCONT: process isolation (the default)"
m run -d --name WINCONT --switch "$SWITCH" busybox sh -c '[ -e /keep ] || echo written-before-conversion > /keep; exec sleep 100001' >/dev/null
m top WINCONT
m exec WINCONT ps
hostpid=$("$MOAT" --root "$ROOT" inspect WINCONT | grep '"Pid"' | head -1 | tr -dc 0-9)
echo "+ ps -o pid,args -p $hostpid          # the host sees the container's process"
ps -o pid,args -p "$hostpid"
ps -o args= -p "$hostpid" | grep -q 'sleep 100001' || fail "WINCONT's process is not in the host's process list"
ok "WINCONT's init is PID 1 inside and PID $hostpid on the host"
k=$("$MOAT" --root "$ROOT" exec WINCONT uname -r)
echo "+ moat exec WINCONT uname -r  ->  $k   (host: $HOST_KERNEL)"
[ "$k" = "$HOST_KERNEL" ] || fail "process isolation should share the host kernel"
ok "shares the host kernel"

step "2. HYPVCON: the same command, only --isolation=hyperv differs"
m run -d --name HYPVCON --switch "$SWITCH" --isolation=hyperv busybox sh -c 'exec sleep 100002' >/dev/null
m top HYPVCON
m exec HYPVCON ps
echo "+ ps -eo pid,args | grep 'sleep 100002'   # the host does not see it"
if ps -eo args | grep -v grep | grep -q 'sleep 100002'; then fail "HYPVCON's process is visible on the host"; fi
ok "HYPVCON's process is not in the host's process list"
qemu=$("$MOAT" --root "$ROOT" inspect HYPVCON | grep '"QemuPid"' | tr -dc 0-9)
echo "+ ps -o pid,args -p $qemu   # the host sees only the utility VM"
ps -o pid,args -p "$qemu" | cut -c1-120
ps -o args= -p "$qemu" | grep -q qemu-system || fail "no QEMU process for HYPVCON"
k=$("$MOAT" --root "$ROOT" exec HYPVCON uname -r)
echo "+ moat exec HYPVCON uname -r  ->  $k   (host: $HOST_KERNEL)"
[ "$k" != "$HOST_KERNEL" ] || fail "HYPVCON runs on the host kernel: not VM-isolated"
ok "HYPVCON has its own kernel"
m ps

step "3. WINCONT: stop, convert to hyperv, start again"
m stop -t 1 WINCONT
m update --isolation=hyperv WINCONT
m start WINCONT
m ps
k=$("$MOAT" --root "$ROOT" exec WINCONT cat /keep)
echo "+ moat exec WINCONT cat /keep  ->  $k"
[ "$k" = "written-before-conversion" ] || fail "the file written before conversion is gone"
ok "the filesystem survived the conversion"
if ps -eo args | grep -v grep | grep -q 'sleep 100001'; then fail "WINCONT's process is still visible on the host"; fi
ok "WINCONT's processes vanished from the host's view"
k=$("$MOAT" --root "$ROOT" exec WINCONT uname -r)
[ "$k" != "$HOST_KERNEL" ] || fail "WINCONT still runs on the host kernel"
ok "WINCONT now runs on the guest kernel $k"

step "4. clean up"
m rm -f WINCONT HYPVCON
m switch rm "$SWITCH"
m ps -a
left=$(ps -eo args | grep -v grep | grep -c -E 'sleep 10000[12]|moat-[0-9a-f]{12}' || true)
[ "$left" = 0 ] || fail "something was left running"
ok "nothing left running"

printf '\n\033[1mDEMO OK\033[0m: one engine, two isolation types; the same commands managed both, VM isolation hid the processes and the kernel, and a stopped container changed type keeping its files.\n'
