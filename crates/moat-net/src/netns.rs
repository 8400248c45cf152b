//! A network namespace someone else made (CNI's, for a Kubernetes pod)
//! carried into a utility VM, the way Kata's `tc-redirect` model does it:
//! beside each interface of the namespace that has an IPv4 address, a tap
//! in the same namespace, and two `tc` mirred filters that hand every frame
//! arriving on one to the other. The VM's NIC (on that tap) takes the
//! interface's MAC, address, prefix and default gateway, so the pod's
//! address works unchanged; the namespace's own stack sees no traffic.
//! Commands run through `nsenter --net=PATH` (util-linux) with iproute2's
//! `ip` and `tc`.

use crate::NetError;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// One interface of the namespace, as the VM's NIC takes it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedNic {
    /// The tap beside it (in the namespace).
    pub tap: String,
    /// The interface's name in the namespace (`eth0`).
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The namespace's default gateway, on the first interface that routes it.
    pub gateway: Option<Ipv4Addr>,
    /// Its MAC address.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
}

/// A namespace whose interfaces were redirected to taps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    /// The namespace file (`/var/run/netns/cni-…`).
    pub netns: PathBuf,
    /// Its interfaces, in the namespace's order.
    pub nics: Vec<CarriedNic>,
}

#[derive(Deserialize)]
struct IpAddr {
    ifname: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    local: String,
    prefixlen: u8,
}

#[derive(Deserialize)]
struct IpRoute {
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dev: String,
}

/// The tap name beside the namespace's interface number `n`.
pub fn tap_name(n: usize) -> String {
    format!("moattap{n}")
}

fn nsenter(netns: &Path, prog: &str, args: &[&str], input: Option<&str>) -> Result<String, NetError> {
    let net = format!("--net={}", netns.display());
    let all = [&[net.as_str(), "--", prog], args].concat();
    let o = crate::link::piped("nsenter", &all, input.unwrap_or_default(), "util-linux")?;
    if !o.status.success() {
        return Err(NetError::Command(format!(
            "{prog} {} in {}: {}",
            args.join(" "),
            netns.display(),
            String::from_utf8_lossy(&o.stderr).trim().replace('\n', "; ")
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The interfaces to carry, from `ip -j addr` and `ip -j route show
/// default` of the namespace: every non-loopback one with an IPv4 address
/// (its first), the default gateway on the one that routes it.
pub fn parse(addrs: &str, routes: &str) -> Result<Vec<CarriedNic>, NetError> {
    let addrs: Vec<IpAddr> =
        serde_json::from_str(addrs).map_err(|e| NetError::Command(format!("ip -j addr: unexpected output: {e}")))?;
    let routes: Vec<IpRoute> =
        serde_json::from_str(routes).map_err(|e| NetError::Command(format!("ip -j route: unexpected output: {e}")))?;
    let mut out = Vec::new();
    for a in addrs.iter().filter(|a| a.link_type != "loopback" && !a.ifname.starts_with("moattap")) {
        let Some(v4) = a.addr_info.iter().find(|i| i.family == "inet") else { continue };
        let ip: Ipv4Addr =
            v4.local.parse().map_err(|_| NetError::Command(format!("bad address {:?} on {}", v4.local, a.ifname)))?;
        let gateway = routes.iter().find(|r| r.dev == a.ifname).and_then(|r| r.gateway.as_deref()?.parse().ok());
        out.push(CarriedNic {
            tap: tap_name(out.len()),
            name: a.ifname.clone(),
            ip,
            prefix: v4.prefixlen,
            gateway,
            mac: a.address.clone(),
            mtu: if a.mtu == 0 { 1500 } else { a.mtu },
        });
    }
    Ok(out)
}

/// The `ip` and `tc` batches that put a tap beside each interface and
/// redirect each one's ingress to the other.
pub fn commands(nics: &[CarriedNic]) -> (Vec<String>, Vec<String>) {
    let mut ip = Vec::new();
    let mut tc = Vec::new();
    for n in nics {
        ip.push(format!("tuntap add dev {} mode tap", n.tap));
        ip.push(format!("link set {} mtu {} up", n.tap, n.mtu));
        for (from, to) in [(&n.name, &n.tap), (&n.tap, &n.name)] {
            tc.push(format!("qdisc add dev {from} handle ffff: ingress"));
            tc.push(format!(
                "filter add dev {from} parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev {to}"
            ));
        }
    }
    (ip, tc)
}

/// Reads the namespace at `netns`, makes a tap beside each interface with
/// an IPv4 address and redirects between them. A namespace with no such
/// interface is refused: a VM there would have no network.
pub fn carry(netns: &Path) -> Result<Carried, NetError> {
    let addrs = nsenter(netns, "ip", &["-j", "addr", "show"], None)?;
    let routes = nsenter(netns, "ip", &["-j", "-4", "route", "show", "default"], None)?;
    let nics = parse(&addrs, &routes)?;
    if nics.is_empty() {
        return Err(NetError::Command(format!(
            "the network namespace {} has no IPv4 interface to carry",
            netns.display()
        )));
    }
    let (ip, tc) = commands(&nics);
    let c = Carried { netns: netns.to_path_buf(), nics };
    let done = nsenter(netns, "ip", &["-batch", "-"], Some(&ip.join("\n")))
        .and_then(|_| nsenter(netns, "tc", &["-batch", "-"], Some(&tc.join("\n"))));
    if let Err(e) = done {
        c.undo();
        return Err(e);
    }
    Ok(c)
}

impl Carried {
    /// Removes the taps and the filters (a namespace torn down by CNI loses
    /// them anyway).
    pub fn undo(&self) {
        let mut ip = Vec::new();
        let mut tc = Vec::new();
        for n in &self.nics {
            tc.push(format!("qdisc del dev {} handle ffff: ingress", n.name));
            ip.push(format!("link del {}", n.tap));
        }
        let _ = nsenter(&self.netns, "tc", &["-force", "-batch", "-"], Some(&tc.join("\n")));
        let _ = nsenter(&self.netns, "ip", &["-force", "-batch", "-"], Some(&ip.join("\n")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRS: &str = r#"[
      {"ifindex":1,"ifname":"lo","mtu":65536,"link_type":"loopback","address":"00:00:00:00:00:00",
       "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
      {"ifindex":3,"ifname":"eth0","mtu":1450,"link_type":"ether","address":"0a:58:0a:f4:00:05",
       "addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64},{"family":"inet","local":"10.244.0.5","prefixlen":24}]},
      {"ifindex":4,"ifname":"eth1","mtu":1500,"link_type":"ether","address":"0a:58:0a:f5:00:07",
       "addr_info":[{"family":"inet","local":"10.245.0.7","prefixlen":16}]},
      {"ifindex":5,"ifname":"moattap0","mtu":1500,"link_type":"ether","address":"aa:aa:aa:aa:aa:aa","addr_info":[]},
      {"ifindex":6,"ifname":"dummy0","mtu":1500,"link_type":"ether","address":"bb:bb:bb:bb:bb:bb","addr_info":[]}
    ]"#;

    #[test]
    fn carries_each_ipv4_interface_with_its_gateway() {
        let routes = r#"[{"dst":"default","gateway":"10.244.0.1","dev":"eth0","flags":[]}]"#;
        let nics = parse(ADDRS, routes).unwrap();
        assert_eq!(
            nics,
            vec![
                CarriedNic {
                    tap: "moattap0".into(),
                    name: "eth0".into(),
                    ip: "10.244.0.5".parse().unwrap(),
                    prefix: 24,
                    gateway: Some("10.244.0.1".parse().unwrap()),
                    mac: "0a:58:0a:f4:00:05".into(),
                    mtu: 1450,
                },
                CarriedNic {
                    tap: "moattap1".into(),
                    name: "eth1".into(),
                    ip: "10.245.0.7".parse().unwrap(),
                    prefix: 16,
                    gateway: None,
                    mac: "0a:58:0a:f5:00:07".into(),
                    mtu: 1500,
                },
            ]
        );
        let (ip, tc) = commands(&nics[..1]);
        assert_eq!(ip, vec!["tuntap add dev moattap0 mode tap", "link set moattap0 mtu 1450 up"]);
        assert_eq!(
            tc,
            vec![
                "qdisc add dev eth0 handle ffff: ingress",
                "filter add dev eth0 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev moattap0",
                "qdisc add dev moattap0 handle ffff: ingress",
                "filter add dev moattap0 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev eth0",
            ]
        );
    }

    #[test]
    fn garbage_from_ip_is_an_error_not_a_panic() {
        assert!(parse("not json", "[]").is_err());
        assert!(parse("[]", "{").is_err());
        let bad =
            r#"[{"ifname":"eth0","link_type":"ether","addr_info":[{"family":"inet","local":"x","prefixlen":8}]}]"#;
        assert!(parse(bad, "[]").is_err());
        assert_eq!(parse("[]", "[]").unwrap(), vec![]);
    }
}
