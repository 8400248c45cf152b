//! Regression tests for what a security and fault probe found (issue #10):
//! each test here failed on f677f43. Both isolation types where it applies.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::*;

modes!(host_devices_cannot_be_opened);

/// Tries to open device nodes made with mknod: on /dev (a nodev tmpfs), on
/// the root filesystem, and on a tmpfs mounted with `dev` (so only the
/// cgroup's allow-list stands in the way); plus the guest's serial console,
/// /dev/kmsg and virtio-serial ports. The standard nodes must still work.
const DEVICE_PROBE: &str = r#"
try() { if (exec 3<>"$1") 2>/dev/null; then echo "$2=open"; else echo "$2=denied"; fi; }
mknod /dev/blk b 7 0 2>/dev/null; try /dev/blk dev-loop
mknod /tmp/kvm c 10 232 2>/dev/null; try /tmp/kvm rootfs-kvm
mknod /t/blk b 7 0; try /t/blk loop
mknod /t/kvm c 10 232; try /t/kvm kvm
mknod /t/lc c 10 237; try /t/lc loop-control
mknod /t/kmsg c 1 11; try /t/kmsg kmsg
mknod /t/ttyS0 c 4 64; try /t/ttyS0 console
for d in /sys/class/virtio-ports/*/dev; do
  [ -e "$d" ] || continue
  IFS=: read maj min < "$d"; mknod "/t/vp$maj-$min" c "$maj" "$min"; try "/t/vp$maj-$min" virtio-port
done
try /dev/null null; try /dev/zero zero; try /dev/urandom urandom; try /dev/tty tty-node-exists
"#;

fn host_devices_cannot_be_opened(iso: &str) {
    let r = root_with_busybox();
    for extra in [&[][..], &["--cap-add", "MKNOD"][..], &["--read-only"][..]] {
        let mut args = vec!["run", "--rm", "--isolation", iso, "--tmpfs", "/t:dev"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["busybox", "sh", "-c", DEVICE_PROBE]);
        let out = r.ok(&args);
        let m = probe_map(&out);
        for dev in ["dev-loop", "rootfs-kvm", "loop", "kvm", "loop-control", "kmsg", "console"] {
            assert_eq!(m.get(dev).map(String::as_str), Some("denied"), "{dev} with {extra:?} ({iso}): {out}");
        }
        for dev in ["null", "zero", "urandom"] {
            assert_eq!(m.get(dev).map(String::as_str), Some("open"), "{dev} with {extra:?} ({iso}): {out}");
        }
        let ports: Vec<&str> = out.lines().filter(|l| l.starts_with("virtio-port=")).collect();
        if iso == "vm" {
            assert!(!ports.is_empty(), "the guest has virtio-serial ports to try: {out}");
        }
        assert!(ports.iter().all(|l| *l == "virtio-port=denied"), "{out}");
    }
    if iso == "process" {
        // --device goes through the same allow-list
        let out = r.ok(&["run", "--rm", "--device", "/dev/fuse", "busybox", "sh", "-c", DEVICE_PROBE]);
        assert!(out.contains("kvm=denied"), "{out}");
        let out = r.ok(&[
            "run",
            "--rm",
            "--device",
            "/dev/fuse",
            "busybox",
            "sh",
            "-c",
            "if (exec 3<>/dev/fuse); then echo fuse=open; fi",
        ]);
        assert_eq!(out.trim(), "fuse=open");
    } else {
        let e = r.fails(&["run", "--rm", "--isolation", iso, "--device", "/dev/fuse", "busybox", "true"]);
        assert!(e.contains("--device") && e.contains("process isolation"), "{e}");
    }
}
