//! Named crash points: `crash::point("create.recorded")` kills the process
//! with SIGKILL when that point is armed, so a test can kill moat at an
//! exact step of an operation instead of after a guessed delay. Armed once
//! per process ([`arm`], from the engine's options; the binary reads
//! `MOAT_CRASHPOINT`); an unarmed point costs one atomic load. Every name
//! is listed in [`POINTS`], which the crash test walks
//! (docs/reliability.md).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Every crash point, as `operation.step`.
pub const POINTS: &[&str] = &[
    // containers
    "create.validated",
    "create.recorded",
    "create.dirs",
    "start.plan",
    "start.spawned",
    "shim.starting",
    "shim.started",
    "shim.exited",
    "stop.signalled",
    "kill.sent",
    "rm.stopped",
    "rm.unrecorded",
    "rm.files",
    "rename.recorded",
    "update.isolation",
    "commit.layer",
    "commit.recorded",
    // images
    "load.staged",
    "load.layers",
    "load.recorded",
    "import.spooled",
    "import.recorded",
    "tag.recorded",
    "rmi.untagged",
    "rmi.deleted",
    "gc.layers",
    "image.prune.deleted",
    "pull.manifest",
    "pull.layers",
    "pull.recorded",
    "push.layers",
    // volumes and switches
    "volume.create.dir",
    "volume.create.recorded",
    "volume.rm.unrecorded",
    "switch.create.bridge",
    "switch.create.recorded",
    "switch.rm.bridge",
    "switch.rm.unrecorded",
    "connect.recorded",
    // pods
    "pod.create.recorded",
    "pod.rm.containers",
    "pod.rm.unrecorded",
    // builds
    "build.context",
    "build.step.container",
    "build.step.layer",
    "build.step.cached",
    "build.tagged",
    "builder.prune.forgotten",
    // the store's write barrier: inside a transaction, before its commit
    "store.commit",
    // exec instances
    "exec.create.recorded",
    "exec.start.spawned",
    // an attach through the API, the stream established
    "attach.attached",
];

struct Armed {
    name: String,
    /// Passes left before the kill (1: the first time the point is reached).
    left: AtomicU32,
}

static ARMED: OnceLock<Armed> = OnceLock::new();

/// Arms `spec`: `NAME` (the first pass) or `NAME@N` (the Nth pass). An
/// unknown name is refused, so a test cannot arm a point that no code has.
pub fn arm(spec: &str) -> Result<(), String> {
    let (name, n) = match spec.split_once('@') {
        Some((n, c)) => (n, c.parse::<u32>().map_err(|_| format!("crash point {spec:?}: bad count"))?),
        None => (spec, 1),
    };
    if !POINTS.contains(&name) {
        return Err(format!("unknown crash point {name:?}"));
    }
    let _ = ARMED.set(Armed { name: name.to_string(), left: AtomicU32::new(n.max(1)) });
    Ok(())
}

/// Kills this process (SIGKILL) if `name` is the armed point.
pub fn point(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "crash point {name} is not in POINTS");
    let Some(a) = ARMED.get() else { return };
    if a.name == name && a.left.fetch_sub(1, Ordering::SeqCst) == 1 {
        // SAFETY: kill(2) on our own PID: the process ends here, as `kill -9` would end it
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_points_are_refused() {
        assert!(super::arm("no.such.point").is_err());
        assert!(super::arm("create.recorded@x").is_err());
    }
}
