//! Published ports: each bound by the shim before the container starts (so
//! a taken port fails the start cleanly) and served by a `port-proxy`
//! process of the shim binary that forwards to the container's address.

use crate::config::ContainerConfig;
use crate::EngineError;
use moat_net::PortMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Binds every published port of `cfg` (with `-P`, every exposed port on a free one).
pub fn bind(cfg: &ContainerConfig) -> Result<Vec<(PortMap, OwnedFd)>, EngineError> {
    let mut maps = cfg.publish.clone();
    if cfg.publish_all {
        for (p, proto) in &cfg.exposed {
            maps.push(PortMap {
                host_ip: std::net::Ipv4Addr::UNSPECIFIED,
                host_port: 0,
                ctr_port: *p,
                proto: proto.clone(),
            });
        }
    }
    let mut out = Vec::new();
    for mut m in maps {
        let addr = std::net::SocketAddr::from((m.host_ip, m.host_port));
        let taken = |e: std::io::Error| EngineError::Conflict(format!("cannot publish {addr}/{}: {e}", m.proto));
        let (fd, port): (OwnedFd, u16) = if m.proto == "udp" {
            let s = std::net::UdpSocket::bind(addr).map_err(taken)?;
            let p = s.local_addr().map(|a| a.port()).unwrap_or(0);
            (s.into(), p)
        } else {
            let s = std::net::TcpListener::bind(addr).map_err(taken)?;
            let p = s.local_addr().map(|a| a.port()).unwrap_or(0);
            (s.into(), p)
        };
        m.host_port = port;
        out.push((m, fd));
    }
    Ok(out)
}

/// Starts one `EXE port-proxy` per bound port, forwarding to `target`;
/// returns the processes and the ports as bound.
pub fn spawn(
    exe: &Path,
    target: std::net::Ipv4Addr,
    ports: Vec<(PortMap, OwnedFd)>,
) -> (Vec<std::process::Child>, Vec<PortMap>) {
    let mut procs = Vec::new();
    let mut recorded = Vec::new();
    for (m, fd) in ports {
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["port-proxy", "--proto", &m.proto, "--target", &format!("{target}:{}", m.ctr_port)]);
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        let raw = fd.as_raw_fd();
        // SAFETY: dup2 and prctl only, between fork and exec
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::dup2(raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => {
                procs.push(child);
                recorded.push(m);
            }
            Err(e) => tracing::error!("port proxy: {e}"),
        }
    }
    (procs, recorded)
}

/// Runs a port proxy on the socket the shim passed as fd 3 (`moat port-proxy`).
pub fn serve(proto: &str, target: std::net::SocketAddr) -> Result<(), EngineError> {
    use std::os::fd::FromRawFd;
    let r = if proto == "udp" {
        // SAFETY: fd 3 is the bound socket the shim passed
        moat_net::proxy::udp(unsafe { std::net::UdpSocket::from_raw_fd(3) }, target)
    } else {
        // SAFETY: fd 3 is the bound socket the shim passed
        moat_net::proxy::tcp(unsafe { std::net::TcpListener::from_raw_fd(3) }, target)
    };
    r.map_err(EngineError::io("port proxy"))
}
