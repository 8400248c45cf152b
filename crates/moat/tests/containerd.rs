//! containerd's shim v2 for moat (`containerd-shim-moat-v2`, issue #33),
//! driven by a real containerd (Debian's 1.6, task API v2) on private
//! sockets and directories, through its own `ctr` client: the image comes
//! from containerd's content store (imported, never pulled), the rootfs
//! from its snapshotter, stdio through its FIFOs.

#![allow(clippy::unwrap_used)]
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// A containerd of this test's own (root, state, sockets in a temporary
/// directory; the CRI plugin off), with moat's shim on its PATH under the
/// three runtime names. Dropping it ends its tasks, its shims and itself.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    /// CNI's bridge (CRI only), and the network namespaces there were before.
    bridge: Option<String>,
    netns_before: Vec<String>,
    /// containerd's namespace `ctr` uses: each test its own, as the tasks'
    /// cgroups (`moat/containerd/<namespace>/<id>`) are the host's
    ns: &'static str,
}

fn netns_list() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn shim_binary() -> PathBuf {
    // built beside moat (`make test` builds it first)
    let p = Path::new(env!("CARGO_BIN_EXE_moat")).with_file_name("containerd-shim-moat-v2");
    assert!(p.is_file(), "{} is not built: cargo build -p moat-containerd (make test does)", p.display());
    p
}

impl Containerd {
    fn start(ns: &'static str) -> Containerd {
        let mut c = Self::start_with(None);
        c.ns = ns;
        c
    }

    /// With `bridge`: the CRI plugin on, moat's runtimes as its handlers
    /// (`moat` process, `moat-hyperv` hyperv), CNI's bridge plugin on that
    /// bridge (a subnet of the test's own), the sandbox image `pause:test`;
    /// OOM scores no lower than containerd's own (hosts without
    /// CAP_SYS_RESOURCE, like this one, refuse the sandbox's -998).
    fn start_with(bridge: Option<(&str, &str)>) -> Containerd {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ctd");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new().prefix("c").tempdir_in(base).unwrap();
        let d = dir.path();
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for name in ["moat", "moat-process", "moat-hyperv"] {
            std::os::unix::fs::symlink(shim_binary(), bin.join(format!("containerd-shim-{name}-v2"))).unwrap();
        }
        let mut config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n{1}\
             [grpc]\n  address = \"{0}/c.sock\"\n[ttrpc]\n  address = \"{0}/c.sock.ttrpc\"\n",
            d.display(),
            if bridge.is_some() { "" } else { "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n" }
        );
        if let Some((br, subnet)) = bridge {
            let net = d.join("net.d");
            std::fs::create_dir_all(&net).unwrap();
            let conf = serde_json::json!({
                "cniVersion": "0.4.0", "name": br,
                "plugins": [{"type": "bridge", "bridge": br, "isGateway": true, "ipMasq": false,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": d.join("ipam")}}]
            });
            std::fs::write(net.join("10-moat-test.conflist"), conf.to_string()).unwrap();
            config += &format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"docker.io/library/pause:test\"\n\
                 stream_server_port = \"0\"\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"moat\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.moat]\n  runtime_type = \"io.containerd.moat-process.v2\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.moat-hyperv]\n  runtime_type = \"io.containerd.moat-hyperv.v2\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.moat-default]\n  runtime_type = \"io.containerd.moat.v2\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.moat-default.options]\n  ConfigPath = \"{}\"\n",
                net.display(),
                d.join("moat-config.toml").display()
            );
            // moat's config for the generic runtime: VMs by default
            std::fs::write(d.join("moat-config.toml"), "default_isolation = \"hyperv\"\n").unwrap();
        }
        std::fs::write(d.join("config.toml"), config).unwrap();
        let child = Self::spawn(d);
        let c = Containerd {
            dir,
            child,
            bridge: bridge.map(|(b, _)| b.to_string()),
            netns_before: netns_list(),
            ns: "default",
        };
        eventually("containerd answers", || c.ctr(&["version"]).status.success());
        c
    }

    fn spawn(d: &Path) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("containerd.log")).unwrap();
        let path = format!("{}:{}", d.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            // the guest kernel moat's tests share (the shim reads moat's variables)
            .env("MOAT_KERNEL_DIR", kernel_dir())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (make deps installs Debian's)")
    }

    /// containerd dies (SIGKILL) and starts again on the same root and state.
    fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path());
        eventually("containerd answers again", || self.ctr(&["version"]).status.success());
    }

    /// The end of containerd's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr").arg("-a").arg(self.sock()).args(["-n", self.ns]).args(args).output().expect("ctr")
    }

    /// `ctr` in CRI's namespace.
    fn ctr_k8s(&self, args: &[&str]) -> Output {
        Command::new("ctr").arg("-a").arg(self.sock()).args(["-n", "k8s.io"]).args(args).output().expect("ctr")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(o.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The shims this containerd started (their command line names its socket).
    fn shims(&self) -> Vec<u32> {
        host_pids_matching(&format!("-address {}", self.sock().display()))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for ns in [self.ns, "k8s.io"] {
            let ctr = |args: &[&str]| {
                Command::new("ctr").arg("-a").arg(self.sock()).args(["-n", ns]).args(args).output().ok()
            };
            let tasks = ctr(&["tasks", "ls", "-q"]).map(|o| o.stdout).unwrap_or_default();
            for t in String::from_utf8_lossy(&tasks).lines() {
                let _ = ctr(&["tasks", "kill", "-s", "SIGKILL", t]);
                let _ = ctr(&["tasks", "delete", "-f", t]);
            }
            let cs = ctr(&["containers", "ls", "-q"]).map(|o| o.stdout).unwrap_or_default();
            for c in String::from_utf8_lossy(&cs).lines() {
                let _ = ctr(&["containers", "rm", c]);
            }
        }
        for pid in self.shims() {
            // SAFETY: SIGKILL to a shim of this test's containerd
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // what CNI made for this test's pods: their network namespaces, the bridge
        // (only a CRI containerd's: another test's pods may be running)
        let cri = self.bridge.is_some();
        for n in netns_list().into_iter().filter(|n| cri && !self.netns_before.contains(n) && n.starts_with("cni-")) {
            let p = Path::new("/var/run/netns").join(&n);
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&p);
        }
        if let Some(b) = &self.bridge {
            let _ = Command::new("ip").args(["link", "del", b]).output();
        }
        // the snapshotter's and the bundles' mounts under the directory
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&*self.dir.path().to_string_lossy()))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

const IMAGE: &str = "docker.io/library/busybox:latest";

fn text(o: &Output) -> (String, String, Option<i32>) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned(), o.status.code())
}

fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let p = e.path().join("moat").join(path);
        if p.exists() {
            found.push(p);
        }
    }
    if Path::new("/sys/fs/cgroup/moat").join(path).exists() {
        found.push(Path::new("/sys/fs/cgroup/moat").join(path));
    }
    found
}

#[test]
fn ctr_runs_process_containers_through_moats_shim() {
    let mut c = Containerd::start("ctr-proc");
    c.ok(&["images", "import", busybox_archive().0.to_str().unwrap()]);
    assert_eq!(c.ok(&["images", "ls", "-q"]), format!("{IMAGE}\n"));

    // a container's stdio, exit status and namespaces
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.moat-process.v2",
        IMAGE,
        "t1",
        "sh",
        "-c",
        "echo out; echo err >&2; echo pid $$; exit 3",
    ]);
    assert_eq!(text(&o), ("out\npid 1\n".into(), "err\n".into(), Some(3)));
    // the default runtime name is process isolation too
    let o = c.ctr(&["run", "--rm", "--runtime", "io.containerd.moat.v2", IMAGE, "t0", "cat", "/proc/self/cgroup"]);
    let (out, _, code) = text(&o);
    assert_eq!(code, Some(0));
    assert!(
        out.lines().any(|l| l.ends_with("/moat/containerd/ctr-proc/t0")),
        "its own cgroup in moat's containerd tree: {out}"
    );

    // a detached task: the kernel's view of its process, signals, delete
    c.ok(&["run", "-d", "--runtime", "io.containerd.moat-process.v2", IMAGE, "t2", "sleep", "1000"]);
    let ls = c.ok(&["tasks", "ls"]);
    let row = ls.lines().find(|l| l.starts_with("t2 ")).unwrap_or_default().to_string();
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields.get(2), Some(&"RUNNING"), "{ls}");
    let pid: u32 = fields[1].parse().unwrap();
    let host_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(host_cgroup.lines().any(|l| l.ends_with("/moat/containerd/ctr-proc/t2")), "{host_cgroup}");
    let ps: Vec<Vec<String>> =
        c.ok(&["tasks", "ps", "t2"]).lines().map(|l| l.split_whitespace().map(String::from).collect()).collect();
    assert_eq!(ps, [vec!["PID".to_string(), "INFO".into()], vec![pid.to_string(), "-".into()]]);
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "one shim for t2");
    // its rootfs is mounted in the shim's own mount namespace, not the host's
    let shim_mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", shims[0])).unwrap();
    assert!(shim_mounts.contains("/t2/rootfs "), "the positive control: {shim_mounts}");
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains("/t2/rootfs "), "the host's mount table is untouched");
    // containerd dies and comes back: the task runs on, still managed
    c.kill_and_restart();
    assert_eq!(c.shims(), shims, "the same shim");
    let ls = c.ok(&["tasks", "ls"]);
    assert!(
        ls.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["t2", &pid.to_string(), "RUNNING"]),
        "{ls}\ncontainerd's log:\n{}",
        c.log_tail()
    );
    assert_eq!(c.shims(), shims, "the same shim");
    // moat's own reset leaves containerd's tasks alone: not in its records
    let r = Root::new();
    r.ok(&["system", "reset", "--force"]);
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "t2's process runs on");
    assert!(!cgroup_dirs("containerd/ctr-proc/t2").is_empty(), "and its cgroup stays");
    // containerd's containers are not moat's: listed only when asked for
    let state = c.dir.path().join("state");
    let ctd_ps = |args: &[&str]| -> Vec<Vec<String>> {
        let all = [&["ps", "--containerd-state", state.to_str().unwrap()], args].concat();
        r.ok(&all).lines().map(|l| l.split_whitespace().map(String::from).collect()).collect()
    };
    let header: Vec<String> =
        ["NAMESPACE", "CONTAINER", "ID", "COMMAND", "STATUS", "ISOLATION", "POD"].map(String::from).to_vec();
    let t2_row = |status: &[&str]| {
        let mut row: Vec<String> = ["ctr-proc", "t2", "\"sleep", "1000\""].map(String::from).to_vec();
        row.extend(status.iter().map(|s| s.to_string()));
        row.push("process".into());
        row
    };
    assert_eq!(ctd_ps(&["--namespace", "ctr-proc"]), [header.clone(), t2_row(&["Up"])]);
    assert_eq!(ctd_ps(&["--all-namespaces"]), [header.clone(), t2_row(&["Up"])]);
    assert_eq!(ctd_ps(&["--namespace", "other"]), vec![header.clone()]);
    assert_eq!(r.ok(&["ps", "-aq"]), "", "moat's own list");
    // an exec: its own stdio and exit status, in the task's namespaces
    let o = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "t2",
        "sh",
        "-c",
        "echo in-exec; set -- /proc/[0-9]*; echo $#; exit 4",
    ]);
    assert_eq!(text(&o), ("in-exec\n2\n".into(), String::new(), Some(4)), "the exec sees sleep and itself");
    // a pod's way in: another task joins t2's IPC and UTS namespaces by
    // path (CRI's containers join their sandbox's), as the kernel says
    let ns_of = |n: &str| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap().display().to_string();
    let (ipc, uts) = (format!("ipc:/proc/{pid}/ns/ipc"), format!("uts:/proc/{pid}/ns/uts"));
    let joined = ["run", "--rm", "--runtime", "io.containerd.moat-process.v2", "--with-ns", &ipc, "--with-ns", &uts];
    let o = c.ctr(
        &[&joined[..], &[IMAGE, "t4", "sh", "-c", "readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts"]].concat(),
    );
    assert_eq!(text(&o), (format!("{}\n{}\n", ns_of("ipc"), ns_of("uts")), String::new(), Some(0)));
    // the control: a task of its own has its own
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.moat-process.v2",
        IMAGE,
        "t5",
        "readlink",
        "/proc/self/ns/ipc",
    ]);
    let (own, _, code) = text(&o);
    assert_eq!(code, Some(0));
    assert!(own.starts_with("ipc:[") && own.trim() != ns_of("ipc"), "{own}");
    // pause and resume: the kernel's freezer, and containerd's status
    c.ok(&["tasks", "pause", "t2"]);
    assert!(c.ok(&["tasks", "ls"]).lines().any(|l| l.starts_with("t2 ") && l.ends_with("PAUSED")));
    let frozen = |cg: &Path| {
        std::fs::read_to_string(cg.join("freezer.state")).map(|s| s.trim() == "FROZEN").unwrap_or(false)
            || std::fs::read_to_string(cg.join("cgroup.freeze")).map(|s| s.trim() == "1").unwrap_or(false)
    };
    assert!(cgroup_dirs("containerd/ctr-proc/t2").iter().any(|d| frozen(d)), "frozen in the kernel");
    c.ok(&["tasks", "resume", "t2"]);
    assert!(!cgroup_dirs("containerd/ctr-proc/t2").iter().any(|d| frozen(d)), "thawed");
    // metrics containerd decodes (cgroup v1 Metrics): one process
    let m = c.ok(&["tasks", "metrics", "t2"]);
    assert!(m.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["pids.current", "1"]), "{m}");
    // PID 1 ignores SIGTERM without a handler (as under runc): it runs on
    c.ok(&["tasks", "kill", "t2"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // every process of the task (kill --all)
    c.ok(&["tasks", "kill", "-a", "-s", "SIGKILL", "t2"]);
    eventually("t2 stops", || c.ok(&["tasks", "ls"]).lines().any(|l| l.starts_with("t2 ") && l.ends_with("STOPPED")));
    assert_eq!(ctd_ps(&["--namespace", "ctr-proc"]), vec![header.clone()], "running ones only");
    assert_eq!(ctd_ps(&["--namespace", "ctr-proc", "-a"]), [header.clone(), t2_row(&["Exited", "(137)"])]);
    let e = c.ctr(&["tasks", "delete", "t2"]);
    let (_, err, code) = text(&e);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("exit code 137"), "ctr reports the SIGKILL status: {err}");
    c.ok(&["containers", "rm", "t2"]);
    assert!(cgroup_dirs("containerd/ctr-proc/t2").is_empty(), "the task's cgroup is gone");
    assert!(cgroup_dirs("containerd/ctr-proc").is_empty(), "and the namespace's group with the last task");
    eventually("the shim exits", || c.shims().is_empty());
    // a terminal (ctr on a pty of `script`'s): the task's stdio is a pty of its own
    let o = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "ctr -a {} -n {} run --rm -t --runtime io.containerd.moat-process.v2 {IMAGE} t6 sh -c 'tty; exit 6'",
            c.sock().display(),
            c.ns
        ))
        .arg("/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    // (the terminals' line discipline adds carriage returns: ignored)
    let (out, err, code) = text(&o);
    assert_eq!((out.replace('\r', ""), err, code), ("/dev/pts/0\n".into(), String::new(), Some(6)));
    eventually("t6's shim exits", || c.shims().is_empty());
}

/// The hyperv runtime name: the task runs in a utility VM with moat's guest
/// kernel, from containerd's overlay snapshot, and nothing of the VM stays.
#[test]
fn ctr_runs_hyperv_tasks_in_a_utility_vm_hyperv() {
    let c = Containerd::start("ctr-vm");
    c.ok(&["images", "import", busybox_archive().0.to_str().unwrap()]);
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.moat-hyperv.v2",
        IMAGE,
        "v1",
        "sh",
        "-c",
        "uname -r; echo pid $$; echo err >&2; exit 5",
    ]);
    assert_eq!(text(&o), (format!("{}\npid 1\n", guest_kernel_release()), "err\n".into(), Some(5)));
    eventually("the shim exits", || c.shims().is_empty());
    let bundles = c.dir.path().join("state");
    assert!(host_pids_matching(&bundles.display().to_string()).is_empty(), "no QEMU or virtiofsd of the task stays");
}

/// A CRI client (the kubelet's side) on containerd's socket.
struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
}

impl Cri {
    fn connect(sock: PathBuf) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let channel = rt
            .block_on(tonic::transport::Endpoint::try_from("http://[::]:50051").unwrap().connect_with_connector(
                tower::service_fn(move |_: tonic::transport::Uri| {
                    let sock = sock.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(sock).await?,
                        ))
                    }
                }),
            ))
            .unwrap();
        let runtime = k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel);
        Cri { rt, runtime }
    }
}

/// CRI's log lines (`TIME STREAM F TEXT`) as one stream's text.
fn cri_log(path: &Path, stream: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, ' ');
            let (_, s, _, text) = (f.next()?, f.next()?, f.next()?, f.next().unwrap_or(""));
            (s == stream).then(|| format!("{text}\n"))
        })
        .collect()
}

/// The children of process `ppid` whose command name starts with `comm`
/// (a shim's QEMUs).
fn children(ppid: u32, comm: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
            let ppid_field = stat[close + 2..].split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
            stat[open + 1..close].starts_with(comm) && ppid_field == Some(ppid)
        })
        .count()
}

/// One pod of the CRI test: its handler, names and what CRI answered.
struct Pod {
    handler: &'static str,
    name: &'static str,
    shared_pid: bool,
    /// Runs in a utility VM (the `moat-hyperv` handler, or `moat-default`
    /// configured so).
    in_vm: bool,
    id: String,
    ip: String,
    app: String,
}

impl Cri {
    fn status(&mut self, container: &str) -> k8s_cri::v1::ContainerStatus {
        use k8s_cri::v1 as cri;
        let req = cri::ContainerStatusRequest { container_id: container.into(), verbose: false };
        self.rt.block_on(self.runtime.container_status(req)).unwrap().into_inner().status.unwrap_or_default()
    }

    /// Waits (at most a minute: a VM under TCG) for a container to exit; its exit code.
    fn exit_code(&mut self, container: &str) -> i32 {
        for _ in 0..3000 {
            let s = self.status(container);
            if s.state == k8s_cri::v1::ContainerState::ContainerExited as i32 {
                return s.exit_code;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("container {container} did not exit");
    }

    fn container(&mut self, pod: &str, pod_config: &k8s_cri::v1::PodSandboxConfig, name: &str, script: &str) -> String {
        self.container_with(pod, pod_config, name, script, None)
    }

    fn container_with(
        &mut self,
        pod: &str,
        pod_config: &k8s_cri::v1::PodSandboxConfig,
        name: &str,
        script: &str,
        resources: Option<k8s_cri::v1::LinuxContainerResources>,
    ) -> String {
        use k8s_cri::v1 as cri;
        // the pod's PID mode (the kubelet gives its containers the pod's)
        let pid_mode = pod_config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: IMAGE.into(), ..Default::default() }),
            command: vec!["sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: pid_mode,
                    ..Default::default()
                }),
                resources,
            }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = self.rt.block_on(self.runtime.create_container(req)).unwrap().into_inner().container_id;
        let start = cri::StartContainerRequest { container_id: id.clone() };
        self.rt.block_on(self.runtime.start_container(start)).unwrap();
        id
    }

    /// A pod as the kubelet makes one (each container its own PID
    /// namespace, the kubelet's default, or with `shared_pid` the pod's:
    /// `shareProcessNamespace`), with `name` as its hostname and log
    /// directory, and its first container, `app`: it prints its kernel,
    /// hostname and address, then serves a page on port 8080.
    fn pod(
        &mut self,
        handler: &'static str,
        name: &'static str,
        shared_pid: bool,
        logs: &Path,
    ) -> (Pod, k8s_cri::v1::PodSandboxConfig) {
        use k8s_cri::v1 as cri;
        let dir = logs.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mode = if shared_pid { cri::NamespaceMode::Pod } else { cri::NamespaceMode::Container };
        let own_pid = Some(cri::NamespaceOption { pid: mode as i32, ..Default::default() });
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: dir.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: own_pid,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() };
        let id = self.rt.block_on(self.runtime.run_pod_sandbox(req)).unwrap().into_inner().pod_sandbox_id;
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: false };
        let status = self.rt.block_on(self.runtime.pod_sandbox_status(req)).unwrap().into_inner();
        let ip = status.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
        let app = self.container(
            &id,
            &config,
            "app",
            &format!(
                "uname -r; hostname; ip -4 -o addr show eth0 | awk '{{print $4}}'; echo err >&2; \
                 mkdir /www && echo hello from {name} > /www/index.html && exec httpd -f -p 8080 -h /www"
            ),
        );
        (Pod { handler, name, shared_pid, in_vm: handler != "moat", id, ip, app }, config)
    }
}

/// An HTTP GET of `/` from this host; the body.
fn http_get(ip: &str, port: u16) -> String {
    use std::io::{Read, Write};
    let mut last = String::new();
    for _ in 0..500 {
        match std::net::TcpStream::connect((ip, port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                let mut r = String::new();
                let _ = s.read_to_string(&mut r);
                return r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{ip}:{port} does not answer: {last}");
}

/// Pods through the CRI as the kubelet drives them, one with moat's process
/// handler and one with its VM handler, at once in one containerd: one
/// shim per pod, one utility VM for the VM pod's two containers (none for
/// the other), CNI's address carried into the VM, the containers reaching
/// each other on localhost, the pod's address reachable from the host,
/// ExecSync, exit codes, CRI's log files; nothing left afterwards.
#[test]
fn cri_pods_in_both_isolation_types_at_once_hyperv() {
    use k8s_cri::v1 as cri;
    let (bridge, subnet) = ("mtcri0", "10.214.0.0/24");
    let c = Containerd::start_with(Some((bridge, subnet)));
    // the images in CRI's namespace: busybox, and a sandbox image that sleeps
    let r = root_with_busybox();
    r.ok(&["create", "--name", "p", "busybox", "sleep", "1000000"]);
    r.ok(&["commit", "-c", "CMD [\"sleep\", \"1000000\"]", "p", "pause:test"]);
    let pause = r.path().join("pause.tar");
    r.ok(&["save", "pause:test", "-o", pause.to_str().unwrap()]);
    for tar in [busybox_archive().0.clone(), pause] {
        let o = c.ctr_k8s(&["images", "import", tar.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let mut k = Cri::connect(c.sock());
    let logs = c.dir.path().join("logs");
    let host_kernel = String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    let pods = [
        k.pod("moat", "proc-pod", false, &logs),
        k.pod("moat", "shared-pod", true, &logs),
        k.pod("moat-hyperv", "vm-pod", true, &logs),
        // io.containerd.moat.v2 with a ConfigPath option whose default is hyperv
        k.pod("moat-default", "default-pod", false, &logs),
    ];
    assert_eq!(c.shims().len(), 4, "one shim per pod");
    for (p, config) in &pods {
        let prefix = &subnet[..subnet.rfind('.').unwrap()];
        assert!(p.ip.starts_with(prefix), "{}: CNI's address from {subnet}: {:?}", p.handler, p.ip);
        // a second container reaches the first on localhost
        let client = k.container(
            &p.id,
            config,
            "client",
            "for i in $(seq 300); do wget -q -O - http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1",
        );
        assert_eq!(k.exit_code(&client), 0, "{}: the client's exit code", p.handler);
        let dir = logs.join(p.name);
        assert_eq!(cri_log(&dir.join("client.log"), "stdout"), format!("hello from {}\n", p.name), "{}", p.name);
        // the pod's address from the host, through CNI's bridge
        assert_eq!(http_get(&p.ip, 8080), format!("hello from {}\n", p.name), "{}", p.name);
        // ExecSync in the running container
        let req = cri::ExecSyncRequest {
            container_id: p.app.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo exec in $(hostname); tr '\\0' ' ' < /proc/1/cmdline; echo; echo e >&2; exit 3".into(),
            ],
            timeout: 60,
        };
        // PID 1 as the exec sees it: the app's own, or the pod's sandbox
        let pid1 = if p.shared_pid { "sleep 1000000" } else { "httpd -f -p 8080 -h /www" };
        let x = k.rt.block_on(k.runtime.exec_sync(req)).unwrap_or_else(|e| panic!("{}: {e}", p.handler)).into_inner();
        assert_eq!(
            (
                String::from_utf8_lossy(&x.stdout).into_owned(),
                String::from_utf8_lossy(&x.stderr).into_owned(),
                x.exit_code
            ),
            (format!("exec in {}\n{pid1} \n", p.name), "e\n".to_string(), 3),
            "{}",
            p.handler
        );
        let kernel = if p.in_vm { format!("{}\n", guest_kernel_release()) } else { host_kernel.clone() };
        assert_eq!(
            cri_log(&dir.join("app.log"), "stdout"),
            format!("{kernel}{}\n{}/{}\n", p.name, p.ip, &subnet[subnet.rfind('/').unwrap() + 1..]),
            "{}: the app's kernel, the pod's hostname and CNI's address",
            p.handler
        );
        assert_eq!(cri_log(&dir.join("app.log"), "stderr"), "err\n", "{}", p.name);
        // new limits through the CRI, as the kernel applies them: the task's
        // cgroup on this host, cgroup v2's memory.max inside the guest
        let limit = 96u64 << 20;
        let req = cri::UpdateContainerResourcesRequest {
            container_id: p.app.clone(),
            linux: Some(cri::LinuxContainerResources { memory_limit_in_bytes: limit as i64, ..Default::default() }),
            ..Default::default()
        };
        k.rt.block_on(k.runtime.update_container_resources(req)).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        let applied = if p.in_vm {
            let script = "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max";
            let req = cri::ExecSyncRequest {
                container_id: p.app.clone(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 60,
            };
            let x = k.rt.block_on(k.runtime.exec_sync(req)).unwrap().into_inner();
            String::from_utf8_lossy(&x.stdout).trim().to_string()
        } else {
            let dirs = cgroup_dirs(&format!("containerd/k8s.io/{}", p.app));
            dirs.iter()
                .find_map(|d| {
                    std::fs::read_to_string(d.join("memory.limit_in_bytes"))
                        .or_else(|_| std::fs::read_to_string(d.join("memory.max")))
                        .ok()
                })
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        assert_eq!(applied, limit.to_string(), "{}: the memory limit in the kernel", p.name);
        // usage as containerd decodes the shim's metrics
        let req = cri::ContainerStatsRequest { container_id: p.app.clone() };
        let stats = k.rt.block_on(k.runtime.container_stats(req)).unwrap().into_inner().stats.unwrap_or_default();
        let mem = stats.memory.and_then(|m| m.working_set_bytes).map(|v| v.value).unwrap_or(0);
        let cpu = stats.cpu.and_then(|c| c.usage_core_nano_seconds).map(|v| v.value).unwrap_or(0);
        assert!(mem > 0 && mem < limit && cpu > 0, "{}: memory {mem}, cpu {cpu}", p.name);
        // a container over its memory limit: the kernel's OOM killer, and
        // CRI's reason from the shim's TaskOOM event
        let limit = cri::LinuxContainerResources { memory_limit_in_bytes: 32 << 20, ..Default::default() };
        let hog = k.container_with(&p.id, config, "hog", "head -c 200m /dev/zero | tail", Some(limit));
        assert_eq!(k.exit_code(&hog), 137, "{}", p.name);
        assert_eq!(k.status(&hog).reason, "OOMKilled", "{}", p.name);
    }
    // one VM for the VM pod (its sandbox and both containers), none for the other
    let qemus: Vec<usize> = c.shims().iter().map(|pid| children(*pid, "qemu-system")).collect();
    let mut sorted = qemus.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 0, 1, 1], "QEMUs per pod shim");
    for (p, _) in &pods {
        let req = cri::StopContainerRequest { container_id: p.app.clone(), timeout: 1 };
        k.rt.block_on(k.runtime.stop_container(req)).unwrap();
        // httpd as its PID namespace's init ignores SIGTERM (SIGKILL ends
        // it); in the pod's namespace SIGTERM ends it
        let code = if p.shared_pid { 143 } else { 137 };
        assert_eq!(k.exit_code(&p.app), code, "{}", p.name);
        let req = cri::StopPodSandboxRequest { pod_sandbox_id: p.id.clone() };
        k.rt.block_on(k.runtime.stop_pod_sandbox(req)).unwrap();
        let req = cri::RemovePodSandboxRequest { pod_sandbox_id: p.id.clone() };
        k.rt.block_on(k.runtime.remove_pod_sandbox(req)).unwrap();
    }
    eventually("the pods' shims exit", || c.shims().is_empty());
    let state = c.dir.path().join("state");
    assert!(host_pids_matching(&state.display().to_string()).is_empty(), "no QEMU or virtiofsd stays");
    assert!(cgroup_dirs("containerd/k8s.io").is_empty(), "no cgroup of the pods stays");
}
