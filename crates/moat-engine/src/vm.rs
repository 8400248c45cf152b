//! VM isolation as the engine sees it: a container's VM size from its
//! configuration, and the `moat vm kernel` operations. The VM sandbox
//! itself (share, launch, agent link) is `moat_sandbox`.

use crate::config::ContainerConfig;
use crate::EngineError;
use std::path::{Path, PathBuf};

/// Sizing of the VM for a container.
pub fn sizing(cfg: &ContainerConfig) -> (u64, u32) {
    moat_sandbox::vm_size(&cfg.limits)
}

/// Sizing of the VM a container with `--memory` (a size like `256m`) and
/// `--cpus` would get (`moat vm template build`).
pub fn sizing_for(memory: Option<&str>, cpus: Option<f64>) -> Result<(u64, u32), EngineError> {
    let mut cfg = ContainerConfig::default();
    if let Some(m) = memory {
        let b = moat_core::human::parse_size(m).map_err(|e| EngineError::Invalid(format!("--memory: {e}")))?;
        cfg.limits.memory = Some(i64::try_from(b).map_err(|_| EngineError::Invalid("--memory is too large".into()))?);
    }
    if let Some(c) = cpus.filter(|c| !(c.is_finite() && *c > 0.0)) {
        return Err(EngineError::Invalid(format!("--cpus must be a positive number, not {c}")));
    }
    cfg.limits.cpus = cpus;
    Ok(sizing(&cfg))
}

/// An installed guest kernel.
#[derive(Debug, Clone)]
pub struct KernelInfo {
    /// Release.
    pub version: String,
    /// The ELF kernel.
    pub vmlinux: PathBuf,
    /// The kernel directory.
    pub dir: PathBuf,
    /// The initramfs built for it with the current agent.
    pub initramfs: Option<PathBuf>,
}

/// Installs the guest kernel and builds its initramfs (`moat vm kernel
/// install [--vmlinux FILE]`): Debian's current cloud kernel, or a kernel
/// built with everything in it (`scripts/guest-kernel.sh`).
pub fn install_kernel(opts: &crate::EngineOptions, vmlinux: Option<&Path>) -> Result<KernelInfo, EngineError> {
    let dir = opts.kernel_dir();
    let k = match vmlinux {
        Some(f) => moat_vm::kernel::install_vmlinux(&dir, f)?,
        None => moat_vm::kernel::install(&dir)?,
    };
    let initramfs = moat_vm::initramfs::build(&k, &opts.agent()?, &dir)?;
    Ok(KernelInfo { version: k.version, vmlinux: k.vmlinux, dir, initramfs: Some(initramfs) })
}

/// The installed guest kernel (`moat vm kernel show`).
pub fn current_kernel(opts: &crate::EngineOptions) -> Result<KernelInfo, EngineError> {
    let dir = opts.kernel_dir();
    let k = moat_vm::kernel::current(&dir)?;
    Ok(KernelInfo { version: k.version, vmlinux: k.vmlinux, dir, initramfs: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_from_limits() {
        let mut cfg = ContainerConfig::default();
        assert_eq!(sizing(&cfg).0, moat_vm::launch::DEFAULT_MEMORY_MIB);
        cfg.limits.memory = Some(64 << 20);
        cfg.limits.cpus = Some(0.5);
        assert_eq!(sizing(&cfg), (64 + moat_vm::launch::MEMORY_OVERHEAD_MIB, 1));
    }
}
