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
    let (mut routed, mut routed6) = (false, false);
    for i in ifaces {
        if i.from != i.name {
            let mut r = ifreq(&i.from)?;
            r.ifr_ifru.ifru_newname = name_bytes(&i.name)?;
            ioctl(&s, libc::SIOCSIFNAME, &mut r as *mut _ as *mut _, &format!("rename {} to {}", i.from, i.name))?;
        }
        // like Docker, no IPv6 (not even link-local) on an IPv4-only switch
        if i.ip6.is_none() {
            disable_ipv6(&i.name);
        }
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
        if let Some(ip6) = i.ip6 {
            let gw6 = i.gateway6.filter(|_| !routed6);
            add_ip6(&i.name, ip6, i.prefix6, gw6)?;
            routed6 |= gw6.is_some();
        }
    }
    Ok(())
}

/// The kernel's `struct in6_rtmsg` (`linux/ipv6_route.h`; libc's keeps its
/// fields private).
#[repr(C)]
struct In6Rtmsg {
    dst: [u8; 16],
    src: [u8; 16],
    gateway: [u8; 16],
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

fn socket6() -> Result<Sock, RuntimeError> {
    // SAFETY: a plain datagram socket for IPv6 ioctls
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(RuntimeError::Sys("network: IPv6 socket".into(), nix::Error::last()));
    }
    Ok(Sock(fd))
}

/// Gives `name` an IPv6 address (usable at once: no duplicate address
/// detection on a switch moat numbers itself) and, with `gateway`, the
/// IPv6 default route.
fn add_ip6(
    name: &str,
    ip: std::net::Ipv6Addr,
    prefix: u8,
    gateway: Option<std::net::Ipv6Addr>,
) -> Result<(), RuntimeError> {
    // best effort: a read-only /proc/sys leaves the namespace's defaults,
    // which the container's start set the same way
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "0");
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_dad"), "0");
    let cname =
        std::ffi::CString::new(name).map_err(|_| RuntimeError::Invalid(format!("bad interface name {name:?}")))?;
    // SAFETY: a NUL-terminated name
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(RuntimeError::Sys(format!("network: index of {name}"), nix::Error::last()));
    }
    let s6 = socket6()?;
    // SAFETY: in6_ifreq is plain data; all-zero is valid
    let mut r: libc::in6_ifreq = unsafe { std::mem::zeroed() };
    r.ifr6_addr = libc::in6_addr { s6_addr: ip.octets() };
    r.ifr6_prefixlen = u32::from(prefix);
    r.ifr6_ifindex = index as libc::c_int;
    ioctl(&s6, libc::SIOCSIFADDR, &mut r as *mut _ as *mut _, &format!("set IPv6 address of {name}"))?;
    wait_usable(ip);
    if let Some(gw) = gateway {
        let mut rt = In6Rtmsg {
            dst: [0; 16],
            src: [0; 16],
            gateway: gw.octets(),
            kind: 0,
            dst_len: 0,
            src_len: 0,
            metric: 1,
            info: 0,
            flags: libc::RTF_UP as u32 | libc::RTF_GATEWAY as u32,
            ifindex: index as libc::c_int,
        };
        ioctl(&s6, libc::SIOCADDRT, &mut rt as *mut _ as *mut _, "add IPv6 default route")?;
    }
    Ok(())
}

/// Waits (at most 3 s) until `ip` is no longer tentative (where duplicate
/// address detection could not be turned off first).
fn wait_usable(ip: std::net::Ipv6Addr) {
    let hex: String = ip.octets().iter().map(|b| format!("{b:02x}")).collect();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(3) {
        let table = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
        let tentative = table.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&hex.as_str())
                && f.get(4).and_then(|x| u32::from_str_radix(x, 16).ok()).is_some_and(|x| x & 0x40 != 0)
        });
        if !tentative {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
