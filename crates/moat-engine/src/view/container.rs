//! Views of containers: summaries, `ps` rows, inspect, stats and exec instances.

use super::*;
use crate::config::{MountKind, Status};
use crate::{Container, Engine};
use moat_core::human;
use serde::Serialize;
use std::collections::BTreeMap;

/// A port of a container (API `Port`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Port {
    /// Host address.
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Container port.
    #[serde(rename = "PrivatePort")]
    pub private_port: u16,
    /// Host port.
    #[serde(rename = "PublicPort", skip_serializing_if = "Option::is_none")]
    pub public_port: Option<u16>,
    /// `tcp` or `udp`.
    #[serde(rename = "Type")]
    pub kind: String,
}

/// A container in a list (API `GET /containers/json`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    /// ID.
    pub id: String,
    /// `/name`.
    pub names: Vec<String>,
    /// Image as given.
    pub image: String,
    /// Image ID.
    #[serde(rename = "ImageID")]
    pub image_id: String,
    /// Command.
    pub command: String,
    /// Unix seconds.
    pub created: i64,
    /// Ports.
    pub ports: Vec<Port>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `running`, `exited`, ...
    pub state: String,
    /// `Up 3 seconds`, `Exited (0) 2 minutes ago`.
    pub status: String,
    /// Network mode.
    pub host_config: SummaryHostConfig,
    /// Networks.
    pub network_settings: SummaryNetworks,
    /// Mounts.
    pub mounts: Vec<MountPoint>,
    /// moat: the isolation type.
    pub isolation: String,
}

/// `HostConfig` of a summary.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SummaryHostConfig {
    /// Network mode.
    pub network_mode: String,
}

/// `NetworkSettings` of a summary.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SummaryNetworks {
    /// Endpoint per network name.
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// A container's endpoint on a network (API `EndpointSettings`).
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointSettings {
    /// Network ID.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Endpoint ID.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// Gateway.
    pub gateway: String,
    /// Address.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// Prefix length.
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    /// MAC.
    pub mac_address: String,
    /// Aliases.
    pub aliases: Vec<String>,
    /// moat: the host interface (veth or tap).
    pub host_interface: String,
    /// The address asked for (`--ip`), as dockerd's `IPAMConfig` (null when none).
    #[serde(rename = "IPAMConfig")]
    pub ipam_config: Option<serde_json::Value>,
    /// Legacy links (none: moat refuses them).
    pub links: Option<Vec<String>>,
    /// Driver options (none).
    pub driver_opts: Option<BTreeMap<String, String>>,
    /// IPv6 gateway (moat's switches are IPv4).
    #[serde(rename = "IPv6Gateway")]
    pub ipv6_gateway: String,
    /// IPv6 address.
    #[serde(rename = "GlobalIPv6Address")]
    pub global_ipv6_address: String,
    /// IPv6 prefix length.
    #[serde(rename = "GlobalIPv6PrefixLen")]
    pub global_ipv6_prefix_len: u8,
    /// Names the container answers to on this network (API >= 1.44).
    #[serde(rename = "DNSNames")]
    pub dns_names: Vec<String>,
}

/// A mount of a container (API `MountPoint`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountPoint {
    /// `bind`, `volume`, `tmpfs`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Volume name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Host path.
    pub source: String,
    /// Container path.
    pub destination: String,
    /// Driver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// `ro` or empty.
    pub mode: String,
    /// Writable.
    #[serde(rename = "RW")]
    pub rw: bool,
    /// Propagation.
    pub propagation: String,
}

fn mounts(e: &Engine, c: &Container) -> Vec<MountPoint> {
    let binds = c.config.binds.iter().map(|b| match b.kind {
        MountKind::Bind => MountPoint {
            kind: "bind".into(),
            name: None,
            source: b.source.clone(),
            destination: b.target.clone(),
            driver: None,
            mode: if b.readonly { "ro".into() } else { b.relabel.clone() },
            rw: !b.readonly,
            propagation: if b.propagation.is_empty() { "rprivate".into() } else { b.propagation.clone() },
        },
        MountKind::Volume => MountPoint {
            kind: "volume".into(),
            name: Some(b.source.clone()),
            source: e.layout().volume_data(&b.source).display().to_string(),
            destination: b.target.clone(),
            driver: Some("local".into()),
            mode: if b.readonly { "ro".into() } else { "z".into() },
            rw: !b.readonly,
            propagation: String::new(),
        },
    });
    let tmpfs = c.config.tmpfs.keys().map(|t| MountPoint {
        kind: "tmpfs".into(),
        name: None,
        source: String::new(),
        destination: t.clone(),
        driver: None,
        mode: String::new(),
        rw: true,
        propagation: String::new(),
    });
    binds.chain(tmpfs).collect()
}

fn ports(c: &Container) -> Vec<Port> {
    let mut v: Vec<Port> = c
        .state
        .ports
        .iter()
        .map(|p| Port {
            ip: Some(p.host_ip.to_string()),
            private_port: p.ctr_port,
            public_port: Some(p.host_port),
            kind: p.proto.clone(),
        })
        .collect();
    for (p, proto) in &c.config.exposed {
        if !v.iter().any(|x| x.private_port == *p && x.kind == *proto) {
            v.push(Port { ip: None, private_port: *p, public_port: None, kind: proto.clone() });
        }
    }
    v
}

fn endpoints(c: &Container) -> BTreeMap<String, EndpointSettings> {
    let letter = if c.config.isolation() == moat_core::Isolation::Hyperv { 't' } else { 'v' };
    if matches!(c.config.network_mode(), crate::config::NetworkMode::None | crate::config::NetworkMode::Host) {
        // dockerd's entry for its built-in `none` and `host` networks: no address
        return BTreeMap::from([(c.config.network.clone(), EndpointSettings::default())]);
    }
    c.config
        .networks
        .iter()
        .enumerate()
        .map(|(n, e)| {
            // its name, short ID and aliases (every switch's, then this one's)
            let names: Vec<String> = [c.name().to_string(), c.id()[..12].to_string()]
                .into_iter()
                .chain(c.config.aliases.iter().cloned())
                .chain(e.aliases.iter().cloned())
                .collect();
            (
                crate::network::shown_name(&e.switch).to_string(),
                EndpointSettings {
                    network_id: e.switch_id.clone(),
                    endpoint_id: format!("{}{}", &c.id()[..32], &e.switch_id[..32]),
                    gateway: e.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    ip_address: e.ip.to_string(),
                    ip_prefix_len: e.prefix,
                    mac_address: e.mac.clone(),
                    aliases: names.clone(),
                    host_interface: moat_net::if_name(letter, c.id(), n),
                    ipam_config: (n == 0)
                        .then_some(c.config.ip)
                        .flatten()
                        .map(|ip| serde_json::json!({ "IPv4Address": ip.to_string() })),
                    links: None,
                    driver_opts: None,
                    ipv6_gateway: e.gateway6.map(|g| g.to_string()).unwrap_or_default(),
                    global_ipv6_address: e.ip6.map(|a| a.to_string()).unwrap_or_default(),
                    global_ipv6_prefix_len: if e.ip6.is_some() { e.prefix6 } else { 0 },
                    dns_names: names,
                },
            )
        })
        .collect()
}

impl ContainerSummary {
    /// The summary of `c`.
    pub fn of(e: &Engine, c: &Container) -> Self {
        Self {
            id: c.id().to_string(),
            names: vec![format!("/{}", c.name())],
            image: c.config.image.clone(),
            image_id: c.row.image_id.to_string(),
            command: command_text(c),
            created: c.row.created.timestamp(),
            ports: ports(c),
            labels: c.config.labels.clone(),
            state: c.state.status.to_string(),
            status: c.status_text(),
            host_config: SummaryHostConfig { network_mode: c.config.network.clone() },
            network_settings: SummaryNetworks { networks: endpoints(c) },
            mounts: mounts(e, c),
            isolation: c.config.isolation().to_string(),
        }
    }
}

/// Ports as `docker ps` prints them.
pub fn ports_text(c: &Container) -> String {
    c.state
        .ports
        .iter()
        .map(|p| format!("{}:{}->{}/{}", p.host_ip, p.host_port, p.ctr_port, p.proto))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row of `moat ps` (the `docker ps` format context: `{{.Names}}`, ...).
#[derive(Debug, Clone, Serialize)]
pub struct PsRow {
    /// Short ID (full with `--no-trunc`).
    #[serde(rename = "ID")]
    pub id: String,
    /// Image.
    #[serde(rename = "Image")]
    pub image: String,
    /// Quoted command.
    #[serde(rename = "Command")]
    pub command: String,
    /// Creation time.
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    /// `5 minutes ago`.
    #[serde(rename = "RunningFor")]
    pub running_for: String,
    /// Published ports.
    #[serde(rename = "Ports")]
    pub ports: String,
    /// State.
    #[serde(rename = "State")]
    pub state: String,
    /// Status text.
    #[serde(rename = "Status")]
    pub status: String,
    /// Name.
    #[serde(rename = "Names")]
    pub names: String,
    /// `k=v,...`.
    #[serde(rename = "Labels")]
    pub labels: String,
    /// Networks.
    #[serde(rename = "Networks")]
    pub networks: String,
    /// Mounts.
    #[serde(rename = "Mounts")]
    pub mounts: String,
    /// Isolation.
    #[serde(rename = "Isolation")]
    pub isolation: String,
    /// `ps -s`: the writable layer's size and the total with the image.
    #[serde(rename = "Size")]
    pub size: String,
    /// `ps --pod`: the pod's ID (short unless `--no-trunc`).
    #[serde(rename = "Pod", skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// `ps --pod`: the pod's name.
    #[serde(rename = "PodName", skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// Last exit code.
    #[serde(rename = "ExitCode")]
    pub exit_code: i32,
}

/// Bytes of a container's writable layer, and of its image.
pub(crate) fn container_sizes(e: &Engine, c: &Container) -> (u64, u64) {
    let rw = moat_store::dir_size(&e.layout().container(c.id()).join("upper"));
    let image = e.images.store().image(&c.row.image_id).ok().flatten().map(|i| i.size).unwrap_or(0);
    (rw, image)
}

impl PsRow {
    /// The row of `c`.
    pub fn of(c: &Container, no_trunc: bool) -> Self {
        Self {
            id: if no_trunc { c.id().to_string() } else { c.id()[..12].to_string() },
            image: c.config.image.clone(),
            command: format!("\"{}\"", command_text(c)),
            created_at: c.row.created.format("%Y-%m-%d %H:%M:%S %z UTC").to_string(),
            running_for: human::ago(c.row.created),
            ports: ports_text(c),
            state: c.state.status.to_string(),
            status: c.status_text(),
            names: c.name().to_string(),
            labels: c.config.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            networks: c
                .config
                .networks
                .iter()
                .map(|e| crate::network::shown_name(&e.switch))
                .collect::<Vec<_>>()
                .join(","),
            mounts: c
                .config
                .binds
                .iter()
                .map(|b| {
                    if b.kind == MountKind::Volume {
                        b.source.chars().take(15).collect::<String>()
                    } else {
                        b.source.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
            isolation: c.config.isolation().to_string(),
            exit_code: c.state.exit_code,
            size: String::new(),
            pod: String::new(),
            pod_name: String::new(),
        }
    }

    /// The row with its pod's ID and name (`ps --pod`; empty outside pods).
    pub fn with_pod(mut self, e: &mut Engine, c: &Container, no_trunc: bool) -> Self {
        if let Some(p) = c.config.pod.as_deref().and_then(|p| e.pod(p).ok()) {
            self.pod = if no_trunc { p.id.clone() } else { p.id[..12].to_string() };
            self.pod_name = p.name;
        }
        self
    }

    /// The row with `Size` filled in (`ps -s`; reads the container's files).
    pub fn with_size(mut self, e: &Engine, c: &Container) -> Self {
        let (rw, image) = container_sizes(e, c);
        self.size = format!("{} (virtual {})", human::size(rw), human::size(rw + image));
        self
    }
}

/// `State` of a container inspect.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    /// Status.
    pub status: String,
    /// Running (also when paused).
    pub running: bool,
    /// Paused.
    pub paused: bool,
    /// Restarting.
    pub restarting: bool,
    /// OOM-killed.
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    /// Dead.
    pub dead: bool,
    /// Main process PID (host PID; guest PID for hyperv).
    pub pid: u32,
    /// Exit code.
    pub exit_code: i32,
    /// Why it failed.
    pub error: String,
    /// Start time.
    pub started_at: String,
    /// End time.
    pub finished_at: String,
    /// moat: isolation type.
    pub isolation: String,
    /// moat: when the isolation type last changed.
    pub isolation_changed_at: Option<String>,
    /// Health check results (null for containers without a check).
    pub health: Option<crate::health::Health>,
}

/// `HostConfig` of a container inspect.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    /// Bind mounts as `HOST:CTR[:ro]`.
    pub binds: Vec<String>,
    /// Network mode.
    pub network_mode: String,
    /// Port bindings.
    pub port_bindings: BTreeMap<String, Vec<PortBinding>>,
    /// Restart policy.
    pub restart_policy: RestartPolicyView,
    /// `--rm`.
    /// `--init`.
    pub init: bool,
    pub auto_remove: bool,
    /// Added capabilities.
    pub cap_add: Vec<String>,
    /// Dropped capabilities.
    pub cap_drop: Vec<String>,
    /// DNS servers.
    pub dns: Vec<String>,
    /// Extra hosts.
    pub extra_hosts: Vec<String>,
    /// Privileged.
    pub privileged: bool,
    /// `-P`.
    pub publish_all_ports: bool,
    /// Read-only root.
    pub readonly_rootfs: bool,
    /// Security options.
    pub security_opt: Vec<String>,
    /// tmpfs mounts.
    pub tmpfs: BTreeMap<String, String>,
    /// Memory limit.
    pub memory: i64,
    /// Memory + swap.
    pub memory_swap: i64,
    /// CPUs × 10⁹.
    pub nano_cpus: i64,
    /// CPU shares.
    pub cpu_shares: i64,
    /// Pids limit.
    pub pids_limit: Option<i64>,
    /// Isolation.
    pub isolation: String,
    /// /dev/shm size.
    pub shm_size: i64,
    /// Log config.
    pub log_config: LogConfigView,
    /// Devices.
    pub devices: Vec<DeviceMapping>,
    /// `--dns-search`.
    pub dns_search: Vec<String>,
    /// `--dns-option`.
    pub dns_options: Vec<String>,
    /// `--ulimit`s as Docker names them.
    pub ulimits: Vec<UlimitView>,
    /// `--oom-score-adj`.
    pub oom_score_adj: i32,
    /// `--group-add`.
    pub group_add: Option<Vec<String>>,
    /// `--volumes-from`.
    pub volumes_from: Option<Vec<String>>,
    /// `--sysctl`.
    pub sysctls: BTreeMap<String, String>,
    /// `--annotation`s (left out when none, as moby leaves them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// `--console-size` at create (rows, cols; zeros when none).
    pub console_size: [u16; 2],
    /// Always `private`: every container has its own cgroup namespace.
    pub cgroupns_mode: String,
    /// `private` (moat's containers have their own IPC namespace).
    pub ipc_mode: String,
    /// `""`: a PID namespace of its own.
    pub pid_mode: String,
    /// `""`: a UTS namespace of its own.
    #[serde(rename = "UTSMode")]
    pub uts_mode: String,
    /// `""`: no user namespace.
    pub userns_mode: String,
    /// `""`: moat's own cgroup parent.
    pub cgroup_parent: String,
    /// `""`.
    pub cgroup: String,
    /// `""`.
    #[serde(rename = "ContainerIDFile")]
    pub container_id_file: String,
    /// `""`: the local driver.
    pub volume_driver: String,
    /// The runtime: the isolation type's name (`process`, `hyperv`), as `info` lists them.
    pub runtime: String,
    /// Paths hidden from the container (none when privileged).
    pub masked_paths: Vec<String>,
    /// Paths read-only in the container (none when privileged).
    pub readonly_paths: Vec<String>,
    /// Settings moat does not apply, at their zero values (every one of
    /// them is refused when set: see docs/api.md).
    #[serde(flatten)]
    pub unset: UnsetHostConfig,
}

/// The rest of dockerd's HostConfig keys: the settings moat refuses to set,
/// at the values dockerd shows when they are not set, and those applied
/// since (links, cpusets, memory reservation, swappiness, OOM killer,
/// device cgroup rules), filled in from the container's config.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UnsetHostConfig {
    /// null.
    pub blkio_device_read_bps: Option<Vec<serde_json::Value>>,
    /// null.
    #[serde(rename = "BlkioDeviceReadIOps")]
    pub blkio_device_read_iops: Option<Vec<serde_json::Value>>,
    /// null.
    pub blkio_device_write_bps: Option<Vec<serde_json::Value>>,
    /// null.
    #[serde(rename = "BlkioDeviceWriteIOps")]
    pub blkio_device_write_iops: Option<Vec<serde_json::Value>>,
    /// 0.
    pub blkio_weight: u16,
    /// null.
    pub blkio_weight_device: Option<Vec<serde_json::Value>>,
    /// 0.
    pub cpu_count: i64,
    /// 0.
    pub cpu_percent: i64,
    /// 0 (`--cpu-quota`/`--cpu-period` become `NanoCpus`).
    pub cpu_period: i64,
    /// 0.
    pub cpu_quota: i64,
    /// 0.
    pub cpu_realtime_period: i64,
    /// 0.
    pub cpu_realtime_runtime: i64,
    /// `--cpuset-cpus` (`""`: any).
    pub cpuset_cpus: String,
    /// `--cpuset-mems` (`""`: any).
    pub cpuset_mems: String,
    /// `--device-cgroup-rule`s (null when none).
    pub device_cgroup_rules: Option<Vec<String>>,
    /// null.
    pub device_requests: Option<Vec<serde_json::Value>>,
    /// 0.
    #[serde(rename = "IOMaximumBandwidth")]
    pub io_maximum_bandwidth: u64,
    /// 0.
    #[serde(rename = "IOMaximumIOps")]
    pub io_maximum_iops: u64,
    /// 0.
    #[serde(rename = "KernelMemoryTCP")]
    pub kernel_memory_tcp: i64,
    /// Legacy links as `/child:/parent/alias` (null when none).
    pub links: Option<Vec<String>>,
    /// `--memory-reservation` (0: none).
    pub memory_reservation: i64,
    /// `--memory-swappiness` (null: the kernel's).
    pub memory_swappiness: Option<i64>,
    /// `--oom-kill-disable`.
    pub oom_kill_disable: bool,
}

/// One `--ulimit` (API `Ulimits[]`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UlimitView {
    /// Docker's name (`nofile`).
    pub name: String,
    /// Soft limit (-1: unlimited).
    pub soft: i64,
    /// Hard limit (-1: unlimited).
    pub hard: i64,
}

/// A port binding.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    /// Host address.
    pub host_ip: String,
    /// Host port.
    pub host_port: String,
}

/// A restart policy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicyView {
    /// `no`, `always`, `unless-stopped`, `on-failure`.
    pub name: String,
    /// For `on-failure`.
    pub maximum_retry_count: u32,
}

/// A log configuration.
#[derive(Debug, Clone, Serialize)]
pub struct LogConfigView {
    /// Driver.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Options.
    #[serde(rename = "Config")]
    pub config: BTreeMap<String, String>,
}

/// A device mapping.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceMapping {
    /// Host node.
    pub path_on_host: String,
    /// Container node.
    pub path_in_container: String,
    /// `rwm` subset.
    pub cgroup_permissions: String,
}

/// `Config` of a container inspect.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfigView {
    /// Hostname.
    pub hostname: String,
    /// Domain name.
    pub domainname: String,
    /// User.
    pub user: String,
    /// Attach stdin.
    pub attach_stdin: bool,
    /// Attach stdout.
    pub attach_stdout: bool,
    /// Attach stderr.
    pub attach_stderr: bool,
    /// Exposed ports.
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// Terminal.
    pub tty: bool,
    /// Keep stdin open.
    pub open_stdin: bool,
    /// Close stdin after the first attach ends.
    pub stdin_once: bool,
    /// Environment.
    pub env: Vec<String>,
    /// Command.
    pub cmd: Vec<String>,
    /// Image.
    pub image: String,
    /// Working directory.
    pub working_dir: String,
    /// Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<crate::health::HealthConfig>,
    /// Stop signal.
    pub stop_signal: String,
    /// Stop timeout.
    pub stop_timeout: Option<u32>,
    /// Anonymous volumes' paths (the config's and the image's `Volumes`; null when none).
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    /// Build triggers (none: moat does not build).
    pub on_build: Option<Vec<String>>,
}

/// `NetworkSettings` of a container inspect.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    /// Endpoints per network.
    pub networks: BTreeMap<String, EndpointSettings>,
    /// First network's address.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    /// Its gateway.
    pub gateway: String,
    /// Its MAC.
    pub mac_address: String,
    /// Published ports.
    pub ports: BTreeMap<String, Vec<PortBinding>>,
    /// The first network's prefix length.
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    /// The first network's endpoint.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// `""` (dockerd's deprecated default-bridge name).
    pub bridge: String,
    /// false.
    pub hairpin_mode: bool,
    /// The network namespace's ID (the container's, process isolation).
    #[serde(rename = "SandboxID")]
    pub sandbox_id: String,
    /// The network namespace's path (`/proc/PID/ns/net` while it runs).
    pub sandbox_key: String,
    /// `""`: moat's switches are IPv4.
    #[serde(rename = "IPv6Gateway")]
    pub ipv6_gateway: String,
    /// `""`.
    #[serde(rename = "GlobalIPv6Address")]
    pub global_ipv6_address: String,
    /// 0.
    #[serde(rename = "GlobalIPv6PrefixLen")]
    pub global_ipv6_prefix_len: u8,
    /// `""`.
    #[serde(rename = "LinkLocalIPv6Address")]
    pub link_local_ipv6_address: String,
    /// 0.
    #[serde(rename = "LinkLocalIPv6PrefixLen")]
    pub link_local_ipv6_prefix_len: u8,
    /// null.
    #[serde(rename = "SecondaryIPAddresses")]
    pub secondary_ip_addresses: Option<Vec<String>>,
    /// null.
    #[serde(rename = "SecondaryIPv6Addresses")]
    pub secondary_ipv6_addresses: Option<Vec<String>>,
}

/// A container in detail (API `GET /containers/{id}/json`, `moat inspect`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspect {
    /// ID.
    pub id: String,
    /// Creation time.
    pub created: String,
    /// argv[0].
    pub path: String,
    /// argv[1..].
    pub args: Vec<String>,
    /// State.
    pub state: ContainerState,
    /// Image ID.
    pub image: String,
    /// resolv.conf path.
    pub resolv_conf_path: String,
    /// hostname path.
    pub hostname_path: String,
    /// hosts path.
    pub hosts_path: String,
    /// Log path.
    pub log_path: String,
    /// `/name`.
    pub name: String,
    /// Restarts by policy.
    pub restart_count: u32,
    /// Storage driver.
    pub driver: String,
    /// Platform.
    pub platform: String,
    /// Host config.
    pub host_config: HostConfig,
    /// Mounts.
    pub mounts: Vec<MountPoint>,
    /// Config.
    pub config: ContainerConfigView,
    /// Network settings.
    pub network_settings: NetworkSettings,
    /// moat: the utility VM of a hyperv container (accelerator, kernel, sizing, PIDs while it runs).
    #[serde(rename = "VM")]
    pub vm: Option<moat_sandbox::VmInfo>,
    /// The storage driver's name and data (moat's root is an overlay of its layers).
    pub graph_driver: GraphDriver,
    /// Exec instances of the container (null when none).
    #[serde(rename = "ExecIDs")]
    pub exec_ids: Option<Vec<String>>,
    /// `""`: moat applies no AppArmor profile.
    pub app_armor_profile: String,
    /// `""`: no SELinux labels.
    pub mount_label: String,
    /// `""`: no SELinux labels.
    pub process_label: String,
    /// Bytes the container wrote (only when asked: `inspect -s`, `?size=1`).
    #[serde(rename = "SizeRw", skip_serializing_if = "Option::is_none")]
    pub size_rw: Option<i64>,
    /// Bytes of its image and what it wrote (only when asked).
    #[serde(rename = "SizeRootFs", skip_serializing_if = "Option::is_none")]
    pub size_root_fs: Option<i64>,
}

/// `GraphDriver` of an inspect.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GraphDriver {
    /// The container's own directories (`UpperDir`, `WorkDir`), as overlay2's keys.
    pub data: Option<BTreeMap<String, String>>,
    /// `overlay`.
    pub name: String,
}

impl ContainerInspect {
    /// The inspect view of `c`.
    pub fn of(e: &Engine, c: &Container) -> Self {
        let dir = e.layout().container(c.id());
        let cfg = &c.config;
        let st = &c.state;
        let vm = (cfg.isolation() == moat_core::Isolation::Hyperv).then(|| {
            let mut v = moat_sandbox::VmInfo::read(&dir).unwrap_or_default();
            if !c.is_running() {
                // PIDs of a VM that is gone mean nothing; its next start
                // gets the accelerator this host offers now
                v.qemu_pid = None;
                v.virtiofsd_pid = None;
                v.accelerator = moat_vm::accel::detect().0.to_string();
            }
            v
        });
        let bindings = |ports: &[moat_net::PortMap]| {
            let mut m: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
            for p in ports {
                m.entry(format!("{}/{}", p.ctr_port, p.proto)).or_default().push(PortBinding {
                    host_ip: p.host_ip.to_string(),
                    host_port: if p.host_port == 0 { String::new() } else { p.host_port.to_string() },
                });
            }
            m
        };
        let (name, max) = match cfg.restart {
            crate::config::RestartPolicy::No => ("no", 0),
            crate::config::RestartPolicy::Always => ("always", 0),
            crate::config::RestartPolicy::UnlessStopped => ("unless-stopped", 0),
            crate::config::RestartPolicy::OnFailure { max } => ("on-failure", max),
        };
        let first = cfg.networks.first();
        let exposed: BTreeMap<String, serde_json::Value> =
            cfg.exposed.iter().map(|(p, proto)| (format!("{p}/{proto}"), serde_json::json!({}))).collect();
        Self {
            id: c.id().to_string(),
            created: rfc3339(Some(c.row.created)),
            path: cfg.args.first().cloned().unwrap_or_default(),
            args: cfg.args.iter().skip(1).cloned().collect(),
            state: ContainerState {
                status: st.status.to_string(),
                running: matches!(st.status, Status::Running | Status::Paused),
                paused: st.status == Status::Paused,
                restarting: st.status == Status::Restarting,
                oom_killed: st.oom_killed,
                dead: st.status == Status::Dead,
                pid: st.pid,
                exit_code: st.exit_code,
                error: st.error.clone(),
                started_at: rfc3339(st.started_at),
                finished_at: rfc3339(st.finished_at),
                isolation: cfg.isolation().to_string(),
                isolation_changed_at: st.isolation_changed_at.map(|t| rfc3339(Some(t))),
                health: st.health.clone(),
            },
            image: c.row.image_id.to_string(),
            resolv_conf_path: dir.join("resolv.conf").display().to_string(),
            hostname_path: dir.join("hostname").display().to_string(),
            hosts_path: dir.join("hosts").display().to_string(),
            log_path: dir.join(format!("{}-json.log", c.id())).display().to_string(),
            name: format!("/{}", c.name()),
            restart_count: st.restart_count,
            driver: "overlay".into(),
            platform: "linux".into(),
            host_config: HostConfig {
                binds: cfg
                    .binds
                    .iter()
                    .filter(|b| !b.anonymous)
                    .map(|b| format!("{}:{}{}", b.source, b.target, if b.readonly { ":ro" } else { "" }))
                    .collect(),
                network_mode: cfg.network.clone(),
                port_bindings: bindings(&cfg.publish),
                restart_policy: RestartPolicyView { name: name.into(), maximum_retry_count: max },
                init: cfg.init,
                auto_remove: cfg.auto_remove,
                cap_add: cfg.cap_add.clone(),
                cap_drop: cfg.cap_drop.clone(),
                dns: cfg.dns.clone(),
                extra_hosts: cfg.add_hosts.clone(),
                privileged: cfg.privileged,
                publish_all_ports: cfg.publish_all,
                readonly_rootfs: cfg.readonly_rootfs,
                security_opt: cfg.security_opt.clone(),
                tmpfs: cfg.tmpfs.clone(),
                memory: cfg.limits.memory.unwrap_or(0),
                memory_swap: cfg.limits.memory_swap.unwrap_or(0),
                nano_cpus: cfg.limits.cpus.map(|c| (c * 1e9) as i64).unwrap_or(0),
                cpu_shares: cfg.limits.cpu_shares.unwrap_or(0) as i64,
                pids_limit: cfg.limits.pids,
                isolation: cfg.isolation().to_string(),
                shm_size: cfg.shm_size.unwrap_or(64 << 20) as i64,
                log_config: LogConfigView { kind: cfg.log.driver.clone(), config: cfg.log.given.clone() },
                devices: cfg
                    .devices
                    .iter()
                    .map(|d| DeviceMapping {
                        path_on_host: d.host_path.clone(),
                        path_in_container: d.path.clone(),
                        cgroup_permissions: d.rule.access.clone(),
                    })
                    .collect(),
                dns_search: cfg.dns_search.clone(),
                dns_options: cfg.dns_options.clone(),
                ulimits: cfg
                    .ulimits
                    .iter()
                    .map(|u| {
                        let n = |v: u64| if v == libc::RLIM_INFINITY { -1 } else { v as i64 };
                        UlimitView {
                            name: moat_runtime::spec::ulimit_name(u.resource).unwrap_or("?").to_string(),
                            soft: n(u.soft),
                            hard: n(u.hard),
                        }
                    })
                    .collect(),
                oom_score_adj: cfg.oom_score_adj,
                group_add: (!cfg.group_add.is_empty()).then(|| cfg.group_add.clone()),
                volumes_from: (!cfg.volumes_from.is_empty()).then(|| cfg.volumes_from.clone()),
                sysctls: cfg.sysctls.clone(),
                annotations: (!cfg.annotations.is_empty()).then(|| cfg.annotations.clone()),
                console_size: cfg.console_size.map_or([0, 0], |(r, c)| [r, c]),
                cgroupns_mode: if cfg.cgroupns_mode == "host" { "host".into() } else { "private".into() },
                ipc_mode: if cfg.ipc_mode.is_empty() { "private".into() } else { cfg.ipc_mode.clone() },
                pid_mode: cfg.pid_mode.clone(),
                uts_mode: cfg.uts_mode.clone(),
                userns_mode: String::new(),
                cgroup_parent: String::new(),
                cgroup: String::new(),
                container_id_file: String::new(),
                volume_driver: String::new(),
                runtime: cfg.isolation().to_string(),
                masked_paths: if cfg.privileged {
                    Vec::new()
                } else {
                    moat_runtime::spec::MASKED_PATHS.iter().map(|s| s.to_string()).collect()
                },
                readonly_paths: if cfg.privileged {
                    Vec::new()
                } else {
                    moat_runtime::spec::READONLY_PATHS.iter().map(|s| s.to_string()).collect()
                },
                unset: UnsetHostConfig {
                    memory_reservation: cfg.limits.memory_reservation.unwrap_or(0),
                    memory_swappiness: cfg.limits.swappiness.map(|s| s as i64),
                    oom_kill_disable: cfg.limits.oom_kill_disable,
                    device_cgroup_rules: (!cfg.device_cgroup_rules.is_empty()).then(|| cfg.device_cgroup_rules.clone()),
                    links: (!cfg.links.is_empty()).then(|| {
                        cfg.links
                            .iter()
                            .map(|l| {
                                let child = e
                                    .images
                                    .store()
                                    .find_container(&l.id)
                                    .ok()
                                    .flatten()
                                    .map_or_else(|| l.id.clone(), |o| o.name);
                                format!("/{child}:/{}/{}", c.name(), l.alias)
                            })
                            .collect()
                    }),
                    cpuset_cpus: cfg.limits.cpuset_cpus.clone().unwrap_or_default(),
                    cpuset_mems: cfg.limits.cpuset_mems.clone().unwrap_or_default(),
                    ..Default::default()
                },
            },
            mounts: mounts(e, c),
            config: ContainerConfigView {
                hostname: cfg.hostname.clone(),
                domainname: cfg.domainname.clone(),
                user: cfg.user.clone(),
                attach_stdin: cfg.open_stdin,
                attach_stdout: true,
                attach_stderr: true,
                exposed_ports: exposed,
                tty: cfg.tty,
                open_stdin: cfg.open_stdin,
                stdin_once: cfg.stdin_once,
                env: cfg.env.clone(),
                cmd: cfg.cmd.clone(),
                image: cfg.image.clone(),
                working_dir: cfg.workdir.clone(),
                entrypoint: (!cfg.entrypoint.is_empty()).then(|| cfg.entrypoint.clone()),
                labels: cfg.labels.clone(),
                stop_signal: cfg.stop_signal.clone(),
                healthcheck: cfg.healthcheck.clone(),
                stop_timeout: cfg.stop_timeout,
                volumes: {
                    let v: BTreeMap<String, serde_json::Value> = cfg
                        .binds
                        .iter()
                        .filter(|b| b.anonymous)
                        .map(|b| (b.target.clone(), serde_json::json!({})))
                        .collect();
                    (!v.is_empty()).then_some(v)
                },
                on_build: None,
            },
            network_settings: NetworkSettings {
                networks: endpoints(c),
                ip_address: first.map(|e| e.ip.to_string()).unwrap_or_default(),
                gateway: first.and_then(|e| e.gateway).map(|g| g.to_string()).unwrap_or_default(),
                mac_address: first.map(|e| e.mac.clone()).unwrap_or_default(),
                ports: bindings(&st.ports),
                ip_prefix_len: first.map(|e| e.prefix).unwrap_or(0),
                endpoint_id: first.map(|e| format!("{}{}", &c.id()[..32], &e.switch_id[..32])).unwrap_or_default(),
                bridge: String::new(),
                hairpin_mode: false,
                sandbox_id: if c.is_running() && cfg.isolation() == moat_core::Isolation::Process {
                    c.id().to_string()
                } else {
                    String::new()
                },
                sandbox_key: if c.is_running() && st.pid > 0 && cfg.isolation() == moat_core::Isolation::Process {
                    format!("/proc/{}/ns/net", st.pid)
                } else {
                    String::new()
                },
                ipv6_gateway: first.and_then(|e| e.gateway6).map(|g| g.to_string()).unwrap_or_default(),
                global_ipv6_address: first.and_then(|e| e.ip6).map(|a| a.to_string()).unwrap_or_default(),
                global_ipv6_prefix_len: first.filter(|e| e.ip6.is_some()).map_or(0, |e| e.prefix6),
                link_local_ipv6_address: String::new(),
                link_local_ipv6_prefix_len: 0,
                secondary_ip_addresses: None,
                secondary_ipv6_addresses: None,
            },
            vm,
            graph_driver: GraphDriver { data: graph_data(e, c), name: "overlay".into() },
            exec_ids: {
                let ids = crate::execs::ids_of(e.layout(), c.id());
                (!ids.is_empty()).then_some(ids)
            },
            app_armor_profile: String::new(),
            mount_label: String::new(),
            process_label: String::new(),
            size_rw: None,
            size_root_fs: None,
        }
    }

    /// The view with `SizeRw` and `SizeRootFs` (reads the container's files).
    pub fn with_size(mut self, e: &Engine, c: &Container) -> Self {
        let (rw, image) = container_sizes(e, c);
        self.size_rw = Some(rw as i64);
        self.size_root_fs = Some((rw + image) as i64);
        self
    }
}

/// overlay2's keys for a container's own directories, where it has them.
fn graph_data(e: &Engine, c: &Container) -> Option<BTreeMap<String, String>> {
    let dir = e.layout().container(c.id());
    let m: BTreeMap<String, String> = [("UpperDir", "upper"), ("WorkDir", "work")]
        .into_iter()
        .filter(|(_, sub)| dir.join(sub).exists())
        .map(|(k, sub)| (k.to_string(), dir.join(sub).display().to_string()))
        .collect();
    (!m.is_empty()).then_some(m)
}

/// A row of `stats` (Docker's stats format context: `{{.CPUPerc}}`, ...),
/// from two samples `elapsed_ns` apart.
#[derive(Debug, Clone, Serialize)]
pub struct StatsRow {
    /// Short ID.
    #[serde(rename = "Container")]
    pub container: String,
    /// Short ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Name.
    #[serde(rename = "Name")]
    pub name: String,
    /// CPU use over the interval.
    #[serde(rename = "CPUPerc")]
    pub cpu: String,
    /// `used / limit`.
    #[serde(rename = "MemUsage")]
    pub mem_usage: String,
    /// Memory use of the limit (or of the host).
    #[serde(rename = "MemPerc")]
    pub mem_perc: String,
    /// `received / sent`.
    #[serde(rename = "NetIO")]
    pub net_io: String,
    /// `read / written`.
    #[serde(rename = "BlockIO")]
    pub block_io: String,
    /// Processes.
    #[serde(rename = "PIDs")]
    pub pids: String,
}

/// Binary units as Docker's stats prints them (`64MiB`, `2.426MiB`).
fn bin(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{}", U[i])
}

impl StatsRow {
    /// The row of `c`; `--` where a sample is missing (not running).
    pub fn of(
        c: &Container,
        before: Option<&moat_proto::Stats>,
        after: Option<&moat_proto::Stats>,
        elapsed_ns: f64,
    ) -> Self {
        let short = c.id()[..12].to_string();
        let (cpu, mem_usage, mem_perc, net_io, block_io, pids) = match (before, after) {
            (Some(x), Some(y)) => {
                let cpu = (y.cpu_ns.saturating_sub(x.cpu_ns)) as f64 / elapsed_ns.max(1.0) * 100.0;
                let lim = if y.mem_limit == 0 { mem_total() } else { y.mem_limit };
                (
                    format!("{cpu:.2}%"),
                    format!("{} / {}", bin(y.mem_usage), bin(lim)),
                    format!("{:.2}%", y.mem_usage as f64 / lim.max(1) as f64 * 100.0),
                    format!("{} / {}", human::size(y.net_rx), human::size(y.net_tx)),
                    format!("{} / {}", human::size(y.blk_read), human::size(y.blk_write)),
                    y.pids.to_string(),
                )
            }
            _ => ("--".into(), "-- / --".into(), "--".into(), "-- / --".into(), "-- / --".into(), "--".into()),
        };
        Self {
            container: short.clone(),
            id: short,
            name: c.name().to_string(),
            cpu,
            mem_usage,
            mem_perc,
            net_io,
            block_io,
            pids,
        }
    }
}

/// `GET /exec/{id}/json` (Docker's `ExecInspectResponse`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecInspect {
    /// Exec ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its process runs.
    pub running: bool,
    /// Exit code once it ended.
    pub exit_code: Option<i32>,
    /// What it runs.
    pub process_config: ExecProcessConfig,
    /// Stdin attached.
    pub open_stdin: bool,
    /// Stdout attached.
    pub open_stdout: bool,
    /// Stderr attached.
    pub open_stderr: bool,
    /// Whether it may be removed.
    pub can_remove: bool,
    /// Its container.
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    /// Detach keys.
    pub detach_keys: String,
    /// Host PID (0 in a VM: the process is the guest's).
    pub pid: u32,
}

/// The process of an exec instance.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecProcessConfig {
    /// With a terminal.
    pub tty: bool,
    /// The program.
    pub entrypoint: String,
    /// Its arguments.
    pub arguments: Vec<String>,
    /// Privileged.
    pub privileged: bool,
    /// User.
    pub user: String,
}

impl ExecInspect {
    /// The view of an exec record.
    pub fn of(r: &crate::execs::ExecRecord) -> Self {
        Self {
            id: r.id.clone(),
            running: r.running,
            exit_code: r.exit_code,
            process_config: ExecProcessConfig {
                tty: r.spec.tty,
                entrypoint: r.spec.args.first().cloned().unwrap_or_default(),
                arguments: r.spec.args.iter().skip(1).cloned().collect(),
                privileged: r.spec.privileged,
                user: r.spec.user.clone().unwrap_or_default(),
            },
            open_stdin: r.spec.stdin,
            open_stdout: true,
            open_stderr: true,
            can_remove: false,
            container_id: r.container_id.clone(),
            detach_keys: r.spec.detach_keys.clone(),
            pid: r.pid,
        }
    }
}

/// `GET /containers/{id}/stats` (Docker's `ContainerStatsResponse`). CPU
/// time is the container's; the "system" CPU time is wall time × CPUs, so
/// Docker's formula (Δcpu / Δsystem × CPUs) gives the same percentage as
/// `moat stats`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatsResponse {
    /// When this sample was taken.
    pub read: String,
    /// When the previous one was (zero time when none).
    pub preread: String,
    /// `/name`.
    pub name: String,
    /// Container ID.
    pub id: String,
    /// Processes.
    pub pids_stats: PidsStats,
    /// This sample's CPU.
    pub cpu_stats: CpuStats,
    /// The previous sample's CPU.
    pub precpu_stats: CpuStats,
    /// Memory.
    pub memory_stats: MemoryStats,
    /// Traffic, all interfaces summed as `eth0`.
    pub networks: BTreeMap<String, NetStats>,
    /// Block I/O.
    pub blkio_stats: BlkioStats,
}

/// Processes of a stats sample.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct PidsStats {
    /// Running processes.
    pub current: u64,
}

/// CPU of a stats sample.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct CpuStats {
    /// The container's CPU time.
    pub cpu_usage: CpuUsage,
    /// Wall time × CPUs, nanoseconds.
    pub system_cpu_usage: u64,
    /// CPUs.
    pub online_cpus: u32,
}

/// The container's CPU time.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct CpuUsage {
    /// Nanoseconds.
    pub total_usage: u64,
}

/// Memory of a stats sample.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct MemoryStats {
    /// Bytes in use.
    pub usage: u64,
    /// The limit (the host's memory when none).
    pub limit: u64,
    /// Details: `guest_usage`, a VM container's memory as its guest counts it
    /// (`usage` is then what the VM holds on the host).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, u64>,
}

/// Traffic of a stats sample.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct NetStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Block I/O of a stats sample.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct BlkioStats {
    /// `read` and `write` totals.
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
}

/// One block I/O total.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct BlkioEntry {
    /// Device major (0: all).
    pub major: u64,
    /// Device minor (0: all).
    pub minor: u64,
    /// `read` or `write`.
    pub op: String,
    /// Bytes.
    pub value: u64,
}

impl StatsResponse {
    /// A sample of `c` taken at `at`, with the previous one when there is one.
    pub fn of(
        c: &Container,
        cur: &moat_proto::Stats,
        at: chrono::DateTime<chrono::Utc>,
        prev: Option<(&moat_proto::Stats, chrono::DateTime<chrono::Utc>)>,
    ) -> Self {
        let ncpu = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        let cpu = |s: &moat_proto::Stats, t: chrono::DateTime<chrono::Utc>| CpuStats {
            cpu_usage: CpuUsage { total_usage: s.cpu_ns },
            system_cpu_usage: (t.timestamp_nanos_opt().unwrap_or(0).max(0) as u64).saturating_mul(ncpu as u64),
            online_cpus: ncpu,
        };
        let zero = "0001-01-01T00:00:00Z".to_string();
        Self {
            read: at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            preread: prev.map(|(_, t)| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)).unwrap_or(zero),
            name: format!("/{}", c.name()),
            id: c.id().to_string(),
            pids_stats: PidsStats { current: cur.pids },
            cpu_stats: cpu(cur, at),
            precpu_stats: prev.map(|(p, t)| cpu(p, t)).unwrap_or_default(),
            memory_stats: MemoryStats {
                usage: cur.mem_usage,
                limit: if cur.mem_limit == 0 { mem_total() } else { cur.mem_limit },
                stats: (cur.guest_mem > 0).then(|| ("guest_usage".to_string(), cur.guest_mem)).into_iter().collect(),
            },
            networks: [("eth0".to_string(), NetStats { rx_bytes: cur.net_rx, tx_bytes: cur.net_tx })].into(),
            blkio_stats: BlkioStats {
                io_service_bytes_recursive: vec![
                    BlkioEntry { op: "read".into(), value: cur.blk_read, ..Default::default() },
                    BlkioEntry { op: "write".into(), value: cur.blk_write, ..Default::default() },
                ],
            },
        }
    }
}
