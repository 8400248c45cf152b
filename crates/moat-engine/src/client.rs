//! The client side of the shim protocol, and starting shims.

use crate::{EngineError, EngineOptions};
use moat_proto::{Frame, Kind, ProtoError, ShimReply, ShimRequest};
use moat_store::{FileLock, Layout};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::str::FromStr;

/// A connection to a container's shim.
pub struct Conn {
    /// The socket.
    pub(crate) stream: UnixStream,
}

impl Conn {
    /// Connects to the running shim of container `id`.
    pub fn connect(layout: &Layout, id: &str) -> Result<Self, EngineError> {
        let stream = moat_proto::sock::connect(&layout.container(id), moat_store::ctr_files::SHIM_SOCK)
            .map_err(|e| EngineError::Shim(format!("cannot reach the container's shim: {e}")))?;
        Ok(Self { stream })
    }

    /// Sends a request.
    pub fn send(&mut self, m: &ShimRequest) -> Result<(), EngineError> {
        Ok(Frame::control(0, m).write_to(&mut self.stream)?)
    }

    /// Receives the next frame.
    pub fn recv(&mut self) -> Result<Frame, ProtoError> {
        Frame::read_from(&mut self.stream)
    }

    /// Receives frames until a reply arrives (stream data before it is dropped).
    pub fn recv_reply(&mut self) -> Result<ShimReply, EngineError> {
        loop {
            let f = self.recv().map_err(|e| match e {
                ProtoError::Closed => EngineError::Shim("the container's shim exited unexpectedly".into()),
                e => e.into(),
            })?;
            if f.kind == Kind::Control {
                return Ok(f.msg()?);
            }
        }
    }

    /// Sends one request and returns the reply.
    pub fn request(&mut self, m: &ShimRequest) -> Result<ShimReply, EngineError> {
        self.send(m)?;
        self.recv_reply()
    }

    /// Sends one request whose answer is `Ok` (its warnings); the shim's
    /// `Error` is the error, any other answer a protocol slip.
    pub fn request_ok(&mut self, m: &ShimRequest) -> Result<Vec<String>, EngineError> {
        match self.request(m)? {
            ShimReply::Ok { warnings } => Ok(warnings),
            ShimReply::Error { message } => Err(EngineError::Shim(message)),
            m => Err(EngineError::Shim(format!("unexpected reply {m:?}"))),
        }
    }

    /// Reads until the shim closes the connection.
    pub fn wait_closed(&mut self) {
        while self.recv().is_ok() {}
    }
}

/// Blocks until the shim of `id` has exited (its lock is free).
pub fn wait_shim_gone(layout: &Layout, id: &str) {
    let p = layout.container(id).join(moat_store::ctr_files::SHIM_LOCK);
    if p.exists() {
        let _ = FileLock::exclusive(&p);
    }
}

/// `SIGTERM`, `TERM` or `15` → 15.
pub fn parse_signal(s: &str) -> Result<i32, EngineError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let up = s.to_ascii_uppercase();
    let full = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    nix::sys::signal::Signal::from_str(&full)
        .map(|s| s as i32)
        .map_err(|_| EngineError::Invalid(format!("invalid signal: {s}")))
}

/// Starts the shim of container `id` and returns the connection it
/// reports on. With an in-process backend (tests), the shim runs on a
/// thread. Otherwise `SHIM_EXE --root R shim ID OPTIONS` runs detached from
/// the caller, in its own session and mount namespace where the shim binary
/// is bind-mounted read-only over itself, so no container process can ever
/// write to it through `/proc/<pid>/exe` (CVE-2019-5736 class).
pub fn spawn_shim(opts: &EngineOptions, layout: &Layout, id: &str) -> Result<Conn, EngineError> {
    let (ours, theirs) = UnixStream::pair().map_err(EngineError::io("socketpair"))?;
    if let Some(serve) = opts.in_process.clone() {
        let (opts, id) = (opts.clone(), id.to_string());
        std::thread::spawn(move || serve(opts, id, theirs));
        return Ok(Conn { stream: ours });
    }
    let exe = opts.shim_exe().map_err(EngineError::io("locate the shim binary"))?;
    let exe_c =
        CString::new(exe.as_os_str().as_encoded_bytes()).map_err(|_| EngineError::Invalid("binary path".into()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(layout.container(id).join(moat_store::ctr_files::SHIM_LOG))
        .map_err(EngineError::io("open shim log"))?;
    let options = serde_json::to_string(opts).map_err(|e| EngineError::Invalid(e.to_string()))?;
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(&exe);
    cmd.arg("--root").arg(layout.root()).arg("shim").arg(id).arg(options);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    // SAFETY: only async-signal-safe syscalls between fork and exec
    unsafe {
        cmd.pre_exec(move || {
            let chk = |r: libc::c_int| if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
            chk(libc::setsid())?;
            chk(libc::unshare(libc::CLONE_NEWNS))?;
            // a slave copy: host mounts still arrive (for rslave binds),
            // nothing mounted here reaches the host
            chk(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            chk(libc::mount(exe_c.as_ptr(), exe_c.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
            chk(libc::mount(
                std::ptr::null(),
                exe_c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            ))?;
            chk(libc::dup2(fd, 3))?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(EngineError::io("start the container's shim"))?;
    drop(theirs);
    // the shim forks into the background at once; reap the first process
    let st = child.wait().map_err(EngineError::io("start the container's shim"))?;
    if !st.success() {
        return Err(EngineError::Shim(format!(
            "the container's shim failed to start ({st}); see {}",
            layout.container(id).join(moat_store::ctr_files::SHIM_LOG).display()
        )));
    }
    Ok(Conn { stream: ours })
}
