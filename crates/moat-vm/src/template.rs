//! VM templates: a utility VM booted once (kernel up, modules loaded, agent
//! waiting, no root mounted) and snapshotted with `x-ignore-shared`, so that
//! every VM container after it is a restore instead of a boot. See
//! `docs/vm-templates.md`.
//!
//! A template is a directory `<kernel dir>/templates/<digest>/` holding
//! `ram` (guest memory, a sparse file: only non-zero pages are stored),
//! `state` (QEMU's device state, ~100 KiB) and `meta.json`. The digest
//! covers everything that shapes the snapshot ([`Shape`]); a different
//! kernel, agent, QEMU, QEMU argument, memory size, vCPU count, NIC count
//! or accelerator is a different template. Builds run under an exclusive lock in a scratch
//! directory that is renamed into place only when complete, so racing
//! builders build once and a killed build leaves nothing that is used.
//!
//! A clone gets a memfd holding a copy of `ram` (a private copy is needed:
//! virtiofsd maps guest memory shared, so a copy-on-write mapping would hide
//! QEMU's writes from it) and QEMU restores `state` with `-incoming defer`.

use crate::qemu::{Accel, Version};
use crate::qmp::Qmp;
use crate::VmError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bumped when the snapshot procedure changes (old templates become stale);
/// QEMU's own arguments are in [`Shape::qemu_args`]. 3: the shape holds them.
pub const FORMAT: u32 = 3;
/// The first QEMU that migrates vhost-user-fs (virtio-fs) devices.
pub const MIN_QEMU: Version = Version(8, 2, 0);

pub use crate::files::FileId;

/// Everything that shapes a template; its digest names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// [`FORMAT`].
    pub format: u32,
    /// Guest kernel release.
    pub kernel: String,
    /// The kernel image.
    pub vmlinux: FileId,
    /// The initramfs (its name carries the digest of the agent and modules).
    pub initramfs: FileId,
    /// The QEMU binary.
    pub qemu: FileId,
    /// Its version.
    pub qemu_version: Version,
    /// The virtiofsd binary (its back-end state travels in the snapshot).
    pub virtiofsd: FileId,
    /// Accelerator.
    pub accel: Accel,
    /// Guest memory, MiB.
    pub mem_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Number of NICs.
    pub nics: usize,
    /// The container-independent QEMU arguments of a clone (machine, CPU,
    /// devices, kernel command line: `qemu::Command::shape_args`).
    pub qemu_args: String,
}

impl Shape {
    /// The template's name: sha256 of the shape.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(self).unwrap_or_default());
        hex::encode(h.finalize())
    }
}

/// What `meta.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// The shape.
    pub shape: Shape,
    /// Its digest.
    pub digest: String,
    /// When it was built (Unix seconds).
    pub created: u64,
    /// How long the build took, ms (boot + snapshot).
    pub build_ms: u64,
    /// Bytes of guest RAM the snapshot holds (the sparse file's data).
    pub ram_bytes: u64,
    /// Bytes of device state.
    pub state_bytes: u64,
}

/// A complete template on disk.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its directory.
    pub dir: PathBuf,
    /// What it is.
    pub meta: Meta,
}

impl Template {
    /// The guest RAM file.
    pub fn ram(&self) -> PathBuf {
        self.dir.join("ram")
    }
    /// The device state file.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Reads the template in `dir`; `None` when it is incomplete or unreadable.
    pub fn open(dir: &Path) -> Option<Self> {
        let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()?;
        let t = Self { dir: dir.to_path_buf(), meta };
        (t.ram().is_file() && t.state().is_file()).then_some(t)
    }
}

/// Whether this QEMU can snapshot a VM with virtio-fs.
pub fn supported(v: Version) -> bool {
    v >= MIN_QEMU
}

/// The templates directory under a kernel directory.
pub fn dir(kernel_dir: &Path) -> PathBuf {
    kernel_dir.join("templates")
}

use crate::files::create_private_dir;

/// An exclusive lock on `path`, held until dropped.
struct Lock(#[allow(dead_code)] std::fs::File);

fn lock(path: &Path) -> Result<Lock, VmError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(VmError::io(format!("open {}", path.display())))?;
    loop {
        // SAFETY: flock on our descriptor
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(Lock(f));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(VmError::Io(format!("lock {}", path.display()), e));
        }
    }
}

/// The template for `shape`, built with `build` if there is none: `build`
/// gets an empty scratch directory and must leave `ram`, `state` and
/// return the build's [`Meta`] fields (`build_ms`). Racing callers build once.
pub fn ensure(
    templates: &Path,
    shape: &Shape,
    build: impl FnOnce(&Path) -> Result<u64, VmError>,
) -> Result<Template, VmError> {
    let digest = shape.digest();
    let final_dir = templates.join(&digest);
    if let Some(t) = Template::open(&final_dir).filter(|t| &t.meta.shape == shape) {
        return Ok(t);
    }
    create_private_dir(templates)?;
    let _lock = lock(&templates.join(format!(".lock-{}", &digest[..16])))?;
    if let Some(t) = Template::open(&final_dir).filter(|t| &t.meta.shape == shape) {
        return Ok(t);
    }
    // whatever is here under our lock is a killed build's or a broken template
    let _ = std::fs::remove_dir_all(&final_dir);
    sweep_scratch(templates, Some(&digest));
    let scratch = templates.join(format!(".build-{digest}-{}", std::process::id()));
    create_private_dir(&scratch)?;
    let built = build(&scratch).and_then(|build_ms| {
        let used = |p: &Path| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0);
        let meta = Meta {
            shape: shape.clone(),
            digest: digest.clone(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            build_ms,
            ram_bytes: used(&scratch.join("ram")),
            state_bytes: std::fs::metadata(scratch.join("state")).map(|m| m.len()).unwrap_or(0),
        };
        write_synced(&scratch.join("meta.json"), &serde_json::to_vec_pretty(&meta).unwrap_or_default())?;
        for f in ["ram", "state"] {
            let file = std::fs::File::open(scratch.join(f)).map_err(VmError::io(format!("open template {f}")))?;
            file.sync_all().map_err(VmError::io(format!("sync template {f}")))?;
        }
        std::fs::rename(&scratch, &final_dir).map_err(VmError::io("install template"))?;
        if let Ok(d) = std::fs::File::open(templates) {
            let _ = d.sync_all();
        }
        Ok(Template { dir: final_dir.clone(), meta })
    });
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    built
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), VmError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(VmError::io(format!("create {}", path.display())))?;
    f.write_all(data).map_err(VmError::io(format!("write {}", path.display())))?;
    f.sync_all().map_err(VmError::io(format!("sync {}", path.display())))
}

/// Removes scratch directories of builds that are not running (all of
/// them for `digest`, whose lock the caller holds; otherwise those whose
/// lock is free).
fn sweep_scratch(templates: &Path, digest: Option<&str>) {
    for d in scratch_dirs(templates, digest) {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Scratch directories of template builds that were killed (nobody holds
/// their build's lock): what `moat system check` reports and removes.
pub fn stale_scratch(templates: &Path) -> Vec<PathBuf> {
    scratch_dirs(templates, None)
}

/// Scratch directories of `digest`'s builds (the caller holds its lock), or
/// of every build whose lock is free.
fn scratch_dirs(templates: &Path, digest: Option<&str>) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(templates) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".build-") else { continue };
        let d = rest.split('-').next().unwrap_or("");
        let stale = match digest {
            Some(mine) => d == mine,
            None => {
                // a build holds its lock: if we can take it, nobody builds
                let p = templates.join(format!(".lock-{}", d.get(..16).unwrap_or(d)));
                try_lock(&p)
            }
        };
        if stale {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

fn try_lock(path: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else { return true };
    // SAFETY: flock on our descriptor; released when `f` closes
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The complete templates in `templates`.
pub fn list(templates: &Path) -> Vec<Template> {
    let Ok(rd) = std::fs::read_dir(templates) else { return Vec::new() };
    let mut v: Vec<Template> = rd
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Template::open(&e.path()))
        .collect();
    v.sort_by_key(|t| std::cmp::Reverse(t.meta.created));
    v
}

/// Removes the template whose digest starts with `prefix` (at least 4
/// characters, unambiguous); its running clones are unaffected (they hold
/// their own copy of its memory).
pub fn remove(templates: &Path, prefix: &str) -> Result<String, VmError> {
    let all = list(templates);
    let hits: Vec<&Template> = all.iter().filter(|t| prefix.len() >= 4 && t.meta.digest.starts_with(prefix)).collect();
    match hits.as_slice() {
        [t] => {
            let _lock = lock(&templates.join(format!(".lock-{}", &t.meta.digest[..16])))?;
            std::fs::remove_dir_all(&t.dir).map_err(VmError::io(format!("remove {}", t.dir.display())))?;
            let _ = std::fs::remove_file(templates.join(format!(".lock-{}", &t.meta.digest[..16])));
            Ok(t.meta.digest.clone())
        }
        [] => Err(VmError::NotFound(format!("no such VM template: {prefix}"))),
        _ => Err(VmError::NotFound(format!("VM template prefix {prefix} is ambiguous"))),
    }
}

/// Removes every template `keep` rejects and leftovers of killed builds;
/// returns the digests removed.
pub fn prune(templates: &Path, keep: impl Fn(&Shape) -> bool) -> Vec<String> {
    sweep_scratch(templates, None);
    let mut gone = Vec::new();
    for t in list(templates) {
        if !keep(&t.meta.shape) && remove(templates, &t.meta.digest).is_ok() {
            gone.push(t.meta.digest);
        }
    }
    // directories that never became templates (no meta.json)
    if let Ok(rd) = std::fs::read_dir(templates) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && e.path().is_dir() && Template::open(&e.path()).is_none() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    gone
}

/// A memfd of `size` bytes for guest RAM.
pub fn memfd(name: &str, size: u64) -> Result<OwnedFd, VmError> {
    let cname = std::ffi::CString::new(name).map_err(|_| VmError::Command("bad memfd name".into()))?;
    // SAFETY: memfd_create with a valid C string; the fd is ours
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(VmError::Io("memfd_create".into(), std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptor
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our descriptor
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } < 0 {
        return Err(VmError::Io("size guest memory".into(), std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// The data extents of `fd` (`SEEK_DATA`/`SEEK_HOLE`), up to `size`.
fn extents(fd: &impl AsRawFd, size: u64) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    let mut off: i64 = 0;
    while (off as u64) < size {
        // SAFETY: lseek on our descriptor
        let start = unsafe { libc::lseek(fd.as_raw_fd(), off, libc::SEEK_DATA) };
        if start < 0 {
            break;
        }
        // SAFETY: as above
        let end = unsafe { libc::lseek(fd.as_raw_fd(), start, libc::SEEK_HOLE) };
        let end = if end < 0 { size as i64 } else { end.min(size as i64) };
        if end <= start {
            break;
        }
        v.push((start as u64, (end - start) as u64));
        off = end;
    }
    v
}

/// A `File` view of `fd` for positioned I/O (`FileExt`); it owns a duplicate.
fn file_of(fd: &impl AsFd) -> Result<std::fs::File, VmError> {
    Ok(fd.as_fd().try_clone_to_owned().map_err(VmError::io("duplicate a guest memory fd"))?.into())
}

/// Reads up to `buf.len()` bytes at `off`; fewer only at the end of the file.
fn read_full_at(f: &std::fs::File, buf: &mut [u8], off: u64) -> Result<usize, VmError> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(VmError::Io("read guest memory".into(), e)),
        }
    }
    Ok(got)
}

const PAGE: usize = 4096;
const CHUNK: usize = 2 << 20;

/// Copies guest memory `size` bytes long from `src` to `dst`, leaving pages
/// of zeros as holes (a template's RAM file holds only what the guest
/// really wrote).
fn copy_sparse(src: &impl AsFd, dst: &impl AsFd, size: u64) -> Result<(), VmError> {
    let (from, to) = (file_of(src)?, file_of(dst)?);
    let put = |b: &[u8], off: u64| to.write_all_at(b, off).map_err(VmError::io("write guest memory"));
    let mut buf = vec![0u8; CHUNK];
    for (start, len) in extents(&from, size) {
        let mut off = start;
        let end = start + len;
        while off < end {
            let n = ((end - off) as usize).min(CHUNK);
            let got = read_full_at(&from, &mut buf[..n], off)?;
            if got == 0 {
                break;
            }
            // write runs of non-zero pages
            let mut p = 0;
            while p < got {
                let zero = |i: usize| buf[i..(i + PAGE).min(got)].iter().all(|b| *b == 0);
                if zero(p) {
                    p += PAGE;
                    continue;
                }
                let s = p;
                while p < got && !zero(p) {
                    p += PAGE;
                }
                put(&buf[s..p.min(got)], off + s as u64)?;
            }
            off += got as u64;
        }
    }
    Ok(())
}

/// Writes a template VM's memory (`ram`, a memfd) to `path` as a sparse file.
pub fn save_ram(ram: &OwnedFd, size: u64, path: &Path) -> Result<(), VmError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(VmError::io(format!("create {}", path.display())))?;
    f.set_len(size).map_err(VmError::io("size template RAM"))?;
    copy_sparse(ram, &f, size)
}

/// Fills a clone's guest memory (`ram`, a memfd of the template's size,
/// which QEMU may already have mapped) with the template's RAM.
pub fn fill_ram(t: &Template, ram: &OwnedFd) -> Result<(), VmError> {
    let size = t.meta.shape.mem_mib << 20;
    let src = std::fs::File::open(t.ram()).map_err(VmError::io(format!("open {}", t.ram().display())))?;
    copy_extents_in_kernel(&src, ram, size)
}

/// Copies the data extents of `src` to the same offsets of `dst` with
/// `sendfile`: the kernel copies page cache to the memfd once, without the
/// read into (and write from) a buffer of ours. `dst`'s file offset is
/// moved; nobody else uses it (QEMU maps the memfd).
fn copy_extents_in_kernel(src: &std::fs::File, dst: &OwnedFd, size: u64) -> Result<(), VmError> {
    for (start, len) in extents(src, size) {
        // SAFETY: lseek on a descriptor we hold
        if unsafe { libc::lseek(dst.as_raw_fd(), start as i64, libc::SEEK_SET) } < 0 {
            return Err(VmError::io("seek guest memory")(std::io::Error::last_os_error()));
        }
        let mut off = start as libc::off_t;
        let end = (start + len) as libc::off_t;
        while off < end {
            let want = ((end - off) as usize).min(1 << 30);
            // SAFETY: sendfile between descriptors we hold, with our offset
            let n = unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut off, want) };
            match n {
                0 => return Err(VmError::io("copy template RAM")(std::io::ErrorKind::UnexpectedEof.into())),
                n if n < 0 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(VmError::io("copy template RAM")(e));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A clone's guest memory: a memfd holding a copy of the template's RAM.
pub fn clone_ram(t: &Template) -> Result<OwnedFd, VmError> {
    let fd = memfd("moat-ram", t.meta.shape.mem_mib << 20)?;
    fill_ram(t, &fd)?;
    Ok(fd)
}

/// Snapshots the template VM behind `qmp` (the agent has said `Ready`)
/// into `state`: RAM stays in its shared file, QEMU writes only device
/// state.
pub fn snapshot(qmp: &mut Qmp, state: &Path, version: Version) -> Result<(), VmError> {
    let caps = json!({ "capabilities": [
        { "capability": "x-ignore-shared", "state": true },
        { "capability": "events", "state": true },
    ]});
    qmp.execute("migrate-set-capabilities", caps)?;
    qmp.execute("stop", json!({}))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(state)
        .map_err(VmError::io(format!("create {}", state.display())))?;
    let uri = state_uri(qmp, f.as_fd(), version)?;
    qmp.execute("migrate", json!({ "uri": uri }))?;
    qmp.wait_migration()
}

/// Restores a clone (QEMU started with `-incoming defer` on a copy of the
/// template's RAM) from the template's device state and lets it run.
pub fn restore(qmp: &mut Qmp, t: &Template) -> Result<(), VmError> {
    let caps = json!({ "capabilities": [
        { "capability": "x-ignore-shared", "state": true },
        { "capability": "events", "state": true },
    ]});
    qmp.execute("migrate-set-capabilities", caps)?;
    let f = std::fs::File::open(t.state()).map_err(VmError::io(format!("open {}", t.state().display())))?;
    let uri = state_uri(qmp, f.as_fd(), t.meta.shape.qemu_version)?;
    qmp.execute("migrate-incoming", json!({ "uri": uri }))?;
    qmp.wait_migration()?;
    // QEMU starts a restored VM by itself unless told -S; `cont` makes sure
    let _ = qmp.execute("cont", json!({}));
    Ok(())
}

/// Hands QEMU the state file and names it for `migrate`: QEMU >= 9.1
/// deprecates `fd:` for files and takes `file:/dev/fdset/N` (the file is
/// opened by moat; QEMU is chrooted into an empty directory).
fn state_uri(qmp: &mut Qmp, f: std::os::fd::BorrowedFd<'_>, version: Version) -> Result<String, VmError> {
    if version >= Version(9, 1, 0) {
        qmp.add_fd(1, f)?;
        Ok("file:/dev/fdset/1".into())
    } else {
        qmp.send_fd("state", f)?;
        Ok("fd:state".into())
    }
}

/// The MAC of a template's `n`th NIC (every clone sets its own).
pub fn template_mac(n: usize) -> String {
    format!("02:00:00:00:00:{:02x}", n + 1)
}

/// Boots `base` as a template in `scratch` and snapshots it there (`ram`,
/// `state`), the boot taking at most `timeout`; returns the build's duration in ms. `base` gives the kernel,
/// initramfs, accelerator, sizing, binaries and NIC count; everything
/// else (an empty root, transient taps, guest RAM in a memfd, no cgroups)
/// is the template's own. QEMU and virtiofsd are gone when this returns.
pub fn build(
    base: &crate::launch::VmConfig,
    version: Version,
    scratch: &Path,
    timeout: Duration,
) -> Result<u64, VmError> {
    use crate::launch::{launch, Role, VmConfig};
    let t0 = std::time::Instant::now();
    let root = scratch.join("root");
    let run = scratch.join("run");
    for d in [&root, &run] {
        create_private_dir(d)?;
    }
    let size = base.mem_mib << 20;
    let ram = std::sync::Arc::new(memfd("moat-template-ram", size)?);
    let cfg = VmConfig {
        rootfs: root.clone(),
        run_dir: run.clone(),
        console_log: scratch.join("console.log"),
        name: "moat-template".into(),
        nics: (0..base.nics.len()).map(|n| (String::new(), template_mac(n))).collect(),
        cgroup_procs: Vec::new(),
        ram: Some(ram.clone()),
        role: Role::Template,
        ..base.clone()
    };
    let mut vm = launch(&cfg, version)?;
    let done = (|| {
        wait_ready(&mut vm, &cfg.console_log, t0 + timeout)?;
        let qmp_stream = vm.qmp.try_clone().map_err(VmError::io("QMP"))?;
        let mut qmp = Qmp::negotiate(qmp_stream, timeout.saturating_sub(t0.elapsed()).max(Duration::from_secs(10)))?;
        snapshot(&mut qmp, &scratch.join("state"), version)?;
        save_ram(&ram, size, &scratch.join("ram"))
    })();
    let _ = vm.qemu.kill();
    let _ = vm.qemu.wait();
    let _ = vm.virtiofsd.kill();
    let _ = vm.virtiofsd.wait();
    let _ = std::fs::remove_dir_all(&run);
    let _ = std::fs::remove_dir_all(&root);
    done.map(|()| t0.elapsed().as_millis() as u64)
}

/// Waits for the template's agent to say `Ready`.
fn wait_ready(vm: &mut crate::launch::Vm, console: &Path, deadline: std::time::Instant) -> Result<(), VmError> {
    use std::io::Read;
    let mut dec = moat_proto::Decoder::default();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        while let Some(f) = dec.next_frame().map_err(|e| VmError::Guest(format!("template agent: {e}")))? {
            if f.session == 0 && f.kind == moat_proto::Kind::Control {
                match f.msg::<moat_proto::AgentEvent>() {
                    Ok(moat_proto::AgentEvent::Ready { version }) if version == moat_proto::PROTOCOL_VERSION => {
                        return Ok(())
                    }
                    Ok(moat_proto::AgentEvent::Ready { version }) => {
                        return Err(VmError::Guest(format!(
                            "the template's guest agent speaks protocol {version}, this moat {}: rebuild the agent",
                            moat_proto::PROTOCOL_VERSION
                        )))
                    }
                    _ => {}
                }
            }
        }
        if let Ok(Some(st)) = vm.qemu.try_wait() {
            return Err(VmError::Guest(format!(
                "the template VM exited during its boot ({st}); guest console: {}",
                crate::launch::console_tail(console, 8)
            )));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(VmError::Guest(format!(
                "the template VM did not come up in time; guest console: {}",
                crate::launch::console_tail(console, 8)
            )));
        }
        vm.channel
            .set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .map_err(VmError::io("agent channel"))?;
        match vm.channel.read(&mut buf) {
            Ok(0) => {
                let st = vm.qemu.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(VmError::Guest(format!(
                    "the template VM ended during its boot (qemu: {st}); guest console: {}",
                    crate::launch::console_tail(console, 8)
                )));
            }
            Ok(n) => dec.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(VmError::Io("agent channel".into(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        let id = FileId { path: "/x".into(), size: 1, mtime_ns: 2, ino: 3 };
        Shape {
            format: FORMAT,
            kernel: "6.1".into(),
            vmlinux: id.clone(),
            initramfs: id.clone(),
            qemu: id.clone(),
            qemu_version: Version(10, 0, 2),
            virtiofsd: id,
            accel: Accel::Tcg,
            mem_mib: 512,
            vcpus: 1,
            nics: 1,
            qemu_args: "-accel tcg -append console=ttyS0".into(),
        }
    }

    #[test]
    fn digest_covers_the_shape() {
        let a = shape();
        let mut b = shape();
        assert_eq!(a.digest(), b.digest());
        b.nics = 2;
        assert_ne!(a.digest(), b.digest());
        let mut c = shape();
        c.accel = Accel::Kvm;
        assert_ne!(a.digest(), c.digest());
        assert!(supported(Version(8, 2, 0)) && supported(Version(10, 0, 2)) && !supported(Version(7, 2, 22)));
    }

    #[test]
    fn ensure_builds_once_and_never_half() {
        let d = tempfile::tempdir().unwrap();
        let s = shape();
        // a failed build leaves nothing
        let r = ensure(d.path(), &s, |dir| {
            std::fs::write(dir.join("ram"), b"x").unwrap();
            Err(VmError::Guest("boom".into()))
        });
        assert!(r.is_err());
        assert!(list(d.path()).is_empty());
        assert!(!std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".build")));
        // racing builders: exactly one build
        let builds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (p, s, b) = (d.path().to_path_buf(), s.clone(), builds.clone());
                std::thread::spawn(move || {
                    ensure(&p, &s, |dir| {
                        b.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        std::fs::write(dir.join("ram"), vec![1u8; 8192]).unwrap();
                        std::fs::write(dir.join("state"), b"s").unwrap();
                        Ok(7)
                    })
                    .unwrap()
                })
            })
            .collect();
        let ts: Vec<Template> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(ts.iter().all(|t| t.meta.digest == s.digest() && t.meta.build_ms == 7));
        assert_eq!(list(d.path()).len(), 1);
        // a template whose files went missing is rebuilt
        std::fs::remove_file(ts[0].state()).unwrap();
        let again = ensure(d.path(), &s, |dir| {
            std::fs::write(dir.join("ram"), b"r").unwrap();
            std::fs::write(dir.join("state"), b"s").unwrap();
            Ok(9)
        })
        .unwrap();
        assert_eq!(again.meta.build_ms, 9);
        // prune keeps what the filter keeps, rm by prefix
        assert!(prune(d.path(), |_| true).is_empty());
        assert!(remove(d.path(), "zz").is_err());
        assert_eq!(remove(d.path(), &s.digest()[..8]).unwrap(), s.digest());
        assert!(list(d.path()).is_empty());
    }

    #[test]
    fn sparse_copies() {
        let size = 64 * PAGE as u64;
        let ram = memfd("t", size).unwrap();
        let mut page = vec![0u8; PAGE];
        page[17] = 0xaa;
        let f = file_of(&ram).unwrap();
        f.write_all_at(&page, 5 * PAGE as u64).unwrap();
        f.write_all_at(&vec![0u8; PAGE], 9 * PAGE as u64).unwrap(); // written zeros
        f.write_all_at(&page, 40 * PAGE as u64).unwrap();
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ram");
        save_ram(&ram, size, &path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(meta.blocks() * 512 <= 2 * PAGE as u64 * 4, "zero pages stay holes: {} blocks", meta.blocks());
        let t = Template {
            dir: d.path().to_path_buf(),
            meta: Meta {
                shape: Shape { mem_mib: 1, ..shape() },
                digest: String::new(),
                created: 0,
                build_ms: 0,
                ram_bytes: 0,
                state_bytes: 0,
            },
        };
        let c = clone_ram(&t).unwrap();
        let mut back = vec![0u8; size as usize];
        file_of(&c).unwrap().read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back[5 * PAGE + 17], 0xaa);
        assert_eq!(back[40 * PAGE + 17], 0xaa);
        assert_eq!(back.iter().filter(|b| **b != 0).count(), 2);
    }
}
