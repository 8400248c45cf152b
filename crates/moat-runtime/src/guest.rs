//! What the host sends the guest agent to create a container inside a VM.

use crate::cgroup::Limits;
use crate::spec::Spec;
use serde::{Deserialize, Serialize};

/// The guest side of a VM container: the same runtime spec as process
/// isolation (its root is the virtio-fs export), plus limits for the guest's
/// own cgroup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Create {
    /// Runtime spec, with paths as the guest sees them.
    pub spec: Spec,
    /// Limits applied inside the guest.
    pub limits: Limits,
    /// Cgroup name inside the guest.
    pub cgroup: String,
    /// Keep stdin open (`-i`); otherwise it is /dev/null.
    pub stdin: bool,
}
