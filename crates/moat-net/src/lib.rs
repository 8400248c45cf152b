//! Virtual switches ("switches", like Hyper-V virtual switches or docker
//! bridge networks): a Linux bridge per switch, veth (process isolation) or
//! tap (VM isolation) endpoints, IPv4 address management, masquerading for
//! outbound traffic, isolation between switches, and TCP/UDP port proxies.
//! See `docs/networking.md`.

pub mod link;
pub mod netns;
pub mod proxy;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Invalid user input.
    #[error("{0}")]
    Invalid(String),
    /// A host command (`ip`, `iptables`) failed.
    #[error("{0}")]
    Command(String),
    /// No free address.
    #[error("no free address left in {0}")]
    Exhausted(String),
}

/// A switch's configuration, stored as JSON in the switches table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// No NAT, no forwarding off the switch.
    pub internal: bool,
    /// Linux bridge name (≤ 15 chars).
    pub bridge: String,
    /// Labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Addresses are handed out from this range of the subnet only (`--ip-range`).
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
    /// Addresses never handed out (`--aux-address NAME=IP`).
    #[serde(default)]
    pub aux_addresses: std::collections::BTreeMap<String, Ipv4Addr>,
    /// IPAM options as given (`--ipam-opt`; the default IPAM has none of its own).
    #[serde(default)]
    pub ipam_options: std::collections::BTreeMap<String, String>,
    /// IPv6 subnet of a dual-stack switch (`--ipv6`).
    #[serde(default)]
    pub subnet6: Option<ipnet::Ipv6Net>,
    /// Its gateway (the bridge's IPv6 address).
    #[serde(default)]
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// The owning root's mark ([`owner_mark`]), set as the bridge's alias so
    /// that a bridge left behind by a root can be told from another root's.
    #[serde(default)]
    pub owner: String,
}

/// The mark a root puts on its bridges (their `ifalias`): `moat:` and 16
/// hex digits of the SHA-256 of the root's path.
pub fn owner_mark(root: &std::path::Path) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("moat:{hex}")
}

/// A container's place on a switch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    /// Switch ID.
    pub switch_id: String,
    /// Switch name.
    pub switch: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Gateway (None on internal switches).
    pub gateway: Option<Ipv4Addr>,
    /// MAC address.
    pub mac: String,
    /// Bridge to attach to.
    pub bridge: String,
    /// More names the container answers to on this switch (`network connect --alias`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// IPv6 address on a dual-stack switch.
    #[serde(default)]
    pub ip6: Option<std::net::Ipv6Addr>,
    /// Its prefix length.
    #[serde(default)]
    pub prefix6: u8,
    /// IPv6 gateway (None on internal switches).
    #[serde(default)]
    pub gateway6: Option<std::net::Ipv6Addr>,
}

/// The default switch's name (docker's `bridge` and `default` are aliases).
pub const DEFAULT_SWITCH: &str = "moat";
/// The default switch's subnet.
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";

/// Bridge name for switch `id`.
pub fn bridge_name(id: &str) -> String {
    format!("mtb{}", &id[..8])
}

/// Host-side interface name of container `cid`'s endpoint number `n`
/// (`v` veth, `t` tap).
pub fn if_name(kind: char, cid: &str, n: usize) -> String {
    format!("mt{kind}{}{n}", cid.get(..8).unwrap_or(cid))
}

/// A MAC address derived from the IP, like docker (`02:42:` + the address).
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Parses and validates `--mac-address`.
pub fn parse_mac(s: &str) -> Result<String, NetError> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
    let first = parts.first().and_then(|p| u8::from_str_radix(p, 16).ok()).unwrap_or(1);
    if !ok || first & 1 == 1 {
        return Err(NetError::Invalid(format!("invalid MAC address {s:?}: use six hex pairs of a unicast address")));
    }
    Ok(s.to_ascii_lowercase())
}

/// The first free host address of `subnet` (not network, gateway or broadcast).
pub fn first_free(subnet: &Ipv4Net, gateway: Ipv4Addr, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    subnet.hosts().find(|a| *a != gateway && !used.contains(a))
}

/// The first address of `cfg`'s range (or subnet) that is neither the
/// gateway, nor reserved, nor in `used`.
pub fn first_free_in(cfg: &SwitchConfig, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let range = cfg.ip_range.unwrap_or(cfg.subnet);
    range.hosts().find(|a| {
        cfg.subnet.contains(a)
            && *a != cfg.subnet.network()
            && *a != cfg.subnet.broadcast()
            && *a != cfg.gateway
            && !used.contains(a)
            && !cfg.aux_addresses.values().any(|r| r == a)
    })
}

/// The IPv6 address that goes with IPv4 address `ip` on a dual-stack
/// switch: the IPv6 subnet's prefix with the IPv4 address's host part in its
/// low bits (unique as the IPv4 address is; the gateways' host part is the
/// same, so neither ever collides).
pub fn ip6_for(cfg: &SwitchConfig, ip: Ipv4Addr) -> Option<std::net::Ipv6Addr> {
    let s6 = cfg.subnet6?;
    let host = u32::from(ip) & !u32::from(cfg.subnet.netmask());
    Some(std::net::Ipv6Addr::from(u128::from(s6.network()) | u128::from(host)))
}

/// The IPv6 gateway of a subnet: its first host (`…::1`).
pub fn gateway6_of(s: &ipnet::Ipv6Net) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::from(u128::from(s.network()) | 1)
}

/// A unique-local /64 for switch `id` (`fdXX:XXXX:XXXX:XXXX::/64`, the
/// global ID and subnet from its ID's first 56 bits), as RFC 4193 suggests
/// for a network without an assigned prefix.
pub fn ula_subnet(id: &str) -> ipnet::Ipv6Net {
    let bits = u64::from_str_radix(id.get(..14).unwrap_or("0"), 16).unwrap_or(0);
    let prefix = (0xfdu128 << 120) | (u128::from(bits) << 64);
    ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(prefix), 64).unwrap_or_default()
}

/// Checks a requested address against `cfg` (anywhere in the subnet, as
/// Docker allows, but not a reserved one).
pub fn check_ip_in(cfg: &SwitchConfig, ip: Ipv4Addr, used: &[Ipv4Addr]) -> Result<(), NetError> {
    if let Some((name, _)) = cfg.aux_addresses.iter().find(|(_, a)| **a == ip) {
        return Err(NetError::Invalid(format!("address {ip} is reserved on this switch ({name})")));
    }
    check_ip(&cfg.subnet, cfg.gateway, ip, used)
}

/// Checks a requested address.
pub fn check_ip(subnet: &Ipv4Net, gateway: Ipv4Addr, ip: Ipv4Addr, used: &[Ipv4Addr]) -> Result<(), NetError> {
    if !subnet.contains(&ip) || ip == subnet.network() || ip == subnet.broadcast() {
        return Err(NetError::Invalid(format!("address {ip} is not a host address of {subnet}")));
    }
    if ip == gateway || used.contains(&ip) {
        return Err(NetError::Invalid(format!("address {ip} is already in use on this switch")));
    }
    Ok(())
}

/// A `-p [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]` mapping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortMap {
    /// Host address to listen on.
    pub host_ip: Ipv4Addr,
    /// Host port (0 = pick one).
    pub host_port: u16,
    /// Container port.
    pub ctr_port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
}

/// `N` or `N-M` (inclusive, `N <= M`, no port 0).
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b) = (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?);
    (a != 0 && a <= b).then_some((a, b))
}

/// Parses docker's `-p` syntax, ranges included (`8000-8002:80-82`, or
/// `80-82` for ports picked on the host): one mapping per port.
pub fn parse_publish(s: &str) -> Result<Vec<PortMap>, NetError> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((a, p @ ("tcp" | "udp"))) => (a, p),
        Some(_) => return Err(bad_publish(s)),
        None => (s, "tcp"),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (host_ip, host, ctr) = match parts.as_slice() {
        [c] => ("", "", *c),
        [h, c] => ("", *h, *c),
        [ip, h, c] => (*ip, *h, *c),
        _ => return Err(bad_publish(s)),
    };
    mappings(s, host_ip, host, ctr, proto)
}

/// One binding as Docker's API gives it (`PortBindings`: `"80/tcp": [{HostIp,
/// HostPort}]`), each part empty when unset; the same rules as `-p`.
pub fn port_binding(host_ip: &str, host_port: &str, container: &str) -> Result<Vec<PortMap>, NetError> {
    let label = format!("{host_ip}:{host_port}:{container}");
    let (ctr, proto) = match container.split_once('/') {
        Some((c, p @ ("tcp" | "udp"))) => (c, p),
        Some(_) => return Err(bad_publish(&label)),
        None => (container, "tcp"),
    };
    mappings(&label, host_ip, host_port, ctr, proto)
}

fn bad_publish(s: &str) -> NetError {
    NetError::Invalid(format!(
        "invalid port mapping {s:?}: use [HOSTIP:][HOSTPORT[-END]:]CONTAINERPORT[-END][/tcp|udp]"
    ))
}

fn mappings(s: &str, host_ip: &str, host: &str, ctr: &str, proto: &str) -> Result<Vec<PortMap>, NetError> {
    let bad = || bad_publish(s);
    let host_ip = if host_ip.is_empty() { Ipv4Addr::UNSPECIFIED } else { host_ip.parse().map_err(|_| bad())? };
    let (c0, c1) = parse_port_range(ctr).ok_or_else(bad)?;
    let host = if host.is_empty() { None } else { Some(parse_port_range(host).ok_or_else(bad)?) };
    let n = c1 - c0;
    match host {
        Some((h0, h1)) if h1 - h0 != n => Err(NetError::Invalid(format!(
            "invalid port mapping {s:?}: the host range has {} ports and the container range {}",
            h1 - h0 + 1,
            n + 1
        ))),
        _ => Ok((0..=n)
            .map(|i| PortMap {
                host_ip,
                host_port: host.map(|(h0, _)| h0 + i).unwrap_or(0),
                ctr_port: c0 + i,
                proto: proto.to_string(),
            })
            .collect()),
    }
}

/// Ranges no switch may use: this host, link-local, multicast, reserved.
pub const RESERVED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
];

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Why `subnet` cannot be a switch on this host (`routes` from
/// [`link::routes`]): a reserved range, a subnet that contains the default
/// gateway, or one that overlaps a route of the host (its own network, a VPN,
/// another root's switch). `None` when it is free.
pub fn host_clash(subnet: &Ipv4Net, routes: &[link::Route]) -> Option<String> {
    for (r, what) in RESERVED {
        if let Ok(n) = r.parse::<Ipv4Net>() {
            if overlaps(subnet, &n) {
                return Some(format!("subnet {subnet} overlaps {n}, the {what} range"));
            }
        }
    }
    for r in routes {
        if r.dest.prefix_len() == 0 {
            if let Some(gw) = r.via.filter(|g| subnet.contains(g)) {
                return Some(format!("subnet {subnet} contains the host's default gateway {gw}"));
            }
        } else if overlaps(subnet, &r.dest) {
            return Some(format!("subnet {subnet} overlaps the host's route \"{}\"", r.text));
        }
    }
    None
}

/// Picks a /24 for a new switch from 10.89.0.0/16 that no switch and nothing
/// on the host uses.
pub fn pick_subnet(taken: &[Ipv4Net], routes: &[link::Route]) -> Result<Ipv4Net, NetError> {
    for n in 0..=255u8 {
        let cand: Ipv4Net = format!("10.89.{n}.0/24").parse().map_err(|_| NetError::Invalid("subnet".into()))?;
        if !taken.iter().any(|t| overlaps(t, &cand)) && host_clash(&cand, routes).is_none() {
            return Ok(cand);
        }
    }
    Err(NetError::Exhausted("10.89.0.0/16".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_syntax() -> Result<(), NetError> {
        assert_eq!(
            parse_publish("127.0.0.1:18080:80")?[0],
            PortMap { host_ip: Ipv4Addr::LOCALHOST, host_port: 18080, ctr_port: 80, proto: "tcp".into() }
        );
        assert_eq!(parse_publish("53:53/udp")?[0].proto, "udp");
        assert_eq!(parse_publish("80")?[0].host_port, 0);
        let r = parse_publish("8000-8002:80-82/udp")?;
        assert_eq!(
            r.iter().map(|p| (p.host_port, p.ctr_port)).collect::<Vec<_>>(),
            vec![(8000, 80), (8001, 81), (8002, 82)]
        );
        assert_eq!(
            parse_publish("80-81")?.iter().map(|p| (p.host_port, p.ctr_port)).collect::<Vec<_>>(),
            vec![(0, 80), (0, 81)]
        );
        assert!(
            parse_publish("8000-8001:80").is_err() && parse_publish("82-80").is_err() && parse_publish("0:80").is_err()
        );
        assert!(parse_publish("x:80").is_err());
        assert!(parse_publish("80/sctp").is_err());
        Ok(())
    }

    #[test]
    fn host_clashes() {
        let routes = link::parse_routes(
            "default via 172.16.0.1 dev eth0\n172.16.0.0/24 dev eth0 proto kernel scope link src 172.16.0.5\n10.89.0.0/24 dev mtb1234 proto kernel\n",
        );
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap_or_default();
        assert!(host_clash(&n("127.0.0.0/24"), &routes).is_some_and(|m| m.contains("loopback")));
        assert!(host_clash(&n("224.1.0.0/24"), &routes).is_some_and(|m| m.contains("multicast")));
        assert!(host_clash(&n("172.16.0.0/16"), &routes).is_some_and(|m| m.contains("default gateway")));
        assert!(host_clash(&n("172.16.0.128/25"), &routes).is_some_and(|m| m.contains("eth0")));
        assert!(host_clash(&n("10.89.0.128/25"), &routes).is_some_and(|m| m.contains("mtb1234")));
        assert_eq!(host_clash(&n("10.90.0.0/24"), &routes), None);
        assert_eq!(pick_subnet(&[], &routes).ok(), Some(n("10.89.1.0/24")), "the routed /24 is skipped");
        assert_eq!(pick_subnet(&[n("10.89.1.0/24")], &routes).ok(), Some(n("10.89.2.0/24")));
    }

    #[test]
    fn addresses() -> Result<(), NetError> {
        let n: Ipv4Net = "10.88.0.0/16".parse().map_err(|_| NetError::Invalid("x".into()))?;
        let gw = Ipv4Addr::new(10, 88, 0, 1);
        assert_eq!(first_free(&n, gw, &[]), Some(Ipv4Addr::new(10, 88, 0, 2)));
        assert_eq!(first_free(&n, gw, &[Ipv4Addr::new(10, 88, 0, 2)]), Some(Ipv4Addr::new(10, 88, 0, 3)));
        assert!(check_ip(&n, gw, gw, &[]).is_err());
        assert!(check_ip(&n, gw, Ipv4Addr::new(10, 99, 0, 2), &[]).is_err());
        assert_eq!(mac_for(Ipv4Addr::new(10, 88, 0, 2)), "02:42:0a:58:00:02");
        assert!(parse_mac("03:00:00:00:00:01").is_err());
        assert!(parse_mac("02:00:00:00:00:01").is_ok());
        assert_eq!(if_name('v', &"ab".repeat(32), 0).len(), 12);
        assert_eq!(bridge_name(&"cd".repeat(32)), "mtbcdcdcdcd");
        Ok(())
    }
}
