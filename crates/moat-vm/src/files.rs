//! File helpers shared by the launcher and the templates: a file's identity
//! without reading it, and root-only directories.

use crate::VmError;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file's identity without reading it (a changed file has a new one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// Path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds.
    pub mtime_ns: i128,
    /// Inode.
    pub ino: u64,
}

impl FileId {
    /// The identity of `path` (symlinks followed).
    pub fn of(path: &Path) -> Result<Self, VmError> {
        let m = std::fs::metadata(path).map_err(VmError::io(format!("stat {}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ino: m.ino(),
        })
    }
}

/// Creates `p` (and its parents) if needed and makes it 0700: template
/// files are trusted input, only root may write or read them.
pub(crate) fn create_private_dir(p: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(VmError::io(format!("create {}", p.display())))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
        .map_err(VmError::io(format!("chmod {}", p.display())))
}
