//! moat's container engine: container records and their lifecycle.
//!
//! Each running container is owned by a shim process (`moat shim ID`, see
//! [`shim`]) that holds the workload, its stdio or terminal, the log file and
//! the exit status. The engine library creates records, starts shims and
//! talks to them over `containers/<id>/shim.sock`; no daemon is needed and
//! containers outlive the CLI. See `docs/engine.md`.

pub mod client;
pub mod config;
pub mod logs;
pub mod names;
pub mod network;
pub mod settings;
pub mod shim;
pub mod spec;
pub mod statefile;
pub mod validate;
pub mod vm;

use chrono::Utc;
use config::{ContainerConfig, ContainerState, Status};
use moat_image::ImageStore;
use moat_proto::Msg;
use moat_store::{ContainerRow, FileLock, Layout, Store};
use std::path::Path;

/// Errors of the engine.
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
    /// Unknown container.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// Unknown switch.
    #[error("switch {0:?} not found")]
    NoSuchSwitch(String),
    /// A name clash or a state that forbids the operation.
    #[error("{0}")]
    Conflict(String),
    /// Invalid request.
    #[error("{0}")]
    Invalid(String),
    /// The shim failed or could not be reached.
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
    /// Running or restarting.
    pub fn is_running(&self) -> bool {
        matches!(self.state.status, Status::Running | Status::Restarting)
    }
    /// Docker's human status text (`Up 3 seconds`, `Exited (0) 2 minutes ago`).
    pub fn status_text(&self) -> String {
        let ago = |t: Option<chrono::DateTime<Utc>>| {
            t.map(|t| moat_core::human::duration((Utc::now() - t).num_seconds())).unwrap_or_default()
        };
        match self.state.status {
            Status::Created => "Created".into(),
            Status::Running => format!("Up {}", ago(self.state.started_at)),
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
    /// Effective settings (config files, then flags).
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
            "--network host shares the host's network stack, which a utility VM cannot: use process isolation, or recreate the container without --network host".into(),
        ));
    }
    if iso == moat_core::Isolation::Hyperv && !cfg.devices.is_empty() {
        return Err(EngineError::Invalid(
            "--device passes a host device node to the container, which a utility VM cannot reach: use process isolation, or recreate the container without --device".into(),
        ));
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
    /// Opens the engine on `root`.
    pub fn open(root: &Path) -> Result<Self, EngineError> {
        let settings = settings::Settings::load(root)?;
        let store = Store::open(Layout::new(root))?;
        let layout = store.layout().clone();
        Ok(Self { images: ImageStore::open(store)?, layout, settings })
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
    /// and its container died with it (PDEATHSIG). Failing to store the
    /// result does not fail the read: the next reader reconciles again.
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
                Some(st) if !matches!(st.status, Status::Running | Status::Restarting) => c.state = st,
                _ => {
                    c.state.status = Status::Exited;
                    c.state.pid = 0;
                    c.state.exit_code = 137;
                    c.state.finished_at = Some(Utc::now());
                    c.state.error = "the container's shim process died".into();
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

    /// Records a new container from `image` (resolved now) with `cfg`.
    pub fn create(&mut self, name: Option<&str>, mut cfg: ContainerConfig) -> Result<Container, EngineError> {
        validate::config(&cfg)?;
        let image = self.images.resolve(&cfg.image)?;
        let head: serde_json::Value = serde_json::from_slice(&image.config).unwrap_or_default();
        let icfg = &head["config"];
        let strs = |v: &serde_json::Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
        };
        // entrypoint/cmd like docker: an explicit --entrypoint resets the image's Cmd
        let entry_override = !cfg.entrypoint.is_empty() || cfg.entrypoint == vec![String::new()];
        let entrypoint = if entry_override { cfg.entrypoint.clone() } else { strs(&icfg["Entrypoint"]) };
        let cmd = if !cfg.cmd.is_empty() {
            cfg.cmd.clone()
        } else if entry_override {
            Vec::new()
        } else {
            strs(&icfg["Cmd"])
        };
        let entrypoint: Vec<String> = entrypoint.into_iter().filter(|s| !s.is_empty()).collect();
        cfg.args = entrypoint.iter().chain(cmd.iter()).cloned().collect();
        if cfg.args.is_empty() {
            return Err(EngineError::Invalid("no command specified".into()));
        }
        cfg.entrypoint = entrypoint;
        cfg.cmd = cmd;
        // environment: image first, then user values override by key
        let mut env = strs(&icfg["Env"]);
        for e in std::mem::take(&mut cfg.env) {
            let k = e.split('=').next().unwrap_or("").to_string();
            env.retain(|x| x.split('=').next() != Some(k.as_str()));
            env.push(e);
        }
        cfg.env = env;
        if cfg.workdir.is_empty() {
            cfg.workdir = icfg["WorkingDir"].as_str().unwrap_or("").to_string();
        }
        if cfg.user.is_empty() {
            cfg.user = icfg["User"].as_str().unwrap_or("").to_string();
        }
        if cfg.stop_signal.is_empty() {
            cfg.stop_signal = icfg["StopSignal"].as_str().unwrap_or("SIGTERM").to_string();
        }
        if let Some(labels) = icfg["Labels"].as_object() {
            for (k, v) in labels {
                if let Some(v) = v.as_str() {
                    cfg.labels.entry(k.clone()).or_insert_with(|| v.to_string());
                }
            }
        }
        spec::security(&cfg.security_opt)?;
        moat_runtime::caps::compute(&cfg.cap_add, &cfg.cap_drop, cfg.privileged)?;
        if cfg.isolation.is_none() {
            cfg.isolation = Some(self.settings.default_isolation);
        }
        if cfg.network.is_empty() {
            cfg.network = moat_net::DEFAULT_SWITCH.into();
        }
        check_isolation(&cfg, cfg.isolation())?;
        if let Some(ports) = icfg["ExposedPorts"].as_object() {
            for k in ports.keys() {
                let (p, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
                if let Ok(p) = p.parse::<u16>() {
                    cfg.exposed.push((p, proto.to_string()));
                }
            }
        }
        let switch = match cfg.network.as_str() {
            "none" | "host" => {
                if !cfg.publish.is_empty() || cfg.publish_all {
                    return Err(EngineError::Invalid(format!(
                        "published ports need a switch: --network {} has none",
                        cfg.network
                    )));
                }
                None
            }
            n if network::is_default(n) => Some(self.default_switch()?),
            n => Some(self.find_switch(n)?),
        };
        if let Some(m) = &cfg.mac {
            cfg.mac = Some(moat_net::parse_mac(m).map_err(|e| EngineError::Invalid(e.to_string()))?);
        }
        for b in &cfg.binds {
            if !Path::new(&b.source).exists() {
                return Err(EngineError::Invalid(format!(
                    "invalid mount config: bind source path does not exist: {}",
                    b.source
                )));
            }
        }
        let id = moat_core::id::new_id();
        if cfg.hostname.is_empty() {
            cfg.hostname = id[..12].to_string();
        }
        let name = match name {
            Some(n) => {
                let n = n.strip_prefix('/').unwrap_or(n);
                if !names::valid(n) {
                    return Err(EngineError::Invalid(format!(
                        "invalid container name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-]* is allowed"
                    )));
                }
                n.to_string()
            }
            None => loop {
                let n = names::generate();
                if self.images.store().find_container(&n)?.is_none() {
                    break n;
                }
            },
        };
        let row = ContainerRow {
            id: id.clone(),
            name: name.clone(),
            image_id: image.id.clone(),
            created: Utc::now(),
            config: serde_json::to_string(&cfg).map_err(|e| EngineError::Invalid(e.to_string()))?,
            state: serde_json::to_string(&ContainerState::default())
                .map_err(|e| EngineError::Invalid(e.to_string()))?,
        };
        match self.store().insert_container(&row) {
            Ok(()) => {}
            Err(moat_store::StoreError::NameInUse { .. }) => {
                let other = self.images.store().find_container(&name)?.map(|c| c.id).unwrap_or_default();
                return Err(EngineError::Conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{other}\". You have to remove (or rename) that container to be able to reuse that name."
                )));
            }
            Err(e) => return Err(e.into()),
        }
        // nothing of a failed create stays behind
        let finished = (|| {
            if let Some(sw) = switch {
                let ep = self.allocate(&id, &sw, cfg.ip, cfg.mac.clone())?;
                cfg.networks.push(ep);
                self.write_config(&id, &cfg)?;
            }
            self.prepare_dirs(&id, &cfg)
        })();
        if let Err(e) = finished {
            let _ = std::fs::remove_dir_all(self.layout.container(&id));
            let _ = self.store().delete_container(&id);
            return Err(e);
        }
        let switches: Vec<String> = cfg.networks.iter().map(|e| e.switch_id.clone()).collect();
        self.refresh_hosts(&switches)?;
        self.get(&id)
    }

    /// Replaces a container's stored configuration.
    pub fn write_config(&mut self, id: &str, cfg: &ContainerConfig) -> Result<(), EngineError> {
        let js = serde_json::to_string(cfg).map_err(|e| EngineError::Invalid(e.to_string()))?;
        self.store().set_container_config(id, &js)?;
        Ok(())
    }

    /// Creates the container's directory and files (idempotent).
    fn prepare_dirs(&self, id: &str, cfg: &ContainerConfig) -> Result<(), EngineError> {
        self.write_dirs(id, cfg).map_err(|e| match e {
            EngineError::Io(_, ref io) if io.raw_os_error() == Some(libc::ENOSPC) => {
                moat_store::StoreError::NoSpace(self.layout.root().display().to_string()).into()
            }
            e => e,
        })
    }

    fn write_dirs(&self, id: &str, cfg: &ContainerConfig) -> Result<(), EngineError> {
        let dir = self.layout.container(id);
        for d in ["upper", "work", "rootfs"] {
            std::fs::create_dir_all(dir.join(d))
                .map_err(EngineError::io(format!("create {}", dir.join(d).display())))?;
        }
        let write = |name: &str, content: String| {
            let p = dir.join(name);
            if p.exists() {
                return Ok(());
            }
            std::fs::write(&p, content).map_err(EngineError::io(format!("write {}", p.display())))
        };
        write("hostname", format!("{}\n", cfg.hostname))?;
        write(
            "hosts",
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n", cfg.hostname),
        )?;
        let resolv: String = if cfg.dns.is_empty() {
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            host.lines().filter(|l| !l.contains("127.0.0.") && !l.contains("::1")).map(|l| format!("{l}\n")).collect()
        } else {
            cfg.dns.iter().map(|d| format!("nameserver {d}\n")).collect()
        };
        write("resolv.conf", resolv)?;
        Ok(())
    }

    fn op_lock(&self, id: &str) -> Result<FileLock, EngineError> {
        let dir = self.layout.container(id);
        std::fs::create_dir_all(&dir).map_err(EngineError::io("create container dir"))?;
        FileLock::exclusive(&dir.join("op.lock")).map_err(|e| EngineError::Shim(e.to_string()))
    }

    /// Starts the container's shim. Returns the connection on which the shim
    /// reports the start and then streams the main process's output.
    pub fn start(&mut self, key: &str) -> Result<(Container, client::Conn), EngineError> {
        let c = self.get(key)?;
        let _lock = self.op_lock(c.id())?;
        let c = self.get(c.id())?;
        if c.is_running() {
            return Err(EngineError::Conflict(format!("container {} is already running", c.name())));
        }
        self.prepare_dirs(c.id(), &c.config)?;
        tracing::debug!("start: spawning shim");
        let conn = client::spawn_shim(&self.layout, c.id())?;
        tracing::debug!("start: shim spawned");
        let mut conn = conn;
        match conn.recv_msg()? {
            Msg::Started { .. } => tracing::debug!("start: started"),
            Msg::Error { message } => {
                let code = self.get(c.id()).map(|c| c.state.exit_code).unwrap_or(125);
                return Err(EngineError::Start { message, code });
            }
            other => return Err(EngineError::Shim(format!("unexpected reply from shim: {other:?}"))),
        }
        // a fast `--rm` container may already be gone: its exit is queued on `conn`
        let c = match self.get(c.id()) {
            Ok(now) => now,
            Err(EngineError::NoSuchContainer(_)) => c,
            Err(e) => return Err(e),
        };
        Ok((c, conn))
    }

    /// Connects to a running container's shim.
    pub fn connect(&self, c: &Container) -> Result<client::Conn, EngineError> {
        client::Conn::connect(&self.layout, c.id())
    }

    /// Stops a container: `signal` (default: its stop signal), then SIGKILL
    /// after `timeout` seconds. Returns once the shim has recorded the exit.
    pub fn stop(&mut self, key: &str, timeout: Option<u32>, signal: Option<i32>) -> Result<Container, EngineError> {
        let c = self.get(key)?;
        if !c.is_running() {
            return Ok(c);
        }
        let sig = match signal {
            Some(s) => s,
            None => client::parse_signal(&c.config.stop_signal)?,
        };
        let timeout = timeout.or(c.config.stop_timeout).unwrap_or(10);
        match self.connect(&c) {
            Ok(mut conn) => {
                // a shim that is finishing may reset the connection: then it
                // is stopping anyway, and the lock wait below covers it
                if conn.send_msg(&Msg::Stop { signal: sig, timeout_secs: timeout }).is_ok() {
                    conn.wait_closed();
                }
            }
            Err(_) if !shim_alive(&self.layout, c.id()) => {}
            Err(e) => return Err(e),
        }
        client::wait_shim_gone(&self.layout, c.id());
        self.get(c.id())
    }

    /// Waits for the main process to exit; returns its exit code.
    pub fn wait(&mut self, key: &str) -> Result<i32, EngineError> {
        let c = self.get(key)?;
        if c.is_running() {
            if let Ok(mut conn) = self.connect(&c) {
                if let Ok(Msg::Exit { code, .. }) = conn.request(&Msg::Wait) {
                    return Ok(code);
                }
            }
            // the shim was finishing (or died): its last state is the answer
            client::wait_shim_gone(&self.layout, c.id());
        }
        Ok(self.get(c.id())?.state.exit_code)
    }

    /// Sends a signal to the main process.
    pub fn kill(&mut self, key: &str, signal: i32) -> Result<Container, EngineError> {
        let c = self.get(key)?;
        if !c.is_running() {
            return Err(EngineError::Conflict(format!("cannot kill container {}: container is not running", c.name())));
        }
        let mut conn = self.connect(&c)?;
        conn.send_msg(&Msg::Signal { signal })?;
        match conn.recv_msg()? {
            Msg::Ok => Ok(c),
            Msg::Error { message } => Err(EngineError::Shim(message)),
            m => Err(EngineError::Shim(format!("unexpected reply {m:?}"))),
        }
    }

    /// Removes a container (stopping it first with `force`).
    pub fn remove(&mut self, key: &str, force: bool) -> Result<Container, EngineError> {
        let c = self.get(key)?;
        if c.is_running() {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                    c.name()
                )));
            }
            self.stop(c.id(), Some(0), Some(libc::SIGKILL))?;
        }
        let _lock = self.op_lock(c.id())?;
        self.remove_files_and_row(c.id())?;
        let switches: Vec<String> = c.config.networks.iter().map(|e| e.switch_id.clone()).collect();
        self.refresh_hosts(&switches)?;
        Ok(c)
    }

    /// Deletes a stopped container's directory and record.
    pub fn remove_files_and_row(&mut self, id: &str) -> Result<(), EngineError> {
        let dir = self.layout.container(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(EngineError::Io(format!("remove {}", dir.display()), e));
            }
        }
        self.store().delete_container(id)?;
        Ok(())
    }

    /// Renames a container.
    pub fn rename(&mut self, key: &str, new: &str) -> Result<(), EngineError> {
        let c = self.get(key)?;
        if !names::valid(new) {
            return Err(EngineError::Invalid(format!("invalid container name {new:?}")));
        }
        let taken = || EngineError::Conflict(format!("Conflict. The container name \"/{new}\" is already in use"));
        if self.images.store().find_container(new)?.is_some_and(|o| o.name == new) {
            return Err(taken());
        }
        match self.store().rename_container(c.id(), new) {
            Err(moat_store::StoreError::NameInUse { .. }) => Err(taken()),
            r => Ok(r?),
        }
    }

    /// Converts a container to another isolation type (`moat update
    /// --isolation`). A running container is refused unless `restart`, which
    /// stops it, converts it and starts it again. Its filesystem, name, ID,
    /// config and logs are kept; only the backend of the next start changes.
    pub fn update_isolation(
        &mut self,
        key: &str,
        iso: moat_core::Isolation,
        restart: bool,
    ) -> Result<Container, EngineError> {
        let c = self.get(key)?;
        let was_running = c.is_running();
        if was_running && !restart {
            return Err(EngineError::Conflict(format!(
                "cannot change the isolation of running container {}: stop it first, or pass --restart to stop, convert and start it",
                c.name()
            )));
        }
        check_isolation(&c.config, iso)?;
        if was_running {
            self.stop(c.id(), None, None)?;
        }
        let lock = self.op_lock(c.id())?;
        let mut c = self.get(c.id())?;
        if c.config.isolation() != iso {
            c.config.isolation = Some(iso);
            let js = serde_json::to_string(&c.config).map_err(|e| EngineError::Invalid(e.to_string()))?;
            self.store().set_container_config(c.id(), &js)?;
            c.state.isolation_changed_at = Some(Utc::now());
            let st = c.state.clone();
            self.save_state(c.id(), &st)?;
        }
        drop(lock);
        if was_running {
            self.start(c.id())?;
        }
        self.get(c.id())
    }

    /// Changes a container's restart policy (applies from its next start).
    pub fn update_restart_policy(&mut self, key: &str, p: config::RestartPolicy) -> Result<(), EngineError> {
        let c = self.get(key)?;
        let _lock = self.op_lock(c.id())?;
        let mut cfg = self.get(c.id())?.config;
        cfg.restart = p;
        let js = serde_json::to_string(&cfg).map_err(|e| EngineError::Invalid(e.to_string()))?;
        self.store().set_container_config(c.id(), &js)?;
        Ok(())
    }

    /// Removes every stopped container; returns their IDs.
    pub fn prune(&mut self) -> Result<Vec<String>, EngineError> {
        let mut out = Vec::new();
        for c in self.list()? {
            if !c.is_running() {
                let _lock = self.op_lock(c.id())?;
                self.remove_files_and_row(c.id())?;
                out.push(c.id().to_string());
            }
        }
        Ok(out)
    }
}
