//! Host restart simulation (issue #35): every process of a root — shims,
//! QEMU, virtiofsd, `moat serve` — killed at once, as a power cut or a
//! reboot would. `ps -a` then shows each container exited with the reason,
//! `moat serve`'s start brings back those whose restart policy wants them
//! (as dockerd's start does), and no state is lost.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn killing_every_process_at_once_loses_nothing_hyperv() {
    let r = root_with_busybox();
    let s = ApiServer::start(&r);
    r.ok(&["volume", "create", "keep"]);
    r.ok(&["switch", "create", "--subnet", "10.212.88.0/24", "keepsw"]);
    let run = |args: &[&str]| r.ok(&[&["run", "-d"][..], args].concat());
    run(&[
        "--name",
        "always",
        "--restart",
        "always",
        "--network",
        "keepsw",
        "-v",
        "keep:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f; exec sleep 600",
    ]);
    run(&["--name", "never", "--network", "none", "busybox", "sleep", "600"]);
    run(&["--name", "vm", "--isolation", "hyperv", "--restart", "unless-stopped", "busybox", "sleep", "600"]);
    eventually("the volume file", || r.run(&["exec", "always", "cat", "/data/f"]).stdout == b"kept\n");
    // every process of this root, at once (positive control: serve is one of them)
    let root = r.path().display().to_string();
    let pids = host_pids_matching(&root);
    assert!(pids.contains(&s.pid()), "moat serve {} among {pids:?}", s.pid());
    assert!(pids.len() >= 5, "shims, QEMU, virtiofsd and serve: {pids:?}");
    for p in &pids {
        // SAFETY: SIGKILL to the processes of this test's own root
        unsafe { libc::kill(*p as i32, libc::SIGKILL) };
    }
    eventually("every process of the root is gone", || host_pids_matching(&root).iter().all(|p| !pids.contains(p)));
    // the truth, each with its reason
    let ps = r.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    let mut lines: Vec<&str> = ps.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["always exited", "never exited", "vm exited"], "{ps}");
    for n in ["always", "never", "vm"] {
        let e = r.ok(&["inspect", "--format", "{{.State.ExitCode}} {{.State.Error}}", n]);
        assert_eq!(e, "137 the container's shim process died\n", "{n}");
    }
    assert!(cgroups_of(r.ok(&["inspect", "--format", "{{.Id}}", "never"]).trim()).is_empty());
    // serve starts again: the policies bring theirs back
    drop(s);
    let s = ApiServer::start(&r);
    let up = until(&r, &["ps", "--format", "{{.Names}}"], |o| {
        let mut v: Vec<&str> = o.lines().collect();
        v.sort();
        v == ["always", "vm"]
    });
    let mut v: Vec<&str> = up.lines().collect();
    v.sort();
    assert_eq!(v, ["always", "vm"], "restarted by policy: {up}");
    // nothing lost: the volume's file, the switch, the image, the stopped container
    assert_eq!(r.ok(&["exec", "always", "cat", "/data/f"]), "kept\n");
    assert_eq!(
        r.ok(&["switch", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", "keepsw"]),
        "10.212.88.0/24\n"
    );
    assert_eq!(r.ok(&["images", "--format", "{{.Repository}}"]), "busybox\n");
    assert_eq!(r.ok(&["system", "check"]), "0 problems found, 0 repaired\n");
    assert_eq!(s.ok(&["ps", "-a", "--format", "{{.Names}}"]).lines().count(), 3);
}
