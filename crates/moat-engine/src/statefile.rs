//! The shim's last word, kept outside SQLite: `containers/<id>/state.json`,
//! a file of fixed size allocated when the shim starts and rewritten in place
//! on every state change. Overwriting allocated space needs no free space, so
//! a container's exit code is recorded even when the engine root's
//! filesystem is full and the metadata store cannot take a write; readers
//! prefer it over the store's record once the shim is gone.

use crate::config::ContainerState;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Size of the file; a state record is a few hundred bytes.
const SIZE: usize = 128 << 10;

fn path(dir: &Path) -> PathBuf {
    dir.join(moat_store::ctr_files::STATE)
}

/// The open, allocated state file of a running shim.
pub struct StateFile {
    file: File,
}

impl StateFile {
    /// Creates (or reuses) and allocates the file in container directory `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path(dir))?;
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, SIZE as u64)?;
        Ok(Self { file })
    }

    /// Overwrites the record with `st` (padded with spaces to the fixed size).
    pub fn write(&self, st: &ContainerState) -> std::io::Result<()> {
        let mut buf = serde_json::to_vec(st).map_err(std::io::Error::other)?;
        if buf.len() > SIZE {
            return Err(std::io::Error::other("state record too large"));
        }
        buf.resize(SIZE, b' ');
        self.file.write_all_at(&buf, 0)
    }
}

/// The state a shim last recorded in `dir`, if any.
pub fn read(dir: &Path) -> Option<ContainerState> {
    let data = std::fs::read(path(dir)).ok()?;
    serde_json::from_slice(data.trim_ascii()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Status;

    #[test]
    fn rewritten_in_place() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        assert!(read(d.path()).is_none());
        let f = StateFile::open(d.path())?;
        let mut st = ContainerState { status: Status::Running, pid: 42, ..Default::default() };
        f.write(&st)?;
        assert_eq!(read(d.path()).map(|s| s.pid), Some(42));
        st.status = Status::Exited;
        st.exit_code = 3;
        st.pid = 0;
        f.write(&st)?;
        let back = read(d.path()).map(|s| (s.status, s.exit_code));
        assert_eq!(back, Some((Status::Exited, 3)));
        assert_eq!(std::fs::metadata(path(d.path()))?.len(), SIZE as u64, "never grows or shrinks");
        Ok(())
    }
}
