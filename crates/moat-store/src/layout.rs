//! Where things live under a moat root.

use std::path::{Path, PathBuf};

/// Paths of a moat root directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Layout rooted at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The SQLite metadata database.
    pub fn db(&self) -> PathBuf {
        self.root.join("moat.db")
    }
    /// Content-addressed blobs: `blobs/sha256/<hex>`.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }
    /// One blob's path.
    pub fn blob(&self, hex: &str) -> PathBuf {
        self.blobs().join(hex)
    }
    /// Unpacked layer diff directories: `layers/<diff-id hex>`.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }
    /// One layer's diff directory.
    pub fn layer(&self, hex: &str) -> PathBuf {
        self.layers().join(hex)
    }
    /// Scratch space on the same filesystem, for atomic renames.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Lock files.
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }
    /// Per-container state directories.
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }
    /// One container's state directory.
    pub fn container(&self, id: &str) -> PathBuf {
        self.containers().join(id)
    }
    /// Volumes: `volumes/<name>/_data` (Docker's layout).
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }
    /// One volume's directory.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.volumes().join(name)
    }
    /// One volume's data, what containers see.
    pub fn volume_data(&self, name: &str) -> PathBuf {
        self.volume(name).join("_data")
    }
    /// Space kept free for transactions that free space on a full disk.
    pub fn reserve(&self) -> PathBuf {
        self.root.join("reserve")
    }
    /// Optional engine configuration file under the root.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// Every directory that must exist.
    pub fn dirs(&self) -> [PathBuf; 7] {
        [self.root.clone(), self.blobs(), self.layers(), self.tmp(), self.locks(), self.containers(), self.volumes()]
    }
}

/// The files of a container's directory (`containers/<id>/`), named once:
/// the interface between the engine, the container's shim and, for a
/// sandbox's owner, the shims of the containers that joined it.
pub mod ctr_files {
    /// What the container's backend runs (`ContainerPlan`, JSON), written at start.
    pub const PLAN: &str = "plan.json";
    /// Held by the shim while it lives (proves it alive).
    pub const SHIM_LOCK: &str = "shim.lock";
    /// The shim's socket for clients.
    pub const SHIM_SOCK: &str = "shim.sock";
    /// The shim's stderr.
    pub const SHIM_LOG: &str = "shim.log";
    /// The preallocated state file (the exit survives a full disk).
    pub const STATE: &str = "state.json";
    /// The container's host cgroup (destroyed by whoever finds the shim dead).
    pub const CGROUP: &str = "cgroup.json";
    /// Facts of the utility VM (inspect's `VM`).
    pub const VM: &str = "vm.json";
    /// The guest console of a VM the container owns.
    pub const CONSOLE: &str = "console.log";
    /// Held by an operation on the stopped container (start, remove, copy).
    pub const OP_LOCK: &str = "op.lock";
    /// The owner's socket on which joined containers' shims reach its VM's agent.
    pub const SANDBOX_SOCK: &str = "sandbox.sock";
    /// The writable layer, overlay work directory and root mount point.
    pub const UPPER: &str = "upper";
    /// Overlay's work directory.
    pub const WORK: &str = "work";
    /// The root mount point (a VM sandbox's share in its owner's shim).
    pub const ROOTFS: &str = "rootfs";
}

/// Writes `data` to `path` through a temporary file and a rename: readers
/// see the old content or the new, never a part.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode_0600().open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}
