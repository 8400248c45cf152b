//! Docker's string syntaxes for container options — `HOST:CTR[:ro]`,
//! `PATH[:OPTS]`, `[IP:]HOST:CTR[/proto]`, `NAME=SOFT[:HARD]`,
//! `on-failure[:N]`, sizes, `KEY=VALUE` files — parsed once, for the CLI's
//! flags and the API's string fields (`HostConfig.Binds`, ...) alike.

use crate::config::{BindMount, RestartPolicy};
use crate::EngineError;
use moat_core::isolation::IsolationRequest;
use moat_core::Isolation;

fn invalid(m: impl Into<String>) -> EngineError {
    EngineError::Invalid(m.into())
}

/// `-v HOST:CONTAINER[:ro|rw]` (named volumes are not supported yet).
pub fn bind(v: &str) -> Result<BindMount, EngineError> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, m] => (*s, *d, *m),
        _ => return Err(invalid(format!("invalid volume specification {v:?}: use HOST:CONTAINER[:ro]"))),
    };
    if !src.starts_with('/') {
        return Err(invalid(format!(
            "invalid volume specification {v:?}: named volumes are not supported, the host path must be absolute"
        )));
    }
    let readonly = match mode {
        "" | "rw" => false,
        "ro" => true,
        m => return Err(invalid(format!("invalid volume mode {m:?} in {v:?}: use ro or rw"))),
    };
    Ok(BindMount { source: src.into(), target: dst.into(), readonly })
}

/// `--tmpfs PATH[:OPTIONS]`.
pub fn tmpfs(t: &str) -> Result<(String, String), EngineError> {
    let (p, o) = t.split_once(':').unwrap_or((t, ""));
    if !p.starts_with('/') {
        return Err(invalid(format!("invalid tmpfs {t:?}: the path must be absolute")));
    }
    Ok((p.to_string(), o.to_string()))
}

/// `-p [IP:]HOST:CONTAINER[/tcp|udp]`.
pub fn publish(p: &str) -> Result<moat_net::PortMap, EngineError> {
    Ok(moat_net::parse_publish(p)?)
}

/// `--device HOST[:CONTAINER[:PERMISSIONS]]` (resolved on this host).
pub fn device(d: &str) -> Result<moat_runtime::devices::DeviceNode, EngineError> {
    Ok(moat_runtime::devices::parse_device(d)?)
}

/// `--ulimit NAME=SOFT[:HARD]`.
pub fn ulimit(u: &str) -> Result<moat_runtime::spec::Rlimit, EngineError> {
    moat_runtime::spec::parse_ulimit(u).map_err(EngineError::Invalid)
}

/// `--restart no|on-failure[:N]|always|unless-stopped`.
pub fn restart(r: &str) -> Result<RestartPolicy, EngineError> {
    r.parse().map_err(EngineError::Invalid)
}

/// `--isolation process|hyperv|vm|default` (`None` for the engine's default).
pub fn isolation(i: &str) -> Result<Option<Isolation>, EngineError> {
    match i.parse::<IsolationRequest>().map_err(|e| invalid(e.to_string()))? {
        IsolationRequest::Default => Ok(None),
        IsolationRequest::Explicit(i) => Ok(Some(i)),
    }
}

/// A size (`64m`, `1.5g`, bytes) for a limit stored as `i64`.
pub fn size(what: &str, s: &str) -> Result<i64, EngineError> {
    let b = moat_core::human::parse_size(s).map_err(|e| invalid(e.to_string()))?;
    crate::validate::bytes(what, b)
}

/// `--label KEY[=VALUE]`.
pub fn label(l: &str) -> (String, String) {
    let (k, v) = l.split_once('=').unwrap_or((l, ""));
    (k.to_string(), v.to_string())
}

/// `-e KEY=VALUE`, or `-e KEY` copying `lookup(KEY)` (skipped when unset).
pub fn env(e: &str, lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    if e.contains('=') {
        Some(e.to_string())
    } else {
        lookup(e).map(|v| format!("{e}={v}"))
    }
}

/// The lines of an `--env-file` (comments and blank lines skipped).
pub fn env_file(path: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Vec<String>, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| invalid(format!("cannot read env file {path}: {e}")))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| env(l, &lookup))
        .collect())
}

/// A signal name or number.
pub fn signal(s: &str) -> Result<i32, EngineError> {
    crate::client::parse_signal(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntaxes() -> Result<(), EngineError> {
        assert_eq!(bind("/a:/b:ro")?, BindMount { source: "/a".into(), target: "/b".into(), readonly: true });
        assert!(bind("rel:/b").is_err() && bind("/a").is_err() && bind("/a:/b:rx").is_err());
        assert_eq!(tmpfs("/t:size=1m")?, ("/t".to_string(), "size=1m".to_string()));
        assert_eq!(size("memory", "64m")?, 64 << 20);
        assert!(size("memory", "1e30").is_err());
        assert_eq!(isolation("vm")?, Some(Isolation::Hyperv));
        assert_eq!(isolation("default")?, None);
        assert_eq!(env("A", |_| Some("1".into())), Some("A=1".into()));
        assert_eq!(env("B", |_| None), None);
        assert_eq!(label("k"), ("k".to_string(), String::new()));
        assert_eq!(signal("HUP")?, 1);
        Ok(())
    }
}
