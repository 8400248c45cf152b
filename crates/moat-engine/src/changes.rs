//! A container's changes to its image: `diff`, `commit`, and the image
//! `history` they extend.
//!
//! The changes are the container's overlay upper directory, read on the
//! host without following any link: an entry there is added (absent from
//! the image), modified (present), or — a 0:0 character device, overlayfs's
//! whiteout — deleted. What the runtime itself creates as mount points and
//! bind targets (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, `/dev`,
//! `/proc`, `/sys`: Docker's "init layer") is not a change. `commit` turns
//! the same walk into an OCI layer (`.wh.` files, `.wh..wh..opq`) and adds
//! it to the image with the container's configuration.

use crate::build_context::{is_opaque, is_whiteout};
use crate::{Container, Engine, EngineError};
use std::path::{Path, PathBuf};

/// Paths the runtime makes in every container; never changes.
const INIT_PATHS: &[&str] =
    &["/dev", "/proc", "/sys", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/etc/mtab", "/sbin/moat-init"];

/// Kind of a change (Docker's numbering in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Present in the image, changed.
    Modified = 0,
    /// Not in the image.
    Added = 1,
    /// Removed from the image's content.
    Deleted = 2,
}

/// As the API's number (`{"Kind": 1}`), not the variant's name.
impl serde::Serialize for ChangeKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

impl ChangeKind {
    /// `C`, `A` or `D`, as `diff` prints it.
    pub fn letter(&self) -> char {
        match self {
            Self::Modified => 'C',
            Self::Added => 'A',
            Self::Deleted => 'D',
        }
    }
}

/// One change (the API's `{"Path": ..., "Kind": 0|1|2}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// Path in the container.
    #[serde(rename = "Path")]
    pub path: String,
    /// Kind.
    #[serde(rename = "Kind")]
    pub kind: ChangeKind,
}

/// One entry of the upper directory that is part of the changes.
#[derive(Debug, Clone)]
struct Entry {
    /// Path in the container (`/a/b`).
    path: String,
    /// Host path in the upper directory.
    host: PathBuf,
    kind: ChangeKind,
    is_dir: bool,
    /// An overlayfs opaque directory (hides the image's content below it).
    opaque: bool,
}

/// True when `rel` is in the image (the layers, top first, with their whiteouts).
fn in_image(layers: &[PathBuf], rel: &Path) -> bool {
    for l in layers {
        let p = l.join(rel);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            return !is_whiteout(&m);
        }
        // an opaque directory on the way hides everything below it
        let mut cur = l.clone();
        for c in rel.parent().into_iter().flat_map(|p| p.components()) {
            cur.push(c);
            if is_opaque(&cur) {
                return false;
            }
        }
    }
    false
}

/// Walks `upper` and returns its changes against `layers`, parents before
/// children.
fn walk(upper: &Path, layers: &[PathBuf]) -> std::io::Result<Vec<Entry>> {
    fn visit(dir: &Path, rel: &Path, layers: &[PathBuf], out: &mut Vec<Entry>) -> std::io::Result<bool> {
        let mut any = false;
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let host = e.path();
            let r = rel.join(e.file_name());
            let path = format!("/{}", r.display());
            if INIT_PATHS.contains(&path.as_str()) {
                continue;
            }
            let m = std::fs::symlink_metadata(&host)?;
            if is_whiteout(&m) {
                out.push(Entry { path, host, kind: ChangeKind::Deleted, is_dir: false, opaque: false });
                any = true;
                continue;
            }
            let kind = if in_image(layers, &r) { ChangeKind::Modified } else { ChangeKind::Added };
            if m.is_dir() {
                let at = out.len();
                let opaque = is_opaque(&host);
                out.insert(at, Entry { path, host: host.clone(), kind, is_dir: true, opaque });
                let below = visit(&host, &r, layers, out)?;
                // a directory copied up only for what is not a change is not one
                if kind == ChangeKind::Modified && !below && !opaque {
                    out.remove(at);
                    continue;
                }
            } else {
                out.push(Entry { path, host, kind, is_dir: false, opaque: false });
            }
            any = true;
        }
        Ok(any)
    }
    let mut out = Vec::new();
    visit(upper, Path::new(""), layers, &mut out)?;
    Ok(out)
}

/// The changes as an OCI layer tar; a file the container changes while it
/// is read contributes exactly the size its header announces
/// ([`moat_image::pack`]).
fn layer_tar(entries: &[Entry], w: impl std::io::Write) -> std::io::Result<()> {
    let mut b = moat_image::pack::Packer::new(w);
    let empty = |b: &mut moat_image::pack::Packer<_>, name: &str| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, Path::new(name), &[][..])
    };
    for e in entries {
        let name = e.path.trim_start_matches('/');
        if e.kind == ChangeKind::Deleted {
            let p = Path::new(name);
            let wh = match p.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(d) => {
                    format!("{}/.wh.{}", d.display(), p.file_name().map(|f| f.to_string_lossy()).unwrap_or_default())
                }
                None => format!(".wh.{name}"),
            };
            empty(&mut b, &wh)?;
            continue;
        }
        b.append_path(&e.host, Path::new(name))?;
        if e.is_dir && e.opaque {
            empty(&mut b, &format!("{name}/.wh..wh..opq"))?;
        }
    }
    b.finish().map(|_| ())
}

/// `commit` options.
#[derive(Debug, Clone, Default)]
pub struct CommitRequest {
    /// `repo[:tag]`.
    pub reference: Option<String>,
    /// `-m`.
    pub comment: String,
    /// `-a`.
    pub author: String,
    /// `-c`: Dockerfile instructions applied to the config.
    pub changes: Vec<String>,
    /// Pause a running container while its changes are read (default in Docker).
    pub pause: bool,
}

/// One row of `image history` (the API's `/images/{name}/history`), newest first.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HistoryRow {
    /// The image's ID for its newest entry, `<missing>` below.
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    /// The instruction or command.
    pub created_by: String,
    /// Tags (newest entry only).
    pub tags: Vec<String>,
    /// Bytes of its layer (0 for an entry without one).
    pub size: i64,
    /// Comment.
    pub comment: String,
}

/// The runtime config Docker's commit gives the new image: the container's.
fn runtime_config(c: &Container, image_volumes: Option<serde_json::Value>) -> serde_json::Value {
    let cfg = &c.config;
    let mut v = serde_json::json!({
        "Env": cfg.env,
        "Cmd": cfg.cmd,
        "WorkingDir": cfg.workdir,
        "User": cfg.user,
        "Labels": cfg.labels,
        "StopSignal": cfg.stop_signal,
    });
    if !cfg.entrypoint.is_empty() {
        v["Entrypoint"] = serde_json::json!(cfg.entrypoint);
    }
    if !cfg.exposed.is_empty() {
        let ports: serde_json::Map<String, serde_json::Value> =
            cfg.exposed.iter().map(|(p, proto)| (format!("{p}/{proto}"), serde_json::json!({}))).collect();
        v["ExposedPorts"] = serde_json::Value::Object(ports);
    }
    if let Some(vols) = image_volumes {
        v["Volumes"] = vols;
    }
    v
}

impl Engine {
    fn layers_of(&self, c: &Container) -> Result<(PathBuf, Vec<PathBuf>, moat_store::ImageRecord), EngineError> {
        let image =
            self.images.store().image(&c.row.image_id)?.ok_or_else(|| {
                EngineError::Invalid(format!("image {} of this container was removed", c.row.image_id))
            })?;
        let layers = image.diff_ids.iter().rev().map(|d| self.layout.layer(d.hex())).collect();
        Ok((self.layout.container(c.id()).join("upper"), layers, image))
    }

    /// The container's changes to its image as an OCI layer (a build's
    /// `RUN` step).
    pub(crate) fn changes_layer(&self, c: &Container, w: impl std::io::Write) -> Result<(), EngineError> {
        let (upper, layers, _) = self.layers_of(c)?;
        let entries = walk(&upper, &layers).map_err(EngineError::io("read the container's changes"))?;
        layer_tar(&entries, w).map_err(EngineError::io("archive the container's changes"))
    }

    /// The container's changes to its image, by path.
    pub fn diff(&mut self, key: &str) -> Result<Vec<Change>, EngineError> {
        let c = self.get(key)?;
        let (upper, layers, _) = self.layers_of(&c)?;
        let entries = walk(&upper, &layers).map_err(EngineError::io("read the container's changes"))?;
        let mut out: Vec<Change> = entries.into_iter().map(|e| Change { path: e.path, kind: e.kind }).collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// A new image from the container's image and its changes (`commit`).
    pub fn commit(&mut self, key: &str, req: CommitRequest) -> Result<moat_core::Digest, EngineError> {
        let c = self.get(key)?;
        let paused = req.pause && c.is_running() && c.state.status != crate::config::Status::Paused;
        if paused {
            self.pause(c.id(), true)?;
        }
        let result = (|| {
            let (upper, layers, image) = self.layers_of(&c)?;
            let entries = walk(&upper, &layers).map_err(EngineError::io("read the container's changes"))?;
            let mut tar = Vec::new();
            layer_tar(&entries, &mut tar).map_err(EngineError::io("archive the container's changes"))?;
            moat_core::crash::point("commit.layer");
            let icfg: serde_json::Value = serde_json::from_slice(&image.config).unwrap_or_default();
            let mut config = runtime_config(&c, icfg["config"].get("Volumes").cloned());
            for ch in &req.changes {
                moat_image::changes::apply(&mut config, ch)?;
            }
            let info = moat_image::CommitInfo {
                config,
                comment: req.comment.clone(),
                author: req.author.clone(),
                created_by: c.config.args.join(" "),
                tag: req.reference.clone(),
            };
            Ok::<_, EngineError>(self.images.commit(&image, &tar[..], info)?)
        })();
        if paused {
            let _ = self.pause(c.id(), false);
        }
        let id = result?;
        moat_core::crash::point("commit.recorded");
        if id != c.row.image_id {
            self.images.store_mut().set_image_parent(&id, &c.row.image_id)?;
        }
        let mut ev = crate::events::Event::container("commit", &c);
        if let Some(r) = &req.reference {
            ev = ev.attr("imageRef", r);
        }
        crate::events::record(self.store(), ev);
        Ok(id)
    }

    /// An image's history, newest first.
    pub fn image_history(&mut self, reference: &str) -> Result<Vec<HistoryRow>, EngineError> {
        let img = self.images.resolve(reference)?;
        let raw: serde_json::Value = serde_json::from_slice(&img.config).unwrap_or_default();
        let sizes: std::collections::HashMap<moat_core::Digest, u64> =
            self.images.store().layers()?.into_iter().collect();
        let mut layer = img.diff_ids.iter();
        let mut rows = Vec::new();
        let history = raw["history"].as_array().cloned().unwrap_or_default();
        for h in &history {
            let empty = h["empty_layer"].as_bool().unwrap_or(false);
            let size = if empty { 0 } else { layer.next().and_then(|d| sizes.get(d)).copied().unwrap_or(0) };
            let created = h["created"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp())
                .unwrap_or(0);
            rows.push(HistoryRow {
                id: "<missing>".into(),
                created,
                created_by: h["created_by"].as_str().unwrap_or_default().to_string(),
                tags: Vec::new(),
                size: size as i64,
                comment: h["comment"].as_str().unwrap_or_default().to_string(),
            });
        }
        rows.reverse();
        match rows.first_mut() {
            Some(top) => {
                top.id = img.id.to_string();
                top.tags = img.tags.clone();
            }
            None => rows.push(HistoryRow {
                id: img.id.to_string(),
                created: img.created.map(|t| t.timestamp()).unwrap_or(0),
                created_by: String::new(),
                tags: img.tags.clone(),
                size: img.size as i64,
                comment: String::new(),
            }),
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_finds_added_modified_deleted_and_skips_init_paths() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let (lower, upper) = (d.path().join("l"), d.path().join("u"));
        std::fs::create_dir_all(lower.join("etc"))?;
        std::fs::write(lower.join("etc/passwd"), "x")?;
        std::fs::write(lower.join("gone"), "x")?;
        std::fs::create_dir_all(upper.join("etc"))?;
        std::fs::write(upper.join("etc/hosts"), "")?; // a bind target
        std::fs::write(upper.join("new"), "n")?;
        std::fs::create_dir_all(upper.join("proc"))?;
        nix::sys::stat::mknod(&upper.join("gone"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
            .map_err(std::io::Error::from)?;
        let e = walk(&upper, std::slice::from_ref(&lower))?;
        let got: Vec<(String, ChangeKind)> = e.iter().map(|e| (e.path.clone(), e.kind)).collect();
        assert_eq!(got, vec![("/gone".into(), ChangeKind::Deleted), ("/new".into(), ChangeKind::Added)]);
        std::fs::write(upper.join("etc/passwd"), "y")?;
        let got: Vec<String> =
            walk(&upper, &[lower])?.iter().map(|e| format!("{} {}", e.kind.letter(), e.path)).collect();
        assert_eq!(got, vec!["C /etc", "C /etc/passwd", "D /gone", "A /new"]);
        let mut tar = Vec::new();
        layer_tar(&walk(&upper, &[d.path().join("l")])?, &mut tar)?;
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()?
            .map(|e| e.map(|e| e.path().map(|p| p.display().to_string()).unwrap_or_default()))
            .collect::<Result<_, _>>()?;
        // a directory entry ends with /, as in the layers Docker writes
        assert_eq!(names, vec!["etc/", "etc/passwd", ".wh.gone", "new"]);
        Ok(())
    }
}
