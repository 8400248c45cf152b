//! Scratch directories under `tmp/` owned by a live process.
//!
//! `tmp/<name>/` is guarded by `tmp/<name>.lock`, flocked by its owner for as
//! long as it works there. A process killed mid-operation drops the lock, and
//! the next `sweep` removes the directory.

use crate::db::{io, StoreError};
use crate::layout::Layout;
use crate::lock::FileLock;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TmpDir {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: FileLock,
}

impl TmpDir {
    /// Creates `tmp/<prefix>-<random>/` and holds its lock.
    pub fn new(layout: &Layout, prefix: &str) -> Result<Self, StoreError> {
        loop {
            let name = format!("{prefix}-{}", &moat_core::id::new_id()[..16]);
            let path = layout.tmp().join(&name);
            let lock_path = layout.tmp().join(format!("{name}.lock"));
            let lock = FileLock::exclusive(&lock_path).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            // a sweeper may have unlinked the file between open and flock
            let same = match (std::fs::metadata(&lock_path), lock.metadata()) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                continue;
            }
            std::fs::create_dir(&path).map_err(io(format!("cannot create {}", path.display())))?;
            return Ok(Self { path, lock_path, _lock: lock });
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Removes scratch directories whose owner died. Returns how many.
pub fn sweep(layout: &Layout) -> Result<usize, StoreError> {
    let mut n = 0;
    let rd = std::fs::read_dir(layout.tmp()).map_err(io("cannot list tmp"))?;
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("lock") {
            continue;
        }
        let Ok(Some(_held)) = FileLock::try_exclusive(&p) else {
            continue;
        };
        let dir = p.with_extension("");
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!("cannot remove stale {}: {e}", dir.display());
                continue;
            }
        }
        let _ = std::fs::remove_file(&p);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_spares_live_and_removes_dead() -> Result<(), StoreError> {
        let d = tempfile::tempdir().map_err(io("tempdir"))?;
        let l = Layout::new(d.path());
        std::fs::create_dir_all(l.tmp()).map_err(io("mkdir"))?;
        let live = TmpDir::new(&l, "live")?;
        // a dead owner: a dir and an unlocked lock file
        std::fs::create_dir(l.tmp().join("dead-1")).map_err(io("mkdir"))?;
        std::fs::write(l.tmp().join("dead-1/x"), b"x").map_err(io("write"))?;
        std::fs::write(l.tmp().join("dead-1.lock"), b"").map_err(io("write"))?;
        assert_eq!(sweep(&l)?, 1);
        assert!(live.path().exists());
        assert!(!l.tmp().join("dead-1").exists());
        drop(live);
        assert_eq!(std::fs::read_dir(l.tmp()).map_err(io("ls"))?.count(), 0);
        Ok(())
    }
}
