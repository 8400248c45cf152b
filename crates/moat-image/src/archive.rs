//! Reading image archives that were staged (safely unpacked) into a directory:
//! the docker-archive format of `docker save` and OCI image layouts.

use crate::ImageError;
use moat_core::{Digest, ImageRef};
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One layer of an archived image.
#[derive(Debug)]
pub struct LayerSource {
    /// File inside the staging directory.
    pub path: PathBuf,
    /// Digest the file's raw bytes must have, when the format names it.
    pub blob_digest: Option<Digest>,
}

/// One image found in an archive.
#[derive(Debug)]
pub struct ArchiveImage {
    /// Raw config JSON.
    pub config: Vec<u8>,
    /// Layers, bottom first.
    pub layers: Vec<LayerSource>,
    /// Normalised `repo:tag` names.
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Resolves `rel` inside `stage`, following symlinks only if they stay inside.
fn inside(stage: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let bad = || ImageError::BadArchive(format!("archive references {rel:?}, which is not a file inside the archive"));
    let clean = crate::unpack::clean_path(Path::new(rel)).map_err(|_| bad())?;
    let p = stage.join(clean).canonicalize().map_err(|_| bad())?;
    let root = stage.canonicalize().map_err(|e| ImageError::io("staging directory")(e))?;
    if !p.starts_with(&root) || !p.is_file() {
        return Err(bad());
    }
    Ok(p)
}

/// `blobs/sha256/<hex>` → the digest it names.
fn digest_in_name(rel: &str) -> Option<Digest> {
    let name = Path::new(rel).file_name()?.to_str()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    Digest::from_hex(hex).ok()
}

/// Reads a JSON document of the archive (manifest, index, config), at most
/// [`crate::MAX_CONFIG_BYTES`]: a larger one is refused before it is read.
fn read_capped(path: &Path, what: &str) -> Result<Vec<u8>, ImageError> {
    let len = std::fs::metadata(path).map_err(ImageError::io(format!("stat {what}")))?.len();
    if len > crate::MAX_CONFIG_BYTES {
        return Err(ImageError::BadArchive(format!(
            "{what} is {len} bytes, more than the {} accepted",
            crate::MAX_CONFIG_BYTES
        )));
    }
    std::fs::read(path).map_err(ImageError::io(format!("read {what}")))
}

fn read_verified(path: &Path, want: Option<&Digest>, what: &str) -> Result<Vec<u8>, ImageError> {
    let bytes = read_capped(path, what)?;
    if let Some(w) = want {
        let got = Digest::of(&bytes);
        if &got != w {
            return Err(ImageError::DigestMismatch { what: what.into(), want: w.to_string(), got: got.to_string() });
        }
    }
    Ok(bytes)
}

fn normalise_tags(tags: impl IntoIterator<Item = String>) -> Result<Vec<String>, ImageError> {
    let mut out = Vec::new();
    for t in tags {
        let r = ImageRef::parse(&t).map_err(|e| ImageError::BadArchive(e.to_string()))?;
        if let Some(t) = r.tagged() {
            out.push(t);
        }
    }
    Ok(out)
}

/// Parses whichever format is staged in `stage`.
pub fn read(stage: &Path) -> Result<Vec<ArchiveImage>, ImageError> {
    if stage.join("manifest.json").is_file() {
        docker_archive(stage)
    } else if stage.join("index.json").is_file() && stage.join("oci-layout").is_file() {
        oci_layout(stage)
    } else {
        Err(ImageError::BadArchive(
            "neither a docker-archive (manifest.json) nor an OCI image layout (oci-layout, index.json)".into(),
        ))
    }
}

fn docker_archive(stage: &Path) -> Result<Vec<ArchiveImage>, ImageError> {
    let raw = read_capped(&stage.join("manifest.json"), "manifest.json")?;
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&raw).map_err(|e| ImageError::BadArchive(format!("manifest.json: {e}")))?;
    if entries.is_empty() {
        return Err(ImageError::BadArchive("manifest.json lists no image".into()));
    }
    entries
        .into_iter()
        .map(|e| {
            let config = read_verified(&inside(stage, &e.config)?, digest_in_name(&e.config).as_ref(), "image config")?;
            let layers = e
                .layers
                .iter()
                .map(|l| {
                    Ok(LayerSource {
                        path: inside(stage, l)?,
                        blob_digest: l.starts_with("blobs/").then(|| digest_in_name(l)).flatten(),
                    })
                })
                .collect::<Result<_, ImageError>>()?;
            Ok(ArchiveImage { config, layers, tags: normalise_tags(e.repo_tags.unwrap_or_default())? })
        })
        .collect()
}

fn blob_path(stage: &Path, d: &oci_spec::image::Digest) -> Result<(PathBuf, Digest), ImageError> {
    let digest: Digest =
        d.to_string().parse().map_err(|e: moat_core::digest::DigestError| ImageError::BadArchive(e.to_string()))?;
    Ok((inside(stage, &format!("blobs/sha256/{}", digest.hex()))?, digest))
}

fn is_index(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageIndex) || mt.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn oci_layout(stage: &Path) -> Result<Vec<ArchiveImage>, ImageError> {
    let index = ImageIndex::from_reader(&read_capped(&stage.join("index.json"), "index.json")?[..])
        .map_err(|e| ImageError::BadArchive(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    for desc in index.manifests() {
        let ann = desc.annotations().clone().unwrap_or_default();
        let name = ann
            .get("io.containerd.image.name")
            .or_else(|| ann.get("org.opencontainers.image.ref.name"))
            .filter(|n| n.contains(':') || n.contains('/'))
            .cloned();
        let mut d = desc.clone();
        // follow nested indexes to the linux/amd64 (or only) manifest
        for _ in 0..8 {
            if !is_index(d.media_type()) {
                break;
            }
            let (p, want) = blob_path(stage, d.digest())?;
            let raw = read_verified(&p, Some(&want), "image index")?;
            let idx = ImageIndex::from_reader(&raw[..]).map_err(|e| ImageError::BadArchive(format!("index: {e}")))?;
            let pick = idx
                .manifests()
                .iter()
                .find(|m| {
                    m.platform()
                        .as_ref()
                        .is_none_or(|p| p.os().to_string() == "linux" && p.architecture().to_string() == "amd64")
                })
                .cloned()
                .ok_or_else(|| ImageError::BadArchive("no linux/amd64 image in the index".into()))?;
            d = pick;
        }
        let (p, want) = blob_path(stage, d.digest())?;
        let raw = read_verified(&p, Some(&want), "image manifest")?;
        let m = ImageManifest::from_reader(&raw[..]).map_err(|e| ImageError::BadArchive(format!("manifest: {e}")))?;
        let (cp, cwant) = blob_path(stage, m.config().digest())?;
        let config = read_verified(&cp, Some(&cwant), "image config")?;
        let layers = m
            .layers()
            .iter()
            .map(|l| {
                let (path, want) = blob_path(stage, l.digest())?;
                Ok(LayerSource { path, blob_digest: Some(want) })
            })
            .collect::<Result<_, ImageError>>()?;
        out.push(ArchiveImage { config, layers, tags: normalise_tags(name)? });
    }
    if out.is_empty() {
        return Err(ImageError::BadArchive("index.json lists no image".into()));
    }
    Ok(out)
}
