//! Interactive sessions: relaying a terminal or pipes to a shim connection.

use anyhow::Result;
use moat_engine::client::Conn;
use moat_proto::{Frame, Kind, Msg, WinSize};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

/// Restores the terminal mode on drop.
struct RawMode {
    saved: termios::Termios,
}

impl RawMode {
    fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), termios::SetArg::TCSANOW, &self.saved);
    }
}

/// The terminal's size, if stdout or stdin is one.
pub fn term_size() -> Option<WinSize> {
    let mut w: libc::winsize = unsafe { std::mem::zeroed() };
    for fd in [1, 0] {
        // SAFETY: TIOCGWINSZ fills the struct
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } == 0 && w.ws_row > 0 {
            return Some(WinSize { rows: w.ws_row, cols: w.ws_col });
        }
    }
    None
}

/// Options of one session.
pub struct Opts {
    /// The remote side has a terminal.
    pub tty: bool,
    /// Forward our stdin.
    pub stdin: bool,
    /// Forward SIGINT/SIGTERM/... to the process (non-tty sessions).
    pub sig_proxy: bool,
}

/// What ended the session.
pub enum End {
    /// The process exited with this code.
    Exit(i32),
    /// The user pressed the detach keys (Ctrl-P Ctrl-Q).
    Detached,
    /// The shim closed the connection without an exit status.
    Lost,
}

fn send(w: &Arc<Mutex<std::os::unix::net::UnixStream>>, f: &Frame) -> bool {
    match w.lock() {
        Ok(mut s) => f.write_to(&mut *s).is_ok(),
        Err(_) => false,
    }
}

/// Relays stdio until the process exits, the user detaches, or the shim goes away.
pub fn relay(mut conn: Conn, o: Opts) -> Result<End> {
    let writer = Arc::new(Mutex::new(conn.stream.try_clone()?));
    let raw = if o.tty && o.stdin && std::io::stdin().is_terminal() { RawMode::enter() } else { None };
    if o.tty {
        if let Some(ws) = term_size() {
            send(&writer, &Frame::control(0, &Msg::Resize(ws)));
        }
    }
    // signals are handled by a thread that waits for them
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGWINCH);
    if o.sig_proxy && !o.tty {
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2] {
            sigs.add(s);
        }
    }
    let _ = sigs.thread_block();
    {
        let w = writer.clone();
        let tty = o.tty;
        std::thread::spawn(move || loop {
            let Ok(sig) = sigs.wait() else { return };
            let f = if sig == Signal::SIGWINCH {
                if !tty {
                    continue;
                }
                match term_size() {
                    Some(ws) => Frame::control(0, &Msg::Resize(ws)),
                    None => continue,
                }
            } else {
                Frame::control(0, &Msg::Signal { signal: sig as i32 })
            };
            if !send(&w, &f) {
                return;
            }
        });
    }
    let detached = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if o.stdin {
        let w = writer.clone();
        let tty = o.tty;
        let det = detached.clone();
        let shut = conn.stream.try_clone()?;
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 32 << 10];
            let mut ctrl_p = false;
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        send(&w, &Frame { kind: Kind::StdinEof, session: 0, data: Vec::new() });
                        return;
                    }
                    Ok(n) => n,
                };
                let mut data = &buf[..n];
                if tty {
                    // Ctrl-P Ctrl-Q detaches
                    for (i, b) in data.iter().enumerate() {
                        if ctrl_p && *b == 0x11 {
                            det.store(true, std::sync::atomic::Ordering::SeqCst);
                            let _ = shut.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        ctrl_p = *b == 0x10;
                        if ctrl_p && i + 1 == data.len() {
                            // hold the ^P until we know what follows
                            data = &data[..i];
                            break;
                        }
                    }
                }
                if !data.is_empty() && !send(&w, &Frame { kind: Kind::Stdin, session: 0, data: data.to_vec() }) {
                    return;
                }
            }
        });
    }
    let mut out = std::io::stdout().lock();
    let mut code = None;
    while let Ok(f) = conn.recv() {
        match f.kind {
            Kind::Stdout => {
                let _ = out.write_all(&f.data);
                let _ = out.flush();
            }
            Kind::Stderr => {
                let _ = std::io::stderr().write_all(&f.data);
            }
            Kind::Control => match f.msg() {
                Ok(Msg::Exit { code: c, .. }) => code = Some(c),
                Ok(Msg::Error { message }) => {
                    drop(raw);
                    anyhow::bail!("{message}");
                }
                _ => {}
            },
            _ => {}
        }
    }
    drop(raw);
    if detached.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!("\r\nread escape sequence");
        return Ok(End::Detached);
    }
    Ok(match code {
        Some(c) => End::Exit(c),
        None => End::Lost,
    })
}
