//! The files of a container's directory (`containers/<id>/`), named once:
//! the interface between the engine, the container's shim and its sandbox,
//! and, for a sandbox's owner, the shims of the containers that joined it.
/// What the container's backend runs (`ContainerPlan`, JSON), written at start.
pub const PLAN: &str = "plan.json";
/// Held by the shim while it lives (proves it alive).
pub const SHIM_LOCK: &str = "shim.lock";
/// The shim's socket for clients.
pub const SHIM_SOCK: &str = "shim.sock";
/// The shim's stderr.
pub const SHIM_LOG: &str = "shim.log";
/// The preallocated state file (the exit survives a full disk).
pub const STATE: &str = "state.json";
/// The container's host cgroup (destroyed by whoever finds the shim dead).
pub const CGROUP: &str = "cgroup.json";
/// Facts of the utility VM (inspect's `VM`).
pub const VM: &str = "vm.json";
/// The guest console of a VM the container owns.
pub const CONSOLE: &str = "console.log";
/// Held by an operation on the stopped container (start, remove, copy).
pub const OP_LOCK: &str = "op.lock";
/// The owner's socket on which joined containers' shims reach its VM's agent.
pub const SANDBOX_SOCK: &str = "sandbox.sock";
/// The writable layer, overlay work directory and root mount point.
pub const UPPER: &str = "upper";
/// Overlay's work directory.
pub const WORK: &str = "work";
/// The root mount point (a VM sandbox's share in its owner's shim).
pub const ROOTFS: &str = "rootfs";
