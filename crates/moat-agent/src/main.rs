//! `moat-agent`: PID 1 of a moat utility VM.
//!
//! Stage 1 (in the initramfs): mount /proc, /sys, /dev; load the virtio
//! modules; move onto a tmpfs root (the container runtime's `pivot_root`
//! cannot work from the initramfs) and re-exec. Stage 2: mount cgroup2 and
//! the virtio-fs root, open the virtio-serial port `ctl0`, say `Ready`, then
//! serve the host: create the container's main process with the same
//! namespace runtime as process isolation, run exec sessions, relay stdio
//! with per-session credit (flow control), deliver signals and resizes,
//! answer `Top`/`Stats`, report exits, power off on `Shutdown`.

use moat_proto::{Decoder, Frame, Kind, Msg, WINDOW};
use moat_runtime::cgroup::Cgroup;
use moat_runtime::spawn::{self, Child, Security};
use nix::mount::{mount, MsFlags};
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use moat_proto::GUEST_ROOT as ROOT_MOUNT;

fn log(msg: &str) {
    let _ = std::io::stderr().write_all(format!("moat-agent: {msg}\n").as_bytes());
}

fn fatal(msg: &str) -> ! {
    log(msg);
    poweroff()
}

fn poweroff() -> ! {
    // SAFETY: sync and power off; nothing to return to
    unsafe { libc::sync() };
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    std::process::exit(1)
}

fn mnt(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    mount(Some(src), target, Some(fstype), flags, data).map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

fn base_mounts() -> Result<(), String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", nosuid, None)?;
    mnt("sysfs", "/sys", "sysfs", nosuid, None)?;
    mnt("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))
}

fn load_modules() -> Result<(), String> {
    let order = std::fs::read_to_string("/modules/order").map_err(|e| format!("read module list: {e}"))?;
    for name in order.lines().filter(|l| !l.is_empty()) {
        let f = std::fs::File::open(format!("/modules/{name}")).map_err(|e| format!("open {name}: {e}"))?;
        // SAFETY: finit_module on an fd we own with empty params
        let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), 0) };
        if r < 0 && nix::Error::last() != nix::Error::EEXIST {
            return Err(format!("load module {name}: {}", nix::Error::last()));
        }
    }
    Ok(())
}

/// Copies the agent onto a tmpfs, makes that the root, and re-execs there.
fn switch_root() -> Result<(), String> {
    mnt("tmpfs", "/newroot", "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
    std::fs::copy("/init", "/newroot/init").map_err(|e| format!("copy agent: {e}"))?;
    for d in ["proc", "sys", "dev", "run", "tmp"] {
        let _ = std::fs::create_dir_all(format!("/newroot/{d}"));
    }
    // free the initramfs copy
    let _ = std::fs::remove_dir_all("/modules");
    let _ = std::fs::remove_file("/init");
    nix::unistd::chdir("/newroot").map_err(|e| format!("chdir: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|e| format!("move root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir: {e}"))?;
    let prog = c"/init";
    let arg = c"stage2";
    let _ = nix::unistd::execv(prog, &[prog, arg]);
    Err(format!("re-exec agent: {}", nix::Error::last()))
}

/// Opens the virtio-serial port named `name` once it appears.
fn open_port(name: &str) -> Result<OwnedFd, String> {
    for _ in 0..20_000 {
        if let Ok(rd) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in rd.flatten() {
                let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if n.trim() == name {
                    let dev = format!("/dev/{}", e.file_name().to_string_lossy());
                    if let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(&dev) {
                        return Ok(OwnedFd::from(f));
                    }
                }
            }
        }
        // the port appears asynchronously after virtio_console probes
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    Err(format!("virtio-serial port {name} never appeared"))
}

fn nonblock(fd: RawFd) {
    // SAFETY: fcntl on our own fd
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

struct Session {
    child: Child,
    stdin: spawn::StdinQueue,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    tty: bool,
    /// Bytes we may still send to the host.
    credit: u64,
    exited: bool,
}

struct Agent {
    port: OwnedFd,
    dec: Decoder,
    out: Vec<u8>,
    sessions: HashMap<u32, Session>,
    cgroup: Option<Cgroup>,
    spec: Option<moat_runtime::spec::Spec>,
    own_pidns: OwnedFd,
}

fn session(mut ends: spawn::Ends, mut child: Child, tty: bool) -> Session {
    ends.take_pty(&mut child);
    Session {
        child,
        stdin: spawn::StdinQueue::new(ends.stdin),
        out: ends.out,
        err: ends.err,
        tty,
        credit: WINDOW,
        exited: false,
    }
}

fn exit_code(pid: nix::unistd::Pid) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    match waitpid(pid, None) {
        Ok(WaitStatus::Exited(_, c)) => c,
        Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
        _ => 255,
    }
}

impl Agent {
    fn send(&mut self, sid: u32, m: &Msg) {
        Frame::control(sid, m).encode_into(&mut self.out);
    }

    fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            // SAFETY: writing our buffer to the port
            let n =
                unsafe { libc::write(self.port.as_raw_fd(), self.out.as_ptr() as *const libc::c_void, self.out.len()) };
            if n <= 0 {
                return nix::Error::last() == nix::Error::EAGAIN;
            }
            self.out.drain(..n as usize);
        }
        true
    }

    fn handle(&mut self, f: Frame) {
        let sid = f.session;
        match f.kind {
            Kind::Stdin => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.stdin.push(&f.data);
                }
                return;
            }
            Kind::StdinEof => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    let tty = s.tty;
                    s.stdin.close(tty);
                }
                return;
            }
            Kind::Stdout | Kind::Stderr => return,
            Kind::Control => {}
        }
        let msg = match f.msg() {
            Ok(m) => m,
            Err(e) => {
                log(&format!("bad frame: {e}"));
                return;
            }
        };
        match msg {
            Msg::Create { spec } => match self.create(&spec) {
                Ok(pid) => self.send(sid, &Msg::Started { pid }),
                Err((message, code)) => {
                    self.send(sid, &Msg::Error { message });
                    self.send(sid, &Msg::Exit { code, oom_killed: false });
                }
            },
            Msg::Exec(x) => match self.exec(sid, x) {
                Ok(pid) => self.send(sid, &Msg::Started { pid }),
                Err((message, code)) => {
                    self.send(sid, &Msg::Error { message });
                    self.send(sid, &Msg::Exit { code, oom_killed: false });
                }
            },
            Msg::Signal { signal } => {
                if let Some(s) = self.sessions.get(&sid) {
                    if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
                        let _ = nix::sys::signal::kill(s.child.pid, sig);
                    }
                }
            }
            Msg::Resize(ws) => {
                if let Some(s) = self.sessions.get(&sid) {
                    if let (true, Some(fd)) = (s.tty, &s.out) {
                        let w = libc::winsize { ws_row: ws.rows, ws_col: ws.cols, ws_xpixel: 0, ws_ypixel: 0 };
                        // SAFETY: ioctl on the pty master
                        unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &w) };
                    }
                }
            }
            Msg::Credit { bytes } => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.credit += bytes;
                }
            }
            Msg::Top => {
                let pids = self.cgroup.as_ref().map(|c| c.pids()).unwrap_or_default();
                let rows = moat_runtime::procfs::list(&pids, false);
                self.send(sid, &Msg::Procs { rows });
            }
            Msg::Stats => {
                let (mem_usage, mem_limit, cpu_ns, pids) = self.cgroup.as_ref().map(|c| c.stats()).unwrap_or_default();
                self.send(sid, &Msg::Usage(moat_proto::Stats { mem_usage, mem_limit, cpu_ns, pids }));
            }
            Msg::Shutdown => {
                for s in self.sessions.values() {
                    let _ = nix::sys::signal::kill(s.child.pid, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = self.flush();
                poweroff();
            }
            other => self.send(sid, &Msg::Error { message: format!("agent: unexpected {other:?}") }),
        }
    }

    fn create(&mut self, json: &str) -> Result<u32, (String, i32)> {
        let c: moat_runtime::guest::Create =
            serde_json::from_str(json).map_err(|e| (format!("bad create request: {e}"), 125))?;
        if self.cgroup.is_none() {
            self.cgroup = Some(Cgroup::create(&c.cgroup, &c.limits).map_err(|e| (e.to_string(), 125))?);
            // the guest's own network: the container shares it
            if c.spec.net == moat_runtime::spec::NetNs::Host {
                moat_runtime::netconf::configure(&c.spec.interfaces).map_err(|e| (e.to_string(), 125))?;
            }
        }
        let (kept, io, give) = spawn::stdio(c.spec.process.tty, c.stdin, None).map_err(|e| (e.to_string(), 125))?;
        let child = spawn::create(&c.spec, self.cgroup.as_ref(), io, &|_| Ok(())).map_err(|e| match e {
            moat_runtime::RuntimeError::Start { message, code } => (message, code),
            e => (e.to_string(), 125),
        })?;
        drop(give);
        let pid = child.pid.as_raw() as u32;
        let tty = c.spec.process.tty;
        self.sessions.insert(0, session(kept, child, tty));
        self.spec = Some(c.spec);
        Ok(pid)
    }

    fn exec(&mut self, sid: u32, x: moat_proto::ExecSpec) -> Result<u32, (String, i32)> {
        let spec = self.spec.as_ref().ok_or(("container is not running".to_string(), 126))?;
        let main = self.sessions.get(&0).filter(|s| !s.exited).ok_or(("container is not running".to_string(), 126))?;
        let mut env = spec.process.env.clone();
        for e in &x.env {
            let k = e.split('=').next().unwrap_or("");
            env.retain(|v| v.split('=').next() != Some(k));
            env.push(e.clone());
        }
        let process = moat_runtime::spec::Process {
            args: x.args.clone(),
            env,
            cwd: x.workdir.clone().unwrap_or_else(|| spec.process.cwd.clone()),
            user: x.user.clone().unwrap_or_else(|| spec.process.user.clone()),
            tty: x.tty,
            rlimits: spec.process.rlimits.clone(),
        };
        let mut sec = Security::of(spec);
        if x.privileged {
            sec.capabilities = moat_runtime::caps::compute(&[], &[], true).unwrap_or_default();
            sec.seccomp = moat_runtime::spec::Seccomp::Unconfined;
        }
        let (kept, io, give) =
            spawn::stdio(x.tty, x.stdin, x.size.map(|w| (w.rows, w.cols))).map_err(|e| (e.to_string(), 126))?;
        let child =
            spawn::exec(&main.child.pidfd, &self.own_pidns, &process, &sec, self.cgroup.as_ref(), io).map_err(|e| {
                match e {
                    moat_runtime::RuntimeError::Start { message, code } => (message, code),
                    e => (e.to_string(), 126),
                }
            })?;
        drop(give);
        let pid = child.pid.as_raw() as u32;
        self.sessions.insert(sid, session(kept, child, x.tty));
        Ok(pid)
    }

    /// Reads a session's output within its credit.
    fn read_out(&mut self, sid: u32, err: bool) {
        let Some(s) = self.sessions.get_mut(&sid) else { return };
        let slot = if err { &mut s.err } else { &mut s.out };
        let Some(fd) = slot.as_ref() else { return };
        let want = s.credit.min(64 << 10) as usize;
        if want == 0 {
            return;
        }
        let mut buf = vec![0u8; want];
        // SAFETY: read into our buffer
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, want) };
        if n < 0 && nix::Error::last() == nix::Error::EAGAIN {
            return;
        }
        if n <= 0 {
            *slot = None;
            return;
        }
        s.credit -= n as u64;
        buf.truncate(n as usize);
        Frame { kind: if err { Kind::Stderr } else { Kind::Stdout }, session: sid, data: buf }
            .encode_into(&mut self.out);
    }

    fn write_in(&mut self, sid: u32) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.stdin.flush();
        }
    }

    fn reap(&mut self, sid: u32) {
        let Some(s) = self.sessions.get_mut(&sid) else { return };
        if s.exited {
            return;
        }
        s.exited = true;
        let code = exit_code(s.child.pid);
        // hand over what is still buffered, ignoring credit: the session is over
        for err in [false, true] {
            while let Some(s) = self.sessions.get_mut(&sid) {
                s.credit = s.credit.max(64 << 10);
                let had = if err { s.err.is_some() } else { s.out.is_some() };
                if !had {
                    break;
                }
                let fd = if err { s.err.as_ref() } else { s.out.as_ref() }.map(|f| f.as_raw_fd()).unwrap_or(-1);
                let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: poll one fd without waiting
                if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
                    break;
                }
                self.read_out(sid, err);
            }
        }
        let oom = sid == 0 && self.cgroup.as_ref().is_some_and(|c| c.oom_killed());
        self.send(sid, &Msg::Exit { code, oom_killed: oom });
        self.sessions.remove(&sid);
    }

    fn reap_strays(&self) {
        use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
        loop {
            let peek = waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT);
            let Some(pid) = peek.ok().and_then(|st| st.pid()) else { return };
            if self.sessions.values().any(|s| s.child.pid == pid) {
                return;
            }
            let _ = waitpid(pid, None);
        }
    }

    fn run(&mut self) {
        loop {
            let mut fds = vec![libc::pollfd {
                fd: self.port.as_raw_fd(),
                events: libc::POLLIN | if self.out.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            }];
            #[derive(Clone, Copy)]
            enum T {
                Out(u32, bool),
                In(u32),
                Pid(u32),
            }
            let mut toks = vec![None];
            for (sid, s) in &self.sessions {
                if s.credit > 0 {
                    for (fd, err) in [(&s.out, false), (&s.err, true)] {
                        if let Some(fd) = fd {
                            fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                            toks.push(Some(T::Out(*sid, err)));
                        }
                    }
                }
                if let Some(fd) = s.stdin.pending() {
                    fds.push(libc::pollfd { fd, events: libc::POLLOUT, revents: 0 });
                    toks.push(Some(T::In(*sid)));
                }
                fds.push(libc::pollfd { fd: s.child.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
                toks.push(Some(T::Pid(*sid)));
            }
            // SAFETY: poll over our array
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                continue;
            }
            for (p, t) in fds.iter().zip(toks) {
                if p.revents == 0 {
                    continue;
                }
                match t {
                    None => {
                        if p.revents & libc::POLLOUT != 0 && !self.flush() {
                            fatal("host channel write failed");
                        }
                        if p.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                            let mut buf = [0u8; 64 << 10];
                            // SAFETY: read from the port
                            let r = unsafe {
                                libc::read(self.port.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len())
                            };
                            if r > 0 {
                                self.dec.push(&buf[..r as usize]);
                                loop {
                                    match self.dec.next_frame() {
                                        Ok(Some(f)) => self.handle(f),
                                        Ok(None) => break,
                                        Err(e) => fatal(&format!("host sent garbage: {e}")),
                                    }
                                }
                            } else if r == 0 {
                                // host went away: nothing left to serve
                                poweroff();
                            }
                        }
                    }
                    Some(T::Out(sid, err)) => self.read_out(sid, err),
                    Some(T::In(sid)) => self.write_in(sid),
                    Some(T::Pid(sid)) => self.reap(sid),
                }
            }
            // reap strays reparented to us (never a session's process: its pidfd reports that)
            self.reap_strays();
            if !self.flush() {
                fatal("host channel write failed");
            }
        }
    }
}

fn stage2() -> Result<(), String> {
    base_mounts()?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None)?;
    mnt("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;
    let port = open_port(moat_proto::CONTROL_PORT)?;
    mnt(moat_proto::VIRTIOFS_TAG, ROOT_MOUNT, "virtiofs", MsFlags::empty(), None)?;
    let _ = std::fs::create_dir_all(moat_proto::GUEST_CTR_ROOT);
    nonblock(port.as_raw_fd());
    let own_pidns = spawn::own_pidns().map_err(|e| e.to_string())?;
    let mut a = Agent {
        port,
        dec: Decoder::default(),
        out: Vec::new(),
        sessions: HashMap::new(),
        cgroup: None,
        spec: None,
        own_pidns,
    };
    a.send(0, &Msg::Ready);
    a.run();
    Ok(())
}

fn main() {
    let stage2_arg = std::env::args().nth(1).as_deref() == Some("stage2");
    if std::process::id() != 1 {
        eprintln!("moat-agent runs as PID 1 inside a moat utility VM");
        std::process::exit(2);
    }
    let r =
        if stage2_arg { stage2() } else { base_mounts().and_then(|()| load_modules()).and_then(|()| switch_root()) };
    match r {
        Err(e) => fatal(&e),
        Ok(()) => poweroff(),
    }
}
