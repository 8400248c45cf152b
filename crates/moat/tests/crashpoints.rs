//! Crash points (issue #35): every named point of `moat_core::crash::POINTS`
//! is armed in turn (`MOAT_CRASHPOINT`) while the operation that passes it
//! runs, so moat is killed with SIGKILL at that exact step. After each kill:
//! the kill really happened there (the CLI, the shim or `moat serve` died
//! by SIGKILL — a point no code reaches fails the test), `system check
//! --repair` leaves nothing behind and a second `system check` finds
//! nothing, every list still reads, the next operations succeed, and the
//! root resets with no process of it left (checked by `Root`'s drop).
//! The order is shuffled by a seed (`MOAT_CRASH_SEED`, printed), which
//! `make soak` varies.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};

/// Who dies at a point.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Cli,
    Shim,
    Serve,
}

/// What a point's scenario runs: setup (normal commands), then the command
/// that passes the point, and who runs that point.
struct Scenario {
    setup: Vec<Vec<String>>,
    run: Vec<String>,
    who: Who,
    /// The point's pass to kill at (`name@N`).
    pass: u32,
}

fn v(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn scenario(point: &str, reg: &str, ctx: &str, tar: &str, mark: &str) -> Scenario {
    let s = |setup: &[&[&str]], run: &[&str], who: Who| Scenario {
        setup: setup.iter().map(|a| v(a)).collect(),
        run: v(run),
        who,
        pass: 1,
    };
    // the mark in their environment finds the containers' processes on the host
    let created: &[&str] = &["create", "--name", "c1", "-e", mark, "--network", "none", "busybox", "sleep", "300"];
    let running: &[&str] = &["run", "-d", "--name", "c1", "-e", mark, "--network", "none", "busybox", "sleep", "300"];
    let pushed = format!("{reg}/crash/busybox:1");
    let tag: &[&str] = &["tag", "busybox", &pushed];
    let imported = format!("{reg}/crash/imp:1");
    match point {
        "create.validated" | "create.recorded" | "create.dirs" => s(&[], created, Who::Cli),
        "start.plan" | "start.spawned" => s(&[created], &["start", "c1"], Who::Cli),
        "shim.starting" | "shim.started" => s(&[], running, Who::Shim),
        "shim.exited" => s(&[], &["run", "--name", "c1", "--network", "none", "busybox", "true"], Who::Shim),
        "stop.signalled" => s(&[running], &["stop", "-t", "1", "c1"], Who::Cli),
        "kill.sent" => s(&[running], &["kill", "c1"], Who::Cli),
        "rm.stopped" => s(&[running], &["rm", "-f", "c1"], Who::Cli),
        "rm.files" | "rm.unrecorded" => s(&[created], &["rm", "c1"], Who::Cli),
        "rename.recorded" => s(&[created], &["rename", "c1", "c2"], Who::Cli),
        "update.isolation" => s(&[created], &["update", "--isolation", "hyperv", "c1"], Who::Cli),
        "commit.layer" | "commit.recorded" => s(
            &[&["run", "--name", "c1", "--network", "none", "busybox", "sh", "-c", "echo x > /f"]],
            &["commit", "c1", "snap:1"],
            Who::Cli,
        ),
        "load.staged" | "load.layers" | "load.recorded" => s(&[], &["load", "-q", "-i", tar], Who::Cli),
        "import.spooled" | "import.recorded" => s(&[], &["import", tar, "imp:1"], Who::Cli),
        "tag.recorded" => s(&[], &["tag", "busybox", "b2:1"], Who::Cli),
        "rmi.untagged" | "rmi.deleted" | "gc.layers" => s(&[&["import", tar, "imp:1"]], &["rmi", "imp:1"], Who::Cli),
        "image.prune.deleted" => s(&[&["import", tar]], &["image", "prune", "-f"], Who::Cli),
        // an image the root no longer has (busybox stays for the next run)
        "pull.manifest" | "pull.layers" | "pull.recorded" => s(
            &[
                &["import", tar, "imp:1"],
                &["tag", "imp:1", &imported],
                &["push", &imported],
                &["rmi", &imported],
                &["rmi", "imp:1"],
            ],
            &["pull", "-q", &imported],
            Who::Cli,
        ),
        "push.layers" => s(&[tag], &["push", &pushed], Who::Cli),
        "volume.create.dir" | "volume.create.recorded" => s(&[], &["volume", "create", "v1"], Who::Cli),
        "volume.rm.unrecorded" => s(&[&["volume", "create", "v1"]], &["volume", "rm", "v1"], Who::Cli),
        "switch.create.recorded" | "switch.create.bridge" => {
            s(&[], &["switch", "create", "--subnet", "10.212.77.0/24", "crashsw"], Who::Cli)
        }
        "switch.rm.bridge" | "switch.rm.unrecorded" => {
            s(&[&["switch", "create", "--subnet", "10.212.77.0/24", "crashsw"]], &["switch", "rm", "crashsw"], Who::Cli)
        }
        "connect.recorded" => s(
            &[
                &["switch", "create", "--subnet", "10.212.77.0/24", "crashsw"],
                &["create", "--name", "c1", "busybox", "true"],
            ],
            &["switch", "connect", "crashsw", "c1"],
            Who::Cli,
        ),
        "pod.create.recorded" => s(&[], &["pod", "create", "--name", "p1"], Who::Cli),
        "pod.rm.containers" | "pod.rm.unrecorded" => {
            s(&[&["pod", "create", "--name", "p1"]], &["pod", "rm", "-f", "p1"], Who::Cli)
        }
        "build.context" | "build.step.container" | "build.step.layer" | "build.step.cached" | "build.tagged" => {
            s(&[], &["build", "-q", "--network", "none", "-t", "built:1", ctx], Who::Cli)
        }
        "builder.prune.forgotten" => {
            s(&[&["build", "-q", "--network", "none", ctx]], &["builder", "prune", "-f"], Who::Cli)
        }
        // the third transaction of a create (the record, its endpoints, its config)
        "store.commit" => Scenario { pass: 2, ..s(&[], created, Who::Cli) },
        "exec.create.recorded" | "exec.start.spawned" | "attach.attached" => s(&[running], &[], Who::Serve),
        other => panic!("crash point {other} has no scenario: add one"),
    }
}

fn killed(o: &std::process::ExitStatus) -> bool {
    o.signal() == Some(9)
}

/// `moat ARGS` with `point` armed.
fn armed(r: &Root, point: &str, args: &[String]) -> Output {
    r.cmd().env("MOAT_CRASHPOINT", point).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap()
}

/// An API request: method, path, body.
type Request<'a> = (&'a str, String, Option<Vec<u8>>);

/// `moat serve` with `point` armed, sent `requests` in turn (the server may
/// die mid-answer: a failed request is expected then); returns how it ended.
fn armed_serve(r: &Root, point: &str, requests: &[Request]) -> std::process::ExitStatus {
    let sock = r.path().join("crash.sock");
    let mut child = r
        .cmd()
        .env("MOAT_CRASHPOINT", point)
        .args(["serve", "--socket"])
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("moat serve listens", || std::os::unix::net::UnixStream::connect(&sock).is_ok());
    let mut prev: Option<serde_json::Value> = None;
    for (method, path, body) in requests {
        // `{ID}` is the ID the previous answer gave (an exec's)
        let path = match prev.as_ref().and_then(|v| v["Id"].as_str()) {
            Some(id) => path.replace("{ID}", id),
            None => path.clone(),
        };
        let sock = sock.clone();
        let (m, b) = (method.to_string(), body.clone());
        match std::panic::catch_unwind(move || http(&sock, &m, &path, b.as_deref())) {
            Ok((_, _, answer)) => prev = serde_json::from_slice(&answer).ok(),
            Err(_) => break,
        }
    }
    let t0 = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A small xorshift: the seeded order of the points.
fn shuffled(mut seed: u64, items: &[&'static str]) -> Vec<&'static str> {
    let mut v = items.to_vec();
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    v
}

#[test]
fn kill_at_every_named_point_leaves_a_consistent_root() {
    let points = moat_core::crash::POINTS;
    assert!(points.len() >= 50, "{} crash points", points.len());
    let seed: u64 = std::env::var("MOAT_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261207);
    eprintln!("crash points in the order of MOAT_CRASH_SEED={seed}");
    let registry = Registry::start();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM busybox\nRUN echo x > /x\nCMD [\"cat\", \"/x\"]\n").unwrap();
    let tar = busybox_archive().0.to_str().unwrap().to_string();
    let mut failures = Vec::new();
    let mark = format!("CRASHMARK={}", std::process::id());
    // positive control of the host-side check: a marked container is found
    {
        let r = root_with_busybox();
        r.ok(&["run", "-d", "--name", "m", "-e", &mark, "--network", "none", "busybox", "sleep", "300"]);
        assert_eq!(pids_with_env(&mark).len(), 1);
        r.ok(&["rm", "-f", "m"]);
        assert_eq!(pids_with_env(&mark), Vec::<u32>::new());
    }
    for point in shuffled(seed, points) {
        let r = root_with_busybox();
        let sc = scenario(point, &registry.addr, ctx.path().to_str().unwrap(), &tar, &mark);
        for a in &sc.setup {
            let args: Vec<&str> = a.iter().map(String::as_str).collect();
            r.ok(&args);
        }
        let spec = if sc.pass > 1 { format!("{point}@{}", sc.pass) } else { point.to_string() };
        // the kill happened, and at this point
        let died = match sc.who {
            Who::Cli => {
                let o = armed(&r, &spec, &sc.run);
                killed(&o.status).then_some(()).ok_or_else(|| {
                    format!(
                        "{point}: `moat {}` was not killed there ({:?}): {}",
                        sc.run.join(" "),
                        o.status,
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
            }
            Who::Shim => {
                let o = armed(&r, &spec, &sc.run);
                // the shim died: its container says so, or the CLI lost it
                let state = r.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
                let err = r.run(&["inspect", "--format", "{{.State.Error}}", "c1"]);
                let said = String::from_utf8_lossy(&err.stdout).contains("shim process died")
                    || String::from_utf8_lossy(&o.stderr).contains("shim");
                said.then_some(())
                    .ok_or_else(|| format!("{point}: the shim did not die there ({:?}); ps: {state}", o.status))
            }
            Who::Serve => {
                let requests: Vec<Request> = if point.starts_with("attach") {
                    vec![("POST", "/containers/c1/attach?stream=1&stdout=1&stderr=1".to_string(), None)]
                } else {
                    vec![
                        ("POST", "/containers/c1/exec".to_string(), Some(br#"{"Cmd":["true"]}"#.to_vec())),
                        ("POST", "/exec/{ID}/start".to_string(), Some(br#"{"Detach":true}"#.to_vec())),
                    ]
                };
                let st = armed_serve(&r, &spec, &requests);
                killed(&st).then_some(()).ok_or_else(|| format!("{point}: moat serve was not killed there ({st:?})"))
            }
        };
        if let Err(e) = died {
            failures.push(e);
            continue;
        }
        // repaired, then clean
        let rep = r.run(&["system", "check", "--repair"]);
        if !rep.status.success() {
            failures.push(format!("{point}: system check --repair left: {}", String::from_utf8_lossy(&rep.stdout)));
            continue;
        }
        let again = r.run(&["system", "check"]);
        let text = String::from_utf8_lossy(&again.stdout).into_owned();
        if !again.status.success() || text != "0 problems found, 0 repaired\n" {
            failures.push(format!(
                "{point}: after --repair ({}) a second check found: {text}",
                String::from_utf8_lossy(&rep.stdout).trim()
            ));
            continue;
        }
        // every list reads; the next operations work
        for l in [&["ps", "-a"][..], &["images"], &["volume", "ls"], &["switch", "ls"], &["pod", "ls"]] {
            let o = r.run(l);
            if !o.status.success() {
                failures.push(format!("{point}: `moat {}` fails: {}", l.join(" "), String::from_utf8_lossy(&o.stderr)));
            }
        }
        let o = r.run(&["run", "--rm", "--network", "none", "busybox", "echo", "next"]);
        if String::from_utf8_lossy(&o.stdout) != "next\n" {
            failures.push(format!("{point}: the next run fails: {}", String::from_utf8_lossy(&o.stderr)));
        }
        // what the crashed operation made can be removed again (or was not made)
        let _ = r.run(&["rm", "-f", "c1", "c2"]);
        let _ = r.run(&["pod", "rm", "-f", "p1"]);
        let o = r.run(&["system", "prune", "-a", "-f", "--volumes"]);
        if !o.status.success() {
            failures.push(format!("{point}: prune after the crash fails: {}", String::from_utf8_lossy(&o.stderr)));
        }
        let _ = r.run(&["switch", "rm", "crashsw"]);
        // no process of the crashed operation's containers is left on the host
        let left = pids_with_env(&mark);
        if !left.is_empty() {
            failures.push(format!("{point}: container processes left on the host: {left:?}"));
        }
        drop(r);
    }
    // moat serve killed mid-request at the steps of create, start, load,
    // pull and build: the server dies there, the root stays consistent
    let ctx_tar =
        std::process::Command::new("tar").arg("-C").arg(ctx.path()).args(["-cf", "-", "."]).output().unwrap().stdout;
    let imported = format!("{}/crash/imp:1", registry.addr);
    let served: Vec<(&str, Vec<Vec<String>>, Request)> = vec![
        (
            "create.recorded",
            vec![],
            ("POST", "/containers/create?name=c1".into(), Some(br#"{"Image":"busybox","Cmd":["true"]}"#.to_vec())),
        ),
        (
            "start.spawned",
            vec![v(&["create", "--name", "c1", "--network", "none", "busybox", "sleep", "300"])],
            ("POST", "/containers/c1/start".into(), None),
        ),
        ("load.layers", vec![], ("POST", "/images/load".into(), Some(std::fs::read(&tar).unwrap()))),
        (
            "pull.layers",
            vec![
                v(&["import", &tar, "imp:1"]),
                v(&["tag", "imp:1", &imported]),
                v(&["push", &imported]),
                v(&["rmi", &imported]),
                v(&["rmi", "imp:1"]),
            ],
            ("POST", format!("/images/create?fromImage={}/crash/imp&tag=1", registry.addr), None),
        ),
        ("build.step.layer", vec![], ("POST", "/build?t=built:1&networkmode=none".into(), Some(ctx_tar))),
    ];
    for (point, setup, req) in served {
        let r = root_with_busybox();
        for a in &setup {
            let args: Vec<&str> = a.iter().map(String::as_str).collect();
            r.ok(&args);
        }
        let st = armed_serve(&r, point, &[req]);
        if !killed(&st) {
            failures.push(format!("serve: {point}: moat serve was not killed there ({st:?})"));
            continue;
        }
        let rep = r.run(&["system", "check", "--repair"]);
        let again = r.run(&["system", "check"]);
        if !rep.status.success() || String::from_utf8_lossy(&again.stdout) != "0 problems found, 0 repaired\n" {
            failures.push(format!("serve: {point}: system check: {}", String::from_utf8_lossy(&again.stdout)));
        }
        let o = r.run(&["run", "--rm", "--network", "none", "busybox", "echo", "next"]);
        if String::from_utf8_lossy(&o.stdout) != "next\n" {
            failures.push(format!("serve: {point}: the next run fails: {}", String::from_utf8_lossy(&o.stderr)));
        }
        // a new server serves
        let api = ApiServer::start(&r);
        if api.ok(&["ps", "-a", "-q"]).lines().count() > 1 {
            failures.push(format!("serve: {point}: unexpected containers"));
        }
        drop(api);
        let _ = r.run(&["rm", "-f", "c1"]);
    }
    assert!(failures.is_empty(), "MOAT_CRASH_SEED={seed}:\n{}", failures.join("\n"));
}

/// Host state a crash can leave outside the root: a switch's rules cut
/// short, a bridge of this root with no switch record (a `system reset`
/// killed half way), its rules, a link on one of its bridges whose
/// container is gone, a killed template build's scratch directory. `system
/// check` finds each (and nothing of another root's), `--repair` removes or
/// restores it, checked in the kernel's tables.
#[test]
fn system_check_finds_and_repairs_host_leftovers() {
    let r = Root::new();
    let other = Root::new();
    let kdir = tempfile::tempdir().unwrap();
    let check = |args: &[&str]| {
        let o = r.cmd().env("MOAT_KERNEL_DIR", kdir.path()).arg("system").arg("check").args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    r.ok(&["switch", "create", "--subnet", "10.251.0.0/24", "sw1"]);
    // another root's switch: never this root's to report or repair
    other.ok(&["switch", "create", "--subnet", "10.251.1.0/24", "theirs"]);
    let bridge_of = |root: &Root, name: &str| {
        let v: serde_json::Value = serde_json::from_str(&root.ok(&["switch", "inspect", name])).unwrap();
        v[0]["Options"]["com.docker.network.bridge.name"].as_str().unwrap().to_string()
    };
    let (b, theirs) = (bridge_of(&r, "sw1"), bridge_of(&other, "theirs"));
    let owner = std::fs::read_to_string(format!("/sys/class/net/{b}/ifalias")).unwrap().trim().to_string();
    let other_owner = std::fs::read_to_string(format!("/sys/class/net/{theirs}/ifalias")).unwrap().trim().to_string();
    assert!(owner.starts_with("moat:") && owner.len() == 21 && owner != other_owner, "{owner} {other_owner}");
    assert_eq!(check(&[]), (Some(0), "0 problems found, 0 repaired\n".to_string()));

    let sh = |c: &str| {
        let o = std::process::Command::new("sh").arg("-c").arg(c).output().unwrap();
        assert!(o.status.success(), "{c}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let rule_ok = |table: &str, rule: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("iptables -w -t {table} -C {rule}"))
            .status()
            .unwrap()
            .success()
    };
    let accept = format!("FORWARD -i {b} -m comment --comment {owner} -j ACCEPT");
    assert!(rule_ok("filter", &accept), "the switch's rule carries its root's mark");
    // planted: leftovers with names nobody else uses (removed by the guard on failure)
    let lost = "mtbfeedf00d";
    let port = "mtvdeadbee70";
    struct Planted(&'static str, &'static str, String);
    impl Drop for Planted {
        fn drop(&mut self) {
            for l in [self.0, self.1, "mtpdeadbee70"] {
                let _ = std::process::Command::new("ip").args(["link", "del", l]).output();
            }
            let _ = std::process::Command::new("sh").arg("-c").arg(format!("iptables -w -D {}", self.2)).output();
        }
    }
    let lost_rule = format!("FORWARD -o {lost} -m comment --comment {owner} -j ACCEPT");
    let _guard = Planted(lost, port, lost_rule.clone());
    sh(&format!("iptables -w -D {accept}"));
    sh(&format!("ip link add {lost} type bridge && ip link set {lost} alias {owner}"));
    sh(&format!("iptables -w -A {lost_rule}"));
    sh(&format!("ip link add {port} type veth peer name mtpdeadbee70 && ip link set {port} master {b}"));
    let scratch = kdir.path().join("templates").join(format!(".build-{}-4242", "ab".repeat(32)));
    std::fs::create_dir_all(scratch.join("part")).unwrap();

    let found = [
        ("switch sw1: 1 of its iptables rules are missing".to_string(), "added them"),
        (format!("bridge {lost} of this root has no switch record"), "deleted it"),
        (format!("link {port} on bridge {b} belongs to no container"), "deleted it"),
        (format!("iptables rule without its switch: -t filter -A {lost_rule}"), "deleted it"),
        (format!("template build scratch {} was left by a killed build", scratch.display()), "removed it"),
    ];
    let reported: String = found.iter().map(|(p, _)| format!("{p}\n")).collect();
    assert_eq!(check(&[]), (Some(1), format!("{reported}5 problems found, 0 repaired\n")));
    let repaired: String = found.iter().map(|(p, done)| format!("{p}: {done}\n")).collect();
    assert_eq!(check(&["--repair"]), (Some(0), format!("{repaired}5 problems found, 5 repaired\n")));
    assert_eq!(check(&[]), (Some(0), "0 problems found, 0 repaired\n".to_string()));
    // the kernel's state: the rule is back, the leftovers are gone, the
    // other root's switch is untouched
    assert!(rule_ok("filter", &accept), "the missing rule was added");
    assert!(!rule_ok("filter", &lost_rule), "the stray rule was deleted");
    for l in [lost, port, "mtpdeadbee70"] {
        assert!(!std::path::Path::new("/sys/class/net").join(l).exists(), "{l} is left");
    }
    assert!(std::path::Path::new("/sys/class/net").join(&b).exists());
    assert!(std::path::Path::new("/sys/class/net").join(&theirs).exists());
    assert!(rule_ok("filter", &format!("FORWARD -i {theirs} -m comment --comment {other_owner} -j ACCEPT")));
    assert!(!scratch.exists());
}
