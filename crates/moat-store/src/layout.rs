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
