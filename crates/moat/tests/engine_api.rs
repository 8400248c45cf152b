//! The engine's front-end API through the CLI (issue #11): the event log,
//! Go templates, filters implemented once, live updates, pause, restart
//! of a `--rm` container. Both isolation types.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::*;

modes!(events_templates_and_filters, pause_update_and_restart);

fn events_templates_and_filters(iso: &str) {
    let r = root_with_busybox();
    let o = r.run(&["run", "--rm", "--name", "three", "--isolation", iso, "busybox", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    let ev = r.ok(&["events", "--since", "1m", "--until", "0s", "--filter", "container=three"]);
    let actions: Vec<&str> =
        ev.lines().filter_map(|l| l.split_whitespace().nth(2)).filter(|a| !a.starts_with("exec")).collect();
    assert_eq!(actions, vec!["create", "start", "die", "destroy"], "{ev}");
    let die = ev.lines().find(|l| l.contains(" die ")).unwrap();
    assert!(die.contains("exitCode=3") && die.contains("name=three"), "{die}");
    // the same as JSON in Docker's shape
    let json = r.ok(&["events", "--since", "1m", "--until", "0s", "--filter", "event=die", "--format", "json"]);
    let e: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(
        (e["Type"].as_str(), e["Action"].as_str(), e["status"].as_str()),
        (Some("container"), Some("die"), Some("die"))
    );
    assert_eq!(e["Actor"]["Attributes"]["exitCode"], "3");
    assert!(e["timeNano"].as_i64().unwrap() > 0);

    // Go templates like docker's
    r.ok(&["create", "--name", "web", "--label", "tier=front", "--isolation", iso, "busybox", "sh", "-c", "exit 4"]);
    r.run(&["start", "-a", "web"]);
    let shown = if iso == "vm" { "hyperv" } else { iso };
    assert_eq!(
        r.ok(&["inspect", "-f", "{{.State.ExitCode}} {{.HostConfig.Isolation}}", "web"]),
        format!("4 {shown}\n")
    );
    assert_eq!(r.ok(&["inspect", "--format", "{{index .Config.Labels \"tier\"}}", "web"]), "front\n");
    let cfg: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "-f", "{{json .Config}}", "web"])).unwrap();
    assert_eq!(cfg["Labels"]["tier"], "front");
    let e = r.fails(&["inspect", "-f", "{{.State.Nope}}", "web"]);
    assert!(e.contains("map has no entry for key \"Nope\""), "{e}");
    assert_eq!(r.ok(&["ps", "-a", "--format", "{{.Names}}\\t{{.State}}", "--filter", "name=^/we"]), "web\texited\n");
    let table = r.ok(&["ps", "-a", "--format", "table {{.Names}}\\t{{.Status}}"]);
    assert!(table.starts_with("NAMES") && table.contains("web"), "{table}");
    assert!(r.ok(&["inspect", "--type", "image", "-f", "{{.Id}}", "busybox"]).starts_with("sha256:"));
    let e = r.fails(&["inspect", "--type", "image", "web"]);
    assert!(e.contains("No such object"), "{e}");

    // filters: ancestor by name:tag, label, exited, isolation; a name is a regular expression
    assert_eq!(r.ok(&["ps", "-a", "-q", "--filter", "ancestor=busybox:latest"]).lines().count(), 1);
    assert_eq!(r.ok(&["ps", "-a", "-q", "--filter", "label=tier=front", "--filter", "exited=4"]).lines().count(), 1);
    assert_eq!(r.ok(&["ps", "-a", "-q", "--filter", &format!("isolation={iso}")]).lines().count(), 1);
    assert_eq!(r.ok(&["ps", "-a", "-q", "--filter", "name=^w.b$"]).lines().count(), 1, "with or without the slash");
    assert_eq!(r.ok(&["ps", "-a", "-q", "--filter", "name=^eb"]).lines().count(), 0);
    let e = r.fails(&["ps", "--filter", "colour=blue"]);
    assert!(e.contains("invalid filter"), "{e}");

    // images REPO[:TAG] and filters
    let imgs = r.ok(&["images", "busybox"]);
    assert!(imgs.lines().nth(1).unwrap().starts_with("busybox "), "{imgs}");
    assert_eq!(r.ok(&["images", "nosuch"]).lines().count(), 1, "only the header");
    assert_eq!(
        r.ok(&["images", "--filter", "dangling=false", "--format", "{{.Repository}}:{{.Tag}}"]),
        "busybox:latest\n"
    );
    r.ok(&["rm", "web"]);
    // switches and images are in the log too
    r.ok(&["switch", "create", "evnet"]);
    r.ok(&["switch", "rm", "evnet"]);
    r.ok(&["tag", "busybox", "mine:v1"]);
    r.ok(&["rmi", "mine:v1"]);
    let ev = r.ok(&[
        "events",
        "--since",
        "1m",
        "--until",
        "0s",
        "--filter",
        "type=network",
        "--format",
        "{{.Action}} {{index .Actor.Attributes \"name\"}}",
    ]);
    assert!(ev.contains("create evnet\ndestroy evnet"), "{ev}");
    let ev = r.ok(&["events", "--since", "1m", "--until", "0s", "--filter", "type=image", "--format", "{{.Action}}"]);
    assert!(ev.contains("load\ntag\nuntag"), "{ev}");
}

fn pause_update_and_restart(iso: &str) {
    let r = root_with_busybox();
    r.ok(&[
        "run",
        "-d",
        "--name",
        "tick",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tick; sleep 0.1; done",
    ]);
    let tick =
        || r.ok(&["exec", "tick", "sh", "-c", "cat /tick 2>/dev/null || echo 0"]).trim().parse::<u64>().unwrap_or(0);
    wait_for("the loop to run", 30, || tick() > 0);
    r.ok(&["pause", "tick"]);
    // the kernel's view: the loop's counter (read on the host, in the
    // container's upper directory) stands still while paused
    let id = r.ok(&["inspect", "-f", "{{.Id}}", "tick"]).trim().to_string();
    let upper = r.path().join("containers").join(&id).join("upper/tick");
    let host_tick = || std::fs::read_to_string(&upper).unwrap_or_default().trim().parse::<u64>().unwrap_or(0);
    let frozen = host_tick();
    assert!(frozen > 0, "the host sees the counter");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(host_tick(), frozen, "a paused container's processes do not run");
    if iso == "process" {
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let state = if v2 {
            std::fs::read_to_string(format!("/sys/fs/cgroup/moat/{id}/cgroup.freeze")).unwrap()
        } else {
            std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/moat/{id}/freezer.state")).unwrap()
        };
        assert_eq!(state.trim(), if v2 { "1" } else { "FROZEN" });
    }
    assert!(r.ok(&["ps", "--format", "{{.Status}}"]).contains("(Paused)"));
    assert_eq!(r.ok(&["inspect", "-f", "{{.State.Paused}} {{.State.Status}}", "tick"]), "true paused\n");
    let e = r.fails(&["pause", "tick"]);
    assert!(e.contains("already paused"), "{e}");
    r.ok(&["unpause", "tick"]);
    let t = tick();
    wait_for("the loop to go on after unpause", 30, || tick() > t);
    // live limits: the cgroup (the guest's, for hyperv) takes them at once
    let out = r.ok(&["update", "--memory", "96m", "--pids-limit", "50", "tick"]);
    assert_eq!(out.trim(), "tick");
    assert_eq!(
        r.ok(&["inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}", "tick"]),
        format!("{} 50\n", 96 << 20)
    );
    // the kernel's cgroup took both: the host's for a process container,
    // the guest's (cgroup v2) for a VM container
    let limits = if iso == "vm" {
        r.ok(&["exec", "tick", "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max"])
    } else {
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let read = |v1: &str, v1f: &str, v2f: &str| {
            let p = if v2 {
                format!("/sys/fs/cgroup/moat/{id}/{v2f}")
            } else {
                format!("/sys/fs/cgroup/{v1}/moat/{id}/{v1f}")
            };
            std::fs::read_to_string(p).unwrap()
        };
        read("memory", "memory.limit_in_bytes", "memory.max") + &read("pids", "pids.max", "pids.max")
    };
    assert_eq!(limits, format!("{}\n50\n", 96u64 << 20), "the cgroup got the new limits");
    r.ok(&["update", "--restart", "always", "tick"]);
    assert_eq!(r.ok(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", "tick"]), "always\n");
    r.ok(&["rm", "-f", "tick"]);
    // stop and restart of a --rm container: like docker, no "No such container"
    r.ok(&["run", "-d", "--rm", "--name", "gone", "--isolation", iso, "busybox", "sleep", "600"]);
    let pid = r.ok(&["inspect", "-f", "{{.State.Pid}}", "gone"]);
    assert_eq!(r.ok(&["restart", "-t", "0", "gone"]).trim(), "gone");
    assert_ne!(r.ok(&["inspect", "-f", "{{.State.Pid}}", "gone"]), pid, "a new process runs");
    assert_eq!(r.ok(&["stop", "-t", "0", "gone"]).trim(), "gone");
    wait_for("--rm to remove it", 30, || r.ok(&["ps", "-a", "-q"]).is_empty());
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(std::time::Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
