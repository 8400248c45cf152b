//! Running a container's processes and relaying their stdio: the main
//! process (session 0) and exec sessions, each with its pipes or terminal,
//! a stdin queue and a pidfd. Both the shim (process isolation, on the
//! host) and the guest agent (VM isolation) are this relay plus their own
//! transport: the shim serves unix-socket clients, the agent a virtio-serial
//! channel with per-session credit. The caller owns the poll loop; this
//! type only says which descriptors to watch and turns readiness into
//! [`Event`]s.

use crate::cgroup::Cgroup;
use crate::spawn::{self, Child, Security};
use crate::spec::{Process, Seccomp, Spec};
use crate::RuntimeError;
use moat_spec::{ExecSpec, ProcRow, Stats, WinSize};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Session number of the main process.
pub const MAIN: u32 = 0;
/// Largest read from a process's output at once.
pub const READ_CHUNK: usize = 64 << 10;

/// What a watched descriptor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Session's stdout (`false`) or stderr (`true`).
    Output(u32, bool),
    /// Session's stdin is writable.
    Stdin(u32),
    /// Session's process exited (its pidfd).
    Exit(u32),
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Output of a session.
    Output {
        /// Session.
        sid: u32,
        /// From stderr.
        err: bool,
        /// Bytes.
        data: Vec<u8>,
    },
    /// A session's process exited (its remaining output came first).
    Exited {
        /// Session.
        sid: u32,
        /// Exit code (128+N for death by signal N).
        code: i32,
        /// The main process was OOM-killed.
        oom: bool,
    },
}

struct Session {
    child: Child,
    stdin: spawn::StdinQueue,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    tty: bool,
}

impl Session {
    fn new(mut ends: spawn::Ends, mut child: Child, tty: bool) -> Self {
        ends.take_pty(&mut child);
        Self { child, stdin: spawn::StdinQueue::new(ends.stdin), out: ends.out, err: ends.err, tty }
    }
}

/// Sets a terminal's size.
pub fn set_winsize(fd: RawFd, ws: WinSize) {
    let w = libc::winsize { ws_row: ws.rows, ws_col: ws.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: ioctl on a pty master we own
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &w) };
}

/// The exit code of a reaped child: its status, or 128 + the signal.
pub fn wait_code(pid: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    match waitpid(pid, Some(WaitPidFlag::__WALL)) {
        Ok(WaitStatus::Exited(_, c)) => c,
        Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
        _ => 255,
    }
}

/// The process an exec runs: the container's environment with the exec's
/// entries replacing same-named ones, the container's user, working
/// directory and rlimits unless the exec gives its own.
pub fn exec_process(spec: &Spec, x: &ExecSpec) -> Process {
    Process {
        args: x.args.clone(),
        env: merge_env(&spec.process.env, &x.env),
        cwd: x.workdir.clone().unwrap_or_else(|| spec.process.cwd.clone()),
        user: x.user.clone().unwrap_or_else(|| spec.process.user.clone()),
        tty: x.tty,
        rlimits: spec.process.rlimits.clone(),
        console_size: x.size.map(|w| (w.rows, w.cols)),
        group_add: spec.process.group_add.clone(),
        oom_score_adj: spec.process.oom_score_adj,
    }
}

/// The name of an environment entry: `KEY` of `KEY=VALUE` (or of a bare
/// `KEY`, Docker's way to unset one).
pub fn env_key(e: &str) -> &str {
    e.split('=').next().unwrap_or("")
}

/// Whether `env` names `key` (set, or unset with a bare `KEY`).
pub fn env_names(env: &[String], key: &str) -> bool {
    env.iter().any(|e| env_key(e) == key)
}

/// `base` with each `KEY=VALUE` of `over` replacing the same key (or appended).
pub fn merge_env(base: &[String], over: &[String]) -> Vec<String> {
    let mut env = base.to_vec();
    for e in over {
        let k = env_key(e);
        env.retain(|v| env_key(v) != k);
        // a bare KEY unsets it (Docker's rule)
        if e.contains('=') {
            env.push(e.clone());
        }
    }
    env
}

/// The container's processes on this kernel.
pub struct Relay {
    cgroup: Option<Cgroup>,
    spec: Option<Spec>,
    own_pidns: OwnedFd,
    sessions: HashMap<u32, Session>,
    host_pids: bool,
    oom_before_start: bool,
}

impl Relay {
    /// A relay whose processes go into `cgroup`; `host_pids` shows host PIDs in `top`.
    pub fn new(cgroup: Option<Cgroup>, host_pids: bool) -> Result<Self, RuntimeError> {
        Ok(Self {
            cgroup,
            spec: None,
            own_pidns: spawn::own_pidns()?,
            sessions: HashMap::new(),
            host_pids,
            oom_before_start: false,
        })
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    /// True while the main process runs.
    pub fn main_running(&self) -> bool {
        self.sessions.contains_key(&MAIN)
    }

    /// Creates the main process of `spec`; `plumb(pid)` runs before it
    /// continues (to move network interfaces in). Returns its PID.
    pub fn start_main(
        &mut self,
        spec: &Spec,
        stdin: bool,
        plumb: &dyn Fn(u32) -> Result<(), RuntimeError>,
    ) -> Result<u32, RuntimeError> {
        let (keep, io, give) = spawn::stdio(spec.process.tty, stdin, spec.process.console_size)?;
        self.oom_before_start = self.cgroup.as_ref().is_some_and(|c| c.oom_killed());
        let child = spawn::create(spec, self.cgroup.as_ref(), io, plumb)?;
        drop(give);
        let pid = child.pid.as_raw() as u32;
        self.sessions.insert(MAIN, Session::new(keep, child, spec.process.tty));
        self.spec = Some(spec.clone());
        Ok(pid)
    }

    /// Runs `x` in the running container as session `sid`. Returns its PID.
    pub fn exec(&mut self, sid: u32, x: &ExecSpec) -> Result<u32, RuntimeError> {
        let not_running = || RuntimeError::Start { message: "container is not running".into(), code: 126 };
        let spec = self.spec.as_ref().ok_or_else(not_running)?;
        let main = self.sessions.get(&MAIN).ok_or_else(not_running)?;
        let process = exec_process(spec, x);
        let mut sec = Security::of(spec);
        if x.privileged {
            sec.capabilities = crate::caps::compute(&[], &[], true)?;
            sec.seccomp = Seccomp::Unconfined;
        }
        let (keep, io, give) = spawn::stdio(x.tty, x.stdin, x.size.map(|w| (w.rows, w.cols)))?;
        let child = spawn::exec(&main.child.pidfd, &self.own_pidns, &process, &sec, self.cgroup.as_ref(), io)?;
        drop(give);
        let pid = child.pid.as_raw() as u32;
        self.sessions.insert(sid, Session::new(keep, child, x.tty));
        Ok(pid)
    }

    /// Delivers `signal` to session `sid`'s process; false if there is none.
    pub fn signal(&mut self, sid: u32, signal: i32) -> bool {
        let Some(s) = self.sessions.get(&sid) else { return false };
        if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
            let _ = nix::sys::signal::kill(s.child.pid, sig);
        }
        true
    }

    /// Resizes session `sid`'s terminal.
    pub fn resize(&mut self, sid: u32, ws: WinSize) {
        if let Some(Session { tty: true, out: Some(fd), .. }) = self.sessions.get(&sid) {
            set_winsize(fd.as_raw_fd(), ws);
        }
    }

    /// Queues bytes for session `sid`'s stdin.
    pub fn stdin(&mut self, sid: u32, data: &[u8]) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.stdin.push(data);
        }
    }

    /// End of input for session `sid` (^D on a terminal).
    pub fn close_stdin(&mut self, sid: u32) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            let tty = s.tty;
            s.stdin.close(tty);
        }
    }

    /// The container's processes.
    pub fn top(&self) -> Vec<ProcRow> {
        let pids = self.cgroup.as_ref().map(|c| c.pids()).unwrap_or_default();
        crate::procfs::list(&pids, self.host_pids)
    }

    /// The container's resource usage; network bytes are those of the
    /// main process's namespace.
    pub fn stats(&self) -> Stats {
        let mut s = self.cgroup.as_ref().map(|c| c.stats()).unwrap_or_default();
        if let Some(m) = self.sessions.get(&MAIN) {
            (s.net_rx, s.net_tx) = crate::procfs::net_bytes(m.child.pid.as_raw() as u32);
        }
        s
    }

    /// Descriptors to poll: output only of sessions `readable` allows.
    pub fn poll_fds(&self, readable: &dyn Fn(u32) -> bool, out: &mut Vec<(RawFd, libc::c_short, Source)>) {
        for (sid, s) in &self.sessions {
            if readable(*sid) {
                if let Some(fd) = &s.out {
                    out.push((fd.as_raw_fd(), libc::POLLIN, Source::Output(*sid, false)));
                }
                if let Some(fd) = &s.err {
                    out.push((fd.as_raw_fd(), libc::POLLIN, Source::Output(*sid, true)));
                }
            }
            if let Some(fd) = s.stdin.pending() {
                out.push((fd, libc::POLLOUT, Source::Stdin(*sid)));
            }
            out.push((s.child.pidfd.as_raw_fd(), libc::POLLIN, Source::Exit(*sid)));
        }
    }

    /// Handles a ready descriptor; reads at most `max` bytes of output.
    pub fn ready(&mut self, src: Source, max: usize, buf: &mut [u8]) -> Vec<Event> {
        match src {
            Source::Output(sid, err) => self.read(sid, err, max.min(buf.len()), buf).into_iter().collect(),
            Source::Stdin(sid) => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.stdin.flush();
                }
                Vec::new()
            }
            Source::Exit(sid) => self.reap(sid, buf),
        }
    }

    fn read(&mut self, sid: u32, err: bool, max: usize, buf: &mut [u8]) -> Option<Event> {
        let s = self.sessions.get_mut(&sid)?;
        let slot = if err { &mut s.err } else { &mut s.out };
        let fd = slot.as_ref()?;
        if max == 0 {
            return None;
        }
        // SAFETY: reading into our buffer from our descriptor
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, max) };
        if n < 0 && nix::Error::last() == nix::Error::EAGAIN {
            return None;
        }
        if n <= 0 {
            // EOF (or EIO on a pty whose last holder closed it)
            *slot = None;
            if s.tty {
                s.stdin.fd = None;
            }
            return None;
        }
        Some(Event::Output { sid, err, data: buf[..n as usize].to_vec() })
    }

    /// Reaps session `sid`: what is left in its pipes, then its exit.
    fn reap(&mut self, sid: u32, buf: &mut [u8]) -> Vec<Event> {
        let Some(pid) = self.sessions.get(&sid).map(|s| s.child.pid) else { return Vec::new() };
        let code = wait_code(pid);
        let mut out = Vec::new();
        for err in [false, true] {
            for _ in 0..1024 {
                let Some(fd) = self.sessions.get(&sid).and_then(|s| if err { s.err.as_ref() } else { s.out.as_ref() })
                else {
                    break;
                };
                let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: poll one fd without waiting: stop once nothing is buffered
                if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
                    break;
                }
                match self.read(sid, err, buf.len(), buf) {
                    Some(e) => out.push(e),
                    None => break,
                }
            }
        }
        self.sessions.remove(&sid);
        let oom = sid == MAIN && self.cgroup.as_ref().is_some_and(|c| c.oom_killed()) && !self.oom_before_start;
        out.push(Event::Exited { sid, code, oom });
        out
    }

    /// Kills every session's process and reaps it.
    pub fn kill_all(&mut self) {
        for (_, s) in self.sessions.drain() {
            let _ = nix::sys::signal::kill(s.child.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(s.child.pid, None);
        }
    }

    /// True when `pid` is one of the sessions' processes.
    pub fn owns(&self, pid: nix::unistd::Pid) -> bool {
        self.sessions.values().any(|s| s.child.pid == pid)
    }

    /// Applies new limits to the running container's cgroup.
    pub fn update_limits(&mut self, l: &moat_spec::Limits) -> Result<Vec<String>, RuntimeError> {
        match self.cgroup.as_mut() {
            Some(c) => c.update(l),
            None => Err(RuntimeError::Invalid("the container has no cgroup to update".into())),
        }
    }

    /// Freezes (`true`) or thaws the container.
    pub fn freeze(&self, frozen: bool) -> Result<(), RuntimeError> {
        match &self.cgroup {
            Some(c) => c.freeze(frozen),
            None => Err(RuntimeError::Invalid("the container has no cgroup to freeze".into())),
        }
    }
}
