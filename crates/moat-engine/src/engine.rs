//! The engine over one root: the image store, the layout, options and
//! settings, container records with their true state (reconciled against
//! the shims), and the locks of operations. The resource modules add their
//! verbs to [`Engine`] above this layer.

use crate::client;
use crate::config::{ContainerConfig, ContainerState, Status};
use crate::container::Container;
use crate::error::EngineError;
use crate::events;
use crate::options::EngineOptions;
use crate::settings;
use crate::statefile;
use chrono::Utc;
use moat_image::ImageStore;
use moat_store::{ContainerRow, FileLock, Layout, Store};

/// The engine over one moat root.
pub struct Engine {
    pub(crate) images: ImageStore,
    pub(crate) layout: Layout,
    pub(crate) options: EngineOptions,
    /// Effective settings (config files, then options).
    pub settings: settings::Settings,
}

pub(crate) fn parse_row(row: ContainerRow) -> Result<Container, EngineError> {
    let config: ContainerConfig = serde_json::from_str(&row.config)
        .map_err(|e| EngineError::Invalid(format!("corrupt container config of {}: {e}", row.id)))?;
    let state: ContainerState = serde_json::from_str(&row.state)
        .map_err(|e| EngineError::Invalid(format!("corrupt container state of {}: {e}", row.id)))?;
    Ok(Container { row, config, state })
}

/// True while the container's shim holds its lock. Only a lock we could
/// take ourselves proves the shim dead: any error counts as alive, so a
/// transient failure never makes a reader kill a running container.
pub fn shim_alive(layout: &Layout, id: &str) -> bool {
    let p = layout.container(id).join(moat_store::ctr_files::SHIM_LOCK);
    if !p.exists() {
        return false;
    }
    !matches!(FileLock::try_exclusive(&p), Ok(Some(_)))
}

impl Engine {
    /// Opens the engine described by `options`.
    pub fn open(options: EngineOptions) -> Result<Self, EngineError> {
        if let Some(p) = &options.crash_point {
            moat_core::crash::arm(p).map_err(EngineError::Invalid)?;
        }
        let settings = settings::Settings::load(&options)?;
        let store = Store::open(Layout::new(&options.root))?;
        let layout = store.layout().clone();
        let mut images = ImageStore::open(store)?;
        images.limits = options.unpack_limits();
        Ok(Self { images, layout, options, settings })
    }

    /// The options the engine was opened with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The image store.
    pub fn images(&mut self) -> &mut ImageStore {
        &mut self.images
    }

    /// The root layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn store(&mut self) -> &mut Store {
        self.images.store_mut()
    }

    /// Writes a container's state.
    pub fn save_state(&mut self, id: &str, st: &ContainerState) -> Result<(), EngineError> {
        let js = serde_json::to_string(st).map_err(|e| EngineError::Invalid(e.to_string()))?;
        self.store().set_container_state(id, &js)?;
        Ok(())
    }

    /// Fixes the state of a container whose shim is gone but whose record
    /// says it runs: the shim's state file has its real end when the store
    /// could not take the write (a full disk); otherwise the shim was killed
    /// and its container died with it (its cgroup is destroyed: a VM's QEMU
    /// and virtiofsd are in it too). Failing to store the result does not
    /// fail the read: the next reader reconciles again.
    pub(crate) fn reconcile(&mut self, mut c: Container) -> Result<Container, EngineError> {
        if c.is_running() && !shim_alive(&self.layout, c.id()) {
            let dir = self.layout.container(c.id());
            if let Ok(cg) = serde_json::from_slice::<moat_runtime::cgroup::Cgroup>(
                &std::fs::read(dir.join(moat_store::ctr_files::CGROUP)).unwrap_or_default(),
            ) {
                let _ = cg.destroy();
            }
            // stale endpoints of a dead shim
            for n in 0..c.config.networks.len() {
                moat_net::link::del_link(&moat_net::if_name('t', c.id(), n));
                moat_net::link::del_link(&moat_net::if_name('v', c.id(), n));
            }
            match statefile::read(&dir) {
                Some(st) if !matches!(st.status, Status::Running | Status::Restarting | Status::Paused) => c.state = st,
                _ => {
                    c.state.status = Status::Exited;
                    c.state.pid = 0;
                    c.state.exit_code = 137;
                    c.state.finished_at = Some(Utc::now());
                    c.state.error = "the container's shim process died".into();
                    events::record(self.store(), events::Event::container("die", &c).attr("exitCode", "137"));
                }
            }
            let st = c.state.clone();
            if let Err(e) = self.save_state(c.id(), &st) {
                tracing::warn!("cannot record the state of {}: {e}", c.name());
            }
        }
        Ok(c)
    }

    /// Every container, newest first, with the true state.
    pub fn list(&mut self) -> Result<Vec<Container>, EngineError> {
        let rows = self.images.store().containers()?;
        rows.into_iter().map(|r| parse_row(r).and_then(|c| self.reconcile(c))).collect()
    }

    /// One container by name, ID or unique ID prefix.
    pub fn get(&mut self, key: &str) -> Result<Container, EngineError> {
        let key = key.strip_prefix('/').unwrap_or(key);
        let row =
            self.images.store().find_container(key)?.ok_or_else(|| EngineError::NoSuchContainer(key.to_string()))?;
        let c = parse_row(row)?;
        self.reconcile(c)
    }

    /// Replaces a container's stored configuration.
    pub fn write_config(&mut self, id: &str, cfg: &ContainerConfig) -> Result<(), EngineError> {
        let js = serde_json::to_string(cfg).map_err(|e| EngineError::Invalid(e.to_string()))?;
        self.store().set_container_config(id, &js)?;
        Ok(())
    }

    pub(crate) fn op_lock(&self, id: &str) -> Result<FileLock, EngineError> {
        let dir = self.layout.container(id);
        std::fs::create_dir_all(&dir).map_err(EngineError::io("create container dir"))?;
        Ok(FileLock::exclusive(&dir.join(moat_store::ctr_files::OP_LOCK))?)
    }

    /// Connects to a running container's shim.
    pub fn connect(&self, c: &Container) -> Result<client::Conn, EngineError> {
        client::Conn::connect(&self.layout, c.id())
    }
}
