//! Unix sockets addressed through a directory fd, so socket paths stay short
//! (`/proc/self/fd/N/name`) however deep the moat root is.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

fn dirfd(dir: &Path) -> std::io::Result<OwnedFd> {
    std::fs::File::open(dir).map(OwnedFd::from)
}

/// Binds a listener at `dir/name` (removing a stale socket first).
pub fn bind(dir: &Path, name: &str) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(dir.join(name));
    let d = dirfd(dir)?;
    UnixListener::bind(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()))
}

/// Connects to `dir/name`.
pub fn connect(dir: &Path, name: &str) -> std::io::Result<UnixStream> {
    let d = dirfd(dir)?;
    UnixStream::connect(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()))
}
