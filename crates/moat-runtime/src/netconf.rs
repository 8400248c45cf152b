//! Configuring an interface inside the current network namespace with plain
//! ioctls (no `ip` binary needed, so it works in the container's child and
//! in the guest agent alike): rename, MAC, IPv4 address, up, default route.

use crate::RuntimeError;
use std::net::Ipv4Addr;

pub use moat_spec::Iface;

fn name_bytes(n: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], RuntimeError> {
    if n.is_empty() || n.len() >= libc::IFNAMSIZ {
        return Err(RuntimeError::Invalid(format!("bad interface name {n:?}")));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (i, b) in n.bytes().enumerate() {
        out[i] = b as libc::c_char;
    }
    Ok(out)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; plain data
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

struct Sock(libc::c_int);
impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: closing our socket
        unsafe { libc::close(self.0) };
    }
}

fn ioctl(s: &Sock, req: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> Result<(), RuntimeError> {
    // SAFETY: arg points to a properly initialised ifreq/rtentry for this request
    if unsafe { libc::ioctl(s.0, req, arg) } < 0 {
        return Err(RuntimeError::Sys(format!("network: {what}"), nix::Error::last()));
    }
    Ok(())
}

fn ifreq(name: &str) -> Result<libc::ifreq, RuntimeError> {
    // SAFETY: ifreq is plain data; all-zero is valid
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    r.ifr_name = name_bytes(name)?;
    Ok(r)
}

fn socket() -> Result<Sock, RuntimeError> {
    // SAFETY: a plain datagram socket for ioctls
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(RuntimeError::Sys("network: socket".into(), nix::Error::last()));
    }
    Ok(Sock(fd))
}

/// Brings interface `name` up unless it is.
fn up(s: &Sock, name: &str) -> Result<(), RuntimeError> {
    let mut r = ifreq(name)?;
    ioctl(s, libc::SIOCGIFFLAGS, &mut r as *mut _ as *mut _, &format!("flags of {name}"))?;
    // SAFETY: union access after SIOCGIFFLAGS filled it
    unsafe {
        if r.ifr_ifru.ifru_flags & libc::IFF_UP as libc::c_short != 0 {
            return Ok(());
        }
        r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    ioctl(s, libc::SIOCSIFFLAGS, &mut r as *mut _ as *mut _, &format!("bring up {name}"))
}

/// Turns IPv6 off on interface `name` (`default`: on interfaces that appear
/// in this network namespace later), as Docker does on IPv4-only networks.
/// Best effort: a kernel without IPv6 has nothing to turn off.
pub fn disable_ipv6(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
}

/// Brings the loopback interface up (a utility VM's template does it once
/// for all its clones).
pub fn loopback_up() -> Result<(), RuntimeError> {
    up(&socket()?, "lo")
}

/// Brings every NIC of this network namespace up with IPv6 off and no
/// address (a utility VM's template does it once for all its clones, whose
/// [`configure`] then only sets the MAC, address and route: bringing a
/// virtio NIC up fills its receive ring, which is slow under TCG).
pub fn nics_up() -> Result<(), RuntimeError> {
    let s = socket()?;
    let dir = std::fs::read_dir("/sys/class/net").map_err(|e| RuntimeError::Io("list /sys/class/net".into(), e))?;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != "lo" {
            disable_ipv6(&name);
            up(&s, &name)?;
        }
    }
    Ok(())
}

/// Brings `lo` up and configures `ifaces` (renamed, MAC, address, default route).
pub fn configure(ifaces: &[Iface]) -> Result<(), RuntimeError> {
    let s = socket()?;
    let up = |name: &str| up(&s, name);
    up("lo")?;
    let mut routed = false;
    for i in ifaces {
        if i.from != i.name {
            let mut r = ifreq(&i.from)?;
            r.ifr_ifru.ifru_newname = name_bytes(&i.name)?;
            ioctl(&s, libc::SIOCSIFNAME, &mut r as *mut _ as *mut _, &format!("rename {} to {}", i.from, i.name))?;
        }
        // moat's networks are IPv4-only: like Docker, no IPv6 (link-local) on them
        disable_ipv6(&i.name);
        let mut r = ifreq(&i.name)?;
        let mut hw: libc::sockaddr = sockaddr(Ipv4Addr::UNSPECIFIED);
        hw.sa_family = libc::ARPHRD_ETHER;
        for (k, p) in i.mac.split(':').enumerate().take(6) {
            hw.sa_data[k] = u8::from_str_radix(p, 16).unwrap_or(0) as libc::c_char;
        }
        r.ifr_ifru.ifru_hwaddr = hw;
        ioctl(&s, libc::SIOCSIFHWADDR, &mut r as *mut _ as *mut _, &format!("set MAC of {}", i.name))?;
        let mut r = ifreq(&i.name)?;
        r.ifr_ifru.ifru_addr = sockaddr(i.ip);
        ioctl(&s, libc::SIOCSIFADDR, &mut r as *mut _ as *mut _, &format!("set address of {}", i.name))?;
        let mask = if i.prefix == 0 { 0 } else { u32::MAX << (32 - i.prefix as u32) };
        let mut r = ifreq(&i.name)?;
        r.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
        ioctl(&s, libc::SIOCSIFNETMASK, &mut r as *mut _ as *mut _, &format!("set netmask of {}", i.name))?;
        up(&i.name)?;
        if let (Some(gw), false) = (i.gateway, routed) {
            // SAFETY: rtentry is plain data; all-zero is valid
            let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
            rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
            rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
            rt.rt_gateway = sockaddr(gw);
            rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
            ioctl(&s, libc::SIOCADDRT, &mut rt as *mut _ as *mut _, "add default route")?;
            routed = true;
        }
    }
    Ok(())
}
