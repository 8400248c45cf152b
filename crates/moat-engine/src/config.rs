//! What a container is (its configuration, fixed at create) and where it is
//! (its state, changed by the shim and lifecycle commands).

use chrono::{DateTime, Utc};
use moat_core::Isolation;
pub use moat_runtime::cgroup::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// `--restart` policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "Name", rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    #[default]
    No,
    /// Restart on non-zero exit, at most `max` times (0 = unlimited).
    OnFailure {
        /// Maximum retries.
        #[serde(rename = "MaximumRetryCount")]
        max: u32,
    },
    /// Always restart.
    Always,
    /// Always, unless stopped by the user.
    UnlessStopped,
}

impl FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid restart policy {s:?}: use no, on-failure[:N], always or unless-stopped");
        Ok(match s.split_once(':') {
            Some(("on-failure", n)) => Self::OnFailure { max: n.parse().map_err(|_| bad())? },
            Some(_) => return Err(bad()),
            None => match s {
                "" | "no" => Self::No,
                "on-failure" => Self::OnFailure { max: 0 },
                "always" => Self::Always,
                "unless-stopped" => Self::UnlessStopped,
                _ => return Err(bad()),
            },
        })
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::No => f.write_str("no"),
            Self::OnFailure { max: 0 } => f.write_str("on-failure"),
            Self::OnFailure { max } => write!(f, "on-failure:{max}"),
            Self::Always => f.write_str("always"),
            Self::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

/// What a [`MountSpec`] mounts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A host path.
    #[default]
    Bind,
    /// A volume of this root (`<root>/volumes/<name>/_data`).
    Volume,
}

/// A bind mount (`-v HOST:CTR[:ro]`, `--mount type=bind`) or a volume
/// (`-v NAME:CTR`, `-v CTR`, `--mount type=volume`, an image's `VOLUME`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
pub struct MountSpec {
    /// Bind or volume.
    pub kind: MountKind,
    /// Absolute host path (bind), or the volume's name (empty until create
    /// names an anonymous volume).
    pub source: String,
    /// Absolute container path.
    pub target: String,
    /// Read-only.
    pub readonly: bool,
    /// Bind propagation: `rprivate` (default), `private`, `rslave`, `slave`.
    pub propagation: String,
    /// Volume: do not copy the image's content into a new, empty volume.
    pub nocopy: bool,
    /// Bind: create a missing host directory (the `-v` syntax; `--mount` refuses).
    pub create_source: bool,
    /// Bind: the SELinux relabel option given (`z`, `Z`), accepted and ignored.
    pub relabel: String,
    /// Volume: created for this container alone (anonymous).
    pub anonymous: bool,
}

/// A legacy link to another container (Docker's `--link`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Link {
    /// The linked container's ID.
    pub id: String,
    /// The name it is known by in this container.
    pub alias: String,
}

/// A container's network mode, parsed once from `ContainerConfig::network`
/// (kept as the user gave it, as Docker shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode<'a> {
    /// The default switch (`default`, `bridge`, `moat`, or nothing given).
    Default,
    /// Loopback only.
    None,
    /// The host's network (process isolation).
    Host,
    /// A switch by name or ID.
    Switch(&'a str),
    /// The sandbox of another container (its ID once created): its network
    /// namespace, or its utility VM.
    Container(&'a str),
}

impl<'a> NetworkMode<'a> {
    /// The mode `s` names.
    pub fn parse(s: &'a str) -> Self {
        match s {
            "" | "default" | "bridge" | moat_net::DEFAULT_SWITCH => Self::Default,
            "none" => Self::None,
            "host" => Self::Host,
            s => match s.strip_prefix("container:") {
                Some(c) => Self::Container(c),
                None => Self::Switch(s),
            },
        }
    }

    /// The container whose sandbox this one joins.
    pub fn container(self) -> Option<&'a str> {
        match self {
            Self::Container(c) => Some(c),
            _ => None,
        }
    }
}

/// Everything fixed when the container is created.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ContainerConfig {
    /// The image as the user named it.
    pub image: String,
    /// argv (entrypoint + command, resolved at create).
    pub args: Vec<String>,
    /// Entrypoint part of `args` (for inspect).
    pub entrypoint: Vec<String>,
    /// Command part of `args`.
    pub cmd: Vec<String>,
    /// Environment.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: String,
    /// User.
    pub user: String,
    /// Hostname.
    pub hostname: String,
    /// NIS domain name of the container's UTS namespace (`--domainname`).
    pub domainname: String,
    /// Allocate a terminal.
    pub tty: bool,
    /// Keep stdin open (`-i`).
    pub open_stdin: bool,
    /// Close stdin when the first attached client's stdin closes.
    pub stdin_once: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Bind mounts and volumes.
    pub binds: Vec<MountSpec>,
    /// Health check (the image's merged with `--health-*`).
    pub healthcheck: Option<crate::health::HealthConfig>,
    /// `--init`: run the command under moat's init (signals forwarded, orphans reaped).
    pub init: bool,
    /// `--volumes-from` values (`CONTAINER[:ro|rw]`), resolved at create.
    pub volumes_from: Vec<String>,
    /// `--tmpfs` mounts: target → options.
    pub tmpfs: BTreeMap<String, String>,
    /// Read-only root filesystem.
    pub readonly_rootfs: bool,
    /// Added capabilities.
    pub cap_add: Vec<String>,
    /// Dropped capabilities.
    pub cap_drop: Vec<String>,
    /// Privileged.
    pub privileged: bool,
    /// `--security-opt` values.
    pub security_opt: Vec<String>,
    /// Resource limits.
    pub limits: Limits,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Remove when it exits (`--rm`).
    pub auto_remove: bool,
    /// Isolation type.
    pub isolation: Option<Isolation>,
    /// `none`, `host`, the name or ID of a switch, or `container:<ID>`
    /// (the sandbox of another container: its network namespace, or its
    /// utility VM).
    pub network: String,
    /// The pod the container belongs to (its ID).
    #[serde(default)]
    pub pod: Option<String>,
    /// A build's `RUN` step: killed when the client that started it goes
    /// away (a build interrupted or killed leaves nothing running).
    #[serde(default)]
    pub build_step: bool,
    /// The container is its pod's infra container (it owns the sandbox).
    #[serde(default)]
    pub pod_infra: bool,
    /// Signal for `stop`.
    pub stop_signal: String,
    /// Default `stop` timeout in seconds.
    pub stop_timeout: Option<u32>,
    /// `/dev/shm` size in bytes.
    pub shm_size: Option<u64>,
    /// `--ulimit` values.
    #[serde(default)]
    pub ulimits: Vec<moat_runtime::spec::Rlimit>,
    /// Switch endpoints (addresses reserved at create).
    #[serde(default)]
    pub networks: Vec<moat_net::Endpoint>,
    /// More names the container answers to on its switches (`--network-alias`;
    /// Docker scopes them per network, moat applies them on every switch).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Requested address on the first switch (`--ip`).
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Requested MAC on the first switch (`--mac-address`).
    #[serde(default)]
    pub mac: Option<String>,
    /// `--dns` servers.
    #[serde(default)]
    pub dns: Vec<String>,
    /// `--add-host NAME:IP` entries.
    #[serde(default)]
    pub add_hosts: Vec<String>,
    /// `-p` mappings.
    #[serde(default)]
    pub publish: Vec<moat_net::PortMap>,
    /// `-P`: publish every exposed port on a free host port.
    #[serde(default)]
    pub publish_all: bool,
    /// Ports the image exposes (`ExposedPorts`).
    #[serde(default)]
    pub exposed: Vec<(u16, String)>,
    /// `--device` nodes (process isolation only).
    #[serde(default)]
    pub devices: Vec<moat_runtime::devices::DeviceNode>,
    /// How the log is kept.
    #[serde(default)]
    pub log: crate::logs::LogConfig,
    /// `--dns-search` domains.
    #[serde(default)]
    pub dns_search: Vec<String>,
    /// `--dns-option` options.
    #[serde(default)]
    pub dns_options: Vec<String>,
    /// `--sysctl` values (namespaced ones only).
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// The terminal size at create (`HostConfig.ConsoleSize`), applied before the process starts.
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
    /// `--oom-score-adj` of the container's processes (-1000..=1000).
    #[serde(default)]
    pub oom_score_adj: i32,
    /// Legacy links (`--link NAME[:ALIAS]`): the linked container's ID and
    /// the alias, resolved at create.
    #[serde(default)]
    pub links: Vec<Link>,
    /// `--annotation`s: recorded and shown (no runtime of moat's reads any).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `--device-cgroup-rule`s as given (`c 1:3 rwm`), checked at create.
    #[serde(default)]
    pub device_cgroup_rules: Vec<String>,
    /// `--pid`: `""` (its own PID namespace) or `host`.
    #[serde(default)]
    pub pid_mode: String,
    /// `--ipc`: `""`/`private`/`shareable` (its own IPC namespace) or `host`.
    #[serde(default)]
    pub ipc_mode: String,
    /// `--cgroupns`: `""`/`private` (its own cgroup namespace) or `host`.
    #[serde(default)]
    pub cgroupns_mode: String,
    /// `--uts`: `""` (its own UTS namespace) or `host`.
    #[serde(default)]
    pub uts_mode: String,
    /// `--group-add`: supplementary groups (names resolved in the container's `/etc/group`, or GIDs).
    #[serde(default)]
    pub group_add: Vec<String>,
}

impl ContainerConfig {
    /// The network mode.
    pub fn network_mode(&self) -> NetworkMode<'_> {
        NetworkMode::parse(&self.network)
    }

    /// The isolation type (process when unset).
    pub fn isolation(&self) -> Isolation {
        self.isolation.unwrap_or(Isolation::Process)
    }
}

/// Lifecycle status, docker's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, never started (or start failed).
    #[default]
    Created,
    /// Running.
    Running,
    /// Frozen (`moat pause`).
    Paused,
    /// Waiting to be restarted by its policy.
    Restarting,
    /// Exited.
    Exited,
    /// Being removed.
    Removing,
    /// Unusable.
    Dead,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Exited => "exited",
            Self::Removing => "removing",
            Self::Dead => "dead",
        })
    }
}

/// Runtime state, rewritten on every transition.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ContainerState {
    /// Status.
    pub status: Status,
    /// Host PID of the main process (0 when not running).
    pub pid: u32,
    /// Host PID of the shim.
    pub shim_pid: u32,
    /// Health check results, when the container has a check.
    #[serde(default)]
    pub health: Option<crate::health::Health>,
    /// Last start.
    pub started_at: Option<DateTime<Utc>>,
    /// Last exit.
    pub finished_at: Option<DateTime<Utc>>,
    /// Last exit code.
    pub exit_code: i32,
    /// Last exit was an OOM kill.
    pub oom_killed: bool,
    /// Why the last start or run failed.
    pub error: String,
    /// Restarts by policy.
    pub restart_count: u32,
    /// Stopped by the user (restart policies stand down).
    pub manually_stopped: bool,
    /// When `moat update --isolation` last changed the isolation type.
    #[serde(default)]
    pub isolation_changed_at: Option<DateTime<Utc>>,
    /// Published ports as bound (host port chosen when it was 0).
    #[serde(default)]
    pub ports: Vec<moat_net::PortMap>,
}

/// A request to create a container.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// Name (generated when `None`).
    pub name: Option<String>,
    /// Configuration as the user gave it (the engine fills in the rest).
    pub config: ContainerConfig,
    /// Switches to connect beyond the first (`config.network`): Docker's
    /// repeated `--network` and the further `EndpointsConfig` entries.
    pub networks: Vec<NetworkAttachment>,
}

/// One more switch for a new container, with its address, MAC and the
/// names it answers to there only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkAttachment {
    /// Switch name or ID.
    pub switch: String,
    /// IPv4 address on it (allocated when `None`).
    pub ip: Option<std::net::Ipv4Addr>,
    /// MAC address on it (generated when `None`).
    pub mac: Option<String>,
    /// Names the container answers to on this switch only.
    pub aliases: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies() {
        for s in ["no", "on-failure", "on-failure:3", "always", "unless-stopped"] {
            assert_eq!(s.parse::<RestartPolicy>().map(|p| p.to_string()), Ok(s.to_string()));
        }
        assert!("sometimes".parse::<RestartPolicy>().is_err());
        assert!("on-failure:x".parse::<RestartPolicy>().is_err());
    }
}
