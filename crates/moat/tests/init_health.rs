//! `--init` and health checks (issue #12), in both isolation types.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::*;

modes!(init_forwards_signals_and_reaps, health_checks_from_flags_and_image);

fn init_forwards_signals_and_reaps(iso: &str) {
    let r = root_with_busybox();
    // an orphan reparented to PID 1: the init reaps it, a bare `sleep` does not
    // (it outlives the exec: an orphan that exits while sh is still sh may be reaped by sh)
    let orphan = "(sleep 0.3 &); exec sleep 600";
    r.ok(&["run", "-d", "--name", "with", "--init", "--isolation", iso, "busybox", "sh", "-c", orphan]);
    r.ok(&["run", "-d", "--name", "without", "--isolation", iso, "busybox", "sh", "-c", orphan]);
    let ps = |n: &str| until(&r, &["exec", n, "ps", "-o", "pid,stat,args"], |o| o.contains("sleep 600"));
    let zombies =
        |o: &str| o.lines().filter(|l| l.split_whitespace().nth(1).is_some_and(|s| s.starts_with('Z'))).count();
    // the zombie in `without` shows its orphan has exited; `with`'s orphan,
    // started earlier for as long, has exited too by then: only now is a
    // snapshot of `with` without zombies worth anything
    let wo = until(&r, &["exec", "without", "ps", "-o", "pid,stat,args"], |o| zombies(o) == 1);
    assert_eq!(zombies(&wo), 1, "without an init the orphan stays a zombie: {wo}");
    let w = ps("with");
    assert!(w.lines().nth(1).unwrap().contains("/sbin/moat-init -- sh -c"), "PID 1 is the init: {w}");
    assert_eq!(zombies(&w), 0, "{w}");
    let sleeps: Vec<&str> =
        w.lines().filter(|l| matches!(l.split_whitespace().nth(2), Some("sleep" | "[sleep]"))).collect();
    assert_eq!(sleeps.len(), 1, "the orphan is gone, reaped, only `sleep 600` is left: {w}");
    // stop's SIGTERM reaches the command through the init (143); a bare PID 1 ignores it (killed: 137)
    r.ok(&["stop", "-t", "60", "with"]);
    r.ok(&["stop", "-t", "1", "without"]);
    assert_eq!(r.ok(&["inspect", "-f", "{{.State.ExitCode}} {{.HostConfig.Init}}", "with"]), "143 true\n");
    assert_eq!(r.ok(&["inspect", "-f", "{{.State.ExitCode}}", "without"]), "137\n");
    // the command's exit status is the container's; a terminal still works
    let o = r.run(&["run", "--rm", "--init", "--isolation", iso, "busybox", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    let o = r.run(&["run", "--rm", "--init", "--isolation", iso, "busybox", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "{}", String::from_utf8_lossy(&o.stderr));
    // not a change of the container's filesystem
    assert!(!r.ok(&["diff", "with"]).contains("moat-init"));
    r.ok(&["rm", "with", "without"]);
}

fn health_checks_from_flags_and_image(iso: &str) {
    let r = root_with_busybox();
    r.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--isolation",
        iso,
        "--health-cmd",
        "cat /tmp/ok",
        "--health-interval",
        "300ms",
        "--health-retries",
        "2",
        "busybox",
        "sleep",
        "600",
    ]);
    let status = |n: &str| r.ok(&["inspect", "-f", "{{.State.Health.Status}}", n]).trim().to_string();
    assert!(r.ok(&["ps", "--format", "{{.Status}}"]).contains("(health: starting)") || status("web") != "starting");
    assert_eq!(
        until(&r, &["inspect", "-f", "{{.State.Health.Status}}", "web"], |o| o.trim() == "unhealthy"),
        "unhealthy\n"
    );
    assert_eq!(status("web"), "unhealthy");
    let v: serde_json::Value =
        serde_json::from_str(&r.ok(&["inspect", "-f", "{{json .State.Health}}", "web"])).unwrap();
    assert!(v["FailingStreak"].as_u64().unwrap() >= 2);
    assert!(v["Log"][0]["Output"].as_str().unwrap().contains("No such file"), "{v}");
    r.ok(&["exec", "web", "sh", "-c", "echo fine > /tmp/ok"]);
    assert_eq!(
        until(&r, &["inspect", "-f", "{{.State.Health.Status}}", "web"], |o| o.trim() == "healthy"),
        "healthy\n"
    );
    assert!(r.ok(&["ps", "--format", "{{.Status}}"]).contains("(healthy)"));
    assert_eq!(r.ok(&["ps", "-q", "--filter", "health=healthy"]).lines().count(), 1);
    assert_eq!(r.ok(&["ps", "-q", "--filter", "health=unhealthy"]), "");
    let last = r.ok(&["inspect", "-f", "{{range .State.Health.Log}}{{.ExitCode}}:{{.Output}}{{end}}", "web"]);
    assert!(last.trim_end().ends_with("0:fine"), "{last}");
    let ev = r.ok(&[
        "events",
        "--since",
        "2020-01-01T00:00:00Z",
        "--until",
        "0s",
        "--filter",
        "container=web",
        "--filter",
        "event=health_status",
        "--format",
        "{{.Action}}",
    ]);
    assert!(ev.contains("health_status: unhealthy\nhealth_status: healthy"), "{ev}");
    // a check that runs past its timeout fails
    r.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--isolation",
        iso,
        "--health-cmd",
        "sleep 30",
        "--health-timeout",
        "200ms",
        "--health-interval",
        "300ms",
        "--health-retries",
        "1",
        "busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(
        until(&r, &["inspect", "-f", "{{.State.Health.Status}}", "slow"], |o| o.trim() == "unhealthy"),
        "unhealthy\n"
    );
    let out = r.ok(&["inspect", "-f", "{{(index .State.Health.Log 0).Output}}", "slow"]);
    assert!(out.contains("exceeded timeout"), "{out}");
    // the image's HEALTHCHECK, and --no-healthcheck
    let check = serde_json::json!({ "Test": ["CMD-SHELL", "echo from-image"], "Interval": 300_000_000i64 });
    let (bytes, _) = docker_archive_with(
        &["checked:latest"],
        &[tar_dir(busybox_rootfs())],
        serde_json::json!({ "Cmd": ["sleep", "600"], "Healthcheck": check }),
    );
    let p = write_fixture("checked.tar", &bytes);
    r.ok(&["load", "-q", "-i", p.to_str().unwrap()]);
    r.ok(&["run", "-d", "--name", "img", "--isolation", iso, "checked"]);
    assert_eq!(
        until(&r, &["inspect", "-f", "{{.State.Health.Status}}", "img"], |o| o.trim() == "healthy"),
        "healthy\n"
    );
    assert!(r.ok(&["inspect", "-f", "{{json .Config.Healthcheck}}", "img"]).contains("from-image"));
    r.ok(&["run", "-d", "--name", "off", "--isolation", iso, "--no-healthcheck", "checked"]);
    assert_eq!(r.ok(&["inspect", "-f", "{{json .State.Health}}", "off"]).trim(), "null");
    assert_eq!(r.ok(&["ps", "-q", "--filter", "health=none"]).lines().count(), 1);
    let e = r.fails(&["run", "--health-interval", "soon", "busybox", "true"]);
    assert!(e.contains("invalid --health-interval"), "{e}");
    r.ok(&["rm", "-f", "web", "slow", "img", "off"]);
}
