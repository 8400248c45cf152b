//! Pods: a sandbox holding a group of containers, Podman's model. A pod is a
//! row (name, labels, isolation, limits) and an *infra* container that owns
//! the sandbox: its network namespace, hostname, published ports and
//! switches in process isolation, its utility VM in hyperv. The pod's other
//! containers join the infra container's sandbox (`container:<infra>`, the
//! same path as Docker's `--network container:X`), so a hyperv pod is one
//! VM whose agent runs every container of the pod, each with its own root,
//! cgroup, mount and PID namespace.
//!
//! The infra container runs `moat-pause` (the static agent binary by that
//! name: it waits for a signal) from a local image, `moat-pause:<digest>`,
//! made from the agent on first use, as Podman makes its pause image.

use crate::config::ContainerConfig;
use crate::lifecycle::StopOptions;
use crate::{events, Container, CreateRequest, Engine, EngineError};
use chrono::{DateTime, Utc};
use moat_core::Isolation;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A pod's recorded configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PodConfig {
    /// Isolation type of every container of the pod.
    pub isolation: Option<Isolation>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The infra container's ID.
    pub infra_id: String,
    /// Memory limit of the pod, in bytes (the VM's size in hyperv).
    pub memory: Option<i64>,
    /// CPU limit of the pod (the VM's vCPUs in hyperv).
    pub cpus: Option<f64>,
}

impl PodConfig {
    /// The isolation type (process unless recorded).
    pub fn isolation(&self) -> Isolation {
        self.isolation.unwrap_or(Isolation::Process)
    }
}

/// A pod: its row and configuration.
#[derive(Debug, Clone)]
pub struct Pod {
    /// 64-hex ID.
    pub id: String,
    /// Unique name among pods.
    pub name: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Configuration.
    pub config: PodConfig,
}

/// What `pod create` asks for.
#[derive(Debug, Clone, Default)]
pub struct PodCreateRequest {
    /// Name (generated when `None`).
    pub name: Option<String>,
    /// Isolation type (the engine's default when `None`).
    pub isolation: Option<Isolation>,
    /// Published ports (`-p`), parsed by [`crate::flags::publish`].
    pub publish: Vec<moat_net::PortMap>,
    /// `default`, `none`, `host` or a switch (empty: the default switch).
    pub network: String,
    /// Hostname of every container of the pod (default: the pod's name).
    pub hostname: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// `--add-host NAME:IP` entries.
    pub add_hosts: Vec<String>,
    /// `--dns` servers.
    pub dns: Vec<String>,
}

/// A pod's state, from its containers' (Podman's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PodStatus {
    /// No container ever started.
    Created,
    /// Every container runs.
    Running,
    /// Some run, some do not.
    Degraded,
    /// Every running container is paused.
    Paused,
    /// None runs.
    Exited,
}

impl std::fmt::Display for PodStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A pod with its containers (the infra container first, then in creation order).
#[derive(Debug, Clone)]
pub struct PodWithContainers {
    /// The pod.
    pub pod: Pod,
    /// Its containers.
    pub containers: Vec<Container>,
}

impl PodWithContainers {
    /// The pod's state from its containers'.
    pub fn status(&self) -> PodStatus {
        let running = self.containers.iter().filter(|c| c.is_running()).count();
        let paused = self.containers.iter().filter(|c| c.state.status == crate::config::Status::Paused).count();
        let started = self.containers.iter().any(|c| c.state.started_at.is_some());
        match running {
            0 if !started => PodStatus::Created,
            0 => PodStatus::Exited,
            n if n == paused => PodStatus::Paused,
            n if n == self.containers.len() => PodStatus::Running,
            _ => PodStatus::Degraded,
        }
    }

    /// The infra container.
    pub fn infra(&self) -> Option<&Container> {
        self.containers.iter().find(|c| c.id() == self.pod.config.infra_id)
    }
}

/// `pod` with its containers among `all`: the infra container first, then
/// the others in creation order.
fn with_members(pod: Pod, all: &[Container]) -> PodWithContainers {
    let mut cs: Vec<Container> =
        all.iter().filter(|c| c.config.pod.as_deref() == Some(pod.id.as_str())).cloned().collect();
    cs.sort_by(|a, b| {
        let infra = |c: &Container| c.id() != pod.config.infra_id;
        (infra(a), a.row.created, a.id()).cmp(&(infra(b), b.row.created, b.id()))
    });
    PodWithContainers { pod, containers: cs }
}

/// The store's row of `p`.
fn row(p: &Pod) -> Result<moat_store::PodRow, EngineError> {
    Ok(moat_store::PodRow {
        id: p.id.clone(),
        name: p.name.clone(),
        created: p.created,
        config: serde_json::to_string(&p.config).map_err(|e| EngineError::Invalid(e.to_string()))?,
    })
}

fn parse(row: moat_store::PodRow) -> Result<Pod, EngineError> {
    let config = serde_json::from_str(&row.config)
        .map_err(|e| EngineError::Invalid(format!("corrupt configuration of pod {}: {e}", row.id)))?;
    Ok(Pod { id: row.id, name: row.name, created: row.created, config })
}

fn pod_event(action: &str, p: &Pod) -> events::Event {
    let mut e = events::Event::new("pod", action, &p.id).attr("name", &p.name);
    for (k, v) in &p.config.labels {
        e = e.attr(k, v);
    }
    e
}

/// The cgroup group of pod `id`'s process containers (`moat/pod-<id12>`).
pub fn group_name(id: &str) -> String {
    format!("pod-{}", &id[..id.len().min(12)])
}

/// Where the infra container's program goes in its image.
const PAUSE: &str = "moat-pause";

impl Engine {
    /// Every pod, oldest first.
    pub fn pods(&mut self) -> Result<Vec<Pod>, EngineError> {
        self.images.store().pods()?.into_iter().map(parse).collect()
    }

    /// One pod by name, ID or unique ID prefix.
    pub fn pod(&mut self, key: &str) -> Result<Pod, EngineError> {
        let pods = self.pods()?;
        if let Some(p) = pods.iter().find(|p| p.id == key || p.name == key) {
            return Ok(p.clone());
        }
        let mut by_prefix = pods.iter().filter(|p| !key.is_empty() && p.id.starts_with(key));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(p), None) => Ok(p.clone()),
            (Some(_), Some(_)) => Err(EngineError::Invalid(format!("pod ID prefix {key} is ambiguous"))),
            (None, _) => Err(EngineError::NotFound(format!("no such pod: {key}"))),
        }
    }

    /// A pod with its containers: the infra container first, then the
    /// others in creation order.
    pub fn pod_with_containers(&mut self, key: &str) -> Result<PodWithContainers, EngineError> {
        let pod = self.pod(key)?;
        let all = self.list()?;
        Ok(with_members(pod, &all))
    }

    /// A pod and its running containers (in its order); a pod with none is
    /// `NotRunning` (`pod kill`, `pod top`, `pod stats`).
    pub fn pod_running(&mut self, key: &str) -> Result<(Pod, Vec<Container>), EngineError> {
        let p = self.pod_with_containers(key)?;
        let running: Vec<Container> = p.containers.into_iter().filter(|c| c.is_running()).collect();
        if running.is_empty() {
            return Err(EngineError::NotRunning(format!("pod {} has no running container", p.pod.name)));
        }
        Ok((p.pod, running))
    }

    /// Every pod with its containers, oldest first (the containers listed once).
    fn pods_with_containers(&mut self) -> Result<Vec<PodWithContainers>, EngineError> {
        let all = self.list()?;
        Ok(self.pods()?.into_iter().map(|pod| with_members(pod, &all)).collect())
    }

    /// The local image the infra containers run (made from the agent once).
    fn pause_image(&mut self) -> Result<String, EngineError> {
        let agent = self.options.agent().map_err(|e| {
            EngineError::Unsupported(format!(
                "a pod's infra container runs moat's pause, the static moat-agent binary: {e}"
            ))
        })?;
        let bin = std::fs::read(&agent).map_err(EngineError::io(format!("read {}", agent.display())))?;
        let digest = moat_core::Digest::of(&bin);
        let name = format!("{PAUSE}:{}", &digest.hex()[..12]);
        if self.images.resolve(&name).is_ok() {
            return Ok(name);
        }
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(bin.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append_data(&mut h, PAUSE, &bin[..]).map_err(EngineError::io("build the pause image"))?;
        let body = tar.into_inner().map_err(EngineError::io("build the pause image"))?;
        let changes = [format!("ENTRYPOINT [\"/{PAUSE}\"]")];
        self.import_image(&body[..], Some(&name), "moat's pause: the infra container of pods", &changes)?;
        Ok(name)
    }

    /// Creates a pod and its infra container (not started).
    pub fn pod_create(&mut self, req: PodCreateRequest) -> Result<Pod, EngineError> {
        let name = match req.name {
            Some(n) => {
                if !crate::names::valid(&n) {
                    return Err(EngineError::Invalid(format!(
                        "invalid pod name {n:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                    )));
                }
                n
            }
            None => {
                let taken: Vec<String> = self.pods()?.into_iter().map(|p| p.name).collect();
                let mut n = crate::names::generate();
                while taken.contains(&n) {
                    n = crate::names::generate();
                }
                n
            }
        };
        let image = self.pause_image()?;
        let isolation = req.isolation.unwrap_or(self.settings.default_isolation);
        let id = moat_core::id::new_id();
        let mut cfg = ContainerConfig {
            image,
            isolation: Some(isolation),
            network: req.network,
            publish: req.publish,
            hostname: req.hostname.unwrap_or_else(|| name.clone()),
            add_hosts: req.add_hosts,
            dns: req.dns,
            pod: Some(id.clone()),
            pod_infra: true,
            ..Default::default()
        };
        cfg.limits.memory = req.memory;
        cfg.limits.cpus = req.cpus;
        let config = PodConfig {
            isolation: Some(isolation),
            labels: req.labels,
            infra_id: String::new(),
            memory: req.memory,
            cpus: req.cpus,
        };
        let mut pod = Pod { id: id.clone(), name, created: Utc::now(), config };
        // the store's unique name refuses a clash (atomically, before the infra container exists)
        self.store().insert_pod(&row(&pod)?)?;
        moat_core::crash::point("pod.create.recorded");
        let infra = self.create(CreateRequest {
            name: Some(format!("{}-infra", &id[..12])),
            config: cfg,
            ..Default::default()
        });
        let infra = match infra {
            Ok(c) => c,
            Err(e) => {
                let _ = self.store().delete_pod(&id);
                return Err(e);
            }
        };
        pod.config.infra_id = infra.id().to_string();
        self.store().update_pod(&id, &row(&pod)?.config)?;
        events::record(self.store(), pod_event("create", &pod));
        Ok(pod)
    }

    /// The cgroup group container `c` goes into: its pod's, with the pod's
    /// limits, in process isolation (a hyperv pod's limits size its VM).
    pub(crate) fn pod_group(&mut self, c: &Container) -> Option<(String, moat_proto::Limits)> {
        let pod = c.config.pod.as_ref().filter(|_| c.config.isolation() == Isolation::Process)?;
        // an infra container outliving its pod's row (`pod rm`) has no group
        let p = self.pod(pod).ok()?;
        let limits = moat_proto::Limits {
            memory: p.config.memory,
            cpus: p.config.cpus,
            devices: moat_runtime::devices::DevicePolicy::AllowAll,
            ..Default::default()
        };
        Some((group_name(&p.id), limits))
    }

    /// What a container created with `--pod P` gets from the pod: its
    /// isolation, and the infra container's sandbox (network, hostname).
    pub(crate) fn join_pod(&mut self, cfg: &mut ContainerConfig) -> Result<(), EngineError> {
        let Some(key) = cfg.pod.clone() else { return Ok(()) };
        let pod = self.pod(&key)?;
        let iso = pod.config.isolation();
        if cfg.isolation.is_some_and(|i| i != iso) {
            return Err(EngineError::Invalid(format!(
                "pod {} runs in {iso} isolation: its containers share its sandbox, so they run in {iso} too",
                pod.name
            )));
        }
        let network = (cfg.network_mode() != crate::config::NetworkMode::Default).then_some("a network");
        if let Some(what) = crate::validate::sandbox_owned(cfg).or(network) {
            return Err(EngineError::Invalid(format!(
                "{what} of a container in a pod belong to the pod: give them to `moat pod create` (pod {})",
                pod.name
            )));
        }
        cfg.isolation = Some(iso);
        cfg.pod = Some(pod.id.clone());
        cfg.pod_infra = false;
        cfg.network = format!("container:{}", pod.config.infra_id);
        Ok(())
    }

    /// Starts a pod: its infra container, then the others in creation order.
    pub fn pod_start(&mut self, key: &str) -> Result<PodWithContainers, EngineError> {
        let p = self.pod_with_containers(key)?;
        for c in &p.containers {
            if !c.is_running() {
                self.start(c.id())?;
            }
        }
        events::record(self.store(), pod_event("start", &p.pod));
        self.pod_with_containers(&p.pod.id)
    }

    /// Stops a pod: its containers in reverse creation order, the infra last.
    pub fn pod_stop(&mut self, key: &str, timeout: Option<u32>) -> Result<PodWithContainers, EngineError> {
        let p = self.pod_with_containers(key)?;
        for c in p.containers.iter().rev() {
            if c.is_running() {
                self.stop(c.id(), StopOptions { timeout, signal: None })?;
            }
        }
        events::record(self.store(), pod_event("stop", &p.pod));
        self.pod_with_containers(&p.pod.id)
    }

    /// Stops and starts a pod.
    pub fn pod_restart(&mut self, key: &str, timeout: Option<u32>) -> Result<PodWithContainers, EngineError> {
        let p = self.pod_stop(key, timeout)?;
        self.pod_start(&p.pod.id)
    }

    /// Sends a signal to every running container of a pod.
    pub fn pod_kill(&mut self, key: &str, signal: i32) -> Result<PodWithContainers, EngineError> {
        let (pod, running) = self.pod_running(key)?;
        for c in running.iter().rev() {
            self.kill(c.id(), signal)?;
        }
        events::record(self.store(), pod_event("kill", &pod).attr("signal", &signal.to_string()));
        self.pod_with_containers(&pod.id)
    }

    /// Freezes (`true`) or thaws every running container of a pod.
    pub fn pod_pause(&mut self, key: &str, paused: bool) -> Result<PodWithContainers, EngineError> {
        let p = self.pod_with_containers(key)?;
        let want = if paused { crate::config::Status::Running } else { crate::config::Status::Paused };
        let todo: Vec<&Container> = p.containers.iter().filter(|c| c.state.status == want).collect();
        if todo.is_empty() {
            return Err(EngineError::Conflict(format!(
                "pod {} has no {} container",
                p.pod.name,
                if paused { "running" } else { "paused" }
            )));
        }
        for c in todo {
            self.pause(c.id(), paused)?;
        }
        events::record(self.store(), pod_event(if paused { "pause" } else { "unpause" }, &p.pod));
        self.pod_with_containers(&p.pod.id)
    }

    /// Removes a pod with its containers (running ones only with `force`).
    pub fn pod_remove(&mut self, key: &str, force: bool) -> Result<Pod, EngineError> {
        let p = self.pod_with_containers(key)?;
        if !force {
            if let Some(c) = p.containers.iter().find(|c| c.is_running()) {
                return Err(EngineError::Conflict(format!(
                    "pod {} has running containers ({}): stop the pod first, or remove it with --force",
                    p.pod.name,
                    c.name()
                )));
            }
        }
        for c in p.containers.iter().rev().filter(|c| c.id() != p.pod.config.infra_id) {
            self.remove(c.id(), force, true)?;
        }
        moat_core::crash::point("pod.rm.containers");
        // the infra container goes once the pod is no more (see `remove`)
        self.store().delete_pod(&p.pod.id)?;
        moat_core::crash::point("pod.rm.unrecorded");
        if let Some(infra) = p.infra() {
            self.remove(infra.id(), true, true)?;
        }
        moat_runtime::cgroup::Cgroup::remove_group(&group_name(&p.pod.id));
        events::record(self.store(), pod_event("remove", &p.pod));
        Ok(p.pod)
    }

    /// Removes every pod none of whose containers runs.
    pub fn pod_prune(&mut self) -> Result<Vec<Pod>, EngineError> {
        let mut gone = Vec::new();
        for p in self.pods_with_containers()? {
            if p.containers.iter().all(|c| !c.is_running()) {
                gone.push(self.pod_remove(&p.pod.id, false)?);
            }
        }
        Ok(gone)
    }

    /// Converts a stopped pod and all its containers to another isolation
    /// type, keeping their files (each container's conversion).
    pub fn pod_update_isolation(&mut self, key: &str, iso: Isolation) -> Result<Pod, EngineError> {
        let p = self.pod_with_containers(key)?;
        if let Some(c) = p.containers.iter().find(|c| c.is_running()) {
            return Err(EngineError::Conflict(format!(
                "cannot change the isolation of pod {}: container {} runs; stop the pod first",
                p.pod.name,
                c.name()
            )));
        }
        for c in &p.containers {
            crate::validate::check_isolation(&c.config, iso)?;
        }
        for c in &p.containers {
            self.convert_isolation(c.id(), iso)?;
        }
        let mut pod = p.pod;
        pod.config.isolation = Some(iso);
        self.store().update_pod(&pod.id, &row(&pod)?.config)?;
        events::record(self.store(), pod_event("update", &pod).attr("isolation", &iso.to_string()));
        Ok(pod)
    }
}

/// A pod in `pod ls` (Podman's columns and JSON names).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PodListRow {
    /// Full ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Status.
    pub status: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// How long ago, in words (`3 minutes ago`).
    #[serde(skip)]
    pub created_ago: String,
    /// The infra container's ID.
    pub infra_id: String,
    /// Number of containers (the infra container included).
    pub num_containers: usize,
    /// Isolation type.
    pub isolation: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl PodListRow {
    /// The row of `p`.
    pub fn of(p: &PodWithContainers) -> Self {
        Self {
            id: p.pod.id.clone(),
            name: p.pod.name.clone(),
            status: p.status().to_string(),
            created: p.pod.created.to_rfc3339(),
            created_ago: moat_core::human::ago(p.pod.created),
            infra_id: p.pod.config.infra_id.clone(),
            num_containers: p.containers.len(),
            isolation: p.pod.config.isolation().to_string(),
            labels: p.pod.config.labels.clone(),
        }
    }
}

/// A container of a pod in `pod inspect`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PodMember {
    /// Full ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Its state (`running`, `exited`, ...).
    pub state: String,
}

/// `pod inspect` (Podman's names).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PodInspect {
    /// Full ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Status.
    pub state: String,
    /// Hostname of its containers.
    pub hostname: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Always true: moat's pods have an infra container.
    pub create_infra: bool,
    /// The infra container's ID.
    #[serde(rename = "InfraContainerID")]
    pub infra_container_id: String,
    /// Isolation type.
    pub isolation: String,
    /// Namespaces the containers share (a VM in hyperv: its network, and the hostname).
    pub shared_namespaces: Vec<String>,
    /// Memory limit in bytes (0: none).
    pub memory_limit: i64,
    /// CPU limit (0: none).
    pub cpus: f64,
    /// Published ports, `HOST:CTR/proto`.
    pub ports: Vec<String>,
    /// Number of containers.
    pub num_containers: usize,
    /// The containers, the infra container first.
    pub containers: Vec<PodMember>,
}

impl PodInspect {
    /// The view of `p`.
    pub fn of(p: &PodWithContainers) -> Self {
        let infra = p.infra();
        Self {
            id: p.pod.id.clone(),
            name: p.pod.name.clone(),
            created: p.pod.created.to_rfc3339(),
            state: p.status().to_string(),
            hostname: infra.map(|c| c.config.hostname.clone()).unwrap_or_default(),
            labels: p.pod.config.labels.clone(),
            create_infra: true,
            infra_container_id: p.pod.config.infra_id.clone(),
            isolation: p.pod.config.isolation().to_string(),
            shared_namespaces: vec!["net".into(), "uts".into()],
            memory_limit: p.pod.config.memory.unwrap_or(0),
            cpus: p.pod.config.cpus.unwrap_or(0.0),
            ports: infra
                .map(|c| {
                    c.config.publish.iter().map(|m| format!("{}:{}/{}", m.host_port, m.ctr_port, m.proto)).collect()
                })
                .unwrap_or_default(),
            num_containers: p.containers.len(),
            containers: p
                .containers
                .iter()
                .map(|c| PodMember {
                    id: c.id().to_string(),
                    name: c.name().to_string(),
                    state: c.state.status.to_string(),
                })
                .collect(),
        }
    }
}

/// Pod filters (`pod ls --filter`): `name` (substring), `id` (prefix),
/// `label`, `status` (Podman's words, any case), `isolation`.
fn pod_matches(f: &crate::filter::Filters, p: &PodWithContainers) -> bool {
    use crate::filter::{any, label_matches};
    let status = p.status().to_string();
    any(f.get("name"), |n| p.pod.name.contains(n))
        && any(f.get("id"), |i| p.pod.id.starts_with(i))
        && f.get("label").iter().all(|l| label_matches(&p.pod.config.labels, l))
        && any(f.get("status"), |s| s.eq_ignore_ascii_case(&status))
        && any(f.get("isolation"), |i| i.parse::<Isolation>().is_ok_and(|i| i == p.pod.config.isolation()))
}

impl Engine {
    /// Pods with their containers that pass `f`, oldest first.
    pub fn pods_matching(&mut self, f: &crate::filter::Filters) -> Result<Vec<PodWithContainers>, EngineError> {
        f.check(&["name", "id", "label", "status", "isolation"])?;
        Ok(self.pods_with_containers()?.into_iter().filter(|p| pod_matches(f, p)).collect())
    }

    /// The processes of a pod's running containers: `top`'s table with the
    /// container's name first.
    pub fn pod_top(&mut self, key: &str) -> Result<(Vec<String>, Vec<Vec<String>>), EngineError> {
        let (_, running) = self.pod_running(key)?;
        let mut titles = vec!["CONTAINER".to_string()];
        let mut rows = Vec::new();
        for c in &running {
            let (t, r) = self.top_table(c.id(), &[])?;
            if titles.len() == 1 {
                titles.extend(t);
            }
            rows.extend(r.into_iter().map(|row| std::iter::once(c.name().to_string()).chain(row).collect()));
        }
        Ok((titles, rows))
    }
}
