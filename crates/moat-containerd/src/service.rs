//! containerd's shim v2 lifecycle (`start`, `delete`) and Task service,
//! over moat's sandbox layer: no engine, no SQLite; containerd owns the
//! records. One shim process serves every task of a grouping (a CRI pod's
//! containers share the sandbox ID, so `start` returns the same address).

use crate::task::{Status, Stdio, Task, TaskError, TaskState, Tasks};
use containerd_shim as shim;
use containerd_shim::protos::cgroups::metrics::{CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::Status as ApiStatus;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config, DeleteResponse, ExitSignal, Flags, TtrpcContext, TtrpcResult};
use moat_core::Isolation;
use moat_sandbox::backend::{ContainerPlan, Query, SandboxPlan};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The annotation CRI sets on a pod's sandbox and containers.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI's annotation telling a pod's sandbox (`sandbox`) from its containers
/// (`container`).
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The shim: its isolation type (from its binary's name, or moat's
/// configured default), containerd's namespace, and the tasks it serves.
#[derive(Clone)]
pub struct Service {
    isolation: Isolation,
    /// Its name fixed the isolation (`-process-`, `-hyperv-`): runtime
    /// options do not change it.
    named: bool,
    namespace: String,
    exit: Arc<ExitSignal>,
    tasks: Tasks,
    publisher: Option<Arc<Mutex<RemotePublisher>>>,
}

/// How `start` tells the shim it spawns (its binary, the symlink resolved)
/// which name containerd called.
const ISOLATION_ENV: &str = "MOAT_SHIM_ISOLATION";

/// The isolation a binary's name asks for: `containerd-shim-moat-hyperv-v2`
/// (or `-vm-`), `containerd-shim-moat-process-v2`; `None` for
/// `containerd-shim-moat-v2`, which takes moat's configured default.
pub fn isolation_of(argv0: &str) -> Option<Isolation> {
    let name = Path::new(argv0).file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.contains("-hyperv-") || name.contains("-vm-") {
        Some(Isolation::Hyperv)
    } else if name.contains("-process-") {
        Some(Isolation::Process)
    } else {
        None
    }
}

/// moat's configured default isolation, as moat itself reads it:
/// `MOAT_DEFAULT_ISOLATION`, else `default_isolation` of the config file at
/// `config` (containerd's `ConfigPath` runtime option), else of moat's
/// system config file (`MOAT_CONFIG`, `/etc/moat/config.toml`), else process.
pub fn configured_default(config: Option<&Path>) -> Result<Isolation, String> {
    if let Ok(v) = std::env::var("MOAT_DEFAULT_ISOLATION") {
        return v.parse().map_err(|e| format!("MOAT_DEFAULT_ISOLATION: {e}"));
    }
    let system = std::env::var_os("MOAT_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(moat_core::config::SYSTEM_CONFIG));
    for path in config.into_iter().chain([system.as_path()]) {
        let file = moat_core::config::ConfigFile::read(path).map_err(|e| e.to_string())?;
        if let Some(i) = file.map(|f| f.isolation(path)).transpose().map_err(|e| e.to_string())?.flatten() {
            return Ok(i);
        }
    }
    Ok(Isolation::Process)
}

/// This process's isolation and whether its name fixed it: what `start`
/// passed on, else its own name, else moat's configured default.
fn own_isolation() -> (Isolation, bool) {
    if let Some(i) = std::env::var(ISOLATION_ENV).ok().and_then(|v| v.parse().ok()) {
        return (i, true);
    }
    match isolation_of(&std::env::args().next().unwrap_or_default()) {
        Some(i) => (i, true),
        None => (configured_default(None).unwrap_or(Isolation::Process), false),
    }
}

/// The `ConfigPath` of containerd's generic runtime options
/// (`runtimeoptions.v1.Options`: `type_url` = 1, `config_path` = 2), which
/// the CRI sends for a runtime with an `options` table, as Kata takes its
/// configuration file.
pub fn config_path_option(type_url: &str, value: &[u8]) -> Result<Option<String>, String> {
    use containerd_shim::protos::protobuf::rt::WireType;
    if !type_url.ends_with("runtimeoptions.v1.Options") {
        return Ok(None);
    }
    let mut is = containerd_shim::protos::protobuf::CodedInputStream::from_bytes(value);
    let mut path = None;
    let bad = |e: containerd_shim::protos::protobuf::Error| format!("the runtime options: {e}");
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(bad)? {
        let wire = WireType::new(tag & 7).ok_or_else(|| format!("the runtime options: wire type {}", tag & 7))?;
        match (tag >> 3, wire) {
            (2, WireType::LengthDelimited) => path = Some(is.read_string().map_err(bad)?),
            _ => is.skip_field(wire).map_err(bad)?,
        }
    }
    Ok(path.filter(|p| !p.is_empty()))
}

fn status(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn failed(e: TaskError) -> ttrpc::Error {
    let code = match e {
        TaskError::State(_) => ttrpc::Code::FAILED_PRECONDITION,
        TaskError::Sandbox(moat_sandbox::SandboxError::Runtime(moat_runtime::RuntimeError::Invalid(_))) => {
            ttrpc::Code::INVALID_ARGUMENT
        }
        _ => ttrpc::Code::INTERNAL,
    };
    status(code, e.to_string())
}

/// Where the VM's parts are: moat's environment variables (containerd
/// passes its own to shims), else moat's defaults.
fn vm_options() -> moat_sandbox::VmOptions {
    let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
    moat_sandbox::VmOptions {
        kernel_dir: env("MOAT_KERNEL_DIR").unwrap_or_else(|| moat_sandbox::DEFAULT_KERNEL_DIR.into()),
        agent: env("MOAT_AGENT"),
        shim_exe: std::env::current_exe().ok(),
        qemu: env("MOAT_QEMU"),
        virtiofsd: env("MOAT_VIRTIOFSD"),
        boot_timeout_secs: None,
        templates: None,
    }
}

fn not_found(id: &str, exec: &str) -> ttrpc::Error {
    status(ttrpc::Code::NOT_FOUND, format!("no process {exec:?} in task {id}"))
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// The grouping of the bundle in this directory: its pod's sandbox ID, or
/// its own ID.
fn grouping(bundle: &Path, id: &str) -> String {
    let annotations = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("annotations").and_then(|a| a.get(SANDBOX_ID)).and_then(|s| s.as_str().map(String::from)));
    annotations.unwrap_or_else(|| id.to_string())
}

impl Service {
    /// Publishes an event to containerd; after containerd restarted (the
    /// old connection is dead) once more on a new connection to its address.
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let Some(p) = &self.publisher else { return };
        let Ok(mut p) = p.lock() else { return };
        if p.publish(shim::Context::default(), topic, &self.namespace, event.clone_box()).is_ok() {
            return;
        }
        let again = std::env::var("TTRPC_ADDRESS")
            .map_err(|e| shim::Error::Other(e.to_string()))
            .and_then(RemotePublisher::new)
            .and_then(|fresh| {
                *p = fresh;
                p.publish(shim::Context::default(), topic, &self.namespace, event)
            });
        if let Err(e) = again {
            log::warn!("publish {topic}: {e}");
        }
    }

    fn task(&self, id: &str) -> TtrpcResult<Arc<Task>> {
        self.tasks
            .lock()
            .ok()
            .and_then(|t| t.get(id).cloned())
            .ok_or_else(|| status(ttrpc::Code::NOT_FOUND, format!("task {id} not found")))
    }

    fn backend_query(&self, id: &str, q: Query) -> TtrpcResult<()> {
        match self.task(id)?.query(q).map_err(failed)? {
            moat_proto::ShimReply::Error { message } => Err(status(ttrpc::Code::FAILED_PRECONDITION, message)),
            _ => Ok(()),
        }
    }

    /// The utility VM of a hyperv task: a CRI container's is its pod's (the
    /// sandbox task's, in this shim: one VM per pod), any other task's its
    /// own, of the size its limits ask for.
    fn vm_of(
        &self,
        annotations: &std::collections::BTreeMap<String, String>,
        limits: &moat_runtime::cgroup::Limits,
    ) -> TtrpcResult<SandboxPlan> {
        if annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("container") {
            if let Some(pod) = annotations.get(SANDBOX_ID) {
                let owner = self.task(pod).map_err(|_| {
                    status(
                        ttrpc::Code::FAILED_PRECONDITION,
                        format!("the pod's sandbox {pod} has no task in this shim: its VM is gone"),
                    )
                })?;
                return Ok(SandboxPlan::JoinVm {
                    owner: format!("containerd/{}/{pod}", self.namespace),
                    owner_name: pod.clone(),
                    owner_dir: owner.bundle.clone(),
                });
            }
        }
        let (mem_mib, vcpus) = moat_sandbox::vm_size(limits);
        Ok(SandboxPlan::Vm { mem_mib, vcpus })
    }

    /// A new task's isolation: the runtime's name, else the `ConfigPath`
    /// runtime option's `default_isolation`, else moat's configured default.
    fn task_isolation(&self, req: &api::CreateTaskRequest) -> TtrpcResult<Isolation> {
        if self.named {
            return Ok(self.isolation);
        }
        let invalid = |e: String| status(ttrpc::Code::INVALID_ARGUMENT, e);
        let config = match req.options.as_ref() {
            Some(o) => config_path_option(&o.type_url, &o.value).map_err(invalid)?,
            None => None,
        };
        configured_default(config.as_deref().map(Path::new)).map_err(invalid)
    }

    /// The namespace's cgroup group and containerd's above it, each when
    /// empty (no task of any shim uses it).
    fn remove_groups(&self) {
        moat_runtime::cgroup::Cgroup::remove_group(&format!("containerd/{}", self.namespace));
        moat_runtime::cgroup::Cgroup::remove_group("containerd");
    }

    fn rootfs(bundle: &Path) -> PathBuf {
        bundle.join("rootfs")
    }
}

impl shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let (isolation, named) = own_isolation();
        Service {
            isolation,
            named,
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
            tasks: Arc::default(),
            publisher: None,
        }
    }

    fn start_shim(&mut self, opts: shim::StartOpts) -> Result<String, shim::Error> {
        let bundle = std::env::current_dir().map_err(|e| shim::Error::Other(e.to_string()))?;
        let group = grouping(&bundle, &opts.id);
        // the grouping names the runtime too: a process and a hyperv shim
        // never share a pod's socket
        let group = format!("{group}-{}", self.isolation);
        let isolation = self.isolation.to_string();
        // a named runtime's isolation goes to the shim it spawns (the
        // symlink resolved); the generic one reads moat's configuration there
        let env = if self.named { vec![(ISOLATION_ENV, isolation.as_str())] } else { Vec::new() };
        let (_pid, address) = shim::spawn(opts, &group, env)?;
        // the bundle's `address`: how containerd finds the shim again after
        // its own restart
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        // after a shim died (containerd runs `delete` in the bundle): unmount
        // the rootfs it mounted, remove its cgroup
        let bundle = std::env::current_dir().map_err(|e| shim::Error::Other(e.to_string()))?;
        crate::rootfs::unmount(&Self::rootfs(&bundle));
        // the task's cgroup (its record in the bundle): what is left in it
        // is killed, then it goes, and the namespace's group if empty
        if let Some(cg) = moat_sandbox::local::read_cgroup(&bundle) {
            if let Err(e) = cg.destroy() {
                log::warn!("{e}");
            }
        }
        self.remove_groups();
        let mut r = DeleteResponse::new();
        r.exit_status = 137;
        r.exited_at = Some(timestamp(SystemTime::now())).into();
        Ok(r)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let mut s = self.clone();
        s.publisher = Some(Arc::new(Mutex::new(publisher)));
        s
    }
}

impl shim::Task for Service {
    fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(status(ttrpc::Code::UNIMPLEMENTED, "moat does not restore checkpoints"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let rootfs = Self::rootfs(&bundle);
        let isolation = self.task_isolation(&req)?;
        let hyperv = isolation == Isolation::Hyperv;
        let mut converted =
            moat_runtime::oci::load(&bundle).map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e.to_string()))?;
        if hyperv {
            // the VM mounts the snapshotter's overlay in its share itself
            let mounts: Vec<(String, Vec<String>)> =
                req.rootfs.iter().map(|m| (m.type_.clone(), m.options.clone())).collect();
            converted.spec.rootfs =
                crate::rootfs::overlay(&mounts).map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e))?;
        } else {
            for m in &req.rootfs {
                crate::rootfs::mount(&m.type_, &m.source, &m.options, &rootfs)
                    .map_err(|e| status(ttrpc::Code::INTERNAL, format!("mount the rootfs: {e}")))?;
            }
        }
        let annotations = std::mem::take(&mut converted.annotations);
        let undo = || {
            if !req.rootfs.is_empty() && !hyperv {
                crate::rootfs::unmount(&rootfs);
            }
        };
        let plan = ContainerPlan {
            // the cgroup's name below moat's: containerd's containers in a
            // tree of their own, apart from moat's (the intermediate levels
            // are plain directories: a v1 devices group with children
            // cannot be configured again)
            id: format!("containerd/{}/{}", self.namespace, req.id),
            dir: bundle.clone(),
            spec: converted.spec,
            limits: converted.limits,
            stdin: !req.stdin.is_empty(),
            endpoints: Vec::new(),
            sandbox: SandboxPlan::Local,
            group: None,
        };
        let plan = match hyperv {
            true => ContainerPlan { sandbox: self.vm_of(&annotations, &plan.limits)?, ..plan },
            false => plan,
        };
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let me = self.clone();
        let exited = Box::new(move |t: &Task, exec: &str, st: &TaskState| {
            if st.oom_killed {
                // before the exit: the CRI records the reason (OOMKilled) from it
                let mut oom = TaskOOM::new();
                oom.container_id = t.id.clone();
                me.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(oom));
            }
            let mut e = TaskExit::new();
            e.container_id = t.id.clone();
            e.id = if exec.is_empty() { t.id.clone() } else { exec.to_string() };
            e.pid = st.pid;
            if let Some((code, at)) = st.exit {
                e.exit_status = code;
                e.exited_at = Some(timestamp(at)).into();
            }
            me.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(e));
        });
        let task = match Task::create(&req.id, plan, vm_options(), bundle.clone(), stdio, exited) {
            Ok(t) => t,
            Err(e) => {
                undo();
                return Err(failed(e));
            }
        };
        if let Ok(mut t) = self.tasks.lock() {
            t.insert(req.id.clone(), task);
        }
        let mut ev = TaskCreate::new();
        ev.container_id = req.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev));
        Ok(api::CreateTaskResponse { pid: 0, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let t = self.task(&req.id)?;
        let pid = t.start(&req.exec_id).map_err(failed)?;
        if req.exec_id.is_empty() {
            let mut ev = TaskStart::new();
            ev.container_id = req.id.clone();
            ev.pid = pid;
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev));
        } else {
            let mut ev = TaskExecStarted::new();
            ev.container_id = req.id.clone();
            ev.exec_id = req.exec_id.clone();
            ev.pid = pid;
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev));
        }
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let t = self.task(&req.id)?;
        let json = req.spec.as_ref().map(|a| a.value.as_slice()).unwrap_or_default();
        let spec = moat_runtime::oci::exec(json, !req.stdin.is_empty())
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e.to_string()))?;
        let stdio = Stdio { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
        t.add_exec(&req.exec_id, spec, stdio).map_err(failed)?;
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev));
        Ok(api::Empty::default())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let t = self.task(&req.id)?;
        t.resize(&req.exec_id, req.height as u16, req.width as u16).map_err(failed)?;
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let t = self.task(&req.id)?;
        if req.stdin {
            t.close_stdin(&req.exec_id).map_err(failed)?;
        }
        Ok(api::Empty::default())
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.backend_query(&req.id, Query::Pause)?;
        self.task(&req.id)?.set_paused(true);
        let mut ev = TaskPaused::new();
        ev.container_id = req.id.clone();
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev));
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.backend_query(&req.id, Query::Unpause)?;
        self.task(&req.id)?.set_paused(false);
        let mut ev = TaskResumed::new();
        ev.container_id = req.id.clone();
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev));
        Ok(api::Empty::default())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let json = req.resources.as_ref().map(|a| a.value.as_slice()).unwrap_or_default();
        let limits =
            moat_runtime::oci::resources(json).map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e.to_string()))?;
        self.backend_query(&req.id, Query::Update(limits))?;
        Ok(api::Empty::default())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let t = self.task(&req.id)?;
        let moat_proto::ShimReply::Usage(u) = t.query(Query::Stats).map_err(failed)? else {
            return Err(status(ttrpc::Code::INTERNAL, "the sandbox gave no usage"));
        };
        let mut m = Metrics::new();
        let mut pids = PidsStat::new();
        pids.current = u.pids;
        m.pids = Some(pids).into();
        let mut cpu = CPUStat::new();
        let mut usage = CPUUsage::new();
        usage.total = u.cpu_ns;
        cpu.usage = Some(usage).into();
        m.cpu = Some(cpu).into();
        let mut mem = MemoryStat::new();
        let mut entry = MemoryEntry::new();
        entry.usage = u.mem_usage;
        entry.limit = u.mem_limit;
        mem.usage = Some(entry).into();
        m.memory = Some(mem).into();
        let any = containerd_shim::util::convert_to_any(Box::new(m))
            .map_err(|e| status(ttrpc::Code::INTERNAL, e.to_string()))?;
        Ok(api::StatsResponse { stats: Some(any).into(), ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let t = self.task(&req.id)?;
        let s = t.state(&req.exec_id).ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        let mut r = api::StateResponse {
            id: if req.exec_id.is_empty() { t.id.clone() } else { req.exec_id.clone() },
            bundle: t.bundle.display().to_string(),
            pid: s.pid,
            stdin: s.stdio.stdin.clone(),
            stdout: s.stdio.stdout.clone(),
            stderr: s.stdio.stderr.clone(),
            terminal: s.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        let paused = t.paused.load(std::sync::atomic::Ordering::SeqCst);
        r.status = match s.status {
            Status::Created => ApiStatus::CREATED,
            Status::Running if paused => ApiStatus::PAUSED,
            Status::Running => ApiStatus::RUNNING,
            Status::Stopped => ApiStatus::STOPPED,
        }
        .into();
        if let Some((code, at)) = s.exit {
            r.exit_status = code;
            r.exited_at = Some(timestamp(at)).into();
        }
        Ok(r)
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let t = self.task(&req.id)?;
        let (code, at) = t.wait(&req.exec_id).map_err(failed)?;
        let mut r = api::WaitResponse { exit_status: code, ..Default::default() };
        r.exited_at = Some(timestamp(at)).into();
        Ok(r)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let t = self.task(&req.id)?;
        if req.all && req.exec_id.is_empty() && t.in_vm {
            // the task's cgroup on the host holds its VM, not its processes:
            // the signal goes to the container's init in the guest, whose
            // PID namespace ends with it
            t.signal("", req.signal as i32).map_err(failed)?;
            return Ok(api::Empty::default());
        }
        if req.all && req.exec_id.is_empty() {
            // every process of the task, as its cgroup lists them
            for pid in t.pids() {
                // SAFETY: a signal to a process of this task's cgroup
                unsafe { libc::kill(pid as i32, req.signal as i32) };
            }
            return Ok(api::Empty::default());
        }
        let s = t.state(&req.exec_id).ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        if s.status == Status::Running {
            t.signal(&req.exec_id, req.signal as i32).map_err(failed)?;
        } else if s.status == Status::Stopped {
            return Err(status(ttrpc::Code::NOT_FOUND, format!("process {} already finished", req.id)));
        }
        Ok(api::Empty::default())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let t = self.task(&req.id)?;
        let mut r = api::PidsResponse::default();
        for pid in t.pids() {
            r.processes.push(containerd_shim::protos::types::task::ProcessInfo { pid, ..Default::default() });
        }
        Ok(r)
    }

    fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        let t = self.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let s = t.state(&req.exec_id).ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            if s.status == Status::Running {
                return Err(status(ttrpc::Code::FAILED_PRECONDITION, format!("exec {} is running", req.exec_id)));
            }
            t.remove_exec(&req.exec_id);
            let (code, at) = s.exit.unwrap_or((0, SystemTime::now()));
            let mut r = api::DeleteResponse { pid: s.pid, exit_status: code, ..Default::default() };
            r.exited_at = Some(timestamp(at)).into();
            return Ok(r);
        }
        let s = t.main();
        if s.status == Status::Running {
            return Err(status(ttrpc::Code::FAILED_PRECONDITION, format!("task {} is running: kill it first", req.id)));
        }
        t.teardown();
        crate::rootfs::unmount(&Self::rootfs(&t.bundle));
        let last = self.tasks.lock().map(|mut all| {
            all.remove(&req.id);
            all.is_empty()
        });
        if last.unwrap_or(false) {
            self.remove_groups();
        }
        let (code, at) = s.exit.unwrap_or((0, SystemTime::now()));
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.id = req.id.clone();
        ev.pid = s.pid;
        ev.exit_status = code;
        ev.exited_at = Some(timestamp(at)).into();
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev));
        let mut r = api::DeleteResponse { pid: s.pid, exit_status: code, ..Default::default() };
        r.exited_at = Some(timestamp(at)).into();
        Ok(r)
    }

    fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let pid = self.task(&req.id).map(|t| t.main().pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, _req: api::CheckpointTaskRequest) -> TtrpcResult<api::Empty> {
        Err(status(ttrpc::Code::UNIMPLEMENTED, "moat does not checkpoint containers"))
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.tasks.lock().map(|t| t.is_empty()).unwrap_or(true) {
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_from_the_binary_name() {
        assert_eq!(isolation_of("/usr/bin/containerd-shim-moat-hyperv-v2"), Some(Isolation::Hyperv));
        assert_eq!(isolation_of("containerd-shim-moat-vm-v2"), Some(Isolation::Hyperv));
        assert_eq!(isolation_of("containerd-shim-moat-process-v2"), Some(Isolation::Process));
        assert_eq!(isolation_of("/usr/local/bin/containerd-shim-moat-v2"), None);
    }

    /// containerd's `runtimeoptions.v1.Options` as the CRI encodes it.
    #[test]
    fn config_path_from_the_runtime_options() {
        let mut v = vec![0x0a, 3];
        v.extend_from_slice(b"x/y");
        v.extend_from_slice(&[0x12, 17]);
        v.extend_from_slice(b"/etc/moat/k8.toml");
        let url = "type.googleapis.com/runtimeoptions.v1.Options";
        assert_eq!(config_path_option(url, &v), Ok(Some("/etc/moat/k8.toml".to_string())));
        assert_eq!(config_path_option(url, &[]), Ok(None));
        assert_eq!(config_path_option("containerd.runc.v1.Options", &v), Ok(None), "another runtime's options");
        // truncated or garbage: an error, not a panic
        assert!(config_path_option(url, &v[..10]).is_err());
        assert!(config_path_option(url, &[0xff, 0xff, 0xff]).is_err());
    }
}
