//! moat's utility VMs (`--isolation=hyperv`): the guest kernel moat
//! provisions from Debian, the initramfs holding the guest agent, the
//! accelerator choice, and the QEMU + virtiofsd processes of one VM.
//! See `docs/vm.md`.

pub mod accel;
pub mod files;
pub mod initramfs;
pub mod kernel;
pub mod launch;
pub mod qemu;
pub mod qmp;
pub mod template;
pub mod usage;

/// Errors of the VM layer.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// No guest kernel installed.
    #[error("no guest kernel installed in {0}: run `moat vm kernel install` (or set MOAT_KERNEL_DIR)")]
    NoKernel(String),
    /// The guest agent binary was not found.
    #[error("guest agent binary not found (looked in {0}): build it with `make agent` or set MOAT_AGENT")]
    NoAgent(String),
    /// A helper program is missing.
    #[error("{0} not found: {1}")]
    Missing(&'static str, String),
    /// A command failed.
    #[error("{0}")]
    Command(String),
    /// The kernel image is not what we expect.
    #[error("cannot extract the guest kernel: {0}")]
    Kernel(String),
    /// The guest did not come up or died.
    #[error("{0}")]
    Guest(String),
    /// A named thing (a template) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// I/O with context.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl VmError {
    /// Maps an io error with context.
    pub fn io(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
        let ctx = ctx.into();
        move |e| VmError::Io(ctx, e)
    }
}
