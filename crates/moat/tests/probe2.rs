//! Regression tests for what the second security and fault probe found
//! (issue #30): each failed on 68ae704. Both isolation types where the
//! runtime is involved.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

modes!(
    cp_of_a_growing_file_adds_nothing,
    cp_to_the_host_drops_set_id_bits_and_refuses_devices,
    inherited_descriptors_reach_no_container_process,
    images_of_up_to_128_layers_run
);

/// The payload a hostile container appends while its file is copied out:
/// a tar whose entry would land beside the copy.
const GROWER: &str = r#"
set -e
mkdir -p /w /data && cd /w && echo pwned > injected.txt && tar -cf /p.tar injected.txt
cp /p.tar /data/app.log
# 2^14 copies of the payload: every prefix of the file that ends on a copy's
# boundary is followed by a payload tar
i=0; while [ $i -lt 14 ]; do cat /data/app.log /data/app.log > /data/t; mv /data/t /data/app.log; i=$((i+1)); done
set --; i=0; while [ $i -lt 16 ]; do set -- "$@" /p.tar; i=$((i+1)); done
touch /ready
while [ ! -e /stop ]; do cat "$@"; done >> /data/app.log
sleep 600
"#;

/// Checks a copy of `app.log` on the host: whole copies of the payload
/// (no more bytes than the container's file had), and nothing else beside it.
fn check_copy(dir: &std::path::Path, payload: &[u8], what: &str) -> usize {
    let names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["app.log"], "{what}: only the copied file lands");
    let got = std::fs::read(dir.join("app.log")).unwrap();
    assert!(!got.is_empty() && got.len().is_multiple_of(payload.len()), "{what}: {} bytes", got.len());
    assert!(got.chunks(payload.len()).all(|c| c == payload), "{what}: the file's own bytes");
    got.len()
}

fn cp_of_a_growing_file_adds_nothing(iso: &str) {
    let r = root_with_busybox();
    r.ok(&["run", "-d", "--name", "grow", "--isolation", iso, "busybox", "sh", "-c", GROWER]);
    let ready = until(&r, &["exec", "grow", "sh", "-c", "test -e /ready && echo ready || true"], |o| o == "ready\n");
    assert_eq!(ready, "ready\n");
    let mut payload = Vec::new();
    let o = r.cmd().args(["cp", "grow:/p.tar", "-"]).output().unwrap();
    tar::Archive::new(&o.stdout[..]).entries().unwrap().next().unwrap().unwrap().read_to_end(&mut payload).unwrap();
    assert!(payload.len().is_multiple_of(512));
    // the moat CLI
    let host = tempfile::tempdir().unwrap();
    r.ok(&["cp", "grow:/data/app.log", &host.path().display().to_string()]);
    let copied = check_copy(host.path(), &payload, "moat cp");
    // the docker CLI through moat serve (the archive is extracted by docker)
    let api = ApiServer::start(&r);
    let host2 = tempfile::tempdir().unwrap();
    api.ok(&["cp", "grow:/data/app.log", &host2.path().display().to_string()]);
    check_copy(host2.path(), &payload, "docker cp");
    // export: the archive parses to its end, with no injected entry
    let o = r.cmd().args(["export", "grow"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut a = tar::Archive::new(&o.stdout[..]);
    let mut names = Vec::new();
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        names.push(e.path().unwrap().display().to_string());
    }
    // (the container's own /w/injected.txt is there; an injected entry would be at the top)
    assert!(!names.iter().any(|n| n == "injected.txt"), "{names:?}");
    assert!(names.iter().any(|n| n == "w/injected.txt"), "{names:?}");
    assert!(names.iter().any(|n| n == "bin/busybox") && names.iter().any(|n| n == "data/app.log"), "{names:?}");
    // the file did grow past what was copied (the race was there to win)
    r.ok(&["exec", "grow", "touch", "/stop"]);
    let now: usize = r.ok(&["exec", "grow", "stat", "-c", "%s", "/data/app.log"]).trim().parse().unwrap();
    assert!(now > copied, "the container's file grew: {now} > {copied}");
    r.ok(&["rm", "-f", "grow"]);
}

fn cp_to_the_host_drops_set_id_bits_and_refuses_devices(iso: &str) {
    let r = root_with_busybox();
    r.ok(&[
        "run",
        "-d",
        "--name",
        "ids",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "mkdir -p /d/sub && cp /bin/busybox /d/sub/suid && chmod 6755 /d/sub/suid && echo x > /d/a && \
         mkdir /dev2 && echo y > /dev2/a && (mknod /dev2/loop b 7 0 2>/dev/null && echo made || echo refused) > /mknod && \
         touch /ready && sleep 600",
    ]);
    let ready = until(&r, &["exec", "ids", "sh", "-c", "test -e /ready && echo ready || true"], |o| o == "ready\n");
    assert_eq!(ready, "ready\n");
    let host = tempfile::tempdir().unwrap();
    let h = |p: &str| host.path().join(p).display().to_string();
    r.ok(&["cp", "ids:/d", &h("plain")]);
    let mode = std::fs::metadata(host.path().join("plain/sub/suid")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid and setgid dropped: {mode:o}");
    r.ok(&["cp", "-a", "ids:/d", &h("archive")]);
    let mode = std::fs::metadata(host.path().join("archive/sub/suid")).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o6755, "kept with -a: {mode:o}");
    // a device node: refused, and nothing of the copy lands (not even the
    // file archived before it). A VM container cannot make one where the
    // host reads its files (virtiofsd has no CAP_MKNOD).
    let mknod = r.ok(&["exec", "ids", "cat", "/mknod"]);
    if iso == "vm" {
        assert_eq!(mknod, "refused\n");
        r.ok(&["rm", "-f", "ids"]);
        return;
    }
    assert_eq!(mknod, "made\n");
    let o = r.run(&["cp", "ids:/dev2", &h("devs")]);
    assert_fails_one_line(&o, "cp of a device node");
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing device node"), "{o:?}");
    let mut left: Vec<String> = std::fs::read_dir(host.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["archive", "plain"], "nothing of the refused copy, no staging directory");
    r.ok(&["rm", "-f", "ids"]);
}

/// The kernel's view of virtiofsd's capabilities: no `CAP_DAC_READ_SEARCH`
/// (bit 2), which would let `open_by_handle_at` reach any host file; the
/// capabilities it needs to serve files (`CAP_CHOWN`, bit 0; `CAP_FOWNER`,
/// bit 3) are there, so the check reads the right processes.
#[test]
fn virtiofsd_lacks_dac_read_search_vm() {
    let r = root_with_busybox();
    r.ok(&["run", "-d", "--name", "v", "--isolation", "vm", "busybox", "sleep", "600"]);
    let root = r.path().display().to_string();
    let pids: Vec<u32> = host_pids_matching("virtiofsd")
        .into_iter()
        .filter(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e.ends_with("virtiofsd")))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&root))
                .unwrap_or(false)
        })
        .collect();
    assert!(!pids.is_empty(), "virtiofsd of this root runs");
    // the process that serves the files runs in virtiofsd's namespace
    // sandbox: the child of the first virtiofsd, which only waits for it
    let ppid = |p: u32| {
        let st = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
        st[st.rfind(')').unwrap() + 2..].split(' ').nth(1).unwrap().parse::<u32>().unwrap()
    };
    let servers: Vec<u32> = pids.iter().copied().filter(|p| pids.contains(&ppid(*p))).collect();
    assert_eq!(servers.len(), 1, "one serving virtiofsd under its parent: {pids:?}");
    for p in servers {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap();
        let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
        let eff = u64::from_str_radix(eff, 16).unwrap();
        let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim();
        let bnd = u64::from_str_radix(bnd, 16).unwrap();
        assert_eq!(eff & (1 << 2), 0, "virtiofsd {p} has CAP_DAC_READ_SEARCH: {eff:x}");
        assert_eq!(bnd & (1 << 2), 0, "virtiofsd {p} could regain CAP_DAC_READ_SEARCH: {bnd:x}");
        assert_eq!(eff & 0b1001, 0b1001, "virtiofsd {p} serves files with CAP_CHOWN and CAP_FOWNER: {eff:x}");
    }
    r.ok(&["rm", "-f", "v"]);
}

/// The host-wide network lock is in a root-only directory: an unprivileged
/// user can neither open it (so cannot hold it) nor plant anything there;
/// root can (the positive control).
#[test]
fn the_network_lock_is_out_of_reach_of_users() {
    let r = root_with_busybox();
    // the old place, in world-writable /run/lock, is not used any more
    let _ = std::fs::remove_file("/run/lock/moat-net.lock");
    r.ok(&["switch", "create", "locktest"]);
    assert!(!std::path::Path::new("/run/lock/moat-net.lock").exists(), "the lock is no longer in /run/lock");
    let m = std::fs::symlink_metadata("/run/moat/lock").unwrap();
    assert!(m.is_dir());
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), 0);
    assert_eq!(m.permissions().mode() & 0o7777, 0o700);
    let o = as_nobody("exec 3>>/run/moat/lock/net.lock && echo opened");
    assert!(!o.status.success() && o.stdout.is_empty(), "nobody opened the lock: {o:?}");
    let o = as_nobody("ln -s /tmp/x /run/moat/lock/planted && echo planted");
    assert!(!o.status.success() && o.stdout.is_empty(), "nobody wrote into /run/moat: {o:?}");
    let o = as_nobody("echo fine");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "fine\n", "the unprivileged user runs commands");
    let o = std::process::Command::new("sh")
        .args(["-c", "exec 3>>/run/moat/lock/net.lock && echo opened"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "opened\n", "root opens it");
    r.ok(&["switch", "rm", "locktest"]);
}

/// A registry of the test's own on 127.0.0.1 that lies: what it serves for
/// each path is the test's. It counts the bytes it sent per path.
struct Hostile {
    addr: String,
    sent: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Clone)]
enum Answer {
    /// A body with its content type.
    Body(&'static str, Vec<u8>),
    /// Bytes without end (no Content-Length), at most `cap` of them.
    Endless(u64),
}

impl Hostile {
    fn start(routes: Vec<(String, Answer)>) -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let sent = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, stop2) = (sent.clone(), stop.clone());
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || loop {
            if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let c = match l.accept() {
                Ok((c, _)) => c,
                Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
            };
            let routes = routes.clone();
            let sent = s2.clone();
            std::thread::spawn(move || Self::serve(c, &routes, &sent));
        });
        Self { addr, sent, stop }
    }

    fn serve(
        mut c: std::net::TcpStream,
        routes: &[(String, Answer)],
        sent: &std::sync::Mutex<std::collections::HashMap<String, u64>>,
    ) {
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut reader = std::io::BufReader::new(c.try_clone().unwrap());
        loop {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0 {
                return;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let head = line.starts_with("HEAD");
            loop {
                let mut h = String::new();
                if std::io::BufRead::read_line(&mut reader, &mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let answer = routes.iter().find(|(p, _)| *p == path).map(|(_, a)| a.clone());
            let n = match answer {
                None if path == "/v2/" => {
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                    0
                }
                None => {
                    let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    0
                }
                Some(Answer::Body(ct, b)) => {
                    let _ = c.write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n", b.len())
                            .as_bytes(),
                    );
                    if !head {
                        let _ = c.write_all(&b);
                    }
                    b.len() as u64
                }
                Some(Answer::Endless(cap)) => {
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                    let chunk = vec![0u8; 64 << 10];
                    let mut n = 0u64;
                    while n < cap && c.write_all(&chunk).is_ok() {
                        n += chunk.len() as u64;
                    }
                    *sent.lock().unwrap().entry(path).or_default() += n;
                    return;
                }
            };
            *sent.lock().unwrap().entry(path).or_default() += n;
        }
    }

    fn sent(&self, path: &str) -> u64 {
        self.sent.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(b))
}

/// A manifest naming a config and one layer, with the sizes given.
fn manifest(config: &[u8], config_size: u64, layer_digest: &str, layer_size: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": config_size },
        "layers": [ { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size } ]
    }))
    .unwrap()
}

fn config_for(diff_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] }
    }))
    .unwrap()
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Each lie of a registry fails the pull with a clear one-line error,
/// stores nothing and leaves no scratch data; an endless blob is stopped
/// right after the size its descriptor announced.
#[test]
fn a_lying_registry_cannot_make_a_pull_write_without_bound() {
    let r = Root::new();
    let layer = TarBuilder::new().file("hello", b"hello\n").finish();
    let (ld, lsize) = (digest(&layer), layer.len() as u64);
    let config = config_for(&ld);
    let ok_manifest = manifest(&config, config.len() as u64, &ld, lsize);
    let blob = |d: &str| format!("/v2/x/blobs/{d}");
    let man = |t: &str| format!("/v2/x/manifests/{t}");
    // a layer with 2 MiB of garbage after the tar's end, honestly described
    let mut trailing = layer.clone();
    trailing.extend(std::iter::repeat_n(7u8, 2 << 20));
    let tconfig = config_for(&digest(&trailing));
    // a config larger than any accepted, and one that is longer than announced
    let big_config_manifest = manifest(&config, 300 << 20, &ld, lsize);
    let liar_config = [config.clone(), vec![b' '; 20 << 20]].concat();
    let endless_digest = digest(b"never");
    // a gzip bomb: 256 MiB of zeros in ~250 KiB, against a 64 MiB unpack limit
    let bomb = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut h = tar::Header::new_gnu();
        h.set_size(256 << 20);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        let mut b = tar::Builder::new(&mut gz);
        b.append_data(&mut h, "zeros", std::io::repeat(0).take(256 << 20)).unwrap();
        b.finish().unwrap();
        drop(b);
        gz.finish().unwrap()
    };
    // (the diff ID is never reached: the unpacker stops first)
    let bconfig = config_for(&digest(b"the uncompressed bomb"));
    let reg = Hostile::start(vec![
        (man("ok"), Answer::Body(MANIFEST_TYPE, ok_manifest.clone())),
        (blob(&digest(&config)), Answer::Body("application/octet-stream", config.clone())),
        (blob(&ld), Answer::Body("application/octet-stream", layer.clone())),
        // the layer announced as 1000 bytes, sent without end
        (man("endless"), Answer::Body(MANIFEST_TYPE, manifest(&config, config.len() as u64, &endless_digest, 1000))),
        (blob(&endless_digest), Answer::Endless(256 << 20)),
        // announced longer than it is
        (man("short"), Answer::Body(MANIFEST_TYPE, manifest(&config, config.len() as u64, &ld, lsize + 512))),
        // announced shorter than it is
        (man("long"), Answer::Body(MANIFEST_TYPE, manifest(&config, config.len() as u64, &ld, lsize - 512))),
        (man("bigconfig"), Answer::Body(MANIFEST_TYPE, big_config_manifest)),
        (man("liarconfig"), Answer::Body(MANIFEST_TYPE, manifest(&liar_config, config.len() as u64, &ld, lsize))),
        (blob(&digest(&liar_config)), Answer::Body("application/octet-stream", liar_config.clone())),
        (
            man("trailing"),
            Answer::Body(
                MANIFEST_TYPE,
                manifest(&tconfig, tconfig.len() as u64, &digest(&trailing), trailing.len() as u64),
            ),
        ),
        (blob(&digest(&tconfig)), Answer::Body("application/octet-stream", tconfig.clone())),
        (
            man("bomb"),
            Answer::Body(MANIFEST_TYPE, manifest(&bconfig, bconfig.len() as u64, &digest(&bomb), bomb.len() as u64)),
        ),
        (blob(&digest(&bconfig)), Answer::Body("application/octet-stream", bconfig.clone())),
        (blob(&digest(&bomb)), Answer::Body("application/octet-stream", bomb.clone())),
        (blob(&digest(&trailing)), Answer::Body("application/octet-stream", trailing.clone())),
    ]);
    let name = |t: &str| format!("{}/x:{t}", reg.addr);
    // the positive control: the honest image pulls and runs
    r.ok(&["pull", "-q", &name("ok")]);
    r.ok(&["rmi", &name("ok")]);
    let cases = [
        ("endless", "size mismatch"),
        ("short", "size mismatch"),
        ("long", "size mismatch"),
        ("bigconfig", "more than the 8388608 bytes accepted"),
        ("liarconfig", "size mismatch"),
        ("trailing", "trailing data after the archive's end"),
    ];
    for (tag, want) in cases.into_iter().chain([("bomb", "tar bomb")]) {
        let o = r
            .cmd()
            .env("MOAT_MAX_UNPACK_BYTES", (64u64 << 20).to_string())
            .args(["pull", "-q", &name(tag)])
            .output()
            .unwrap();
        assert_fails_one_line(&o, tag);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(want), "{tag}: {e}");
        assert_eq!(r.ok(&["images", "-q"]), "", "{tag}: nothing stored");
        let left: Vec<_> = std::fs::read_dir(r.path().join("tmp")).unwrap().flatten().collect();
        assert!(left.is_empty(), "{tag}: no scratch data left: {left:?}");
    }
    // the endless blob was stopped at once: moat read a little past the
    // announced 1000 bytes (what one read brings), not the server's 256 MiB
    let sent = reg.sent(&blob(&endless_digest));
    assert!(sent < (16 << 20), "the endless download was stopped: {sent} bytes sent");
    assert_eq!(reg.sent(&blob(&digest(&liar_config))), liar_config.len() as u64, "the liar config was sent whole");
}

/// A local archive whose gzip layer has a long run of bytes after the
/// tar's end: refused, nothing stored (it would have been stored outside
/// the unpack limit).
#[test]
fn trailing_data_in_a_loaded_layer_is_refused() {
    let r = Root::new();
    let layer = TarBuilder::new().file("hello", b"hello\n").finish();
    let mut raw = layer.clone();
    raw.extend(std::iter::repeat_n(0u8, 51 << 20));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&raw).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < (1 << 20), "a small archive: {}", gz.len());
    let config = config_for(&digest(&raw));
    let cname = format!("{}.json", sha256_hex(&config));
    let manifest = serde_json::json!([{ "Config": cname, "RepoTags": ["bomb:1"], "Layers": ["l/layer.tar"] }]);
    let bytes = TarBuilder::new()
        .file(&cname, &config)
        .file("l/layer.tar", &gz)
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .finish();
    let p = write_fixture("trailing-gz.tar", &bytes);
    let o =
        r.cmd().env("MOAT_MAX_UNPACK_BYTES", "10485760").args(["load", "-i", p.to_str().unwrap()]).output().unwrap();
    assert_fails_one_line(&o, "load with trailing data");
    assert!(String::from_utf8_lossy(&o.stderr).contains("trailing data"), "{o:?}");
    assert_eq!(r.ok(&["images", "-q"]), "");
    let du = walk(r.path()).iter().filter_map(|p| std::fs::symlink_metadata(p).ok()).map(|m| m.len()).sum::<u64>();
    assert!(du < (10 << 20), "nothing large stored: {du} bytes");
}

/// Sends `req` on a new connection to `sock` and reads until the server
/// closes it; returns what came, with `" [still open after 20 s]"` added
/// when the server did not close it in that time.
fn exchange(sock: &std::path::Path, req: &[u8]) -> String {
    let mut c = std::os::unix::net::UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    c.write_all(req).unwrap();
    let mut out = Vec::new();
    let open = c
        .read_to_end(&mut out)
        .is_err_and(|e| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    String::from_utf8_lossy(&out).into_owned() + if open { " [still open after 20 s]" } else { "" }
}

/// The API server bounds what one client holds: connections past the cap
/// get Docker's error shape with 503; a request head or body that stalls
/// ends the request (408 for the body) instead of holding it for ever.
/// Each with its positive control.
#[test]
fn the_api_server_bounds_its_clients() {
    let r = root_with_busybox();
    let api = ApiServer::start_with(&r, &["--max-connections", "4"]);
    let idle: Vec<_> = (0..4).map(|_| std::os::unix::net::UnixStream::connect(&api.sock).unwrap()).collect();
    let o = exchange(&api.sock, b"GET /_ping HTTP/1.1\r\nHost: moat\r\n\r\n");
    assert!(o.starts_with("HTTP/1.1 503 "), "{o}");
    assert!(
        o.ends_with("\r\n\r\n{\"message\":\"too many connections: moat serve serves at most 4 at once\"}\n"),
        "{o}"
    );
    drop(idle);
    let ping = || exchange(&api.sock, b"GET /_ping HTTP/1.1\r\nHost: moat\r\nConnection: close\r\n\r\n");
    let mut o = ping();
    // (the server frees a slot when it sees the connection close: bounded, but
    // a loaded machine takes its time)
    for _ in 0..600 {
        if o.starts_with("HTTP/1.1 200 ") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        o = ping();
    }
    assert!(o.starts_with("HTTP/1.1 200 ") && o.ends_with("\r\n\r\nOK"), "served again once they left: {o}");
    drop(api);

    let api = ApiServer::start_with(&r, &["--header-timeout", "1", "--body-timeout", "1"]);
    // a head that never ends: the connection is closed with nothing served
    let o = exchange(&api.sock, b"GET /_ping HTTP/1.1\r\nHost: moat\r\n");
    assert_eq!(o, "", "closed, nothing served");
    // a body shorter than its Content-Length: 408 in Docker's shape
    let o = exchange(
        &api.sock,
        b"POST /containers/create HTTP/1.1\r\nHost: moat\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"Image\":",
    );
    assert!(o.starts_with("HTTP/1.1 408 "), "{o}");
    assert!(o.contains("\r\n\r\n{\"message\":\"the request body sent nothing for 1 s\"}"), "{o}");
    // the positive control: the same request whole
    let body = br#"{"Image":"busybox","Cmd":["true"]}"#;
    let mut req = format!(
        "POST /containers/create HTTP/1.1\r\nHost: moat\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let o = exchange(&api.sock, &req);
    assert!(o.starts_with("HTTP/1.1 201 "), "{o}");
    drop(api);

    // tcp: the warning dockerd gives too
    let api = ApiServer::start_with(
        &r,
        &["-H", "tcp://127.0.0.1:0", "-H", &format!("unix://{}", r.path().join("api.sock").display())],
    );
    let log = std::fs::read_to_string(r.path().join("serve.log")).unwrap();
    assert!(log.contains("reachable on tcp://127.0.0.1:0 without authentication or encryption"), "{log}");
    drop(api);
}

/// Mount destinations are checked as the kernel resolves them: `//proc`,
/// `/./proc/.` and friends are `/proc`.
#[test]
fn mount_destinations_are_cleaned_before_they_are_checked() {
    let r = root_with_busybox();
    let host = tempfile::tempdir().unwrap();
    let v = |t: &str| format!("{}:{t}", host.path().display());
    for args in [
        vec!["-v".to_string(), v("//proc")],
        vec!["-v".to_string(), v("/./proc/.")],
        vec!["-v".to_string(), v("//dev")],
        vec!["-v".to_string(), "xv://dev".to_string()],
        vec!["--tmpfs".to_string(), "//proc".to_string()],
        vec!["--tmpfs".to_string(), "/sys//kernel".to_string()],
    ] {
        let mut a = vec!["create"];
        a.extend(args.iter().map(String::as_str));
        a.extend(["busybox", "true"]);
        let e = r.fails(&a);
        assert!(e.contains("cannot be mounted over") || e.contains("own device directory"), "{args:?}: {e}");
    }
    assert_eq!(r.ok(&["ps", "-aq"]), "", "nothing created");
    // the positive control, spelled oddly too
    std::fs::write(host.path().join("marker"), "here\n").unwrap();
    r.ok(&["create", "--name", "odd", "-v", &v("//data/./"), "--tmpfs", "/t//", "busybox", "cat", "/data/marker"]);
    let m = r.ok(&["inspect", "-f", "{{range .Mounts}}{{.Destination}} {{end}}{{json .HostConfig.Tmpfs}}", "odd"]);
    assert_eq!(m, "/data /t {\"/t\":\"\"}\n", "recorded at their clean paths");
    assert_eq!(r.ok(&["start", "-a", "odd"]), "here\n");
    r.ok(&["rm", "odd"]);
}

/// A volume name no file system can hold is refused before anything is
/// recorded; the longest that fits works.
#[test]
fn overlong_volume_names_are_refused_before_anything_is_recorded() {
    let r = root_with_busybox();
    let long = "v".repeat(256);
    let e = r.fails(&["volume", "create", &long]);
    assert!(e.contains("too long: at most 255"), "{e}");
    let e = r.fails(&["create", "-v", &format!("{long}:/x"), "busybox", "true"]);
    assert!(e.contains("too long"), "{e}");
    assert_eq!(r.ok(&["volume", "ls", "-q"]), "");
    r.ok(&["volume", "prune", "-f", "--all"]);
    let ok = "v".repeat(255);
    assert_eq!(r.ok(&["volume", "create", &ok]), format!("{ok}\n"));
    assert_eq!(r.ok(&["volume", "ls", "-q"]), format!("{ok}\n"));
    r.ok(&["volume", "rm", &ok]);
}

/// A closed pipe on stdout or stderr ends `run` quietly with 0, no panic.
#[test]
fn run_is_quiet_on_a_closed_pipe() {
    let r = root_with_busybox();
    let moat = format!("{} --root {}", env!("CARGO_BIN_EXE_moat"), r.path().display());
    for (what, redirect) in [("stdout", ""), ("stdout and stderr", "2>&1")] {
        let script = format!(
            "{moat} run --rm busybox sh -c 'seq 1 200000; seq 1 200000 >&2' {redirect} | head -1; echo \"rc=${{PIPESTATUS[0]}}\" >&2"
        );
        let o = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(String::from_utf8_lossy(&o.stdout), "1\n", "{what}");
        assert!(err.ends_with("rc=0\n") && !err.contains("panicked"), "{what}: {err}");
        assert!(!err.contains("Error"), "{what}: no error line: {}", &err[..err.len().min(300)]);
    }
    eventually("--rm removed both once they ended", || r.ok(&["ps", "-aq"]).is_empty());
}

/// Small refusals and exit codes of the probe, each with its positive control.
#[test]
fn refusals_and_exit_codes_are_dockers() {
    let r = root_with_busybox();
    let e = r.fails(&["create", "--stop-signal", "SIGBOGUS", "busybox", "true"]);
    assert!(e.contains("invalid stop signal \"SIGBOGUS\""), "{e}");
    assert_eq!(r.ok(&["ps", "-aq"]), "");
    r.ok(&["create", "--name", "sig", "--stop-signal", "SIGUSR1", "busybox", "true"]);
    // start of a missing container: 1 (Docker's); a bad --detach-keys: 125, nothing created
    let o = r.run(&["start", "nosuch"]);
    assert_fails_one_line(&o, "start nosuch");
    assert_eq!(o.status.code(), Some(1));
    let o = r.run(&["run", "--detach-keys", "ctrl-", "busybox", "true"]);
    assert_fails_one_line(&o, "bad detach keys");
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(r.ok(&["ps", "-aq", "--no-trunc"]).lines().count(), 1, "only sig");
    // a restarted container has no exit code while it runs
    let o = r.run(&[
        "run",
        "--name",
        "re",
        "busybox",
        "sh",
        "-c",
        "test -e /again && exec sleep 600; touch /again; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(r.ok(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "re"]), "exited 3\n");
    r.ok(&["start", "re"]);
    assert_eq!(r.ok(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "re"]), "running 0\n");
    r.ok(&["rm", "-f", "re", "sig"]);
}

/// A guest console that floods is rotated: the shim keeps it at most
/// 1 MiB (plus what comes in one check's interval), the end of the old one
/// in `console.log.1`. QEMU's and virtiofsd's descriptors of it are in
/// append mode (the kernel's `fdinfo`), so after a rotation they write at
/// its new start rather than leaving a hole of the old size.
#[test]
fn a_flooded_guest_console_is_rotated_vm() {
    let r = root_with_busybox();
    let id = r.ok(&["run", "-d", "--isolation", "vm", "busybox", "sleep", "600"]).trim().to_string();
    let log = r.path().join("containers").join(&id).join("console.log");
    assert!(log.is_file(), "{}", log.display());
    let qemu: Vec<u32> = host_pids_matching("qemu-system")
        .into_iter()
        .filter(|p| std::fs::read_link(format!("/proc/{p}/fd/1")).is_ok_and(|l| l == log))
        .collect();
    assert_eq!(qemu.len(), 1, "one QEMU writes {}", log.display());
    let flags = std::fs::read_to_string(format!("/proc/{}/fdinfo/1", qemu[0])).unwrap();
    let flags = flags.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim().to_string();
    assert_ne!(u32::from_str_radix(&flags, 8).unwrap() & libc_o_append(), 0, "QEMU's console is O_APPEND: {flags}");
    // 3 MiB more, as a flooding guest would write it (in append mode)
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let line = format!("{}\n", "x".repeat(1023));
    for _ in 0..(3 << 10) {
        f.write_all(line.as_bytes()).unwrap();
    }
    f.write_all(b"the last line\n").unwrap();
    eventually("the console was rotated", || std::fs::metadata(&log).map(|m| m.len() < (1 << 20)).unwrap_or(false));
    let old = std::fs::read(log.with_extension("log.1")).unwrap();
    assert_eq!(old.len(), 256 << 10);
    assert!(old.ends_with(b"the last line\n"));
    r.ok(&["rm", "-f", &id]);
}

/// `O_APPEND` on x86-64 Linux.
fn libc_o_append() -> u32 {
    0o2000
}

/// Processes other than the test's own that hold `link` (a `/proc/PID/fd` target).
fn holders(link: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == me {
            continue;
        }
        for fd in std::fs::read_dir(e.path().join("fd")).into_iter().flatten().flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == link) {
                out.push(pid);
            }
        }
    }
    out
}

/// A pipe that `moat run -d` was started with (as fd 7, inheritable) is
/// held by no shim, QEMU, virtiofsd or container process once it returned.
fn inherited_descriptors_reach_no_container_process(iso: &str) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let r = root_with_busybox();
    let (rx, tx) = std::io::pipe().unwrap();
    let link = std::fs::read_link(format!("/proc/self/fd/{}", rx.as_raw_fd())).unwrap().display().to_string();
    let fd = tx.as_raw_fd();
    let mut cmd = r.cmd();
    cmd.args(["run", "-d", "--name", "fds", "--isolation", iso, "busybox", "sleep", "600"]);
    // SAFETY: dup2 only, between fork and exec
    unsafe {
        cmd.pre_exec(move || if libc_dup2(fd, 7) < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(tx);
    assert_eq!(holders(&link), Vec::<u32>::new(), "nobody else holds the harness's pipe");
    // the positive control: a process started with it does hold it
    let (rx2, tx2) = std::io::pipe().unwrap();
    let link2 = std::fs::read_link(format!("/proc/self/fd/{}", rx2.as_raw_fd())).unwrap().display().to_string();
    let fd2 = tx2.as_raw_fd();
    let mut sleeper = std::process::Command::new("sleep");
    sleeper.arg("30");
    // SAFETY: as above
    unsafe {
        sleeper.pre_exec(move || if libc_dup2(fd2, 7) < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let mut child = sleeper.spawn().unwrap();
    drop(tx2);
    let mut seen = holders(&link2);
    seen.dedup();
    assert_eq!(seen, vec![child.id()], "the check sees a holder");
    child.kill().unwrap();
    child.wait().unwrap();
    drop((rx, rx2));
    r.ok(&["rm", "-f", "fds"]);
}

fn libc_dup2(from: i32, to: i32) -> i32 {
    extern "C" {
        fn dup2(oldfd: i32, newfd: i32) -> i32;
    }
    // SAFETY: plain dup2
    unsafe { dup2(from, to) }
}

/// The probe's small input refusals, each beside what is accepted.
#[test]
fn small_inputs_are_refused_with_a_clear_line() {
    let r = root_with_busybox();
    // negative numbers are values, not flags
    r.ok(&["create", "--name", "neg", "--pids-limit", "-1", "-m", "16m", "--memory-swap", "-1", "busybox", "true"]);
    r.ok(&["rm", "neg"]);
    // an env file that never ends
    let e = r.fails(&["create", "--env-file", "/dev/zero", "busybox", "true"]);
    assert!(e.contains("env file /dev/zero is larger than 1 MiB"), "{e}");
    // conflicting mount modes
    let e = r.fails(&["create", "-v", "/tmp:/y:ro,rw", "busybox", "true"]);
    assert!(e.contains("conflicting or repeated"), "{e}");
    r.ok(&["create", "--name", "ro", "-v", "/tmp:/y:ro", "busybox", "true"]);
    r.ok(&["rm", "ro"]);
    // an empty switch name names no switch
    let e = r.fails(&["switch", "inspect", ""]);
    assert!(e.contains("network  not found"), "{e}");
    assert_eq!(r.ok(&["switch", "inspect", "-f", "{{.Name}}", "bridge"]), "bridge\n");
    assert_eq!(r.ok(&["switch", "inspect", "-f", "{{.Name}}", "moat"]), "bridge\n", "moat's own name finds it too");
    // --platform is not ignored for a local image of another platform
    let e = r.fails(&["create", "--platform", "linux/arm64", "busybox", "true"]);
    assert!(
        e.contains("image with reference busybox was found but does not match the specified platform: wanted linux/arm64, actual: linux/amd64"),
        "{e}"
    );
    r.ok(&["create", "--name", "plat", "--platform", "linux/amd64", "busybox", "true"]);
    r.ok(&["rm", "plat"]);
    // an extra host's name goes into /etc/hosts: no blanks
    let e = r.fails(&["create", "--add-host", "a b:1.2.3.4", "busybox", "true"]);
    assert!(e.contains("invalid extra host"), "{e}");
    assert_eq!(
        r.ok(&["run", "--rm", "--add-host", "ab:1.2.3.4", "busybox", "grep", "-w", "ab", "/etc/hosts"]),
        "1.2.3.4\tab\n"
    );
    // a huge error is cut to one readable line
    let long = "x".repeat(100_000);
    let e = r.fails(&["rm", &long]);
    assert!(e.len() < 2200 && e.trim_end().ends_with("(98019 more characters)"), "{}", &e[..200]);
    // an archive's garbage is not printed raw
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 131 % 256) as u8).collect();
    let p = write_fixture("random.bin", &garbage);
    let o = r.run(&["load", "-i", p.to_str().unwrap()]);
    assert_fails_one_line(&o, "load of garbage");
    let err = &o.stderr[..o.stderr.len() - 1];
    assert!(err.iter().all(|b| *b >= 0x20 || *b == b'\t'), "{:?}", String::from_utf8_lossy(&o.stderr));
    // nothing to import
    let e = r.fails(&["import", "/dev/null"]);
    assert!(e.contains("the input is empty"), "{e}");
    assert_eq!(r.ok(&["images", "-q"]).lines().count(), 1, "only busybox");
}

/// An image of 128 layers (busybox and 127 of one file each) runs and sees
/// every layer's file; one of 129 is refused by name, with nothing left
/// mounted. (Over ~60 layers used to fail with ENOENT: the overlay options
/// outgrew a page.)
fn images_of_up_to_128_layers_run(iso: &str) {
    let r = Root::new();
    for (n, tag) in [(128usize, "deep:128"), (129, "deep:129")] {
        let mut layers = vec![tar_dir(busybox_rootfs())];
        for i in 1..n {
            layers.push(TarBuilder::new().file(&format!("layers/{i:03}"), format!("{i}\n").as_bytes()).finish());
        }
        let (bytes, _) = docker_archive(&[tag], &layers, &["sh"]);
        let p = write_fixture(&format!("deep-{n}.tar"), &bytes);
        r.ok(&["load", "-q", "-i", p.to_str().unwrap()]);
    }
    let out = r.ok(&[
        "run",
        "--rm",
        "--isolation",
        iso,
        "deep:128",
        "sh",
        "-c",
        "ls /layers | wc -l; cat /layers/001 /layers/127",
    ]);
    assert_eq!(out, "127\n1\n127\n");
    let o = r.run(&["run", "--rm", "--isolation", iso, "deep:129", "true"]);
    assert_fails_one_line(&o, "129 layers");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("too many layers: the image has 129, an overlay root stacks at most 128"), "{e}");
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(r.path().to_str().unwrap()), "nothing left mounted");
}

/// Descriptors `moat serve` holds, but for its database's: SQLite keeps a
/// closed connection's descriptor open while another connection of the
/// process holds a lock on the file (POSIX locks die with any close) and
/// reuses it for the next open, so their number follows the busiest moment
/// so far, not abandoned sessions.
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).map_or(true, |t| !t.to_string_lossy().contains("/moat.db")))
        .count()
}

/// Attach, exec and `logs -f` clients that go away while the container is
/// silent: the server lets go of their sockets and shim connections at
/// once, not when the container next writes (before: 160 abandoned
/// sessions held 107 threads and 418 descriptors).
#[test]
fn abandoned_streams_are_let_go() {
    let r = root_with_busybox();
    let api = ApiServer::start(&r);
    let id = api.ok(&["run", "-d", "busybox", "sleep", "600"]).trim().to_string();
    let head = |c: &mut std::os::unix::net::UnixStream| {
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
            got.push(b[0]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    // two rounds: the first also fills the server's pool of idle engines
    // (their database descriptors stay), the second must leave nothing more
    let mut settled = 0;
    for round in 0..2 {
        let before = fds_of(api.pid());
        let mut clients = Vec::new();
        for i in 0..30 {
            let mut c = std::os::unix::net::UnixStream::connect(&api.sock).unwrap();
            let req = match i % 3 {
            0 => format!("POST /containers/{id}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: m\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"),
            1 => format!("GET /containers/{id}/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: m\r\n\r\n"),
            _ => {
                let body = r#"{"AttachStdout":true,"Cmd":["sleep","600"]}"#;
                let mut e = std::os::unix::net::UnixStream::connect(&api.sock).unwrap();
                e.write_all(format!("POST /containers/{id}/exec HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).unwrap();
                let mut out = String::new();
                e.read_to_string(&mut out).unwrap();
                let exec = out.split("\"Id\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
                let body = r#"{"Detach":false,"Tty":false}"#;
                format!("POST /exec/{exec}/start HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            }
        };
            c.write_all(req.as_bytes()).unwrap();
            let h = head(&mut c);
            assert!(h.starts_with("HTTP/1.1 101") || h.starts_with("HTTP/1.1 200"), "{h}");
            clients.push(c);
        }
        let during = fds_of(api.pid());
        assert!(
            during >= before + 30,
            "the sessions hold descriptors while their clients are there: {before} -> {during}"
        );
        drop(clients);
        if round == 0 {
            // settled: the same count twice, a second apart
            let mut last = fds_of(api.pid());
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let now = fds_of(api.pid());
                if now == last {
                    break;
                }
                last = now;
            }
            settled = last;
            continue;
        }
        eventually("the server let go of the abandoned sessions", || fds_of(api.pid()) <= settled);
    }
    api.ok(&["rm", "-f", &id]);
}
