//! Checks of a container configuration before anything is created, with
//! Docker's wording where Docker has one. Every front end (CLI, API) gets
//! the same answers because the engine runs them in `Engine::create`.

use crate::config::{ContainerConfig, MountKind, RestartPolicy};
use crate::EngineError;

fn invalid(m: impl Into<String>) -> EngineError {
    EngineError::Invalid(m.into())
}

/// The numbers of the kernel's list syntax (`0-2,4`); `None` when it is not that.
pub fn cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let n = part.trim().parse::<u32>().ok()?;
                (n, n)
            }
        };
        if a > b || b - a > 4096 {
            return None;
        }
        out.extend(a..=b);
    }
    Some(out)
}

/// A hostname the kernel takes and resolvers accept: 1–63 characters of
/// letters, digits, `-` and `.`, not starting with `-` or `.`.
pub fn hostname(h: &str) -> Result<(), EngineError> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !h.starts_with(['-', '.']);
    if !ok {
        return Err(invalid(format!(
            "invalid hostname {h:?}: use 1 to 63 letters, digits, '-' or '.', not starting with '-' or '.'"
        )));
    }
    Ok(())
}

/// Docker's `--add-host NAME:host-gateway`: the host, as the container
/// reaches it (the gateway of its switch).
pub const HOST_GATEWAY: &str = "host-gateway";

/// `KEY=VALUE` with a non-empty key, or a bare `KEY` (Docker's: unset it).
pub fn env(e: &str) -> Result<(), EngineError> {
    if moat_runtime::relay::env_key(e).is_empty() || e.contains('\0') {
        return Err(invalid(format!("invalid environment variable {e:?}: use KEY=VALUE with a non-empty KEY")));
    }
    Ok(())
}

/// A container path as the kernel resolves it lexically: repeated `/` and
/// `.` components dropped, no trailing `/` (`//proc/./` is `/proc`). `..`
/// is kept for the caller to refuse.
pub fn clean_target(target: &str) -> String {
    let parts: Vec<&str> = target.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    format!("/{}", parts.join("/"))
}

/// Container paths no mount may cover: the root and the kernel's
/// filesystems, however the path is spelled.
pub fn mount_target(target: &str, what: &str) -> Result<(), EngineError> {
    if !target.starts_with('/') {
        return Err(invalid(format!("invalid {what} {target:?}: the container path must be absolute")));
    }
    let cleaned = clean_target(target);
    let t = cleaned.trim_end_matches('/');
    if t.is_empty() || t.split('/').any(|c| c == "..") {
        return Err(invalid(format!("invalid {what} {target:?}: destination can't be '/'")));
    }
    for reserved in ["/proc", "/sys"] {
        if t == reserved || t.starts_with(&format!("{reserved}/")) {
            return Err(invalid(format!(
                "invalid {what} {target:?}: {reserved} is the kernel's and cannot be mounted over"
            )));
        }
    }
    if t == "/dev" {
        return Err(invalid(format!("invalid {what} {target:?}: /dev is the container's own device directory")));
    }
    Ok(())
}

/// Docker's `--tmpfs` options: mount flags, `size=`, `mode=`, `uid=`, `gid=`, `nr_inodes=`.
pub fn tmpfs_options(target: &str, opts: &str) -> Result<(), EngineError> {
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        let (k, v) = o.split_once('=').unwrap_or((o, ""));
        let ok = match k {
            "ro" | "rw" | "exec" | "noexec" | "suid" | "nosuid" | "dev" | "nodev" => v.is_empty(),
            "size" => {
                v.ends_with('%') && v[..v.len() - 1].parse::<u8>().is_ok() || moat_core::human::parse_size(v).is_ok()
            }
            "mode" => u32::from_str_radix(v, 8).is_ok_and(|m| m <= 0o7777),
            "uid" | "gid" | "nr_inodes" => v.parse::<u64>().is_ok(),
            _ => false,
        };
        if !ok {
            return Err(invalid(format!("invalid tmpfs option {o:?} for {target}")));
        }
    }
    Ok(())
}

/// Checks the mounts once `--volumes-from` and the image's volumes are
/// added: one mount per container path.
pub fn mounts(cfg: &ContainerConfig) -> Result<(), EngineError> {
    let mut seen = std::collections::BTreeSet::new();
    let targets = cfg.binds.iter().map(|b| clean_target(&b.target)).chain(cfg.tmpfs.keys().map(|t| clean_target(t)));
    for t in targets {
        if !seen.insert(t.clone()) {
            return Err(invalid(format!("Duplicate mount point: {t}")));
        }
    }
    Ok(())
}

/// Notes for the user about options accepted without effect (Docker's
/// create `Warnings`).
pub fn warnings(cfg: &ContainerConfig) -> Vec<String> {
    cfg.binds
        .iter()
        .filter(|b| !b.relabel.is_empty())
        .map(|b| {
            format!(
                "the {} option of the mount at {} has no effect: moat does not use SELinux labels",
                b.relabel, b.target
            )
        })
        .collect()
}

/// Everything in `cfg` that can be checked before anything exists.
pub fn config(cfg: &ContainerConfig) -> Result<(), EngineError> {
    if !cfg.hostname.is_empty() {
        hostname(&cfg.hostname)?;
    }
    let modes: [(&str, &str, &[&str]); 4] = [
        ("cgroupns", &cfg.cgroupns_mode, &["", "private", "host"]),
        ("pid", &cfg.pid_mode, &["", "host"]),
        ("ipc", &cfg.ipc_mode, &["", "private", "shareable", "host"]),
        ("uts", &cfg.uts_mode, &["", "host"]),
    ];
    for (what, mode, ok) in modes {
        if !ok.contains(&mode) {
            let why = if mode.starts_with("container:") {
                "sharing another container's namespace is not supported"
            } else {
                "not a mode moat knows"
            };
            return Err(invalid(format!(
                "invalid --{what} {mode:?}: {why} (use {})",
                ok.iter().filter(|m| !m.is_empty()).copied().collect::<Vec<_>>().join(" or ")
            )));
        }
    }
    for r in &cfg.device_cgroup_rules {
        crate::flags::device_cgroup_rule(r)?;
    }
    if !(-1000..=1000).contains(&cfg.oom_score_adj) {
        return Err(invalid(format!("Invalid value {}, range for oom score adj is [-1000, 1000]", cfg.oom_score_adj)));
    }
    for g in &cfg.group_add {
        let ok = !g.is_empty() && !g.contains([':', '\n', '\0']);
        if !ok {
            return Err(invalid(format!("invalid group {g:?} for --group-add: a group name or GID")));
        }
    }
    if cfg.domainname.len() > 64 || cfg.domainname.contains('\0') {
        return Err(invalid(format!("invalid domain name {:?}: at most 64 bytes, no NUL", cfg.domainname)));
    }
    for e in &cfg.env {
        env(e)?;
    }
    if let Some(h) = &cfg.healthcheck {
        h.validate()?;
    }
    if !cfg.stop_signal.is_empty() {
        // refused now rather than when `stop` needs it
        crate::flags::signal(&cfg.stop_signal)
            .map_err(|_| invalid(format!("invalid stop signal {:?}: no such signal", cfg.stop_signal)))?;
    }
    for b in &cfg.binds {
        match b.kind {
            MountKind::Bind if !b.source.starts_with('/') => {
                return Err(invalid(format!(
                    "invalid bind mount source {:?}: the host path must be absolute",
                    b.source
                )));
            }
            MountKind::Volume if !b.source.is_empty() => crate::flags::volume_name(&b.source)?,
            _ => {}
        }
        mount_target(&b.target, if b.kind == MountKind::Bind { "bind mount" } else { "volume" })?;
        match b.propagation.as_str() {
            "" | "rprivate" | "private" | "rslave" | "slave" => {}
            "shared" | "rshared" => {
                return Err(EngineError::Unsupported(format!(
                    "bind propagation {} of {} is not supported: moat's containers may receive host mounts (rslave) but never propagate mounts back to the host",
                    b.propagation, b.target
                )))
            }
            p => return Err(invalid(format!("invalid bind propagation {p:?} of {}", b.target))),
        }
    }
    for (t, o) in &cfg.tmpfs {
        mount_target(t, "tmpfs mount")?;
        tmpfs_options(t, o)?;
    }
    for d in &cfg.dns {
        if d.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!("{d:?} is not an IP address: a DNS server is given by its address")));
        }
    }
    for d in cfg.dns_search.iter().chain(&cfg.dns_options) {
        if d.is_empty() || d.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!("invalid DNS search domain or option {d:?}")));
        }
    }
    for h in &cfg.add_hosts {
        match h.split_once(':') {
            // a name goes into /etc/hosts: no blanks, comments or control characters
            Some((n, ip))
                if !n.is_empty()
                    && !n.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#')
                    && (ip == HOST_GATEWAY || ip.parse::<std::net::IpAddr>().is_ok()) => {}
            _ => return Err(invalid(format!("invalid extra host {h:?}: use NAME:IP"))),
        }
    }
    let l = &cfg.limits;
    for (what, list, online) in [
        ("CPUs", &l.cpuset_cpus, "/sys/devices/system/cpu/online"),
        ("memory nodes", &l.cpuset_mems, "/sys/devices/system/node/online"),
    ] {
        let Some(list) = list else { continue };
        let want = cpu_list(list)
            .ok_or_else(|| invalid(format!("invalid cpuset {list:?}: use numbers and ranges, e.g. 0-2,4")))?;
        // a host without NUMA has node 0 only
        let have_text = std::fs::read_to_string(online).map(|s| s.trim().to_string()).unwrap_or_else(|_| "0".into());
        let have = cpu_list(&have_text).unwrap_or_default();
        if !want.iter().all(|c| have.contains(c)) {
            return Err(invalid(format!(
                "Requested {what} are not available - requested {list}, available: {have_text}"
            )));
        }
    }
    if let (Some(r), Some(m)) = (l.memory_reservation, l.memory) {
        if r > m {
            return Err(invalid("Minimum memory limit can not be less than memory reservation limit, see usage"));
        }
    }
    if let Some(m) = l.memory {
        if m < 6 << 20 {
            return Err(invalid("Minimum memory limit allowed is 6MB"));
        }
    }
    if let Some(s) = l.memory_swap {
        match l.memory {
            None => return Err(invalid("you should always set the memory limit when using the memory-swap limit")),
            Some(m) if s != -1 && s < m => {
                return Err(invalid("minimum memory-swap limit should be larger than the memory limit"))
            }
            _ => {}
        }
    }
    if let Some(c) = l.cpus {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        if !c.is_finite() || c < 0.01 || c > n as f64 {
            return Err(crate::flags::cpus_out_of_range());
        }
    }
    if let Some(s) = l.cpu_shares {
        if s > 262_144 {
            return Err(invalid(format!("CPU shares {s} is above the maximum of 262144")));
        }
    }
    for k in cfg.sysctls.keys() {
        let namespaced = k.starts_with("net.")
            || k.starts_with("kernel.shm")
            || k.starts_with("kernel.msg")
            || k == "kernel.sem"
            || k.starts_with("fs.mqueue.");
        if !namespaced || k.contains("..") || k.contains('/') {
            return Err(invalid(format!(
                "sysctl {k:?} is not allowed: only namespaced ones (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)"
            )));
        }
        if k.starts_with("net.") && (cfg.network_mode() == crate::config::NetworkMode::Host) {
            return Err(invalid(format!(
                "sysctl {k:?} is not allowed with network mode host: it would change the host"
            )));
        }
    }
    if cfg.auto_remove && cfg.restart != RestartPolicy::No {
        return Err(invalid("Conflicting options: cannot specify both --restart and --rm"));
    }
    Ok(())
}

/// Refuses options that `iso` cannot honour, before anything changes.
pub(crate) fn check_isolation(cfg: &ContainerConfig, iso: moat_core::Isolation) -> Result<(), EngineError> {
    if iso == moat_core::Isolation::Hyperv && (cfg.network_mode() == crate::config::NetworkMode::Host) {
        return Err(EngineError::Invalid(
            "network mode host shares the host's network stack, which a utility VM cannot: use process isolation, or a switch".into(),
        ));
    }
    if iso == moat_core::Isolation::Hyperv {
        for (flag, mode) in [
            ("--pid", &cfg.pid_mode),
            ("--ipc", &cfg.ipc_mode),
            ("--uts", &cfg.uts_mode),
            ("--cgroupns", &cfg.cgroupns_mode),
        ] {
            if mode == "host" {
                return Err(EngineError::Invalid(format!(
                    "{flag}=host shares a namespace of the host's kernel, which a utility VM's container does not run on: use process isolation"
                )));
            }
        }
    }
    if iso == moat_core::Isolation::Hyperv && (cfg.limits.cpuset_cpus.is_some() || cfg.limits.cpuset_mems.is_some()) {
        return Err(EngineError::Invalid(
            "--cpuset-cpus/--cpuset-mems pin host CPUs and memory nodes, which a utility VM's vCPUs and memory are not: use process isolation, or --cpus".into(),
        ));
    }
    if cfg.limits.swappiness.is_some() || cfg.limits.oom_kill_disable {
        let what = if cfg.limits.oom_kill_disable { "--oom-kill-disable" } else { "--memory-swappiness" };
        if iso == moat_core::Isolation::Hyperv {
            return Err(EngineError::Invalid(format!(
                "{what} needs cgroup v1, and a utility VM's guest runs cgroup v2, which has no such per-container setting: use process isolation on a cgroup v1 host"
            )));
        }
        if moat_runtime::cgroup::version() == moat_runtime::cgroup::Version::V2 {
            return Err(EngineError::Invalid(format!(
                "{what} needs cgroup v1: this host runs cgroup v2, which has no such per-container setting"
            )));
        }
    }
    if iso == moat_core::Isolation::Hyperv && !cfg.device_cgroup_rules.is_empty() {
        return Err(EngineError::Invalid(
            "device cgroup rules admit host devices (--device), which cannot reach a utility VM: use process isolation"
                .into(),
        ));
    }
    if iso == moat_core::Isolation::Hyperv && !cfg.devices.is_empty() {
        return Err(EngineError::Invalid(
            "host devices (--device) cannot reach a utility VM: use process isolation, or no devices".into(),
        ));
    }
    if iso == moat_core::Isolation::Hyperv {
        if let Some(b) = cfg.binds.iter().find(|b| matches!(b.propagation.as_str(), "slave" | "rslave")) {
            return Err(EngineError::Invalid(format!(
                "bind propagation {} of {} needs process isolation: a utility VM sees host directories through virtio-fs, which does not carry new host mounts",
                b.propagation, b.target
            )));
        }
    }
    Ok(())
}

/// The first option of `cfg` that belongs to the sandbox it joins
/// (`--network container:X`, a pod), in words; `None` when there is none.
pub(crate) fn sandbox_owned(cfg: &ContainerConfig) -> Option<&'static str> {
    [
        (!cfg.publish.is_empty() || cfg.publish_all, "published ports"),
        (!cfg.hostname.is_empty(), "a hostname"),
        (!cfg.dns.is_empty() || !cfg.dns_search.is_empty() || !cfg.dns_options.is_empty(), "DNS options"),
        (!cfg.add_hosts.is_empty(), "extra hosts"),
        (cfg.mac.is_some() || cfg.ip.is_some(), "an address"),
    ]
    .into_iter()
    .find_map(|(c, what)| c.then_some(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks() {
        assert!(hostname("web-1.local").is_ok());
        assert!(hostname("a/b").is_err());
        assert!(hostname(&"a".repeat(64)).is_err());
        assert!(hostname("-x").is_err());
        assert!(env("A=1").is_ok() && env("A=").is_ok());
        // a bare KEY unsets the image's (Docker's rule)
        assert!(env("=x").is_err() && env("").is_err() && env("A").is_ok());
        assert!(mount_target("/data", "bind mount").is_ok());
        for bad in [
            "/",
            "//",
            "/proc",
            "/proc/sys",
            "/sys/x",
            "/dev",
            "relative",
            "/a/../b",
            "//proc",
            "/./proc/.",
            "//dev",
            "/dev/",
            "/./",
            "///sys//kernel",
        ] {
            assert!(mount_target(bad, "bind mount").is_err(), "{bad}");
        }
        assert!(mount_target("/dev/shm", "tmpfs").is_ok());
        assert!(tmpfs_options("/t", "size=64m,mode=1777,exec").is_ok());
        assert!(tmpfs_options("/t", "size=50%").is_ok());
        for bad in ["size=bogus", "mode=999", "frobnicate", "uid=x"] {
            assert!(tmpfs_options("/t", bad).is_err(), "{bad}");
        }
        assert!(crate::flags::bytes("memory", u64::MAX).is_err());
        let mut c = ContainerConfig { auto_remove: true, restart: RestartPolicy::Always, ..Default::default() };
        assert!(config(&c).is_err_and(|e| e.to_string().contains("Conflicting options")));
        c.restart = RestartPolicy::No;
        c.limits.cpus = Some(f64::NAN);
        assert!(config(&c).is_err());
        c.limits.cpus = None;
        c.dns = vec!["bogus".into()];
        assert!(config(&c).is_err());
    }
}
