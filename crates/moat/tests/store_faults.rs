//! I/O faults under the store (issue #35): an LD_PRELOAD library
//! (`tests/data/faults.c`, built by the test with `cc`) fails the Nth
//! write or fsync of a moat command with EIO or ENOSPC, for every N the
//! command makes (the first 24, then every power of two). Each time: the command succeeds or fails with one line
//! (never a panic), and afterwards — without faults — the root opens,
//! `system check --repair` leaves it clean and the next operations work.
//! An I/O error is not a power cut (no unsynced write is dropped); the
//! crash points cover kills between writes.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn faults_lib(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/faults.c");
    let so = dir.join("faults.so");
    let st = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(st.success(), "build the fault library");
    so
}

#[test]
fn every_write_and_fsync_of_a_command_may_fail_without_harm() {
    let d = tempfile::tempdir().unwrap();
    let so = faults_lib(d.path());
    let tar = busybox_archive().0.to_str().unwrap().to_string();
    let ops: Vec<(&str, Vec<String>)> = vec![
        ("create", ["create", "--name", "c1", "--network", "none", "busybox", "true"].map(String::from).to_vec()),
        ("volume", ["volume", "create", "v1"].map(String::from).to_vec()),
        ("tag", ["tag", "busybox", "t:1"].map(String::from).to_vec()),
        ("import", vec!["import".into(), tar.clone(), "imp:1".into()]),
    ];
    let mut injected = 0;
    for (name, args) in &ops {
        for (kind, errno) in [("write", "5"), ("write", "28"), ("fsync", "5")] {
            {
                // the first 24 calls of this kind, then every power of two,
                // until a run passes them all
                for n in (1..=24).chain((5..16).map(|p| 1u32 << p)) {
                    let r = root_with_busybox();
                    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                    let o = r
                        .cmd()
                        .env("LD_PRELOAD", &so)
                        .env("MOAT_FAULT", kind)
                        .env("MOAT_FAULT_AT", n.to_string())
                        .env("MOAT_FAULT_ERRNO", errno)
                        .args(&argv)
                        .output()
                        .unwrap();
                    let what = format!("{name} with {kind} #{n} failing (errno {errno})");
                    if !o.status.success() {
                        assert_fails_one_line(&o, &what);
                        injected += 1;
                    }
                    let rep = r.run(&["system", "check", "--repair"]);
                    assert!(rep.status.success(), "{what}: {}", String::from_utf8_lossy(&rep.stdout));
                    assert_eq!(r.ok(&["system", "check"]), "0 problems found, 0 repaired\n", "{what}");
                    for l in [&["ps", "-a"][..], &["images"], &["volume", "ls"]] {
                        r.ok(l);
                    }
                    // the operation can be done (again) now
                    let again = r.run(&argv);
                    let err = String::from_utf8_lossy(&again.stderr);
                    assert!(again.status.success() || err.contains("already"), "{what}, then again: {err}");
                    if o.status.success() {
                        // no call left to fail: every one was tried
                        break;
                    }
                }
            }
        }
    }
    assert!(injected > 20, "faults that took effect: {injected}");
}
