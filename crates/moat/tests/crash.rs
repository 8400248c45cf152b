//! SIGKILL at any point: the CLI during `run -d`/`create`, and the shim of a
//! running container. `moat ps -a` must always show the truth and nothing may
//! leak (processes, mounts, cgroups).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

fn host_mounts_under(p: &std::path::Path) -> Vec<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.to_str().unwrap();
    mi.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(p)).map(str::to_string).collect()
}

#[test]
fn sigkill_of_cli_during_run_and_create_leaves_the_truth() {
    let r = root_with_busybox();
    // kills that found the CLI still working (a kill after it exited tests nothing)
    let mut mid = 0;
    for (i, delay_ms) in [0u64, 1, 2, 4, 7, 10, 15, 25, 40, 80].iter().enumerate() {
        let sleep = format!("{}", 3000 + i);
        let verb = if i % 3 == 2 { "create" } else { "run" };
        let mut args = vec![verb];
        if verb == "run" {
            args.push("-d");
        }
        args.extend(["--name", "k", "busybox", "sleep"]);
        args.push(&sleep);
        let mut child = r
            .cmd()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        if child.try_wait().unwrap().is_none() {
            mid += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        // a shim that did get started finishes starting on its own
        let shim_of_root = format!("{} shim", r.path().display());
        let t0 = std::time::Instant::now();
        let ps = loop {
            let ps = r.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
            if ps.trim() == "k running" || host_pids_matching(&shim_of_root).is_empty() {
                break ps;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "shim never finished starting: {ps}");
            std::thread::sleep(Duration::from_millis(10));
        };
        let running_on_host = host_pids_matching(&format!("sleep {sleep}"));
        match ps.trim() {
            "" => assert!(running_on_host.is_empty(), "an unlisted container runs: {running_on_host:?}"),
            "k running" => {
                let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "k"])).unwrap();
                let pid = v[0]["State"]["Pid"].as_u64().unwrap() as u32;
                assert_eq!(running_on_host, vec![pid], "ps says running with pid {pid}");
            }
            "k created" | "k exited" => assert!(running_on_host.is_empty(), "{ps}: but {running_on_host:?} runs"),
            other => panic!("unexpected ps after kill at {delay_ms} ms: {other}"),
        }
        assert!(host_mounts_under(r.path()).is_empty(), "leaked mounts: {:?}", host_mounts_under(r.path()));
        let id = r.ok(&["ps", "-aq", "--no-trunc"]).trim().to_string();
        let _ = r.run(&["rm", "-f", "k"]);
        assert!(host_pids_matching(&format!("sleep {sleep}")).is_empty());
        if !id.is_empty() {
            assert_eq!(
                cgroups_of(&id),
                Vec::<std::path::PathBuf>::new(),
                "cgroups leaked after a kill at {delay_ms} ms"
            );
        }
    }
    assert!(mid >= 3, "only {mid} kills landed while the CLI was at work");
}

#[test]
fn sigkill_of_shim_is_reported_and_cleaned_up() {
    let r = root_with_busybox();
    let id = r.ok(&["run", "-d", "--name", "victim", "busybox", "sleep", "3100"]).trim().to_string();
    let shims = host_pids_matching(&format!("shim {id}"));
    assert_eq!(shims.len(), 1);
    assert_eq!(host_pids_matching("sleep 3100").len(), 1);
    nix_kill(shims[0]);
    // the container dies with its shim (PDEATHSIG)
    eventually("container outlived its shim", || host_pids_matching("sleep 3100").is_empty());
    let ps = r.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.starts_with("victim Exited (137)"), "{ps}");
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "victim"])).unwrap();
    assert!(v[0]["State"]["Error"].as_str().unwrap().contains("shim"), "{v}");
    // it can start again, and rm cleans everything
    r.ok(&["start", "victim"]);
    assert_eq!(host_pids_matching("sleep 3100").len(), 1);
    assert!(!cgroups_of(&id).is_empty(), "the check sees a running container's cgroups");
    r.ok(&["rm", "-f", "victim"]);
    assert!(host_pids_matching("sleep 3100").is_empty());
    assert!(host_pids_matching(&format!("shim {id}")).is_empty());
    assert_eq!(cgroups_of(&id), Vec::<std::path::PathBuf>::new(), "cgroups leaked, in any hierarchy");
}

fn nix_kill(pid: u32) {
    // SAFETY: sending SIGKILL to a process this test started (its shim)
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn sigkill_of_a_vm_shim_takes_its_vm_down_hyperv() {
    let r = root_with_busybox();
    let id =
        r.ok(&["run", "-d", "--isolation=hyperv", "--name", "vvictim", "busybox", "sleep", "3101"]).trim().to_string();
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "vvictim"])).unwrap();
    let qemu = v[0]["VM"]["QemuPid"].as_u64().unwrap();
    let shims = host_pids_matching(&format!("shim {id}"));
    assert_eq!(shims.len(), 1);
    nix_kill(shims[0]);
    // QEMU dropped its privileges (which clears PDEATHSIG), so it is the
    // guest that ends it: its agent sees the control channel close and
    // powers off. No moat command runs meanwhile: nothing else cleans up.
    let t0 = std::time::Instant::now();
    while alive(qemu) {
        assert!(t0.elapsed() < Duration::from_secs(20), "the VM outlived its shim");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ps = r.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.starts_with("vvictim Exited (137)"), "{ps}");
    // it starts again, and rm cleans everything
    r.ok(&["start", "vvictim"]);
    assert_eq!(r.ok(&["exec", "vvictim", "echo", "back"]).trim(), "back");
    assert!(!cgroups_of(&id).is_empty(), "the check sees a running container's cgroups");
    r.ok(&["rm", "-f", "vvictim"]);
    assert!(host_pids_matching(&format!("shim {id}")).is_empty());
    assert_eq!(cgroups_of(&id), Vec::<std::path::PathBuf>::new(), "cgroups leaked, in any hierarchy");
    assert!(host_pids_matching(&format!("-name moat-{}", &id[..12])).is_empty());
}
