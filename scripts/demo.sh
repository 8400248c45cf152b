#!/usr/bin/env bash
# moat demo: what works today, shown with plain moat commands, each checked.
set -euo pipefail
MOAT=${MOAT:-moat}
ROOT=$(mktemp -d /tmp/moat-demo.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
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
echo
echo "DEMO OK: image store works (containers arrive with issue #3)"
