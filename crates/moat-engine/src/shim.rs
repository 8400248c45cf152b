//! The per-container shim: `moat shim ID`.
//!
//! One single-threaded process per running container, started by
//! `client::spawn_shim`. It creates the container's cgroup and init process,
//! owns its stdio (pipes or a pty), writes the json-file log, records state
//! transitions in the metadata store, applies the restart policy, and serves
//! clients on `containers/<id>/shim.sock` (attach, exec, wait, logs -f, top,
//! stats, signals, stop) with a poll loop. Holding `shim.lock` for its whole
//! life tells everyone else it is alive; the container's init gets
//! `PDEATHSIG=SIGKILL`, so a killed shim never leaves an unlisted container.
//! Being single-threaded is what makes forking container processes from it
//! safe.

use crate::config::{RestartPolicy, Status};
use crate::logs::LogWriter;
use crate::{Container, Engine, EngineError};
use chrono::Utc;
use moat_proto::{Decoder, ExecSpec, Frame, Kind, Msg, WinSize};
use moat_runtime::cgroup::Cgroup;
use moat_runtime::spawn::{self, Child, Security};
use moat_runtime::spec::{Process, Spec};
use moat_store::FileLock;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Output buffered for one client before the sources feeding it pause.
const CLIENT_BUF_LIMIT: usize = 4 << 20;
const READ_CHUNK: usize = 64 << 10;

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
    out: Vec<u8>,
    role: Role,
    /// Close once `out` is flushed.
    closing: bool,
}

/// A process whose stdio the shim relays: the main process or an exec
/// session, local (process isolation) or inside the VM (`child` is None and
/// its stdio travels over the agent channel).
struct Proc {
    child: Option<Child>,
    stdin: spawn::StdinQueue,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    /// pty master (same fd as `out`) when there is a terminal.
    tty: bool,
}

struct Session {
    proc: Proc,
    client: u64,
    exit: Option<i32>,
    /// VM exec: the client waiting for `Started`, and until when it waits.
    pending: Option<(u64, Instant)>,
}

/// How long a query (top, stats) forwarded to the guest agent may take.
const AGENT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest agent may take to start an exec process.
const AGENT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
enum Tok {
    Listener,
    Client(u64),
    Out(u32, bool),
    Stdin(u32),
    Pidfd(u32),
    Vm,
    Qemu,
    Virtiofsd,
    Qmp,
}

/// Session number of the main process.
const MAIN: u32 = 0;

struct Shim {
    engine: Engine,
    id: String,
    dir: PathBuf,
    c: Container,
    spec: Spec,
    cgroup: Option<Cgroup>,
    vm: Option<crate::vm::VmLink>,
    /// One-shot requests forwarded to the agent: session → (client, deadline).
    requests: HashMap<u32, (u64, Instant)>,
    /// Stream bytes received from the agent and not yet credited back.
    owed: HashMap<u32, u64>,
    hard_deadline: Option<Instant>,
    /// virtiofsd exited: unless QEMU exits by then, that ends the VM.
    fs_gone_at: Option<Instant>,
    /// Port proxies (killed when the container stops).
    proxies: Vec<std::process::Child>,
    log: LogWriter,
    state_file: crate::statefile::StateFile,
    listener: UnixListener,
    own_pidns: OwnedFd,
    main: Option<Proc>,
    sessions: HashMap<u32, Session>,
    next_session: u32,
    clients: HashMap<u64, Client>,
    next_client: u64,
    stop_deadline: Option<Instant>,
    restart_at: Option<Instant>,
    oom_base: bool,
    done: bool,
}

fn set_winsize(fd: RawFd, ws: WinSize) {
    let w = libc::winsize { ws_row: ws.rows, ws_col: ws.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: ioctl on our pty master
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &w) };
}

impl Proc {
    fn remote(tty: bool) -> Self {
        Proc { child: None, stdin: Default::default(), out: None, err: None, tty }
    }
}

/// A local process and its stdio ends.
fn local_proc(mut ends: spawn::Ends, mut child: Child, tty: bool) -> Proc {
    ends.take_pty(&mut child);
    Proc { child: Some(child), stdin: spawn::StdinQueue::new(ends.stdin), out: ends.out, err: ends.err, tty }
}

fn exit_code(pid: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    match waitpid(pid, Some(WaitPidFlag::__WALL)) {
        Ok(WaitStatus::Exited(_, c)) => c,
        Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
        _ => 255,
    }
}

/// Entry point of `moat shim ID`; returns the process exit code.
pub fn main(root: &Path, id: &str) -> i32 {
    // leave the caller at once; it reaps this first process
    // SAFETY: the shim is single-threaded here
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return 0,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(_) => return 1,
    }
    tracing::debug!("shim: forked");
    // SAFETY: fd 3 is the socketpair end passed by spawn_shim
    let first = unsafe { UnixStream::from_raw_fd(3) };
    let dir = moat_store::Layout::new(root).container(id);
    let lock = match FileLock::try_exclusive(&dir.join("shim.lock")) {
        Ok(Some(l)) => l,
        _ => {
            let mut f = first;
            let _ = Frame::control(0, &Msg::Error { message: "container is already running".into() }).write_to(&mut f);
            return 1;
        }
    };
    let mut shim = match Shim::new(root, id, first) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("shim for {id} failed: {e}");
            return 1;
        }
    };
    shim.run();
    drop(lock);
    0
}

impl Shim {
    fn new(root: &Path, id: &str, first: UnixStream) -> Result<Self, EngineError> {
        let mut first = first;
        let fail = |first: &mut UnixStream, e: &EngineError| {
            let _ = Frame::control(0, &Msg::Error { message: e.to_string() }).write_to(first);
        };
        let setup = (|| -> Result<_, EngineError> {
            let mut engine = Engine::open(root)?;
            let c = engine.get(id)?;
            let image = engine.images().store().image(&c.row.image_id)?.ok_or_else(|| {
                EngineError::Invalid(format!("image {} of this container was removed", c.row.image_id))
            })?;
            tracing::debug!("shim: store open");
            let spec = crate::spec::build(engine.layout(), id, &c.config, &image)?;
            let dir = engine.layout().container(id);
            let log = LogWriter::open(&dir.join(format!("{id}-json.log")), c.config.log.clone())
                .map_err(EngineError::io("open log"))?;
            let state_file =
                crate::statefile::StateFile::open(&dir).map_err(EngineError::io("allocate the state file"))?;
            let listener = moat_proto::sock::bind(&dir, "shim.sock").map_err(EngineError::io("bind shim socket"))?;
            listener.set_nonblocking(true).map_err(EngineError::io("shim socket"))?;
            let own_pidns = spawn::own_pidns()?;
            Ok((engine, c, spec, dir, log, state_file, listener, own_pidns))
        })();
        let (mut engine, c, spec, dir, log, state_file, listener, own_pidns) = match setup {
            Ok(v) => v,
            Err(e) => {
                fail(&mut first, &e);
                return Err(e);
            }
        };
        // the switches' bridges and rules (gone after a host reboot) are recreated on use
        for ep in &c.config.networks {
            let sw = engine
                .find_switch(&ep.switch_id)
                .and_then(|sw| moat_net::link::ensure_switch(&sw.config).map_err(|e| EngineError::Shim(e.to_string())));
            if let Err(e) = sw {
                fail(&mut first, &e);
                return Err(e);
            }
        }
        let hyperv = c.config.isolation() == moat_core::Isolation::Hyperv;
        // every container has a host cgroup: its processes, or its VM's QEMU
        // and virtiofsd (a reader that finds the shim dead destroys it)
        let limits = if hyperv {
            moat_runtime::cgroup::Limits {
                devices: moat_runtime::devices::DevicePolicy::AllowAll,
                ..Default::default()
            }
        } else {
            crate::spec::limits(&c.config)
        };
        let cgroup = match Cgroup::create(id, &limits) {
            Ok(cg) => cg,
            Err(e) => {
                let e = EngineError::from(e);
                fail(&mut first, &e);
                return Err(e);
            }
        };
        for w in &cgroup.warnings {
            tracing::warn!("{w}");
        }
        let _ = std::fs::write(dir.join("cgroup.json"), serde_json::to_vec(&cgroup).unwrap_or_default());
        let vm = if hyperv {
            let booted = crate::vm::prepare_root(&spec)
                .and_then(|root| crate::vm::VmLink::start(engine.layout(), id, &c.config, &root, &cgroup));
            match booted {
                Ok(link) => {
                    let (mem, vcpus) = crate::vm::sizing(&c.config);
                    let info = serde_json::json!({
                        "Accelerator": link.accel, "Kernel": link.kernel, "MemoryMiB": mem, "Vcpus": vcpus,
                        "QemuPid": link.vm.qemu.id(), "VirtiofsdPid": link.vm.virtiofsd.id(),
                    });
                    let _ = std::fs::write(dir.join("vm.json"), info.to_string());
                    Some(link)
                }
                Err(e) => {
                    let _ = cgroup.destroy();
                    let mut st = c.state.clone();
                    st.exit_code = 125;
                    st.error = e.to_string();
                    let _ = engine.save_state(id, &st);
                    fail(&mut first, &e);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let cgroup = Some(cgroup);
        let mut shim = Shim {
            engine,
            id: id.to_string(),
            dir,
            c,
            spec,
            cgroup,
            vm,
            requests: HashMap::new(),
            owed: HashMap::new(),
            hard_deadline: None,
            fs_gone_at: None,
            proxies: Vec::new(),
            log,
            state_file,
            listener,
            own_pidns,
            main: None,
            sessions: HashMap::new(),
            next_session: 1,
            clients: HashMap::new(),
            next_client: 1,
            stop_deadline: None,
            restart_at: None,
            oom_base: false,
            done: false,
        };
        first.set_nonblocking(true).map_err(EngineError::io("shim socket"))?;
        let cid = shim.add_client(first, Role::Attach { stdin: false, stdin_once: false });
        tracing::debug!("shim: cgroup/vm ready");
        let started = shim.bind_ports().and_then(|ports| shim.start_main().map(|pid| (pid, ports)));
        tracing::debug!("shim: main started");
        match started {
            Ok((pid, ports)) => {
                shim.spawn_proxies(ports);
                shim.queue(cid, Frame::control(0, &Msg::Started { pid }));
                Ok(shim)
            }
            Err(e) => {
                let (message, code) = match &e {
                    EngineError::Runtime(moat_runtime::RuntimeError::Start { message, code })
                    | EngineError::Start { message, code } => (message.clone(), *code),
                    e => (e.to_string(), 125),
                };
                let mut st = shim.c.state.clone();
                st.exit_code = code;
                st.error = message.clone();
                st.pid = 0;
                if st.status != Status::Created {
                    st.status = Status::Exited;
                    st.finished_at = Some(Utc::now());
                }
                let _ = shim.engine.save_state(&shim.id, &st);
                if let Some(cg) = &shim.cgroup {
                    let _ = cg.destroy();
                }
                if let Some(vm) = shim.vm.as_mut() {
                    vm.shutdown();
                }
                for n in 0..shim.c.config.networks.len() {
                    moat_net::link::del_link(&moat_net::if_name('t', &shim.id, n));
                }
                if let Some(c) = shim.clients.get_mut(&cid) {
                    let _ = c.stream.set_nonblocking(false);
                    let _ = Frame::control(0, &Msg::Error { message }).write_to(&mut c.stream);
                }
                Err(e)
            }
        }
    }

    /// Binds every published port now, so a port in use fails the start cleanly.
    fn bind_ports(&mut self) -> Result<Vec<(moat_net::PortMap, OwnedFd)>, EngineError> {
        let cfg = &self.c.config;
        let mut maps = cfg.publish.clone();
        if cfg.publish_all {
            for (p, proto) in &cfg.exposed {
                maps.push(moat_net::PortMap {
                    host_ip: std::net::Ipv4Addr::UNSPECIFIED,
                    host_port: 0,
                    ctr_port: *p,
                    proto: proto.clone(),
                });
            }
        }
        let mut out = Vec::new();
        for mut m in maps {
            let addr = std::net::SocketAddr::from((m.host_ip, m.host_port));
            let taken = |e: std::io::Error| EngineError::Conflict(format!("cannot publish {addr}/{}: {e}", m.proto));
            let (fd, port): (OwnedFd, u16) = if m.proto == "udp" {
                let s = std::net::UdpSocket::bind(addr).map_err(taken)?;
                let p = s.local_addr().map(|a| a.port()).unwrap_or(0);
                (s.into(), p)
            } else {
                let s = std::net::TcpListener::bind(addr).map_err(taken)?;
                let p = s.local_addr().map(|a| a.port()).unwrap_or(0);
                (s.into(), p)
            };
            m.host_port = port;
            out.push((m, fd));
        }
        Ok(out)
    }

    /// One `moat port-proxy` per published port, forwarding to the container.
    fn spawn_proxies(&mut self, ports: Vec<(moat_net::PortMap, OwnedFd)>) {
        let Some(target) = self.c.config.networks.first().map(|e| e.ip) else { return };
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(_) => return,
        };
        let mut recorded = Vec::new();
        for (m, fd) in ports {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["port-proxy", "--proto", &m.proto, "--target", &format!("{target}:{}", m.ctr_port)]);
            cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
            let raw = fd.as_raw_fd();
            // SAFETY: dup2 and prctl only, between fork and exec
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(move || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::dup2(raw, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(child) => {
                    self.proxies.push(child);
                    recorded.push(m);
                }
                Err(e) => tracing::error!("port proxy: {e}"),
            }
        }
        self.c.state.ports = recorded;
        self.save_state();
    }

    fn add_client(&mut self, stream: UnixStream, role: Role) -> u64 {
        let id = self.next_client;
        self.next_client += 1;
        self.clients.insert(id, Client { stream, dec: Decoder::default(), out: Vec::new(), role, closing: false });
        id
    }

    fn queue(&mut self, client: u64, f: Frame) {
        if let Some(c) = self.clients.get_mut(&client) {
            f.encode_into(&mut c.out);
        }
    }

    /// Records the state: first in the state file (always possible, its
    /// space is allocated), then in the store (which a full disk can refuse).
    fn save_state(&mut self) {
        let st = self.c.state.clone();
        if let Err(e) = self.state_file.write(&st) {
            tracing::error!("cannot write the state file: {e}");
        }
        if let Err(e) = self.engine.save_state(&self.id, &st) {
            tracing::error!("cannot record state: {e}");
        }
    }

    /// Creates the container's main process.
    fn start_main(&mut self) -> Result<u32, EngineError> {
        let pid = if let Some(vm) = self.vm.as_mut() {
            let create = moat_runtime::guest::Create {
                spec: crate::vm::guest_spec(&self.spec),
                limits: crate::spec::limits(&self.c.config),
                cgroup: self.id[..12].to_string(),
                stdin: self.c.config.open_stdin,
            };
            let json = serde_json::to_string(&create).map_err(|e| EngineError::Invalid(e.to_string()))?;
            vm.send(0, &Msg::Create { spec: json });
            let t = Duration::from_secs(60);
            match vm.wait_for(0, t, |m| matches!(m, Msg::Started { .. } | Msg::Error { .. }))? {
                Msg::Started { pid } => {
                    self.main = Some(Proc::remote(self.c.config.tty));
                    pid
                }
                Msg::Error { message } => {
                    let code = match vm.wait_for(0, t, |m| matches!(m, Msg::Exit { .. })) {
                        Ok(Msg::Exit { code, .. }) => code,
                        _ => 125,
                    };
                    return Err(EngineError::Start { message, code });
                }
                _ => return Err(EngineError::Shim("unexpected agent reply".into())),
            }
        } else {
            let (keep, io, give) = spawn::stdio(self.c.config.tty, self.c.config.open_stdin, None)?;
            self.oom_base = self.cgroup.as_ref().is_some_and(|c| c.oom_killed());
            let id = self.id.clone();
            let eps = self.c.config.networks.clone();
            let plumb = move |pid: u32| -> Result<(), moat_runtime::RuntimeError> {
                for (n, e) in eps.iter().enumerate() {
                    moat_net::link::add_veth(
                        &moat_net::if_name('v', &id, n),
                        &moat_net::if_name('p', &id, n),
                        pid,
                        &e.bridge,
                    )
                    .map_err(|e| moat_runtime::RuntimeError::Invalid(e.to_string()))?;
                }
                Ok(())
            };
            let child = spawn::create(&self.spec, self.cgroup.as_ref(), io, &plumb)?;
            drop(give);
            let pid = child.pid.as_raw() as u32;
            self.main = Some(local_proc(keep, child, self.c.config.tty));
            pid
        };
        let st = &mut self.c.state;
        st.status = Status::Running;
        st.pid = pid;
        st.shim_pid = std::process::id();
        st.started_at = Some(Utc::now());
        st.manually_stopped = false;
        st.error.clear();
        st.oom_killed = false;
        self.save_state();
        Ok(pid)
    }

    fn run(&mut self) {
        let mut buf = vec![0u8; READ_CHUNK];
        while !self.done {
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let mut toks: Vec<Tok> = Vec::new();
            let mut add = |fd: RawFd, ev: libc::c_short, t: Tok, fds: &mut Vec<libc::pollfd>| {
                fds.push(libc::pollfd { fd, events: ev, revents: 0 });
                toks.push(t);
            };
            add(self.listener.as_raw_fd(), libc::POLLIN, Tok::Listener, &mut fds);
            let attach_full = self
                .clients
                .values()
                .any(|c| matches!(c.role, Role::Attach { .. } | Role::Follower) && c.out.len() > CLIENT_BUF_LIMIT);
            for (id, c) in &self.clients {
                let mut ev = 0;
                if !c.closing {
                    ev |= libc::POLLIN;
                }
                if !c.out.is_empty() {
                    ev |= libc::POLLOUT;
                }
                add(c.stream.as_raw_fd(), ev, Tok::Client(*id), &mut fds);
            }
            let mut procs: Vec<(u32, &Proc, bool)> = Vec::new();
            if let Some(m) = &self.main {
                procs.push((MAIN, m, attach_full));
            }
            for (sid, s) in &self.sessions {
                let full = self.clients.get(&s.client).is_some_and(|c| c.out.len() > CLIENT_BUF_LIMIT);
                if s.exit.is_none() || s.proc.out.is_some() || s.proc.err.is_some() {
                    procs.push((*sid, &s.proc, full));
                }
            }
            for (sid, p, full) in procs {
                if !full {
                    if let Some(fd) = &p.out {
                        add(fd.as_raw_fd(), libc::POLLIN, Tok::Out(sid, false), &mut fds);
                    }
                    if let Some(fd) = &p.err {
                        add(fd.as_raw_fd(), libc::POLLIN, Tok::Out(sid, true), &mut fds);
                    }
                }
                if let Some(fd) = p.stdin.pending() {
                    add(fd, libc::POLLOUT, Tok::Stdin(sid), &mut fds);
                }
                if let Some(c) = &p.child {
                    add(c.pidfd.as_raw_fd(), libc::POLLIN, Tok::Pidfd(sid), &mut fds);
                }
            }
            if let Some(vm) = &self.vm {
                let ev = libc::POLLIN | if vm.out.is_empty() { 0 } else { libc::POLLOUT };
                add(vm.vm.channel.as_raw_fd(), ev, Tok::Vm, &mut fds);
                add(vm.qemu_pidfd.as_raw_fd(), libc::POLLIN, Tok::Qemu, &mut fds);
                add(vm.vm.qmp.as_raw_fd(), libc::POLLIN, Tok::Qmp, &mut fds);
                if vm.failure.is_none() && self.fs_gone_at.is_none() {
                    add(vm.virtiofsd_pidfd.as_raw_fd(), libc::POLLIN, Tok::Virtiofsd, &mut fds);
                }
            }
            let now = Instant::now();
            let answers = self
                .requests
                .values()
                .map(|(_, d)| *d)
                .chain(self.sessions.values().filter_map(|s| s.pending.map(|(_, d)| d)));
            let deadline = [self.stop_deadline, self.restart_at, self.hard_deadline, self.fs_gone_at]
                .into_iter()
                .flatten()
                .chain(answers)
                .min();
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
                let r = pfd.revents;
                match tok {
                    Tok::Listener => self.accept(),
                    Tok::Client(id) => self.client_io(id, r, &mut buf),
                    Tok::Out(sid, err) => self.read_output(sid, err, &mut buf),
                    Tok::Stdin(sid) => self.write_stdin(sid),
                    Tok::Pidfd(sid) => self.reap(sid),
                    Tok::Vm => self.vm_io(r, &mut buf),
                    Tok::Qemu => self.vm_died(),
                    Tok::Qmp => {
                        if let Some(vm) = self.vm.as_mut() {
                            vm.qmp_io();
                        }
                    }
                    // virtiofsd also exits when QEMU goes away: QEMU's own end,
                    // if it comes within a second, is the real cause
                    Tok::Virtiofsd => self.fs_gone_at = Some(Instant::now() + Duration::from_secs(1)),
                }
            }
            self.grant_credit();
            self.clients.retain(|_, c| !(c.closing && c.out.is_empty()));
        }
        self.finish();
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if self.fs_gone_at.is_some_and(|d| d <= now) {
            self.fs_gone_at = None;
            if let Some(vm) = self.vm.as_mut() {
                vm.fs_died();
            }
        }
        // a guest that does not answer: clients get a clear error, not a hang
        let late: Vec<u32> = self.requests.iter().filter(|(_, (_, d))| *d <= now).map(|(s, _)| *s).collect();
        for sid in late {
            if let Some((cid, _)) = self.requests.remove(&sid) {
                let secs = AGENT_QUERY_TIMEOUT.as_secs();
                self.finish_oneshot(
                    cid,
                    Msg::Error {
                        message: format!(
                            "the utility VM did not answer within {secs}s: the guest is wedged or overloaded"
                        ),
                    },
                );
            }
        }
        let late: Vec<u32> =
            self.sessions.iter().filter(|(_, s)| s.pending.is_some_and(|(_, d)| d <= now)).map(|(s, _)| *s).collect();
        for sid in late {
            if let Some(s) = self.sessions.remove(&sid) {
                if let Some(vm) = self.vm.as_mut() {
                    vm.send(sid, &Msg::Signal { signal: libc::SIGKILL });
                }
                let cid = s.pending.map(|(c, _)| c).unwrap_or(s.client);
                let secs = AGENT_EXEC_TIMEOUT.as_secs();
                self.reply(cid, Msg::Error { message: format!("the utility VM did not start the process within {secs}s: the guest is wedged or overloaded") });
                self.finish_oneshot(cid, Msg::Exit { code: 126, oom_killed: false });
            }
        }
        if self.stop_deadline.is_some_and(|d| d <= now) {
            self.stop_deadline = None;
            self.signal(MAIN, libc::SIGKILL);
            if self.vm.is_some() {
                // an agent that does not answer gets its VM killed
                self.hard_deadline = Some(now + Duration::from_secs(10));
            }
        }
        if self.hard_deadline.is_some_and(|d| d <= now) {
            self.hard_deadline = None;
            if let Some(vm) = self.vm.as_mut() {
                let _ = vm.vm.qemu.kill();
            }
        }
        if self.restart_at.is_some_and(|d| d <= now) {
            self.restart_at = None;
            if let Err(e) = self.start_main() {
                tracing::error!("restart failed: {e}");
                self.c.state.status = Status::Exited;
                self.c.state.error = e.to_string();
                self.save_state();
                self.done = true;
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
            match c.stream.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.drop_client(id);
                    return;
                }
            }
        }
        let Some(c) = self.clients.get_mut(&id) else { return };
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && !c.closing {
            match c.stream.read(buf) {
                Ok(0) => {
                    self.drop_client(id);
                    return;
                }
                Ok(n) => c.dec.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.drop_client(id);
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
                        self.drop_client(id);
                        return;
                    }
                }
            }
        }
    }

    /// A client went away. Its stdin is not closed: only an explicit
    /// `StdinEof` does that, so a detach (Ctrl-P Ctrl-Q) leaves the process running.
    fn drop_client(&mut self, id: u64) {
        self.clients.remove(&id);
    }

    fn proc_mut(&mut self, sid: u32) -> Option<&mut Proc> {
        if sid == MAIN {
            self.main.as_mut()
        } else {
            self.sessions.get_mut(&sid).map(|s| &mut s.proc)
        }
    }

    fn close_stdin(&mut self, sid: u32) {
        if self.proc_mut(sid).is_some_and(|p| p.child.is_none()) {
            if let Some(vm) = self.vm.as_mut() {
                vm.send_frame(Frame { kind: Kind::StdinEof, session: sid, data: Vec::new() });
            }
            return;
        }
        if let Some(p) = self.proc_mut(sid) {
            let tty = p.tty;
            p.stdin.close(tty);
        }
    }

    fn reply(&mut self, id: u64, m: Msg) {
        self.queue(id, Frame::control(0, &m));
    }

    fn finish_oneshot(&mut self, id: u64, m: Msg) {
        self.reply(id, m);
        if let Some(c) = self.clients.get_mut(&id) {
            c.closing = true;
        }
    }

    fn handle_frame(&mut self, id: u64, f: Frame) {
        let role = match self.clients.get(&id) {
            Some(c) => c.role,
            None => return,
        };
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
                    let remote = self.proc_mut(target).is_some_and(|p| p.child.is_none());
                    if remote {
                        if let Some(vm) = self.vm.as_mut() {
                            vm.send_frame(Frame { kind: Kind::Stdin, session: target, data: f.data });
                        }
                    } else if let Some(p) = self.proc_mut(target) {
                        p.stdin.push(&f.data);
                    }
                }
                return;
            }
            Kind::StdinEof => {
                match role {
                    Role::Attach { stdin: true, stdin_once: true } | Role::Exec(_) => self.close_stdin(target),
                    _ => {}
                }
                return;
            }
            Kind::Stdout | Kind::Stderr => return,
            Kind::Control => {}
        }
        let msg = match f.msg() {
            Ok(m) => m,
            Err(e) => {
                self.finish_oneshot(id, Msg::Error { message: e.to_string() });
                return;
            }
        };
        match msg {
            Msg::Attach { stdin, stdin_once } => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.role = Role::Attach { stdin: stdin && self.c.config.open_stdin, stdin_once };
                }
            }
            Msg::Resize(ws) => {
                if self.proc_mut(target).is_some_and(|p| p.child.is_none()) {
                    if let Some(vm) = self.vm.as_mut() {
                        vm.send(target, &Msg::Resize(ws));
                    }
                } else if let Some(p) = self.proc_mut(target) {
                    if p.tty {
                        if let Some(fd) = &p.out {
                            set_winsize(fd.as_raw_fd(), ws);
                        }
                    }
                }
            }
            Msg::Signal { signal } => {
                let m = if nix::sys::signal::Signal::try_from(signal).is_err() {
                    Msg::Error { message: format!("invalid signal {signal}") }
                } else if self.signal(target, signal) {
                    Msg::Ok
                } else {
                    Msg::Error { message: "container is not running".into() }
                };
                if role == Role::Oneshot {
                    self.finish_oneshot(id, m);
                }
            }
            Msg::Wait => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.role = Role::Waiter;
                }
            }
            Msg::Stop { signal, timeout_secs } => {
                self.c.state.manually_stopped = true;
                self.save_state();
                if let Some(c) = self.clients.get_mut(&id) {
                    c.role = Role::Waiter;
                }
                if self.main.is_none() {
                    // waiting to restart: stand down
                    self.restart_at = None;
                    self.c.state.status = Status::Exited;
                    self.save_state();
                    self.done = true;
                    return;
                }
                self.signal(MAIN, signal);
                self.stop_deadline = Some(Instant::now() + Duration::from_secs(timeout_secs as u64));
            }
            Msg::Follow => {
                let offset =
                    std::fs::metadata(self.dir.join(format!("{}-json.log", self.id))).map(|m| m.len()).unwrap_or(0);
                self.reply(id, Msg::LogOffset { offset });
                if let Some(c) = self.clients.get_mut(&id) {
                    c.role = Role::Follower;
                }
            }
            Msg::Top | Msg::Stats if self.vm.is_some() => {
                let sid = self.next_session;
                self.next_session += 1;
                self.requests.insert(sid, (id, Instant::now() + AGENT_QUERY_TIMEOUT));
                if let Some(vm) = self.vm.as_mut() {
                    vm.send(sid, &msg);
                }
            }
            Msg::Top => {
                let pids = self.cgroup.as_ref().map(|c| c.pids()).unwrap_or_default();
                let rows = moat_runtime::procfs::list(&pids, true);
                self.finish_oneshot(id, Msg::Procs { rows });
            }
            Msg::Stats => {
                let (mem_usage, mem_limit, cpu_ns, pids) = self.cgroup.as_ref().map(|c| c.stats()).unwrap_or_default();
                self.finish_oneshot(id, Msg::Usage(moat_proto::Stats { mem_usage, mem_limit, cpu_ns, pids }));
            }
            Msg::Exec(spec) => self.exec(id, spec),
            other => self.finish_oneshot(id, Msg::Error { message: format!("unexpected request {other:?}") }),
        }
    }

    fn exec(&mut self, id: u64, x: ExecSpec) {
        let Some(main) = &self.main else {
            self.finish_oneshot(id, Msg::Error { message: format!("container {} is not running", self.c.name()) });
            return;
        };
        let sid = self.next_session;
        self.next_session += 1;
        let client = if x.detach { 0 } else { id };
        if main.child.is_none() {
            // inside the VM: the agent runs it; its Started/Exit come back on `sid`
            let pending = Some((id, Instant::now() + AGENT_EXEC_TIMEOUT));
            self.sessions.insert(sid, Session { proc: Proc::remote(x.tty), client, exit: None, pending });
            if let Some(c) = self.clients.get_mut(&id) {
                c.role = Role::Exec(sid);
            }
            if let Some(vm) = self.vm.as_mut() {
                vm.send(sid, &Msg::Exec(x));
            }
            return;
        }
        let cfg = &self.c.config;
        let mut env = cfg.env.clone();
        for e in &x.env {
            let k = e.split('=').next().unwrap_or("");
            env.retain(|v| v.split('=').next() != Some(k));
            env.push(e.clone());
        }
        let process = Process {
            args: x.args.clone(),
            env,
            cwd: x.workdir.clone().unwrap_or_else(|| self.spec.process.cwd.clone()),
            user: x.user.clone().unwrap_or_else(|| cfg.user.clone()),
            tty: x.tty,
            rlimits: self.spec.process.rlimits.clone(),
        };
        let mut sec = Security::of(&self.spec);
        if x.privileged {
            sec.capabilities = moat_runtime::caps::compute(&[], &[], true).unwrap_or_default();
            sec.seccomp = moat_runtime::spec::Seccomp::Unconfined;
        }
        let result = (|| -> Result<Proc, EngineError> {
            let init = main.child.as_ref().ok_or_else(|| EngineError::Shim("no main process".into()))?;
            let (keep, io, give) = spawn::stdio(x.tty, x.stdin, x.size.map(|w| (w.rows, w.cols)))?;
            let child = spawn::exec(&init.pidfd, &self.own_pidns, &process, &sec, self.cgroup.as_ref(), io)?;
            drop(give);
            Ok(local_proc(keep, child, x.tty))
        })();
        match result {
            Ok(p) => {
                let pid = p.child.as_ref().map(|c| c.pid.as_raw() as u32).unwrap_or(0);
                self.sessions.insert(sid, Session { proc: p, client, exit: None, pending: None });
                self.exec_started(id, sid, pid, x.detach);
            }
            Err(e) => {
                let (message, code) = match &e {
                    EngineError::Runtime(moat_runtime::RuntimeError::Start { message, code }) => {
                        (message.clone(), *code)
                    }
                    e => (e.to_string(), 126),
                };
                self.reply(id, Msg::Error { message });
                self.finish_oneshot(id, Msg::Exit { code, oom_killed: false });
            }
        }
    }

    fn exec_started(&mut self, id: u64, sid: u32, pid: u32, detach: bool) {
        if detach {
            self.finish_oneshot(id, Msg::Started { pid });
        } else {
            self.reply(id, Msg::Started { pid });
            if let Some(c) = self.clients.get_mut(&id) {
                c.role = Role::Exec(sid);
            }
        }
    }

    /// Delivers `signal` to session `sid`'s process; false if there is none.
    fn signal(&mut self, sid: u32, signal: i32) -> bool {
        let remote = match self.proc_mut(sid) {
            None => return false,
            Some(p) => match &p.child {
                Some(c) => {
                    if let Ok(s) = nix::sys::signal::Signal::try_from(signal) {
                        let _ = nix::sys::signal::kill(c.pid, s);
                    }
                    return true;
                }
                None => true,
            },
        };
        if remote {
            if let Some(vm) = self.vm.as_mut() {
                vm.send(sid, &Msg::Signal { signal });
            }
        }
        true
    }

    /// Reads the agent channel and dispatches its frames.
    fn vm_io(&mut self, revents: libc::c_short, buf: &mut [u8]) {
        let Some(vm) = self.vm.as_mut() else { return };
        if revents & libc::POLLOUT != 0 && !vm.out.is_empty() {
            match vm.vm.channel.write(&vm.out) {
                Ok(n) => {
                    vm.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {}
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP) == 0 {
            return;
        }
        match vm.vm.channel.read(buf) {
            Ok(0) => {
                // the agent is gone: QEMU's exit will tell us why
                return;
            }
            Ok(n) => vm.dec.push(&buf[..n]),
            Err(_) => return,
        }
        loop {
            let Some(vm) = self.vm.as_mut() else { return };
            let f = match vm.dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("agent sent garbage: {e}");
                    let _ = vm.vm.qemu.kill();
                    return;
                }
            };
            self.vm_frame(f);
        }
    }

    fn vm_frame(&mut self, f: Frame) {
        let sid = f.session;
        match f.kind {
            Kind::Stdout | Kind::Stderr => {
                *self.owed.entry(sid).or_default() += f.data.len() as u64;
                self.deliver(sid, f.kind == Kind::Stderr, &f.data);
                return;
            }
            Kind::Control => {}
            _ => return,
        }
        let Ok(m) = f.msg() else { return };
        if let Some((cid, _)) = self.requests.remove(&sid) {
            self.finish_oneshot(cid, m);
            return;
        }
        match m {
            Msg::Started { pid } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if let Some((id, _)) = s.pending.take() {
                        let detach = s.client == 0;
                        self.exec_started(id, sid, pid, detach);
                    }
                }
            }
            Msg::Error { message } => {
                if let Some(s) = self.sessions.get(&sid) {
                    let cid = s.pending.map(|(c, _)| c).unwrap_or(s.client);
                    self.reply(cid, Msg::Error { message });
                }
            }
            Msg::Exit { code, oom_killed } => {
                self.owed.remove(&sid);
                if sid == MAIN {
                    self.main_exited(code, oom_killed);
                } else if let Some(s) = self.sessions.remove(&sid) {
                    let cid = s.pending.map(|(c, _)| c).unwrap_or(s.client);
                    self.finish_oneshot(cid, Msg::Exit { code, oom_killed: false });
                }
            }
            _ => {}
        }
    }

    /// Gives the agent back the stream credit for output that reached
    /// clients whose queues are not full (flow control per session).
    fn grant_credit(&mut self) {
        if self.vm.is_none() || self.owed.is_empty() {
            return;
        }
        let attach_full = self
            .clients
            .values()
            .any(|c| matches!(c.role, Role::Attach { .. } | Role::Follower) && c.out.len() > CLIENT_BUF_LIMIT);
        let mut grants = Vec::new();
        for (sid, owed) in self.owed.iter_mut() {
            let full = if *sid == MAIN {
                attach_full
            } else {
                self.sessions
                    .get(sid)
                    .and_then(|s| self.clients.get(&s.client))
                    .is_some_and(|c| c.out.len() > CLIENT_BUF_LIMIT)
            };
            if !full && *owed > 0 {
                grants.push((*sid, *owed));
                *owed = 0;
            }
        }
        if let Some(vm) = self.vm.as_mut() {
            for (sid, bytes) in grants {
                vm.send(sid, &Msg::Credit { bytes });
            }
        }
    }

    /// QEMU exited: if the container was still running, that is its end.
    fn vm_died(&mut self) {
        let Some(vm) = self.vm.as_mut() else { return };
        let (code, reason) = vm.death();
        self.vm = None;
        if self.main.is_some() {
            self.c.state.error = reason;
            self.c.state.manually_stopped = true; // a dead VM is not restarted
            self.main_exited(code, false);
        }
        self.done = true;
    }

    fn read_output(&mut self, sid: u32, err: bool, buf: &mut [u8]) {
        let Some(p) = self.proc_mut(sid) else { return };
        let slot = if err { &mut p.err } else { &mut p.out };
        let Some(fd) = slot.as_ref() else { return };
        // SAFETY: reading into our buffer from our fd
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n < 0 && nix::Error::last() == nix::Error::EAGAIN {
            return;
        }
        if n <= 0 {
            // EOF (or EIO on a pty whose last holder closed it)
            *slot = None;
            if p.tty {
                p.stdin.fd = None;
            }
            return;
        }
        let data = buf[..n as usize].to_vec();
        self.deliver(sid, err, &data);
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

    fn write_stdin(&mut self, sid: u32) {
        if let Some(p) = self.proc_mut(sid) {
            p.stdin.flush();
        }
    }

    /// Reads what is left in a finished process's pipes.
    fn drain(&mut self, sid: u32) {
        let mut buf = vec![0u8; READ_CHUNK];
        for err in [false, true] {
            for _ in 0..1024 {
                let has =
                    self.proc_mut(sid).map(|p| if err { p.err.is_some() } else { p.out.is_some() }).unwrap_or(false);
                if !has {
                    break;
                }
                self.read_output(sid, err, &mut buf);
                let fd_gone =
                    self.proc_mut(sid).map(|p| if err { p.err.is_none() } else { p.out.is_none() }).unwrap_or(true);
                if fd_gone {
                    break;
                }
                // stop at EAGAIN: nothing more is buffered
                let probe = self
                    .proc_mut(sid)
                    .and_then(|p| if err { p.err.as_ref() } else { p.out.as_ref() })
                    .map(|f| f.as_raw_fd());
                if let Some(fd) = probe {
                    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                    // SAFETY: polling one fd without waiting
                    if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
                        break;
                    }
                }
            }
        }
    }

    fn reap(&mut self, sid: u32) {
        if sid != MAIN {
            let Some(s) = self.sessions.get(&sid) else { return };
            let Some(pid) = s.proc.child.as_ref().map(|c| c.pid) else { return };
            if s.exit.is_some() {
                return;
            }
            let code = exit_code(pid);
            self.drain(sid);
            if let Some(s) = self.sessions.remove(&sid) {
                let cid = s.client;
                self.finish_oneshot(cid, Msg::Exit { code, oom_killed: false });
            }
            return;
        }
        let Some(pid) = self.main.as_ref().and_then(|m| m.child.as_ref()).map(|c| c.pid) else { return };
        let code = exit_code(pid);
        self.drain(MAIN);
        let oom = self.cgroup.as_ref().is_some_and(|c| c.oom_killed()) && !self.oom_base;
        self.main_exited(code, oom);
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
        self.main = None;
        self.stop_deadline = None;
        self.hard_deadline = None;
        // exec sessions die with the pid namespace; their pidfds (or the agent) report it
        let st = &mut self.c.state;
        st.exit_code = code;
        st.oom_killed = oom;
        st.finished_at = Some(Utc::now());
        st.pid = 0;
        let restart = !st.manually_stopped
            && match self.c.config.restart {
                RestartPolicy::No => false,
                RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
                RestartPolicy::OnFailure { max } => code != 0 && (max == 0 || st.restart_count < max),
            };
        let ids: Vec<(u64, Role)> = self.clients.iter().map(|(i, c)| (*i, c.role)).collect();
        for (cid, role) in ids {
            if matches!(role, Role::Attach { .. } | Role::Waiter | Role::Follower) {
                self.reply(cid, Msg::Exit { code, oom_killed: oom });
                if restart {
                    if let Some(c) = self.clients.get_mut(&cid) {
                        c.closing = true;
                    }
                }
            }
        }
        if restart {
            let st = &mut self.c.state;
            st.restart_count += 1;
            st.status = Status::Restarting;
            let backoff = Duration::from_millis(100u64.saturating_mul(1 << st.restart_count.min(10)))
                .min(Duration::from_secs(60));
            self.restart_at = Some(Instant::now() + backoff);
            self.save_state();
        } else {
            self.c.state.status = Status::Exited;
            self.save_state();
            self.done = true;
        }
    }

    /// Cleans up after the last exit: cgroup, auto-remove, then flushes clients.
    fn finish(&mut self) {
        tracing::debug!("shim: finishing");
        // no new clients: they fall back to the recorded state
        let _ = std::fs::remove_file(self.dir.join("shim.sock"));
        for (_, s) in self.sessions.drain() {
            if let Some(c) = &s.proc.child {
                let _ = nix::sys::signal::kill(c.pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(c.pid, None);
            }
        }
        for mut p in self.proxies.drain(..) {
            let _ = p.kill();
            let _ = p.wait();
        }
        self.c.state.ports.clear();
        self.save_state();
        if let Some(vm) = self.vm.as_mut() {
            vm.shutdown();
        }
        for n in 0..self.c.config.networks.len() {
            moat_net::link::del_link(&moat_net::if_name('t', &self.id, n));
        }
        if self.vm.take().is_some() || self.c.config.isolation() == moat_core::Isolation::Hyperv {
            // the VM's root (and its bind mounts) live in this process's mount namespace
            let _ = nix::mount::umount2(&self.spec.rootfs_target, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(Err(e)) = self.cgroup.as_ref().map(|c| c.destroy()) {
            tracing::warn!("{e}");
        }
        let _ = std::fs::remove_file(self.dir.join("cgroup.json"));
        let _ = std::fs::remove_file(self.dir.join("shim.sock"));
        if self.c.config.auto_remove {
            if let Err(e) = self.engine.remove_files_and_row(&self.id.clone()) {
                tracing::error!("auto-remove failed: {e}");
            }
        }
        // give clients up to 5 s to take their last frames
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in self.clients.values_mut() {
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
            ));
            let _ = c.stream.write_all(&c.out);
        }
    }
}
