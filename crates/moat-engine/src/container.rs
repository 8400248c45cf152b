//! A container as the engine holds it: its store row, configuration and state.

use crate::config::{ContainerConfig, ContainerState, Status};
use chrono::Utc;
use moat_store::ContainerRow;

/// A container: record, configuration and (reconciled) state.
#[derive(Debug, Clone)]
pub struct Container {
    /// The stored row.
    pub row: ContainerRow,
    /// Configuration.
    pub config: ContainerConfig,
    /// State.
    pub state: ContainerState,
}

impl Container {
    /// Full ID.
    pub fn id(&self) -> &str {
        &self.row.id
    }
    /// Name without the leading slash.
    pub fn name(&self) -> &str {
        &self.row.name
    }
    /// Running, paused or restarting.
    pub fn is_running(&self) -> bool {
        matches!(self.state.status, Status::Running | Status::Restarting | Status::Paused)
    }
    /// Docker's human status text (`Up 3 seconds`, `Exited (0) 2 minutes ago`).
    pub fn status_text(&self) -> String {
        let ago = |t: Option<chrono::DateTime<Utc>>| {
            t.map(|t| moat_core::human::duration((Utc::now() - t).num_seconds())).unwrap_or_default()
        };
        match self.state.status {
            Status::Created => "Created".into(),
            Status::Running => match self.state.health.as_ref().map(|h| h.status) {
                Some(crate::health::HealthStatus::Starting) => {
                    format!("Up {} (health: starting)", ago(self.state.started_at))
                }
                Some(s) => format!("Up {} ({s})", ago(self.state.started_at)),
                None => format!("Up {}", ago(self.state.started_at)),
            },
            Status::Paused => format!("Up {} (Paused)", ago(self.state.started_at)),
            Status::Restarting => {
                format!("Restarting ({}) {} ago", self.state.exit_code, ago(self.state.finished_at))
            }
            Status::Exited => format!("Exited ({}) {} ago", self.state.exit_code, ago(self.state.finished_at)),
            Status::Removing => "Removal In Progress".into(),
            Status::Dead => "Dead".into(),
        }
    }
}
