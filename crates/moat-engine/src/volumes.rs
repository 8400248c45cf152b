//! Volumes: directories of the root (`volumes/<name>/_data`) that outlive
//! containers, shared between them and bound into a container like a host
//! path — in a utility VM they are part of the virtio-fs export, so they
//! work in both isolation types and across a conversion.
//!
//! A named volume is made by `volume create` or on first use (`-v NAME:/p`);
//! an anonymous one (`-v /p`, an image's `VOLUME`) belongs to its container
//! and goes with `rm -v`, `--rm` and `volume prune`. A new, empty volume is
//! seeded with the image's content at its mount point, like Docker. Which
//! containers use which volume is a table of the store, so a volume in use
//! is never removed (the check and the delete are one transaction).

use crate::config::{ContainerConfig, MountKind};
use crate::filter::{any, label_matches, Filters};
use crate::{events, rootview, Engine, EngineError};
use chrono::{DateTime, Utc};
use moat_store::{StoreError, VolumeRow};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the engine keeps about a volume.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(default)]
pub struct VolumeConfig {
    /// Always `local`.
    pub driver: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Driver options (none are supported by the local driver here).
    pub options: BTreeMap<String, String>,
    /// Made for one container (`-v /path`, an image's `VOLUME`).
    pub anonymous: bool,
}

/// A volume.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Name.
    pub name: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Configuration.
    pub config: VolumeConfig,
    /// Host path of its data.
    pub mountpoint: PathBuf,
}

/// `volume create`.
#[derive(Debug, Clone, Default)]
pub struct VolumeCreate {
    /// Name (a random 64-hex name when absent).
    pub name: Option<String>,
    /// Driver (`local` or absent).
    pub driver: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Driver options.
    pub options: BTreeMap<String, String>,
}

/// What `volume prune` removed.
#[derive(Debug, Clone, Default)]
pub struct VolumePrune {
    /// Names.
    pub deleted: Vec<String>,
    /// Bytes freed.
    pub reclaimed: u64,
}

/// Docker's JSON of a volume (`volume inspect`, the API).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeView {
    /// RFC 3339.
    pub created_at: String,
    /// `local`.
    pub driver: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Host path of the data.
    pub mountpoint: String,
    /// Name.
    pub name: String,
    /// Driver options (null when none, as dockerd sends them).
    #[serde(serialize_with = "null_if_empty")]
    pub options: BTreeMap<String, String>,
    /// `local`.
    pub scope: String,
    /// Size and users, when asked for (`system df -v`, the API's `UsageData`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_data: Option<UsageData>,
}

/// A map that dockerd sends as `null` when it is empty.
fn null_if_empty<S: serde::Serializer>(m: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    if m.is_empty() {
        s.serialize_none()
    } else {
        serde::Serialize::serialize(m, s)
    }
}

/// Size and users of a volume.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UsageData {
    /// Bytes.
    pub size: i64,
    /// Containers using it.
    pub ref_count: i64,
}

impl Volume {
    /// The Docker view.
    pub fn view(&self, usage: Option<UsageData>) -> VolumeView {
        VolumeView {
            created_at: self.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            driver: self.config.driver.clone(),
            labels: self.config.labels.clone(),
            mountpoint: self.mountpoint.display().to_string(),
            name: self.name.clone(),
            options: self.config.options.clone(),
            scope: "local".into(),
            usage_data: usage,
        }
    }
}

fn row(name: &str, config: &VolumeConfig) -> Result<VolumeRow, EngineError> {
    Ok(VolumeRow {
        name: name.to_string(),
        created: Utc::now(),
        config: serde_json::to_string(config).map_err(|e| EngineError::Invalid(e.to_string()))?,
    })
}

fn no_such(name: &str) -> EngineError {
    EngineError::NoSuchVolume(name.to_string())
}

impl Engine {
    fn volume_of(&self, r: VolumeRow) -> Volume {
        let config = serde_json::from_str(&r.config).unwrap_or_default();
        Volume { mountpoint: self.layout.volume_data(&r.name), name: r.name, created: r.created, config }
    }

    /// Makes sure a volume's data directory exists.
    pub(crate) fn volume_dir(&self, name: &str) -> Result<PathBuf, EngineError> {
        let d = self.layout.volume_data(name);
        std::fs::create_dir_all(&d).map_err(EngineError::io(format!("create {}", d.display())))?;
        Ok(d)
    }

    /// Creates a volume. Like Docker, creating an existing one returns it.
    pub fn volume_create(&mut self, req: VolumeCreate) -> Result<Volume, EngineError> {
        if let Some(d) = req.driver.as_deref().filter(|d| !d.is_empty() && *d != "local") {
            return Err(EngineError::Unsupported(format!(
                "volume driver {d:?} is not available: moat has the local driver only"
            )));
        }
        if !req.options.is_empty() {
            return Err(EngineError::Unsupported(
                "volume options (type, device, o) are not supported: a local volume here is a directory of the root"
                    .into(),
            ));
        }
        let name = match req.name.filter(|n| !n.is_empty()) {
            Some(n) => {
                crate::flags::volume_name(&n)?;
                n
            }
            None => moat_core::id::new_id(),
        };
        let cfg = VolumeConfig { driver: "local".into(), labels: req.labels, ..Default::default() };
        // the directory first: a volume that cannot exist is never recorded
        let existed = self.layout.volume_data(&name).exists();
        self.volume_dir(&name)?;
        moat_core::crash::point("volume.create.dir");
        match self.store().insert_volume(&row(&name, &cfg)?) {
            Ok(()) => {
                moat_core::crash::point("volume.create.recorded");
                events::record(self.store(), events::Event::new("volume", "create", &name).attr("driver", "local"));
            }
            Err(StoreError::NameInUse { .. }) => {}
            Err(e) => {
                if !existed {
                    if let Some(v) = self.layout.volume_data(&name).parent() {
                        let _ = std::fs::remove_dir_all(v);
                    }
                }
                return Err(e.into());
            }
        }
        self.volume(&name)
    }

    /// One volume by name.
    pub fn volume(&self, name: &str) -> Result<Volume, EngineError> {
        let r = self.images.store().volume(name)?.ok_or_else(|| no_such(name))?;
        Ok(self.volume_of(r))
    }

    /// Volumes passing `filter`, by name, with how many containers use each.
    pub fn volumes(&self, filter: &VolumeFilter) -> Result<Vec<(Volume, usize)>, EngineError> {
        let mut out = Vec::new();
        for r in self.images.store().volumes()? {
            let users = self.images.store().volume_users(&r.name)?.len();
            let v = self.volume_of(r);
            if filter.matches(&v, users) {
                out.push((v, users));
            }
        }
        Ok(out)
    }

    /// The view of a volume with its size and users.
    pub fn volume_usage(&self, v: &Volume) -> Result<UsageData, EngineError> {
        let users = self.images.store().volume_users(&v.name)?.len();
        Ok(UsageData { size: moat_store::dir_size(&v.mountpoint) as i64, ref_count: users as i64 })
    }

    /// Removes a volume no container uses (`force`: a missing one is no error).
    pub fn volume_remove(&mut self, name: &str, force: bool) -> Result<(), EngineError> {
        match self.images.store().volume(name)? {
            None if force => return Ok(()),
            None => return Err(no_such(name)),
            Some(_) => {}
        }
        self.delete_volume(name)
    }

    /// Deletes the row (refused while used), then the data: moved into the
    /// scratch area first, so a crash leaves no half-deleted volume behind.
    fn delete_volume(&mut self, name: &str) -> Result<(), EngineError> {
        let users = self.images.store().volume_users(name)?;
        if !users.is_empty() {
            return Err(StoreError::InUse { name: name.to_string(), users }.into());
        }
        let dir = self.layout.volume(name);
        let trash = moat_store::TmpDir::new(&self.layout, "volume-rm")?;
        let moved = trash.path().join("v");
        let was_there = match std::fs::rename(&dir, &moved) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(EngineError::Io(format!("remove {}", dir.display()), e)),
        };
        match self.store().delete_volume(name) {
            Ok(_) => moat_core::crash::point("volume.rm.unrecorded"),
            Err(e) => {
                if was_there {
                    let _ = std::fs::rename(&moved, &dir);
                }
                return Err(e.into());
            }
        }
        drop(trash);
        events::record(self.store(), events::Event::new("volume", "destroy", name).attr("driver", "local"));
        Ok(())
    }

    /// Removes unused volumes: anonymous ones, or every unused one with
    /// `all` (Docker's `volume prune [-a]`), passing `filter`.
    pub fn volume_prune(&mut self, all: bool, filter: &VolumeFilter) -> Result<VolumePrune, EngineError> {
        let mut out = VolumePrune::default();
        for (v, users) in self.volumes(filter)? {
            if users > 0 || !(all || v.config.anonymous) {
                continue;
            }
            let size = moat_store::dir_size(&v.mountpoint);
            match self.delete_volume(&v.name) {
                Ok(()) => {
                    out.reclaimed += size;
                    out.deleted.push(v.name);
                }
                Err(EngineError::Store(StoreError::InUse { .. })) => {} // taken meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// At create: `--volumes-from`, the image's `VOLUME`s and names for
    /// anonymous volumes. Returns the rows the container's insert records
    /// (volumes new to the store are created in that transaction).
    pub(crate) fn plan_volumes(
        &mut self,
        cfg: &mut ContainerConfig,
        image_volumes: &[String],
    ) -> Result<Vec<VolumeRow>, EngineError> {
        for vf in cfg.volumes_from.clone() {
            let (name, mode) = match vf.rsplit_once(':') {
                Some((n, m)) if ["ro", "rw"].contains(&m) => (n, Some(m)),
                _ => (vf.as_str(), None),
            };
            let other = self.get(name)?;
            for m in &other.config.binds {
                if cfg.binds.iter().any(|b| b.target == m.target) {
                    continue;
                }
                let mut m = m.clone();
                match mode {
                    Some("ro") => m.readonly = true,
                    Some("rw") => m.readonly = false,
                    _ => {}
                }
                // another's anonymous volume is shared, not owned, by this one
                m.anonymous = false;
                cfg.binds.push(m);
            }
        }
        for p in image_volumes {
            if !cfg.binds.iter().any(|b| &b.target == p) && !cfg.tmpfs.contains_key(p) {
                cfg.binds.push(crate::config::MountSpec {
                    kind: MountKind::Volume,
                    target: p.clone(),
                    anonymous: true,
                    ..Default::default()
                });
            }
        }
        let mut rows = Vec::new();
        for m in cfg.binds.iter_mut().filter(|m| m.kind == MountKind::Volume) {
            if m.source.is_empty() {
                m.source = moat_core::id::new_id();
                m.anonymous = true;
            }
            let vc = VolumeConfig { driver: "local".into(), anonymous: m.anonymous, ..Default::default() };
            rows.push(row(&m.source, &vc)?);
        }
        Ok(rows)
    }

    /// After the container's insert: data directories, `create` events for
    /// new volumes, and the image's content copied into empty volumes.
    pub(crate) fn prepare_volumes(
        &mut self,
        cfg: &ContainerConfig,
        new: &[String],
        image: &moat_store::ImageRecord,
    ) -> Result<(), EngineError> {
        let mut seed = Vec::new();
        for m in cfg.binds.iter().filter(|m| m.kind == MountKind::Volume) {
            let dir = self.volume_dir(&m.source)?;
            if new.contains(&m.source) {
                events::record(self.store(), events::Event::new("volume", "create", &m.source).attr("driver", "local"));
            }
            if !m.nocopy && rootview::is_empty_dir(&dir) {
                seed.push((m.target.clone(), dir));
            }
        }
        if seed.is_empty() {
            return Ok(());
        }
        let lower: Vec<PathBuf> = image.diff_ids.iter().rev().map(|d| self.layout.layer(d.hex())).collect();
        let scratch = moat_store::TmpDir::new(&self.layout, "seed")?;
        let at = scratch.path().join("image");
        std::fs::create_dir(&at).map_err(EngineError::io("create the image view"))?;
        rootview::in_private_ns(|| {
            rootview::mount_layers(&lower, &at)?;
            for (target, dir) in &seed {
                let src = at.join(target.trim_start_matches('/'));
                // the path must stay inside the image: refuse links on the way
                if rootview::has_link_below(&at, &src) {
                    continue;
                }
                rootview::copy_tree(&src, dir)
                    .map_err(EngineError::io(format!("copy the image's {target} into its volume")))?;
            }
            Ok(())
        })
    }

    /// Anonymous volumes of a removed container that nobody else uses.
    pub(crate) fn remove_anonymous_volumes(&mut self, names: &[String]) {
        for n in names {
            let anonymous = self.volume(n).map(|v| v.config.anonymous).unwrap_or(false);
            if anonymous {
                if let Err(e) = self.delete_volume(n) {
                    tracing::debug!("anonymous volume {n} kept: {e}");
                }
            }
        }
    }
}

/// A row of `volume ls` (Docker's volume format context: `{{.Name}}`, ...).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeListRow {
    /// `local`.
    pub driver: String,
    /// Labels as `k=v,...`.
    pub labels: String,
    /// Containers using it.
    pub links: String,
    /// Host path.
    pub mountpoint: String,
    /// Name.
    pub name: String,
    /// `local`.
    pub scope: String,
    /// `N/A` (sizes are in `system df`).
    pub size: String,
}

impl VolumeListRow {
    /// The row of `v`, used by `users` containers.
    pub fn of(v: &Volume, users: usize) -> Self {
        Self {
            driver: v.config.driver.clone(),
            labels: v.config.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            links: users.to_string(),
            mountpoint: v.mountpoint.display().to_string(),
            name: v.name.clone(),
            scope: "local".into(),
            size: "N/A".into(),
        }
    }
}

/// Volume filters: `name` (substring, like Docker), `label`, `dangling`
/// (used by no container), `driver`.
#[derive(Debug, Clone, Default)]
pub struct VolumeFilter {
    f: Filters,
}

impl VolumeFilter {
    /// Checks the keys.
    pub fn new(f: Filters) -> Result<Self, EngineError> {
        f.check(&["name", "label", "dangling", "driver"])?;
        for d in f.get("dangling") {
            if !["true", "false", "1", "0"].contains(&d.as_str()) {
                return Err(EngineError::Invalid(format!("invalid filter 'dangling={d}': use true or false")));
            }
        }
        Ok(Self { f })
    }

    /// True when the volume passes every term (`users`: how many containers use it).
    pub fn matches(&self, v: &crate::volumes::Volume, users: usize) -> bool {
        let f = &self.f;
        any(f.get("name"), |n| v.name.contains(n))
            && f.get("label").iter().all(|l| label_matches(&v.config.labels, l))
            && any(f.get("dangling"), |d| (d == "true" || d == "1") == (users == 0))
            && any(f.get("driver"), |d| v.config.driver == d)
    }
}
