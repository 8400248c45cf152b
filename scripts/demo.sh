#!/usr/bin/env bash
# moat demo: what works today, shown with plain moat commands, each checked.
set -euo pipefail
MOAT=${MOAT:-moat}
ROOT=$(mktemp -d /tmp/moat-demo.XXXXXX)
cleanup() {
  ids=$("$MOAT" --root "$ROOT" ps -aq --no-trunc 2>/dev/null || true)
  [ -z "$ids" ] || "$MOAT" --root "$ROOT" rm -f $ids >/dev/null 2>&1 || true
  rm -rf "$ROOT"
}
trap cleanup EXIT
m() { echo "+ moat $*" >&2; "$MOAT" --root "$ROOT" "$@"; }
fail() { echo "DEMO FAILED: $*" >&2; exit 1; }

echo "== moat demo (root $ROOT)"
m info
echo "== build the default image busybox:latest from Debian's busybox-static"
id=$(MOAT="$MOAT" scripts/mkbusybox.sh --root "$ROOT")
echo "$id"
m images
m images | grep -q '^busybox ' || fail "busybox not listed"
echo "== save it as a docker-archive and load it into a second root"
m save busybox -o "$ROOT/busybox.tar"
ROOT2=$ROOT/second
"$MOAT" --root "$ROOT2" load -i "$ROOT/busybox.tar"
id2=$("$MOAT" --root "$ROOT2" images -q --no-trunc)
[ "$id2" = "$id" ] || fail "image ID changed across save/load: $id vs $id2"
echo "same image ID after save/load: $id2"
echo "== a hostile archive is refused"
printf 'x' > "$ROOT/x"; tar -C "$ROOT" -cf "$ROOT/evil.tar" --transform 's,^x$,../evil,' x
if m import "$ROOT/evil.tar" evil 2>"$ROOT/err"; then fail "evil archive accepted"; fi
cat "$ROOT/err"
[ ! -e "$ROOT/../evil" ] || fail "file escaped"
echo "== a process-isolated container"
m run --rm busybox echo "hello from a container"
m run -d --name WINCONT busybox sleep 3600
m top WINCONT
m exec WINCONT ps
hostpid=$("$MOAT" --root "$ROOT" inspect WINCONT | grep '"Pid"' | tr -dc 0-9)
echo "+ ps -o pid,args -p $hostpid   (the same process, seen from the host)"
ps -o pid,args -p "$hostpid" | grep -q 'sleep 3600' || fail "container process not visible on the host"
ps -o pid,args -p "$hostpid"
m stop -t 1 WINCONT
m ps -a
m rm WINCONT
echo
echo "DEMO OK: image store and process isolation work (VM isolation arrives with issue #4)"
