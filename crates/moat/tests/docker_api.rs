//! The Docker Engine API (issue #14): `moat serve` on a real unix socket,
//! driven by clients nobody on the team wrote — the machine's `docker` CLI
//! and docker-py from PyPI — in both isolation types.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A fresh root with nothing in it, served; busybox loaded through the API.
fn served_with_busybox() -> (Root, ApiServer) {
    let r = Root::new();
    let s = ApiServer::start(&r);
    let out = s.ok(&["load", "-i", busybox_archive().0.to_str().unwrap()]);
    assert!(out.contains("Loaded image: busybox:latest"), "{out}");
    (r, s)
}

#[test]
fn docker_cli_drives_process_containers() {
    let (r, s) = served_with_busybox();
    assert_eq!(s.ok(&["version", "--format", "{{.Server.APIVersion}}"]).trim(), "1.45");
    assert_eq!(s.ok(&["info", "--format", "{{.Isolation}} {{.OSType}}"]).trim(), "process linux");
    let f = "{{.Swarm.LocalNodeState}} {{.Plugins.Volume}} {{.Plugins.Log}}";
    assert_eq!(s.ok(&["info", "--format", f]).trim(), "inactive [local] [json-file none]");
    assert!(s.ok(&["images"]).contains("busybox"));
    assert_eq!(s.ok(&["run", "--rm", "busybox", "echo", "hello"]), "hello\n");
    let o = s.docker(&["run", "--rm", "busybox", "sh", "-c", "echo err >&2; exit 3"]);
    assert_eq!((o.status.code(), String::from_utf8_lossy(&o.stderr).trim()), (Some(3), "err"));
    // -d, logs -f until the exit, ps, inspect; the moat CLI sees the same container
    let t0 = chrono::Utc::now().timestamp();
    s.ok(&["run", "-d", "--name", "lg", "busybox", "sh", "-c", "echo one; sleep 1; echo two"]);
    assert_eq!(s.ok(&["logs", "-f", "lg"]), "one\ntwo\n");
    assert_eq!(s.ok(&["wait", "lg"]).trim(), "0");
    assert!(s.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]).contains("lg Exited (0)"));
    assert_eq!(s.ok(&["inspect", "-f", "{{.State.ExitCode}} {{.HostConfig.Isolation}}", "lg"]).trim(), "0 process");
    assert!(r.ok(&["ps", "-a"]).contains("lg"));
    // the shim records `die` just after the exit it reports
    let t = Instant::now();
    let mut ev = String::new();
    while !ev.contains("container die") && t.elapsed() < Duration::from_secs(10) {
        ev = s.ok(&["events", "--since", &t0.to_string(), "--until", "0s", "--filter", "container=lg"]);
    }
    assert!(ev.contains("container die") && ev.contains("container start"), "{ev}");
    // signals, exec, cp, update, stop, rm
    s.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "busybox",
        "sh",
        "-c",
        "trap 'echo got-hup' HUP; echo ready; while true; do sleep 0.1; done",
    ]);
    let t = Instant::now();
    while !s.ok(&["logs", "web"]).contains("ready") && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    s.ok(&["kill", "-s", "HUP", "web"]);
    while !s.ok(&["logs", "web"]).contains("got-hup") && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.ok(&["logs", "web"]).contains("got-hup"));
    assert_eq!(s.ok(&["inspect", "-f", "{{.State.Status}}", "web"]).trim(), "running", "HUP does not stop it");
    assert_eq!(s.ok(&["exec", "web", "sh", "-c", "echo $((6*7))"]), "42\n");
    let o = s.docker(&["exec", "web", "sh", "-c", "exit 4"]);
    assert_eq!(o.status.code(), Some(4));
    // exec -it under a terminal: a prompt, a command, the exit code
    let cmd =
        format!("DOCKER_HOST={} DOCKER_CONFIG={} docker exec -it web sh", s.host(), s.docker_config.path().display());
    let o = with_pty(&cmd, Some("echo in-$((6*7)); tty; stty size; exit 3\n"));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[lines.len() - 4..], ["in-42", "/dev/pts/0", "31 97", ""], "{out:?}");
    assert_eq!(o.status.code(), Some(3), "{out}");
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("in.txt"), "from the host\n").unwrap();
    s.ok(&["cp", d.path().join("in.txt").to_str().unwrap(), "web:/tmp/"]);
    assert_eq!(s.ok(&["exec", "web", "cat", "/tmp/in.txt"]), "from the host\n");
    s.ok(&["cp", "web:/tmp/in.txt", d.path().join("back.txt").to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(d.path().join("back.txt")).unwrap(), "from the host\n");
    assert!(s.ok(&["diff", "web"]).contains("A /tmp/in.txt"));
    let st = s.ok(&["stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}} {{.MemUsage}}", "web"]);
    assert!(st.starts_with("web ") && !st.contains("--"), "{st}");
    // top: moat's table without options, the host's ps with them
    let top = s.ok(&["top", "web"]);
    assert!(top.starts_with("UID") && top.lines().count() >= 2, "{top}");
    let top = s.ok(&["top", "web", "-o", "pid,args"]);
    assert!(top.lines().next().unwrap().contains("PID") && top.lines().count() >= 2, "{top}");
    assert!(s.ok(&["history", "busybox"]).contains("IMAGE"));
    let saved = d.path().join("saved.tar");
    s.ok(&["save", "-o", saved.to_str().unwrap(), "busybox"]);
    let listing = Command::new("tar").arg("-tf").arg(&saved).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("manifest.json"));
    let df = s.ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}}"]);
    assert!(df.contains("Images 1 1") && df.contains("Containers 2 1"), "{df}");
    s.ok(&["update", "--memory", "64m", "--memory-swap", "128m", "web"]);
    assert_eq!(s.ok(&["inspect", "-f", "{{.HostConfig.Memory}}", "web"]).trim(), "67108864");
    s.ok(&["stop", "-t", "1", "web"]);
    assert!(s.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"]).contains("web exited"));
    s.ok(&["rm", "-f", "web", "lg"]);
    assert_eq!(s.ok(&["ps", "-aq"]), "");
    // clear refusals in Docker's shape
    let e = s.fails(&["run", "--isolation=hyper-v", "busybox", "true"]);
    assert!(e.contains("invalid isolation \"hyper-v\"") && e.contains("process, hyperv"), "{e}");
    let e = s.fails(&["inspect", "nothing-here"]);
    assert!(e.contains("No such object") || e.contains("No such"), "{e}");
    let e = s.fails(&["run", "--pull", "never", "not-here:1", "true"]);
    assert!(e.contains("No such image"), "{e}");
}

#[test]
fn docker_cli_networks_and_volumes() {
    let (_r, s) = served_with_busybox();
    s.ok(&["network", "create", "appnet"]);
    assert!(s.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]).contains("appnet bridge"));
    s.ok(&["run", "-d", "--name", "c1", "--network", "appnet", "busybox", "sleep", "1000"]);
    let out = s.ok(&["run", "--rm", "--network", "appnet", "busybox", "ping", "-c", "1", "-W", "5", "c1"]);
    assert!(out.contains("1 packets received"), "{out}");
    s.ok(&["network", "create", "other"]);
    s.ok(&["network", "connect", "other", "c1"]);
    let nets = s.ok(&["inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", "c1"]);
    assert!(nets.contains("appnet") && nets.contains("other"), "{nets}");
    // two --network flags: one create with both endpoints, each with its own alias
    s.ok(&[
        "run",
        "-d",
        "--name",
        "c2",
        "--network",
        "name=appnet,alias=first",
        "--network",
        "name=other,alias=second",
        "busybox",
        "sleep",
        "1000",
    ]);
    assert_eq!(s.ok(&["exec", "c2", "sh", "-c", "ip -4 -o addr | awk '{print $2}'"]), "lo\neth0\neth1\n");
    for alias in ["first", "second"] {
        assert!(s.ok(&["exec", "c1", "ping", "-c", "1", "-W", "5", alias]).contains("1 packets received"));
    }
    assert_eq!(
        s.ok(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{join $v.Aliases \",\"}} {{end}}",
            "c2"
        ]),
        format!("appnet=c2,{0},first other=c2,{0},second \n", &s.ok(&["inspect", "-f", "{{.Id}}", "c2"])[..12])
    );
    s.ok(&["rm", "-f", "c2"]);
    let e = s.fails(&["network", "rm", "appnet"]);
    assert!(!e.is_empty());
    s.ok(&["rm", "-f", "c1"]);
    s.ok(&["network", "rm", "appnet", "other"]);
    assert!(!s.ok(&["network", "ls"]).contains("appnet"));
    // a named volume outlives the containers that use it
    s.ok(&["volume", "create", "data"]);
    s.ok(&["run", "--name", "w", "-v", "data:/data", "busybox", "sh", "-c", "echo kept > /data/f"]);
    s.ok(&["rm", "w"]);
    assert!(s.ok(&["volume", "ls", "-q"]).contains("data"));
    assert_eq!(s.ok(&["run", "--rm", "-v", "data:/data", "busybox", "cat", "/data/f"]), "kept\n");
    s.ok(&["volume", "rm", "data"]);
    assert_eq!(s.ok(&["volume", "ls", "-q"]).trim(), "");
}

#[test]
fn docker_cli_runs_hyperv_containers() {
    let (r, s) = served_with_busybox();
    let host = String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout).trim().to_string();
    let guest = s.ok(&["run", "--rm", "--isolation=hyperv", "busybox", "uname", "-r"]);
    assert!(!guest.trim().is_empty() && guest.trim() != host, "the VM's own kernel: {guest} vs {host}");
    // the Windows form: docker run -it --isolation=hyperv <image id> sh
    let id = s.ok(&["images", "-q", "busybox"]).trim().to_string();
    let cmd = format!(
        "DOCKER_HOST={} DOCKER_CONFIG={} docker run -it --rm --isolation=hyperv {id} sh",
        s.host(),
        s.docker_config.path().display()
    );
    let o = with_pty(&cmd, Some("echo in-$((6*7)); tty; stty size; exit 7\n"));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[lines.len() - 4..], ["in-42", "/dev/pts/0", "31 97", ""], "a shell's answers, whole: {out:?}");
    assert_eq!(o.status.code(), Some(7), "{out}");
    // detached, exec, inspect, the moat CLI agrees
    s.ok(&["run", "-d", "--name", "v", "--isolation=hyperv", "busybox", "sleep", "1000"]);
    assert_eq!(s.ok(&["exec", "v", "sh", "-c", "echo in-vm"]), "in-vm\n");
    assert_eq!(s.ok(&["inspect", "-f", "{{.HostConfig.Isolation}}", "v"]).trim(), "hyperv");
    // commit of a VM container through the API; the image runs in both types
    s.ok(&["exec", "v", "sh", "-c", "echo from-vm > /made"]);
    let id = s.ok(&["commit", "-m", "api commit", "-c", "CMD [\"cat\", \"/made\"]", "v", "vsnap:1"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(s.ok(&["image", "inspect", "-f", "{{.Comment}}", "vsnap:1"]).trim(), "api commit");
    for iso in ["process", "hyperv"] {
        assert_eq!(s.ok(&["run", "--rm", &format!("--isolation={iso}"), "vsnap:1"]), "from-vm\n");
    }
    s.ok(&["rmi", "vsnap:1"]);
    // top lists the guest's view of the container's processes; ps options
    // (the host's ps) are refused with the reason
    let top = s.ok(&["top", "v"]);
    assert!(top.starts_with("UID") && top.contains("sleep 1000"), "{top}");
    let o = s.docker(&["top", "v", "aux"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("need process isolation"));
    assert!(r.ok(&["ps", "--format", "{{.Names}} {{.Isolation}}"]).contains("v hyperv"));
    s.ok(&["rm", "-f", "v"]);
}

/// `docker run --rm` of a container that cannot start: dockerd removes it
/// and the CLI (which waits for the removal) reports the error. Bounded: a
/// CLI that hangs fails the test instead of blocking it.
#[test]
fn docker_run_rm_that_cannot_start_returns_and_leaves_nothing_in_both_modes_hyperv() {
    let (_r, s) = served_with_busybox();
    for iso in ["process", "hyperv"] {
        let mut child = s
            .docker_cmd()
            .args(["run", "--rm", &format!("--isolation={iso}"), "busybox", "/no/such/program"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("{iso}: docker run --rm hung after a failed start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("no such file or directory"), "{iso}: {err}");
        assert_eq!(s.ok(&["ps", "-aq"]).trim(), "", "{iso}: the container was removed");
    }
}

#[test]
fn docker_cli_pull_and_push_with_a_local_registry() {
    let (_r, s) = served_with_busybox();
    let reg = Registry::start();
    let name = format!("{}/busybox:1", reg.addr);
    let id = s.ok(&["images", "-q", "--no-trunc", "busybox"]).trim().to_string();
    s.ok(&["tag", "busybox", &name]);
    let out = s.ok(&["push", &name]);
    assert!(out.contains("digest: sha256:"), "{out}");
    s.ok(&["rmi", &name, "busybox"]);
    assert_eq!(s.ok(&["images", "-q"]), "");
    let out = s.ok(&["pull", &name]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert_eq!(s.ok(&["images", "-q", "--no-trunc", &name]).trim(), id);
    // run pulls a missing image through images/create
    s.ok(&["rmi", &name]);
    let o = s.docker(&["run", "--rm", &name, "echo", "pulled"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "pulled\n", "{}", String::from_utf8_lossy(&o.stderr));
    let e = s.fails(&["pull", &format!("{}/nothing:here", reg.addr)]);
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn containers_outlive_the_server() {
    let (r, s) = served_with_busybox();
    s.ok(&["run", "-d", "--name", "long", "busybox", "sh", "-c", "echo before; sleep 1000"]);
    let pid = s.pid();
    drop(s);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            st.contains(") Z")
        }
    );
    assert!(r.ok(&["ps", "--format", "{{.Names}} {{.State}}"]).contains("long running"));
    let s = ApiServer::start(&r);
    assert!(s.ok(&["ps", "--format", "{{.Names}}"]).contains("long"));
    assert_eq!(s.ok(&["logs", "long"]), "before\n");
    s.ok(&["kill", "long"]);
    assert_eq!(s.ok(&["wait", "long"]).trim(), "137");
}

/// One HTTP/1.1 request on a fresh connection; returns the status (0 when
/// the server closed the connection without an answer).
fn raw(sock: &std::path::Path, req: &[u8]) -> u16 {
    let mut c = std::os::unix::net::UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = c.write_all(req);
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn malformed_requests_never_get_a_5xx() {
    let r = Root::new();
    let s = ApiServer::start(&r);
    let paths = [
        "/containers/create",
        "/containers/json",
        "/containers/x/start",
        "/containers/x/wait",
        "/containers/x/kill",
        "/containers/x/logs",
        "/containers/x/archive",
        "/exec/x/start",
        "/images/create",
        "/images/x/json",
        "/images/load",
        "/commit",
        "/networks/create",
        "/networks/x/connect",
        "/volumes/create",
        "/events",
        "/v1.99/_ping",
        "/v1.2/info",
        "/%zz",
        "/containers/%00/json",
        "/nowhere/at/all",
    ];
    let queries = [
        "",
        "?all=maybe",
        "?filters=%7Bbad",
        "?filters=%7B%22nope%22%3A%5B%22x%22%5D%7D",
        "?t=-1",
        "?signal=NOPE",
        "?h=0&w=0",
        "?tail=lots",
        "?fromImage=",
        "?condition=never",
        "?since=yesterday",
    ];
    let bodies: [&[u8]; 7] =
        [b"", b"{", b"[]", b"{\"Image\":5}", b"\xff\xfe\x00", b"{\"HostConfig\":{\"Memory\":\"x\"}}", b"null"];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for _ in 0..300 {
        let method = ["GET", "POST", "DELETE", "PUT", "HEAD"][next(5)];
        let path = paths[next(paths.len())];
        let q = queries[next(queries.len())];
        let body = bodies[next(bodies.len())];
        let mut req = format!("{method} {path}{q} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n", body.len());
        if next(4) == 0 {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("Connection: close\r\n\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        let status = raw(&s.sock, &bytes);
        assert!(status != 0 && status < 500, "{method} {path}{q} with {body:?}: {status}");
    }
    // a body over the limit is refused without being read to the end
    let big = format!("POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", 64 << 20);
    assert_eq!(raw(&s.sock, big.as_bytes()), 413);
    // garbage that is not HTTP at all
    assert!(matches!(raw(&s.sock, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n"), 0 | 400));
    // still serving
    assert_eq!(raw(&s.sock, b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    assert_eq!(s.ok(&["version", "--format", "{{.Server.APIVersion}}"]).trim(), "1.45");
}

#[test]
fn socket_is_0660_and_refuses_symlinks() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let r = Root::new();
    let s = ApiServer::start(&r);
    let m = std::fs::metadata(&s.sock).unwrap();
    assert_eq!((m.permissions().mode() & 0o777, m.uid(), m.gid()), (0o660, 0, 0));
    drop(s);
    // a symlink where the socket should be: refused, the target untouched
    let target = r.path().join("precious");
    std::fs::write(&target, "keep").unwrap();
    let link = r.path().join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = r.cmd().args(["serve", "--socket"]).arg(&link).output().unwrap();
    assert_fails_one_line(&o, "serve on a symlink");
    assert!(String::from_utf8_lossy(&o.stderr).contains("symlink"));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    // tcp beyond loopback only when insisted on
    let o = r.cmd().args(["serve", "-H", "tcp://0.0.0.0:1"]).output().unwrap();
    assert_fails_one_line(&o, "serve on 0.0.0.0");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--insecure-tcp"));
}

/// docker-py 7.x from PyPI, in the venv `make deps` makes.
fn docker_py(s: &ApiServer, iso: &str) {
    let py = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("pyvenv/bin/python");
    assert!(py.exists(), "{} is missing: run make deps", py.display());
    let script = r#"
import sys, docker
iso = sys.argv[1]
c = docker.DockerClient(base_url=sys.argv[2])
assert c.version()["ApiVersion"] == "1.45"
k = c.containers.create("busybox", ["sh", "-c", "echo out; echo err >&2; exit 3"], isolation=iso)
k.start()
assert k.wait()["StatusCode"] == 3
assert k.logs(stdout=True, stderr=False) == b"out\n", k.logs()
assert k.logs(stdout=False, stderr=True) == b"err\n", k.logs()
k.remove()
assert c.containers.run("busybox", ["echo", "ran"], isolation=iso, remove=True) == b"ran\n"
d = c.containers.run("busybox", ["sleep", "1000"], isolation=iso, detach=True, name="py-" + iso)
code, out = d.exec_run(["sh", "-c", "echo $((6*7)); exit 2"])
assert (code, out) == (2, b"42\n"), (code, out)
d.reload()
assert d.attrs["HostConfig"]["Isolation"] == iso and d.status == "running"
d.remove(force=True)
assert [x for x in c.containers.list(all=True)] == []
print("ok")
"#;
    let o = Command::new(py).args(["-c", script, iso, &s.host()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n", "docker-py ({iso}): {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn docker_py_process() {
    let (_r, s) = served_with_busybox();
    docker_py(&s, "process");
}

#[test]
fn docker_py_hyperv() {
    let (_r, s) = served_with_busybox();
    docker_py(&s, "hyperv");
}

const COMPOSE_FILE: &str = r#"services:
  server:
    image: busybox
    command: ["sh", "-c", "mkdir -p /www; echo hello-from-server > /www/index.html; echo serving; httpd -f -p 8080 -h /www"]
    volumes:
      - shared:/data
  client:
    image: busybox
    isolation: hyperv
    command: ["sh", "-c", "until wget -qO- http://server:8080/ > /data/got; do sleep 0.2; done; cat /data/got; sleep 1000"]
    volumes:
      - shared:/data
    depends_on: [server]
volumes:
  shared: {}
"#;

#[test]
fn compose_with_a_hyperv_service_and_a_named_volume() {
    let (r, s) = served_with_busybox();
    let plugin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("cli-plugins/docker-compose");
    assert!(plugin.exists(), "{} is missing: run make deps", plugin.display());
    std::fs::create_dir_all(s.docker_config.path().join("cli-plugins")).unwrap();
    std::os::unix::fs::symlink(&plugin, s.docker_config.path().join("cli-plugins/docker-compose")).unwrap();
    let proj = tempfile::tempdir().unwrap();
    std::fs::write(proj.path().join("compose.yaml"), COMPOSE_FILE).unwrap();
    let compose = |args: &[&str]| -> Output {
        s.docker_cmd().current_dir(proj.path()).args(["compose", "-p", "mt"]).args(args).output().unwrap()
    };
    let ok = |args: &[&str]| -> String {
        let o = compose(args);
        assert!(o.status.success(), "compose {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&["up", "-d"]);
    let t = Instant::now();
    let mut logs = String::new();
    while !logs.contains("hello-from-server") && t.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_millis(300));
        logs = ok(&["logs", "client"]);
    }
    assert!(logs.contains("hello-from-server"), "the VM service reached the other by name: {logs}");
    let ps = ok(&["ps", "--format", "{{.Service}} {{.State}}"]);
    assert!(ps.contains("client running") && ps.contains("server running"), "{ps}");
    assert_eq!(s.ok(&["inspect", "-f", "{{.HostConfig.Isolation}}", "mt-client-1"]).trim(), "hyperv");
    assert!(ok(&["logs", "server"]).contains("serving"));
    // both services share the named volume
    assert_eq!(ok(&["exec", "-T", "server", "cat", "/data/got"]), "hello-from-server\n");
    assert!(r.ok(&["volume", "ls", "-q"]).contains("mt_shared"));
    ok(&["down", "-v"]);
    assert_eq!(s.ok(&["ps", "-aq"]), "");
    assert!(!s.ok(&["volume", "ls", "-q"]).contains("mt_shared"));
    assert!(!s.ok(&["network", "ls"]).contains("mt_default"));
}

#[test]
fn socket_activation_by_systemd_protocol() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let r = root_with_busybox();
    let sock = r.path().join("activated.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fd = l.as_raw_fd();
    // what systemd does: the socket as fd 3, LISTEN_FDS=1, LISTEN_PID = the server's PID
    let mut c = Command::new("sh");
    c.args(["-c", r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" --root "$1" serve -H fd://"#])
        .arg(env!("CARGO_BIN_EXE_moat"))
        .arg(r.path())
        .env("MOAT_KERNEL_DIR", kernel_dir())
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(r.path().join("serve.log")).unwrap());
    // SAFETY: dup2 and fcntl are async-signal-safe; it runs in the child between fork and exec
    unsafe {
        c.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead
            let r = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    drop(l);
    let cfg = tempfile::tempdir().unwrap();
    let o = Command::new("docker")
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .env("DOCKER_CONFIG", cfg.path())
        .args(["run", "--rm", "busybox", "echo", "activated"])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "activated\n", "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn docker_py_pull_and_push_with_x_registry_auth() {
    let (r, s) = served_with_busybox();
    let reg = Registry::with_htpasswd("u", "pw");
    let py = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("pyvenv/bin/python");
    let script = r#"
import sys, docker
c = docker.DockerClient(base_url=sys.argv[1])
repo = sys.argv[2] + "/auth/busybox"
good, bad = {"username": "u", "password": "pw"}, {"username": "u", "password": "nope"}
c.images.get("busybox").tag(repo, "1")
out = c.images.push(repo, tag="1", auth_config=bad)
assert "unauthorized" in out, out
out = c.images.push(repo, tag="1", auth_config=good)
assert "digest: sha256:" in out and '"error"' not in out, out
c.images.remove(repo + ":1")
try:
    c.images.pull(repo, tag="1")
    raise SystemExit("pulled without credentials")
except docker.errors.APIError:
    pass
img = c.images.pull(repo, tag="1", auth_config=good)
assert repo + ":1" in img.tags, img.tags
print("ok")
"#;
    let o = Command::new(py).args(["-c", script, &s.host(), &reg.addr]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n", "{}", String::from_utf8_lossy(&o.stderr));
    // the credentials served one request each: nothing was stored
    assert!(!r.path().join("auth.json").exists());
}

const COMPOSE_SHARED_VM: &str = r#"services:
  web:
    image: busybox
    isolation: hyperv
    command: ["httpd", "-f", "-p", "8080", "-h", "/etc"]
  side:
    image: busybox
    isolation: hyperv
    network_mode: "service:web"
    command: ["sleep", "1000"]
    depends_on: [web]
"#;

/// Docker's way into a sandbox: `--network container:a` and compose's
/// `network_mode: service:web` put a hyperv container into the other's
/// utility VM (one QEMU, localhost between them).
#[test]
fn docker_network_container_joins_a_vm_hyperv() {
    let (r, s) = served_with_busybox();
    s.ok(&["run", "-d", "--isolation=hyperv", "--name", "a", "busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"]);
    s.ok(&["run", "-d", "--isolation=hyperv", "--network", "container:a", "--name", "b", "busybox", "sleep", "1000"]);
    let qemu = |c: &str| r.ok(&["inspect", "-f", "{{.VM.QemuPid}}", c]).trim().to_string();
    assert_eq!(qemu("a"), qemu("b"), "one VM");
    let ida = s.ok(&["inspect", "-f", "{{.Id}}", "a"]).trim().to_string();
    let idb = s.ok(&["inspect", "-f", "{{.Id}}", "b"]).trim().to_string();
    assert_eq!(host_pids_matching(&format!("-name moat-{}", &ida[..12])).len(), 1);
    assert!(host_pids_matching(&format!("-name moat-{}", &idb[..12])).is_empty());
    assert_eq!(s.ok(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", "b"]).trim(), format!("container:{ida}"));
    let got = s.ok(&[
        "exec",
        "b",
        "sh",
        "-c",
        "for i in $(seq 100); do wget -q -O - http://127.0.0.1:8080/hostname && exit 0; sleep 0.1; done; exit 1",
    ]);
    assert_eq!(got, s.ok(&["exec", "a", "hostname"]));
    s.ok(&["rm", "-f", "b", "a"]);

    // compose: two services, one VM
    let plugin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("cli-plugins/docker-compose");
    std::fs::create_dir_all(s.docker_config.path().join("cli-plugins")).unwrap();
    std::os::unix::fs::symlink(&plugin, s.docker_config.path().join("cli-plugins/docker-compose")).unwrap();
    let proj = tempfile::tempdir().unwrap();
    std::fs::write(proj.path().join("compose.yaml"), COMPOSE_SHARED_VM).unwrap();
    let ok = |args: &[&str]| -> String {
        let o = s.docker_cmd().current_dir(proj.path()).args(["compose", "-p", "vm1"]).args(args).output().unwrap();
        assert!(o.status.success(), "compose {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&["up", "-d"]);
    let (web, side) = (qemu("vm1-web-1"), qemu("vm1-side-1"));
    assert!(!web.is_empty() && web != "0", "{web}");
    assert_eq!(web, side, "both services in one VM");
    let got = ok(&[
        "exec",
        "-T",
        "side",
        "sh",
        "-c",
        "for i in $(seq 100); do wget -q -O - http://127.0.0.1:8080/hostname && exit 0; sleep 0.1; done; exit 1",
    ]);
    assert_eq!(got, ok(&["exec", "-T", "web", "hostname"]));
    assert_eq!(ok(&["exec", "-T", "side", "uname", "-r"]).trim(), guest_kernel_release());
    ok(&["down"]);
    assert_eq!(s.ok(&["ps", "-aq"]), "");
}
