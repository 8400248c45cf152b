//! Crash safety and concurrency of the metadata and image stores, with real
//! processes: parallel writers and SIGKILL in the middle of a load.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn integrity_ok(r: &Root) {
    let db = rusqlite::Connection::open(r.path().join("moat.db")).unwrap();
    let res: String = db.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(res, "ok");
}

#[test]
fn parallel_writers_lose_nothing() {
    let (archive, id) = busybox_archive();
    let r = Root::new();
    // four loads of the same archive at once
    let loads: Vec<Child> =
        (0..4).map(|_| r.cmd().args(["load", "-q", "-i", archive.to_str().unwrap()]).spawn().unwrap()).collect();
    for mut c in loads {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(r.image_ids(), vec![id.clone()]);
    // 24 tags written by 24 processes at once
    let tags: Vec<Child> = (0..24)
        .map(|i| r.cmd().args(["tag", "busybox", &format!("par/t{i}:v")]).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    for c in tags {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let listed = r.ok(&["images"]);
    for i in 0..24 {
        assert!(listed.lines().any(|l| l.starts_with(&format!("par/t{i} "))), "tag {i} lost:\n{listed}");
    }
    integrity_ok(&r);
}

/// A layer of `mb` MiB of incompressible bytes.
fn big_layer(mb: usize) -> Vec<u8> {
    let mut data = vec![0u8; mb << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    TarBuilder::new().dir("data").file("data/blob", &data).file("data/small", b"s").finish()
}

fn tmp_entries(r: &Root) -> Vec<String> {
    std::fs::read_dir(r.path().join("tmp"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// SIGKILL a load at several points; afterwards the store works, the image is
/// either absent or complete, scratch space is swept, and a reload succeeds.
#[test]
fn sigkill_during_load_leaves_store_consistent() {
    let (ar, id) = docker_archive(&["big:v1"], &[big_layer(24), big_layer(40)], &["sh"]);
    let f = write_fixture("big.tar", &ar);
    // kill points: as soon as scratch space exists, once the archive is being
    // staged, once a layer is being unpacked
    type Reached = fn(&Root) -> bool;
    let points: [(&str, Reached); 3] = [
        ("scratch created", |r| tmp_entries(r).iter().any(|e| e.starts_with("load-") && !e.ends_with(".lock"))),
        ("archive staging", |r| {
            walk(&r.path().join("tmp"))
                .iter()
                .any(|p| p.ends_with("manifest.json") || p.to_string_lossy().contains("layer.tar"))
        }),
        ("layer unpacking", |r| walk(&r.path().join("tmp")).iter().any(|p| p.to_string_lossy().contains("layer-"))),
    ];
    for (what, reached) in points {
        let r = Root::new();
        r.ok(&["images"]); // create the root
        let mut child = r.cmd().args(["load", "-q", "-i", f.to_str().unwrap()]).spawn().unwrap();
        let t0 = Instant::now();
        let mut killed = false;
        while t0.elapsed() < Duration::from_secs(60) {
            if reached(&r) {
                child.kill().unwrap(); // SIGKILL
                killed = true;
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let status = child.wait().unwrap();
        assert!(killed, "{what}: the load finished ({status:?}) before the kill point was seen");
        // the next command works and sees a consistent store
        let ids = r.image_ids();
        if !ids.is_empty() {
            assert_eq!(ids, vec![id.clone()], "{what}");
            let v: serde_json::Value = serde_json::from_str(&r.ok(&["image", "inspect", "big:v1"])).unwrap();
            for l in v[0]["RootFS"]["Layers"].as_array().unwrap() {
                assert!(r.path().join("layers").join(&l.as_str().unwrap()[7..]).join("data/small").exists());
            }
        }
        assert!(tmp_entries(&r).is_empty(), "{what}: scratch not swept: {:?}", tmp_entries(&r));
        integrity_ok(&r);
        // loading again completes, then nothing is left over
        r.ok(&["load", "-q", "-i", f.to_str().unwrap()]);
        assert_eq!(r.image_ids(), vec![id.clone()], "{what}");
        r.ok(&["rmi", "big:v1"]);
        assert_eq!(std::fs::read_dir(r.path().join("layers")).unwrap().count(), 0, "{what}: orphan layers remain");
    }
    let _ = std::fs::remove_file(&f);
}
