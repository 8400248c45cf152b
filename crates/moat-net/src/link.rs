//! Host-side plumbing with `ip` (iproute2) and `iptables`: bridges, veth and
//! tap endpoints, masquerading, and isolation between switches.

use crate::{NetError, SwitchConfig};
use ipnet::Ipv4Net;
use std::io::Write;
use std::process::{Command, Stdio};

fn run(prog: &str, args: &[&str]) -> Result<String, NetError> {
    let o = Command::new(prog).args(args).output().map_err(|e| {
        NetError::Command(format!("{prog}: {e} (install {})", if prog == "ip" { "iproute2" } else { prog }))
    })?;
    if !o.status.success() {
        return Err(NetError::Command(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("failed")
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Runs `prog args` with `input` on its stdin; its output, whatever its
/// exit status (`package` names what installs `prog`).
pub(crate) fn piped(prog: &str, args: &[&str], input: &str, package: &str) -> Result<std::process::Output, NetError> {
    let mut c = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Command(format!("{prog}: {e} (install {package})")))?;
    if let Some(mut i) = c.stdin.take() {
        i.write_all(input.as_bytes()).map_err(|e| NetError::Command(format!("{prog} {}: {e}", args.join(" "))))?;
    }
    c.wait_with_output().map_err(|e| NetError::Command(format!("{prog} {}: {e}", args.join(" "))))
}

/// Runs several `ip` commands in one process (`ip -batch -`).
fn ip_batch(cmds: &[String]) -> Result<(), NetError> {
    let o = piped("ip", &["-batch", "-"], &cmds.join("\n"), "iproute2")?;
    if !o.status.success() {
        return Err(NetError::Command(format!(
            "ip: {}",
            String::from_utf8_lossy(&o.stderr).trim().replace('\n', "; ")
        )));
    }
    Ok(())
}

/// True when a network interface with this name exists.
pub fn exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// A route of the host's main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination (`0.0.0.0/0` for the default route).
    pub dest: Ipv4Net,
    /// Gateway, if the route has one.
    pub via: Option<std::net::Ipv4Addr>,
    /// The route as `ip route` prints it, for messages.
    pub text: String,
}

/// Parses `ip -4 route show` output.
pub fn parse_routes(out: &str) -> Vec<Route> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let d = w.next()?;
            let dest = if d == "default" {
                Ipv4Net::default()
            } else {
                d.parse::<Ipv4Net>().ok().or_else(|| format!("{d}/32").parse().ok())?
            };
            let words: Vec<&str> = l.split_whitespace().collect();
            let via = words.windows(2).find(|p| p[0] == "via").and_then(|p| p[1].parse().ok());
            Some(Route { dest, via, text: l.trim().to_string() })
        })
        .collect()
}

/// The host's IPv4 routes (main table).
pub fn routes() -> Vec<Route> {
    parse_routes(&run("ip", &["-4", "route", "show"]).unwrap_or_default())
}

/// The host's IPv4 routes other than the default route (to avoid subnets that clash with them).
pub fn host_routes() -> Vec<Ipv4Net> {
    routes().into_iter().map(|r| r.dest).filter(|d| d.prefix_len() > 0).collect()
}

fn iptables(args: &[&str]) -> Result<(), NetError> {
    run("iptables", &[&["-w"], args].concat()).map(|_| ())
}

/// Adds a rule unless it is there (`-C` check first).
fn ensure_rule(table: &str, chain: &str, insert: bool, rule: &[&str]) -> Result<(), NetError> {
    let check = [&["-t", table, "-C", chain], rule].concat();
    if iptables(&check).is_ok() {
        return Ok(());
    }
    let op = if insert { "-I" } else { "-A" };
    iptables(&[&["-t", table, op, chain], rule].concat())
}

fn delete_rule(table: &str, chain: &str, rule: &[&str]) {
    while iptables(&[&["-t", table, "-D", chain], rule].concat()).is_ok() {}
}

const ISO_CHAIN: &str = "MOAT-ISOLATION";

/// The rules of a switch: (table, chain, insert-at-top, rule).
fn rules(c: &SwitchConfig) -> Vec<(&'static str, &'static str, bool, Vec<String>)> {
    let b = c.bridge.clone();
    let net = c.subnet.to_string();
    let mut v = vec![
        // traffic between two moat switches is dropped
        (
            "filter",
            ISO_CHAIN,
            false,
            vec!["-i".into(), b.clone(), "!".into(), "-o".into(), b.clone(), "-j".into(), "DROP".into()],
        ),
    ];
    if c.internal {
        v.push((
            "filter",
            "FORWARD",
            true,
            vec!["-i".into(), b.clone(), "!".into(), "-o".into(), b.clone(), "-j".into(), "DROP".into()],
        ));
        v.push((
            "filter",
            "FORWARD",
            true,
            vec!["!".into(), "-i".into(), b.clone(), "-o".into(), b.clone(), "-j".into(), "DROP".into()],
        ));
    } else {
        v.push((
            "nat",
            "POSTROUTING",
            false,
            vec!["-s".into(), net, "!".into(), "-o".into(), b.clone(), "-j".into(), "MASQUERADE".into()],
        ));
        v.push(("filter", "FORWARD", false, vec!["-i".into(), b.clone(), "-j".into(), "ACCEPT".into()]));
        v.push(("filter", "FORWARD", false, vec!["-o".into(), b.clone(), "-j".into(), "ACCEPT".into()]));
    }
    if !c.owner.is_empty() {
        // the owning root's mark, so that its check can tell its rules
        for (_, _, _, r) in &mut v {
            let target = r.len() - 2;
            r.splice(target..target, ["-m".into(), "comment".into(), "--comment".into(), c.owner.clone()]);
        }
    }
    v
}

/// A host-wide lock held while bridges and iptables rules change: switches
/// of every moat root on this host share the isolation chain and the
/// `FORWARD` jump to it, so two roots (or two commands of one root) creating
/// switches at once must not race on "check, then add".
pub struct HostLock(#[allow(dead_code)] std::fs::File);

/// Where the host-wide network lock lives: a directory only root can
/// enter (`/run/lock` is world-writable, so any user could hold a lock
/// there or plant a link in its place). Its parent `/run/moat` also holds
/// `moat serve`'s socket, so it stays 0755.
pub const HOST_LOCK_DIR: &str = "/run/moat/lock";

/// Takes the host-wide network lock (blocking). The directory (and its
/// parent) are made root's, 0700 (0755), and must be real directories owned
/// by root and writable by nobody else; the lock file is opened without
/// following a link.
pub fn host_lock() -> Result<HostLock, NetError> {
    host_lock_in(std::path::Path::new(HOST_LOCK_DIR))
}

fn host_lock_in(dir: &std::path::Path) -> Result<HostLock, NetError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let path = dir.join("net.lock");
    let fail = |what: &str, e: std::io::Error| NetError::Command(format!("{what} {}: {e}", path.display()));
    for (d, mode) in [(dir.parent(), 0o755), (Some(dir), 0o700)] {
        let Some(d) = d else { continue };
        match std::fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail("create the directory of", e)),
        }
        let m = std::fs::symlink_metadata(d).map_err(|e| fail("stat the directory of", e))?;
        if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
            return Err(NetError::Command(format!(
                "refusing the network lock: {} must be a directory owned by root and writable by root only",
                d.display()
            )));
        }
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::CLOEXEC.bits() as i32)
        .open(&path)
        .map_err(|e| fail("open", e))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| fail("lock", e.into()))?;
    Ok(HostLock(f))
}

/// Creates the bridge (with the gateway address) and the switch's rules if
/// the bridge is missing (first use, or after a reboot). An existing bridge
/// means the rules were made with it: starting a container then costs no
/// `iptables` call.
pub fn ensure_switch(c: &SwitchConfig) -> Result<(), NetError> {
    if exists(&c.bridge) {
        return Ok(());
    }
    let lock = host_lock()?;
    ensure_switch_locked(&lock, c)
}

/// [`ensure_switch`] for a caller that holds the host lock.
pub fn ensure_switch_locked(_lock: &HostLock, c: &SwitchConfig) -> Result<(), NetError> {
    if exists(&c.bridge) {
        return Ok(());
    }
    {
        ip_batch(&[
            format!("link add name {} type bridge", c.bridge),
            format!("addr add {}/{} dev {}", c.gateway, c.subnet.prefix_len(), c.bridge),
        ])?;
        if let (Some(s6), Some(g6)) = (c.subnet6, c.gateway6) {
            // a dual-stack switch: IPv6 on the bridge, its address without DAD
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", c.bridge), "0")
                .map_err(|e| NetError::Command(format!("enable IPv6 on {}: {e}", c.bridge)))?;
            ip_batch(&[format!("addr add {g6}/{} dev {} nodad", s6.prefix_len(), c.bridge)])?;
        }
        let mut up = vec![format!("link set {} up", c.bridge)];
        if !c.owner.is_empty() {
            up.push(format!("link set {} alias {}", c.bridge, c.owner));
        }
        ip_batch(&up)?;
    }
    // the isolation chain, jumped to for traffic between moat bridges
    if iptables(&["-t", "filter", "-L", ISO_CHAIN, "-n"]).is_err() {
        iptables(&["-t", "filter", "-N", ISO_CHAIN])?;
    }
    ensure_rule("filter", "FORWARD", true, &["-i", "mtb+", "-o", "mtb+", "-j", ISO_CHAIN])?;
    for (t, ch, ins, r) in rules(c) {
        let r: Vec<&str> = r.iter().map(String::as_str).collect();
        ensure_rule(t, ch, ins, &r)?;
    }
    if !c.internal {
        // forwarding only when a switch needs it
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| NetError::Command(format!("enable ip_forward: {e}")))?;
    }
    Ok(())
}

/// The switch's rules that are not in place (a create cut short between
/// its bridge and its rules), as `iptables -S`-style lines.
pub fn missing_rules(c: &SwitchConfig) -> Vec<String> {
    let mut out = Vec::new();
    for (t, ch, _, r) in rules(c) {
        let r: Vec<&str> = r.iter().map(String::as_str).collect();
        if iptables(&[&["-t", t, "-C", ch], r.as_slice()].concat()).is_err() {
            out.push(format!("-t {t} -A {ch} {}", r.join(" ")));
        }
    }
    out
}

/// Adds the switch's missing rules (under the host lock).
pub fn ensure_rules(c: &SwitchConfig) -> Result<(), NetError> {
    let _lock = host_lock()?;
    for (t, ch, ins, r) in rules(c) {
        let r: Vec<&str> = r.iter().map(String::as_str).collect();
        ensure_rule(t, ch, ins, &r)?;
    }
    Ok(())
}

/// Bridges (`mtb…`) whose alias is `owner`: the bridges a root made.
pub fn bridges_owned_by(owner: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else { return Vec::new() };
    let mut out: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("mtb"))
        .filter(|n| std::fs::read_to_string(format!("/sys/class/net/{n}/ifalias")).is_ok_and(|a| a.trim() == owner))
        .collect();
    out.sort();
    out
}

/// Links (`mt…`) plugged into `bridge`.
pub fn ports_of(bridge: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif")) else { return Vec::new() };
    let mut out: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    out.sort();
    out
}

/// The moat bridge (`mtb` and 8 hex digits) a rule line names, if any.
fn bridge_in_rule(line: &str) -> Option<&str> {
    line.split_whitespace()
        .find(|w| w.len() == 11 && w.starts_with("mtb") && w[3..].bytes().all(|b| b.is_ascii_hexdigit()))
}

/// iptables rules carrying `owner`'s mark whose bridge is not one of
/// `bridges` (the owner's recorded switches): left by a switch removal or
/// a root reset cut short. Returned as `(table, "-A CHAIN ...")`.
pub fn stray_rules(
    _lock: &HostLock,
    owner: &str,
    bridges: &std::collections::HashSet<&str>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for t in ["filter", "nat"] {
        let Ok(s) = run("iptables", &["-w", "-t", t, "-S"]) else { continue };
        for l in s.lines().filter(|l| l.starts_with("-A ")) {
            let words = rule_words(l);
            let ours = words.windows(2).any(|w| w[0] == "--comment" && w[1] == owner);
            if ours && bridge_in_rule(l).is_some_and(|b| !bridges.contains(&b)) {
                out.push((t, words.join(" ")));
            }
        }
    }
    out
}

/// Deletes one rule given as `iptables -S` prints it (`-A CHAIN ...`).
pub fn delete_rule_line(_lock: &HostLock, table: &str, line: &str) -> Result<(), NetError> {
    let rest = line.strip_prefix("-A ").ok_or_else(|| NetError::Invalid(format!("not a rule: {line}")))?;
    iptables(&[&["-t", table, "-D"], rule_words(rest).as_slice()].concat())
}

/// The words of a rule as `iptables -S` prints it (iptables-nft quotes
/// comments; moat's own have no spaces).
fn rule_words(line: &str) -> Vec<&str> {
    line.split_whitespace().map(|w| w.trim_matches('"')).collect()
}

/// Deletes the bridge and the switch's rules.
pub fn remove_switch(c: &SwitchConfig) -> Result<(), NetError> {
    let _lock = host_lock()?;
    for (t, ch, _, r) in rules(c) {
        let r: Vec<&str> = r.iter().map(String::as_str).collect();
        delete_rule(t, ch, &r);
    }
    if exists(&c.bridge) {
        run("ip", &["link", "del", &c.bridge])?;
    }
    Ok(())
}

/// Creates a veth pair, moves `peer` into the network namespace of `pid`, and
/// plugs `host` into `bridge`.
pub fn add_veth(host: &str, peer: &str, pid: u32, bridge: &str) -> Result<(), NetError> {
    del_link(host);
    // creating the peer directly in the target namespace avoids a
    // `link set netns` move, which costs ~15 ms of RCU synchronisation
    ip_batch(&[
        format!("link add {host} type veth peer name {peer} netns {pid}"),
        format!("link set {host} master {bridge} up"),
    ])
}

/// Creates a tap device plugged into `bridge` (for a VM's virtio-net).
pub fn add_tap(tap: &str, bridge: &str) -> Result<(), NetError> {
    del_link(tap);
    ip_batch(&[
        format!("tuntap add dev {tap} mode tap"),
        format!("link set {tap} master {bridge}"),
        format!("link set {tap} up"),
    ])
}

/// Deletes an interface if it exists.
pub fn del_link(name: &str) {
    if exists(name) {
        let _ = run("ip", &["link", "del", name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rules_are_matched_to_their_bridge_by_exact_name() {
        assert_eq!(bridge_in_rule("-A FORWARD -i mtb0123abcd -j ACCEPT"), Some("mtb0123abcd"));
        assert_eq!(
            bridge_in_rule("-A POSTROUTING -s 10.88.0.0/16 ! -o mtbdeadbeef -j MASQUERADE"),
            Some("mtbdeadbeef")
        );
        // the jump every switch shares names no bridge
        assert_eq!(bridge_in_rule("-A FORWARD -i mtb+ -o mtb+ -j MOAT-ISOLATION"), None);
        assert_eq!(bridge_in_rule("-A FORWARD -i mtb0123abcdx -j ACCEPT"), None);
        assert_eq!(bridge_in_rule("-A FORWARD -i docker0 -j ACCEPT"), None);
    }

    /// The lock file is never created through a planted link, and a
    /// directory others can write to is refused; a clean one works.
    #[test]
    fn host_lock_follows_no_link_and_wants_a_private_directory() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("moat");
        assert!(host_lock_in(&dir).is_ok(), "the positive control");
        std::fs::remove_file(dir.join("net.lock")).expect("rm");
        let target = t.path().join("target");
        std::os::unix::fs::symlink(&target, dir.join("net.lock")).expect("plant");
        assert!(host_lock_in(&dir).is_err());
        assert!(!target.exists(), "nothing created through the link");
        std::fs::remove_file(dir.join("net.lock")).expect("rm");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(host_lock_in(&dir).is_err_and(|e| e.to_string().contains("writable by root only")));
    }
}
