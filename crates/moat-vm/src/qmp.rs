//! A small synchronous QMP client for the steps that must happen in order
//! before a VM runs (a template's snapshot, a clone's restore): commands with
//! their answers, descriptors passed with `getfd`, and waiting for an event.
//! The running VM's QMP traffic is read by the shim's event loop instead.

use crate::VmError;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A negotiated QMP connection.
pub struct Qmp {
    stream: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
}

impl Qmp {
    /// Reads QEMU's greeting and negotiates capabilities; every later step
    /// must be done within `timeout` of this call.
    pub fn negotiate(stream: UnixStream, timeout: Duration) -> Result<Self, VmError> {
        let mut q = Self { stream, buf: Vec::new(), deadline: Instant::now() + timeout };
        let greeting = q.next()?;
        if greeting.get("QMP").is_none() {
            return Err(VmError::Guest(format!("QEMU did not greet on QMP: {greeting}")));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// The connection, for the shim's loop once the ordered steps are done.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    fn next(&mut self) -> Result<Value, VmError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                match serde_json::from_slice::<Value>(&line) {
                    Ok(v) => return Ok(v),
                    Err(_) => continue,
                }
            }
            if self.buf.len() > 1 << 20 {
                return Err(VmError::Guest("QMP sent a line longer than 1 MiB".into()));
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VmError::Guest("QEMU did not answer on QMP in time".into()));
            }
            self.stream.set_read_timeout(Some(left)).map_err(VmError::io("QMP"))?;
            let mut b = [0u8; 8192];
            match self.stream.read(&mut b) {
                Ok(0) => return Err(VmError::Guest("QEMU closed QMP (it exited)".into())),
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(VmError::Io("QMP".into(), e)),
            }
        }
    }

    fn answer(&mut self, what: &str) -> Result<Value, VmError> {
        loop {
            let v = self.next()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            let desc = v["error"]["desc"].as_str().unwrap_or("unknown error");
            return Err(VmError::Guest(format!("QEMU refused {what}: {desc}")));
        }
    }

    /// Runs a command and returns its answer; events read meanwhile are dropped.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, VmError> {
        let line = json!({ "execute": cmd, "arguments": args }).to_string() + "\n";
        self.stream.write_all(line.as_bytes()).map_err(VmError::io(format!("QMP {cmd}")))?;
        self.answer(cmd)
    }

    /// Hands QEMU a descriptor under `name` (`getfd` with SCM_RIGHTS).
    pub fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), VmError> {
        self.execute_with_fd("getfd", json!({ "fdname": name }), fd).map(|_| ())
    }

    /// Puts a descriptor in fd set `id` (`add-fd`): QEMU then opens
    /// `/dev/fdset/<id>` with that descriptor's access mode.
    pub fn add_fd(&mut self, id: u32, fd: BorrowedFd<'_>) -> Result<(), VmError> {
        self.execute_with_fd("add-fd", json!({ "fdset-id": id }), fd).map(|_| ())
    }

    /// Runs `cmd` with one descriptor passed alongside (SCM_RIGHTS).
    fn execute_with_fd(&mut self, cmd: &str, args: Value, fd: BorrowedFd<'_>) -> Result<Value, VmError> {
        let line = json!({ "execute": cmd, "arguments": args }).to_string() + "\n";
        let raw = fd.as_raw_fd();
        // SAFETY: sendmsg of our buffer with one SCM_RIGHTS descriptor in a
        // correctly sized and aligned control buffer
        let sent = unsafe {
            let mut iov = libc::iovec { iov_base: line.as_ptr() as *mut libc::c_void, iov_len: line.len() };
            let space = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
            let mut cbuf = vec![0u64; space.div_ceil(8)];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut i32, raw);
            libc::sendmsg(self.stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        };
        if sent < 0 || sent as usize != line.len() {
            return Err(VmError::Io(format!("QMP {cmd}"), std::io::Error::last_os_error()));
        }
        self.answer(cmd)
    }

    /// Waits for the `MIGRATION` event that ends a migration (the
    /// `events` capability must be on): `Ok` when it completed.
    pub fn wait_migration(&mut self) -> Result<(), VmError> {
        loop {
            let v = self.next()?;
            if v["event"] != "MIGRATION" {
                continue;
            }
            match v["data"]["status"].as_str() {
                Some("completed") => return Ok(()),
                Some(s @ ("failed" | "cancelled")) => {
                    let why = self
                        .execute("query-migrate", json!({}))
                        .ok()
                        .and_then(|r| r["error-desc"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    return Err(VmError::Guest(format!("the VM snapshot {s}: {why}")));
                }
                _ => {}
            }
        }
    }
}
