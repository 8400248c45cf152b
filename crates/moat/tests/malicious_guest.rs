//! A malicious guest (issue #35): `moat-evil-agent` in place of the agent
//! (`MOAT_AGENT`, cold boots) sends oversized frames, bytes that are no
//! frame, a frame cut short, nothing at all, a flood that ignores flow
//! control, or events for sessions that do not exist. The shim refuses
//! each with the reason, within a bounded time and memory, and nothing of
//! the VM is left.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::Output;
use std::time::{Duration, Instant};

/// `moat ARGS` with the hostile agent; returns the output and how long it took.
fn with_evil(r: &Root, args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let o = r.cmd().env("MOAT_AGENT", evil_agent()).env("MOAT_VM_TEMPLATES", "off").args(args).output().unwrap();
    (o, t.elapsed())
}

fn no_vm_left(r: &Root) {
    let root = r.path().display().to_string();
    eventually("no QEMU or virtiofsd of the root left", || {
        host_pids_matching(&root).iter().all(|p| {
            let c = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
            !c.contains("qemu-system") && !c.contains("virtiofsd")
        })
    });
}

#[test]
fn a_hostile_agent_is_refused_with_the_reason_hyperv() {
    let r = root_with_busybox();
    let run =
        |mode: &str| with_evil(&r, &["run", "--rm", "--isolation", "hyperv", "--network", "none", "busybox", mode]);
    for (mode, why) in [
        ("oversized", "agent: protocol violation: frame of 1048577 bytes exceeds 1048576"),
        ("garbage", "agent: protocol violation: unknown frame kind 255"),
    ] {
        let (o, took) = run(mode);
        assert_fails_one_line(&o, mode);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{mode}: {err}");
        assert!(took < Duration::from_secs(60), "{mode} took {took:?}");
        no_vm_left(&r);
    }
    // events for sessions that do not exist are ignored; the real exit counts
    let (o, _) = run("strangers");
    assert_eq!(o.status.code(), Some(7), "{}", String::from_utf8_lossy(&o.stderr));
    no_vm_left(&r);
    assert_eq!(r.ok(&["ps", "-a", "-q"]), "");

    // a flood that ignores flow control: the shim's memory stays bounded
    let (o, _) = with_evil(
        &r,
        &["run", "-d", "--name", "flood", "--isolation", "hyperv", "--network", "none", "busybox", "flood"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = r.ok(&["inspect", "--format", "{{.Id}}", "flood"]).trim().to_string();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.path().join("containers").join(&id).join("state.json")).unwrap())
            .unwrap();
    let shim = state["shim_pid"].as_u64().unwrap();
    let log = r.path().join("containers").join(&id).join(format!("{id}-json.log"));
    let mut peak = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        let st = std::fs::read_to_string(format!("/proc/{shim}/status")).unwrap();
        let rss: u64 = st
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap();
        peak = peak.max(rss);
    }
    // positive control: the flood really flowed
    assert!(std::fs::metadata(&log).unwrap().len() > 1 << 20, "the flood reached the log");
    assert!(peak < 64 << 10, "shim RSS {peak} kB under a flood");
    let t = Instant::now();
    r.ok(&["rm", "-f", "flood"]);
    assert!(t.elapsed() < Duration::from_secs(30), "rm -f took {:?}", t.elapsed());
    no_vm_left(&r);

    // silence, and a frame cut short: the start gives up within its bound
    let waits: Vec<(Output, Duration)> = std::thread::scope(|sc| {
        let hs: Vec<_> = ["silent", "truncated"].into_iter().map(|mode| sc.spawn(move || run(mode))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((o, took), mode) in waits.into_iter().zip(["silent", "truncated"]) {
        assert_fails_one_line(&o, mode);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("within 60s"), "{mode}: {err}");
        assert!(took < Duration::from_secs(120), "{mode} took {took:?}");
    }
    no_vm_left(&r);
    assert_eq!(r.ok(&["ps", "-a", "-q"]), "");
    assert_eq!(r.ok(&["system", "check"]), "0 problems found, 0 repaired\n");
}
