//! Talking to a running container, for front ends: attach and exec
//! sessions (output, stdin, resize, signals, the exit), `top`, `stats`, and
//! logs with follow, since/until and tail. The wire protocol stays inside.

use crate::client::Conn;
use crate::logs::Record;
use crate::{execs, Container, Engine, EngineError};
use moat_proto::{Frame, Kind, ProcRow, ProtoError, ShimReply, ShimRequest, Stats, WinSize};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// How to attach.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions {
    /// Forward stdin (only if the container keeps it open).
    pub stdin: bool,
    /// Close the container's stdin when this session's stdin ends.
    pub stdin_once: bool,
    /// Do not receive the output (`-a stderr` without `-a stdout`).
    pub skip_stdout: bool,
    /// Do not receive the error output.
    pub skip_stderr: bool,
}

/// What a session receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// Output (or, with a terminal, everything).
    Stdout(Vec<u8>),
    /// Error output.
    Stderr(Vec<u8>),
    /// The process exited.
    Exit {
        /// Exit code.
        code: i32,
        /// OOM-killed.
        oom_killed: bool,
    },
    /// The shim reported an error (the process may still exit after it).
    Error(String),
}

/// A connection to a container's main process or to an exec process.
pub struct Session {
    conn: Conn,
    tty: bool,
    /// Output and error output not wanted (`-a`).
    skip: (bool, bool),
}

/// The sending half of a session, usable from another thread.
pub struct SessionWriter {
    stream: UnixStream,
}

impl SessionWriter {
    fn frame(&mut self, f: &Frame) -> Result<(), EngineError> {
        f.write_to(&mut self.stream).map_err(EngineError::from)
    }

    /// Sends stdin bytes.
    pub fn stdin(&mut self, data: &[u8]) -> Result<(), EngineError> {
        for chunk in data.chunks(moat_proto::MAX_FRAME) {
            self.frame(&Frame { kind: Kind::Stdin, session: 0, data: chunk.to_vec() })?;
        }
        Ok(())
    }

    /// End of stdin.
    pub fn close_stdin(&mut self) -> Result<(), EngineError> {
        self.frame(&Frame { kind: Kind::StdinEof, session: 0, data: Vec::new() })
    }

    /// Resizes the session's terminal.
    pub fn resize(&mut self, ws: WinSize) -> Result<(), EngineError> {
        self.frame(&Frame::control(0, &ShimRequest::Resize(ws)))
    }

    /// Delivers a signal to the session's process.
    pub fn signal(&mut self, signal: i32) -> Result<(), EngineError> {
        self.frame(&Frame::control(0, &ShimRequest::Signal { signal }))
    }

    /// Stops sending (the peer sees EOF on this side only with [`Self::close_stdin`]).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}

impl Session {
    pub(crate) fn new(conn: Conn, tty: bool) -> Self {
        Self { conn, tty, skip: (false, false) }
    }

    /// The process has a terminal (output is raw, stderr merged).
    pub fn tty(&self) -> bool {
        self.tty
    }

    /// Starts receiving the main process's output (and sending stdin). A
    /// process that already exited has closed the session: its output and
    /// exit are still queued on it, so that is not an error.
    pub fn attach(&mut self, o: AttachOptions) -> Result<(), EngineError> {
        self.skip = (o.skip_stdout, o.skip_stderr);
        match self.conn.send(&ShimRequest::Attach { stdin: o.stdin, stdin_once: o.stdin_once }) {
            Err(EngineError::Proto(moat_proto::ProtoError::Io(e)))
                if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// A sending half for another thread.
    pub fn writer(&self) -> Result<SessionWriter, EngineError> {
        Ok(SessionWriter { stream: self.conn.stream.try_clone().map_err(EngineError::io("clone session"))? })
    }

    /// The descriptor to poll for readability.
    pub fn as_raw_fd(&self) -> RawFd {
        self.conn.stream.as_raw_fd()
    }

    /// Whether the shim sent something within `timeout` (then
    /// [`Session::next_event`] does not wait long).
    pub fn ready(&self, timeout: std::time::Duration) -> bool {
        readable(self.conn.stream.as_raw_fd(), timeout)
    }

    /// The next event; `None` when the shim closed the session.
    pub fn next_event(&mut self) -> Result<Option<SessionEvent>, EngineError> {
        loop {
            let f = match self.conn.recv() {
                Ok(f) => f,
                Err(ProtoError::Closed) => return Ok(None),
                Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            match f.kind {
                Kind::Stdout if !self.skip.0 => return Ok(Some(SessionEvent::Stdout(f.data))),
                Kind::Stderr if !self.skip.1 => return Ok(Some(SessionEvent::Stderr(f.data))),
                Kind::Control => match f.msg::<ShimReply>()? {
                    ShimReply::Exit { code, oom_killed } => return Ok(Some(SessionEvent::Exit { code, oom_killed })),
                    ShimReply::Error { message } => return Ok(Some(SessionEvent::Error(message))),
                    _ => {}
                },
                _ => {}
            }
        }
    }
}

/// Log reading options.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Keep streaming while the container runs.
    pub follow: bool,
    /// Only records at or after (nanoseconds since the epoch).
    pub since: Option<i64>,
    /// Only records before.
    pub until: Option<i64>,
    /// Only the last N records.
    pub tail: Option<usize>,
    /// Put the `labels`/`env` log attributes before each line (`--details`).
    pub details: bool,
}

/// Log records: what the file holds, then (following) what the shim streams.
pub struct LogStream {
    buffered: std::collections::VecDeque<Record>,
    conn: Option<Conn>,
    until: Option<i64>,
    /// `--details`: the attributes put before each line.
    details: Option<String>,
}

/// Whether `fd` has something to read within `timeout` (a hang-up or an
/// error counts: the next read says what it is).
fn readable(fd: RawFd, timeout: std::time::Duration) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

impl LogStream {
    /// Whether [`LogStream::next_record`] can answer without waiting more
    /// than `timeout` for the shim: records are buffered, the stream ended,
    /// or the shim sent something. Lets a follower notice meanwhile that
    /// its own client went away.
    pub fn ready(&self, timeout: std::time::Duration) -> bool {
        match &self.conn {
            _ if !self.buffered.is_empty() => true,
            None => true,
            Some(c) => readable(c.stream.as_raw_fd(), timeout),
        }
    }

    /// The next record; `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<Record>, EngineError> {
        loop {
            if let Some(r) = self.buffered.pop_front() {
                if self.until.is_some_and(|u| r.time.timestamp_nanos_opt().unwrap_or(0) >= u) {
                    self.buffered.clear();
                    self.conn = None;
                    return Ok(None);
                }
                let mut r = r;
                if let Some(d) = &self.details {
                    // Docker's format: the attributes, a space, the line
                    r.log = format!("{d} {}", r.log);
                }
                return Ok(Some(r));
            }
            let Some(conn) = self.conn.as_mut() else { return Ok(None) };
            match conn.recv() {
                Ok(f) if f.kind == Kind::Stdout => self.buffered.extend(crate::logs::parse_lines(&f.data)),
                Ok(f) if f.kind == Kind::Control => {
                    if let Ok(ShimReply::Exit { .. }) = f.msg::<ShimReply>() {
                        self.conn = None;
                    }
                }
                Ok(_) => {}
                Err(_) => self.conn = None,
            }
        }
    }
}

impl Engine {
    /// Attaches to a running container's main process. Whether the end of
    /// the client's stdin closes the container's is the container's
    /// `StdinOnce` (Docker's rule: a detached `docker attach` leaves it open).
    pub fn attach(&mut self, key: &str, o: AttachOptions) -> Result<(Container, Session), EngineError> {
        let c = self.get(key)?;
        if !c.is_running() {
            return Err(EngineError::NotRunning("You cannot attach to a stopped container, start it first".into()));
        }
        let mut s = Session::new(self.connect(&c)?, c.config.tty);
        s.attach(AttachOptions { stdin: o.stdin && c.config.open_stdin, stdin_once: c.config.stdin_once, ..o })?;
        moat_core::crash::point("attach.attached");
        Ok((c, s))
    }

    /// Starts exec instance `id`. The session streams its output and ends
    /// with its exit; with `detach`, it ends as soon as the process started.
    /// A process that cannot start yields `Start` with its exit code.
    pub fn exec_start(&mut self, id: &str, detach: bool, size: Option<WinSize>) -> Result<Session, EngineError> {
        let rec = execs::find(&self.layout, id)?;
        if rec.started {
            return Err(EngineError::Conflict(format!("exec {} has already been started", rec.id)));
        }
        let c = self.get(&rec.container_id)?;
        let mut conn = self.shim(&c)?;
        let mut spec = rec.spec.clone();
        spec.detach = detach;
        if size.is_some() {
            spec.size = size;
        }
        let tty = self.exec_on(&mut conn, &c, spec)?;
        moat_core::crash::point("exec.start.spawned");
        Ok(Session::new(conn, tty))
    }

    /// Runs a process in a running container without an exec record (the
    /// CLI's `exec`, which needs no ID: it works even when the root is full).
    /// The session ends with the process's exit; a process that cannot
    /// start yields `Start` with its exit code.
    pub fn exec(&mut self, key: &str, spec: moat_proto::ExecSpec) -> Result<Session, EngineError> {
        let c = self.get(key)?;
        if spec.args.is_empty() {
            return Err(EngineError::Invalid("no exec command specified".into()));
        }
        for e in &spec.env {
            crate::validate::env(e)?;
        }
        let mut conn = self.shim(&c)?;
        self.exec_on(&mut conn, &c, spec).map(|tty| Session::new(conn, tty))
    }

    fn exec_on(&mut self, conn: &mut Conn, c: &Container, mut spec: moat_proto::ExecSpec) -> Result<bool, EngineError> {
        let tty = spec.tty;
        // Docker's daemon environment: a terminal gets TERM=xterm unless the
        // container's or the exec's own environment names it (a bare `TERM`
        // unsets it, as in the container's own spec)
        let names_term = |env: &[String]| moat_runtime::relay::env_names(env, "TERM");
        if tty && !names_term(&spec.env) && !names_term(&c.config.env) {
            spec.env.push("TERM=xterm".into());
        }
        match conn.request(&ShimRequest::Exec(spec))? {
            ShimReply::Started { .. } => Ok(tty),
            ShimReply::Error { message } => {
                let code = match conn.recv_reply() {
                    Ok(ShimReply::Exit { code, .. }) => code,
                    _ => 126,
                };
                Err(EngineError::Start { message, code })
            }
            m => Err(EngineError::Shim(format!("unexpected reply {m:?}"))),
        }
    }

    /// Resizes exec instance `id`'s terminal.
    pub fn exec_resize(&mut self, id: &str, ws: WinSize) -> Result<(), EngineError> {
        let rec = execs::find(&self.layout, id)?;
        let c = self.get(&rec.container_id)?;
        let mut conn = self.shim(&c)?;
        match conn.request(&ShimRequest::ResizeExec { exec_id: rec.id, size: ws })? {
            ShimReply::Ok { .. } => Ok(()),
            ShimReply::Error { message } => Err(EngineError::Conflict(message)),
            m => Err(EngineError::Shim(format!("unexpected reply {m:?}"))),
        }
    }

    /// Resizes a running container's terminal.
    pub fn resize(&mut self, key: &str, ws: WinSize) -> Result<(), EngineError> {
        let c = self.get(key)?;
        let mut conn = self.shim(&c)?;
        conn.send(&ShimRequest::Resize(ws))
    }

    /// The container's processes.
    pub fn top(&mut self, key: &str) -> Result<Vec<ProcRow>, EngineError> {
        let c = self.get(key)?;
        match self.shim(&c)?.request(&ShimRequest::Top)? {
            ShimReply::Procs { rows } => Ok(rows),
            ShimReply::Error { message } => Err(EngineError::Shim(message)),
            m => Err(EngineError::Shim(format!("unexpected reply {m:?}"))),
        }
    }

    /// `top CTR [ps OPTIONS]` as a table (titles, rows): without options the
    /// container's processes as its backend reports them, the same columns
    /// in both isolation types (UID, PID and PPID as the container sees
    /// them, the host PID where there is one, RSS, CPU time, command); with
    /// options the host's `ps` ([`Engine::top_ps`]).
    /// Records dockerd's `top` event.
    pub fn top_table(&mut self, key: &str, ps_args: &[String]) -> Result<(Vec<String>, Vec<Vec<String>>), EngineError> {
        let table = self.top_table_of(key, ps_args)?;
        let c = self.get(key)?;
        crate::events::record(self.store(), crate::events::Event::container("top", &c));
        Ok(table)
    }

    fn top_table_of(&mut self, key: &str, ps_args: &[String]) -> Result<(Vec<String>, Vec<Vec<String>>), EngineError> {
        if !ps_args.is_empty() {
            return self.top_ps(key, ps_args);
        }
        let rows = self
            .top(key)?
            .iter()
            .map(|r| {
                let t = r.cpu_secs as u64;
                vec![
                    r.uid.to_string(),
                    r.pid.to_string(),
                    r.ppid.to_string(),
                    r.host_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    r.rss_kb.to_string(),
                    format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60),
                    r.cmd.clone(),
                ]
            })
            .collect();
        let titles = ["UID", "PID", "PPID", "HOST PID", "RSS", "TIME", "CMD"].map(str::to_string).to_vec();
        Ok((titles, rows))
    }

    /// `top CTR [ps OPTIONS]`, Docker's way: the host's `ps` with those
    /// options, its rows kept for the container's processes (matched on
    /// the `PID` column, host PIDs). Returns the titles and rows. A utility
    /// VM's processes are not the host's: refused there.
    pub fn top_ps(&mut self, key: &str, ps_args: &[String]) -> Result<(Vec<String>, Vec<Vec<String>>), EngineError> {
        let c = self.get(key)?;
        if c.config.isolation() == moat_core::Isolation::Hyperv {
            return Err(EngineError::Unsupported(format!(
                "ps options need process isolation: the processes of {} run in its utility VM, not on this host (run top without options)",
                c.name()
            )));
        }
        let pids: std::collections::HashSet<String> =
            self.top(key)?.iter().filter_map(|r| r.host_pid).map(|p| p.to_string()).collect();
        let out = std::process::Command::new("ps").args(ps_args).output().map_err(EngineError::io("run ps"))?;
        if !out.status.success() {
            return Err(EngineError::Invalid(format!(
                "ps {}: {}",
                ps_args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let titles: Vec<String> = lines.next().unwrap_or_default().split_whitespace().map(str::to_string).collect();
        let col = titles.iter().position(|t| t == "PID").ok_or_else(|| {
            EngineError::Invalid(format!(
                "ps {} prints no PID column: moat cannot tell the container's rows",
                ps_args.join(" ")
            ))
        })?;
        let n = titles.len();
        let rows = lines
            .filter_map(|l| {
                // the last column may hold spaces (the command)
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() < n {
                    return None;
                }
                let mut row: Vec<String> = f[..n - 1].iter().map(|s| s.to_string()).collect();
                row.push(f[n - 1..].join(" "));
                pids.contains(&row[col]).then_some(row)
            })
            .collect();
        Ok((titles, rows))
    }

    /// One sample of the container's resource usage (`None` when it is not running).
    pub fn stats(&mut self, c: &Container) -> Result<Option<Stats>, EngineError> {
        if !c.is_running() {
            return Ok(None);
        }
        let Ok(mut conn) = self.connect(c) else { return Ok(None) };
        match conn.request(&ShimRequest::Stats) {
            Ok(ShimReply::Usage(s)) => Ok(Some(s)),
            Ok(ShimReply::Error { message }) => Err(EngineError::Shim(message)),
            _ => Ok(None),
        }
    }

    /// The container's log.
    pub fn logs(&mut self, key: &str, o: &LogOptions) -> Result<(Container, LogStream), EngineError> {
        let c = self.get(key)?;
        if c.config.log.driver == "none" {
            return Err(EngineError::Unsupported(format!(
                "configured logging driver does not support reading: container {} logs with driver \"none\"",
                c.name()
            )));
        }
        let path = self.layout.container(c.id()).join(format!("{}-json.log", c.id()));
        let mut conn = None;
        let mut limit = None;
        if o.follow && c.is_running() {
            if let Ok(mut cn) = self.connect(&c) {
                if let Ok(ShimReply::LogOffset { offset }) = cn.request(&ShimRequest::Follow) {
                    limit = Some(offset);
                    conn = Some(cn);
                }
            }
        }
        let mut records = crate::logs::read(&path, limit, None).map_err(EngineError::io("read log"))?;
        if let Some(s) = o.since {
            records.retain(|r| r.time.timestamp_nanos_opt().unwrap_or(0) >= s);
        }
        if let Some(t) = o.tail {
            let skip = records.len().saturating_sub(t);
            records.drain(..skip);
        }
        if o.until.is_some_and(|u| u <= chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)) {
            conn = None;
        }
        let details = o.details.then(|| c.config.log.details(&c.config.labels, &c.config.env));
        Ok((c, LogStream { buffered: records.into(), conn, until: o.until, details }))
    }
}
