//! Starting one utility VM: virtiofsd exporting the container's root and QEMU
//! booting the guest kernel with the agent, started in parallel.
//!
//! No paths are raced: the shim binds virtiofsd's listening socket itself,
//! hands it to virtiofsd (`--fd`), and hands QEMU an already-connected client
//! end of it; the agent channel is a socketpair whose other end QEMU gets as
//! the virtio-serial port's chardev (`fd=`).

use crate::kernel::Kernel;
use crate::VmError;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Extra guest memory on top of the container's `--memory`, for the guest
/// kernel and agent.
pub const MEMORY_OVERHEAD_MIB: u64 = 96;
/// Guest memory when the container has no `--memory`.
pub const DEFAULT_MEMORY_MIB: u64 = 512;

/// How to start a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest kernel.
    pub kernel: Kernel,
    /// Initramfs with the agent.
    pub initramfs: PathBuf,
    /// `kvm` or `tcg`.
    pub accel: String,
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
}

/// A running VM.
pub struct Vm {
    /// QEMU.
    pub qemu: Child,
    /// virtiofsd.
    pub virtiofsd: Child,
    /// The agent channel.
    pub channel: UnixStream,
}

/// Looks for a program: an environment override, then PATH, then extra places.
pub fn find_program(env: &str, name: &str, extra: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
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

/// The QEMU command line for `cfg`, with the agent channel as fd 3 and the
/// virtiofsd connection as fd 4.
pub fn qemu_args(cfg: &VmConfig, tsc_khz: Option<u64>) -> Vec<String> {
    let mem = cfg.mem_mib;
    let mut append =
        String::from("console=ttyS0 panic=-1 quiet tsc=reliable cryptomgr.notests mitigations=off pci=off");
    if let Some(k) = tsc_khz {
        append.push_str(&format!(" tsc_early_khz={k}"));
    }
    let accel = if cfg.accel == "kvm" { vec!["-accel", "kvm", "-cpu", "host"] } else { vec!["-accel", "tcg"] };
    let mut a: Vec<String> = accel.into_iter().map(String::from).collect();
    a.extend([
        "-name".into(),
        cfg.name.clone(),
        "-smp".into(),
        cfg.vcpus.to_string(),
        "-m".into(),
        format!("{mem}M"),
        "-M".into(),
        "microvm,pit=on,pic=on,rtc=on,memory-backend=mem".into(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-global".into(),
        "virtio-mmio.force-legacy=false".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        "stdio".into(),
        "-kernel".into(),
        cfg.kernel.vmlinux.display().to_string(),
        "-initrd".into(),
        cfg.initramfs.display().to_string(),
        "-append".into(),
        append,
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        "socket,id=ctl,fd=3".into(),
        "-device".into(),
        "virtserialport,chardev=ctl,name=ctl0".into(),
        "-chardev".into(),
        "socket,id=vfs,fd=4".into(),
        "-device".into(),
        "vhost-user-fs-device,chardev=vfs,tag=rootfs".into(),
        "-no-reboot".into(),
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
    ]);
    for (n, (tap, mac)) in cfg.nics.iter().enumerate() {
        a.push("-netdev".into());
        a.push(format!("tap,id=n{n},ifname={tap},script=no,downscript=no,vhost=off"));
        a.push("-device".into());
        a.push(format!("virtio-net-device,netdev=n{n},mac={mac}"));
    }
    a
}

/// Starts virtiofsd and QEMU for `cfg`.
pub fn launch(cfg: &VmConfig) -> Result<Vm, VmError> {
    let qemu_bin = find_program("MOAT_QEMU", "qemu-system-x86_64", &[])
        .ok_or_else(|| VmError::Missing("qemu-system-x86_64", "install Debian's qemu-system-x86".into()))?;
    let vfsd_bin = find_program("MOAT_VIRTIOFSD", "virtiofsd", &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"])
        .ok_or_else(|| {
            VmError::Missing("virtiofsd", "install it with `cargo install virtiofsd` (make test does)".into())
        })?;
    let listener = moat_proto::sock::bind(&cfg.run_dir, "vfs.sock")
        .map_err(VmError::io(format!("bind {}/vfs.sock", cfg.run_dir.display())))?;
    let vfs_client =
        moat_proto::sock::connect(&cfg.run_dir, "vfs.sock").map_err(VmError::io("connect virtiofsd socket"))?;
    let (ours, theirs) = UnixStream::pair().map_err(VmError::io("socketpair"))?;
    let console = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&cfg.console_log)
            .map_err(VmError::io("create console log"))?
    };
    let vfs_log = console.try_clone().map_err(VmError::io("console log"))?;

    let mut vfsd = Command::new(&vfsd_bin);
    vfsd.arg("--fd=3")
        .arg(format!("--shared-dir={}", cfg.rootfs.display()))
        .args(["--cache=auto", "--xattr", "--announce-submounts", "--sandbox=none", "--log-level=error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(vfs_log);
    pass_fds(&mut vfsd, vec![listener.as_raw_fd()]);
    let mut virtiofsd = vfsd.spawn().map_err(VmError::io(format!("start {}", vfsd_bin.display())))?;
    drop(listener);

    let mut q = Command::new(&qemu_bin);
    q.args(qemu_args(cfg, crate::accel::tsc_khz()))
        .stdin(Stdio::null())
        .stdout(console.try_clone().map_err(VmError::io("console"))?)
        .stderr(console);
    pass_fds(&mut q, vec![theirs.as_raw_fd(), vfs_client.as_raw_fd()]);
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
    Ok(Vm { qemu, virtiofsd, channel: ours })
}

/// The last lines of the guest console, for error messages.
pub fn console_tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}
