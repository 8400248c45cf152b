//! A hostile guest agent, for moat's tests only (issue #35): PID 1 of a
//! utility VM (`MOAT_AGENT` names it) that says `Ready` as the real agent
//! does, waits for the first `Create`, and then misbehaves as the
//! container's first argument asks:
//!
//! - `oversized`: a frame header announcing more than `MAX_FRAME` bytes;
//! - `truncated`: a header announcing 1000 bytes, 10 of them, then silence;
//! - `silent`: never answers;
//! - `garbage`: bytes that are no frame at all;
//! - `flood`: `Started`, then output as fast as the port takes it, with no
//!   regard for the host's flow control;
//! - `strangers`: events for sessions and containers that do not exist,
//!   then `Started` and `Exit 7` for the real one;
//! - `escape CANARY`: root of the guest turned against the host through
//!   virtio-fs: mounts the share itself and plants absolute and climbing
//!   symlinks (to `/` and to the host path `CANARY`) in the container's
//!   root and volume, tries a device node, renaming over a bind-mounted
//!   file, and forged file handles (`open_by_handle_at` with node IDs
//!   1..=4096); reports each result as `key=value` lines of output, then
//!   `Exit 0`.
//!
//! It is never installed; `make agent` builds it beside the agent.

use moat_proto::{AgentEvent, AgentRequest, Decoder, Frame, Kind, CONTROL_PORT, HEADER, MAX_FRAME, PROTOCOL_VERSION};
use std::io::{Read, Write};

fn mount(src: &str, target: &str, fs: &str) {
    let _ = std::fs::create_dir_all(target);
    let _ = nix::mount::mount(Some(src), target, Some(fs), nix::mount::MsFlags::empty(), None::<&str>);
}

fn open_port(name: &str) -> std::fs::File {
    loop {
        if let Ok(rd) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in rd.flatten() {
                if std::fs::read_to_string(e.path().join("name")).unwrap_or_default().trim() == name {
                    let dev = format!("/dev/{}", e.file_name().to_string_lossy());
                    if let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
                        return f;
                    }
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn send(port: &mut std::fs::File, sid: u32, m: &AgentEvent) {
    let _ = port.write_all(&Frame::control(sid, m).encode());
}

fn forever() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("moat-evil-agent runs as PID 1 of a test VM");
        std::process::exit(2);
    }
    mount("proc", "/proc", "proc");
    mount("sysfs", "/sys", "sysfs");
    mount("devtmpfs", "/dev", "devtmpfs");
    let mut port = open_port(CONTROL_PORT);
    send(&mut port, 0, &AgentEvent::Ready { version: PROTOCOL_VERSION });
    // the first Create names the misbehaviour
    let mut dec = Decoder::default();
    let mut buf = vec![0u8; 64 << 10];
    let (sid, args) = loop {
        match dec.next_frame() {
            Ok(Some(f)) if f.kind == Kind::Control => {
                if let Ok(AgentRequest::Create(c)) = f.msg::<AgentRequest>() {
                    break (f.session, c.spec.process.args.clone());
                }
                continue;
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(_) => forever(),
        }
        match port.read(&mut buf) {
            Ok(0) | Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Ok(n) => dec.push(&buf[..n]),
        }
    };
    let mode = args.first().cloned().unwrap_or_default();
    match mode.as_str() {
        "escape" => {
            let report = escape(args.get(1).map(String::as_str).unwrap_or("/nonexistent"));
            send(&mut port, sid, &AgentEvent::Started { pid: 1 });
            let _ = port.write_all(&Frame { kind: Kind::Stdout, session: sid, data: report.into_bytes() }.encode());
            send(&mut port, sid, &AgentEvent::Exit { code: 0, oom_killed: false });
        }
        "oversized" => {
            let mut h = vec![Kind::Control as u8];
            h.extend_from_slice(&sid.to_be_bytes());
            h.extend_from_slice(&((MAX_FRAME as u32) + 1).to_be_bytes());
            let _ = port.write_all(&h);
        }
        "truncated" => {
            let mut h = vec![Kind::Control as u8];
            h.extend_from_slice(&sid.to_be_bytes());
            h.extend_from_slice(&1000u32.to_be_bytes());
            h.extend_from_slice(b"{\"type\":\"s");
            let _ = port.write_all(&h);
        }
        "garbage" => {
            let _ = port.write_all(&[0xff; HEADER * 4]);
        }
        "flood" => {
            send(&mut port, sid, &AgentEvent::Started { pid: 1 });
            let chunk = Frame { kind: Kind::Stdout, session: sid, data: vec![b'x'; 64 << 10] }.encode();
            loop {
                if port.write_all(&chunk).is_err() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        "strangers" => {
            for other in [sid + 1, sid + 1000, u32::MAX] {
                send(&mut port, other, &AgentEvent::Exit { code: 99, oom_killed: false });
                send(&mut port, other, &AgentEvent::Started { pid: 42 });
                send(&mut port, other, &AgentEvent::Error { message: "/etc/shadow".into() });
            }
            send(&mut port, sid, &AgentEvent::Started { pid: 1 });
            send(&mut port, sid, &AgentEvent::Exit { code: 7, oom_killed: false });
        }
        _ => {}
    }
    forever()
}

/// `ok` or the errno's name of a result.
fn res<T>(r: nix::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// The attacks of `escape` mode; one `key=value` line each.
fn escape(canary: &str) -> String {
    use nix::sys::stat::{mknod, Mode, SFlag};
    use std::os::fd::AsRawFd;
    let mut out = String::new();
    mount(moat_proto::VIRTIOFS_TAG, "/mnt", "virtiofs");
    let ctr = std::fs::read_dir("/mnt")
        .ok()
        .and_then(|mut rd| rd.find_map(|e| e.ok().filter(|e| e.path().is_dir())))
        .map(|e| e.path());
    let Some(root) = ctr else { return "share=missing\n".into() };
    out += "share=mounted\n";
    let up = "../".repeat(16);
    for (dir, tag) in [(root.clone(), "root"), (root.join("data"), "volume")] {
        out += &format!("{tag}.symlink.abs={}\n", res(nix::unistd::symlinkat("/", None, &dir.join("escape-root"))));
        out += &format!(
            "{tag}.symlink.canary={}\n",
            res(nix::unistd::symlinkat(canary, None, &dir.join("escape-canary")))
        );
        out +=
            &format!("{tag}.symlink.up={}\n", res(nix::unistd::symlinkat(up.as_str(), None, &dir.join("escape-up"))));
        // through the planted links, the guest's own paths: never the host's file
        let via = dir.join("escape-up").join(canary.trim_start_matches('/'));
        out += &format!("{tag}.open.up={}\n", res(nix::fcntl::open(&via, nix::fcntl::OFlag::O_RDONLY, Mode::empty())));
        out += &format!(
            "{tag}.open.canary={}\n",
            res(nix::fcntl::open(&dir.join("escape-canary"), nix::fcntl::OFlag::O_RDONLY, Mode::empty()))
        );
        out += &format!(
            "{tag}.mknod={}\n",
            res(mknod(
                &dir.join("escape-dev"),
                SFlag::S_IFBLK,
                Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(8, 0)
            ))
        );
    }
    // a bind-mounted host file of the container (its /etc/hosts) replaced by a link
    out += &format!(
        "rename.hosts={}\n",
        res(nix::fcntl::renameat(None, &root.join("escape-root"), None, &root.join("etc/hosts")))
    );
    // forged file handles: FUSE encodes a node ID and a generation
    let mut opened_outside = 0;
    let mut opened = 0;
    let handle = name_to_handle(&root);
    out += &format!("handle={}\n", if handle.is_some() { "ok" } else { "unsupported" });
    if let (Some((ty, bytes)), Ok(mnt)) = (handle, std::fs::File::open("/mnt")) {
        for node in 1u64..=4096 {
            let mut b = bytes.clone();
            if b.len() >= 8 {
                b[..4].copy_from_slice(&((node >> 32) as u32).to_ne_bytes());
                b[4..8].copy_from_slice(&(node as u32).to_ne_bytes());
            }
            if let Some(fd) = open_by_handle(mnt.as_raw_fd(), ty, &b) {
                opened += 1;
                let p = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
                if !p.starts_with("/mnt") {
                    opened_outside += 1;
                }
                // SAFETY: our own descriptor
                unsafe { libc::close(fd) };
            }
        }
    }
    out += &format!("handles.opened={}\nhandles.outside={opened_outside}\n", if opened > 0 { "some" } else { "none" });
    out
}

/// `name_to_handle_at` of `path`: the handle's type and bytes.
fn name_to_handle(path: &std::path::Path) -> Option<(i32, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // struct file_handle: u32 handle_bytes, i32 handle_type, bytes
    let mut buf = vec![0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: buf is a file_handle with room for 128 bytes
    let r = unsafe {
        libc::syscall(libc::SYS_name_to_handle_at, libc::AT_FDCWD, c.as_ptr(), buf.as_mut_ptr(), &mut mount_id, 0)
    };
    if r != 0 {
        return None;
    }
    let n = u32::from_ne_bytes(buf[..4].try_into().ok()?) as usize;
    let ty = i32::from_ne_bytes(buf[4..8].try_into().ok()?);
    Some((ty, buf[8..8 + n.min(128)].to_vec()))
}

/// `open_by_handle_at` with a handle of type `ty` and these bytes.
fn open_by_handle(mount_fd: i32, ty: i32, bytes: &[u8]) -> Option<i32> {
    let mut buf = Vec::with_capacity(8 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(bytes);
    // SAFETY: buf is a complete file_handle
    let fd =
        unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount_fd, buf.as_ptr(), libc::O_RDONLY | libc::O_PATH) };
    (fd >= 0).then_some(fd as i32)
}
