//! Files in and out of containers (issue #12): `cp` both ways and as tar
//! streams, for running and stopped containers of both isolation types,
//! safe against links in the container; `diff`, `export`, `commit`,
//! `image history`.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::*;
use std::os::unix::fs::MetadataExt;

modes!(cp_both_ways_running_and_stopped, cp_stays_inside_the_container, diff_export_commit_history);

fn cp_both_ways_running_and_stopped(iso: &str) {
    let r = root_with_busybox();
    let host = tempfile::tempdir().unwrap();
    let h = |p: &str| host.path().join(p).display().to_string();
    r.ok(&["run", "-d", "--name", "box", "--isolation", iso, "busybox", "sh", "-c",
        "mkdir -p /data/sub && echo hello > /data/sub/f && chown 123:456 /data/sub/f && ln -sf /etc/passwd /data/pw && sleep 600"]);
    for _ in 0..100 {
        if r.run(&["exec", "box", "test", "-L", "/data/pw"]).status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // a directory into an existing host directory, then its contents only
    r.ok(&["cp", "box:/data", &h("")]);
    assert_eq!(std::fs::read_to_string(host.path().join("data/sub/f")).unwrap(), "hello\n");
    assert_eq!(std::fs::read_link(host.path().join("data/pw")).unwrap().display().to_string(), "/etc/passwd");
    std::fs::create_dir(host.path().join("contents")).unwrap();
    r.ok(&["cp", "box:/data/.", &h("contents")]);
    assert!(host.path().join("contents/sub/f").exists());
    // a file to a new name; -a keeps the owner, without it the caller owns it
    r.ok(&["cp", "box:/data/sub/f", &h("renamed")]);
    assert_eq!(std::fs::metadata(host.path().join("renamed")).unwrap().uid(), 0);
    r.ok(&["cp", "-a", "box:/data/sub/f", &h("kept")]);
    let m = std::fs::metadata(host.path().join("kept")).unwrap();
    assert_eq!((m.uid(), m.gid()), (123, 456));
    // -L follows the source link
    r.ok(&["cp", "-L", "box:/data/pw", &h("passwd")]);
    assert!(std::fs::read_to_string(host.path().join("passwd")).unwrap().contains("root:"));
    // host to container: a file into a directory, a directory to a new name
    std::fs::write(host.path().join("up.txt"), "up\n").unwrap();
    r.ok(&["cp", &h("up.txt"), "box:/tmp/"]);
    r.ok(&["cp", &h("data"), "box:/copied"]);
    assert_eq!(r.ok(&["exec", "box", "cat", "/tmp/up.txt", "/copied/sub/f"]), "up\nhello\n");
    assert_eq!(r.ok(&["exec", "box", "stat", "-c", "%u", "/tmp/up.txt"]), "0\n");
    // tar streams both ways
    let o = r.cmd().args(["cp", "box:/data/sub", "-"]).output().unwrap();
    assert!(o.status.success());
    let names: Vec<String> = tar::Archive::new(&o.stdout[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, vec!["sub/", "sub/f"]);
    let tarball = TarBuilder::new().file("streamed.txt", b"streamed\n").finish();
    let mut child = r.cmd().args(["cp", "-", "box:/tmp"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &tarball).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(r.ok(&["exec", "box", "cat", "/tmp/streamed.txt"]), "streamed\n");
    // Docker's refusals
    let e = r.fails(&["cp", "box:/nope", &h("x")]);
    assert!(e.contains("Could not find the file /nope"), "{e}");
    let e = r.fails(&["cp", "box:/data", &h("up.txt")]);
    assert!(e.contains("cannot copy a directory"), "{e}");
    let e = r.fails(&["cp", &h("up.txt"), "box:/no/such/dir/"]);
    assert!(e.contains("does not exist"), "{e}");
    let e = r.fails(&["cp", &h("up.txt"), &h("other")]);
    assert!(e.contains("at least one container"), "{e}");
    // a stopped container, both ways
    r.ok(&["stop", "-t", "0", "box"]);
    r.ok(&["cp", &h("up.txt"), "box:/while-stopped"]);
    r.ok(&["cp", "box:/copied/sub/f", &h("from-stopped")]);
    assert_eq!(std::fs::read_to_string(host.path().join("from-stopped")).unwrap(), "hello\n");
    r.ok(&["start", "box"]);
    assert_eq!(r.ok(&["exec", "box", "cat", "/while-stopped"]), "up\n");
    r.ok(&["rm", "-f", "box"]);
    // nothing of the stopped copies stayed mounted on the host
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mi.contains(r.path().to_str().unwrap()), "{mi}");
}

fn cp_stays_inside_the_container(iso: &str) {
    let r = root_with_busybox();
    let host = tempfile::tempdir().unwrap();
    let target = host.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let t = target.display().to_string();
    // links in the container aimed at the host's paths: absolute, relative, to /
    r.ok(&[
        "run",
        "-d",
        "--name",
        "evil",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        &format!("ln -s {t} /abs; ln -s ../../../../../../..{t} /rel; ln -s / /root-link; mkdir -p {t}; touch /ready; sleep 600"),
    ]);
    for _ in 0..100 {
        if r.run(&["exec", "evil", "test", "-e", "/ready"]).status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::write(host.path().join("payload"), "p").unwrap();
    let payload = host.path().join("payload").display().to_string();
    for dst in ["evil:/abs/", "evil:/rel/", &format!("evil:/root-link{t}/")] {
        r.ok(&["cp", &payload, dst]);
    }
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "nothing reached the host's directory");
    assert_eq!(r.ok(&["exec", "evil", "ls", &t]), "payload\n", "the copies landed inside the container");
    // reading through a link gets the container's file, never the host's
    std::fs::write(target.join("host-secret"), "secret").unwrap();
    let o = r.run(&["cp", "evil:/abs/host-secret", &host.path().join("leak").display().to_string()]);
    assert!(
        !o.status.success() && !host.path().join("leak").exists(),
        "read through a link: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // links copied out stay links on the host; nothing is written through them
    r.ok(&["exec", "evil", "sh", "-c", &format!("mkdir /out && ln -s {t} /out/l")]);
    let dest = host.path().join("dest");
    r.ok(&["cp", "evil:/out", &dest.display().to_string()]);
    assert!(std::fs::symlink_metadata(dest.join("l")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1, "only host-secret");
    r.ok(&["rm", "-f", "evil"]);
}

fn diff_export_commit_history(iso: &str) {
    let r = root_with_busybox();
    r.ok(&[
        "run",
        "--name",
        "changed",
        "--isolation",
        iso,
        "-e",
        "MARK=committed",
        "busybox",
        "sh",
        "-c",
        "echo new > /added; echo more >> /etc/passwd; rm /bin/vi; mkdir -p /opt/tool; echo t > /opt/tool/t",
    ]);
    let diff = r.ok(&["diff", "changed"]);
    let want = "A /added\nC /bin\nD /bin/vi\nC /etc\nC /etc/passwd\nA /opt\nA /opt/tool\nA /opt/tool/t\n";
    assert_eq!(diff, want, "bind targets (/etc/hosts, ...) and kernel filesystems are not changes");
    // export: the merged tree, changes included, without what was deleted
    let o = r.cmd().args(["export", "changed"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut files = std::collections::BTreeMap::new();
    for e in tar::Archive::new(&o.stdout[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        let mut s = String::new();
        if e.header().entry_type().is_file() {
            std::io::Read::read_to_string(&mut e, &mut s).unwrap_or(0);
        }
        files.insert(p, s);
    }
    assert_eq!(files["added"], "new\n");
    assert!(files["etc/passwd"].ends_with("more\n"));
    assert!(files.contains_key("bin/sh") && !files.contains_key("bin/vi"));
    // commit with -c and -m; the new image runs the changes in both types
    let id =
        r.ok(&["commit", "-m", "the message", "-a", "tester", "-c", "CMD [\"cat\", \"/added\"]", "changed", "snap:1"]);
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(r.ok(&["run", "--rm", "--isolation", iso, "snap:1"]), "new\n");
    let out = r.ok(&[
        "run",
        "--rm",
        "--isolation",
        iso,
        "snap:1",
        "sh",
        "-c",
        "echo $MARK; test -e /bin/vi || echo no-vi; cat /opt/tool/t",
    ]);
    assert_eq!(out, "committed\nno-vi\nt\n");
    let hist = r.ok(&["image", "history", "--format", "{{.CreatedBy}}|{{.Comment}}", "snap:1"]);
    assert!(
        hist.starts_with("sh -c echo new > /added;") && hist.lines().next().unwrap().ends_with("|the message"),
        "{hist}"
    );
    assert_eq!(hist.lines().count(), 2, "busybox's layer and the commit: {hist}");
    let q = r.ok(&["history", "-q", "snap:1"]);
    assert_eq!(q.lines().collect::<Vec<_>>()[1], "<missing>");
    let author = r.ok(&["image", "inspect", "-f", "{{.Author}}|{{.Comment}}", "snap:1"]);
    assert_eq!(author.trim(), "tester|the message");
    // a running container is paused for the commit and keeps running
    r.ok(&["run", "-d", "--name", "live", "--isolation", iso, "busybox", "sh", "-c", "echo x > /live; sleep 600"]);
    for _ in 0..100 {
        if r.ok(&["diff", "live"]).contains("A /live") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    r.ok(&["commit", "live", "snap:live"]);
    assert_eq!(r.ok(&["inspect", "-f", "{{.State.Status}}", "live"]), "running\n");
    assert_eq!(r.ok(&["run", "--rm", "--isolation", iso, "snap:live", "cat", "/live"]), "x\n");
    r.ok(&["rm", "-f", "live", "changed"]);
}
