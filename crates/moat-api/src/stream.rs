//! Hijacked connections (attach, exec start): Docker's stream framing and
//! the relay between a connection and an engine [`Session`].

use crate::Ctx;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use moat_engine::{AttachOptions, Session, SessionEvent};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// Docker's stream numbers in the multiplexed framing.
#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Stdout = 1,
    Stderr = 2,
    System = 3,
}

/// One frame: 8-byte header (stream, 0, 0, 0, big-endian length), payload.
pub(crate) fn frame(s: Stream, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&[s as u8, 0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Output as it goes on the wire: raw with a terminal, else one frame.
pub(crate) fn chunk(tty: bool, s: Stream, data: &[u8]) -> Vec<u8> {
    if tty {
        data.to_vec()
    } else {
        frame(s, data)
    }
}

/// The content type of a session's stream.
pub(crate) fn content_type(tty: bool) -> &'static str {
    if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    }
}

/// An attach that arrived before its container started (`docker run`
/// attaches, then starts): `start` hands it the shim's first session.
pub(crate) struct PendingAttach {
    pub(crate) opts: AttachOptions,
    pub(crate) session: std::sync::mpsc::Sender<Session>,
    /// Set by the `start` that took this attach (before it starts the shim).
    pub(crate) claimed: Arc<std::sync::atomic::AtomicBool>,
}

/// The upgraded connection as a blocking socket, with the bytes hyper had
/// read already.
pub(crate) struct Hijacked {
    pub(crate) sock: UnixStream,
    pub(crate) early: Bytes,
}

/// Waits for the upgrade of `req`'s connection and turns it into a blocking socket.
pub(crate) async fn hijack(on: hyper::upgrade::OnUpgrade) -> Option<Hijacked> {
    let up = on.await.ok()?;
    let fd_and_early = match up.downcast::<TokioIo<tokio::net::UnixStream>>() {
        Ok(p) => p.io.into_inner().into_std().ok().map(|s| (OwnedFd::from(s), p.read_buf)),
        Err(up) => match up.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(p) => p.io.into_inner().into_std().ok().map(|s| (OwnedFd::from(s), p.read_buf)),
            Err(_) => None,
        },
    };
    let (fd, early) = fd_and_early?;
    // a TCP socket takes the same read/write/shutdown calls
    let sock = UnixStream::from(fd);
    sock.set_nonblocking(false).ok()?;
    Some(Hijacked { sock, early })
}

/// Relays `session` over a hijacked connection until the process ends:
/// output framed (or raw with a terminal), stdin forwarded and its EOF
/// passed on as a close of the process's stdin (output keeps flowing).
pub(crate) fn relay(mut session: Session, h: Hijacked, stdin: bool) {
    let tty = session.tty();
    let Hijacked { sock, early } = h;
    if stdin {
        if let (Ok(mut w), Ok(mut rd)) = (session.writer(), sock.try_clone()) {
            std::thread::spawn(move || {
                if !early.is_empty() && w.stdin(&early).is_err() {
                    return;
                }
                let mut buf = vec![0u8; 32 << 10];
                loop {
                    match rd.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = w.close_stdin();
                            return;
                        }
                        Ok(n) => {
                            if w.stdin(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    }
    let mut out = &sock;
    let mut write = |s: Stream, d: &[u8]| -> bool { out.write_all(&chunk(tty, s, d)).is_ok() };
    loop {
        // a client that went away ends the relay now, not when the
        // container next writes (a half-close after stdin is no hang-up)
        if !wait_session_or_hangup(&session, &sock) {
            break;
        }
        let ok = match session.next_event() {
            Ok(Some(SessionEvent::Stdout(d))) => write(Stream::Stdout, &d),
            Ok(Some(SessionEvent::Stderr(d))) => write(Stream::Stderr, &d),
            Ok(Some(SessionEvent::Exit { .. })) | Ok(None) | Err(_) => break,
            Ok(Some(SessionEvent::Error(m))) => {
                let _ = write(Stream::System, format!("{m}\n").as_bytes());
                break;
            }
        };
        if !ok {
            break;
        }
    }
    let _ = sock.shutdown(std::net::Shutdown::Both);
}

/// Waits until `session` has something to read (true) or the client's
/// socket hung up or failed (false).
fn wait_session_or_hangup(session: &Session, client: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = [
        libc::pollfd { fd: session.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: client.as_raw_fd(), events: 0, revents: 0 },
    ];
    loop {
        // SAFETY: two valid pollfds for the duration of the call
        let n = unsafe { libc::poll(p.as_mut_ptr(), 2, -1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return p[1].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) == 0;
    }
}

/// How often a streamed body's writer checks that its client is still there.
pub(crate) const CLIENT_CHECK: Duration = Duration::from_secs(1);

/// Relays a session's output into a streamed response body (a client that
/// did not ask for an upgrade); ends when the client went away, without
/// waiting for the container to write.
pub(crate) fn relay_to_body(mut session: Session, tx: tokio::sync::mpsc::Sender<Bytes>) {
    let tty = session.tty();
    loop {
        if tx.is_closed() {
            break;
        }
        if !session.ready(CLIENT_CHECK) {
            continue;
        }
        let (s, d) = match session.next_event() {
            Ok(Some(SessionEvent::Stdout(d))) => (Stream::Stdout, d),
            Ok(Some(SessionEvent::Stderr(d))) => (Stream::Stderr, d),
            Ok(Some(SessionEvent::Error(m))) => (Stream::System, format!("{m}\n").into_bytes()),
            _ => break,
        };
        if tx.blocking_send(Bytes::from(chunk(tty, s, &d))).is_err() {
            break;
        }
    }
}

/// Serves an attach that came before the start: waits for the session the
/// start hands over (or, if someone else started the container, attaches).
pub(crate) fn pending_attach(
    ctx: Arc<Ctx>,
    id: String,
    opts: AttachOptions,
    rx: std::sync::mpsc::Receiver<Session>,
    claimed: Arc<std::sync::atomic::AtomicBool>,
    h: Hijacked,
) {
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(mut s) => {
                if s.attach(opts).is_ok() {
                    relay(s, h, opts.stdin);
                }
                return;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // a start of ours is on its way: keep waiting for its session
                if claimed.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                // gone, or started elsewhere (the CLI): attach the usual way
                let Ok(mut e) = ctx.open() else { return };
                match e.get(&id) {
                    Err(_) => return,
                    Ok(c) if c.is_running() => {
                        // withdraw, unless a start claimed us in the meantime
                        let withdrawn = ctx.pending.lock().is_ok_and(|mut p| {
                            !claimed.load(std::sync::atomic::Ordering::SeqCst) && {
                                p.remove(&id);
                                true
                            }
                        });
                        if !withdrawn {
                            continue;
                        }
                        if let Ok((_, s)) = e.attach(&id, opts) {
                            relay(s, h, opts.stdin);
                        }
                        return;
                    }
                    Ok(_) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(frame(Stream::Stderr, b"hi"), [2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(frame(Stream::Stdout, b"").len(), 8);
    }
}
