//! Safe unpacking of layer tarballs into a directory.
//!
//! Every entry is created with `*at` calls relative to a parent directory that
//! was opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so nothing
//! can be written outside the target even if the archive plants symlinks.
//! Entries with absolute paths or `..`, relative symlinks or hard links that
//! point outside the layer, device nodes, and archives over the size/entry
//! limits are refused. OCI whiteouts are converted to the overlayfs format:
//! `.wh.NAME` becomes a 0:0 character device `NAME`, `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory.

use rustix::fs::{
    fsetxattr, futimens, mkdirat, mknodat, openat, openat2, symlinkat, unlinkat, AtFlags, FileType, Mode, OFlags,
    ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Why an archive was refused or could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry path is absolute.
    #[error("refusing archive entry {0:?}: absolute path")]
    Absolute(String),
    /// An entry path contains `..`.
    #[error("refusing archive entry {0:?}: path contains '..'")]
    DotDot(String),
    /// A symlink points outside the layer.
    #[error("refusing archive entry {0:?}: symlink target {1:?} escapes the layer")]
    SymlinkEscape(String, String),
    /// A hard link points outside the layer or at something missing.
    #[error("refusing archive entry {0:?}: hard link target {1:?} is not a file inside the layer")]
    HardlinkEscape(String, String),
    /// A path goes through a symlink inside the archive.
    #[error("refusing archive entry {0:?}: its path goes through a symlink")]
    ThroughSymlink(String),
    /// A device node.
    #[error("refusing archive entry {0:?}: device nodes are not allowed in image layers")]
    Device(String),
    /// Unsupported entry type.
    #[error("refusing archive entry {0:?}: unsupported tar entry type {1}")]
    EntryType(String, u8),
    /// Too much data.
    #[error("archive expands beyond the limit of {0} bytes (tar bomb?)")]
    TooLarge(u64),
    /// Too many entries.
    #[error("archive has more than {0} entries (tar bomb?)")]
    TooManyEntries(u64),
    /// Not enough disk space.
    #[error("not enough disk space: unpacking needs more than the {0} bytes free beyond what is kept in reserve")]
    NoSpace(u64),
    /// I/O failure, with what was being done.
    #[error("{0}: {1}")]
    Io(String, io::Error),
    /// The tar stream is malformed.
    #[error("corrupt tar archive: {0}")]
    Corrupt(io::Error),
}

/// Limits that stop decompression and tar bombs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum total bytes of file content.
    pub max_bytes: u64,
    /// Maximum number of entries.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_bytes: 64 << 30, max_entries: 4_000_000 }
    }
}

/// How to treat special entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image layer: whiteouts become overlayfs whiteouts, ownership kept.
    Layer,
    /// A plain archive (e.g. an image archive being staged): no whiteout handling.
    Plain,
}

/// What was unpacked.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Entries processed.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

const WH_PREFIX: &str = ".wh.";
const WH_OPAQUE: &str = ".wh..wh..opq";
/// Disk space kept free while unpacking: 64 MiB, or a tenth of a smaller filesystem.
const RESERVE: u64 = 64 << 20;

/// Copies everything from `r` to `w` through `buf`.
fn copy_big(r: &mut impl Read, w: &mut impl io::Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        let k = match r.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
}

/// Normalises an entry path to its components; refuses absolute paths and `..`.
pub fn clean_path(p: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnpackError::DotDot(p.display().to_string())),
            Component::RootDir | Component::Prefix(_) => return Err(UnpackError::Absolute(p.display().to_string())),
        }
    }
    Ok(out)
}

/// Lexically resolves `target` relative to the directory `dir` (both inside
/// the layer); `None` when it climbs above the layer root.
fn resolve_within(dir: &Path, target: &Path) -> Option<PathBuf> {
    let mut stack: Vec<&std::ffi::OsStr> = Vec::new();
    let base: Vec<_> = if target.is_absolute() { Vec::new() } else { dir.components().collect() };
    for c in base.into_iter().chain(target.components()) {
        match c {
            Component::Normal(n) => stack.push(n),
            Component::ParentDir => {
                stack.pop()?;
            }
            _ => {}
        }
    }
    Some(stack.iter().collect())
}

struct Unpacker {
    /// Copy buffer: large writes instead of `io::copy`'s 8 KiB ones.
    buf: Vec<u8>,
    root: OwnedFd,
    root_path: PathBuf,
    mode: Kind,
    limits: Limits,
    free: u64,
    stats: Stats,
    dirs: Vec<(PathBuf, i64)>,
}

fn ioe(ctx: impl std::fmt::Display) -> impl FnOnce(rustix::io::Errno) -> UnpackError {
    let ctx = ctx.to_string();
    move |e| UnpackError::Io(ctx, e.into())
}

fn ts(secs: i64) -> Timestamps {
    let t = Timespec { tv_sec: secs, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

impl Unpacker {
    /// Opens an existing directory `rel` beneath the root without following symlinks.
    fn open_dir(&self, rel: &Path) -> rustix::io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return rustix::io::dup(&self.root);
        }
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        openat2(&self.root, rel, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty(), how)
    }

    /// Opens (creating as needed) directory `rel` beneath the root without following symlinks.
    fn dir(&mut self, rel: &Path, entry: &str) -> Result<OwnedFd, UnpackError> {
        match self.open_dir(rel) {
            Ok(fd) => Ok(fd),
            Err(rustix::io::Errno::NOENT) => {
                let parent = rel.parent().unwrap_or(Path::new(""));
                let pfd = self.dir(parent, entry)?;
                let name = rel.file_name().unwrap_or_default();
                match mkdirat(&pfd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(ioe(format!("mkdir {}", rel.display()))(e)),
                }
                self.open_dir(rel).map_err(|e| self.resolve_err(e, entry, rel))
            }
            Err(e) => Err(self.resolve_err(e, entry, rel)),
        }
    }

    fn resolve_err(&self, e: rustix::io::Errno, entry: &str, rel: &Path) -> UnpackError {
        match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => UnpackError::ThroughSymlink(entry.to_string()),
            e => UnpackError::Io(format!("open {}", rel.display()), e.into()),
        }
    }

    /// Removes whatever is at `name` in `parent` unless both are directories.
    fn clear(&self, parent: &OwnedFd, name: &std::ffi::OsStr, rel: &Path, keep_dir: bool) -> Result<(), UnpackError> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(ioe(format!("stat {}", rel.display()))(e)),
            Ok(st) => {
                let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                if is_dir && keep_dir {
                    return Ok(());
                }
                if is_dir {
                    // parents were opened beneath the root without symlinks, and
                    // remove_dir_all never follows symlinks
                    std::fs::remove_dir_all(self.root_path.join(rel))
                        .map_err(|e| UnpackError::Io(format!("remove {}", rel.display()), e))
                } else {
                    unlinkat(parent, name, AtFlags::empty()).map_err(ioe(format!("unlink {}", rel.display())))
                }
            }
        }
    }

    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        if self.stats.entries > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries(self.limits.max_entries));
        }
        let raw = e.path().map_err(UnpackError::Corrupt)?.into_owned();
        let shown = raw.display().to_string();
        let rel = clean_path(&raw)?;
        let kind = e.header().entry_type();
        let hdr_mode = e.header().mode().map_err(UnpackError::Corrupt)? & 0o7777;
        let uid = e.header().uid().map_err(UnpackError::Corrupt)? as u32;
        let gid = e.header().gid().map_err(UnpackError::Corrupt)? as u32;
        let mtime = e.header().mtime().map_err(UnpackError::Corrupt)? as i64;
        let name = match rel.file_name() {
            Some(n) => n.to_owned(),
            None => return Ok(()), // "." — the root itself
        };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let name_str = name.to_string_lossy();

        // OCI whiteouts
        if self.mode == Kind::Layer && name_str.starts_with(WH_PREFIX) {
            let pfd = self.dir(&parent_rel, &shown)?;
            if name_str == WH_OPAQUE {
                let dfd = openat(&pfd, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                    .map_err(ioe(format!("open {}", parent_rel.display())))?;
                fsetxattr(&dfd, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                    .map_err(ioe(format!("mark {} opaque", parent_rel.display())))?;
            } else if let Some(target) = name_str.strip_prefix(WH_PREFIX) {
                if target.starts_with(WH_PREFIX) {
                    return Ok(()); // other .wh..wh. metadata: ignored
                }
                let trel = parent_rel.join(target);
                self.clear(&pfd, target.as_ref(), &trel, false)?;
                mknodat(&pfd, target, FileType::CharacterDevice, Mode::empty(), rustix::fs::makedev(0, 0))
                    .map_err(ioe(format!("whiteout {}", trel.display())))?;
            }
            return Ok(());
        }

        let pfd = self.dir(&parent_rel, &shown)?;
        let xattrs = self.xattrs(&mut e)?;
        match kind {
            tar::EntryType::Directory => {
                self.clear(&pfd, &name, &rel, true)?;
                match mkdirat(&pfd, &name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(ioe(format!("mkdir {shown}"))(e)),
                }
                let fd = openat(
                    &pfd,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(ioe(format!("open {shown}")))?;
                self.finish_fd(&fd, &shown, uid, gid, hdr_mode, None, &xattrs)?;
                self.dirs.push((rel, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = e.size();
                if self.stats.bytes.saturating_add(size) > self.limits.max_bytes {
                    return Err(UnpackError::TooLarge(self.limits.max_bytes));
                }
                if self.stats.bytes.saturating_add(size) > self.free {
                    return Err(UnpackError::NoSpace(self.free));
                }
                self.clear(&pfd, &name, &rel, false)?;
                let fd = openat(
                    &pfd,
                    &name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(ioe(format!("create {shown}")))?;
                let mut f = File::from(fd);
                let n = copy_big(&mut (&mut e).take(size), &mut f, &mut self.buf)
                    .map_err(|err| UnpackError::Io(format!("write {shown}"), err))?;
                self.stats.bytes += n;
                self.finish_fd(&f, &shown, uid, gid, hdr_mode, Some(mtime), &xattrs)?;
            }
            tar::EntryType::Symlink => {
                let target = e.link_name().map_err(UnpackError::Corrupt)?.unwrap_or_default().into_owned();
                if !target.is_absolute() && resolve_within(&parent_rel, &target).is_none() {
                    return Err(UnpackError::SymlinkEscape(shown, target.display().to_string()));
                }
                self.clear(&pfd, &name, &rel, false)?;
                symlinkat(&target, &pfd, &name).map_err(ioe(format!("symlink {shown}")))?;
                let full = self.root_path.join(&rel);
                std::os::unix::fs::lchown(&full, Some(uid), Some(gid))
                    .map_err(|err| UnpackError::Io(format!("chown {shown}"), err))?;
                rustix::fs::utimensat(&pfd, &name, &ts(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(ioe(format!("utimes {shown}")))?;
            }
            tar::EntryType::Link => {
                let target = e.link_name().map_err(UnpackError::Corrupt)?.unwrap_or_default().into_owned();
                let bad = || UnpackError::HardlinkEscape(shown.clone(), target.display().to_string());
                let trel = clean_path(&target).map_err(|_| bad())?;
                let tname = trel.file_name().ok_or_else(bad)?.to_owned();
                let tparent = self.open_dir(trel.parent().unwrap_or(Path::new(""))).map_err(|_| bad())?;
                let st = rustix::fs::statat(&tparent, &tname, AtFlags::SYMLINK_NOFOLLOW).map_err(|_| bad())?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(bad());
                }
                if trel == rel {
                    return Ok(());
                }
                self.clear(&pfd, &name, &rel, false)?;
                rustix::fs::linkat(&tparent, &tname, &pfd, &name, AtFlags::empty())
                    .map_err(ioe(format!("link {shown}")))?;
            }
            tar::EntryType::Fifo => {
                self.clear(&pfd, &name, &rel, false)?;
                mknodat(&pfd, &name, FileType::Fifo, Mode::from_raw_mode(hdr_mode), 0)
                    .map_err(ioe(format!("mkfifo {shown}")))?;
                let full = self.root_path.join(&rel);
                std::os::unix::fs::lchown(&full, Some(uid), Some(gid))
                    .map_err(|err| UnpackError::Io(format!("chown {shown}"), err))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = e.header().device_major().ok().flatten().unwrap_or(1);
                let minor = e.header().device_minor().ok().flatten().unwrap_or(1);
                if self.mode == Kind::Layer && kind == tar::EntryType::Char && major == 0 && minor == 0 {
                    // an overlay-style whiteout already
                    self.clear(&pfd, &name, &rel, false)?;
                    mknodat(&pfd, &name, FileType::CharacterDevice, Mode::empty(), rustix::fs::makedev(0, 0))
                        .map_err(ioe(format!("whiteout {shown}")))?;
                } else {
                    return Err(UnpackError::Device(shown));
                }
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => return Err(UnpackError::EntryType(shown, other.as_byte())),
        }
        Ok(())
    }

    fn xattrs<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<Vec<(String, Vec<u8>)>, UnpackError> {
        let mut out = Vec::new();
        if let Some(exts) = e.pax_extensions().map_err(UnpackError::Corrupt)? {
            for ext in exts {
                let ext = ext.map_err(UnpackError::Corrupt)?;
                if let Ok(k) = ext.key() {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        // a layer must never plant overlayfs control attributes
                        if !name.starts_with("trusted.overlay.") {
                            out.push((name.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_fd<Fd: AsFd>(
        &self,
        fd: Fd,
        shown: &str,
        uid: u32,
        gid: u32,
        mode: u32,
        mtime: Option<i64>,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), UnpackError> {
        let fd = fd.as_fd();
        let f = File::from(rustix::io::dup(fd).map_err(ioe("dup"))?);
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .map_err(|e| UnpackError::Io(format!("chown {shown}"), e))?;
        for (k, v) in xattrs {
            fsetxattr(fd, k.as_str(), v, XattrFlags::empty()).map_err(ioe(format!("setxattr {k} on {shown}")))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(ioe(format!("chmod {shown}")))?;
        if let Some(t) = mtime {
            futimens(fd, &ts(t)).map_err(ioe(format!("utimes {shown}")))?;
        }
        Ok(())
    }
}

/// Unpacks the tar stream `r` into the existing empty directory `dest`.
pub fn unpack<R: Read>(r: R, dest: &Path, mode: Kind, limits: Limits) -> Result<Stats, UnpackError> {
    let root = rustix::fs::open(dest, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(ioe(format!("open {}", dest.display())))?;
    let free = rustix::fs::statvfs(dest)
        .map(|s| (s.f_bavail * s.f_frsize).saturating_sub(RESERVE.min(s.f_blocks * s.f_frsize / 10)))
        .map_err(ioe(format!("statvfs {}", dest.display())))?;
    let mut u = Unpacker {
        buf: vec![0u8; 1 << 20],
        root,
        root_path: dest.to_path_buf(),
        mode,
        limits,
        free,
        stats: Stats::default(),
        dirs: Vec::new(),
    };
    let mut ar = tar::Archive::new(r);
    for e in ar.entries().map_err(UnpackError::Corrupt)? {
        let e = e.map_err(UnpackError::Corrupt)?;
        u.entry(e)?;
    }
    // directory mtimes last: creating children changed them
    for (rel, mtime) in u.dirs.iter().rev() {
        let fd = openat2(
            &u.root,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .map_err(ioe(format!("open {}", rel.display())))?;
        futimens(&fd, &ts(*mtime)).map_err(ioe(format!("utimes {}", rel.display())))?;
    }
    Ok(u.stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path(Path::new("./a/b")).ok(), Some(PathBuf::from("a/b")));
        assert!(matches!(clean_path(Path::new("/etc/passwd")), Err(UnpackError::Absolute(_))));
        assert!(matches!(clean_path(Path::new("a/../../x")), Err(UnpackError::DotDot(_))));
    }

    #[test]
    fn symlink_resolution() {
        assert_eq!(resolve_within(Path::new("usr/lib"), Path::new("../bin")), Some(PathBuf::from("usr/bin")));
        assert_eq!(resolve_within(Path::new("a"), Path::new("../../etc")), None);
        assert_eq!(resolve_within(Path::new(""), Path::new("..")), None);
    }
}
