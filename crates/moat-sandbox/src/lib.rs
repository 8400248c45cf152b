//! moat's sandboxes, usable without the engine: a sandbox is one set of
//! namespaces on this kernel ([`local`]) or one utility VM ([`vm`]) that
//! holds one or more containers. A [`Backend`] runs one container of a
//! sandbox from a [`ContainerPlan`] of plain values (ID, directory, runtime
//! spec, limits, endpoints, which sandbox), turns readiness and timers into
//! [`BackendEvent`]s and answers queries; the caller (moat's shim, or a
//! containerd shim) owns the poll loop, clients, logs and records.
//!
//! Layers: [`backend`] (the interface and plans) → [`local`], [`link`] (a
//! VM's share and agent channel) and [`templates`] (booted VMs to restore
//! from) → [`vm`] (the VM backend, owner or joined).

pub mod backend;
pub mod link;
pub mod local;
pub mod templates;
pub mod vm;

pub use backend::{
    Backend, BackendEvent, BackendFactory, ContainerPlan, ExecStart, Query, SandboxPlan, Source, VmInfo,
};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where guest kernels and templates live unless configured otherwise.
pub const DEFAULT_KERNEL_DIR: &str = "/var/lib/moat-kernels";

/// The part of container ID `id` that names its VM, its taps and its guest
/// cgroup: the last component of a path-like ID (the containerd shim's
/// `containerd/<namespace>/<id>`), at most 12 characters.
pub fn short_id(id: &str) -> &str {
    let last = id.rsplit('/').next().unwrap_or(id);
    last.get(..12).unwrap_or(last)
}

/// The utility VM a container with `limits` gets: its memory limit plus the
/// guest's overhead (512 MiB without one), as many vCPUs as its CPU limit
/// rounded up (1 without one), at most this host's.
pub fn vm_size(limits: &moat_runtime::cgroup::Limits) -> (u64, u32) {
    let mem = limits
        .memory
        .map(|m| (m as u64).div_ceil(1 << 20) + moat_vm::launch::MEMORY_OVERHEAD_MIB)
        .unwrap_or(moat_vm::launch::DEFAULT_MEMORY_MIB);
    let host = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let vcpus = limits.cpus.map(|c| c.ceil() as u32).unwrap_or(1).clamp(1, host.max(1));
    (mem, vcpus)
}

/// The backend a plan names: namespaces on this kernel, a utility VM of its
/// own, or the VM of the container whose sandbox it joins.
pub fn open(plan: &ContainerPlan, vm: &VmOptions) -> Result<Box<dyn Backend>, SandboxError> {
    Ok(match &plan.sandbox {
        SandboxPlan::Local => Box::new(local::Local::new(plan)?),
        SandboxPlan::Vm { mem_mib, vcpus } => Box::new(vm::Vm::new(plan, vm, *mem_mib, *vcpus)?),
        SandboxPlan::JoinVm { owner, owner_name, owner_dir } => {
            Box::new(vm::Vm::join(plan, owner, owner_name, owner_dir)?)
        }
    })
}

/// Errors of a sandbox, with their causes.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The namespace runtime failed.
    #[error(transparent)]
    Runtime(#[from] moat_runtime::RuntimeError),
    /// Starting or talking to a VM failed.
    #[error(transparent)]
    Vm(#[from] moat_vm::VmError),
    /// Network plumbing failed.
    #[error(transparent)]
    Net(#[from] moat_net::NetError),
    /// Bad input (a plan, a path).
    #[error("{0}")]
    Invalid(String),
    /// Something this host cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The sandbox is not in a state that allows this (a VM to join that is gone).
    #[error("{0}")]
    Conflict(String),
    /// The sandbox (its VM, its agent) failed.
    #[error("{0}")]
    Shim(String),
    /// I/O with context.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The container's process could not be started.
    #[error("{message}")]
    Start {
        /// One-line reason.
        message: String,
        /// Exit code to record.
        code: i32,
    },
}

impl SandboxError {
    /// `map_err` helper: an I/O error with what was being done.
    pub fn io(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let ctx = ctx.into();
        move |e| SandboxError::Io(ctx, e)
    }
}

/// What utility VMs are made of on this host: the engine's options, as
/// plain values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmOptions {
    /// Guest kernels and templates.
    pub kernel_dir: PathBuf,
    /// The static guest agent (found beside `shim_exe` when `None`).
    pub agent: Option<PathBuf>,
    /// The binary the agent is looked up beside.
    pub shim_exe: Option<PathBuf>,
    /// `qemu-system-x86_64` (from PATH when `None`).
    pub qemu: Option<PathBuf>,
    /// `virtiofsd` (the usual places when `None`).
    pub virtiofsd: Option<PathBuf>,
    /// Seconds a VM may take to boot (120 when `None`).
    pub boot_timeout_secs: Option<u64>,
    /// Restore VMs from templates: `None` when QEMU can, `Some(false)` never, `Some(true)` insist.
    pub templates: Option<bool>,
}

impl VmOptions {
    /// The agent binary.
    pub fn agent(&self) -> Result<PathBuf, moat_vm::VmError> {
        match &self.agent {
            Some(p) => Ok(p.clone()),
            None => moat_vm::initramfs::find_agent(self.shim_exe.as_deref().unwrap_or(Path::new("/"))),
        }
    }

    /// The VM boot timeout.
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_secs.unwrap_or(120))
    }
}
