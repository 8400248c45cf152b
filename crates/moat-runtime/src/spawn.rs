//! Creating container processes: `create` clones the container's init into
//! new namespaces; `exec` forks a further process into an existing container.
//!
//! Both report failures that happen in the child before `execve` (a missing
//! binary, a bad mount) back through a close-on-exec pipe, so the caller gets
//! a one-line error and an exit code (127 not found, 126 not executable, 125
//! setup failure) instead of a silently dead process.

use crate::cgroup::Cgroup;
use crate::spec::{NetNs, Process, Seccomp, Spec};
use crate::user::Identity;
use crate::{caps, mounts, seccomp, RuntimeError};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The process's stdio.
#[derive(Debug, Clone, Copy)]
pub enum Stdio {
    /// These descriptors become stdin, stdout and stderr.
    Fds {
        /// stdin.
        stdin: RawFd,
        /// stdout.
        stdout: RawFd,
        /// stderr.
        stderr: RawFd,
    },
    /// A terminal allocated inside the container's own devpts (so `tty`
    /// names it `/dev/pts/N`); its master is handed back in [`Child::pty`].
    Pty {
        /// Initial size (rows, cols).
        size: Option<(u16, u16)>,
    },
}

/// The shim's (or agent's) ends of a new process's stdio: write to `stdin`,
/// read `out` and `err` (all non-blocking once [`Ends::take_pty`] ran).
#[derive(Debug, Default)]
pub struct Ends {
    /// Where the process's stdin comes from (None: /dev/null).
    pub stdin: Option<OwnedFd>,
    /// Its stdout (or the terminal).
    pub out: Option<OwnedFd>,
    /// Its stderr (None with a terminal).
    pub err: Option<OwnedFd>,
}

impl Ends {
    /// With a terminal, its master becomes stdin and out; then all ends are
    /// made non-blocking.
    pub fn take_pty(&mut self, child: &mut Child) {
        if let Some(master) = child.pty.take() {
            self.stdin = master.try_clone().ok();
            self.out = Some(master);
        }
        for fd in [&self.stdin, &self.out, &self.err].into_iter().flatten() {
            // SAFETY: fcntl on descriptors we own
            unsafe {
                let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
        }
    }
}

/// Bytes on their way into a process's stdin (pipe or terminal), written as
/// the descriptor becomes writable, so a process that does not read never
/// blocks its relay.
#[derive(Debug, Default)]
pub struct StdinQueue {
    /// The write end (None once closed, or for /dev/null).
    pub fd: Option<OwnedFd>,
    buf: Vec<u8>,
    close_after: bool,
}

impl StdinQueue {
    /// A queue writing to `fd`.
    pub fn new(fd: Option<OwnedFd>) -> Self {
        Self { fd, buf: Vec::new(), close_after: false }
    }

    /// Queues `data` (dropped if stdin is closed).
    pub fn push(&mut self, data: &[u8]) {
        if self.fd.is_some() {
            self.buf.extend_from_slice(data);
        }
    }

    /// End of input: ^D on a terminal (which has no EOF of its own), else
    /// close the pipe once the queue is written.
    pub fn close(&mut self, tty: bool) {
        if tty {
            self.push(&[4]);
        } else {
            self.close_after = true;
            if self.buf.is_empty() {
                self.fd = None;
            }
        }
    }

    /// The descriptor to poll for writability, when there is something to write.
    pub fn pending(&self) -> Option<RawFd> {
        self.fd.as_ref().filter(|_| !self.buf.is_empty()).map(|f| f.as_raw_fd())
    }

    /// Writes what the (non-blocking) descriptor takes.
    pub fn flush(&mut self) {
        let Some(fd) = &self.fd else { return };
        // SAFETY: writing our buffer to our descriptor
        let n = unsafe { libc::write(fd.as_raw_fd(), self.buf.as_ptr() as *const libc::c_void, self.buf.len()) };
        if n > 0 {
            self.buf.drain(..n as usize);
        } else if nix::Error::last() != nix::Error::EAGAIN {
            self.fd = None;
            self.buf.clear();
        }
        if self.buf.is_empty() && self.close_after {
            self.fd = None;
        }
    }
}

/// Pipes (or a terminal of `size`) for a new process: the caller's ends, the
/// child's [`Stdio`], and the child's descriptors to close once it started.
pub fn stdio(tty: bool, stdin: bool, size: Option<(u16, u16)>) -> Result<(Ends, Stdio, Vec<OwnedFd>), RuntimeError> {
    if tty {
        return Ok((Ends::default(), Stdio::Pty { size }, Vec::new()));
    }
    let (in_r, in_w) = if stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (OwnedFd::from(std::fs::File::open("/dev/null").map_err(RuntimeError::io("open /dev/null"))?), None)
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let io = Stdio::Fds { stdin: in_r.as_raw_fd(), stdout: out_w.as_raw_fd(), stderr: err_w.as_raw_fd() };
    Ok((Ends { stdin: in_w, out: Some(out_r), err: Some(err_r) }, io, vec![in_r, out_w, err_w]))
}

/// A started process.
#[derive(Debug)]
pub struct Child {
    /// Host PID.
    pub pid: Pid,
    /// pidfd: becomes readable when the process exits.
    pub pidfd: OwnedFd,
    /// The terminal's master side, for [`Stdio::Pty`].
    pub pty: Option<OwnedFd>,
}

/// How a container process is to be set up, beyond its namespaces.
#[derive(Debug, Clone)]
pub struct Security {
    /// Capability numbers.
    pub capabilities: Vec<u8>,
    /// Seccomp policy.
    pub seccomp: Seccomp,
    /// no_new_privs.
    pub no_new_privs: bool,
}

impl Security {
    /// The security settings of a spec.
    pub fn of(spec: &Spec) -> Self {
        Self { capabilities: spec.capabilities.clone(), seccomp: spec.seccomp.clone(), no_new_privs: spec.no_new_privs }
    }

    fn programs(&self) -> Result<Vec<seccompiler::BpfProgram>, RuntimeError> {
        match &self.seccomp {
            Seccomp::Unconfined => Ok(Vec::new()),
            Seccomp::Default => seccomp::default_profile(&self.capabilities),
            Seccomp::Profile(json) => seccomp::docker_profile(json),
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(RuntimeError::sys("pipe"))
}

/// Forks (glibc's `fork`, whose handlers keep malloc and stdio usable in
/// the child of a multi-threaded process such as the containerd shim: a raw
/// `clone` left a lock another thread held at that moment locked for ever in
/// the child); returns 0 in the child, else the child and a pidfd of it.
fn fork() -> Result<(Pid, Option<OwnedFd>), RuntimeError> {
    // SAFETY: the child continues on its copy of this thread's stack only,
    // and execs or exits
    let rc = unsafe { libc::fork() };
    if rc < 0 {
        return Err(RuntimeError::Sys("fork".into(), nix::Error::last()));
    }
    if rc == 0 {
        return Ok((Pid::from_raw(0), None));
    }
    // SAFETY: pidfd_open of our own child, not reaped yet (its PID cannot be reused)
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, rc, 0) };
    if fd < 0 {
        let e = nix::Error::last();
        let _ = nix::sys::signal::kill(Pid::from_raw(rc), nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(rc), None);
        return Err(RuntimeError::Sys("pidfd_open".into(), e));
    }
    // SAFETY: the kernel returned a fresh descriptor
    Ok((Pid::from_raw(rc), Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })))
}

/// Forks with this thread's PID namespace for children switched for the
/// moment: a new one (`new`), the one at `join`, or left as it is; the
/// parent gets its own back.
fn fork_in_pid_ns(new: bool, join: Option<&std::path::Path>) -> Result<(Pid, Option<OwnedFd>), RuntimeError> {
    let own = match (new, join) {
        (false, None) => None,
        _ => Some(std::fs::File::open("/proc/thread-self/ns/pid").map_err(RuntimeError::io("own PID namespace"))?),
    };
    if let Some(p) = join {
        let target = std::fs::File::open(p).map_err(RuntimeError::io(format!("open PID namespace {}", p.display())))?;
        nix::sched::setns(target, CloneFlags::CLONE_NEWPID).map_err(RuntimeError::sys("join the PID namespace"))?;
    } else if new {
        nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(RuntimeError::sys("new PID namespace"))?;
    }
    let forked = fork();
    // the child stays (its children belong in its namespace)
    if forked.as_ref().map(|(p, _)| p.as_raw() != 0).unwrap_or(true) {
        if let Some(own) = own {
            nix::sched::setns(own, CloneFlags::CLONE_NEWPID).map_err(RuntimeError::sys("leave the PID namespace"))?;
        }
    }
    forked
}

/// Child side: blocks until the parent released us (EOF: it gave up or died).
fn wait_for_parent(syncr: OwnedFd) -> Result<(), RuntimeError> {
    let mut b = [0u8; 1];
    if std::fs::File::from(syncr).read(&mut b).map_err(RuntimeError::io("sync"))? != 1 {
        return Err(RuntimeError::Invalid("parent gave up".into()));
    }
    Ok(())
}

/// Child side: report `err` through the pipe and exit.
fn die(errw: &OwnedFd, err: RuntimeError) -> ! {
    let (code, msg) = match &err {
        RuntimeError::Start { code, message } => (*code, message.clone()),
        e => (125, e.to_string()),
    };
    let line = format!("{code}:{msg}");
    // SAFETY: writing to our own pipe fd; _exit never returns
    unsafe {
        libc::write(errw.as_raw_fd(), line.as_ptr() as *const libc::c_void, line.len());
        libc::_exit(code)
    }
}

/// Parent side: wait for the child to exec (pipe closes) or report an error.
fn await_exec(errr: OwnedFd, pid: Pid) -> Result<(), RuntimeError> {
    let mut f = std::fs::File::from(errr);
    let mut buf = String::new();
    let _ = f.read_to_string(&mut buf);
    if buf.is_empty() {
        return Ok(());
    }
    let _ = nix::sys::wait::waitpid(pid, None);
    let (code, message) =
        buf.split_once(':').map(|(c, m)| (c.parse().unwrap_or(125), m.to_string())).unwrap_or((125, buf));
    Err(RuntimeError::Start { message, code })
}

fn reset_signals() {
    // SAFETY: plain libc calls restoring default dispositions and an empty mask
    unsafe {
        for s in 1..32 {
            if s != libc::SIGKILL && s != libc::SIGSTOP {
                libc::signal(s, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Connects stdio: dups the given fds, or allocates a terminal in the
/// container's devpts, binds it at /dev/console (init only), and sends the
/// master to the parent over `sock`.
fn setup_stdio(io: Stdio, sock: Option<&OwnedFd>, console: bool) -> Result<(), RuntimeError> {
    match io {
        Stdio::Fds { stdin, stdout, stderr } => {
            for (fd, to) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
                if fd != to {
                    nix::unistd::dup2(fd, to).map_err(RuntimeError::sys("dup2 stdio"))?;
                }
            }
            nix::unistd::setsid().map_err(RuntimeError::sys("setsid"))?;
        }
        Stdio::Pty { size } => {
            use nix::fcntl::OFlag;
            let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
                .map_err(RuntimeError::sys("open /dev/ptmx"))?;
            nix::pty::grantpt(&master).map_err(RuntimeError::sys("grantpt"))?;
            nix::pty::unlockpt(&master).map_err(RuntimeError::sys("unlockpt"))?;
            if let Some((rows, cols)) = size {
                let w = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                // SAFETY: ioctl on the master we just opened
                unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &w) };
            }
            // SAFETY: TIOCGPTPEER opens the slave of this master without a path lookup
            let slave = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY) };
            if slave < 0 {
                return Err(RuntimeError::Sys("open pty slave".into(), nix::Error::last()));
            }
            if console {
                let name = nix::pty::ptsname_r(&master).map_err(RuntimeError::sys("ptsname"))?;
                nix::mount::mount(
                    Some(name.as_str()),
                    "/dev/console",
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(RuntimeError::sys("bind /dev/console"))?;
            }
            let sock = sock.ok_or_else(|| RuntimeError::Invalid("no pty socket".into()))?;
            let fds = [master.as_raw_fd()];
            let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
            let iov = [std::io::IoSlice::new(b"p")];
            nix::sys::socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, nix::sys::socket::MsgFlags::empty(), None)
                .map_err(RuntimeError::sys("send pty master"))?;
            drop(master);
            for to in 0..3 {
                nix::unistd::dup2(slave, to).map_err(RuntimeError::sys("dup2 pty"))?;
            }
            if slave > 2 {
                let _ = nix::unistd::close(slave);
            }
            nix::unistd::setsid().map_err(RuntimeError::sys("setsid"))?;
            // SAFETY: ioctl on our stdin (the pty slave)
            if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
                return Err(RuntimeError::Sys("set controlling terminal".into(), nix::Error::last()));
            }
        }
    }
    Ok(())
}

/// Parent side of [`Stdio::Pty`]: receives the master (None if the child
/// failed first).
fn recv_pty(sock: &OwnedFd) -> Option<OwnedFd> {
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    for c in msg.cmsgs().ok()? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel installed this fd for us
                return Some(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    None
}

fn pty_pair(io: Stdio) -> Result<Option<(OwnedFd, OwnedFd)>, RuntimeError> {
    match io {
        Stdio::Pty { .. } => {
            use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
                .map(Some)
                .map_err(RuntimeError::sys("socketpair"))
        }
        Stdio::Fds { .. } => Ok(None),
    }
}

fn read_etc(name: &str) -> String {
    std::fs::read_to_string(format!("/etc/{name}")).unwrap_or_default()
}

/// Resolves the user inside the (already pivoted) root.
fn identity(user: &str) -> Result<Identity, RuntimeError> {
    crate::user::resolve(user, &read_etc("passwd"), &read_etc("group"))
        .map_err(|e| RuntimeError::Start { message: e.to_string(), code: 125 })
}

/// Sets identity, capabilities, no_new_privs, rlimits, cwd; closes stray
/// fds; installs seccomp; execs. Never returns on success.
fn finish_and_exec(p: &Process, sec: &Security, progs: &[seccompiler::BpfProgram]) -> Result<(), RuntimeError> {
    let id = identity(&p.user)?;
    for r in &p.rlimits {
        let lim = libc::rlimit { rlim_cur: r.soft, rlim_max: r.hard };
        // SAFETY: plain setrlimit
        if unsafe { libc::setrlimit(r.resource as _, &lim) } < 0 {
            return Err(RuntimeError::Sys(format!("setrlimit {}", r.resource), nix::Error::last()));
        }
    }
    let mut env: Vec<String> = p.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", id.home));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if !sec.no_new_privs {
        // without no_new_privs seccomp needs CAP_SYS_ADMIN: install it while we hold it
        seccomp::install_privileged(progs)?;
    }
    caps::limit_bounding(&sec.capabilities)?;
    let mut groups: Vec<nix::unistd::Gid> = id.groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    for g in &p.group_add {
        let gid = crate::user::group_id(g, &read_etc("group"))
            .map_err(|e| RuntimeError::Start { message: e.to_string(), code: 125 })?;
        if !groups.contains(&nix::unistd::Gid::from_raw(gid)) {
            groups.push(nix::unistd::Gid::from_raw(gid));
        }
    }
    if p.oom_score_adj != 0 {
        std::fs::write("/proc/self/oom_score_adj", p.oom_score_adj.to_string())
            .map_err(RuntimeError::io("set oom_score_adj"))?;
    }
    nix::unistd::setgroups(&groups).map_err(RuntimeError::sys("setgroups"))?;
    let gid = nix::unistd::Gid::from_raw(id.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(RuntimeError::sys("setgid"))?;
    let uid = nix::unistd::Uid::from_raw(id.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(RuntimeError::sys("setuid"))?;
    caps::apply(if id.uid == 0 { &sec.capabilities } else { &[] })?;
    let cwd = if p.cwd.is_empty() { "/" } else { p.cwd.as_str() };
    nix::unistd::chdir(cwd).map_err(|e| RuntimeError::Start {
        message: format!("cannot change to working directory {cwd}: {e}"),
        code: 125,
    })?;
    if sec.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(RuntimeError::sys("no_new_privs"))?;
    }
    let prog = resolve_exe(&p.args, &env)?;
    let argv: Vec<CString> = p
        .args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| RuntimeError::Invalid("argument contains NUL".into()))?;
    let envp: Vec<CString> = env
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| RuntimeError::Invalid("environment contains NUL".into()))?;
    // nothing of the host's descriptors survives exec (CVE-2024-21626 class)
    // SAFETY: close_range only marks descriptors close-on-exec
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if sec.no_new_privs {
        seccomp::install(progs)?;
    }
    let e = nix::unistd::execve(&prog, &argv, &envp).err().unwrap_or(nix::Error::EINVAL);
    let name = p.args.first().cloned().unwrap_or_default();
    Err(match e {
        nix::Error::ENOENT => {
            RuntimeError::Start { message: format!("exec: {name:?}: no such file or directory"), code: 127 }
        }
        nix::Error::EACCES => RuntimeError::Start { message: format!("exec: {name:?}: permission denied"), code: 126 },
        e => RuntimeError::Start { message: format!("exec: {name:?}: {e}"), code: 126 },
    })
}

/// Finds argv[0] in the container's PATH (after pivot_root).
fn resolve_exe(args: &[String], env: &[String]) -> Result<CString, RuntimeError> {
    let name = args.first().ok_or_else(|| RuntimeError::Start { message: "no command specified".into(), code: 125 })?;
    let c = |s: &str| CString::new(s).map_err(|_| RuntimeError::Invalid("command contains NUL".into()));
    if name.contains('/') {
        return c(name);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = format!("{dir}/{name}");
        if let Ok(m) = std::fs::metadata(&cand) {
            if m.is_file() {
                return c(&cand);
            }
        }
    }
    Err(RuntimeError::Start { message: format!("exec: {name:?}: executable file not found in $PATH"), code: 127 })
}

/// Creates the container's init process running `spec.process`.
///
/// The child is moved into `cgroup` before it does anything, gets a cgroup
/// namespace rooted there, builds its root filesystem, pivots and execs.
/// It dies with SIGKILL if the calling process dies (`PR_SET_PDEATHSIG`).
///
/// `plumb(pid)` runs in the caller after the child exists and before it
/// continues: the place to move network interfaces into its namespace.
pub fn create(
    spec: &Spec,
    cgroup: Option<&Cgroup>,
    io: Stdio,
    plumb: &dyn Fn(u32) -> Result<(), RuntimeError>,
) -> Result<Child, RuntimeError> {
    let sec = Security::of(spec);
    let progs = sec.programs()?;
    let (syncr, syncw) = pipe()?;
    let (errr, errw) = pipe()?;
    let ptys = pty_pair(io)?;
    let mut flags = CloneFlags::CLONE_NEWNS;
    for (host, ns) in [
        (spec.pid_host || spec.pid_join.is_some(), CloneFlags::CLONE_NEWPID),
        (spec.ipc_host || spec.ipc_join.is_some(), CloneFlags::CLONE_NEWIPC),
        (spec.uts_host || spec.uts_join.is_some(), CloneFlags::CLONE_NEWUTS),
    ] {
        if !host {
            flags |= ns;
        }
    }
    if spec.net == NetNs::New {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let cgroup2 = cgroup.is_some_and(|c| c.version == crate::cgroup::Version::V2);
    // on a v1 host, the hierarchies the container's cgroup is in (JVMs and
    // Go's runtime size themselves from /sys/fs/cgroup)
    let v1_views = cgroup.map(|c| c.v1_views()).unwrap_or_default();
    // the PID namespace (new, or a pod's by path) is the forking thread's
    // for the moment; the child unshares the others itself and says so
    // before the parent plumbs its network
    let (unshared_r, unshared_w) = pipe()?;
    let (pid, pidfd) = fork_in_pid_ns(flags.contains(CloneFlags::CLONE_NEWPID), spec.pid_join.as_deref())?;
    if pid.as_raw() == 0 {
        // ---- child ----
        drop(syncw);
        drop(errr);
        drop(unshared_r);
        let r = (|| -> Result<(), RuntimeError> {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(RuntimeError::sys("pdeathsig"))?;
            nix::sched::unshare(flags - CloneFlags::CLONE_NEWPID).map_err(RuntimeError::sys("new namespaces"))?;
            std::fs::File::from(unshared_w).write_all(b"1").map_err(RuntimeError::io("sync parent"))?;
            if let NetNs::Path(p) = &spec.net {
                let f = std::fs::File::open(p)
                    .map_err(RuntimeError::io(format!("open network namespace {}", p.display())))?;
                nix::sched::setns(f, CloneFlags::CLONE_NEWNET).map_err(RuntimeError::sys("join network namespace"))?;
            }
            // a pod's IPC and UTS namespaces, by path
            for (path, ns, what) in
                [(&spec.ipc_join, CloneFlags::CLONE_NEWIPC, "IPC"), (&spec.uts_join, CloneFlags::CLONE_NEWUTS, "UTS")]
            {
                if let Some(p) = path {
                    let f = std::fs::File::open(p)
                        .map_err(RuntimeError::io(format!("open {what} namespace {}", p.display())))?;
                    nix::sched::setns(f, ns).map_err(RuntimeError::sys("join a namespace"))?;
                }
            }
            reset_signals();
            // the host's UTS namespace keeps the host's names; a new one
            // without a name keeps the copy it starts with (OCI's rule)
            if !spec.uts_host && !spec.hostname.is_empty() {
                nix::unistd::sethostname(&spec.hostname).map_err(RuntimeError::sys("sethostname"))?;
                if !spec.domainname.is_empty() {
                    set_domainname(&spec.domainname)?;
                }
            }
            if spec.net == NetNs::New {
                // before /proc/sys turns read-only and the interfaces move in;
                // the user's --sysctl below may turn it back on. A dual-stack
                // switch keeps IPv6, its addresses usable at once (moat
                // numbers them: no duplicate address detection)
                if spec.interfaces.iter().any(|i| i.ip6.is_some()) {
                    let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/accept_dad", "0");
                } else {
                    crate::netconf::disable_ipv6("default");
                }
            }
            // the container's own network and IPC namespaces: this /proc/sys shows them
            for (k, v) in &spec.sysctls {
                let path = format!("/proc/sys/{}", k.replace('.', "/"));
                std::fs::write(&path, v).map_err(|e| RuntimeError::Start {
                    message: format!("cannot set sysctl {k}={v}: {e}"),
                    code: 125,
                })?;
            }
            // build the root while the parent moves us into the cgroup and
            // plugs in our network (joining a cgroup waits for an RCU grace
            // period: ~10 ms that this overlaps)
            mounts::setup(spec)?;
            // wait for the parent (EOF: it died; from then on PDEATHSIG covers us)
            wait_for_parent(syncr)?;
            if cgroup.is_some() {
                if !spec.cgroupns_host {
                    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).map_err(RuntimeError::sys("cgroup namespace"))?;
                }
                if cgroup2 {
                    let flags = nix::mount::MsFlags::MS_NOSUID
                        | nix::mount::MsFlags::MS_NODEV
                        | nix::mount::MsFlags::MS_NOEXEC
                        | if spec.privileged { nix::mount::MsFlags::empty() } else { nix::mount::MsFlags::MS_RDONLY };
                    nix::mount::mount(Some("cgroup2"), "/sys/fs/cgroup", Some("cgroup2"), flags, None::<&str>)
                        .map_err(RuntimeError::sys("mount /sys/fs/cgroup"))?;
                } else if !v1_views.is_empty() && !spec.cgroupns_host {
                    mount_v1_cgroups(&v1_views, spec.privileged)?;
                }
            }
            if spec.net == NetNs::New {
                crate::netconf::configure(&spec.interfaces)?;
            }
            setup_stdio(io, ptys.as_ref().map(|p| &p.1), true)?;
            // Docker makes a missing working directory of the container
            // (0755, root's) before it starts; an exec's must exist. (On a
            // read-only root this fails, and the chdir says why.)
            if !spec.process.cwd.is_empty() {
                use std::os::unix::fs::DirBuilderExt;
                let _ = std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&spec.process.cwd);
            }
            finish_and_exec(&spec.process, &sec, &progs)
        })();
        match r {
            Ok(()) => die(&errw, RuntimeError::Invalid("exec returned".into())),
            Err(e) => die(&errw, e),
        }
    }
    drop(syncr);
    drop(errw);
    drop(unshared_w);
    // (end of file: the child failed, which `release` reports)
    let _ = std::fs::File::from(unshared_r).read(&mut [0u8; 1]);
    release(pid, pidfd, cgroup, plumb, syncw, errr, ptys)
}

/// Runs `process` inside the container whose init is `init` (a pidfd).
///
/// The child joins the init's mount, uts, ipc, net and cgroup namespaces and
/// the cgroup; `pidns_of_init`/`own_pidns` switch the caller's
/// pid-namespace-for-children around the fork so the child lands in the
/// container's pid namespace as a direct child of the caller.
pub fn exec(
    init: &OwnedFd,
    own_pidns: &OwnedFd,
    process: &Process,
    sec: &Security,
    cgroup: Option<&Cgroup>,
    io: Stdio,
) -> Result<Child, RuntimeError> {
    let progs = sec.programs()?;
    let (syncr, syncw) = pipe()?;
    let (errr, errw) = pipe()?;
    let ptys = pty_pair(io)?;
    nix::sched::setns(init, CloneFlags::CLONE_NEWPID).map_err(RuntimeError::sys("enter pid namespace"))?;
    let forked = fork();
    let reset = nix::sched::setns(own_pidns, CloneFlags::CLONE_NEWPID);
    let (pid, pidfd) = forked?;
    if pid.as_raw() == 0 {
        drop(syncw);
        drop(errr);
        let r = (|| -> Result<(), RuntimeError> {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(RuntimeError::sys("pdeathsig"))?;
            // not dumpable: other container processes cannot open our /proc entries
            nix::sys::prctl::set_dumpable(false).map_err(RuntimeError::sys("set_dumpable"))?;
            wait_for_parent(syncr)?;
            let ns = CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWCGROUP;
            nix::sched::setns(init, ns).map_err(RuntimeError::sys("enter container namespaces"))?;
            reset_signals();
            setup_stdio(io, ptys.as_ref().map(|p| &p.1), false)?;
            finish_and_exec(process, sec, &progs)
        })();
        match r {
            Ok(()) => die(&errw, RuntimeError::Invalid("exec returned".into())),
            Err(e) => die(&errw, e),
        }
    }
    reset.map_err(RuntimeError::sys("leave pid namespace"))?;
    drop(syncr);
    drop(errw);
    release(pid, pidfd, cgroup, &|_| Ok(()), syncw, errr, ptys)
}

/// Parent side after the clone: cgroup, `plumb`, release the child, take its
/// terminal (if any), and wait until it has exec'd or failed.
fn release(
    pid: Pid,
    pidfd: Option<OwnedFd>,
    cgroup: Option<&Cgroup>,
    plumb: &dyn Fn(u32) -> Result<(), RuntimeError>,
    syncw: OwnedFd,
    errr: OwnedFd,
    ptys: Option<(OwnedFd, OwnedFd)>,
) -> Result<Child, RuntimeError> {
    let pidfd = pidfd.ok_or_else(|| RuntimeError::Invalid("clone returned no pidfd".into()))?;
    let setup = (|| -> Result<(), RuntimeError> {
        if let Some(cg) = cgroup {
            cg.add(pid.as_raw() as u32)?;
        }
        plumb(pid.as_raw() as u32)?;
        std::fs::File::from(syncw).write_all(b"1").map_err(RuntimeError::io("sync child"))
    })();
    if let Err(e) = setup {
        // the child usually failed first (a bad mount, a hostile image) and
        // that broke our side (its network namespace vanished, the sync pipe
        // closed): its own report is the real error
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(match await_exec(errr, pid) {
            Err(child) => child,
            Ok(()) => e,
        });
    }
    let pty = ptys.map(|(ours, theirs)| {
        drop(theirs);
        recv_pty(&ours)
    });
    await_exec(errr, pid)?;
    let pty = match pty {
        Some(None) => return Err(RuntimeError::Invalid("the container did not hand over its terminal".into())),
        Some(p) => p,
        None => None,
    };
    Ok(Child { pid, pidfd, pty })
}

/// Opens the caller's own pid namespace (to restore it after `exec`).
pub fn own_pidns() -> Result<OwnedFd, RuntimeError> {
    std::fs::File::open("/proc/self/ns/pid").map(OwnedFd::from).map_err(RuntimeError::io("open own pid namespace"))
}

/// `setdomainname(2)` in the child's new UTS namespace (nix has no wrapper).
fn set_domainname(name: &str) -> Result<(), RuntimeError> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call
    let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        return Err(RuntimeError::sys("setdomainname")(nix::errno::Errno::last()));
    }
    Ok(())
}

/// Docker's `/sys/fs/cgroup` on a v1 host: a tmpfs with each hierarchy the
/// container is in mounted under the host's name for it (read-only unless
/// privileged), the co-mounted controllers' names as symlinks. Runs inside
/// the container's cgroup namespace, so each shows the container's cgroup
/// as its root.
fn mount_v1_cgroups(views: &[crate::cgroup::V1View], privileged: bool) -> Result<(), RuntimeError> {
    use nix::mount::MsFlags;
    let base = std::path::Path::new("/sys/fs/cgroup");
    let std_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(Some("tmpfs"), base, Some("tmpfs"), std_flags, Some("mode=755"))
        .map_err(RuntimeError::sys("mount /sys/fs/cgroup"))?;
    let ro = if privileged { MsFlags::empty() } else { MsFlags::MS_RDONLY };
    for v in views {
        let dir = base.join(&v.name);
        std::fs::create_dir(&dir).map_err(RuntimeError::io(format!("create {}", dir.display())))?;
        nix::mount::mount(Some("cgroup"), &dir, Some("cgroup"), std_flags | ro, Some(v.controllers.as_str()))
            .map_err(RuntimeError::sys(format!("mount the {} cgroup hierarchy", v.controllers)))?;
        for c in v.controllers.split(',').filter(|c| *c != v.name) {
            let _ = std::os::unix::fs::symlink(&v.name, base.join(c));
        }
    }
    nix::mount::mount(
        None::<&str>,
        base,
        None::<&str>,
        MsFlags::MS_REMOUNT | std_flags | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(RuntimeError::sys("remount /sys/fs/cgroup read-only"))?;
    Ok(())
}
