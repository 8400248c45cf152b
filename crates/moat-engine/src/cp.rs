//! Files in and out of containers: `cp` (both directions, tar streams),
//! `export`, and the archive primitives the Docker API's
//! `/containers/{id}/archive` needs.
//!
//! Inside a container every path is resolved with the container's root as
//! `/`: the work runs on a dedicated thread that unshared its filesystem
//! attributes and `chroot`ed into the container's tree, so a symbolic link
//! in the container — absolute or full of `..` — resolves inside the
//! container and never reaches a host path. That tree is
//!
//! - a running process container's root, `/proc/<init>/root` (its own
//!   mounts — volumes, binds — included, as Docker shows them);
//! - a running VM container's host-side tree, the overlay and binds the
//!   shim mounted in its namespace (`/proc/<shim>/root/<root>/containers/<id>/rootfs`),
//!   which virtiofsd serves to the guest;
//! - for a stopped container, the same overlay and binds mounted in a private
//!   mount namespace of the thread (gone with it), while the container's
//!   operation lock keeps it from starting meanwhile.
//!
//! On the host, archives from a container are unpacked with the `tar`
//! crate's checks that no entry leaves the destination (through `..` or a
//! link planted by an earlier entry).

use crate::{Engine, EngineError};
use chrono::{DateTime, Utc};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What `stat` says about a path in a container (Docker's
/// `X-Docker-Container-Path-Stat`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathStat {
    /// Base name.
    pub name: String,
    /// Bytes.
    pub size: i64,
    /// Go's `os.FileMode` bits (type bits included), as Docker sends them.
    pub mode: u32,
    /// Modification time, RFC 3339.
    pub mtime: String,
    /// Where a symbolic link points (empty otherwise).
    #[serde(rename = "linkTarget")]
    pub link_target: String,
    /// A directory (after following a final link, when asked).
    #[serde(skip)]
    pub is_dir: bool,
}

/// Options of `cp`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyOptions {
    /// `-a`: keep the owners of the copied files (otherwise root owns them
    /// in a container, the caller on the host).
    pub archive: bool,
    /// `-L`: follow a symbolic link given as the source.
    pub follow_link: bool,
}

/// Where a container's tree is reachable.
enum Tree {
    /// A path to `chroot` into.
    Live(PathBuf),
    /// Mount this spec's root first (a stopped container).
    Mount(Box<moat_runtime::spec::Spec>),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    EngineError::io(what)
}

/// Docker's `os.FileMode` bits of a Unix mode.
fn go_mode(m: &std::fs::Metadata) -> u32 {
    let ft = m.file_type();
    let mut mode = m.mode() & 0o777;
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        mode |= 1 << 31;
    } else if ft.is_symlink() {
        mode |= 1 << 27;
    } else if ft.is_fifo() {
        mode |= 1 << 25;
    } else if ft.is_socket() {
        mode |= 1 << 24;
    } else if ft.is_block_device() {
        mode |= 1 << 26;
    } else if ft.is_char_device() {
        mode |= (1 << 26) | (1 << 21);
    }
    if m.mode() & 0o4000 != 0 {
        mode |= 1 << 23;
    }
    if m.mode() & 0o2000 != 0 {
        mode |= 1 << 22;
    }
    if m.mode() & 0o1000 != 0 {
        mode |= 1 << 20;
    }
    mode
}

/// `lstat` (or `stat` with `follow`) of `p` as a [`PathStat`].
fn stat(p: &Path, follow: bool) -> Result<PathStat, EngineError> {
    let missing = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EngineError::NotFound(format!("Could not find the file {} in container", p.display()))
        } else {
            EngineError::Io(format!("stat {}", p.display()), e)
        }
    };
    let l = std::fs::symlink_metadata(p).map_err(missing)?;
    let m = if follow && l.file_type().is_symlink() { std::fs::metadata(p).map_err(missing)? } else { l.clone() };
    let link_target = if l.file_type().is_symlink() {
        std::fs::read_link(p).map(|t| t.display().to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    let mtime = DateTime::<Utc>::from_timestamp(m.mtime(), m.mtime_nsec() as u32).unwrap_or_default();
    Ok(PathStat {
        name: p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into()),
        size: m.len() as i64,
        mode: go_mode(&m),
        mtime: mtime.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        link_target,
        is_dir: m.is_dir(),
    })
}

/// Splits a `cp` argument: `CONTAINER:PATH` names a container, anything
/// else (including every path starting with `/` or `.`, like Docker) is a
/// host path or `-`.
pub fn split_arg(s: &str) -> (Option<&str>, &str) {
    if s.starts_with('/') || s.starts_with('.') || s == "-" {
        return (None, s);
    }
    match s.split_once(':') {
        Some((c, p)) if !c.is_empty() => (Some(c), p),
        _ => (None, s),
    }
}

/// A path as given, made absolute in the container (`docker cp ctr:rel`
/// is relative to `/`).
fn in_ctr(p: &str) -> PathBuf {
    Path::new("/").join(p.trim_start_matches('/'))
}

/// True for `dir/.` (copy the contents, not the directory).
fn contents_only(p: &str) -> bool {
    p == "." || p.ends_with("/.")
}

fn base_name(p: &str) -> String {
    let t = p.trim_end_matches("/.").trim_end_matches('/');
    Path::new(t).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Where a copy lands (Docker's rules): the existing directory to unpack
/// into, and the name the source takes there (`None`: its contents).
///
/// - a directory into an existing directory: `DST/NAME`, or its contents
///   with `SRC/.`; a file into an existing directory: `DST/NAME`;
/// - onto an existing file: a file replaces it, a directory is refused;
/// - to a missing path: the source takes that name, whose parent must exist
///   (a file cannot go to a missing `DST/`).
pub fn destination(
    src: &str,
    src_is_dir: bool,
    dst: &str,
    dst_stat: Option<bool>,
    parent_is_dir: bool,
) -> Result<(PathBuf, Option<String>), EngineError> {
    let name = base_name(src);
    let dst_path = PathBuf::from(dst);
    match dst_stat {
        Some(true) if src_is_dir && contents_only(src) => Ok((dst_path, None)),
        Some(true) => Ok((dst_path, Some(name))),
        Some(false) if src_is_dir => Err(EngineError::Invalid(format!("cannot copy a directory to the file {dst}"))),
        Some(false) | None => {
            if dst_stat.is_none() && !src_is_dir && dst.ends_with('/') {
                return Err(EngineError::NotFound(format!("destination directory {dst} does not exist")));
            }
            let t = dst.trim_end_matches('/');
            let parent = Path::new(t).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
            let parent = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent };
            if !parent_is_dir {
                return Err(EngineError::NotFound(format!(
                    "the parent directory {} of {dst} does not exist",
                    parent.display()
                )));
            }
            let new = Path::new(t).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(name);
            Ok((parent, Some(new)))
        }
    }
}

/// Writes `src` as a tar stream whose top entry is `name` (or, with
/// `None`, whose entries are the directory's children). Links are
/// archived as links; device nodes and FIFOs as nodes (never read); a
/// regular file contributes exactly the size its header announces, however
/// the container changes it meanwhile ([`moat_image::pack`]).
fn pack(src: &Path, name: Option<&str>, follow_top: bool, w: impl Write) -> Result<(), EngineError> {
    let mut b = moat_image::pack::Packer::new(w);
    let top = if follow_top {
        std::fs::canonicalize(src).map_err(io_err(format!("resolve {}", src.display())))?
    } else {
        src.to_path_buf()
    };
    let fail = |e: std::io::Error| EngineError::Io(format!("archive {}", src.display()), e);
    match name {
        Some(n) => b.append_tree(&top, Path::new(n)).map_err(fail)?,
        None => b.append_children(&top, Path::new("")).map_err(fail)?,
    }
    b.finish().map_err(fail)?;
    Ok(())
}

/// `dir` must be an existing directory (Docker's words when it is not).
fn extraction_point(dir: &Path) -> Result<(), EngineError> {
    let meta = std::fs::metadata(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            EngineError::NotFound(format!("destination directory {} does not exist", dir.display()))
        }
        _ => EngineError::Io(format!("stat {}", dir.display()), e),
    })?;
    if !meta.is_dir() {
        return Err(EngineError::Invalid(format!("extraction point {} is not a directory", dir.display())));
    }
    Ok(())
}

/// A tar reader keeping modes and times (owners only when asked), never
/// extended attributes.
fn archive_reader<R: Read>(r: R, keep_owners: bool) -> tar::Archive<R> {
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(keep_owners);
    a.set_preserve_mtime(true);
    a.set_overwrite(true);
    a.set_unpack_xattrs(false);
    a
}

/// A failed unpack: a full disk says so (the tar crate's error hides the
/// cause in its chain), anything else is the archive's fault.
fn unpack_error(dir: &Path, e: std::io::Error) -> EngineError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = cur {
        if err.downcast_ref::<std::io::Error>().and_then(|io| io.raw_os_error()) == Some(libc::ENOSPC) {
            return EngineError::Io(
                format!("cannot unpack the archive into {}", dir.display()),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            );
        }
        cur = err.source();
    }
    EngineError::Invalid(format!("cannot unpack the archive into {}: {e}", dir.display()))
}

/// Unpacks a tar stream into the existing directory `dir`.
fn unpack(r: impl Read, dir: &Path, keep_owners: bool) -> Result<(), EngineError> {
    extraction_point(dir)?;
    archive_reader(r, keep_owners).unpack(dir).map_err(|e| unpack_error(dir, e))
}

/// A private directory beside a host destination where a copy from a
/// container is unpacked before anything of it lands; removed when dropped.
struct Stage(PathBuf);

impl Stage {
    fn new(dir: &Path) -> Result<Self, EngineError> {
        use std::os::unix::fs::DirBuilderExt;
        let p = dir.join(format!(".moat-cp-{:016x}", rand::random::<u64>()));
        std::fs::DirBuilder::new().mode(0o700).create(&p).map_err(io_err(format!("create {}", p.display())))?;
        Ok(Self(p))
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Unpacks a tar stream from a container into the host directory `dir`.
/// The whole stream lands in a private staging directory beside the
/// destination first, so a refused entry (a device node without `-a`, a
/// path that leaves the destination) or a broken stream stops the copy
/// before anything is written to the destination; without `-a` setuid and
/// setgid bits are dropped. Then each entry is moved into place:
/// directories merged, anything else replaced (a link already in the
/// destination is replaced, never followed).
fn unpack_to_host(r: impl Read, dir: &Path, archive: bool) -> Result<(), EngineError> {
    extraction_point(dir)?;
    let stage = Stage::new(dir)?;
    let bad = |e: std::io::Error| unpack_error(dir, e);
    let mut a = archive_reader(r, archive);
    for e in a.entries().map_err(bad)? {
        let mut e = e.map_err(bad)?;
        let name = e.path().map(|p| p.display().to_string()).unwrap_or_default();
        let t = e.header().entry_type();
        if !archive && (t.is_character_special() || t.is_block_special()) {
            return Err(EngineError::Invalid(format!(
                "refusing device node {name} from the container: nothing was copied (cp -a copies device nodes)"
            )));
        }
        if !e.unpack_in(&stage.0).map_err(bad)? {
            return Err(EngineError::Invalid(format!(
                "refusing archive entry {name}: it leaves the destination; nothing was copied"
            )));
        }
    }
    if !archive {
        drop_set_id_bits(&stage.0)?;
    }
    merge_check(&stage.0, dir)?;
    merge(&stage.0, dir).map_err(io_err(format!("move the copy into {}", dir.display())))
}

/// Clears setuid and setgid bits below `dir` (links not followed).
fn drop_set_id_bits(dir: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
        let p = e.map_err(io_err(format!("read {}", dir.display())))?.path();
        let m = std::fs::symlink_metadata(&p).map_err(io_err(format!("stat {}", p.display())))?;
        if m.file_type().is_symlink() {
            continue;
        }
        let mode = m.permissions().mode();
        if mode & 0o6000 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & !0o6000 & 0o7777))
                .map_err(io_err(format!("chmod {}", p.display())))?;
        }
        if m.is_dir() {
            drop_set_id_bits(&p)?;
        }
    }
    Ok(())
}

/// Docker's refusals of a copy that would put a directory over a file or a
/// file over a directory, checked before anything moves.
fn merge_check(src: &Path, dst: &Path) -> Result<(), EngineError> {
    for e in std::fs::read_dir(src).map_err(io_err(format!("read {}", src.display())))? {
        let name = e.map_err(io_err(format!("read {}", src.display())))?.file_name();
        let (s, d) = (src.join(&name), dst.join(&name));
        let s_dir = std::fs::symlink_metadata(&s).map_err(io_err(format!("stat {}", s.display())))?.is_dir();
        match std::fs::symlink_metadata(&d) {
            Ok(m) if m.is_dir() && s_dir => merge_check(&s, &d)?,
            Ok(m) if m.is_dir() => {
                return Err(EngineError::Invalid(format!(
                    "cannot overwrite directory {} with non-directory; nothing was copied",
                    d.display()
                )))
            }
            Ok(_) if s_dir => {
                return Err(EngineError::Invalid(format!(
                    "cannot overwrite non-directory {} with directory; nothing was copied",
                    d.display()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Moves the staged entries into `dst`: directories merged (their modes
/// applied), anything else renamed over what was there.
fn merge(src: &Path, dst: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(src)? {
        let name = e?.file_name();
        let (s, d) = (src.join(&name), dst.join(&name));
        let sm = std::fs::symlink_metadata(&s)?;
        match std::fs::symlink_metadata(&d) {
            Ok(dm) if dm.is_dir() && sm.is_dir() => {
                merge(&s, &d)?;
                std::fs::set_permissions(&d, sm.permissions())?;
            }
            _ => std::fs::rename(&s, &d)?,
        }
    }
    Ok(())
}

/// `chroot` of the calling thread (its filesystem attributes unshared).
fn enter(root: &Path) -> Result<(), EngineError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(|e| EngineError::Io("unshare".into(), e.into()))?;
    nix::unistd::chroot(root).map_err(|e| EngineError::Io(format!("enter {}", root.display()), e.into()))?;
    nix::unistd::chdir("/").map_err(|e| EngineError::Io("chdir /".into(), e.into()))
}

/// Runs `f` on a thread whose `/` is the tree.
fn run_in<T: Send>(tree: &Tree, f: impl FnOnce() -> Result<T, EngineError> + Send) -> Result<T, EngineError> {
    match tree {
        Tree::Live(p) => std::thread::scope(|s| {
            s.spawn(|| {
                enter(p)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(EngineError::Invalid("a copy thread panicked".into())))
        }),
        Tree::Mount(spec) => crate::rootview::in_private_ns(|| {
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| EngineError::Io("make / private".into(), e.into()))?;
            let (share, name) = (spec.rootfs_target.parent(), spec.rootfs_target.file_name());
            let (Some(share), Some(name)) = (share, name.and_then(|n| n.to_str())) else {
                return Err(EngineError::Invalid("the container's root has no parent directory".into()));
            };
            let root = moat_sandbox::link::prepare_root(spec, share, name)?;
            enter(&root)?;
            f()
        }),
    }
}

/// A container's tree, held for one operation.
struct Held {
    tree: Tree,
    /// A stopped container must not start while its tree is mounted.
    _lock: Option<moat_store::FileLock>,
}

impl Engine {
    fn hold(&mut self, key: &str) -> Result<Held, EngineError> {
        let c = self.get(key)?;
        let lock = if c.is_running() { None } else { Some(self.op_lock(c.id())?) };
        let c = self.get(c.id())?;
        if c.is_running() && lock.is_some() {
            return Err(EngineError::Conflict(format!("container {} started meanwhile: try again", c.name())));
        }
        let tree = if c.is_running() {
            match c.config.isolation() {
                moat_core::Isolation::Process => Tree::Live(PathBuf::from(format!("/proc/{}/root", c.state.pid))),
                moat_core::Isolation::Hyperv => {
                    // the root is mounted in the sandbox's shim, under its share
                    let owner = match c.config.network_mode().container() {
                        Some(o) => self.get(o)?,
                        None => c.clone(),
                    };
                    let root = moat_sandbox::link::share_dir(&self.layout.container(owner.id())).join(c.id());
                    let rel = root.strip_prefix("/").unwrap_or(&root);
                    Tree::Live(PathBuf::from(format!("/proc/{}/root", owner.state.shim_pid)).join(rel))
                }
            }
        } else {
            let image = self.images.store().image(&c.row.image_id)?.ok_or_else(|| {
                EngineError::Invalid(format!("image {} of this container was removed", c.row.image_id))
            })?;
            Tree::Mount(Box::new(crate::spec::build(&self.layout, c.id(), &c.config, &image, None)?))
        };
        Ok(Held { tree, _lock: lock })
    }

    /// The container's filesystem as a tar stream (`export`): the image and
    /// the container's changes, without volumes, binds or the kernel's
    /// filesystems, for running and stopped containers alike.
    pub fn export(&mut self, key: &str, w: impl Write + Send) -> Result<(), EngineError> {
        let c = self.get(key)?;
        let image =
            self.images.store().image(&c.row.image_id)?.ok_or_else(|| {
                EngineError::Invalid(format!("image {} of this container was removed", c.row.image_id))
            })?;
        let mut lower = vec![self.layout.container(c.id()).join("upper")];
        lower.extend(image.diff_ids.iter().rev().map(|d| self.layout.layer(d.hex())));
        let scratch = moat_store::TmpDir::new(&self.layout, "export")?;
        let at = scratch.path().join("root");
        std::fs::create_dir(&at).map_err(io_err("create the export view"))?;
        crate::rootview::in_private_ns(|| {
            crate::rootview::mount_layers(&lower, &at)?;
            pack(&at, None, false, w)
        })
    }

    /// `stat` of a path in a container.
    pub fn stat_path(&mut self, key: &str, path: &str) -> Result<PathStat, EngineError> {
        let h = self.hold(key)?;
        let p = in_ctr(path);
        run_in(&h.tree, || stat(&p, false))
    }

    /// A tar stream of `path` in the container, its top entry named after
    /// the path (Docker's `GET /containers/{id}/archive`).
    pub fn archive_get(&mut self, key: &str, path: &str, w: impl Write + Send) -> Result<PathStat, EngineError> {
        let h = self.hold(key)?;
        let p = in_ctr(path);
        run_in(&h.tree, || {
            let st = stat(&p, false)?;
            let name = if p == Path::new("/") { ".".to_string() } else { st.name.clone() };
            pack(&p, Some(&name), false, w)?;
            Ok(st)
        })
    }

    /// Unpacks a tar stream into the existing directory `dir` of the
    /// container (Docker's `PUT /containers/{id}/archive`).
    pub fn archive_put(
        &mut self,
        key: &str,
        dir: &str,
        r: impl Read + Send,
        keep_owners: bool,
    ) -> Result<(), EngineError> {
        let h = self.hold(key)?;
        let d = in_ctr(dir);
        run_in(&h.tree, || unpack(r, &d, keep_owners))
    }

    /// `cp CONTAINER:SRC HOST_DST`: Docker's rules of where the copy lands;
    /// `HOST_DST` `-` writes the tar stream to `stdout` instead.
    pub fn copy_from(
        &mut self,
        key: &str,
        src: &str,
        dst: &str,
        opts: CopyOptions,
        stdout: impl Write + Send,
    ) -> Result<(), EngineError> {
        let h = self.hold(key)?;
        let p = in_ctr(src);
        if dst == "-" {
            return run_in(&h.tree, || {
                let st = stat(&p, opts.follow_link)?;
                pack(&p, Some(&st.name), opts.follow_link, stdout)
            });
        }
        let dst_stat = std::fs::metadata(dst).ok().map(|m| m.is_dir());
        let parent = Path::new(dst.trim_end_matches('/')).parent().map(Path::to_path_buf).unwrap_or_default();
        let parent_is_dir = parent.as_os_str().is_empty() || parent.is_dir();
        let (reader, writer) = std::io::pipe().map_err(io_err("pipe"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let tree = &h.tree;
        std::thread::scope(|s| {
            let from = s.spawn(move || {
                run_in(tree, || {
                    let st = stat(&p, opts.follow_link)?;
                    let (dir, name) = destination(src, st.is_dir, dst, dst_stat, parent_is_dir)?;
                    let _ = tx.send(dir);
                    pack(&p, name.as_deref(), opts.follow_link, writer)
                })
            });
            // the destination is known before the first byte comes
            let unpacked = match rx.recv() {
                Ok(dir) => unpack_to_host(reader, &dir, opts.archive),
                Err(_) => Ok(()),
            };
            let packed = from.join().unwrap_or_else(|_| Err(EngineError::Invalid("a copy thread panicked".into())));
            match (packed, unpacked) {
                // the host side refused and closed the pipe: its reason is the one
                (Err(EngineError::Io(_, e)), Err(u)) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(u),
                (packed, unpacked) => packed.and(unpacked),
            }
        })
    }

    /// `cp HOST_SRC CONTAINER:DST`; `HOST_SRC` `-` reads a tar stream from
    /// `stdin` and unpacks it into the directory `DST`.
    pub fn copy_to(
        &mut self,
        src: &str,
        key: &str,
        dst: &str,
        opts: CopyOptions,
        stdin: impl Read + Send,
    ) -> Result<(), EngineError> {
        let h = self.hold(key)?;
        let d = in_ctr(dst);
        if src == "-" {
            return run_in(&h.tree, || unpack(stdin, &d, opts.archive));
        }
        let src_meta = if opts.follow_link { std::fs::metadata(src) } else { std::fs::symlink_metadata(src) }.map_err(
            |e| match e.kind() {
                std::io::ErrorKind::NotFound => EngineError::NotFound(format!("no such file or directory: {src}")),
                _ => EngineError::Io(format!("stat {src}"), e),
            },
        )?;
        let dst_s =
            d.display().to_string().trim_end_matches('/').to_string() + if dst.ends_with('/') { "/" } else { "" };
        let (dst_stat, parent_is_dir) = run_in(&h.tree, || {
            let st = std::fs::metadata(&d).ok().map(|m| m.is_dir());
            let parent = d.parent().map(|p| p.is_dir()).unwrap_or(true);
            Ok((st, parent))
        })?;
        let (dir, name) = destination(src, src_meta.is_dir(), &dst_s, dst_stat, parent_is_dir)?;
        let (reader, writer) = std::io::pipe().map_err(io_err("pipe"))?;
        let tree = &h.tree;
        std::thread::scope(|s| {
            let packer = s.spawn(move || pack(Path::new(src), name.as_deref(), opts.follow_link, writer));
            let into = run_in(tree, || unpack(reader, &dir, opts.archive));
            let packed = packer.join().unwrap_or_else(|_| Err(EngineError::Invalid("a copy thread panicked".into())));
            into.and(packed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_arguments() {
        assert_eq!(split_arg("web:/etc"), (Some("web"), "/etc"));
        assert_eq!(split_arg("web:rel"), (Some("web"), "rel"));
        assert_eq!(split_arg("/tmp/a:b"), (None, "/tmp/a:b"));
        assert_eq!(split_arg("./a:b"), (None, "./a:b"));
        assert_eq!(split_arg("-"), (None, "-"));
        assert_eq!(split_arg("plain"), (None, "plain"));
    }

    #[test]
    fn docker_cp_destinations() -> Result<(), EngineError> {
        let d = |src, is_dir, dst, st, parent| destination(src, is_dir, dst, st, parent);
        // into an existing directory
        assert_eq!(d("/etc", true, "/tmp", Some(true), true)?, ("/tmp".into(), Some("etc".into())));
        assert_eq!(d("/etc/.", true, "/tmp", Some(true), true)?, ("/tmp".into(), None));
        assert_eq!(d("/etc/passwd", false, "/tmp/", Some(true), true)?, ("/tmp/".into(), Some("passwd".into())));
        // to a new name
        assert_eq!(d("/etc/passwd", false, "/tmp/pw", None, true)?, ("/tmp".into(), Some("pw".into())));
        assert_eq!(d("/etc", true, "/tmp/new/", None, true)?, ("/tmp".into(), Some("new".into())));
        assert_eq!(d("a/b", false, "c", None, true)?, (".".into(), Some("c".into())));
        // over a file
        assert_eq!(d("/etc/passwd", false, "/tmp/f", Some(false), true)?, ("/tmp".into(), Some("f".into())));
        assert!(d("/etc", true, "/tmp/f", Some(false), true).is_err());
        // missing places
        assert!(d("/etc/passwd", false, "/tmp/nodir/", None, true).is_err());
        assert!(d("/etc/passwd", false, "/no/such/f", None, false).is_err());
        Ok(())
    }
}
