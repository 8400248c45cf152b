//! Switches in the engine: records, IPAM through the metadata store, the
//! default switch, and `/etc/hosts` name resolution between containers.

use crate::filter::{any, label_matches, Filters};
use crate::{Container, Engine, EngineError};
use chrono::Utc;
pub use ipnet::Ipv4Net;
use moat_net::{Endpoint, SwitchConfig, DEFAULT_SWITCH};
use moat_store::SwitchRow;
use std::net::Ipv4Addr;

/// A switch.
#[derive(Debug, Clone)]
pub struct Switch {
    /// 64-hex ID.
    pub id: String,
    /// Name (any case, spaces allowed).
    pub name: String,
    /// Creation time.
    pub created: chrono::DateTime<Utc>,
    /// Configuration.
    pub config: SwitchConfig,
}

fn net(e: moat_net::NetError) -> EngineError {
    e.into()
}

/// Refuses, by name, what `network create` may ask and a switch cannot do
/// (driver options, IPv6): never accepted and ignored.
pub fn check_unsupported(opts: &[String]) -> Result<(), EngineError> {
    if let Some(o) = opts.first() {
        return Err(EngineError::Unsupported(format!(
            "network driver option {o:?}: network driver options (--opt) are not supported yet"
        )));
    }
    Ok(())
}

/// A switch to create (`switch create`, `POST /networks/create`), as typed
/// values; the engine checks it.
#[derive(Debug, Clone, Default)]
pub struct SwitchRequest {
    /// Name.
    pub name: String,
    /// Driver (`bridge` or empty).
    pub driver: String,
    /// Subnet (one is picked when none).
    pub subnet: Option<Ipv4Net>,
    /// Gateway (the subnet's first host when none).
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 subnet (a dual-stack switch; a unique-local /64 when `ipv6` and none).
    pub subnet6: Option<ipnet::Ipv6Net>,
    /// IPv6 gateway (the subnet's `::1` when none).
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// Hand out addresses from this part of the subnet only.
    pub ip_range: Option<Ipv4Net>,
    /// Addresses never handed out, by name.
    pub aux_addresses: std::collections::BTreeMap<String, Ipv4Addr>,
    /// IPAM driver (`default` or empty).
    pub ipam_driver: String,
    /// IPAM options (kept and shown).
    pub ipam_options: std::collections::BTreeMap<String, String>,
    /// Driver options (`KEY=VALUE`; refused: a switch has none).
    pub options: Vec<String>,
    /// A dual-stack switch (IPv6 beside IPv4).
    pub ipv6: bool,
    /// No NAT, no forwarding off the switch.
    pub internal: bool,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

impl SwitchRequest {
    /// A plain switch named `name`.
    pub fn named(name: &str) -> Self {
        Self { name: name.to_string(), ..Default::default() }
    }
}

/// The default switch's gateway: an address of the host on its bridge
/// (the first of [`moat_net::DEFAULT_SUBNET`]).
const DEFAULT_GATEWAY: &str = "10.88.0.1";

/// The first lines of every container's `/etc/hosts`.
pub const HOSTS_HEADER: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

fn parse(row: SwitchRow) -> Result<Switch, EngineError> {
    let config = serde_json::from_str(&row.config)
        .map_err(|e| EngineError::Invalid(format!("corrupt switch {}: {e}", row.name)))?;
    Ok(Switch { id: row.id, name: row.name, created: row.created, config })
}

/// A network event about switch `s` (and container `cid`).
fn network_event(action: &str, s: &Switch, cid: Option<&str>) -> crate::events::Event {
    let mut e =
        crate::events::Event::new("network", action, &s.id).attr("name", shown_name(&s.name)).attr("type", "bridge");
    if let Some(c) = cid {
        e = e.attr("container", c);
    }
    e
}

/// Refuses network drivers other than `bridge` (a switch is a bridge).
pub fn check_driver(driver: &str) -> Result<(), EngineError> {
    if driver.is_empty() || driver == "bridge" {
        Ok(())
    } else {
        Err(EngineError::Unsupported(format!("unsupported driver {driver:?}: moat switches are bridges")))
    }
}

/// The name a switch is shown by: Docker's `bridge` for the default switch
/// (stored as `moat`), its own name otherwise.
pub fn shown_name(name: &str) -> &str {
    if name == DEFAULT_SWITCH {
        "bridge"
    } else {
        name
    }
}

/// True for names that mean the default switch.
pub fn is_default(name: &str) -> bool {
    crate::config::NetworkMode::parse(name) == crate::config::NetworkMode::Default
}

impl Engine {
    /// Every switch.
    pub fn switches(&self) -> Result<Vec<Switch>, EngineError> {
        self.images.store().switches()?.into_iter().map(parse).collect()
    }

    /// A switch by name, ID or unique ID prefix (`bridge` and `default`
    /// name the default switch; an empty name names none, as in Docker).
    pub fn find_switch(&self, key: &str) -> Result<Switch, EngineError> {
        if key.is_empty() {
            return Err(EngineError::NoSuchSwitch(String::new()));
        }
        let all = self.switches()?;
        let key = if is_default(key) { DEFAULT_SWITCH } else { key };
        if let Some(s) = all.iter().find(|s| s.name == key || s.id == key) {
            return Ok(s.clone());
        }
        let m: Vec<&Switch> =
            all.iter().filter(|s| moat_core::id::is_hex_prefix(key) && s.id.starts_with(key)).collect();
        match m.len() {
            1 => Ok(m[0].clone()),
            0 => Err(EngineError::NoSuchSwitch(key.to_string())),
            n => Err(EngineError::Invalid(format!("switch ID {key:?} is ambiguous: it matches {n} switches"))),
        }
    }

    /// Creates a switch and its bridge. Choosing (or checking) the subnet and
    /// recording the switch are one store transaction, made under the
    /// host-wide network lock: parallel creations in this root or another
    /// never get overlapping subnets, and a subnet the host routes elsewhere,
    /// a reserved range or one holding the default gateway is refused (and
    /// skipped when choosing one).
    pub fn create_switch(&mut self, req: &SwitchRequest) -> Result<Switch, EngineError> {
        let (name, subnet, gateway) = (req.name.as_str(), req.subnet, req.gateway);
        if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c == '/') {
            return Err(EngineError::Invalid(format!("invalid switch name {name:?}")));
        }
        check_driver(&req.driver)?;
        check_unsupported(&req.options)?;
        if let Some(s6) = req.subnet6 {
            if !(48..=96).contains(&s6.prefix_len()) {
                return Err(EngineError::Invalid(format!(
                    "IPv6 subnet {s6}: use a prefix of /48 to /96 (room for the IPv4 host part)"
                )));
            }
        }
        if req.gateway6.is_some() && req.subnet6.is_none() {
            return Err(EngineError::Invalid("an IPv6 gateway needs its IPv6 subnet".into()));
        }
        if !matches!(req.ipam_driver.as_str(), "" | "default") {
            return Err(EngineError::Unsupported(format!(
                "IPAM driver {:?}: moat's switches use the default IPAM",
                req.ipam_driver
            )));
        }
        if (req.ip_range.is_some() || !req.aux_addresses.is_empty()) && subnet.is_none() {
            return Err(EngineError::Invalid(
                "an IP range or auxiliary addresses need the subnet they belong to (--subnet)".into(),
            ));
        }
        if let Some(s) = subnet {
            if s.prefix_len() > 30 {
                return Err(EngineError::Invalid(format!("subnet {s} is too small")));
            }
        }
        let host_lock = moat_net::link::host_lock().map_err(net)?;
        let routes = moat_net::link::routes();
        let id = moat_core::id::new_id();
        let created = Utc::now();
        let owner = moat_net::owner_mark(self.layout.root());
        let made = self.images.store_mut().insert_switch_with(|existing| -> Result<SwitchRow, EngineError> {
            let mut taken = Vec::new();
            let mut taken6 = Vec::new();
            for r in existing {
                if r.name == name {
                    return Err(EngineError::Conflict(format!("network with name {name} already exists")));
                }
                let c = parse(r.clone())?.config;
                taken.push(c.subnet);
                taken6.extend(c.subnet6);
            }
            let subnet6 = match (req.subnet6, req.ipv6) {
                (Some(s6), _) => Some(s6.trunc()),
                (None, true) => Some(moat_net::ula_subnet(&id)),
                (None, false) => None,
            };
            if let Some(s6) = subnet6 {
                if let Some(t) = taken6.iter().find(|t| t.contains(&s6.network()) || s6.contains(&t.network())) {
                    return Err(EngineError::Conflict(format!("IPv6 subnet {s6} overlaps another switch ({t})")));
                }
            }
            let gateway6 = match (subnet6, req.gateway6) {
                (Some(s6), Some(g)) if !s6.contains(&g) || g == s6.network() => {
                    return Err(EngineError::Invalid(format!("IPv6 gateway {g} is not a host address of {s6}")));
                }
                (Some(_), Some(g)) => Some(g),
                (Some(s6), None) => Some(moat_net::gateway6_of(&s6)),
                (None, _) => None,
            };
            let subnet = match subnet {
                Some(s) => {
                    let s = s.trunc();
                    if let Some(t) = taken.iter().find(|t| t.contains(&s.network()) || s.contains(&t.network())) {
                        return Err(EngineError::Conflict(format!("subnet {s} overlaps another switch ({t})")));
                    }
                    if let Some(why) = moat_net::host_clash(&s, &routes) {
                        return Err(EngineError::Invalid(format!("{why}: choose another subnet")));
                    }
                    s
                }
                None => {
                    let d: Ipv4Net =
                        moat_net::DEFAULT_SUBNET.parse().map_err(|_| EngineError::Invalid("default subnet".into()))?;
                    let free = !taken.iter().any(|t| t.contains(&d.network()) || d.contains(&t.network()))
                        && moat_net::host_clash(&d, &routes).is_none();
                    if name == DEFAULT_SWITCH && free {
                        d
                    } else {
                        moat_net::pick_subnet(&taken, &routes).map_err(net)?
                    }
                }
            };
            let gateway = match gateway {
                Some(g) if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() => {
                    return Err(EngineError::Invalid(format!("gateway {g} is not a host address of {subnet}")));
                }
                Some(g) => g,
                None => subnet.hosts().next().ok_or_else(|| EngineError::Invalid("subnet has no hosts".into()))?,
            };
            if let Some(r) = req.ip_range {
                if !subnet.contains(&r.network()) || r.prefix_len() < subnet.prefix_len() {
                    return Err(EngineError::Invalid(format!("IP range {r} is not a part of subnet {subnet}")));
                }
            }
            for (n, a) in &req.aux_addresses {
                if !subnet.contains(a) || *a == gateway {
                    return Err(EngineError::Invalid(format!(
                        "auxiliary address {n}={a} is not a free host address of {subnet}"
                    )));
                }
            }
            let config = SwitchConfig {
                subnet,
                gateway,
                internal: req.internal,
                bridge: moat_net::bridge_name(&id),
                labels: req.labels.clone(),
                ip_range: req.ip_range.map(|r| r.trunc()),
                aux_addresses: req.aux_addresses.clone(),
                ipam_options: req.ipam_options.clone(),
                subnet6,
                gateway6,
                owner: owner.clone(),
            };
            Ok(SwitchRow {
                id: id.clone(),
                name: name.to_string(),
                created,
                config: serde_json::to_string(&config).map_err(|e| EngineError::Invalid(e.to_string()))?,
            })
        });
        // the record first: a process killed between the two steps leaves a
        // record whose bridge is (re)made on use, never an unrecorded bridge
        let row = match made {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => return Err(e),
            Err(moat_store::StoreError::NameInUse { .. }) => {
                return Err(EngineError::Conflict(format!("network with name {name} already exists")))
            }
            Err(e) => return Err(e.into()),
        };
        let sw = parse(row)?;
        moat_core::crash::point("switch.create.recorded");
        if let Err(e) = moat_net::link::ensure_switch_locked(&host_lock, &sw.config) {
            drop(host_lock);
            let _ = moat_net::link::remove_switch(&sw.config);
            let _ = self.images.store_mut().delete_switch(&id);
            return Err(net(e));
        }
        moat_core::crash::point("switch.create.bridge");
        crate::events::record(self.store(), network_event("create", &sw, None));
        Ok(sw)
    }

    /// The default switch, created on first use (concurrent first uses agree).
    pub fn default_switch(&mut self) -> Result<Switch, EngineError> {
        if let Ok(s) = self.find_switch(DEFAULT_SWITCH) {
            return Ok(s);
        }
        match self.create_switch(&SwitchRequest::named(DEFAULT_SWITCH)) {
            Ok(s) => Ok(s),
            Err(e) => self.find_switch(DEFAULT_SWITCH).map_err(|_| e),
        }
    }

    /// Removes a switch; refused while containers are attached, and for the
    /// default switch (like Docker's `bridge`; `moat system reset` removes it).
    pub fn remove_switch(&mut self, key: &str) -> Result<Switch, EngineError> {
        let s = self.find_switch(key)?;
        if s.name == DEFAULT_SWITCH {
            return Err(EngineError::Conflict(format!(
                "{DEFAULT_SWITCH} is the pre-defined default switch and cannot be removed (moat system reset removes everything of a root)"
            )));
        }
        let members = self.images.store().switch_members(&s.id)?;
        if !members.is_empty() {
            let names: Vec<String> =
                members.iter().filter_map(|m| self.get(m).ok()).map(|c| c.name().to_string()).collect();
            return Err(EngineError::Conflict(format!(
                "switch {:?} has attached containers ({}): remove or disconnect them first",
                s.name,
                names.join(", ")
            )));
        }
        moat_net::link::remove_switch(&s.config).map_err(net)?;
        moat_core::crash::point("switch.rm.bridge");
        self.images.store_mut().delete_switch(&s.id)?;
        moat_core::crash::point("switch.rm.unrecorded");
        crate::events::record(self.store(), network_event("destroy", &s, None));
        Ok(s)
    }

    /// Reserves an address for container `cid` on `sw`.
    pub(crate) fn allocate(
        &mut self,
        cid: &str,
        sw: &Switch,
        ip: Option<Ipv4Addr>,
        mac: Option<String>,
    ) -> Result<Endpoint, EngineError> {
        let cfg = sw.config.clone();
        let got = self.images.store_mut().allocate_ip(cid, &sw.id, |used| {
            let used: Vec<Ipv4Addr> = used.iter().filter_map(|u| u.parse().ok()).collect();
            match ip {
                Some(ip) => moat_net::check_ip_in(&cfg, ip, &used).map(|_| ip.to_string()).map_err(|e| e.to_string()),
                None => moat_net::first_free_in(&cfg, &used)
                    .map(|a| a.to_string())
                    .ok_or_else(|| format!("no free address left on switch {:?}", sw.name)),
            }
        })?;
        let ip: Ipv4Addr = got.map_err(EngineError::Invalid)?.parse().map_err(|_| EngineError::Invalid("ip".into()))?;
        Ok(Endpoint {
            switch_id: sw.id.clone(),
            switch: sw.name.clone(),
            ip,
            prefix: cfg.subnet.prefix_len(),
            gateway: (!cfg.internal).then_some(cfg.gateway),
            mac: mac.unwrap_or_else(|| moat_net::mac_for(ip)),
            bridge: cfg.bridge.clone(),
            aliases: Vec::new(),
            ip6: moat_net::ip6_for(&cfg, ip),
            prefix6: cfg.subnet6.map_or(0, |s| s.prefix_len()),
            gateway6: cfg.gateway6.filter(|_| !cfg.internal),
        })
    }

    /// Rewrites `/etc/hosts` of every container that is or was on
    /// `switch_ids` (in place: it is bind-mounted into running containers) so
    /// each resolves exactly the others on its switches by name: a removed
    /// or disconnected container disappears from its former peers' files,
    /// and its own file loses them.
    pub fn refresh_hosts(&mut self, switch_ids: &[String]) -> Result<(), EngineError> {
        if switch_ids.is_empty() {
            return Ok(());
        }
        let all: Vec<Container> = self.list()?;
        for c in all.iter() {
            let mut text = String::from(HOSTS_HEADER);
            let mine: Vec<&String> = c.config.networks.iter().map(|e| &e.switch_id).collect();
            for e in &c.config.networks {
                for ip in [Some(e.ip.to_string()), e.ip6.map(|a| a.to_string())].into_iter().flatten() {
                    text.push_str(&format!("{ip}\t{} {}\n", c.config.hostname, c.name()));
                }
            }
            for o in all.iter().filter(|o| o.id() != c.id()) {
                for e in o.config.networks.iter().filter(|e| mine.contains(&&e.switch_id)) {
                    let aliases: String = o.config.aliases.iter().chain(&e.aliases).map(|a| format!(" {a}")).collect();
                    for ip in [Some(e.ip.to_string()), e.ip6.map(|a| a.to_string())].into_iter().flatten() {
                        text.push_str(&format!("{ip}\t{} {}{aliases}\n", o.name(), &o.id()[..12]));
                    }
                }
            }
            // legacy links: the alias, the linked container's hostname and name
            for l in &c.config.links {
                let Some(o) = all.iter().find(|o| o.id() == l.id) else { continue };
                if let Some(e) = o.config.networks.iter().find(|e| mine.contains(&&e.switch_id)) {
                    let name = if o.name() == l.alias { String::new() } else { format!(" {}", o.name()) };
                    text.push_str(&format!("{}\t{} {}{name}\n", e.ip, l.alias, o.config.hostname));
                }
            }
            for h in &c.config.add_hosts {
                if let Some((name, ip)) = h.split_once(':') {
                    // the host is the gateway of the container's switch (or,
                    // without one, the default switch's: an address of the host)
                    let ip = if ip == crate::validate::HOST_GATEWAY {
                        c.config
                            .networks
                            .iter()
                            .find_map(|e| e.gateway)
                            .map(|g| g.to_string())
                            .unwrap_or_else(|| DEFAULT_GATEWAY.to_string())
                    } else {
                        ip.to_string()
                    };
                    text.push_str(&format!("{ip}\t{name}\n"));
                }
            }
            let p = self.layout.container(c.id()).join("hosts");
            use std::io::Write;
            // a container being removed meanwhile has no hosts file to update
            match std::fs::OpenOptions::new().write(true).truncate(true).open(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r.and_then(|mut f| f.write_all(text.as_bytes())).map_err(EngineError::io("write hosts"))?,
            }
        }
        Ok(())
    }

    /// A switch and a container whose switches may change (it is stopped).
    /// The switch and a container whose switches may change: stopped, or a
    /// running process container (its interfaces change live); a running
    /// VM's NICs are fixed while it runs.
    fn switch_and_container(&mut self, switch: &str, key: &str) -> Result<(Switch, Container), EngineError> {
        let sw = self.find_switch(switch)?;
        let c = self.get(key)?;
        if c.is_running() && c.config.isolation() == moat_core::Isolation::Hyperv {
            return Err(EngineError::Unsupported(format!(
                "container {} runs in a utility VM, whose network cards are fixed while it runs: stop it to change its switches",
                c.name()
            )));
        }
        if c.config.network_mode().container().is_some() {
            return Err(EngineError::Invalid(format!(
                "container {} shares another container's network ({})",
                c.name(),
                c.config.network
            )));
        }
        Ok((sw, c))
    }

    /// Attaches a container to a switch: a stopped one from its next
    /// start, a running process container at once (a new veth in its
    /// network namespace, `ethN` with its address).
    pub fn connect_switch(&mut self, switch: &str, key: &str, ip: Option<Ipv4Addr>) -> Result<(), EngineError> {
        self.connect_switch_as(switch, key, ip, None, &[])
    }

    /// [`Engine::connect_switch`] with a MAC address of its own there and
    /// more names the container answers to on this switch only (Docker's
    /// per-network aliases; its name and short ID it has anyway).
    pub fn connect_switch_as(
        &mut self,
        switch: &str,
        key: &str,
        ip: Option<Ipv4Addr>,
        mac: Option<&str>,
        aliases: &[String],
    ) -> Result<(), EngineError> {
        let (sw, c) = self.switch_and_container(switch, key)?;
        let mac = mac.filter(|m| !m.is_empty()).map(moat_net::parse_mac).transpose()?;
        for a in aliases {
            if a.is_empty() || a.len() > 255 || a.chars().any(|ch| ch.is_whitespace() || ch.is_control() || ch == '#') {
                return Err(EngineError::Invalid(format!("invalid alias {a:?}")));
            }
        }
        let own: Vec<String> = aliases
            .iter()
            .filter(|a| !c.config.aliases.contains(a) && *a != c.name() && !c.id().starts_with(a.as_str()))
            .cloned()
            .collect();
        if matches!(c.config.network_mode(), crate::config::NetworkMode::Host | crate::config::NetworkMode::None) {
            return Err(EngineError::Invalid(format!("container {} uses --network {}", c.name(), c.config.network)));
        }
        if c.config.networks.iter().any(|e| e.switch_id == sw.id) {
            return Err(EngineError::Conflict(format!("container {} is already on switch {:?}", c.name(), sw.name)));
        }
        let mut ep = self.allocate(c.id(), &sw, ip, mac)?;
        ep.aliases = own;
        if c.is_running() {
            if let Err(e) = plug(&c, &ep) {
                let _ = self.images.store_mut().release_ip(c.id(), &sw.id);
                return Err(e);
            }
        }
        let mut cfg = c.config.clone();
        cfg.networks.push(ep);
        self.write_config(c.id(), &cfg)?;
        moat_core::crash::point("connect.recorded");
        crate::events::record(self.store(), network_event("connect", &sw, Some(c.id())));
        self.refresh_hosts(&[sw.id])
    }

    /// Detaches a container from a switch (a running process container's
    /// interface on it goes at once).
    pub fn disconnect_switch(&mut self, switch: &str, key: &str) -> Result<(), EngineError> {
        let (sw, c) = self.switch_and_container(switch, key)?;
        let mut cfg = c.config.clone();
        let Some(ep) = cfg.networks.iter().find(|e| e.switch_id == sw.id).cloned() else {
            return Err(EngineError::Invalid(format!("container {} is not on switch {:?}", c.name(), sw.name)));
        };
        if c.is_running() {
            unplug(&c, &ep)?;
        }
        cfg.networks.retain(|e| e.switch_id != sw.id);
        self.images.store_mut().release_ip(c.id(), &sw.id)?;
        self.write_config(c.id(), &cfg)?;
        crate::events::record(self.store(), network_event("disconnect", &sw, Some(c.id())));
        self.refresh_hosts(&[sw.id])
    }
}

/// Runs `f` on a thread inside the network namespace of the container's
/// main process (commands it spawns are there too).
fn in_netns<T: Send>(c: &Container, f: impl FnOnce() -> Result<T, EngineError> + Send) -> Result<T, EngineError> {
    let ns = std::fs::File::open(format!("/proc/{}/ns/net", c.state.pid))
        .map_err(EngineError::io(format!("open the network namespace of {}", c.name())))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| EngineError::Io("enter the container's network namespace".into(), e.into()))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(EngineError::Invalid("a network thread panicked".into())))
    })
}

/// Names of the interfaces of the calling thread's network namespace.
fn ifaces_inside() -> Vec<String> {
    std::fs::read_to_string("/proc/thread-self/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect()
}

/// A live veth for `ep` in a running process container.
fn plug(c: &Container, ep: &moat_net::Endpoint) -> Result<(), EngineError> {
    // names already in use (interfaces of earlier connects) are skipped
    let n = (0..64)
        .find(|n| !moat_net::link::exists(&moat_net::if_name('v', c.id(), *n)))
        .ok_or_else(|| EngineError::Conflict(format!("container {} has too many interfaces", c.name())))?;
    let (host, peer) = (moat_net::if_name('v', c.id(), n), moat_net::if_name('p', c.id(), n));
    moat_net::link::add_veth(&host, &peer, c.state.pid, &ep.bridge)?;
    let r = in_netns(c, || {
        let inside = ifaces_inside();
        let name = (0..64).map(|i| format!("eth{i}")).find(|e| !inside.contains(e)).unwrap_or_else(|| peer.clone());
        // the first interface keeps the default route
        let gateway = if inside.iter().any(|i| i.starts_with("eth")) { None } else { ep.gateway };
        let iface = moat_runtime::netconf::Iface {
            from: peer.clone(),
            name,
            ip: ep.ip,
            prefix: ep.prefix,
            gateway,
            mac: ep.mac.clone(),
            ip6: ep.ip6,
            prefix6: ep.prefix6,
            gateway6: ep.gateway6.filter(|_| gateway.is_some()),
        };
        Ok(moat_runtime::netconf::configure(&[iface])?)
    });
    if r.is_err() {
        moat_net::link::del_link(&host);
    }
    r
}

/// Removes the interface holding `ep`'s address from a running container.
fn unplug(c: &Container, ep: &moat_net::Endpoint) -> Result<(), EngineError> {
    in_netns(c, || {
        let out = std::process::Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .map_err(EngineError::io("run ip addr"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let want = format!("{}/", ep.ip);
        let dev = text
            .lines()
            .find(|l| l.split_whitespace().nth(3).is_some_and(|a| a.starts_with(&want)))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string);
        if let Some(dev) = dev {
            let st = std::process::Command::new("ip")
                .args(["link", "del", &dev])
                .status()
                .map_err(EngineError::io("run ip link del"))?;
            if !st.success() {
                return Err(EngineError::Shim(format!("cannot remove {dev} from the container")));
            }
        }
        Ok(())
    })
}

impl Engine {
    /// A container's published ports, all or those of `PORT[/PROTO]`
    /// (`port CTR 80/tcp`; an error names a port that is not published).
    pub fn published_ports(&mut self, key: &str, private: Option<&str>) -> Result<Vec<moat_net::PortMap>, EngineError> {
        let c = self.get(key)?;
        let Some(want) = private else { return Ok(c.state.ports.clone()) };
        let (port, proto) = want.split_once('/').unwrap_or((want, "tcp"));
        let port: u16 =
            port.parse().map_err(|_| EngineError::Invalid(format!("invalid port {want:?}: use PORT[/tcp|udp]")))?;
        let found: Vec<_> = c.state.ports.iter().filter(|p| p.ctr_port == port && p.proto == proto).cloned().collect();
        if found.is_empty() {
            return Err(EngineError::NotFound(format!("No public port '{port}/{proto}' published for {}", c.name())));
        }
        Ok(found)
    }
}

/// Switch filters: `name` (substring), `id` (prefix), `driver`, `type`
/// (`builtin` for the default switch, `custom`), `dangling` (no containers).
#[derive(Debug, Clone, Default)]
pub struct SwitchFilter {
    f: Filters,
}

impl SwitchFilter {
    /// Checks the keys.
    pub fn new(f: Filters) -> Result<Self, EngineError> {
        f.check(&["name", "id", "driver", "type", "dangling", "scope", "label"])?;
        for t in f.get("type") {
            if !["builtin", "custom"].contains(&t.as_str()) {
                return Err(EngineError::Invalid(format!("invalid filter 'type={t}': use builtin or custom")));
            }
        }
        Ok(Self { f })
    }

    /// True when the switch (with `members` containers) passes every term.
    pub fn matches(&self, s: &crate::network::Switch, members: usize) -> bool {
        let f = &self.f;
        let builtin = crate::network::is_default(&s.name);
        any(f.get("name"), |n| crate::network::shown_name(&s.name).contains(n))
            && any(f.get("id"), |i| s.id.starts_with(i))
            && any(f.get("driver"), |d| d == "bridge")
            && any(f.get("scope"), |d| d == "local")
            && any(f.get("type"), |t| (t == "builtin") == builtin)
            && any(f.get("dangling"), |d| (d == "true" || d == "1") == (members == 0 && !builtin))
            && f.get("label").iter().all(|l| label_matches(&s.config.labels, l))
    }
}
