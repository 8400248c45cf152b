//! Userland port proxies (like docker-proxy): accept on the host side,
//! connect to the container's address, copy both ways. One proxy process per
//! published port, owned by the container's shim.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Serves a TCP listener forever, forwarding each connection to `target`.
pub fn tcp(listener: TcpListener, target: SocketAddr) -> std::io::Result<()> {
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        std::thread::spawn(move || {
            let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(10)) else { return };
            let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else { return };
            let (mut c1, mut u1) = (client, upstream);
            let t = std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut u2);
                let _ = u2.shutdown(std::net::Shutdown::Write);
            });
            let _ = std::io::copy(&mut u1, &mut c1);
            let _ = c1.shutdown(std::net::Shutdown::Write);
            let _ = t.join();
        });
    }
    Ok(())
}

/// Serves a UDP socket forever: each client address gets its own upstream
/// socket, whose replies go back to that client.
pub fn udp(sock: UdpSocket, target: SocketAddr) -> std::io::Result<()> {
    let sock = Arc::new(sock);
    let peers: Arc<Mutex<std::collections::HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let up = {
            let mut p = peers.lock().map_err(|_| std::io::Error::other("lock"))?;
            match p.get(&from) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(UdpSocket::bind("0.0.0.0:0")?);
                    u.connect(target)?;
                    p.insert(from, u.clone());
                    let (u2, s2) = (u.clone(), sock.clone());
                    std::thread::spawn(move || {
                        let mut b = vec![0u8; 65536];
                        while let Ok(n) = u2.recv(&mut b) {
                            let _ = s2.send_to(&b[..n], from);
                        }
                    });
                    u
                }
            }
        };
        let _ = up.send(&buf[..n]);
    }
}
