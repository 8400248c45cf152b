//! Turning a container's configuration into a runtime [`Spec`].

use crate::config::{ContainerConfig, MountKind};
use crate::EngineError;
use moat_runtime::spec::{Mount, NetNs, Process, Rootfs, Seccomp, Spec, MASKED_PATHS, READONLY_PATHS};
use moat_store::ImageRecord;
use moat_store::Layout;
use std::path::PathBuf;

/// Parses `--security-opt` values into the seccomp policy and no_new_privs
/// (off unless asked for, like Docker: setuid programs such as `su`,
/// `sudo` or `ping` work).
pub fn security(opts: &[String]) -> Result<(Seccomp, bool), EngineError> {
    let mut seccomp = Seccomp::Default;
    let mut nnp = false;
    for o in opts {
        let (k, v) = o.split_once(['=', ':']).unwrap_or((o.as_str(), ""));
        match k {
            "seccomp" if v == "unconfined" => seccomp = Seccomp::Unconfined,
            "seccomp" if v.trim_start().starts_with('{') => seccomp = Seccomp::Profile(v.to_string()),
            "seccomp" => {
                let json = std::fs::read_to_string(v)
                    .map_err(|e| EngineError::Invalid(format!("opening seccomp profile ({v}) failed: {e}")))?;
                // fail at create time, not at start, on a broken profile
                moat_runtime::seccomp::docker_profile(&json).map_err(|e| EngineError::Invalid(e.to_string()))?;
                seccomp = Seccomp::Profile(json);
            }
            "no-new-privileges" => {
                nnp = match v {
                    "" | "true" => true,
                    "false" => false,
                    _ => {
                        return Err(EngineError::Invalid(format!(
                            "invalid --security-opt {o:?}: use no-new-privileges[=true|false]"
                        )))
                    }
                }
            }
            "apparmor" | "label" => {} // not applicable on this host; accepted like docker without AppArmor/SELinux
            _ => return Err(EngineError::Invalid(format!("invalid --security-opt {o:?}"))),
        }
    }
    Ok((seccomp, nnp))
}

/// The limits a container's cgroup gets: the configured ones plus the
/// device allow-list (Docker's defaults and `--device`; all for `--privileged`).
pub fn limits(cfg: &ContainerConfig) -> moat_runtime::cgroup::Limits {
    use moat_runtime::devices::DevicePolicy;
    let mut l = cfg.limits.clone();
    l.devices = if cfg.privileged {
        DevicePolicy::AllowAll
    } else {
        // --device nodes, then --device-cgroup-rule (checked at create)
        let rules = cfg.device_cgroup_rules.iter().filter_map(|r| crate::flags::device_cgroup_rule(r).ok());
        DevicePolicy::Default(cfg.devices.iter().map(|d| d.rule.clone()).chain(rules).collect())
    };
    l
}

/// The runtime spec of container `id`; `init` is the binary `--init` runs
/// as the container's PID 1 (bound read-only at `/sbin/moat-init`).
pub fn build(
    layout: &Layout,
    id: &str,
    cfg: &ContainerConfig,
    image: &ImageRecord,
    init: Option<&std::path::Path>,
) -> Result<Spec, EngineError> {
    let dir = layout.container(id);
    let lower: Vec<PathBuf> = image.diff_ids.iter().rev().map(|d| layout.layer(d.hex())).collect();
    if lower.is_empty() {
        return Err(EngineError::Invalid("image has no layers".into()));
    }
    let (mut seccomp, nnp) = security(&cfg.security_opt)?;
    if cfg.privileged {
        seccomp = Seccomp::Unconfined;
    }
    let capabilities = moat_runtime::caps::compute(&cfg.cap_add, &cfg.cap_drop, cfg.privileged)
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    let mut mounts = Vec::new();
    for b in &cfg.binds {
        let source = match b.kind {
            MountKind::Bind => PathBuf::from(&b.source),
            MountKind::Volume => {
                let d = layout.volume_data(&b.source);
                std::fs::create_dir_all(&d).map_err(EngineError::io(format!("create {}", d.display())))?;
                d
            }
        };
        let propagation = moat_runtime::spec::Propagation::parse(&b.propagation)
            .ok_or_else(|| EngineError::Invalid(format!("bind propagation {} is not supported", b.propagation)))?;
        if matches!(propagation, moat_runtime::spec::Propagation::Rslave | moat_runtime::spec::Propagation::Slave) {
            receives_mounts(&source, &b.propagation)?;
        }
        mounts.push(Mount::Bind { source, target: b.target.clone(), readonly: b.readonly, propagation });
    }
    for (t, o) in &cfg.tmpfs {
        mounts.push(Mount::Tmpfs { target: t.clone(), options: o.clone() });
    }
    let net = match cfg.network_mode() {
        crate::config::NetworkMode::Host => NetNs::Host,
        _ => NetNs::New,
    };
    // Docker's defaults in the container's own network namespace: any user
    // may bind ports below 1024 and send pings; then `--sysctl`
    let mut sysctls: Vec<(String, String)> = Vec::new();
    if net == NetNs::New {
        sysctls.push(("net.ipv4.ip_unprivileged_port_start".into(), "0".into()));
        sysctls.push(("net.ipv4.ping_group_range".into(), "0 2147483647".into()));
    }
    for (k, v) in &cfg.sysctls {
        sysctls.retain(|(d, _)| d != k);
        sysctls.push((k.clone(), v.clone()));
    }
    let mut env = process_env(&cfg.env);
    let has = moat_runtime::relay::env_names;
    if !has(&env, "HOSTNAME") {
        env.push(format!("HOSTNAME={}", cfg.hostname));
    }
    if cfg.tty && !has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    let mut args = cfg.args.clone();
    if let Some(bin) = init.filter(|_| cfg.init) {
        let target = moat_runtime::init::INIT_PATH.to_string();
        mounts.push(Mount::Bind { source: bin.to_path_buf(), target, readonly: true, propagation: Default::default() });
        args = [moat_runtime::init::INIT_PATH.to_string(), "--".into()].into_iter().chain(args).collect();
    }
    Ok(Spec {
        rootfs: Rootfs::Overlay { lower, upper: dir.join("upper"), work: dir.join("work") },
        rootfs_target: dir.join("rootfs"),
        readonly_rootfs: cfg.readonly_rootfs,
        process: Process {
            args,
            env,
            cwd: if cfg.workdir.is_empty() { "/".into() } else { cfg.workdir.clone() },
            user: cfg.user.clone(),
            tty: cfg.tty,
            rlimits: cfg.ulimits.clone(),
            console_size: cfg.console_size,
            group_add: cfg.group_add.clone(),
            oom_score_adj: cfg.oom_score_adj,
        },
        hostname: cfg.hostname.clone(),
        domainname: cfg.domainname.clone(),
        pid_host: cfg.pid_mode == "host",
        ipc_host: cfg.ipc_mode == "host",
        uts_host: cfg.uts_mode == "host",
        pid_join: None,
        ipc_join: None,
        uts_join: None,
        cgroupns_host: cfg.cgroupns_mode == "host",
        mounts,
        etc_files: vec![
            ("/etc/hostname".into(), dir.join("hostname")),
            ("/etc/hosts".into(), dir.join("hosts")),
            ("/etc/resolv.conf".into(), dir.join("resolv.conf")),
        ],
        capabilities,
        seccomp,
        no_new_privs: nnp && !cfg.privileged,
        masked_paths: MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
        readonly_paths: READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
        net,
        privileged: cfg.privileged,
        shm_size: cfg.shm_size.unwrap_or(64 << 20),
        interfaces: cfg
            .networks
            .iter()
            .enumerate()
            .map(|(n, e)| moat_runtime::netconf::Iface {
                from: moat_net::if_name('p', id, n),
                name: format!("eth{n}"),
                ip: e.ip,
                prefix: e.prefix,
                gateway: e.gateway,
                mac: e.mac.clone(),
                ip6: e.ip6,
                prefix6: e.prefix6,
                gateway6: e.gateway6,
            })
            .collect(),
        devices: cfg.devices.clone(),
        sysctls,
    })
}

/// A slave bind receives host mounts only from a shared (or slave) host
/// mount: refuse otherwise, as Docker does, instead of silently receiving
/// nothing.
fn receives_mounts(source: &std::path::Path, mode: &str) -> Result<(), EngineError> {
    let src = std::fs::canonicalize(source).map_err(EngineError::io(format!("bind source {}", source.display())))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(EngineError::io("read mountinfo"))?;
    let (mp, shared) = mount_of(&info, &src).unwrap_or_default();
    if shared {
        return Ok(());
    }
    Err(EngineError::Invalid(format!(
        "bind propagation {mode} of {}: it is on the mount {mp}, which is private, so no host mount would reach the container (make it shared: mount --make-rshared {mp})",
        source.display()
    )))
}

/// The mount point holding `path` in a mountinfo text, and whether it is
/// shared or a slave (has a `shared:` or `master:` tag).
fn mount_of(mountinfo: &str, path: &std::path::Path) -> Option<(String, bool)> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let mp = f.get(4)?;
            let tags = f.iter().skip(6).take_while(|t| **t != "-");
            let shared = tags.clone().any(|t| t.starts_with("shared:") || t.starts_with("master:"));
            path.starts_with(mp).then(|| (mp.to_string(), shared))
        })
        .max_by_key(|(mp, _)| mp.len())
}

/// `--network container:NAME`: the spec joins `other`'s network namespace
/// and takes its host name, `/etc/hosts` and `/etc/resolv.conf`, like
/// Docker. `other` must be a running process container.
pub fn join_network(
    spec: &mut Spec,
    layout: &Layout,
    other: &crate::Container,
    iso: moat_core::Isolation,
) -> Result<(), EngineError> {
    if !other.is_running() || other.state.pid == 0 {
        return Err(EngineError::Conflict(format!(
            "cannot join the network of container {}: it is not running",
            other.name()
        )));
    }
    if other.config.isolation() != iso {
        return Err(EngineError::Invalid(format!(
            "cannot join the network of {}: it runs in {} isolation, this container in {iso}",
            other.name(),
            other.config.isolation()
        )));
    }
    let dir = layout.container(other.id());
    spec.net = NetNs::Path(PathBuf::from(format!("/proc/{}/ns/net", other.state.pid)));
    spec.hostname = other.config.hostname.clone();
    spec.sysctls.retain(|(k, _)| !k.starts_with("net."));
    spec.etc_files = vec![
        ("/etc/hostname".into(), dir.join("hostname")),
        ("/etc/hosts".into(), dir.join("hosts")),
        ("/etc/resolv.conf".into(), dir.join("resolv.conf")),
    ];
    Ok(())
}

/// Docker's environment of a legacy link to `child` as `alias` in `parent`:
/// `ALIAS_NAME=/parent/alias`, `ALIAS_PORT` (the lowest exposed port) and
/// per exposed port `ALIAS_PORT_<N>_<PROTO>` with `_ADDR`, `_PORT`,
/// `_PROTO`, and the child's environment as `ALIAS_ENV_<KEY>` (without HOME
/// and PATH), the address the child's on a switch both share.
pub fn link_env(parent: &crate::Container, child: &crate::Container, alias: &str) -> Vec<String> {
    let shared: Vec<&String> = parent.config.networks.iter().map(|e| &e.switch_id).collect();
    let ip = child.config.networks.iter().find(|e| shared.contains(&&e.switch_id)).map(|e| e.ip.to_string());
    let upper = alias.to_uppercase().replace('-', "_");
    let mut env = Vec::new();
    if let Some(ip) = &ip {
        let mut ports = child.config.exposed.clone();
        ports.sort();
        if let Some((p, proto)) = ports.first() {
            env.push(format!("{upper}_PORT={proto}://{ip}:{p}"));
        }
        for (p, proto) in &ports {
            let pre = format!("{upper}_PORT_{p}_{}", proto.to_uppercase());
            env.push(format!("{pre}={proto}://{ip}:{p}"));
            env.push(format!("{pre}_ADDR={ip}"));
            env.push(format!("{pre}_PORT={p}"));
            env.push(format!("{pre}_PROTO={proto}"));
        }
    }
    env.push(format!("{upper}_NAME=/{}/{alias}", parent.name()));
    for e in &child.config.env {
        if let Some((k, v)) = e.split_once('=') {
            if k != "HOME" && k != "PATH" {
                env.push(format!("{upper}_ENV_{k}={v}"));
            }
        }
    }
    env
}

/// The environment a container's process gets from its configured one:
/// a bare `KEY` (Docker's way to unset an image's variable) is left out.
pub fn process_env(env: &[String]) -> Vec<String> {
    env.iter().filter(|e| e.contains('=')).cloned().collect()
}

#[cfg(test)]
mod propagation_tests {
    use super::*;

    #[test]
    fn finds_the_holding_mount_and_its_tags() {
        let mi = "21 1 8:1 / / rw - ext4 /dev/sda1 rw\n30 21 0:40 / /srv rw shared:5 - tmpfs none rw\n31 30 0:41 / /srv/x rw master:5 - tmpfs none rw\n";
        assert_eq!(mount_of(mi, std::path::Path::new("/tmp/a")), Some(("/".into(), false)));
        assert_eq!(mount_of(mi, std::path::Path::new("/srv/data")), Some(("/srv".into(), true)));
        assert_eq!(mount_of(mi, std::path::Path::new("/srv/x/y")), Some(("/srv/x".into(), true)));
    }
}
