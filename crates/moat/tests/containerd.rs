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
    fn start() -> Containerd {
        Self::start_with(None)
    }

    /// With `bridge`: the CRI plugin on, moat's runtimes as its handlers
    /// (`moat` process, `moat-vm` hyperv), CNI's bridge plugin on that
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
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.moat-vm]\n  runtime_type = \"io.containerd.moat-hyperv.v2\"\n",
                net.display()
            );
        }
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            // the guest kernel moat's tests share (the shim reads moat's variables)
            .env("MOAT_KERNEL_DIR", kernel_dir())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (make deps installs Debian's)");
        let c = Containerd { dir, child, bridge: bridge.map(|(b, _)| b.to_string()), netns_before: netns_list() };
        eventually("containerd answers", || c.ctr(&["version"]).status.success());
        c
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr").arg("-a").arg(self.sock()).args(args).output().expect("ctr")
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
        for ns in ["default", "k8s.io"] {
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
        for n in netns_list().into_iter().filter(|n| !self.netns_before.contains(n) && n.starts_with("cni-")) {
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
    let c = Containerd::start();
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
        out.lines().any(|l| l.ends_with("/moat/containerd/default/t0")),
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
    assert!(host_cgroup.lines().any(|l| l.ends_with("/moat/containerd/default/t2")), "{host_cgroup}");
    let ps: Vec<Vec<String>> =
        c.ok(&["tasks", "ps", "t2"]).lines().map(|l| l.split_whitespace().map(String::from).collect()).collect();
    assert_eq!(ps, [vec!["PID".to_string(), "INFO".into()], vec![pid.to_string(), "-".into()]]);
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "one shim for t2");
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
    assert!(cgroup_dirs("containerd/default/t2").iter().any(|d| frozen(d)), "frozen in the kernel");
    c.ok(&["tasks", "resume", "t2"]);
    assert!(!cgroup_dirs("containerd/default/t2").iter().any(|d| frozen(d)), "thawed");
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
    let e = c.ctr(&["tasks", "delete", "t2"]);
    let (_, err, code) = text(&e);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("exit code 137"), "ctr reports the SIGKILL status: {err}");
    c.ok(&["containers", "rm", "t2"]);
    assert!(cgroup_dirs("containerd/default/t2").is_empty(), "the task's cgroup is gone");
    assert!(cgroup_dirs("containerd").is_empty(), "and the namespace's group with the last task");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("/t2/rootfs"), "the rootfs is unmounted");
    eventually("the shim exits", || c.shims().is_empty());
}

/// The hyperv runtime name: the task runs in a utility VM with moat's guest
/// kernel, from containerd's overlay snapshot, and nothing of the VM stays.
#[test]
fn ctr_runs_hyperv_tasks_in_a_utility_vm_hyperv() {
    let c = Containerd::start();
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

/// A pod through the CRI, as the kubelet makes one, with moat's runtime
/// handler: one shim for the pod, the pod's network namespace (CNI's
/// address), hostname and IPC namespace shared with its containers.
fn cri_pod(handler: &str, bridge: &str, subnet: &str) {
    use k8s_cri::v1 as cri;
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
    std::fs::create_dir_all(&logs).unwrap();
    let own_pid = Some(cri::NamespaceOption { pid: cri::NamespaceMode::Container as i32, ..Default::default() });
    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "cri-pod".into(),
        log_directory: logs.display().to_string(),
        // the kubelet's default: each container its own PID namespace
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: own_pid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod =
        k.rt.block_on(k.runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: handler.into(),
        }))
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let status =
        k.rt.block_on(
            k.runtime.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false }),
        )
        .unwrap()
        .into_inner();
    let ip = status.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
    assert!(ip.starts_with(&subnet[..subnet.rfind('.').unwrap()]), "CNI's address from {subnet}: {ip:?}");
    let container =
        k.rt.block_on(k.runtime.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata { name: "app".into(), attempt: 0 }),
                image: Some(cri::ImageSpec { image: IMAGE.into(), ..Default::default() }),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "hostname; ip -4 -o addr show eth0 | awk '{print $4}'; echo err >&2".into(),
                ],
                log_path: "app.log".into(),
                linux: Some(cri::LinuxContainerConfig {
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        namespace_options: own_pid,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config),
        }))
        .unwrap()
        .into_inner()
        .container_id;
    k.rt.block_on(k.runtime.start_container(cri::StartContainerRequest { container_id: container.clone() })).unwrap();
    assert_eq!(c.shims().len(), 1, "one shim for the pod's sandbox and its container");
    let mut exit = None;
    for _ in 0..500 {
        let s =
            k.rt.block_on(
                k.runtime
                    .container_status(cri::ContainerStatusRequest { container_id: container.clone(), verbose: false }),
            )
            .unwrap()
            .into_inner()
            .status
            .unwrap_or_default();
        if s.state == cri::ContainerState::ContainerExited as i32 {
            exit = Some(s.exit_code);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(exit, Some(0));
    assert_eq!(
        cri_log(&logs.join("app.log"), "stdout"),
        format!("cri-pod\n{ip}/{}\n", &subnet[subnet.rfind('/').unwrap() + 1..])
    );
    assert_eq!(cri_log(&logs.join("app.log"), "stderr"), "err\n");
    k.rt.block_on(k.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })).unwrap();
    k.rt.block_on(k.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod })).unwrap();
    eventually("the pod's shim exits", || c.shims().is_empty());
    assert!(cgroup_dirs("containerd").is_empty(), "no cgroup of the pod stays");
}

#[test]
fn cri_pod_in_process_isolation() {
    cri_pod("moat", "mtcri0", "10.214.0.0/24");
}
