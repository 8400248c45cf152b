#!/usr/bin/env bash
# moat's benchmarks, side by side with crun, runc, podman and bare QEMU, in
# one run on this machine. Prepares everything, prints a markdown table.
# Run through `make bench` (which installs the peers).
set -euo pipefail
cd "$(dirname "$0")/.."
MOAT=${MOAT:-$PWD/target/release/moat}
export MOAT_KERNEL_DIR=${MOAT_KERNEL_DIR:-$PWD/target/vm-kernel}
WORK=$(mktemp -d /tmp/moat-bench.XXXXXX)
ROOT=$WORK/root
cleanup() {
  # containers, VMs, mounts, every switch (the default one too), rules, taps
  [ ! -e "$ROOT/moat.db" ] || "$MOAT" --root "$ROOT" system reset --force >/dev/null 2>&1 || true
  for c in bcrun brunc bcrun-exec brunc-exec; do crun delete -f $c >/dev/null 2>&1 || true; runc delete -f $c >/dev/null 2>&1 || true; done
  podman --runtime runc --cgroup-manager=cgroupfs --events-backend=file rmi -f localhost/busybox:latest >/dev/null 2>&1 || true
  [ -z "${REG_PID:-}" ] || { podman --runtime runc --cgroup-manager=cgroupfs --events-backend=file rmi -f "$REG/big:bench" >/dev/null 2>&1 || true; kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; }
  # containerd (its pods first), what CNI made for them, its mounts
  if [ -n "${CTD_PID:-}" ]; then
    for t in $(ctr -a "$CTD/c.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$CTD/c.sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
      ctr -a "$CTD/c.sock" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1 || true
    done
    kill "$CTD_PID" 2>/dev/null || true; wait "$CTD_PID" 2>/dev/null || true
    # shims of this containerd that outlived it (their command line names its socket)
    for f in /proc/[0-9]*/cmdline; do
      if tr '\0' ' ' < "$f" 2>/dev/null | grep -q -- "-address $CTD/c.sock"; then p=${f#/proc/}; kill -9 "${p%/cmdline}" 2>/dev/null || true; fi
    done
    # runc's pod cgroups (CRI's cgroupsPath k8s.io/<id>), once empty
    for d in /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/k8s.io; do [ ! -d "$d" ] || find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true; done
    for n in $(ls /var/run/netns 2>/dev/null); do
      case " $NETNS_BEFORE " in *" $n "*) ;; *) case $n in cni-*) umount -l "/var/run/netns/$n" 2>/dev/null || true; rm -f "/var/run/netns/$n";; esac;; esac
    done
    ip link del mtbench0 2>/dev/null || true
    { grep -o " $CTD/[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r mp; do umount -l "$mp" 2>/dev/null || true; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# the image, and the same rootfs as an OCI bundle for crun/runc
MOAT="$MOAT" scripts/mkbusybox.sh --root "$ROOT" >/dev/null
"$MOAT" --root "$ROOT" save busybox -o "$WORK/busybox.tar"
mkdir -p "$WORK/bundle/rootfs"
tar -C "$WORK/bundle/rootfs" -xf "$WORK/busybox.tar" --wildcards '*/layer.tar' -O | tar -C "$WORK/bundle/rootfs" -xf -
(cd "$WORK/bundle" && crun spec)
python3 - "$WORK/bundle" <<'PY'
import json, sys, shutil, os
b = sys.argv[1]
c = json.load(open(f"{b}/config.json"))
c["process"]["terminal"] = False
c["process"]["args"] = ["true"]
c["root"]["readonly"] = False
json.dump(c, open(f"{b}/config.json", "w"))
s = b.replace("bundle", "bundle-sleep")
os.makedirs(s)
c["root"]["path"] = f"{b}/rootfs"  # runc refuses a symlinked rootfs
c["process"]["args"] = ["sleep", "100000"]
json.dump(c, open(f"{s}/config.json", "w"))
PY
podman --runtime runc --cgroup-manager=cgroupfs --events-backend=file load -q -i "$WORK/busybox.tar" >/dev/null

# the bare-QEMU floor: the same kernel into an init that powers off (or idles)
for kind in off idle; do
  d=$WORK/floor-$kind; mkdir -p $d/bin; cp /bin/busybox $d/bin/busybox
  if [ $kind = off ]; then printf '#!/bin/busybox sh\n/bin/busybox mkdir -p /dev\n/bin/busybox mount -t devtmpfs dev /dev\n/bin/busybox echo moat-floor-ok > /dev/ttyS0\n/bin/busybox poweroff -f\n' > $d/init
  else printf '#!/bin/busybox sh\nexec /bin/busybox sleep 100000\n' > $d/init; fi
  chmod +x $d/init; (cd $d && find . | cpio -o -H newc --quiet > "$WORK/floor-$kind.cpio")
done
VER=$(cat "$MOAT_KERNEL_DIR/current")
TSC=$(awk -F: '/cpu MHz/ {printf "%d", $2*1000; exit}' /proc/cpuinfo)
ACCEL=$("$MOAT" --root "$ROOT" info --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["Hypervisor"]["Accelerator"])')
qemu() { echo "qemu-system-x86_64 -name $1 -accel $ACCEL -smp 1 -m 512M -M microvm,pit=off,pic=on,rtc=on -nodefaults -no-user-config -display none -serial stdio -kernel $MOAT_KERNEL_DIR/$VER/vmlinux -initrd $2 -append 'console=ttyS0 panic=-1 quiet tsc=reliable cryptomgr.notests mitigations=off pci=off tsc_early_khz=$TSC' -no-reboot"; }

# a ~100 MB image in three layers, and the same layer tars for tar -x
mkdir -p "$WORK/big/layers"
python3 - "$WORK/big" <<'PY'
import hashlib, io, json, os, random, sys, tarfile
d = sys.argv[1]
rnd = random.Random(7)
layers, diffs = [], []
for i in range(3):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for j in range(40):
            data = rnd.randbytes(850_000)
            ti = tarfile.TarInfo(f"layer{i}/file{j}.bin"); ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    b = buf.getvalue(); h = hashlib.sha256(b).hexdigest()
    open(f"{d}/layers/{i}.tar", "wb").write(b)
    layers.append((h, b)); diffs.append("sha256:" + h)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]}, "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
cid = hashlib.sha256(cfg).hexdigest()
with tarfile.open(f"{d}/big.tar", "w") as t:
    def add(name, data):
        ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    add(f"{cid}.json", cfg)
    for h, b in layers:
        add(f"{h}/layer.tar", b)
    add("manifest.json", json.dumps([{"Config": f"{cid}.json", "RepoTags": ["big:bench"], "Layers": [f"{h}/layer.tar" for h, _ in layers]}]).encode())
PY

# a local registry (Debian's docker-registry, 127.0.0.1 only) holding the big
# image as skopeo pushes it (gzip layers), for the pull benchmark
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
mkdir -p "$WORK/registry"
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' "$WORK/registry/data" "$REG" > "$WORK/registry/config.yml"
docker-registry serve "$WORK/registry/config.yml" >/dev/null 2>"$WORK/registry/log" & REG_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
skopeo copy -q --dest-tls-verify=false "docker-archive:$WORK/big/big.tar" "docker://$REG/big:bench"

# containerd with its CRI plugin on private sockets and directories: moat's
# shim as the handlers moat (process) and moat-hyperv (hyperv), Debian's runc as
# runc; CNI's bridge plugin on a bridge of the benchmark's own
SHIM=${SHIM:-$(dirname "$MOAT")/containerd-shim-moat-v2}
CRI_BENCH=${CRI_BENCH:-$(dirname "$MOAT")/examples/cri_bench}
CTD=$WORK/ctd
CRI_ARGS=""
if [ -x "$SHIM" ] && [ -x "$CRI_BENCH" ] && command -v containerd >/dev/null; then
  mkdir -p "$CTD/bin" "$CTD/net.d" "$CTD/logs"
  for n in moat-process moat-hyperv; do ln -s "$SHIM" "$CTD/bin/containerd-shim-$n-v2"; done
  printf '{"cniVersion":"0.4.0","name":"mtbench0","plugins":[{"type":"bridge","bridge":"mtbench0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.215.0.0/24"}]],"dataDir":"%s/ipam"}}]}\n' "$CTD" > "$CTD/net.d/10-bench.conflist"
  cat > "$CTD/config.toml" <<TOML
version = 2
root = "$CTD/root"
state = "$CTD/state"
[grpc]
  address = "$CTD/c.sock"
[ttrpc]
  address = "$CTD/c.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/library/pause:bench"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "$CTD/net.d"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat]
  runtime_type = "io.containerd.moat-process.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat-hyperv]
  runtime_type = "io.containerd.moat-hyperv.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
TOML
  NETNS_BEFORE=$(ls /var/run/netns 2>/dev/null | tr '\n' ' ')
  PATH="$CTD/bin:$PATH" containerd --config "$CTD/config.toml" >"$CTD/containerd.log" 2>&1 & CTD_PID=$!
  for _ in $(seq 200); do ctr -a "$CTD/c.sock" version >/dev/null 2>&1 && break; sleep 0.05; done
  # the sandbox image: busybox that sleeps
  "$MOAT" --root "$ROOT" create --name bpause busybox sleep 1000000 >/dev/null
  "$MOAT" --root "$ROOT" commit -c 'CMD ["sleep", "1000000"]' bpause pause:bench >/dev/null
  "$MOAT" --root "$ROOT" rm bpause >/dev/null
  "$MOAT" --root "$ROOT" save pause:bench -o "$WORK/pause.tar"
  for t in "$WORK/busybox.tar" "$WORK/pause.tar"; do ctr -a "$CTD/c.sock" -n k8s.io images import "$t" >/dev/null; done
  CRI_ARGS="--cri-sock $CTD/c.sock --cri-bench $CRI_BENCH --cri-logs $CTD/logs"
else
  echo "(no CRI benchmark: build $SHIM and $CRI_BENCH, install containerd)" >&2
fi

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, host kernel $(uname -r), accelerator $ACCEL, guest kernel $VER, $(date -u +%Y-%m-%d)"
echo "peers: $(crun --version | head -1), $(runc --version | head -1), $(containerd --version 2>/dev/null | awk '{print "containerd", $3}'), $(podman --version), $(qemu-system-x86_64 --version | head -1), skopeo $(skopeo --version | awk '{print $3}'), docker-registry $(docker-registry --version | awk '{print $3}')"
echo
# crun 1.8 refuses the hybrid cgroup layout: run everything in a mount
# namespace without the empty cgroup2 mount (same conditions for every tool)
unshare -m sh -c "umount -l /sys/fs/cgroup/unified 2>/dev/null; exec python3 bench/bench.py \
  --moat '$MOAT' --root '$ROOT' --bundle '$WORK/bundle' --image-tar '$WORK/busybox.tar' \
  --floor-cmd \"$(qemu moat-bench-floor "$WORK/floor-off.cpio")\" \
  --floor-idle-cmd \"$(qemu moat-bench-floor-idle "$WORK/floor-idle.cpio")\" \
  --big-tar '$WORK/big/big.tar' --big-layers '$WORK/big/layers' --registry '$REG' --scratch '$WORK/pulled' $CRI_ARGS $*"
