//! Shared helpers for moat's end-to-end tests: a temporary root per test, the
//! real `moat` binary, and image fixtures built from Debian's busybox-static.
#![allow(dead_code)]

use sha2::{Digest as _, Sha256};

/// Instantiates tests that take the isolation type (`fn name(iso: &str)`)
/// once per type: `process::name` and `vm::name` (the nextest `vm` group).
#[allow(unused_macros)]
macro_rules! modes {
    ($($name:ident),* $(,)?) => {
        mod process {
            $( #[test] fn $name() { super::$name("process"); } )*
        }
        mod vm {
            $( #[test] fn $name() { super::$name("vm"); } )*
        }
    };
}
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Where fixtures shared by all tests of a run are kept.
pub fn fixtures_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&d).expect("create fixtures dir");
    d
}

/// The workspace's guest kernel directory (`make kernel` fills it).
pub fn kernel_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("vm-kernel")
}

/// The release of the guest kernel `make kernel` installed (moat's own).
pub fn guest_kernel_release() -> String {
    std::fs::read_to_string(kernel_dir().join("current")).expect("make kernel installs one").trim().to_string()
}

/// A moat root that is removed (with anything mounted in it) when dropped.
pub struct Root {
    pub dir: tempfile::TempDir,
}

impl Root {
    pub fn new() -> Self {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("roots");
        std::fs::create_dir_all(&base).expect("create roots dir");
        Self { dir: tempfile::Builder::new().prefix("r").tempdir_in(base).expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `moat --root <this>` command (sharing the workspace's guest kernel).
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moat"));
        c.arg("--root").arg(self.path()).stdin(Stdio::null());
        if std::env::var_os("MOAT_KERNEL_DIR").is_none() {
            c.env("MOAT_KERNEL_DIR", kernel_dir());
        }
        c
    }

    /// Runs moat with `args`; returns the output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn moat")
    }

    /// Runs moat and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "moat {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs moat, asserts failure with a single-line error; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_fails_one_line(&o, &format!("{args:?}"));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// Image IDs (full) listed by `moat images`.
    pub fn image_ids(&self) -> Vec<String> {
        self.ok(&["images", "-q", "--no-trunc"]).lines().map(str::to_string).collect()
    }
}

/// Asserts a non-zero exit, no panic, and exactly one line on stderr.
pub fn assert_fails_one_line(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what} should fail; stdout: {}", String::from_utf8_lossy(&o.stdout));
    assert_ne!(o.status.code(), Some(101), "{what} panicked: {err}");
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: expected a one-line error, got: {err}");
}

impl Drop for Root {
    fn drop(&mut self) {
        // remove this root's containers, switches (bridges, rules, taps)
        // and files through moat itself
        if self.path().join("moat.db").exists() {
            let o = self.run(&["system", "reset", "--force"]);
            // a test that passed must also leave a root that resets cleanly,
            // with none of its processes (shims, QEMU, virtiofsd, proxies) left
            if !std::thread::panicking() {
                assert!(o.status.success(), "system reset failed: {}", String::from_utf8_lossy(&o.stderr));
                let root = self.path().display().to_string();
                let left: Vec<(u32, String)> = host_pids_matching(&root)
                    .into_iter()
                    .filter(|p| *p != std::process::id())
                    .map(|p| {
                        (
                            p,
                            String::from_utf8_lossy(&std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default())
                                .replace('\0', " "),
                        )
                    })
                    .collect();
                assert!(left.is_empty(), "processes of the root outlived system reset: {left:?}");
            }
        }
        // lazily unmount anything a test left mounted under this root
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            let root = self.path().to_string_lossy().into_owned();
            let mut mps: Vec<&str> =
                m.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&root)).collect();
            mps.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for mp in mps {
                let _ = Command::new("umount").arg("-l").arg(mp).status();
            }
        }
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A busybox rootfs directory: /bin/busybox from Debian's busybox-static plus
/// a symlink per applet, /etc/passwd and /etc/group, /tmp, /root.
pub fn busybox_rootfs() -> &'static Path {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let final_dir = fixtures_dir().join("busybox-rootfs");
        if final_dir.join("bin/busybox").exists() {
            return final_dir;
        }
        let d = fixtures_dir().join(format!("busybox-rootfs.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for sub in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let bb = Path::new("/bin/busybox");
        assert!(bb.exists(), "/bin/busybox missing: make test installs busybox-static");
        std::fs::copy(bb, d.join("bin/busybox")).expect("copy busybox");
        let list = Command::new(bb).arg("--list").output().expect("busybox --list");
        for a in String::from_utf8_lossy(&list.stdout).lines() {
            if a != "busybox" && !a.is_empty() {
                let _ = std::os::unix::fs::symlink("busybox", d.join("bin").join(a));
            }
        }
        std::fs::write(
            d.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .expect("passwd");
        std::fs::write(d.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
        std::fs::set_permissions(d.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).expect("chmod");
        if std::fs::rename(&d, &final_dir).is_err() {
            // another test process won the race: use its copy
            let _ = std::fs::remove_dir_all(&d);
        }
        final_dir
    })
}

/// Tars a directory (symlinks kept as symlinks) into bytes.
pub fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir_all(".", dir).expect("tar dir");
    b.into_inner().expect("tar finish")
}

/// A tar stream assembled entry by entry, for crafted (and hostile) archives.
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    pub fn new() -> Self {
        Self { b: tar::Builder::new(Vec::new()) }
    }

    fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    /// Writes the path bytes raw, bypassing the tar crate's own `..` checks.
    fn raw_path(h: &mut tar::Header, path: &str) {
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
    }

    pub fn file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, data.len() as u64, 0o644);
        Self::raw_path(&mut h, path);
        h.set_cksum();
        self.b.append(&h, data).expect("append");
        self
    }

    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0, 0o755);
        Self::raw_path(&mut h, path);
        h.set_cksum();
        self.b.append(&h, &[][..]).expect("append");
        self
    }

    pub fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, 0, 0o777);
        Self::raw_path(&mut h, path);
        h.set_link_name_literal(target).expect("link name");
        h.set_cksum();
        self.b.append(&h, &[][..]).expect("append");
        self
    }

    pub fn device(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, 0, 0o666);
        Self::raw_path(&mut h, path);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        h.set_cksum();
        self.b.append(&h, &[][..]).expect("append");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish")
    }
}

/// Builds a docker-archive (what `docker save` writes) from layer tars.
/// Returns the archive bytes and the image ID.
pub fn docker_archive(tags: &[&str], layers: &[Vec<u8>], cmd: &[&str]) -> (Vec<u8>, String) {
    docker_archive_with(tags, layers, serde_json::json!({ "Cmd": cmd }))
}

/// [`docker_archive`] with more fields of the image's `config` (`Volumes`,
/// `Healthcheck`, ...) next to its `PATH`.
pub fn docker_archive_with(tags: &[&str], layers: &[Vec<u8>], extra: serde_json::Value) -> (Vec<u8>, String) {
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha256_hex(l))).collect();
    let mut inner = serde_json::json!({ "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] });
    for (k, v) in extra.as_object().into_iter().flatten() {
        inner[k] = v.clone();
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-02T03:04:05Z",
        "config": inner,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|_| serde_json::json!({"created": "2026-01-02T03:04:05Z"})).collect::<Vec<_>>(),
    });
    let config = serde_json::to_vec(&config).expect("config json");
    let id = sha256_hex(&config);
    let mut b = TarBuilder::new().file(&format!("{id}.json"), &config);
    let mut names = Vec::new();
    for (l, d) in layers.iter().zip(&diff_ids) {
        let name = format!("{}/layer.tar", &d[7..]);
        b = b.file(&name, l);
        names.push(name);
    }
    let manifest = serde_json::json!([{ "Config": format!("{id}.json"), "RepoTags": tags, "Layers": names }]);
    let b = b.file("manifest.json", &serde_json::to_vec(&manifest).expect("manifest"));
    (b.finish(), format!("sha256:{id}"))
}

/// The busybox image as a docker-archive file (`busybox:latest`, Cmd `sh`),
/// built once per test run. Returns its path and image ID.
pub fn busybox_archive() -> &'static (PathBuf, String) {
    static A: OnceLock<(PathBuf, String)> = OnceLock::new();
    A.get_or_init(|| {
        let layer = tar_dir(busybox_rootfs());
        let (bytes, id) = docker_archive(&["busybox:latest"], &[layer], &["sh"]);
        (write_fixture("busybox.tar", &bytes), id)
    })
}

/// Writes bytes to `name` in the fixtures dir (atomically: tests running in
/// parallel may write the same fixture).
pub fn write_fixture(name: &str, bytes: &[u8]) -> PathBuf {
    let p = fixtures_dir().join(name);
    let tmp = fixtures_dir().join(format!(".{name}.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).expect("create fixture");
    f.write_all(bytes).expect("write fixture");
    std::fs::rename(&tmp, &p).expect("place fixture");
    p
}

/// Every path under `dir` (to prove nothing escaped).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(p.clone());
                }
                out.push(p);
            }
        }
    }
    out
}

/// A root with `busybox:latest` loaded.
pub fn root_with_busybox() -> Root {
    let r = Root::new();
    r.ok(&["load", "-q", "-i", busybox_archive().0.to_str().unwrap()]);
    r
}

/// The busybox rootfs plus `/probe` (moat's in-container probe) and the
/// shared libraries it needs, as one layer tar (built once per test run).
pub fn probe_layer() -> &'static Vec<u8> {
    static L: OnceLock<Vec<u8>> = OnceLock::new();
    L.get_or_init(|| {
        let probe = PathBuf::from(env!("CARGO_BIN_EXE_moat-probe"));
        let d = fixtures_dir().join(format!("probe-rootfs.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let cp = Command::new("cp").arg("-a").arg(busybox_rootfs()).arg(&d).status().expect("cp");
        assert!(cp.success());
        std::fs::copy(&probe, d.join("probe")).expect("copy probe");
        let ldd = Command::new("ldd").arg(&probe).output().expect("ldd");
        for l in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from);
            if let Some(p) = path {
                let dst = d.join(p.strip_prefix("/").unwrap());
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::copy(&p, &dst).expect("copy lib");
            }
        }
        let layer = tar_dir(&d);
        let _ = std::fs::remove_dir_all(&d);
        layer
    })
}

/// [`probe_layer`] as a docker-archive `probe:latest`.
pub fn probe_archive() -> &'static PathBuf {
    static A: OnceLock<PathBuf> = OnceLock::new();
    A.get_or_init(|| {
        let (bytes, _) = docker_archive(&["probe:latest"], &[probe_layer().clone()], &["/probe"]);
        write_fixture("probe.tar", &bytes)
    })
}

/// Parses the probe's `key=value` lines.
pub fn probe_map(out: &str) -> std::collections::HashMap<String, String> {
    out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Whether host process `pid` exists and is not a zombie.
pub fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// Every cgroup directory of container `id` on the host, in every
/// hierarchy: each cgroup v1 controller's, the unified one of a hybrid
/// host, or the single v2 tree.
pub fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let base = Path::new("/sys/fs/cgroup");
    let mut trees = vec![base.to_path_buf()];
    trees.extend(std::fs::read_dir(base).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    for t in trees {
        let d = t.join("moat").join(id);
        if d.is_dir() {
            out.push(d);
        }
    }
    out
}

/// Host PIDs whose command line contains `needle`.
pub fn host_pids_matching(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

/// Runs `cmd` under `script` so it gets a real terminal of 31 rows and 97
/// columns; types `input` (if any) and returns its output. `script`'s own
/// stdin stays open until `cmd` ends: at the end of its stdin `script`
/// writes the terminal's EOF character into the terminal, which no user
/// types, and which a raw terminal passes on as a byte (a NUL here).
pub fn with_pty(cmd: &str, input: Option<&str>) -> Output {
    with_pty_dialog(cmd, &[("", input.unwrap_or(""))])
}

/// Runs `cmd` under `script` (a 31x97 terminal) as a person would: for each
/// step, waits (up to a minute) until the output so far contains `.0`, then
/// types `.1`. Returns the whole output once `cmd` ends.
pub fn with_pty_dialog(cmd: &str, steps: &[(&str, &str)]) -> Output {
    let mut c = Command::new("script");
    c.args(["-qec", &format!("stty rows 31 cols 97; {cmd}"), "/dev/null"]);
    if std::env::var_os("MOAT_KERNEL_DIR").is_none() {
        c.env("MOAT_KERNEL_DIR", kernel_dir());
    }
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("script");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut out, &mut b) {
            if n == 0 {
                break;
            }
            s2.lock().unwrap().extend_from_slice(&b[..n]);
        }
    });
    for (wait, send) in steps {
        let t0 = std::time::Instant::now();
        loop {
            let so_far = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
            if so_far.contains(wait) {
                break;
            }
            if t0.elapsed() > std::time::Duration::from_secs(60) {
                // end the terminal's program (ours) before failing
                let _ = child.kill();
                let _ = child.wait();
                panic!("never saw {wait:?}: {so_far:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        stdin.write_all(send.as_bytes()).unwrap();
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    drop(stdin);
    let mut stderr = Vec::new();
    let _ = std::io::Read::read_to_end(&mut child.stderr.take().unwrap(), &mut stderr);
    let stdout = seen.lock().unwrap().clone();
    Output { status, stdout, stderr }
}

/// Polls `cond` (every 20 ms, for up to 10 s) and fails the test with
/// `what` if it never holds: for effects that follow a command's return.
pub fn eventually(what: &str, cond: impl Fn() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `moat ARGS` until its output satisfies `ok` (at most a minute, then
/// returns the last output for the caller's assertion).
pub fn until(r: &Root, args: &[&str], ok: impl Fn(&str) -> bool) -> String {
    let t0 = std::time::Instant::now();
    loop {
        let out = r.ok(args);
        if ok(&out) || t0.elapsed() > std::time::Duration::from_secs(60) {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A real registry (Debian's `docker-registry`, distribution 2.8) on
/// 127.0.0.1, its storage in a temporary directory; killed (by PID) when
/// dropped.
pub struct Registry {
    pub addr: String,
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Registry {
    /// Without authentication.
    pub fn start() -> Self {
        Self::start_with("", &[])
    }

    /// With htpasswd (basic) authentication for `user`/`password`.
    pub fn with_htpasswd(user: &str, password: &str) -> Self {
        let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().expect("htpasswd");
        assert!(out.status.success());
        let auth = "auth:\n  htpasswd:\n    realm: moat-test\n    path: {dir}/htpasswd\n";
        Self::start_with(auth, &[("htpasswd", &out.stdout)])
    }

    /// `extra` is more of the registry's YAML configuration (an `auth:`
    /// section), `{dir}` standing for the registry's directory, where
    /// `files` are written first.
    pub fn start_with(extra: &str, files: &[(&str, &[u8])]) -> Self {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("port");
            let dir = tempfile::tempdir().expect("tempdir");
            for (name, data) in files {
                std::fs::write(dir.path().join(name), data).expect("registry file");
            }
            let extra = extra.replace("{dir}", &dir.path().display().to_string());
            let cfg = format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                dir.path().join("data").display()
            );
            std::fs::write(dir.path().join("config.yml"), cfg).expect("config");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(dir.path().join("config.yml"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
                .spawn()
                .expect("start docker-registry");
            let mut r = Self { addr: format!("127.0.0.1:{port}"), dir, child };
            for _ in 0..100 {
                if std::net::TcpStream::connect(&r.addr).is_ok() {
                    return r;
                }
                if let Ok(Some(_)) = r.child.try_wait() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = r.child.kill();
        }
        panic!("docker-registry did not start");
    }

    /// The registry's file of a blob.
    pub fn blob_path(&self, digest_hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&digest_hex[..2])
            .join(digest_hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moat serve` for a root, on a socket in the root; killed (by PID) when dropped.
pub struct ApiServer {
    child: std::process::Child,
    pub sock: PathBuf,
    pub docker_config: tempfile::TempDir,
}

impl ApiServer {
    pub fn start(r: &Root) -> Self {
        Self::start_with(r, &[])
    }

    /// `moat serve` with more arguments; its stderr is `serve.log` in the root.
    pub fn start_with(r: &Root, extra: &[&str]) -> Self {
        Self::start_at(r, r.path().join("api.sock"), extra)
    }

    /// `moat serve` on the socket `sock`.
    pub fn start_at(r: &Root, sock: PathBuf, extra: &[&str]) -> Self {
        let log = std::fs::File::create(r.path().join("serve.log")).unwrap();
        let child = r
            .cmd()
            .args(["serve", "--socket"])
            .arg(&sock)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start moat serve");
        let s = Self { child, sock, docker_config: tempfile::tempdir().unwrap() };
        let t0 = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(&s.sock).is_err() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(20), "moat serve did not listen");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        s
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    pub fn docker_cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", self.host()).env("DOCKER_CONFIG", self.docker_config.path()).stdin(Stdio::null());
        c
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_cmd().args(args).output().expect("run docker")
    }

    /// Runs docker, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs docker, asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(!o.status.success(), "docker {args:?} should fail: {}", String::from_utf8_lossy(&o.stdout));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a unix socket (`Connection: close`): the status
/// code, the `Content-Type` (empty if none) and the body, de-chunked.
pub fn http(sock: &Path, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String, Vec<u8>) {
    use std::io::{BufRead, Read};
    let mut c = std::os::unix::net::UnixStream::connect(sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: moat\r\nConnection: close\r\n");
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).expect("send request");
    if let Some(b) = body {
        c.write_all(b).expect("send body");
    }
    let mut r = std::io::BufReader::new(c);
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    let code = status.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{path}: {status:?}"));
    let (mut chunked, mut ctype) = (false, String::new());
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header");
        if h == "\r\n" || h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        chunked |= lower.starts_with("transfer-encoding: chunked");
        if let Some(v) = lower.strip_prefix("content-type:") {
            ctype = v.trim().to_string();
        }
    }
    let mut raw = Vec::new();
    r.read_to_end(&mut raw).expect("body");
    if !chunked {
        return (code, ctype, raw);
    }
    let mut out = Vec::new();
    let mut rest = &raw[..];
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&rest[..i]).expect("chunk size").trim(), 16).expect("chunk");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&rest[i + 2..i + 2 + n]);
        rest = &rest[i + 4 + n..];
    }
    (code, ctype, out)
}

/// Every entry of a tar stream (path, type, mode, owner, size, link, content
/// hash; never times), by path: two images' files compared as `export`
/// writes them.
pub fn tar_listing(bytes: &[u8]) -> std::collections::BTreeMap<String, String> {
    use std::io::Read;
    let mut files = std::collections::BTreeMap::new();
    let mut a = tar::Archive::new(bytes);
    for e in a.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let path = e.path().expect("path").display().to_string().trim_end_matches('/').to_string();
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read entry");
        let link = h.link_name().ok().flatten().map(|l| l.display().to_string()).unwrap_or_default();
        let kind = format!("{:?}", h.entry_type());
        let digest = if data.is_empty() { String::new() } else { sha256_hex(&data)[..12].to_string() };
        let (mode, uid, gid) = (h.mode().unwrap_or(0), h.uid().unwrap_or(0), h.gid().unwrap_or(0));
        files.insert(path, format!("{kind} {mode:o} {uid}:{gid} {} {link} {digest}", data.len()));
    }
    files
}

/// The suite's own Dockerfiles (`tests/data/build-corpus/NAME/`), each
/// with its context.
pub fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/build-corpus")
}

/// The corpus entries, in order.
pub fn corpus_entries() -> Vec<String> {
    let mut entries: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("corpus")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    entries
}

/// A corpus entry copied to a fresh context, with the binary files its
/// Dockerfile needs made (archives for `ADD`).
pub fn corpus_context(name: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let st = Command::new("cp").arg("-a").arg(corpus_dir().join(name).join(".")).arg(d.path()).status().expect("cp");
    assert!(st.success());
    if name == "05-add-archive" {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(src.path().join("sub")).expect("mkdir");
        std::fs::write(src.path().join("a"), "a\n").expect("write");
        std::fs::write(src.path().join("sub/s"), "s\n").expect("write");
        for (file, z) in [("archive.tar.gz", "-czf"), ("archive.tar", "-cf")] {
            let st = Command::new("tar")
                .args(["--owner=0", "--group=0", "--mtime=@0", "-C"])
                .arg(src.path())
                .arg(z)
                .arg(d.path().join(file))
                .arg(".")
                .status()
                .expect("tar");
            assert!(st.success());
        }
    }
    d
}

/// Host PIDs with `needle` in their environment (a marker given to a
/// container with `-e` finds its processes on the host).
pub fn pids_with_env(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if std::fs::read(e.path().join("environ")).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle)) {
            out.push(pid);
        }
    }
    out
}

/// The image config fields a built image is compared by.
pub const BUILD_CONFIG_FIELDS: &[&str] = &[
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
];

/// The hostile guest agent (`make agent` builds it beside the agent).
pub fn evil_agent() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("agent/x86_64-unknown-linux-gnu/release/moat-evil-agent");
    assert!(p.exists(), "{} is missing: make agent builds it", p.display());
    p
}

/// Runs `sh -c what` as user nobody (no groups).
pub fn as_nobody(what: &str) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "sh", "-c", what])
        .output()
        .expect("setpriv")
}
