//! Starting one utility VM: virtiofsd exporting the container's root and QEMU
//! booting the guest kernel with the agent, started in parallel.
//!
//! No paths are raced: the shim binds virtiofsd's listening socket itself,
//! hands it to virtiofsd (`--fd`), and hands QEMU an already-connected client
//! end of it; the agent channel is a socketpair whose other end QEMU gets as
//! the virtio-serial port's chardev (`fd=`); QMP and the NICs' taps are
//! passed the same way.
//!
//! Least privilege: virtiofsd runs in its own namespace sandbox without
//! `CAP_MKNOD` and without `CAP_DAC_READ_SEARCH` (moat uses no inode file
//! handles, and with that capability `open_by_handle_at` reaches any file
//! of the host's filesystems, whatever the sandbox's root); QEMU runs in an empty network namespace (its taps are open
//! descriptors), dies with its shim, and once it has opened everything it
//! needs it chroots into an empty directory and becomes an unprivileged user
//! of its own (see `qemu::vm_uid`), under QEMU's seccomp sandbox.

use crate::kernel::Kernel;
use crate::qemu::{self, Accel};
use crate::VmError;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// Extra guest memory on top of the container's `--memory`, for the guest
/// kernel and agent.
pub const MEMORY_OVERHEAD_MIB: u64 = 96;
/// Guest memory when the container has no `--memory`.
pub const DEFAULT_MEMORY_MIB: u64 = 512;

/// What a VM is started as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// A full boot that mounts the container's root.
    #[default]
    Cold,
    /// A boot that stops with the agent waiting and nothing mounted, to be
    /// snapshotted (see [`crate::template`]).
    Template,
    /// A restore of a template's snapshot (`-incoming defer`).
    Clone,
}

/// How to start a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest kernel.
    pub kernel: Kernel,
    /// Initramfs with the agent.
    pub initramfs: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Directory exported as the guest's container root.
    pub rootfs: PathBuf,
    /// Directory for the VM's sockets.
    pub run_dir: PathBuf,
    /// Where the guest console goes.
    pub console_log: PathBuf,
    /// VM name shown in the host's process list (`-name`).
    pub name: String,
    /// Network cards: (tap device on a switch's bridge, MAC).
    pub nics: Vec<(String, String)>,
    /// The network namespace the taps are in (a CNI pod's, see
    /// `moat_net::netns`); this process's when `None`.
    pub nics_netns: Option<PathBuf>,
    /// The unprivileged uid/gid QEMU becomes once started.
    pub uid: u32,
    /// QEMU binary (PATH when `None`).
    pub qemu: Option<PathBuf>,
    /// virtiofsd binary (PATH and usual places when `None`).
    pub virtiofsd: Option<PathBuf>,
    /// `cgroup.procs` files QEMU and virtiofsd join before they run, so
    /// whoever destroys the container's cgroup ends its VM (a drop of
    /// privileges clears `PDEATHSIG`, so a dead shim alone would not).
    pub cgroup_procs: Vec<PathBuf>,
    /// Guest RAM in this memfd (templates and clones; an anonymous memfd
    /// of QEMU's own when `None`).
    pub ram: Option<Arc<OwnedFd>>,
    /// Boot, template boot or restore.
    pub role: Role,
}

/// A running VM.
pub struct Vm {
    /// QEMU.
    pub qemu: Child,
    /// virtiofsd.
    pub virtiofsd: Child,
    /// The agent channel.
    pub channel: UnixStream,
    /// QEMU's QMP connection.
    pub qmp: UnixStream,
    /// Our descriptors of QEMU's taps: the taps exist while they (or QEMU's)
    /// are open, so whoever drops them last pays for deleting the devices.
    pub taps: Vec<std::os::fd::OwnedFd>,
}

/// Looks for a program: the configured path, then PATH, then extra places
/// and `~/.cargo/bin` (where `cargo install virtiofsd` puts it).
pub fn find_program(configured: Option<&Path>, name: &str, extra: &[&str]) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(extra.iter().map(PathBuf::from))
        .chain(std::iter::once(home.join(".cargo/bin").join(name)))
        .find(|p| p.is_file())
}

/// Passes `fds[i]` to the child as descriptor `3 + i`.
fn pass_fds(cmd: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: only dup2 (async-signal-safe) between fork and exec
    unsafe {
        cmd.pre_exec(move || {
            // move sources out of the way first so dup2 targets never clobber them
            let mut tmp = Vec::new();
            for fd in &fds {
                let d = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if d < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                tmp.push(d);
            }
            for (i, fd) in tmp.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The guest kernel command line. Templates and their clones boot with
/// [`moat_proto::TEMPLATE_ARG`], which makes the agent stop before mounting.
pub fn kernel_cmdline(tsc_khz: Option<u64>, role: Role) -> String {
    let mut append =
        String::from("console=ttyS0 panic=-1 quiet tsc=reliable cryptomgr.notests mitigations=off pci=off");
    if let Some(k) = tsc_khz {
        append.push_str(&format!(" tsc_early_khz={k}"));
    }
    if role != Role::Cold {
        // freed pages are zeroed, so the snapshot stores (and every clone
        // copies) only memory the guest really holds
        append.push_str(" init_on_free=1 ");
        append.push_str(moat_proto::TEMPLATE_ARG);
    }
    append
}

/// The QEMU and virtiofsd binaries `cfg` uses.
pub fn programs(qemu: Option<&Path>, virtiofsd: Option<&Path>) -> Result<(PathBuf, PathBuf), VmError> {
    let qemu_bin = find_program(qemu, "qemu-system-x86_64", &[])
        .ok_or_else(|| VmError::Missing("qemu-system-x86_64", "install Debian's qemu-system-x86".into()))?;
    let vfsd_bin = find_program(virtiofsd, "virtiofsd", &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"])
        .ok_or_else(|| {
            VmError::Missing("virtiofsd", "install it with `cargo install virtiofsd` (make test does)".into())
        })?;
    Ok((qemu_bin, vfsd_bin))
}

/// The version of the QEMU binary at `bin`, remembered in `cache_dir`
/// per binary identity (running `qemu --version` costs tens of ms per VM).
pub fn qemu_version_cached(bin: &Path, cache_dir: &Path) -> Result<qemu::Version, VmError> {
    let Ok(id) = crate::files::FileId::of(bin) else { return qemu_version(bin) };
    let key = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(serde_json::to_vec(&id).unwrap_or_default()))
    };
    let path = cache_dir.join(format!(".qemu-version-{}", &key[..16]));
    if let Some(v) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        return Ok(v);
    }
    let v = qemu_version(bin)?;
    if crate::files::create_private_dir(cache_dir).is_ok() {
        let tmp = cache_dir.join(format!(".qemu-version-{}.{}", &key[..16], std::process::id()));
        if std::fs::write(&tmp, serde_json::to_vec(&v).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(v)
}

/// The version of the QEMU binary at `bin` (`--version`).
pub fn qemu_version(bin: &Path) -> Result<qemu::Version, VmError> {
    let o =
        Command::new(bin).arg("--version").output().map_err(VmError::io(format!("run {} --version", bin.display())))?;
    let out = String::from_utf8_lossy(&o.stdout);
    qemu::Version::parse(&out)
        .ok_or_else(|| VmError::Command(format!("cannot read the version of {}: {out:?}", bin.display())))
}

/// The QEMU command for `cfg`: the agent channel as fd 3, the virtiofsd
/// connection as fd 4, QMP as fd 5, the taps from fd 6 on, then the RAM memfd.
pub fn command(cfg: &VmConfig, version: qemu::Version, tsc_khz: Option<u64>) -> qemu::Command {
    let ram_fd = 6 + cfg.nics.len();
    qemu::Command {
        version,
        accel: cfg.accel,
        name: cfg.name.clone(),
        vcpus: cfg.vcpus,
        mem_mib: cfg.mem_mib,
        memory: match cfg.ram {
            Some(_) => qemu::Memory::File(PathBuf::from(format!("/proc/self/fd/{ram_fd}"))),
            None => qemu::Memory::Memfd,
        },
        kernel: cfg.kernel.vmlinux.clone(),
        initrd: cfg.initramfs.clone(),
        append: kernel_cmdline(tsc_khz, cfg.role),
        ctl_fd: 3,
        vfs_fd: 4,
        vfs_tag: moat_proto::VIRTIOFS_TAG.into(),
        qmp_fd: Some(5),
        nics: cfg
            .nics
            .iter()
            .enumerate()
            .map(|(n, (_, mac))| qemu::Nic { fd: 6 + n as i32, mac: mac.clone() })
            .collect(),
        run_as: Some(qemu::RunAs { uid: cfg.uid, gid: cfg.uid, chroot: cfg.run_dir.join("empty") }),
        incoming: cfg.role == Role::Clone,
        pit: cfg.accel == Accel::Kvm || tsc_khz.is_none(),
    }
}

/// The container-independent part of the QEMU command a clone of `cfg`
/// (with `nics` NICs) runs: part of a template's shape.
pub fn shape_args(cfg: &VmConfig, version: qemu::Version, nics: usize) -> String {
    let mut c = cfg.clone();
    c.role = Role::Clone;
    c.nics = vec![(String::new(), String::new()); nics];
    command(&c, version, crate::accel::tsc_khz()).shape_args()
}

/// Opens the existing tap device `name` (attached to its bridge) for QEMU
/// and makes it vanish with its last descriptor, like the new unattached
/// tap an empty name makes (a template's NICs, which carry no traffic): a
/// dead shim and QEMU leave no tap behind, and the ~25 ms the kernel takes
/// to delete one happen where the descriptors are closed (see [`Vm::taps`]).
pub fn open_tap(name: &str) -> Result<std::os::fd::OwnedFd, VmError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(VmError::io("open /dev/net/tun"))?;
    // SAFETY: ifreq is plain data; all-zero is valid
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= libc::IFNAMSIZ {
        return Err(VmError::Command(format!("bad tap name {name:?}")));
    }
    for (i, b) in name.bytes().enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF with a valid ifreq on our descriptor
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &ifr) } < 0 {
        return Err(VmError::Io(format!("attach to tap {name}"), std::io::Error::last_os_error()));
    }
    // SAFETY: TUNSETPERSIST takes an int by value on our attached descriptor
    if !name.is_empty() && unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETPERSIST, 0 as libc::c_ulong) } < 0 {
        return Err(VmError::Io(format!("make tap {name} non-persistent"), std::io::Error::last_os_error()));
    }
    Ok(f.into())
}

/// Opens the NICs' taps, in network namespace `netns` when given (on a
/// thread that enters it: a tap descriptor stays bound to its namespace's
/// device; the name would make a new tap in this one).
fn open_taps(nics: &[(String, String)], netns: Option<&Path>) -> Result<Vec<std::os::fd::OwnedFd>, VmError> {
    let open = |nics: &[(String, String)]| nics.iter().map(|(t, _)| open_tap(t)).collect::<Result<Vec<_>, _>>();
    let Some(ns) = netns else { return open(nics) };
    let f = std::fs::File::open(ns).map_err(VmError::io(format!("open the network namespace {}", ns.display())))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only (a network namespace is per thread)
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(VmError::Io(format!("enter {}", ns.display()), std::io::Error::last_os_error()));
            }
            open(nics)
        })
        .join()
        .unwrap_or_else(|_| Err(VmError::Command("the tap thread panicked".into())))
    })
}

/// Moves the child into the container's cgroup (`procs`: open
/// `cgroup.procs` files) and makes it die with the shim. QEMU (`qemu`) also
/// gets an empty network namespace of its own and no transparent huge pages:
/// it asks for them on TCG's translated-code buffer, where they turn the
/// ~19 MiB a clone touches into ~22 MiB resident (no slower, measured).
fn confine(cmd: &mut Command, procs: Vec<RawFd>, qemu: bool) {
    // SAFETY: only write, prctl and unshare (async-signal-safe) between fork and exec
    unsafe {
        cmd.pre_exec(move || {
            for fd in &procs {
                if libc::write(*fd, b"0".as_ptr() as *const libc::c_void, 1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if qemu && libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if qemu && libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts virtiofsd and QEMU for `cfg`.
/// `version` is the QEMU binary's (see [`qemu_version_cached`]).
pub fn launch(cfg: &VmConfig, version: qemu::Version) -> Result<Vm, VmError> {
    let (qemu_bin, vfsd_bin) = programs(cfg.qemu.as_deref(), cfg.virtiofsd.as_deref())?;
    let listener = moat_proto::sock::bind(&cfg.run_dir, "vfs.sock")
        .map_err(VmError::io(format!("bind {}/vfs.sock", cfg.run_dir.display())))?;
    let vfs_client =
        moat_proto::sock::connect(&cfg.run_dir, "vfs.sock").map_err(VmError::io("connect virtiofsd socket"))?;
    let (ours, theirs) = UnixStream::pair().map_err(VmError::io("socketpair"))?;
    let (qmp, qmp_theirs) = UnixStream::pair().map_err(VmError::io("socketpair"))?;
    let taps = open_taps(&cfg.nics, cfg.nics_netns.as_deref())?;
    let procs: Vec<std::fs::File> = cfg
        .cgroup_procs
        .iter()
        .map(|p| std::fs::OpenOptions::new().write(true).open(p).map_err(VmError::io(format!("open {}", p.display()))))
        .collect::<Result<_, _>>()?;
    let proc_fds: Vec<RawFd> = procs.iter().map(|f| f.as_raw_fd()).collect();
    let empty = cfg.run_dir.join("empty");
    std::fs::create_dir_all(&empty).map_err(VmError::io(format!("create {}", empty.display())))?;
    let console = {
        use std::os::unix::fs::OpenOptionsExt;
        // append mode: the shim may truncate it (rotation) under the writers
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&cfg.console_log)
            .map_err(VmError::io("create console log"))?;
        f.set_len(0).map_err(VmError::io("truncate console log"))?;
        f
    };
    let vfs_log = console.try_clone().map_err(VmError::io("console log"))?;

    let mut vfsd = Command::new(&vfsd_bin);
    vfsd.arg("--fd=3")
        .arg(format!("--shared-dir={}", cfg.rootfs.display()))
        .args([
            "--cache=auto",
            "--xattr",
            "--announce-submounts",
            "--sandbox=namespace",
            "--modcaps=-mknod:-dac_read_search",
            "--inode-file-handles=never",
            "--log-level=error",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(vfs_log);
    confine(&mut vfsd, proc_fds.clone(), false);
    pass_fds(&mut vfsd, vec![listener.as_raw_fd()]);
    let mut virtiofsd = vfsd.spawn().map_err(VmError::io(format!("start {}", vfsd_bin.display())))?;
    drop(listener);

    let mut q = Command::new(&qemu_bin);
    q.args(command(cfg, version, crate::accel::tsc_khz()).args())
        .stdin(Stdio::null())
        .stdout(console.try_clone().map_err(VmError::io("console"))?)
        .stderr(console);
    confine(&mut q, proc_fds, true);
    let mut fds = vec![theirs.as_raw_fd(), vfs_client.as_raw_fd(), qmp_theirs.as_raw_fd()];
    fds.extend(taps.iter().map(|t| t.as_raw_fd()));
    fds.extend(cfg.ram.iter().map(|r| r.as_raw_fd()));
    pass_fds(&mut q, fds);
    let qemu = match q.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = virtiofsd.kill();
            let _ = virtiofsd.wait();
            return Err(VmError::Io(format!("start {}", qemu_bin.display()), e));
        }
    };
    drop(theirs);
    drop(vfs_client);
    drop(qmp_theirs);
    Ok(Vm { qemu, virtiofsd, channel: ours, qmp, taps })
}

/// The last lines of the guest console, for error messages.
pub fn console_tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}
