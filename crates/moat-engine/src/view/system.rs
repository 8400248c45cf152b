//! Views of the engine as a whole: `info`, `version`, `system df`.

use super::*;
use serde::Serialize;
use std::collections::BTreeMap;

/// The hypervisor part of `info`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HypervisorInfo {
    /// `kvm` or `tcg`.
    pub accelerator: String,
    /// Why.
    pub reason: String,
    /// Installed guest kernel.
    pub guest_kernel: String,
    /// Guest agent binary.
    pub agent: String,
    /// Guest RAM without `--memory`.
    #[serde(rename = "DefaultMemoryMiB")]
    pub default_memory_mib: u64,
    /// Guest RAM on top of `--memory`.
    #[serde(rename = "MemoryOverheadMiB")]
    pub memory_overhead_mib: u64,
    /// vCPUs without `--cpus`.
    pub default_vcpus: u32,
    /// Whether VMs start from booted templates, and why.
    pub templates: crate::templates::Status,
}

/// Engine and host facts (API `GET /info`, `moat info`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SystemInfo {
    /// Engine ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Containers.
    pub containers: usize,
    /// Running.
    pub containers_running: usize,
    /// Paused.
    pub containers_paused: usize,
    /// Stopped.
    pub containers_stopped: usize,
    /// Images.
    pub images: usize,
    /// Storage driver.
    pub driver: String,
    /// Root directory.
    pub docker_root_dir: String,
    /// Host kernel.
    pub kernel_version: String,
    /// OS.
    pub operating_system: String,
    /// `linux`.
    #[serde(rename = "OSType")]
    pub os_type: String,
    /// `x86_64`.
    pub architecture: String,
    /// CPUs.
    #[serde(rename = "NCPU")]
    pub ncpu: usize,
    /// Memory bytes.
    pub mem_total: u64,
    /// Host name.
    pub name: String,
    /// Engine version.
    pub server_version: String,
    /// `cgroupfs`.
    pub cgroup_driver: String,
    /// `1` or `2`.
    pub cgroup_version: String,
    /// moat: the cgroup layout in words.
    pub cgroup_layout: String,
    /// Default isolation for new containers.
    pub isolation: String,
    /// moat: where the default isolation comes from.
    pub default_isolation_source: String,
    /// moat: utility VMs.
    pub hypervisor: HypervisorInfo,
    /// Logging driver.
    pub logging_driver: String,
    /// Security options.
    pub security_options: Vec<String>,
    /// Volume, network and log drivers there are.
    pub plugins: InfoPlugins,
    /// Swarm: never part of one.
    pub swarm: InfoSwarm,
    /// What the rest of dockerd's `info` says, as this host and engine have it.
    #[serde(flatten)]
    pub more: InfoMore,
}

/// The rest of Docker's `info` keys: what this host supports (read from
/// the kernel where the kernel says it), this engine's runtimes (its
/// isolation types) and the fixed answers of features moat does not have.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InfoMore {
    /// Never a debug build of the daemon.
    pub debug: bool,
    /// No experimental features.
    pub experimental_build: bool,
    /// Memory limits work.
    pub memory_limit: bool,
    /// Swap limits work (swap accounting on cgroup v1).
    pub swap_limit: bool,
    /// Kernel TCP memory limits: no.
    #[serde(rename = "KernelMemoryTCP")]
    pub kernel_memory_tcp: bool,
    /// CFS period: yes.
    pub cpu_cfs_period: bool,
    /// CFS quota: yes.
    pub cpu_cfs_quota: bool,
    /// CPU shares: yes.
    #[serde(rename = "CPUShares")]
    pub cpu_shares: bool,
    /// cpusets: not applied.
    #[serde(rename = "CPUSet")]
    pub cpu_set: bool,
    /// PID limits: yes.
    pub pids_limit: bool,
    /// Disabling the OOM killer: no.
    pub oom_kill_disable: bool,
    /// `net.ipv4.ip_forward`.
    #[serde(rename = "IPv4Forwarding")]
    pub ipv4_forwarding: bool,
    /// `net.bridge.bridge-nf-call-iptables`.
    pub bridge_nf_iptables: bool,
    /// `net.bridge.bridge-nf-call-ip6tables`.
    pub bridge_nf_ip6tables: bool,
    /// Descriptors this process has open.
    #[serde(rename = "NFd")]
    pub nfd: usize,
    /// Threads of this process (Docker counts goroutines).
    #[serde(rename = "NGoroutines")]
    pub ngoroutines: usize,
    /// Now, RFC 3339.
    pub system_time: String,
    /// Event listeners (moat has no daemon to count them).
    #[serde(rename = "NEventsListener")]
    pub nevents_listener: usize,
    /// Docker Hub's index.
    pub index_server_address: String,
    /// Registries: loopback is insecure (plain HTTP allowed), Docker Hub secure.
    pub registry_config: serde_json::Value,
    /// Proxies the engine uses: none configured.
    pub http_proxy: String,
    /// Proxies the engine uses: none configured.
    pub https_proxy: String,
    /// Proxies the engine uses: none configured.
    pub no_proxy: String,
    /// Engine labels: none.
    pub labels: Vec<String>,
    /// The isolation types, by the names `--runtime`/`HostConfig.Runtime` would use.
    pub runtimes: BTreeMap<String, serde_json::Value>,
    /// The default isolation type.
    pub default_runtime: String,
    /// Containers keep running while no moat process does.
    pub live_restore_enabled: bool,
    /// The init `--init` runs.
    pub init_binary: String,
    /// Versions of the components Docker names (none of them here).
    pub containerd_commit: serde_json::Value,
    /// As above.
    pub runc_commit: serde_json::Value,
    /// As above.
    pub init_commit: serde_json::Value,
    /// None.
    pub product_license: String,
    /// Where switches take their subnets from.
    pub default_address_pools: Vec<serde_json::Value>,
    /// Host warnings (none).
    pub warnings: Vec<String>,
    /// None.
    pub generic_resources: Option<Vec<String>>,
    /// Storage driver facts.
    pub driver_status: Vec<[String; 2]>,
    /// The host's OS version (`/etc/os-release`).
    #[serde(rename = "OSVersion")]
    pub os_version: String,
    /// No CDI.
    #[serde(rename = "CDISpecDirs")]
    pub cdi_spec_dirs: Vec<String>,
}

impl InfoMore {
    /// The facts, read now.
    pub fn read(default_isolation: &str, cgroup_v2: bool) -> Self {
        let sysctl = |p: &str| std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1");
        let threads = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok()))
            .unwrap_or(1);
        let os_version = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("VERSION_ID=").map(|v| v.trim_matches('"').to_string()))
            })
            .unwrap_or_default();
        let runtime =
            |what: &str| serde_json::json!({ "path": "moat", "runtimeArgs": [format!("--isolation={what}")] });
        let commit = serde_json::json!({ "ID": "", "Expected": "" });
        InfoMore {
            debug: false,
            experimental_build: false,
            memory_limit: true,
            swap_limit: cgroup_v2 || std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            kernel_memory_tcp: false,
            cpu_cfs_period: true,
            cpu_cfs_quota: true,
            cpu_shares: true,
            cpu_set: false,
            pids_limit: true,
            oom_kill_disable: false,
            ipv4_forwarding: sysctl("/proc/sys/net/ipv4/ip_forward"),
            bridge_nf_iptables: sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables"),
            bridge_nf_ip6tables: sysctl("/proc/sys/net/bridge/bridge-nf-call-ip6tables"),
            nfd: std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0),
            ngoroutines: threads,
            system_time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            nevents_listener: 0,
            index_server_address: "https://index.docker.io/v1/".into(),
            registry_config: serde_json::json!({
                "AllowNondistributableArtifactsCIDRs": null,
                "AllowNondistributableArtifactsHostnames": null,
                "InsecureRegistryCIDRs": ["127.0.0.0/8", "::1/128"],
                "IndexConfigs": { "docker.io": { "Name": "docker.io", "Mirrors": [], "Secure": true, "Official": true } },
                "Mirrors": null,
            }),
            http_proxy: String::new(),
            https_proxy: String::new(),
            no_proxy: String::new(),
            labels: Vec::new(),
            runtimes: [("process", runtime("process")), ("hyperv", runtime("hyperv"))]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            default_runtime: default_isolation.to_string(),
            live_restore_enabled: true,
            init_binary: "moat-init".into(),
            containerd_commit: commit.clone(),
            runc_commit: commit.clone(),
            init_commit: commit,
            product_license: String::new(),
            default_address_pools: vec![serde_json::json!({ "Base": "10.89.0.0/16", "Size": 24 })],
            warnings: Vec::new(),
            generic_resources: None,
            driver_status: Vec::new(),
            os_version,
            cdi_spec_dirs: Vec::new(),
        }
    }
}

/// The drivers of each kind (`Plugins` of Docker's `info`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InfoPlugins {
    /// Volume drivers.
    pub volume: Vec<String>,
    /// Network drivers (switch kinds).
    pub network: Vec<String>,
    /// Log drivers.
    pub log: Vec<String>,
    /// Authorization plugins: none.
    pub authorization: Option<Vec<String>>,
}

/// Swarm state (Docker's `Swarm` of `info`): moat has no swarm mode.
#[derive(Debug, Clone, Serialize)]
pub struct InfoSwarm {
    /// `inactive`.
    #[serde(rename = "LocalNodeState")]
    pub local_node_state: String,
    /// Empty.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// Empty.
    #[serde(rename = "NodeAddr")]
    pub node_addr: String,
    /// No.
    #[serde(rename = "ControlAvailable")]
    pub control_available: bool,
    /// No error.
    #[serde(rename = "Error")]
    pub error: String,
    /// None.
    #[serde(rename = "RemoteManagers")]
    pub remote_managers: Option<Vec<String>>,
}

/// Version facts (API `GET /version`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VersionInfo {
    /// Engine version.
    pub version: String,
    /// API version served.
    pub api_version: String,
    /// Oldest API version served.
    #[serde(rename = "MinAPIVersion")]
    pub min_api_version: String,
    /// Commit.
    pub git_commit: String,
    /// Language runtime.
    pub go_version: String,
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub arch: String,
    /// Host kernel.
    pub kernel_version: String,
    /// Components.
    pub components: Vec<Component>,
    /// The product's name.
    pub platform: Platform,
    /// When this build was made (`""`: moat's builds are reproducible and carry no time).
    pub build_time: String,
}

/// `Platform` of a version answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Platform {
    /// `moat`.
    pub name: String,
}

/// A component of the engine.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Component {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Details.
    pub details: BTreeMap<String, String>,
}

/// The API versions the Docker API server speaks.
pub const API_VERSION: &str = "1.45";
/// The oldest one.
pub const MIN_API_VERSION: &str = "1.24";

pub(crate) fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// `POST /build/prune`'s answer (Docker's `BuildCachePruneResponse`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BuildPrune {
    /// IDs of the cache entries removed.
    pub caches_deleted: Vec<String>,
    /// Bytes freed.
    pub space_reclaimed: u64,
}

/// `GET /system/df` (Docker's `SystemDataUsageResponse`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SystemDf {
    /// Bytes of layer data (shared layers once).
    pub layers_size: i64,
    /// Images.
    pub images: Vec<ImageSummary>,
    /// Containers with their sizes.
    pub containers: Vec<DfContainer>,
    /// Volumes with their usage.
    pub volumes: Vec<crate::volumes::VolumeView>,
    /// Always empty: moat's build cache is intermediate images, counted
    /// under `Images` (Docker's classic builder's way).
    pub build_cache: Vec<serde_json::Value>,
    /// Bytes of BuildKit's build cache: 0.
    pub builder_size: i64,
}

/// A container of `system/df`.
#[derive(Debug, Clone, Serialize)]
pub struct DfContainer {
    /// The list view.
    #[serde(flatten)]
    pub summary: ContainerSummary,
    /// Bytes of its writable layer.
    #[serde(rename = "SizeRw")]
    pub size_rw: i64,
    /// With its image.
    #[serde(rename = "SizeRootFs")]
    pub size_root_fs: i64,
}
