//! Docker API parity beyond the happy path (issue #31): what real clients
//! (the docker 28.2 CLI, docker-py 7.1) do next, through `moat serve`, with
//! dockerd's behaviour as the reference.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn served() -> (Root, ApiServer) {
    let r = root_with_busybox();
    let s = ApiServer::start(&r);
    (r, s)
}

/// Runs a docker-py script (`c` is the client); its stdout must be `ok`.
fn docker_py(s: &ApiServer, body: &str) {
    let py = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("pyvenv/bin/python");
    assert!(py.exists(), "{} is missing: run make deps", py.display());
    let script = format!("import sys, docker\nc = docker.DockerClient(base_url=sys.argv[1])\n{body}\nprint('ok')\n");
    let o = Command::new(py).args(["-c", &script, &s.host()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n", "docker-py: {}", String::from_utf8_lossy(&o.stderr));
}

/// Swarm, plugins and the builder's routes answer as a dockerd that is not
/// in a swarm and has no plugins does; `docker system prune` ends cleanly;
/// `docker build` is refused with a reason instead of a 404.
#[test]
fn swarm_plugins_and_build_routes_answer_as_dockerd() {
    let (_r, s) = served();
    let e = s.fails(&["node", "ls"]);
    assert_eq!(
        e.trim(),
        "Error response from daemon: This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again."
    );
    for args in [&["service", "ls"][..], &["secret", "ls"], &["config", "ls"]] {
        let e = s.fails(args);
        assert!(e.contains("This node is not a swarm manager."), "{args:?}: {e}");
    }
    let e = s.fails(&["swarm", "leave", "--force"]);
    assert_eq!(e.trim(), "Error response from daemon: This node is not part of a swarm");
    assert_eq!(s.ok(&["plugin", "ls", "--format", "{{.Name}}"]), "");
    let e = s.fails(&["plugin", "inspect", "nosuch"]);
    assert!(e.contains("plugin \"nosuch\" not found"), "{e}");
    // prune ends with the build cache's (empty) answer, exit 0
    let out = s.ok(&["system", "prune", "-f"]);
    assert!(out.ends_with("Total reclaimed space: 0B\n"), "{out}");
    assert_eq!(s.ok(&["builder", "prune", "-f"]), "Total reclaimed space: 0B\n");
    // the classic builder builds (tests/build.rs has the rest)
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY Dockerfile /\n").unwrap();
    let o =
        s.docker_cmd().env("DOCKER_BUILDKIT", "0").args(["build", "-q", "-t", "x"]).arg(ctx.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.ok(&["image", "inspect", "--format", "{{len .RootFS.Layers}}", "x"]), "1\n");
    // docker-py's test teardown: leave with force is fine, plugins are none
    docker_py(
        &s,
        "assert c.swarm.leave(force=True) is True\n\
         assert c.plugins.list() == []\n\
         try:\n    c.nodes.list()\n    raise SystemExit('nodes listed')\n\
         except docker.errors.APIError as e:\n    assert e.status_code == 503, e",
    );
}

/// What a first-week Docker user hit, in both isolation types, through the
/// docker CLI, docker-py and the moat CLI; each value is what Debian's
/// dockerd 20.10 gives for the same command (measured on this machine).
fn exec_term_workdir_and_swap(iso: &str) {
    let (r, s) = served();
    let iso_flag = format!("--isolation={iso}");
    s.ok(&["run", "-d", "--name", "box", &iso_flag, "--memory", "64m", "busybox", "sleep", "600"]);
    // an exec that cannot start: 126, and why (dockerd writes it on the
    // session's stdout)
    let o = s.docker(&["exec", "box", "nosuch"]);
    assert_eq!(o.status.code(), Some(126), "{o:?}");
    let said = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("executable file not found"), "{said}");
    assert_eq!(r.run(&["exec", "box", "nosuch"]).status.code(), Some(126));
    // a terminal gets TERM=xterm, no terminal none
    assert_eq!(s.ok(&["exec", "-t", "box", "sh", "-c", "echo $TERM"]), "xterm\r\n");
    assert_eq!(s.ok(&["exec", "box", "sh", "-c", "echo TERM=$TERM"]), "TERM=\n");
    assert_eq!(r.ok(&["exec", "-t", "box", "sh", "-c", "echo $TERM"]), "xterm\r\n");
    // a missing working directory is made for the container (an exec's must exist)
    assert_eq!(s.ok(&["run", "--rm", &iso_flag, "-w", "/missing/dir", "busybox", "pwd"]), "/missing/dir\n");
    let o = s.docker(&["exec", "-w", "/missing", "box", "pwd"]);
    assert_eq!(o.status.code(), Some(126), "{o:?}");
    // a memory limit without a swap limit: as much swap again
    assert_eq!(
        s.ok(&["inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}", "box"]),
        "67108864 134217728\n"
    );
    docker_py(
        &s,
        "k = c.containers.get('box')\n\
         assert k.exec_run(['sh', '-c', 'echo $TERM'], tty=True) == (0, b'xterm\\r\\n'), k.exec_run(['sh', '-c', 'echo $TERM'], tty=True)\n\
         code, out = k.exec_run(['nosuch'])\n\
         assert code == 126 and b'executable file not found' in out, (code, out)",
    );
    s.ok(&["rm", "-f", "box"]);
}

#[test]
fn exec_term_workdir_and_swap_process() {
    exec_term_workdir_and_swap("process");
}

#[test]
fn exec_term_workdir_and_swap_hyperv() {
    exec_term_workdir_and_swap("hyperv");
}

/// `docker update --restart always` on a running container: its next exit
/// is restarted (dockerd's behaviour), not only after a later start.
fn update_restart_applies_at_once(iso: &str) {
    let (_r, s) = served();
    let iso_flag = format!("--isolation={iso}");
    let script =
        "test -e /restarted && exec sleep 600; while [ ! -e /go ]; do sleep 0.1; done; touch /restarted; exit 3";
    s.ok(&["run", "-d", "--name", "upd", &iso_flag, "busybox", "sh", "-c", script]);
    assert_eq!(s.ok(&["update", "--restart", "always", "upd"]), "upd\n");
    s.ok(&["exec", "upd", "touch", "/go"]);
    let state = || s.ok(&["inspect", "-f", "{{.State.Status}} {{.RestartCount}}", "upd"]);
    let mut now = state();
    for _ in 0..300 {
        if now == "running 1\n" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        now = state();
    }
    assert_eq!(now, "running 1\n", "restarted once by the policy set while it ran");
    s.ok(&["rm", "-f", "upd"]);
}

#[test]
fn update_restart_applies_at_once_process() {
    update_restart_applies_at_once("process");
}

#[test]
fn update_restart_applies_at_once_hyperv() {
    update_restart_applies_at_once("hyperv");
}

/// The moat CLI takes Docker's time forms (local times without a zone, a
/// bare date) and names fields in templates as Docker's Go structs do.
#[test]
fn cli_time_forms_and_go_field_names() {
    let r = root_with_busybox();
    r.ok(&["run", "--name", "ev", "busybox", "echo", "hi"]);
    // a bare date and a local time without a zone: the run is after both
    let today =
        String::from_utf8_lossy(&Command::new("date").arg("+%Y-%m-%d").output().unwrap().stdout).trim().to_string();
    let hour_ago = String::from_utf8_lossy(
        &Command::new("date").args(["-d", "1 hour ago", "+%Y-%m-%dT%H:%M:%S"]).output().unwrap().stdout,
    )
    .trim()
    .to_string();
    let tomorrow =
        String::from_utf8_lossy(&Command::new("date").args(["-d", "tomorrow", "+%Y-%m-%d"]).output().unwrap().stdout)
            .trim()
            .to_string();
    assert_eq!(r.ok(&["logs", "--since", &hour_ago, "ev"]), "hi\n");
    assert_eq!(r.ok(&["logs", "--until", &tomorrow, "ev"]), "hi\n");
    // (the run was today: a bare date is its local midnight, before it)
    assert_eq!(r.ok(&["logs", "--since", &today, "ev"]), "hi\n");
    assert_eq!(r.ok(&["logs", "--since", &tomorrow, "ev"]), "");
    let id = r.ok(&["inspect", "-f", "{{.Id}}", "ev"]).trim().to_string();
    let ev = r.ok(&[
        "events",
        "--since",
        &hour_ago,
        "--until",
        "0s",
        "--filter",
        "type=container",
        "--format",
        "{{.Status}} {{.ID}} {{.From}} {{.Scope}}",
    ]);
    assert_eq!(ev.lines().next(), Some(format!("create {id} busybox local").as_str()), "{ev}");
    assert_eq!(r.ok(&["version", "--format", "{{.Server.APIVersion}} {{.Client.APIVersion}}"]), "1.45 1.45\n");
}

/// Detaching from `docker attach` (Ctrl-P Ctrl-Q, or the client's own
/// `--detach-keys`) ends the session and leaves the container running: the
/// client's half-close does not close the stdin of a container created
/// without StdinOnce (dockerd's rule), in both isolation types.
fn detach_from_attach_leaves_it_running(iso: &str) {
    let (_r, s) = served();
    let iso_flag = format!("--isolation={iso}");
    s.ok(&["run", "-d", "-it", "--name", "det", &iso_flag, "busybox", "sh"]);
    let env = format!("DOCKER_HOST={} DOCKER_CONFIG={}", s.host(), s.docker_config.path().display());
    for (n, (keys, input)) in [("", "\x10\x11"), (" --detach-keys ctrl-x,y", "\x18y")].into_iter().enumerate() {
        // the detach keys are typed once the shell has answered a command
        // through this client (its terminal is raw by then)
        let (cmd, answer) = (format!("echo ready-$(({n}+40))\n"), format!("ready-{}", n + 40));
        let o = with_pty_dialog(&format!("{env} docker attach{keys} det"), &[("", &cmd), (&answer, input)]);
        // the docker 28 CLI exits 1 after a detach, against dockerd too
        assert_eq!(o.status.code(), Some(1), "{keys}: {o:?}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("read escape sequence"), "{keys}: {o:?}");
        assert_eq!(s.ok(&["inspect", "-f", "{{.State.Status}}", "det"]), "running\n", "{keys}: still running");
    }
    // the shell still reads its terminal: a command typed through a new attach runs
    let o = with_pty_dialog(
        &format!("{env} docker attach det"),
        &[("", "echo alive-$((40+2))\n"), ("alive-42", "\x10\x11")],
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("alive-42"), "{o:?}");
    s.ok(&["rm", "-f", "det"]);
}

#[test]
fn detach_from_attach_leaves_it_running_process() {
    detach_from_attach_leaves_it_running("process");
}

#[test]
fn detach_from_attach_leaves_it_running_hyperv() {
    detach_from_attach_leaves_it_running("hyperv");
}

/// Settings moat cannot apply are refused by name through the API, never
/// accepted and dropped; `--cpu-quota` is applied (the kernel's cgroup
/// says so).
#[test]
fn unapplied_settings_are_refused_by_name() {
    let (_r, s) = served();
    for (flags, field) in [
        (&["--blkio-weight", "300"][..], "HostConfig.BlkioWeight"),
        (&["--device-read-bps", "/dev/null:1mb"], "HostConfig.BlkioDeviceReadBps"),
        (&["--gpus", "all"], "HostConfig.DeviceRequests"),
        (&["--storage-opt", "size=1G"], "HostConfig.StorageOpt"),
    ] {
        let mut args = vec!["create"];
        args.extend_from_slice(flags);
        args.extend(["busybox", "true"]);
        let e = s.fails(&args);
        assert!(e.contains(field), "{flags:?}: {e}");
    }
    assert_eq!(s.ok(&["ps", "-aq"]), "", "nothing was created");
    // applied: the CFS quota over the given period
    let id = s
        .ok(&["run", "-d", "--cpu-quota", "25000", "--cpu-period", "50000", "busybox", "sleep", "600"])
        .trim()
        .to_string();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let got = if v2 {
        std::fs::read_to_string(format!("/sys/fs/cgroup/moat/{id}/cpu.max")).unwrap()
    } else {
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/moat/{id}/cpu.cfs_quota_us")).unwrap()
    };
    assert_eq!(got.trim(), if v2 { "50000 100000" } else { "50000" }, "half a CPU");
    // networks: what a switch cannot do is refused by name
    let e = s.fails(&["network", "create", "--opt", "com.docker.network.bridge.name=x", "opt"]);
    assert!(e.contains("driver options"), "{e}");
    let e = s.fails(&["network", "create", "--ipam-driver", "dhcp", "ipd"]);
    assert!(e.contains("IPAM driver \"dhcp\""), "{e}");
    s.ok(&["rm", "-f", &id]);
}

/// IPAM as dockerd takes it: addresses from `--ip-range` only, reserved
/// `--aux-address`es never handed out (a requested one refused), `--ip`
/// anywhere in the subnet, IPAM options kept and shown; `connect` applies
/// a MAC address (the container's interface has it) and aliases on that
/// switch only (its peers there resolve them, a peer elsewhere does not).
#[test]
fn ipam_options_and_connect_aliases() {
    let (r, s) = served();
    s.ok(&[
        "network",
        "create",
        "--subnet",
        "10.99.7.0/24",
        "--ip-range",
        "10.99.7.128/25",
        "--aux-address",
        "reserved=10.99.7.128",
        "--ipam-opt",
        "foo=bar",
        "rng",
    ]);
    let ipam = s.ok(&["network", "inspect", "-f", "{{json .IPAM}}", "rng"]);
    let v: serde_json::Value = serde_json::from_str(&ipam).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"Driver": "default", "Options": {"foo": "bar"}, "Config": [{"Subnet": "10.99.7.0/24",
            "Gateway": "10.99.7.1", "IPRange": "10.99.7.128/25", "AuxiliaryAddresses": {"reserved": "10.99.7.128"}}]})
    );
    let ip_of = |c: &str| {
        r.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", c]).trim().to_string()
    };
    s.ok(&["run", "-d", "--name", "peer", "--network", "rng", "busybox", "sleep", "600"]);
    assert_eq!(ip_of("peer"), "10.99.7.129", "the range's first free address, the reserved one skipped");
    let e = s.fails(&["create", "--network", "rng", "--ip", "10.99.7.128", "busybox", "true"]);
    assert!(e.contains("address 10.99.7.128 is reserved on this switch (reserved)"), "{e}");
    s.ok(&["create", "--name", "low", "--network", "rng", "--ip", "10.99.7.5", "busybox", "true"]);
    assert_eq!(ip_of("low"), "10.99.7.5", "--ip may be outside the range");
    // connect with a MAC and an alias of its own on rng
    s.ok(&["run", "-d", "--name", "c1", "busybox", "sleep", "600"]);
    s.ok(&["run", "-d", "--name", "other", "busybox", "sleep", "600"]);
    docker_py(
        &s,
        "c.api.connect_container_to_network('c1', 'rng', aliases=['newname'], mac_address='02:42:ac:11:00:99')",
    );
    assert_eq!(s.ok(&["exec", "c1", "cat", "/sys/class/net/eth1/address"]), "02:42:ac:11:00:99\n");
    let hosts_peer = s.ok(&["exec", "peer", "cat", "/etc/hosts"]);
    assert!(
        hosts_peer.lines().any(|l| l.starts_with("10.99.7.") && l.split_whitespace().any(|w| w == "newname")),
        "{hosts_peer}"
    );
    s.ok(&["exec", "peer", "ping", "-c", "1", "-W", "5", "newname"]);
    let hosts_other = s.ok(&["exec", "other", "cat", "/etc/hosts"]);
    assert!(hosts_other.contains("c1") && !hosts_other.contains("newname"), "only on rng: {hosts_other}");
    let f = "{{json (index .NetworkSettings.Networks \"rng\").Aliases}} {{(index .NetworkSettings.Networks \"rng\").MacAddress}}";
    let got = s.ok(&["inspect", "-f", f, "c1"]);
    assert!(got.contains("\"newname\"") && got.trim_end().ends_with("02:42:ac:11:00:99"), "{got}");
    // the moat CLI's connect takes both too
    r.ok(&["switch", "connect", "--mac-address", "02:42:ac:11:00:98", "--alias", "viacli", "rng", "other"]);
    assert_eq!(s.ok(&["exec", "other", "cat", "/sys/class/net/eth1/address"]), "02:42:ac:11:00:98\n");
    assert!(s.ok(&["exec", "peer", "cat", "/etc/hosts"]).contains(" viacli"));
    r.ok(&["rm", "-f", "peer", "low", "c1", "other"]);
    s.ok(&["network", "rm", "rng"]);
}

/// `--group-add`, `--oom-score-adj` and `--domainname` are applied to the container's
/// processes and its execs (read from the kernel: `id -G`, and
/// `/proc/PID/oom_score_adj` of the host process in process isolation),
/// through the docker CLI and the moat CLI; an unknown group fails the start.
fn groups_and_oom_score(iso: &str) {
    let (r, s) = served();
    let iso_flag = format!("--isolation={iso}");
    let o = s.ok(&[
        "run",
        "--rm",
        &iso_flag,
        "--group-add",
        "nogroup",
        "--group-add",
        "1234",
        "--oom-score-adj",
        "300",
        "--domainname",
        "example.org",
        "busybox",
        "sh",
        "-c",
        "id -G; cat /proc/self/oom_score_adj /proc/sys/kernel/domainname",
    ]);
    assert_eq!(o, "0 1234 65534\n300\nexample.org\n", "the kernel sorts the groups");
    // positive control: without them, root's groups, the default score, no domain
    let probe = "id -G; cat /proc/self/oom_score_adj /proc/sys/kernel/domainname";
    let o = s.ok(&["run", "--rm", &iso_flag, "busybox", "sh", "-c", probe]);
    assert_eq!(o, "0\n0\n(none)\n");
    // lowering the score takes CAP_SYS_RESOURCE, which a utility VM's agent
    // has and a host may not (this machine's root lacks it): without it the
    // start fails and says why
    let host_can_lower = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap() & (1 << 24) != 0)
        .unwrap();
    let adj = if iso == "process" && !host_can_lower {
        let e = r.fails(&["run", "--rm", &iso_flag, "--oom-score-adj=-200", "busybox", "true"]);
        assert!(e.contains("set oom_score_adj") && e.contains("Permission denied"), "{e}");
        "700"
    } else {
        "-200"
    };
    r.ok(&[
        "run",
        "-d",
        "--name",
        "g",
        &iso_flag,
        "--group-add",
        "65534",
        &format!("--oom-score-adj={adj}"),
        "busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(s.ok(&["exec", "g", "id", "-G"]), "0 65534\n");
    assert_eq!(s.ok(&["exec", "g", "cat", "/proc/self/oom_score_adj"]), format!("{adj}\n"));
    let f = "{{.HostConfig.GroupAdd}} {{.HostConfig.OomScoreAdj}}";
    assert_eq!(s.ok(&["inspect", "-f", f, "g"]), format!("[65534] {adj}\n"));
    if iso == "process" {
        let pid = r.ok(&["inspect", "-f", "{{.State.Pid}}", "g"]);
        assert_eq!(std::fs::read_to_string(format!("/proc/{}/oom_score_adj", pid.trim())).unwrap(), format!("{adj}\n"));
    }
    let e = s.fails(&["run", "--rm", &iso_flag, "--group-add", "nosuch", "busybox", "true"]);
    assert!(e.contains("unable to find group nosuch"), "{e}");
    let e = s.fails(&["create", "--oom-score-adj", "1001", "busybox", "true"]);
    assert!(e.contains("Invalid value 1001, range for oom score adj is [-1000, 1000]"), "{e}");
    r.ok(&["rm", "-f", "g"]);
}

#[test]
fn groups_and_oom_score_process() {
    groups_and_oom_score("process");
}

#[test]
fn groups_and_oom_score_hyperv() {
    groups_and_oom_score("hyperv");
}

/// The environment as dockerd merges it: the user's entries first, then the
/// image's not named; a bare `KEY` (from the API, or `-e KEY` unset in the
/// client's environment) unsets the image's variable for the process.
#[test]
fn environment_merges_and_unsets_as_dockerd() {
    let (r, s) = served();
    r.ok(&["create", "--name", "base", "busybox", "true"]);
    r.ok(&["commit", "-c", "ENV FOO=bar", "base", "withfoo:1"]);
    s.ok(&["create", "--name", "e1", "-e", "A=1", "withfoo:1", "true"]);
    assert_eq!(
        s.ok(&["inspect", "-f", "{{json .Config.Env}}", "e1"]),
        "[\"A=1\",\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\",\"FOO=bar\"]\n"
    );
    let o = s
        .docker_cmd()
        .env_remove("FOO")
        .args(["run", "--rm", "-e", "FOO", "withfoo:1", "sh", "-c", "echo FOO=${FOO-unset}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "FOO=unset\n", "{o:?}");
    assert_eq!(s.ok(&["run", "--rm", "withfoo:1", "sh", "-c", "echo FOO=${FOO-unset}"]), "FOO=bar\n");
    // the same from the moat CLI
    let o = r
        .cmd()
        .env_remove("FOO")
        .args(["run", "--rm", "-e", "FOO", "withfoo:1", "sh", "-c", "echo FOO=${FOO-unset}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "FOO=unset\n", "{o:?}");
    // and for an exec
    s.ok(&["run", "-d", "--name", "e2", "withfoo:1", "sleep", "600"]);
    let o = s
        .docker_cmd()
        .env_remove("FOO")
        .args(["exec", "-e", "FOO", "e2", "sh", "-c", "echo FOO=${FOO-unset}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "FOO=unset\n", "{o:?}");
    s.ok(&["rm", "-f", "e1", "e2", "base"]);
}

/// `docker kill` then at once `docker rm` (what test harnesses do): the
/// kill returns once the container is dead, so the removal never finds it
/// running.
fn kill_then_remove(iso: &str) {
    let (_r, s) = served();
    let iso_flag = format!("--isolation={iso}");
    for i in 0..3 {
        let name = format!("k{i}");
        s.ok(&["run", "-d", "--name", &name, &iso_flag, "busybox", "sleep", "600"]);
        assert_eq!(s.ok(&["kill", &name]), format!("{name}\n"));
        assert_eq!(s.ok(&["rm", &name]), format!("{name}\n"), "removed without -f right after the kill");
    }
    docker_py(
        &s,
        &format!(
            "k = c.containers.run('busybox', ['sleep', '600'], detach=True, isolation='{iso}')\n\
             k.kill()\n\
             k.remove()\n\
             assert c.containers.list(all=True) == []"
        ),
    );
}

#[test]
fn kill_then_remove_process() {
    kill_then_remove("process");
}

#[test]
fn kill_then_remove_hyperv() {
    kill_then_remove("hyperv");
}

/// `container prune` reports the space its containers' writes took, and
/// `info` has dockerd's keys, its runtimes being moat's isolation types.
#[test]
fn prune_space_and_info_keys() {
    let (_r, s) = served();
    s.ok(&["run", "--name", "w", "busybox", "dd", "if=/dev/zero", "of=/blob", "bs=1M", "count=2"]);
    docker_py(
        &s,
        "r = c.containers.prune()\n\
         assert len(r['ContainersDeleted']) == 1 and r['SpaceReclaimed'] >= 2 * 1024 * 1024, r\n\
         i = c.info()\n\
         assert sorted(i['Runtimes']) == ['hyperv', 'process'] and i['DefaultRuntime'] == 'process', i['Runtimes']\n\
         assert i['Debug'] is False and i['ExperimentalBuild'] is False and i['LiveRestoreEnabled'] is True\n\
         assert i['Swarm']['LocalNodeState'] == 'inactive' and i['Swarm']['Error'] == ''",
    );
    assert_eq!(s.ok(&["info", "--format", "{{.DefaultRuntime}} {{.Swarm.LocalNodeState}}"]), "process inactive\n");
}

/// A path both in the config's `Volumes` and in a bind (what docker-py's
/// `volumes=` and `binds=` send together) is the bind, as dockerd makes it.
#[test]
fn a_bind_wins_over_a_declared_volume() {
    let (_r, s) = served();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "from the host\n").unwrap();
    docker_py(
        &s,
        &format!(
            "k = c.api.create_container('busybox', ['cat', '/mnt/f'], volumes=['/mnt', '/anon'],\n\
             host_config=c.api.create_host_config(binds={{'{}': {{'bind': '/mnt', 'mode': 'ro'}}}}))\n\
             c.api.start(k)\n\
             assert c.api.wait(k)['StatusCode'] == 0\n\
             assert c.api.logs(k) == b'from the host\\n', c.api.logs(k)\n\
             m = sorted((x['Destination'], x['Type']) for x in c.api.inspect_container(k)['Mounts'])\n\
             assert m == [('/anon', 'volume'), ('/mnt', 'bind')], m\n\
             c.api.remove_container(k, v=True)",
            host.path().display()
        ),
    );
}

/// `--add-host NAME:host-gateway` names the host as the container reaches
/// it (its switch's gateway), in both isolation types.
fn add_host_gateway(iso: &str) {
    let (_r, s) = served();
    let out = s.ok(&[
        "run",
        "--rm",
        &format!("--isolation={iso}"),
        "--add-host",
        "gw:host-gateway",
        "busybox",
        "sh",
        "-c",
        "gw=$(ip -4 route show default | cut -d' ' -f3); grep -x \"$gw\tgw\" /etc/hosts >/dev/null && echo listed; ping -c1 -W3 gw >/dev/null && echo reached",
    ]);
    assert_eq!(out, "listed\nreached\n");
}

#[test]
fn add_host_gateway_process() {
    add_host_gateway("process");
}

#[test]
fn add_host_gateway_hyperv() {
    add_host_gateway("hyperv");
}

/// `LogConfig` in inspect is what the client sent (no defaults added);
/// an unknown log driver gets dockerd's words.
#[test]
fn log_config_as_created() {
    let (_r, s) = served();
    s.ok(&["create", "--name", "l1", "busybox", "true"]);
    s.ok(&["create", "--name", "l2", "--log-opt", "max-size=1m", "busybox", "true"]);
    assert_eq!(
        s.ok(&["inspect", "-f", "{{json .HostConfig.LogConfig}}", "l1"]),
        "{\"Type\":\"json-file\",\"Config\":{}}\n"
    );
    assert_eq!(
        s.ok(&["inspect", "-f", "{{json .HostConfig.LogConfig}}", "l2"]),
        "{\"Type\":\"json-file\",\"Config\":{\"max-size\":\"1m\"}}\n"
    );
    let e = s.fails(&["create", "--log-driver", "syslog", "busybox", "true"]);
    assert!(e.contains("logger: no log driver named 'syslog' is registered"), "{e}");
    s.ok(&["rm", "l1", "l2"]);
}

/// `moat help CMD` is `moat CMD --help` (as `docker help CMD`), and a
/// missing argument is named in the one-line error.
#[test]
fn help_command_and_missing_arguments() {
    let r = Root::new();
    let o = r.run(&["help", "run"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("Create and start a container\n\nUsage: moat run [OPTIONS]"), "{out}");
    assert_eq!(r.run(&["run", "--help"]).stdout, o.stdout, "the same text as --help");
    let o = r.run(&["rm"]);
    assert_fails_one_line(&o, "rm without containers");
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "Error: missing <CONTAINERS>... (see 'moat --help')\n");
}

/// `run -q` pulls without a word (docker's `--quiet`); without it, the pull says so.
#[test]
fn run_quiet_pulls_silently() {
    let r = root_with_busybox();
    let reg = Registry::start();
    let name = format!("{}/busybox:q", reg.addr);
    r.ok(&["tag", "busybox", &name]);
    r.ok(&["push", "-q", &name]);
    r.ok(&["rmi", &name]);
    let o = r.run(&["run", "-q", "--rm", &name, "echo", "hi"]);
    assert_eq!(
        (String::from_utf8_lossy(&o.stdout).as_ref(), String::from_utf8_lossy(&o.stderr).as_ref()),
        ("hi\n", "")
    );
    r.ok(&["rmi", &name]);
    let o = r.run(&["run", "--rm", &name, "echo", "hi"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("Unable to find image"), "{o:?}");
}

/// The moat CLI takes docker's `network create --opt` and refuses it by
/// name, as the API does (never ignored); an IPv6 subnet without `--ipv6`
/// and an IPv6 prefix too small for the IPv4 host part are refused too.
#[test]
fn network_create_refuses_what_a_switch_cannot_do() {
    let r = Root::new();
    let e = r.fails(&["network", "create", "--opt", "com.docker.network.driver.mtu=1400", "o1"]);
    assert!(
        e.contains("\"com.docker.network.driver.mtu=1400\": network driver options (--opt) are not supported yet"),
        "{e}"
    );
    let e = r.fails(&["network", "create", "--subnet", "fd00:7::/64", "o2"]);
    assert!(e.contains("an IPv6 subnet needs --ipv6"), "{e}");
    let e = r.fails(&["network", "create", "--ipv6", "--subnet", "fd00:7::/112", "o4"]);
    assert!(e.contains("use a prefix of /48 to /96"), "{e}");
    assert_eq!(r.ok(&["network", "ls", "-q", "--filter", "name=o"]), "", "nothing created");
    r.ok(&["network", "create", "o3"]);
    r.ok(&["network", "rm", "o3"]);
}

/// Streams as dockerd frames them: an exec's output by the *start*
/// request's `Tty` (a tty exec started without it is multiplexed, and the
/// reverse), `attach` with `logs=1` and no `stream` answers the log at once
/// and ends, even for an exited container; the detach keys typed into a raw
/// client's stdin (docker-py's socket, no docker CLI in between) end its
/// session and leave the container running, for attach and exec.
#[test]
fn stream_framing_attach_logs_and_detach_keys() {
    let (r, s) = served();
    r.ok(&["run", "-d", "--name", "t", "-i", "busybox", "sh"]);
    let exec = |tty_create: bool, tty_start: bool| -> (u16, Vec<u8>) {
        let body = format!(r#"{{"Cmd":["echo","hi"],"AttachStdout":true,"AttachStderr":true,"Tty":{tty_create}}}"#);
        let (code, _, id) = http(&s.sock, "POST", "/containers/t/exec", Some(body.as_bytes()));
        assert_eq!(code, 201);
        let id: serde_json::Value = serde_json::from_slice(&id).unwrap();
        let start = format!(r#"{{"Detach":false,"Tty":{tty_start}}}"#);
        let (code, _, out) =
            http(&s.sock, "POST", &format!("/exec/{}/start", id["Id"].as_str().unwrap()), Some(start.as_bytes()));
        (code, out)
    };
    assert_eq!(exec(true, false), (200, b"\x01\0\0\0\0\0\0\x04hi\r\n".to_vec()), "a tty exec started without Tty");
    assert_eq!(exec(true, true), (200, b"hi\r\n".to_vec()), "a tty exec started with Tty");
    assert_eq!(exec(false, false), (200, b"\x01\0\0\0\0\0\0\x03hi\n".to_vec()), "no tty at all");
    assert_eq!(exec(false, true), (200, b"hi\n".to_vec()), "no tty, started raw");
    // attach logs=1 without stream: the log, then the end (here of an exited container)
    r.ok(&["run", "--name", "lg", "busybox", "sh", "-c", "echo one; sleep 0.2; echo two >&2"]);
    docker_py(
        &s,
        "c = docker.DockerClient(base_url=sys.argv[1], timeout=20)\n\
         out = c.api.attach('lg', stdout=True, stderr=True, logs=True)\n\
         assert out == b'one\\ntwo\\n', out\n\
         assert c.api.attach('lg', stdout=True, stderr=False, logs=True) == b'one\\n'\n\
         assert c.api.attach('lg', logs=False) == b''",
    );
    // detach keys through a raw socket: input before them reaches the
    // shell (positive control), the keys end the session, the container runs
    docker_py(
        &s,
        "def session(sock):\n    s = sock._sock\n    s.settimeout(20)\n    return s\n\
         def drain(s):\n    data = b''\n    while True:\n        b = s.recv(4096)\n        if not b:\n            return data\n        data += b\n\
         sk = session(c.api.attach_socket('t', params={'stdin': 1, 'stdout': 1, 'stream': 1, 'detachKeys': 'ctrl-x,y'}))\n\
         sk.sendall(b'echo through-attach\\n')\n\
         out = b''\n\
         while b'through-attach' not in out:\n    out += sk.recv(4096)\n\
         sk.sendall(b'\\x18y')\n\
         assert drain(sk) == b''\n\
         assert c.containers.get('t').status == 'running'\n\
         e = c.api.exec_create('t', 'cat', stdin=True, detach_keys='ctrl-p,ctrl-q')\n\
         sk = session(c.api.exec_start(e['Id'], socket=True))\n\
         sk.sendall(b'through-exec\\n')\n\
         out = b''\n\
         while b'through-exec' not in out:\n    out += sk.recv(4096)\n\
         sk.sendall(b'\\x10\\x11')\n\
         assert drain(sk) == b''\n\
         assert c.api.exec_inspect(e['Id'])['DetachKeys'] == 'ctrl-p,ctrl-q'\n\
         assert c.containers.get('t').status == 'running'",
    );
    // the shell still reads: its stdin was not closed by either detach
    assert_eq!(s.ok(&["exec", "t", "sh", "-c", "echo alive"]), "alive\n");
    // bad keys: a 400 before the upgrade (the docker CLI shows only the status, as with dockerd)
    let (code, _, body) = http(&s.sock, "POST", "/containers/t/attach?stdin=1&stream=1&detachKeys=ctrl-", None);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (code, v["message"].as_str().unwrap()),
        (400, "invalid detach key \"ctrl-\" in \"ctrl-\": use letters or ctrl-<key>, comma-separated")
    );
    r.ok(&["rm", "-f", "t", "lg"]);
}

/// `/images/load` streams Docker's JSON lines and a bad archive is the
/// stream's `errorDetail` (docker-py's `ImageLoadError`); a pull that cannot
/// start (no registry there, no such repository) is an HTTP error before any
/// stream, as dockerd answers, and one that fails midway (a layer the
/// registry lost) ends its stream with the error.
#[test]
fn load_and_pull_errors_where_dockerd_puts_them() {
    let r = Root::new();
    let s = ApiServer::start(&r);
    let archive = busybox_archive().0.display().to_string();
    docker_py(
        &s,
        &format!(
            "imgs = c.images.load(open('{archive}', 'rb').read())\n\
             assert [i.tags for i in imgs] == [['busybox:latest']], imgs\n\
             try:\n    c.images.load(b'this is not a tar archive' * 100)\n    raise SystemExit('garbage loaded')\n\
             except docker.errors.ImageLoadError as e:\n    assert str(e), e"
        ),
    );
    let (code, ctype, body) = http(&s.sock, "POST", "/images/load", Some(b"garbage"));
    let last: serde_json::Value = serde_json::from_slice(body.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!((code, ctype.as_str()), (200, "application/json"));
    assert!(last["errorDetail"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{last}");
    // cannot start: an HTTP error, the docker CLI's "Error response from daemon"
    let reg = Registry::start();
    for (path, want) in [
        ("/images/create?fromImage=127.0.0.1:1/nosuch&tag=1", 500),
        (&*format!("/images/create?fromImage={}/nosuch&tag=1", reg.addr), 404),
    ] {
        let (code, _, body) = http(&s.sock, "POST", path, None);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(code, want, "{path}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let e = s.fails(&["pull", &format!("{}/nosuch:1", reg.addr)]);
    assert!(e.starts_with("Error response from daemon: "), "{e}");
    // started, then failed: the stream's last line
    let name = format!("{}/bb:1", reg.addr);
    r.ok(&["tag", "busybox", &name]);
    r.ok(&["push", &name]);
    r.ok(&["rmi", &name, "busybox"]);
    let blobs = walk(&reg.dir.path().join("data/docker/registry/v2/blobs"));
    let layer =
        blobs.iter().filter(|p| p.ends_with("data")).max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    assert!(std::fs::metadata(layer).unwrap().len() > 100_000, "the layer is the biggest blob");
    std::fs::remove_file(layer).unwrap();
    let (code, _, body) = http(&s.sock, "POST", &format!("/images/create?fromImage={}/bb&tag=1", reg.addr), None);
    let text = String::from_utf8_lossy(&body);
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(code, 200, "{text}");
    assert!(text.lines().next().unwrap().contains("Pulling from"), "{text}");
    assert!(last["errorDetail"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
    assert_eq!(s.ok(&["images", "-q"]), "", "nothing stored");
}

/// A committed image records the image its container was made from
/// (`Parent` in inspect, `ParentId` in the list), as dockerd does; a loaded
/// image has none.
#[test]
fn commit_records_its_parent() {
    let (r, s) = served();
    let base = r.ok(&["inspect", "-f", "{{.Id}}", "busybox"]).trim().to_string();
    assert_eq!(s.ok(&["inspect", "-f", "{{.Parent}}", "busybox"]), "\n", "loaded: no parent");
    s.ok(&["run", "--name", "p", "busybox", "touch", "/made"]);
    let id = s.ok(&["commit", "p", "child:1"]).trim().to_string();
    assert_eq!(s.ok(&["inspect", "-f", "{{.Parent}}", "child:1"]).trim(), base);
    docker_py(
        &s,
        &format!(
            "img = [i for i in c.api.images() if i['Id'] == '{id}'][0]\n\
             assert img['ParentId'] == '{base}', img"
        ),
    );
    assert_eq!(r.ok(&["image", "inspect", "-f", "{{.Parent}}", "child:1"]).trim(), base, "the moat CLI too");
}

/// `--pid=host`, `--ipc=host`, `--uts=host`, `--cgroupns=host` share the host's namespaces in
/// process isolation (read from the kernel: the container's `/proc/PID/ns`
/// links are the test's own, against a default container's as positive
/// control), through the docker CLI and the moat CLI, execs included; a
/// utility VM refuses each with the reason, and a hostname with `--uts=host`
/// is a conflict.
#[test]
fn host_namespaces_in_process_isolation() {
    let (r, s) = served();
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    let pid_of = |name: &str| r.ok(&["inspect", "-f", "{{.State.Pid}}", name]).trim().to_string();
    s.ok(&["run", "-d", "--name", "hostns", "--pid=host", "--ipc=host", "--uts=host", "busybox", "sleep", "600"]);
    r.ok(&["run", "-d", "--name", "own", "busybox", "sleep", "600"]);
    let (shared, own) = (pid_of("hostns"), pid_of("own"));
    for kind in ["pid", "ipc", "uts"] {
        assert_eq!(ns(&shared, kind), ns("self", kind), "{kind}: the host's");
        assert_ne!(ns(&own, kind), ns("self", kind), "{kind}: a default container has its own");
    }
    // the host's processes and names are the container's
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(s.ok(&["exec", "hostns", "hostname"]), host_name);
    assert_eq!(s.ok(&["exec", "hostns", "cat", "/proc/1/comm"]), std::fs::read_to_string("/proc/1/comm").unwrap());
    assert_eq!(s.ok(&["exec", "own", "cat", "/proc/1/comm"]), "sleep\n", "positive control");
    // the host's /dev/shm: a file made in the container is the host's
    let shm = format!("moat-test-{}", std::process::id());
    s.ok(&["exec", "hostns", "touch", &format!("/dev/shm/{shm}")]);
    let host_file = std::path::Path::new("/dev/shm").join(&shm);
    let seen = host_file.exists();
    let _ = std::fs::remove_file(&host_file);
    assert!(seen, "the container's /dev/shm is the host's");
    let f = "{{.HostConfig.PidMode}} {{.HostConfig.IpcMode}} {{.HostConfig.UTSMode}}";
    assert_eq!(s.ok(&["inspect", "-f", f, "hostns"]), "host host host\n");
    assert_eq!(s.ok(&["inspect", "-f", f, "own"]), " private \n");
    // conflicts and refusals
    let e = r.fails(&["create", "--uts=host", "-h", "x", "busybox", "true"]);
    assert!(e.contains("conflicting options: hostname and the UTS mode host"), "{e}");
    let e = r.fails(&["create", "--pid=container:own", "busybox", "true"]);
    assert!(e.contains("sharing another container's namespace is not supported"), "{e}");
    for flag in ["--pid=host", "--ipc=host", "--uts=host"] {
        let e = s.fails(&["create", "--isolation=hyperv", flag, "busybox", "true"]);
        assert!(e.contains(&format!("{}=host shares a namespace of the host's kernel", &flag[..5])), "{flag}: {e}");
    }
    // nor does a stopped one convert into a VM
    r.ok(&["stop", "-t", "0", "hostns"]);
    let e = r.fails(&["update", "--isolation=hyperv", "hostns"]);
    assert!(e.contains("--pid=host shares a namespace of the host's kernel"), "{e}");
    // --cgroupns=host: the host's cgroup namespace (a default container's is its own)
    s.ok(&["run", "-d", "--name", "cgh", "--cgroupns=host", "busybox", "sleep", "600"]);
    s.ok(&["start", "own"]);
    let (cgh, own) = (pid_of("cgh"), pid_of("own"));
    assert_eq!(ns(&cgh, "cgroup"), ns("self", "cgroup"));
    assert_ne!(ns(&own, "cgroup"), ns("self", "cgroup"), "positive control");
    assert_eq!(s.ok(&["inspect", "-f", "{{.HostConfig.CgroupnsMode}}", "cgh"]), "host\n");
    // --runtime names the isolation type, as info lists the runtimes
    s.ok(&["create", "--name", "rt", "--runtime", "hyperv", "busybox", "true"]);
    let f = "{{.HostConfig.Isolation}} {{.HostConfig.Runtime}}";
    assert_eq!(s.ok(&["inspect", "-f", f, "rt"]), "hyperv hyperv\n");
    assert_eq!(r.ok(&["inspect", "-f", f, "own"]), "process process\n");
    let e = s.fails(&["create", "--runtime", "process", "--isolation", "hyperv", "busybox", "true"]);
    assert!(e.contains("conflicting options: runtime process and isolation hyperv"), "{e}");
    let e = s.fails(&["create", "--runtime", "nvidia", "busybox", "true"]);
    assert!(e.contains("unknown or invalid runtime name: nvidia"), "{e}");
    r.ok(&["rm", "-f", "hostns", "own", "cgh", "rt"]);
}

/// `--cpuset-cpus`/`--cpuset-mems` pin a process container (the kernel's
/// `Cpus_allowed_list` of its process says so, a default container's is
/// every CPU); CPUs the host lacks are refused with dockerd's words; a
/// utility VM refuses a cpuset with the reason; `update` applies
/// `--cpu-quota` and refuses a cpuset change by name.
#[test]
fn cpusets_and_update_quota() {
    let (r, s) = served();
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap().trim().to_string();
    let last = online.rsplit(['-', ',']).next().unwrap().to_string();
    s.ok(&["run", "-d", "--name", "pinned", "--cpuset-cpus", &last, "--cpuset-mems", "0", "busybox", "sleep", "600"]);
    r.ok(&["run", "-d", "--name", "free", "busybox", "sleep", "600"]);
    let allowed = |name: &str| {
        let pid = r.ok(&["inspect", "-f", "{{.State.Pid}}", name]);
        let st = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
        st.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_string()
    };
    assert_eq!(allowed("pinned"), last);
    assert_eq!(allowed("free"), online, "positive control: every CPU");
    let f = "{{.HostConfig.CpusetCpus}} {{.HostConfig.CpusetMems}}";
    assert_eq!(s.ok(&["inspect", "-f", f, "pinned"]), format!("{last} 0\n"));
    let e = s.fails(&["create", "--cpuset-cpus", "0-99", "busybox", "true"]);
    assert!(e.contains(&format!("Requested CPUs are not available - requested 0-99, available: {online}")), "{e}");
    let e = r.fails(&["create", "--cpuset-cpus", "x", "busybox", "true"]);
    assert!(e.contains("invalid cpuset \"x\""), "{e}");
    let e = s.fails(&["create", "--isolation=hyperv", "--cpuset-cpus", "0", "busybox", "true"]);
    assert!(e.contains("which a utility VM's vCPUs and memory are not"), "{e}");
    let e = s.fails(&["update", "--cpuset-cpus", "0", "free"]);
    assert!(e.contains("CpusetCpus \"0\": a container's cpuset is fixed at create"), "{e}");
    // update --cpu-quota: the kernel's CFS quota
    let id = r.ok(&["inspect", "-f", "{{.Id}}", "free"]).trim().to_string();
    s.ok(&["update", "--cpu-quota", "30000", "free"]);
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let got = if v2 {
        std::fs::read_to_string(format!("/sys/fs/cgroup/moat/{id}/cpu.max")).unwrap()
    } else {
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/moat/{id}/cpu.cfs_quota_us")).unwrap()
    };
    assert_eq!(got.trim(), if v2 { "30000 100000" } else { "30000" });
    let pinned = r.ok(&["inspect", "-f", "{{.Id}}", "pinned"]).trim().to_string();
    if !v2 {
        assert!(cgroups_of(&pinned).iter().any(|d| d.starts_with("/sys/fs/cgroup/cpuset")), "the cpuset hierarchy");
    }
    r.ok(&["rm", "-f", "pinned", "free"]);
    assert!(cgroups_of(&id).is_empty() && cgroups_of(&pinned).is_empty(), "no cgroup left in any hierarchy");
}

/// A process container sees its own cgroup at `/sys/fs/cgroup`, read-only,
/// on a v1 host as on a v2 one (JVMs and Go's runtime size themselves from
/// it): its memory limit and CPU quota there, no other container's cgroup,
/// `/proc/self/cgroup` rooted at its own.
#[test]
fn own_cgroup_at_sys_fs_cgroup() {
    let (r, s) = served();
    let other = r.ok(&["run", "-d", "busybox", "sleep", "600"]).trim().to_string();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let probe = if v2 {
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max"
    } else {
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
    };
    let out = s.ok(&["run", "--rm", "-m", "64m", "--cpus", "0.5", "busybox", "sh", "-c", probe]);
    assert_eq!(out, if v2 { "67108864\n50000 100000\n" } else { "67108864\n50000\n" });
    let listing = r.ok(&["run", "--rm", "busybox", "find", "/sys/fs/cgroup", "-maxdepth", "3"]);
    assert!(listing.lines().count() > 5, "the hierarchies are there: {listing}");
    assert!(!listing.contains(&other[..12]) && !listing.contains("/moat"), "no other container's cgroup: {listing}");
    let o = r.run(&["run", "--rm", "busybox", "touch", "/sys/fs/cgroup/x"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("Read-only file system"), "{o:?}");
    let own = r.ok(&["run", "--rm", "-m", "64m", "busybox", "cat", "/proc/self/cgroup"]);
    assert!(own.lines().all(|l| l.ends_with(":/")), "rooted at its own cgroup: {own}");
    r.ok(&["rm", "-f", &other]);
}

/// `GET /distribution/{name}/json` asks the registry (a real one on
/// 127.0.0.1): the manifest's digest as skopeo sees it and the image's
/// platform from its config, through docker-py's `get_registry_data`; a
/// missing repository is a 404.
#[test]
fn distribution_inspect_asks_the_registry() {
    let (r, s) = served();
    let reg = Registry::start();
    let name = format!("{}/bb:1", reg.addr);
    r.ok(&["tag", "busybox", &name]);
    r.ok(&["push", &name]);
    let o =
        Command::new("skopeo").args(["inspect", "--tls-verify=false", &format!("docker://{name}")]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let digest =
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["Digest"].as_str().unwrap().to_string();
    docker_py(
        &s,
        &format!(
            "d = c.images.get_registry_data('{name}')\n\
             assert d.id == '{digest}', d.id\n\
             assert d.has_platform('linux/amd64') and not d.has_platform('linux/arm64'), d.attrs\n\
             assert d.attrs['Descriptor']['mediaType'] == 'application/vnd.oci.image.manifest.v1+json', d.attrs\n\
             assert d.attrs['Descriptor']['size'] > 0, d.attrs"
        ),
    );
    let (code, _, body) = http(&s.sock, "GET", &format!("/distribution/{}/nosuch:1/json", reg.addr), None);
    assert_eq!(code, 404, "{}", String::from_utf8_lossy(&body));
}

/// Serves `body` at `/rootfs.tar` on 127.0.0.1 (404 elsewhere) for `n`
/// requests; the URL's base.
fn serve_file(body: Vec<u8>, n: usize) -> String {
    use std::io::{BufRead, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().take(n).flatten() {
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let mut s = s;
            if line.starts_with("GET /rootfs.tar ") {
                write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
                s.write_all(&body).unwrap();
            } else {
                write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
            }
        }
    });
    base
}

/// `POST /images/create?fromSrc=` imports a rootfs tarball through the API:
/// from the body (`docker import FILE`, docker-py's
/// `import_image_from_data`, with `--change` and a message) and from a URL
/// (a server of the test's own on 127.0.0.1; the moat CLI too); a missing
/// URL is an error that says so.
#[test]
fn import_through_the_api() {
    let r = Root::new();
    let s = ApiServer::start(&r);
    let tar = tar_dir(busybox_rootfs());
    let file = write_fixture("import-rootfs.tar", &tar);
    let out = s.ok(&[
        "import",
        "-m",
        "from a file",
        "--change",
        "CMD [\"echo\", \"changed\"]",
        file.to_str().unwrap(),
        "imp:1",
    ]);
    assert!(out.trim().starts_with("sha256:") && out.trim().len() == 71, "{out}");
    assert_eq!(s.ok(&["run", "--rm", "imp:1"]), "changed\n");
    assert_eq!(s.ok(&["history", "--format", "{{.Comment}}", "imp:1"]), "from a file\n");
    docker_py(
        &s,
        &format!(
            "data = open('{}', 'rb').read()\n\
             c.api.import_image_from_data(data, repository='py', tag='1')\n\
             assert c.images.get('py:1').attrs['RootFS']['Layers'], 'imported'",
            file.display()
        ),
    );
    let base = serve_file(tar, 3);
    s.ok(&["import", &format!("{base}/rootfs.tar"), "fromurl:1"]);
    assert_eq!(s.ok(&["run", "--rm", "fromurl:1", "/bin/echo", "from a URL"]), "from a URL\n");
    r.ok(&["import", &format!("{base}/rootfs.tar"), "cliurl:1"]);
    assert_eq!(r.ok(&["run", "--rm", "cliurl:1", "/bin/echo", "the CLI too"]), "the CLI too\n");
    let e = s.fails(&["import", &format!("{base}/missing.tar"), "nope:1"]);
    assert!(e.contains("404 Not Found"), "{e}");
    assert!(r.fails(&["image", "inspect", "nope:1"]).contains("No such"));
}

/// Legacy links as dockerd makes them: the alias (with the linked
/// container's hostname and name) in `/etc/hosts`, Docker's `ALIAS_*`
/// variables (exposed ports, name, the linked container's environment),
/// `HostConfig.Links` in inspect, `rm --link` removing one; a missing or
/// stopped container refused with dockerd's words; in both isolation types.
fn legacy_links(iso: &str) {
    let (r, s) = served();
    let iso_flag = format!("--isolation={iso}");
    s.ok(&["run", "-d", "--name", "db", "-e", "SECRET=s3", "--expose", "5432", "busybox", "sleep", "600"]);
    let ip =
        r.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "db"]).trim().to_string();
    let host = r.ok(&["inspect", "-f", "{{.Config.Hostname}}", "db"]).trim().to_string();
    s.ok(&["run", "-d", "--name", "web", &iso_flag, "--link", "db:pg", "busybox", "sleep", "600"]);
    let env = s.ok(&["exec", "web", "sh", "-c", "env | grep ^PG_ | sort"]);
    assert_eq!(
        env,
        format!(
            "PG_ENV_SECRET=s3\nPG_NAME=/web/pg\nPG_PORT=tcp://{ip}:5432\nPG_PORT_5432_TCP=tcp://{ip}:5432\n\
             PG_PORT_5432_TCP_ADDR={ip}\nPG_PORT_5432_TCP_PORT=5432\nPG_PORT_5432_TCP_PROTO=tcp\n"
        )
    );
    assert_eq!(s.ok(&["exec", "web", "grep", "-w", "pg", "/etc/hosts"]), format!("{ip}\tpg {host} db\n"));
    // the alias reaches it (traffic between moat's own containers on its switch)
    s.ok(&["exec", "web", "ping", "-c", "1", "-W", "5", "pg"]);
    assert_eq!(s.ok(&["inspect", "-f", "{{.HostConfig.Links}}", "web"]), "[/db:/web/pg]\n");
    // rm --link: the alias leaves /etc/hosts at once
    s.ok(&["rm", "--link", "/web/pg"]);
    assert_eq!(s.ok(&["inspect", "-f", "{{.HostConfig.Links}}", "web"]), "[]\n");
    let o = s.docker(&["exec", "web", "grep", "-w", "pg", "/etc/hosts"]);
    assert_eq!(o.status.code(), Some(1), "gone from /etc/hosts: {o:?}");
    // a link resolves on a shared switch: from another one it is refused, nothing created
    s.ok(&["network", "create", "elsewhere"]);
    let e =
        s.fails(&["create", "--name", "far", &iso_flag, "--network", "elsewhere", "--link", "db", "busybox", "true"]);
    assert!(e.contains("cannot link to db: the two containers share no switch"), "{e}");
    assert_eq!(s.ok(&["ps", "-aq", "--filter", "name=far"]), "");
    s.ok(&["network", "rm", "elsewhere"]);
    let e = s.fails(&["run", "--rm", &iso_flag, "--link", "nosuch:x", "busybox", "true"]);
    assert!(e.contains("could not get container for nosuch"), "{e}");
    s.ok(&["stop", "-t", "0", "db"]);
    let e = s.fails(&["run", "--rm", &iso_flag, "--link", "db", "busybox", "true"]);
    assert!(e.contains("Cannot link to a non running container: /db AS /"), "{e}");
    r.ok(&["rm", "-f", "web", "db"]);
}

#[test]
fn legacy_links_process() {
    legacy_links("process");
}

#[test]
fn legacy_links_hyperv() {
    legacy_links("hyperv");
}

/// Names in a request's path are URL-decoded: a switch named with a space
/// is found by `docker network inspect/connect/rm` (the path holds `%20`).
#[test]
fn names_in_paths_are_decoded() {
    let (r, s) = served();
    s.ok(&["network", "create", "my net"]);
    assert_eq!(s.ok(&["network", "inspect", "-f", "{{.Name}}", "my net"]), "my net\n");
    s.ok(&["create", "--name", "c", "busybox", "true"]);
    s.ok(&["network", "connect", "my net", "c"]);
    assert_eq!(r.ok(&["inspect", "-f", "{{len .NetworkSettings.Networks}}", "c"]), "2\n");
    s.ok(&["network", "disconnect", "my net", "c"]);
    s.ok(&["network", "rm", "my net"]);
    assert_eq!(s.ok(&["network", "ls", "-q", "--filter", "name=my net"]), "");
}

/// What a first-week user typed: `ps --filter publish/expose/volume`,
/// `{{.Label "KEY"}}`, `inspect -s` (and `?size=1` through the docker CLI),
/// `system df -v`, `run --expose`, answered as Docker answers them.
#[test]
fn cli_filters_label_sizes_and_df_verbose() {
    let (r, s) = served();
    r.ok(&["run", "-d", "--name", "a", "-l", "x=1", "-l", "com.y=two", "-p", "127.0.0.1::80", "--expose", "90-91/udp"]
        .into_iter()
        .chain(["-v", "vol1:/data", "busybox", "sh", "-c", "head -c 4096 /dev/zero > /f; sleep 600"])
        .collect::<Vec<_>>());
    r.ok(&["run", "-d", "--name", "b", "busybox", "sleep", "600"]);
    let names = |filter: &str| r.ok(&["ps", "--filter", filter, "--format", "{{.Names}}"]);
    for f in [
        "publish=80",
        "publish=80/tcp",
        "expose=91/udp",
        "expose=90-95/udp",
        "expose=80",
        "volume=vol1",
        "volume=/data",
    ] {
        assert_eq!(names(f), "a\n", "{f}");
    }
    for f in ["publish=90", "expose=90", "volume=nosuch", "publish=80/udp"] {
        assert_eq!(names(f), "", "{f}");
    }
    assert!(r.fails(&["ps", "--filter", "publish=http"]).contains("invalid filter 'publish=http'"));
    let got = r.ok(&["ps", "--format", "{{.Names}} [{{.Label \"x\"}}] [{{.Label \"com.y\"}}]"]);
    let mut lines: Vec<&str> = got.lines().collect();
    lines.sort();
    assert_eq!(lines, ["a [1] [two]", "b [] []"]);
    // sizes only when asked; the container wrote 4 KiB
    eventually("the file is written", || r.ok(&["exec", "a", "ls", "-l", "/f"]).contains("4096"));
    let f = "{{.SizeRw}} {{.SizeRootFs}}";
    let moat = r.ok(&["inspect", "-s", "-f", f, "a"]);
    let docker = s.ok(&["inspect", "-s", "-f", f, "a"]);
    assert_eq!(moat, docker, "the API's ?size=1 is the same");
    let (rw, root): (u64, u64) = {
        let mut it = moat.split_whitespace().map(|n| n.parse().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    assert!((4096..65536).contains(&rw) && root > rw, "{moat}");
    let (code, _, body) = http(&s.sock, "GET", "/containers/a/json", None);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(code == 200 && v.get("SizeRw").is_none(), "no sizes unless asked");
    let df = r.ok(&["system", "df", "-v"]);
    for h in ["Images space usage:", "Containers space usage:", "Local Volumes space usage:", "Build cache usage: 0B"] {
        assert!(df.contains(h), "{h}: {df}");
    }
    assert!(df.lines().any(|l| l.starts_with("busybox ") && l.trim_end().ends_with(" 2")), "{df}");
    assert!(df.lines().any(|l| l.starts_with("vol1 ") && l.split_whitespace().nth(1) == Some("1")), "{df}");
    r.ok(&["rm", "-f", "a", "b"]);
}

/// `--device-cgroup-rule` adds to the device allow-list the kernel
/// enforces: `/dev/kmsg` given read-only (`--device …:r`) cannot be opened
/// for writing (the positive control) until a rule adds `w`; a bad rule is
/// refused, and so is any rule for a utility VM, which host devices cannot
/// reach.
#[test]
fn device_cgroup_rules() {
    let (r, s) = served();
    let probe = "(exec 3>/dev/kmsg) && echo opened";
    let o = s.docker(&["run", "--rm", "--device", "/dev/kmsg:/dev/kmsg:r", "busybox", "sh", "-c", probe]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && o.stdout.is_empty() && e.contains("/dev/kmsg"), "read-only: {o:?}");
    let rule = ["--device", "/dev/kmsg:/dev/kmsg:r", "--device-cgroup-rule", "c 1:11 w"];
    let args: Vec<&str> = ["run", "--rm"].into_iter().chain(rule).chain(["busybox", "sh", "-c", probe]).collect();
    assert_eq!(s.ok(&args), "opened\n");
    let f = "{{.HostConfig.DeviceCgroupRules}}";
    let args: Vec<&str> = ["create", "--name", "dc"].into_iter().chain(rule).chain(["busybox", "true"]).collect();
    s.ok(&args);
    assert_eq!(s.ok(&["inspect", "-f", f, "dc"]), "[c 1:11 w]\n");
    // (the docker CLI checks the syntax itself; the moat CLI and the API through the engine)
    let e = r.fails(&["create", "--device-cgroup-rule", "x 1:11 w", "busybox", "true"]);
    assert!(e.contains("invalid device cgroup rule \"x 1:11 w\""), "{e}");
    let e = s.fails(&["create", "--isolation=hyperv", "--device-cgroup-rule", "c 1:11 w", "busybox", "true"]);
    assert!(e.contains("cannot reach a utility VM"), "{e}");
}

/// Dual-stack switches (`--ipv6`, an IPv6 `--subnet`): each container gets
/// the IPv6 address that goes with its IPv4 one (the kernel's
/// `/proc/net/if_inet6` shows it), reaches the others by it and by name
/// (its `/etc/hosts` has both families), in both isolation types; inspect
/// shows Docker's IPv6 keys; a container on an IPv4-only switch has no
/// IPv6 at all (the positive control); a chosen IPv6 address is refused.
fn dual_stack(iso: &str) {
    let (r, s) = served();
    let iso_flag = format!("--isolation={iso}");
    let net = if iso == "process" {
        ("10.99.9.0/24", "fd00:99:9::/64", "fd00:99:9::")
    } else {
        ("10.99.10.0/24", "fd00:99:10::/64", "fd00:99:10::")
    };
    s.ok(&["network", "create", "--ipv6", "--subnet", net.0, "--subnet", net.1, "dual"]);
    let v: serde_json::Value =
        serde_json::from_str(&s.ok(&["network", "inspect", "-f", "{{json .}}", "dual"])).unwrap();
    assert_eq!(v["EnableIPv6"], true);
    assert_eq!(v["IPAM"]["Config"][1], serde_json::json!({"Subnet": net.1, "Gateway": format!("{}1", net.2)}));
    s.ok(&["run", "-d", "--name", "a", &iso_flag, "--network", "dual", "busybox", "sleep", "600"]);
    s.ok(&["run", "-d", "--name", "b", "--network", "dual", "busybox", "sleep", "600"]);
    let f = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}}/{{.GlobalIPv6PrefixLen}} {{.IPv6Gateway}}{{end}}";
    let a = s.ok(&["inspect", "-f", f, "a"]);
    let (ip4, ip6) = {
        let w: Vec<&str> = a.split_whitespace().collect();
        (w[0].to_string(), w[1].trim_end_matches("/64").to_string())
    };
    let host_part: u8 = ip4.rsplit('.').next().unwrap().parse().unwrap();
    assert_eq!(a, format!("{ip4} {}{host_part:x}/64 {}1\n", net.2, net.2), "the IPv6 address follows the IPv4 one");
    // the kernel's view inside the container: the address on eth0
    let hex: String = ip6.parse::<std::net::Ipv6Addr>().unwrap().octets().iter().map(|b| format!("{b:02x}")).collect();
    let table = s.ok(&["exec", "a", "cat", "/proc/net/if_inet6"]);
    assert!(table.lines().any(|l| l.starts_with(&hex) && l.ends_with("eth0")), "{table}");
    // reachable by address and by name, both ways (traffic on moat's own bridge)
    s.ok(&["exec", "b", "ping", "-6", "-c", "1", "-W", "5", &ip6]);
    s.ok(&["exec", "b", "ping", "-6", "-c", "1", "-W", "5", "a"]);
    let b6 = s.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}", "b"]);
    s.ok(&["exec", "a", "ping", "-6", "-c", "1", "-W", "5", b6.trim()]);
    let hosts = s.ok(&["exec", "b", "cat", "/etc/hosts"]);
    assert!(hosts.lines().any(|l| l.starts_with(&format!("{ip6}\ta "))), "{hosts}");
    // positive control: an IPv4-only switch gives no IPv6
    r.ok(&["run", "-d", "--name", "v4", &iso_flag, "busybox", "sleep", "600"]);
    let t = s.ok(&["exec", "v4", "cat", "/proc/net/if_inet6"]);
    assert!(!t.contains("eth0"), "no IPv6 on an IPv4-only switch: {t}");
    assert_eq!(
        s.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}[{{.GlobalIPv6Address}}]{{end}}", "v4"]),
        "[]\n"
    );
    docker_py(
        &s,
        "try:\n    c.containers.create('busybox', network='dual', networking_config={'dual': c.api.create_endpoint_config(ipv6_address='fd00::9')})\n    raise SystemExit('created')\n\
         except docker.errors.APIError as e:\n    assert e.status_code == 400 and 'IPv6Address' in str(e), e",
    );
    r.ok(&["rm", "-f", "a", "b", "v4"]);
    s.ok(&["network", "rm", "dual"]);
}

#[test]
fn dual_stack_process() {
    dual_stack("process");
}

#[test]
fn dual_stack_hyperv() {
    dual_stack("hyperv");
}

/// `--memory-reservation` (both isolation types: v1's soft limit, a
/// guest's v2 `memory.low`; `update` changes it), `--memory-swappiness` and
/// `--oom-kill-disable` (cgroup v1: this host; refused with the reason where
/// the cgroup is v2, as in a VM's guest), `--annotation` recorded; each read
/// from the kernel's cgroup files.
fn memory_knobs(iso: &str) {
    let (r, s) = served();
    let iso_flag = format!("--isolation={iso}");
    s.ok(&[
        "run",
        "-d",
        "--name",
        "m",
        &iso_flag,
        "-m",
        "64m",
        "--memory-reservation",
        "32m",
        "--annotation",
        "org.example/a=b",
        "busybox",
        "sleep",
        "600",
    ]);
    let id = r.ok(&["inspect", "-f", "{{.Id}}", "m"]).trim().to_string();
    let v2_host = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let reservation = || -> String {
        if iso == "hyperv" {
            s.ok(&["exec", "m", "cat", "/sys/fs/cgroup/memory.low"])
        } else if v2_host {
            std::fs::read_to_string(format!("/sys/fs/cgroup/moat/{id}/memory.low")).unwrap()
        } else {
            std::fs::read_to_string(format!("/sys/fs/cgroup/memory/moat/{id}/memory.soft_limit_in_bytes")).unwrap()
        }
    };
    assert_eq!(reservation().trim(), "33554432");
    s.ok(&["update", "--memory-reservation", "48m", "m"]);
    assert_eq!(reservation().trim(), "50331648", "update changes it");
    let f = "{{.HostConfig.MemoryReservation}} {{.HostConfig.Annotations}}";
    assert_eq!(s.ok(&["inspect", "-f", f, "m"]), "50331648 map[org.example/a:b]\n");
    let e = r.fails(&["create", "-m", "32m", "--memory-reservation", "64m", "busybox", "true"]);
    assert!(e.contains("Minimum memory limit can not be less than memory reservation limit"), "{e}");
    if iso == "hyperv" || v2_host {
        for flag in [&["--memory-swappiness", "10"][..], &["-m", "64m", "--oom-kill-disable"]] {
            let args: Vec<&str> = ["create", iso_flag.as_str()]
                .into_iter()
                .chain(flag.iter().copied())
                .chain(["busybox", "true"])
                .collect();
            let e = s.fails(&args);
            assert!(e.contains("needs cgroup v1"), "{flag:?}: {e}");
        }
    } else {
        s.ok(&[
            "run",
            "-d",
            "--name",
            "sw",
            "-m",
            "64m",
            "--memory-swappiness",
            "10",
            "--oom-kill-disable",
            "busybox",
            "sleep",
            "600",
        ]);
        let sid = r.ok(&["inspect", "-f", "{{.Id}}", "sw"]).trim().to_string();
        let d = format!("/sys/fs/cgroup/memory/moat/{sid}");
        assert_eq!(std::fs::read_to_string(format!("{d}/memory.swappiness")).unwrap().trim(), "10");
        let oc = std::fs::read_to_string(format!("{d}/memory.oom_control")).unwrap();
        assert!(oc.lines().any(|l| l == "oom_kill_disable 1"), "{oc}");
        // positive control: the default container's
        let dm = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/moat/{id}/memory.oom_control")).unwrap();
        assert!(dm.lines().any(|l| l == "oom_kill_disable 0"), "{dm}");
        let f = "{{.HostConfig.MemorySwappiness}} {{.HostConfig.OomKillDisable}}";
        assert_eq!(s.ok(&["inspect", "-f", f, "sw"]), "10 true\n");
        let e = r.fails(&["create", "--memory-swappiness", "101", "busybox", "true"]);
        assert!(e.contains("invalid value: 101, valid memory swappiness range is 0-100"), "{e}");
        r.ok(&["rm", "-f", "sw"]);
    }
    r.ok(&["rm", "-f", "m"]);
}

#[test]
fn memory_knobs_process() {
    memory_knobs("process");
}

#[test]
fn memory_knobs_hyperv() {
    memory_knobs("hyperv");
}
