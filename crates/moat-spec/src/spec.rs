//! The complete description of a container process.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How the root filesystem is assembled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Rootfs {
    /// An overlay of read-only layer dirs (top first) plus a writable upper dir.
    Overlay {
        /// Layer directories, topmost first.
        lower: Vec<PathBuf>,
        /// Writable upper directory.
        upper: PathBuf,
        /// overlayfs work directory (same filesystem as `upper`).
        work: PathBuf,
    },
    /// An existing directory (e.g. a virtio-fs mount in the guest), bind-mounted.
    Dir(PathBuf),
}

/// An extra mount inside the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Mount {
    /// Bind mount of a host path.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Path inside the container.
        target: String,
        /// Mount read-only.
        readonly: bool,
        /// Propagation of mount events from the host into the bind.
        #[serde(default)]
        propagation: Propagation,
    },
    /// A tmpfs.
    Tmpfs {
        /// Path inside the container.
        target: String,
        /// Mount options, e.g. `size=64m,mode=1777`.
        options: String,
    },
}

/// Mount propagation of a bind mount (Docker's `bind-propagation`; the
/// shared modes are refused before a spec is built).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// Nothing propagates, recursively (Docker's default).
    #[default]
    Rprivate,
    /// Nothing propagates.
    Private,
    /// Host mounts below the source appear in the container, recursively.
    Rslave,
    /// Host mounts directly below the source appear in the container.
    Slave,
}

impl Propagation {
    /// Parses Docker's names (`""` is the default).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "rprivate" => Self::Rprivate,
            "private" => Self::Private,
            "rslave" => Self::Rslave,
            "slave" => Self::Slave,
            _ => return None,
        })
    }

    /// Docker's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rprivate => "rprivate",
            Self::Private => "private",
            Self::Rslave => "rslave",
            Self::Slave => "slave",
        }
    }
}

/// Which network namespace the container gets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum NetNs {
    /// A new namespace with only loopback.
    #[default]
    New,
    /// The host's (or guest's) namespace.
    Host,
    /// Join a namespace file (e.g. `/run/netns/x`).
    Path(PathBuf),
}

/// Seccomp policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum Seccomp {
    /// moat's default profile (see `seccomp.rs`).
    #[default]
    Default,
    /// No filter.
    Unconfined,
    /// A docker-format JSON profile.
    Profile(String),
}

/// One resource limit.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_*` number.
    pub resource: i32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// The process to run and its identity.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Process {
    /// argv.
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// User as given (`name`, `uid`, `name:group`, `uid:gid`); resolved in the rootfs.
    pub user: String,
    /// Allocate a controlling terminal (the caller passes the pty slave as stdio).
    pub tty: bool,
    /// Resource limits.
    pub rlimits: Vec<Rlimit>,
    /// Initial terminal size (rows, cols), set before the process starts.
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
    /// More supplementary groups (`--group-add`): GIDs, or names looked up
    /// in the container's `/etc/group`.
    #[serde(default)]
    pub group_add: Vec<String>,
    /// `/proc/self/oom_score_adj` of the process (0: left as inherited).
    #[serde(default)]
    pub oom_score_adj: i32,
}

/// Everything needed to create a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// Root filesystem.
    pub rootfs: Rootfs,
    /// Where the root is assembled before `pivot_root` (an empty directory).
    pub rootfs_target: PathBuf,
    /// Make `/` read-only.
    pub readonly_rootfs: bool,
    /// The process.
    pub process: Process,
    /// Hostname.
    pub hostname: String,
    /// NIS domain name (empty: left as the new UTS namespace has it).
    #[serde(default)]
    pub domainname: String,
    /// Extra mounts.
    pub mounts: Vec<Mount>,
    /// Files written into the container before start (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`): (container path, host file bind-mounted there).
    pub etc_files: Vec<(String, PathBuf)>,
    /// Effective/permitted/bounding capability numbers.
    pub capabilities: Vec<u8>,
    /// Seccomp policy.
    pub seccomp: Seccomp,
    /// Set `no_new_privs`.
    pub no_new_privs: bool,
    /// Paths hidden from the container.
    pub masked_paths: Vec<String>,
    /// Paths made read-only.
    pub readonly_paths: Vec<String>,
    /// Network namespace.
    pub net: NetNs,
    /// `--privileged`: all capabilities, no masked/read-only paths, rw /sys, host devices.
    pub privileged: bool,
    /// Size of `/dev/shm` in bytes.
    pub shm_size: u64,
    /// Interfaces to configure in a new network namespace (moved in by the caller before release).
    #[serde(default)]
    pub interfaces: Vec<crate::Iface>,
    /// Host device nodes bind-mounted into the container (`--device`).
    #[serde(default)]
    pub devices: Vec<crate::devices::DeviceNode>,
    /// Share the host's PID namespace (`--pid=host`; process isolation only).
    #[serde(default)]
    pub pid_host: bool,
    /// Share the host's IPC namespace and `/dev/shm` (`--ipc=host`).
    #[serde(default)]
    pub ipc_host: bool,
    /// Share the host's UTS namespace: its host and domain name (`--uts=host`).
    #[serde(default)]
    pub uts_host: bool,
    /// Join this PID namespace (a pod sandbox's `/proc/<pid>/ns/pid`,
    /// Kubernetes' `shareProcessNamespace`): the container's init is not
    /// PID 1 there.
    #[serde(default)]
    pub pid_join: Option<PathBuf>,
    /// Join this IPC namespace (a pod sandbox's `/proc/<pid>/ns/ipc`).
    #[serde(default)]
    pub ipc_join: Option<PathBuf>,
    /// Join this UTS namespace (a pod sandbox's `/proc/<pid>/ns/uts`).
    #[serde(default)]
    pub uts_join: Option<PathBuf>,
    /// Stay in the host's cgroup namespace (`--cgroupns=host`): the
    /// container's `/sys/fs/cgroup` shows the host's hierarchy.
    #[serde(default)]
    pub cgroupns_host: bool,
    /// Namespaced sysctls set in the container's namespaces before it runs
    /// (`net.ipv4.ip_unprivileged_port_start`, `--sysctl`).
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
}

/// Paths Docker masks by default.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only by default.
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Docker's names of the resource limits.
const ULIMITS: &[(&str, libc::__rlimit_resource_t)] = &[
    ("core", libc::RLIMIT_CORE),
    ("cpu", libc::RLIMIT_CPU),
    ("data", libc::RLIMIT_DATA),
    ("fsize", libc::RLIMIT_FSIZE),
    ("locks", libc::RLIMIT_LOCKS),
    ("memlock", libc::RLIMIT_MEMLOCK),
    ("msgqueue", libc::RLIMIT_MSGQUEUE),
    ("nice", libc::RLIMIT_NICE),
    ("nofile", libc::RLIMIT_NOFILE),
    ("nproc", libc::RLIMIT_NPROC),
    ("rss", libc::RLIMIT_RSS),
    ("rtprio", libc::RLIMIT_RTPRIO),
    ("rttime", libc::RLIMIT_RTTIME),
    ("sigpending", libc::RLIMIT_SIGPENDING),
    ("stack", libc::RLIMIT_STACK),
    ("as", libc::RLIMIT_AS),
];

/// Docker's name of an `RLIMIT_*` number.
pub fn ulimit_name(resource: i32) -> Option<&'static str> {
    ULIMITS.iter().find(|(_, r)| *r as i32 == resource).map(|(n, _)| *n)
}

/// Parses docker's `--ulimit NAME=SOFT[:HARD]` (`-1` = unlimited).
pub fn parse_ulimit(s: &str) -> Result<Rlimit, String> {
    let bad = || format!("invalid ulimit {s:?}: use NAME=SOFT[:HARD], e.g. nofile=1024:2048");
    let (name, vals) = s.split_once('=').ok_or_else(bad)?;
    let resource = ULIMITS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r as i32)
        .ok_or_else(|| format!("unknown ulimit type {name:?}"))?;
    let num = |v: &str| -> Result<u64, String> {
        if v == "-1" || v == "unlimited" {
            Ok(libc::RLIM_INFINITY)
        } else {
            v.parse().map_err(|_| bad())
        }
    };
    let (soft, hard) = match vals.split_once(':') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(vals)?, num(vals)?),
    };
    if soft > hard {
        return Err(format!("ulimit {name}: soft limit {soft} is larger than hard limit {hard}"));
    }
    Ok(Rlimit { resource, soft, hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulimits() {
        assert_eq!(
            parse_ulimit("nofile=1024:2048"),
            Ok(Rlimit { resource: libc::RLIMIT_NOFILE as i32, soft: 1024, hard: 2048 })
        );
        assert_eq!(parse_ulimit("core=-1").map(|r| r.soft), Ok(libc::RLIM_INFINITY));
        assert!(parse_ulimit("nofile=10:5").is_err());
        assert!(parse_ulimit("bogus=1").is_err());
        assert!(parse_ulimit("nofile").is_err());
    }
}
