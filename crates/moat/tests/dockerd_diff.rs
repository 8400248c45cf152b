//! Differential test against the reference engine (issue #31): Debian's
//! dockerd 20.10 runs on its own socket, data root and exec root (no
//! iptables changes, no default bridge), both engines get the same busybox
//! image and the same requests for every kind of endpoint moat serves, and
//! the answers are compared: status codes, error shapes, the key sets of
//! every JSON body (recursively) and the values that must agree.
//!
//! A value that must agree is asserted. Every other difference is a line of
//! `tests/data/dockerd-diff.txt`, compared whole (a new difference fails, and
//! so does a closed one until it is taken off; rewrite with
//! `MOAT_WRITE_DOCKERD_DIFF=1`); docs/api.md says why each one remains.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's dockerd on a private socket, data root and exec root; its own
/// containerd is started by it. Dropping it removes what the test made in it,
/// stops both daemons (by PID) and removes its directories.
struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
    /// What dockerd 20.10 writes outside its roots (its trust key, the
    /// plugin socket directory) and that was not there before: removed.
    made: Vec<PathBuf>,
}

/// Paths dockerd 20.10 makes whatever its flags say.
const DOCKERD_LEFTOVERS: &[&str] = &["/etc/docker/key.json", "/etc/docker", "/run/docker/plugins", "/run/docker"];

impl Dockerd {
    fn start() -> Self {
        let bin = ["/usr/sbin/dockerd", "/usr/bin/dockerd"].into_iter().find(|p| Path::new(p).exists());
        let bin = bin.expect("dockerd is missing: make deps installs Debian's docker.io");
        // short paths: containerd's sockets live under the exec root
        let dir = tempfile::Builder::new().prefix("moat-dd").tempdir_in("/tmp").unwrap();
        let d = dir.path();
        let made: Vec<PathBuf> =
            DOCKERD_LEFTOVERS.iter().map(PathBuf::from).filter(|p| std::fs::symlink_metadata(p).is_err()).collect();
        // no daemon.json of the machine's
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Command::new(bin)
            .arg("--host")
            .arg(format!("unix://{}", d.join("d.sock").display()))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("x"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none"])
            .args([
                "--storage-driver=vfs",
                "--containerd-namespace=moatdiff",
                "--containerd-plugins-namespace=moatdiffp",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let dd = Self { child, dir, made };
        let t0 = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(dd.sock()).is_ok()
                && http(&dd.sock(), "GET", "/_ping", None).0 == 200
            {
                break;
            }
            let log = std::fs::read_to_string(dd.dir.path().join("dockerd.log")).unwrap_or_default();
            assert!(t0.elapsed() < Duration::from_secs(60), "dockerd did not answer:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
        dd
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("d.sock")
    }

    fn docker(&self, args: &[&str]) -> String {
        let o = Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", self.sock().display()))
            .env("DOCKER_CONFIG", self.dir.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "docker {args:?} on dockerd: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let sock = self.sock();
        // what the test made: containers (with their anonymous volumes), networks, volumes
        if let Ok((200, _, b)) = std::panic::catch_unwind(|| http(&sock, "GET", "/containers/json?all=1", None)) {
            for c in serde_json::from_slice::<Vec<Value>>(&b).unwrap_or_default() {
                let id = c["Id"].as_str().unwrap_or_default();
                let _ =
                    std::panic::catch_unwind(|| http(&sock, "DELETE", &format!("/containers/{id}?force=1&v=1"), None));
            }
            for n in ["dfnet", "dfnet2"] {
                let _ = std::panic::catch_unwind(|| http(&sock, "DELETE", &format!("/networks/{n}"), None));
            }
            let _ = std::panic::catch_unwind(|| {
                http(&sock, "POST", "/volumes/prune?filters=%7B%22all%22%3A%5B%22true%22%5D%7D", None)
            });
        }
        // dockerd stops the containerd it started on SIGTERM
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let ctrd = std::fs::read_to_string(self.dir.path().join("x/containerd/containerd.pid")).unwrap_or_default();
        if let Ok(pid) = ctrd.trim().parse::<u32>() {
            if alive(pid.into()) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
        let base = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mine: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&base)).collect();
        mine.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mine {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        // files before their directories (the list's order)
        for p in &self.made {
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
        }
    }
}

/// An answer: the status code and the body as JSON (a string if not JSON).
#[derive(Debug)]
struct Answer {
    code: u16,
    ctype: String,
    raw: Vec<u8>,
    json: Value,
}

fn call(sock: &Path, method: &str, path: &str, body: Option<&Value>) -> Answer {
    let b = body.map(|b| serde_json::to_vec(b).unwrap());
    let (code, ctype, raw) = http(sock, method, path, b.as_deref());
    let json = serde_json::from_slice(&raw).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into()));
    Answer { code, ctype, raw, json }
}

/// Names of objects whose keys are data (names, ports, paths), not fields:
/// their keys are compared as `*`.
const MAPS: &[&str] = &[
    "Labels",
    "Networks",
    "Ports",
    "ExposedPorts",
    "Volumes",
    "Options",
    "Containers",
    "Sysctls",
    "Tmpfs",
    "DriverOpts",
    "Runtimes",
    "Status",
    "Annotations",
    "IndexConfigs",
    "Attributes",
    "StorageOpt",
];

/// Every key path of a JSON value: `a.b`, `[]` for an array's items (the
/// union of their keys), `*` for the keys of a data map.
fn key_paths(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            let is_map = MAPS.iter().any(|n| prefix == *n || prefix.ends_with(&format!(".{n}")));
            for (k, x) in m {
                let k = if is_map { "*" } else { k.as_str() };
                let p = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
                out.insert(p.clone());
                key_paths(&p, x, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                key_paths(&format!("{prefix}[]"), x, out);
            }
        }
        _ => {}
    }
}

/// Both engines answer the same requests; differences are collected.
struct Diff {
    moat: PathBuf,
    dockerd: PathBuf,
    lines: BTreeSet<String>,
}

impl Diff {
    /// Sends one request to both engines (the path may differ per engine:
    /// `paths` is (moat's, dockerd's)); compares codes and key sets; returns
    /// both answers for the values that must agree.
    fn both(&mut self, label: &str, method: &str, paths: (&str, &str), body: Option<&Value>) -> (Answer, Answer) {
        let m = call(&self.moat, method, paths.0, body);
        let d = call(&self.dockerd, method, paths.1, body);
        if m.code != d.code {
            self.lines.insert(format!("{label} status moat={} dockerd={}", m.code, d.code));
        }
        // error shapes: both JSON objects with the same keys; the words
        // (IDs aside) are listed where they differ
        if m.code >= 400 && d.code >= 400 {
            let keys = |a: &Answer| a.json.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
            same_value(&format!("{label}: error shape"), keys(&m), keys(&d));
            let words = |a: &Answer| {
                let msg = a.json["message"].as_str().unwrap_or_default().to_string();
                let ids: Vec<&str> =
                    msg.split(|c: char| !c.is_ascii_hexdigit()).filter(|w| w.len() == 64 || w.len() == 12).collect();
                ids.iter().fold(msg.clone(), |m, id| m.replace(id, "<id>"))
            };
            if words(&m) != words(&d) {
                self.lines.insert(format!("{label} message moat={:?} dockerd={:?}", words(&m), words(&d)));
            }
        }
        let (mut km, mut kd) = (BTreeSet::new(), BTreeSet::new());
        key_paths("", &m.json, &mut km);
        key_paths("", &d.json, &mut kd);
        for k in kd.difference(&km) {
            self.lines.insert(format!("{label} -{k}"));
        }
        for k in km.difference(&kd) {
            self.lines.insert(format!("{label} +{k}"));
        }
        (m, d)
    }

    /// Values that differ for a documented reason: recorded, not asserted.
    fn values(&mut self, label: &str, (m, d): &(Answer, Answer), pointers: &[&str]) {
        for p in pointers {
            let (a, b) = (m.json.pointer(p), d.json.pointer(p));
            if a != b {
                let show = |v: Option<&Value>| v.map_or("(none)".to_string(), |v| v.to_string());
                self.lines.insert(format!("{label} ={p} moat={} dockerd={}", show(a), show(b)));
            }
        }
    }

    fn same(&mut self, label: &str, method: &str, path: &str, body: Option<&Value>) -> (Answer, Answer) {
        self.both(label, method, (path, path), body)
    }
}

/// Values that must agree and do not: asserted empty at the end (so one
/// run shows them all).
static MISMATCHES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The values at these JSON pointers must agree.
fn agree(label: &str, (m, d): &(Answer, Answer), pointers: &[&str]) {
    for p in pointers {
        let (a, b) = (m.json.pointer(p), d.json.pointer(p));
        if a != b {
            MISMATCHES.lock().unwrap().push(format!("{label} {p}: moat {a:?} | dockerd {b:?}"));
        }
    }
}

/// Records a mismatch unless `a == b`.
fn same_value<T: PartialEq + std::fmt::Debug>(what: &str, a: T, b: T) {
    if a != b {
        MISMATCHES.lock().unwrap().push(format!("{what}: moat {a:?} | dockerd {b:?}"));
    }
}

/// Both answered `want`.
fn codes(label: &str, (m, d): &(Answer, Answer), want: u16) {
    if (m.code, d.code) != (want, want) {
        MISMATCHES
            .lock()
            .unwrap()
            .push(format!("{label}: want {want}: moat {} {} | dockerd {} {}", m.code, m.json, d.code, d.json));
    }
}

/// The frames of a multiplexed stream, sorted: (stream, payload).
fn frames(mut raw: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    while raw.len() >= 8 {
        let n = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
        out.push((raw[0], String::from_utf8_lossy(&raw[8..(8 + n).min(raw.len())]).into_owned()));
        raw = &raw[(8 + n).min(raw.len())..];
    }
    out.sort();
    out
}

#[test]
fn moat_answers_as_dockerd_does() {
    let dd = Dockerd::start();
    let r = root_with_busybox();
    let s = ApiServer::start(&r);
    dd.docker(&["load", "-q", "-i", busybox_archive().0.to_str().unwrap()]);
    let mut t = Diff { moat: s.sock.clone(), dockerd: dd.sock(), lines: BTreeSet::new() };
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::write(host_dir.path().join("f"), "from the host\n").unwrap();
    let since = chrono::Utc::now().timestamp();

    // system
    let a = t.same("ping", "GET", "/_ping", None);
    codes("ping", &a, 200);
    assert_eq!((a.0.raw, a.1.raw), (b"OK".to_vec(), b"OK".to_vec()));
    let a = t.same("version", "GET", "/version", None);
    agree("version", &a, &["/Os", "/Arch"]);
    let a = t.same("info", "GET", "/info", None);
    agree("info", &a, &["/OSType", "/Architecture", "/Images", "/Swarm/LocalNodeState", "/NCPU"]);
    t.same("system df", "GET", "/system/df", None);

    // images
    let a = t.same("images list", "GET", "/images/json", None);
    agree("images list", &a, &["/0/Id", "/0/RepoTags", "/0/Created", "/0/Size"]);
    t.values("images list", &a, &["/0/Containers", "/0/Labels", "/0/RepoDigests"]);
    let a = t.same("image inspect", "GET", "/images/busybox:latest/json", None);
    agree("image inspect", &a, &["/Id", "/RepoTags", "/Config/Cmd", "/Os", "/Architecture", "/RootFS", "/Size"]);
    let a = t.same("image history", "GET", "/images/busybox/history", None);
    agree("image history", &a, &["/0/Id", "/0/CreatedBy", "/0/Tags", "/0/Size"]);
    let a = t.same("image missing", "GET", "/images/nosuch:1/json", None);
    codes("image missing", &a, 404);
    let a = t.same("image tag", "POST", "/images/busybox/tag?repo=dfimg&tag=v1", None);
    codes("image tag", &a, 201);
    let a = t.same("image rm", "DELETE", "/images/dfimg:v1", None);
    agree("image rm", &a, &["/0/Untagged"]);

    // a container with a broad set of options
    let hd = host_dir.path().to_str().unwrap();
    let create = json!({
        "Image": "busybox",
        "Cmd": ["sh", "-c", "echo hello; echo oops >&2; exec sleep 600"],
        "Env": ["A=1", "B=two"],
        "Labels": {"l1": "v1"},
        "WorkingDir": "/tmp",
        "User": "0:0",
        "Hostname": "dfhost",
        "Domainname": "example.org",
        "StopSignal": "SIGTERM",
        "StopTimeout": 5,
        "ExposedPorts": {"80/tcp": {}},
        "Volumes": {"/data": {}},
        "HostConfig": {
            "Memory": 67108864,
            "CpuShares": 512,
            "PidsLimit": 100,
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            "CapAdd": ["NET_ADMIN"],
            "CapDrop": ["MKNOD"],
            "Dns": ["10.0.0.53"],
            "DnsSearch": ["example.org"],
            "ExtraHosts": ["h1:10.1.2.3"],
            "Tmpfs": {"/run": "size=1m"},
            "ShmSize": 16777216,
            "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}],
            "Init": true,
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}},
            "SecurityOpt": ["no-new-privileges"],
            "NetworkMode": "none",
            "OomScoreAdj": 100,
            "Binds": [format!("{hd}:/hostdir:ro")],
        },
    });
    let a = t.same("create", "POST", "/containers/create?name=dfbox", Some(&create));
    codes("create", &a, 201);
    let a = t.same("inspect created", "GET", "/containers/dfbox/json", None);
    let fixed = [
        "/Name",
        "/Path",
        "/Args",
        "/State/Status",
        "/State/Running",
        "/RestartCount",
        "/Config/Cmd",
        "/Config/Env",
        "/Config/Labels",
        "/Config/WorkingDir",
        "/Config/User",
        "/Config/Hostname",
        "/Config/Domainname",
        "/Config/StopSignal",
        "/Config/StopTimeout",
        "/Config/ExposedPorts",
        "/Config/Volumes",
        "/Config/Image",
        "/Image",
        "/HostConfig/Memory",
        "/HostConfig/MemorySwap",
        "/HostConfig/CpuShares",
        "/HostConfig/PidsLimit",
        "/HostConfig/RestartPolicy",
        "/HostConfig/CapAdd",
        "/HostConfig/CapDrop",
        "/HostConfig/Dns",
        "/HostConfig/DnsSearch",
        "/HostConfig/ExtraHosts",
        "/HostConfig/Tmpfs",
        "/HostConfig/ShmSize",
        "/HostConfig/Ulimits",
        "/HostConfig/Init",
        "/HostConfig/LogConfig",
        "/HostConfig/SecurityOpt",
        "/HostConfig/NetworkMode",
        "/HostConfig/OomScoreAdj",
        "/HostConfig/Binds",
    ];
    agree("inspect created", &a, &fixed);
    let a = t.same("start", "POST", "/containers/dfbox/start", None);
    codes("start", &a, 204);
    let a = t.same("start again", "POST", "/containers/dfbox/start", None);
    codes("start again", &a, 304);
    let a = t.same("inspect running", "GET", "/containers/dfbox/json", None);
    agree("inspect running", &a, &[&fixed[..], &["/State/Running", "/State/Paused", "/State/ExitCode"]].concat());
    let mounts = |x: &Answer| {
        let mut v: Vec<(Value, Value, Value)> = x.json["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["Type"] != "tmpfs")
            .map(|m| (m["Type"].clone(), m["Destination"].clone(), m["RW"].clone()))
            .collect();
        v.sort_by_key(|m| m.1.to_string());
        v
    };
    same_value("mounts", mounts(&a.0), mounts(&a.1));
    let a = t.same("list", "GET", "/containers/json?filters=%7B%22name%22%3A%5B%22dfbox%22%5D%7D", None);
    agree("list", &a, &["/0/Names", "/0/Image", "/0/Command", "/0/State", "/0/Labels", "/0/HostConfig"]);
    let a = t.same("top", "GET", "/containers/dfbox/top", None);
    t.values("top", &a, &["/Titles"]);

    // exec: the multiplexed stream is the same bytes
    let exec =
        json!({"Cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"], "AttachStdout": true, "AttachStderr": true});
    let (m, d) = t.same("exec create", "POST", "/containers/dfbox/exec", Some(&exec));
    assert_eq!((m.code, d.code), (201, 201));
    let (mid, did) = (m.json["Id"].as_str().unwrap().to_string(), d.json["Id"].as_str().unwrap().to_string());
    let start = json!({"Detach": false, "Tty": false});
    let a = t.both("exec start", "POST", (&format!("/exec/{mid}/start"), &format!("/exec/{did}/start")), Some(&start));
    // the same frames (dockerd's order between stdout and stderr is its scheduler's)
    same_value("exec stream", (a.0.code, frames(&a.0.raw)), (a.1.code, frames(&a.1.raw)));
    if a.0.ctype != a.1.ctype {
        t.lines.insert(format!("exec start content-type moat={} dockerd={}", a.0.ctype, a.1.ctype));
    }
    let a = t.both("exec inspect", "GET", (&format!("/exec/{mid}/json"), &format!("/exec/{did}/json")), None);
    agree("exec inspect", &a, &["/ExitCode", "/Running", "/ProcessConfig", "/OpenStdin", "/OpenStdout"]);
    let a = t.same("exec missing", "GET", "/exec/nosuch/json", None);
    codes("exec missing", &a, 404);

    let a = t.same("logs", "GET", "/containers/dfbox/logs?stdout=1&stderr=1", None);
    // the frames of each stream; dockerd copies stdout and stderr apart, so
    // their order between the two streams is its scheduler's
    same_value("logs", (a.0.code, frames(&a.0.raw)), (a.1.code, frames(&a.1.raw)));
    let a = t.same("pause", "POST", "/containers/dfbox/pause", None);
    codes("pause", &a, 204);
    let a = t.same("inspect paused", "GET", "/containers/dfbox/json", None);
    agree("inspect paused", &a, &["/State/Status", "/State/Paused"]);
    let a = t.same("unpause", "POST", "/containers/dfbox/unpause", None);
    codes("unpause", &a, 204);
    let a = t.same("update", "POST", "/containers/dfbox/update", Some(&json!({"Memory": 100663296, "MemorySwap": -1})));
    codes("update", &a, 200);
    let a = t.same("inspect updated", "GET", "/containers/dfbox/json", None);
    agree("inspect updated", &a, &["/HostConfig/Memory", "/HostConfig/MemorySwap"]);
    let a = t.same("rm running", "DELETE", "/containers/dfbox", None);
    codes("rm running", &a, 409);
    let a = t.same("kill", "POST", "/containers/dfbox/kill?signal=KILL", None);
    codes("kill", &a, 204);
    let a = t.same("wait", "POST", "/containers/dfbox/wait", None);
    agree("wait", &a, &["/StatusCode", "/Error"]);
    let a = t.same("inspect exited", "GET", "/containers/dfbox/json", None);
    agree("inspect exited", &a, &["/State/Status", "/State/ExitCode", "/State/OOMKilled", "/State/Error"]);
    let a = t.same("exec stopped", "POST", "/containers/dfbox/exec", Some(&exec));
    codes("exec stopped", &a, 409);
    let a = t.same("kill stopped", "POST", "/containers/dfbox/kill", None);
    codes("kill stopped", &a, 409);

    // bad input
    let a = t.same("create clash", "POST", "/containers/create?name=dfbox", Some(&create));
    codes("create clash", &a, 409);
    // one character: dockerd refuses, moat takes it (the status is listed)
    t.same("create one-character name", "POST", "/containers/create?name=a", Some(&json!({"Image": "busybox"})));
    let a =
        t.same("create bad name chars", "POST", "/containers/create?name=a%20b", Some(&json!({"Image": "busybox"})));
    codes("create bad name chars", &a, 400);
    let a = t.same("create no image", "POST", "/containers/create", Some(&json!({"Image": "nosuch:1"})));
    codes("create no image", &a, 404);
    let a = t.same(
        "create tiny memory",
        "POST",
        "/containers/create",
        Some(&json!({"Image": "busybox", "HostConfig": {"Memory": 1000}})),
    );
    codes("create tiny memory", &a, 400);
    let a = t.same(
        "create bad restart",
        "POST",
        "/containers/create",
        Some(&json!({"Image": "busybox", "HostConfig": {"RestartPolicy": {"Name": "sometimes"}}})),
    );
    codes("create bad restart", &a, 400);
    let (m, d) = (
        http(&t.moat, "POST", "/containers/create", Some(b"{")),
        http(&t.dockerd, "POST", "/containers/create", Some(b"{")),
    );
    if (m.0, d.0) != (400, 400) {
        t.lines.insert(format!("create bad JSON status moat={} dockerd={}", m.0, d.0));
    }
    for (label, method, path) in [
        ("inspect missing", "GET", "/containers/nosuch/json"),
        ("start missing", "POST", "/containers/nosuch/start"),
        ("stop missing", "POST", "/containers/nosuch/stop"),
        ("rm missing", "DELETE", "/containers/nosuch"),
        ("logs missing", "GET", "/containers/nosuch/logs?stdout=1"),
        ("top missing", "GET", "/containers/nosuch/top"),
    ] {
        let a = t.same(label, method, path, None);
        codes(label, &a, 404);
    }
    let a = t.same("logs no stream", "GET", "/containers/dfbox/logs", None);
    codes("logs no stream", &a, 400);
    let a = t.same("rm", "DELETE", "/containers/dfbox?v=1", None);
    codes("rm", &a, 204);

    // a container with the defaults, on the default network, removed by force
    let a = t.same(
        "create default",
        "POST",
        "/containers/create?name=dfplain",
        Some(&json!({"Image": "busybox", "Cmd": ["sleep", "600"]})),
    );
    codes("create default", &a, 201);
    let a = t.same("inspect default", "GET", "/containers/dfplain/json", None);
    agree("inspect default", &a, &["/HostConfig/LogConfig", "/Config/Env", "/HostConfig/NetworkMode"]);
    t.values("inspect default", &a, &["/HostConfig/RestartPolicy"]);
    let a = t.same("rm force", "DELETE", "/containers/dfplain?force=1", None);
    codes("rm force", &a, 204);

    // volumes
    let a = t.same("volume create", "POST", "/volumes/create", Some(&json!({"Name": "dfvol", "Labels": {"k": "v"}})));
    codes("volume create", &a, 201);
    agree("volume create", &a, &["/Name", "/Driver", "/Labels", "/Scope", "/Options"]);
    let a = t.same("volume inspect", "GET", "/volumes/dfvol", None);
    agree("volume inspect", &a, &["/Name", "/Driver", "/Labels", "/Scope"]);
    t.same("volume list", "GET", "/volumes", None);
    let a = t.same("volume missing", "GET", "/volumes/nosuch", None);
    codes("volume missing", &a, 404);
    let a = t.same("volume rm", "DELETE", "/volumes/dfvol", None);
    codes("volume rm", &a, 204);

    // networks
    t.same("network list", "GET", "/networks", None);
    let net = json!({"Name": "dfnet", "Labels": {"k": "v"}, "IPAM": {"Config": [{"Subnet": "10.231.7.0/24"}]}});
    let a = t.same("network create", "POST", "/networks/create", Some(&net));
    codes("network create", &a, 201);
    // dockerd 20.10 checks the address pool first (403); moby 25 and moat the name (409)
    t.same("network clash", "POST", "/networks/create", Some(&net));
    let a = t.same("network inspect", "GET", "/networks/dfnet", None);
    agree("network inspect", &a, &["/Name", "/Driver", "/Scope", "/Labels", "/Internal", "/EnableIPv6"]);
    t.values("network inspect", &a, &["/IPAM/Config"]);
    let a = t.same("network missing", "GET", "/networks/nosuch", None);
    codes("network missing", &a, 404);
    let a = t.same("network rm", "DELETE", "/networks/dfnet", None);
    codes("network rm", &a, 204);

    // the events of all of the above
    let path = format!("/events?since={since}&until={}", chrono::Utc::now().timestamp() + 1);
    let (m, d) = (call(&t.moat, "GET", &path, None), call(&t.dockerd, "GET", &path, None));
    let events = |a: &Answer| -> Vec<Value> {
        String::from_utf8_lossy(&a.raw).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (em, ed) = (events(&m), events(&d));
    let keys = |ev: &[Value]| {
        let mut k = BTreeSet::new();
        for e in ev {
            key_paths(e["Type"].as_str().unwrap_or("?"), e, &mut k);
        }
        k
    };
    let (km, kd) = (keys(&em), keys(&ed));
    for k in kd.difference(&km) {
        t.lines.insert(format!("events -{k}"));
    }
    for k in km.difference(&kd) {
        t.lines.insert(format!("events +{k}"));
    }
    let actions = |ev: &[Value]| -> Vec<String> {
        ev.iter()
            .filter(|e| e["Type"] == "container" && e["Actor"]["Attributes"]["name"] == "dfbox")
            .map(|e| e["Action"].as_str().unwrap().split(':').next().unwrap().to_string())
            .filter(|a| !a.starts_with("exec_") && a != "health_status")
            .collect()
    };
    same_value("dfbox's events", actions(&em), actions(&ed));

    let bad = MISMATCHES.lock().unwrap().join("\n");
    assert!(bad.is_empty(), "values that must agree differ:\n{bad}");
    same_as_file(&t.lines, "dockerd-diff.txt", "docs/api.md");
}

/// The differences found (`lines`) are exactly those listed in
/// `tests/data/NAME` (after its `#` header); `MOAT_WRITE_DOCKERD_DIFF=1`
/// rewrites the list. `doc` says why each one remains.
fn same_as_file(lines: &BTreeSet<String>, name: &str, doc: &str) {
    let got: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    let header: String = std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    if std::env::var_os("MOAT_WRITE_DOCKERD_DIFF").is_some() {
        std::fs::write(&file, format!("{header}{got}")).unwrap();
    }
    let want: String = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(got, want, "differences from dockerd changed (tests/data/{name}; {doc} says why each remains)");
}

/// What `docker export` of a dockerd container adds to its image's files.
const DOCKERD_INIT_LAYER: &[&str] = &[
    ".dockerenv",
    "dev",
    "dev/console",
    "dev/pts",
    "dev/shm",
    "etc",
    "etc/hostname",
    "etc/hosts",
    "etc/mtab",
    "etc/resolv.conf",
    "proc",
    "sys",
];

/// The classic builder against dockerd 20.10's own (`DOCKER_BUILDKIT=0`
/// through the same docker CLI on both sockets) over the build corpus:
/// each image's history (`CreatedBy`), config and files (as `docker
/// export` writes them). Every difference is a line of
/// `tests/data/dockerd-build-diff.txt`; docs/build.md says why it remains.
#[test]
fn classic_builds_match_dockerd() {
    let dd = Dockerd::start();
    let r = root_with_busybox();
    let s = ApiServer::start(&r);
    dd.docker(&["load", "-q", "-i", busybox_archive().0.to_str().unwrap()]);
    let moat = |args: &[&str]| -> Vec<u8> {
        let o = s.docker_cmd().env("DOCKER_BUILDKIT", "0").args(args).output().unwrap();
        assert!(o.status.success(), "docker {args:?} on moat: {}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let try_docker = |args: &[&str]| -> Result<Vec<u8>, String> {
        let o = Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", dd.sock().display()))
            .env("DOCKER_CONFIG", dd.dir.path())
            .env("DOCKER_BUILDKIT", "0")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        match o.status.success() {
            true => Ok(o.stdout),
            false => Err(String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or_default().to_string()),
        }
    };
    let docker =
        |args: &[&str]| -> Vec<u8> { try_docker(args).unwrap_or_else(|e| panic!("docker {args:?} on dockerd: {e}")) };
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    // a content digest in COPY's history is each builder's own hash
    let created_by = |h: String| -> Vec<String> {
        h.lines()
            .map(|l| {
                l.split(' ')
                    .map(|w| match w.split_once(':') {
                        Some((k @ ("file" | "dir" | "multi"), d))
                            if d.len() >= 12 && d.chars().all(|c| c.is_ascii_hexdigit()) =>
                        {
                            format!("{k}:<digest>")
                        }
                        _ => w.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    let mut lines = BTreeSet::new();
    let mut compared = 0;
    for entry in corpus_entries() {
        // dockerd 20.10's classic builder reads no here-documents
        if entry == "20-heredoc" {
            continue;
        }
        let tag = format!("df-{}", entry.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-'));
        let ctx = corpus_context(&entry);
        let c = ctx.path().to_str().unwrap();
        let args = ["build", "-q", "--network", "none", "-t", &tag, c];
        moat(&args);
        // what 20.10's classic builder cannot build (BuildKit-only flags) is a line
        if let Err(e) = try_docker(&args) {
            lines.insert(format!("{entry} dockerd cannot build: {e}"));
            continue;
        }
        // ONBUILD's child names its base by this tag
        if entry == "16-onbuild-base" {
            moat(&["tag", &tag, "onbuild-base"]);
            docker(&["tag", &tag, "onbuild-base"]);
        }
        let hist = ["history", "--no-trunc", "--format", "{{.CreatedBy}}", &tag];
        let (hm, hd) = (created_by(text(moat(&hist))), created_by(text(docker(&hist))));
        if hm != hd {
            lines.insert(format!("{entry} history: moat {hm:?} dockerd {hd:?}"));
        }
        let cfg = ["image", "inspect", "--format", "{{json .Config}}", &tag];
        let (cm, cd): (Value, Value) =
            (serde_json::from_slice(&moat(&cfg)).unwrap(), serde_json::from_slice(&docker(&cfg)).unwrap());
        for k in BUILD_CONFIG_FIELDS.iter().copied().chain(["ArgsEscaped"]) {
            if cm.get(k) != cd.get(k) {
                lines.insert(format!(
                    "{entry} config {k}: moat {} dockerd {}",
                    cm.get(k).unwrap_or(&Value::Null),
                    cd.get(k).unwrap_or(&Value::Null)
                ));
            }
        }
        let files = |run: &dyn Fn(&[&str]) -> Vec<u8>| {
            let id = text(run(&["create", "--network", "none", &tag, "true"])).trim().to_string();
            let listing = tar_listing(&run(&["export", &id]));
            run(&["rm", &id]);
            listing
        };
        let (fm, fd) = (files(&moat), files(&docker));
        for k in fm.keys().chain(fd.keys()).collect::<BTreeSet<_>>() {
            // dockerd's export adds its container's init layer (mount points
            // of a container, never part of the image): not a build's
            if !fm.contains_key(k) && DOCKERD_INIT_LAYER.contains(&k.as_str()) {
                continue;
            }
            if fm.get(k) != fd.get(k) {
                lines.insert(format!("{entry} file {k}: moat {:?} dockerd {:?}", fm.get(k), fd.get(k)));
            }
        }
        compared += 1;
    }
    assert!(compared >= 15, "{compared}");
    same_as_file(&lines, "dockerd-build-diff.txt", "docs/build.md");
}
