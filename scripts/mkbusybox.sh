#!/usr/bin/env bash
# Builds the default demo image `busybox:latest` from Debian's busybox-static:
# a rootfs with /bin/busybox and one symlink per applet, imported into moat.
# usage: MOAT=path/to/moat scripts/mkbusybox.sh [--root DIR]
set -euo pipefail
MOAT=${MOAT:-moat}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,etc,tmp,root,proc,sys,dev}
chmod 1777 "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
tar --numeric-owner -C "$rootfs" -cf - . | "$MOAT" "$@" import -c 'CMD ["sh"]' - busybox:latest
