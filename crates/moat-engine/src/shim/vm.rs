//! VM isolation: the container's root (the same overlay) is exported with
//! virtiofsd, QEMU boots the guest whose agent runs the container with the
//! runtime's relay, and this backend is a client of that relay over the
//! virtio-serial channel: requests go out as [`AgentRequest`]s, answers and
//! output come back as frames, with per-session output credit. Queries and
//! exec starts that the guest does not answer time out; QEMU's and
//! virtiofsd's ends are watched through pidfds and QMP.

use super::backend::{Backend, BackendEvent, ExecStart, Query, ShimContext, Source};
use crate::vm::VmLink;
use crate::EngineError;
use moat_proto::{AgentEvent, AgentRequest, ExecSpec, Frame, Kind, ShimReply, WinSize};
use moat_runtime::cgroup::{Cgroup, Limits};
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// How long a query (top, stats, pause, update) sent to the agent may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to start an exec process.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// After SIGKILL through the agent: how long before QEMU itself is killed.
const HARD_KILL_AFTER: Duration = Duration::from_secs(10);

/// The VM backend.
pub struct Vm {
    link: Option<VmLink>,
    cgroup: Cgroup,
    /// Agent sessions of queries: session → (token, deadline).
    queries: HashMap<u32, (u64, Instant)>,
    /// QMP commands in flight, in order: (token, what).
    qmp: VecDeque<(u64, Query)>,
    /// Exec sessions waiting for `Started`: session → (deadline, the agent's error).
    pending: HashMap<u32, (Instant, Option<String>)>,
    next_session: u32,
    /// Output bytes received and not yet credited back, per session.
    owed: HashMap<u32, u64>,
    hard_deadline: Option<Instant>,
    fs_gone_at: Option<Instant>,
    vcpus: u32,
    mem_mib: u64,
    info: serde_json::Value,
    /// The boot already sent the main process's `Create` (see [`VmLink::start`]).
    create_sent: bool,
    /// The ended VM's taps, deleted when this backend is dropped.
    retired_taps: Vec<std::os::fd::OwnedFd>,
    /// When the guest console's size is checked next.
    console_check: Option<Instant>,
}

/// A guest console (QEMU writes it, in append mode) larger than this is
/// rotated: its last [`CONSOLE_KEEP`] bytes go to `console.log.1` and it
/// starts again empty. A guest that floods its serial port fills at most
/// this plus what it writes in one [`CONSOLE_EVERY`].
pub const CONSOLE_MAX: u64 = 1 << 20;
/// What a rotation keeps of the console's end.
const CONSOLE_KEEP: u64 = 256 << 10;
/// How often the console's size is checked.
const CONSOLE_EVERY: Duration = Duration::from_secs(2);

/// Rotates the console log at `path` if it outgrew [`CONSOLE_MAX`].
fn rotate_console(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = std::fs::metadata(path)?.len();
    if len <= CONSOLE_MAX {
        return Ok(());
    }
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(len - CONSOLE_KEEP))?;
    let mut tail = Vec::with_capacity(CONSOLE_KEEP as usize);
    f.take(CONSOLE_KEEP).read_to_end(&mut tail)?;
    let old = path.with_extension("log.1");
    std::fs::write(&old, &tail)?;
    // the writers have it in append mode: their next line starts at 0
    std::fs::OpenOptions::new().write(true).open(path)?.set_len(0)
}

/// The guest's part of creating the container's main process.
fn guest_create(ctx: &ShimContext) -> moat_proto::GuestCreate {
    moat_proto::GuestCreate {
        spec: crate::vm::guest_spec(&ctx.spec),
        limits: crate::spec::limits(ctx.config()),
        cgroup: moat_proto::GUEST_CGROUP.to_string(),
        stdin: ctx.config().open_stdin,
    }
}

impl Vm {
    /// Mounts the root, boots the VM (its QEMU and virtiofsd in the
    /// container's host cgroup) and waits for the agent.
    pub fn new(ctx: &ShimContext) -> Result<Self, EngineError> {
        let limits = Limits { devices: moat_runtime::devices::DevicePolicy::AllowAll, ..Default::default() };
        let cgroup = Cgroup::create(ctx.id(), &limits)?;
        super::local::write_cgroup(ctx, &cgroup);
        let create = AgentRequest::Create(Box::new(guest_create(ctx)));
        let booted = crate::vm::prepare_root(&ctx.spec)
            .and_then(|root| VmLink::start(&ctx.options, &ctx.layout, ctx.id(), ctx.config(), &root, &cgroup, &create));
        let link = match booted {
            Ok(l) => l,
            Err(e) => {
                let _ = cgroup.destroy();
                let _ = nix::mount::umount2(&ctx.spec.rootfs_target, nix::mount::MntFlags::MNT_DETACH);
                return Err(e);
            }
        };
        let (mem_mib, vcpus) = crate::vm::sizing(ctx.config());
        let info = serde_json::json!({
            "Accelerator": link.accel, "Kernel": link.kernel, "MemoryMiB": mem_mib, "Vcpus": vcpus,
            "QemuPid": link.vm.qemu.id(), "VirtiofsdPid": link.vm.virtiofsd.id(),
            "Boot": if link.template.is_some() { "template" } else { "cold" },
            "Template": link.template,
        });
        let _ = std::fs::write(ctx.dir.join("vm.json"), info.to_string());
        Ok(Self {
            link: Some(link),
            cgroup,
            queries: HashMap::new(),
            qmp: VecDeque::new(),
            pending: HashMap::new(),
            next_session: 1_000_000,
            owed: HashMap::new(),
            hard_deadline: None,
            fs_gone_at: None,
            vcpus,
            mem_mib,
            info,
            create_sent: true,
            retired_taps: Vec::new(),
            console_check: Some(Instant::now() + CONSOLE_EVERY),
        })
    }

    fn link(&mut self) -> Option<&mut VmLink> {
        self.link.as_mut()
    }

    fn send(&mut self, sid: u32, m: &AgentRequest) {
        if let Some(l) = self.link() {
            l.send(sid, m);
        }
    }

    fn channel_io(&mut self, revents: libc::c_short, buf: &mut [u8]) -> Vec<BackendEvent> {
        let mut out = Vec::new();
        let Some(link) = self.link.as_mut() else { return out };
        if revents & libc::POLLOUT != 0 && !link.out.is_empty() {
            if let Ok(n) = link.vm.channel.write(&link.out) {
                link.out.drain(..n);
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP) == 0 {
            return out;
        }
        match link.vm.channel.read(buf) {
            // the agent is gone: QEMU's exit will tell us why
            Ok(0) | Err(_) => return out,
            Ok(n) => link.dec.push(&buf[..n]),
        }
        while let Some(link) = self.link.as_mut() {
            let f = match link.dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("the guest agent sent garbage: {e}");
                    link.failure = Some(format!("the guest agent broke the protocol ({e}): its VM was stopped"));
                    let _ = link.vm.qemu.kill();
                    break;
                }
            };
            out.extend(self.frame(f));
        }
        out
    }

    fn frame(&mut self, f: Frame) -> Option<BackendEvent> {
        let sid = f.session;
        match f.kind {
            Kind::Stdout | Kind::Stderr => {
                *self.owed.entry(sid).or_default() += f.data.len() as u64;
                return Some(BackendEvent::Output { sid, err: f.kind == Kind::Stderr, data: f.data });
            }
            Kind::Control => {}
            _ => return None,
        }
        let m: AgentEvent = f.msg().ok()?;
        if let Some((token, _)) = self.queries.remove(&sid) {
            let reply = match m {
                AgentEvent::Procs { rows } => ShimReply::Procs { rows },
                AgentEvent::Usage(mut s) => {
                    if let Some(l) = &self.link {
                        s.guest_mem = s.mem_usage;
                        s.mem_usage = moat_vm::usage::host_bytes(&[l.vm.qemu.id(), l.vm.virtiofsd.id()]);
                    }
                    // without --memory the guest's cgroup has no limit, but
                    // the VM's RAM is one: not the host's (what a front end
                    // shows for "no limit")
                    if s.mem_limit == 0 {
                        s.mem_limit = self.mem_mib << 20;
                    }
                    ShimReply::Usage(s)
                }
                AgentEvent::Ok { warnings } => ShimReply::Ok { warnings },
                AgentEvent::Error { message } => ShimReply::Error { message },
                other => ShimReply::Error { message: format!("unexpected answer from the guest agent: {other:?}") },
            };
            return Some(BackendEvent::Reply { token, reply });
        }
        match m {
            AgentEvent::Started { pid } => {
                self.pending.remove(&sid);
                Some(BackendEvent::Started { sid, pid })
            }
            AgentEvent::Error { message } => {
                if let Some(p) = self.pending.get_mut(&sid) {
                    p.1 = Some(message);
                }
                None
            }
            AgentEvent::Exit { code, oom_killed } => {
                self.owed.remove(&sid);
                if let Some((_, Some(message))) = self.pending.remove(&sid) {
                    return Some(BackendEvent::ExecFailed { sid, message, code });
                }
                Some(BackendEvent::Exited { sid, code, oom: oom_killed })
            }
            _ => None,
        }
    }

    fn qmp_io(&mut self) -> Vec<BackendEvent> {
        let mut out = Vec::new();
        let Some(link) = self.link.as_mut() else { return out };
        link.qmp_io();
        while let Some(r) = link.qmp_replies.pop_front() {
            let Some((token, _)) = self.qmp.pop_front() else { continue };
            let reply = match r {
                Ok(()) => ShimReply::Ok { warnings: Vec::new() },
                Err(message) => ShimReply::Error { message },
            };
            out.push(BackendEvent::Reply { token, reply });
        }
        out
    }
}

impl Backend for Vm {
    fn start_main(&mut self, ctx: &ShimContext) -> Result<u32, EngineError> {
        let sent = std::mem::take(&mut self.create_sent);
        let link = self.link.as_mut().ok_or_else(|| EngineError::Shim("the utility VM is gone".into()))?;
        tracing::debug!("VM: creating the container in the guest");
        if !sent {
            link.send(0, &AgentRequest::Create(Box::new(guest_create(ctx))));
        }
        let t = Duration::from_secs(60);
        let started = link.wait_for(0, t, |m| matches!(m, AgentEvent::Started { .. } | AgentEvent::Error { .. }))?;
        tracing::debug!("VM: the guest answered the create");
        match started {
            AgentEvent::Started { pid } => Ok(pid),
            AgentEvent::Error { message } => {
                let code = match link.wait_for(0, t, |m| matches!(m, AgentEvent::Exit { .. })) {
                    Ok(AgentEvent::Exit { code, .. }) => code,
                    _ => 125,
                };
                Err(EngineError::Start { message, code })
            }
            _ => Err(EngineError::Shim("unexpected agent reply".into())),
        }
    }

    fn exec(&mut self, sid: u32, x: &ExecSpec) -> Result<ExecStart, EngineError> {
        self.pending.insert(sid, (Instant::now() + EXEC_TIMEOUT, None));
        self.send(sid, &AgentRequest::Exec(x.clone()));
        Ok(ExecStart::Pending)
    }

    fn signal(&mut self, sid: u32, signal: i32) -> bool {
        self.send(sid, &AgentRequest::Signal { signal });
        self.link.is_some()
    }

    fn resize(&mut self, sid: u32, ws: WinSize) {
        self.send(sid, &AgentRequest::Resize(ws));
    }

    fn stdin(&mut self, sid: u32, data: Vec<u8>) {
        if let Some(l) = self.link() {
            l.send_frame(Frame { kind: Kind::Stdin, session: sid, data });
        }
    }

    fn close_stdin(&mut self, sid: u32) {
        if let Some(l) = self.link() {
            l.send_frame(Frame { kind: Kind::StdinEof, session: sid, data: Vec::new() });
        }
    }

    fn query(&mut self, q: Query, token: u64) -> Option<ShimReply> {
        if self.link.is_none() {
            return Some(ShimReply::Error { message: "the utility VM is gone".into() });
        }
        let req = match &q {
            // the whole VM is paused, not only the container's processes
            Query::Pause | Query::Unpause => {
                let cmd = if matches!(q, Query::Pause) { "stop" } else { "cont" };
                if let Some(l) = self.link() {
                    l.qmp_command(cmd);
                }
                self.qmp.push_back((token, q));
                return None;
            }
            Query::Update(l) => {
                let mut warnings = Vec::new();
                if let Some(m) = l.memory {
                    let vm = self.mem_mib.saturating_sub(moat_vm::launch::MEMORY_OVERHEAD_MIB);
                    if (m as u64) >> 20 > vm {
                        warnings.push(format!(
                            "the utility VM has room for {vm} MiB: a larger memory limit takes effect when the container restarts"
                        ));
                    }
                }
                if l.cpus.is_some_and(|c| c.ceil() as u32 > self.vcpus) {
                    warnings.push(format!(
                        "the utility VM has {} vCPU(s): more CPUs take effect when the container restarts",
                        self.vcpus
                    ));
                }
                if !warnings.is_empty() {
                    tracing::info!("{}", warnings.join("; "));
                }
                AgentRequest::Update(l.clone())
            }
            Query::Top => AgentRequest::Top,
            Query::Stats => AgentRequest::Stats,
        };
        let sid = self.next_session;
        self.next_session += 1;
        self.queries.insert(sid, (token, Instant::now() + QUERY_TIMEOUT));
        self.send(sid, &req);
        None
    }

    fn poll_fds(&self, _full: &dyn Fn(u32) -> bool, out: &mut Vec<(RawFd, libc::c_short, Source)>) {
        let Some(link) = &self.link else { return };
        let ev = libc::POLLIN | if link.out.is_empty() { 0 } else { libc::POLLOUT };
        out.push((link.vm.channel.as_raw_fd(), ev, Source::Channel));
        out.push((link.qemu_pidfd.as_raw_fd(), libc::POLLIN, Source::Qemu));
        out.push((link.vm.qmp.as_raw_fd(), libc::POLLIN, Source::Qmp));
        if link.failure.is_none() && self.fs_gone_at.is_none() {
            out.push((link.virtiofsd_pidfd.as_raw_fd(), libc::POLLIN, Source::Virtiofsd));
        }
    }

    fn ready(&mut self, src: Source, revents: libc::c_short, buf: &mut [u8]) -> Vec<BackendEvent> {
        match src {
            Source::Channel => self.channel_io(revents, buf),
            Source::Qmp => self.qmp_io(),
            // virtiofsd also exits when QEMU goes away: QEMU's own end, if it
            // comes within a second, is the real cause
            Source::Virtiofsd => {
                self.fs_gone_at = Some(Instant::now() + Duration::from_secs(1));
                Vec::new()
            }
            Source::Qemu => {
                let mut out = self.qmp_io();
                if let Some(mut link) = self.link.take() {
                    let (code, reason) = link.death();
                    out.push(BackendEvent::Died { code, reason });
                }
                out
            }
            Source::Relay(_) => Vec::new(),
        }
    }

    fn after_round(&mut self, full: &dyn Fn(u32) -> bool) {
        let mut grants = Vec::new();
        for (sid, owed) in self.owed.iter_mut() {
            if *owed > 0 && !full(*sid) {
                grants.push((*sid, *owed));
                *owed = 0;
            }
        }
        for (sid, bytes) in grants {
            self.send(sid, &AgentRequest::Credit { bytes });
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let q = self.queries.values().map(|(_, d)| *d);
        let p = self.pending.values().map(|(d, _)| *d);
        [self.hard_deadline, self.fs_gone_at, self.console_check].into_iter().flatten().chain(q).chain(p).min()
    }

    fn timers(&mut self, now: Instant) -> Vec<BackendEvent> {
        let mut out = Vec::new();
        if self.console_check.is_some_and(|d| d <= now) {
            self.console_check = self.link.as_ref().map(|l| {
                if let Err(e) = rotate_console(&l.console) {
                    tracing::warn!("cannot rotate the guest console {}: {e}", l.console.display());
                }
                now + CONSOLE_EVERY
            });
        }
        if self.fs_gone_at.is_some_and(|d| d <= now) {
            self.fs_gone_at = None;
            if let Some(l) = self.link() {
                l.fs_died();
            }
        }
        if self.hard_deadline.is_some_and(|d| d <= now) {
            self.hard_deadline = None;
            if let Some(l) = self.link() {
                let _ = l.vm.qemu.kill();
            }
        }
        // a guest that does not answer: clients get a clear error, not a hang
        let late: Vec<u32> = self.queries.iter().filter(|(_, (_, d))| *d <= now).map(|(s, _)| *s).collect();
        for sid in late {
            if let Some((token, _)) = self.queries.remove(&sid) {
                let message = format!(
                    "the utility VM did not answer within {}s: the guest is wedged or overloaded",
                    QUERY_TIMEOUT.as_secs()
                );
                out.push(BackendEvent::Reply { token, reply: ShimReply::Error { message } });
            }
        }
        let late: Vec<u32> = self.pending.iter().filter(|(_, (d, _))| *d <= now).map(|(s, _)| *s).collect();
        for sid in late {
            self.pending.remove(&sid);
            self.send(sid, &AgentRequest::Signal { signal: libc::SIGKILL });
            let message = format!(
                "the utility VM did not start the process within {}s: the guest is wedged or overloaded",
                EXEC_TIMEOUT.as_secs()
            );
            out.push(BackendEvent::ExecFailed { sid, message, code: 126 });
        }
        out
    }

    fn killed_main(&mut self, now: Instant) {
        // an agent that does not answer gets its VM killed
        self.hard_deadline = Some(now + HARD_KILL_AFTER);
    }

    fn info(&self) -> Option<serde_json::Value> {
        Some(self.info.clone())
    }

    fn teardown(&mut self, ctx: &ShimContext) {
        if let Some(mut link) = self.link.take() {
            link.shutdown();
            // closing a tap's last descriptor deletes it, which costs the
            // kernel ~25 ms of RCU synchronisation: they close when the shim
            // exits, after its clients (a `run --rm` waiting) have their answer
            self.retired_taps = std::mem::take(&mut link.vm.taps);
        }
        // the VM's root (and its bind mounts) live in this process's mount namespace
        let _ = nix::mount::umount2(&ctx.spec.rootfs_target, nix::mount::MntFlags::MNT_DETACH);
        if let Err(e) = self.cgroup.destroy() {
            tracing::warn!("{e}");
        }
        let _ = std::fs::remove_file(ctx.dir.join("cgroup.json"));
    }
}
