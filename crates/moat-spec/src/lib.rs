//! The types every layer of moat shares and no layer owns: the complete
//! description of a container process (`Spec`), its limits, device rules
//! and interfaces, what the host sends a guest agent to create a container,
//! and process listings, usage and exec requests. A leaf crate, so the wire
//! protocol (`moat-proto`) carries them typed and the runtime
//! (`moat-runtime`) consumes them without depending on the protocol.

pub mod devices;
pub mod spec;

pub use spec::{Mount, NetNs, Process, Propagation, Rlimit, Rootfs, Seccomp, Spec};

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Requested limits (docker's semantics).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// Memory + swap in bytes; -1 = unlimited swap.
    pub memory_swap: Option<i64>,
    /// CPU quota in CPUs (e.g. 0.5).
    pub cpus: Option<f64>,
    /// Relative CPU weight (docker's shares, default 1024).
    pub cpu_shares: Option<u64>,
    /// Maximum number of processes; -1 or 0 = unlimited.
    pub pids: Option<i64>,
    /// Which devices the container may open (Docker's allow-list by default).
    #[serde(default)]
    pub devices: crate::devices::DevicePolicy,
    /// Soft memory limit (`--memory-reservation`): v1 `memory.soft_limit_in_bytes`, v2 `memory.low`.
    #[serde(default)]
    pub memory_reservation: Option<i64>,
    /// `--memory-swappiness` 0–100 (cgroup v1 only).
    #[serde(default)]
    pub swappiness: Option<u64>,
    /// `--oom-kill-disable` (cgroup v1 only).
    #[serde(default)]
    pub oom_kill_disable: bool,
    /// CPUs the container may run on (`--cpuset-cpus`, the kernel's list syntax).
    #[serde(default)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes the container may use (`--cpuset-mems`).
    #[serde(default)]
    pub cpuset_mems: Option<String>,
}

/// One interface to configure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Iface {
    /// Its current name (the veth peer moved in, or `eth0` in a guest).
    pub from: String,
    /// Its name inside the container.
    pub name: String,
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway (only the first interface with one gets the route).
    pub gateway: Option<Ipv4Addr>,
    /// MAC address `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// IPv6 address on a dual-stack switch.
    #[serde(default)]
    pub ip6: Option<std::net::Ipv6Addr>,
    /// Its prefix length.
    #[serde(default)]
    pub prefix6: u8,
    /// IPv6 default gateway (the first interface with one gets the route).
    #[serde(default)]
    pub gateway6: Option<std::net::Ipv6Addr>,
}

/// The cgroup of a utility VM's first container, under `moat/` (a template
/// creates it, so its clones skip the `mkdir`); the others of a sandbox get
/// `container-<cid>`.
pub const GUEST_CGROUP: &str = "container";

/// The guest side of a VM container: the same runtime spec as process
/// isolation (its root is the virtio-fs export), plus limits for the guest's
/// own cgroup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestCreate {
    /// The container's ID: its sessions, cgroup and root in the guest belong to it.
    pub cid: String,
    /// Runtime spec, with paths as the guest sees them.
    pub spec: Spec,
    /// Limits applied inside the guest.
    pub limits: Limits,
    /// Cgroup name inside the guest ([`GUEST_CGROUP`]).
    pub cgroup: String,
    /// Keep stdin open (`-i`); otherwise it is /dev/null.
    pub stdin: bool,
}
/// Terminal size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A process to run inside an existing container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ExecSpec {
    /// The exec ID (Docker's exec instance), empty for anonymous sessions.
    #[serde(default)]
    pub id: String,
    /// argv; `args[0]` is looked up in the container's PATH.
    pub args: Vec<String>,
    /// Extra `KEY=VALUE` entries on top of the container's environment.
    pub env: Vec<String>,
    /// Working directory (container's default when `None`).
    pub workdir: Option<String>,
    /// `user[:group]` (container's default when `None`).
    pub user: Option<String>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Keep stdin open.
    pub stdin: bool,
    /// Initial terminal size.
    pub size: Option<WinSize>,
    /// Run without waiting (`exec -d`).
    pub detach: bool,
    /// Extra privileges (`exec --privileged`).
    pub privileged: bool,
    /// The keys that detach a client from the session, as given
    /// (`ctrl-p,ctrl-q` when empty); the front end that relays stdin
    /// watches for them.
    #[serde(default)]
    pub detach_keys: String,
}

/// One row of a process listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcRow {
    /// PID as the container sees it.
    pub pid: u32,
    /// Parent PID as the container sees it.
    pub ppid: u32,
    /// PID on the host, for process isolation (none for VM isolation).
    pub host_pid: Option<u32>,
    /// User (numeric).
    pub uid: u32,
    /// Resident memory in KiB.
    pub rss_kb: u64,
    /// Cumulative CPU time in seconds.
    pub cpu_secs: f64,
    /// Command line.
    pub cmd: String,
}

/// Resource usage of a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Stats {
    /// Memory in use, bytes: the container's cgroup; for a VM container what
    /// the VM holds on the host (QEMU, virtiofsd and the guest RAM's pages).
    pub mem_usage: u64,
    /// A VM container's memory as its guest's cgroup counts it (0 otherwise).
    #[serde(default)]
    pub guest_mem: u64,
    /// Memory limit, bytes (0 = none).
    pub mem_limit: u64,
    /// Cumulative CPU time, nanoseconds.
    pub cpu_ns: u64,
    /// Number of processes.
    pub pids: u64,
    /// Bytes received on the container's interfaces (loopback excluded).
    #[serde(default)]
    pub net_rx: u64,
    /// Bytes sent.
    #[serde(default)]
    pub net_tx: u64,
    /// Bytes read from block devices.
    #[serde(default)]
    pub blk_read: u64,
    /// Bytes written to block devices.
    #[serde(default)]
    pub blk_write: u64,
}
