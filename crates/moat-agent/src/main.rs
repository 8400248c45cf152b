//! `moat-agent`: PID 1 of a moat utility VM.
//!
//! Stage 1 (in the initramfs): mount /proc, /sys, /dev; load the virtio
//! modules; move onto a tmpfs root (the container runtime's `pivot_root`
//! cannot work from the initramfs) and re-exec. Stage 2: mount cgroup2 and
//! the virtio-fs root, open the virtio-serial port `ctl0`, say `Ready`, then
//! serve the host: create each container's main process (a sandbox holds
//! one or more, each with its own root under the share, cgroup, mount and
//! PID namespace; they share the guest's network) with the same namespace
//! runtime as process isolation, run exec sessions, relay stdio
//! with per-session credit (flow control), deliver signals and resizes,
//! answer `Top`/`Stats`, report exits, power off on `Shutdown`.
//!
//! Booted as a template (`moat.template` on the kernel command line), stage
//! 2 mounts no share: it prepares what every clone needs (cgroup tree, device
//! filter, `lo`), drops the page cache, says `Ready` and waits; every
//! clone restored from that snapshot then gets `Resume` (fresh entropy, the
//! wall clock, a hostname), reseeds the RNG, mounts its own root and says
//! `Ready` again.

use moat_proto::{AgentEvent, AgentRequest, Decoder, Frame, Kind, PROTOCOL_VERSION, WINDOW};
use moat_runtime::cgroup::Cgroup;
use moat_runtime::relay::{Event, Relay, Source, READ_CHUNK};
use moat_runtime::RuntimeError;
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

/// Syncs (for at most 2 s) and powers the VM off, which ends QEMU.
fn poweroff() -> ! {
    // the sync waits for virtiofsd, which may be gone: the VM must still go away
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new().name("sync".into()).spawn(move || {
        // SAFETY: sync takes no arguments
        unsafe { libc::sync() };
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
    poweroff_now()
}

/// Powers the VM off without a sync (nothing on the host would receive it).
fn poweroff_now() -> ! {
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

/// A container of the VM: its relay (processes, cgroup) and the wire
/// session of its main process.
struct Ctr {
    relay: Relay,
    main: u32,
}

impl Ctr {
    /// The relay's session for wire session `wire` (its main process is the relay's 0).
    fn local(&self, wire: u32) -> u32 {
        if wire == self.main {
            0
        } else {
            wire
        }
    }

    /// The wire session of the relay's session `local`.
    fn wire(&self, local: u32) -> u32 {
        if local == 0 {
            self.main
        } else {
            local
        }
    }
}

/// The guest side of a sandbox: one relay per container (the same relay
/// the shim uses for process isolation), served over the virtio-serial
/// port with per-session credit (the host grants how many output bytes may
/// be in flight). Every session belongs to one container.
struct Agent {
    port: OwnedFd,
    /// The sandbox's share is mounted (at once on a cold boot, after `Resume` in a clone).
    mounted: bool,
    dec: Decoder,
    out: Vec<u8>,
    ctrs: HashMap<String, Ctr>,
    /// Wire session → its container.
    sessions: HashMap<u32, String>,
    credit: HashMap<u32, u64>,
    /// The guest's NICs are configured (by the first container that has any).
    net_done: bool,
}

fn not_running() -> RuntimeError {
    RuntimeError::Start { message: "container is not running".into(), code: 126 }
}

impl Agent {
    fn send(&mut self, sid: u32, m: &AgentEvent) {
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

    /// The container of wire session `sid` and the relay's session for it.
    fn session(&mut self, sid: u32) -> Option<(&mut Relay, u32)> {
        let cid = self.sessions.get(&sid)?;
        let c = self.ctrs.get_mut(cid)?;
        let local = c.local(sid);
        Some((&mut c.relay, local))
    }

    fn relay(&mut self, cid: &str) -> Option<&mut Relay> {
        self.ctrs.get_mut(cid).map(|c| &mut c.relay)
    }

    fn handle(&mut self, f: Frame) {
        let sid = f.session;
        match f.kind {
            Kind::Stdin => {
                if let Some((r, l)) = self.session(sid) {
                    r.stdin(l, &f.data);
                }
                return;
            }
            Kind::StdinEof => {
                if let Some((r, l)) = self.session(sid) {
                    r.close_stdin(l);
                }
                return;
            }
            Kind::Stdout | Kind::Stderr => return,
            Kind::Control => {}
        }
        let req: AgentRequest = match f.msg() {
            Ok(m) => m,
            Err(e) => {
                log(&format!("bad frame: {e}"));
                return;
            }
        };
        let done = |r: Option<Result<Vec<String>, RuntimeError>>| match r {
            Some(Ok(warnings)) => AgentEvent::Ok { warnings },
            Some(Err(e)) => AgentEvent::Error { message: e.to_string() },
            None => AgentEvent::Error { message: "container is not running".into() },
        };
        let reply = match req {
            AgentRequest::Create(c) => {
                let r = self.create(sid, *c);
                self.started(sid, r)
            }
            AgentRequest::Exec { cid, exec } => {
                self.sessions.insert(sid, cid.clone());
                let r = match self.relay(&cid) {
                    Some(r) => r.exec(sid, &exec),
                    None => Err(not_running()),
                };
                self.started(sid, r)
            }
            AgentRequest::Signal { signal } => {
                if let Some((r, l)) = self.session(sid) {
                    r.signal(l, signal);
                }
                None
            }
            AgentRequest::Resize(ws) => {
                if let Some((r, l)) = self.session(sid) {
                    r.resize(l, ws);
                }
                None
            }
            AgentRequest::Credit { bytes } => {
                *self.credit.entry(sid).or_default() += bytes;
                None
            }
            AgentRequest::Top { cid } => {
                Some(AgentEvent::Procs { rows: self.relay(&cid).map(|r| r.top()).unwrap_or_default() })
            }
            AgentRequest::Stats { cid } => {
                Some(AgentEvent::Usage(self.relay(&cid).map(|r| r.stats()).unwrap_or_default()))
            }
            AgentRequest::Pause { cid } => Some(done(self.relay(&cid).map(|r| r.freeze(true).map(|()| Vec::new())))),
            AgentRequest::Unpause { cid } => Some(done(self.relay(&cid).map(|r| r.freeze(false).map(|()| Vec::new())))),
            AgentRequest::Update { cid, limits } => Some(done(self.relay(&cid).map(|r| r.update_limits(&limits)))),
            AgentRequest::Remove { cid } => {
                if let Some(mut c) = self.ctrs.remove(&cid) {
                    c.relay.kill_all();
                    if let Some(cg) = c.relay.cgroup() {
                        if let Err(e) = cg.destroy() {
                            log(&format!("remove {cid}: {e}"));
                        }
                    }
                }
                self.sessions.retain(|_, c| *c != cid);
                Some(AgentEvent::Ok { warnings: Vec::new() })
            }
            AgentRequest::Resume { entropy, unix_nanos, hostname } => {
                Some(match resume(&entropy, unix_nanos, &hostname, !self.mounted) {
                    Ok(()) => {
                        self.mounted = true;
                        AgentEvent::Ready { version: PROTOCOL_VERSION }
                    }
                    Err(e) => AgentEvent::Error { message: e },
                })
            }
            AgentRequest::Shutdown => {
                for c in self.ctrs.values_mut() {
                    c.relay.kill_all();
                }
                // once the guest's dirty pages are on the host, the host may
                // end QEMU without waiting for the kernel's power-off path
                // SAFETY: sync has no preconditions
                unsafe { libc::sync() };
                self.send(sid, &AgentEvent::Ok { warnings: Vec::new() });
                for _ in 0..100 {
                    if self.flush() && self.out.is_empty() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                poweroff();
            }
        };
        if let Some(m) = reply {
            self.send(sid, &m);
        }
    }

    /// `Started`, or `Error` + `Exit` with the failure's code.
    fn started(&mut self, sid: u32, r: Result<u32, RuntimeError>) -> Option<AgentEvent> {
        match r {
            Ok(pid) => {
                self.credit.insert(sid, WINDOW);
                Some(AgentEvent::Started { pid })
            }
            Err(e) => {
                self.send(sid, &AgentEvent::Error { message: e.to_string() });
                Some(AgentEvent::Exit { code: e.exit_code(), oom_killed: false })
            }
        }
    }

    /// Creates (or starts again) container `c.cid`'s main process as wire session `sid`.
    fn create(&mut self, sid: u32, c: moat_proto::GuestCreate) -> Result<u32, RuntimeError> {
        if !self.mounted {
            return Err(RuntimeError::Invalid("the VM was not resumed: no container root is mounted".into()));
        }
        if self.ctrs.get(&c.cid).is_some_and(|x| x.relay.main_running()) {
            return Err(RuntimeError::Invalid("the container is already running".into()));
        }
        if !self.ctrs.contains_key(&c.cid) {
            std::fs::create_dir_all(&c.spec.rootfs_target)
                .map_err(|e| RuntimeError::Invalid(format!("create {}: {e}", c.spec.rootfs_target.display())))?;
            let cg = Cgroup::create(&c.cgroup, &c.limits)?;
            // the guest's own network: the sandbox's containers share it
            if !c.spec.interfaces.is_empty() && !self.net_done {
                moat_runtime::netconf::configure(&c.spec.interfaces)?;
                self.net_done = true;
            }
            self.ctrs.insert(c.cid.clone(), Ctr { relay: Relay::new(Some(cg), false)?, main: sid });
        }
        let ctr = self.ctrs.get_mut(&c.cid).ok_or_else(|| RuntimeError::Invalid("no relay".into()))?;
        ctr.main = sid;
        self.sessions.insert(sid, c.cid.clone());
        ctr.relay.start_main(&c.spec, c.stdin, &|_| Ok(()))
    }

    fn events(&mut self, cid: &str, events: Vec<Event>) {
        let Some(ctr) = self.ctrs.get(cid) else { return };
        for e in events {
            match e {
                Event::Output { sid, err, data } => {
                    let sid = ctr.wire(sid);
                    let c = self.credit.entry(sid).or_default();
                    *c = c.saturating_sub(data.len() as u64);
                    Frame { kind: if err { Kind::Stderr } else { Kind::Stdout }, session: sid, data }
                        .encode_into(&mut self.out);
                }
                Event::Exited { sid, code, oom } => {
                    let sid = ctr.wire(sid);
                    self.credit.remove(&sid);
                    if sid != ctr.main {
                        self.sessions.remove(&sid);
                    }
                    Frame::control(sid, &AgentEvent::Exit { code, oom_killed: oom }).encode_into(&mut self.out);
                }
            }
        }
    }

    fn reap_strays(&self) {
        use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
        loop {
            let peek = waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT);
            let Some(pid) = peek.ok().and_then(|st| st.pid()) else { return };
            if self.ctrs.values().any(|c| c.relay.owns(pid)) {
                return;
            }
            let _ = waitpid(pid, None);
        }
    }

    fn run(&mut self) {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            // each descriptor names its container by its place in `cids`
            let cids: Vec<String> = self.ctrs.keys().cloned().collect();
            let mut want: Vec<(RawFd, libc::c_short, Source, usize)> = Vec::new();
            for (n, cid) in cids.iter().enumerate() {
                let Some(c) = self.ctrs.get(cid) else { continue };
                let credit = &self.credit;
                let mut fds = Vec::new();
                c.relay.poll_fds(&|sid| credit.get(&c.wire(sid)).is_some_and(|n| *n > 0), &mut fds);
                want.extend(fds.into_iter().map(|(fd, ev, src)| (fd, ev, src, n)));
            }
            let mut fds = vec![libc::pollfd {
                fd: self.port.as_raw_fd(),
                events: libc::POLLIN | if self.out.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            }];
            fds.extend(want.iter().map(|(fd, ev, _, _)| libc::pollfd { fd: *fd, events: *ev, revents: 0 }));
            // SAFETY: poll over our array
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                continue;
            }
            let port = fds[0].revents;
            if port & libc::POLLOUT != 0 && !self.flush() {
                fatal("host channel write failed");
            }
            if port & (libc::POLLIN | libc::POLLHUP) != 0 {
                // SAFETY: read from the port
                let r = unsafe { libc::read(self.port.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
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
                    // the host went away: its shim died, and virtiofsd (which a
                    // sync would wait for) died with it; writes already went
                    // through virtiofsd (no writeback cache)
                    log("the host closed the control channel: powering off");
                    poweroff_now();
                }
            }
            for (p, (_, _, src, n)) in fds[1..].iter().zip(want) {
                if p.revents == 0 {
                    continue;
                }
                let cid = &cids[n];
                let Some(ctr) = self.ctrs.get_mut(cid) else { continue };
                let max = match src {
                    Source::Output(sid, _) => self.credit.get(&ctr.wire(sid)).copied().unwrap_or(0) as usize,
                    _ => READ_CHUNK,
                };
                let events = ctr.relay.ready(src, max, &mut buf);
                self.events(cid, events);
            }
            // reap strays reparented to us (never a session's process: its pidfd reports that)
            self.reap_strays();
            if !self.flush() {
                fatal("host channel write failed");
            }
        }
    }
}

fn mount_root() -> Result<(), String> {
    mnt(moat_proto::VIRTIOFS_TAG, ROOT_MOUNT, "virtiofs", MsFlags::empty(), None)?;
    let _ = std::fs::create_dir_all(moat_proto::GUEST_CTR_ROOT);
    Ok(())
}

/// A clone's first steps: its RNG, clock and name are the template's until
/// this runs, so it runs before anything else.
fn resume(entropy: &[u8], unix_nanos: u64, hostname: &str, mount: bool) -> Result<(), String> {
    if entropy.len() < 32 {
        return Err("resume: the host sent too little entropy".into());
    }
    let random =
        std::fs::OpenOptions::new().write(true).open("/dev/random").map_err(|e| format!("open /dev/random: {e}"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of the size it announces, from our buffer
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } < 0 {
        return Err(format!("add entropy: {}", nix::Error::last()));
    }
    // the added bytes only reach the CRNG at its next reseed: force it now
    // SAFETY: RNDRESEEDCRNG takes no argument
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } < 0 {
        return Err(format!("reseed the RNG: {}", nix::Error::last()));
    }
    let ts = libc::timespec {
        tv_sec: (unix_nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_nanos % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: setting the wall clock from a valid timespec
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } < 0 {
        return Err(format!("set the clock: {}", nix::Error::last()));
    }
    if !hostname.is_empty() {
        nix::unistd::sethostname(hostname).map_err(|e| format!("set the hostname: {e}"))?;
    }
    if mount {
        mount_root()?;
    }
    Ok(())
}

/// Work every clone of a template would repeat, done once in the template:
/// the cgroup tree with its controllers and the container's cgroup, the
/// device filter, the default
/// seccomp profile, `lo`. Each is redone (or found done) in a clone, so a
/// failure here only costs time.
fn prepare_clones() {
    match Cgroup::prepare_v2(std::path::Path::new("/sys/fs/cgroup")) {
        Ok(moat) => {
            if let Err(e) = std::fs::create_dir_all(moat.join(moat_proto::GUEST_CGROUP)) {
                log(&format!("template: container cgroup: {e}"));
            }
        }
        Err(e) => log(&format!("template: cgroup tree: {e}")),
    }
    if let Err(e) = moat_runtime::devices::preload_default() {
        log(&format!("template: device filter: {e}"));
    }
    if let Err(e) = moat_runtime::seccomp::preload_default() {
        log(&format!("template: seccomp profile: {e}"));
    }
    if let Err(e) = moat_runtime::netconf::loopback_up() {
        log(&format!("template: loopback: {e}"));
    }
    if let Err(e) = moat_runtime::netconf::nics_up() {
        log(&format!("template: NICs: {e}"));
    }
}

fn stage2() -> Result<(), String> {
    base_mounts()?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None)?;
    mnt("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;
    let port = open_port(moat_proto::CONTROL_PORT)?;
    let template = std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == moat_proto::TEMPLATE_ARG))
        .unwrap_or(false);
    if template {
        // what the snapshot holds is what every clone copies: leave no cache behind
        // SAFETY: sync has no preconditions
        unsafe { libc::sync() };
        prepare_clones();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
        let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
    } else {
        mount_root()?;
    }
    nonblock(port.as_raw_fd());
    // the sandbox's containers share the guest's network, loopback included
    if let Err(e) = moat_runtime::netconf::loopback_up() {
        log(&format!("loopback: {e}"));
    }
    let mut a = Agent {
        port,
        mounted: !template,
        dec: Decoder::default(),
        out: Vec::new(),
        ctrs: HashMap::new(),
        sessions: HashMap::new(),
        credit: HashMap::new(),
        net_done: false,
    };
    a.send(0, &AgentEvent::Ready { version: PROTOCOL_VERSION });
    a.run();
    Ok(())
}

/// `moat-pause`: a pod's infra container. Holds the sandbox until SIGTERM,
/// SIGINT or SIGHUP (it is PID 1 of its namespace: without handlers those
/// would be ignored), reaping whatever is reparented to it.
fn pause() -> ! {
    extern "C" fn done(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe
        unsafe { libc::_exit(0) }
    }
    extern "C" fn child(_: libc::c_int) {}
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let quit = SigAction::new(SigHandler::Handler(done), SaFlags::empty(), SigSet::empty());
    let chld = SigAction::new(SigHandler::Handler(child), SaFlags::SA_NOCLDSTOP, SigSet::empty());
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only calls _exit
        let _ = unsafe { sigaction(s, &quit) };
    }
    // SAFETY: the handler does nothing; it only interrupts pause()
    let _ = unsafe { sigaction(Signal::SIGCHLD, &chld) };
    loop {
        nix::unistd::pause();
        while let Ok(st) = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            if st == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
    }
}

fn main() {
    // the same binary is a container's `--init` when called by that name,
    // and a pod's infra process as `moat-pause`
    let argv: Vec<String> = std::env::args().collect();
    match argv.first().and_then(|a| a.rsplit('/').next()) {
        Some("moat-init") => std::process::exit(moat_runtime::init::run(&argv[1..])),
        Some("moat-pause") => pause(),
        _ => {}
    }
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
