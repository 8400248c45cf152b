//! Sandboxes holding several containers: `--network container:X` joins X's
//! sandbox (its namespaces, or its utility VM), pods hold a group. Checked
//! on the kernel's state: QEMU processes, PID namespaces, mounts, cgroups.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::*;

fn inspect(r: &Root, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", name])).unwrap();
    v[0].clone()
}

/// The PID namespace of container `name`'s main process, as the host sees it
/// (process isolation), or as the guest sees it (from inside).
fn pidns(r: &Root, name: &str) -> String {
    r.ok(&["exec", name, "readlink", "/proc/1/ns/pid"]).trim().to_string()
}

/// What two containers of one sandbox share and what they do not, through
/// the real CLI: `a` serves its hostname on 127.0.0.1:8080, `b` joined it.
fn shared_and_separate(r: &Root, a: &str, b: &str, vm: bool) {
    // localhost reaches the other container's server
    let got = r.ok(&[
        "exec",
        b,
        "sh",
        "-c",
        "for i in $(seq 100); do wget -q -O - http://127.0.0.1:8080/hostname && exit 0; sleep 0.1; done; exit 1",
    ]);
    let host_a = r.ok(&["exec", a, "hostname"]);
    assert_eq!(got, host_a, "b reached a's server on 127.0.0.1");
    assert_eq!(r.ok(&["exec", b, "hostname"]), host_a, "one hostname in the sandbox");
    // each has its own PID namespace: neither sees the other's processes
    let ps_a = r.ok(&["exec", a, "ps", "-o", "args"]);
    let ps_b = r.ok(&["exec", b, "ps", "-o", "args"]);
    assert!(ps_a.contains("httpd") && !ps_a.contains("sleep 3302"), "{ps_a}");
    assert!(ps_b.contains("sleep 3302") && !ps_b.contains("httpd"), "{ps_b}");
    assert_ne!(pidns(r, a), pidns(r, b));
    // each has its own root filesystem
    r.ok(&["exec", b, "touch", "/only-in-b"]);
    assert_eq!(r.run(&["exec", a, "test", "-e", "/only-in-b"]).status.code(), Some(1));
    assert_eq!(r.run(&["exec", b, "test", "-e", "/only-in-b"]).status.code(), Some(0), "positive control");
    // the kernel: the guest's in a VM sandbox, the host's otherwise
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let want = if vm { guest_kernel_release() } else { host.trim().to_string() };
    assert_eq!(r.ok(&["exec", a, "uname", "-r"]).trim(), want);
    assert_eq!(r.ok(&["exec", b, "uname", "-r"]).trim(), want);
}

/// QEMU processes of container `id` on the host (its `-name moat-ID12`).
fn qemus_of(id: &str) -> Vec<u32> {
    host_pids_matching(&format!("-name moat-{}", &id[..12]))
}

/// Mounts on the host (any namespace this process sees) under moat's root.
fn mounts_under(r: &Root) -> Vec<String> {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = r.path().to_string_lossy().to_string();
    m.lines().filter(|l| l.contains(&p)).map(str::to_string).collect()
}

fn join_network_container(iso: &str) {
    let vm = iso == "vm";
    let r = root_with_busybox();
    r.ok(&["run", "-d", "--isolation", iso, "--name", "a", "busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"]);
    r.ok(&["run", "-d", "--isolation", iso, "--network", "container:a", "--name", "b", "busybox", "sleep", "3302"]);
    let (ia, ib) = (inspect(&r, "a"), inspect(&r, "b"));
    let (ida, idb) = (ia["Id"].as_str().unwrap().to_string(), ib["Id"].as_str().unwrap().to_string());
    assert_eq!(ib["HostConfig"]["NetworkMode"], format!("container:{ida}"));
    let qemu = if vm {
        // exactly one QEMU: a's, which b's record names too
        let q = ia["VM"]["QemuPid"].as_u64().unwrap();
        assert_eq!(qemus_of(&ida), vec![q as u32]);
        assert!(qemus_of(&idb).is_empty(), "b has no VM of its own");
        assert_eq!(ib["VM"]["QemuPid"].as_u64(), Some(q));
        assert_eq!(ib["VM"]["Sandbox"].as_str(), Some(ida.as_str()));
        Some(q)
    } else {
        assert!(ib["VM"].is_null(), "{}", ib["VM"]);
        None
    };
    shared_and_separate(&r, "a", "b", vm);
    // one container stops, the other runs on; it starts again in the sandbox
    r.ok(&["kill", "b"]);
    eventually("b exits", || r.ok(&["inspect", "-f", "{{.State.Running}}", "b"]).trim() == "false");
    assert_eq!(r.ok(&["exec", "a", "echo", "still"]), "still\n");
    r.ok(&["start", "b"]);
    assert!(r.ok(&["exec", "b", "ps", "-o", "args"]).contains("sleep 3302"));
    if let Some(q) = qemu {
        assert_eq!(qemus_of(&ida), vec![q as u32], "b's restart joined the same VM");
        // the files b wrote are still its own after its restart
        assert_eq!(r.run(&["exec", "b", "test", "-e", "/only-in-b"]).status.code(), Some(0));
        // killing the sandbox's QEMU ends both containers, each with a reason
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(q as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        for c in ["a", "b"] {
            eventually("the container ends with its VM", || {
                r.ok(&["inspect", "-f", "{{.State.Running}}", c]).trim() == "false"
            });
        }
        let ea = r.ok(&["inspect", "-f", "{{.State.Error}}", "a"]);
        let eb = r.ok(&["inspect", "-f", "{{.State.Error}}", "b"]);
        assert!(ea.starts_with("qemu was killed by signal 9"), "{ea}");
        assert!(eb.starts_with("the sandbox's utility VM ended: qemu was killed by signal 9"), "{eb}");
        // the VM starts again with a, and b joins it
        r.ok(&["start", "a"]);
        r.ok(&["start", "b"]);
        shared_and_separate(&r, "a", "b", vm);
    }
    // a sandbox's containers convert together, not one by one
    r.ok(&["stop", "-t", "1", "b"]);
    let other = if vm { "process" } else { "hyperv" };
    let e = r.fails(&["update", "--isolation", other, "b"]);
    assert!(e.contains("shares its sandbox with a"), "{e}");
    // a container of the other isolation type cannot join
    let e = r.fails(&["create", "--isolation", other, "--network", "container:a", "busybox", "true"]);
    let own = if vm { "hyperv" } else { "process" };
    assert!(e.contains(&format!("it runs in {own} isolation and this container in {other}")), "{e}");
    r.ok(&["rm", "-f", "a", "b"]);
    let ids = [ida, idb];
    for id in &ids {
        assert!(qemus_of(id).is_empty(), "no QEMU left");
        assert!(cgroups_of(id).is_empty(), "no cgroup left: {:?}", cgroups_of(id));
        assert!(host_pids_matching(id).is_empty(), "no process names the container");
    }
    assert!(host_pids_matching(&r.path().to_string_lossy()).is_empty(), "no shim or virtiofsd left");
    assert_eq!(mounts_under(&r), Vec::<String>::new());
}

/// A pod of two containers through the real CLI: one sandbox (one QEMU in
/// hyperv), the pod's ports and hostname, Podman's verbs, conversion, and
/// nothing left once it is removed.
fn pod_of_two(iso: &str) {
    let vm = iso == "vm";
    let r = root_with_busybox();
    let port = if vm { "18411" } else { "18412" };
    let id = r.ok(&[
        "pod",
        "create",
        "--name",
        "p",
        "--isolation",
        iso,
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        "--label",
        "team=blue",
        "--memory",
        "256m",
    ]);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    assert_eq!(r.ok(&["pod", "ls", "--format", "{{.Name}} {{.Status}} {{.NumContainers}}"]), "p Created 1\n");
    let e = r.fails(&["pod", "create", "--name", "p", "--isolation", iso]);
    assert_eq!(e, "Error: pod name \"p\" is already in use\n");
    assert_eq!(r.ok(&["ps", "-aq"]).lines().count(), 1, "the refused pod made no infra container");
    // a container of the pod starts the pod's infra container first
    r.ok(&["run", "-d", "--pod", "p", "--name", "web", "busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"]);
    r.ok(&["run", "-d", "--pod", "p", "--name", "side", "busybox", "sleep", "3302"]);
    let infra = r.ok(&["pod", "inspect", "-f", "{{.InfraContainerID}}", "p"]).trim().to_string();
    assert_eq!(
        r.ok(&["inspect", "-f", "{{.Name}} {{.State.Running}}", &infra]),
        format!("/{}-infra true\n", &id[..12])
    );
    assert_eq!(r.ok(&["pod", "ls", "--format", "{{.Name}} {{.Status}} {{.NumContainers}}"]), "p Running 3\n");
    shared_and_separate(&r, "web", "side", vm);
    assert_eq!(r.ok(&["exec", "side", "hostname"]), "p\n", "the pod's name is its hostname");
    pod_limits(&r, &id, &infra, vm);
    if vm {
        let q = inspect(&r, &infra)["VM"]["QemuPid"].as_u64().unwrap() as u32;
        assert_eq!(qemus_of(&infra), vec![q], "one QEMU: the infra container's");
        for c in ["web", "side"] {
            let v = inspect(&r, c);
            assert!(qemus_of(v["Id"].as_str().unwrap()).is_empty(), "{c} has no VM of its own");
            assert_eq!(v["VM"]["QemuPid"].as_u64(), Some(q as u64));
        }
    }
    // the pod's published port reaches the server of one of its containers
    let got = (0..100)
        .find_map(|_| {
            let o = std::process::Command::new("busybox")
                .args(["wget", "-q", "-O", "-", &format!("http://127.0.0.1:{port}/hostname")])
                .output()
                .unwrap();
            if o.status.success() {
                return Some(String::from_utf8_lossy(&o.stdout).into_owned());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            None
        })
        .expect("the pod's port answers");
    assert_eq!(got, "p\n");
    // ps --pod and its filter
    let ps = r.ok(&["ps", "--pod", "--filter", "pod=p", "--format", "{{.Names}} {{.PodName}}"]);
    let mut rows: Vec<&str> = ps.lines().collect();
    rows.sort();
    let infra_name = format!("{}-infra p", &id[..12]);
    let mut want = vec!["side p", "web p", infra_name.as_str()];
    want.sort();
    assert_eq!(rows, want);
    let header = r.ok(&["ps", "--pod"]);
    assert!(header.lines().next().unwrap().ends_with("POD ID         PODNAME"), "{header}");
    // containers of the pod stop and start one by one while it lives
    r.ok(&["stop", "-t", "1", "side"]);
    assert_eq!(r.ok(&["pod", "ls", "--format", "{{.Status}}"]), "Degraded\n");
    assert_eq!(r.ok(&["exec", "web", "echo", "up"]), "up\n");
    r.ok(&["start", "side"]);
    assert_eq!(r.ok(&["pod", "ls", "--format", "{{.Status}}"]), "Running\n");
    // pod top: every container's processes, its name first
    let top = r.ok(&["pod", "top", "p"]);
    for (c, cmd) in [(infra.as_str(), "moat-pause"), ("web", "httpd"), ("side", "sleep 3302")] {
        let name = if c == infra { format!("{}-infra", &id[..12]) } else { c.to_string() };
        assert!(top.lines().any(|l| l.starts_with(&name) && l.contains(cmd)), "{c}: {top}");
    }
    // pause and unpause the whole pod
    r.ok(&["pod", "pause", "p"]);
    assert_eq!(r.ok(&["pod", "ls", "--format", "{{.Status}}"]), "Paused\n");
    r.ok(&["pod", "unpause", "p"]);
    assert_eq!(r.ok(&["exec", "side", "echo", "thawed"]), "thawed\n");
    // stats of every running container of the pod
    let mut names: Vec<String> =
        r.ok(&["pod", "stats", "--no-stream", "--format", "{{.Name}}", "p"]).lines().map(str::to_string).collect();
    names.sort();
    let mut want = vec![format!("{}-infra", &id[..12]), "side".to_string(), "web".to_string()];
    want.sort();
    assert_eq!(names, want);
    // restart: every container runs again, in a new sandbox
    r.ok(&["pod", "restart", "-t", "1", "p"]);
    assert_eq!(r.ok(&["pod", "ls", "--format", "{{.Status}}"]), "Running\n");
    shared_and_separate(&r, "web", "side", vm);
    // what belongs to the pod is refused on its containers, with the reason
    let e = r.fails(&["create", "--pod", "p", "-p", "9999:80", "busybox", "true"]);
    assert_eq!(
        e,
        "Error: published ports of a container in a pod belong to the pod: give them to `moat pod create` (pod p)\n"
    );
    let other = if vm { "process" } else { "hyperv" };
    let e = r.fails(&["create", "--pod", "p", "--isolation", other, "busybox", "true"]);
    let own = if vm { "hyperv" } else { "process" };
    assert_eq!(
        e,
        format!("Error: pod p runs in {own} isolation: its containers share its sandbox, so they run in {own} too\n")
    );
    let e = r.fails(&["rm", "-f", &infra]);
    assert!(e.contains("is the infra container of pod p: remove the pod (moat pod rm)"), "{e}");
    let e = r.fails(&["pod", "rm", "p"]);
    assert!(e.contains("pod p has running containers"), "{e}");
    // a stopped pod converts with all its containers, keeping their files
    r.ok(&["pod", "stop", "-t", "1", "p"]);
    assert_eq!(r.ok(&["pod", "ls", "--format", "{{.Status}}"]), "Exited\n");
    let e = r.fails(&["update", "--isolation", other, "side"]);
    assert!(e.contains("convert them together (moat pod update --isolation)"), "{e}");
    r.ok(&["pod", "update", "--isolation", other, "p"]);
    assert_eq!(r.ok(&["pod", "inspect", "-f", "{{.Isolation}}", "p"]), format!("{other}\n"));
    for c in [infra.as_str(), "web", "side"] {
        assert_eq!(r.ok(&["inspect", "-f", "{{.HostConfig.Isolation}}", c]), format!("{other}\n"));
    }
    r.ok(&["pod", "start", "p"]);
    assert_eq!(r.ok(&["pod", "ls", "--format", "{{.Status}} {{.Isolation}}"]), format!("Running {other}\n"));
    shared_and_separate(&r, "web", "side", !vm);
    // the pod's events
    let ev = r.ok(&["events", "--since", "0", "--until", "0s", "--filter", "type=pod", "--format", "{{.Action}}"]);
    // (the first start came from `run --pod`: a container event, not the pod's)
    assert_eq!(ev, "create\npause\nunpause\nstop\nstart\nstop\nupdate\nstart\n");
    // kill: every container ends
    r.ok(&["pod", "kill", "p"]);
    assert_eq!(r.ok(&["pod", "ls", "--format", "{{.Status}}"]), "Exited\n");
    r.ok(&["pod", "start", "p"]);
    // prunes: a container prune keeps a stopped pod's infra container, a
    // system prune removes the stopped pod with its containers
    let id2 = r.ok(&["pod", "create", "--name", "idle", "--isolation", iso]).trim().to_string();
    r.ok(&["create", "--pod", "idle", "--name", "idle-c", "busybox", "true"]);
    r.ok(&["container", "prune", "-f"]);
    assert_eq!(r.ok(&["pod", "inspect", "-f", "{{.NumContainers}}", "idle"]), "1\n", "the infra container stays");
    assert!(r.ok(&["system", "prune", "-f"]).starts_with(&format!("Deleted Pods:\n{id2}\n")));
    assert!(r.fails(&["pod", "inspect", "idle"]).contains("no such pod: idle"));
    // pod rm -f: every container and the sandbox go
    let ids: Vec<String> = [infra.as_str(), "web", "side"]
        .iter()
        .map(|c| r.ok(&["inspect", "-f", "{{.Id}}", c]).trim().to_string())
        .collect();
    r.ok(&["pod", "rm", "-f", "p"]);
    assert_eq!(r.ok(&["pod", "ls", "-q"]), "");
    let ev = r.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        "0s",
        "--filter",
        "type=pod",
        "--filter",
        "event=remove",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ]);
    assert_eq!(ev, "remove idle\nremove p\n");
    assert_eq!(r.ok(&["ps", "-aq"]), "");
    for id in &ids {
        assert!(qemus_of(id).is_empty(), "no QEMU left");
        assert!(cgroups_of(id).is_empty(), "no cgroup left: {:?}", cgroups_of(id));
    }
    assert!(host_pids_matching(&r.path().to_string_lossy()).is_empty(), "no shim or virtiofsd left");
    assert_eq!(mounts_under(&r), Vec::<String>::new());
    assert!(cgroups_of(&format!("pod-{}", &id[..12])).is_empty(), "no pod cgroup left");
}

/// The pod's `--memory 256m` as the kernel applies it: the VM's size in
/// hyperv; in process isolation a cgroup of the pod's own, with that
/// limit, holding every container's cgroup.
fn pod_limits(r: &Root, id: &str, infra: &str, vm: bool) {
    if vm {
        assert_eq!(inspect(r, infra)["VM"]["MemoryMiB"], 256 + 96, "the pod's memory sizes its VM");
        return;
    }
    let group = format!("pod-{}", &id[..12]);
    let dirs = cgroups_of(&group);
    assert!(!dirs.is_empty(), "the pod has a cgroup of its own");
    let limit = dirs
        .iter()
        .find_map(|d| {
            std::fs::read_to_string(d.join("memory.max"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.limit_in_bytes")))
                .ok()
        })
        .expect("a memory limit file");
    assert_eq!(limit.trim(), (256u64 << 20).to_string());
    for c in [infra, "web", "side"] {
        let cid = r.ok(&["inspect", "-f", "{{.Id}}", c]).trim().to_string();
        let pid = r.ok(&["inspect", "-f", "{{.State.Pid}}", c]).trim().to_string();
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let want = format!("/moat/{group}/{cid}");
        assert!(cg.lines().any(|l| l.ends_with(&want)), "{c} is in the pod's cgroup: {cg}");
    }
}

modes!(join_network_container, pod_of_two);
