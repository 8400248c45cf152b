//! The wire protocol spoken between `moat` clients and a container's shim
//! (and, for VM isolation, between the shim and the guest agent).
//!
//! A connection carries frames: `[kind: u8][session: u32 BE][len: u32 BE][payload]`.
//! `kind` says whether the payload is a JSON control message or raw stream
//! bytes (stdin/stdout/stderr); `session` multiplexes several exec sessions on
//! one channel (0 on a per-session unix socket connection).

pub mod sock;

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// virtio-fs tag under which the host exports a VM container's root.
pub const VIRTIOFS_TAG: &str = "rootfs";
/// Name of the virtio-serial port the agent serves.
pub const CONTROL_PORT: &str = "ctl0";
/// Where the guest mounts the virtio-fs export.
pub const GUEST_ROOT: &str = "/run/moat/root";
/// Where the guest assembles the container's root before `pivot_root`.
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
    /// A control frame for `msg`.
    pub fn control(session: u32, msg: &Msg) -> Self {
        // serialising our own enum cannot fail
        let data = serde_json::to_vec(msg).unwrap_or_default();
        Self { kind: Kind::Control, session, data }
    }

    /// Decodes a control payload.
    pub fn msg(&self) -> Result<Msg, ProtoError> {
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

/// Terminal size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A process to run inside an existing container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ExecSpec {
    /// argv; `args[0]` is looked up in the container's PATH.
    pub args: Vec<String>,
    /// Extra `KEY=VALUE` entries on top of the container's environment.
    pub env: Vec<String>,
    /// Working directory (container's default when `None`).
    pub workdir: Option<String>,
    /// `user[:group]` (container's default when `None`).
    pub user: Option<String>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Keep stdin open.
    pub stdin: bool,
    /// Initial terminal size.
    pub size: Option<WinSize>,
    /// Run without waiting (`exec -d`).
    pub detach: bool,
    /// Extra privileges (`exec --privileged`).
    pub privileged: bool,
}

/// One row of a process listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcRow {
    /// PID as the container sees it.
    pub pid: u32,
    /// Parent PID as the container sees it.
    pub ppid: u32,
    /// PID on the host, for process isolation (none for VM isolation).
    pub host_pid: Option<u32>,
    /// User (numeric).
    pub uid: u32,
    /// Resident memory in KiB.
    pub rss_kb: u64,
    /// Cumulative CPU time in seconds.
    pub cpu_secs: f64,
    /// Command line.
    pub cmd: String,
}

/// Resource usage of a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Stats {
    /// Memory in use, bytes.
    pub mem_usage: u64,
    /// Memory limit, bytes (0 = none).
    pub mem_limit: u64,
    /// Cumulative CPU time, nanoseconds.
    pub cpu_ns: u64,
    /// Number of processes.
    pub pids: u64,
}

/// Control messages, in both directions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// Client: attach to the main process's stdio.
    Attach {
        /// Forward the client's stdin.
        stdin: bool,
        /// Close the process's stdin when this client's stdin ends.
        stdin_once: bool,
    },
    /// Client: run a process in the container.
    Exec(ExecSpec),
    /// Client: deliver a signal to the main process (or this session's exec process).
    Signal {
        /// Signal number.
        signal: i32,
    },
    /// Client: resize this session's terminal.
    Resize(WinSize),
    /// Client: tell me when the main process exits.
    Wait,
    /// Client: stop the main process: `signal`, then SIGKILL after `timeout_secs`;
    /// restart policies stand down. Replies `Exit` once it has exited.
    Stop {
        /// First signal.
        signal: i32,
        /// Grace period before SIGKILL.
        timeout_secs: u32,
    },
    /// Client: stream log output as it is written, from the given log offset.
    Follow,
    /// Client: list the container's processes.
    Top,
    /// Client: resource usage.
    Stats,
    /// Server: the process started.
    Started {
        /// PID (host PID for process isolation, guest PID for VM).
        pid: u32,
    },
    /// Server: the log file had this many bytes when following began.
    LogOffset {
        /// Byte offset.
        offset: u64,
    },
    /// Server: the process exited.
    Exit {
        /// Exit code (128+N for death by signal N).
        code: i32,
        /// Killed by the OOM killer.
        oom_killed: bool,
    },
    /// Server: process listing.
    Procs {
        /// Rows.
        rows: Vec<ProcRow>,
    },
    /// Server: resource usage.
    Usage(Stats),
    /// Agent: the guest is up and serving.
    Ready,
    /// Host → agent: create the container's main process (JSON of
    /// `moat_runtime::guest::Create`).
    Create {
        /// JSON payload.
        spec: String,
    },
    /// Flow control: the sender may send this many more stream bytes on this session.
    Credit {
        /// Bytes.
        bytes: u64,
    },
    /// Host → agent: kill everything and power off.
    Shutdown,
    /// Server: request done.
    Ok,
    /// Server: request failed.
    Error {
        /// One-line message.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_blocking_and_incremental() -> Result<(), ProtoError> {
        let frames = vec![
            Frame::control(0, &Msg::Attach { stdin: true, stdin_once: true }),
            Frame { kind: Kind::Stdout, session: 7, data: b"hello".to_vec() },
            Frame::control(3, &Msg::Exit { code: 137, oom_killed: true }),
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
        assert_eq!(frames[2].msg()?, Msg::Exit { code: 137, oom_killed: true });
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
