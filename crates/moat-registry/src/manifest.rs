//! Manifests and indexes: Docker schema 2 and OCI, and platform choice.

use crate::RegistryError;
use moat_core::Digest;
use serde::{Deserialize, Serialize};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1 (signed), refused.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Platform (index entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Value>,
}

/// A platform.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Platform {
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// `v8`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        let p: Vec<&str> = s.split('/').collect();
        match p.as_slice() {
            [os, arch] => Ok(Self { os: os.to_string(), architecture: arch.to_string(), variant: None }),
            [os, arch, v] => {
                Ok(Self { os: os.to_string(), architecture: arch.to_string(), variant: Some(v.to_string()) })
            }
            _ => Err(RegistryError::Unsupported(format!(
                "invalid platform {s:?}: use os/arch[/variant], e.g. linux/amd64"
            ))),
        }
    }

    /// This machine's platform.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            a => a,
        };
        Self { os: "linux".into(), architecture: architecture.into(), variant: None }
    }

    /// Whether an index entry of platform `p` serves this one (a missing
    /// variant here matches any; `arm64` matches `v8`).
    pub fn matches(&self, p: &Platform) -> bool {
        self.os == p.os
            && self.architecture == p.architecture
            && match (&self.variant, &p.variant) {
                (None, _) => true,
                (Some(a), Some(b)) => a == b,
                (Some(a), None) => self.architecture == "arm64" && a == "v8",
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest (Docker schema 2 or OCI).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// 2.
    pub schema_version: u32,
    /// Media type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The config blob.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// An index or manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// 2.
    pub schema_version: u32,
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// One entry per platform.
    pub manifests: Vec<Descriptor>,
}

/// The media type of a fetched manifest: the `Content-Type`, or (when a
/// registry sends a generic one) the `mediaType` field, or the shape.
pub fn media_type(content_type: &str, bytes: &[u8]) -> String {
    if [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED]
        .contains(&content_type)
    {
        return content_type.to_string();
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    if let Some(m) = v["mediaType"].as_str() {
        return m.to_string();
    }
    if v["schemaVersion"] == 1 {
        DOCKER_SCHEMA1.into()
    } else if v.get("manifests").is_some() {
        OCI_INDEX.into()
    } else {
        OCI_MANIFEST.into()
    }
}

/// What a fetched manifest is.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// One image.
    Image(Manifest),
    /// Several platforms.
    Index(Index),
}

/// Parses a fetched manifest; schema 1 is refused.
pub fn parse(media_type: &str, bytes: &[u8]) -> Result<Parsed, RegistryError> {
    let bad = |e: serde_json::Error| RegistryError::Unsupported(format!("invalid manifest ({media_type}): {e}"));
    match media_type {
        OCI_INDEX | DOCKER_LIST => Ok(Parsed::Index(serde_json::from_slice(bytes).map_err(bad)?)),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Parsed::Image(serde_json::from_slice(bytes).map_err(bad)?)),
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Err(RegistryError::Unsupported(
            "this image uses Docker's schema 1 manifest, which is deprecated and not supported: push it again with a current client".into(),
        )),
        m => Err(RegistryError::Unsupported(format!("unsupported manifest media type {m:?}"))),
    }
}

/// The entry of `index` for `want`, or an error listing what it has.
pub fn choose<'a>(index: &'a Index, want: &Platform) -> Result<&'a Descriptor, RegistryError> {
    index.manifests.iter().find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p))).ok_or_else(|| {
        let have: Vec<String> =
            index.manifests.iter().filter_map(|d| d.platform.as_ref().map(|p| p.to_string())).collect();
        RegistryError::NotFound(format!(
            "no matching manifest for {want} in the manifest list entries (it has {})",
            if have.is_empty() { "none".to_string() } else { have.join(", ") }
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_and_indexes() -> Result<(), RegistryError> {
        let d = |arch: &str, v: Option<&str>| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(arch.as_bytes()),
            size: 1,
            platform: Some(Platform { os: "linux".into(), architecture: arch.into(), variant: v.map(String::from) }),
            annotations: None,
        };
        let idx = Index {
            schema_version: 2,
            media_type: OCI_INDEX.into(),
            manifests: vec![d("amd64", None), d("arm64", Some("v8"))],
        };
        assert_eq!(choose(&idx, &Platform::parse("linux/amd64")?)?.digest, Digest::of(b"amd64"));
        assert_eq!(choose(&idx, &Platform::parse("linux/arm64")?)?.digest, Digest::of(b"arm64"));
        let e = choose(&idx, &Platform::parse("linux/s390x")?).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("linux/amd64, linux/arm64/v8"), "{e}");
        assert!(Platform::parse("amd64").is_err());
        assert!(matches!(parse(DOCKER_SCHEMA1_SIGNED, b"{}"), Err(RegistryError::Unsupported(_))));
        assert_eq!(media_type("application/json", br#"{"schemaVersion":2,"manifests":[]}"#), OCI_INDEX);
        Ok(())
    }
}
