//! moat's namespace runtime.
//!
//! [`spec::Spec`] describes a container process completely (root filesystem,
//! mounts, identity, capabilities, seccomp, limits); [`spawn`] turns it into a
//! running process in fresh pid, mount, uts, ipc, net and cgroup namespaces,
//! and [`spawn::exec`] runs further processes inside an existing container.
//! The same code runs on the host (process isolation) and inside the guest
//! agent (VM isolation). See `docs/runtime.md`.
//!
//! The caller must be single-threaded when spawning: the child runs ordinary
//! Rust code between `clone` and `execve`.

pub mod caps;
pub mod cgroup;
pub mod devices;
pub mod init;
pub mod mounts;
pub mod netconf;
#[cfg(feature = "oci")]
pub mod oci;
pub mod procfs;
pub mod relay;
pub mod seccomp;
pub mod spawn;
pub mod spec;
pub mod user;

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A system call failed.
    #[error("{0}: {1}")]
    Sys(String, nix::Error),
    /// I/O failure.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Invalid configuration from the user.
    #[error("{0}")]
    Invalid(String),
    /// The container process failed before running the command.
    #[error("{message}")]
    Start {
        /// What failed, one line.
        message: String,
        /// Exit code to record (127 not found, 126 not executable, 125 other).
        code: i32,
    },
}

impl RuntimeError {
    /// The exit code to record for this error: the code of a start failure
    /// (127 not found, 126 not executable, 125 setup), else 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Start { code, .. } => *code,
            _ => 125,
        }
    }

    /// Maps a nix error with context.
    pub fn sys(ctx: impl Into<String>) -> impl FnOnce(nix::Error) -> RuntimeError {
        let ctx = ctx.into();
        move |e| RuntimeError::Sys(ctx, e)
    }
    /// Maps an io error with context.
    pub fn io(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let ctx = ctx.into();
        move |e| RuntimeError::Io(ctx, e)
    }
}
