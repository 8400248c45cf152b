//! Guest kernel provisioning from Debian's `linux-image-cloud-amd64`.
//!
//! `install` resolves the package the metapackage currently depends on (so a
//! version Debian has replaced is never requested), downloads it with
//! `apt-get download`, unpacks it with `dpkg-deb -x`, extracts the ELF
//! `vmlinux` from the LZ4-compressed `vmlinuz` (PVH direct boot needs the
//! ELF), and keeps the virtio/virtiofs modules with their signatures
//! stripped (they load twice as fast). The layout of a kernel directory:
//! `<dir>/current` (the version), `<dir>/<version>/vmlinux`,
//! `<dir>/<version>/modules/<name>.ko`.

use crate::VmError;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Modules the guest loads, in dependency order.
pub const MODULES: &[(&str, &str)] = &[
    ("virtio_ring", "drivers/virtio/virtio_ring.ko"),
    ("virtio", "drivers/virtio/virtio.ko"),
    ("virtio_mmio", "drivers/virtio/virtio_mmio.ko"),
    ("virtio_balloon", "drivers/virtio/virtio_balloon.ko"),
    ("virtio_console", "drivers/char/virtio_console.ko"),
    ("failover", "net/core/failover.ko"),
    ("net_failover", "drivers/net/net_failover.ko"),
    ("virtio_net", "drivers/net/virtio_net.ko"),
    ("fuse", "fs/fuse/fuse.ko"),
    ("virtiofs", "fs/fuse/virtiofs.ko"),
];

/// An installed guest kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Kernel release (`6.1.0-56-cloud-amd64`).
    pub version: String,
    /// ELF vmlinux.
    pub vmlinux: PathBuf,
    /// Module files in load order.
    pub modules: Vec<PathBuf>,
}

/// The installed kernel in `dir`, if any.
pub fn current(dir: &Path) -> Result<Kernel, VmError> {
    let v = std::fs::read_to_string(dir.join("current"))
        .map_err(|_| VmError::NoKernel(dir.display().to_string()))?
        .trim()
        .to_string();
    let d = dir.join(&v);
    let vmlinux = d.join("vmlinux");
    if !vmlinux.is_file() {
        return Err(VmError::NoKernel(dir.display().to_string()));
    }
    let modules =
        MODULES.iter().map(|(n, _)| d.join("modules").join(format!("{n}.ko"))).filter(|p| p.is_file()).collect();
    Ok(Kernel { version: v, vmlinux, modules })
}

fn run(cmd: &mut Command, what: &str) -> Result<String, VmError> {
    let o = cmd.output().map_err(|e| VmError::Command(format!("{what}: {e}")))?;
    if !o.status.success() {
        return Err(VmError::Command(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The concrete package behind the `linux-image-cloud-amd64` metapackage now.
pub fn resolve_package() -> Result<String, VmError> {
    let out = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]), "apt-cache depends")?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(str::to_string)
        .ok_or_else(|| VmError::Command("linux-image-cloud-amd64 has no kernel dependency (run apt-get update)".into()))
}

/// Downloads and installs the current Debian cloud kernel into `dir`.
pub fn install(dir: &Path) -> Result<Kernel, VmError> {
    let pkg = resolve_package()?;
    let version = pkg.trim_start_matches("linux-image-").to_string();
    if let Ok(k) = current(dir) {
        // an install from before a module joined MODULES is redone
        if k.version == version && k.modules.len() == MODULES.len() {
            return Ok(k);
        }
    }
    std::fs::create_dir_all(dir).map_err(VmError::io(format!("create {}", dir.display())))?;
    let work = dir.join(format!(".install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(VmError::io("create work dir"))?;
    let result = (|| {
        run(Command::new("apt-get").arg("download").arg(&pkg).current_dir(&work), "apt-get download")?;
        let deb = std::fs::read_dir(&work)
            .map_err(VmError::io("list download"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| VmError::Command("apt-get download produced no .deb".into()))?;
        let x = work.join("x");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x), "dpkg-deb -x")?;
        let staged = work.join(&version);
        std::fs::create_dir_all(staged.join("modules")).map_err(VmError::io("create kernel dir"))?;
        let vmlinuz =
            std::fs::read(x.join("boot").join(format!("vmlinuz-{version}"))).map_err(VmError::io("read vmlinuz"))?;
        std::fs::write(staged.join("vmlinux"), extract_vmlinux(&vmlinuz)?).map_err(VmError::io("write vmlinux"))?;
        let mdir = x.join("lib/modules").join(&version).join("kernel");
        for (name, rel) in MODULES {
            let m = std::fs::read(mdir.join(rel)).map_err(VmError::io(format!("read module {rel}")))?;
            std::fs::write(staged.join("modules").join(format!("{name}.ko")), strip_signature(&m))
                .map_err(VmError::io("write module"))?;
        }
        // the directory may be shared by several roots: a complete install
        // of this version (another root's) stays, in use or not
        let target = dir.join(&version);
        if !target.join("vmlinux").is_file() {
            let _ = std::fs::remove_dir_all(&target);
            match std::fs::rename(&staged, &target) {
                Ok(()) => {}
                Err(_) if target.join("vmlinux").is_file() => {}
                Err(e) => return Err(VmError::Io("install kernel".into(), e)),
            }
        }
        // modules that joined MODULES after this version was installed:
        // added beside the others (write, then rename: never a partial file)
        for (name, _) in MODULES {
            let want = target.join("modules").join(format!("{name}.ko"));
            if !want.is_file() {
                let tmp = target.join("modules").join(format!(".{name}.ko.{}", std::process::id()));
                std::fs::copy(staged.join("modules").join(format!("{name}.ko")), &tmp)
                    .map_err(VmError::io(format!("install module {name}")))?;
                std::fs::rename(&tmp, &want).map_err(VmError::io(format!("install module {name}")))?;
            }
        }
        record_current(dir, &version)?;
        current(dir)
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The release in a kernel image's `Linux version <release> ...` banner.
pub fn release_of(image: &[u8]) -> Option<String> {
    let at = find(image, b"Linux version ")? + b"Linux version ".len();
    let r: String = image[at..].iter().take(64).take_while(|b| !b.is_ascii_whitespace()).map(|&b| b as char).collect();
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._+-".contains(c);
    (!r.is_empty() && !r.starts_with('.') && r.chars().all(ok_char)).then_some(r)
}

/// Installs a kernel built elsewhere: an ELF `vmlinux` with everything the
/// guest needs built in (no modules), such as the one
/// `scripts/guest-kernel.sh` builds, under the release its banner names. A
/// kernel of the same release is replaced (rename over it: running VMs keep
/// the file they loaded, and templates of the old one turn stale, as they
/// key on its identity).
pub fn install_vmlinux(dir: &Path, vmlinux: &Path) -> Result<Kernel, VmError> {
    let image = std::fs::read(vmlinux).map_err(VmError::io(format!("read {}", vmlinux.display())))?;
    if !image.starts_with(&ELF_MAGIC) {
        return Err(VmError::Kernel(format!("{} is not an ELF vmlinux", vmlinux.display())));
    }
    let release = release_of(&image)
        .ok_or_else(|| VmError::Kernel(format!("{} has no `Linux version` banner", vmlinux.display())))?;
    let release = release.as_str();
    let target = dir.join(release);
    // the same kernel again keeps its file, so its templates stay current
    if std::fs::read(target.join("vmlinux")).is_ok_and(|old| old == image) {
        record_current(dir, release)?;
        return current(dir);
    }
    std::fs::create_dir_all(&target).map_err(VmError::io(format!("create {}", target.display())))?;
    let tmp = target.join(format!(".vmlinux.{}", std::process::id()));
    let copied = std::fs::write(&tmp, &image)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, target.join("vmlinux")));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(VmError::Io(format!("install {}", vmlinux.display()), e));
    }
    // modules of an earlier kernel of this release would be loaded into this one
    let _ = std::fs::remove_dir_all(target.join("modules"));
    record_current(dir, release)?;
    current(dir)
}

/// Makes `release` the kernel new VMs boot (write, then rename).
fn record_current(dir: &Path, release: &str) -> Result<(), VmError> {
    let tmp = dir.join(format!(".current.tmp-{}", std::process::id()));
    std::fs::write(&tmp, format!("{release}\n")).map_err(VmError::io("record kernel"))?;
    std::fs::rename(&tmp, dir.join("current")).map_err(VmError::io("record kernel"))
}

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];

/// Finds the LZ4 (legacy frame) payload in a bzImage and decompresses it to
/// the ELF vmlinux.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, VmError> {
    let mut start = 0;
    while let Some(off) = find(&bzimage[start..], &LZ4_LEGACY_MAGIC) {
        let at = start + off;
        if let Ok(out) = lz4_legacy(&bzimage[at + 4..]) {
            if out.starts_with(&ELF_MAGIC) {
                return Ok(out);
            }
        }
        start = at + 1;
    }
    Err(VmError::Kernel(
        "no LZ4-compressed ELF payload in vmlinuz (is the kernel built with CONFIG_KERNEL_LZ4?)".into(),
    ))
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Decodes the legacy LZ4 frame: repeated `[u32 LE size][block]`, blocks of up to 8 MiB.
fn lz4_legacy(mut data: &[u8]) -> Result<Vec<u8>, VmError> {
    const BLOCK: usize = 8 << 20;
    let mut out = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    while data.len() >= 4 {
        let size = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if size == u32::from_le_bytes(LZ4_LEGACY_MAGIC) as usize || size == 0 || size > data.len() - 4 {
            break;
        }
        let n = lz4_flex::block::decompress_into(&data[4..4 + size], &mut buf)
            .map_err(|e| VmError::Kernel(e.to_string()))?;
        out.extend_from_slice(&buf[..n]);
        data = &data[4 + size..];
        if n < BLOCK {
            break; // the last block is short; what follows is not LZ4
        }
    }
    if out.is_empty() {
        return Err(VmError::Kernel("empty LZ4 stream".into()));
    }
    Ok(out)
}

const SIG_MAGIC: &[u8] = b"~Module signature appended~\n";

/// Removes an appended module signature (`struct module_signature` + magic).
pub fn strip_signature(m: &[u8]) -> Vec<u8> {
    if !m.ends_with(SIG_MAGIC) || m.len() < SIG_MAGIC.len() + 12 {
        return m.to_vec();
    }
    let end = m.len() - SIG_MAGIC.len();
    let info = &m[end - 12..end];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    match end.checked_sub(12 + sig_len) {
        Some(cut) => m[..cut].to_vec(),
        None => m.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn strips_signature() {
        let mut m = b"ELFDATA".to_vec();
        m.extend_from_slice(b"SIGNATURE");
        m.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        m.extend_from_slice(SIG_MAGIC);
        assert_eq!(strip_signature(&m), b"ELFDATA");
        assert_eq!(strip_signature(b"plain"), b"plain");
    }

    #[test]
    fn legacy_lz4_roundtrip() -> Result<(), VmError> {
        let mut payload = ELF_MAGIC.to_vec();
        payload.extend(std::iter::repeat_n(7u8, 100_000));
        let block = lz4_flex::block::compress(&payload);
        let mut img = b"bzImage header junk".to_vec();
        img.extend_from_slice(&LZ4_LEGACY_MAGIC);
        img.extend_from_slice(&(block.len() as u32).to_le_bytes());
        img.extend_from_slice(&block);
        img.extend_from_slice(b"trailer");
        assert_eq!(extract_vmlinux(&img)?, payload);
        assert!(extract_vmlinux(b"no kernel here").is_err());
        Ok(())
    }

    #[test]
    fn installs_a_built_kernel_under_its_banner() -> Result<(), VmError> {
        let d = tempfile::tempdir().map_err(VmError::io("tempdir"))?;
        let img = |banner: &str| {
            let mut b = ELF_MAGIC.to_vec();
            b.extend_from_slice(b"\0\0 rodata ");
            b.extend_from_slice(banner.as_bytes());
            b
        };
        let f = d.path().join("vmlinux");
        std::fs::write(&f, img("Linux version 6.1.192-moat (root@vm) #1 SMP")).map_err(VmError::io("w"))?;
        let k = install_vmlinux(&d.path().join("k"), &f)?;
        assert_eq!(k.version, "6.1.192-moat");
        assert!(k.modules.is_empty());
        let ino = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.ino()).ok();
        let first = ino(&k.vmlinux);
        install_vmlinux(&d.path().join("k"), &f)?;
        assert_eq!(ino(&k.vmlinux), first, "the same kernel again keeps its file");
        assert_eq!(current(&d.path().join("k"))?.vmlinux, d.path().join("k/6.1.192-moat/vmlinux"));
        // a rebuild of the same release replaces the file
        std::fs::write(&f, img("Linux version 6.1.192-moat (root@vm) #2 SMP")).map_err(VmError::io("w"))?;
        let k = install_vmlinux(&d.path().join("k"), &f)?;
        assert!(std::fs::read(&k.vmlinux).map_err(VmError::io("r"))?.ends_with(b"#2 SMP"));
        for bad in [b"not an elf".to_vec(), img("no banner"), img("Linux version ../../etc x")] {
            std::fs::write(&f, bad).map_err(VmError::io("w"))?;
            assert!(matches!(install_vmlinux(&d.path().join("k"), &f), Err(VmError::Kernel(_))));
        }
        assert_eq!(current(&d.path().join("k"))?.version, "6.1.192-moat", "a refused file changes nothing");
        Ok(())
    }
}
