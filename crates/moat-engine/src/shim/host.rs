//! The one narrow interface through which a shim reports to the engine's
//! store: the container's state, its events, and its removal (`--rm`).

use crate::config::ContainerState;
use crate::error::EngineError;
use crate::events::{self, Event};
use crate::options::EngineOptions;

/// What a shim tells whoever keeps the records.
pub trait ShimHost {
    /// The container's state changed.
    fn record_state(&mut self, id: &str, st: &ContainerState) -> Result<(), EngineError>;
    /// Something happened (a lost event never fails the operation).
    fn record_event(&mut self, ev: Event);
    /// The container ended with `--rm`: remove its files and record, and
    /// update the hosts files of the switches it was on.
    fn auto_remove(&mut self, id: &str, switches: &[String]) -> Result<(), EngineError>;
}

/// moat's host: the root's SQLite store; removal through the engine, which
/// is only opened then.
pub struct StoreHost {
    store: moat_store::Store,
    options: EngineOptions,
}

impl StoreHost {
    /// Opens the store of `options.root`.
    pub fn open(options: &EngineOptions) -> Result<Self, EngineError> {
        let store = moat_store::Store::open(moat_store::Layout::new(&options.root))?;
        Ok(Self { store, options: options.clone() })
    }
}

impl ShimHost for StoreHost {
    fn record_state(&mut self, id: &str, st: &ContainerState) -> Result<(), EngineError> {
        let js = serde_json::to_string(st).map_err(|e| EngineError::Invalid(e.to_string()))?;
        self.store.set_container_state(id, &js)?;
        Ok(())
    }

    fn record_event(&mut self, ev: Event) {
        events::record(&mut self.store, ev);
    }

    fn auto_remove(&mut self, id: &str, switches: &[String]) -> Result<(), EngineError> {
        let mut engine = crate::Engine::open(self.options.clone())?;
        engine.remove_files_and_row(id, true)?;
        engine.refresh_hosts(switches)
    }
}
