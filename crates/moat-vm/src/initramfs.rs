//! The initramfs: `/init` (the static guest agent) and the guest modules,
//! as an uncompressed cpio newc archive (no decompression at boot under TCG),
//! cached by content: rebuilt only when the agent or the kernel changes.
//!
//! The archive is zero-padded to a whole number of pages. QEMU puts the
//! initrd at the top of low RAM, rounded down to a page, so its end falls
//! into the last page at an offset set by the archive's size; with some
//! sizes (measured here with QEMU 10.0.2 and microvm: the last 256 bytes of
//! that page, e.g. a size of 0x2f1e98) the guest kernel hung or panicked in
//! its IO-APIC timer setup. A page-sized archive ends a whole page below.

use crate::kernel::Kernel;
use crate::VmError;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// True for an ELF executable without a program interpreter (static), the
/// only kind that can run as PID 1 of the initramfs.
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else { return false };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16at(54), u16at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) != 3
        // PT_INTERP
    })
}

/// Finds the static `moat-agent` binary near `exe` (the moat binary): the
/// workspace's `target/agent/...` build (`make agent`), or next to it.
pub fn find_agent(exe: &Path) -> Result<PathBuf, VmError> {
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let mut tried = Vec::new();
    let mut cands = Vec::new();
    for up in [dir.parent(), dir.parent().and_then(Path::parent)].into_iter().flatten() {
        cands.push(up.join("agent/x86_64-unknown-linux-gnu/release/moat-agent"));
    }
    cands.push(dir.join("moat-agent"));
    for c in cands {
        if c.is_file() && is_static_elf(&c) {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(VmError::NoAgent(tried.join(", ")))
}

/// Changes the cache key when the archive's layout changes.
const FORMAT: &[u8] = b"initramfs-2-page-padded";
const PAGE: usize = 4096;

fn entry(w: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) -> Result<(), VmError> {
    let b = cpio::newc::Builder::new(name).mode(mode).nlink(1);
    let mut wr = b.write(std::mem::take(w), data.len() as u32);
    wr.write_all(data).map_err(VmError::io("cpio"))?;
    *w = wr.finish().map_err(VmError::io("cpio"))?;
    Ok(())
}

/// The initramfs for `kernel` and `agent`, built into `cache_dir` if missing.
pub fn build(kernel: &Kernel, agent: &Path, cache_dir: &Path) -> Result<PathBuf, VmError> {
    let agent_bytes = std::fs::read(agent).map_err(VmError::io(format!("read {}", agent.display())))?;
    let mut h = Sha256::new();
    h.update(&agent_bytes);
    h.update(kernel.version.as_bytes());
    h.update(FORMAT);
    let mut mods = Vec::new();
    for m in &kernel.modules {
        let b = std::fs::read(m).map_err(VmError::io(format!("read {}", m.display())))?;
        h.update(&b);
        mods.push((m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), b));
    }
    let key = hex::encode(h.finalize());
    let path = cache_dir.join(format!("initramfs-{}.cpio", &key[..16]));
    if path.is_file() {
        return Ok(path);
    }
    let mut w = Vec::new();
    let dir = |w: &mut Vec<u8>, n: &str| entry(w, n, 0o040755, &[]);
    dir(&mut w, "modules")?;
    for d in ["dev", "proc", "sys", "run", "tmp"] {
        dir(&mut w, d)?;
    }
    entry(&mut w, "init", 0o100755, &agent_bytes)?;
    let mut order = String::new();
    for (name, b) in &mods {
        entry(&mut w, &format!("modules/{name}"), 0o100644, b)?;
        order.push_str(name);
        order.push('\n');
    }
    entry(&mut w, "modules/order", 0o100644, order.as_bytes())?;
    let mut w = cpio::newc::trailer(w).map_err(VmError::io("cpio"))?;
    w.resize(w.len().next_multiple_of(PAGE), 0);
    std::fs::create_dir_all(cache_dir).map_err(VmError::io("create initramfs cache"))?;
    let tmp = cache_dir.join(format!(".initramfs.{}", std::process::id()));
    std::fs::write(&tmp, &w).map_err(VmError::io("write initramfs"))?;
    std::fs::rename(&tmp, &path).map_err(VmError::io("write initramfs"))?;
    Ok(path)
}

/// Removes the initramfs archives in `cache_dir` other than `keep` (built
/// for agents or kernels no longer installed; a running VM has read its own
/// already). Returns what it removed.
pub fn prune(cache_dir: &Path, keep: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(cache_dir) else { return Vec::new() };
    let mut gone = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with("initramfs-")
            && name.ends_with(".cpio")
            && path != keep
            && std::fs::remove_file(&path).is_ok()
        {
            gone.push(path);
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_page_padded_and_cached() {
        let d = tempfile::tempdir().unwrap();
        let agent = d.path().join("agent");
        let module = d.path().join("virtio.ko");
        // 0x2f1e98 bytes of payload once made an archive end where QEMU's microvm guest hung
        std::fs::write(&agent, vec![7u8; 0x2f1e98 - 600]).unwrap();
        std::fs::write(&module, b"module").unwrap();
        let k = Kernel { version: "6.1.0-test".into(), vmlinux: PathBuf::new(), modules: vec![module.clone()] };
        let p = build(&k, &agent, d.path()).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len() % PAGE, 0, "size {:#x}", b.len());
        let end = b.iter().rposition(|&c| c != 0).unwrap();
        assert!(b[..=end].ends_with(b"TRAILER!!!"), "the cpio trailer ends the data");
        assert_eq!(build(&k, &agent, d.path()).unwrap(), p);
        // another agent's archive is pruned, this one and other files stay
        std::fs::write(&agent, b"another agent").unwrap();
        let old = build(&k, &agent, d.path()).unwrap();
        assert_ne!(old, p);
        assert_eq!(prune(d.path(), &p), vec![old.clone()]);
        assert!(p.is_file() && !old.exists() && module.is_file());
    }
}
