//! Starting, stopping, waiting for, changing and removing containers.

use crate::client::{self, Conn};
use crate::config::{RestartPolicy, Status};
use crate::session::Session;
use crate::validate::check_isolation;
use crate::{events, names, Container, Engine, EngineError};
use chrono::Utc;
use moat_proto::{ShimReply, ShimRequest};
use std::time::Duration;

/// Docker's wait conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitCondition {
    /// The container is not running (at once if it is not).
    #[default]
    NotRunning,
    /// Its next exit, even if it is not running yet (register before start).
    NextExit,
    /// It has been removed.
    Removed,
}

impl std::str::FromStr for WaitCondition {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, EngineError> {
        match s {
            "" | "not-running" => Ok(Self::NotRunning),
            "next-exit" => Ok(Self::NextExit),
            "removed" => Ok(Self::Removed),
            _ => Err(EngineError::Invalid(format!("invalid condition {s:?}: use not-running, next-exit or removed"))),
        }
    }
}

/// How to stop a container.
#[derive(Debug, Clone, Copy, Default)]
pub struct StopOptions {
    /// Seconds before SIGKILL (the container's own, else 10).
    pub timeout: Option<u32>,
    /// First signal (the container's stop signal by default).
    pub signal: Option<i32>,
}

/// What [`Engine::start_unless_running`] did.
pub enum Started {
    /// Started: its record and the shim's first session.
    Now(Container, Session),
    /// It was running already.
    AlreadyRunning(Container),
}

/// What [`Engine::stop_if_running`] did.
pub enum Stopped {
    /// Stopped (its last record; a `--rm` container is gone).
    Now(Container),
    /// It was not running.
    NotRunning(Container),
}

/// A change to a container (`moat update`, `POST /containers/{id}/update`).
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// Memory + swap in bytes (-1: unlimited swap).
    pub memory_swap: Option<i64>,
    /// CPUs.
    pub cpus: Option<f64>,
    /// CPU shares.
    pub cpu_shares: Option<u64>,
    /// Pids limit.
    pub pids: Option<i64>,
    /// Soft memory limit.
    pub memory_reservation: Option<i64>,
    /// Restart policy.
    pub restart: Option<RestartPolicy>,
    /// New isolation (a stopped container, or any with `restart_for_isolation`).
    pub isolation: Option<moat_core::Isolation>,
    /// Stop, convert and start a running container.
    pub restart_for_isolation: bool,
}

impl UpdateRequest {
    fn limits(&self) -> bool {
        self.memory.is_some()
            || self.memory_swap.is_some()
            || self.cpus.is_some()
            || self.cpu_shares.is_some()
            || self.pids.is_some()
            || self.memory_reservation.is_some()
    }
}

/// The result of a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitResult {
    /// Exit code.
    pub code: i32,
    /// Why the container ended, when it failed.
    pub error: Option<String>,
}

/// What `container prune` removed (Docker's `ContainerPruneResponse`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ContainerPrune {
    /// IDs of the removed containers.
    #[serde(rename = "ContainersDeleted")]
    pub deleted: Vec<String>,
    /// Bytes of their writable layers.
    #[serde(rename = "SpaceReclaimed")]
    pub space_reclaimed: u64,
}

impl Engine {
    /// Starts the container's shim. The returned session is the shim's
    /// first client: it sees the start and then, once attached, the main
    /// process's output from the first byte. A `--rm` container that cannot
    /// start is removed, as dockerd does (a `docker run --rm` waits for that).
    pub fn start(&mut self, key: &str) -> Result<(Container, Session), EngineError> {
        let c = self.get(key)?;
        // a pod's container starts its pod's sandbox first (Podman's way)
        if let (false, Some(owner)) = (c.config.pod_infra, c.config.network_mode().container()) {
            if c.config.pod.is_some() {
                let infra = self.get(owner)?;
                if !infra.is_running() {
                    match self.start_shim(infra.id()) {
                        Ok(_) | Err(EngineError::Conflict(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let r = self.start_shim(c.id());
        if let Err(e) = &r {
            let stopped = self.get(c.id()).is_ok_and(|now| !now.is_running());
            if c.config.auto_remove && stopped && !matches!(e, EngineError::Conflict(_)) {
                let _ = self.remove(c.id(), true, true);
            }
        }
        r
    }

    /// Starts a container unless it runs: `before` sees it just before
    /// its shim starts (the API claims the attaches waiting for it). A
    /// running container is an outcome, not an error (Docker's 304).
    pub fn start_unless_running(&mut self, key: &str, before: impl FnOnce(&Container)) -> Result<Started, EngineError> {
        let c = self.get(key)?;
        if c.is_running() {
            return Ok(Started::AlreadyRunning(c));
        }
        before(&c);
        match self.start(c.id()) {
            Ok((c, s)) => Ok(Started::Now(c, s)),
            // another client started it meanwhile
            Err(EngineError::Conflict(m)) => match self.get(c.id()) {
                Ok(now) if now.is_running() => Ok(Started::AlreadyRunning(now)),
                _ => Err(EngineError::Conflict(m)),
            },
            Err(e) => Err(e),
        }
    }

    /// Stops a running container; one that does not run is an outcome,
    /// not an error (Docker's 304).
    pub fn stop_if_running(&mut self, key: &str, o: StopOptions) -> Result<Stopped, EngineError> {
        let c = self.get(key)?;
        if !c.is_running() {
            return Ok(Stopped::NotRunning(c));
        }
        Ok(Stopped::Now(self.stop(c.id(), o)?))
    }

    fn start_shim(&mut self, id: &str) -> Result<(Container, Session), EngineError> {
        let c = self.get(id)?;
        let _lock = self.op_lock(c.id())?;
        let c = self.get(c.id())?;
        if c.is_running() {
            return Err(EngineError::Conflict(format!("container {} is already running", c.name())));
        }
        // its last shim may still be finishing (the record says it exited,
        // the shim tears down): the new one would find its lock taken
        client::wait_shim_gone(&self.layout, c.id());
        self.prepare_dirs(c.id(), &c.config)?;
        // what the shim starts from (a refusal here is a start failure, as
        // when the shim itself found it)
        let plan = self.shim_plan(&c).map_err(|e| match e {
            EngineError::Start { .. } => e,
            e => EngineError::Start { message: e.to_string(), code: 125 },
        })?;
        plan.write(&self.layout.container(c.id()))?;
        moat_core::crash::point("start.plan");
        let mut conn = client::spawn_shim(&self.options, &self.layout, c.id())?;
        moat_core::crash::point("start.spawned");
        match conn.recv_reply()? {
            ShimReply::Started { .. } => {}
            ShimReply::Error { message } => {
                let code = self.get(c.id()).map(|c| c.state.exit_code).unwrap_or(125);
                return Err(EngineError::Start { message, code: if code == 0 { 125 } else { code } });
            }
            other => return Err(EngineError::Shim(format!("unexpected reply from shim: {other:?}"))),
        }
        // a fast `--rm` container may already be gone: its exit is queued on `conn`
        let c = match self.get(c.id()) {
            Ok(now) => now,
            Err(EngineError::NoSuchContainer(_)) => c,
            Err(e) => return Err(e),
        };
        let tty = c.config.tty;
        Ok((c, Session::new(conn, tty)))
    }

    /// What container `c`'s shim starts from: its runtime spec (the image's
    /// config, `--init`, the sandbox it joins, its legacy links' environment),
    /// its switches and its backend's plan.
    fn shim_plan(&mut self, c: &Container) -> Result<crate::shim::ShimPlan, EngineError> {
        use crate::shim::{ContainerPlan, SandboxPlan};
        let id = c.id();
        let image =
            self.images.store().image(&c.row.image_id)?.ok_or_else(|| {
                EngineError::Invalid(format!("image {} of this container was removed", c.row.image_id))
            })?;
        let init = if c.config.init { Some(self.options.agent()?) } else { None };
        let mut spec = crate::spec::build(&self.layout, id, &c.config, &image, init.as_deref())?;
        let mut owner_name = None;
        if let Some(other) = c.config.network_mode().container() {
            let o = self.get(other)?;
            crate::spec::join_network(&mut spec, &self.layout, &o, c.config.isolation())?;
            owner_name = Some(o.name().to_string());
        }
        // legacy links: the linked containers run; their environment
        // comes first, the container's own entries win
        let mut link_env = Vec::new();
        for l in &c.config.links {
            let child = self
                .get(&l.id)
                .map_err(|_| EngineError::NotFound(format!("could not get container for {}", l.alias)))?;
            if !child.is_running() {
                return Err(EngineError::Invalid(format!(
                    "Cannot link to a non running container: /{} AS /{}/{}",
                    child.name(),
                    c.name(),
                    l.alias
                )));
            }
            link_env.extend(crate::spec::link_env(c, &child, &l.alias));
        }
        if !link_env.is_empty() {
            spec.process.env = moat_runtime::relay::merge_env(&link_env, &spec.process.env);
        }
        let mut switches = Vec::new();
        for ep in &c.config.networks {
            switches.push(self.find_switch(&ep.switch_id)?.config);
        }
        let sandbox = match (c.config.isolation(), c.config.network_mode().container()) {
            (moat_core::Isolation::Process, _) => SandboxPlan::Local,
            (moat_core::Isolation::Hyperv, Some(owner)) => SandboxPlan::JoinVm {
                owner: owner.to_string(),
                owner_name: owner_name.unwrap_or_else(|| owner.to_string()),
                owner_dir: self.layout.container(owner),
            },
            (moat_core::Isolation::Hyperv, None) => {
                let (mem_mib, vcpus) = crate::vm::sizing(&c.config);
                SandboxPlan::Vm { mem_mib, vcpus }
            }
        };
        let backend = ContainerPlan {
            id: id.to_string(),
            dir: self.layout.container(id),
            spec,
            limits: crate::spec::limits(&c.config),
            stdin: c.config.open_stdin,
            endpoints: c.config.networks.clone(),
            sandbox,
            group: self.pod_group(c),
        };
        Ok(crate::shim::ShimPlan {
            id: id.to_string(),
            name: c.name().to_string(),
            image_id: c.row.image_id.to_string(),
            created: c.row.created,
            config: c.config.clone(),
            state: c.state.clone(),
            switches,
            backend,
        })
    }

    /// Creates and starts a container (Docker's `run`); a container that
    /// cannot start is removed when it asked for `--rm` (see [`Engine::start`]).
    /// The session is the shim's first client: attach it to see the output
    /// from the first byte.
    pub fn run(&mut self, req: crate::CreateRequest) -> Result<(Container, Session), EngineError> {
        let c = self.create(req)?;
        self.start(c.id())
    }

    /// Stops a container: `signal` (default: its stop signal), then SIGKILL
    /// after the timeout. Returns once the shim has recorded the exit; a
    /// `--rm` container is gone by then (its last record is returned).
    pub fn stop(&mut self, key: &str, o: StopOptions) -> Result<Container, EngineError> {
        let c = self.get(key)?;
        if !c.is_running() {
            return Ok(c);
        }
        let sig = match o.signal {
            Some(s) => s,
            None => client::parse_signal(&c.config.stop_signal)?,
        };
        let timeout = o.timeout.or(c.config.stop_timeout).unwrap_or(10);
        match self.connect(&c) {
            Ok(mut conn) => {
                // a shim that is finishing may reset the connection: then it
                // is stopping anyway, and the lock wait below covers it
                if conn.send(&ShimRequest::Stop { signal: sig, timeout_secs: timeout }).is_ok() {
                    moat_core::crash::point("stop.signalled");
                    conn.wait_closed();
                }
            }
            Err(_) if !crate::shim_alive(&self.layout, c.id()) => {}
            Err(e) => return Err(e),
        }
        client::wait_shim_gone(&self.layout, c.id());
        match self.get(c.id()) {
            Err(EngineError::NoSuchContainer(_)) => Ok(c),
            r => r,
        }
    }

    /// Restarts a container: a running one is stopped and started again by
    /// its shim (so a `--rm` container is not removed in between); a stopped
    /// one is started.
    pub fn restart(&mut self, key: &str, o: StopOptions) -> Result<Container, EngineError> {
        let c = self.get(key)?;
        if !c.is_running() {
            return Ok(self.start(c.id())?.0);
        }
        let sig = match o.signal {
            Some(s) => s,
            None => client::parse_signal(&c.config.stop_signal)?,
        };
        let timeout = o.timeout.or(c.config.stop_timeout).unwrap_or(10);
        let mut conn = self.connect(&c)?;
        match conn.request(&ShimRequest::Restart { signal: sig, timeout_secs: timeout })? {
            ShimReply::Ok { .. } | ShimReply::Started { .. } => self.get(c.id()),
            ShimReply::Error { message } => Err(EngineError::Shim(message)),
            other => Err(EngineError::Shim(format!("unexpected reply from shim: {other:?}"))),
        }
    }

    /// Waits for `condition`; returns the exit code. `NextExit` may be called
    /// before the container is started.
    pub fn wait(&mut self, key: &str, condition: WaitCondition) -> Result<WaitResult, EngineError> {
        let since = self.wait_mark(key)?;
        self.wait_since(key, condition, since)
    }

    /// Where a wait begins: checks that the container exists and returns the
    /// event position after which its exit counts. A front end that must
    /// answer before the container starts (the API's `wait`) takes the mark
    /// first and waits with [`Engine::wait_since`] afterwards.
    pub fn wait_mark(&mut self, key: &str) -> Result<i64, EngineError> {
        self.get(key)?;
        events::last_seq(self.images.store())
    }

    /// [`Engine::wait`] from a mark of [`Engine::wait_mark`].
    pub fn wait_since(&mut self, key: &str, condition: WaitCondition, since: i64) -> Result<WaitResult, EngineError> {
        let c = self.get(key)?;
        let id = c.id().to_string();
        let result_of = |c: &Container| WaitResult {
            code: c.state.exit_code,
            error: (!c.state.error.is_empty()).then(|| c.state.error.clone()),
        };
        match condition {
            WaitCondition::NotRunning => {
                if !c.is_running() {
                    return Ok(result_of(&c));
                }
                if let Some(r) = self.wait_on_shim(&c)? {
                    return Ok(r);
                }
                client::wait_shim_gone(&self.layout, &id);
                match self.get(&id) {
                    Ok(c) => Ok(result_of(&c)),
                    Err(EngineError::NoSuchContainer(_)) => self.wait_die(&id, since, Duration::ZERO),
                    Err(e) => Err(e),
                }
            }
            WaitCondition::NextExit => {
                if c.is_running() {
                    if let Some(r) = self.wait_on_shim(&c)? {
                        return Ok(r);
                    }
                    return self.wait_die(&id, since, Duration::MAX);
                }
                // not started yet: poll until it exits or starts, then block
                // on its shim rather than poll for as long as it runs
                loop {
                    if let Some(r) = self.die_since(&id, since)? {
                        return Ok(r);
                    }
                    match self.get(&id) {
                        Ok(c) if c.is_running() => {
                            if let Some(r) = self.wait_on_shim(&c)? {
                                return Ok(r);
                            }
                            return self.wait_die(&id, since, Duration::MAX);
                        }
                        Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                        Err(e) => return Err(e),
                    }
                }
            }
            WaitCondition::Removed => {
                let mut last = result_of(&c);
                loop {
                    match self.get(&id) {
                        Err(EngineError::NoSuchContainer(_)) => break,
                        Err(e) => return Err(e),
                        Ok(c) if c.is_running() => {
                            if let Some(r) = self.wait_on_shim(&c)? {
                                last = r;
                            }
                            // a `--rm` container is removed by its shim before
                            // the shim exits: block on that, not on a poll
                            client::wait_shim_gone(&self.layout, &id);
                        }
                        Ok(c) => {
                            last = result_of(&c);
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
                // a `--rm` container's last exit is in the log
                Ok(self.wait_die(&id, since, Duration::ZERO).unwrap_or(last))
            }
        }
    }

    /// Waits on the running shim for the main process's exit; `None` if the
    /// shim was finishing (its recorded state then answers).
    fn wait_on_shim(&mut self, c: &Container) -> Result<Option<WaitResult>, EngineError> {
        if let Ok(mut conn) = self.connect(c) {
            if let Ok(ShimReply::Exit { code, .. }) = conn.request(&ShimRequest::Wait) {
                let error = self.get(c.id()).ok().map(|c| c.state.error).filter(|e| !e.is_empty());
                return Ok(Some(WaitResult { code, error }));
            }
        }
        Ok(None)
    }

    /// The first `die` of `id` recorded after event `since`, if any.
    fn die_since(&mut self, id: &str, since: i64) -> Result<Option<WaitResult>, EngineError> {
        let f = events::EventFilter::for_container(id, "die");
        Ok(events::list(self.images.store(), Some(since + 1), None, &f)?.into_iter().next().map(|e| WaitResult {
            code: e.actor.attributes.get("exitCode").and_then(|c| c.parse().ok()).unwrap_or(0),
            error: e.actor.attributes.get("error").cloned(),
        }))
    }

    /// Polls the event log for a `die` of `id` after `since`; gives up after
    /// `patience` of it not appearing once the container is gone.
    fn wait_die(&mut self, id: &str, since: i64, patience: Duration) -> Result<WaitResult, EngineError> {
        let start = std::time::Instant::now();
        loop {
            if let Some(r) = self.die_since(id, since)? {
                return Ok(r);
            }
            if start.elapsed() > patience && self.get(id).is_err() {
                return Err(EngineError::NoSuchContainer(id.to_string()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends a signal to the main process.
    pub fn kill(&mut self, key: &str, signal: i32) -> Result<Container, EngineError> {
        let c = self.get(key)?;
        if !c.is_running() {
            return Err(EngineError::NotRunning(format!(
                "cannot kill container {}: container is not running",
                c.name()
            )));
        }
        self.connect(&c)?.request_ok(&ShimRequest::Signal { signal })?;
        moat_core::crash::point("kill.sent");
        events::record(self.store(), events::Event::container("kill", &c).attr("signal", &signal.to_string()));
        if signal == libc::SIGKILL {
            // like dockerd: a SIGKILL returns once the process is
            // dead, so a `remove` right after never sees it running
            // (a restart policy may start it again: a new process)
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                match self.get(c.id()) {
                    Ok(now) if now.is_running() && now.state.pid == c.state.pid => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    _ => break,
                }
            }
        }
        Ok(c)
    }

    /// Freezes (`true`) or thaws every process of a running container (the
    /// whole utility VM for `hyperv`).
    pub fn pause(&mut self, key: &str, paused: bool) -> Result<Container, EngineError> {
        let c = self.get(key)?;
        if !c.is_running() {
            return Err(EngineError::NotRunning(format!("container {} is not running", c.name())));
        }
        if paused == (c.state.status == Status::Paused) {
            return Err(EngineError::Conflict(format!(
                "container {} is {}",
                c.name(),
                if paused { "already paused" } else { "not paused" }
            )));
        }
        let req = if paused { ShimRequest::Pause } else { ShimRequest::Unpause };
        self.connect(&c)?.request_ok(&req)?;
        self.get(c.id())
    }

    /// Removes a container (stopping it first with `force`; with `volumes`
    /// its anonymous volumes go too, like `docker rm -v`).
    pub fn remove(&mut self, key: &str, force: bool, volumes: bool) -> Result<Container, EngineError> {
        let mut c = self.get(key)?;
        if let (true, Some(pod)) = (c.config.pod_infra, &c.config.pod) {
            if let Ok(p) = self.pod(pod) {
                return Err(EngineError::Conflict(format!(
                    "container {} is the infra container of pod {}: remove the pod (moat pod rm)",
                    c.name(),
                    p.name
                )));
            }
        }
        loop {
            if c.is_running() {
                if !force {
                    return Err(EngineError::Conflict(format!(
                        "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                        c.name()
                    )));
                }
                self.stop(c.id(), StopOptions { timeout: Some(0), signal: Some(libc::SIGKILL) })?;
                moat_core::crash::point("rm.stopped");
            }
            let _lock = self.op_lock(c.id())?;
            // under the lock, from the store: a start that held the lock may
            // have made it a running container since it was read above
            match self.get(c.id()) {
                Err(EngineError::NoSuchContainer(_)) => return Ok(c), // `--rm` removed it as it stopped
                Err(e) => return Err(e),
                Ok(now) if now.is_running() => {
                    c = now;
                    continue;
                }
                Ok(now) => c = now,
            }
            self.remove_files_and_row(c.id(), volumes)?;
            events::record(self.store(), events::Event::container("destroy", &c));
            let switches: Vec<String> = c.config.networks.iter().map(|e| e.switch_id.clone()).collect();
            self.refresh_hosts(&switches)?;
            return Ok(c);
        }
    }

    /// Deletes a stopped container's directory and record (and, with
    /// `volumes`, its anonymous volumes no other container uses).
    pub fn remove_files_and_row(&mut self, id: &str, volumes: bool) -> Result<(), EngineError> {
        let vols = if volumes { self.images.store().volumes_of(id)? } else { Vec::new() };
        let dir = self.layout.container(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(EngineError::Io(format!("remove {}", dir.display()), e));
            }
        }
        moat_core::crash::point("rm.files");
        self.store().delete_container(id)?;
        moat_core::crash::point("rm.unrecorded");
        self.remove_anonymous_volumes(&vols);
        Ok(())
    }

    /// Removes the legacy link `PARENT/ALIAS` (`rm --link`): the parent's
    /// `/etc/hosts` loses the alias at once, its environment at the next start.
    pub fn remove_link(&mut self, name: &str) -> Result<(), EngineError> {
        let name = name.trim_start_matches('/');
        let Some((parent, alias)) = name.rsplit_once('/') else {
            return Err(EngineError::Conflict("Conflict, cannot remove the default link name of the container".into()));
        };
        let c = self.get(parent)?;
        let mut cfg = c.config.clone();
        let before = cfg.links.len();
        cfg.links.retain(|l| l.alias != alias);
        if cfg.links.len() == before {
            return Err(EngineError::NotFound(format!(
                "no link /{name}: container {parent} has no link named {alias}"
            )));
        }
        self.write_config(c.id(), &cfg)?;
        let switches: Vec<String> = cfg.networks.iter().map(|e| e.switch_id.clone()).collect();
        self.refresh_hosts(&switches)
    }

    /// Renames a container (its peers' `/etc/hosts` follow).
    pub fn rename(&mut self, key: &str, new: &str) -> Result<Container, EngineError> {
        let c = self.get(key)?;
        let new = new.strip_prefix('/').unwrap_or(new);
        if !names::valid(new) {
            return Err(EngineError::Invalid(format!(
                "Invalid container name ({new}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let taken = || EngineError::Conflict(format!("Conflict. The container name \"/{new}\" is already in use"));
        if self.images.store().find_container(new)?.is_some_and(|o| o.name == new) {
            return Err(taken());
        }
        match self.store().rename_container(c.id(), new) {
            Err(moat_store::StoreError::NameInUse { .. }) => return Err(taken()),
            r => r?,
        }
        moat_core::crash::point("rename.recorded");
        events::record(self.store(), events::Event::container("rename", &c).attr("oldName", &format!("/{}", c.name())));
        let switches: Vec<String> = c.config.networks.iter().map(|e| e.switch_id.clone()).collect();
        self.refresh_hosts(&switches)?;
        self.get(c.id())
    }

    /// Changes a container: limits (applied at once to a running one, and
    /// kept for its next starts), restart policy, isolation. Returns warnings.
    pub fn update(&mut self, key: &str, u: &UpdateRequest) -> Result<(Container, Vec<String>), EngineError> {
        let c = self.get(key)?;
        if !u.limits() && u.restart.is_none() && u.isolation.is_none() {
            return Err(EngineError::Invalid(
                "nothing to update: give a limit, a restart policy or an isolation".into(),
            ));
        }
        let mut warnings = Vec::new();
        if u.limits() || u.restart.is_some() {
            let _lock = self.op_lock(c.id())?;
            let mut cfg = self.get(c.id())?.config;
            let l = &mut cfg.limits;
            l.memory = u.memory.or(l.memory);
            l.memory_swap = u.memory_swap.or(l.memory_swap);
            l.memory_reservation = u.memory_reservation.or(l.memory_reservation);
            l.cpus = u.cpus.or(l.cpus);
            l.cpu_shares = u.cpu_shares.or(l.cpu_shares);
            l.pids = u.pids.or(l.pids);
            if let Some(r) = u.restart {
                cfg.restart = r;
            }
            crate::validate::config(&cfg)?;
            let running = self.get(c.id())?;
            if u.limits() && running.is_running() {
                let limits = crate::spec::limits(&cfg);
                warnings.extend(self.connect(&running)?.request_ok(&ShimRequest::Update(limits))?);
            }
            // the running shim decides restarts: it takes the new policy now
            // (Docker's too), not at the next start
            if let (Some(r), true) = (u.restart, running.is_running()) {
                self.connect(&running)?.request_ok(&ShimRequest::SetRestart { policy: r.to_string() })?;
            }
            self.write_config(c.id(), &cfg)?;
        }
        if let Some(iso) = u.isolation {
            self.update_isolation(c.id(), iso, u.restart_for_isolation)?;
        }
        let c = self.get(c.id())?;
        events::record(self.store(), events::Event::container("update", &c));
        Ok((c, warnings))
    }

    /// Converts a container to another isolation type. A running container is
    /// refused unless `restart`, which stops it, converts it and starts it
    /// again. Its filesystem, name, ID, config and logs are kept; only the
    /// backend of the next start changes.
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
                "cannot change the isolation of running container {}: stop it first, or restart it to convert it (moat update --isolation=X --restart)",
                c.name()
            )));
        }
        check_isolation(&c.config, iso)?;
        if c.config.isolation() != iso {
            let sharing = match c.config.network_mode().container() {
                Some(o) => Some(self.get(o).map(|o| o.name().to_string()).unwrap_or_else(|_| o.to_string())),
                None => self
                    .list()?
                    .into_iter()
                    .find(|m| m.config.network == format!("container:{}", c.id()))
                    .map(|m| m.name().to_string()),
            };
            if let Some(other) = sharing {
                return Err(EngineError::Invalid(format!(
                    "container {} shares its sandbox with {other}: a sandbox's containers have one isolation type, convert them together (moat pod update --isolation)",
                    c.name()
                )));
            }
        }
        if was_running {
            self.stop(c.id(), StopOptions::default())?;
        }
        self.convert_isolation(c.id(), iso)?;
        if was_running {
            self.start(c.id())?;
        }
        self.get(c.id())
    }

    /// Records a stopped container's new isolation type (its files stay).
    pub(crate) fn convert_isolation(&mut self, id: &str, iso: moat_core::Isolation) -> Result<(), EngineError> {
        let lock = self.op_lock(id)?;
        let mut c = self.get(id)?;
        if c.is_running() {
            return Err(EngineError::Conflict(format!("container {} started meanwhile: try again", c.name())));
        }
        if c.config.isolation() != iso {
            let from = c.config.isolation();
            c.config.isolation = Some(iso);
            let cfg = c.config.clone();
            self.write_config(c.id(), &cfg)?;
            moat_core::crash::point("update.isolation");
            c.state.isolation_changed_at = Some(Utc::now());
            let st = c.state.clone();
            self.save_state(c.id(), &st)?;
            events::record(
                self.store(),
                events::Event::container("update", &c)
                    .attr("isolation", &iso.to_string())
                    .attr("from", &from.to_string()),
            );
        }
        drop(lock);
        Ok(())
    }

    /// Removes every stopped container matching `filters`; returns their IDs.
    pub fn prune(&mut self, filters: &crate::container_filter::ContainerFilter) -> Result<ContainerPrune, EngineError> {
        let mut out = ContainerPrune::default();
        let pods: Vec<String> = self.pods()?.into_iter().map(|p| p.id).collect();
        for c in self.list()? {
            // a pod's infra container goes with its pod (`pod rm`, `pod prune`)
            let infra = c.config.pod_infra && c.config.pod.as_ref().is_some_and(|p| pods.contains(p));
            if !infra && !c.is_running() && filters.matches(&c, self)? {
                let _lock = self.op_lock(c.id())?;
                // what the container wrote is what its removal frees
                let size = moat_store::dir_size(&self.layout.container(c.id()).join("upper"));
                self.remove_files_and_row(c.id(), false)?;
                events::record(self.store(), events::Event::container("destroy", &c));
                out.deleted.push(c.id().to_string());
                out.space_reclaimed += size;
            }
        }
        Ok(out)
    }

    /// Connects to the shim of `c` if it runs.
    pub fn shim(&mut self, c: &Container) -> Result<Conn, EngineError> {
        if !c.is_running() {
            return Err(EngineError::NotRunning(format!("container {} is not running", c.name())));
        }
        self.connect(c)
    }
}
