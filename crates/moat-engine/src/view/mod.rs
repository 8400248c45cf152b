//! What front ends show, as typed values with Docker's field names: the
//! Docker Engine API's models (container summary and inspect, image summary
//! and inspect, network, info, version) and the `docker` CLI's list rows
//! (`ps`, `images`), built here once from the engine's records. The CLI
//! prints them as tables, JSON or Go templates; the API serves them.
//!
//! One file per resource: [`container`], [`image`], [`network`], [`system`].

mod container;
mod image;
mod network;
mod system;

pub use container::*;
pub use image::*;
pub use network::*;
pub use system::*;

use crate::Container;
use chrono::{DateTime, SecondsFormat, Utc};

pub(crate) fn rfc3339(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Nanos, true)).unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}

/// `docker ps`-style command text: dockerd's, arguments with a space in
/// single quotes (the program itself as it is).
pub(crate) fn command_text(c: &Container) -> String {
    c.config
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| if i > 0 && a.contains(' ') { format!("'{a}'") } else { a.clone() })
        .collect::<Vec<_>>()
        .join(" ")
}
