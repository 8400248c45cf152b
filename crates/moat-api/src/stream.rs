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
/// output framed (or `raw`: an attach to a container with a terminal, an
/// exec *started* with `Tty`, as dockerd frames by the start request), stdin
/// forwarded and its EOF passed on as a close of the process's stdin
/// (output keeps flowing).
pub(crate) fn relay(mut session: Session, h: Hijacked, stdin: Option<Escape>, raw: bool) {
    let tty = raw;
    let Hijacked { sock, early } = h;
    until_read(&sock);
    if let Some(mut esc) = stdin {
        if let (Ok(mut w), Ok(mut rd), Ok(hangup)) = (session.writer(), sock.try_clone(), sock.try_clone()) {
            std::thread::spawn(move || {
                // the detach keys end this client's session and leave the
                // process and its stdin alone, as dockerd's escape proxy does
                let mut forward = |data: &[u8]| -> bool {
                    let (pass, detached) = esc.feed(data);
                    if !pass.is_empty() && w.stdin(&pass).is_err() {
                        return false;
                    }
                    if detached {
                        let _ = hangup.shutdown(std::net::Shutdown::Both);
                        return false;
                    }
                    true
                };
                if !early.is_empty() && !forward(&early) {
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
                            if !forward(&buf[..n]) {
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

/// Waits (at most a second) until the client has read what was sent on
/// `sock` so far: the `101` answer. A client that reads the answer through
/// a buffer and the stream from the raw socket (docker-py does) would lose
/// output that arrived with the answer into that buffer.
fn until_read(sock: &UnixStream) {
    use std::os::fd::AsRawFd;
    let t0 = std::time::Instant::now();
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if rc != 0 || queued == 0 || t0.elapsed() > Duration::from_secs(1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Relays an attach: framed unless the container has a terminal.
pub(crate) fn relay_attached(session: Session, h: Hijacked, stdin: Option<Escape>) {
    let raw = session.tty();
    relay(session, h, stdin, raw)
}

/// dockerd's escape proxy: watches a client's stdin for the detach keys.
/// Bytes that may begin the sequence are held back until it is complete
/// (detach) or broken (passed on).
#[derive(Debug, Clone)]
pub(crate) struct Escape {
    keys: Vec<u8>,
    held: usize,
}

impl Escape {
    /// Watching for `keys` (none: nothing detaches).
    pub(crate) fn new(keys: Vec<u8>) -> Self {
        Self { keys, held: 0 }
    }

    /// The bytes to pass on, and whether the keys were typed.
    pub(crate) fn feed(&mut self, data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(data.len());
        if self.keys.is_empty() {
            out.extend_from_slice(data);
            return (out, false);
        }
        for &b in data {
            if b == self.keys[self.held] {
                self.held += 1;
                if self.held == self.keys.len() {
                    self.held = 0;
                    return (out, true);
                }
                continue;
            }
            // a broken sequence: what was held goes through, then this byte
            // (which may start the sequence again)
            out.extend_from_slice(&self.keys[..self.held]);
            self.held = 0;
            if b == self.keys[0] {
                self.held = 1;
                if self.keys.len() == 1 {
                    self.held = 0;
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// [`replay_logs`] with an engine of its own (a failure to open one is
/// logged: the attach goes on without the log).
pub(crate) fn replay_logs_opening(ctx: &Ctx, id: &str, opts: &AttachOptions, tty: bool, h: &Hijacked) {
    match ctx.open() {
        Ok(mut e) => replay_logs(&mut e, id, opts, tty, h),
        Err(err) => tracing::warn!("attach {id}: {err}"),
    }
}

/// Writes the container's log so far into a hijacked attach (`logs=1`):
/// the streams asked for, framed unless the container has a terminal.
pub(crate) fn replay_logs(e: &mut moat_engine::Engine, id: &str, opts: &AttachOptions, tty: bool, h: &Hijacked) {
    until_read(&h.sock);
    let mut logs = match e.logs(id, &moat_engine::LogOptions::default()) {
        Ok((_, l)) => l,
        Err(err) => {
            tracing::warn!("attach {id}: cannot read the log: {err}");
            return;
        }
    };
    let mut sock = &h.sock;
    while let Ok(Some(r)) = logs.next_record() {
        let (s, skip) = match r.stream.as_str() {
            "stderr" => (Stream::Stderr, opts.skip_stderr),
            _ => (Stream::Stdout, opts.skip_stdout),
        };
        if !skip && sock.write_all(&chunk(tty, s, r.log.as_bytes())).is_err() {
            return;
        }
    }
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
/// waiting for the container to write. Framed unless `raw` (as [`relay`]).
pub(crate) fn relay_to_body(mut session: Session, tx: tokio::sync::mpsc::Sender<Bytes>, raw: bool) {
    let tty = raw;
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
    escape: Option<Escape>,
    rx: std::sync::mpsc::Receiver<Session>,
    claimed: Arc<std::sync::atomic::AtomicBool>,
    h: Hijacked,
) {
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(mut s) => {
                if s.attach(opts).is_ok() {
                    relay_attached(s, h, escape)
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
                            relay_attached(s, h, escape)
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
mod escape_tests {
    use super::Escape;

    #[test]
    fn the_keys_detach_and_broken_sequences_pass() {
        let mut e = Escape::new(vec![0x10, 0x11]);
        assert_eq!(e.feed(b"ab\x10"), (b"ab".to_vec(), false));
        assert_eq!(e.feed(b"\x11rest"), (Vec::new(), true));
        let mut e = Escape::new(vec![0x10, 0x11]);
        assert_eq!(e.feed(b"\x10x\x10\x10\x11"), (b"\x10x\x10".to_vec(), true));
        let mut e = Escape::new(Vec::new());
        assert_eq!(e.feed(b"\x10\x11"), (b"\x10\x11".to_vec(), false));
        let mut e = Escape::new(vec![b'q']);
        assert_eq!(e.feed(b"aq"), (b"a".to_vec(), true));
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
