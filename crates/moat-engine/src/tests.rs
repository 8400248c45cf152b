//! The front-end API driven with a stub backend on in-process shims: no
//! root, no namespaces, no VM. The stub "runs" `echo ARGS` (prints them,
//! exits 0), `exit N`, and `sleep` (runs until signalled).

#![allow(clippy::unwrap_used)]

use crate::container_filter::ContainerFilter;
use crate::events::EventFilter;
use crate::filter::Filters;
use crate::shim::{Backend, BackendEvent, ContainerPlan, ExecStart, Query, Source};
use crate::*;
use moat_proto::{ExecSpec, ShimReply, WinSize};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

#[derive(Default)]
struct Stub {
    queue: VecDeque<BackendEvent>,
    sleeping: bool,
}

impl Stub {
    fn run(&mut self, sid: u32, args: &[String]) {
        match args.first().map(String::as_str) {
            Some("echo") => {
                let data = format!("{}\n", args[1..].join(" ")).into_bytes();
                self.queue.push_back(BackendEvent::Output { sid, err: false, data });
                self.queue.push_back(BackendEvent::Exited { sid, code: 0, oom: false });
            }
            Some("exit") => {
                let code = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1);
                self.queue.push_back(BackendEvent::Exited { sid, code, oom: false });
            }
            _ => self.sleeping = sid == 0,
        }
    }
}

impl Backend for Stub {
    fn start_main(&mut self, plan: &ContainerPlan) -> Result<u32, moat_sandbox::SandboxError> {
        let args = plan.spec.process.args.clone();
        self.run(0, &args);
        Ok(4242)
    }
    fn exec(&mut self, sid: u32, x: &ExecSpec) -> Result<ExecStart, moat_sandbox::SandboxError> {
        self.run(sid, &x.args);
        Ok(ExecStart::Now(4243))
    }
    fn signal(&mut self, sid: u32, signal: i32) -> bool {
        if sid == 0 && self.sleeping {
            self.sleeping = false;
            self.queue.push_back(BackendEvent::Exited { sid, code: 128 + signal, oom: false });
        }
        true
    }
    fn resize(&mut self, _sid: u32, _ws: WinSize) {}
    fn stdin(&mut self, _sid: u32, _data: Vec<u8>) {}
    fn close_stdin(&mut self, _sid: u32) {}
    fn query(&mut self, q: Query, _token: u64) -> Option<ShimReply> {
        Some(match q {
            Query::Top => ShimReply::Procs { rows: Vec::new() },
            Query::Stats => ShimReply::Usage(Default::default()),
            _ => ShimReply::Ok { warnings: Vec::new() },
        })
    }
    fn poll_fds(&self, _full: &dyn Fn(u32) -> bool, _out: &mut Vec<(RawFd, libc::c_short, Source)>) {}
    fn ready(&mut self, _src: Source, _revents: libc::c_short, _buf: &mut [u8]) -> Vec<BackendEvent> {
        Vec::new()
    }
    fn deadline(&self) -> Option<Instant> {
        (!self.queue.is_empty()).then(Instant::now)
    }
    fn timers(&mut self, _now: Instant) -> Vec<BackendEvent> {
        self.queue.drain(..).collect()
    }
    fn teardown(&mut self, _plan: &ContainerPlan) {}
}

fn engine(root: &std::path::Path) -> Engine {
    let factory: crate::shim::BackendFactory =
        Arc::new(|_plan: &ContainerPlan| Ok(Box::new(Stub::default()) as Box<dyn Backend>));
    let serve: options::InProcessShim =
        Arc::new(move |o, id, first| crate::shim::serve_with(o, &id, first, Some(&factory)));
    let opts = EngineOptions {
        config_file: Some(root.join("no-system-config.toml")),
        in_process: Some(serve),
        ..EngineOptions::new(root)
    };
    Engine::open(opts).unwrap()
}

fn with_image(e: &mut Engine) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "etc/motd", &b"hi\n"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    e.images().import(&tar[..], Some("stub:latest"), "test", &[r#"CMD ["echo", "hello"]"#.into()]).unwrap();
}

fn req(name: &str, args: &[&str]) -> create::CreateRequest {
    let config = config::ContainerConfig {
        image: "stub".into(),
        cmd: args.iter().map(|s| s.to_string()).collect(),
        network: "none".into(),
        ..Default::default()
    };
    create::CreateRequest { name: Some(name.into()), config, ..Default::default() }
}

fn output(s: &mut Session) -> (String, Option<i32>) {
    let mut out = String::new();
    while let Some(ev) = s.next_event().unwrap() {
        match ev {
            SessionEvent::Stdout(d) => out.push_str(&String::from_utf8_lossy(&d)),
            SessionEvent::Exit { code, .. } => return (out, Some(code)),
            _ => {}
        }
    }
    (out, None)
}

#[test]
fn run_attach_wait_and_events() {
    let d = tempfile::tempdir().unwrap();
    let mut e = engine(d.path());
    with_image(&mut e);
    // the image's command, attached from the first byte
    let c = e.create(req("a", &[])).unwrap();
    let (_, mut s) = e.start(c.id()).unwrap();
    s.attach(AttachOptions::default()).unwrap();
    assert_eq!(output(&mut s), ("hello\n".into(), Some(0)));
    // wait next-exit registered before the start
    let b = e.create(req("b", &["exit", "3"])).unwrap();
    let root = d.path().to_path_buf();
    let id = b.id().to_string();
    let waiter = std::thread::spawn(move || engine(&root).wait(&id, WaitCondition::NextExit).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(200));
    e.start(b.id()).unwrap();
    assert_eq!(waiter.join().unwrap().code, 3);
    assert_eq!(e.wait("b", WaitCondition::NotRunning).unwrap().code, 3);
    let got = e.get("b").unwrap();
    let view = view::ContainerInspect::of(&e, &got);
    let v = serde_json::to_value(&view).unwrap();
    assert_eq!(v["State"]["ExitCode"], 3);
    assert_eq!(v["Name"], "/b");
    // the event log, in order
    let by_id = format!("container={}", b.id());
    let evs = events::list(
        e.images().store(),
        None,
        None,
        &EventFilter::new(Filters::from_args(&[by_id]).unwrap(), 0).unwrap(),
    )
    .unwrap();
    let actions: Vec<&str> = evs.iter().map(|ev| ev.action.as_str()).collect();
    assert_eq!(actions, vec!["create", "start", "die"]);
    assert_eq!(evs[2].actor.attributes["exitCode"], "3");
    e.remove("b", false, false).unwrap();
    let evs = events::list(
        e.images().store(),
        None,
        None,
        &EventFilter::new(Filters::from_args(&["event=destroy".into()]).unwrap(), 0).unwrap(),
    )
    .unwrap();
    assert_eq!(evs.len(), 1);
}

#[test]
fn exec_instances_kill_stop_and_filters() {
    let d = tempfile::tempdir().unwrap();
    let mut e = engine(d.path());
    with_image(&mut e);
    let mut r = req("sleeper", &["sleep"]);
    r.config.labels.insert("tier".into(), "web".into());
    let c = e.create(r).unwrap();
    e.start(c.id()).unwrap();
    assert!(e.get("sleeper").unwrap().is_running());
    // exec: created, started, inspected
    let x = e
        .exec_create(
            "sleeper",
            ExecSpec { args: vec!["echo".into(), "in".into(), "exec".into()], ..Default::default() },
        )
        .unwrap();
    assert!(!e.exec_inspect(&x).unwrap().started);
    let mut s = e.exec_start(&x, false, None).unwrap();
    assert_eq!(output(&mut s), ("in exec\n".into(), Some(0)));
    let rec = e.exec_inspect(&x[..12]).unwrap();
    assert_eq!((rec.running, rec.exit_code), (false, Some(0)));
    assert!(e.exec_start(&x, false, None).is_err(), "an exec starts once");
    assert!(matches!(e.exec_inspect("ffffffff"), Err(EngineError::NoSuchExec(_))));
    // filters over the one engine implementation
    let f = |e: &mut Engine, args: &[&str]| {
        let f =
            ContainerFilter::new(Filters::from_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap())
                .unwrap();
        e.containers(true, &f).unwrap().len()
    };
    assert_eq!(f(&mut e, &["label=tier=web"]), 1);
    assert_eq!(f(&mut e, &["label=tier=db"]), 0);
    assert_eq!(f(&mut e, &["name=^/sl.*er$"]), 1, "names are regular expressions");
    assert_eq!(f(&mut e, &["ancestor=stub:latest"]), 1);
    assert_eq!(f(&mut e, &["status=running"]), 1);
    // kill delivers the signal; the exit is 128 + N
    e.kill("sleeper", libc::SIGTERM).unwrap();
    assert_eq!(e.wait("sleeper", WaitCondition::NotRunning).unwrap().code, 128 + libc::SIGTERM);
    assert!(matches!(e.kill("sleeper", 9), Err(ref err) if err.kind() == ErrorKind::NotRunning));
    // errors carry kinds
    assert_eq!(e.get("ghost").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(e.create(req("sleeper", &["sleep"])).unwrap_err().kind(), ErrorKind::Conflict);
    let mut bad = req("bad", &["sleep"]);
    bad.config.limits.cpus = Some(f64::NAN);
    assert_eq!(e.create(bad).unwrap_err().kind(), ErrorKind::Invalid);
}
