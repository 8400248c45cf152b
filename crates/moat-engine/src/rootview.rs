//! Views of a container's or an image's files from the engine's own
//! process, without touching the host's mount table: each runs on a
//! dedicated thread that unshares its mount namespace (and filesystem
//! attributes), mounts what it needs, and ends — the namespace and its
//! mounts go with the thread, even if the process is killed halfway.
//!
//! Used to seed new volumes from the image, and by `cp`, `export` and
//! `commit`. Copies never follow a symbolic link.

use crate::EngineError;
use nix::mount::MsFlags;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Runs `f` on a new thread in a private copy of the caller's mount
/// namespace (nothing it mounts is visible elsewhere or outlives it).
pub fn in_private_ns<T: Send>(f: impl FnOnce() -> Result<T, EngineError> + Send) -> Result<T, EngineError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS | nix::sched::CloneFlags::CLONE_FS)
                .map_err(|e| EngineError::Io("unshare the mount namespace".into(), e.into()))?;
            nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
                .map_err(|e| EngineError::Io("make / private".into(), e.into()))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(EngineError::Invalid("a file view thread panicked".into())))
    })
}

/// Mounts the layers `lower` (top first) read-only at `at` (call inside
/// [`in_private_ns`]).
pub fn mount_layers(lower: &[PathBuf], at: &Path) -> Result<(), EngineError> {
    let fail = |e: nix::Error| EngineError::Io(format!("mount the image at {}", at.display()), e.into());
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    match lower {
        [] => Err(EngineError::Invalid("image has no layers".into())),
        [one] => {
            nix::mount::mount(Some(one.as_path()), at, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(fail)?;
            nix::mount::mount(
                None::<&str>,
                at,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
                None::<&str>,
            )
            .map_err(fail)
        }
        many => {
            // the layers as /proc/self/fd/N (short: up to 128 layers fit a page)
            let (data, _layers) = moat_runtime::mounts::lowerdir(many)?;
            nix::mount::mount(Some("overlay"), at, Some("overlay"), flags, Some(data.as_str())).map_err(fail)
        }
    }
}

/// Copies the tree at `src` into the existing directory `dst`: ownership,
/// modes (setuid included), times, symbolic links as links, device nodes
/// and FIFOs as nodes. `dst` itself takes `src`'s owner and mode (a volume
/// mounted at `/var/lib/db` keeps the image's owner of that directory).
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(src) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(());
    }
    for e in std::fs::read_dir(src)? {
        let e = e?;
        copy_entry(&e.path(), &dst.join(e.file_name()))?;
    }
    apply_meta(dst, &meta, false)
}

fn copy_entry(s: &Path, d: &Path) -> io::Result<()> {
    let m = std::fs::symlink_metadata(s)?;
    let ft = m.file_type();
    if ft.is_dir() {
        match std::fs::create_dir(d) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        for e in std::fs::read_dir(s)? {
            let e = e?;
            copy_entry(&e.path(), &d.join(e.file_name()))?;
        }
        apply_meta(d, &m, false)
    } else if ft.is_symlink() {
        let target = std::fs::read_link(s)?;
        std::os::unix::fs::symlink(&target, d)?;
        apply_meta(d, &m, true)
    } else if ft.is_file() {
        let mut from = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(s)?;
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(d)?;
        io::copy(&mut from, &mut to)?;
        drop(to);
        apply_meta(d, &m, false)
    } else {
        let kind = nix::sys::stat::SFlag::from_bits_truncate(m.mode() & libc::S_IFMT);
        let perm = nix::sys::stat::Mode::from_bits_truncate(m.mode() & 0o7777);
        nix::sys::stat::mknod(d, kind, perm, m.rdev()).map_err(io::Error::from)?;
        apply_meta(d, &m, false)
    }
}

/// Owner, then mode (a chown clears setuid bits), then times.
fn apply_meta(p: &Path, m: &std::fs::Metadata, link: bool) -> io::Result<()> {
    let uid = Some(nix::unistd::Uid::from_raw(m.uid()));
    let gid = Some(nix::unistd::Gid::from_raw(m.gid()));
    let follow = if link { nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW } else { nix::fcntl::AtFlags::empty() };
    nix::unistd::fchownat(None, p, uid, gid, follow).map_err(io::Error::from)?;
    if !link {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    let at = nix::sys::time::TimeSpec::new(m.atime(), m.atime_nsec());
    let mt = nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec());
    nix::sys::stat::utimensat(None, p, &at, &mt, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .map_err(io::Error::from)
}

/// True when a component of `path` below `base` is a symbolic link (the
/// path would leave the tree it names).
pub fn has_link_below(base: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(base) else { return true };
    let mut p = base.to_path_buf();
    for c in rel.components() {
        p.push(c);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return true;
        }
    }
    false
}

/// True when `dir` has no entries (or does not exist).
pub fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_links_as_links_and_keeps_modes() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        let (src, dst) = (d.path().join("s"), d.path().join("d"));
        std::fs::create_dir_all(src.join("sub"))?;
        std::fs::write(src.join("sub/f"), b"data")?;
        std::fs::set_permissions(src.join("sub/f"), std::fs::Permissions::from_mode(0o4751))?;
        std::os::unix::fs::symlink("/etc/passwd", src.join("escape"))?;
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o701))?;
        std::fs::create_dir(&dst)?;
        copy_tree(&src, &dst)?;
        assert_eq!(std::fs::read(dst.join("sub/f"))?, b"data");
        assert_eq!(std::fs::metadata(dst.join("sub/f"))?.mode() & 0o7777, 0o4751);
        assert_eq!(std::fs::read_link(dst.join("escape"))?, PathBuf::from("/etc/passwd"));
        assert!(std::fs::symlink_metadata(dst.join("escape"))?.file_type().is_symlink());
        assert_eq!(std::fs::metadata(&dst)?.mode() & 0o7777, 0o701, "the root takes the source's mode");
        assert!(!is_empty_dir(&dst) && is_empty_dir(&d.path().join("missing")));
        Ok(())
    }
}
