//! Escapes (issue #35): each test fails if isolation breaks, and each
//! "blocked" check has a positive control showing the same probe succeeds
//! where it is allowed. Gathered here: what a process container can see and
//! write of the host, a host device it is not given, set-uid programs under
//! `no-new-privileges`; a compromised utility VM (root in the guest, with
//! its own kernel, turned on the host through virtio-fs) and the host
//! operations that later walk what it planted; who may reach a root's
//! socket, state, templates and kernels. The rest of the escape suite lives
//! beside the features it guards (see `docs/reliability.md`, "Escapes").

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;

/// A host process with a marker in its environment, killed on drop.
struct HostSleeper(std::process::Child);

impl Drop for HostSleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loop device over a file holding `canary`, detached on drop.
struct Loop {
    dev: String,
    _file: tempfile::NamedTempFile,
}

impl Loop {
    fn new(canary: &[u8]) -> Self {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut data = canary.to_vec();
        data.resize(1 << 20, 0);
        std::fs::write(file.path(), data).unwrap();
        let o = std::process::Command::new("losetup").args(["-f", "--show"]).arg(file.path()).output().unwrap();
        assert!(o.status.success(), "losetup: {}", String::from_utf8_lossy(&o.stderr));
        Self { dev: String::from_utf8_lossy(&o.stdout).trim().to_string(), _file: file }
    }

    fn minor(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        nix::sys::stat::minor(rdev)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Process isolation, from inside: no host process, no writable host path
/// beyond the container's own files and its volume, no host device it was
/// not given, set-uid without effect under `no-new-privileges`.
#[test]
fn a_process_container_reaches_nothing_of_the_host() {
    let r = root_with_probe_and_busybox();
    // host processes: invisible, unsignallable; with --pid host (the
    // positive control) the same probe sees and signals it
    let sleeper = HostSleeper(std::process::Command::new("sleep").arg("600").spawn().unwrap());
    let pid = sleeper.0.id().to_string();
    let script = format!("kill -0 {pid} 2>/dev/null; echo signal=$?; set -- /proc/[0-9]*; echo procs=$#");
    let o = r.ok(&["run", "--rm", "--network", "none", "busybox", "sh", "-c", &script]);
    assert_eq!(o, "signal=1\nprocs=1\n");
    let o = r.ok(&["run", "--rm", "--network", "none", "--pid", "host", "busybox", "sh", "-c", &script]);
    assert!(o.starts_with("signal=0\nprocs="), "{o}");
    assert!(o.trim_end().rsplit('=').next().unwrap().parse::<u32>().unwrap() > 10, "{o}");

    // writable mounts, as the kernel lists them inside: the root (overlay),
    // the kernel's own filesystems, the container's etc files and the
    // volume; every bind mount comes from the container's directory or
    // the volume's
    r.ok(&["volume", "create", "vol1"]);
    let mi = r.ok(&[
        "run",
        "--name",
        "m",
        "--network",
        "none",
        "-v",
        "vol1:/data",
        "busybox",
        "cat",
        "/proc/self/mountinfo",
    ]);
    let id = r.ok(&["inspect", "-f", "{{.Id}}", "m"]).trim().to_string();
    let mut writable = Vec::new();
    for l in mi.lines() {
        let (pre, post) = l.split_once(" - ").unwrap();
        let f: Vec<&str> = pre.split(' ').collect();
        let (root, target, opts) = (f[3], f[4], f[5]);
        let fstype = post.split(' ').next().unwrap();
        if !opts.split(',').any(|o| o == "rw") {
            continue;
        }
        // Docker's default devices, bound from the host's devtmpfs
        let std_devices = ["/null", "/zero", "/full", "/random", "/urandom", "/tty"];
        // (and /dev/null over masked paths, as runc does)
        if fstype == "devtmpfs" && std_devices.contains(&root) && (target == format!("/dev{root}") || root == "/null") {
            continue;
        }
        writable.push(format!("{target} {fstype}"));
        let kernel_fs = ["proc", "sysfs", "tmpfs", "devpts", "mqueue", "overlay", "cgroup", "cgroup2"];
        if !kernel_fs.contains(&fstype) || root != "/" {
            let own = root.ends_with(&format!("/containers/{id}/{}", target.trim_start_matches("/etc/")))
                || root.ends_with("/volumes/vol1/_data");
            assert!(own, "a writable bind of a host path: {l}\n{mi}");
        }
    }
    writable.sort();
    assert_eq!(
        writable.join("\n"),
        [
            "/ overlay",
            "/data ext4",
            "/dev tmpfs",
            "/dev/mqueue mqueue",
            "/dev/pts devpts",
            "/dev/shm tmpfs",
            "/etc/hostname ext4",
            "/etc/hosts ext4",
            "/etc/resolv.conf ext4",
            "/proc proc",
        ]
        .join("\n"),
        "{mi}"
    );

    // a host block device the test made, through a node the container
    // makes on a tmpfs that allows devices: refused by the device cgroup
    // alone, as the same node under a rule allowing it shows (the positive
    // control); and given with --device
    let lo = Loop::new(b"moat-loop-canary");
    let read = format!("mknod /t/l b 7 {} && head -c 16 /t/l", lo.minor());
    let o = r.run(&["run", "--rm", "--network", "none", "--tmpfs", "/t:dev", "busybox", "sh", "-c", &read]);
    assert_eq!(
        (o.status.code(), out(&o), String::from_utf8_lossy(&o.stderr).into_owned()),
        (Some(1), String::new(), "head: /t/l: Operation not permitted\n".to_string())
    );
    let rule = format!("b 7:{} r", lo.minor());
    let o = r.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--tmpfs",
        "/t:dev",
        "--device-cgroup-rule",
        &rule,
        "busybox",
        "sh",
        "-c",
        &read,
    ]);
    assert_eq!(o, "moat-loop-canary");
    let given = format!("--device={}:/dev/xloop", lo.dev);
    let o = r.ok(&["run", "--rm", "--network", "none", &given, "busybox", "head", "-c", "16", "/dev/xloop"]);
    assert_eq!(o, "moat-loop-canary");

    // a set-uid root program run by a user: effective root without
    // no-new-privileges (the positive control), the user's own IDs with it
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM probe\nRUN cp /probe /suid && chmod 4755 /suid\n").unwrap();
    r.ok(&["build", "-q", "-t", "suid", ctx.path().to_str().unwrap()]);
    let uid = |extra: &[&str]| {
        let mut a = vec!["run", "--rm", "--network", "none", "--user", "1000:1000"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--entrypoint", "/suid", "suid"]);
        probe_map(&r.ok(&a))["Uid"].clone()
    };
    assert_eq!(uid(&[]), "1000\t0\t0\t0");
    assert_eq!(uid(&["--security-opt", "no-new-privileges"]), "1000\t1000\t1000\t1000");
}

fn root_with_probe_and_busybox() -> Root {
    let r = root_with_busybox();
    r.ok(&["load", "-q", "-i", probe_archive().to_str().unwrap()]);
    r
}

/// Every inotify event on the watched host paths, drained.
struct Watch(nix::sys::inotify::Inotify);

impl Watch {
    fn new(paths: &[&Path]) -> Self {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let i = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
        for p in paths {
            i.add_watch(*p, AddWatchFlags::IN_ALL_EVENTS).unwrap();
        }
        Self(i)
    }

    fn events(&self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(evs) = self.0.read_events() {
            if evs.is_empty() {
                break;
            }
            v.extend(evs.into_iter().map(|e| format!("{:?} {:?}", e.mask, e.name)));
        }
        v
    }
}

/// A compromised guest: `moat-evil-agent` as PID 1 (root with its own
/// kernel) mounts the virtio-fs share itself and plants links to `/` and to
/// a host canary in the container's root and its volume, tries a device
/// node, renaming over a bind-mounted host file and 4096 forged file
/// handles. Then the host walks what it left: diff, export, commit, `cp`
/// (with `-L`), a process container on the committed image and the volume,
/// removal. The host's canary sees no access at all (inotify, the kernel's
/// record); the links did land, as links, in the container's layer (the
/// positive control that the attack ran).
#[test]
fn a_hostile_guest_cannot_reach_host_paths_through_virtio_fs_hyperv() {
    let r = root_with_busybox();
    let canary_dir = tempfile::tempdir().unwrap();
    let canary = canary_dir.path().join("secret");
    std::fs::write(&canary, "host secret").unwrap();
    let watch = Watch::new(&[canary_dir.path(), &canary]);
    r.ok(&["volume", "create", "ev"]);
    let o = r
        .cmd()
        .env("MOAT_AGENT", evil_agent())
        .env("MOAT_VM_TEMPLATES", "off")
        .args(["run", "--name", "esc", "--isolation", "hyperv", "--network", "none", "-v", "ev:/data"])
        .args(["busybox", "escape", canary.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = out(&o);
    let kv: std::collections::BTreeMap<&str, &str> = report.lines().filter_map(|l| l.split_once('=')).collect();
    let expect: std::collections::BTreeMap<&str, &str> = [
        ("share", "mounted"),
        ("root.symlink.abs", "ok"),
        ("root.symlink.canary", "ok"),
        ("root.symlink.up", "ok"),
        ("root.open.up", "ENOENT"),
        ("root.open.canary", "ENOENT"),
        ("root.mknod", "EPERM"),
        ("volume.symlink.abs", "ok"),
        ("volume.symlink.canary", "ok"),
        ("volume.symlink.up", "ok"),
        ("volume.open.up", "ENOENT"),
        ("volume.open.canary", "ENOENT"),
        ("volume.mknod", "EPERM"),
        ("rename.hosts", "EBUSY"),
        ("handle", kv.get("handle").copied().unwrap_or("?")),
        ("handles.opened", kv.get("handles.opened").copied().unwrap_or("?")),
        ("handles.outside", "0"),
    ]
    .into_iter()
    .collect();
    assert_eq!(kv, expect, "{report}");
    // the links landed in the container's layer and the volume, as links
    let id = r.ok(&["inspect", "-f", "{{.Id}}", "esc"]).trim().to_string();
    let upper = r.path().join("containers").join(&id).join("upper");
    let vol = r.path().join("volumes/ev/_data");
    for d in [&upper, &vol] {
        assert_eq!(std::fs::read_link(d.join("escape-root")).unwrap(), Path::new("/"));
        assert_eq!(std::fs::read_link(d.join("escape-canary")).unwrap(), canary);
        assert!(!d.join("escape-dev").exists());
    }
    // the host walks what the guest left
    let diff = r.ok(&["diff", "esc"]);
    assert!(diff.contains("A /escape-root") && diff.contains("A /escape-canary"), "{diff}");
    let export = r.cmd().args(["export", "esc"]).output().unwrap();
    assert!(export.status.success());
    let listing = tar_listing(&export.stdout);
    let link = format!("Symlink 120777 0:0 0 {} ", canary.display());
    assert_eq!(listing.get("escape-canary"), Some(&link), "exported as the link it is");
    // a link climbing out of the layer is refused as dockerd's unpacker
    // refuses it; without it the layer commits
    let e = r.fails(&["commit", "esc", "planted"]);
    assert!(e.contains("refusing archive entry \"escape-up\"") && e.contains("escapes the layer"), "{e}");
    std::fs::remove_file(upper.join("escape-up")).unwrap();
    r.ok(&["commit", "esc", "planted"]);
    let dest = tempfile::tempdir().unwrap();
    let o = r.run(&["cp", "-L", "esc:/escape-canary", dest.path().to_str().unwrap()]);
    assert!(!o.status.success(), "cp -L followed the link out of the container");
    r.ok(&["cp", "esc:/escape-canary", dest.path().to_str().unwrap()]);
    assert_eq!(std::fs::read_link(dest.path().join("escape-canary")).unwrap(), canary);
    let o = r.run(&["run", "--rm", "--network", "none", "-v", "ev:/data", "planted", "cat", "/escape-canary"]);
    assert!(!o.status.success() && !out(&o).contains("host secret"));
    let o = r.run(&["run", "--rm", "--network", "none", "-v", "ev:/data", "planted", "cat", "/data/escape-canary"]);
    assert!(!o.status.success() && !out(&o).contains("host secret"));
    r.ok(&["rm", "esc"]);
    r.ok(&["volume", "rm", "ev"]);
    assert_eq!(watch.events(), Vec::<String>::new(), "the host canary was touched");
    // the positive control of the watch: a host read shows up
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "host secret");
    assert!(watch.events().iter().any(|e| e.contains("IN_OPEN")), "the watch sees an open");
}

/// An unprivileged user can neither connect to `moat serve`'s socket (in a
/// directory anyone may enter), nor read or change the root's state, the
/// templates or guest memory files; root can (the positive controls).
#[test]
fn the_socket_state_and_templates_are_root_only_hyperv() {
    let r = root_with_busybox();
    let open = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = open.path().join("moat.sock");
    let _api = ApiServer::start_at(&r, sock.clone(), &[]);
    let ping = format!("curl -sS --unix-socket '{}' http://x/_ping", sock.display());
    let o = as_nobody(&ping);
    // curl's "couldn't connect" (7): connect(2) refused with EACCES
    assert_eq!((o.status.code(), out(&o)), (Some(7), String::new()), "nobody reached the API");
    let o = std::process::Command::new("sh").arg("-c").arg(&ping).output().unwrap();
    assert_eq!(out(&o), "OK", "root reaches it");

    // a VM container leaves its template (state and guest memory) behind
    r.ok(&["run", "--rm", "--isolation=hyperv", "--network", "none", "busybox", "true"]);
    let templates = kernel_dir().join("templates");
    let mut files = vec![templates.clone()];
    for e in std::fs::read_dir(&templates).unwrap().flatten() {
        if e.path().is_dir() {
            for f in std::fs::read_dir(e.path()).unwrap().flatten() {
                files.push(f.path());
            }
        }
    }
    assert!(files.iter().any(|f| f.ends_with("ram")), "a template's memory file: {files:?}");
    for f in files.iter().chain([&r.path().to_path_buf(), &r.path().join("moat.db")]) {
        let q = f.display();
        let o = as_nobody(&format!("cat '{q}' >/dev/null 2>&1 || ls '{q}' >/dev/null 2>&1 || exit 1; exit 0"));
        assert!(!o.status.success(), "nobody read {q}");
        let o = as_nobody(&format!("touch '{q}' 2>/dev/null || echo x >> '{q}' 2>/dev/null || exit 1; exit 0"));
        assert!(!o.status.success(), "nobody changed {q}");
        assert!(std::fs::symlink_metadata(f).is_ok(), "root sees {q}");
    }
    // the kernels and the initramfs: nobody may change them
    for e in std::fs::read_dir(kernel_dir()).unwrap().flatten() {
        let q = e.path().display().to_string();
        let o = as_nobody(&format!("touch '{q}' 2>/dev/null || exit 1; exit 0"));
        assert!(!o.status.success(), "nobody changed {q}");
    }
}
