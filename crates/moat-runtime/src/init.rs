//! `--init`: a small PID 1 for the container's process, like Docker's
//! tini. It starts the command as its child, forwards every signal it gets
//! to it (the kernel gives PID 1 no default actions, so a server without
//! its own handlers would ignore `stop`'s SIGTERM), reaps every orphan that
//! ends up as its child, and exits with the command's status.
//!
//! It runs as `/sbin/moat-init -- CMD...`: the static `moat-agent` binary,
//! bind-mounted read-only into the container, which takes this path when
//! called by that name.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::ffi::CString;

/// Where the init is mounted in a container.
pub const INIT_PATH: &str = "/sbin/moat-init";

/// Signals that are not forwarded (they stop or are for the init itself).
fn forwarded(s: Signal) -> bool {
    !matches!(
        s,
        Signal::SIGCHLD | Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU
    )
}

/// Runs `args` under the init; returns the exit code to end with.
pub fn run(args: &[String]) -> i32 {
    let args: Vec<&String> = args.iter().skip_while(|a| a.as_str() == "--").collect();
    if args.is_empty() {
        eprintln!("moat-init: no command given");
        return 2;
    }
    let argv: Vec<CString> = match args.iter().map(|a| CString::new(a.as_bytes())).collect() {
        Ok(v) => v,
        Err(_) => {
            eprintln!("moat-init: an argument contains NUL");
            return 2;
        }
    };
    let all = SigSet::all();
    if let Err(e) = all.thread_block() {
        eprintln!("moat-init: block signals: {e}");
        return 2;
    }
    // SAFETY: single-threaded; the child only resets its mask and execs
    let child = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let _ = all.thread_unblock();
            // its own process group, in the foreground of a terminal: ^C goes to it
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            // SAFETY: ignoring SIGTTOU so tcsetpgrp from the background succeeds
            unsafe {
                let _ = nix::sys::signal::signal(Signal::SIGTTOU, nix::sys::signal::SigHandler::SigIgn);
            }
            let _ = nix::unistd::tcsetpgrp(std::io::stdin(), nix::unistd::getpgrp());
            // SAFETY: restoring the default disposition before exec
            unsafe {
                let _ = nix::sys::signal::signal(Signal::SIGTTOU, nix::sys::signal::SigHandler::SigDfl);
            }
            let e = nix::unistd::execvp(&argv[0], &argv).err();
            eprintln!("moat-init: exec {}: {}", args[0], e.map(|e| e.desc()).unwrap_or("failed"));
            // SAFETY: leaving the forked child without unwinding
            unsafe { libc::_exit(if e == Some(nix::Error::ENOENT) { 127 } else { 126 }) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            eprintln!("moat-init: fork: {e}");
            return 2;
        }
    };
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if forwarded(sig) {
            let _ = nix::sys::signal::kill(child, sig);
            continue;
        }
        // reap everything that ended; the command's end is ours
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == child => return code,
                Ok(WaitStatus::Signaled(p, s, _)) if p == child => return 128 + s as i32,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
