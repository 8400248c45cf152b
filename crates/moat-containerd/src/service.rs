//! containerd's shim v2 lifecycle (`start`, `delete`) and Task service,
//! over moat's sandbox layer: no engine, no SQLite; containerd owns the
//! records. One shim process serves every task of a grouping (a CRI pod's
//! containers share the sandbox ID, so `start` returns the same address).

use crate::task::{Status, Stdio, Task, TaskError, Tasks};
use containerd_shim as shim;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::Status as ApiStatus;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{api, Config, DeleteResponse, ExitSignal, Flags, TtrpcContext, TtrpcResult};
use moat_core::Isolation;
use moat_sandbox::backend::{ContainerPlan, SandboxPlan};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The annotation CRI sets on a pod's sandbox and containers.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The shim: its isolation type (from its binary's name), containerd's
/// namespace, and the tasks it serves.
#[derive(Clone)]
pub struct Service {
    isolation: Isolation,
    namespace: String,
    exit: Arc<ExitSignal>,
    tasks: Tasks,
    publisher: Option<Arc<Mutex<RemotePublisher>>>,
}

/// How `start` tells the shim it spawns (its binary, the symlink resolved)
/// which name containerd called.
const ISOLATION_ENV: &str = "MOAT_SHIM_ISOLATION";

/// The isolation a binary's name asks for: `containerd-shim-moat-hyperv-v2`,
/// `containerd-shim-moat-process-v2`, or `containerd-shim-moat-v2` (process,
/// moat's default).
pub fn isolation_of(argv0: &str) -> Isolation {
    let name = Path::new(argv0).file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.contains("-hyperv-") || name.contains("-vm-") {
        Isolation::Hyperv
    } else {
        Isolation::Process
    }
}

/// This process's isolation: what `start` passed on, else its own name.
fn own_isolation() -> Isolation {
    match std::env::var(ISOLATION_ENV).ok().and_then(|v| v.parse().ok()) {
        Some(i) => i,
        None => isolation_of(&std::env::args().next().unwrap_or_default()),
    }
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
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(p) = &self.publisher {
            if let Ok(p) = p.lock() {
                if let Err(e) = p.publish(shim::Context::default(), topic, &self.namespace, event) {
                    log::warn!("publish {topic}: {e}");
                }
            }
        }
    }

    fn task(&self, id: &str) -> TtrpcResult<Arc<Task>> {
        self.tasks
            .lock()
            .ok()
            .and_then(|t| t.get(id).cloned())
            .ok_or_else(|| status(ttrpc::Code::NOT_FOUND, format!("task {id} not found")))
    }

    fn rootfs(bundle: &Path) -> PathBuf {
        bundle.join("rootfs")
    }
}

impl shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            isolation: own_isolation(),
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
        let (_pid, address) = shim::spawn(opts, &group, vec![(ISOLATION_ENV, isolation.as_str())])?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, shim::Error> {
        // after a shim died: unmount the rootfs it mounted; its cgroup goes
        // with the next teardown of moat's containerd group
        let bundle = std::env::current_dir().map_err(|e| shim::Error::Other(e.to_string()))?;
        crate::rootfs::unmount(&Self::rootfs(&bundle));
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
        if self.isolation == Isolation::Hyperv {
            return Err(status(
                ttrpc::Code::UNIMPLEMENTED,
                "hyperv isolation through containerd is not implemented yet: use io.containerd.moat-process.v2",
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(status(ttrpc::Code::UNIMPLEMENTED, "moat does not restore checkpoints"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let rootfs = Self::rootfs(&bundle);
        for m in &req.rootfs {
            crate::rootfs::mount(&m.type_, &m.source, &m.options, &rootfs)
                .map_err(|e| status(ttrpc::Code::INTERNAL, format!("mount the rootfs: {e}")))?;
        }
        let undo = || {
            if !req.rootfs.is_empty() {
                crate::rootfs::unmount(&rootfs);
            }
        };
        let converted = match moat_runtime::oci::load(&bundle) {
            Ok(c) => c,
            Err(e) => {
                undo();
                return Err(status(ttrpc::Code::INVALID_ARGUMENT, e.to_string()));
            }
        };
        let plan = ContainerPlan {
            id: req.id.clone(),
            dir: bundle.clone(),
            spec: converted.spec,
            limits: converted.limits,
            stdin: !req.stdin.is_empty(),
            endpoints: Vec::new(),
            sandbox: SandboxPlan::Local,
            // containerd's containers in a tree of their own, apart from moat's
            group: Some((format!("containerd/{}", self.namespace), Default::default())),
        };
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let me = self.clone();
        let exited = Box::new(move |t: &Task, code: u32, at: SystemTime| {
            let mut e = TaskExit::new();
            e.container_id = t.id.clone();
            e.id = t.id.clone();
            e.pid = t.state().pid;
            e.exit_status = code;
            e.exited_at = Some(timestamp(at)).into();
            me.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(e));
        });
        let task = match Task::create(plan, bundle.clone(), stdio, exited) {
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
        if !req.exec_id.is_empty() {
            return Err(status(ttrpc::Code::UNIMPLEMENTED, "exec is not implemented yet"));
        }
        let t = self.task(&req.id)?;
        let pid = t.start().map_err(failed)?;
        let mut ev = TaskStart::new();
        ev.container_id = req.id.clone();
        ev.pid = pid;
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev));
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let t = self.task(&req.id)?;
        let s = t.state();
        let mut r = api::StateResponse {
            id: t.id.clone(),
            bundle: t.bundle.display().to_string(),
            pid: s.pid,
            stdin: t.stdio.stdin.clone(),
            stdout: t.stdio.stdout.clone(),
            stderr: t.stdio.stderr.clone(),
            terminal: t.stdio.terminal,
            ..Default::default()
        };
        r.status = match s.status {
            Status::Created => ApiStatus::CREATED,
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
        let (code, at) = t.wait();
        let mut r = api::WaitResponse { exit_status: code, ..Default::default() };
        r.exited_at = Some(timestamp(at)).into();
        Ok(r)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let t = self.task(&req.id)?;
        if t.state().status == Status::Running {
            t.signal(req.signal as i32).map_err(failed)?;
        }
        Ok(api::Empty::default())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let t = self.task(&req.id)?;
        let mut r = api::PidsResponse::default();
        let pid = t.state().pid;
        if pid != 0 {
            r.processes.push(containerd_shim::protos::types::task::ProcessInfo { pid, ..Default::default() });
        }
        Ok(r)
    }

    fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        let t = self.task(&req.id)?;
        let s = t.state();
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
            // the namespace's group, once no task of any shim uses it
            moat_runtime::cgroup::Cgroup::remove_group(&format!("containerd/{}", self.namespace));
            moat_runtime::cgroup::Cgroup::remove_group("containerd");
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
        let pid = self.task(&req.id).map(|t| t.state().pid).unwrap_or(0);
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
