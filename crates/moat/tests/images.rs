//! End-to-end tests of the image store through the real `moat` binary.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn load_list_save_roundtrip_keeps_image_id() {
    let (archive, id) = busybox_archive();
    let r = Root::new();
    let out = r.ok(&["image", "load", "-i", archive.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: busybox:latest");
    let table = r.ok(&["images"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("REPOSITORY") && lines[0].contains("IMAGE ID") && lines[0].contains("SIZE"));
    assert!(lines[1].starts_with("busybox") && lines[1].contains("latest") && lines[1].contains(&id[7..19]), "{table}");
    assert_eq!(r.image_ids(), vec![id.clone()]);

    // save, load into a fresh root: same ID, same tag
    let saved = r.path().join("saved.tar");
    r.ok(&["image", "save", "busybox", "-o", saved.to_str().unwrap()]);
    let r2 = Root::new();
    assert_eq!(r2.ok(&["load", "-i", saved.to_str().unwrap()]).trim(), "Loaded image: busybox:latest");
    assert_eq!(r2.image_ids(), vec![id.clone()]);

    // and from stdin, a second time (idempotent)
    let f = std::fs::File::open(&saved).unwrap();
    let o = r2.cmd().args(["load"]).stdin(f).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(r2.image_ids(), vec![id.clone()]);

    // json format: one object per line with docker's keys
    let j = r.ok(&["image", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(j.lines().next().unwrap()).unwrap();
    assert_eq!(v["Repository"], "busybox");
    assert_eq!(v["Tag"], "latest");
    assert_eq!(v["ID"], &id[7..19]);

    // inspect shows config and layers
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["image", "inspect", "busybox"])).unwrap();
    assert_eq!(v[0]["Id"], id.as_str());
    assert_eq!(v[0]["Config"]["Cmd"][0], "sh");
    assert_eq!(v[0]["RootFS"]["Layers"].as_array().unwrap().len(), 1);
}

#[test]
fn saved_archive_is_docker_load_compatible() {
    // `docker load` reads manifest.json (Config, RepoTags, Layers) and the
    // files it names; check exactly that structure and that every digest holds.
    let (archive, id) = busybox_archive();
    let r = Root::new();
    r.ok(&["load", "-i", archive.to_str().unwrap()]);
    let out = r.cmd().args(["save", "busybox:latest"]).stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success());
    let mut files = std::collections::HashMap::new();
    let mut ar = tar::Archive::new(&out.stdout[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut b).unwrap();
        files.insert(e.path().unwrap().display().to_string(), b);
    }
    let m: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let cfg_name = m[0]["Config"].as_str().unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&files[cfg_name])), *id);
    assert_eq!(m[0]["RepoTags"][0], "busybox:latest");
    let cfg: serde_json::Value = serde_json::from_slice(&files[cfg_name]).unwrap();
    for (l, d) in m[0]["Layers"].as_array().unwrap().iter().zip(cfg["rootfs"]["diff_ids"].as_array().unwrap()) {
        assert_eq!(format!("sha256:{}", sha256_hex(&files[l.as_str().unwrap()])), d.as_str().unwrap());
    }
    // saving to a terminal-less stdout works; an unknown image fails cleanly
    r.fails(&["save", "nosuchimage", "-o", r.path().join("x.tar").to_str().unwrap()]);
    assert!(!r.path().join("x.tar").exists(), "a failed save must not leave a file");
}

#[test]
fn import_rootfs_tar_plain_gzip_zstd_and_stdin() {
    let layer = tar_dir(busybox_rootfs());
    let r = Root::new();
    let plain = write_fixture("rootfs.tar", &layer);
    let id =
        r.ok(&["image", "import", "-c", r#"CMD ["sh"]"#, "--change", "ENV A=1", plain.to_str().unwrap(), "imp:plain"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let gzp = write_fixture("rootfs.tar.gz", &gz.finish().unwrap());
    r.ok(&["import", gzp.to_str().unwrap(), "imp:gz"]);

    let zs = write_fixture("rootfs.tar.zst", &zstd::encode_all(&layer[..], 3).unwrap());
    let mut c = r.cmd();
    c.args(["import", "-", "imp:zstd"]).stdin(std::fs::File::open(&zs).unwrap());
    assert!(c.status().unwrap().success());

    let inspect: serde_json::Value =
        serde_json::from_str(&r.ok(&["image", "inspect", "imp:plain", "imp:gz", "imp:zstd"])).unwrap();
    let layers: Vec<&serde_json::Value> =
        inspect.as_array().unwrap().iter().map(|i| &i["RootFS"]["Layers"][0]).collect();
    assert_eq!(inspect[0]["Config"]["Cmd"][0], "sh");
    assert!(inspect[0]["Config"]["Env"].as_array().unwrap().iter().any(|e| e == "A=1"));
    assert_eq!(layers[0], layers[1], "same content, same diff ID whatever the compression");
    assert_eq!(layers[0], layers[2]);
    assert_eq!(layers[0].as_str().unwrap(), format!("sha256:{}", sha256_hex(&layer)));
    // the layer is unpacked once, with the applet symlinks intact
    let dirs: Vec<_> = std::fs::read_dir(r.path().join("layers")).unwrap().collect();
    assert_eq!(dirs.len(), 1);
    let ls = std::fs::read_link(dirs[0].as_ref().unwrap().path().join("bin/ls")).unwrap();
    assert_eq!(ls, Path::new("busybox"));
}

#[test]
fn oci_layout_from_umoci_loads_and_lists() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let bundle = work.path().join("bundle");
    let run = |args: &[&str]| {
        let o = Command::new("umoci").args(args).output().expect("umoci (make test installs it)");
        assert!(o.status.success(), "umoci {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let l = layout.to_str().unwrap();
    run(&["init", "--layout", l]);
    run(&["new", "--image", &format!("{l}:v1")]);
    run(&["unpack", "--image", &format!("{l}:v1"), bundle.to_str().unwrap()]);
    let cp = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", busybox_rootfs().display()))
        .arg(bundle.join("rootfs"))
        .status()
        .unwrap();
    assert!(cp.success());
    run(&["repack", "--image", &format!("{l}:v1"), bundle.to_str().unwrap()]);
    run(&["config", "--image", &format!("{l}:v1"), "--config.cmd", "sh"]);
    run(&["tag", "--image", &format!("{l}:v1"), "moat.test/oci:v2"]);
    let tarball = work.path().join("oci.tar");
    assert!(Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&tarball).arg(".").status().unwrap().success());

    let r = Root::new();
    let out = r.ok(&["load", "-i", tarball.to_str().unwrap()]);
    assert!(out.contains("Loaded image: moat.test/oci:v2"), "{out}");
    assert_eq!(out.lines().count(), 1, "one image named once: {out}");
    let table = r.ok(&["images"]);
    assert!(table.lines().any(|l| l.starts_with("moat.test/oci") && l.contains("v2")), "{table}");
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["image", "inspect", "moat.test/oci:v2"])).unwrap();
    assert_eq!(v[0]["Config"]["Cmd"][0], "sh");
    // umoci writes gzip layers: the unpacked layer has busybox in it
    let layer = v[0]["RootFS"]["Layers"][0].as_str().unwrap()[7..].to_string();
    assert!(r.path().join("layers").join(layer).join("bin/busybox").is_file());
}

#[test]
fn references_by_name_tag_short_and_full_id() {
    let (archive, id) = busybox_archive();
    let r = Root::new();
    r.ok(&["load", "-i", archive.to_str().unwrap()]);
    let hex = &id[7..];
    for reference in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        &hex[..4],
        &hex[..12],
        hex,
        id.as_str(),
        &id[..15],
    ] {
        let v: serde_json::Value = serde_json::from_str(&r.ok(&["image", "inspect", reference])).unwrap();
        assert_eq!(v[0]["Id"], id.as_str(), "reference {reference}");
    }
    let e = r.fails(&["image", "inspect", "nosuch:tag"]);
    assert!(e.contains("No such image: nosuch:tag"), "{e}");
    let e = r.fails(&["tag", "busybox", "Bad:Name:x"]);
    assert!(e.contains("invalid"), "{e}");
    // a 3-character prefix is not an ID reference
    r.fails(&["image", "inspect", &hex[..3]]);
}

#[test]
fn tag_rmi_and_prune() {
    let (archive, id) = busybox_archive();
    let r = Root::new();
    r.ok(&["load", "-i", archive.to_str().unwrap()]);
    r.ok(&["tag", "busybox", "mine/bb:v1"]);
    r.ok(&["image", "tag", &id[7..19], "other:v2"]);
    let t = r.ok(&["images"]);
    assert_eq!(t.lines().count(), 4, "one row per tag: {t}");
    // an ID with several names needs -f
    let e = r.fails(&["rmi", &id[7..19]]);
    assert!(e.contains("referenced in multiple repositories"), "{e}");
    assert_eq!(r.ok(&["rmi", "mine/bb:v1"]).trim(), "Untagged: mine/bb:v1");
    assert_eq!(r.ok(&["rmi", "other:v2"]).trim(), "Untagged: other:v2");
    let out = r.ok(&["rmi", "busybox"]);
    assert!(out.contains("Untagged: busybox:latest") && out.contains(&format!("Deleted: {id}")), "{out}");
    assert!(r.image_ids().is_empty());
    assert_eq!(std::fs::read_dir(r.path().join("layers")).unwrap().count(), 0, "layers freed");
    assert_eq!(std::fs::read_dir(r.path().join("blobs/sha256")).unwrap().count(), 0, "blobs freed");

    // prune removes dangling (untagged) images only; -a removes all unused
    r.ok(&["load", "-i", archive.to_str().unwrap()]);
    let other =
        r.ok(&["import", write_fixture("p.tar", &TarBuilder::new().file("x", b"x").finish()).to_str().unwrap()]);
    assert_eq!(r.image_ids().len(), 2);
    let out = r.ok(&["image", "prune", "-f"]);
    assert!(out.contains(other.trim()), "{out}");
    assert_eq!(r.image_ids(), vec![id.clone()]);
    r.ok(&["image", "prune", "-a", "-f"]);
    assert!(r.image_ids().is_empty());
    let e = r.fails(&["rmi", "busybox"]);
    assert!(e.contains("No such image"), "{e}");
}

#[test]
fn rmi_refuses_while_a_container_uses_the_image() {
    let (archive, id) = busybox_archive();
    let r = Root::new();
    r.ok(&["load", "-i", archive.to_str().unwrap()]);
    // record a container the way the engine does (the metadata store is the contract)
    let db = rusqlite::Connection::open(r.path().join("moat.db")).unwrap();
    db.execute(
        "INSERT INTO containers(id, name, image_id, created, config, state) VALUES (?1, 'c1', ?2, '2026-01-01T00:00:00Z', '{}', '{}')",
        rusqlite::params!["a".repeat(64), &id[7..]],
    )
    .unwrap();
    drop(db);
    let e = r.fails(&["rmi", "busybox"]);
    assert!(e.contains("container c1 is using"), "{e}");
    let out = r.ok(&["rmi", "-f", "busybox"]);
    assert_eq!(out.trim(), "Untagged: busybox:latest", "a used image is untagged, not deleted");
    assert_eq!(r.image_ids(), vec![id.clone()]);
    r.ok(&["image", "prune", "-a"]);
    assert_eq!(r.image_ids(), vec![id.clone()], "prune keeps images in use");
}

/// Each hostile archive is refused with a one-line error, as a rootfs import
/// and as a layer of a docker-archive, leaving nothing behind.
#[test]
fn hostile_archives_are_refused_and_leave_nothing() {
    let marker = format!("moat-evil-{}", std::process::id());
    let outside = std::env::temp_dir().join(&marker);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", TarBuilder::new().file(&format!("../{marker}"), b"x").finish(), "'..'"),
        ("deep-dotdot", TarBuilder::new().dir("a").file(&format!("a/../../../{marker}"), b"x").finish(), "'..'"),
        ("absolute", TarBuilder::new().file(&format!("/tmp/{marker}"), b"x").finish(), "absolute"),
        (
            "symlink-escape",
            TarBuilder::new().link(tar::EntryType::Symlink, "esc", "../../../../../../../../../tmp").finish(),
            "escapes the layer",
        ),
        (
            "write-through-symlink",
            TarBuilder::new().link(tar::EntryType::Symlink, "t", "/tmp").file(&format!("t/{marker}"), b"x").finish(),
            "goes through a symlink",
        ),
        (
            "hardlink-escape",
            TarBuilder::new().link(tar::EntryType::Link, "pw", "../../../../../../etc/passwd").finish(),
            "hard link",
        ),
        ("hardlink-absolute", TarBuilder::new().link(tar::EntryType::Link, "pw", "/etc/passwd").finish(), "hard link"),
        ("device", TarBuilder::new().device("dev/mem", 1, 1).finish(), "device nodes"),
        ("garbage", b"this is not a tar archive at all, just some bytes that go on".repeat(20), "corrupt"),
    ];
    let r = Root::new();
    for (name, bytes, why) in cases {
        let f = write_fixture(&format!("evil-{name}.tar"), &bytes);
        let e = r.fails(&["import", f.to_str().unwrap(), &format!("evil:{name}")]);
        assert!(e.contains(why), "{name}: {e}");
        let (ar, _) = docker_archive(&[&format!("evil:{name}")], std::slice::from_ref(&bytes), &["sh"]);
        let f = write_fixture(&format!("evil-{name}-archive.tar"), &ar);
        let e = r.fails(&["load", "-i", f.to_str().unwrap()]);
        assert!(e.contains(why), "{name} (docker-archive): {e}");
    }
    // the outer archive itself may be hostile too
    let f = write_fixture("evil-outer.tar", &TarBuilder::new().file(&format!("../{marker}"), b"x").finish());
    r.fails(&["load", "-i", f.to_str().unwrap()]);

    assert!(!outside.exists(), "a file escaped to {}", outside.display());
    let leaked: Vec<_> =
        walk(r.path().parent().unwrap()).into_iter().filter(|p| p.to_string_lossy().contains(&marker)).collect();
    assert!(leaked.is_empty(), "files escaped: {leaked:?}");
    assert!(r.image_ids().is_empty(), "no half-imported image");
    assert_eq!(std::fs::read_dir(r.path().join("layers")).unwrap().count(), 0, "no layer left");
    assert_eq!(std::fs::read_dir(r.path().join("tmp")).unwrap().count(), 0, "no scratch left");
}

#[test]
fn tar_bombs_and_corrupt_layers_are_refused() {
    let r = Root::new();
    // 256 MiB of zeros gzips to ~250 KiB; the limit is set to 64 MiB
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut h = tar::Header::new_gnu();
    h.set_size(256 << 20);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_mode(0o644);
    h.set_cksum();
    let mut b = tar::Builder::new(&mut gz);
    b.append_data(&mut h, "zeros", std::io::repeat(0).take_bytes(256 << 20)).unwrap();
    b.finish().unwrap();
    drop(b);
    let bomb = write_fixture("bomb.tar.gz", &gz.finish().unwrap());
    let o = r
        .cmd()
        .env("MOAT_MAX_UNPACK_BYTES", (64u64 << 20).to_string())
        .args(["import", bomb.to_str().unwrap()])
        .output()
        .unwrap();
    assert_fails_one_line(&o, "bomb");
    assert!(String::from_utf8_lossy(&o.stderr).contains("tar bomb"), "{}", String::from_utf8_lossy(&o.stderr));
    // the same layer in an image archive: `load` holds the same limit
    let gz_layer = std::fs::read(&bomb).unwrap();
    let (ar, _) = docker_archive(&["bomb:1"], &[gz_layer], &["sh"]);
    let f = write_fixture("bomb-archive.tar", &ar);
    let o = r
        .cmd()
        .env("MOAT_MAX_UNPACK_BYTES", (64u64 << 20).to_string())
        .args(["load", "-i", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_fails_one_line(&o, "bomb in an archive");
    assert!(String::from_utf8_lossy(&o.stderr).contains("tar bomb"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(r.ok(&["images", "-q"]), "");

    // too many entries
    let mut tb = TarBuilder::new();
    for i in 0..200 {
        tb = tb.file(&format!("f{i}"), b"");
    }
    let many = write_fixture("many.tar", &tb.finish());
    let o = r.cmd().env("MOAT_MAX_UNPACK_ENTRIES", "100").args(["import", many.to_str().unwrap()]).output().unwrap();
    assert_fails_one_line(&o, "entries");

    // a docker-archive whose layer does not match the config's diff ID
    let (mut ar, _) = docker_archive(&["bad:digest"], &[TarBuilder::new().file("a", b"aaaa").finish()], &["sh"]);
    let pos = ar.windows(4).position(|w| w == b"aaaa").unwrap();
    ar[pos] = b'b';
    let f = write_fixture("bad-digest.tar", &ar);
    let e = r.fails(&["load", "-i", f.to_str().unwrap()]);
    assert!(e.contains("expected digest"), "{e}");

    // not an image archive at all
    let f = write_fixture("not-image.tar", &TarBuilder::new().file("hello.txt", b"hi").finish());
    let e = r.fails(&["load", "-i", f.to_str().unwrap()]);
    assert!(e.contains("neither a docker-archive"), "{e}");
    let e = r.fails(&["load", "-i", "/nonexistent/file.tar"]);
    assert!(e.contains("cannot open"), "{e}");
    assert!(r.image_ids().is_empty());
}

trait TakeBytes: std::io::Read + Sized {
    fn take_bytes(self, n: u64) -> std::io::Take<Self> {
        std::io::Read::take(self, n)
    }
}
impl<R: std::io::Read> TakeBytes for R {}

/// Whiteouts become overlayfs whiteouts: a real overlay mount of the loaded
/// layers shows the deletions and the opaque directory.
#[test]
fn multi_layer_whiteouts_apply_through_overlayfs() {
    let l1 = TarBuilder::new()
        .dir("a")
        .file("a/keep", b"keep")
        .file("a/gone", b"gone")
        .dir("o")
        .file("o/old", b"old")
        .file("top", b"top")
        .finish();
    let l2 = TarBuilder::new()
        .dir("a")
        .file("a/.wh.gone", b"")
        .dir("o")
        .file("o/.wh..wh..opq", b"")
        .file("o/new", b"new")
        .file(".wh.top", b"")
        .file("added", b"added")
        .finish();
    let (ar, id) = docker_archive(&["wh:test"], &[l1.clone(), l2.clone()], &["sh"]);
    let f = write_fixture("whiteouts.tar", &ar);
    let r = Root::new();
    r.ok(&["load", "-i", f.to_str().unwrap()]);
    assert_eq!(r.image_ids(), vec![id]);
    let lower1 = r.path().join("layers").join(sha256_hex(&l1));
    let lower2 = r.path().join("layers").join(sha256_hex(&l2));
    let mnt = r.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}:{}", lower2.display(), lower1.display()))
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "overlay mount");
    let exists = |p: &str| mnt.join(p).symlink_metadata().is_ok();
    let result = (exists("a/keep"), exists("a/gone"), exists("o/old"), exists("o/new"), exists("top"), exists("added"));
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(result, (true, false, false, true, false, true), "(keep, gone, old, new, top, added)");
    // and the saved image reproduces the original whiteout entries byte for byte
    let out = r.cmd().args(["save", "wh:test"]).stdout(Stdio::piped()).output().unwrap();
    let want = format!("{}/layer.tar", sha256_hex(&l2));
    let mut saved = None;
    for e in tar::Archive::new(&out.stdout[..]).entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().display().to_string() == want {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut b).unwrap();
            saved = Some(b);
        }
    }
    assert!(saved.as_ref() == Some(&l2), "the saved layer is the loaded one, byte for byte, whiteouts included");
}

#[test]
fn info_reports_cgroups_and_accelerator() {
    let r = Root::new();
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["info", "--format", "json"])).unwrap();
    assert_eq!(v["DockerRootDir"], r.path().display().to_string());
    assert_eq!(v["Isolation"], "process");
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let hw = cpu.split_whitespace().any(|f| f == "vmx" || f == "svm")
        && std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    assert_eq!(v["Hypervisor"]["Accelerator"], if hw { "kvm" } else { "tcg" });
    let cg2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    assert_eq!(v["CgroupVersion"], if cg2 { "2" } else { "1" });
    let text = r.ok(&["info"]);
    assert!(text.contains("Default isolation:") && text.contains("Cgroup version:"));
    let v = r.ok(&["version"]);
    assert!(v.contains("Client:") && v.contains("Server: moat") && v.contains(env!("CARGO_PKG_VERSION")), "{v}");
}
