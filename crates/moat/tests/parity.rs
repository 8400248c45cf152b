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
fn system_reset_removes_everything_of_a_root() {
    let r = root_with_busybox();
    r.ok(&["switch", "create", "resetme"]);
    r.ok(&["run", "-d", "--name", "x", "busybox", "sleep", "600"]);
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
    assert!(r.ok(&["switch", "ls"]).contains("moat"), "the default switch stays");
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
        let t0 = std::time::Instant::now();
        while !host_pids_matching(&format!("shim {cid}")).is_empty() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    assert!(r.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]).contains("svc exited"));
    assert_eq!(r.ok(&["system", "boot"]).trim(), "svc", "only the restart policy's container");
    let ps = r.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    assert!(ps.contains("svc running") && ps.contains("once exited"), "{ps}");
    assert_eq!(r.ok(&["system", "boot"]), "", "nothing left to start");
    r.ok(&["rm", "-f", "svc", "once"]);
}
