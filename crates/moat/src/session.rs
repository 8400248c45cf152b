//! Interactive sessions: relaying this terminal (or pipes) to an engine
//! [`Session`]: output to stdout/stderr, stdin to the process, window size
//! changes and (without a terminal) signals; Ctrl-P Ctrl-Q detaches.

use anyhow::Result;
use moat_engine::{Session, SessionEvent, WinSize};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
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
    for fd in [1, 0] {
        // SAFETY: winsize is plain data and TIOCGWINSZ fills it
        let mut w: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ on a descriptor of ours
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } == 0 && w.ws_row > 0 {
            return Some(WinSize { rows: w.ws_row, cols: w.ws_col });
        }
    }
    None
}

/// Options of one session.
pub struct Opts {
    /// Forward our stdin.
    pub stdin: bool,
    /// Forward SIGINT/SIGTERM/... to the process (non-tty sessions).
    pub sig_proxy: bool,
    /// The key sequence that detaches a terminal session.
    pub detach_keys: Vec<u8>,
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

/// Relays stdio until the process exits, the user detaches, or the shim goes away.
pub fn relay(mut session: Session, o: Opts) -> Result<End> {
    let tty = session.tty();
    let writer = Arc::new(Mutex::new(session.writer()?));
    let send = |f: &dyn Fn(&mut moat_engine::SessionWriter) -> Result<(), moat_engine::EngineError>| -> bool {
        match writer.lock() {
            Ok(mut w) => f(&mut w).is_ok(),
            Err(_) => false,
        }
    };
    let raw = if tty && o.stdin && std::io::stdin().is_terminal() { RawMode::enter() } else { None };
    if tty {
        if let Some(ws) = term_size() {
            send(&|w| w.resize(ws));
        }
    }
    // signals are handled by a thread that waits for them
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGWINCH);
    if o.sig_proxy && !tty {
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2] {
            sigs.add(s);
        }
    }
    let _ = sigs.thread_block();
    {
        let w = writer.clone();
        std::thread::spawn(move || loop {
            let Ok(sig) = sigs.wait() else { return };
            let Ok(mut w) = w.lock() else { return };
            let ok = if sig == Signal::SIGWINCH {
                match (tty, term_size()) {
                    (true, Some(ws)) => w.resize(ws).is_ok(),
                    _ => true,
                }
            } else {
                w.signal(sig as i32).is_ok()
            };
            if !ok {
                return;
            }
        });
    }
    let detached = Arc::new(AtomicBool::new(false));
    if o.stdin {
        let w = writer.clone();
        let det = detached.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 32 << 10];
            let keys = o.detach_keys;
            // bytes of a possible detach sequence, held until it completes or breaks
            let mut held = 0usize;
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        if let Ok(mut w) = w.lock() {
                            let _ = w.close_stdin();
                        }
                        return;
                    }
                    Ok(n) => n,
                };
                let mut data = Vec::with_capacity(n + keys.len());
                for b in &buf[..n] {
                    if tty && !keys.is_empty() {
                        if *b == keys[held] {
                            held += 1;
                            if held == keys.len() {
                                det.store(true, Ordering::SeqCst);
                                if let Ok(w) = w.lock() {
                                    w.shutdown();
                                }
                                return;
                            }
                            continue;
                        }
                        data.extend_from_slice(&keys[..held]);
                        held = 0;
                        if *b == keys[0] {
                            held = 1;
                            if keys.len() == 1 {
                                det.store(true, Ordering::SeqCst);
                                if let Ok(w) = w.lock() {
                                    w.shutdown();
                                }
                                return;
                            }
                            continue;
                        }
                    }
                    data.push(*b);
                }
                if !data.is_empty() {
                    let Ok(mut w) = w.lock() else { return };
                    if w.stdin(&data).is_err() {
                        return;
                    }
                }
            }
        });
    }
    let mut code = None;
    let mut stdout_closed = false;
    loop {
        let ev = match session.next_event() {
            Ok(Some(ev)) => ev,
            Ok(None) | Err(_) => break,
        };
        match ev {
            SessionEvent::Stdout(d) => {
                let mut out = std::io::stdout().lock();
                if out.write_all(&d).and_then(|()| out.flush()).is_err() {
                    // a closed stdout (`| head`) is a normal end
                    stdout_closed = true;
                    break;
                }
            }
            SessionEvent::Stderr(d) => {
                let _ = std::io::stderr().write_all(&d);
            }
            SessionEvent::Exit { code: c, .. } => code = Some(c),
            SessionEvent::Error(message) => {
                drop(raw);
                anyhow::bail!("{message}");
            }
        }
    }
    drop(raw);
    if detached.load(Ordering::SeqCst) {
        errln!("\r\nread escape sequence");
        return Ok(End::Detached);
    }
    if stdout_closed && code.is_none() {
        // the reader went away (`| head`): quiet, like any command's closed pipe
        return Ok(End::Detached);
    }
    Ok(match code {
        Some(c) => End::Exit(c),
        None => End::Lost,
    })
}
