//! Views of images: summaries, `images` rows, inspect.

use super::*;
use crate::{Engine, EngineError};
use moat_core::human;
use serde::Serialize;
use std::collections::BTreeMap;

/// An image in a list (API `GET /images/json`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    /// `sha256:...`.
    pub id: String,
    /// Parent (empty).
    pub parent_id: String,
    /// Names.
    pub repo_tags: Vec<String>,
    /// `name@sha256:...` digests.
    pub repo_digests: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    /// Bytes.
    pub size: i64,
    /// Shared bytes (-1: not computed).
    pub shared_size: i64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Containers using it.
    pub containers: i64,
}

/// A row of `moat images` (the `docker images` format context).
#[derive(Debug, Clone, Serialize)]
pub struct ImagesRow {
    /// Repository.
    #[serde(rename = "Repository")]
    pub repository: String,
    /// Tag.
    #[serde(rename = "Tag")]
    pub tag: String,
    /// Digest.
    #[serde(rename = "Digest")]
    pub digest: String,
    /// Short ID (full with `--no-trunc`).
    #[serde(rename = "ID")]
    pub id: String,
    /// Creation time.
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    /// `3 weeks ago`.
    #[serde(rename = "CreatedSince")]
    pub created_since: String,
    /// Size.
    #[serde(rename = "Size")]
    pub size: String,
}

/// An image in detail (API `GET /images/{name}/json`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    /// `sha256:...`.
    pub id: String,
    /// Names.
    pub repo_tags: Vec<String>,
    /// Digests.
    pub repo_digests: Vec<String>,
    /// Parent.
    pub parent: String,
    /// Comment.
    pub comment: String,
    /// Creation time.
    pub created: String,
    /// Author.
    pub author: String,
    /// Runtime config, with every key of Docker's container config.
    pub config: ImageConfigView,
    /// Architecture.
    pub architecture: String,
    /// OS.
    pub os: String,
    /// Bytes.
    pub size: i64,
    /// Layers.
    #[serde(rename = "RootFS")]
    pub root_fs: RootFs,
    /// When it was last tagged.
    pub metadata: ImageMetadata,
    /// The storage driver (its data: none, layers are moat's own directories).
    pub graph_driver: GraphDriver,
}

/// `Config` of an image inspect: the image's runtime config under every
/// key of Docker's container config (zero values where the image sets none).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfigView {
    /// `""`.
    pub hostname: String,
    /// `""`.
    pub domainname: String,
    /// User.
    pub user: String,
    /// false.
    pub attach_stdin: bool,
    /// false.
    pub attach_stdout: bool,
    /// false.
    pub attach_stderr: bool,
    /// Exposed ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// false.
    pub tty: bool,
    /// false.
    pub open_stdin: bool,
    /// false.
    pub stdin_once: bool,
    /// Environment.
    pub env: Option<Vec<String>>,
    /// Command.
    pub cmd: Option<Vec<String>>,
    /// Health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
    /// `""`.
    pub image: String,
    /// Volumes.
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    /// Working directory.
    pub working_dir: String,
    /// Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Build triggers.
    pub on_build: Option<Vec<String>>,
    /// Labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// Stop signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Shell of shell-form commands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

impl From<moat_image::RuntimeConfig> for ImageConfigView {
    fn from(c: moat_image::RuntimeConfig) -> Self {
        Self {
            hostname: String::new(),
            domainname: String::new(),
            user: c.user.unwrap_or_default(),
            attach_stdin: false,
            attach_stdout: false,
            attach_stderr: false,
            exposed_ports: c.exposed_ports,
            tty: false,
            open_stdin: false,
            stdin_once: false,
            env: c.env,
            cmd: c.cmd,
            healthcheck: c.healthcheck,
            image: String::new(),
            volumes: c.volumes,
            working_dir: c.working_dir.unwrap_or_default(),
            entrypoint: c.entrypoint,
            on_build: c.on_build,
            labels: c.labels,
            stop_signal: c.stop_signal,
            shell: c.shell,
        }
    }
}

/// `RootFS` of an image.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Diff IDs.
    pub layers: Vec<String>,
}

/// `Metadata` of an image.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageMetadata {
    /// Time.
    pub last_tag_time: String,
}

#[derive(serde::Deserialize, Default)]
struct ConfigMeta {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

impl ImageInspect {
    /// The inspect view of `img` with its `RepoDigests` from the store.
    pub fn of_stored(e: &Engine, img: &moat_store::ImageRecord) -> Self {
        let mut v = Self::of(img);
        v.repo_digests = e.images.store().repo_digests(&img.id).unwrap_or_default();
        v.parent = e.images.store().image_parent(&img.id).ok().flatten().map(|p| p.to_string()).unwrap_or_default();
        v
    }

    /// The inspect view of `img`.
    pub fn of(img: &moat_store::ImageRecord) -> Self {
        let meta: ConfigMeta = serde_json::from_slice(&img.config).unwrap_or_default();
        Self {
            id: img.id.to_string(),
            repo_tags: img.tags.clone(),
            repo_digests: Vec::new(),
            parent: String::new(),
            comment: meta.comment.unwrap_or_default(),
            created: rfc3339(Some(img.created.unwrap_or(img.added))),
            author: meta.author.unwrap_or_default(),
            config: moat_image::runtime_config(&img.config).unwrap_or_default().into(),
            architecture: meta.architecture.unwrap_or_default(),
            os: meta.os.unwrap_or_default(),
            size: img.size as i64,
            root_fs: RootFs { kind: "layers".into(), layers: img.diff_ids.iter().map(|d| d.to_string()).collect() },
            metadata: ImageMetadata { last_tag_time: rfc3339(Some(img.added)) },
            graph_driver: GraphDriver { data: None, name: "overlay".into() },
        }
    }
}

impl ImageSummary {
    /// The summary of `img` with its users and `RepoDigests` from the store.
    pub fn of_stored(e: &mut Engine, img: &moat_store::ImageRecord) -> Result<Self, EngineError> {
        let mut s = Self::of(img, e.image_users(img)?);
        s.repo_digests = e.images.store().repo_digests(&img.id).unwrap_or_default();
        s.parent_id = e.images.store().image_parent(&img.id)?.map(|p| p.to_string()).unwrap_or_default();
        Ok(s)
    }

    /// The summary of `img`, used by `containers` containers.
    pub fn of(img: &moat_store::ImageRecord, containers: usize) -> Self {
        Self {
            id: img.id.to_string(),
            parent_id: String::new(),
            repo_tags: img.tags.clone(),
            repo_digests: Vec::new(),
            created: img.created.unwrap_or(img.added).timestamp(),
            size: img.size as i64,
            shared_size: -1,
            labels: moat_image::runtime_config(&img.config).ok().and_then(|c| c.labels).unwrap_or_default(),
            containers: containers as i64,
        }
    }

    /// The `moat images` rows of `img` (one per tag, `<none>` when it has
    /// none), with the registry digest of each repository when known.
    pub fn rows_with_digests(e: &Engine, img: &moat_store::ImageRecord, no_trunc: bool) -> Vec<ImagesRow> {
        let digests = e.images.store().repo_digests(&img.id).unwrap_or_default();
        let mut rows = Self::rows(img, no_trunc);
        for r in &mut rows {
            if let Some(d) = digests.iter().find_map(|n| n.strip_prefix(&format!("{}@", r.repository))) {
                r.digest = d.to_string();
            }
        }
        rows
    }

    /// The `moat images` rows of `img` (one per tag, `<none>` when it has none).
    pub fn rows(img: &moat_store::ImageRecord, no_trunc: bool) -> Vec<ImagesRow> {
        let id = if no_trunc { img.id.to_string() } else { img.id.short().to_string() };
        let created = img.created.unwrap_or(img.added);
        let names: Vec<(String, String)> = if img.tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            img.tags
                .iter()
                .map(|t| match t.rsplit_once(':').filter(|(r, _)| !r.ends_with('/') && !t.ends_with(']')) {
                    Some((r, t)) => (r.to_string(), t.to_string()),
                    None => (t.clone(), "<none>".into()),
                })
                .collect()
        };
        names
            .into_iter()
            .map(|(repository, tag)| ImagesRow {
                repository,
                tag,
                digest: "<none>".into(),
                id: id.clone(),
                created_at: created.format("%Y-%m-%d %H:%M:%S %z UTC").to_string(),
                created_since: human::ago(created),
                size: human::size(img.size),
            })
            .collect()
    }
}
