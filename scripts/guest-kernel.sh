#!/usr/bin/env bash
# Builds moat's utility-VM kernel from Debian's linux-source-6.1 with
# contrib/guest-kernel/moat.config (on top of `allnoconfig`: everything the
# guest uses built in, no modules, no tracing) and the patches in
# contrib/guest-kernel/patches, and installs it with
# `moat vm kernel install --vmlinux`. A build of the same source, config,
# patches and script is reused. See docs/vm.md, "Guest kernel".
#
#   MOAT=target/debug/moat scripts/guest-kernel.sh [moat options, e.g. --root DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
moat=${MOAT:-$here/target/debug/moat}
out=${MOAT_GUEST_KERNEL_BUILD:-$here/target/guest-kernel}
config=$here/contrib/guest-kernel/moat.config
patches=$(find "$here/contrib/guest-kernel/patches" -name '*.patch' | sort)
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

pkgs="linux-source-6.1 gcc make bc flex bison libelf-dev xz-utils patch"
missing=$(for p in $pkgs; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"; done)
if [ -n "$missing" ]; then
  apt-cache show linux-source-6.1 >/dev/null 2>&1 || $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
# shellcheck disable=SC2086
key=$( (echo "$version"; cat "$config" $patches "$0") | sha256sum | cut -c1-16)
image=$out/vmlinux-$key
if [ ! -s "$image" ]; then
  src=$out/linux-source-6.1
  # the tree is extracted afresh whenever the source or the patches change
  # shellcheck disable=SC2086
  tree="$version $(cat $patches | sha256sum | cut -c1-16)"
  if [ "$(cat "$out/source-version" 2>/dev/null)" != "$tree" ]; then
    rm -rf "$src" "$out/source-version"
    mkdir -p "$out"
    tar -xJf /usr/src/linux-source-6.1.tar.xz -C "$out"
    for p in $patches; do patch -s -p1 -d "$src" < "$p"; done
    echo "$tree" > "$out/source-version"
  fi
  make -s -C "$src" allnoconfig
  "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$config" >/dev/null
  make -s -C "$src" olddefconfig
  # every option the config asks for must have survived Kconfig's dependencies
  bad=0
  while IFS= read -r line; do
    case "$line" in CONFIG_*=n) continue ;; CONFIG_*) ;; *) continue ;; esac
    grep -qxF "$line" "$src/.config" || { echo "guest kernel: $line did not take (${line%%=*} depends on something unset)" >&2; bad=1; }
  done < "$config"
  [ "$bad" = 0 ] || exit 1
  echo "building the guest kernel $version (${key}), $(nproc) jobs..."
  make -s -C "$src" -j"$(nproc)" vmlinux
  # every page of .text is loaded into the guest and stored in its VM
  # template: none may be padding of int3s (entry-text-padding-zeros.patch)
  read -r off size < <(readelf -SW "$src/vmlinux" | sed -n 's/.*\] \.text  *PROGBITS  *[0-9a-f]* \([0-9a-f]*\) \([0-9a-f]*\) .*/\1 \2/p') || true
  [ -n "${size:-}" ] || { echo "guest kernel: no .text section found in $src/vmlinux" >&2; exit 1; }
  pad=$(python3 -c 'import sys; f=open(sys.argv[1], "rb"); f.seek(int(sys.argv[2], 16)); d=f.read(int(sys.argv[3], 16))
print(sum(d[i:i+4096] == b"\xcc" * 4096 for i in range(0, len(d), 4096)))' "$src/vmlinux" "$off" "$size")
  [ "$pad" = 0 ] || { echo "guest kernel: $pad pages of .text are int3 padding" >&2; exit 1; }
  cp "$src/vmlinux" "$image.tmp"
  mv "$image.tmp" "$image"
  # older builds of other configs
  find "$out" -maxdepth 1 -name 'vmlinux-*' ! -name "vmlinux-$key" -delete
fi
"$moat" "$@" vm kernel install --vmlinux "$image"
