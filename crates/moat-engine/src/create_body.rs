//! Docker's create body (`POST /containers/create`: `Config` with its
//! `HostConfig` and `NetworkingConfig`), typed. The Docker API server
//! deserializes it ([`CreateBody::from_json`]) and `moat run`/`create` fill
//! it from their flags, as the docker CLI does; [`CreateBody::into_request`]
//! is the one translation into the engine's [`CreateRequest`], so both
//! front ends share every rule (entrypoint reset, first network and the
//! rest, mounts, ports, limits, refusals). The engine validates the result.

use crate::config::{ContainerConfig, CreateRequest, Limits, NetworkAttachment, RestartPolicy};
use crate::health::HealthConfig;
use crate::{flags, EngineError};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn invalid(m: impl Into<String>) -> EngineError {
    EngineError::Invalid(m.into())
}

/// A list of strings that Docker's clients may also send as one string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Strings(pub Vec<String>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        match OneOrMany::deserialize(d) {
            Ok(OneOrMany::One(s)) => Ok(Strings(vec![s])),
            Ok(OneOrMany::Many(v)) => Ok(Strings(v)),
            Err(_) => Err(serde::de::Error::custom("expected a string or a list of strings")),
        }
    }
}

/// `Config` and its `HostConfig` and `NetworkingConfig` (the fields moat
/// knows; others are ignored as dockerd ignores what it does not know,
/// except the `HostConfig` settings it refuses by name).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct CreateBody {
    pub image: String,
    pub cmd: Strings,
    /// `None`: the image's; an empty list resets it (as `[""]` does).
    pub entrypoint: Option<Strings>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    pub domainname: String,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub labels: BTreeMap<String, String>,
    /// `"80/tcp": {}`.
    pub exposed_ports: BTreeMap<String, Value>,
    /// The config's own volumes: `"/data": {}`.
    pub volumes: BTreeMap<String, Value>,
    pub healthcheck: Option<HealthConfig>,
    pub mac_address: String,
    pub stop_signal: String,
    pub stop_timeout: Option<i64>,
    pub host_config: HostConfigBody,
    pub networking_config: NetworkingConfigBody,
    /// Not Docker's: the pod to join (`moat run --pod`).
    #[serde(skip)]
    pub pod: Option<String>,
}

/// `HostConfig`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct HostConfigBody {
    pub binds: Vec<String>,
    pub tmpfs: BTreeMap<String, String>,
    pub mounts: Vec<MountBody>,
    pub port_bindings: BTreeMap<String, Option<Vec<PortBindingBody>>>,
    pub publish_all_ports: bool,
    pub memory: i64,
    pub memory_swap: i64,
    pub memory_reservation: i64,
    pub memory_swappiness: Option<i64>,
    pub oom_kill_disable: bool,
    pub nano_cpus: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub cpu_shares: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub pids_limit: Option<i64>,
    pub restart_policy: RestartPolicyBody,
    pub auto_remove: bool,
    pub isolation: String,
    pub runtime: String,
    pub network_mode: String,
    pub log_config: Option<LogConfigBody>,
    pub devices: Vec<DeviceBody>,
    pub ulimits: Vec<UlimitBody>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_options: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub sysctls: BTreeMap<String, String>,
    pub shm_size: i64,
    pub init: bool,
    pub readonly_rootfs: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub security_opt: Vec<String>,
    pub volumes_from: Vec<String>,
    pub links: Vec<String>,
    pub oom_score_adj: i64,
    pub group_add: Vec<String>,
    pub pid_mode: String,
    pub ipc_mode: String,
    #[serde(rename = "UTSMode")]
    pub uts_mode: String,
    pub cgroupns_mode: String,
    pub annotations: BTreeMap<String, String>,
    pub device_cgroup_rules: Vec<String>,
    /// `[rows, cols]`.
    pub console_size: Option<[u16; 2]>,
    /// Everything else, for the refusals by name.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// One `Mounts` entry.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct MountBody {
    #[serde(rename = "Type")]
    pub kind: String,
    pub source: String,
    pub target: String,
    pub read_only: bool,
    pub bind_options: Option<BindOptionsBody>,
    pub volume_options: Option<VolumeOptionsBody>,
    pub tmpfs_options: Option<TmpfsOptionsBody>,
}

/// `BindOptions`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct BindOptionsBody {
    pub propagation: String,
}

/// `VolumeOptions`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct VolumeOptionsBody {
    pub no_copy: bool,
}

/// `TmpfsOptions`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct TmpfsOptionsBody {
    pub size_bytes: i64,
    pub mode: u32,
}

/// One host binding of a `PortBindings` entry.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "PascalCase")]
pub struct PortBindingBody {
    pub host_ip: String,
    pub host_port: String,
}

/// `RestartPolicy`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RestartPolicyBody {
    pub name: String,
    pub maximum_retry_count: i64,
}

/// `LogConfig`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct LogConfigBody {
    #[serde(rename = "Type")]
    pub kind: String,
    pub config: BTreeMap<String, String>,
}

/// One `Devices` entry.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct DeviceBody {
    pub path_on_host: String,
    pub path_in_container: String,
    pub cgroup_permissions: String,
}

/// One `Ulimits` entry.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct UlimitBody {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// `NetworkingConfig`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct NetworkingConfigBody {
    pub endpoints_config: BTreeMap<String, EndpointBody>,
}

/// One `EndpointsConfig` entry.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct EndpointBody {
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<IpamBody>,
    pub aliases: Vec<String>,
    pub mac_address: String,
}

/// An endpoint's `IPAMConfig`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IpamBody {
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

/// `HostConfig` settings moat has no equivalent for: refused when set to
/// anything but their zero value (never accepted and ignored).
pub const REFUSED: &[(&str, &str)] = &[
    ("UsernsMode", "user namespaces are not supported yet"),
    ("CgroupParent", "moat places containers in its own cgroup"),
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
pub fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Drops `null` members of objects (Docker's clients send `null` for
/// "unset"; the body's defaults say the same).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

impl RestartPolicyBody {
    /// Docker's form of the engine's policy.
    pub fn of(p: &RestartPolicy) -> Self {
        let (name, n) = match p {
            RestartPolicy::No => ("no", 0),
            RestartPolicy::OnFailure { max } => ("on-failure", *max as i64),
            RestartPolicy::Always => ("always", 0),
            RestartPolicy::UnlessStopped => ("unless-stopped", 0),
        };
        RestartPolicyBody { name: name.into(), maximum_retry_count: n }
    }

    /// The engine's policy (`None` when no name is given).
    pub fn policy(&self) -> Result<Option<RestartPolicy>, EngineError> {
        if self.name.is_empty() {
            return Ok(None);
        }
        let n = self.maximum_retry_count;
        let spec = if self.name == "on-failure" && n > 0 { format!("on-failure:{n}") } else { self.name.clone() };
        flags::restart(&spec).map(Some)
    }
}

impl TryFrom<flags::MountOptions> for MountBody {
    type Error = EngineError;
    /// A `--mount` flag as the API's entry (sizes in bytes, the mode octal).
    fn try_from(m: flags::MountOptions) -> Result<Self, EngineError> {
        let size = m.tmpfs_size.as_deref().map(|s| flags::size("tmpfs-size", s)).transpose()?;
        let mode = m
            .tmpfs_mode
            .as_deref()
            .map(|s| u32::from_str_radix(s, 8).map_err(|_| invalid(format!("invalid tmpfs-mode {s:?}: an octal mode"))))
            .transpose()?;
        Ok(MountBody {
            kind: m.kind,
            source: m.source,
            target: m.target,
            read_only: m.readonly,
            bind_options: Some(BindOptionsBody { propagation: m.propagation }),
            volume_options: Some(VolumeOptionsBody { no_copy: m.nocopy }),
            tmpfs_options: Some(TmpfsOptionsBody { size_bytes: size.unwrap_or(0), mode: mode.unwrap_or(0) }),
        })
    }
}

impl CreateBody {
    /// Docker's JSON body, with the path of what does not fit in the error.
    pub fn from_json(mut v: Value) -> Result<CreateBody, EngineError> {
        if !v.is_object() {
            return Err(invalid("the create body must be a JSON object"));
        }
        // a port without bindings (`"81/tcp": null`) is published on any host port
        if let Some(Value::Object(pb)) = v.pointer_mut("/HostConfig/PortBindings") {
            pb.values_mut().filter(|l| l.is_null()).for_each(|l| *l = Value::Array(Vec::new()));
        }
        strip_nulls(&mut v);
        serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            invalid(format!("invalid create body: {path}: {}", e.into_inner()))
        })
    }

    /// The engine's request (`name` with or without its leading `/`); a
    /// relative bind source is taken from `cwd` (the CLI's), refused
    /// without one.
    pub fn into_request(self, name: Option<&str>, cwd: Option<&Path>) -> Result<CreateRequest, EngineError> {
        let mut hc = self.host_config;
        if self.image.is_empty() {
            return Err(invalid("config: an image is required (Image)"));
        }
        if let Some(d) = hc.other.get("VolumeDriver").and_then(Value::as_str).filter(|d| !d.is_empty() && *d != "local")
        {
            return Err(invalid(format!("HostConfig.VolumeDriver {d:?}: only the local volume driver exists")));
        }
        for (k, why) in REFUSED {
            if let Some(v) = hc.other.get(*k).filter(|v| !is_zero(v)) {
                return Err(invalid(format!("HostConfig.{k} {v}: {why}")));
            }
        }
        let isolation = flags::isolation(&hc.isolation)?;
        // `--runtime process|hyperv`: the runtimes `info` lists
        let isolation = flags::runtime(&hc.runtime, isolation)?;

        let mut binds = hc.binds.iter().map(|b| flags::volume(b, cwd)).collect::<Result<Vec<_>, _>>()?;
        let mut tmpfs = hc.tmpfs.clone();
        for (i, m) in std::mem::take(&mut hc.mounts).into_iter().enumerate() {
            let tmpfs_opts = m.tmpfs_options.unwrap_or_default();
            let opts = flags::MountOptions {
                kind: m.kind,
                source: m.source,
                target: m.target,
                readonly: m.read_only,
                nocopy: m.volume_options.is_some_and(|v| v.no_copy),
                propagation: m.bind_options.map(|b| b.propagation).unwrap_or_default(),
                tmpfs_size: Some(tmpfs_opts.size_bytes).filter(|n| *n > 0).map(|n| n.to_string()),
                tmpfs_mode: Some(tmpfs_opts.mode).filter(|n| *n > 0).map(|n| format!("{n:o}")),
                ..Default::default()
            };
            match opts.resolve(&format!("HostConfig.Mounts[{i}]"), cwd)? {
                flags::MountArg::Mount(m) => binds.push(m),
                flags::MountArg::Tmpfs(t, o) => {
                    tmpfs.insert(t, o);
                }
            }
        }
        // the config's own volumes, like an image's: an anonymous volume where
        // no bind, mount or tmpfs is (dockerd: the bind wins)
        let clean = crate::validate::clean_target;
        for path in self.volumes.keys() {
            let covered =
                binds.iter().any(|b| clean(&b.target) == clean(path)) || tmpfs.keys().any(|t| clean(t) == clean(path));
            if !covered {
                binds.push(flags::volume(path, None)?);
            }
        }

        let mut publish = Vec::new();
        for (port, list) in &hc.port_bindings {
            match list.as_deref() {
                None | Some([]) => publish.extend(flags::port_binding("", "", port)?),
                Some(list) => {
                    for b in list {
                        publish.extend(flags::port_binding(&b.host_ip, &b.host_port, port)?);
                    }
                }
            }
        }
        let mut exposed = Vec::new();
        for k in self.exposed_ports.keys() {
            for p in flags::expose(k).map_err(|_| invalid(format!("ExposedPorts: invalid port {k:?}")))? {
                if !exposed.contains(&p) {
                    exposed.push(p);
                }
            }
        }

        let limits = limits(&hc)?;
        let restart = hc.restart_policy.policy()?.unwrap_or_default();
        // `--log-opt` alone comes with an empty Type: the default driver's options
        let log = match &hc.log_config {
            Some(l) => {
                let opts: Vec<String> = l.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let driver = Some(l.kind.as_str()).filter(|t| !t.is_empty());
                crate::logs::LogConfig::parse(driver, &opts).map_err(EngineError::Invalid)?
            }
            None => Default::default(),
        };
        let devices = hc
            .devices
            .iter()
            .map(|d| {
                let (h, p) = (&d.path_on_host, &d.cgroup_permissions);
                let c = if d.path_in_container.is_empty() { h } else { &d.path_in_container };
                flags::device(&if p.is_empty() { format!("{h}:{c}") } else { format!("{h}:{c}:{p}") })
            })
            .collect::<Result<_, _>>()?;
        let ulimits = hc
            .ulimits
            .iter()
            .map(|u| flags::ulimit(&format!("{}={}:{}", u.name, u.soft, u.hard)))
            .collect::<Result<_, _>>()?;

        // networks: NetworkMode, or the endpoints of NetworkingConfig; the
        // container's own is the one NetworkMode names (else the first)
        let mut network = hc.network_mode.clone();
        let (mut ip, mut aliases, mut networks) = (None, Vec::new(), Vec::new());
        let mut mac = Some(self.mac_address.clone()).filter(|m| !m.is_empty());
        let unnamed = network.is_empty() || network == "default";
        for (i, (name, ep)) in self.networking_config.endpoints_config.into_iter().enumerate() {
            let ipam = ep.ipam_config.unwrap_or_default();
            if !ipam.ipv6_address.is_empty() {
                return Err(invalid(format!(
                    "IPv6Address {}: a chosen IPv6 address is not supported (on a dual-stack switch the IPv6 address follows the IPv4 one)",
                    ipam.ipv6_address
                )));
            }
            let ep_ip = match ipam.ipv4_address.as_str() {
                "" => None,
                s => Some(s.parse().map_err(|_| invalid(format!("invalid IPv4Address {s:?}")))?),
            };
            let ep_mac = Some(ep.mac_address).filter(|m| !m.is_empty());
            if (unnamed && i == 0) || (!unnamed && name == network) {
                network = name;
                ip = ep_ip;
                aliases = ep.aliases;
                mac = mac.or(ep_mac);
            } else {
                networks.push(NetworkAttachment { switch: name, ip: ep_ip, mac: ep_mac, aliases: ep.aliases });
            }
        }
        if network == "default" {
            network.clear();
        }

        let entrypoint = match self.entrypoint {
            None => Vec::new(),
            Some(Strings(e)) if e.is_empty() => vec![String::new()],
            Some(Strings(e)) => e,
        };
        let config = ContainerConfig {
            image: self.image,
            cmd: self.cmd.0,
            entrypoint,
            env: self.env,
            workdir: self.working_dir,
            user: self.user,
            hostname: self.hostname,
            domainname: self.domainname,
            tty: self.tty,
            open_stdin: self.open_stdin,
            stdin_once: self.stdin_once,
            labels: self.labels,
            binds,
            healthcheck: self.healthcheck,
            init: hc.init,
            volumes_from: hc.volumes_from,
            tmpfs,
            readonly_rootfs: hc.readonly_rootfs,
            cap_add: hc.cap_add,
            cap_drop: hc.cap_drop,
            privileged: hc.privileged,
            security_opt: hc.security_opt,
            limits,
            restart,
            auto_remove: hc.auto_remove,
            isolation,
            network,
            pod: self.pod,
            stop_signal: self.stop_signal,
            stop_timeout: self.stop_timeout.filter(|t| *t >= 0).map(|t| t.min(u32::MAX as i64) as u32),
            shm_size: Some(hc.shm_size).filter(|s| *s > 0).map(|s| s as u64),
            ulimits,
            ip,
            mac,
            dns: hc.dns,
            add_hosts: hc.extra_hosts,
            publish,
            publish_all: hc.publish_all_ports,
            exposed,
            devices,
            log,
            dns_search: hc.dns_search,
            dns_options: hc.dns_options,
            sysctls: hc.sysctls,
            console_size: hc.console_size.filter(|[r, c]| *r > 0 && *c > 0).map(|[r, c]| (r, c)),
            aliases,
            annotations: hc.annotations,
            device_cgroup_rules: hc.device_cgroup_rules,
            pid_mode: hc.pid_mode,
            cgroupns_mode: hc.cgroupns_mode,
            ipc_mode: hc.ipc_mode,
            uts_mode: hc.uts_mode,
            links: hc.links.iter().map(|l| flags::link(l)).collect::<Result<_, _>>()?,
            oom_score_adj: hc.oom_score_adj.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            group_add: hc.group_add,
            ..Default::default()
        };
        let name = name.filter(|n| !n.is_empty()).map(|n| n.trim_start_matches('/').to_string());
        Ok(CreateRequest { name, config, networks })
    }
}

/// The limits of `HostConfig`: 0 (or a missing value) is "none".
fn limits(hc: &HostConfigBody) -> Result<Limits, EngineError> {
    let positive = |v: i64| Some(v).filter(|v| *v > 0);
    let mut l = Limits {
        memory: positive(hc.memory),
        memory_swap: Some(hc.memory_swap).filter(|s| *s != 0),
        memory_reservation: positive(hc.memory_reservation),
        // a negative count reaches the engine's check (and its message)
        cpus: Some(hc.nano_cpus).filter(|n| *n != 0).map(|n| n as f64 / 1e9),
        cpu_shares: positive(hc.cpu_shares).map(|s| s as u64),
        cpuset_cpus: Some(hc.cpuset_cpus.clone()).filter(|c| !c.is_empty()),
        cpuset_mems: Some(hc.cpuset_mems.clone()).filter(|c| !c.is_empty()),
        // -1 (or nothing) is the kernel's default swappiness
        swappiness: hc.memory_swappiness.map(flags::swappiness).transpose()?.flatten(),
        oom_kill_disable: hc.oom_kill_disable,
        pids: hc.pids_limit.and_then(positive),
        ..Default::default()
    };
    // --cpu-quota/--cpu-period: the same CFS limit as --cpus, quota / period
    if hc.cpu_quota > 0 {
        if hc.nano_cpus > 0 {
            return Err(invalid("conflicting options: NanoCpus and CpuQuota cannot both be set"));
        }
        let period = match hc.cpu_period {
            0 => 100_000,
            p if (1000..=1_000_000).contains(&p) => p,
            p => return Err(invalid(format!("CPU cfs period {p} out of range: 1000 to 1000000 (µs)"))),
        };
        l.cpus = Some(hc.cpu_quota as f64 / period as f64);
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(v: Value) -> Result<CreateRequest, EngineError> {
        CreateBody::from_json(v)?.into_request(None, None)
    }

    fn err(v: Value) -> String {
        request(v).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn docker_py_minimal_body() -> Result<(), EngineError> {
        let r = CreateBody::from_json(serde_json::json!({"Image": "busybox", "Cmd": ["echo", "hi"], "Env": null}))?
            .into_request(Some("/web"), None)?;
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(r.config.cmd, ["echo", "hi"]);
        assert!(r.config.isolation.is_none() && r.config.network.is_empty() && r.config.entrypoint.is_empty());
        let one = request(serde_json::json!({"Image": "b", "Cmd": "sh", "Entrypoint": "/init"}))?;
        assert_eq!((one.config.cmd, one.config.entrypoint), (vec!["sh".to_string()], vec!["/init".to_string()]));
        Ok(())
    }

    #[test]
    fn isolation_ports_limits_and_networks() -> Result<(), EngineError> {
        let r = request(serde_json::json!({
            "Image": "busybox", "Cmd": "sh", "Entrypoint": [], "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
            "HostConfig": {"Isolation": "hyperv", "Memory": 67108864, "NanoCpus": 1500000000, "MemorySwappiness": -1,
                "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}], "81/tcp": null},
                "Mounts": [{"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1024, "Mode": 1023}}],
                "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}, "NetworkMode": "default"},
            "NetworkingConfig": {"EndpointsConfig": {"back": {"Aliases": ["b"]},
                "front": {"IPAMConfig": {"IPv4Address": "10.9.0.5"}, "Aliases": ["f"]}}}
        }))?;
        let c = &r.config;
        assert_eq!(c.isolation, Some(moat_core::Isolation::Hyperv));
        assert_eq!((c.limits.memory, c.limits.cpus, c.limits.swappiness), (Some(64 << 20), Some(1.5), None));
        assert_eq!(c.publish.len(), 2);
        assert_eq!(c.entrypoint, [""]);
        assert_eq!(c.exposed, [(53, "udp".to_string()), (80, "tcp".to_string())]);
        assert_eq!(c.restart, RestartPolicy::OnFailure { max: 2 });
        assert_eq!(c.tmpfs, BTreeMap::from([("/t".to_string(), "size=1024,mode=1777".to_string())]));
        assert_eq!((c.network.as_str(), c.ip, c.aliases.as_slice()), ("back", None, ["b".to_string()].as_slice()));
        let front = NetworkAttachment {
            switch: "front".into(),
            ip: Some([10, 9, 0, 5].into()),
            aliases: vec!["f".into()],
            ..Default::default()
        };
        assert_eq!(r.networks, [front]);
        Ok(())
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let e = err(serde_json::json!({"Image": "b", "HostConfig": {"Isolation": "hyper-v"}}));
        assert_eq!(e, "invalid isolation \"hyper-v\": use process, hyperv (alias vm) or default");
        let e = err(serde_json::json!({"Image": "b", "HostConfig": {"UsernsMode": "host"}}));
        assert_eq!(e, "HostConfig.UsernsMode \"host\": user namespaces are not supported yet");
        assert!(err(serde_json::json!({"Image": "b", "HostConfig": {"BlkioWeight": 0}})).is_empty());
        assert!(err(serde_json::json!({"Cmd": ["x"]})).contains("image is required"));
        assert!(err(serde_json::json!([1])).contains("object"));
        assert_eq!(
            err(serde_json::json!({"Image": "b", "Env": [1]})),
            "invalid create body: Env[0]: invalid type: integer `1`, expected a string"
        );
        let e = err(serde_json::json!({"Image": "b", "HostConfig": {"Memory": "lots"}}));
        assert!(e.starts_with("invalid create body: HostConfig.Memory: invalid type: string"), "{e}");
        let e = err(serde_json::json!({"Image": "b", "HostConfig": {"Mounts": [{"Type": "bind", "Target": "/c"}]}}));
        assert_eq!(e, "invalid HostConfig.Mounts[0]: source is required for type=bind");
    }
}
