//! Converting containers between isolation types, and the default isolation.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim().to_string()
}

#[test]
fn convert_both_ways_keeps_the_filesystem_hyperv() {
    let r = root_with_busybox();
    let out =
        r.ok(&["run", "--name", "c1", "--label", "k=v", "busybox", "sh", "-c", "date >> /log; cat /log; uname -r"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!((lines.len(), lines[1]), (2, host_kernel().as_str()), "{out}");
    let before: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "c1"])).unwrap();
    r.ok(&["update", "--isolation=vm", "c1"]);
    let out = r.ok(&["start", "-a", "c1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "two log lines and the kernel: {out}");
    assert_ne!(lines[2], host_kernel(), "guest kernel after conversion");
    assert_eq!(lines[2], guest_kernel_release());
    let after: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "c1"])).unwrap();
    assert_eq!(after[0]["Id"], before[0]["Id"]);
    assert_eq!(after[0]["Config"]["Labels"]["k"], "v");
    assert_eq!(after[0]["HostConfig"]["Isolation"], "hyperv");
    assert!(after[0]["State"]["IsolationChangedAt"].is_string());
    assert!(r.ok(&["ps", "-a"]).lines().any(|l| l.contains(" c1 ") && l.ends_with("hyperv")));
    r.ok(&["update", "--isolation=process", "c1"]);
    let out = r.ok(&["start", "-a", "c1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!((lines.len(), lines[3]), (4, host_kernel().as_str()), "three log lines and the host kernel: {out}");
    // logs keep every run
    assert_eq!(r.ok(&["logs", "c1"]).lines().count(), 2 + 3 + 4);
}

#[test]
fn running_containers_are_refused_unless_restart_hyperv() {
    let r = root_with_busybox();
    r.ok(&["run", "-d", "--name", "live", "busybox", "sh", "-c", "echo started; sleep 3300"]);
    let e = r.fails(&["update", "--isolation=hyperv", "live"]);
    assert!(e.contains("stop it first"), "{e}");
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "live"])).unwrap();
    assert_eq!(v[0]["HostConfig"]["Isolation"], "process", "refused means unchanged");
    assert_eq!(v[0]["State"]["Status"], "running");
    // --restart: stop, convert, start
    r.ok(&["update", "--isolation=hyperv", "--restart", "live"]);
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "live"])).unwrap();
    assert_eq!(v[0]["HostConfig"]["Isolation"], "hyperv");
    assert_eq!(v[0]["State"]["Status"], "running");
    assert!(host_pids_matching("sleep 3300").is_empty(), "now inside a VM");
    assert!(r.ok(&["exec", "live", "ps"]).contains("sleep 3300"));
    // an option only process isolation has is reported, nothing changes
    r.ok(&["create", "--name", "hostnet", "--network", "host", "busybox", "true"]);
    let e = r.fails(&["update", "--isolation=vm", "hostnet"]);
    assert!(e.contains("network mode host"), "{e}");
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "hostnet"])).unwrap();
    assert_eq!(v[0]["HostConfig"]["Isolation"], "process");
    let e = r.fails(&["run", "--isolation=vm", "--network", "host", "busybox", "true"]);
    assert!(e.contains("network mode host"), "{e}");
    r.fails(&["update", "--isolation=kvm", "hostnet"]);
}

#[test]
fn default_isolation_from_config_and_flag_hyperv() {
    let r = root_with_busybox();
    let info: serde_json::Value = serde_json::from_str(&r.ok(&["info", "--format", "json"])).unwrap();
    assert_eq!(info["Isolation"], "process");
    std::fs::write(r.path().join("config.toml"), "default_isolation = \"hyperv\"\n").unwrap();
    let info: serde_json::Value = serde_json::from_str(&r.ok(&["info", "--format", "json"])).unwrap();
    assert_eq!(info["Isolation"], "hyperv");
    // no --isolation, and --isolation=default, both mean the configured default
    let k = r.ok(&["run", "--rm", "busybox", "uname", "-r"]);
    assert_ne!(k.trim(), host_kernel());
    r.ok(&["create", "--name", "d", "--isolation=default", "busybox", "true"]);
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "d"])).unwrap();
    assert_eq!(v[0]["HostConfig"]["Isolation"], "hyperv");
    // explicit isolation wins; the flag overrides the file
    assert_eq!(r.ok(&["run", "--rm", "--isolation=process", "busybox", "uname", "-r"]).trim(), host_kernel());
    assert_eq!(
        r.ok(&["--default-isolation", "process", "run", "--rm", "busybox", "uname", "-r"]).trim(),
        host_kernel()
    );
    // a broken config is a clear error
    std::fs::write(r.path().join("config.toml"), "default_isolation = \"kvm\"\n").unwrap();
    let e = r.fails(&["ps"]);
    assert!(e.contains("config.toml") && e.contains("invalid isolation"), "{e}");
    // let the root's clean-up (which runs moat) work again
    std::fs::remove_file(r.path().join("config.toml")).unwrap();
}

#[test]
fn short_image_id_with_hyperv() {
    let (_, id) = busybox_archive();
    let r = root_with_busybox();
    let out = r.ok(&["run", "--rm", "-i", "--isolation=hyperv", &id[7..19], "sh", "-c", "echo via-short-id"]);
    assert_eq!(out, "via-short-id\n");
}
