//! An OCI runtime bundle's `config.json` (what containerd hands a shim) as
//! moat's runtime [`Spec`] and [`Limits`]: one pure function, so a shim
//! never guesses and a fuzzer can drive it. What moat cannot honour is
//! refused by name (user namespaces, hooks, mount types it does not make),
//! never dropped. The standard mounts a runtime makes itself (`/proc`,
//! `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys`, `/sys/fs/cgroup`)
//! are moat's own.

use crate::spec::{Mount, NetNs, Process, Propagation, Rlimit, Rootfs, Seccomp, Spec};
use crate::RuntimeError;
use moat_spec::Limits;
use oci_spec::runtime as oci;
use std::path::{Path, PathBuf};

fn refuse(m: impl Into<String>) -> RuntimeError {
    RuntimeError::Invalid(m.into())
}

/// Mounts every runtime makes for itself, by destination and type.
const OWN_MOUNTS: &[(&str, &str)] = &[
    ("/proc", "proc"),
    ("/dev", "tmpfs"),
    ("/dev/pts", "devpts"),
    ("/dev/shm", "tmpfs"),
    ("/dev/mqueue", "mqueue"),
    ("/sys", "sysfs"),
    ("/sys/fs/cgroup", "cgroup"),
    ("/sys/fs/cgroup", "cgroup2"),
];

/// The converted bundle.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The runtime spec (rootfs: `bundle/<root.path>`).
    pub spec: Spec,
    /// `linux.resources` as moat's limits.
    pub limits: Limits,
    /// `linux.cgroupsPath`, when given.
    pub cgroups_path: Option<String>,
    /// `annotations` (CRI's pod grouping among them).
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Converts `config.json` of the bundle at `bundle`.
pub fn convert(s: &oci::Spec, bundle: &Path) -> Result<Converted, RuntimeError> {
    if s.hooks().as_ref().is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_container().as_ref().is_some_and(|v| !v.is_empty())
            || h.start_container().as_ref().is_some_and(|v| !v.is_empty())
            || h.poststart().as_ref().is_some_and(|v| !v.is_empty())
            || h.poststop().as_ref().is_some_and(|v| !v.is_empty())
    }) {
        return Err(refuse("OCI hooks are not supported by moat"));
    }
    let root = s.root().as_ref().ok_or_else(|| refuse("the bundle's config.json has no root"))?;
    let rootfs = if root.path().is_absolute() { root.path().clone() } else { bundle.join(root.path()) };
    let p = s.process().as_ref().ok_or_else(|| refuse("the bundle's config.json has no process"))?;
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(refuse("the bundle's process has no args"));
    }
    let user = p.user();
    let rlimits = p
        .rlimits()
        .iter()
        .flatten()
        .map(|r| {
            let name = format!("{:?}", r.typ()).to_ascii_lowercase();
            let name = name.strip_prefix("rlimit").unwrap_or(&name).to_string();
            let resource = crate::spec::parse_ulimit(&format!("{name}=0"))
                .map(|x| x.resource)
                .map_err(|_| refuse(format!("rlimit {:?} is not supported", r.typ())))?;
            Ok(Rlimit { resource, soft: r.soft(), hard: r.hard() })
        })
        .collect::<Result<Vec<_>, RuntimeError>>()?;
    let capabilities = match p.capabilities().as_ref().and_then(|c| c.bounding().as_ref()) {
        Some(set) => {
            let mut v: Vec<u8> = set
                .iter()
                .filter_map(|c| {
                    let name = serde_json::to_value(c).ok()?.as_str()?.to_string();
                    name.parse::<caps::Capability>().ok().map(|c| c.index())
                })
                .collect();
            v.sort_unstable();
            v
        }
        None => Vec::new(),
    };
    let process = Process {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().display().to_string(),
        user: format!("{}:{}", user.uid(), user.gid()),
        tty: p.terminal().unwrap_or(false),
        rlimits,
        console_size: p.console_size().map(|b| (b.height() as u16, b.width() as u16)),
        group_add: user.additional_gids().iter().flatten().map(|g| g.to_string()).collect(),
        oom_score_adj: p.oom_score_adj().unwrap_or(0),
    };

    let mut mounts = Vec::new();
    // Docker's and containerd's default /dev/shm: 64 MiB
    let mut shm_size = 64 << 20;
    for m in s.mounts().iter().flatten() {
        let dest = m.destination().display().to_string();
        let typ = m.typ().clone().unwrap_or_default();
        let opts = m.options().clone().unwrap_or_default();
        if dest == "/dev/shm" && typ == "tmpfs" {
            if let Some(size) = opts.iter().find_map(|o| o.strip_prefix("size=")) {
                shm_size = tmpfs_size(size).ok_or_else(|| refuse(format!("/dev/shm: invalid size {size:?}")))?;
            }
        }
        if OWN_MOUNTS.iter().any(|(d, t)| *d == dest && *t == typ) {
            continue;
        }
        let bind = typ == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind");
        if bind {
            let source = m.source().clone().ok_or_else(|| refuse(format!("bind mount at {dest} has no source")))?;
            let propagation = opts
                .iter()
                .find_map(|o| Propagation::parse(o).filter(|_| o.contains("private") || o.contains("slave")))
                .unwrap_or_default();
            if opts.iter().any(|o| o == "shared" || o == "rshared") {
                return Err(refuse(format!("bind mount at {dest}: shared propagation is not supported")));
            }
            mounts.push(Mount::Bind { source, target: dest, readonly: opts.iter().any(|o| o == "ro"), propagation });
        } else if typ == "tmpfs" {
            // the data options; the flags are moat's (nosuid, nodev)
            let data: Vec<&str> = opts
                .iter()
                .map(String::as_str)
                .filter(|o| o.starts_with("size=") || o.starts_with("mode=") || o.starts_with("nr_") || *o == "ro")
                .collect();
            mounts.push(Mount::Tmpfs { target: dest, options: data.join(",") });
        } else {
            return Err(refuse(format!(
                "mount type {typ:?} at {dest} is not supported (moat makes bind and tmpfs mounts)"
            )));
        }
    }

    let linux = s.linux().as_ref();
    if linux.and_then(|l| l.devices().as_ref()).is_some_and(|d| !d.is_empty()) {
        return Err(refuse(
            "linux.devices (device nodes in the container) are not supported by the containerd shim yet",
        ));
    }
    let ns = |t: oci::LinuxNamespaceType| {
        linux.and_then(|l| l.namespaces().as_ref()).and_then(|v| v.iter().find(|n| n.typ() == t))
    };
    if ns(oci::LinuxNamespaceType::User).is_some() {
        return Err(refuse("user namespaces are not supported by moat"));
    }
    let join = |t| ns(t).and_then(|n| n.path().clone());
    let net = match ns(oci::LinuxNamespaceType::Network) {
        None => NetNs::Host,
        Some(n) => match n.path() {
            Some(p) => NetNs::Path(p.clone()),
            None => NetNs::New,
        },
    };
    let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
        // OCI's seccomp object has the keys of Docker's profile format
        Some(sc) => Seccomp::Profile(serde_json::to_string(sc).map_err(|e| refuse(format!("seccomp: {e}")))?),
        None => Seccomp::Unconfined,
    };
    let mut sysctls: Vec<(String, String)> =
        linux.and_then(|l| l.sysctl().clone()).unwrap_or_default().into_iter().collect();
    sysctls.sort();

    let limits = linux.and_then(|l| l.resources().as_ref()).map(limits_of).unwrap_or_default();

    let spec = Spec {
        rootfs: Rootfs::Dir(rootfs.clone()),
        rootfs_target: rootfs,
        readonly_rootfs: root.readonly().unwrap_or(false),
        process,
        hostname: s.hostname().clone().unwrap_or_default(),
        domainname: s.domainname().clone().unwrap_or_default(),
        mounts,
        capabilities,
        seccomp,
        no_new_privs: p.no_new_privileges().unwrap_or(false),
        masked_paths: linux.and_then(|l| l.masked_paths().clone()).unwrap_or_default(),
        readonly_paths: linux.and_then(|l| l.readonly_paths().clone()).unwrap_or_default(),
        net,
        pid_host: ns(oci::LinuxNamespaceType::Pid).is_none(),
        ipc_host: ns(oci::LinuxNamespaceType::Ipc).is_none(),
        uts_host: ns(oci::LinuxNamespaceType::Uts).is_none(),
        pid_join: join(oci::LinuxNamespaceType::Pid),
        ipc_join: join(oci::LinuxNamespaceType::Ipc),
        uts_join: join(oci::LinuxNamespaceType::Uts),
        cgroupns_host: ns(oci::LinuxNamespaceType::Cgroup).is_none(),
        sysctls,
        etc_files: Vec::new(),
        privileged: false,
        shm_size,
        interfaces: Vec::new(),
        devices: Vec::new(),
    };
    Ok(Converted {
        spec,
        limits,
        cgroups_path: linux.and_then(|l| l.cgroups_path().clone()).map(path_string),
        annotations: s.annotations().clone().unwrap_or_default().into_iter().collect(),
    })
}

/// A tmpfs `size=` value: bytes, or with a `k`, `m` or `g` suffix.
fn tmpfs_size(s: &str) -> Option<u64> {
    let (n, mul) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>().ok()?.checked_mul(mul)
}

fn path_string(p: PathBuf) -> String {
    p.display().to_string()
}

/// `linux.resources` as moat's limits.
fn limits_of(r: &oci::LinuxResources) -> Limits {
    let mut limits = Limits::default();

    if let Some(m) = r.memory() {
        limits.memory = m.limit().filter(|l| *l > 0);
        limits.memory_swap = m.swap().filter(|s| *s != 0);
        limits.memory_reservation = m.reservation().filter(|r| *r > 0);
        limits.swappiness = m.swappiness();
    }
    if let Some(c) = r.cpu() {
        if let (Some(q), Some(p)) = (c.quota().filter(|q| *q > 0), c.period().filter(|p| *p > 0)) {
            limits.cpus = Some(q as f64 / p as f64);
        }
        limits.cpu_shares = c.shares().filter(|s| *s > 0);
        limits.cpuset_cpus = c.cpus().clone().filter(|s| !s.is_empty());
        limits.cpuset_mems = c.mems().clone().filter(|s| !s.is_empty());
    }
    if let Some(pids) = r.pids() {
        limits.pids = Some(pids.limit()).filter(|l| *l > 0);
    }
    limits
}

/// containerd's `UpdateTaskRequest.resources` (the JSON of OCI
/// `linux.resources`) as moat's limits.
pub fn resources(json: &[u8]) -> Result<Limits, RuntimeError> {
    let r: oci::LinuxResources = serde_json::from_slice(json).map_err(|e| refuse(format!("invalid resources: {e}")))?;
    Ok(limits_of(&r))
}

/// An exec's process (containerd's `ExecProcessRequest.spec`, the JSON of
/// an OCI `process`) as moat's exec; `stdin` when containerd gave a stdin.
pub fn exec(json: &[u8], stdin: bool) -> Result<moat_spec::ExecSpec, RuntimeError> {
    let p: oci::Process = serde_json::from_slice(json).map_err(|e| refuse(format!("invalid exec process: {e}")))?;
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(refuse("the exec process has no args"));
    }
    let user = p.user();
    Ok(moat_spec::ExecSpec {
        args,
        env: p.env().clone().unwrap_or_default(),
        workdir: Some(p.cwd().display().to_string()).filter(|c| !c.is_empty()),
        user: Some(format!("{}:{}", user.uid(), user.gid())),
        tty: p.terminal().unwrap_or(false),
        stdin,
        size: p.console_size().map(|b| moat_spec::WinSize { rows: b.height() as u16, cols: b.width() as u16 }),
        ..Default::default()
    })
}

/// Reads and converts the bundle at `bundle` (its `config.json`).
pub fn load(bundle: &Path) -> Result<Converted, RuntimeError> {
    let text = std::fs::read(bundle.join("config.json"))
        .map_err(|e| refuse(format!("cannot read {}/config.json: {e}", bundle.display())))?;
    let s: oci::Spec =
        serde_json::from_slice(&text).map_err(|e| refuse(format!("invalid {}/config.json: {e}", bundle.display())))?;
    convert(&s, bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> Result<Converted, RuntimeError> {
        let s: oci::Spec = serde_json::from_value(v).map_err(|e| refuse(e.to_string()))?;
        convert(&s, Path::new("/b"))
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "process": {"args": ["sh", "-c", "true"], "env": ["PATH=/bin"], "cwd": "/w", "terminal": false,
                "user": {"uid": 1000, "gid": 100, "additionalGids": [5, 6]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024}],
                "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"]}, "noNewPrivileges": true, "oomScoreAdj": 5},
            "hostname": "h",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
                {"destination": "/data", "type": "bind", "source": "/srv/d", "options": ["rbind", "ro", "rslave"]},
                {"destination": "/t", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=65536k"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1"}],
                "resources": {"memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000, "shares": 512}, "pids": {"limit": 100}},
                "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
                "sysctl": {"net.ipv4.ip_forward": "1"},
                "cgroupsPath": "/kubepods/pod1/c1"
            }
        })
    }

    #[test]
    fn a_containerd_bundle() -> Result<(), RuntimeError> {
        let c = spec(base())?;
        let s = &c.spec;
        assert!(matches!(&s.rootfs, Rootfs::Dir(p) if p == Path::new("/b/rootfs")));
        assert!(s.readonly_rootfs && s.no_new_privs);
        assert_eq!(s.process.args, ["sh", "-c", "true"]);
        assert_eq!((s.process.user.as_str(), s.process.cwd.as_str()), ("1000:100", "/w"));
        assert_eq!(s.process.group_add, ["5", "6"]);
        assert_eq!(s.process.rlimits, [Rlimit { resource: libc::RLIMIT_NOFILE as i32, soft: 1024, hard: 2048 }]);
        assert_eq!(s.capabilities, [caps::Capability::CAP_CHOWN.index(), caps::Capability::CAP_KILL.index()]);
        assert_eq!(s.process.oom_score_adj, 5);
        assert_eq!(
            s.mounts,
            [
                Mount::Bind {
                    source: "/srv/d".into(),
                    target: "/data".into(),
                    readonly: true,
                    propagation: Propagation::Rslave
                },
                Mount::Tmpfs { target: "/t".into(), options: "size=65536k".into() },
            ]
        );
        assert_eq!(s.net, NetNs::Path("/var/run/netns/cni-1".into()));
        assert!(!s.pid_host && s.ipc_host && s.uts_host && s.cgroupns_host);
        assert_eq!((&s.ipc_join, &s.uts_join), (&None, &None));
        let mut v = base();
        v["linux"]["namespaces"][1] = serde_json::json!({"type": "ipc", "path": "/proc/7/ns/ipc"});
        v["linux"]["namespaces"][2] = serde_json::json!({"type": "uts", "path": "/proc/7/ns/uts"});
        v["linux"]["namespaces"][0] = serde_json::json!({"type": "pid", "path": "/proc/7/ns/pid"});
        let j = spec(v)?.spec;
        assert_eq!((j.ipc_join, j.uts_join), (Some("/proc/7/ns/ipc".into()), Some("/proc/7/ns/uts".into())));
        assert_eq!(j.pid_join, Some("/proc/7/ns/pid".into()));
        assert!(!j.ipc_host && !j.uts_host && !j.pid_host);
        assert_eq!(s.pid_join, None);
        assert_eq!(s.seccomp, Seccomp::Unconfined);
        assert_eq!(
            (c.limits.memory, c.limits.cpus, c.limits.cpu_shares, c.limits.pids),
            (Some(64 << 20), Some(0.5), Some(512), Some(100))
        );
        assert_eq!(c.cgroups_path.as_deref(), Some("/kubepods/pod1/c1"));
        assert_eq!(s.sysctls, [("net.ipv4.ip_forward".to_string(), "1".to_string())]);
        Ok(())
    }

    #[test]
    fn update_resources() -> Result<(), RuntimeError> {
        let l = resources(
            br#"{"memory": {"limit": 1048576}, "cpu": {"quota": 150000, "period": 100000}, "pids": {"limit": 9}}"#,
        )?;
        assert_eq!((l.memory, l.cpus, l.pids), (Some(1 << 20), Some(1.5), Some(9)));
        assert!(resources(b"\"x\"").is_err());
        Ok(())
    }

    #[test]
    fn an_exec_process() -> Result<(), RuntimeError> {
        let x = exec(
            br#"{"args": ["ls", "-l"], "env": ["A=1"], "cwd": "/w", "terminal": true, "user": {"uid": 5, "gid": 6}}"#,
            true,
        )?;
        assert_eq!(
            (x.args.as_slice(), x.env.as_slice()),
            (["ls".to_string(), "-l".into()].as_slice(), ["A=1".to_string()].as_slice())
        );
        assert_eq!((x.workdir.as_deref(), x.user.as_deref(), x.tty, x.stdin), (Some("/w"), Some("5:6"), true, true));
        assert!(exec(br#"{"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#, false).is_err());
        assert!(exec(b"not json", false).is_err());
        Ok(())
    }

    #[test]
    fn refusals_name_what() {
        let err = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = base();
            f(&mut v);
            spec(v).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(err(&|v| v["linux"]["namespaces"][0] = serde_json::json!({"type": "user"})).contains("user namespaces"));
        assert!(err(&|v| v["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/true"}]})).contains("hooks"));
        let e = err(&|v| v["mounts"][0] = serde_json::json!({"destination": "/x", "type": "nfs", "source": "h:/x"}));
        assert!(e.contains("mount type \"nfs\" at /x"), "{e}");
        assert!(err(&|v| v["process"]["args"] = serde_json::json!([])).contains("no args"));
    }

    /// A JSON value to put somewhere in a bundle's `config.json`.
    #[derive(Debug, Clone, bolero::TypeGenerator)]
    enum Leaf {
        Null,
        Bool(bool),
        Int(i64),
        Str(String),
        EmptyArray,
        EmptyObject,
        Remove,
    }

    /// Every path to a value in `v` (object keys and array indexes).
    fn paths(v: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(at.clone());
        let children: Vec<(String, &serde_json::Value)> = match v {
            serde_json::Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
            serde_json::Value::Array(a) => a.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
            _ => return,
        };
        for (k, c) in children {
            at.push(k);
            paths(c, at, out);
            at.pop();
        }
    }

    fn put(v: &mut serde_json::Value, path: &[String], leaf: &Leaf) {
        let Some((last, parents)) = path.split_last() else { return };
        let mut cur = v;
        for k in parents {
            cur = match cur {
                serde_json::Value::Object(m) => match m.get_mut(k) {
                    Some(c) => c,
                    None => return,
                },
                serde_json::Value::Array(a) => match k.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                    Some(c) => c,
                    None => return,
                },
                _ => return,
            };
        }
        let new = match leaf {
            Leaf::Null => serde_json::Value::Null,
            Leaf::Bool(b) => (*b).into(),
            Leaf::Int(i) => (*i).into(),
            Leaf::Str(s) => s.clone().into(),
            Leaf::EmptyArray => serde_json::json!([]),
            Leaf::EmptyObject => serde_json::json!({}),
            Leaf::Remove => {
                if let serde_json::Value::Object(m) = cur {
                    m.remove(last);
                }
                return;
            }
        };
        match cur {
            serde_json::Value::Object(m) => {
                m.insert(last.clone(), new);
            }
            serde_json::Value::Array(a) => {
                if let Some(slot) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                    *slot = new;
                }
            }
            _ => {}
        }
    }

    /// Fuzzed bundles (a real one with values replaced or removed anywhere)
    /// are converted or refused with an error, never a panic; what is
    /// converted keeps its promises (a process to run, a root under the bundle
    /// unless absolute).
    #[test]
    fn fuzzed_bundles_are_converted_or_refused() {
        let mut base = base();
        base["linux"]["namespaces"][1] = serde_json::json!({"type": "ipc", "path": "/proc/7/ns/ipc"});
        base["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]});
        base["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": "p1"});
        let mut all = Vec::new();
        paths(&base, &mut Vec::new(), &mut all);
        bolero::check!().with_type::<Vec<(u16, Leaf)>>().for_each(|muts| {
            let mut v = base.clone();
            for (i, leaf) in muts.iter().take(6) {
                put(&mut v, &all[*i as usize % all.len()], leaf);
            }
            if let Ok(c) = spec(v) {
                assert!(!c.spec.process.args.is_empty());
                if let Rootfs::Dir(p) = &c.spec.rootfs {
                    assert!(p.is_absolute(), "{p:?}");
                }
            }
        });
    }

    /// Raw bytes as `config.json`, an exec's process and `Update`'s resources.
    #[test]
    fn fuzzed_bytes_are_refused_never_a_panic() {
        bolero::check!().for_each(|bytes: &[u8]| {
            if let Ok(s) = serde_json::from_slice::<oci::Spec>(bytes) {
                let _ = convert(&s, Path::new("/b"));
            }
            let _ = exec(bytes, false);
            let _ = resources(bytes);
        });
    }
}
