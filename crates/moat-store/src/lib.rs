//! Crash-safe metadata for a moat root.
//!
//! All records (images, tags, unpacked layers, containers, switches) live in one
//! SQLite database in WAL mode (`synchronous=NORMAL`): every change is one
//! `BEGIN IMMEDIATE` transaction, so concurrent `moat` processes serialise their
//! writes and a process killed at any point leaves either the old or the new
//! state. Files (blobs, layers) are written under `tmp/` first and renamed into
//! place before the transaction that references them commits; see
//! `docs/store.md`.

mod db;
mod du;
pub mod layout;
pub mod lock;
pub mod tmp;

pub use db::{ContainerRow, EventRow, ImageRecord, PodRow, Store, StoreError, SwitchRow, VolumeRow};
pub use du::dir_size;
pub use layout::{write_atomic, Layout};
pub use lock::{FileLock, LockError};
pub use moat_core::ctr_files;
pub use tmp::TmpDir;
