//! The wire protocol spoken between `moat` clients and a container's shim
//! (and, for VM isolation, between the shim and the guest agent).
//!
//! A connection carries frames: `[kind: u8][session: u32 BE][len: u32 BE][payload]`.
//! `kind` says whether the payload is a JSON control message or raw stream
//! bytes (stdin/stdout/stderr); `session` multiplexes several exec sessions on
//! one channel (0 on a per-session unix socket connection).

pub mod sock;

#[cfg(test)]
mod fuzz;

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// virtio-fs tag under which the host exports a sandbox's share: one
/// directory per container of the utility VM, named by its ID.
pub const VIRTIOFS_TAG: &str = "rootfs";
/// Name of the virtio-serial port the agent serves.
pub const CONTROL_PORT: &str = "ctl0";
/// Where the guest mounts the virtio-fs export (container `cid`'s root is
/// `GUEST_ROOT/cid`).
pub const GUEST_ROOT: &str = "/run/moat/root";
/// Where the guest assembles a container's root before `pivot_root`
/// (`GUEST_CTR_ROOT/cid`).
pub const GUEST_CTR_ROOT: &str = "/run/moat/ctr";

/// Largest payload accepted in one frame.
pub const MAX_FRAME: usize = 1 << 20;
/// Frame header size.
pub const HEADER: usize = 9;
/// Stream bytes a peer may have in flight per session before it must wait for [`Msg::Credit`].
pub const WINDOW: u64 = 256 << 10;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A JSON [`Msg`].
    Control = 0,
    /// Bytes for the process's stdin.
    Stdin = 1,
    /// Bytes the process wrote to stdout (or its terminal).
    Stdout = 2,
    /// Bytes the process wrote to stderr.
    Stderr = 3,
    /// The client's stdin reached end of file.
    StdinEof = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Control,
            1 => Self::Stdin,
            2 => Self::Stdout,
            3 => Self::Stderr,
            4 => Self::StdinEof,
            _ => return None,
        })
    }
}

/// Protocol errors.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Transport failure.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something that is not a valid frame.
    #[error("protocol violation: {0}")]
    Invalid(String),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Payload type.
    pub kind: Kind,
    /// Session it belongs to.
    pub session: u32,
    /// Payload bytes.
    pub data: Vec<u8>,
}

impl Frame {
    /// A control frame carrying `msg` (one of this crate's message enums).
    pub fn control(session: u32, msg: &impl Serialize) -> Self {
        // serialising our own enums cannot fail
        let data = serde_json::to_vec(msg).unwrap_or_default();
        Self { kind: Kind::Control, session, data }
    }

    /// Decodes a control payload as `T`.
    pub fn msg<T: serde::de::DeserializeOwned>(&self) -> Result<T, ProtoError> {
        serde_json::from_slice(&self.data).map_err(|e| ProtoError::Invalid(e.to_string()))
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.session.to_be_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.data);
    }

    /// The encoded frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + self.data.len());
        self.encode_into(&mut v);
        v
    }

    /// Writes the frame to a blocking writer.
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), ProtoError> {
        w.write_all(&self.encode())?;
        Ok(())
    }

    /// Reads one frame from a blocking reader; `Closed` at a clean end of stream.
    pub fn read_from(r: &mut impl Read) -> Result<Self, ProtoError> {
        let mut h = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match r.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Err(ProtoError::Closed),
                Ok(0) => return Err(ProtoError::Invalid("truncated frame header".into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (kind, session, len) = parse_header(&h)?;
        let mut data = vec![0u8; len];
        r.read_exact(&mut data).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ProtoError::Invalid("truncated frame".into()),
            _ => ProtoError::Io(e),
        })?;
        Ok(Self { kind, session, data })
    }
}

fn parse_header(h: &[u8]) -> Result<(Kind, u32, usize), ProtoError> {
    let kind = Kind::from_u8(h[0]).ok_or_else(|| ProtoError::Invalid(format!("unknown frame kind {}", h[0])))?;
    let session = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::Invalid(format!("frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    Ok((kind, session, len))
}

/// Incremental decoder for non-blocking readers.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether [`Decoder::next_frame`] has something to say without more
    /// bytes: a whole frame, or a header it refuses.
    pub fn has_frame(&self) -> bool {
        if self.buf.len() < HEADER {
            return false;
        }
        match parse_header(&self.buf[..HEADER]) {
            Ok((_, _, len)) => self.buf.len() >= HEADER + len,
            Err(_) => true,
        }
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let (kind, session, len) = parse_header(&self.buf[..HEADER])?;
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let data = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        Ok(Some(Frame { kind, session, data }))
    }
}

pub use moat_spec::{ExecSpec, GuestCreate, Limits, ProcRow, Stats, WinSize, GUEST_CGROUP};

/// Version of the host↔agent protocol; the agent reports it in
/// [`AgentEvent::Ready`] and the host refuses a mismatch. 4: a utility VM
/// hosts several containers, each request names its container. 5: a
/// container may join a PID namespace by path (`Spec::pid_join`).
pub const PROTOCOL_VERSION: u32 = 5;

/// What a client asks a container's shim (on `containers/<id>/shim.sock`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimRequest {
    /// Attach to the main process's stdio.
    Attach {
        /// Forward the client's stdin.
        stdin: bool,
        /// Close the process's stdin when this client's stdin ends.
        stdin_once: bool,
    },
    /// Run a process in the container (this connection becomes its session).
    Exec(ExecSpec),
    /// Deliver a signal to the main process (or this connection's exec process).
    Signal {
        /// Signal number.
        signal: i32,
    },
    /// Resize this session's terminal.
    Resize(WinSize),
    /// Resize exec session `exec_id`'s terminal (from another connection).
    ResizeExec {
        /// The exec ID.
        exec_id: String,
        /// Size.
        size: WinSize,
    },
    /// Tell me when the main process exits.
    Wait,
    /// Stop the main process: `signal`, then SIGKILL after `timeout_secs`;
    /// restart policies stand down. Replies `Exit` once it has exited.
    Stop {
        /// First signal.
        signal: i32,
        /// Grace period before SIGKILL.
        timeout_secs: u32,
    },
    /// Stop the main process like `Stop`, then start it again (the shim
    /// stays, so a `--rm` container is not removed). Replies `Ok` once it runs.
    Restart {
        /// First signal.
        signal: i32,
        /// Grace period before SIGKILL.
        timeout_secs: u32,
    },
    /// Stream log records as they are written.
    Follow,
    /// List the container's processes.
    Top,
    /// Resource usage.
    Stats,
    /// Freeze every process of the container.
    Pause,
    /// Thaw them.
    Unpause,
    /// Change resource limits of the running container.
    Update(Limits),
    /// Apply a new restart policy to the running container at once.
    SetRestart {
        /// Docker's syntax: `no`, `on-failure[:N]`, `always`, `unless-stopped`.
        policy: String,
    },
}

/// What a shim answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ShimReply {
    /// The process started.
    Started {
        /// PID (host PID for process isolation, guest PID for VM).
        pid: u32,
    },
    /// The log file had this many bytes when following began.
    LogOffset {
        /// Byte offset.
        offset: u64,
    },
    /// The process exited.
    Exit {
        /// Exit code (128+N for death by signal N).
        code: i32,
        /// Killed by the OOM killer.
        oom_killed: bool,
    },
    /// Process listing.
    Procs {
        /// Rows.
        rows: Vec<ProcRow>,
    },
    /// Resource usage.
    Usage(Stats),
    /// Request done (with warnings, if any).
    Ok {
        /// Things the user should know (a limit that cannot apply, ...).
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// Request failed.
    Error {
        /// One-line message.
        message: String,
    },
}

/// What the host asks the guest agent (on the virtio-serial port). A
/// session belongs to one container, named by the `Create` or `Exec` that
/// opened it; `Signal`, `Resize`, `Credit` and stream frames act on their
/// session's process; the other requests name their container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentRequest {
    /// Create a container's main process (as this frame's session).
    Create(Box<GuestCreate>),
    /// Run a process in container `cid` as this frame's session.
    Exec {
        /// The container.
        cid: String,
        /// The process.
        exec: ExecSpec,
    },
    /// Deliver a signal to this session's process.
    Signal {
        /// Signal number.
        signal: i32,
    },
    /// Resize this session's terminal.
    Resize(WinSize),
    /// List the container's processes (answer on this session).
    Top {
        /// The container.
        cid: String,
    },
    /// Resource usage (answer on this session).
    Stats {
        /// The container.
        cid: String,
    },
    /// Freeze the container (answer on this session).
    Pause {
        /// The container.
        cid: String,
    },
    /// Thaw it (answer on this session).
    Unpause {
        /// The container.
        cid: String,
    },
    /// Change the container's limits inside the guest (answer on this session).
    Update {
        /// The container.
        cid: String,
        /// New limits.
        limits: Limits,
    },
    /// Kill the container's processes, remove its cgroup and forget it
    /// (answer `Ok` on this session); the VM and its other containers stay.
    Remove {
        /// The container.
        cid: String,
    },
    /// Flow control: the agent may send this many more stream bytes on this session.
    Credit {
        /// Bytes.
        bytes: u64,
    },
    /// Kill everything, sync, answer `Ok` (the host may then end QEMU), power off.
    Shutdown,
    /// The VM was restored from a template (whose RNG state, clock and
    /// identity every clone shares): mix in fresh entropy and reseed the
    /// kernel's RNG, set the wall clock, then mount the sandbox's share
    /// and answer [`AgentEvent::Ready`] (session 0).
    Resume {
        /// Fresh random bytes from the host.
        entropy: Vec<u8>,
        /// The host's wall clock: nanoseconds since the Unix epoch.
        unix_nanos: u64,
        /// The guest's own hostname (the container's UTS namespace has its own).
        hostname: String,
    },
}

/// Kernel command-line word that tells the agent it boots a template: it
/// probes everything but mounts no root, says `Ready`, and waits for
/// [`AgentRequest::Resume`].
pub const TEMPLATE_ARG: &str = "moat.template";

/// What the guest agent reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The guest is up and serving.
    Ready {
        /// The agent's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// This session's process started.
    Started {
        /// Guest PID.
        pid: u32,
    },
    /// This session's request failed.
    Error {
        /// One-line message.
        message: String,
    },
    /// This session's process exited.
    Exit {
        /// Exit code.
        code: i32,
        /// Killed by the OOM killer.
        oom_killed: bool,
    },
    /// Answer to `Top`.
    Procs {
        /// Rows.
        rows: Vec<ProcRow>,
    },
    /// Answer to `Stats`.
    Usage(Stats),
    /// Answer to `Pause`/`Unpause`/`Update`/`Remove`.
    Ok {
        /// Warnings.
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// Never from the agent: the shim that owns a sandbox tells the shims
    /// of the sandbox's other containers that its utility VM ended.
    SandboxEnded {
        /// Exit code to record.
        code: i32,
        /// Why.
        reason: String,
    },
}

/// The socket in the directory of the container that owns a utility VM,
/// on which the shims of the sandbox's other containers speak the agent
/// protocol (the owner routes their sessions to the agent).
pub const SANDBOX_SOCK: &str = "sandbox.sock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_blocking_and_incremental() -> Result<(), ProtoError> {
        let frames = vec![
            Frame::control(0, &ShimRequest::Attach { stdin: true, stdin_once: true }),
            Frame { kind: Kind::Stdout, session: 7, data: b"hello".to_vec() },
            Frame::control(3, &ShimReply::Exit { code: 137, oom_killed: true }),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.encode_into(&mut wire);
        }
        let mut r = &wire[..];
        for f in &frames {
            assert_eq!(&Frame::read_from(&mut r)?, f);
        }
        assert!(matches!(Frame::read_from(&mut r), Err(ProtoError::Closed)));
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in wire.chunks(3) {
            d.push(b);
            while let Some(f) = d.next_frame()? {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert_eq!(frames[2].msg::<ShimReply>()?, ShimReply::Exit { code: 137, oom_killed: true });
        // the other link's enum does not take it
        assert!(frames[0].msg::<AgentRequest>().is_err());
        Ok(())
    }

    #[test]
    fn rejects_garbage() {
        let mut d = Decoder::default();
        d.push(&[9, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert!(d.next_frame().is_err());
        let mut d = Decoder::default();
        d.push(&[0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_frame().is_err());
    }
}
