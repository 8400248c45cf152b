//! Which device nodes a container may use: the allow-list the runtime hands
//! to the kernel (see `moat-runtime`'s `devices`).

use serde::{Deserialize, Serialize};

/// Device type of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DevKind {
    /// Character devices.
    Char,
    /// Block devices.
    Block,
    /// Both.
    All,
}

/// One allow rule: type, major/minor (`None` = any) and access (`rwm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    /// Device type.
    pub kind: DevKind,
    /// Major number, any when `None`.
    pub major: Option<u32>,
    /// Minor number, any when `None`.
    pub minor: Option<u32>,
    /// Access, a subset of `rwm`.
    pub access: String,
}

impl DeviceRule {
    /// A rule.
    pub fn new(kind: DevKind, major: Option<u32>, minor: Option<u32>, access: &str) -> Self {
        Self { kind, major, minor, access: access.into() }
    }

    /// The cgroup v1 `devices.allow` line, e.g. `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let k = match self.kind {
            DevKind::Char => 'c',
            DevKind::Block => 'b',
            DevKind::All => 'a',
        };
        let n = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "*".into());
        format!("{k} {}:{} {}", n(self.major), n(self.minor), self.access)
    }

    /// The access as `BPF_DEVCG_ACC_*` bits (mknod 1, read 2, write 4).
    pub fn access_bits(&self) -> u32 {
        self.access.chars().fold(0, |a, c| {
            a | match c {
                'm' => 1,
                'r' => 2,
                'w' => 4,
                _ => 0,
            }
        })
    }
}

/// What a container may do with devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DevicePolicy {
    /// Docker's default allow-list plus these rules (from `--device`).
    Default(Vec<DeviceRule>),
    /// Everything (`--privileged`).
    AllowAll,
}

impl Default for DevicePolicy {
    fn default() -> Self {
        Self::Default(Vec::new())
    }
}

impl DevicePolicy {
    /// The full allow-list; `None` means unrestricted.
    pub fn rules(&self) -> Option<Vec<DeviceRule>> {
        match self {
            Self::AllowAll => None,
            Self::Default(extra) => {
                let mut v = default_rules();
                v.extend(extra.iter().cloned());
                Some(v)
            }
        }
    }
}

/// Docker's default device rules (moby `oci/defaults.go`).
pub fn default_rules() -> Vec<DeviceRule> {
    use DevKind::*;
    let c = |maj, min: Option<u32>| DeviceRule::new(Char, Some(maj), min, "rwm");
    vec![
        DeviceRule::new(Char, None, None, "m"),
        DeviceRule::new(Block, None, None, "m"),
        c(1, Some(3)),    // null
        c(1, Some(5)),    // zero
        c(1, Some(7)),    // full
        c(1, Some(8)),    // random
        c(1, Some(9)),    // urandom
        c(5, Some(0)),    // tty
        c(5, Some(1)),    // console
        c(5, Some(2)),    // ptmx
        c(136, None),     // pts/*
        c(10, Some(200)), // net/tun
    ]
}

/// A `--device HOST[:CONTAINER[:PERMISSIONS]]` node, resolved on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// The host's device node (bind-mounted into the container).
    pub host_path: String,
    /// Where it appears in the container.
    pub path: String,
    /// Its allow rule.
    pub rule: DeviceRule,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let r = DeviceRule::new(DevKind::Char, Some(10), Some(229), "r");
        assert_eq!(r.v1_line(), "c 10:229 r");
        assert_eq!(default_rules()[0].v1_line(), "c *:* m");
        assert_eq!(DeviceRule::new(DevKind::All, None, None, "rwm").access_bits(), 7);
    }
}
