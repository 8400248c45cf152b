//! Turning a container's configuration into a runtime [`Spec`].

use crate::config::ContainerConfig;
use crate::EngineError;
use moat_runtime::spec::{Mount, NetNs, Process, Rootfs, Seccomp, Spec, MASKED_PATHS, READONLY_PATHS};
use moat_store::ImageRecord;
use moat_store::Layout;
use std::path::PathBuf;

/// Parses `--security-opt` values into the seccomp policy and no_new_privs.
pub fn security(opts: &[String]) -> Result<(Seccomp, bool), EngineError> {
    let mut seccomp = Seccomp::Default;
    let mut nnp = true;
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
            "no-new-privileges" => nnp = !matches!(v, "false"),
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
        DevicePolicy::Default(cfg.devices.iter().map(|d| d.rule.clone()).collect())
    };
    l
}

/// The runtime spec of container `id`.
pub fn build(layout: &Layout, id: &str, cfg: &ContainerConfig, image: &ImageRecord) -> Result<Spec, EngineError> {
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
        mounts.push(Mount::Bind { source: PathBuf::from(&b.source), target: b.target.clone(), readonly: b.readonly });
    }
    for (t, o) in &cfg.tmpfs {
        mounts.push(Mount::Tmpfs { target: t.clone(), options: o.clone() });
    }
    let net = match cfg.network.as_str() {
        "host" => NetNs::Host,
        _ => NetNs::New,
    };
    Ok(Spec {
        rootfs: Rootfs::Overlay { lower, upper: dir.join("upper"), work: dir.join("work") },
        rootfs_target: dir.join("rootfs"),
        readonly_rootfs: cfg.readonly_rootfs,
        process: Process {
            args: cfg.args.clone(),
            env: cfg.env.clone(),
            cwd: if cfg.workdir.is_empty() { "/".into() } else { cfg.workdir.clone() },
            user: cfg.user.clone(),
            tty: cfg.tty,
            rlimits: cfg.ulimits.clone(),
        },
        hostname: cfg.hostname.clone(),
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
            })
            .collect(),
        devices: cfg.devices.clone(),
    })
}
