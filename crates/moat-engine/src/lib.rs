//! moat's container engine: the one place where container behaviour lives.
//!
//! Front ends (the `moat` CLI, the Docker API server) translate their
//! protocol into calls of [`Engine`] and render its typed views
//! ([`view`]); they validate, orchestrate and filter nothing themselves.
//! Each running container is owned by a shim process ([`shim`]) that holds
//! the workload through a [`shim::Backend`] (namespaces on this kernel, or a
//! utility VM), its stdio, log and exit status; no daemon is needed and
//! containers outlive every front end. See `docs/engine.md` and
//! `docs/architecture.md`.

pub mod build;
pub mod build_context;
pub mod changes;
pub mod check;
pub mod client;
pub mod config;
pub mod container;
pub mod container_filter;
pub mod cp;
mod create;
pub mod create_body;
mod engine;
mod error;
pub mod events;
pub mod execs;
pub mod filter;
pub mod flags;
pub mod health;
pub mod images;
mod lifecycle;
pub mod logs;
pub mod names;
pub mod network;
pub mod options;
pub mod pods;
mod queries;
pub mod registry;
pub mod rootview;
pub mod session;
pub mod settings;
pub mod shim;
pub mod spec;
pub mod statefile;
pub mod system;
pub mod templates;
pub mod validate;
pub mod view;
pub mod vm;
pub mod volumes;

pub use config::NetworkAttachment;
pub use create::CreateRequest;
pub use lifecycle::{ContainerPrune, Started, StopOptions, Stopped, UpdateRequest, WaitCondition};
pub use moat_proto::{ExecSpec, ProcRow, Stats, WinSize};
pub use options::EngineOptions;
pub use session::{AttachOptions, LogOptions, Session, SessionEvent, SessionWriter};

pub use container::Container;
pub use engine::{shim_alive, Engine};
pub use error::{EngineError, ErrorKind};

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
