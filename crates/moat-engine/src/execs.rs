//! Exec instances (Docker's `POST /containers/{id}/exec`, `/exec/{id}/start`,
//! `/exec/{id}/json`): an exec is created with an ID, started later, and its
//! state (running, PID, exit code) is recorded in
//! `containers/<id>/execs/<exec-id>.json` by the engine at create and by
//! the shim as it starts and ends, so any front end can inspect it.

use crate::{Engine, EngineError};
use chrono::{DateTime, Utc};
use moat_proto::ExecSpec;
use moat_store::Layout;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The recorded state of one exec instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecRecord {
    /// Exec ID (64 hex).
    pub id: String,
    /// Container ID.
    pub container_id: String,
    /// What it runs.
    pub spec: ExecSpec,
    /// Started at least once.
    pub started: bool,
    /// Its process runs.
    pub running: bool,
    /// PID (as the shim reported it).
    pub pid: u32,
    /// Exit code once it ended.
    pub exit_code: Option<i32>,
    /// When it was created.
    pub created: DateTime<Utc>,
}

fn dir(layout: &Layout, cid: &str) -> PathBuf {
    layout.container(cid).join("execs")
}

/// Writes `rec` atomically (0600).
pub fn write(layout: &Layout, rec: &ExecRecord) -> Result<(), EngineError> {
    let d = dir(layout, &rec.container_id);
    std::fs::create_dir_all(&d).map_err(EngineError::io(format!("create {}", d.display())))?;
    let tmp = d.join(format!(".{}.tmp", rec.id));
    let data = serde_json::to_vec(rec).map_err(|e| EngineError::Invalid(e.to_string()))?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(EngineError::io("write exec record"))?;
        std::io::Write::write_all(&mut f, &data).map_err(EngineError::io("write exec record"))?;
    }
    std::fs::rename(&tmp, d.join(format!("{}.json", rec.id))).map_err(EngineError::io("write exec record"))
}

/// [`write`], with a full disk reported as such.
fn write_new(layout: &Layout, rec: &ExecRecord) -> Result<(), EngineError> {
    write(layout, rec).map_err(|e| match e {
        EngineError::Io(_, ref io) if io.raw_os_error() == Some(libc::ENOSPC) => {
            moat_store::StoreError::NoSpace(layout.root().display().to_string()).into()
        }
        e => e,
    })
}

/// Updates the record of exec `id` of container `cid`, if it exists.
pub fn update(layout: &Layout, cid: &str, id: &str, f: impl FnOnce(&mut ExecRecord)) {
    let p = dir(layout, cid).join(format!("{id}.json"));
    if let Some(mut rec) = read_path(&p) {
        f(&mut rec);
        if let Err(e) = write(layout, &rec) {
            tracing::warn!("cannot record exec {id}: {e}");
        }
    }
}

fn read_path(p: &Path) -> Option<ExecRecord> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// The IDs of container `cid`'s exec instances, oldest first.
pub fn ids_of(layout: &Layout, cid: &str) -> Vec<String> {
    let mut recs: Vec<ExecRecord> = std::fs::read_dir(dir(layout, cid))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| read_path(&e.path()))
        .collect();
    recs.sort_by_key(|r| r.created);
    recs.into_iter().map(|r| r.id).collect()
}

/// Finds exec `id` (full ID or unique prefix) in any container.
pub fn find(layout: &Layout, id: &str) -> Result<ExecRecord, EngineError> {
    if id.is_empty() || !moat_core::id::is_hex_prefix(id) {
        return Err(EngineError::NoSuchExec(id.to_string()));
    }
    let mut found = Vec::new();
    for c in std::fs::read_dir(layout.containers()).into_iter().flatten().flatten() {
        for e in std::fs::read_dir(c.path().join("execs")).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(id) && name.ends_with(".json") {
                found.extend(read_path(&e.path()));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(EngineError::NoSuchExec(id.to_string())),
        n => Err(EngineError::Invalid(format!("exec ID {id:?} is ambiguous: it matches {n} execs"))),
    }
}

impl Engine {
    /// Creates an exec instance in a running container; returns its ID.
    pub fn exec_create(&mut self, key: &str, mut spec: ExecSpec) -> Result<String, EngineError> {
        let c = self.get(key)?;
        if !c.is_running() {
            return Err(EngineError::NotRunning(format!("container {} is not running", c.id())));
        }
        if spec.args.is_empty() {
            return Err(EngineError::Invalid("no exec command specified".into()));
        }
        for e in &spec.env {
            crate::validate::env(e)?;
        }
        if !spec.detach_keys.is_empty() {
            crate::flags::detach_keys(&spec.detach_keys)?;
        }
        // what runs when none is given, as dockerd records it
        if spec.user.as_deref().unwrap_or_default().is_empty() && !c.config.user.is_empty() {
            spec.user = Some(c.config.user.clone());
        }
        let id = moat_core::id::new_id();
        spec.id = id.clone();
        write_new(
            &self.layout,
            &ExecRecord {
                id: id.clone(),
                container_id: c.id().to_string(),
                spec,
                started: false,
                running: false,
                pid: 0,
                exit_code: None,
                created: Utc::now(),
            },
        )?;
        moat_core::crash::point("exec.create.recorded");
        crate::events::record(self.store(), crate::events::Event::container("exec_create", &c).attr("execID", &id));
        Ok(id)
    }

    /// The recorded state of an exec instance.
    pub fn exec_inspect(&mut self, id: &str) -> Result<ExecRecord, EngineError> {
        let rec = find(&self.layout, id)?;
        // a shim that died mid-exec left it "running"
        if rec.running && !crate::shim_alive(&self.layout, &rec.container_id) {
            return Ok(ExecRecord { running: false, exit_code: rec.exit_code.or(Some(137)), ..rec });
        }
        Ok(rec)
    }
}
