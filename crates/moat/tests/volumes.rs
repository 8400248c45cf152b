//! Volumes and bind mounts (issue #12): named and anonymous volumes in both
//! isolation types and across a conversion, seeding from the image,
//! `--volumes-from`, `rm -v`, prune, and Docker's bind-mount behaviours.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::*;
use std::os::unix::fs::MetadataExt;

modes!(
    named_volumes_are_shared_and_outlive_containers,
    image_content_seeds_new_volumes,
    volumes_from_and_anonymous_volumes
);

/// busybox plus `/data` (owned by 1000:1000, mode 0750, one file) declared
/// as a `VOLUME`, as `seeded:latest`.
fn root_with_seeded_image() -> Root {
    let r = root_with_busybox();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o750);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append_data(&mut h, "data/", &[][..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(7);
    h.set_mode(0o640);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append_data(&mut h, "data/seed.txt", &b"seeded\n"[..]).unwrap();
    let extra = b.into_inner().unwrap();
    let base = tar_dir(busybox_rootfs());
    let (bytes, _) = docker_archive_with(
        &["seeded:latest"],
        &[base, extra],
        serde_json::json!({ "Cmd": ["sh"], "Volumes": { "/data": {} } }),
    );
    let p = write_fixture("seeded.tar", &bytes);
    r.ok(&["load", "-q", "-i", p.to_str().unwrap()]);
    r
}

fn other(iso: &str) -> &'static str {
    if iso == "process" {
        "vm"
    } else {
        "process"
    }
}

fn named_volumes_are_shared_and_outlive_containers(iso: &str) {
    let r = root_with_busybox();
    assert_eq!(r.ok(&["volume", "create", "--label", "tier=db", "shared"]), "shared\n");
    assert_eq!(r.ok(&["volume", "create", "shared"]), "shared\n", "creating an existing volume returns it");
    r.ok(&["run", "--rm", "--isolation", iso, "-v", "shared:/v", "busybox", "sh", "-c", "echo from-first > /v/f"]);
    // the other isolation type sees the same data; ro refuses writes
    let out = r.ok(&["run", "--rm", "--isolation", other(iso), "-v", "shared:/v:ro", "busybox", "cat", "/v/f"]);
    assert_eq!(out, "from-first\n");
    let o = r.run(&["run", "--rm", "--isolation", iso, "-v", "shared:/v:ro", "busybox", "sh", "-c", "echo x > /v/g"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Read-only"), "{}", String::from_utf8_lossy(&o.stderr));
    // two running containers share it live
    r.ok(&["run", "-d", "--name", "writer", "--isolation", iso, "-v", "shared:/v", "busybox", "sleep", "600"]);
    r.ok(&["run", "-d", "--name", "reader", "--mount", "type=volume,src=shared,dst=/w", "busybox", "sleep", "600"]);
    r.ok(&["exec", "writer", "sh", "-c", "echo live > /v/live"]);
    assert_eq!(r.ok(&["exec", "reader", "cat", "/w/live"]), "live\n");
    let mounts: serde_json::Value =
        serde_json::from_str(&r.ok(&["inspect", "-f", "{{json .Mounts}}", "writer"])).unwrap();
    assert_eq!(mounts[0]["Type"], "volume");
    assert_eq!(mounts[0]["Name"], "shared");
    assert_eq!(mounts[0]["Destination"], "/v");
    assert!(mounts[0]["Source"].as_str().unwrap().ends_with("/volumes/shared/_data"));
    // in use: refused, with the users named
    let e = r.fails(&["volume", "rm", "shared"]);
    assert!(
        e.contains("volume is in use") && e.contains(&r.ok(&["inspect", "-f", "{{.Id}}", "writer"]).trim().to_string()),
        "{e}"
    );
    assert_eq!(r.ok(&["volume", "ls", "-q", "--filter", "dangling=false"]), "shared\n");
    assert_eq!(r.ok(&["volume", "ls", "-q", "--filter", "label=tier=db"]), "shared\n");
    assert_eq!(r.ok(&["volume", "ls", "-q", "--filter", "label=tier=web"]), "");
    r.ok(&["rm", "-f", "writer", "reader"]);
    // survives its containers; then removable
    assert_eq!(r.ok(&["run", "--rm", "--isolation", iso, "-v", "shared:/v", "busybox", "cat", "/v/live"]), "live\n");
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["volume", "inspect", "shared"])).unwrap();
    assert_eq!(v[0]["Labels"]["tier"], "db");
    assert_eq!(v[0]["Driver"], "local");
    r.ok(&["volume", "rm", "shared"]);
    let e = r.fails(&["volume", "inspect", "shared"]);
    assert!(e.contains("no such volume"), "{e}");
    r.fails(&["volume", "rm", "shared"]);
    r.ok(&["volume", "rm", "-f", "shared"]);
    assert!(!r.path().join("volumes/shared").exists());
    // a name used with -v creates the volume
    r.ok(&["run", "--rm", "--isolation", iso, "-v", "implicit:/v", "busybox", "touch", "/v/x"]);
    assert_eq!(r.ok(&["volume", "ls", "-q"]), "implicit\n");
    let e = r.fails(&["run", "--rm", "-v", "bad$name:/v", "busybox", "true"]);
    assert!(e.contains("invalid characters"), "{e}");
    let events = r.ok(&[
        "events",
        "--since",
        "2020-01-01T00:00:00Z",
        "--until",
        "0s",
        "--filter",
        "type=volume",
        "--format",
        "{{.Action}} {{.Actor.ID}}",
    ]);
    assert!(events.starts_with("create shared\n") && events.contains("destroy shared\ncreate implicit\n"), "{events}");
}

fn image_content_seeds_new_volumes(iso: &str) {
    let r = root_with_seeded_image();
    // a new named volume takes the image's content, owner and mode
    let out = r.ok(&[
        "run",
        "--rm",
        "--isolation",
        iso,
        "-v",
        "seeded-vol:/data",
        "seeded",
        "sh",
        "-c",
        "cat /data/seed.txt; stat -c '%u:%g %a' /data /data/seed.txt",
    ]);
    assert_eq!(out, "seeded\n1000:1000 750\n1000:1000 640\n");
    let m = std::fs::metadata(r.path().join("volumes/seeded-vol/_data/seed.txt")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (1000, 0o640));
    // a volume with content is not overwritten
    r.ok(&[
        "run",
        "--rm",
        "--isolation",
        iso,
        "-v",
        "seeded-vol:/data",
        "seeded",
        "sh",
        "-c",
        "echo mine > /data/seed.txt",
    ]);
    assert_eq!(
        r.ok(&["run", "--rm", "--isolation", iso, "-v", "seeded-vol:/data", "seeded", "cat", "/data/seed.txt"]),
        "mine\n"
    );
    // nocopy: empty
    assert_eq!(
        r.ok(&["run", "--rm", "--isolation", iso, "-v", "empty-vol:/data:nocopy", "seeded", "ls", "-A", "/data"]),
        ""
    );
    // busybox's /etc into a fresh volume elsewhere
    assert!(r
        .ok(&["run", "--rm", "--isolation", iso, "-v", "etc-vol:/etc", "busybox", "cat", "/etc/passwd"])
        .contains("root:"));
    // the image's VOLUME makes an anonymous, seeded volume, gone with --rm
    let before = r.ok(&["volume", "ls", "-q"]);
    assert_eq!(r.ok(&["run", "--rm", "--isolation", iso, "seeded", "cat", "/data/seed.txt"]), "seeded\n");
    assert_eq!(r.ok(&["volume", "ls", "-q"]), before, "--rm removed its anonymous volume");
    // a link in the image at the mount point is not followed out of the image
    let link = TarBuilder::new().link(tar::EntryType::Symlink, "escape", "/").finish();
    let (bytes, _) = docker_archive(&["linky:latest"], &[tar_dir(busybox_rootfs()), link], &["sh"]);
    let p = write_fixture("linky.tar", &bytes);
    r.ok(&["load", "-q", "-i", p.to_str().unwrap()]);
    assert_eq!(
        r.ok(&["run", "--rm", "--isolation", iso, "-v", "linkvol:/escape/etc", "linky", "ls", "/escape/etc"]),
        ""
    );
}

fn volumes_from_and_anonymous_volumes(iso: &str) {
    let r = root_with_seeded_image();
    r.ok(&[
        "create",
        "--name",
        "owner",
        "--isolation",
        iso,
        "-v",
        "/scratch",
        "-v",
        "named:/named",
        "seeded",
        "sh",
        "-c",
        "echo kept > /scratch/f; echo kept > /named/f; echo kept > /data/f",
    ]);
    assert_eq!(r.ok(&["start", "-a", "owner"]), "");
    let anon: Vec<String> = r.ok(&["volume", "ls", "-q"]).lines().filter(|n| n.len() == 64).map(String::from).collect();
    assert_eq!(anon.len(), 2, "-v /scratch and the image's /data: {anon:?}");
    // another container reads them all; :ro makes them read-only
    let out = r.ok(&[
        "run",
        "--rm",
        "--isolation",
        other(iso),
        "--volumes-from",
        "owner:ro",
        "busybox",
        "sh",
        "-c",
        "cat /scratch/f /named/f /data/f; touch /named/x 2>/dev/null || echo ro",
    ]);
    assert_eq!(out, "kept\nkept\nkept\nro\n");
    // the stopped owner converts to the other type and keeps its volumes
    r.ok(&["update", "--isolation", other(iso), "owner"]);
    r.ok(&["start", "owner"]);
    r.ok(&["wait", "owner"]);
    assert_eq!(r.ok(&["run", "--rm", "--volumes-from", "owner", "busybox", "cat", "/scratch/f"]), "kept\n");
    // rm -v removes the anonymous volumes, never the named one
    r.ok(&["rm", "-v", "owner"]);
    assert_eq!(r.ok(&["volume", "ls", "-q"]), "named\n");
    // prune: anonymous ones only, -a every unused one
    r.ok(&["create", "--name", "keep", "-v", "/k", "busybox", "true"]);
    r.ok(&["create", "--name", "gone", "-v", "/g", "busybox", "true"]);
    r.ok(&["rm", "gone"]);
    let out = r.ok(&["volume", "prune", "-f"]);
    assert!(out.contains("Deleted Volumes:") && !out.contains("named"), "{out}");
    assert_eq!(r.ok(&["volume", "ls", "-q"]).lines().count(), 2, "named + keep's");
    let df: serde_json::Value = serde_json::from_str(&r.ok(&["system", "df", "--format", "json"])).unwrap();
    assert_eq!(df["Volumes"]["TotalCount"], 2);
    assert_eq!(df["Volumes"]["Active"], 1);
    assert!(r.ok(&["volume", "prune", "-a", "-f"]).contains("named"));
    r.ok(&["rm", "keep"]);
    assert!(r.ok(&["system", "prune", "--volumes", "-f"]).contains("Deleted Volumes:"));
    assert_eq!(r.ok(&["volume", "ls", "-q"]), "");
}

/// A shared tmpfs mount on the host (for propagation), unmounted on drop.
struct SharedMount(std::path::PathBuf);

impl SharedMount {
    fn new(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ok = |args: &[&str]| assert!(std::process::Command::new("mount").args(args).status().unwrap().success());
        ok(&["-t", "tmpfs", "moat-test-shared", dir.to_str().unwrap()]);
        let m = Self(dir.to_path_buf());
        ok(&["--make-shared", dir.to_str().unwrap()]);
        m
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-R").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn bind_mounts_like_docker() {
    let r = root_with_busybox();
    let d = tempfile::tempdir().unwrap();
    // -v creates a missing host directory; --mount refuses
    let missing = d.path().join("made/by/v");
    r.ok(&["run", "--rm", "-v", &format!("{}:/m", missing.display()), "busybox", "touch", "/m/f"]);
    assert!(missing.join("f").exists());
    let e = r.fails(&[
        "run",
        "--rm",
        "--mount",
        &format!("type=bind,src={},dst=/m", d.path().join("nope").display()),
        "busybox",
        "true",
    ]);
    assert!(e.contains("bind source path does not exist"), "{e}");
    // relative paths are the caller's
    let o = r
        .cmd()
        .current_dir(d.path())
        .args(["run", "--rm", "-v", "./rel:/r", "busybox", "touch", "/r/x"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.path().join("rel/x").exists());
    // z/Z: accepted with a note
    let o = r.run(&["run", "--rm", "-v", &format!("{}:/z:Z", d.path().display()), "busybox", "true"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no effect"), "{}", String::from_utf8_lossy(&o.stderr));
    // --mount readonly, tmpfs through --mount
    let o = r.run(&[
        "run",
        "--rm",
        "--mount",
        &format!("type=bind,source={},target=/ro,readonly", d.path().display()),
        "busybox",
        "touch",
        "/ro/y",
    ]);
    assert!(!o.status.success());
    let out = r.ok(&[
        "run",
        "--rm",
        "--mount",
        "type=tmpfs,dst=/t,tmpfs-size=1m",
        "busybox",
        "sh",
        "-c",
        "grep ' /t ' /proc/mounts",
    ]);
    assert!(out.contains("tmpfs") && out.contains("size=1024k"), "{out}");
    let e = r.fails(&["run", "--rm", "-v", "/a:/x", "-v", "/b:/x", "busybox", "true"]);
    assert!(e.contains("Duplicate mount point"), "{e}");
    // propagation: rslave receives host mounts made later, the default does not
    let shared = SharedMount::new(&d.path().join("shared"));
    std::fs::create_dir(shared.0.join("sub")).unwrap();
    let src = shared.0.display().to_string();
    r.ok(&["run", "-d", "--name", "slave", "-v", &format!("{src}:/p:rslave"), "busybox", "sleep", "600"]);
    r.ok(&["run", "-d", "--name", "private", "-v", &format!("{src}:/p"), "busybox", "sleep", "600"]);
    let sub = shared.0.join("sub");
    assert!(std::process::Command::new("mount")
        .args(["-t", "tmpfs", "moat-test-sub", sub.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    std::fs::write(sub.join("marker"), b"x").unwrap();
    assert_eq!(r.ok(&["exec", "slave", "ls", "/p/sub"]), "marker\n");
    assert_eq!(r.ok(&["exec", "private", "ls", "/p/sub"]), "");
    let props: String = r.ok(&["inspect", "-f", "{{range .Mounts}}{{.Propagation}}{{end}}", "slave", "private"]);
    assert_eq!(props, "rslave\nrprivate\n");
    r.ok(&["rm", "-f", "slave", "private"]);
    // refused clearly: shared modes, a private source, rslave in a VM
    let e = r.fails(&["run", "--rm", "-v", &format!("{src}:/p:rshared"), "busybox", "true"]);
    assert!(e.contains("never propagate mounts back"), "{e}");
    let e =
        r.fails(&["run", "--rm", "-v", &format!("{}:/p:rslave", d.path().join("rel").display()), "busybox", "true"]);
    assert!(e.contains("which is private"), "{e}");
    let e = r.fails(&["create", "--isolation", "vm", "-v", &format!("{src}:/p:rslave"), "busybox", "true"]);
    assert!(e.contains("needs process isolation"), "{e}");
    drop(shared);
}
