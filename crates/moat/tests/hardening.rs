//! Regression tests for what a security and fault probe found (issue #10):
//! each test here failed on f677f43. Both isolation types where it applies.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::*;

modes!(host_devices_cannot_be_opened, a_full_disk_keeps_reads_removal_and_exit_codes, start_errors_are_the_real_ones);

/// Tries to open device nodes made with mknod: on /dev (a nodev tmpfs), on
/// the root filesystem, and on a tmpfs mounted with `dev` (so only the
/// cgroup's allow-list stands in the way); plus the guest's serial console,
/// /dev/kmsg and virtio-serial ports. The standard nodes must still work.
const DEVICE_PROBE: &str = r#"
try() { if (exec 3<>"$1") 2>/dev/null; then echo "$2=open"; else echo "$2=denied"; fi; }
mk() { n=$1; shift; if mknod "$@" 2>/dev/null; then try "$1" "$n"; else echo "$n=nomknod"; fi; }
mk dev-loop /dev/blk b 7 0
mk rootfs-kvm /tmp/kvm c 10 232
mk loop /t/blk b 7 0
mk kvm /t/kvm c 10 232
mk loop-control /t/lc c 10 237
mk kmsg /t/kmsg c 1 11
mk console /t/ttyS0 c 4 64
for d in /sys/class/virtio-ports/*/dev; do
  [ -e "$d" ] || continue
  IFS=: read maj min < "$d"; mk virtio-port "/t/vp$maj-$min" c "$maj" "$min"
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
        // each node was made (mknod worked) and only opening it was refused:
        // "nomknod" would mean the check proved nothing. On a VM root
        // (virtiofs: virtiofsd has no CAP_MKNOD) and a read-only root no node
        // can be made at all, which is the stronger refusal.
        let rootfs = if iso == "vm" || extra.contains(&"--read-only") { "nomknod" } else { "denied" };
        for dev in ["dev-loop", "loop", "kvm", "loop-control", "kmsg", "console"] {
            assert_eq!(m.get(dev).map(String::as_str), Some("denied"), "{dev} with {extra:?} ({iso}): {out}");
        }
        assert_eq!(m.get("rootfs-kvm").map(String::as_str), Some(rootfs), "rootfs with {extra:?} ({iso}): {out}");
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

/// A root on its own small tmpfs (unmounted by `Root`'s drop).
fn small_root(mb: u32) -> Root {
    let r = Root::new();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mb}m,mode=0700"), "tmpfs"])
        .arg(r.path())
        .status()
        .unwrap();
    assert!(st.success(), "mount a tmpfs root");
    r.ok(&["load", "-q", "-i", busybox_archive().0.to_str().unwrap()]);
    r
}

fn free_bytes(p: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(u64::MAX)
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(std::time::Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// With the root's filesystem full: reads keep working, exit codes of
/// containers that end meanwhile are kept, new containers are refused with
/// a message naming the root, and removal works (and frees the space).
fn a_full_disk_keeps_reads_removal_and_exit_codes(iso: &str) {
    let r = small_root(48);
    let root = r.path().display().to_string();
    // created while there is room; they end while the disk is full, once
    // the `touch` that tells them to is gone (an init that ended first would
    // take the exec'd `touch` with it: 137 instead of its exit code)
    r.ok(&[
        "run",
        "-d",
        "--name",
        "ex7",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "while [ ! -e /go ] || grep -qsx touch /proc/[0-9]*/comm; do sleep 0.1; done; exit 7",
    ]);
    r.ok(&[
        "run",
        "-d",
        "--name",
        "ex8",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "while [ ! -e /go ] || grep -qsx touch /proc/[0-9]*/comm; do sleep 0.1; done; exit 8",
    ]);
    // one filler writes until the disk is full, then sleeps
    r.ok(&[
        "run",
        "-d",
        "--name",
        "fill",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "dd if=/dev/zero of=/fill bs=64k 2>/dev/null; sleep 1000",
    ]);
    wait_until("the disk to fill", 60, || free_bytes(r.path()) == 0);
    // a second one keeps taking whatever is freed
    r.ok(&[
        "exec",
        "-d",
        "fill",
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); dd if=/dev/zero of=/more$i bs=4k 2>/dev/null; sleep 0.01; done",
    ]);
    for c in ["ex7", "ex8"] {
        r.ok(&["exec", c, "touch", "/go"]);
    }
    wait_until("ex7 and ex8 to exit", 60, || {
        let ps = r.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
        ps.contains("ex7 Exited (7)") && ps.contains("ex8 Exited (8)")
    });
    // reads work
    assert!(r.ok(&["ps", "-a"]).contains("fill"));
    r.ok(&["logs", "fill"]);
    let inspect = r.ok(&["inspect", "ex7"]);
    assert!(inspect.contains("\"ExitCode\": 7"), "{inspect}");
    // nothing new fits: a clear one-line error naming the root
    wait_until("the reserve to be used up", 30, || {
        let o = r.run(&["create", "--isolation", iso, "busybox", "true"]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        if o.status.success() {
            return false;
        }
        assert_fails_one_line(&o, "create on a full disk");
        assert!(err.contains(&format!("no space left on the engine root ({root})")), "{err}");
        true
    });
    // removal works and frees the space
    r.ok(&["rm", "-f", "fill"]);
    assert!(free_bytes(r.path()) > 30 << 20, "removing the filler freed its space");
    let ps = r.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("ex7 Exited (7)") && ps.contains("ex8 Exited (8)"), "exit codes kept: {ps}");
    assert!(!ps.contains("fill"), "{ps}");
    r.ok(&["rm", "ex7", "ex8"]);
    assert_eq!(r.ok(&["run", "--rm", "--isolation", iso, "busybox", "echo", "ok"]), "ok\n");
}

/// Runs `n` moat commands at once; returns their outputs.
fn parallel(r: &Root, n: usize, args: impl Fn(usize) -> Vec<String>) -> Vec<std::process::Output> {
    let kids: Vec<std::process::Child> = (0..n)
        .map(|i| {
            r.cmd()
                .args(args(i))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    kids.into_iter().map(|k| k.wait_with_output().unwrap()).collect()
}

fn subnet_of(r: &Root, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["switch", "inspect", name])).unwrap();
    v[0]["IPAM"]["Config"][0]["Subnet"].as_str().unwrap().to_string()
}

#[test]
fn parallel_switch_creation_never_shares_a_subnet() {
    let r = Root::new();
    for o in parallel(&r, 8, |i| vec!["switch".into(), "create".into(), format!("par{i}")]) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let mut subnets: Vec<String> = (0..8).map(|i| subnet_of(&r, &format!("par{i}"))).collect();
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 8, "eight switches, eight subnets: {subnets:?}");
    let outs = parallel(&r, 6, |i| {
        vec!["switch".into(), "create".into(), format!("same{i}"), "--subnet".into(), "10.201.7.0/24".into()]
    });
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "exactly one of six creations with the same subnet succeeds");
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert_fails_one_line(o, "a clashing switch create");
        assert!(String::from_utf8_lossy(&o.stderr).contains("overlaps"), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn subnets_that_clash_with_the_host_are_refused() {
    let r = Root::new();
    let host = Root::new();
    // a subnet routed elsewhere: another root's switch, whose bridge routes it
    host.ok(&["switch", "create", "elsewhere", "--subnet", "10.202.9.0/24"]);
    let mut bad = vec![
        ("127.0.0.0/24", "loopback"),
        ("224.1.0.0/24", "multicast"),
        ("169.254.3.0/24", "link-local"),
        ("10.202.9.0/24", "route"),
        ("10.202.0.0/16", "route"),
    ];
    // the host's own network, with its default gateway
    let routes =
        String::from_utf8_lossy(&std::process::Command::new("ip").args(["-4", "route"]).output().unwrap().stdout)
            .into_owned();
    let gw = routes
        .lines()
        .find(|l| l.starts_with("default via"))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(str::to_string);
    let gw_net = gw.as_ref().map(|g| format!("{}.0/24", g.rsplit_once('.').unwrap().0));
    if let Some(n) = &gw_net {
        bad.push((n.as_str(), "gateway"));
    }
    for (subnet, why) in &bad {
        let e = r.fails(&["switch", "create", "x", "--subnet", subnet]);
        assert!(e.contains(why), "{subnet}: {e}");
    }
    assert!(gw.is_some(), "this host has a default route to test with: {routes}");
    // a chosen subnet skips what the host routes: each root alone would pick
    // the same first free /24
    host.ok(&["switch", "create", "taken"]);
    r.ok(&["switch", "create", "fresh"]);
    assert_ne!(subnet_of(&r, "fresh"), subnet_of(&host, "taken"));
}

#[test]
fn state_is_readable_by_root_only() {
    let r = root_with_busybox();
    // a parent anyone may traverse, and a root someone made world-readable
    std::fs::set_permissions(r.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    r.ok(&["run", "--name", "secret", "-e", "DB_PASSWORD=hunter2", "busybox", "echo", "logged-secret"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(r.path()), 0o700, "the root");
    for f in ["moat.db", "moat.db-wal", "moat.db-shm"] {
        assert_eq!(mode(&r.path().join(f)), 0o600, "{f}");
    }
    let id = r.ok(&["ps", "-a", "-q", "--no-trunc"]);
    let id = id.trim();
    let log = r.path().join("containers").join(id).join(format!("{id}-json.log"));
    assert_eq!(mode(&log), 0o600, "the container log");
    // and as an unprivileged user, nothing is readable
    for p in [r.path().join("moat.db-wal"), r.path().join("moat.db"), log.clone()] {
        let o = as_nobody(&format!("cat '{}'", p.display()));
        assert!(!o.status.success(), "nobody read {}", p.display());
        assert!(!String::from_utf8_lossy(&o.stdout).contains("hunter2"));
    }
    let o = as_nobody(&format!("ls '{}'", r.path().display()));
    assert!(!o.status.success(), "nobody listed the root");
    // root itself still reads everything
    assert!(r.ok(&["logs", "secret"]).contains("logged-secret"));
}

fn vm_pid(r: &Root, name: &str, key: &str) -> i32 {
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", name])).unwrap();
    v[0]["VM"][key].as_i64().unwrap_or_else(|| panic!("{key} of {name}: {v}")) as i32
}

/// A killed virtiofsd ends its VM container with the reason recorded; a
/// wedged guest makes queries fail within their timeout, not hang.
#[test]
fn dead_virtiofsd_and_wedged_guest_hyperv() {
    let r = root_with_busybox();
    r.ok(&["run", "-d", "--name", "fs", "--isolation", "hyperv", "busybox", "sleep", "600"]);
    let vfsd = vm_pid(&r, "fs", "VirtiofsdPid");
    let qemu = vm_pid(&r, "fs", "QemuPid");
    assert_eq!(unsafe { libc::kill(vfsd, libc::SIGKILL) }, 0);
    wait_until("the container to end", 30, || {
        r.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]).contains("fs exited")
    });
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "fs"])).unwrap();
    let err = v[0]["State"]["Error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("virtiofsd"), "{err}");
    wait_until("QEMU to be gone", 10, || !std::path::Path::new(&format!("/proc/{qemu}")).exists());
    let t = std::time::Instant::now();
    let e = r.fails(&["exec", "fs", "ls", "/"]);
    assert!(e.contains("not running"), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5));

    r.ok(&["run", "-d", "--name", "wedged", "--isolation", "hyperv", "busybox", "sleep", "600"]);
    let qemu = vm_pid(&r, "wedged", "QemuPid");
    assert_eq!(unsafe { libc::kill(qemu, libc::SIGSTOP) }, 0);
    let t = std::time::Instant::now();
    let o = r.run(&["top", "wedged"]);
    let took = t.elapsed();
    assert_eq!(unsafe { libc::kill(qemu, libc::SIGCONT) }, 0);
    assert_fails_one_line(&o, "top of a wedged guest");
    assert!(String::from_utf8_lossy(&o.stderr).contains("did not answer"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    // and it serves again once the guest runs
    assert!(r.ok(&["top", "wedged"]).contains("sleep 600"));
}

fn status_field(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string()).unwrap_or_default()
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    out
}

/// The VM boundary: a VM container cannot create device nodes on the host
/// (virtiofsd has no CAP_MKNOD and runs namespaced), and QEMU runs as an
/// unprivileged user without capabilities, chrooted, in an empty network
/// namespace, under seccomp.
#[test]
fn qemu_and_virtiofsd_run_with_least_privilege_hyperv() {
    let r = root_with_busybox();
    let out = r.ok(&[
        "run", "-d", "--name", "b", "--isolation", "hyperv", "busybox", "sh", "-c",
        "mknod /blk b 7 0 2>/dev/null && echo made-block; mknod /chr c 1 3 2>/dev/null && echo made-char; mkfifo /fifo && echo made-fifo; sleep 600",
    ]);
    let id = out.trim().to_string();
    wait_until("the container's mknods", 30, || r.ok(&["logs", "b"]).contains("made-fifo"));
    let logs = r.ok(&["logs", "b"]);
    assert!(!logs.contains("made-block") && !logs.contains("made-char"), "{logs}");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let upper = walk(&r.path().join("containers").join(&id).join("upper"));
    assert!(upper.iter().any(|p| p.ends_with("fifo")), "the container wrote to its upper dir: {upper:?}");
    for p in upper {
        let m = std::fs::symlink_metadata(&p).unwrap();
        // overlayfs whiteouts are the only character devices allowed (0:0)
        let whiteout = m.file_type().is_char_device() && m.rdev() == 0;
        assert!(
            !m.file_type().is_block_device() && (whiteout || !m.file_type().is_char_device()),
            "device node on the host: {}",
            p.display()
        );
    }
    let qemu = vm_pid(&r, "b", "QemuPid");
    let uid: u32 = status_field(qemu, "Uid:").split_whitespace().next().unwrap().parse().unwrap();
    assert!(uid >= 0x5000_0000, "QEMU's uid {uid}");
    assert_eq!(status_field(qemu, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(qemu, "NoNewPrivs:"), "1");
    assert_eq!(status_field(qemu, "Seccomp:"), "2");
    let qroot = std::fs::read_link(format!("/proc/{qemu}/root")).unwrap();
    assert!(qroot.ends_with("empty") && std::fs::read_dir(&qroot).unwrap().next().is_none(), "{}", qroot.display());
    let ns = |pid: i32, n: &str| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
    let me = std::process::id() as i32;
    assert_ne!(ns(qemu, "net"), ns(me, "net"), "QEMU has a network namespace of its own");
    // virtiofsd: the namespace sandbox's worker, without CAP_MKNOD
    let vfsd = vm_pid(&r, "b", "VirtiofsdPid");
    let workers = children(vfsd);
    assert!(!workers.is_empty(), "virtiofsd's sandbox forks a worker");
    for w in workers {
        let caps = u64::from_str_radix(&status_field(w, "CapEff:"), 16).unwrap();
        assert_eq!(caps & (1 << 27), 0, "virtiofsd worker has CAP_MKNOD: {caps:x}");
        assert_ne!(ns(w, "mnt"), ns(me, "mnt"), "virtiofsd worker has its own mount namespace");
    }
    assert_eq!(u64::from_str_radix(&status_field(vfsd, "CapEff:"), 16).unwrap() & (1 << 27), 0);
}

/// The recorded end of a VM comes from QEMU (exit status, QMP events), not
/// from the guest console, which a container can write to.
#[test]
fn vm_crash_reasons_cannot_be_forged_hyperv() {
    let r = root_with_busybox();
    let error = |name: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", name])).unwrap();
        v[0]["State"]["Error"].as_str().unwrap_or_default().to_string()
    };
    let o = r.run(&[
        "run",
        "--name",
        "pan",
        "--privileged",
        "--isolation",
        "hyperv",
        "busybox",
        "sh",
        "-c",
        "echo c > /proc/sysrq-trigger; sleep 30",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(error("pan").contains("guest kernel panic"), "{}", error("pan"));
    let o = r.run(&[
        "run",
        "--name",
        "forge",
        "--privileged",
        "--isolation",
        "hyperv",
        "busybox",
        "sh",
        "-c",
        "echo 'Kernel panic - not syncing: forged' > /dev/kmsg; echo o > /proc/sysrq-trigger; sleep 30",
    ]);
    assert_ne!(o.status.code(), Some(0));
    let e = error("forge");
    assert!(!e.contains("panic"), "a forged console line decided the reason: {e}");
    assert!(e.contains("powered off"), "{e}");
}

/// A start that fails inside the container reports the container's own
/// error, not what its death broke on the host side.
fn start_errors_are_the_real_ones(iso: &str) {
    let r = root_with_busybox();
    let f = tempfile::NamedTempFile::new().unwrap();
    let bind = format!("{}:/bin", f.path().display());
    for net in [&[][..], &["--network", "none"][..]] {
        let mut args = vec!["run", "--rm", "--isolation", iso, "-v", &bind];
        args.extend_from_slice(net);
        args.extend_from_slice(&["busybox", "true"]);
        let o = r.run(&args);
        assert_fails_one_line(&o, "a bind of a file over a directory");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("mount /bin") && err.contains("Not a directory"), "{net:?}: {err}");
        assert!(!err.contains("RTNETLINK") && !err.contains("Broken pipe"), "{err}");
        assert_eq!(o.status.code(), Some(125));
    }
    assert_eq!(r.ok(&["ps", "-a", "-q"]), "", "--rm removed the failed containers");
}

#[test]
fn run_rm_always_returns_the_exit_code() {
    let r = root_with_busybox();
    let outs = parallel(&r, 80, |_| ["run", "--rm", "busybox", "sh", "-c", "exit 3"].map(String::from).to_vec());
    for o in &outs {
        assert_eq!(o.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    }
    let left = r.ok(&["ps", "-a", "-q", "--no-trunc"]);
    if !left.is_empty() {
        // what a container left behind holds and says (seen once under load)
        let files: Vec<String> = left
            .lines()
            .map(|id| {
                let d = r.path().join("containers").join(id);
                let names: Vec<_> =
                    std::fs::read_dir(&d).map(|rd| rd.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
                format!("{names:?} {}", std::fs::read_to_string(d.join("shim.log")).unwrap_or_default())
            })
            .collect();
        let st = r.ok(&["ps", "-a", "--format", "{{.ID}} {{.Status}}"]);
        std::thread::sleep(std::time::Duration::from_secs(3));
        let later = r.ok(&["ps", "-a", "--format", "{{.ID}} {{.Status}}"]);
        panic!("--rm left {left}: files and shim log {files:?}; ps: {st}; 3 s later: {later}");
    }
}

#[test]
fn cli_conventions_and_validation() {
    let r = root_with_busybox();
    let fails125 = |args: &[&str], want: &str| {
        let o = r.run(args);
        assert_fails_one_line(&o, &format!("{args:?}"));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(o.status.code(), Some(125), "{args:?}: {err}");
    };
    fails125(&["run", "--bogus-flag", "busybox"], "unknown flag: --bogus-flag");
    fails125(&["ps", "--bogus"], "unknown flag: --bogus");
    fails125(&["frobnicate"], "not a moat command");
    fails125(&["buildx", "build", "."], "moat has no BuildKit");
    // --pull never: an unknown name must not send the test to Docker Hub
    fails125(&["run", "--pull", "never", "nosuchimage"], "No such image");
    fails125(&["run", "--cpus", "NaN", "busybox", "true"], "range of CPUs");
    fails125(&["run", "--memory", "1e30", "busybox", "true"], "too large");
    fails125(&["run", "--dns", "bogus", "busybox", "true"], "not an IP address");
    fails125(&["run", "--hostname", "a/b", "busybox", "true"], "invalid hostname");
    fails125(&["run", "--hostname", &"h".repeat(200), "busybox", "true"], "invalid hostname");
    fails125(&["run", "-e", "=x", "busybox", "true"], "invalid environment variable");
    fails125(&["run", "-v", "/tmp:/", "busybox", "true"], "destination can't be '/'");
    fails125(&["run", "-v", "/tmp:/proc", "busybox", "true"], "/proc");
    fails125(&["run", "--tmpfs", "/t:size=bogus", "busybox", "true"], "invalid tmpfs option");
    fails125(&["run", "--rm", "--restart", "always", "busybox", "true"], "Conflicting options");
    fails125(&["run", "--log-opt", "max-file=0", "busybox", "true"], "max-file");
    assert_eq!(r.ok(&["ps", "-a", "-q"]), "", "nothing was created by refused runs");
    // save resolves every name before writing a byte
    let o = r.run(&["save", "busybox", "nonexist"]);
    assert_fails_one_line(&o, "save of a missing image");
    assert!(o.stdout.is_empty(), "save wrote {} bytes before failing", o.stdout.len());
}

#[test]
fn logs_rotate_and_read_across_files() {
    let r = root_with_busybox();
    let out = r.ok(&[
        "run",
        "-d",
        "--name",
        "noisy",
        "--log-opt",
        "max-size=4k",
        "--log-opt",
        "max-file=3",
        "busybox",
        "sh",
        "-c",
        "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo line$i; done",
    ]);
    let id = out.trim();
    assert_eq!(r.ok(&["wait", "noisy"]).trim(), "0");
    let dir = r.path().join("containers").join(id);
    let logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("-json.log"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert_eq!(logs.len(), 3, "the current file and two rotated ones");
    assert!(logs.iter().all(|l| *l <= 4096), "{logs:?}");
    let text = r.ok(&["logs", "noisy"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"line3000"));
    assert_ne!(lines.first(), Some(&"line1"), "the oldest output was rotated away");
    let first: u32 = lines[0].trim_start_matches("line").parse().unwrap();
    assert_eq!(lines.len() as u32, 3000 - first + 1, "nothing missing across the files");
    assert_eq!(r.ok(&["logs", "--tail", "2", "noisy"]), "line2999\nline3000\n");
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "noisy"])).unwrap();
    assert_eq!(v[0]["HostConfig"]["LogConfig"]["Config"]["max-file"], "3");
    // without options inspect shows none, as Docker's does (the default
    // of 5 x 20 MiB applies: moat_engine::logs' unit tests)
    r.ok(&["create", "--name", "quiet", "busybox", "true"]);
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "quiet"])).unwrap();
    assert_eq!(v[0]["HostConfig"]["LogConfig"], serde_json::json!({ "Type": "json-file", "Config": {} }));
    r.ok(&["run", "--name", "silent", "--log-driver", "none", "busybox", "echo", "hi"]);
    let e = r.fails(&["logs", "silent"]);
    assert!(e.contains("does not support reading"), "{e}");
}

/// Every write path on a full disk (issue #35): each operation that writes
/// to the root either fits or fails with one line saying there is no space
/// (never a panic, never a half-made object); reads keep working; `system
/// check` finds nothing to repair; once space is freed every operation
/// works again.
#[test]
fn every_write_path_on_a_full_disk_fails_cleanly() {
    let r = small_root(48);
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM busybox\nRUN echo built > /b\n").unwrap();
    std::fs::write(ctx.path().join("f"), vec![b'x'; 4 << 20]).unwrap();
    let tar = busybox_archive().0.to_str().unwrap().to_string();
    let c = ctx.path().to_str().unwrap().to_string();
    let f = ctx.path().join("f").display().to_string();
    r.ok(&["run", "--name", "done", "--network", "none", "busybox", "sh", "-c", "echo x > /x"]);
    let ops: Vec<Vec<String>> = [
        &["create", "--network", "none", "busybox", "true"][..],
        &["run", "--rm", "--network", "none", "busybox", "true"],
        &["load", "-q", "-i", &tar],
        &["import", &tar, "imp:1"],
        &["commit", "done", "snap:1"],
        &["tag", "busybox", "again:1"],
        &["volume", "create", "full"],
        &["switch", "create", "--subnet", "10.212.99.0/24", "fullsw"],
        &["pod", "create", "--name", "fullpod"],
        &["build", "-q", "--network", "none", "-t", "built:1", &c],
        &["cp", &f, "done:/copied"],
    ]
    .iter()
    .map(|a| a.iter().map(|s| s.to_string()).collect())
    .collect();
    // fill the root's filesystem from the host
    let filler = r.path().join("filler");
    {
        use std::io::Write;
        let mut w = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 16];
        while w.write_all(&block).is_ok() {}
        let _ = w.flush();
    }
    assert!(free_bytes(r.path()) < 1 << 16, "full");
    let mut refused = Vec::new();
    for op in &ops {
        let args: Vec<&str> = op.iter().map(String::as_str).collect();
        let o = r.run(&args);
        if !o.status.success() {
            assert_fails_one_line(&o, &format!("{args:?} on a full disk"));
            let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
            assert!(err.contains("no space"), "{args:?}: {err}");
            refused.push(args[0].to_string());
        }
    }
    // what needs more than a few pages of the database is refused (the
    // records alone may still fit the database's free pages, or its reserve)
    for big in ["load", "import", "commit", "build", "cp"] {
        assert!(refused.contains(&big.to_string()), "{big} went through a full disk; refused: {refused:?}");
    }
    for l in [&["ps", "-a"][..], &["images"], &["volume", "ls"], &["switch", "ls"], &["pod", "ls"]] {
        r.ok(l);
    }
    assert_eq!(r.ok(&["system", "check"]), "0 problems found, 0 repaired\n");
    // space again: everything works
    std::fs::remove_file(&filler).unwrap();
    for op in &ops {
        let args: Vec<&str> = op.iter().map(String::as_str).collect();
        let o = r.run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        // what made it through while full now exists: a clash is fine
        assert!(o.status.success() || err.contains("already"), "{args:?} after freeing space: {err}");
    }
    assert_eq!(r.ok(&["system", "check"]), "0 problems found, 0 repaired\n");
    let _ = r.run(&["pod", "rm", "-f", "fullpod"]);
    let _ = r.run(&["switch", "rm", "fullsw"]);
}
