//! The host end of a utility VM: the sandbox's share (the containers'
//! roots, mounted in the owner shim's private mount namespace and exported
//! with virtiofsd), the guest's view of a container's spec, and the running
//! VM with its agent channel ([`VmLink`]).

use crate::SandboxError;
use moat_proto::{AgentEvent, AgentRequest, Decoder, Frame, Kind};
use moat_runtime::mounts::{fdpath, in_root, mnt, Create};
use moat_runtime::spec::{Mount, NetNs, Rootfs, Spec};
use nix::mount::MsFlags;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use moat_proto::GUEST_ROOT;

/// Where a sandbox's share is mounted in its shim's mount namespace: the
/// `rootfs` directory of the container that owns the utility VM.
pub fn share_dir(owner_dir: &Path) -> PathBuf {
    owner_dir.join("rootfs")
}

/// Makes the calling process's mount namespace (private to the shim)
/// private, and mounts the sandbox's share at `share`: an empty tmpfs,
/// shared, so that a container root mounted under it later (a container
/// joining the sandbox) also appears in virtiofsd's namespace.
pub fn prepare_share(share: &Path) -> Result<(), SandboxError> {
    mnt(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None, "/ private")?;
    let t = share.to_str().ok_or_else(|| SandboxError::Invalid("share path is not UTF-8".into()))?;
    std::fs::create_dir_all(share).map_err(SandboxError::io("create the sandbox share"))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mnt(Some("tmpfs"), t, Some("tmpfs"), flags, Some("mode=0755,size=64k"), "sandbox share")?;
    mnt(None, t, None, MsFlags::MS_SHARED, None, "sandbox share shared")?;
    Ok(())
}

/// Mounts container `cid`'s root (overlay, etc files, bind mounts) at
/// `share/cid`, in the shim's mount namespace (see [`prepare_share`]).
pub fn prepare_root(spec: &Spec, share: &Path, cid: &str) -> Result<PathBuf, SandboxError> {
    let target = share.join(cid);
    std::fs::create_dir_all(&target).map_err(SandboxError::io("create the container's root in the share"))?;
    let t = target.to_str().ok_or_else(|| SandboxError::Invalid("root path is not UTF-8".into()))?;
    let Rootfs::Overlay { lower, upper, work } = &spec.rootfs else {
        return Err(SandboxError::Invalid("VM containers need an overlay root".into()));
    };
    let (data, _layers) = moat_runtime::mounts::overlay_options(lower, upper, work)?;
    let nodev = if spec.privileged { MsFlags::empty() } else { MsFlags::MS_NODEV };
    mnt(Some("overlay"), t, Some("overlay"), nodev, Some(&data), "overlay root filesystem")?;
    let root = std::fs::File::open(&target).map_err(SandboxError::io("open root"))?;
    let r = root.as_raw_fd();
    for (ctr, host) in &spec.etc_files {
        let fd = in_root(r, ctr, Create::File)?;
        mnt(host.to_str(), &fdpath(&fd), None, MsFlags::MS_BIND, None, ctr)?;
    }
    for m in &spec.mounts {
        if let Mount::Bind { source, target, readonly, .. } = m {
            let meta =
                std::fs::metadata(source).map_err(SandboxError::io(format!("bind source {}", source.display())))?;
            let fd = in_root(r, target, if meta.is_dir() { Create::Dir } else { Create::File })?;
            mnt(source.to_str(), &fdpath(&fd), None, MsFlags::MS_BIND | MsFlags::MS_REC, None, target)?;
            let fd = in_root(r, target, Create::No)?;
            let ro = if *readonly { MsFlags::MS_RDONLY } else { MsFlags::empty() };
            mnt(None, &fdpath(&fd), None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | nodev | ro, None, target)?;
        }
    }
    let _ = nix::unistd::chdir("/");
    Ok(target)
}

/// Unmounts container `cid`'s root from the share (and the guest's view of it).
pub fn release_root(share: &Path, cid: &str) {
    let target = share.join(cid);
    let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&target);
}

/// The spec of container `cid` as the guest sees it: root from its
/// directory of the share, binds and etc files already part of it, tmpfs
/// mounts made inside, the guest's network (the sandbox's).
pub fn guest_spec(spec: &Spec, cid: &str) -> Spec {
    let mut g = spec.clone();
    g.rootfs = Rootfs::Dir(Path::new(GUEST_ROOT).join(cid));
    g.rootfs_target = Path::new(moat_proto::GUEST_CTR_ROOT).join(cid);
    g.mounts.retain(|m| matches!(m, Mount::Tmpfs { .. }));
    g.etc_files.clear();
    g.devices.clear();
    // the VM is the boundary: its containers use the guest's network, whose
    // virtio-net interfaces the agent configures (eth0, eth1, ... in order)
    g.net = NetNs::Host;
    number_guest_nics(&mut g);
    g
}

/// Names a guest spec's interfaces after the VM's NICs, in order (`eth0`, …).
pub fn number_guest_nics(g: &mut Spec) {
    for (n, i) in g.interfaces.iter_mut().enumerate() {
        i.from = format!("eth{n}");
        i.name = format!("eth{n}");
    }
}

/// The first control message on session `sid` that `want` takes among the
/// frames `dec` holds; the frames before it are dropped (the blocking waits
/// before a shim's loop runs). `peer` names the other end in errors.
pub(crate) fn take_wanted(
    dec: &mut Decoder,
    sid: u32,
    want: &dyn Fn(&AgentEvent) -> bool,
    peer: &str,
) -> Result<Option<AgentEvent>, SandboxError> {
    while let Some(f) = dec.next_frame().map_err(|e| SandboxError::Shim(format!("{peer}: {e}")))? {
        if f.session == sid && f.kind == Kind::Control {
            let m: AgentEvent = f.msg().map_err(|e| SandboxError::Shim(format!("{peer}: {e}")))?;
            if want(&m) {
                return Ok(Some(m));
            }
        }
    }
    Ok(None)
}

/// A running VM and its agent channel.
pub struct VmLink {
    /// QEMU and virtiofsd.
    pub vm: moat_vm::launch::Vm,
    /// pidfd of QEMU.
    pub qemu_pidfd: OwnedFd,
    /// pidfd of virtiofsd (the container's root filesystem).
    pub virtiofsd_pidfd: OwnedFd,
    /// Why the VM is being ended, when the host ended it (set before QEMU is killed).
    pub failure: Option<String>,
    /// What QMP said about the guest: unparsed bytes, the last `SHUTDOWN`
    /// reason, and whether `GUEST_PANICKED` came.
    qmp_buf: Vec<u8>,
    /// Answers to QMP commands, in order (`Err` with QEMU's message).
    pub qmp_replies: std::collections::VecDeque<Result<(), String>>,
    /// Answers still to come that nobody waits for (the negotiation's).
    qmp_skip: usize,
    /// The reason of QEMU's last `SHUTDOWN` event (`guest-shutdown`, `guest-reset`, ...).
    pub shutdown_reason: Option<String>,
    /// The guest reported a panic through a panic device.
    pub panicked: bool,
    /// Frames from the agent.
    pub dec: Decoder,
    /// Bytes queued to the agent.
    pub out: Vec<u8>,
    /// Console log path.
    pub console: PathBuf,
    /// Accelerator in use.
    pub accel: String,
    /// Guest kernel version.
    pub kernel: String,
    /// The template the VM was restored from (`None`: a cold boot).
    pub template: Option<String>,
}

fn pidfd_of(pid: u32) -> Result<OwnedFd, SandboxError> {
    // SAFETY: pidfd_open returns a new fd we own
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(SandboxError::Shim(format!("pidfd_open: {}", nix::Error::last())));
    }
    // SAFETY: fresh fd
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}

/// Which VM to boot: for container `id` (its files in `dir`), of this
/// size, with a NIC per endpoint.
pub struct Boot<'a> {
    /// The container that owns the VM.
    pub id: &'a str,
    /// Its directory.
    pub dir: &'a Path,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Its switch endpoints.
    pub endpoints: &'a [moat_net::Endpoint],
    /// A network namespace's interfaces carried in (a CNI pod's), NICs
    /// after the endpoints'.
    pub carried: Option<&'a moat_net::netns::Carried>,
}

impl VmLink {
    /// Boots the VM `b` exporting `root`, and waits for the agent. `first` goes to the agent as early as the boot allows: right
    /// behind `Resume` on a clone (the agent handles requests in order, so
    /// this saves a round trip through the guest), after `Ready` on a cold
    /// boot; its answer is left for the caller.
    pub fn start(
        opts: &crate::VmOptions,
        b: &Boot<'_>,
        root: &Path,
        cgroup: &moat_runtime::cgroup::Cgroup,
        first: &AgentRequest,
    ) -> Result<Self, SandboxError> {
        let t0 = Instant::now();
        let (id, endpoints, mem_mib, vcpus) = (b.id, b.endpoints, b.mem_mib, b.vcpus);
        let base = crate::templates::base(opts, mem_mib, vcpus)?;
        let use_template = crate::templates::status_for(opts, base.version).enabled;
        // a template that cannot be built is a cold boot, unless the user insisted
        let carried = b.carried.map(|c| c.nics.len()).unwrap_or(0);
        let template = match use_template.then(|| crate::templates::ensure(opts, &base, endpoints.len() + carried)) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) if opts.templates == Some(true) => return Err(e),
            Some(Err(e)) => {
                tracing::warn!("VM template unavailable, booting cold: {e}");
                None
            }
            None => None,
        };
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, template = template.is_some(), "VM: template ready");
        let ram = match &template {
            Some(t) => Some(std::sync::Arc::new(moat_vm::template::memfd("moat-ram", t.meta.shape.mem_mib << 20)?)),
            None => None,
        };
        let dir = b.dir.to_path_buf();
        let console = dir.join(moat_core::ctr_files::CONSOLE);
        let mut nics = Vec::new();
        for (n, e) in endpoints.iter().enumerate() {
            let tap = moat_net::if_name('t', crate::short_id(id), n);
            if let Err(err) = moat_net::link::add_tap(&tap, &e.bridge) {
                nics.iter().for_each(|(t, _): &(String, String)| moat_net::link::del_link(t));
                return Err(err.into());
            }
            nics.push((tap, e.mac.clone()));
        }
        // the switches' taps, ours to delete if the boot fails (the carried
        // ones are the namespace's)
        let taps: Vec<String> = nics.iter().map(|(t, _)| t.clone()).collect();
        nics.extend(b.carried.iter().flat_map(|c| c.nics.iter().map(|n| (n.tap.clone(), n.mac.clone()))));
        let vc = moat_vm::launch::VmConfig {
            rootfs: root.to_path_buf(),
            run_dir: dir.clone(),
            console_log: console.clone(),
            name: format!("moat-{}", crate::short_id(id)),
            nics,
            nics_netns: b.carried.map(|c| c.netns.clone()),
            uid: moat_vm::qemu::vm_uid(crate::short_id(id)),
            cgroup_procs: cgroup.procs_files(),
            ram: ram.clone(),
            role: if template.is_some() { moat_vm::launch::Role::Clone } else { moat_vm::launch::Role::Cold },
            ..base.cfg.clone()
        };
        let accel = vc.accel;
        let kernel = base.kernel.clone();
        let drop_taps = || taps.iter().for_each(|t| moat_net::link::del_link(t));
        let vm = match moat_vm::launch::launch(&vc, base.version) {
            Ok(vm) => vm,
            Err(e) => {
                drop_taps();
                return Err(e.into());
            }
        };
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "VM: QEMU and virtiofsd started");
        let pidfds = pidfd_of(vm.qemu.id()).and_then(|q| Ok((q, pidfd_of(vm.virtiofsd.id())?)));
        let (qemu_pidfd, virtiofsd_pidfd) = match pidfds {
            Ok(fds) => fds,
            Err(e) => {
                let mut vm = vm;
                let _ = vm.qemu.kill();
                let _ = vm.qemu.wait();
                let _ = vm.virtiofsd.kill();
                let _ = vm.virtiofsd.wait();
                drop_taps();
                return Err(e);
            }
        };
        let mut link = VmLink {
            vm,
            qemu_pidfd,
            virtiofsd_pidfd,
            failure: None,
            qmp_buf: Vec::new(),
            qmp_replies: std::collections::VecDeque::new(),
            qmp_skip: 1,
            shutdown_reason: None,
            panicked: false,
            dec: Decoder::default(),
            out: Vec::new(),
            console,
            accel: accel.to_string(),
            kernel,
            template: template.as_ref().map(|t| t.meta.digest.clone()),
        };
        let ready = match (&template, &ram) {
            (Some(t), Some(ram)) => link.restore(t, ram, id, first, opts.boot_timeout()),
            _ => {
                // QMP sends events only after capabilities negotiation; it waits in
                // the socket until QEMU reads it after its greeting
                let _ = link.vm.qmp.set_nonblocking(true);
                let _ = link.vm.qmp.write_all(b"{\"execute\":\"qmp_capabilities\"}\n");
                link.wait_for(0, opts.boot_timeout(), |m| matches!(m, AgentEvent::Ready { .. }))
            }
        };
        let ready = ready.and_then(|m| match m {
            AgentEvent::Ready { version } if version == moat_proto::PROTOCOL_VERSION => Ok(()),
            AgentEvent::Ready { version } => Err(SandboxError::Unsupported(format!(
                "the guest agent ({}) speaks protocol version {version}, this moat speaks {}: rebuild the agent (make agent)",
                vc.initramfs.display(),
                moat_proto::PROTOCOL_VERSION
            ))),
            _ => Err(SandboxError::Shim("unexpected first message from the guest agent".into())),
        });
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "VM: agent ready");
        match ready {
            Ok(()) => {
                if template.is_none() {
                    link.send(0, first);
                }
                Ok(link)
            }
            Err(e) => {
                link.kill();
                drop_taps();
                Err(e)
            }
        }
    }

    /// Restores a clone of `t` (QEMU waits with `-incoming defer`): fills
    /// its RAM while QEMU starts, restores the device state, then has the
    /// agent reseed its RNG, set its clock and name, and mount the root;
    /// `then` follows `Resume` at once.
    fn restore(
        &mut self,
        t: &moat_vm::template::Template,
        ram: &OwnedFd,
        id: &str,
        then: &AgentRequest,
        timeout: Duration,
    ) -> Result<AgentEvent, SandboxError> {
        let t0 = Instant::now();
        moat_vm::template::fill_ram(t, ram)?;
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "VM restore: RAM filled");
        let stream = self.vm.qmp.try_clone().map_err(SandboxError::io("QMP"))?;
        let mut qmp = moat_vm::qmp::Qmp::negotiate(stream, timeout).map_err(|e| {
            SandboxError::Shim(format!("{e}; guest console: {}", moat_vm::launch::console_tail(&self.console, 8)))
        })?;
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "VM restore: QMP up");
        moat_vm::template::restore(&mut qmp, t)?;
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "VM restore: device state restored, running");
        drop(qmp);
        self.qmp_skip = 0;
        let _ = self.vm.qmp.set_nonblocking(true);
        let mut entropy = vec![0u8; 64];
        // SAFETY: getrandom fills our buffer of the given length
        let got = unsafe { libc::getrandom(entropy.as_mut_ptr() as *mut libc::c_void, entropy.len(), 0) };
        if got != entropy.len() as isize {
            return Err(SandboxError::Shim(format!("host RNG: {}", std::io::Error::last_os_error())));
        }
        let unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.send(0, &AgentRequest::Resume { entropy, unix_nanos, hostname: format!("moat-{}", crate::short_id(id)) });
        self.send(0, then);
        let ready = self.wait_for(0, timeout, |m| matches!(m, AgentEvent::Ready { .. } | AgentEvent::Error { .. }))?;
        match ready {
            AgentEvent::Error { message } => {
                Err(SandboxError::Shim(format!("the restored VM could not resume: {message}")))
            }
            m => Ok(m),
        }
    }

    /// Blocks until a control message on session `sid` satisfies `want`,
    /// QEMU exits, or the timeout passes. Other frames are dropped (only used
    /// before the shim's loop runs).
    pub fn wait_for(
        &mut self,
        sid: u32,
        timeout: Duration,
        want: impl Fn(&AgentEvent) -> bool,
    ) -> Result<AgentEvent, SandboxError> {
        let deadline = Instant::now() + timeout;
        let fd = self.vm.channel.as_raw_fd();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            self.flush_blocking()?;
            if let Some(m) = take_wanted(&mut self.dec, sid, &want, "agent")? {
                return Ok(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SandboxError::Shim(format!(
                    "the utility VM did not come up within {}s; guest console: {}",
                    timeout.as_secs(),
                    moat_vm::launch::console_tail(&self.console, 8)
                )));
            }
            let mut fds = [
                libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.qemu_pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.virtiofsd_pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: poll over our array
            unsafe { libc::poll(fds.as_mut_ptr(), 3, left.as_millis().min(i32::MAX as u128) as i32) };
            if fds[1].revents != 0 {
                return Err(SandboxError::Shim(format!(
                    "the utility VM exited during start-up; guest console: {}",
                    moat_vm::launch::console_tail(&self.console, 8)
                )));
            }
            if fds[2].revents != 0 {
                return Err(SandboxError::Shim(format!(
                    "virtiofsd (the utility VM's file server) exited during start-up: {}",
                    moat_vm::launch::console_tail(&self.console, 4)
                )));
            }
            if fds[0].revents != 0 {
                match self.vm.channel.read(&mut buf) {
                    Ok(0) => return Err(SandboxError::Shim("the guest agent closed its channel".into())),
                    Ok(n) => self.dec.push(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(SandboxError::Shim(format!("agent channel: {e}"))),
                }
            }
        }
    }

    /// Writes what is queued for the agent, waiting at most 5 s for a guest
    /// that does not read (a wedged guest must never wedge the shim).
    fn flush_blocking(&mut self) -> Result<(), SandboxError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.out.is_empty() {
            match self.vm.channel.write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.out.clear();
                        return Err(SandboxError::Shim("the utility VM does not read its channel".into()));
                    }
                    let mut p = libc::pollfd { fd: self.vm.channel.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                    // SAFETY: poll one fd of ours
                    unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) };
                }
                Err(e) => {
                    self.out.clear();
                    return Err(SandboxError::Io("agent channel".into(), e));
                }
            }
        }
        Ok(())
    }

    /// Queues a request.
    pub fn send(&mut self, sid: u32, m: &AgentRequest) {
        Frame::control(sid, m).encode_into(&mut self.out);
    }

    /// Queues a frame.
    pub fn send_frame(&mut self, f: Frame) {
        f.encode_into(&mut self.out);
    }

    /// Asks the guest to stop its container and sync, then kills QEMU and virtiofsd.
    pub fn shutdown(&mut self) {
        self.send(0, &AgentRequest::Shutdown);
        // the agent says Ok once it has killed the container and synced the
        // guest's filesystems: then QEMU is killed without waiting for the
        // guest kernel's power-off (an older agent just powers off)
        let _ = self.wait_for(0, Duration::from_secs(5), |m| matches!(m, AgentEvent::Ok { .. }));
        self.kill();
    }

    /// virtiofsd exited while the VM ran: the guest's root filesystem is
    /// gone, so the VM is ended (its QEMU exit then reports this reason).
    pub fn fs_died(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        let how = match self.vm.virtiofsd.wait() {
            Ok(s) if s.signal().is_some() => format!("was killed by signal {}", s.signal().unwrap_or(9)),
            Ok(s) => format!("exited with {s}"),
            Err(e) => format!("vanished ({e})"),
        };
        self.failure = Some(format!(
            "virtiofsd (the utility VM's file server) {how}: the container's filesystem was gone, so its VM was stopped"
        ));
        let _ = self.vm.qemu.kill();
    }

    /// Kills and reaps QEMU and virtiofsd.
    pub fn kill(&mut self) {
        let _ = self.vm.qemu.kill();
        let _ = self.vm.qemu.wait();
        let _ = self.vm.virtiofsd.kill();
        let _ = self.vm.virtiofsd.wait();
    }

    /// Reads what QMP sent (events), keeping the facts about the guest's end.
    pub fn qmp_io(&mut self) {
        let mut buf = [0u8; 16 << 10];
        loop {
            match self.vm.qmp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.qmp_buf.extend_from_slice(&buf[..n]),
            }
        }
        while let Some(i) = self.qmp_buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.qmp_buf.drain(..=i).collect();
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
            match v["event"].as_str() {
                Some("SHUTDOWN") => self.shutdown_reason = v["data"]["reason"].as_str().map(str::to_string),
                Some("GUEST_PANICKED") => self.panicked = true,
                Some(_) => {}
                None if v.get("QMP").is_some() => {}
                // the answer to the negotiation does not count
                None if self.qmp_skip > 0 => self.qmp_skip -= 1,
                None if v.get("return").is_some() => self.qmp_replies.push_back(Ok(())),
                None => {
                    let m = v["error"]["desc"].as_str().unwrap_or("QMP command failed").to_string();
                    self.qmp_replies.push_back(Err(m));
                }
            }
        }
        // a peer that floods us without newlines is not QEMU's QMP
        if self.qmp_buf.len() > 1 << 20 {
            self.qmp_buf.clear();
        }
    }

    /// Sends a QMP command (`stop`, `cont`); its answer arrives in [`Self::qmp_replies`].
    pub fn qmp_command(&mut self, execute: &str) {
        let line = format!("{{\"execute\":{}}}\n", serde_json::Value::String(execute.into()));
        let _ = self.vm.qmp.write_all(line.as_bytes());
    }

    /// Why QEMU ended, after it exited, from what only QEMU and the host can
    /// say (its exit status and its QMP events), never from the guest console,
    /// which the container can write to.
    pub fn death(&mut self) -> (i32, String) {
        use std::os::unix::process::ExitStatusExt;
        let st = self.vm.qemu.wait().ok();
        self.qmp_io();
        let _ = self.vm.virtiofsd.kill();
        let _ = self.vm.virtiofsd.wait();
        if let Some(f) = self.failure.take() {
            return (137, f);
        }
        let console = format!("guest console in {}", self.console.display());
        if let Some(sig) = st.and_then(|s| s.signal()) {
            return (128 + sig, format!("qemu was killed by signal {sig}; {console}"));
        }
        let what = match (self.panicked, self.shutdown_reason.as_deref()) {
            (true, _) | (_, Some("guest-panic")) => "guest kernel panic".to_string(),
            // the agent only ever powers off; with panic=-1 a panicking guest resets
            (_, Some("guest-reset")) => "guest kernel panic (the guest reset itself)".to_string(),
            (_, Some("guest-shutdown")) => "the utility VM powered off unexpectedly".to_string(),
            (_, Some(r)) => format!("the utility VM stopped unexpectedly ({r})"),
            (_, None) => "the utility VM stopped unexpectedly".to_string(),
        };
        let code = match st.and_then(|s| s.code()) {
            Some(0) | None => 255,
            Some(c) => c,
        };
        let how = st.map(|s| format!("qemu exited with {s}")).unwrap_or_else(|| "qemu vanished".into());
        (code, format!("{what} ({how}); {console}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_spec_of_a_container() {
        let spec = Spec {
            rootfs: Rootfs::Overlay { lower: vec!["/l".into()], upper: "/u".into(), work: "/w".into() },
            rootfs_target: "/host/rootfs".into(),
            readonly_rootfs: false,
            process: Default::default(),
            hostname: "h".into(),
            domainname: String::new(),
            pid_host: false,
            ipc_host: false,
            uts_host: false,
            pid_join: None,
            ipc_join: None,
            uts_join: None,
            cgroupns_host: false,
            mounts: vec![
                Mount::Bind {
                    source: "/src".into(),
                    target: "/data".into(),
                    readonly: false,
                    propagation: Default::default(),
                },
                Mount::Tmpfs { target: "/t".into(), options: String::new() },
            ],
            etc_files: vec![("/etc/hosts".into(), "/host/hosts".into())],
            capabilities: vec![],
            seccomp: Default::default(),
            no_new_privs: true,
            masked_paths: vec![],
            readonly_paths: vec![],
            net: NetNs::New,
            privileged: false,
            shm_size: 1,
            interfaces: vec![moat_runtime::netconf::Iface {
                from: "mtpabc0".into(),
                name: "eth0".into(),
                ip: "10.0.0.2".parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                prefix: 24,
                gateway: None,
                mac: "02:00:00:00:00:01".into(),
                ip6: None,
                prefix6: 0,
                gateway6: None,
            }],
            devices: vec![],
            sysctls: vec![],
        };
        let g = guest_spec(&spec, "c1");
        assert!(matches!(&g.rootfs, Rootfs::Dir(d) if *d == Path::new(GUEST_ROOT).join("c1")));
        assert_eq!(g.rootfs_target, Path::new(moat_proto::GUEST_CTR_ROOT).join("c1"));
        assert_eq!(
            g.mounts,
            vec![Mount::Tmpfs { target: "/t".into(), options: String::new() }],
            "binds are part of the export"
        );
        assert!(g.etc_files.is_empty());
        assert_eq!(g.net, NetNs::Host, "the container uses the guest's configured network");
        assert_eq!(g.interfaces[0].from, "eth0");
    }
}
