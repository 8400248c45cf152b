//! Engine settings: the system config file (`/etc/moat/config.toml`, or
//! [`EngineOptions::config_file`]), then `<root>/config.toml`, then
//! [`EngineOptions::default_isolation`], each overriding the last.
//!
//! ```toml
//! # like a Windows host whose daemon runs with isolation=hyperv
//! default_isolation = "hyperv"   # or "process" (the built-in default), "vm"
//! # like dockerd's no-new-privileges: new containers get no_new_privs
//! no_new_privileges = true
//! # registries that may use plain HTTP or unverified TLS (loopback always may)
//! insecure_registries = ["registry.lan:5000"]
//! # tried first for Docker Hub pulls
//! registry_mirrors = ["https://mirror.example"]
//! ```

use crate::{EngineError, EngineOptions};
use moat_core::config::{ConfigError, ConfigFile};
use moat_core::Isolation;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Isolation for containers created with `default` or no `--isolation`.
    pub default_isolation: Isolation,
    /// Which file or flag set it (`built-in` if none).
    pub default_isolation_source: String,
    /// Set `no_new_privs` for every new container (off by default, like Docker).
    pub no_new_privileges: bool,
    /// Registries that may use plain HTTP or unverified TLS.
    pub insecure_registries: Vec<String>,
    /// Mirrors for Docker Hub.
    pub registry_mirrors: Vec<String>,
}

fn read(path: &Path) -> Result<Option<ConfigFile>, EngineError> {
    ConfigFile::read(path).map_err(config_error)
}

fn config_error(e: ConfigError) -> EngineError {
    match e {
        ConfigError::Invalid(..) => EngineError::Invalid(e.to_string()),
        ConfigError::Io(what, e) => EngineError::Io(format!("read {what}"), e),
    }
}

impl Settings {
    /// Loads the files of an engine, then its options.
    pub fn load(o: &EngineOptions) -> Result<Self, EngineError> {
        let mut s = Settings {
            default_isolation: Isolation::Process,
            default_isolation_source: "built-in".into(),
            no_new_privileges: false,
            insecure_registries: Vec::new(),
            registry_mirrors: Vec::new(),
        };
        for path in [o.config_file(), o.root.join("config.toml")] {
            if let Some(f) = read(&path)? {
                if let Some(i) = f.isolation(&path).map_err(config_error)? {
                    s.default_isolation = i;
                    s.default_isolation_source = path.display().to_string();
                }
                if let Some(n) = f.no_new_privileges {
                    s.no_new_privileges = n;
                }
                if let Some(r) = f.insecure_registries {
                    s.insecure_registries = r;
                }
                if let Some(m) = f.registry_mirrors {
                    s.registry_mirrors = m;
                }
            }
        }
        if let Some(i) = o.default_isolation {
            s.default_isolation = i;
            s.default_isolation_source = "the engine's options (--default-isolation)".into();
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_file_and_errors() -> Result<(), EngineError> {
        let d = tempfile::tempdir().map_err(EngineError::io("tempdir"))?;
        let o = EngineOptions { config_file: Some(d.path().join("none.toml")), ..EngineOptions::new(d.path()) };
        assert_eq!(Settings::load(&o)?.default_isolation, Isolation::Process);
        std::fs::write(d.path().join("config.toml"), "default_isolation = \"vm\"\n").map_err(EngineError::io("w"))?;
        let s = Settings::load(&o)?;
        assert_eq!(s.default_isolation, Isolation::Hyperv);
        assert!(s.default_isolation_source.ends_with("config.toml"));
        std::fs::write(d.path().join("config.toml"), "default_isolation = \"kvm\"\n").map_err(EngineError::io("w"))?;
        assert!(Settings::load(&o).is_err());
        std::fs::write(d.path().join("config.toml"), "bogus = 1\n").map_err(EngineError::io("w"))?;
        assert!(Settings::load(&o).is_err());
        std::fs::remove_file(d.path().join("config.toml")).map_err(EngineError::io("rm"))?;
        let flag = EngineOptions { default_isolation: Some(Isolation::Hyperv), ..o };
        assert_eq!(Settings::load(&flag)?.default_isolation, Isolation::Hyperv);
        Ok(())
    }
}
