//! Shared vocabulary of moat: content digests, object IDs, image references,
//! isolation types and the human formatting used by every front end.

pub mod config;
pub mod containerd;
pub mod crash;
pub mod ctr_files;
pub mod digest;
pub mod error;
pub mod human;
pub mod id;
pub mod isolation;
pub mod reference;

pub use digest::Digest;
pub use error::ErrorKind;
pub use isolation::Isolation;
pub use reference::ImageRef;
