//! VM isolation: a utility VM is a sandbox that holds one or more
//! containers. The shim of the container that starts it owns it: the
//! container's root (the same overlay) is mounted under the sandbox's share,
//! exported with virtiofsd, QEMU boots the guest whose agent runs the
//! container with the runtime's relay, and this backend is a client of that
//! relay over the virtio-serial channel: requests go out as
//! [`AgentRequest`]s, answers and output come back as frames, with
//! per-session output credit. Queries and exec starts that the guest does
//! not answer time out; QEMU's and virtiofsd's ends are watched through
//! pidfds and QMP.
//!
//! A container that joins the sandbox (`--network container:OWNER`) has a
//! shim of its own whose backend is the same client, speaking to the
//! owner's shim on [`SANDBOX_SOCK`] instead of a VM: the owner mounts the
//! joining container's root under the share, rewrites its `Create` for the
//! guest, and routes its sessions (renumbered) to and from the agent. When
//! the joined container's shim goes away the owner removes it from the
//! guest; when the VM ends, every joined container ends with the reason.

use crate::backend::{Backend, BackendEvent, ContainerPlan, ExecStart, Query, Source, VmInfo};
use crate::link::VmLink;
use crate::SandboxError;
use moat_proto::{AgentEvent, AgentRequest, Decoder, ExecSpec, Frame, Kind, ShimReply, WinSize, SANDBOX_SOCK};
use moat_runtime::cgroup::{Cgroup, Limits};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a query (top, stats, pause, update) sent to the agent may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to start an exec process.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// After SIGKILL through the agent: how long before QEMU itself is killed.
const HARD_KILL_AFTER: Duration = Duration::from_secs(10);

/// Wire sessions the owner gives to joined containers start here (its own
/// are below: the main process 0, execs, queries from 1 000 000).
const JOINED_SESSIONS: u32 = 0x4000_0000;

/// The VM backend.
pub struct Vm {
    /// The container this backend runs.
    cid: String,
    link: Option<VmLink>,
    /// Set when the sandbox belongs to another container's shim.
    member: Option<MemberLink>,
    /// The owner's end for the sandbox's other containers.
    sandbox: Option<Sandbox>,
    cgroup: Option<Cgroup>,
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
    info: VmInfo,
    /// The boot already sent the main process's `Create` (see [`VmLink::start`]).
    create_sent: bool,
    /// The ended VM's taps, deleted when this backend is dropped.
    retired_taps: Vec<std::os::fd::OwnedFd>,
    /// When the guest console's size is checked next.
    console_check: Option<Instant>,
    /// The network namespace whose interfaces the VM took over.
    carried: Option<moat_net::netns::Carried>,
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

/// The guest's part of creating the container's main process (the owner
/// of the sandbox), or what a joining container asks the owner (its host
/// spec, which the owner rewrites for the guest).
fn guest_create(plan: &ContainerPlan, joining: bool) -> moat_proto::GuestCreate {
    moat_proto::GuestCreate {
        cid: plan.id.clone(),
        spec: if joining { plan.spec.clone() } else { crate::link::guest_spec(&plan.spec, &plan.id) },
        limits: plan.limits.clone(),
        cgroup: moat_proto::GUEST_CGROUP.to_string(),
        stdin: plan.stdin,
    }
}

/// A carried interface as the guest configures it (named by
/// [`crate::link::number_guest_nics`]).
fn carried_iface(n: &moat_net::netns::CarriedNic) -> moat_runtime::netconf::Iface {
    moat_runtime::netconf::Iface {
        from: String::new(),
        name: String::new(),
        ip: n.ip,
        prefix: n.prefix,
        gateway: n.gateway,
        mac: n.mac.clone(),
        ip6: None,
        prefix6: 0,
        gateway6: None,
    }
}

/// The agent's channel: a VM's virtio-serial port, or a socket to the owner's shim.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A joined container's end: the socket to the owner's shim.
pub struct MemberLink {
    sock: UnixStream,
    dec: Decoder,
    out: Vec<u8>,
    /// The owner's name, for messages.
    owner: String,
}

impl MemberLink {
    /// Blocks until a control message on session `sid` satisfies `want`
    /// (only before the shim's loop runs).
    fn wait_for(
        &mut self,
        sid: u32,
        timeout: Duration,
        want: impl Fn(&AgentEvent) -> bool,
    ) -> Result<AgentEvent, SandboxError> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            while !self.out.is_empty() {
                match self.sock.write(&self.out) {
                    Ok(n) => drop(self.out.drain(..n)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1));
                        if Instant::now() > deadline {
                            return Err(SandboxError::Shim("the sandbox's shim does not read".into()));
                        }
                    }
                    Err(e) => return Err(SandboxError::Io("sandbox socket".into(), e)),
                }
            }
            let ended = |m: &AgentEvent| matches!(m, AgentEvent::SandboxEnded { .. });
            match crate::link::take_wanted(&mut self.dec, sid, &|m| ended(m) || want(m), "sandbox")? {
                Some(AgentEvent::SandboxEnded { reason, .. }) => return Err(SandboxError::Shim(reason)),
                Some(m) => return Ok(m),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SandboxError::Shim(format!(
                    "the utility VM of {} did not answer within {}s",
                    self.owner,
                    timeout.as_secs()
                )));
            }
            let mut p = libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: poll one fd of ours
            unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            match self.sock.read(&mut buf) {
                Ok(0) => return Err(SandboxError::Shim(format!("the utility VM of {} ended", self.owner))),
                Ok(n) => self.dec.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(SandboxError::Io("sandbox socket".into(), e)),
            }
        }
    }
}

/// A container joined to this shim's VM, as its owner sees it.
struct Joined {
    sock: UnixStream,
    dec: Decoder,
    out: Vec<u8>,
    /// Its ID, once its `Create` came (every request is for it).
    cid: Option<String>,
    /// Its root is mounted under the share.
    mounted: bool,
    /// Its sessions → wire sessions.
    to_wire: HashMap<u32, u32>,
}

/// The owner's end of a sandbox that other containers joined.
struct Sandbox {
    listener: UnixListener,
    share: PathBuf,
    joined: HashMap<u32, Joined>,
    next_conn: u32,
    /// Wire session → (connection, its session).
    routes: HashMap<u32, (u32, u32)>,
    next_wire: u32,
    /// Wire sessions whose answers nobody waits for (removals).
    discard: HashSet<u32>,
}

impl Sandbox {
    /// A fresh wire session for the joined containers.
    fn new_wire(&mut self) -> u32 {
        let w = self.next_wire;
        self.next_wire = self.next_wire.wrapping_add(1).max(JOINED_SESSIONS);
        w
    }

    /// The wire session of joined connection `conn`'s session `sid`.
    fn wire(&mut self, conn: u32, sid: u32) -> u32 {
        if let Some(w) = self.joined.get(&conn).and_then(|j| j.to_wire.get(&sid)) {
            return *w;
        }
        let w = self.new_wire();
        self.routes.insert(w, (conn, sid));
        if let Some(j) = self.joined.get_mut(&conn) {
            j.to_wire.insert(sid, w);
        }
        w
    }
}

impl Vm {
    /// Mounts the sandbox's share and the container's root under it, boots
    /// the VM (its QEMU and virtiofsd in the container's host cgroup) and
    /// waits for the agent.
    pub fn new(
        plan: &ContainerPlan,
        options: &crate::VmOptions,
        mem_mib: u64,
        vcpus: u32,
    ) -> Result<Self, SandboxError> {
        let limits = Limits { devices: moat_runtime::devices::DevicePolicy::AllowAll, ..Default::default() };
        // a network namespace to join (a CNI pod's): its interfaces are
        // carried into the VM, which takes over their addresses
        let carried = match &plan.spec.net {
            moat_runtime::spec::NetNs::Path(ns) => Some(moat_net::netns::carry(ns)?),
            _ => None,
        };
        let undo_carried = || carried.iter().for_each(|c| c.undo());
        let cgroup = Cgroup::create(&plan.id, &limits).inspect_err(|_| undo_carried())?;
        crate::local::write_cgroup(plan, &cgroup);
        let mut create = guest_create(plan, false);
        create.spec.interfaces.extend(carried.iter().flat_map(|c| &c.nics).map(carried_iface));
        crate::link::number_guest_nics(&mut create.spec);
        let create = AgentRequest::Create(Box::new(create));
        let share = crate::link::share_dir(&plan.dir);
        let booted = crate::link::prepare_share(&share)
            .and_then(|()| crate::link::prepare_root(&plan.spec, &share, &plan.id))
            .and_then(|_| {
                let boot = crate::link::Boot {
                    id: &plan.id,
                    dir: &plan.dir,
                    mem_mib,
                    vcpus,
                    endpoints: &plan.endpoints,
                    carried: carried.as_ref(),
                };
                VmLink::start(options, &boot, &share, &cgroup, &create)
            })
            .and_then(|l| {
                let listener = moat_proto::sock::bind(&plan.dir, SANDBOX_SOCK)
                    .map_err(SandboxError::io("bind the sandbox socket"))?;
                listener.set_nonblocking(true).map_err(SandboxError::io("sandbox socket"))?;
                Ok((l, listener))
            });
        let (link, listener) = match booted {
            Ok(l) => l,
            Err(e) => {
                let _ = cgroup.destroy();
                let _ = nix::mount::umount2(&share, nix::mount::MntFlags::MNT_DETACH);
                undo_carried();
                return Err(e);
            }
        };
        let info = VmInfo {
            accelerator: link.accel.clone(),
            kernel: link.kernel.clone(),
            memory_mib: Some(mem_mib),
            vcpus: Some(vcpus),
            qemu_pid: Some(link.vm.qemu.id()),
            virtiofsd_pid: Some(link.vm.virtiofsd.id()),
            boot: if link.template.is_some() { "template" } else { "cold" }.into(),
            template: link.template.clone(),
            sandbox: None,
        };
        info.write(&plan.dir);
        let mut vm = Self::blank(&plan.id, info, mem_mib, vcpus);
        vm.link = Some(link);
        vm.sandbox = Some(Sandbox {
            listener,
            share,
            joined: HashMap::new(),
            next_conn: 1,
            routes: HashMap::new(),
            next_wire: JOINED_SESSIONS,
            discard: HashSet::new(),
        });
        vm.cgroup = Some(cgroup);
        vm.carried = carried;
        // the boot already sent the main process's `Create`
        vm.create_sent = true;
        vm.console_check = Some(Instant::now() + CONSOLE_EVERY);
        Ok(vm)
    }

    /// A backend for container `cid` with nothing connected yet.
    fn blank(cid: &str, info: VmInfo, mem_mib: u64, vcpus: u32) -> Self {
        Self {
            cid: cid.to_string(),
            link: None,
            member: None,
            sandbox: None,
            cgroup: None,
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
            create_sent: false,
            retired_taps: Vec::new(),
            console_check: None,
            carried: None,
        }
    }

    /// Joins the sandbox of container `owner` (its shim owns the VM): no
    /// VM of its own; the owner mounts this container's root and routes its
    /// sessions to the agent.
    pub fn join(plan: &ContainerPlan, owner: &str, owner_name: &str, odir: &Path) -> Result<Self, SandboxError> {
        let sock = moat_proto::sock::connect(odir, SANDBOX_SOCK).map_err(|e| {
            SandboxError::Conflict(format!(
                "cannot join the utility VM of {owner_name}: its sandbox does not answer ({e})"
            ))
        })?;
        sock.set_nonblocking(true).map_err(SandboxError::io("sandbox socket"))?;
        let mut info = VmInfo::read(odir).unwrap_or_default();
        info.sandbox = Some(owner.to_string());
        info.write(&plan.dir);
        let mem_mib = info.memory_mib.unwrap_or(moat_vm::launch::DEFAULT_MEMORY_MIB);
        let vcpus = info.vcpus.unwrap_or(1);
        let mut vm = Self::blank(&plan.id, info, mem_mib, vcpus);
        vm.member = Some(MemberLink { sock, dec: Decoder::default(), out: Vec::new(), owner: owner_name.to_string() });
        Ok(vm)
    }

    fn link(&mut self) -> Option<&mut VmLink> {
        self.link.as_mut()
    }

    /// Whether the agent can be reached (this shim's VM, or the owner's).
    fn connected(&self) -> bool {
        self.link.is_some() || self.member.is_some()
    }

    fn send_frame_(&mut self, f: Frame) {
        if let Some(l) = self.link.as_mut() {
            l.send_frame(f);
        } else if let Some(m) = self.member.as_mut() {
            f.encode_into(&mut m.out);
        }
    }

    fn send(&mut self, sid: u32, m: &AgentRequest) {
        self.send_frame_(Frame::control(sid, m));
    }

    fn channel_io(&mut self, revents: libc::c_short, buf: &mut [u8]) -> Vec<BackendEvent> {
        let mut out = Vec::new();
        let (chan, dec, queued): (&mut dyn ReadWrite, _, _) = match (self.link.as_mut(), self.member.as_mut()) {
            (Some(l), _) => (&mut l.vm.channel, &mut l.dec, &mut l.out),
            (None, Some(m)) => (&mut m.sock, &mut m.dec, &mut m.out),
            (None, None) => return out,
        };
        if revents & libc::POLLOUT != 0 && !queued.is_empty() {
            if let Ok(n) = chan.write(queued) {
                queued.drain(..n);
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP) == 0 {
            return out;
        }
        match chan.read(buf) {
            Ok(0) => {
                // a VM's agent that is gone: QEMU's exit says why; the
                // owner of a joined sandbox that is gone: it said why, or died
                if let Some(m) = self.member.take() {
                    let reason = format!("the utility VM of {} (this container's sandbox) ended", m.owner);
                    out.push(BackendEvent::Died { code: 137, reason });
                }
                return out;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return out,
            Err(_) => return out,
            Ok(n) => dec.push(&buf[..n]),
        }
        out.extend(self.drain_frames());
        out
    }

    /// Whether frames the agent sent are decoded but not yet handled (a
    /// start's wait takes its answer and leaves what came with it). Not
    /// while the boot's `Create` awaits `start_main`: its answer is that
    /// wait's to take.
    fn frames_buffered(&self) -> bool {
        if self.create_sent {
            return false;
        }
        match (self.link.as_ref(), self.member.as_ref()) {
            (Some(l), _) => l.dec.has_frame(),
            (None, Some(m)) => m.dec.has_frame(),
            (None, None) => false,
        }
    }

    /// Handles every frame already received from the agent.
    fn drain_frames(&mut self) -> Vec<BackendEvent> {
        let mut out = Vec::new();
        loop {
            let next = match (self.link.as_mut(), self.member.as_mut()) {
                (Some(l), _) => l.dec.next_frame(),
                (None, Some(m)) => m.dec.next_frame(),
                (None, None) => break,
            };
            let f = match next {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("the guest agent sent garbage: {e}");
                    if let Some(link) = self.link.as_mut() {
                        link.failure = Some(format!("the guest agent broke the protocol ({e}): its VM was stopped"));
                        let _ = link.vm.qemu.kill();
                    } else if let Some(m) = self.member.take() {
                        let reason = format!("the sandbox of {} broke the protocol ({e})", m.owner);
                        out.push(BackendEvent::Died { code: 137, reason });
                    }
                    break;
                }
            };
            if !self.route_to_joined(&f) {
                out.extend(self.frame(f));
            }
        }
        out
    }

    /// A frame from the agent for a joined container's session goes to its
    /// shim (renumbered); true when it was one (or an answer nobody waits for).
    fn route_to_joined(&mut self, f: &Frame) -> bool {
        let Some(sb) = self.sandbox.as_mut() else { return false };
        if sb.discard.remove(&f.session) {
            return true;
        }
        let Some(&(conn, sid)) = sb.routes.get(&f.session) else { return false };
        if f.kind == Kind::Control {
            // an exec session ends with its exit: forget its number
            if let Ok(AgentEvent::Exit { .. }) = f.msg::<AgentEvent>() {
                if sid != 0 {
                    sb.routes.remove(&f.session);
                    if let Some(j) = sb.joined.get_mut(&conn) {
                        j.to_wire.remove(&sid);
                    }
                }
            }
        }
        if let Some(j) = sb.joined.get_mut(&conn) {
            Frame { kind: f.kind, session: sid, data: f.data.clone() }.encode_into(&mut j.out);
        }
        true
    }

    /// A container's shim connects to join this VM.
    fn accept_joined(&mut self) {
        let Some(sb) = self.sandbox.as_mut() else { return };
        while let Ok((sock, _)) = sb.listener.accept() {
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            let n = sb.next_conn;
            sb.next_conn += 1;
            let j = Joined {
                sock,
                dec: Decoder::default(),
                out: Vec::new(),
                cid: None,
                mounted: false,
                to_wire: HashMap::new(),
            };
            sb.joined.insert(n, j);
        }
    }

    /// I/O of joined container `conn`'s shim.
    fn joined_io(&mut self, conn: u32, revents: libc::c_short, buf: &mut [u8]) {
        let Some(sb) = self.sandbox.as_mut() else { return };
        let Some(j) = sb.joined.get_mut(&conn) else { return };
        if revents & libc::POLLOUT != 0 && !j.out.is_empty() {
            if let Ok(n) = j.sock.write(&j.out) {
                j.out.drain(..n);
            }
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            return;
        }
        let gone = match j.sock.read(buf) {
            Ok(0) => true,
            Ok(n) => {
                j.dec.push(&buf[..n]);
                false
            }
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        let mut frames = Vec::new();
        loop {
            match j.dec.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("a joined container's shim broke the protocol: {e}");
                    frames.clear();
                    self.drop_joined(conn);
                    return;
                }
            }
        }
        for f in frames {
            self.handle_joined(conn, f);
        }
        if gone {
            self.drop_joined(conn);
        }
    }

    /// A frame from joined container `conn`'s shim: checked, renumbered and
    /// sent on to the agent (its `Create` rewritten for the guest).
    fn handle_joined(&mut self, conn: u32, f: Frame) {
        let Some(sb) = self.sandbox.as_mut() else { return };
        let reply_err = |sb: &mut Sandbox, sid: u32, message: String| {
            if let Some(j) = sb.joined.get_mut(&conn) {
                Frame::control(sid, &AgentEvent::Error { message }).encode_into(&mut j.out);
                Frame::control(sid, &AgentEvent::Exit { code: 125, oom_killed: false }).encode_into(&mut j.out);
            }
        };
        let fwd = match f.kind {
            Kind::Control => {
                let Ok(mut m) = f.msg::<AgentRequest>() else { return };
                let Some(j) = sb.joined.get_mut(&conn) else { return };
                // every request is for the joined container itself
                match &mut m {
                    AgentRequest::Create(c) => {
                        if j.cid.as_ref().is_some_and(|cid| *cid != c.cid) {
                            return;
                        }
                        j.cid = Some(c.cid.clone());
                        if !j.mounted {
                            if let Err(e) = crate::link::prepare_root(&c.spec, &sb.share, &c.cid) {
                                crate::link::release_root(&sb.share, &c.cid);
                                reply_err(
                                    sb,
                                    f.session,
                                    format!("cannot mount the container's root in the sandbox: {e}"),
                                );
                                return;
                            }
                            if let Some(j) = sb.joined.get_mut(&conn) {
                                j.mounted = true;
                            }
                        }
                        c.spec = crate::link::guest_spec(&c.spec, &c.cid);
                        c.cgroup = format!("{}-{}", moat_proto::GUEST_CGROUP, crate::short_id(&c.cid));
                    }
                    AgentRequest::Exec { cid, .. }
                    | AgentRequest::Top { cid }
                    | AgentRequest::Stats { cid }
                    | AgentRequest::Pause { cid }
                    | AgentRequest::Unpause { cid }
                    | AgentRequest::Update { cid, .. }
                    | AgentRequest::Remove { cid } => match &j.cid {
                        Some(own) => own.clone_into(cid),
                        None => return,
                    },
                    AgentRequest::Signal { .. } | AgentRequest::Resize(_) | AgentRequest::Credit { .. } => {}
                    AgentRequest::Shutdown | AgentRequest::Resume { .. } => return,
                }
                Frame::control(0, &m).data
            }
            _ => f.data,
        };
        let wire = sb.wire(conn, f.session);
        self.send_frame_(Frame { kind: f.kind, session: wire, data: fwd });
    }

    /// Joined container `conn`'s shim is gone: the container leaves the guest
    /// and its root the share.
    fn drop_joined(&mut self, conn: u32) {
        let Some(sb) = self.sandbox.as_mut() else { return };
        let Some(j) = sb.joined.remove(&conn) else { return };
        sb.routes.retain(|_, (c, _)| *c != conn);
        let Some(cid) = j.cid else { return };
        let w = sb.new_wire();
        sb.discard.insert(w);
        if j.mounted {
            crate::link::release_root(&sb.share, &cid);
        }
        self.send(w, &AgentRequest::Remove { cid });
    }

    /// The VM ended: every joined container's shim is told why, and let go.
    fn end_joined(&mut self, code: i32, reason: &str) {
        let Some(sb) = self.sandbox.as_mut() else { return };
        for (_, mut j) in sb.joined.drain() {
            let m = AgentEvent::SandboxEnded { code, reason: format!("the sandbox's utility VM ended: {reason}") };
            Frame::control(0, &m).encode_into(&mut j.out);
            let _ = j.sock.set_nonblocking(false);
            let _ = j.sock.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = j.sock.write_all(&j.out);
            if let Some(cid) = &j.cid {
                if j.mounted {
                    crate::link::release_root(&sb.share, cid);
                }
            }
        }
        sb.routes.clear();
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
        if let AgentEvent::SandboxEnded { code, reason } = m {
            self.member = None;
            return Some(BackendEvent::Died { code, reason });
        }
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
    fn start_main(&mut self, plan: &ContainerPlan) -> Result<u32, SandboxError> {
        let sent = std::mem::take(&mut self.create_sent);
        tracing::debug!("VM: creating the container in the guest");
        if !sent {
            let joining = self.member.is_some();
            self.send(0, &AgentRequest::Create(Box::new(guest_create(plan, joining))));
        }
        let t = Duration::from_secs(60);
        let gone = || SandboxError::Shim("the utility VM is gone".into());
        let started = |m: &AgentEvent| matches!(m, AgentEvent::Started { .. } | AgentEvent::Error { .. });
        let exited = |m: &AgentEvent| matches!(m, AgentEvent::Exit { .. });
        let started = match (self.link.as_mut(), self.member.as_mut()) {
            (Some(l), _) => l.wait_for(0, t, started)?,
            (None, Some(m)) => m.wait_for(0, t, started)?,
            (None, None) => return Err(gone()),
        };
        tracing::debug!("VM: the guest answered the create");
        match started {
            AgentEvent::Started { pid } => Ok(pid),
            AgentEvent::Error { message } => {
                let exit = match (self.link.as_mut(), self.member.as_mut()) {
                    (Some(l), _) => l.wait_for(0, t, exited),
                    (None, Some(m)) => m.wait_for(0, t, exited),
                    (None, None) => Err(gone()),
                };
                let code = match exit {
                    Ok(AgentEvent::Exit { code, .. }) => code,
                    _ => 125,
                };
                Err(SandboxError::Start { message, code })
            }
            _ => Err(SandboxError::Shim("unexpected agent reply".into())),
        }
    }

    fn exec(&mut self, sid: u32, x: &ExecSpec) -> Result<ExecStart, SandboxError> {
        self.pending.insert(sid, (Instant::now() + EXEC_TIMEOUT, None));
        let cid = self.cid.clone();
        self.send(sid, &AgentRequest::Exec { cid, exec: x.clone() });
        Ok(ExecStart::Pending)
    }

    fn signal(&mut self, sid: u32, signal: i32) -> bool {
        self.send(sid, &AgentRequest::Signal { signal });
        self.connected()
    }

    fn resize(&mut self, sid: u32, ws: WinSize) {
        self.send(sid, &AgentRequest::Resize(ws));
    }

    fn stdin(&mut self, sid: u32, data: Vec<u8>) {
        self.send_frame_(Frame { kind: Kind::Stdin, session: sid, data });
    }

    fn close_stdin(&mut self, sid: u32) {
        self.send_frame_(Frame { kind: Kind::StdinEof, session: sid, data: Vec::new() });
    }

    fn query(&mut self, q: Query, token: u64) -> Option<ShimReply> {
        if !self.connected() {
            return Some(ShimReply::Error { message: "the utility VM is gone".into() });
        }
        let cid = self.cid.clone();
        // a VM that holds only this container is paused whole; in a shared
        // sandbox each container's processes are frozen in the guest
        let alone = self.link.is_some() && self.sandbox.as_ref().is_none_or(|s| s.joined.is_empty());
        let req = match &q {
            Query::Pause | Query::Unpause if alone => {
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
                AgentRequest::Update { cid, limits: l.clone() }
            }
            Query::Pause => AgentRequest::Pause { cid },
            Query::Unpause => AgentRequest::Unpause { cid },
            Query::Top => AgentRequest::Top { cid },
            Query::Stats => AgentRequest::Stats { cid },
        };
        let sid = self.next_session;
        self.next_session += 1;
        self.queries.insert(sid, (token, Instant::now() + QUERY_TIMEOUT));
        self.send(sid, &req);
        None
    }

    fn poll_fds(&self, _full: &dyn Fn(u32) -> bool, out: &mut Vec<(RawFd, libc::c_short, Source)>) {
        if let Some(m) = &self.member {
            let ev = libc::POLLIN | if m.out.is_empty() { 0 } else { libc::POLLOUT };
            out.push((m.sock.as_raw_fd(), ev, Source::Channel));
        }
        if let Some(sb) = &self.sandbox {
            out.push((sb.listener.as_raw_fd(), libc::POLLIN, Source::SandboxListener));
            for (n, j) in &sb.joined {
                let ev = libc::POLLIN | if j.out.is_empty() { 0 } else { libc::POLLOUT };
                out.push((j.sock.as_raw_fd(), ev, Source::Joined(*n)));
            }
        }
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
                    self.end_joined(code, &reason);
                    out.push(BackendEvent::Died { code, reason });
                }
                out
            }
            Source::SandboxListener => {
                self.accept_joined();
                Vec::new()
            }
            Source::Joined(n) => {
                self.joined_io(n, revents, buf);
                Vec::new()
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
        if self.frames_buffered() {
            return Some(Instant::now());
        }
        let q = self.queries.values().map(|(_, d)| *d);
        let p = self.pending.values().map(|(d, _)| *d);
        [self.hard_deadline, self.fs_gone_at, self.console_check].into_iter().flatten().chain(q).chain(p).min()
    }

    fn timers(&mut self, now: Instant) -> Vec<BackendEvent> {
        let mut out = if self.frames_buffered() { self.drain_frames() } else { Vec::new() };
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

    fn info(&self) -> Option<VmInfo> {
        Some(self.info.clone())
    }

    fn teardown(&mut self, plan: &ContainerPlan) {
        // a joined container leaves: closing the socket tells the owner
        self.member = None;
        if let Some(mut link) = self.link.take() {
            self.end_joined(137, "its owner container stopped");
            link.shutdown();
            // closing a tap's last descriptor deletes it, which costs the
            // kernel ~25 ms of RCU synchronisation: they close when the shim
            // exits, after its clients (a `run --rm` waiting) have their answer
            self.retired_taps = std::mem::take(&mut link.vm.taps);
        }
        // the share with the containers' roots (and their bind mounts) lives
        // in this process's mount namespace
        if let Some(sb) = self.sandbox.take() {
            let _ = nix::mount::umount2(&sb.share, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(plan.dir.join(SANDBOX_SOCK));
        }
        if let Some(c) = self.carried.take() {
            c.undo();
        }
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.destroy() {
                tracing::warn!("{e}");
            }
            let _ = std::fs::remove_file(plan.dir.join(moat_core::ctr_files::CGROUP));
        }
    }
}
