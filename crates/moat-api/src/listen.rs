//! Listeners: unix sockets (0660, root and a chosen group, never through a
//! symlink), loopback TCP, and sockets handed over by systemd (`fd://`).

use crate::Ctx;
use hyper_util::rt::TokioIo;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where `moat serve` listens (`-H`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `unix:///run/moat/docker.sock`.
    Unix(PathBuf),
    /// `tcp://127.0.0.1:2375`.
    Tcp(std::net::SocketAddr),
    /// `fd://`: the sockets systemd passed (`LISTEN_FDS`).
    Systemd,
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// `-H` could not be parsed.
    #[error("invalid listen address {0:?}: use unix:///path, tcp://127.0.0.1:PORT or fd://")]
    Address(String),
    /// A path that must not be used.
    #[error("refusing socket path {path}: {why}")]
    Refused {
        /// The path.
        path: String,
        /// Why.
        why: String,
    },
    /// TCP beyond loopback without `--insecure-tcp`.
    #[error("tcp://{0} is not a loopback address: the API has no authentication; pass --insecure-tcp to listen there anyway")]
    NotLoopback(String),
    /// `fd://` without sockets from systemd.
    #[error("fd:// given, but systemd passed no sockets (LISTEN_FDS)")]
    NoSystemdSockets,
    /// The OS refused.
    #[error("cannot listen on {0}: {1}")]
    Io(String, std::io::Error),
}

impl std::str::FromStr for Listen {
    type Err = ListenError;
    fn from_str(s: &str) -> Result<Self, ListenError> {
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() || !p.starts_with('/') {
                return Err(ListenError::Address(s.into()));
            }
            return Ok(Self::Unix(p.into()));
        }
        if let Some(a) = s.strip_prefix("tcp://") {
            return a.trim_end_matches('/').parse().map(Self::Tcp).map_err(|_| ListenError::Address(s.into()));
        }
        if s == "fd://" {
            return Ok(Self::Systemd);
        }
        if s.starts_with('/') {
            return Ok(Self::Unix(s.into()));
        }
        Err(ListenError::Address(s.into()))
    }
}

pub(crate) enum Bound {
    Unix(tokio::net::UnixListener, String),
    Tcp(tokio::net::TcpListener, String),
}

impl Bound {
    pub(crate) fn describe(&self) -> &str {
        match self {
            Self::Unix(_, d) | Self::Tcp(_, d) => d,
        }
    }

    pub(crate) async fn accept_loop(self, ctx: Arc<Ctx>) {
        let limits = ctx.limits;
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        loop {
            let r = match &self {
                Self::Unix(l, _) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
                Self::Tcp(l, _) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
            };
            let conn = match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept on {}: {e}", self.describe());
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // full: a clear refusal in Docker's error shape, then close
                tokio::spawn(conn.refuse(limits.max_connections));
                continue;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |req| crate::routes::handle(ctx.clone(), req));
                let mut b = hyper::server::conn::http1::Builder::new();
                // a client that never finishes its request head holds nothing for long
                b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
                let r = match conn {
                    Conn::Unix(s) => b.serve_connection(TokioIo::new(s), svc).with_upgrades().await,
                    Conn::Tcp(s) => b.serve_connection(TokioIo::new(s), svc).with_upgrades().await,
                };
                if let Err(e) = r {
                    tracing::debug!("connection: {e}");
                }
            });
        }
    }
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

impl Conn {
    /// Answers 503 without reading the request, and closes.
    async fn refuse(self, max: usize) {
        use tokio::io::AsyncWriteExt;
        let body = format!("{{\"message\":\"too many connections: moat serve serves at most {max} at once\"}}\n");
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        // answer, then take what the client sent until it closes (at most a
        // few seconds): closing with its request unread would reset the
        // connection and could lose the answer
        async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, resp: &[u8]) {
            use tokio::io::AsyncReadExt;
            if s.write_all(resp).await.and(s.shutdown().await).is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        let w = async {
            match self {
                Self::Unix(s) => answer(s, resp.as_bytes()).await,
                Self::Tcp(s) => answer(s, resp.as_bytes()).await,
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), w).await;
    }
}

fn refused(p: &Path, why: &str) -> ListenError {
    ListenError::Refused { path: p.display().to_string(), why: why.into() }
}

/// Makes `path` ready for a new socket: its directory exists (0755) and is
/// no symlink; a stale socket is removed; a live one, a symlink or any
/// other file is refused.
fn prepare_socket_path(path: &Path) -> Result<(), ListenError> {
    let io = |e| ListenError::Io(path.display().to_string(), e);
    let parent = path.parent().ok_or_else(|| refused(path, "no directory"))?;
    if !parent.exists() {
        std::fs::create_dir_all(parent).map_err(io)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    if std::fs::symlink_metadata(parent).map_err(io)?.file_type().is_symlink() {
        return Err(refused(path, "its directory is a symlink"));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
        Ok(m) if m.file_type().is_symlink() => Err(refused(path, "it is a symlink")),
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(refused(path, "a server is already listening there"));
            }
            std::fs::remove_file(path).map_err(io)
        }
        Ok(_) => Err(refused(path, "it exists and is not a socket")),
    }
}

fn bind_unix(path: &Path, group: Option<u32>) -> Result<Bound, ListenError> {
    let io = |e| ListenError::Io(path.display().to_string(), e);
    prepare_socket_path(path)?;
    // no window in which the socket is more open than 0660
    // SAFETY: umask only changes this process's file creation mask
    let old = unsafe { libc::umask(0o117) };
    let l = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring it
    unsafe { libc::umask(old) };
    let l = l.map_err(io)?;
    std::os::unix::fs::lchown(path, Some(0), Some(group.unwrap_or(0))).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    l.set_nonblocking(true).map_err(io)?;
    let l = tokio::net::UnixListener::from_std(l).map_err(io)?;
    Ok(Bound::Unix(l, format!("unix://{}", path.display())))
}

fn systemd() -> Result<Vec<Bound>, ListenError> {
    use std::os::fd::FromRawFd;
    let pid_ok = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let n: i32 = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    if !pid_ok || n <= 0 {
        return Err(ListenError::NoSystemdSockets);
    }
    let mut out = Vec::new();
    for fd in 3..3 + n {
        let io = |e| ListenError::Io(format!("fd {fd}"), e);
        // SAFETY: systemd passed these descriptors to us (LISTEN_PID is ours); each is taken once
        let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        l.set_nonblocking(true).map_err(io)?;
        out.push(Bound::Unix(tokio::net::UnixListener::from_std(l).map_err(io)?, format!("fd://{fd}")));
    }
    Ok(out)
}

pub(crate) fn bind_all(all: &[Listen], group: Option<u32>, insecure_tcp: bool) -> Result<Vec<Bound>, ListenError> {
    let mut out = Vec::new();
    for l in all {
        match l {
            Listen::Unix(p) => out.push(bind_unix(p, group)?),
            Listen::Tcp(a) => {
                if !a.ip().is_loopback() && !insecure_tcp {
                    return Err(ListenError::NotLoopback(a.to_string()));
                }
                let s = std::net::TcpListener::bind(a).map_err(|e| ListenError::Io(a.to_string(), e))?;
                s.set_nonblocking(true).map_err(|e| ListenError::Io(a.to_string(), e))?;
                let t = tokio::net::TcpListener::from_std(s).map_err(|e| ListenError::Io(a.to_string(), e))?;
                // dockerd says the same: the API has no authentication
                tracing::warn!(
                    "the API is reachable on tcp://{a} without authentication or encryption: every user who can \
                     connect to it (on loopback: every local user) has root on this host; prefer the unix socket"
                );
                out.push(Bound::Tcp(t, format!("tcp://{a}")));
            }
            Listen::Systemd => out.extend(systemd()?),
        }
    }
    Ok(out)
}

/// Removes the unix sockets this server made.
pub(crate) fn remove_sockets(all: &[Listen]) {
    for l in all {
        if let Listen::Unix(p) = l {
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!("unix:///run/x.sock".parse::<Listen>().ok(), Some(Listen::Unix("/run/x.sock".into())));
        assert_eq!("tcp://127.0.0.1:2375".parse::<Listen>().ok(), Some(Listen::Tcp(([127, 0, 0, 1], 2375).into())));
        assert_eq!("fd://".parse::<Listen>().ok(), Some(Listen::Systemd));
        assert!("unix://relative".parse::<Listen>().is_err() && "http://x".parse::<Listen>().is_err());
    }

    #[test]
    fn socket_paths_are_never_symlinks() -> Result<(), Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let target = d.path().join("elsewhere");
        std::fs::write(&target, b"keep")?;
        let link = d.path().join("api.sock");
        std::os::unix::fs::symlink(&target, &link)?;
        let e = prepare_socket_path(&link).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(std::fs::read(&target)?, b"keep");
        let file = d.path().join("file");
        std::fs::write(&file, b"x")?;
        assert!(prepare_socket_path(&file).is_err());
        Ok(())
    }
}
