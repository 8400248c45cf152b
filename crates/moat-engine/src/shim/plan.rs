//! What a container's shim starts from: the engine writes it as
//! `plan.json` in the container's directory just before it starts the
//! shim, the way an OCI bundle carries `config.json`; the shim reads it and
//! never opens the engine to set up.

use crate::config::{ContainerConfig, ContainerState};
use crate::container::Container;
use crate::error::EngineError;
use chrono::{DateTime, Utc};
use moat_sandbox::ContainerPlan;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything a shim needs: the container's record as the engine had it at
/// start, the switches to recreate if a host reboot removed their bridges,
/// and the backend's plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimPlan {
    /// The container's ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its image's ID (`sha256:...`).
    pub image_id: String,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// Its configuration.
    pub config: ContainerConfig,
    /// Its state at start.
    pub state: ContainerState,
    /// The switches of its endpoints.
    pub switches: Vec<moat_net::SwitchConfig>,
    /// What its backend runs.
    pub backend: ContainerPlan,
}

impl ShimPlan {
    /// Writes the plan to `dir/plan.json` (atomically, 0600).
    pub fn write(&self, dir: &Path) -> Result<(), EngineError> {
        let js = serde_json::to_vec_pretty(self).map_err(|e| EngineError::Invalid(e.to_string()))?;
        moat_store::write_atomic(&dir.join(moat_store::ctr_files::PLAN), &js)
            .map_err(EngineError::io("write the container's plan"))
    }

    /// Reads `dir/plan.json`.
    pub fn read(dir: &Path) -> Result<Self, EngineError> {
        let p = dir.join(moat_store::ctr_files::PLAN);
        let b = std::fs::read(&p).map_err(EngineError::io(format!("read {}", p.display())))?;
        serde_json::from_slice(&b).map_err(|e| EngineError::Invalid(format!("corrupt {}: {e}", p.display())))
    }

    /// The container record the plan describes.
    pub fn container(&self) -> Result<Container, EngineError> {
        let bad = |e: String| EngineError::Invalid(format!("plan of {}: {e}", self.id));
        Ok(Container {
            row: moat_store::ContainerRow {
                id: self.id.clone(),
                name: self.name.clone(),
                image_id: self.image_id.parse().map_err(|e| bad(format!("{e}")))?,
                created: self.created,
                config: serde_json::to_string(&self.config).map_err(|e| bad(e.to_string()))?,
                state: serde_json::to_string(&self.state).map_err(|e| bad(e.to_string()))?,
            },
            config: self.config.clone(),
            state: self.state.clone(),
        })
    }
}
