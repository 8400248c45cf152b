//! VM templates: clones of one booted template never share RNG output,
//! boot IDs, MACs or clocks; `moat vm template build/ls/rm/prune`; racing
//! starts build one template; and the cold boot that hosts with an old
//! QEMU (or MOAT_VM_TEMPLATES=off) get still runs the VM features.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;

fn vm(r: &Root, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", name])).unwrap();
    v[0]["VM"].clone()
}

/// A kernel directory of its own (the workspace's kernel and initramfs
/// copied), so this test's templates do not disturb the shared ones.
fn own_kernel_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("k").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = kernel_dir();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let name = e.file_name();
        if name == "templates" {
            continue;
        }
        let st = std::process::Command::new("cp").arg("-a").arg(e.path()).arg(d.path().join(&name)).status().unwrap();
        assert!(st.success());
    }
    d
}

fn with_kernel(r: &Root, k: &Path, args: &[&str]) -> std::process::Output {
    r.cmd().env("MOAT_KERNEL_DIR", k).args(args).output().unwrap()
}

fn ok_with_kernel(r: &Root, k: &Path, args: &[&str]) -> String {
    let o = with_kernel(r, k, args);
    assert!(o.status.success(), "moat {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn clones_never_share_identity_hyperv() {
    let r = root_with_busybox();
    let sw = r.ok(&["switch", "create", "tplnet"]).trim().to_string();
    // the first thing each clone's container does is read the kernel's RNG
    let probe = "cat /proc/sys/kernel/random/uuid /proc/sys/kernel/random/boot_id; \
                 head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                 cat /sys/class/net/eth0/address; date +%s; exec sleep 3301";
    for n in ["c1", "c2"] {
        r.ok(&["run", "-d", "--name", n, "--switch", &sw, "--isolation=vm", "busybox", "sh", "-c", probe]);
    }
    let (a, b) = (vm(&r, "c1"), vm(&r, "c2"));
    assert_eq!(a["Boot"], "template", "{a}");
    assert_eq!(a["Template"], b["Template"], "both clones of one template");
    let out = |n: &str| until(&r, &["logs", n], |o| o.lines().count() >= 5);
    let (la, lb) = (out("c1"), out("c2"));
    let (la, lb): (Vec<&str>, Vec<&str>) = (la.lines().collect(), lb.lines().collect());
    assert_eq!(la.len(), 5, "{la:?}");
    for (i, what) in ["first uuid", "boot_id", "urandom", "MAC"].iter().enumerate() {
        assert_ne!(la[i], lb[i], "{what} shared by two clones");
    }
    // the wall clock was set at restore, not left at the template's snapshot
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    for l in [&la, &lb] {
        let t: i64 = l[4].trim().parse().unwrap();
        assert!((now - t).abs() < 120, "guest clock {t} vs host {now}");
    }
    // a clone is a full VM container: exec, stop, start (a second restore)
    assert_eq!(r.ok(&["exec", "c1", "cat", "/proc/1/comm"]).trim(), "sleep");
    r.ok(&["stop", "-t", "1", "c1"]);
    r.ok(&["start", "c1"]);
    let again = until(&r, &["logs", "c1"], |o| o.lines().count() >= 10);
    let again: Vec<&str> = again.lines().collect();
    assert_ne!(again[5], la[0], "a restart is a new clone with a fresh RNG");
    r.ok(&["rm", "-f", "c1", "c2"]);
    r.ok(&["switch", "rm", &sw]);
}

#[test]
fn template_commands_and_racing_builds_hyperv() {
    let r = root_with_busybox();
    let k = own_kernel_dir();
    let info = ok_with_kernel(&r, k.path(), &["info", "--format", "{{json .Hypervisor.Templates}}"]);
    assert!(info.contains("\"Enabled\":true"), "{info}");
    assert!(ok_with_kernel(&r, k.path(), &["vm", "template", "ls", "-q"]).is_empty());
    // three VM containers start at once on a host with no template: one build
    let hs: Vec<_> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| {
            let mut c = r.cmd();
            c.env("MOAT_KERNEL_DIR", k.path()).args(["run", "-d", "--name", n, "--memory", "64m", "--isolation=vm"]);
            c.args(["busybox", "sleep", "3302"]);
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    for h in hs {
        let o = h.join().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let listed = ok_with_kernel(&r, k.path(), &["vm", "template", "ls", "-q"]);
    assert_eq!(listed.lines().count(), 1, "built once: {listed}");
    let digest = listed.trim().to_string();
    for n in ["r1", "r2", "r3"] {
        let v: serde_json::Value =
            serde_json::from_str(&ok_with_kernel(&r, k.path(), &["inspect", "-f", "{{json .VM}}", n])).unwrap();
        assert_eq!(v["Template"], digest.as_str());
    }
    let names: Vec<String> = std::fs::read_dir(k.path().join("templates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".lock") && !n.starts_with(".qemu-version"))
        .collect();
    assert_eq!(names, vec![digest.clone()], "no scratch left behind");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(k.path().join("templates")).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "templates are root's only");
    let table = ok_with_kernel(&r, k.path(), &["vm", "template", "ls"]);
    assert!(table.contains(&digest[..12]) && table.contains("160MiB") && table.contains("yes"), "{table}");
    // rm by prefix: running clones keep their own copy of its memory
    assert_eq!(ok_with_kernel(&r, k.path(), &["vm", "template", "rm", &digest[..8]]).trim(), digest);
    assert!(ok_with_kernel(&r, k.path(), &["exec", "r1", "true"]).is_empty());
    let o = with_kernel(&r, k.path(), &["vm", "template", "rm", "abcdef"]);
    assert_fails_one_line(&o, "rm unknown template");
    // build ahead of time, then make it stale: prune removes it, a run rebuilds
    let built = ok_with_kernel(&r, k.path(), &["vm", "template", "build", "--memory", "64m"]).trim().to_string();
    assert_eq!(built, digest, "same shape, same digest");
    let vmlinux = k.path().join(std::fs::read_to_string(k.path().join("current")).unwrap().trim()).join("vmlinux");
    let f = std::fs::OpenOptions::new().write(true).open(&vmlinux).unwrap();
    f.set_modified(std::time::SystemTime::now()).unwrap();
    drop(f);
    assert!(ok_with_kernel(&r, k.path(), &["vm", "template", "ls"]).contains("stale"));
    let pruned = ok_with_kernel(&r, k.path(), &["vm", "template", "prune"]);
    assert!(pruned.contains(&digest), "{pruned}");
    assert!(ok_with_kernel(&r, k.path(), &["vm", "template", "ls", "-q"]).is_empty());
    ok_with_kernel(&r, k.path(), &["rm", "-f", "r1", "r2", "r3"]);
    ok_with_kernel(&r, k.path(), &["run", "--rm", "--memory", "64m", "--isolation=vm", "busybox", "true"]);
    let fresh = ok_with_kernel(&r, k.path(), &["vm", "template", "ls", "-q"]);
    assert_eq!(fresh.lines().count(), 1);
    assert_ne!(fresh.trim(), digest, "a new kernel is a new template");
    ok_with_kernel(&r, k.path(), &["vm", "template", "prune", "--all"]);
    assert!(ok_with_kernel(&r, k.path(), &["vm", "template", "ls", "-q"]).is_empty());
}

/// Hosts whose QEMU cannot snapshot virtio-fs (or MOAT_VM_TEMPLATES=off)
/// boot every VM: lifecycle, exec, logs, switches, limits and conversion.
#[test]
fn cold_boot_runs_every_feature_group_hyperv() {
    let r = root_with_busybox();
    let cold = |args: &[&str]| {
        let o = r.cmd().env("MOAT_VM_TEMPLATES", "off").args(args).output().unwrap();
        assert!(o.status.success(), "moat {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let info = cold(&["info"]);
    assert!(info.contains("VM templates:        off (disabled (MOAT_VM_TEMPLATES=off)"), "{info}");
    let sw = cold(&["switch", "create", "coldnet"]).trim().to_string();
    cold(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--switch",
        &sw,
        "busybox",
        "sh",
        "-c",
        "echo hi > /i; exec httpd -f -p 80 -h /",
    ]);
    cold(&[
        "run",
        "-d",
        "--name",
        "cv",
        "--switch",
        &sw,
        "--memory",
        "64m",
        "--isolation=vm",
        "busybox",
        "sh",
        "-c",
        "echo cold-log; exec sleep 3303",
    ]);
    let v = vm(&r, "cv");
    assert_eq!(v["Boot"], "cold", "{v}");
    assert!(v["Template"].is_null());
    assert_eq!(until(&r, &["logs", "cv"], |o| o.contains("cold-log")).trim(), "cold-log");
    let fetch = "for i in $(seq 100); do wget -qO- http://srv/i && exit 0; sleep 0.2; done; exit 1";
    assert_eq!(cold(&["exec", "cv", "sh", "-c", fetch]).trim(), "hi", "switch and DNS by name");
    let stats = cold(&["stats", "--no-stream", "cv"]);
    assert!(stats.contains("/ 64MiB"), "{stats}");
    cold(&["stop", "-t", "1", "cv"]);
    cold(&["update", "--isolation=process", "cv"]);
    cold(&["start", "cv"]);
    assert_eq!(cold(&["inspect", "-f", "{{.HostConfig.Isolation}}", "cv"]).trim(), "process");
    cold(&["rm", "-f", "cv", "srv"]);
    cold(&["switch", "rm", &sw]);
}

/// Debian's cloud kernel (`moat vm kernel install`: modules loaded from the
/// initramfs) runs VM containers as moat's own kernel does, from a template
/// of its own and cold; a file that is not a kernel is refused.
#[test]
fn debian_cloud_kernel_runs_vm_containers_hyperv() {
    let r = root_with_busybox();
    let k = tempfile::Builder::new().prefix("kd").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let o = with_kernel(&r, k.path(), &["vm", "kernel", "install", "--vmlinux", "/etc/hostname"]);
    assert_fails_one_line(&o, "install a file that is not a kernel");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an ELF vmlinux"));
    ok_with_kernel(&r, k.path(), &["vm", "kernel", "install"]);
    let release = std::fs::read_to_string(k.path().join("current")).unwrap().trim().to_string();
    assert!(release.ends_with("-cloud-amd64"), "{release}");
    let probe = "uname -r; grep -c '^virtiofs ' /proc/modules; cat /etc/hostname >/dev/null && echo rootfs";
    let run = ["run", "--rm", "--memory", "64m", "--isolation=vm", "busybox", "sh", "-c", probe];
    let want = format!("{release}\n1\nrootfs\n");
    assert_eq!(ok_with_kernel(&r, k.path(), &run), want, "from a template");
    assert_eq!(ok_with_kernel(&r, k.path(), &["vm", "template", "ls", "-q"]).lines().count(), 1);
    let cold = r.cmd().env("MOAT_KERNEL_DIR", k.path()).env("MOAT_VM_TEMPLATES", "off").args(run).output().unwrap();
    assert!(cold.status.success(), "{}", String::from_utf8_lossy(&cold.stderr));
    assert_eq!(String::from_utf8_lossy(&cold.stdout), want, "cold boot");
    ok_with_kernel(&r, k.path(), &["vm", "template", "prune", "--all"]);
}
