//! Assembling the container's filesystem inside its new mount namespace.
//!
//! Every mount target inside the root is resolved with
//! `openat2(RESOLVE_IN_ROOT)` and mounted through `/proc/self/fd/N`, so a
//! symlink planted in an image (say `/proc -> /`) can never redirect a mount
//! onto the host.

use crate::spec::{Mount, Propagation, Rootfs, Spec};
use crate::RuntimeError;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

fn cstr(s: &str) -> Result<CString, RuntimeError> {
    CString::new(s).map_err(|_| RuntimeError::Invalid(format!("path contains NUL: {s:?}")))
}

fn errno() -> nix::Error {
    nix::Error::last()
}

/// `openat2(dirfd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
fn openat2_in_root(dirfd: RawFd, path: &str, flags: i32) -> Result<OwnedFd, nix::Error> {
    let p = CString::new(path).map_err(|_| nix::Error::EINVAL)?;
    // SAFETY: open_how is plain data; all-zero is a valid value
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid pointers for the duration of the call; the kernel returns a new fd we own
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            p.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: fd is a fresh descriptor returned by the kernel
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What to create when a mount target is missing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Fail if missing.
    No,
    /// A directory.
    Dir,
    /// An empty file.
    File,
}

/// Opens (creating if asked) `path` inside the root `root` as an O_PATH fd.
pub fn in_root(root: RawFd, path: &str, create: Create) -> Result<OwnedFd, RuntimeError> {
    match openat2_in_root(root, path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(nix::Error::ENOENT) if create != Create::No => {}
        Err(e) => return Err(RuntimeError::Sys(format!("resolve {path} in container"), e)),
    }
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some((p, n)) => (if p.is_empty() { "/" } else { p }, n),
        None => ("/", trimmed),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(RuntimeError::Invalid(format!("invalid mount target {path:?}")));
    }
    let pfd = in_root(root, parent, Create::Dir)?;
    let n = cstr(name)?;
    // SAFETY: pfd is a valid directory fd and n a valid C string
    let rc = unsafe {
        match create {
            Create::Dir => libc::mkdirat(pfd.as_raw_fd(), n.as_ptr(), 0o755),
            _ => {
                let fd = libc::openat(
                    pfd.as_raw_fd(),
                    n.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                    0
                } else {
                    -1
                }
            }
        }
    };
    if rc < 0 && errno() != nix::Error::EEXIST {
        return Err(RuntimeError::Sys(format!("create mount target {path}"), errno()));
    }
    openat2_in_root(root, path, libc::O_PATH).map_err(RuntimeError::sys(format!("resolve {path} in container")))
}

/// The `/proc/self/fd/N` path of a descriptor (mount targets resolved in-root).
pub fn fdpath(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// `mount(2)` with the error naming `what`.
pub fn mnt(
    src: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<(), RuntimeError> {
    mount(src, target, fstype, flags, data).map_err(RuntimeError::sys(format!("mount {what}")))
}

fn is_dir(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstat(fd.as_raw_fd()).map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR).unwrap_or(false)
}

/// A directory as an `O_PATH` descriptor (to name in mounts as
/// `/proc/self/fd/N`, or to resolve paths under).
fn open_dir(p: &Path, what: &str) -> Result<OwnedFd, RuntimeError> {
    let fd = nix::fcntl::open(
        p,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(RuntimeError::sys(what))?;
    // SAFETY: open returned a new descriptor that nothing else owns
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The most layers an overlay root stacks (Docker's overlay2 limit).
pub const MAX_LAYERS: usize = 128;

/// The overlayfs `lowerdir=` option for `lower` (topmost first) and the
/// descriptors it names: every layer is opened (`O_PATH`) and given as
/// `/proc/self/fd/N`, about 18 bytes instead of a layer's whole path, which
/// keeps the options under the kernel's one-page limit for [`MAX_LAYERS`]
/// layers. Keep the descriptors until the mount is made. More layers are
/// refused by name. A layer an image lists twice (buildah writes the empty
/// layer once per metadata step) is stacked once, at its topmost place:
/// overlayfs refuses the same directory twice (ELOOP), and the lower copy
/// adds nothing the upper one does not.
pub fn lowerdir(lower: &[PathBuf]) -> Result<(String, Vec<OwnedFd>), RuntimeError> {
    let mut seen = std::collections::HashSet::new();
    let lower: Vec<&PathBuf> = lower.iter().filter(|l| seen.insert(*l)).collect();
    if lower.is_empty() {
        return Err(RuntimeError::Invalid("image has no layers".into()));
    }
    if lower.len() > MAX_LAYERS {
        return Err(RuntimeError::Invalid(format!(
            "too many layers: the image has {}, an overlay root stacks at most {MAX_LAYERS}",
            lower.len()
        )));
    }
    let fds =
        lower.iter().map(|l| open_dir(l, &format!("open layer {}", l.display()))).collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = fds.iter().map(fdpath).collect();
    Ok((format!("lowerdir={}", names.join(":")), fds))
}

/// The overlayfs mount options for `lower` (topmost first), `upper` and
/// `work` ([`lowerdir`]); keep the descriptors until the mount is made.
pub fn overlay_options(lower: &[PathBuf], upper: &Path, work: &Path) -> Result<(String, Vec<OwnedFd>), RuntimeError> {
    let (lowers, fds) = lowerdir(lower)?;
    Ok((format!("{lowers},upperdir={},workdir={}", upper.display(), work.display()), fds))
}

/// Splits docker-style tmpfs options into mount flags and filesystem data.
pub fn tmpfs_options(opts: &str) -> (MsFlags, String) {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut data = Vec::new();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "exec" => flags &= !MsFlags::MS_NOEXEC,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "suid" => flags &= !MsFlags::MS_NOSUID,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "dev" => flags &= !MsFlags::MS_NODEV,
            "nodev" => flags |= MsFlags::MS_NODEV,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// The nodes every container's /dev has.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Builds the root at `spec.rootfs_target` and pivots into it (with an empty
/// /dev/console for a terminal to be bound on later). The cgroup v2 filesystem
/// is mounted by the caller once the process is in its cgroup namespace.
pub fn setup(spec: &Spec) -> Result<(), RuntimeError> {
    // like runc: the copied tree only receives from the host when a bind
    // asks for it (rslave); otherwise nothing propagates either way
    let slave = spec
        .mounts
        .iter()
        .any(|m| matches!(m, Mount::Bind { propagation: Propagation::Rslave | Propagation::Slave, .. }));
    let root_prop = if slave { MsFlags::MS_SLAVE } else { MsFlags::MS_PRIVATE };
    mnt(None, "/", None, MsFlags::MS_REC | root_prop, None, "/ propagation")?;
    let target = spec.rootfs_target.to_str().ok_or_else(|| RuntimeError::Invalid("rootfs path is not UTF-8".into()))?;
    let nodev = if spec.privileged { MsFlags::empty() } else { MsFlags::MS_NODEV };
    match &spec.rootfs {
        Rootfs::Overlay { lower, upper, work } => {
            let (data, _layers) = overlay_options(lower, upper, work)?;
            mnt(Some("overlay"), target, Some("overlay"), nodev, Some(&data), "overlay root filesystem")?;
        }
        Rootfs::Dir(d) => {
            let d = d.to_str().ok_or_else(|| RuntimeError::Invalid("rootfs path is not UTF-8".into()))?;
            mnt(Some(d), target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None, "root filesystem")?;
            if !spec.privileged {
                mnt(
                    None,
                    target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV,
                    None,
                    "root nodev",
                )?;
            }
        }
    }
    let root = open_dir(Path::new(target), "open root")?;
    let r = root.as_raw_fd();
    let std_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    let proc = in_root(r, "/proc", Create::Dir)?;
    mnt(Some("proc"), &fdpath(&proc), Some("proc"), std_flags, None, "/proc")?;
    let sys = in_root(r, "/sys", Create::Dir)?;
    let ro = if spec.privileged { MsFlags::empty() } else { MsFlags::MS_RDONLY };
    mnt(Some("sysfs"), &fdpath(&sys), Some("sysfs"), std_flags | ro, None, "/sys")?;

    // /dev: a nodev tmpfs (a node made with mknod there cannot be opened)
    // with the standard nodes bind-mounted from the (host's or guest's) /dev;
    // the cgroup's device allow-list is the second wall
    let dev = in_root(r, "/dev", Create::Dir)?;
    mnt(
        Some("tmpfs"),
        &fdpath(&dev),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | nodev,
        Some("mode=755,size=65536k"),
        "/dev",
    )?;
    let dev = in_root(r, "/dev", Create::No)?;
    let devdir = nix::fcntl::openat(
        Some(dev.as_raw_fd()),
        ".",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(RuntimeError::sys("open /dev"))?;
    // SAFETY: fresh fd
    let devdir = unsafe { OwnedFd::from_raw_fd(devdir) };
    let standard = DEVICES.iter().map(|n| (format!("/dev/{n}"), format!("/dev/{n}")));
    let extra = spec.devices.iter().map(|d| (d.host_path.clone(), d.path.clone()));
    for (host, ctr) in standard.chain(extra) {
        let t = in_root(r, &ctr, Create::File)?;
        mnt(Some(&host), &fdpath(&t), None, MsFlags::MS_BIND, None, &ctr)?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        nix::unistd::symlinkat(to, Some(devdir.as_raw_fd()), link)
            .map_err(RuntimeError::sys(format!("symlink /dev/{link}")))?;
    }
    let pts = in_root(r, "/dev/pts", Create::Dir)?;
    mnt(
        Some("devpts"),
        &fdpath(&pts),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        "/dev/pts",
    )?;
    let shm = in_root(r, "/dev/shm", Create::Dir)?;
    if spec.ipc_host {
        // the host's IPC namespace comes with the host's POSIX shared memory
        mnt(Some("/dev/shm"), &fdpath(&shm), None, MsFlags::MS_BIND | MsFlags::MS_REC, None, "/dev/shm")?;
    } else {
        mnt(
            Some("shm"),
            &fdpath(&shm),
            Some("tmpfs"),
            std_flags,
            Some(&format!("mode=1777,size={}", spec.shm_size)),
            "/dev/shm",
        )?;
    }
    let mq = in_root(r, "/dev/mqueue", Create::Dir)?;
    mnt(Some("mqueue"), &fdpath(&mq), Some("mqueue"), std_flags, None, "/dev/mqueue")?;
    if spec.process.tty {
        in_root(r, "/dev/console", Create::File)?;
    }

    // /etc/hosts, /etc/hostname, /etc/resolv.conf
    for (ctr, host) in &spec.etc_files {
        let t = in_root(r, ctr, Create::File)?;
        let h = host.to_str().ok_or_else(|| RuntimeError::Invalid("etc file path".into()))?;
        mnt(Some(h), &fdpath(&t), None, MsFlags::MS_BIND, None, ctr)?;
    }

    // user mounts
    for m in &spec.mounts {
        match m {
            Mount::Bind { source, target, readonly, propagation } => {
                let src = source.to_str().ok_or_else(|| RuntimeError::Invalid("bind source is not UTF-8".into()))?;
                let meta = std::fs::metadata(source).map_err(RuntimeError::io(format!("bind source {src}")))?;
                let t = in_root(r, target, if meta.is_dir() { Create::Dir } else { Create::File })?;
                let tp = fdpath(&t);
                mnt(Some(src), &tp, None, MsFlags::MS_BIND | MsFlags::MS_REC, None, target)?;
                let t1 = in_root(r, target, Create::No)?;
                let prop = match propagation {
                    Propagation::Rprivate => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                    Propagation::Private => MsFlags::MS_PRIVATE,
                    Propagation::Rslave => MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    Propagation::Slave => MsFlags::MS_SLAVE,
                };
                mnt(None, &fdpath(&t1), None, prop, None, target)?;
                // mount again through the new mount to change its flags
                let t2 = in_root(r, target, Create::No)?;
                let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | nodev;
                if *readonly {
                    flags |= MsFlags::MS_RDONLY;
                }
                mnt(None, &fdpath(&t2), None, flags, None, target)?;
            }
            Mount::Tmpfs { target, options } => {
                let (flags, data) = tmpfs_options(options);
                let t = in_root(r, target, Create::Dir)?;
                mnt(Some("tmpfs"), &fdpath(&t), Some("tmpfs"), flags, Some(&data), target)?;
            }
        }
    }

    if !spec.privileged {
        for p in &spec.masked_paths {
            let Ok(fd) = in_root(r, p, Create::No) else { continue };
            if is_dir(&fd) {
                mnt(Some("tmpfs"), &fdpath(&fd), Some("tmpfs"), MsFlags::MS_RDONLY, None, p)?;
            } else {
                mnt(Some("/dev/null"), &fdpath(&fd), None, MsFlags::MS_BIND, None, p)?;
            }
        }
        for p in &spec.readonly_paths {
            let Ok(fd) = in_root(r, p, Create::No) else { continue };
            mnt(Some(&fdpath(&fd)), &fdpath(&fd), None, MsFlags::MS_BIND | MsFlags::MS_REC, None, p)?;
            let fd = in_root(r, p, Create::No)?;
            mnt(
                None,
                &fdpath(&fd),
                None,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                None,
                p,
            )?;
        }
    }

    // pivot_root(".", ".") then detach the old root: nothing of the host stays reachable
    nix::unistd::fchdir(r).map_err(RuntimeError::sys("chdir to root"))?;
    drop(root);
    nix::unistd::pivot_root(".", ".").map_err(RuntimeError::sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(RuntimeError::sys("detach old root"))?;
    nix::unistd::chdir("/").map_err(RuntimeError::sys("chdir /"))?;
    if spec.readonly_rootfs {
        mnt(None, "/", None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nodev, None, "read-only /")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_listed_twice_is_stacked_once() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a)?;
        std::fs::create_dir(&b)?;
        let (opt, fds) = lowerdir(&[a.clone(), b, a]).map_err(|e| std::io::Error::other(e.to_string()))?;
        assert_eq!(fds.len(), 2);
        assert_eq!(opt.matches("/proc/self/fd/").count(), 2, "{opt}");
        Ok(())
    }

    #[test]
    fn tmpfs_opts() {
        let (f, d) = tmpfs_options("size=64m,exec,mode=1777");
        assert!(!f.contains(MsFlags::MS_NOEXEC));
        assert!(f.contains(MsFlags::MS_NOSUID));
        assert_eq!(d, "size=64m,mode=1777");
        let (f, _) = tmpfs_options("ro");
        assert!(f.contains(MsFlags::MS_RDONLY));
    }
}
