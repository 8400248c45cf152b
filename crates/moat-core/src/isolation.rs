//! The two isolation types and how users name them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a container is isolated from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Shared host kernel: namespaces, cgroups, capabilities, seccomp.
    Process,
    /// One utility VM per container with its own kernel (alias `vm`).
    Hyperv,
}

/// A user's isolation request: a concrete type or the configured default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationRequest {
    /// `default` or empty: use the engine's configured default.
    Default,
    /// An explicit type.
    Explicit(Isolation),
}

/// An isolation value that is none of `process`, `hyperv`, `vm`, `default`.
#[derive(Debug, thiserror::Error)]
#[error("invalid isolation {0:?}: use process, hyperv (alias vm) or default")]
pub struct BadIsolation(pub String);

impl FromStr for IsolationRequest {
    type Err = BadIsolation;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "" | "default" => Ok(Self::Default),
            "process" => Ok(Self::Explicit(Isolation::Process)),
            "hyperv" | "vm" => Ok(Self::Explicit(Isolation::Hyperv)),
            _ => Err(BadIsolation(s.to_string())),
        }
    }
}

impl FromStr for Isolation {
    type Err = BadIsolation;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.parse::<IsolationRequest>()? {
            IsolationRequest::Explicit(i) => Ok(i),
            IsolationRequest::Default => Err(BadIsolation(s.to_string())),
        }
    }
}

impl IsolationRequest {
    /// The concrete type, given the engine default.
    pub fn resolve(self, default: Isolation) -> Isolation {
        match self {
            Self::Default => default,
            Self::Explicit(i) => i,
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Process => "process",
            Self::Hyperv => "hyperv",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_aliases() {
        assert_eq!("vm".parse::<Isolation>().ok(), Some(Isolation::Hyperv));
        assert_eq!("HyperV".parse::<Isolation>().ok(), Some(Isolation::Hyperv));
        assert_eq!("process".parse::<Isolation>().ok(), Some(Isolation::Process));
        assert!("kvm".parse::<Isolation>().is_err());
        assert_eq!(
            "default".parse::<IsolationRequest>().ok().map(|r| r.resolve(Isolation::Hyperv)),
            Some(Isolation::Hyperv)
        );
        assert_eq!(Isolation::Hyperv.to_string(), "hyperv");
    }
}
