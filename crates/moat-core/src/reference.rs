//! Docker-style image references: `name`, `name:tag`, `registry/ns/name:tag@sha256:...`.
//!
//! Names are normalised the way the docker CLI shows them: `docker.io/library/busybox`
//! becomes `busybox`, a missing tag becomes `latest`.

use crate::Digest;
use std::fmt;

/// Errors parsing a reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    /// The reference is not a valid image name.
    #[error(
        "invalid reference format {0:?}: repository name must be lowercase [a-z0-9] separated by '.', '_', '-' or '/'"
    )]
    Name(String),
    /// The tag part is invalid.
    #[error("invalid tag in {0:?}: tags are up to 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Tag(String),
    /// The digest part is invalid.
    #[error("invalid digest in reference {0:?}")]
    Digest(String),
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Repository in familiar form (`busybox`, `user/app`, `registry:5000/app`).
    pub repo: String,
    /// Tag (defaults to `latest` unless a digest was given).
    pub tag: Option<String>,
    /// Pinned digest, when given with `@`.
    pub digest: Option<Digest>,
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+ ( (\.|_|__|-+) [a-z0-9]+ )*
    if c.is_empty() {
        return false;
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_domain(d: &str) -> bool {
    let host = match d.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return false,
        None => d,
    };
    !host.is_empty()
        && host.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !t.starts_with(['.', '-'])
}

impl ImageRef {
    /// Parses and normalises `s`.
    pub fn parse(s: &str) -> Result<Self, RefError> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>().map_err(|_| RefError::Digest(s.into()))?)),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(RefError::Tag(s.into()));
            }
        }
        if name.is_empty() || name.len() > 255 {
            return Err(RefError::Name(s.into()));
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let domain = if parts.len() > 1 && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
        {
            let d = parts.remove(0);
            if !valid_domain(d) {
                return Err(RefError::Name(s.into()));
            }
            Some(d)
        } else {
            None
        };
        if parts.iter().any(|c| !valid_component(c)) {
            return Err(RefError::Name(s.into()));
        }
        let path = parts.join("/");
        let repo = match domain {
            None | Some("docker.io") | Some("index.docker.io") => {
                path.strip_prefix("library/").map(str::to_string).unwrap_or(path)
            }
            Some(d) => format!("{d}/{path}"),
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Self { repo, tag, digest })
    }

    /// `repo:tag`, the key tags are stored under (None for digest-only refs).
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.repo))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> String {
        ImageRef::parse(s).map(|r| r.to_string()).unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(t("busybox"), "busybox:latest");
        assert_eq!(t("busybox:1.36"), "busybox:1.36");
        assert_eq!(t("docker.io/library/busybox"), "busybox:latest");
        assert_eq!(t("docker.io/user/app:v1"), "user/app:v1");
        assert_eq!(t("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(t("quay.io/a/b/c:x_y"), "quay.io/a/b/c:x_y");
        assert_eq!(t("my-app__x.y"), "my-app__x.y:latest");
    }

    #[test]
    fn rejects_invalid() {
        assert!(t("Busybox").starts_with("ERR"));
        assert!(t("a:b:c").starts_with("ERR"));
        assert!(t("a/../b").starts_with("ERR"));
        assert!(t("").starts_with("ERR"));
        assert!(t("a:.x").starts_with("ERR"));
        assert!(t("-a").starts_with("ERR"));
        assert!(t("a@sha256:zz").starts_with("ERR"));
    }

    #[test]
    fn digest_refs() {
        let d = Digest::of(b"x");
        let r = ImageRef::parse(&format!("busybox@{d}")).ok();
        assert_eq!(r.as_ref().and_then(|r| r.tag.clone()), None);
        assert_eq!(r.and_then(|r| r.digest), Some(d));
    }
}
