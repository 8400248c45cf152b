//! Power cuts (issue #35): a process killed mid-command keeps what it wrote
//! in the page cache; a power cut does not. `tests/data/powercut.c`
//! (LD_PRELOAD) logs the bytes each write replaces until the file is
//! fsynced (or the filesystem synced); after the cut the test puts every
//! unsynced write back as it was, which is what the disk holds after the
//! power returns when nothing was written back early (the harshest case;
//! metadata — creates, renames — is taken as durable). Each command is cut
//! at a spread of its writes; then the root must open, `system check
//! --repair` must leave it clean, every image listed must have its data
//! (busybox's checksum, read by a container), and the command must work
//! again. A second test recovers from a cut right after a load whose
//! record a checkpoint of the database had already made durable.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

fn powercut_lib(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/powercut.c");
    let so = dir.join("powercut.so");
    let st = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(st.success(), "build the power-cut library");
    so
}

/// One unsynced write: where, the file's size before it, the bytes it replaced.
struct Undo {
    path: PathBuf,
    off: u64,
    old_size: u64,
    old: Vec<u8>,
}

fn take_line<'a>(b: &mut &'a [u8]) -> Vec<&'a str> {
    let n = b.iter().position(|c| *c == b'\n').unwrap();
    let line = std::str::from_utf8(&b[..n]).unwrap();
    *b = &b[n + 1..];
    line.split(' ').collect()
}

fn take<'a>(b: &mut &'a [u8], n: &str) -> &'a [u8] {
    let n: usize = n.parse().unwrap();
    let (h, t) = b.split_at(n);
    *b = t;
    h
}

fn path_of(b: &[u8]) -> PathBuf {
    PathBuf::from(std::str::from_utf8(b).unwrap())
}

/// One record of the log.
enum Rec {
    Write(Undo),
    Synced(PathBuf),
    AllSynced,
    Renamed(PathBuf, PathBuf),
}

fn records(log: &Path) -> Vec<Rec> {
    let data = std::fs::read(log).unwrap_or_default();
    let mut b = &data[..];
    let mut out = Vec::new();
    while !b.is_empty() {
        let f = take_line(&mut b);
        out.push(match f[0] {
            "U" => {
                let path = path_of(take(&mut b, f[4]));
                let old = take(&mut b, f[3]).to_vec();
                Rec::Write(Undo { path, off: f[1].parse().unwrap(), old_size: f[2].parse().unwrap(), old })
            }
            "S" => Rec::Synced(path_of(take(&mut b, f[1]))),
            "A" => Rec::AllSynced,
            "R" => {
                let from = path_of(take(&mut b, f[1]));
                Rec::Renamed(from, path_of(take(&mut b, f[2])))
            }
            other => panic!("bad record {other:?} in the power-cut log"),
        });
    }
    out
}

/// Drops every write of `log` that was not synced: returns how many.
fn cut_power(log: &Path) -> usize {
    let mut pending: Vec<Undo> = Vec::new();
    for rec in records(log) {
        match rec {
            Rec::Write(u) => pending.push(u),
            Rec::Synced(p) => pending.retain(|u| u.path != p),
            Rec::AllSynced => pending.clear(),
            Rec::Renamed(from, to) => {
                for u in &mut pending {
                    if let Ok(rest) = u.path.strip_prefix(&from) {
                        u.path = if rest.as_os_str().is_empty() { to.clone() } else { to.join(rest) };
                    }
                }
            }
        }
    }
    for u in pending.iter().rev() {
        // a file removed since is gone either way
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(&u.path) else { continue };
        f.write_all_at(&u.old, u.off).unwrap();
        f.set_len(u.old_size).unwrap();
    }
    let _ = std::fs::remove_file(log);
    pending.len()
}

/// After a cut: the root is whole, and every image holds its data.
fn recovered(r: &Root, what: &str) {
    let rep = r.run(&["system", "check", "--repair"]);
    assert!(rep.status.success(), "{what}: {}", String::from_utf8_lossy(&rep.stdout));
    assert_eq!(r.ok(&["system", "check"]), "0 problems found, 0 repaired\n", "{what}");
    for l in [&["ps", "-a"][..], &["volume", "ls"]] {
        r.ok(l);
    }
    let want = format!("{}  /bin/busybox\n", sha256_hex(&std::fs::read("/bin/busybox").unwrap()));
    for img in r.ok(&["images", "-q", "--no-trunc"]).lines() {
        let o = r.run(&["run", "--rm", "--network", "none", img, "sha256sum", "/bin/busybox"]);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            want,
            "{what}: image {img}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Where to cut a command that makes `n` logged writes: the first few,
/// then a spread up to the last (`MOAT_POWERCUT_EVERY=1`, as `make soak`
/// sets it: at every one).
fn cut_points(n: usize) -> Vec<usize> {
    if std::env::var_os("MOAT_POWERCUT_EVERY").is_some() {
        return (1..=n).collect();
    }
    let mut v: Vec<usize> = (1..=6).chain((1..=8).map(|k| n * k / 8)).filter(|c| *c >= 1 && *c <= n).collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn a_power_cut_at_any_write_loses_nothing_synced() {
    let d = tempfile::tempdir().unwrap();
    let so = powercut_lib(d.path());
    let tar = busybox_archive().0.to_str().unwrap().to_string();
    let rootfs = write_fixture("busybox-rootfs.tar", &tar_dir(busybox_rootfs())).to_str().unwrap().to_string();
    let ops: Vec<(&str, bool, Vec<String>)> = vec![
        ("load", false, vec!["load".into(), "-q".into(), "-i".into(), tar.clone()]),
        ("import", false, vec!["import".into(), rootfs, "imp:1".into()]),
        ("create", true, ["create", "--name", "c1", "--network", "none", "busybox", "true"].map(String::from).to_vec()),
        ("volume", true, ["volume", "create", "v1"].map(String::from).to_vec()),
        ("tag", true, ["tag", "busybox", "t:1"].map(String::from).to_vec()),
    ];
    let mut cuts = 0;
    for (name, with_busybox, args) in &ops {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let fresh = || if *with_busybox { root_with_busybox() } else { Root::new() };
        let run = |r: &Root, log: &Path, at: Option<usize>| {
            let mut c = r.cmd();
            c.env("LD_PRELOAD", &so).env("MOAT_POWERCUT_LOG", log).env("MOAT_POWERCUT_UNDER", r.path());
            if let Some(n) = at {
                c.env("MOAT_POWERCUT_AT", n.to_string());
            }
            c.args(&argv).output().unwrap()
        };
        // how many writes a whole run makes
        let r = fresh();
        let log = d.path().join(format!("{name}.log"));
        let o = run(&r, &log, None);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let writes = records(&log).iter().filter(|r| matches!(r, Rec::Write(_))).count();
        let _ = std::fs::remove_file(&log);
        assert!(writes > 0, "{name} writes nothing the library sees");
        drop(r);
        eprintln!("{name}: {writes} writes, cut at {:?}", cut_points(writes));
        for n in cut_points(writes) {
            let r = fresh();
            let o = run(&r, &log, Some(n));
            let what = format!("{name} cut at write {n} of {writes}");
            // the positive control: the cut happened there
            assert_eq!(o.status.signal(), Some(9), "{what}: {}", String::from_utf8_lossy(&o.stderr));
            cut_power(&log);
            cuts += 1;
            recovered(&r, &what);
            let again = r.run(&argv);
            let err = String::from_utf8_lossy(&again.stderr);
            assert!(again.status.success() || err.contains("already"), "{what}, then again: {err}");
            recovered(&r, &format!("{what}, then again"));
        }
    }
    assert!(cuts > 30, "cuts made: {cuts}");
}

/// A load, then a checkpoint that makes the database (and the image's
/// record) durable, then the cut: the layer's data must have been synced
/// before its record (one syncfs per load), or the image would be listed
/// with empty files.
#[test]
fn a_recorded_layer_survives_a_power_cut() {
    let d = tempfile::tempdir().unwrap();
    let so = powercut_lib(d.path());
    let r = Root::new();
    let log = d.path().join("load.log");
    let o = r
        .cmd()
        .env("LD_PRELOAD", &so)
        .env("MOAT_POWERCUT_LOG", &log)
        .env("MOAT_POWERCUT_UNDER", r.path())
        .args(["load", "-q", "-i", busybox_archive().0.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    {
        let db = rusqlite::Connection::open(r.path().join("moat.db")).unwrap();
        db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    }
    cut_power(&log);
    assert_eq!(r.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]), "busybox:latest\n");
    recovered(&r, "a cut after a checkpointed load");
}
