#!/bin/bash
# Installs QEMU >= 8.2 (VM templates need it to migrate virtio-fs) from
# bookworm-backports. The backports source reuses the URIs and keyring of the
# machine's own Debian source (no mirror is named here); every other package
# stays on bookworm. A no-op when the installed QEMU is new enough.
set -euo pipefail
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
want=1:8.2
have=$(dpkg-query -W -f '${Version}' qemu-system-x86 2>/dev/null || true)
if [ -n "$have" ] && dpkg --compare-versions "$have" ge "$want"; then exit 0; fi
. /etc/os-release
if [ "${VERSION_CODENAME:-}" != bookworm ]; then
  echo "qemu-backports: not Debian 12 (${VERSION_CODENAME:-unknown}); install QEMU >= 8.2 yourself for VM templates" >&2
  exit 0
fi
list=/etc/apt/sources.list.d/moat-bookworm-backports.sources
if [ ! -e "$list" ]; then
  uris="" keyring=""
  # deb822 sources: the stanza whose Suites name bookworm (the main archive, not -security)
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    read -r u k < <(awk '
      BEGIN { RS=""; FS="\n" }
      {
        u=""; s=""; k=""; t="";
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { u=$i; sub(/^URIs:[ \t]*/, "", u) }
          if ($i ~ /^Suites:/) { s=" " $i " " }
          if ($i ~ /^Types:/) { t=$i }
          if ($i ~ /^Signed-By:/) { k=$i; sub(/^Signed-By:[ \t]*/, "", k) }
        }
        if (t ~ /deb( |$)/ && s ~ / bookworm /) { print u, (k == "" ? "-" : k); exit }
      }' "$f") || true
    if [ -n "${u:-}" ]; then uris=$u keyring=$k; break; fi
  done
  # one-line sources.list
  if [ -z "$uris" ] && [ -e /etc/apt/sources.list ]; then
    uris=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i ~ /:\/\//) { print $i; exit } }' /etc/apt/sources.list)
  fi
  if [ -z "$uris" ]; then
    echo "qemu-backports: no Debian bookworm source found to reuse for bookworm-backports" >&2
    exit 1
  fi
  tmp=$(mktemp)
  {
    echo "Types: deb"
    echo "URIs: $uris"
    echo "Suites: bookworm-backports"
    echo "Components: main"
    if [ -n "$keyring" ] && [ "$keyring" != - ]; then echo "Signed-By: $keyring"; fi
  } >"$tmp"
  $SUDO install -m 0644 "$tmp" "$list"
  rm -f "$tmp"
  echo "qemu-backports: enabled bookworm-backports from the machine's own Debian source ($list)"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports qemu-system-x86
qemu-system-x86_64 --version | head -1
