//! moat's config file (`/etc/moat/config.toml`, then `<root>/config.toml`):
//! its format, read by the engine's settings and by the containerd shim
//! (which takes `default_isolation` from it without the engine).
//!
//! ```toml
//! default_isolation = "hyperv"   # or "process" (the built-in default), "vm"
//! ```

use crate::Isolation;
use serde::Deserialize;
use std::path::Path;

/// The system-wide config file unless configured otherwise (`MOAT_CONFIG`).
pub const SYSTEM_CONFIG: &str = "/etc/moat/config.toml";

/// The keys of a config file (unknown keys are refused: a typo is not ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Isolation of containers created without one.
    pub default_isolation: Option<String>,
    /// `no_new_privs` for every new container.
    pub no_new_privileges: Option<bool>,
    /// Registries that may use plain HTTP or unverified TLS.
    pub insecure_registries: Option<Vec<String>>,
    /// Mirrors for Docker Hub.
    pub registry_mirrors: Option<Vec<String>>,
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, an unknown key, or a bad value.
    #[error("invalid config file {0}: {1}")]
    Invalid(String, String),
    /// Unreadable.
    #[error("read {0}: {1}")]
    Io(String, #[source] std::io::Error),
}

impl ConfigFile {
    /// The file at `path`; `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(s) => toml::from_str(&s)
                .map(Some)
                .map_err(|e| ConfigError::Invalid(path.display().to_string(), e.message().replace('\n', " "))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ConfigError::Io(path.display().to_string(), e)),
        }
    }

    /// Its `default_isolation`, parsed (`path` names the file in errors).
    pub fn isolation(&self, path: &Path) -> Result<Option<Isolation>, ConfigError> {
        self.default_isolation
            .as_deref()
            .map(|v| {
                v.parse().map_err(|e: crate::isolation::BadIsolation| {
                    ConfigError::Invalid(path.display().to_string(), format!("default_isolation: {e}"))
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_isolation_and_refuses_typos() {
        let d = std::env::temp_dir().join(format!("moat-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("config.toml");
        assert!(ConfigFile::read(&p).unwrap().is_none(), "no file: none");
        std::fs::write(&p, "default_isolation = \"vm\"\n").unwrap();
        let f = ConfigFile::read(&p).unwrap().unwrap();
        assert_eq!(f.isolation(&p).unwrap(), Some(Isolation::Hyperv));
        std::fs::write(&p, "default_isolation = \"kvm\"\n").unwrap();
        let e = ConfigFile::read(&p).unwrap().unwrap().isolation(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("invalid config file {}: default_isolation:", p.display())), "{e}");
        std::fs::write(&p, "default_isolaton = \"vm\"\n").unwrap();
        assert!(matches!(ConfigFile::read(&p), Err(ConfigError::Invalid(..))));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
