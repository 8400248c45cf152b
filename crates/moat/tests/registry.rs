//! Registries (issue #13), against Debian's real `docker-registry` on
//! 127.0.0.1: push, pull (by tag, digest, platform), the implicit pull of
//! `run`, basic authentication, corrupt blobs and a killed pull.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

fn id_of(r: &Root, image: &str) -> String {
    r.ok(&["image", "inspect", "-f", "{{.Id}}", image]).trim().to_string()
}

#[test]
fn push_pull_and_implicit_pull() {
    let r = root_with_busybox();
    let reg = Registry::start();
    let name = format!("{}/busybox:1", reg.addr);
    let before = id_of(&r, "busybox");
    r.ok(&["tag", "busybox", &name]);
    let o = r.run(&["push", &name]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Pushed"));
    // pushing again uploads nothing
    let o = r.run(&["push", &name]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Layer already exists"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // another repository of the same registry: the layers are mounted, not sent
    let other = format!("{}/other/busybox:1", reg.addr);
    r.ok(&["tag", "busybox", &other]);
    let out = r.ok(&["push", &other]);
    assert!(out.contains("Mounted from") && !out.contains("Pushed"), "{out}");
    // -a: every tag of the repository
    let two = format!("{}/busybox:2", reg.addr);
    r.ok(&["tag", "busybox", &two]);
    r.ok(&["push", "-q", &two]);
    r.ok(&["rmi", &name, &two]);
    let out = r.ok(&["pull", "-a", "-q", &format!("{}/busybox", reg.addr)]);
    assert_eq!(out, format!("{name}\n{two}\n"));
    let e = r.fails(&["pull", "-a", &name]);
    assert!(e.contains("can't be used with --all-tags"), "{e}");
    r.ok(&["rmi", &name, &two, &other, "busybox"]);
    assert_eq!(r.ok(&["images", "-q"]), "");
    let o = r.run(&["pull", &name]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("Pull complete") && out.contains("Downloaded newer image"), "{out}");
    assert!(out.ends_with(&format!("\n{name}\n")), "the reference last: {out}");
    assert_eq!(id_of(&r, &name), before, "the same image ID after the round trip");
    let digests = r.ok(&["image", "inspect", "-f", "{{json .RepoDigests}}", &name]);
    assert!(digests.contains(&format!("{}/busybox@sha256:", reg.addr)), "{digests}");
    assert!(r.ok(&["images", "--digests"]).contains("sha256:"));
    // a second pull downloads nothing
    let o = r.run(&["pull", &name]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Already exists") && !out.contains("Downloading") && out.contains("up to date"), "{out}");
    // by digest
    let d = digests.split('@').nth(1).unwrap().trim_end_matches(['"', ']', '\n']).to_string();
    let by_digest = format!("{}/busybox@{d}", reg.addr);
    r.ok(&["pull", "-q", &by_digest]);
    assert_eq!(r.ok(&["run", "--rm", &by_digest, "echo", "pinned"]), "pinned\n");
    // run pulls what is missing; --pull never does not
    r.ok(&["rmi", "-f", &name]);
    let o = r.run(&["run", "--rm", "--pull", "never", &name, "true"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("No such image"));
    let o = r.run(&["run", "--rm", &name, "echo", "ok"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n", "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("Unable to find image '{name}' locally")));
    assert_eq!(r.ok(&["run", "--rm", "--isolation=vm", &name, "echo", "in a vm"]), "in a vm\n");
    let o = r.run(&["create", "--pull", "always", &name, "true"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Pulling from"));
    // clear refusals
    let e = r.fails(&["pull", &format!("{}/nothing:here", reg.addr)]);
    assert!(e.contains("not found"), "{e}");
    let e = r.fails(&["pull", "127.0.0.1:1/x:1"]);
    assert!(e.contains("cannot reach registry 127.0.0.1:1"), "{e}");
    let e = r.fails(&["push", "not-here:1"]);
    assert!(e.contains("No such image"), "{e}");
}

/// An OCI layout with an index of two platforms, each image a busybox
/// layer plus `/platform` naming its architecture.
fn two_platform_layout(dir: &std::path::Path) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> String {
        let h = sha256_hex(b);
        std::fs::write(blobs.join(&h), b).unwrap();
        h
    };
    let base = tar_dir(busybox_rootfs());
    let base_h = put(&base);
    let mut manifests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let marker = TarBuilder::new().file("platform", format!("{arch}\n").as_bytes()).finish();
        let marker_h = put(&marker);
        let config = serde_json::json!({
            "architecture": arch, "os": "linux", "created": "2026-01-02T03:04:05Z",
            "config": { "Env": ["PATH=/bin"], "Cmd": ["cat", "/platform"] },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{base_h}"), format!("sha256:{marker_h}")] },
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_h = put(&config);
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_h}"), "size": config.len() },
            "layers": [
                { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{base_h}"), "size": base.len() },
                { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{marker_h}"), "size": marker.len() },
            ],
        });
        let m = serde_json::to_vec(&m).unwrap();
        let m_h = put(&m);
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{m_h}"), "size": m.len(),
            "platform": { "architecture": arch, "os": "linux" },
        }));
    }
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests });
    let index = serde_json::to_vec(&index).unwrap();
    let index_h = put(&index);
    let top = serde_json::json!({ "schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{index_h}"), "size": index.len(),
        "annotations": { "org.opencontainers.image.ref.name": "multi" } }] });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn multi_platform_index_copied_by_skopeo() {
    let r = Root::new();
    let reg = Registry::start();
    let d = tempfile::tempdir().unwrap();
    two_platform_layout(d.path());
    let name = format!("{}/multi:1", reg.addr);
    let st = std::process::Command::new("skopeo")
        .args(["copy", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", d.path().display()))
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    assert!(st.status.success(), "skopeo: {}", String::from_utf8_lossy(&st.stderr));
    r.ok(&["pull", "-q", &name]);
    assert_eq!(r.ok(&["run", "--rm", &name]), "amd64\n", "this machine's platform");
    r.ok(&["pull", "-q", "--platform", "linux/arm64", &name]);
    assert_eq!(r.ok(&["image", "inspect", "-f", "{{.Architecture}}", &name]), "arm64\n");
    let e = r.fails(&["run", "--rm", &name]);
    assert!(e.contains("is for linux/arm64") && e.contains("does not emulate"), "{e}");
    let e = r.fails(&["pull", "--platform", "linux/s390x", &name]);
    assert!(e.contains("no matching manifest for linux/s390x") && e.contains("linux/amd64, linux/arm64"), "{e}");
    let e = r.fails(&["pull", "--platform", "s390x", &name]);
    assert!(e.contains("os/arch"), "{e}");
}

#[test]
fn basic_auth_and_logins() {
    let r = root_with_busybox();
    let reg = Registry::with_htpasswd("tester", "s3cret");
    let name = format!("{}/private:1", reg.addr);
    r.ok(&["tag", "busybox", &name]);
    let e = r.fails(&["push", &name]);
    assert!(e.contains("unauthorized") && e.contains("moat login"), "{e}");
    let login = |pw: &str| {
        let mut c = r.cmd();
        c.args(["login", "-u", "tester", "--password-stdin", &reg.addr]).stdin(std::process::Stdio::piped());
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), format!("{pw}\n").as_bytes()).unwrap();
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    };
    let o = login("wrong");
    assert_fails_one_line(&o, "login with a wrong password");
    assert!(String::from_utf8_lossy(&o.stderr).contains("unauthorized"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!r.path().join("auth.json").exists(), "nothing stored for a refused login");
    let o = login("s3cret");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Login Succeeded\n");
    let meta = std::fs::metadata(r.path().join("auth.json")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let stored = std::fs::read_to_string(r.path().join("auth.json")).unwrap();
    assert!(stored.contains("\"auths\"") && stored.contains(&reg.addr) && !stored.contains("s3cret"), "{stored}");
    r.ok(&["push", &name]);
    r.ok(&["rmi", &name]);
    r.ok(&["pull", "-q", &name]);
    assert!(r.ok(&["logout", &reg.addr]).contains("Removing login credentials"));
    r.ok(&["rmi", &name]);
    let e = r.fails(&["pull", &name]);
    assert!(e.contains("unauthorized"), "{e}");
}

#[test]
fn corrupt_blobs_and_killed_pulls_store_nothing() {
    let r = Root::new();
    let reg = Registry::start();
    // an image with a big layer of random bytes, so a pull takes a while
    let mut big = vec![0u8; 48 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let big_layer = TarBuilder::new().file("big", &big).finish();
    let big_hex = sha256_hex(&big_layer);
    let (bytes, _) = docker_archive(&["big:1"], &[tar_dir(busybox_rootfs()), big_layer], &["sh"]);
    let p = write_fixture("big.tar", &bytes);
    r.ok(&["load", "-q", "-i", p.to_str().unwrap()]);
    let name = format!("{}/big:1", reg.addr);
    r.ok(&["tag", "big:1", &name]);
    r.ok(&["push", "-q", &name]);
    r.ok(&["rmi", &name, "big:1"]);
    let images = r.ok(&["images", "-q"]);
    // SIGKILL in the middle of the big layer (its unpacked tar growing in
    // the scratch space while it downloads): nothing is stored
    let mut child = r.cmd().args(["pull", "-q", &name]).spawn().unwrap();
    let tmp = r.path().join("tmp");
    let mut killed = false;
    for _ in 0..20_000 {
        let downloading = std::fs::read_dir(&tmp).into_iter().flatten().flatten().any(|e| {
            std::fs::read_dir(e.path()).into_iter().flatten().flatten().any(|f| {
                f.file_name().to_string_lossy().starts_with("blob-")
                    && f.metadata().map(|m| m.len() > (1 << 20)).unwrap_or(false)
            })
        });
        if downloading {
            child.kill().unwrap();
            killed = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let status = child.wait().unwrap();
    assert!(killed && !status.success(), "the pull was killed mid-layer ({status:?})");
    assert_eq!(r.ok(&["images", "-q"]), images, "a killed pull stores no image");
    r.ok(&["pull", "-q", &name]);
    assert_eq!(r.ok(&["run", "--rm", &name, "sh", "-c", "wc -c < /big"]).trim(), (48 << 20).to_string());
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
    assert!(left.is_empty(), "the killed pull's scratch space was swept: {left:?}");
    // a corrupted blob in the registry: a digest mismatch, nothing stored
    r.ok(&["rmi", &name]);
    let blob = reg.blob_path(&big_hex);
    let mut data = std::fs::read(&blob).unwrap();
    data[4096] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();
    let e = r.fails(&["pull", &name]);
    assert!(e.contains("digest mismatch"), "{e}");
    assert_eq!(r.ok(&["images", "-q"]), images);
}

/// A token server of the test's own: it signs ES256 tokens (the key's
/// self-signed certificate in `x5c`, the registry trusting that
/// certificate) for `tok`/`pw`, granting only repositories under `allowed/`.
struct TokenServer {
    realm: String,
    cert_pem: String,
}

impl TokenServer {
    fn start() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["moat-test-token".into()]).unwrap().self_signed(&key).unwrap();
        let cert_pem = cert.pem();
        let der = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cert.der());
        let signing = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match std::io::Read::read(&mut s, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let authorized = text.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization: basic ")
                        && l[21..].trim()
                            == base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "tok:pw")
                });
                let (status, body) = if !authorized {
                    ("401 Unauthorized", r#"{"details":"bad credentials"}"#.to_string())
                } else {
                    let scope = path.split_once("scope=").map(|(_, s)| s.split('&').next().unwrap_or("")).unwrap_or("");
                    let scope = scope.replace("%3A", ":").replace("%2F", "/").replace("%2C", ",");
                    let mut access = Vec::new();
                    let parts: Vec<&str> = scope.splitn(3, ':').collect();
                    if let [kind, name, actions] = parts.as_slice() {
                        if name.starts_with("allowed/") {
                            access.push(serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }));
                        }
                    }
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                    let claims = serde_json::json!({
                        "iss": "moat-test-issuer", "sub": "tok", "aud": "moat-test", "exp": now + 300, "nbf": now - 10,
                        "iat": now, "jti": format!("{now}-{}", access.len()), "access": access,
                    });
                    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                    header.x5c = Some(vec![der.clone()]);
                    let token = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
                    ("200 OK", serde_json::json!({ "token": token, "expires_in": 300 }).to_string())
                };
                let resp = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = std::io::Write::write_all(&mut s, resp.as_bytes());
            }
        });
        Self { realm, cert_pem }
    }
}

#[test]
fn bearer_token_auth() {
    let r = root_with_busybox();
    let ts = TokenServer::start();
    let auth = format!(
        "auth:\n  token:\n    realm: {}\n    service: moat-test\n    issuer: moat-test-issuer\n    rootcertbundle: {{dir}}/token.pem\n",
        ts.realm
    );
    let reg = Registry::start_with(&auth, &[("token.pem", ts.cert_pem.as_bytes())]);
    let allowed = format!("{}/allowed/app:1", reg.addr);
    let other = format!("{}/secret/app:1", reg.addr);
    r.ok(&["tag", "busybox", &allowed]);
    r.ok(&["tag", "busybox", &other]);
    let e = r.fails(&["push", &allowed]);
    assert!(e.contains("unauthorized"), "no credentials: {e}");
    let mut c = r.cmd();
    c.args(["login", "-u", "tok", "--password-stdin", &reg.addr]).stdin(std::process::Stdio::piped());
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"pw\n").unwrap();
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "login through the token server: {}", String::from_utf8_lossy(&o.stderr));
    r.ok(&["push", &allowed]);
    r.ok(&["rmi", &allowed]);
    r.ok(&["pull", "-q", &allowed]);
    // a token for another scope does not open this repository
    let e = r.fails(&["push", &other]);
    assert!(e.contains("unauthorized"), "{e}");
}

#[test]
fn gzip_and_zstd_layers_pushed_by_skopeo() {
    let r = Root::new();
    let d = tempfile::tempdir().unwrap();
    two_platform_layout(d.path());
    for format in ["gzip", "zstd"] {
        // a registry each: skopeo would otherwise reuse the blobs of the first format
        let reg = Registry::start();
        let name = format!("{}/compressed:{format}", reg.addr);
        let st = std::process::Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-compress", "--dest-compress-format", format])
            .args(["--override-arch", "amd64", "--override-os", "linux"])
            .arg(format!("oci:{}:multi", d.path().display()))
            .arg(format!("docker://{name}"))
            .output()
            .unwrap();
        assert!(st.status.success(), "skopeo: {}", String::from_utf8_lossy(&st.stderr));
        // the registry holds compressed layers of that format
        let manifest = std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{name}"))
            .output()
            .unwrap();
        let manifest = String::from_utf8_lossy(&manifest.stdout).to_string();
        assert!(manifest.contains(&format!("tar+{format}")), "{manifest}");
        r.ok(&["pull", "-q", &name]);
        assert_eq!(r.ok(&["run", "--rm", &name]), "amd64\n", "{format}");
    }
}
