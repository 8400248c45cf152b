//! `POST /containers/create`: Docker's create body translated into the
//! engine's request. Strings in Docker's syntaxes go through the engine's
//! own parsers (the same as the CLI's flags); the engine validates.
//! Settings moat cannot honour are refused by name, never dropped.

use crate::http::{ApiError, Result};
use moat_engine::config::{ContainerConfig, Limits};
use moat_engine::{flags, CreateRequest, NetworkAttachment};
use serde_json::Value;
use std::collections::BTreeMap;

/// A list of strings (`null`: none; one string: a list of one).
pub(crate) fn strings(v: &Value, what: &str) -> Result<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| ApiError::bad(format!("{what}: expected strings"))))
            .collect(),
        _ => Err(ApiError::bad(format!("{what}: expected a list of strings"))),
    }
}

fn string_map(v: &Value, what: &str) -> Result<BTreeMap<String, String>> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Null => Ok((k.clone(), String::new())),
                _ => Err(ApiError::bad(format!("{what}: values must be strings"))),
            })
            .collect(),
        _ => Err(ApiError::bad(format!("{what}: expected an object"))),
    }
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn int(v: &Value, k: &str) -> Result<i64> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(0),
        Some(x) => x.as_i64().ok_or_else(|| ApiError::bad(format!("{k}: expected an integer"))),
    }
}

fn boolean(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

/// Settings of Docker's API that moat has no equivalent for: refused
/// when set to anything but their default.
const REFUSED: &[(&str, &str)] = &[
    ("UsernsMode", "user namespaces are not supported yet"),
    ("CgroupParent", "moat places containers in its own cgroup"),
    ("VolumeDriver", "only the local volume driver exists"),
];

/// Settings of Docker's API moat does not apply (yet), of any type:
/// refused by name when set to anything but their zero value (never
/// accepted and ignored).
pub(crate) const REFUSED_SET: &[(&str, &str)] = &[
    ("CpuRealtimePeriod", "real-time CPU scheduling is not supported"),
    ("CpuRealtimeRuntime", "real-time CPU scheduling is not supported"),
    ("KernelMemory", "kernel memory limits are not supported (and deprecated by Docker)"),
    ("KernelMemoryTCP", "kernel memory limits are not supported (and deprecated by Docker)"),
    ("BlkioWeight", "block I/O weights are not supported"),
    ("BlkioWeightDevice", "block I/O weights are not supported"),
    ("BlkioDeviceReadBps", "block I/O limits are not supported"),
    ("BlkioDeviceWriteBps", "block I/O limits are not supported"),
    ("BlkioDeviceReadIOps", "block I/O limits are not supported"),
    ("BlkioDeviceWriteIOps", "block I/O limits are not supported"),
    ("DeviceRequests", "device requests (--gpus) are not supported"),
    ("StorageOpt", "storage options are not supported: a container's root is an overlay on the engine root"),
    ("CpuCount", "a Windows setting"),
    ("CpuPercent", "a Windows setting"),
    ("IOMaximumIOps", "a Windows setting"),
    ("IOMaximumBandwidth", "a Windows setting"),
];

/// Whether a JSON value is its type's zero (how Docker's clients send
/// settings they leave alone).
pub(crate) fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// `ConsoleSize: [rows, cols]` of `v`, when both are set.
pub(crate) fn console_size(v: &Value) -> Option<moat_engine::WinSize> {
    let a = v.get("ConsoleSize")?.as_array()?;
    let (rows, cols) = (a.first()?.as_u64()? as u16, a.get(1)?.as_u64()? as u16);
    (rows > 0 && cols > 0).then_some(moat_engine::WinSize { rows, cols })
}

/// `RestartPolicy: {Name, MaximumRetryCount}` of `v`, if it names one.
pub(crate) fn restart_policy(v: &Value) -> Result<Option<moat_engine::config::RestartPolicy>> {
    match v.get("RestartPolicy") {
        Some(r) if !str_of(r, "Name").is_empty() => {
            let n = int(r, "MaximumRetryCount")?;
            let name = str_of(r, "Name");
            let spec = if name == "on-failure" && n > 0 { format!("{name}:{n}") } else { name.to_string() };
            Ok(Some(flags::restart(&spec)?))
        }
        _ => Ok(None),
    }
}

/// Translates Docker's create body (`name` from the query).
pub(crate) fn translate(body: &Value, name: Option<&str>) -> Result<CreateRequest> {
    if !body.is_object() {
        return Err(ApiError::bad("the create body must be a JSON object"));
    }
    let hc = body.get("HostConfig").cloned().unwrap_or(Value::Null);
    let image = str_of(body, "Image");
    if image.is_empty() {
        return Err(ApiError::bad("config: an image is required (Image)"));
    }
    for (k, why) in REFUSED {
        let v = str_of(&hc, k);
        let default = v.is_empty() || (*k == "VolumeDriver" && v == "local");
        if !default {
            return Err(ApiError::bad(format!("HostConfig.{k} {:?}: {why}", str_of(&hc, k))));
        }
    }
    for (k, why) in REFUSED_SET {
        if let Some(v) = hc.get(*k).filter(|v| !is_zero(v)) {
            return Err(ApiError::bad(format!("HostConfig.{k} {v}: {why}")));
        }
    }
    let isolation = match str_of(&hc, "Isolation") {
        "" | "default" => None,
        i @ ("process" | "hyperv" | "vm") => flags::isolation(i)?,
        other => {
            return Err(ApiError::bad(format!("invalid isolation {other:?}: use process, hyperv (or vm), or default")))
        }
    };
    // `--runtime process|hyperv`: the runtimes `info` lists
    let isolation = flags::runtime(str_of(&hc, "Runtime"), isolation)?;

    let mut binds = Vec::new();
    for b in strings(hc.get("Binds").unwrap_or(&Value::Null), "HostConfig.Binds")? {
        binds.push(flags::volume(&b, None)?);
    }
    let mut tmpfs = string_map(hc.get("Tmpfs").unwrap_or(&Value::Null), "HostConfig.Tmpfs")?;
    for (i, m) in hc.get("Mounts").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let opts = flags::MountOptions {
            kind: str_of(m, "Type").to_string(),
            source: str_of(m, "Source").to_string(),
            target: str_of(m, "Target").to_string(),
            readonly: boolean(m, "ReadOnly"),
            nocopy: m.pointer("/VolumeOptions/NoCopy").and_then(Value::as_bool) == Some(true),
            propagation: m.pointer("/BindOptions/Propagation").and_then(Value::as_str).unwrap_or("").to_string(),
            tmpfs_size: m.pointer("/TmpfsOptions/SizeBytes").and_then(Value::as_i64).map(|n| n.to_string()),
            tmpfs_mode: m.pointer("/TmpfsOptions/Mode").and_then(Value::as_u64).map(|n| format!("{n:o}")),
            ..Default::default()
        };
        match opts.resolve(&format!("HostConfig.Mounts[{i}]"), None)? {
            flags::MountArg::Mount(m) => binds.push(m),
            flags::MountArg::Tmpfs(t, o) => {
                tmpfs.insert(t, o);
            }
        }
    }
    // the config's own volumes, like an image's: an anonymous volume where
    // no bind, mount or tmpfs is (dockerd: the bind wins)
    if let Some(Value::Object(vols)) = body.get("Volumes") {
        let clean = moat_engine::validate::clean_target;
        for path in vols.keys() {
            let covered =
                binds.iter().any(|b| clean(&b.target) == clean(path)) || tmpfs.keys().any(|t| clean(t) == clean(path));
            if !covered {
                binds.push(flags::volume(path, None)?);
            }
        }
    }

    let mut publish = Vec::new();
    if let Some(Value::Object(pb)) = hc.get("PortBindings") {
        for (port, list) in pb {
            let list = list.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                publish.extend(flags::port_binding("", "", port)?);
            }
            for b in list {
                publish.extend(flags::port_binding(str_of(&b, "HostIp"), str_of(&b, "HostPort"), port)?);
            }
        }
    }
    let mut exposed = Vec::new();
    if let Some(Value::Object(ep)) = body.get("ExposedPorts") {
        for k in ep.keys() {
            let (p, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
            let p: u16 = p.parse().map_err(|_| ApiError::bad(format!("ExposedPorts: invalid port {k:?}")))?;
            exposed.push((p, proto.to_string()));
        }
    }

    let mut limits = Limits::default();
    let mem = int(&hc, "Memory")?;
    if mem > 0 {
        limits.memory = Some(mem);
    }
    let swap = int(&hc, "MemorySwap")?;
    if swap != 0 {
        limits.memory_swap = Some(swap);
    }
    let nano = int(&hc, "NanoCpus")?;
    if nano > 0 {
        limits.cpus = Some(nano as f64 / 1e9);
    }
    // --cpu-quota/--cpu-period: the same CFS limit as --cpus, quota / period
    let quota = int(&hc, "CpuQuota")?;
    if quota > 0 {
        if nano > 0 {
            return Err(ApiError::bad("conflicting options: NanoCpus and CpuQuota cannot both be set"));
        }
        let period = match int(&hc, "CpuPeriod")? {
            0 => 100_000,
            p if (1000..=1_000_000).contains(&p) => p,
            p => return Err(ApiError::bad(format!("CPU cfs period {p} out of range: 1000 to 1000000 (µs)"))),
        };
        limits.cpus = Some(quota as f64 / period as f64);
    }
    let shares = int(&hc, "CpuShares")?;
    if shares > 0 {
        limits.cpu_shares = Some(shares as u64);
    }
    limits.cpuset_cpus = Some(str_of(&hc, "CpusetCpus").to_string()).filter(|c| !c.is_empty());
    limits.cpuset_mems = Some(str_of(&hc, "CpusetMems").to_string()).filter(|c| !c.is_empty());
    let reservation = int(&hc, "MemoryReservation")?;
    if reservation > 0 {
        limits.memory_reservation = Some(reservation);
    }
    // -1 (or nothing) is the kernel's default swappiness
    limits.swappiness = match hc.get("MemorySwappiness") {
        None | Some(Value::Null) => None,
        Some(v) => {
            flags::swappiness(v.as_i64().ok_or_else(|| ApiError::bad("MemorySwappiness: expected an integer"))?)?
        }
    };
    limits.oom_kill_disable = boolean(&hc, "OomKillDisable");
    let pids = int(&hc, "PidsLimit")?;
    if pids > 0 {
        limits.pids = Some(pids);
    }

    let restart = restart_policy(&hc)?.unwrap_or_default();

    // `--log-opt` alone comes with an empty Type: the default driver's options
    let log = match hc.get("LogConfig") {
        Some(l) => {
            let opts: Vec<String> = string_map(l.get("Config").unwrap_or(&Value::Null), "LogConfig.Config")?
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let driver = Some(str_of(l, "Type")).filter(|t| !t.is_empty());
            moat_engine::logs::LogConfig::parse(driver, &opts).map_err(ApiError::bad)?
        }
        None => Default::default(),
    };

    let mut devices = Vec::new();
    for d in hc.get("Devices").and_then(Value::as_array).into_iter().flatten() {
        let (h, c, p) = (str_of(d, "PathOnHost"), str_of(d, "PathInContainer"), str_of(d, "CgroupPermissions"));
        let c = if c.is_empty() { h } else { c };
        devices.push(flags::device(&if p.is_empty() { format!("{h}:{c}") } else { format!("{h}:{c}:{p}") })?);
    }
    let mut ulimits = Vec::new();
    for u in hc.get("Ulimits").and_then(Value::as_array).into_iter().flatten() {
        ulimits.push(flags::ulimit(&format!("{}={}:{}", str_of(u, "Name"), int(u, "Soft")?, int(u, "Hard")?))?);
    }

    // networks: NetworkMode, or the endpoints of NetworkingConfig
    let mut network = str_of(&hc, "NetworkMode").to_string();
    let mut ip = None;
    let mut networks = Vec::new();
    let ip_of = |ep: &Value| -> Result<Option<std::net::Ipv4Addr>> {
        if let Some(a) = ep.pointer("/IPAMConfig/IPv6Address").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            return Err(ApiError::bad(format!(
                "IPv6Address {a}: a chosen IPv6 address is not supported (on a dual-stack switch the IPv6 address follows the IPv4 one)"
            )));
        }
        match ep.pointer("/IPAMConfig/IPv4Address").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(s) => s.parse().map(Some).map_err(|_| ApiError::bad(format!("invalid IPv4Address {s:?}"))),
            None => Ok(None),
        }
    };
    let mut aliases: Vec<String> = Vec::new();
    let mut mac = Some(str_of(body, "MacAddress").to_string()).filter(|m| !m.is_empty());
    if let Some(Value::Object(eps)) = body.pointer("/NetworkingConfig/EndpointsConfig") {
        let unnamed = network.is_empty() || network == "default";
        for (i, (name, ep)) in eps.iter().enumerate() {
            let names = strings(ep.get("Aliases").unwrap_or(&Value::Null), "Aliases")?;
            let ep_mac = Some(str_of(ep, "MacAddress").to_string()).filter(|m| !m.is_empty());
            if (unnamed && i == 0) || (!unnamed && name == &network) {
                network = name.clone();
                ip = ip_of(ep)?;
                aliases = names;
                mac = mac.or(ep_mac);
            } else {
                networks.push(NetworkAttachment { switch: name.clone(), ip: ip_of(ep)?, mac: ep_mac, aliases: names });
            }
        }
    }
    if network == "default" {
        network.clear();
    }

    let entrypoint = match body.get("Entrypoint") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => {
            let e = strings(v, "Entrypoint")?;
            if e.is_empty() {
                vec![String::new()]
            } else {
                e
            }
        }
    };
    let console_size = console_size(&hc).map(|w| (w.rows, w.cols));
    let healthcheck = match body.get("Healthcheck") {
        None | Some(Value::Null) => None,
        Some(h) => {
            Some(serde_json::from_value(h.clone()).map_err(|e| ApiError::bad(format!("invalid Healthcheck: {e}")))?)
        }
    };
    let stop_timeout = body.get("StopTimeout").and_then(Value::as_u64).map(|t| t.min(u32::MAX as u64) as u32);
    let config = ContainerConfig {
        image: image.to_string(),
        cmd: strings(body.get("Cmd").unwrap_or(&Value::Null), "Cmd")?,
        entrypoint,
        env: strings(body.get("Env").unwrap_or(&Value::Null), "Env")?,
        workdir: str_of(body, "WorkingDir").to_string(),
        user: str_of(body, "User").to_string(),
        hostname: str_of(body, "Hostname").to_string(),
        domainname: str_of(body, "Domainname").to_string(),
        tty: boolean(body, "Tty"),
        open_stdin: boolean(body, "OpenStdin"),
        stdin_once: boolean(body, "StdinOnce"),
        labels: string_map(body.get("Labels").unwrap_or(&Value::Null), "Labels")?,
        binds,
        healthcheck,
        init: boolean(&hc, "Init"),
        volumes_from: strings(hc.get("VolumesFrom").unwrap_or(&Value::Null), "HostConfig.VolumesFrom")?,
        tmpfs,
        readonly_rootfs: boolean(&hc, "ReadonlyRootfs"),
        cap_add: strings(hc.get("CapAdd").unwrap_or(&Value::Null), "HostConfig.CapAdd")?,
        cap_drop: strings(hc.get("CapDrop").unwrap_or(&Value::Null), "HostConfig.CapDrop")?,
        privileged: boolean(&hc, "Privileged"),
        security_opt: strings(hc.get("SecurityOpt").unwrap_or(&Value::Null), "HostConfig.SecurityOpt")?,
        limits,
        restart,
        auto_remove: boolean(&hc, "AutoRemove"),
        isolation,
        network,
        stop_signal: str_of(body, "StopSignal").to_string(),
        stop_timeout,
        shm_size: Some(int(&hc, "ShmSize")?).filter(|s| *s > 0).map(|s| s as u64),
        ulimits,
        ip,
        mac,
        dns: strings(hc.get("Dns").unwrap_or(&Value::Null), "HostConfig.Dns")?,
        add_hosts: strings(hc.get("ExtraHosts").unwrap_or(&Value::Null), "HostConfig.ExtraHosts")?,
        publish,
        publish_all: boolean(&hc, "PublishAllPorts"),
        exposed,
        devices,
        log,
        dns_search: strings(hc.get("DnsSearch").unwrap_or(&Value::Null), "HostConfig.DnsSearch")?,
        dns_options: strings(hc.get("DnsOptions").unwrap_or(&Value::Null), "HostConfig.DnsOptions")?,
        sysctls: string_map(hc.get("Sysctls").unwrap_or(&Value::Null), "HostConfig.Sysctls")?,
        console_size,
        aliases,
        annotations: string_map(hc.get("Annotations").unwrap_or(&Value::Null), "HostConfig.Annotations")?,
        device_cgroup_rules: strings(
            hc.get("DeviceCgroupRules").unwrap_or(&Value::Null),
            "HostConfig.DeviceCgroupRules",
        )?,
        pid_mode: str_of(&hc, "PidMode").to_string(),
        cgroupns_mode: str_of(&hc, "CgroupnsMode").to_string(),
        ipc_mode: str_of(&hc, "IpcMode").to_string(),
        uts_mode: str_of(&hc, "UTSMode").to_string(),
        links: strings(hc.get("Links").unwrap_or(&Value::Null), "HostConfig.Links")?
            .iter()
            .map(|l| flags::link(l))
            .collect::<std::result::Result<_, _>>()?,
        oom_score_adj: int(&hc, "OomScoreAdj")?.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        group_add: strings(hc.get("GroupAdd").unwrap_or(&Value::Null), "HostConfig.GroupAdd")?,
        ..Default::default()
    };
    let name = name.filter(|n| !n.is_empty()).map(|n| n.trim_start_matches('/').to_string());
    Ok(CreateRequest { name, config, networks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: Value) -> String {
        translate(&v, None).err().map(|e| e.message).unwrap_or_default()
    }

    #[test]
    fn docker_py_minimal_body() -> Result<()> {
        let t = translate(&serde_json::json!({"Image": "busybox", "Cmd": ["echo", "hi"]}), Some("/web"))?;
        assert_eq!(t.name.as_deref(), Some("web"));
        assert_eq!(t.config.cmd, ["echo", "hi"]);
        assert!(t.config.isolation.is_none() && t.config.network.is_empty());
        Ok(())
    }

    #[test]
    fn isolation_ports_limits_and_networks() -> Result<()> {
        let t = translate(
            &serde_json::json!({
                "Image": "busybox", "Cmd": "sh", "Entrypoint": [], "ExposedPorts": {"80/tcp": {}},
                "HostConfig": {"Isolation": "hyperv", "Memory": 67108864, "NanoCpus": 1500000000,
                    "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
                    "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}, "NetworkMode": "default"},
                "NetworkingConfig": {"EndpointsConfig": {"front": {"IPAMConfig": {"IPv4Address": "10.9.0.5"}, "Aliases": ["f"]}, "back": {"Aliases": ["b"]}}}
            }),
            None,
        )?;
        let c = &t.config;
        assert_eq!(c.isolation, Some(moat_core::Isolation::Hyperv));
        assert_eq!((c.limits.memory, c.limits.cpus), (Some(64 << 20), Some(1.5)));
        assert_eq!(c.publish.len(), 1);
        assert_eq!(c.entrypoint, [""]);
        assert_eq!(c.exposed, [(80, "tcp".to_string())]);
        assert_eq!((c.network.as_str(), c.ip, c.aliases.as_slice()), ("back", None, ["b".to_string()].as_slice()));
        let front = NetworkAttachment {
            switch: "front".into(),
            ip: Some([10, 9, 0, 5].into()),
            aliases: vec!["f".into()],
            ..Default::default()
        };
        assert_eq!(t.networks, [front]);
        Ok(())
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let e = err(serde_json::json!({"Image": "b", "HostConfig": {"Isolation": "hyper-v"}}));
        assert!(e.contains("invalid isolation") && e.contains("process, hyperv"), "{e}");
        assert!(err(serde_json::json!({"Image": "b", "HostConfig": {"UsernsMode": "host"}})).contains("UsernsMode"));
        assert!(err(serde_json::json!({"Cmd": ["x"]})).contains("image is required"));
        assert!(err(serde_json::json!([1])).contains("object"));
        assert!(err(serde_json::json!({"Image": "b", "Env": [1]})).contains("Env"));
        assert!(err(serde_json::json!({"Image": "b", "HostConfig": {"Memory": "lots"}})).contains("Memory"));
    }
}
