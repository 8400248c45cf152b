//! Docker CLI parity (issue #12): the bugs a Docker user hit on day one,
//! Docker's container defaults, and the system verbs.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::*;
use std::io::{BufRead, Read};

modes!(docker_defaults_inside, boot_restarts_after_a_killed_shim);

/// Reads one line of `moat ARGS` and closes the pipe: the command must end
/// quietly (no panic), like `moat ps | head -1`.
fn first_line_then_close(r: &Root, args: &[&str]) {
    let mut child =
        r.cmd().args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!line.is_empty(), "{args:?} printed nothing");
    assert_ne!(status.code(), Some(101), "{args:?} panicked: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn day_one_bugs() {
    let r = root_with_busybox();
    for i in 0..40 {
        r.ok(&["create", "--name", &format!("c{i}"), "busybox", "true"]);
    }
    for args in [
        &["ps", "-a", "--format", "json"][..],
        &["ps", "-a"][..],
        &["ps", "-aq"][..],
        &["images", "-q"][..],
        &["inspect", "c1", "c2", "c3"][..],
    ] {
        first_line_then_close(&r, args);
    }
    // ENV with several pairs, as a Dockerfile reads it
    let tar = tar_dir(busybox_rootfs());
    let p = write_fixture("envtest.tar", &tar);
    r.ok(&["import", "-c", "ENV A=1 B=2", "-c", r#"ENV C="three four""#, p.to_str().unwrap(), "envtest:1"]);
    let env = r.ok(&["image", "inspect", "-f", "{{json .Config.Env}}", "envtest:1"]);
    assert!(env.contains("\"A=1\"") && env.contains("\"B=2\"") && env.contains("\"C=three four\""), "{env}");
    // rmi -f of a running container's image: a conflict, not a silent success
    r.ok(&["run", "-d", "--name", "busy", "busybox", "sleep", "600"]);
    let o = r.run(&["rmi", "-f", "busybox"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("running container"), "{}", String::from_utf8_lossy(&o.stderr));
    // flags as Docker users write them
    let out = r.ok(&[
        "run",
        "--rm",
        "-h",
        "myhost",
        "-eFOO=1",
        "-uroot",
        "-w/tmp",
        "--tty=false",
        "--interactive=false",
        "busybox",
        "sh",
        "-c",
        "echo $(hostname) $FOO $(id -u) $(pwd)",
    ]);
    assert_eq!(out, "myhost 1 0 /tmp\n");
    r.ok(&["run", "-d", "--name", "pub", "-p18091:80", "busybox", "sleep", "600"]);
    assert!(r.ok(&["port", "pub"]).contains("18091"));
    // the default switch stays
    let e = r.fails(&["switch", "rm", "moat"]);
    assert!(e.contains("cannot be removed"), "{e}");
    let e = r.fails(&["network", "rm", "bridge"]);
    assert!(e.contains("cannot be removed"), "{e}");
    r.ok(&["rm", "-f", "busy", "pub"]);
}

#[test]
fn hosts_files_follow_removal_and_disconnect() {
    let r = root_with_busybox();
    r.ok(&["switch", "create", "hosts-net"]);
    r.ok(&["run", "-d", "--name", "watcher", "--switch", "hosts-net", "busybox", "sleep", "600"]);
    r.ok(&["run", "--rm", "--name", "fleeting", "--switch", "hosts-net", "busybox", "true"]);
    let hosts = r.ok(&["exec", "watcher", "cat", "/etc/hosts"]);
    assert!(!hosts.contains("fleeting"), "a --rm container left its entry: {hosts}");
    r.ok(&["create", "--name", "other", "--switch", "hosts-net", "busybox", "true"]);
    assert!(r.ok(&["exec", "watcher", "cat", "/etc/hosts"]).contains("other"));
    r.ok(&["switch", "disconnect", "hosts-net", "other"]);
    assert!(!r.ok(&["exec", "watcher", "cat", "/etc/hosts"]).contains("other"), "a disconnected peer stays");
    r.ok(&["rm", "-f", "watcher", "other"]);
}

#[test]
fn system_reset_removes_everything_of_a_root_hyperv() {
    let r = root_with_busybox();
    r.ok(&["switch", "create", "resetme"]);
    let x = r.ok(&["run", "-d", "--name", "x", "busybox", "sleep", "600"]).trim().to_string();
    let vm = r.ok(&["run", "-d", "--name", "vm", "--isolation=hyperv", "busybox", "sleep", "601"]).trim().to_string();
    let root = r.path().display().to_string();
    let ours = || host_pids_matching(&root);
    assert!(ours().len() >= 4, "shims, QEMU and virtiofsd of the root run: {:?}", ours());
    assert!(!cgroups_of(&x).is_empty() && !cgroups_of(&vm).is_empty());
    let bridges: Vec<String> = ["moat", "resetme"]
        .iter()
        .map(|n| {
            let v: serde_json::Value = serde_json::from_str(&r.ok(&["switch", "inspect", n])).unwrap();
            v[0]["Options"]["com.docker.network.bridge.name"].as_str().unwrap().to_string()
        })
        .collect();
    for b in &bridges {
        assert!(std::path::Path::new("/sys/class/net").join(b).exists());
    }
    let e = r.fails(&["system", "reset"]);
    assert!(e.contains("--force"), "{e}");
    r.ok(&["system", "reset", "--force"]);
    let rules = String::from_utf8_lossy(&std::process::Command::new("iptables").args(["-S"]).output().unwrap().stdout)
        .into_owned()
        + &String::from_utf8_lossy(
            &std::process::Command::new("iptables").args(["-t", "nat", "-S"]).output().unwrap().stdout,
        );
    for b in &bridges {
        assert!(!std::path::Path::new("/sys/class/net").join(b).exists(), "bridge {b} left behind");
        assert!(!rules.contains(b.as_str()), "rules of {b} left behind");
    }
    assert!(host_pids_matching("sleep 600").iter().all(|p| {
        std::fs::read_to_string(format!("/proc/{p}/cgroup")).map(|c| !c.contains("moat/")).unwrap_or(true)
    }));
    // nothing of either container is left: no process of the root (shims,
    // QEMU, virtiofsd), no cgroup in any hierarchy, no mount
    assert_eq!(ours(), Vec::<u32>::new());
    assert_eq!(cgroups_of(&x), Vec::<std::path::PathBuf>::new());
    assert_eq!(cgroups_of(&vm), Vec::<std::path::PathBuf>::new());
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(&root), "mounts left");
    assert_eq!(std::fs::read_dir(r.path()).unwrap().count(), 0, "the root is empty");
}

#[test]
fn system_df_and_prune() {
    let r = root_with_busybox();
    r.ok(&["create", "--name", "stopped", "busybox", "true"]);
    r.ok(&["switch", "create", "unused"]);
    let df = r.ok(&["system", "df"]);
    assert!(df.contains("Images") && df.contains("Containers"), "{df}");
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["system", "df", "--format", "json"])).unwrap();
    assert_eq!(v["Containers"]["TotalCount"], 1);
    assert_eq!(v["Images"]["Active"], 1);
    let out = r.ok(&["system", "prune", "-f"]);
    assert!(out.contains("Deleted Containers") && out.contains("unused"), "{out}");
    assert_eq!(r.ok(&["ps", "-aq"]), "");
    assert!(!r.ok(&["switch", "ls"]).contains("unused"));
    assert!(r.ok(&["switch", "ls"]).contains("bridge"), "the default switch stays");
    r.ok(&["switch", "create", "unused2"]);
    assert!(r.ok(&["network", "prune", "-f"]).contains("unused2"));
}

#[test]
fn create_options_from_files() {
    let r = root_with_busybox();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("labels"), "# labels\ntier=web\nowner=me\n").unwrap();
    std::fs::write(d.path().join("env"), "GREETING=hi\n").unwrap();
    let cid = d.path().join("cid");
    r.ok(&[
        "run",
        "-d",
        "--name",
        "files",
        "--label-file",
        d.path().join("labels").to_str().unwrap(),
        "--cidfile",
        cid.to_str().unwrap(),
        "--dns",
        "10.9.8.7",
        "--dns-search",
        "example.test",
        "--dns-option",
        "ndots:2",
        "busybox",
        "sleep",
        "600",
    ]);
    let id = std::fs::read_to_string(&cid).unwrap();
    assert_eq!(r.ok(&["inspect", "-f", "{{.Id}} {{index .Config.Labels \"owner\"}}", "files"]), format!("{id} me\n"));
    let e = r.fails(&["run", "--cidfile", cid.to_str().unwrap(), "busybox", "true"]);
    assert!(e.contains("container ID file found"), "{e}");
    assert_eq!(
        r.ok(&["exec", "--env-file", d.path().join("env").to_str().unwrap(), "files", "sh", "-c", "echo $GREETING"]),
        "hi\n"
    );
    let resolv = r.ok(&["exec", "files", "cat", "/etc/resolv.conf"]);
    assert_eq!(resolv, "nameserver 10.9.8.7\nsearch example.test\noptions ndots:2\n");
    r.ok(&["rm", "-f", "files"]);
}

/// A root with `probe:latest` and `suidprobe:latest`: the probe image plus a
/// layer holding a setuid-root copy of the probe at `/suid-probe`.
fn root_with_setuid_probe() -> Root {
    let r = Root::new();
    r.ok(&["load", "-q", "-i", probe_archive().to_str().unwrap()]);
    let probe = std::fs::read(env!("CARGO_BIN_EXE_moat-probe")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(probe.len() as u64);
    h.set_mode(0o4755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append_data(&mut h, "suid-probe", &probe[..]).unwrap();
    let suid = b.into_inner().unwrap();
    let (bytes, _) = docker_archive(&["suidprobe:latest"], &[probe_layer().clone(), suid], &["/suid-probe"]);
    let p = write_fixture("suidprobe.tar", &bytes);
    r.ok(&["load", "-q", "-i", p.to_str().unwrap()]);
    r
}

fn docker_defaults_inside(iso: &str) {
    // setuid binaries work for a non-root user (no_new_privs is off, like Docker)
    let r = root_with_setuid_probe();
    let out = r.ok(&["run", "--rm", "--isolation", iso, "--user", "65534", "suidprobe"]);
    let m = probe_map(&out);
    assert_eq!(m["NoNewPrivs"], "0", "{out}");
    assert_eq!(m["Uid"].split_whitespace().nth(1), Some("0"), "the setuid bit took effect: {out}");
    let out = r.ok(&["run", "--rm", "--isolation", iso, "--security-opt", "no-new-privileges", "probe"]);
    assert_eq!(probe_map(&out)["NoNewPrivs"], "1", "no-new-privileges on request");
    // an unprivileged user binds port 80 in the container's network namespace
    let out = r.ok(&[
        "run",
        "--rm",
        "--isolation",
        iso,
        "--user",
        "65534",
        "--entrypoint",
        "/bin/sh",
        "probe",
        "-c",
        "httpd -p 80 && echo bound",
    ]);
    assert_eq!(out.trim(), "bound");
    // TERM with a terminal, HOSTNAME always
    let out = r.ok(&[
        "run",
        "--rm",
        "-t",
        "--isolation",
        iso,
        "-h",
        "named",
        "--entrypoint",
        "/bin/sh",
        "probe",
        "-c",
        "echo $TERM $HOSTNAME",
    ]);
    assert_eq!(out.trim(), "xterm named");
    let out = r.ok(&[
        "run",
        "--rm",
        "--isolation",
        iso,
        "--entrypoint",
        "/bin/sh",
        "probe",
        "-c",
        "echo ${TERM:-none} $HOSTNAME",
    ]);
    assert!(out.starts_with("none "), "{out}");
    // namespaced sysctls
    let out = r.ok(&[
        "run",
        "--rm",
        "--isolation",
        iso,
        "--sysctl",
        "net.ipv4.ip_forward=1",
        "--sysctl",
        "kernel.shmmni=2048",
        "--entrypoint",
        "/bin/sh",
        "probe",
        "-c",
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni",
    ]);
    assert_eq!(out, "1\n2048\n");
    let e = r.fails(&["run", "--rm", "--isolation", iso, "--sysctl", "kernel.hostname=x", "probe"]);
    assert!(e.contains("not allowed"), "{e}");
}

fn boot_restarts_after_a_killed_shim(iso: &str) {
    let r = root_with_busybox();
    r.ok(&["run", "-d", "--name", "svc", "--restart", "always", "--isolation", iso, "busybox", "sleep", "600"]);
    r.ok(&["run", "-d", "--name", "once", "--isolation", iso, "busybox", "sleep", "600"]);
    let id = r.ok(&["inspect", "-f", "{{.Id}}", "svc"]).trim().to_string();
    let once = r.ok(&["inspect", "-f", "{{.Id}}", "once"]).trim().to_string();
    for cid in [&id, &once] {
        let shim = host_pids_matching(&format!("shim {cid}"));
        assert_eq!(shim.len(), 1);
        // SAFETY: SIGKILL to a shim this test started
        unsafe { libc::kill(shim[0] as i32, libc::SIGKILL) };
        eventually("the shim exits", || host_pids_matching(&format!("shim {cid}")).is_empty());
    }
    assert!(r.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]).contains("svc exited"));
    assert_eq!(r.ok(&["system", "boot"]).trim(), "svc", "only the restart policy's container");
    let ps = r.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    assert!(ps.contains("svc running") && ps.contains("once exited"), "{ps}");
    assert_eq!(r.ok(&["system", "boot"]), "", "nothing left to start");
    r.ok(&["rm", "-f", "svc", "once"]);
}

#[test]
fn live_switches_and_shared_networks() {
    let r = root_with_busybox();
    r.ok(&["switch", "create", "live-net"]);
    r.ok(&["run", "-d", "--name", "roamer", "busybox", "sleep", "600"]);
    r.ok(&["run", "-d", "--name", "peer", "--switch", "live-net", "busybox", "sleep", "600"]);
    // a running process container joins a switch at once, and leaves it
    r.ok(&["switch", "connect", "live-net", "roamer"]);
    let addrs = r.ok(&["exec", "roamer", "ip", "-4", "-o", "addr"]);
    assert!(addrs.contains("eth1"), "{addrs}");
    assert!(r.ok(&["exec", "roamer", "ping", "-c", "1", "-W", "5", "peer"]).contains("1 packets received"));
    assert!(r.ok(&["exec", "peer", "cat", "/etc/hosts"]).contains("roamer"));
    assert!(
        r.ok(&["exec", "roamer", "ip", "route"]).starts_with("default via 10."),
        "the first switch keeps the default route"
    );
    r.ok(&["switch", "disconnect", "live-net", "roamer"]);
    assert!(!r.ok(&["exec", "roamer", "ip", "-4", "-o", "addr"]).contains("eth1"));
    assert!(!r.ok(&["exec", "peer", "cat", "/etc/hosts"]).contains("roamer"));
    r.ok(&["switch", "connect", "live-net", "roamer"]);
    assert!(r.ok(&["exec", "roamer", "ping", "-c", "1", "-W", "5", "peer"]).contains("1 packets received"));
    // a VM's NICs are fixed while it runs
    r.ok(&["run", "-d", "--name", "vmc", "--isolation", "vm", "busybox", "sleep", "600"]);
    let e = r.fails(&["switch", "connect", "live-net", "vmc"]);
    assert!(e.contains("utility VM") && e.contains("stop it"), "{e}");
    // --network container:NAME shares the other's stack, hosts and hostname
    r.ok(&["run", "-d", "--name", "srv", "busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"]);
    let out = r.ok(&[
        "run",
        "--rm",
        "--network",
        "container:srv",
        "busybox",
        "sh",
        "-c",
        "for i in $(seq 50); do wget -q -O - http://127.0.0.1:8080/hostname && break; sleep 0.1; done; hostname",
    ]);
    let host = r.ok(&["inspect", "-f", "{{.Config.Hostname}}", "srv"]);
    assert_eq!(out, format!("{host}{host}"));
    assert!(r
        .ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.NetworkMode}}",
            r.ok(&["create", "--network", "container:srv", "busybox", "true"]).trim()
        ])
        .starts_with("container:"));
    let e = r.fails(&["run", "--rm", "--network", "container:srv", "-p", "9090:90", "busybox", "true"]);
    assert!(e.contains("conflicting options"), "{e}");
    // a container joins a sandbox of its own isolation type (tests/sandbox.rs joins them)
    let e = r.fails(&["run", "--rm", "--isolation", "vm", "--network", "container:srv", "busybox", "true"]);
    assert_eq!(e, "Error: cannot join the network of srv: it runs in process isolation and this container in hyperv; a container joins the sandbox (namespaces or utility VM) of a container of its own isolation type\n");
    let e = r.fails(&["run", "--rm", "--network", "container:vmc", "busybox", "true"]);
    assert!(e.contains("it runs in hyperv isolation and this container in process"), "{e}");
    // repeated --network: the first switch is the container's own (its
    // default route), the long form names an address and per-switch names
    r.ok(&["switch", "create", "--subnet", "10.99.41.0/24", "pinned"]);
    r.ok(&["switch", "connect", "pinned", "peer"]);
    r.ok(&[
        "run",
        "-d",
        "--name",
        "twice",
        "--network",
        "live-net",
        "--network",
        "name=pinned,ip=10.99.41.77,alias=tw2",
        "busybox",
        "sleep",
        "600",
    ]);
    let first = r.ok(&[
        "inspect",
        "-f",
        "{{with index .NetworkSettings.Networks \"live-net\"}}{{.IPAddress}}/{{.IPPrefixLen}}{{end}}",
        "twice",
    ]);
    let addrs = r.ok(&["exec", "twice", "sh", "-c", "ip -4 -o addr | awk '{print $2, $4}'"]);
    assert_eq!(addrs, format!("lo 127.0.0.1/8\neth0 {}\neth1 10.99.41.77/24\n", first.trim()));
    assert!(r
        .ok(&["exec", "twice", "ip", "route"])
        .starts_with(&format!("default via {}", first.split('.').take(3).collect::<Vec<_>>().join("."))));
    assert!(r.ok(&["exec", "peer", "ping", "-c", "1", "-W", "5", "tw2"]).contains("1 packets received"));
    // the alias is pinned's only: roamer shares live-net with twice, not pinned
    let e = r.fails(&["exec", "roamer", "ping", "-c", "1", "-W", "2", "tw2"]);
    assert!(e.contains("bad address 'tw2'"), "{e}");
    assert!(r.ok(&["exec", "roamer", "ping", "-c", "1", "-W", "5", "twice"]).contains("1 packets received"));
    let e = r.fails(&["run", "--rm", "--network", "none", "--network", "live-net", "busybox", "true"]);
    assert_eq!(e, "Error: conflicting options: network mode none joins no further switch (a container on none, host or another container's network has no switches of its own)\n");
    let e = r.fails(&[
        "run",
        "--rm",
        "--name",
        "dup",
        "--network",
        "live-net",
        "--network",
        "no-such-net",
        "busybox",
        "true",
    ]);
    assert!(e.contains("no-such-net"), "{e}");
    assert_eq!(r.ok(&["ps", "-a", "-q", "--filter", "name=^dup$"]), "", "a refused switch leaves no container");
    r.ok(&["rm", "-f", "roamer", "peer", "vmc", "srv", "twice"]);
    r.ok(&["switch", "rm", "pinned"]);
}

#[test]
fn port_ranges_attach_streams_and_detach_keys() {
    let r = root_with_busybox();
    r.ok(&[
        "run",
        "-d",
        "--name",
        "ranges",
        "-p",
        "18200-18202:80-82",
        "-p",
        "127.0.0.1::90/udp",
        "busybox",
        "sleep",
        "600",
    ]);
    let ports = r.ok(&["port", "ranges"]);
    assert_eq!(ports.lines().filter(|l| l.contains("0.0.0.0:1820")).count(), 3, "{ports}");
    assert_eq!(r.ok(&["port", "ranges", "81/tcp"]), "0.0.0.0:18201\n");
    assert!(r.ok(&["port", "ranges", "90/udp"]).starts_with("127.0.0.1:"));
    let e = r.fails(&["port", "ranges", "83"]);
    assert!(e.contains("No public port '83/tcp'"), "{e}");
    let e = r.fails(&["run", "--rm", "-p", "18300-18301:80", "busybox", "true"]);
    assert!(e.contains("host range has 2 ports"), "{e}");
    // -P publishes every port of an EXPOSE range
    let p = write_fixture("expose-range.tar", &tar_dir(busybox_rootfs()));
    r.ok(&["import", "-c", "EXPOSE 7000-7002", p.to_str().unwrap(), "exposing:1"]);
    r.ok(&["run", "-d", "--name", "pall", "-P", "exposing:1", "sleep", "600"]);
    assert_eq!(r.ok(&["port", "pall"]).lines().count(), 3);
    r.ok(&["rm", "-f", "ranges", "pall"]);
    // -a picks the streams
    let o = r.run(&["run", "--rm", "-a", "stderr", "busybox", "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(
        (String::from_utf8_lossy(&o.stdout).as_ref(), String::from_utf8_lossy(&o.stderr).as_ref()),
        ("", "err\n")
    );
    let o = r.run(&["run", "--rm", "-a", "stdout", "busybox", "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(
        (String::from_utf8_lossy(&o.stdout).as_ref(), String::from_utf8_lossy(&o.stderr).as_ref()),
        ("out\n", "")
    );
    // --detach-keys on a terminal session leaves the container running
    let moat = env!("CARGO_BIN_EXE_moat");
    let root = r.path().display();
    let mut child = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{moat} --root {root} run -it --detach-keys ctrl-x,x --name dk busybox sh"),
            "/dev/null",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    std::io::Write::write_all(&mut stdin, b"\x18x").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("read escape sequence"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(r.ok(&["inspect", "-f", "{{.State.Status}}", "dk"]), "running\n");
    let e = r.fails(&["attach", "--detach-keys", "ctrl-1", "dk"]);
    assert!(e.contains("invalid detach key"), "{e}");
    r.ok(&["rm", "-f", "dk"]);
}

#[test]
fn listing_sizes_details_top_and_stats() {
    let r = root_with_busybox();
    r.ok(&[
        "run",
        "-d",
        "--name",
        "lister",
        "-l",
        "team=core",
        "-e",
        "STAGE=dev",
        "--log-opt",
        "labels=team",
        "--log-opt",
        "env=STAGE",
        "busybox",
        "sh",
        "-c",
        "head -c 5000 /dev/zero > /blob; echo ready; exec sleep 600",
    ]);
    let logs = until(&r, &["logs", "--details", "lister"], |o| o.contains("ready"));
    assert_eq!(logs, "STAGE=dev,team=core ready\n");
    assert_eq!(r.ok(&["logs", "lister"]), "ready\n");
    let ps = r.ok(&["ps", "-s", "--format", "{{.Names}} {{.Size}}"]);
    // the image's size is its files' content (1.98 MB of busybox), as Docker counts it
    assert!(ps.starts_with("lister 5") && ps.contains("(virtual 1.99MB)"), "{ps}");
    assert!(r.ok(&["ps", "-s"]).lines().next().unwrap().ends_with("SIZE"));
    let img = r.ok(&["images", "--digests"]);
    assert!(img.lines().next().unwrap().contains("DIGEST") && img.contains("<none>"), "{img}");
    // top with ps options: the host's ps, the container's rows, host PIDs
    let top = r.ok(&["top", "lister", "-o", "pid,args"]);
    let pid = r.ok(&["inspect", "-f", "{{.State.Pid}}", "lister"]);
    assert_eq!(top.lines().count(), 2, "{top}");
    assert!(top.lines().nth(1).unwrap().starts_with(pid.trim()) && top.contains("sleep 600"), "{top}");
    r.ok(&["run", "-d", "--name", "vtop", "--isolation", "vm", "busybox", "sleep", "600"]);
    assert!(r.ok(&["top", "vtop"]).contains("sleep 600"));
    let e = r.fails(&["top", "vtop", "aux"]);
    assert!(e.contains("need process isolation"), "{e}");
    // stats: network and block I/O columns
    // traffic to moat's own bridge (the switch's gateway) only
    let gw = r.ok(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}", "lister"]);
    r.ok(&["exec", "lister", "ping", "-c", "1", "-W", "2", gw.trim()]);
    let st = r.ok(&["stats", "--no-stream", "--format", "{{.Name}} {{.NetIO}} {{.BlockIO}}", "lister", "vtop"]);
    for l in st.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 7, "{l}");
        assert!(f[1].ends_with('B') && f[4].ends_with('B'), "{l}");
    }
    let header = r.ok(&["stats", "--no-stream"]).lines().next().unwrap().to_string();
    assert!(header.contains("NET I/O") && header.contains("BLOCK I/O"), "{header}");
    // without --memory a VM's limit is its RAM, not the host's
    let mem = r.ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "vtop"]);
    assert!(mem.trim().ends_with("/ 512MiB"), "{mem}");
    // network ls --filter
    r.ok(&["switch", "create", "listed"]);
    assert_eq!(r.ok(&["network", "ls", "--filter", "type=custom", "--format", "{{.Name}}"]), "listed\n");
    assert_eq!(r.ok(&["network", "ls", "--filter", "dangling=true", "--format", "{{.Name}}"]), "listed\n");
    // the default switch is shown by Docker's name
    assert_eq!(r.ok(&["network", "ls", "--filter", "name=bri", "--format", "{{.Name}}"]), "bridge\n");
    r.ok(&["rm", "-f", "lister", "vtop"]);
}

#[test]
fn completion_man_pages_and_boot_unit() {
    let r = Root::new();
    for sh in ["bash", "zsh", "fish"] {
        let s = r.ok(&["completion", sh]);
        assert!(s.contains("volume") && s.contains("isolation"), "{sh}");
    }
    let bash = r.ok(&["completion", "bash"]);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("moat.bash"), &bash).unwrap();
    let st = std::process::Command::new("bash").arg("-n").arg(d.path().join("moat.bash")).status().unwrap();
    assert!(st.success(), "the bash completion parses");
    r.ok(&["man", d.path().join("man").to_str().unwrap()]);
    let run = std::fs::read_to_string(d.path().join("man/moat-run.1")).unwrap();
    assert!(run.contains("isolation") && run.contains(".TH"), "a roff page");
    assert!(!d.path().join("man/moat-shim.1").exists(), "internal commands have no page");
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib/moat-boot.service")).unwrap();
    assert!(unit.contains("ExecStart=@BINDIR@/moat system boot") && unit.contains("KillMode=process"));
    let mk = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Makefile")).unwrap();
    assert!(mk.contains("moat-boot.service") && mk.contains("completion bash") && mk.contains("share/man/man1"));
}
