//! Credentials and authentication challenges.
//!
//! moat keeps its own logins in a file with the `auths` shape of a docker
//! `config.json` (`{"auths": {"REGISTRY": {"auth": base64(user:password)}}}`),
//! mode 0600; for registries it has no login for, it reads the user's docker
//! configuration and its credential helpers through the `docker_credential`
//! crate.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (or token used as a password).
    Basic {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
    /// An identity token (sent as the refresh token of an OAuth2 request by
    /// Docker; used as a bearer password here).
    Identity(String),
}

impl Credential {
    /// `Basic base64(user:password)`.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Self::Basic { user, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
            Self::Identity(_) => None,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    auth: String,
    #[serde(default, skip_serializing_if = "String::is_empty", rename = "identitytoken")]
    identity_token: String,
}

fn io(ctx: String) -> impl FnOnce(std::io::Error) -> crate::RegistryError {
    move |e| crate::RegistryError::Io(ctx, e)
}

fn read_file(path: &Path) -> Result<AuthFile, crate::RegistryError> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s).map_err(|e| {
            crate::RegistryError::Io(
                format!("read {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AuthFile::default()),
        Err(e) => Err(crate::RegistryError::Io(format!("read {}", path.display()), e)),
    }
}

/// Writes the file whole (temporary file, 0600, renamed over).
fn write_file(path: &Path, f: &AuthFile) -> Result<(), crate::RegistryError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let data = serde_json::to_vec_pretty(f).map_err(|e| crate::RegistryError::Io("encode logins".into(), e.into()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("write {}", tmp.display())))?;
    file.write_all(&data).and_then(|()| file.sync_all()).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("write {}", path.display())))
}

/// The login for `registry` in moat's file.
pub fn stored(path: &Path, registry: &str) -> Option<Credential> {
    let f = read_file(path).ok()?;
    let e = f.auths.get(registry)?;
    if !e.identity_token.is_empty() {
        return Some(Credential::Identity(e.identity_token.clone()));
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(e.auth.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (user, password) = s.split_once(':')?;
    Some(Credential::Basic { user: user.into(), password: password.into() })
}

/// Records a login (0600).
pub fn store(path: &Path, registry: &str, user: &str, password: &str) -> Result<(), crate::RegistryError> {
    let mut f = read_file(path)?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    f.auths.insert(registry.to_string(), AuthEntry { auth, identity_token: String::new() });
    write_file(path, &f)
}

/// Forgets a login; false if there was none.
pub fn forget(path: &Path, registry: &str) -> Result<bool, crate::RegistryError> {
    let mut f = read_file(path)?;
    let had = f.auths.remove(registry).is_some();
    if had {
        write_file(path, &f)?;
    }
    Ok(had)
}

/// The user's docker login for `registry` (`~/.docker/config.json`, its
/// `credsStore`/`credHelpers`), as the docker CLI would find it.
pub fn docker(registry: &str) -> Option<Credential> {
    let keys: Vec<String> = if registry == crate::DOCKER_HUB {
        vec!["https://index.docker.io/v1/".into(), "index.docker.io".into(), "docker.io".into()]
    } else {
        vec![registry.to_string(), format!("https://{registry}")]
    };
    keys.iter().find_map(|k| match docker_credential::get_credential(k) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            Some(Credential::Basic { user, password })
        }
        Ok(docker_credential::DockerCredential::IdentityToken(t)) => Some(Credential::Identity(t)),
        Err(_) => None,
    })
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service`.
        service: Option<String>,
        /// `scope` the registry suggested.
        scope: Option<String>,
    },
}

/// Parses a challenge (quoted or bare values, any order).
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some(eq) = s.find('=') else { break };
        let key = s[..eq].trim().trim_start_matches(',').trim().to_ascii_lowercase();
        s = &s[eq + 1..];
        let value;
        if let Some(r) = s.strip_prefix('"') {
            let end = r.find('"').unwrap_or(r.len());
            value = r[..end].to_string();
            s = r.get(end + 1..).unwrap_or("");
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_string();
            s = &s[end..];
        }
        s = s.trim_start_matches(',').trim();
        params.insert(key, value);
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

/// Percent-encoding of a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(urlencode("repository:a/b:pull,push"), "repository%3Aa%2Fb%3Apull%2Cpush");
    }

    #[test]
    fn logins_are_kept_0600() -> Result<(), crate::RegistryError> {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().map_err(io("tempdir".into()))?;
        let p = d.path().join("auth.json");
        store(&p, "127.0.0.1:5000", "me", "s3:cret")?;
        assert_eq!(std::fs::metadata(&p).map_err(io("stat".into()))?.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            stored(&p, "127.0.0.1:5000"),
            Some(Credential::Basic { user: "me".into(), password: "s3:cret".into() })
        );
        let text = std::fs::read_to_string(&p).map_err(io("read".into()))?;
        assert!(text.contains("\"auths\"") && text.contains("\"auth\""), "docker's config.json shape");
        assert!(forget(&p, "127.0.0.1:5000")?);
        assert_eq!(stored(&p, "127.0.0.1:5000"), None);
        Ok(())
    }
}
