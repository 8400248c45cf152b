//! Creating a container: validate the request, merge the image's config
//! the way Docker does, reserve its switch addresses, record it.

pub use crate::config::CreateRequest;
use crate::config::{ContainerConfig, ContainerState};
use crate::validate::check_isolation;
use crate::{events, names, network, spec, validate, Container, Engine, EngineError};
use chrono::Utc;
use moat_store::ContainerRow;
use std::path::Path;

/// Merges the image's runtime config into `cfg` like Docker: an explicit
/// entrypoint resets the image's command; the user's environment first,
/// then the image's entries the user did not name (a bare `KEY` names one
/// too: it unsets the image's, see [`crate::spec::process_env`]); workdir, user, stop
/// signal and labels default from the image.
pub fn merge_image(cfg: &mut ContainerConfig, icfg: &moat_image::RuntimeConfig) -> Result<(), EngineError> {
    let entry_override = !cfg.entrypoint.is_empty();
    let entrypoint = if entry_override { cfg.entrypoint.clone() } else { icfg.entrypoint.clone().unwrap_or_default() };
    let cmd = if !cfg.cmd.is_empty() {
        cfg.cmd.clone()
    } else if entry_override {
        Vec::new()
    } else {
        icfg.cmd.clone().unwrap_or_default()
    };
    let entrypoint: Vec<String> = entrypoint.into_iter().filter(|s| !s.is_empty()).collect();
    cfg.args = entrypoint.iter().chain(cmd.iter()).cloned().collect();
    if cfg.args.is_empty() {
        return Err(EngineError::Invalid("no command specified".into()));
    }
    cfg.entrypoint = entrypoint;
    cfg.cmd = cmd;
    let user = cfg.env.len();
    for e in icfg.env.clone().unwrap_or_default() {
        if !moat_runtime::relay::env_names(&cfg.env[..user], moat_runtime::relay::env_key(&e)) {
            cfg.env.push(e);
        }
    }
    if cfg.workdir.is_empty() {
        cfg.workdir = icfg.working_dir.clone().unwrap_or_default();
    }
    if cfg.user.is_empty() {
        cfg.user = icfg.user.clone().unwrap_or_default();
    }
    if cfg.stop_signal.is_empty() {
        cfg.stop_signal = icfg.stop_signal.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "SIGTERM".into());
    }
    let image_check: Option<crate::health::HealthConfig> =
        icfg.healthcheck.clone().and_then(|v| serde_json::from_value(v).ok());
    cfg.healthcheck = crate::health::HealthConfig::merge(image_check.as_ref(), cfg.healthcheck.as_ref())
        .filter(|h| h.command().is_some() || h.test.first().is_some_and(|t| t == "NONE"));
    for (k, v) in icfg.labels.iter().flatten() {
        cfg.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for k in icfg.exposed_ports.iter().flat_map(|p| p.keys()) {
        let (p, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
        if let Some((a, b)) = moat_net::parse_port_range(p) {
            for p in a..=b {
                if !cfg.exposed.contains(&(p, proto.to_string())) {
                    cfg.exposed.push((p, proto.to_string()));
                }
            }
        }
    }
    Ok(())
}

/// An image for another architecture cannot run here: say so instead of
/// an "exec format error" from inside the container.
fn check_platform(name: &str, config: &[u8]) -> Result<(), EngineError> {
    let (head, _) = moat_image::parse_config(config)?;
    let host = moat_registry::manifest::Platform::host();
    let arch = head.architecture.unwrap_or_default();
    let os = head.os.unwrap_or_else(|| "linux".into());
    if (!arch.is_empty() && arch != host.architecture) || os != host.os {
        return Err(EngineError::Unsupported(format!(
            "image {name} is for {os}/{arch} and this host runs {host}: moat does not emulate other platforms"
        )));
    }
    Ok(())
}

impl Engine {
    /// Records a new container from its image (resolved now).
    pub fn create(&mut self, req: CreateRequest) -> Result<Container, EngineError> {
        let mut cfg = req.config;
        validate::config(&cfg)?;
        // mounts are recorded at their clean paths (`//data/./` is `/data`)
        for b in &mut cfg.binds {
            b.target = validate::clean_target(&b.target);
        }
        cfg.tmpfs = std::mem::take(&mut cfg.tmpfs).into_iter().map(|(t, o)| (validate::clean_target(&t), o)).collect();
        let image = self.images.resolve(&cfg.image)?;
        check_platform(&cfg.image, &image.config)?;
        let icfg = moat_image::runtime_config(&image.config)?;
        merge_image(&mut cfg, &icfg)?;
        // Docker: a memory limit without a swap limit allows as much swap
        // again (and inspect says so)
        if let (Some(m), None) = (cfg.limits.memory, cfg.limits.memory_swap) {
            cfg.limits.memory_swap = Some(m.saturating_mul(2));
        }
        if self.settings.no_new_privileges && !cfg.security_opt.iter().any(|o| o.starts_with("no-new-privileges")) {
            cfg.security_opt.push("no-new-privileges=true".into());
        }
        spec::security(&cfg.security_opt)?;
        moat_runtime::caps::compute(&cfg.cap_add, &cfg.cap_drop, cfg.privileged)?;
        if !cfg.pod_infra {
            self.join_pod(&mut cfg)?;
        }
        if cfg.isolation.is_none() {
            cfg.isolation = Some(self.settings.default_isolation);
        }
        // kept as given (`default` when none), as dockerd shows it; every
        // name of the default switch finds it (`network::is_default`)
        if cfg.network.is_empty() {
            cfg.network = "default".into();
        }
        check_isolation(&cfg, cfg.isolation())?;
        if cfg.init {
            self.options.agent().map_err(|e| {
                EngineError::Unsupported(format!("--init runs moat's init, the static moat-agent binary: {e}"))
            })?;
        }
        if let Some(other) = cfg.network_mode().container().map(str::to_string) {
            let o = self.get(&other)?;
            if o.config.isolation() != cfg.isolation() {
                return Err(EngineError::Invalid(format!(
                    "cannot join the network of {}: it runs in {} isolation and this container in {}; a container joins the sandbox (namespaces or utility VM) of a container of its own isolation type",
                    o.name(),
                    o.config.isolation(),
                    cfg.isolation()
                )));
            }
            if o.config.network_mode().container().is_some() {
                return Err(EngineError::Invalid(format!(
                    "cannot join the network of {}: it shares another container's network itself",
                    o.name()
                )));
            }
            if let Some(what) = validate::sandbox_owned(&cfg) {
                return Err(EngineError::Invalid(format!(
                    "conflicting options: {what} and the network mode container:{other} (the network, hosts and DNS are {}'s)",
                    o.name()
                )));
            }
            cfg.network = format!("container:{}", o.id());
            cfg.hostname = o.config.hostname.clone();
        }
        use crate::config::NetworkMode;
        if !req.networks.is_empty() && !matches!(cfg.network_mode(), NetworkMode::Default | NetworkMode::Switch(_)) {
            return Err(EngineError::Invalid(format!(
                "conflicting options: network mode {} joins no further switch (a container on none, host or another container's network has no switches of its own)",
                cfg.network
            )));
        }
        let switch = match cfg.network_mode() {
            NetworkMode::Container(_) => None,
            NetworkMode::None | NetworkMode::Host => {
                if !cfg.publish.is_empty() || cfg.publish_all {
                    return Err(EngineError::Invalid(format!(
                        "published ports need a switch: network mode {} has none",
                        cfg.network
                    )));
                }
                None
            }
            NetworkMode::Default => Some(self.default_switch()?),
            NetworkMode::Switch(n) => Some(self.find_switch(n)?),
        };
        // legacy links: the linked container exists and is on this one's
        // switch (the link resolves there); kept by ID with the alias
        for l in cfg.links.iter_mut() {
            // a 400, not a 404: clients take a create's 404 for a missing image (moby#39823)
            let child =
                self.get(&l.id).map_err(|_| EngineError::Invalid(format!("could not get container for {}", l.id)))?;
            if l.alias.is_empty() {
                l.alias = child.name().to_string();
            }
            if !crate::names::valid(&l.alias) {
                return Err(EngineError::Invalid(format!("invalid link alias {:?}", l.alias)));
            }
            if !switch.as_ref().is_some_and(|sw| child.config.networks.iter().any(|e| e.switch_id == sw.id)) {
                return Err(EngineError::Invalid(format!(
                    "cannot link to {}: the two containers share no switch (a link resolves on a shared one)",
                    child.name()
                )));
            }
            l.id = child.id().to_string();
        }
        if let Some(m) = &cfg.mac {
            cfg.mac = Some(moat_net::parse_mac(m)?);
        }
        let image_volumes: Vec<String> = icfg.volumes.iter().flat_map(|v| v.keys().cloned()).collect();
        let volumes = self.plan_volumes(&mut cfg, &image_volumes)?;
        validate::mounts(&cfg)?;
        for b in cfg.binds.iter().filter(|b| b.kind == crate::config::MountKind::Bind) {
            if Path::new(&b.source).exists() {
                continue;
            }
            if !b.create_source {
                return Err(EngineError::Invalid(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {}",
                    b.source
                )));
            }
            // the -v syntax makes a missing host directory, like Docker
            std::fs::create_dir_all(&b.source)
                .map_err(EngineError::io(format!("create the bind mount source {}", b.source)))?;
        }
        let new_volumes: Vec<String> = volumes
            .iter()
            .filter(|v| !matches!(self.images.store().volume(&v.name), Ok(Some(_))))
            .map(|v| v.name.clone())
            .collect();
        let id = moat_core::id::new_id();
        if cfg.uts_mode == "host" {
            if !cfg.hostname.is_empty() {
                return Err(EngineError::Invalid(
                    "conflicting options: hostname and the UTS mode host (the host's name is the container's)".into(),
                ));
            }
            cfg.hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        }
        if cfg.hostname.is_empty() {
            cfg.hostname = id[..12].to_string();
        }
        let given = match req.name.as_deref() {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(n);
                if !names::valid(n) {
                    return Err(EngineError::Invalid(format!(
                        "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                Some(n.to_string())
            }
            None => None,
        };
        let mut row = ContainerRow {
            id: id.clone(),
            name: String::new(),
            image_id: image.id.clone(),
            created: Utc::now(),
            config: serde_json::to_string(&cfg).map_err(|e| EngineError::Invalid(e.to_string()))?,
            state: serde_json::to_string(&ContainerState::default())
                .map_err(|e| EngineError::Invalid(e.to_string()))?,
        };
        moat_core::crash::point("create.validated");
        // a generated name that another create took meanwhile is drawn again
        loop {
            row.name = given.clone().unwrap_or_else(names::generate);
            match self.store().insert_container_with_volumes(&row, &volumes) {
                Ok(()) => break,
                Err(moat_store::StoreError::NameInUse { .. }) if given.is_none() => continue,
                Err(moat_store::StoreError::NameInUse { .. }) => {
                    let name = &row.name;
                    let other = self.images.store().find_container(name)?.map(|c| c.id).unwrap_or_default();
                    return Err(EngineError::Conflict(format!(
                        "Conflict. The container name \"/{name}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        moat_core::crash::point("create.recorded");
        // nothing of a failed create stays behind
        let finished = (|| {
            if let Some(sw) = switch {
                let mut ep = self.allocate(&id, &sw, cfg.ip, cfg.mac.clone())?;
                // `--network-alias` names the container on its first switch
                // only, as Docker's endpoint aliases do
                ep.aliases = std::mem::take(&mut cfg.aliases);
                cfg.networks.push(ep);
                self.write_config(&id, &cfg)?;
            }
            self.prepare_dirs(&id, &cfg)?;
            self.prepare_volumes(&cfg, &new_volumes, &image)
        })();
        if let Err(e) = finished {
            let _ = std::fs::remove_dir_all(self.layout.container(&id));
            let _ = self.store().delete_container(&id);
            self.remove_anonymous_volumes(&new_volumes);
            return Err(e);
        }
        moat_core::crash::point("create.dirs");
        let switches: Vec<String> = cfg.networks.iter().map(|e| e.switch_id.clone()).collect();
        self.refresh_hosts(&switches)?;
        let c = self.get(&id)?;
        events::record(self.store(), events::Event::container("create", &c));
        // the further switches, as `network connect` would; a refusal
        // leaves no container behind
        for n in &req.networks {
            if let Err(e) = self.connect_switch_as(&n.switch, &id, n.ip, n.mac.as_deref(), &n.aliases) {
                let _ = self.remove(&id, true, true);
                return Err(e);
            }
        }
        if req.networks.is_empty() {
            Ok(c)
        } else {
            self.get(&id)
        }
    }

    /// Creates the container's directory and files (idempotent).
    pub(crate) fn prepare_dirs(&self, id: &str, cfg: &ContainerConfig) -> Result<(), EngineError> {
        self.write_dirs(id, cfg).map_err(|e| match e {
            EngineError::Io(_, ref io) if io.raw_os_error() == Some(libc::ENOSPC) => {
                moat_store::StoreError::NoSpace(self.layout.root().display().to_string()).into()
            }
            e => e,
        })
    }

    fn write_dirs(&self, id: &str, cfg: &ContainerConfig) -> Result<(), EngineError> {
        let dir = self.layout.container(id);
        for d in ["upper", "work", "rootfs"] {
            std::fs::create_dir_all(dir.join(d))
                .map_err(EngineError::io(format!("create {}", dir.join(d).display())))?;
        }
        let write = |name: &str, content: String| {
            let p = dir.join(name);
            if p.exists() {
                return Ok(());
            }
            std::fs::write(&p, content).map_err(EngineError::io(format!("write {}", p.display())))
        };
        write("hostname", format!("{}\n", cfg.hostname))?;
        write("hosts", format!("{}127.0.1.1\t{}\n", network::HOSTS_HEADER, cfg.hostname))?;
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut resolv: String = if cfg.dns.is_empty() {
            // loopback resolvers of the host are unreachable from the container
            host.lines()
                .filter(|l| l.starts_with("nameserver") && !l.contains("127.0.0.") && !l.contains("::1"))
                .map(|l| format!("{l}\n"))
                .collect()
        } else {
            cfg.dns.iter().map(|d| format!("nameserver {d}\n")).collect()
        };
        let keep = |key: &str, given: &[String]| -> String {
            if given.is_empty() {
                host.lines().filter(|l| l.starts_with(key)).map(|l| format!("{l}\n")).collect()
            } else {
                format!("{key} {}\n", given.join(" "))
            }
        };
        resolv.push_str(&keep("search", &cfg.dns_search));
        resolv.push_str(&keep("options", &cfg.dns_options));
        write("resolv.conf", resolv)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_merges_like_docker() -> Result<(), EngineError> {
        let icfg: moat_image::RuntimeConfig = serde_json::from_str(
            r#"{"Entrypoint":["/init"],"Cmd":["serve"],"Env":["PATH=/bin","A=1"],"WorkingDir":"/srv","User":"app",
                "Labels":{"l":"image","m":"image"},"ExposedPorts":{"80/tcp":{},"53/udp":{}}}"#,
        )
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut c = ContainerConfig { env: vec!["A=2".into()], ..Default::default() };
        c.labels.insert("l".into(), "user".into());
        merge_image(&mut c, &icfg)?;
        assert_eq!(c.args, vec!["/init", "serve"]);
        assert_eq!(c.env, vec!["A=2", "PATH=/bin"]);
        assert_eq!((c.workdir.as_str(), c.user.as_str(), c.stop_signal.as_str()), ("/srv", "app", "SIGTERM"));
        assert_eq!(c.labels["l"], "user", "the user's label wins");
        assert_eq!(c.labels["m"], "image");
        assert!(c.exposed.contains(&(53, "udp".into())));
        // a command replaces Cmd; an entrypoint resets it
        let mut c = ContainerConfig { cmd: vec!["other".into()], ..Default::default() };
        merge_image(&mut c, &icfg)?;
        assert_eq!(c.args, vec!["/init", "other"]);
        let mut c = ContainerConfig { entrypoint: vec!["/bin/sh".into()], ..Default::default() };
        merge_image(&mut c, &icfg)?;
        assert_eq!(c.args, vec!["/bin/sh"]);
        // --entrypoint "" with no command: nothing to run
        let mut c = ContainerConfig { entrypoint: vec![String::new()], ..Default::default() };
        assert!(merge_image(&mut c, &icfg).is_err());
        Ok(())
    }
}
