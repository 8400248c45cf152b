//! Image operations for front ends: load, import, save, tag, remove,
//! prune, each recording its event; removal refuses an image a running
//! container uses, even when forced (Docker's conflict).

use crate::events::{self, Event};
use crate::filter::{any, glob, label_matches, parse_time, Filters};
use crate::{Engine, EngineError};
pub use moat_image::{ImageDeleteItem, Loaded, PruneReport};
pub use moat_store::ImageRecord;
use std::io::{Read, Write};

fn image_event(action: &str, id: &str, name: Option<&str>) -> Event {
    let mut e = Event::new("image", action, id);
    if let Some(n) = name {
        e = e.attr("name", n);
    }
    e
}

impl Engine {
    /// Resolves an image reference (name, `name:tag`, ID or short ID).
    pub fn image(&mut self, reference: &str) -> Result<ImageRecord, EngineError> {
        Ok(self.images.resolve(reference)?)
    }

    /// Every image.
    pub fn image_list(&mut self) -> Result<Vec<ImageRecord>, EngineError> {
        Ok(self.images.list()?)
    }

    /// Loads a docker-archive or OCI-layout tarball.
    pub fn load_images(&mut self, r: impl Read) -> Result<Vec<Loaded>, EngineError> {
        let loaded = self.images.load(r)?;
        for l in &loaded {
            let name = l.tags.first().cloned();
            events::record(self.store(), image_event("load", &l.id.to_string(), name.as_deref()));
        }
        Ok(loaded)
    }

    /// Imports a rootfs tarball as an image with Dockerfile-style `changes`.
    pub fn import_image(
        &mut self,
        r: impl Read,
        name: Option<&str>,
        message: &str,
        changes: &[String],
    ) -> Result<moat_core::Digest, EngineError> {
        let id = self.images.import(r, name, message, changes)?;
        events::record(self.store(), image_event("import", &id.to_string(), name));
        Ok(id)
    }

    /// `import` from an `http(s)://` URL (Docker's `fromSrc=URL`).
    pub fn import_url(
        &mut self,
        url: &str,
        name: Option<&str>,
        message: &str,
        changes: &[String],
    ) -> Result<moat_core::Digest, EngineError> {
        let body = moat_registry::fetch_url(url)?;
        self.import_image(body, name, message, changes)
    }

    /// Writes images as a docker-archive tarball (every name resolves first).
    pub fn save_images(&mut self, refs: &[String], w: impl Write) -> Result<(), EngineError> {
        self.images.save(refs, w)?;
        for r in refs {
            events::record(self.store(), image_event("save", r, Some(r)));
        }
        Ok(())
    }

    /// Gives an image another name.
    pub fn tag_image(&mut self, source: &str, target: &str) -> Result<(), EngineError> {
        let img = self.images.resolve(source)?;
        self.images.tag(source, target)?;
        events::record(self.store(), image_event("tag", &img.id.to_string(), Some(target)));
        Ok(())
    }

    /// Removes an image name or image (`docker rmi`); returns what was
    /// untagged and deleted. A running container's image is never removed,
    /// not even with `force`.
    pub fn remove_image(&mut self, reference: &str, force: bool) -> Result<Vec<ImageDeleteItem>, EngineError> {
        let img = self.images.resolve(reference)?;
        if force {
            let running: Vec<String> = self
                .list()?
                .into_iter()
                .filter(|c| c.is_running() && c.row.image_id == img.id)
                .map(|c| c.id()[..12].to_string())
                .collect();
            let by_tag = img
                .tags
                .iter()
                .any(|t| moat_core::ImageRef::parse(reference).ok().and_then(|r| r.tagged()).as_ref() == Some(t));
            if let (Some(c), false) = (running.first(), by_tag && img.tags.len() > 1) {
                return Err(EngineError::Conflict(format!(
                    "conflict: unable to delete {} (cannot be forced) - image is being used by running container {c}",
                    img.id.short()
                )));
            }
        }
        let items = self.images.remove(reference, force)?;
        for it in &items {
            let ev = match it {
                ImageDeleteItem::Untagged(t) => image_event("untag", &img.id.to_string(), Some(t)),
                ImageDeleteItem::Deleted(_) => image_event("delete", &img.id.to_string(), None),
            };
            events::record(self.store(), ev);
        }
        Ok(items)
    }

    /// Removes dangling images (every unused one with `all`).
    pub fn prune_images(&mut self, all: bool) -> Result<PruneReport, EngineError> {
        let rep = self.images.prune(all)?;
        for d in &rep.deleted {
            events::record(self.store(), image_event("delete", &d.to_string(), None));
        }
        Ok(rep)
    }
}

/// Image filters: `reference` (a `*` pattern on `repo[:tag]`), `dangling`,
/// `label`, `before`, `since` (image references).
#[derive(Debug, Clone, Default)]
pub struct ImageFilter {
    f: Filters,
    /// Also intermediate images (a build's untagged steps below another image: `-a`).
    pub all: bool,
}

impl ImageFilter {
    /// Checks the keys.
    pub fn new(f: Filters) -> Result<Self, EngineError> {
        f.check(&["reference", "dangling", "label", "before", "since", "until"])?;
        for d in f.get("dangling") {
            if !["true", "false", "1", "0"].contains(&d.as_str()) {
                return Err(EngineError::Invalid(format!("invalid filter 'dangling={d}': use true or false")));
            }
        }
        Ok(Self { f, all: false })
    }

    /// True when `img` passes every term.
    pub fn matches(&self, img: &moat_store::ImageRecord, e: &mut Engine) -> Result<bool, EngineError> {
        let f = &self.f;
        if !self.all && img.tags.is_empty() && !e.images.store().image_children(&img.id)?.is_empty() {
            return Ok(false);
        }
        let refs = |pat: &str| {
            img.tags.iter().any(|t| {
                let (repo, _) = t.rsplit_once(':').unwrap_or((t, ""));
                let short = |s: &str| {
                    s.strip_prefix("docker.io/library/")
                        .or_else(|| s.strip_prefix("docker.io/"))
                        .unwrap_or(s)
                        .to_string()
                };
                [t.clone(), short(t)].iter().any(|full| glob(pat, full))
                    || [repo.to_string(), short(repo)].iter().any(|r| glob(pat, r))
            })
        };
        let labels = moat_image::runtime_config(&img.config).ok().and_then(|c| c.labels).unwrap_or_default();
        let ok = any(f.get("reference"), refs)
            && any(f.get("dangling"), |d| (d == "true" || d == "1") == img.tags.is_empty())
            && f.get("label").iter().all(|l| label_matches(&labels, l));
        if !ok {
            return Ok(false);
        }
        let created = img.created.unwrap_or(img.added);
        for (key, later) in [("before", false), ("since", true)] {
            for other in f.get(key) {
                let o = e.images().resolve(other)?;
                let oc = o.created.unwrap_or(o.added);
                if (later && created <= oc) || (!later && created >= oc) {
                    return Ok(false);
                }
            }
        }
        for u in f.get("until") {
            if created.timestamp_nanos_opt().unwrap_or(0) >= parse_time(u)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
