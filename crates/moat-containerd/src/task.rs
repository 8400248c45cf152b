//! One task (a container containerd created) and the thread that runs it:
//! the thread owns the sandbox backend and its poll loop, copies output to
//! the FIFOs containerd handed over and stdin from its FIFO, and records
//! the exit; the ttrpc handlers talk to it through a channel and a wake pipe.

use moat_proto::ExecSpec;
use moat_sandbox::backend::{Backend, BackendEvent, ContainerPlan, ExecStart, Query, Source};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

/// Called on the task's thread when a process ends (exec ID, empty for
/// the main process; its state).
pub type OnExit = Box<dyn Fn(&Task, &str, &TaskState) + Send>;

/// A task's processes by exec ID (`""`: the main process), with the execs'
/// specs until they start.
#[derive(Default)]
struct Procs {
    states: HashMap<String, TaskState>,
    specs: HashMap<String, ExecSpec>,
    next_sid: u32,
}

/// The main process's session in the backend.
const MAIN: u32 = 0;

/// Why a task request failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The sandbox layer refused or failed.
    #[error(transparent)]
    Sandbox(#[from] moat_sandbox::SandboxError),
    /// A FIFO or pipe.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The task's thread is gone.
    #[error("the task's thread has ended")]
    Gone,
    /// Not in a state that allows it.
    #[error("{0}")]
    State(String),
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not started.
    Created,
    /// Its main process runs.
    Running,
    /// Its main process exited.
    Stopped,
}

/// What the ttrpc side reads of one process (the main one or an exec).
#[derive(Debug, Clone)]
pub struct TaskState {
    /// Where it is.
    pub status: Status,
    /// The main process's host PID (0 before start).
    pub pid: u32,
    /// Exit status and time, once stopped.
    pub exit: Option<(u32, SystemTime)>,
    /// Its session in the backend (0: the main process).
    pub sid: u32,
    /// Its stdio.
    pub stdio: Stdio,
    /// The kernel's OOM killer ended it (the main process).
    pub oom_killed: bool,
}

/// The stdio FIFOs containerd created (empty: none).
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    /// stdin FIFO.
    pub stdin: String,
    /// stdout FIFO.
    pub stdout: String,
    /// stderr FIFO.
    pub stderr: String,
    /// A terminal (stdout carries it).
    pub terminal: bool,
}

enum Cmd {
    Start(String, Sender<Result<u32, TaskError>>),
    Signal(u32, i32, Sender<bool>),
    Resize(u32, moat_proto::WinSize),
    CloseStdin(u32),
    Query(Query, Sender<moat_proto::ShimReply>),
    Teardown(Sender<()>),
}

/// A task as the service holds it.
pub struct Task {
    /// containerd's ID.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    procs: Mutex<Procs>,
    changed: Condvar,
    /// Frozen by `Pause` (until `Resume`).
    pub paused: std::sync::atomic::AtomicBool,
    /// Runs in a utility VM (its host cgroup holds the VM, not its processes).
    pub in_vm: bool,
    cmds: Mutex<Sender<Cmd>>,
    wake: OwnedFd,
}

impl Task {
    /// Creates the task's sandbox (cgroup) on a thread of its own; `exited`
    /// is called there when a process ends; `id` is containerd's.
    pub fn create(
        id: &str,
        plan: ContainerPlan,
        vm: moat_sandbox::VmOptions,
        bundle: PathBuf,
        stdio: Stdio,
        exited: OnExit,
    ) -> Result<Arc<Task>, TaskError> {
        let (wake_r, wake_w) = pipe()?;
        let (tx, rx) = channel();
        let main = TaskState {
            status: Status::Created,
            pid: 0,
            exit: None,
            sid: MAIN,
            stdio: stdio.clone(),
            oom_killed: false,
        };
        let task = Arc::new(Task {
            id: id.to_string(),
            bundle,
            procs: Mutex::new(Procs {
                states: HashMap::from([(String::new(), main)]),
                next_sid: 1,
                ..Default::default()
            }),
            changed: Condvar::new(),
            paused: Default::default(),
            in_vm: !matches!(plan.sandbox, moat_sandbox::SandboxPlan::Local),
            cmds: Mutex::new(tx),
            wake: wake_w,
        });
        let (ready_tx, ready_rx) = channel();
        let t = task.clone();
        std::thread::Builder::new()
            .name(format!("task-{}", &id[..id.len().min(12)]))
            .spawn(move || {
                let backend = match moat_sandbox::open(&plan, &vm) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = ready_tx.send(Err(TaskError::from(e)));
                        return;
                    }
                };
                let io = match Io::open(&stdio) {
                    Ok(io) => io,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let ios = HashMap::from([(MAIN, io)]);
                Runner {
                    task: t,
                    plan,
                    backend,
                    ios,
                    rx,
                    wake: wake_r,
                    exited,
                    starting: HashMap::new(),
                    queries: HashMap::new(),
                    next_token: 0,
                }
                .run();
            })
            .map_err(|e| TaskError::Io("spawn the task thread".into(), e))?;
        ready_rx.recv().map_err(|_| TaskError::Gone)??;
        task.record();
        Ok(task)
    }

    /// A snapshot of a process's state (`""`: the main process).
    pub fn state(&self, exec: &str) -> Option<TaskState> {
        self.procs.lock().ok().and_then(|p| p.states.get(exec).cloned())
    }

    /// The main process's state.
    pub fn main(&self) -> TaskState {
        self.state("").unwrap_or(TaskState {
            status: Status::Stopped,
            pid: 0,
            exit: None,
            sid: MAIN,
            stdio: Stdio::default(),
            oom_killed: false,
        })
    }

    fn set(&self, sid: u32, f: impl FnOnce(&mut TaskState)) -> Option<(String, TaskState)> {
        let mut out = None;
        if let Ok(mut p) = self.procs.lock() {
            if let Some((id, st)) = p.states.iter_mut().find(|(_, st)| st.sid == sid) {
                f(st);
                out = Some((id.clone(), st.clone()));
            }
        }
        self.changed.notify_all();
        if sid == MAIN {
            self.record();
        }
        out
    }

    /// Marks the task frozen or thawed (after the backend did it) and records it.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, std::sync::atomic::Ordering::SeqCst);
        self.record();
    }

    /// Records the main process's state in the bundle, for `moat ps
    /// --namespace` (containerd keeps the task's real records).
    pub fn record(&self) {
        let m = self.main();
        let paused = self.paused.load(std::sync::atomic::Ordering::SeqCst);
        let status = match m.status {
            Status::Created => "created",
            Status::Running if paused => "paused",
            Status::Running => "running",
            Status::Stopped => "stopped",
        };
        let r = moat_core::containerd::TaskRecord {
            isolation: if self.in_vm { "hyperv" } else { "process" }.into(),
            status: status.into(),
            pid: m.pid,
            exit_code: m.exit.map(|(c, _)| c),
        };
        if let Err(e) = r.write(&self.bundle) {
            log::warn!("record the task's state: {e}");
        }
    }

    /// Registers exec `exec` (not started yet).
    pub fn add_exec(&self, exec: &str, spec: ExecSpec, stdio: Stdio) -> Result<(), TaskError> {
        let mut p = self.procs.lock().map_err(|_| TaskError::Gone)?;
        if p.states.contains_key(exec) {
            return Err(TaskError::State(format!("exec {exec} exists already in task {}", self.id)));
        }
        let sid = p.next_sid;
        p.next_sid += 1;
        let st = TaskState { status: Status::Created, pid: 0, exit: None, sid, stdio, oom_killed: false };
        p.states.insert(exec.to_string(), st);
        p.specs.insert(exec.to_string(), spec);
        Ok(())
    }

    /// Forgets a finished exec.
    pub fn remove_exec(&self, exec: &str) -> Option<TaskState> {
        let mut p = self.procs.lock().ok()?;
        p.specs.remove(exec);
        p.states.remove(exec)
    }

    /// Blocks until process `exec` has exited.
    pub fn wait(&self, exec: &str) -> Result<(u32, SystemTime), TaskError> {
        let mut p = self.procs.lock().map_err(|_| TaskError::Gone)?;
        loop {
            match p.states.get(exec) {
                None => return Err(TaskError::State(format!("no process {exec} in task {}", self.id))),
                Some(TaskState { exit: Some(e), .. }) => return Ok(*e),
                Some(_) => {}
            }
            p = self.changed.wait(p).map_err(|_| TaskError::Gone)?;
        }
    }

    fn send(&self, c: Cmd) -> Result<(), TaskError> {
        self.cmds.lock().map_err(|_| TaskError::Gone)?.send(c).map_err(|_| TaskError::Gone)?;
        // SAFETY: one byte from a valid buffer to a pipe this task owns
        unsafe { libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        Ok(())
    }

    fn sid(&self, exec: &str) -> Result<TaskState, TaskError> {
        self.state(exec).ok_or_else(|| TaskError::State(format!("no process {exec:?} in task {}", self.id)))
    }

    /// Starts process `exec` (`""`: the main process); its PID.
    pub fn start(&self, exec: &str) -> Result<u32, TaskError> {
        if self.sid(exec)?.status != Status::Created {
            return Err(TaskError::State(format!("process {exec:?} of task {} was started already", self.id)));
        }
        if !exec.is_empty() && self.main().status != Status::Running {
            return Err(TaskError::State(format!("task {} is not running", self.id)));
        }
        let (tx, rx) = channel();
        self.send(Cmd::Start(exec.to_string(), tx))?;
        rx.recv().map_err(|_| TaskError::Gone)?
    }

    /// Signals process `exec`; false when it does not run.
    pub fn signal(&self, exec: &str, sig: i32) -> Result<bool, TaskError> {
        let sid = self.sid(exec)?.sid;
        let (tx, rx) = channel();
        self.send(Cmd::Signal(sid, sig, tx))?;
        rx.recv().map_err(|_| TaskError::Gone)
    }

    /// Resizes process `exec`'s terminal.
    pub fn resize(&self, exec: &str, rows: u16, cols: u16) -> Result<(), TaskError> {
        let sid = self.sid(exec)?.sid;
        self.send(Cmd::Resize(sid, moat_proto::WinSize { rows, cols }))
    }

    /// Closes process `exec`'s stdin.
    pub fn close_stdin(&self, exec: &str) -> Result<(), TaskError> {
        let sid = self.sid(exec)?.sid;
        self.send(Cmd::CloseStdin(sid))
    }

    /// Asks the backend (pause, resume, new limits, usage).
    pub fn query(&self, q: Query) -> Result<moat_proto::ShimReply, TaskError> {
        let (tx, rx) = channel();
        self.send(Cmd::Query(q, tx))?;
        rx.recv().map_err(|_| TaskError::Gone)
    }

    /// Every process in the task's cgroup (what the kernel says).
    pub fn pids(&self) -> Vec<u32> {
        moat_sandbox::local::read_cgroup(&self.bundle).map(|c| c.pids()).unwrap_or_default()
    }

    /// Ends every process and removes the sandbox (the cgroup).
    pub fn teardown(&self) {
        let (tx, rx) = channel();
        if self.send(Cmd::Teardown(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), TaskError> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(TaskError::Io("pipe".into(), std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two new descriptors we own
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The task's ends of containerd's FIFOs.
struct Io {
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
}

impl Io {
    fn open(s: &Stdio) -> Result<Io, TaskError> {
        use std::os::unix::fs::OpenOptionsExt;
        let out = |p: &str| -> Result<Option<File>, TaskError> {
            if p.is_empty() {
                return Ok(None);
            }
            // read and write: opening never waits for containerd's reader
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map(Some)
                .map_err(|e| TaskError::Io(format!("open {p}"), e))
        };
        let stdin = match s.stdin.as_str() {
            "" => None,
            p => Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p)
                    .map_err(|e| TaskError::Io(format!("open {p}"), e))?,
            ),
        };
        Ok(Io { stdin, stdout: out(&s.stdout)?, stderr: out(&s.stderr)? })
    }
}

struct Runner {
    task: Arc<Task>,
    plan: ContainerPlan,
    backend: Box<dyn Backend>,
    ios: HashMap<u32, Io>,
    rx: Receiver<Cmd>,
    wake: OwnedFd,
    exited: OnExit,
    /// Execs started in a VM, waiting for their `Started`: their callers.
    starting: HashMap<u32, Sender<Result<u32, TaskError>>>,
    /// Queries a VM answers later, by token: their callers.
    queries: HashMap<u64, Sender<moat_proto::ShimReply>>,
    next_token: u64,
}

/// A process started now (its PID), or pending (its session).
enum Begun {
    Now(u32),
    Pending(u32),
}

#[derive(Clone, Copy)]
enum Tok {
    Wake,
    Stdin(u32),
    Backend(Source),
}

impl Runner {
    fn run(mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let mut toks: Vec<Tok> = Vec::new();
            fds.push(libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            toks.push(Tok::Wake);
            for (sid, io) in &self.ios {
                if let Some(f) = &io.stdin {
                    fds.push(libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                    toks.push(Tok::Stdin(*sid));
                }
            }
            let mut want: Vec<(RawFd, libc::c_short, Source)> = Vec::new();
            self.backend.poll_fds(&|_| false, &mut want);
            for (fd, ev, src) in want {
                fds.push(libc::pollfd { fd, events: ev, revents: 0 });
                toks.push(Tok::Backend(src));
            }
            // the backend's next timer (a VM's exec and query deadlines), else a second
            let wait = self
                .backend
                .deadline()
                .map(|d| d.saturating_duration_since(std::time::Instant::now()).as_millis().min(1000) as i32)
                .unwrap_or(1000);
            // SAFETY: fds is a valid array of pollfd
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
            if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                log::error!("poll: {}", std::io::Error::last_os_error());
                return;
            }
            for (pfd, tok) in fds.iter().zip(toks) {
                if pfd.revents == 0 {
                    continue;
                }
                match tok {
                    Tok::Wake => {
                        // SAFETY: reading into a valid buffer from our own pipe
                        while unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
                        if !self.commands() {
                            return;
                        }
                    }
                    Tok::Stdin(sid) => self.stdin(sid, &mut buf),
                    Tok::Backend(src) => {
                        let events = self.backend.ready(src, pfd.revents, &mut buf);
                        self.events(events);
                    }
                }
            }
            if self.backend.deadline().is_some_and(|d| d <= std::time::Instant::now()) {
                let events = self.backend.timers(std::time::Instant::now());
                self.events(events);
            }
            self.backend.after_round(&|_| false);
        }
    }

    /// Runs queued commands; false after a teardown.
    fn commands(&mut self) -> bool {
        while let Ok(c) = self.rx.try_recv() {
            match c {
                Cmd::Start(exec, reply) => match self.start(&exec) {
                    Ok(Begun::Now(pid)) => {
                        let _ = reply.send(Ok(pid));
                    }
                    // a VM's exec: the answer comes with its `Started`
                    Ok(Begun::Pending(sid)) => {
                        self.starting.insert(sid, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Cmd::Signal(sid, sig, reply) => {
                    let _ = reply.send(self.backend.signal(sid, sig));
                }
                Cmd::Resize(sid, ws) => self.backend.resize(sid, ws),
                Cmd::CloseStdin(sid) => {
                    self.backend.close_stdin(sid);
                    if let Some(io) = self.ios.get_mut(&sid) {
                        io.stdin = None;
                    }
                }
                Cmd::Query(q, reply) => {
                    // the local backend answers at once, a VM's later (a `Reply`)
                    self.next_token += 1;
                    match self.backend.query(q, self.next_token) {
                        Some(r) => {
                            let _ = reply.send(r);
                        }
                        None => {
                            self.queries.insert(self.next_token, reply);
                        }
                    }
                }
                Cmd::Teardown(reply) => {
                    self.backend.teardown(&self.plan);
                    let _ = reply.send(());
                    return false;
                }
            }
        }
        true
    }

    fn start(&mut self, exec: &str) -> Result<Begun, TaskError> {
        let st = self.task.sid(exec)?;
        // the main process's FIFOs were opened at create
        let io = if exec.is_empty() { None } else { Some(Io::open(&st.stdio)?) };
        let pid = if exec.is_empty() {
            self.backend.start_main(&self.plan)?
        } else {
            let spec = self.task.procs.lock().ok().and_then(|p| p.specs.get(exec).cloned()).ok_or(TaskError::Gone)?;
            let begun = self.backend.exec(st.sid, &spec)?;
            if let Some(io) = io {
                // before the first output
                self.ios.insert(st.sid, io);
            }
            match begun {
                ExecStart::Now(pid) => pid,
                ExecStart::Pending => return Ok(Begun::Pending(st.sid)),
            }
        };
        self.running(st.sid, pid);
        Ok(Begun::Now(pid))
    }

    fn running(&self, sid: u32, pid: u32) {
        self.task.set(sid, |s| {
            s.status = Status::Running;
            s.pid = pid;
        });
    }

    fn stdin(&mut self, sid: u32, buf: &mut [u8]) {
        let Some(f) = self.ios.get_mut(&sid).and_then(|io| io.stdin.as_mut()) else { return };
        match f.read(buf) {
            Ok(n) if n > 0 => self.backend.stdin(sid, buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => {
                self.backend.close_stdin(sid);
                if let Some(io) = self.ios.get_mut(&sid) {
                    io.stdin = None;
                }
            }
        }
    }

    fn events(&mut self, events: Vec<BackendEvent>) {
        for e in events {
            match e {
                BackendEvent::Output { sid, err, data } => {
                    let tty = self
                        .task
                        .procs
                        .lock()
                        .ok()
                        .and_then(|p| p.states.values().find(|st| st.sid == sid).map(|st| st.stdio.terminal));
                    if let Some(io) = self.ios.get_mut(&sid) {
                        let f = if err && tty == Some(false) { &mut io.stderr } else { &mut io.stdout };
                        if let Some(f) = f {
                            let _ = f.write_all(&data);
                        }
                    }
                }
                BackendEvent::Started { sid, pid } => {
                    self.running(sid, pid);
                    if let Some(reply) = self.starting.remove(&sid) {
                        let _ = reply.send(Ok(pid));
                    }
                }
                BackendEvent::Exited { sid, code, oom } => self.exited(sid, code, oom),
                BackendEvent::Reply { token, reply } => {
                    if let Some(tx) = self.queries.remove(&token) {
                        let _ = tx.send(reply);
                    }
                }
                BackendEvent::Died { code, reason } => {
                    for (_, reply) in self.starting.drain() {
                        let _ = reply.send(Err(TaskError::State(reason.clone())));
                    }
                    for (_, tx) in self.queries.drain() {
                        let _ = tx.send(moat_proto::ShimReply::Error { message: reason.clone() });
                    }
                    self.exited(MAIN, code, false)
                }
                BackendEvent::ExecFailed { sid, code, message } => {
                    if let Some(reply) = self.starting.remove(&sid) {
                        let _ = reply.send(Err(TaskError::State(message)));
                    }
                    self.exited(sid, code, false)
                }
            }
        }
    }

    fn exited(&mut self, sid: u32, code: i32, oom: bool) {
        let at = SystemTime::now();
        // the FIFOs close: containerd's copier sees the end of the output
        self.ios.remove(&sid);
        let done = self.task.set(sid, |s| {
            s.status = Status::Stopped;
            s.exit = Some((code as u32, at));
            s.oom_killed = oom;
        });
        if let Some((exec, st)) = done {
            (self.exited)(&self.task, &exec, &st);
        }
    }
}

/// Tasks by ID, in one shim process (a pod's containers share it).
pub type Tasks = Arc<Mutex<HashMap<String, Arc<Task>>>>;
