//! Fuzz targets (bolero; a bounded run in `make test`, longer with
//! `make soak`): layer and archive unpacking, image configs.

#![allow(clippy::unwrap_used)]

use crate::unpack::{unpack, Kind, Limits};

/// `top/a/b/dest`, made.
fn deep_dest(top: &std::path::Path) -> std::path::PathBuf {
    let dest = top.join("a/b/dest");
    std::fs::create_dir_all(&dest).unwrap();
    dest
}

/// Nothing appeared beside `dest` or its two parents after an unpack.
fn only_dest_left(top: &std::path::Path) {
    for (dir, only) in [(top.to_path_buf(), "a"), (top.join("a"), "b"), (top.join("a/b"), "dest")] {
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(only)], "an entry escaped the destination");
    }
}

#[test]
fn unpack_of_random_bytes_never_panics_nor_escapes() {
    bolero::check!().with_max_len(64 << 10).for_each(|bytes: &[u8]| {
        let d = tempfile::tempdir().unwrap();
        let dest = deep_dest(d.path());
        for kind in [Kind::Layer, Kind::Plain] {
            let _ = unpack(bytes, &dest, kind, Limits { max_bytes: 1 << 20, max_entries: 1000 });
        }
        only_dest_left(d.path());
    });
}

/// One tar entry of a generated archive: hostile names and link targets
/// are the point (`..`, absolute paths, links out, whiteouts).
#[derive(Debug, Clone, bolero::TypeGenerator)]
struct Entry {
    kind: u8,
    name: Vec<u8>,
    target: Vec<u8>,
    data: Vec<u8>,
    mode: u16,
}

const NAMES: &[&str] = &["a", "..", "/", "etc", ".wh.a", ".wh..wh..opq", "l", "dir", "x/../..", "/abs"];

fn name(raw: &[u8]) -> String {
    // mostly names built from hostile pieces, sometimes raw bytes
    if raw.first().is_some_and(|b| b % 4 == 0) {
        return String::from_utf8_lossy(raw).into_owned();
    }
    raw.iter().take(6).map(|b| NAMES[*b as usize % NAMES.len()]).collect::<Vec<_>>().join("/")
}

#[test]
fn unpack_of_hostile_archives_stays_inside() {
    bolero::check!().with_type::<Vec<Entry>>().for_each(|entries: &Vec<Entry>| {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries.iter().take(32) {
            let mut h = tar::Header::new_gnu();
            let ty = match e.kind % 6 {
                0 => tar::EntryType::Regular,
                1 => tar::EntryType::Directory,
                2 => tar::EntryType::Symlink,
                3 => tar::EntryType::Link,
                4 => tar::EntryType::Char,
                _ => tar::EntryType::Fifo,
            };
            h.set_entry_type(ty);
            h.set_mode(u32::from(e.mode));
            let n = name(&e.name);
            // set the raw name bytes: tar::Builder refuses `..` itself
            let raw = n.as_bytes();
            let len = raw.len().min(99);
            h.as_old_mut().name[..len].copy_from_slice(&raw[..len]);
            if matches!(ty, tar::EntryType::Symlink | tar::EntryType::Link) {
                let t = name(&e.target);
                let t = t.as_bytes();
                let tl = t.len().min(99);
                h.as_old_mut().linkname[..tl].copy_from_slice(&t[..tl]);
            }
            let data: &[u8] = if ty == tar::EntryType::Regular { &e.data } else { &[] };
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        let dest = deep_dest(d.path());
        for kind in [Kind::Layer, Kind::Plain] {
            let _ = unpack(&bytes[..], &dest, kind, Limits { max_bytes: 1 << 20, max_entries: 1000 });
        }
        only_dest_left(d.path());
    });
}

#[test]
fn image_configs_never_panic() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let _ = crate::parse_config(bytes);
        let _ = crate::runtime_config(bytes);
    });
}
