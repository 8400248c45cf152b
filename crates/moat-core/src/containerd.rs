//! Tasks that containerd runs through moat's shim (`containerd-shim-moat-v2`):
//! the record the shim keeps in each task's bundle, and a listing of them
//! from containerd's state directory for `moat ps --namespace`. They are
//! containerd's containers, never in moat's store.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record's file name in a bundle.
pub const TASK_RECORD: &str = "moat-task.json";
/// containerd's default state directory.
pub const DEFAULT_STATE: &str = "/run/containerd";

/// What the shim records of a task's main process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// `process` or `hyperv`.
    pub isolation: String,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// Its PID (0 before start; a guest PID in a VM).
    pub pid: u32,
    /// Its exit status, once stopped.
    pub exit_code: Option<u32>,
}

impl TaskRecord {
    /// Its status as `moat ps` words it (`Up`, `Exited (3)`, `Created`, `Up (Paused)`).
    pub fn status_text(&self) -> String {
        match (self.status.as_str(), self.exit_code) {
            ("running", _) => "Up".into(),
            ("paused", _) => "Up (Paused)".into(),
            ("stopped", Some(c)) => format!("Exited ({c})"),
            ("stopped", None) => "Exited".into(),
            _ => "Created".into(),
        }
    }

    /// Its main process runs (paused or not).
    pub fn is_up(&self) -> bool {
        matches!(self.status.as_str(), "running" | "paused")
    }

    /// Writes it into `bundle` (replacing the old one atomically).
    pub fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let tmp = bundle.join(format!("{TASK_RECORD}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, bundle.join(TASK_RECORD))
    }
}

/// One of containerd's tasks that moat's shim runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerdTask {
    /// containerd's namespace.
    pub namespace: String,
    /// containerd's container ID.
    pub id: String,
    /// The process's arguments (the bundle's `config.json`).
    pub command: Vec<String>,
    /// The CRI pod's name, when the CRI made it.
    pub pod: Option<String>,
    /// What the shim recorded.
    pub record: TaskRecord,
}

/// The tasks of moat's shim under containerd's state directory `state`
/// (`<state>/io.containerd.runtime.v2.task/<namespace>/<id>`), of one
/// namespace or all, sorted by namespace and ID. Bundles of other shims,
/// and unreadable ones, are left out.
pub fn tasks(state: &Path, namespace: Option<&str>) -> Vec<ContainerdTask> {
    let root = state.join("io.containerd.runtime.v2.task");
    let mut out = Vec::new();
    let dirs = |p: &Path| -> Vec<(String, PathBuf)> {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect()
    };
    for (ns, nsdir) in dirs(&root) {
        if namespace.is_some_and(|n| n != ns) {
            continue;
        }
        for (id, bundle) in dirs(&nsdir) {
            let Some(record) = std::fs::read(bundle.join(TASK_RECORD))
                .ok()
                .and_then(|b| serde_json::from_slice::<TaskRecord>(&b).ok())
            else {
                continue;
            };
            let config: serde_json::Value = std::fs::read(bundle.join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let command = config["process"]["args"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            let pod = config["annotations"]["io.kubernetes.cri.sandbox-name"].as_str().map(String::from);
            out.push(ContainerdTask { namespace: ns.clone(), id, command, pod, record });
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_moats_tasks_by_namespace() {
        let d = std::env::temp_dir().join(format!("moat-ctd-test-{}", std::process::id()));
        let b = |ns: &str, id: &str| d.join("io.containerd.runtime.v2.task").join(ns).join(id);
        for (ns, id) in [("k8s.io", "b"), ("k8s.io", "a"), ("default", "t"), ("default", "runc-task")] {
            std::fs::create_dir_all(b(ns, id)).unwrap();
        }
        let r = TaskRecord { isolation: "hyperv".into(), status: "running".into(), pid: 7, exit_code: None };
        r.write(&b("k8s.io", "a")).unwrap();
        r.write(&b("k8s.io", "b")).unwrap();
        TaskRecord { isolation: "process".into(), status: "stopped".into(), pid: 9, exit_code: Some(3) }
            .write(&b("default", "t"))
            .unwrap();
        std::fs::write(
            b("k8s.io", "a").join("config.json"),
            r#"{"process":{"args":["sh","-c","x"]},"annotations":{"io.kubernetes.cri.sandbox-name":"web"}}"#,
        )
        .unwrap();
        let all = tasks(&d, None);
        let ids: Vec<(&str, &str)> = all.iter().map(|t| (t.namespace.as_str(), t.id.as_str())).collect();
        assert_eq!(ids, [("default", "t"), ("k8s.io", "a"), ("k8s.io", "b")], "runc's bundle is not moat's");
        assert_eq!(all[1].command, ["sh", "-c", "x"]);
        assert_eq!(all[1].pod.as_deref(), Some("web"));
        assert_eq!(all[0].record.exit_code, Some(3));
        assert_eq!(tasks(&d, Some("default")).len(), 1);
        assert!(tasks(&d.join("none"), None).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
