//! How an engine is set up, passed as a value by whatever hosts it (the
//! `moat` CLI, the Docker API server, a test): no library code reads the
//! environment. The binary that reads flags and environment variables builds
//! this once; shims get it on their command line.

use moat_core::Isolation;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where guest kernels live unless configured: one download serves every
/// root of the host (kernels and initramfs images are content-addressed).
pub const DEFAULT_KERNEL_DIR: &str = moat_sandbox::DEFAULT_KERNEL_DIR;

/// Everything an engine needs to know about its host.
#[derive(Clone, Serialize, Deserialize, Default)]
pub struct EngineOptions {
    /// Root directory of all state.
    pub root: PathBuf,
    /// Isolation for containers created with `default` (overrides the config files).
    #[serde(default)]
    pub default_isolation: Option<Isolation>,
    /// The system-wide config file (default `/etc/moat/config.toml`).
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// Guest kernels (default [`DEFAULT_KERNEL_DIR`], shared by every root).
    #[serde(default)]
    pub kernel_dir: Option<PathBuf>,
    /// The static guest agent (default: next to the shim binary or in the workspace build).
    #[serde(default)]
    pub agent: Option<PathBuf>,
    /// `qemu-system-x86_64` (default: from PATH).
    #[serde(default)]
    pub qemu: Option<PathBuf>,
    /// `virtiofsd` (default: PATH, /usr/libexec, ~/.cargo/bin).
    #[serde(default)]
    pub virtiofsd: Option<PathBuf>,
    /// The binary that implements `shim` and `port-proxy` (default: the running executable).
    #[serde(default)]
    pub shim_exe: Option<PathBuf>,
    /// Seconds a utility VM may take to boot (default 120: TCG on a busy 2-core host is slow).
    #[serde(default)]
    pub vm_boot_timeout_secs: Option<u64>,
    /// Start VM containers from booted templates: `None` when QEMU can
    /// (>= 8.2), `Some(false)` never (cold boots), `Some(true)` insist.
    #[serde(default)]
    pub vm_templates: Option<bool>,
    /// Largest uncompressed size of one archive or layer (tar-bomb protection).
    #[serde(default)]
    pub max_unpack_bytes: Option<u64>,
    /// Most entries in one archive or layer.
    #[serde(default)]
    pub max_unpack_entries: Option<u64>,
    /// A crash point to arm (`moat_core::crash`: tests kill moat at a named
    /// step; the binary takes it from `MOAT_CRASHPOINT`). Shims arm it too.
    #[serde(default)]
    pub crash_point: Option<String>,
    /// Runs shims on threads of this process (tests with a stub backend,
    /// without root); `None` starts the shim binary.
    #[serde(skip)]
    pub in_process: Option<InProcessShim>,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("root", &self.root)
            .field("default_isolation", &self.default_isolation)
            .field("kernel_dir", &self.kernel_dir)
            .field("shim_exe", &self.shim_exe)
            .field("in_process", &self.in_process.as_ref().map(|_| "in-process"))
            .finish_non_exhaustive()
    }
}

/// Serves a container's shim on a thread of this process (see
/// [`EngineOptions::in_process`]): `(options, container ID, the starting
/// client's socket)`, returning the shim's exit code. The engine names no
/// shim type here: the caller (a test) closes over `shim::serve_with` and
/// its backend.
pub type InProcessShim = Arc<dyn Fn(EngineOptions, String, std::os::unix::net::UnixStream) -> i32 + Send + Sync>;

impl EngineOptions {
    /// Options for `root` with every default.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), ..Default::default() }
    }

    /// The guest kernel directory.
    pub fn kernel_dir(&self) -> PathBuf {
        self.kernel_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_KERNEL_DIR))
    }

    /// The system-wide config file.
    pub fn config_file(&self) -> PathBuf {
        self.config_file.clone().unwrap_or_else(|| PathBuf::from(moat_core::config::SYSTEM_CONFIG))
    }

    /// The binary that runs shims and port proxies.
    pub fn shim_exe(&self) -> std::io::Result<PathBuf> {
        match &self.shim_exe {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe(),
        }
    }

    /// The VM boot timeout.
    pub fn vm_boot_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.vm_boot_timeout_secs.unwrap_or(120))
    }

    /// The unpack limits for the image store.
    pub fn unpack_limits(&self) -> moat_image::Limits {
        let mut l = moat_image::Limits::default();
        if let Some(b) = self.max_unpack_bytes {
            l.max_bytes = b;
        }
        if let Some(n) = self.max_unpack_entries {
            l.max_entries = n;
        }
        l
    }

    /// What utility VMs are made of, for the sandbox crate.
    pub fn vm_options(&self) -> moat_sandbox::VmOptions {
        moat_sandbox::VmOptions {
            kernel_dir: self.kernel_dir(),
            agent: self.agent.clone(),
            shim_exe: self.shim_exe().ok(),
            qemu: self.qemu.clone(),
            virtiofsd: self.virtiofsd.clone(),
            boot_timeout_secs: self.vm_boot_timeout_secs,
            templates: self.vm_templates,
        }
    }

    /// The agent binary.
    pub fn agent(&self) -> Result<PathBuf, moat_vm::VmError> {
        match &self.agent {
            Some(p) => Ok(p.clone()),
            None => moat_vm::initramfs::find_agent(self.shim_exe().ok().as_deref().unwrap_or(Path::new("/"))),
        }
    }
}
