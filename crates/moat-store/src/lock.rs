//! Advisory file locks (flock) that die with their process.

use rustix::fs::{flock, FlockOperation};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Errors taking a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// Lock file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// A held flock; released on drop or when the process dies.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

fn open(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags((rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(path)
        .map_err(|source| LockError::Io { path: path.display().to_string(), source })
}

impl FileLock {
    /// Metadata of the locked file (to detect a lock file replaced under us).
    pub fn metadata(&self) -> std::io::Result<std::fs::Metadata> {
        self.file.metadata()
    }

    fn take(path: &Path, op: FlockOperation) -> Result<Option<Self>, LockError> {
        let file = open(path)?;
        loop {
            match flock(&file, op) {
                Ok(()) => return Ok(Some(Self { file })),
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(LockError::Io { path: path.display().to_string(), source: e.into() }),
            }
        }
    }

    fn blocking(path: &Path, op: FlockOperation) -> Result<Self, LockError> {
        Self::take(path, op)?.ok_or_else(|| LockError::Io {
            path: path.display().to_string(),
            source: std::io::ErrorKind::WouldBlock.into(),
        })
    }

    /// Blocks until an exclusive lock is held.
    pub fn exclusive(path: &Path) -> Result<Self, LockError> {
        Self::blocking(path, FlockOperation::LockExclusive)
    }

    /// Blocks until a shared lock is held.
    pub fn shared(path: &Path) -> Result<Self, LockError> {
        Self::blocking(path, FlockOperation::LockShared)
    }

    /// An exclusive lock if nobody else holds one, else `None`.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>, LockError> {
        Self::take(path, FlockOperation::NonBlockingLockExclusive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("l");
        let a = FileLock::exclusive(&p).expect("lock");
        assert!(FileLock::try_exclusive(&p).expect("try").is_none());
        drop(a);
        assert!(FileLock::try_exclusive(&p).expect("try").is_some());
    }
}
