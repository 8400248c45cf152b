//! moat's container engine: the one place where container behaviour lives.
//!
//! Front ends (the `moat` CLI, the Docker API server) translate their
//! protocol into calls of [`Engine`] and render its typed views
//! ([`view`]); they validate, orchestrate and filter nothing themselves.
//! Each running container is owned by a shim process ([`shim`]) that holds
//! the workload through a [`shim::Backend`] (namespaces on this kernel, or a
//! utility VM), its stdio, log and exit status; no daemon is needed and
//! containers outlive every front end. See `docs/engine.md` and
//! `docs/architecture.md`.

pub mod changes;
pub mod client;
pub mod config;
pub mod container_filter;
pub mod cp;
mod create;
pub mod events;
pub mod execs;
pub mod filter;
pub mod flags;
pub mod health;
pub mod images;
mod lifecycle;
pub mod logs;
pub mod names;
pub mod network;
pub mod options;
pub mod pods;
pub mod registry;
pub mod rootview;
pub mod session;
pub mod settings;
pub mod shim;
pub mod spec;
pub mod statefile;
pub mod system;
pub mod templates;
pub mod validate;
pub mod view;
pub mod vm;
pub mod volumes;

pub use create::CreateRequest;
pub use lifecycle::{ContainerPrune, StopOptions, UpdateRequest, WaitCondition};
pub use moat_proto::{ExecSpec, ProcRow, Stats, WinSize};
pub use options::EngineOptions;
pub use session::{AttachOptions, LogOptions, Session, SessionEvent, SessionWriter};

use chrono::Utc;
use config::{ContainerConfig, ContainerState, Status};
use moat_image::ImageStore;
use moat_store::{ContainerRow, FileLock, Layout, Store};

pub use moat_core::ErrorKind;

/// Errors of the engine. Each keeps its cause and has a [`ErrorKind`]
/// that front ends map to their own codes (the API to HTTP statuses).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Image store.
    #[error(transparent)]
    Image(#[from] moat_image::ImageError),
    /// Metadata store.
    #[error(transparent)]
    Store(#[from] moat_store::StoreError),
    /// Runtime.
    #[error(transparent)]
    Runtime(#[from] moat_runtime::RuntimeError),
    /// Utility VMs.
    #[error(transparent)]
    Vm(#[from] moat_vm::VmError),
    /// Switches.
    #[error(transparent)]
    Net(#[from] moat_net::NetError),
    /// A lock file.
    #[error(transparent)]
    Lock(#[from] moat_store::LockError),
    /// The connection to a shim failed.
    #[error("shim connection: {0}")]
    Proto(#[from] moat_proto::ProtoError),
    /// Unknown container.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// Unknown switch.
    #[error("network {0} not found")]
    NoSuchSwitch(String),
    /// A registry refused the credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// A registry failed.
    #[error("{0}")]
    Registry(String),
    /// A path or object that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Unknown volume.
    #[error("get {0}: no such volume")]
    NoSuchVolume(String),
    /// Unknown exec instance.
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    /// A name clash or a state that forbids the operation.
    #[error("{0}")]
    Conflict(String),
    /// Invalid request.
    #[error("{0}")]
    Invalid(String),
    /// The container is not running.
    #[error("{0}")]
    NotRunning(String),
    /// Something this engine (or this host) cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The shim refused or reported a failure.
    #[error("{0}")]
    Shim(String),
    /// I/O with context.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The container's process could not be started.
    #[error("{message}")]
    Start {
        /// One-line reason.
        message: String,
        /// Exit code recorded.
        code: i32,
    },
}

impl EngineError {
    /// Maps an io error with context.
    pub fn io(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let ctx = ctx.into();
        move |e| EngineError::Io(ctx, e)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use moat_image::ImageError as I;
        use moat_store::StoreError as S;
        match self {
            Self::NoSuchContainer(_)
            | Self::NoSuchSwitch(_)
            | Self::NoSuchExec(_)
            | Self::NoSuchVolume(_)
            | Self::NotFound(_) => ErrorKind::NotFound,
            Self::Image(I::NoSuchImage(_)) | Self::Store(S::NoSuchImage(_)) => ErrorKind::NotFound,
            Self::Image(I::Conflict(_)) | Self::Store(S::NameInUse { .. } | S::InUse { .. }) | Self::Conflict(_) => {
                ErrorKind::Conflict
            }
            Self::Image(I::Store(S::NoSpace(_))) | Self::Image(I::NoSpace { .. }) | Self::Store(S::NoSpace(_)) => {
                ErrorKind::NoSpace
            }
            Self::Image(
                I::Reference(_)
                | I::BadArchive(_)
                | I::BadConfig(_)
                | I::Unpack(_)
                | I::Compress(_)
                | I::DigestMismatch { .. },
            ) => ErrorKind::Invalid,
            Self::Store(S::Ambiguous { .. }) | Self::Image(I::Store(S::Ambiguous { .. })) => ErrorKind::Invalid,
            Self::Runtime(moat_runtime::RuntimeError::Invalid(_)) | Self::Invalid(_) => ErrorKind::Invalid,
            Self::Net(moat_net::NetError::Invalid(_)) => ErrorKind::Invalid,
            Self::Net(moat_net::NetError::Exhausted(_)) => ErrorKind::Conflict,
            Self::NotRunning(_) => ErrorKind::NotRunning,
            Self::Unauthorized(_) => ErrorKind::Unauthorized,
            Self::Unsupported(_) => ErrorKind::Unsupported,
            Self::Vm(moat_vm::VmError::NoKernel(_) | moat_vm::VmError::NoAgent(_) | moat_vm::VmError::Missing(..)) => {
                ErrorKind::Unsupported
            }
            Self::Vm(moat_vm::VmError::NotFound(_)) => ErrorKind::NotFound,
            Self::Io(_, e) if e.raw_os_error() == Some(libc::ENOSPC) => ErrorKind::NoSpace,
            _ => ErrorKind::Internal,
        }
    }

    /// The exit code a front end reports for a failed start.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Start { code, .. } | Self::Runtime(moat_runtime::RuntimeError::Start { code, .. }) => *code,
            _ => 125,
        }
    }
}

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

/// The engine over one moat root.
pub struct Engine {
    images: ImageStore,
    layout: Layout,
    options: EngineOptions,
    /// Effective settings (config files, then options).
    pub settings: settings::Settings,
}

fn parse_row(row: ContainerRow) -> Result<Container, EngineError> {
    let config: ContainerConfig = serde_json::from_str(&row.config)
        .map_err(|e| EngineError::Invalid(format!("corrupt container config of {}: {e}", row.id)))?;
    let state: ContainerState = serde_json::from_str(&row.state)
        .map_err(|e| EngineError::Invalid(format!("corrupt container state of {}: {e}", row.id)))?;
    Ok(Container { row, config, state })
}

/// Refuses options that `iso` cannot honour, before anything changes.
fn check_isolation(cfg: &ContainerConfig, iso: moat_core::Isolation) -> Result<(), EngineError> {
    if iso == moat_core::Isolation::Hyperv && cfg.network == "host" {
        return Err(EngineError::Invalid(
            "network mode host shares the host's network stack, which a utility VM cannot: use process isolation, or a switch".into(),
        ));
    }
    if iso == moat_core::Isolation::Hyperv {
        for (flag, mode) in [
            ("--pid", &cfg.pid_mode),
            ("--ipc", &cfg.ipc_mode),
            ("--uts", &cfg.uts_mode),
            ("--cgroupns", &cfg.cgroupns_mode),
        ] {
            if mode == "host" {
                return Err(EngineError::Invalid(format!(
                    "{flag}=host shares a namespace of the host's kernel, which a utility VM's container does not run on: use process isolation"
                )));
            }
        }
    }
    if iso == moat_core::Isolation::Hyperv && (cfg.limits.cpuset_cpus.is_some() || cfg.limits.cpuset_mems.is_some()) {
        return Err(EngineError::Invalid(
            "--cpuset-cpus/--cpuset-mems pin host CPUs and memory nodes, which a utility VM's vCPUs and memory are not: use process isolation, or --cpus".into(),
        ));
    }
    if cfg.limits.swappiness.is_some() || cfg.limits.oom_kill_disable {
        let what = if cfg.limits.oom_kill_disable { "--oom-kill-disable" } else { "--memory-swappiness" };
        if iso == moat_core::Isolation::Hyperv {
            return Err(EngineError::Invalid(format!(
                "{what} needs cgroup v1, and a utility VM's guest runs cgroup v2, which has no such per-container setting: use process isolation on a cgroup v1 host"
            )));
        }
        if moat_runtime::cgroup::version() == moat_runtime::cgroup::Version::V2 {
            return Err(EngineError::Invalid(format!(
                "{what} needs cgroup v1: this host runs cgroup v2, which has no such per-container setting"
            )));
        }
    }
    if iso == moat_core::Isolation::Hyperv && !cfg.device_cgroup_rules.is_empty() {
        return Err(EngineError::Invalid(
            "device cgroup rules admit host devices (--device), which cannot reach a utility VM: use process isolation"
                .into(),
        ));
    }
    if iso == moat_core::Isolation::Hyperv && !cfg.devices.is_empty() {
        return Err(EngineError::Invalid(
            "host devices (--device) cannot reach a utility VM: use process isolation, or no devices".into(),
        ));
    }
    if iso == moat_core::Isolation::Hyperv {
        if let Some(b) = cfg.binds.iter().find(|b| matches!(b.propagation.as_str(), "slave" | "rslave")) {
            return Err(EngineError::Invalid(format!(
                "bind propagation {} of {} needs process isolation: a utility VM sees host directories through virtio-fs, which does not carry new host mounts",
                b.propagation, b.target
            )));
        }
    }
    Ok(())
}

/// True while the container's shim holds its lock. Only a lock we could
/// take ourselves proves the shim dead: any error counts as alive, so a
/// transient failure never makes a reader kill a running container.
pub fn shim_alive(layout: &Layout, id: &str) -> bool {
    let p = layout.container(id).join("shim.lock");
    if !p.exists() {
        return false;
    }
    !matches!(FileLock::try_exclusive(&p), Ok(Some(_)))
}

impl Engine {
    /// Opens the engine described by `options`.
    pub fn open(options: EngineOptions) -> Result<Self, EngineError> {
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

    fn store(&mut self) -> &mut Store {
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
    fn reconcile(&mut self, mut c: Container) -> Result<Container, EngineError> {
        if c.is_running() && !shim_alive(&self.layout, c.id()) {
            let dir = self.layout.container(c.id());
            if let Ok(cg) = serde_json::from_slice::<moat_runtime::cgroup::Cgroup>(
                &std::fs::read(dir.join("cgroup.json")).unwrap_or_default(),
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
                    events::record(self, events::Event::container("die", &c).attr("exitCode", "137"));
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

    fn op_lock(&self, id: &str) -> Result<FileLock, EngineError> {
        let dir = self.layout.container(id);
        std::fs::create_dir_all(&dir).map_err(EngineError::io("create container dir"))?;
        Ok(FileLock::exclusive(&dir.join("op.lock"))?)
    }

    /// Connects to a running container's shim.
    pub fn connect(&self, c: &Container) -> Result<client::Conn, EngineError> {
        client::Conn::connect(&self.layout, c.id())
    }
}

#[cfg(test)]
mod tests;
