//! One task (a container containerd created) and the thread that runs it:
//! the thread owns the sandbox backend and its poll loop, copies output to
//! the FIFOs containerd handed over and stdin from its FIFO, and records
//! the exit; the ttrpc handlers talk to it through a channel and a wake pipe.

use moat_sandbox::backend::{Backend, BackendEvent, ContainerPlan, Source};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

/// Called on the task's thread when its main process ends (status, time).
pub type OnExit = Box<dyn Fn(&Task, u32, SystemTime) + Send>;

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

/// What the ttrpc side reads.
#[derive(Debug, Clone)]
pub struct TaskState {
    /// Where it is.
    pub status: Status,
    /// The main process's host PID (0 before start).
    pub pid: u32,
    /// Exit status and time, once stopped.
    pub exit: Option<(u32, SystemTime)>,
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
    Start(Sender<Result<u32, TaskError>>),
    Signal(i32, Sender<bool>),
    Teardown(Sender<()>),
}

/// A task as the service holds it.
pub struct Task {
    /// containerd's ID.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Its stdio.
    pub stdio: Stdio,
    state: Mutex<TaskState>,
    changed: Condvar,
    cmds: Mutex<Sender<Cmd>>,
    wake: OwnedFd,
}

impl Task {
    /// Creates the task's sandbox (cgroup) on a thread of its own; `exited`
    /// is called there when the main process ends.
    pub fn create(plan: ContainerPlan, bundle: PathBuf, stdio: Stdio, exited: OnExit) -> Result<Arc<Task>, TaskError> {
        let (wake_r, wake_w) = pipe()?;
        let (tx, rx) = channel();
        let task = Arc::new(Task {
            id: plan.id.clone(),
            bundle,
            stdio: stdio.clone(),
            state: Mutex::new(TaskState { status: Status::Created, pid: 0, exit: None }),
            changed: Condvar::new(),
            cmds: Mutex::new(tx),
            wake: wake_w,
        });
        let (ready_tx, ready_rx) = channel();
        let t = task.clone();
        std::thread::Builder::new()
            .name(format!("task-{}", &plan.id[..plan.id.len().min(12)]))
            .spawn(move || {
                let backend = match moat_sandbox::local::Local::new(&plan) {
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
                Runner { task: t, plan, backend: Box::new(backend), io, rx, wake: wake_r, exited }.run();
            })
            .map_err(|e| TaskError::Io("spawn the task thread".into(), e))?;
        ready_rx.recv().map_err(|_| TaskError::Gone)??;
        Ok(task)
    }

    /// A snapshot of its state.
    pub fn state(&self) -> TaskState {
        self.state.lock().map(|s| s.clone()).unwrap_or(TaskState { status: Status::Stopped, pid: 0, exit: None })
    }

    fn set(&self, f: impl FnOnce(&mut TaskState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
        self.changed.notify_all();
    }

    /// Blocks until the main process has exited.
    pub fn wait(&self) -> (u32, SystemTime) {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(_) => return (255, SystemTime::now()),
        };
        loop {
            if let Some(e) = s.exit {
                return e;
            }
            s = match self.changed.wait(s) {
                Ok(s) => s,
                Err(_) => return (255, SystemTime::now()),
            };
        }
    }

    fn send(&self, c: Cmd) -> Result<(), TaskError> {
        self.cmds.lock().map_err(|_| TaskError::Gone)?.send(c).map_err(|_| TaskError::Gone)?;
        // SAFETY: one byte from a valid buffer to a pipe this task owns
        unsafe { libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        Ok(())
    }

    /// Starts the main process; its PID.
    pub fn start(&self) -> Result<u32, TaskError> {
        if self.state().status != Status::Created {
            return Err(TaskError::State(format!("task {} was started already", self.id)));
        }
        let (tx, rx) = channel();
        self.send(Cmd::Start(tx))?;
        rx.recv().map_err(|_| TaskError::Gone)?
    }

    /// Signals the main process; false when it does not run.
    pub fn signal(&self, sig: i32) -> Result<bool, TaskError> {
        let (tx, rx) = channel();
        self.send(Cmd::Signal(sig, tx))?;
        rx.recv().map_err(|_| TaskError::Gone)
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
    io: Io,
    rx: Receiver<Cmd>,
    wake: OwnedFd,
    exited: OnExit,
}

#[derive(Clone, Copy)]
enum Tok {
    Wake,
    Stdin,
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
            if let Some(f) = &self.io.stdin {
                if self.task.state().status == Status::Running {
                    fds.push(libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                    toks.push(Tok::Stdin);
                }
            }
            let mut want: Vec<(RawFd, libc::c_short, Source)> = Vec::new();
            self.backend.poll_fds(&|_| false, &mut want);
            for (fd, ev, src) in want {
                fds.push(libc::pollfd { fd, events: ev, revents: 0 });
                toks.push(Tok::Backend(src));
            }
            // SAFETY: fds is a valid array of pollfd
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
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
                    Tok::Stdin => self.stdin(&mut buf),
                    Tok::Backend(src) => {
                        let events = self.backend.ready(src, pfd.revents, &mut buf);
                        self.events(events);
                    }
                }
            }
            self.backend.after_round(&|_| false);
        }
    }

    /// Runs queued commands; false after a teardown.
    fn commands(&mut self) -> bool {
        while let Ok(c) = self.rx.try_recv() {
            match c {
                Cmd::Start(reply) => {
                    let r = self.backend.start_main(&self.plan).map_err(TaskError::from);
                    if let Ok(pid) = r {
                        self.task.set(|s| {
                            s.status = Status::Running;
                            s.pid = pid;
                        });
                    }
                    let _ = reply.send(r);
                }
                Cmd::Signal(sig, reply) => {
                    let _ = reply.send(self.backend.signal(MAIN, sig));
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

    fn stdin(&mut self, buf: &mut [u8]) {
        let Some(f) = self.io.stdin.as_mut() else { return };
        match f.read(buf) {
            Ok(0) => {
                self.backend.close_stdin(MAIN);
                self.io.stdin = None;
            }
            Ok(n) => self.backend.stdin(MAIN, buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.backend.close_stdin(MAIN);
                self.io.stdin = None;
            }
        }
    }

    fn events(&mut self, events: Vec<BackendEvent>) {
        for e in events {
            match e {
                BackendEvent::Output { sid: MAIN, err, data } => {
                    let f = if err && !self.task.stdio.terminal { &mut self.io.stderr } else { &mut self.io.stdout };
                    if let Some(f) = f {
                        let _ = f.write_all(&data);
                    }
                }
                BackendEvent::Exited { sid: MAIN, code, .. } | BackendEvent::Died { code, .. } => {
                    let code = code as u32;
                    let at = SystemTime::now();
                    self.task.set(|s| {
                        s.status = Status::Stopped;
                        s.exit = Some((code, at));
                    });
                    (self.exited)(&self.task, code, at);
                }
                _ => {}
            }
        }
    }
}

/// Tasks by ID, in one shim process (a pod's containers share it).
pub type Tasks = Arc<Mutex<HashMap<String, Arc<Task>>>>;
