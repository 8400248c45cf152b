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
//!   then `Started` and `Exit 7` for the real one.
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
    let (sid, mode) = loop {
        match dec.next_frame() {
            Ok(Some(f)) if f.kind == Kind::Control => {
                if let Ok(AgentRequest::Create(c)) = f.msg::<AgentRequest>() {
                    break (f.session, c.spec.process.args.first().cloned().unwrap_or_default());
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
    match mode.as_str() {
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
