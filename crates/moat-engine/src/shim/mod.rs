//! The per-container shim: `moat shim ID`.
//!
//! One single-threaded process per running container. It owns the
//! container through a [`Backend`] ([`local`] for process isolation, [`vm`]
//! for a utility VM), writes the json-file log, records every state change
//! (state file, then store) and the events that happen while nobody
//! watches, applies the restart policy, and serves clients on
//! `containers/<id>/shim.sock` (attach, exec, wait, logs -f, top, stats,
//! signals, stop, restart, pause, update) with a poll loop. Holding
//! `shim.lock` for its whole life tells everyone else it is alive. Being
//! single-threaded is what makes forking container processes from it safe.

pub mod host;
pub mod plan;
mod ports;

pub use host::{ShimHost, StoreHost};
pub use moat_sandbox::{Backend, BackendEvent, BackendFactory, ContainerPlan, ExecStart, Query, SandboxPlan, Source};
pub use plan::ShimPlan;
pub use ports::serve as serve_port_proxy;

/// What a shim is built from.
pub struct ShimContext {
    /// The engine's options.
    pub options: EngineOptions,
    /// The root's layout.
    pub layout: moat_store::Layout,
    /// The container (as recorded when its shim started).
    pub container: crate::Container,
    /// What its backend runs (its spec and directory too).
    pub plan: ContainerPlan,
}

impl ShimContext {
    /// The container's ID.
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// Its configuration.
    pub fn config(&self) -> &crate::config::ContainerConfig {
        &self.container.config
    }
}

/// The exit code of an exec whose process could not start (a missing
/// binary, a bad working directory, a bad user): 126, as Docker's daemon
/// records it, whatever the runtime said.
const EXEC_START_FAILED: i32 = 126;

use crate::config::{RestartPolicy, Status};
use crate::events::Event;
use crate::logs::LogWriter;
use crate::statefile::StateFile;
use crate::{execs, EngineError, EngineOptions};
use chrono::Utc;
use moat_proto::{Decoder, ExecSpec, Frame, Kind, ShimReply, ShimRequest};
use moat_runtime::relay::{MAIN, READ_CHUNK};
use moat_store::FileLock;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// Output buffered for one client before the sources feeding it pause.
const CLIENT_BUF_LIMIT: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Receives the main process's output; may feed its stdin.
    Attach { stdin: bool, stdin_once: bool },
    /// Owns exec session N.
    Exec(u32),
    /// Waits for the main process to exit.
    Waiter,
    /// Receives log records as they are written.
    Follower,
    /// Sent a one-shot request.
    Oneshot,
}

struct Client {
    stream: UnixStream,
    dec: Decoder,
    /// Queued bytes; the first `sent` of them are written already.
    out: Vec<u8>,
    sent: usize,
    role: Role,
    /// Close once `out` is flushed.
    closing: bool,
}

/// An exec session: its client (0 when detached), its exec ID, and the
/// client waiting for it to start.
struct ExecSession {
    client: u64,
    exec_id: String,
    starting: Option<u64>,
    detach: bool,
}

#[derive(Clone, Copy)]
enum Tok {
    Listener,
    Client(u64),
    Backend(Source),
}

struct Shim {
    host: Box<dyn ShimHost>,
    ctx: ShimContext,
    backend: Box<dyn Backend>,
    log: LogWriter,
    state_file: StateFile,
    listener: UnixListener,
    clients: HashMap<u64, Client>,
    next_client: u64,
    sessions: HashMap<u32, ExecSession>,
    next_session: u32,
    /// Queries answered later: token → (client, what).
    queries: HashMap<u64, (u64, QueryKind)>,
    next_token: u64,
    proxies: Vec<std::process::Child>,
    main_running: bool,
    stop_deadline: Option<Instant>,
    restart_at: Option<Instant>,
    /// A `Restart` request waiting for the main process to exit.
    restart_for: Option<u64>,
    /// The health check schedule while the main process runs.
    health: Option<HealthRun>,
    done: bool,
    /// The client that started a build step: when it goes, the step is killed.
    starter: Option<u64>,
}

/// A running container's health checks.
struct HealthRun {
    cfg: crate::health::HealthConfig,
    cmd: Vec<String>,
    started: Instant,
    next_at: Instant,
    check: Option<Check>,
}

/// One health check in flight (an exec session without a client).
struct Check {
    sid: u32,
    began: Instant,
    began_utc: chrono::DateTime<Utc>,
    out: Vec<u8>,
}

impl HealthRun {
    fn in_start_period(&self, now: Instant) -> bool {
        now.duration_since(self.started) < self.cfg.start_period()
    }
    fn interval(&self, now: Instant) -> Duration {
        if self.in_start_period(now) {
            self.cfg.start_interval().min(self.cfg.interval())
        } else {
            self.cfg.interval()
        }
    }
    fn deadline(&self) -> Instant {
        match &self.check {
            Some(c) => c.began + self.cfg.timeout(),
            None => self.next_at,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum QueryKind {
    Pause,
    Unpause,
    Other,
}

/// Whether the restart policy restarts a main process that exited with
/// `code` after `count` restarts, and after how long: 200 ms doubling per
/// restart up to a minute, like Docker. Never after a manual stop.
pub fn next_restart(policy: RestartPolicy, code: i32, count: u32, manually_stopped: bool) -> Option<Duration> {
    let again = !manually_stopped
        && match policy {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max } => code != 0 && (max == 0 || count < max),
        };
    again.then(|| Duration::from_millis(100u64.saturating_mul(1 << (count + 1).min(10))).min(Duration::from_secs(60)))
}

/// Entry point of `moat shim ID OPTIONS`; returns the process exit code.
pub fn main(id: &str, options_json: &str) -> i32 {
    // leave the caller at once; it reaps this first process
    // SAFETY: the shim is single-threaded here
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(_) => return 1,
    }
    // SAFETY: fd 3 is the socketpair end passed by spawn_shim
    let mut first = unsafe { UnixStream::from_raw_fd(3) };
    let opts: EngineOptions = match serde_json::from_str(options_json) {
        Ok(o) => o,
        Err(e) => {
            let _ =
                Frame::control(0, &ShimReply::Error { message: format!("bad shim options: {e}") }).write_to(&mut first);
            return 1;
        }
    };
    if let Some(p) = &opts.crash_point {
        let _ = moat_core::crash::arm(p);
    }
    serve(opts, id, first)
}

/// Runs the shim of container `id`, reporting on `first` (the starting
/// client). Returns the exit code.
pub fn serve(opts: EngineOptions, id: &str, first: UnixStream) -> i32 {
    serve_with(opts, id, first, None)
}

/// [`serve`] with the backend `factory` makes (tests' stubs), or the
/// isolation type's when `None`.
pub fn serve_with(opts: EngineOptions, id: &str, mut first: UnixStream, factory: Option<&BackendFactory>) -> i32 {
    let dir = moat_store::Layout::new(&opts.root).container(id);
    let lock = match FileLock::try_exclusive(&dir.join(moat_store::ctr_files::SHIM_LOCK)) {
        Ok(Some(l)) => l,
        _ => {
            let _ = Frame::control(0, &ShimReply::Error { message: "container is already running".into() })
                .write_to(&mut first);
            return 1;
        }
    };
    let mut shim = match Shim::new(opts, id, first, factory) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("shim for {id} failed: {e}");
            return 1;
        }
    };
    // starting (image config, spec, the VM's launch) leaves freed heap behind
    // that this long-lived process would otherwise keep for its whole life
    // SAFETY: malloc_trim only returns free memory of glibc's heap to the kernel
    unsafe { libc::malloc_trim(0) };
    shim.run();
    drop(lock);
    0
}

fn reply_error(first: &mut UnixStream, e: &EngineError) {
    let _ = Frame::control(0, &ShimReply::Error { message: e.to_string() }).write_to(first);
}

impl Shim {
    fn new(
        opts: EngineOptions,
        id: &str,
        mut first: UnixStream,
        factory: Option<&BackendFactory>,
    ) -> Result<Self, EngineError> {
        let setup = (|| {
            let layout = moat_store::Layout::new(&opts.root);
            let dir = layout.container(id);
            let plan = ShimPlan::read(&dir)?;
            let c = plan.container()?;
            let host: Box<dyn ShimHost> = Box::new(StoreHost::open(&opts)?);
            let log = LogWriter::open(&dir.join(format!("{id}-json.log")), c.config.log.clone())
                .map_err(EngineError::io("open log"))?;
            let state_file = StateFile::open(&dir).map_err(EngineError::io("allocate the state file"))?;
            let listener = moat_proto::sock::bind(&dir, moat_store::ctr_files::SHIM_SOCK)
                .map_err(EngineError::io("bind shim socket"))?;
            listener.set_nonblocking(true).map_err(EngineError::io("shim socket"))?;
            // the switches' bridges and rules (gone after a host reboot) are recreated on use
            for sw in &plan.switches {
                moat_net::link::ensure_switch(sw)?;
            }
            let ctx = ShimContext { options: opts.clone(), layout, container: c, plan: plan.backend };
            Ok((host, ctx, log, state_file, listener))
        })();
        let (host, ctx, log, state_file, listener) = match setup {
            Ok(v) => v,
            Err(e) => {
                reply_error(&mut first, &e);
                return Err(e);
            }
        };
        // the host ports first: a VM backend may start the main process while it boots
        let backend = ports::bind(ctx.config()).and_then(|ports| {
            let plan = &ctx.plan;
            let backend: Box<dyn Backend> = match factory {
                Some(factory) => factory(plan)?,
                None => moat_sandbox::open(plan, &opts.vm_options())?,
            };
            Ok((backend, ports))
        });
        let mut host = host;
        let (backend, ports) = match backend {
            Ok(b) => b,
            Err(e) => {
                let mut st = ctx.container.state.clone();
                st.exit_code = 125;
                st.error = e.to_string();
                let _ = host.record_state(ctx.id(), &st);
                reply_error(&mut first, &e);
                return Err(e);
            }
        };
        let mut shim = Shim {
            host,
            ctx,
            backend,
            log,
            state_file,
            listener,
            clients: HashMap::new(),
            next_client: 1,
            sessions: HashMap::new(),
            next_session: 1,
            queries: HashMap::new(),
            next_token: 1,
            proxies: Vec::new(),
            main_running: false,
            stop_deadline: None,
            restart_at: None,
            restart_for: None,
            health: None,
            done: false,
            starter: None,
        };
        first.set_nonblocking(true).map_err(EngineError::io("shim socket"))?;
        let cid = shim.add_client(first, Role::Attach { stdin: false, stdin_once: false });
        if shim.ctx.config().build_step {
            shim.starter = Some(cid);
        }
        let started = shim.start_main().map(|pid| (pid, ports));
        match started {
            Ok((pid, ports)) => {
                if let (Some(target), Ok(exe)) =
                    (shim.ctx.config().networks.first().map(|e| e.ip), shim.ctx.options.shim_exe())
                {
                    let (procs, bound) = ports::spawn(&exe, target, ports);
                    shim.proxies = procs;
                    shim.ctx.container.state.ports = bound;
                    shim.save_state();
                }
                shim.reply(cid, ShimReply::Started { pid });
                Ok(shim)
            }
            Err(e) => {
                let (message, code) = match &e {
                    EngineError::Runtime(moat_runtime::RuntimeError::Start { message, code })
                    | EngineError::Start { message, code } => (message.clone(), *code),
                    e => (e.to_string(), 125),
                };
                let st = &mut shim.ctx.container.state;
                st.exit_code = code;
                st.error = message.clone();
                st.pid = 0;
                if st.status != Status::Created {
                    st.status = Status::Exited;
                    st.finished_at = Some(Utc::now());
                }
                shim.save_state();
                let ctx = &shim.ctx;
                shim.backend.teardown(&ctx.plan);
                if let Some(c) = shim.clients.get_mut(&cid) {
                    let _ = c.stream.set_nonblocking(false);
                    let _ = Frame::control(0, &ShimReply::Error { message }).write_to(&mut c.stream);
                }
                Err(e)
            }
        }
    }

    fn add_client(&mut self, stream: UnixStream, role: Role) -> u64 {
        let id = self.next_client;
        self.next_client += 1;
        self.clients
            .insert(id, Client { stream, dec: Decoder::default(), out: Vec::new(), sent: 0, role, closing: false });
        id
    }

    fn queue(&mut self, client: u64, f: Frame) {
        if let Some(c) = self.clients.get_mut(&client) {
            f.encode_into(&mut c.out);
        }
    }

    fn reply(&mut self, id: u64, m: ShimReply) {
        self.queue(id, Frame::control(0, &m));
    }

    fn finish_oneshot(&mut self, id: u64, m: ShimReply) {
        self.reply(id, m);
        if let Some(c) = self.clients.get_mut(&id) {
            c.closing = true;
        }
    }

    fn event(&mut self, action: &str, attrs: &[(&str, String)]) {
        let mut e = Event::container(action, &self.ctx.container);
        for (k, v) in attrs {
            e = e.attr(k, v);
        }
        self.host.record_event(e);
    }

    /// Records the state: first in the state file (always possible, its
    /// space is allocated), then in the store (which a full disk can refuse).
    fn save_state(&mut self) {
        let st = self.ctx.container.state.clone();
        if let Err(e) = self.state_file.write(&st) {
            tracing::error!("cannot write the state file: {e}");
        }
        if let Err(e) = self.host.record_state(self.ctx.id(), &st) {
            tracing::error!("cannot record state: {e}");
        }
    }

    /// Creates the container's main process.
    fn start_main(&mut self) -> Result<u32, EngineError> {
        moat_core::crash::point("shim.starting");
        let pid = self.backend.start_main(&self.ctx.plan)?;
        self.main_running = true;
        let st = &mut self.ctx.container.state;
        st.status = Status::Running;
        st.pid = pid;
        st.shim_pid = std::process::id();
        st.started_at = Some(Utc::now());
        st.manually_stopped = false;
        st.error.clear();
        st.oom_killed = false;
        // a running container has no exit code yet (Docker resets it too)
        st.exit_code = 0;
        self.health = None;
        st.health = None;
        if let Some(cfg) = self.ctx.container.config.healthcheck.clone() {
            if let Some(cmd) = cfg.command() {
                let now = Instant::now();
                let first = if cfg.start_period() > Duration::ZERO {
                    cfg.start_interval().min(cfg.interval())
                } else {
                    cfg.interval()
                };
                self.health = Some(HealthRun { cfg, cmd, started: now, next_at: now + first, check: None });
                st.health = Some(crate::health::Health::default());
            }
        }
        self.save_state();
        self.event("start", &[]);
        moat_core::crash::point("shim.started");
        Ok(pid)
    }

    /// Starts a due health check, or ends one that ran past its timeout.
    fn health_tick(&mut self, now: Instant) {
        let Some(h) = self.health.as_mut() else { return };
        if !self.main_running || h.deadline() > now {
            return;
        }
        if let Some(c) = h.check.take() {
            self.backend.signal(c.sid, libc::SIGKILL);
            let msg = format!("Health check exceeded timeout ({:?})", h.cfg.timeout());
            self.health_result(c.began_utc, -1, msg.into_bytes());
            return;
        }
        if self.ctx.container.state.status == Status::Paused {
            h.next_at = now + h.interval(now);
            return;
        }
        let sid = self.next_session;
        self.next_session += 1;
        let spec = ExecSpec { args: h.cmd.clone(), ..Default::default() };
        let began_utc = Utc::now();
        h.check = Some(Check { sid, began: now, began_utc, out: Vec::new() });
        if let Err(e) = self.backend.exec(sid, &spec) {
            if let Some(h) = self.health.as_mut() {
                h.check = None;
            }
            self.health_result(began_utc, -1, e.to_string().into_bytes());
        }
    }

    /// Records a check's result and schedules the next.
    fn health_result(&mut self, start: chrono::DateTime<Utc>, code: i32, out: Vec<u8>) {
        let now = Instant::now();
        let Some(h) = self.health.as_mut() else { return };
        h.check = None;
        h.next_at = now + h.interval(now);
        let in_start = h.in_start_period(now);
        let retries = h.cfg.retries();
        let mut out = out;
        out.truncate(crate::health::OUTPUT_LIMIT);
        let r = crate::health::HealthResult {
            start,
            end: Utc::now(),
            exit_code: code,
            output: String::from_utf8_lossy(&out).into_owned(),
        };
        let health = self.ctx.container.state.health.get_or_insert_with(Default::default);
        let changed = health.record(r, retries, in_start);
        self.save_state();
        if let Some(s) = changed {
            self.event(&format!("health_status: {s}"), &[]);
        }
    }

    /// The session of the health check in flight.
    fn health_sid(&self) -> Option<u32> {
        self.health.as_ref().and_then(|h| h.check.as_ref()).map(|c| c.sid)
    }

    /// Whether the client(s) of session `sid` have too much queued.
    fn full(&self, sid: u32) -> bool {
        if sid == MAIN {
            self.clients
                .values()
                .any(|c| matches!(c.role, Role::Attach { .. } | Role::Follower) && c.out.len() > CLIENT_BUF_LIMIT)
        } else {
            self.sessions
                .get(&sid)
                .and_then(|s| self.clients.get(&s.client))
                .is_some_and(|c| c.out.len() > CLIENT_BUF_LIMIT)
        }
    }

    /// A build step whose builder went away (interrupted, killed) is
    /// killed: a build leaves nothing running behind it.
    fn starter_gone(&mut self) {
        let Some(s) = self.starter else { return };
        if self.clients.contains_key(&s) {
            return;
        }
        self.starter = None;
        if self.main_running {
            tracing::info!("the build that started this step went away: killing it");
            self.ctx.container.state.manually_stopped = true;
            if self.ctx.container.state.status == Status::Paused {
                let _ = self.backend.query(Query::Unpause, 0);
                self.ctx.container.state.status = Status::Running;
            }
            self.save_state();
            self.backend.signal(MAIN, libc::SIGKILL);
        }
    }

    fn run(&mut self) {
        let mut buf = vec![0u8; READ_CHUNK];
        while !self.done {
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let mut toks: Vec<Tok> = Vec::new();
            fds.push(libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            toks.push(Tok::Listener);
            for (id, c) in &self.clients {
                let mut ev = 0;
                if !c.closing {
                    ev |= libc::POLLIN;
                }
                if !c.out.is_empty() {
                    ev |= libc::POLLOUT;
                }
                fds.push(libc::pollfd { fd: c.stream.as_raw_fd(), events: ev, revents: 0 });
                toks.push(Tok::Client(*id));
            }
            let mut want: Vec<(RawFd, libc::c_short, Source)> = Vec::new();
            self.backend.poll_fds(&|sid| self.full(sid), &mut want);
            for (fd, ev, src) in want {
                fds.push(libc::pollfd { fd, events: ev, revents: 0 });
                toks.push(Tok::Backend(src));
            }
            let now = Instant::now();
            let health = self.health.as_ref().filter(|_| self.main_running).map(HealthRun::deadline);
            let deadline =
                [self.stop_deadline, self.restart_at, self.backend.deadline(), health].into_iter().flatten().min();
            let timeout =
                deadline.map(|d| d.saturating_duration_since(now).as_millis().min(60_000) as i32).unwrap_or(-1);
            // SAFETY: fds is a valid array of pollfd
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                if nix::Error::last() == nix::Error::EINTR {
                    continue;
                }
                tracing::error!("poll: {}", nix::Error::last());
                break;
            }
            self.timers();
            for (pfd, tok) in fds.iter().zip(toks) {
                if pfd.revents == 0 {
                    continue;
                }
                match tok {
                    Tok::Listener => self.accept(),
                    Tok::Client(id) => self.client_io(id, pfd.revents, &mut buf),
                    Tok::Backend(src) => {
                        let events = self.backend.ready(src, pfd.revents, &mut buf);
                        self.backend_events(events);
                    }
                }
            }
            let full: Vec<u32> =
                std::iter::once(MAIN).chain(self.sessions.keys().copied()).filter(|s| self.full(*s)).collect();
            self.backend.after_round(&|sid| full.contains(&sid));
            self.clients.retain(|_, c| !(c.closing && c.out.is_empty()));
            self.starter_gone();
        }
        self.finish();
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let events = self.backend.timers(now);
        self.backend_events(events);
        self.health_tick(now);
        if self.stop_deadline.is_some_and(|d| d <= now) {
            self.stop_deadline = None;
            self.backend.signal(MAIN, libc::SIGKILL);
            self.backend.killed_main(now);
        }
        if self.restart_at.is_some_and(|d| d <= now) {
            self.restart_at = None;
            if let Err(e) = self.start_main() {
                tracing::error!("restart failed: {e}");
                self.ctx.container.state.status = Status::Exited;
                self.ctx.container.state.error = e.to_string();
                self.save_state();
                self.done = true;
            }
        }
    }

    fn backend_events(&mut self, events: Vec<BackendEvent>) {
        for e in events {
            let hs = self.health_sid();
            match e {
                BackendEvent::Output { sid, data, .. } if Some(sid) == hs => {
                    if let Some(c) = self.health.as_mut().and_then(|h| h.check.as_mut()) {
                        let room = crate::health::OUTPUT_LIMIT.saturating_sub(c.out.len());
                        c.out.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                BackendEvent::Started { sid, .. } if Some(sid) == hs => {}
                BackendEvent::ExecFailed { sid, message, code: _ } if Some(sid) == hs => {
                    let start = self.health.as_ref().and_then(|h| h.check.as_ref()).map(|c| c.began_utc);
                    self.health_result(start.unwrap_or_else(Utc::now), -1, message.into_bytes());
                }
                BackendEvent::Exited { sid, code, .. } if Some(sid) == hs => {
                    let c = self.health.as_mut().and_then(|h| h.check.take());
                    if let Some(c) = c {
                        self.health_result(c.began_utc, code, c.out);
                    }
                }
                BackendEvent::Output { sid, err, data } => self.deliver(sid, err, &data),
                BackendEvent::Started { sid, pid } => self.exec_started(sid, pid),
                BackendEvent::ExecFailed { sid, message, .. } => {
                    let code = EXEC_START_FAILED;
                    if let Some(s) = self.sessions.remove(&sid) {
                        let cid = s.starting.unwrap_or(s.client);
                        execs::update(&self.ctx.layout, self.ctx.id(), &s.exec_id, |r| {
                            r.started = true;
                            r.exit_code = Some(code);
                        });
                        self.reply(cid, ShimReply::Error { message });
                        self.finish_oneshot(cid, ShimReply::Exit { code, oom_killed: false });
                    }
                }
                BackendEvent::Exited { sid, code, oom } => {
                    if sid == MAIN {
                        self.main_exited(code, oom);
                    } else if let Some(s) = self.sessions.remove(&sid) {
                        execs::update(&self.ctx.layout, self.ctx.id(), &s.exec_id, |r| {
                            r.running = false;
                            r.exit_code = Some(code);
                        });
                        self.event("exec_die", &[("execID", s.exec_id.clone()), ("exitCode", code.to_string())]);
                        let cid = s.starting.unwrap_or(s.client);
                        self.finish_oneshot(cid, ShimReply::Exit { code, oom_killed: false });
                    }
                }
                BackendEvent::Reply { token, reply } => {
                    if let Some((cid, kind)) = self.queries.remove(&token) {
                        if matches!(reply, ShimReply::Ok { .. }) {
                            self.paused(kind);
                        }
                        self.finish_oneshot(cid, reply);
                    }
                }
                BackendEvent::Died { code, reason } => {
                    if self.main_running {
                        self.ctx.container.state.error = reason;
                        self.ctx.container.state.manually_stopped = true; // a dead VM is not restarted
                        self.restart_for = None;
                        self.main_exited(code, false);
                    }
                    self.done = true;
                }
            }
        }
    }

    /// Records a completed pause or unpause.
    fn paused(&mut self, kind: QueryKind) {
        let status = match kind {
            QueryKind::Pause => Status::Paused,
            QueryKind::Unpause => Status::Running,
            QueryKind::Other => return,
        };
        self.ctx.container.state.status = status;
        self.save_state();
        self.event(if kind == QueryKind::Pause { "pause" } else { "unpause" }, &[]);
    }

    fn exec_started(&mut self, sid: u32, pid: u32) {
        let Some(s) = self.sessions.get_mut(&sid) else { return };
        let starting = s.starting.take();
        let (detach, exec_id, client) = (s.detach, s.exec_id.clone(), s.client);
        execs::update(&self.ctx.layout, self.ctx.id(), &exec_id, |r| {
            r.started = true;
            r.running = true;
            r.pid = pid;
        });
        self.event("exec_start", &[("execID", exec_id)]);
        let Some(cid) = starting else { return };
        if detach {
            self.finish_oneshot(cid, ShimReply::Started { pid });
        } else {
            self.reply(cid, ShimReply::Started { pid });
            if let Some(c) = self.clients.get_mut(&client) {
                c.role = Role::Exec(sid);
            }
        }
    }

    fn accept(&mut self) {
        while let Ok((s, _)) = self.listener.accept() {
            let _ = s.set_nonblocking(true);
            self.add_client(s, Role::Oneshot);
        }
    }

    fn client_io(&mut self, id: u64, revents: libc::c_short, buf: &mut [u8]) {
        let Some(c) = self.clients.get_mut(&id) else { return };
        if revents & libc::POLLOUT != 0 && !c.out.is_empty() {
            match c.stream.write(&c.out[c.sent..]) {
                Ok(n) => {
                    // the written head is dropped when all is out or it is
                    // large (not after each write: that moves the rest each time)
                    c.sent += n;
                    if c.sent == c.out.len() {
                        c.out.clear();
                        c.sent = 0;
                    } else if c.sent >= 1 << 20 {
                        c.out.drain(..c.sent);
                        c.sent = 0;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.clients.remove(&id);
                    return;
                }
            }
        }
        let Some(c) = self.clients.get_mut(&id) else { return };
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && !c.closing {
            match c.stream.read(buf) {
                // a client that goes away does not close stdin: only an
                // explicit StdinEof does, so a detach leaves the process running
                Ok(0) => {
                    self.clients.remove(&id);
                    return;
                }
                Ok(n) => c.dec.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.clients.remove(&id);
                    return;
                }
            }
            loop {
                let Some(c) = self.clients.get_mut(&id) else { return };
                match c.dec.next_frame() {
                    Ok(Some(f)) => self.handle_frame(id, f),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("client sent garbage: {e}");
                        self.clients.remove(&id);
                        return;
                    }
                }
            }
        }
    }

    fn query(&mut self, id: u64, q: Query) {
        let kind = match q {
            Query::Pause => QueryKind::Pause,
            Query::Unpause => QueryKind::Unpause,
            _ => QueryKind::Other,
        };
        let token = self.next_token;
        self.next_token += 1;
        match self.backend.query(q, token) {
            Some(reply) => {
                if matches!(reply, ShimReply::Ok { .. }) {
                    self.paused(kind);
                }
                self.finish_oneshot(id, reply);
            }
            None => {
                self.queries.insert(token, (id, kind));
            }
        }
    }

    fn handle_frame(&mut self, id: u64, f: Frame) {
        let Some(role) = self.clients.get(&id).map(|c| c.role) else { return };
        let target = match role {
            Role::Exec(sid) => sid,
            _ => MAIN,
        };
        match f.kind {
            Kind::Stdin => {
                let allowed = match role {
                    Role::Attach { stdin, .. } => stdin,
                    Role::Exec(_) => true,
                    _ => false,
                };
                if allowed {
                    self.backend.stdin(target, f.data);
                }
                return;
            }
            Kind::StdinEof => {
                if matches!(role, Role::Attach { stdin: true, stdin_once: true } | Role::Exec(_)) {
                    self.backend.close_stdin(target);
                }
                return;
            }
            Kind::Stdout | Kind::Stderr => return,
            Kind::Control => {}
        }
        let req: ShimRequest = match f.msg() {
            Ok(m) => m,
            Err(e) => {
                self.finish_oneshot(id, ShimReply::Error { message: e.to_string() });
                return;
            }
        };
        match req {
            ShimRequest::Attach { stdin, stdin_once } => {
                let open = self.ctx.config().open_stdin;
                if let Some(c) = self.clients.get_mut(&id) {
                    c.role = Role::Attach { stdin: stdin && open, stdin_once };
                }
            }
            ShimRequest::Resize(ws) => self.backend.resize(target, ws),
            ShimRequest::ResizeExec { exec_id, size } => {
                let sid = self.sessions.iter().find(|(_, s)| s.exec_id == exec_id).map(|(sid, _)| *sid);
                match sid {
                    Some(sid) => {
                        self.backend.resize(sid, size);
                        self.finish_oneshot(id, ShimReply::Ok { warnings: Vec::new() });
                    }
                    None => {
                        let message = format!("exec {exec_id} is not running");
                        self.finish_oneshot(id, ShimReply::Error { message });
                    }
                }
            }
            ShimRequest::Signal { signal } => {
                let m = if nix::sys::signal::Signal::try_from(signal).is_err() {
                    ShimReply::Error { message: format!("invalid signal {signal}") }
                } else if (target != MAIN || self.main_running) && self.backend.signal(target, signal) {
                    ShimReply::Ok { warnings: Vec::new() }
                } else {
                    ShimReply::Error { message: "container is not running".into() }
                };
                if role == Role::Oneshot {
                    self.finish_oneshot(id, m);
                }
            }
            ShimRequest::Wait => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.role = Role::Waiter;
                }
            }
            ShimRequest::Stop { signal, timeout_secs } | ShimRequest::Restart { signal, timeout_secs } => {
                let restart = matches!(req, ShimRequest::Restart { .. });
                if restart {
                    self.restart_for = Some(id);
                } else {
                    self.ctx.container.state.manually_stopped = true;
                    self.save_state();
                    if let Some(c) = self.clients.get_mut(&id) {
                        c.role = Role::Waiter;
                    }
                }
                if !self.main_running {
                    // waiting to restart by its policy
                    self.restart_at = None;
                    if restart {
                        self.restart_for = None;
                        match self.start_main() {
                            Ok(_) => self.finish_oneshot(id, ShimReply::Ok { warnings: Vec::new() }),
                            Err(e) => self.finish_oneshot(id, ShimReply::Error { message: e.to_string() }),
                        }
                    } else {
                        self.ctx.container.state.status = Status::Exited;
                        self.save_state();
                        self.done = true;
                    }
                    return;
                }
                if self.ctx.container.state.status == Status::Paused {
                    // a frozen process cannot act on its signal
                    let _ = self.backend.query(Query::Unpause, 0);
                    self.ctx.container.state.status = Status::Running;
                }
                self.backend.signal(MAIN, signal);
                self.stop_deadline = Some(Instant::now() + Duration::from_secs(timeout_secs as u64));
            }
            ShimRequest::Follow => {
                let offset = std::fs::metadata(self.ctx.plan.dir.join(format!("{}-json.log", self.ctx.id())))
                    .map(|m| m.len())
                    .unwrap_or(0);
                self.reply(id, ShimReply::LogOffset { offset });
                if let Some(c) = self.clients.get_mut(&id) {
                    c.role = Role::Follower;
                }
            }
            ShimRequest::Top => self.query(id, Query::Top),
            ShimRequest::Stats => self.query(id, Query::Stats),
            ShimRequest::Pause => self.query(id, Query::Pause),
            ShimRequest::Unpause => self.query(id, Query::Unpause),
            ShimRequest::Update(l) => self.query(id, Query::Update(l)),
            ShimRequest::SetRestart { policy } => match policy.parse::<crate::config::RestartPolicy>() {
                Ok(p) => {
                    self.ctx.container.config.restart = p;
                    self.finish_oneshot(id, ShimReply::Ok { warnings: Vec::new() });
                }
                Err(message) => self.finish_oneshot(id, ShimReply::Error { message }),
            },
            ShimRequest::Exec(x) => self.exec(id, x),
        }
    }

    fn exec(&mut self, id: u64, x: ExecSpec) {
        if !self.main_running {
            let message = format!("container {} is not running", self.ctx.container.name());
            self.finish_oneshot(id, ShimReply::Error { message });
            return;
        }
        let sid = self.next_session;
        self.next_session += 1;
        let client = if x.detach { 0 } else { id };
        self.sessions.insert(sid, ExecSession { client, exec_id: x.id.clone(), starting: Some(id), detach: x.detach });
        if let Some(c) = self.clients.get_mut(&id) {
            c.role = Role::Exec(sid);
        }
        match self.backend.exec(sid, &x) {
            Ok(ExecStart::Now(pid)) => self.exec_started(sid, pid),
            Ok(ExecStart::Pending) => {}
            Err(e) => {
                self.sessions.remove(&sid);
                // Docker's daemon: an exec that cannot start ends with 126
                let code = EXEC_START_FAILED;
                execs::update(&self.ctx.layout, self.ctx.id(), &x.id, |r| {
                    r.started = true;
                    r.exit_code = Some(code);
                });
                let message = match e {
                    moat_sandbox::SandboxError::Runtime(moat_runtime::RuntimeError::Start { message, .. }) => message,
                    e => e.to_string(),
                };
                self.reply(id, ShimReply::Error { message });
                self.finish_oneshot(id, ShimReply::Exit { code, oom_killed: false });
            }
        }
    }

    fn deliver(&mut self, sid: u32, err: bool, data: &[u8]) {
        let kind = if err { Kind::Stderr } else { Kind::Stdout };
        if sid == MAIN {
            let lines = self.log.write(err, data).unwrap_or_default();
            let ids: Vec<(u64, Role)> = self.clients.iter().map(|(i, c)| (*i, c.role)).collect();
            for (cid, role) in ids {
                match role {
                    Role::Attach { .. } => self.queue(cid, Frame { kind, session: 0, data: data.to_vec() }),
                    Role::Follower if !lines.is_empty() => {
                        self.queue(cid, Frame { kind: Kind::Stdout, session: 0, data: lines.clone() })
                    }
                    _ => {}
                }
            }
        } else if let Some(s) = self.sessions.get(&sid) {
            let cid = s.client;
            self.queue(cid, Frame { kind, session: 0, data: data.to_vec() });
        }
    }

    /// The main process ended with `code`: record it, tell clients, and
    /// restart it or finish.
    fn main_exited(&mut self, code: i32, oom: bool) {
        let tail = self.log.flush().unwrap_or_default();
        if !tail.is_empty() {
            let ids: Vec<u64> =
                self.clients.iter().filter(|(_, c)| c.role == Role::Follower).map(|(i, _)| *i).collect();
            for cid in ids {
                self.queue(cid, Frame { kind: Kind::Stdout, session: 0, data: tail.clone() });
            }
        }
        self.main_running = false;
        self.stop_deadline = None;
        self.health = None;
        // exec sessions die with the pid namespace; the backend reports them
        let st = &mut self.ctx.container.state;
        st.exit_code = code;
        st.oom_killed = oom;
        st.finished_at = Some(Utc::now());
        st.pid = 0;
        let manual = self.restart_for.is_some();
        let backoff = if manual {
            None
        } else {
            next_restart(self.ctx.container.config.restart, code, st.restart_count, st.manually_stopped)
        };
        let policy = backoff.is_some();
        if oom {
            self.event("oom", &[]);
        }
        let mut die = vec![("exitCode", code.to_string())];
        if !self.ctx.container.state.error.is_empty() {
            die.push(("error", self.ctx.container.state.error.clone()));
        }
        moat_core::crash::point("shim.exited");
        self.event("die", &die);
        let ids: Vec<(u64, Role)> = self.clients.iter().map(|(i, c)| (*i, c.role)).collect();
        for (cid, role) in ids {
            if matches!(role, Role::Attach { .. } | Role::Waiter | Role::Follower) {
                self.reply(cid, ShimReply::Exit { code, oom_killed: oom });
                if policy || manual {
                    if let Some(c) = self.clients.get_mut(&cid) {
                        c.closing = true;
                    }
                }
            }
        }
        if let Some(cid) = self.restart_for.take() {
            self.event("restart", &[]);
            match self.start_main() {
                Ok(_) => self.finish_oneshot(cid, ShimReply::Ok { warnings: Vec::new() }),
                Err(e) => {
                    self.finish_oneshot(cid, ShimReply::Error { message: e.to_string() });
                    self.ctx.container.state.status = Status::Exited;
                    self.ctx.container.state.error = e.to_string();
                    self.save_state();
                    self.done = true;
                }
            }
        } else if policy {
            let st = &mut self.ctx.container.state;
            st.restart_count += 1;
            st.status = Status::Restarting;
            let backoff = Duration::from_millis(100u64.saturating_mul(1 << st.restart_count.min(10)))
                .min(Duration::from_secs(60));
            self.restart_at = Some(Instant::now() + backoff);
            self.save_state();
        } else {
            self.ctx.container.state.status = Status::Exited;
            self.save_state();
            self.done = true;
        }
    }

    /// Cleans up after the last exit: backend, proxies, auto-remove, then flushes clients.
    fn finish(&mut self) {
        // no new clients: they fall back to the recorded state
        let _ = std::fs::remove_file(self.ctx.plan.dir.join(moat_store::ctr_files::SHIM_SOCK));
        for (_, s) in self.sessions.drain() {
            execs::update(&self.ctx.layout, &self.ctx.container.row.id, &s.exec_id, |r| {
                r.running = false;
                r.exit_code = r.exit_code.or(Some(137));
            });
        }
        for mut p in self.proxies.drain(..) {
            let _ = p.kill();
            let _ = p.wait();
        }
        self.ctx.container.state.ports.clear();
        self.save_state();
        self.backend.teardown(&self.ctx.plan);
        if self.ctx.container.config.auto_remove {
            let id = self.ctx.id().to_string();
            let switches: Vec<String> =
                self.ctx.container.config.networks.iter().map(|e| e.switch_id.clone()).collect();
            match self.host.auto_remove(&id, &switches) {
                Ok(()) => self.event("destroy", &[]),
                Err(e) => tracing::error!("auto-remove failed: {e}"),
            }
        }
        // give clients up to 5 s to take their last frames
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in self.clients.values_mut() {
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
            ));
            let _ = c.stream.write_all(&c.out[c.sent..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_decisions_and_backoff() {
        let of = RestartPolicy::OnFailure { max: 2 };
        assert_eq!(next_restart(of, 3, 0, false), Some(Duration::from_millis(200)));
        assert_eq!(next_restart(of, 3, 1, false), Some(Duration::from_millis(400)));
        assert_eq!(next_restart(of, 3, 2, false), None, "at most 2 retries");
        assert_eq!(next_restart(of, 0, 0, false), None, "success is not a failure");
        assert_eq!(next_restart(RestartPolicy::Always, 0, 50, false), Some(Duration::from_secs(60)), "capped");
        assert_eq!(next_restart(RestartPolicy::Always, 1, 0, true), None, "a manual stop stands");
        assert_eq!(next_restart(RestartPolicy::No, 1, 0, false), None);
        assert!(next_restart(RestartPolicy::OnFailure { max: 0 }, 1, 1000, false).is_some(), "0 = unlimited");
    }
}
