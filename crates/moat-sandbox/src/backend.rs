//! What runs a container's processes, behind one interface: [`crate::local`]
//! (namespaces on this kernel) and [`crate::vm`] (a utility VM whose agent
//! runs the same local relay). A new way to run containers (a VM restored
//! from a template, a pod sandbox) is one more implementation. The shim
//! owns the poll loop; a backend says what to watch and turns readiness
//! and timers into [`BackendEvent`]s.

use crate::SandboxError;
use moat_proto::{ExecSpec, Limits, ShimReply, WinSize};
use moat_runtime::spec::Spec;
use serde::{Deserialize, Serialize};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Instant;

/// What a backend runs, as plain values (no engine records): the shim
/// writes it to `plan.json` in the container's directory, the way an OCI
/// bundle carries `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerPlan {
    /// The container's ID.
    pub id: String,
    /// Its directory (logs, sockets, the VM's files).
    pub dir: PathBuf,
    /// Its runtime spec (host paths).
    pub spec: Spec,
    /// Its limits (cgroup, and inside the guest).
    pub limits: Limits,
    /// Keep stdin open (`-i`).
    pub stdin: bool,
    /// Its switch endpoints (veths, or a VM's taps and NICs).
    pub endpoints: Vec<moat_net::Endpoint>,
    /// Its sandbox.
    pub sandbox: SandboxPlan,
    /// The cgroup of its group (a pod in process isolation), `moat/<name>`
    /// with these limits, made if missing; its own cgroup goes inside.
    #[serde(default)]
    pub group: Option<(String, Limits)>,
}

/// Facts of a container's utility VM, recorded in `vm.json` in its
/// directory when the VM starts (or is joined): what `inspect` shows as `VM`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    /// `kvm` or `tcg`.
    #[serde(rename = "Accelerator", default)]
    pub accelerator: String,
    /// Guest kernel release.
    #[serde(rename = "Kernel", default, skip_serializing_if = "String::is_empty")]
    pub kernel: String,
    /// Guest RAM in MiB.
    #[serde(rename = "MemoryMiB", default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// vCPUs.
    #[serde(rename = "Vcpus", default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// QEMU's host PID (while it runs).
    #[serde(rename = "QemuPid", default, skip_serializing_if = "Option::is_none")]
    pub qemu_pid: Option<u32>,
    /// virtiofsd's host PID (while it runs).
    #[serde(rename = "VirtiofsdPid", default, skip_serializing_if = "Option::is_none")]
    pub virtiofsd_pid: Option<u32>,
    /// `template` (restored from one) or `cold`.
    #[serde(rename = "Boot", default, skip_serializing_if = "String::is_empty")]
    pub boot: String,
    /// The template's digest, when restored from one.
    #[serde(rename = "Template", default)]
    pub template: Option<String>,
    /// The container whose VM this one joined.
    #[serde(rename = "Sandbox", default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

impl VmInfo {
    /// The record in container directory `dir`, if any.
    pub fn read(dir: &std::path::Path) -> Option<Self> {
        std::fs::read(dir.join(moat_core::ctr_files::VM)).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Records it in container directory `dir`.
    pub fn write(&self, dir: &std::path::Path) {
        if let Err(e) = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(dir.join(moat_core::ctr_files::VM), b))
        {
            tracing::warn!("cannot record the VM's facts: {e}");
        }
    }
}

/// Where a container runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SandboxPlan {
    /// Its own namespaces on this kernel (process isolation).
    Local,
    /// A utility VM of its own, of this size.
    Vm {
        /// Guest RAM in MiB.
        mem_mib: u64,
        /// vCPUs.
        vcpus: u32,
    },
    /// The utility VM of another container (its shim owns it).
    JoinVm {
        /// The owner's ID.
        owner: String,
        /// The owner's name, for messages.
        owner_name: String,
        /// The owner's directory (its `sandbox.sock`, `vm.json`).
        owner_dir: PathBuf,
    },
}

/// Makes the backend of a container (a caller's own, such as tests' stubs).
pub type BackendFactory =
    std::sync::Arc<dyn Fn(&ContainerPlan) -> Result<Box<dyn Backend>, SandboxError> + Send + Sync>;

/// A descriptor's owner, as a backend names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The local relay's descriptors.
    Relay(moat_runtime::relay::Source),
    /// The agent channel.
    Channel,
    /// QEMU's pidfd.
    Qemu,
    /// QEMU's QMP connection.
    Qmp,
    /// virtiofsd's pidfd.
    Virtiofsd,
    /// The sandbox socket other containers' shims join a VM on.
    SandboxListener,
    /// A joined container's shim.
    Joined(u32),
}

/// A request answered by the backend, now or later.
#[derive(Debug, Clone)]
pub enum Query {
    /// Process listing.
    Top,
    /// Resource usage.
    Stats,
    /// Freeze.
    Pause,
    /// Thaw.
    Unpause,
    /// New limits.
    Update(Limits),
}

/// How an exec start went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStart {
    /// Running with this PID.
    Now(u32),
    /// Started asynchronously: a `Started` or `ExecFailed` event follows.
    Pending,
}

/// What happened in a backend.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendEvent {
    /// Output of session `sid` (0: the main process).
    Output {
        /// Session.
        sid: u32,
        /// From stderr.
        err: bool,
        /// Bytes.
        data: Vec<u8>,
    },
    /// A pending exec started.
    Started {
        /// Session.
        sid: u32,
        /// PID.
        pid: u32,
    },
    /// A pending exec could not start.
    ExecFailed {
        /// Session.
        sid: u32,
        /// Why.
        message: String,
        /// Exit code.
        code: i32,
    },
    /// A session's process exited.
    Exited {
        /// Session.
        sid: u32,
        /// Exit code.
        code: i32,
        /// OOM-killed (main process).
        oom: bool,
    },
    /// The answer to a [`Query`] sent with `token`.
    Reply {
        /// The token.
        token: u64,
        /// The answer.
        reply: ShimReply,
    },
    /// The backend itself ended (QEMU died): the container is over.
    Died {
        /// Exit code to record.
        code: i32,
        /// Why.
        reason: String,
    },
}

/// The interface both isolation types implement.
pub trait Backend {
    /// Starts the main process (again, for a restart); blocks until it runs.
    fn start_main(&mut self, plan: &ContainerPlan) -> Result<u32, SandboxError>;
    /// Starts `x` as session `sid` in the running container.
    fn exec(&mut self, sid: u32, x: &ExecSpec) -> Result<ExecStart, SandboxError>;
    /// Delivers a signal; false when session `sid` has no process.
    fn signal(&mut self, sid: u32, signal: i32) -> bool;
    /// Resizes a session's terminal.
    fn resize(&mut self, sid: u32, ws: WinSize);
    /// Bytes for a session's stdin.
    fn stdin(&mut self, sid: u32, data: Vec<u8>);
    /// End of a session's stdin.
    fn close_stdin(&mut self, sid: u32);
    /// Answers `q` now, or later with [`BackendEvent::Reply`] carrying `token`.
    fn query(&mut self, q: Query, token: u64) -> Option<ShimReply>;
    /// Descriptors to poll: output only of sessions whose clients are not full.
    fn poll_fds(&self, full: &dyn Fn(u32) -> bool, out: &mut Vec<(RawFd, libc::c_short, Source)>);
    /// A polled descriptor is ready.
    fn ready(&mut self, src: Source, revents: libc::c_short, buf: &mut [u8]) -> Vec<BackendEvent>;
    /// After each round of the loop (the VM grants output credit here).
    fn after_round(&mut self, _full: &dyn Fn(u32) -> bool) {}
    /// The next time [`Backend::timers`] wants to run.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    /// Runs due timers.
    fn timers(&mut self, _now: Instant) -> Vec<BackendEvent> {
        Vec::new()
    }
    /// A stop escalated to SIGKILL (a VM that does not answer is killed later).
    fn killed_main(&mut self, _now: Instant) {}
    /// Typed facts of the sandbox (the utility VM of a hyperv container).
    fn info(&self) -> Option<VmInfo> {
        None
    }
    /// Ends everything the backend started and cleans up after it.
    fn teardown(&mut self, plan: &ContainerPlan);
}
