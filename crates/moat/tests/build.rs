//! `moat build`: Dockerfiles built in both isolation types, the layer
//! cache, failures and kills, the Docker API's `/build` through the real
//! docker CLI, compose and docker-py, and a differential test against
//! Debian's buildah over the suite's own corpus of Dockerfiles.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A context directory with these files.
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = d.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    d
}

const APP: &str = r#"ARG BASE=busybox
FROM ${BASE} AS build
ARG WHO=world
ENV GREETING="hello ${WHO}"
COPY . /ctx/
RUN <<EOF
echo "$GREETING" > /report
ls /ctx >> /report
EOF
RUN uname -r > /kernel
FROM ${BASE}
COPY --from=build /report /kernel /app/
USER 1000
WORKDIR /work
RUN id -u > /work/id && pwd >> /work/id
ENTRYPOINT ["cat"]
CMD ["/app/report", "/app/kernel", "/work/id"]
"#;

fn app_context() -> tempfile::TempDir {
    context(&[
        ("Dockerfile", APP),
        ("keep.txt", "kept\n"),
        ("secret.txt", "must not be copied\n"),
        (".dockerignore", "secret.txt\n.dockerignore\n"),
    ])
}

/// `moat ARGS` fails with one line that contains `msg`.
fn fails_with(r: &Root, args: &[&str], msg: &str) {
    let o = r.run(args);
    assert_fails_one_line(&o, &format!("{args:?}"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(msg), "{args:?}: {err}");
}

/// `out` with every 12-hex-digit word as `<id>`.
fn masked(out: &str) -> String {
    let mut s = String::new();
    for (i, line) in out.split('\n').enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let words: Vec<String> = line
            .split(' ')
            .map(|w| {
                if w.len() == 12 && w.chars().all(|c| c.is_ascii_hexdigit()) {
                    "<id>".to_string()
                } else {
                    w.to_string()
                }
            })
            .collect();
        s.push_str(&words.join(" "));
    }
    s
}

fn host_kernel() -> String {
    String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap().trim().to_string()
}

/// The step numbers whose result came from the cache, and all step numbers
/// that made or reused an image (not FROM, not ARG before FROM).
fn cached_steps(out: &str) -> (Vec<usize>, Vec<usize>) {
    let lines: Vec<&str> = out.lines().collect();
    let (mut cached, mut all) = (Vec::new(), Vec::new());
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.strip_prefix("Step ") else { continue };
        let n: usize = rest.split('/').next().unwrap().parse().unwrap();
        let ins = rest.split(" : ").nth(1).unwrap_or("");
        if ins.starts_with("FROM") || (ins.starts_with("ARG") && n == 1) {
            continue;
        }
        all.push(n);
        if lines.get(i + 1) == Some(&" ---> Using cache") {
            cached.push(n);
        }
    }
    (cached, all)
}

#[test]
fn multi_stage_dockerfile_builds_and_runs_in_both_isolation_types_hyperv() {
    let r = root_with_busybox();
    let ctx = app_context();
    let c = ctx.path().to_str().unwrap();
    for (iso, kernel) in [("process", host_kernel()), ("hyperv", guest_kernel_release())] {
        let tag = format!("app:{iso}");
        let out = r.ok(&["build", "--isolation", iso, "--build-arg", "WHO=moat", "-t", &tag, c]);
        assert!(out.contains(" ---> Running in "), "{out}");
        assert!(out.ends_with(&format!("Successfully tagged {tag}\n")), "{out}");
        let ran = r.ok(&["run", "--rm", "--isolation", iso, &tag]);
        // ARG and ENV substitution, the heredoc, .dockerignore (secret.txt
        // and itself left out), the RUN step's kernel, USER and WORKDIR
        assert_eq!(ran, format!("hello moat\nDockerfile\nkeep.txt\n{kernel}\n1000\n/work\n"), "{iso}");
    }
    assert_ne!(host_kernel(), guest_kernel_release(), "the two kernels must differ for the check to mean anything");
    // the image's config as the Dockerfile says
    let cfg = r.ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.User}} {{.Config.WorkingDir}}",
        "app:process",
    ]);
    assert_eq!(cfg, "[\"cat\"] [\"/app/report\",\"/app/kernel\",\"/work/id\"] 1000 /work\n");

    // a rebuild with no change: every step from the cache, the same image
    let id = r.ok(&["image", "inspect", "--format", "{{.Id}}", "app:process"]);
    let again = r.ok(&["build", "--isolation", "process", "--build-arg", "WHO=moat", "-t", "app:process", c]);
    let (cached, all) = cached_steps(&again);
    assert_eq!(cached, all, "{again}");
    assert_eq!(all.len(), 11, "{again}");
    assert_eq!(r.ok(&["image", "inspect", "--format", "{{.Id}}", "app:process"]), id);
    // the same with -q: only the ID
    assert_eq!(r.ok(&["build", "-q", "--isolation", "process", "--build-arg", "WHO=moat", c]), id);

    // one COPY source changes: that step and the ones after it in its stage
    // run again; the final stage's steps see the same files and stay cached
    std::fs::write(ctx.path().join("keep.txt"), "changed\n").unwrap();
    let changed = r.ok(&["build", "--isolation", "process", "--build-arg", "WHO=moat", "-t", "app:process", c]);
    let (cached, all) = cached_steps(&changed);
    let rebuilt: Vec<usize> = all.iter().copied().filter(|n| !cached.contains(n)).collect();
    assert_eq!(rebuilt, vec![5, 6, 7], "COPY . /ctx/, and the two RUN steps after it:\n{changed}");
    // a changed build arg invalidates from the first step that sees it
    let other = r.ok(&["build", "--isolation", "process", "--build-arg", "WHO=you", "-t", "app:you", c]);
    let (cached, _) = cached_steps(&other);
    assert_eq!(cached, Vec::<usize>::new(), "ARG WHO is step 3, before everything else:\n{other}");
    assert_eq!(r.ok(&["run", "--rm", "app:you"]).lines().next(), Some("hello you"));
    // --no-cache runs everything again
    let fresh = r.ok(&["build", "--no-cache", "--isolation", "process", "--build-arg", "WHO=moat", c]);
    assert!(!fresh.contains("Using cache"), "{fresh}");

    // the cache never keeps an image alive the user removed
    let final_id = r.ok(&["image", "inspect", "--format", "{{.Id}}", "app:you"]).trim().to_string();
    r.ok(&["rmi", "app:you"]);
    let all_ids = r.ok(&["images", "-a", "-q", "--no-trunc"]);
    assert!(!all_ids.contains(&final_id), "{final_id} still listed:\n{all_ids}");
    let rebuilt = r.ok(&["build", "--isolation", "process", "--build-arg", "WHO=you", "-t", "app:you", c]);
    let (cached, all) = cached_steps(&rebuilt);
    assert_eq!(all.iter().filter(|n| !cached.contains(n)).copied().collect::<Vec<_>>(), vec![*all.last().unwrap()]);
    // intermediate images stay out of `images` (Docker's), `-a` shows them
    let plain = r.ok(&["images", "-q"]).lines().count();
    let with_all = r.ok(&["images", "-a", "-q"]).lines().count();
    assert!(with_all > plain, "{plain} vs {with_all}");
    // builder prune forgets the cache and what only it kept
    let pruned = r.ok(&["builder", "prune", "-f"]);
    assert!(pruned.starts_with("Deleted build cache objects:\n"), "{pruned}");
    let after = r.ok(&["build", "--isolation", "process", "--build-arg", "WHO=moat", c]);
    assert!(!after.contains("Using cache"), "{after}");
    let sys = r.ok(&["system", "prune", "-f"]);
    assert!(sys.contains("Deleted build cache objects: "), "{sys}");
    // tagged images survive both
    assert_eq!(r.ok(&["run", "--rm", "app:process"]).lines().next(), Some("hello moat"));
}

#[test]
fn failed_and_killed_builds_leave_nothing_running_hyperv() {
    let r = root_with_busybox();
    let before = r.ok(&["images", "-a", "-q", "--no-trunc"]);
    let ctx = context(&[("Dockerfile", "FROM busybox\nRUN echo failing && exit 7\nCMD [\"true\"]\n")]);
    let o = r.run(&["build", "-t", "bad", ctx.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(
        masked(&String::from_utf8_lossy(&o.stdout)),
        "Step 1/3 : FROM busybox\n ---> <id>\nStep 2/3 : RUN echo failing && exit 7\n ---> Running in <id>\nfailing\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "Error: step 2/3 (RUN echo failing && exit 7): The command '/bin/sh -c echo failing && exit 7' returned a non-zero code: 7\n"
    );
    assert!(r.fails(&["image", "inspect", "bad"]).contains("No such image"));
    assert_eq!(r.ok(&["images", "-a", "-q", "--no-trunc"]), before, "a failed build adds no image");
    assert_eq!(r.ok(&["ps", "-q"]), "");

    // SIGKILL of the builder mid-RUN, in both isolation types: the step's
    // container is killed by its shim, nothing keeps running
    for iso in ["process", "hyperv"] {
        let marker = format!("moat-build-kill-{iso}-{}", std::process::id());
        // the marker reaches the step's environment as a build arg, so the
        // host can find the step's process of a process-isolated build
        let ctx = context(&[("Dockerfile", "FROM busybox\nARG M\nRUN echo started && exec sleep 300\n")]);
        let mut child = r
            .cmd()
            .args(["build", "--isolation", iso, "--build-arg", &format!("M={marker}"), ctx.path().to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let l = lines.next().expect("build output ended before the step started").unwrap();
            if l == "started" {
                break;
            }
        }
        let running = r.ok(&["ps", "-q", "--no-trunc"]);
        let id = running.trim().to_string();
        assert_eq!(id.len(), 64, "the step's container runs: {running}");
        let qemu = format!("-name moat-{}", &id[..12]);
        // positive control: the step is there on the host before the kill
        match iso {
            "process" => assert_eq!(pids_with_env(&marker).len(), 1),
            _ => assert_eq!(host_pids_matching(&qemu).len(), 1, "the step's QEMU runs"),
        }
        child.kill().unwrap();
        child.wait().unwrap();
        eventually(&format!("{iso}: the step's container stops"), || r.ok(&["ps", "-q"]).is_empty());
        eventually(&format!("{iso}: no process of the step is left"), || {
            pids_with_env(&marker).is_empty()
                && host_pids_matching(&qemu).is_empty()
                && host_pids_matching(&id).is_empty()
        });
        assert!(cgroups_of(&id).is_empty(), "{iso}: cgroups left: {:?}", cgroups_of(&id));
    }
    // the next build succeeds
    let ok = context(&[("Dockerfile", "FROM busybox\nRUN echo fine > /f\n")]);
    let out = r.ok(&["build", "-t", "good", ok.path().to_str().unwrap()]);
    assert!(out.ends_with("Successfully tagged good:latest\n"), "{out}");
    // a Dockerfile moat cannot read: one line, the line number
    let bad = context(&[("Dockerfile", "FROM busybox\nBOGUS x\n")]);
    fails_with(
        &r,
        &["build", bad.path().to_str().unwrap()],
        "dockerfile parse error on line 2: unknown instruction: BOGUS",
    );
    fails_with(&r, &["build", "-f", "nope", bad.path().to_str().unwrap()], "Cannot locate specified Dockerfile: nope");
}

/// Every file of an image as `moat export` of a container of it writes them.
fn rootfs(r: &Root, image: &str) -> BTreeMap<String, String> {
    let id = r.ok(&["create", image, "true"]).trim().to_string();
    let out = r.cmd().args(["export", &id]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    r.ok(&["rm", &id]);
    tar_listing(&out.stdout)
}

/// The config fields the differential test compares, empty ones absent.
fn config_fields(v: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for k in BUILD_CONFIG_FIELDS.iter().copied() {
        let mut x = v.get(k).cloned().unwrap_or(serde_json::Value::Null);
        if let Some(m) = x.as_object_mut() {
            m.remove("io.buildah.version");
        }
        let empty = match &x {
            serde_json::Value::Null => true,
            serde_json::Value::String(s) => s.is_empty(),
            serde_json::Value::Array(a) => a.is_empty(),
            serde_json::Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !empty {
            out.insert(k.to_string(), x);
        }
    }
    out
}

/// Differences between buildah 1.28 and Docker that the comparison allows,
/// each with Docker's behaviour as the reference (docs/build.md).
fn known_difference(entry: &str, what: &str) -> bool {
    // buildah's RUN leaves the mount points of its own /etc files and /run
    // in the layer; Docker's init layer never is part of an image
    if ["FILE etc/hostname", "FILE etc/hosts", "FILE etc/resolv.conf", "FILE run"].contains(&what) {
        return true;
    }
    match entry {
        // Docker expands a port range into its ports; buildah keeps "8000-8001/tcp"
        "10-expose-volume-label-stopsignal" => what == "CONFIG ExposedPorts",
        // with `# escape=` a backslash is an ordinary character (Docker's
        // reference: `c:\`); buildah drops it
        "14-escape-continuation" => what == "FILE p" || what == "CONFIG Env",
        _ => false,
    }
}

#[test]
fn differential_against_buildah_over_the_corpus() {
    assert!(Path::new("/usr/bin/buildah").exists(), "buildah missing: make test installs it");
    let r = root_with_busybox();
    let bh = tempfile::tempdir().unwrap();
    let buildah = || {
        let mut c = Command::new("buildah");
        c.arg("--root").arg(bh.path().join("root")).arg("--runroot").arg(bh.path().join("run"));
        c.args(["--storage-driver", "vfs"]).stdin(Stdio::null());
        c
    };
    let run = |mut c: Command, what: &str| -> String {
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mut c = buildah();
    c.args(["pull", "-q"]).arg(format!("docker-archive:{}", busybox_archive().0.display()));
    run(c, "buildah pull");
    let entries = corpus_entries();
    assert!(entries.len() >= 15, "{entries:?}");
    let mut compared = 0;
    let mut differences = Vec::new();
    for entry in &entries {
        let tag = entry.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-').to_string();
        let ctx = corpus_context(entry);
        let c_path = ctx.path().to_str().unwrap();
        r.ok(&["build", "-q", "--isolation", "process", "-t", &tag, c_path]);
        if entry == "20-heredoc" {
            // buildah 1.28 has no here-documents: checked against what Docker makes
            let out = r.ok(&["run", "--rm", &tag, "cat", "/hd", "/cat-hd", "/copied"]);
            assert_eq!(out, "from heredoc\nsecond line\ninline /root\ncopied content\n");
            continue;
        }
        let mut c = buildah();
        c.args(["bud", "-q", "--format", "docker", "--isolation", "chroot", "-t"])
            .arg(format!("localhost/{tag}"))
            .arg(c_path);
        run(c, &format!("buildah bud {entry}"));
        let mut c = buildah();
        c.args(["push", "-q"])
            .arg(format!("localhost/{tag}"))
            .arg(format!("docker-archive:{}/bh.tar:bh-{tag}:latest", ctx.path().display()));
        run(c, "buildah push");
        r.ok(&["load", "-q", "-i", &format!("{}/bh.tar", ctx.path().display())]);
        // files: both listed by the same moat export
        let (ours, theirs) = (rootfs(&r, &tag), rootfs(&r, &format!("bh-{tag}")));
        for k in ours.keys().chain(theirs.keys()).collect::<std::collections::BTreeSet<_>>() {
            if ours.get(k) != theirs.get(k) {
                let what = format!("FILE {k}");
                if !known_difference(entry, &what) {
                    differences.push(format!("{entry}: {what}: moat {:?} buildah {:?}", ours.get(k), theirs.get(k)));
                }
            }
        }
        // config: ours from moat, buildah's from buildah itself (its
        // docker-archive export drops Healthcheck)
        let ours: serde_json::Value =
            serde_json::from_str(&r.ok(&["image", "inspect", "--format", "{{json .Config}}", &tag])).unwrap();
        let mut c = buildah();
        c.args(["inspect", "--type", "image"]).arg(format!("localhost/{tag}"));
        let theirs: serde_json::Value = serde_json::from_str(&run(c, "buildah inspect")).unwrap();
        let (ours, theirs) = (config_fields(&ours), config_fields(&theirs["Docker"]["config"]));
        for k in ours.keys().chain(theirs.keys()).collect::<std::collections::BTreeSet<_>>() {
            if ours.get(k) != theirs.get(k) {
                let what = format!("CONFIG {k}");
                if !known_difference(entry, &what) {
                    differences.push(format!("{entry}: {what}: moat {:?} buildah {:?}", ours.get(k), theirs.get(k)));
                }
            }
        }
        compared += 1;
    }
    assert!(differences.is_empty(), "moat and buildah differ:\n{}", differences.join("\n"));
    assert_eq!(compared, entries.len() - 1);
    // the ONBUILD child really ran its base's triggers
    assert_eq!(r.ok(&["run", "--rm", "onbuild-child", "cat", "/seen"]), "triggered\n");
    let mut c = buildah();
    c.args(["rmi", "--all", "--force"]);
    let _ = c.output();
}

#[test]
fn docker_cli_compose_and_docker_py_build_through_the_api() {
    let r = root_with_busybox();
    let s = ApiServer::start(&r);
    let ctx = app_context();
    let c = ctx.path().to_str().unwrap();
    let ours = r.ok(&["build", "-q", "--build-arg", "WHO=api", c]).trim().to_string();
    // the classic builder's API, through the real docker CLI, from scratch
    let mut cmd = s.docker_cmd();
    cmd.env("DOCKER_BUILDKIT", "0").args(["build", "--no-cache", "--build-arg", "WHO=api", "-t", "viadocker", c]);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Step 5/14 : COPY . /ctx/\n"), "{out}");
    assert!(out.ends_with("Successfully tagged viadocker:latest\n"), "{out}");
    // the same image as moat's own build: the same files, the same config
    assert_eq!(rootfs(&r, "viadocker"), rootfs(&r, &ours));
    let cfg = |i: &str| r.ok(&["image", "inspect", "--format", "{{json .Config}}", i]);
    assert_eq!(cfg("viadocker"), cfg(&ours));
    assert_eq!(r.ok(&["run", "--rm", "viadocker"]), r.ok(&["run", "--rm", &ours]));
    // and with the cache, the very same image ID
    let mut cmd = s.docker_cmd();
    cmd.env("DOCKER_BUILDKIT", "0").args(["build", "-q", "--build-arg", "WHO=api", c]);
    let o = cmd.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), ours);
    // a failing step: the docker CLI's error and exit status
    let bad = context(&[("Dockerfile", "FROM busybox\nRUN exit 3\n")]);
    let mut cmd = s.docker_cmd();
    cmd.env("DOCKER_BUILDKIT", "0").args(["build", bad.path().to_str().unwrap()]);
    let o = cmd.output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("The command '/bin/sh -c exit 3' returned a non-zero code: 3"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // compose: `up --build` of a service with `build:`
    let plugin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("cli-plugins/docker-compose");
    assert!(plugin.exists(), "{} is missing: run make deps", plugin.display());
    std::fs::create_dir_all(s.docker_config.path().join("cli-plugins")).unwrap();
    std::os::unix::fs::symlink(&plugin, s.docker_config.path().join("cli-plugins/docker-compose")).unwrap();
    let proj = context(&[
        ("compose.yaml", "services:\n  app:\n    build: ./app\n"),
        ("app/Dockerfile", "FROM busybox\nCOPY msg /msg\nCMD [\"cat\", \"/msg\"]\n"),
        ("app/msg", "from compose\n"),
    ]);
    let compose = |args: &[&str]| {
        let mut c = s.docker_cmd();
        c.current_dir(proj.path()).env("DOCKER_BUILDKIT", "0").env("COMPOSE_BAKE", "false");
        c.args(["compose", "-p", "mtb"]).args(args).output().unwrap()
    };
    let o = compose(&["up", "--build", "--abort-on-container-exit"]);
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{all}");
    assert!(all.contains("app-1  | from compose"), "{all}");
    assert!(all.contains("Successfully tagged mtb-app:latest"), "{all}");
    let o = compose(&["down"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // docker-py: images.build(path=...) returns the image and the log
    let py = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("pyvenv/bin/python");
    let script = format!(
        "import docker\nc = docker.DockerClient(base_url='unix://{}')\nimg, logs = c.images.build(path='{c}', tag='pybuilt:1', buildargs={{'WHO': 'api'}})\nprint(img.id)\nprint(sorted(img.tags))\nprint([l['stream'] for l in logs if 'stream' in l][-1].strip())\n",
        s.sock.display()
    );
    let o = Command::new(&py).arg("-c").arg(&script).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{ours}\n['pybuilt:1']\nSuccessfully tagged pybuilt:1\n"));
    // the API's prune
    let pruned = s.ok(&["builder", "prune", "-f"]);
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
}

/// Serves `body` at every path on 127.0.0.1 for `n` requests; returns the
/// base URL.
fn serve_http(body: &'static str, n: usize) -> String {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(n) {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    format!("http://{addr}")
}

#[test]
fn build_inputs_targets_labels_args_and_urls() {
    let r = root_with_busybox();
    let ctx = app_context();
    let c = ctx.path().to_str().unwrap();
    // --target, --label, --iidfile
    let iid = ctx.path().join("iid");
    r.ok(&[
        "build",
        "-q",
        "--target",
        "build",
        "--label",
        "team=infra",
        "--iidfile",
        iid.to_str().unwrap(),
        "-t",
        "stage:build",
        c,
    ]);
    let id = std::fs::read_to_string(&iid).unwrap();
    assert_eq!(r.ok(&["image", "inspect", "--format", "{{.Id}}", "stage:build"]).trim(), id);
    assert_eq!(r.ok(&["run", "--rm", "stage:build", "cat", "/report"]), "hello world\nDockerfile\nkeep.txt\n");
    assert_eq!(
        r.ok(&["image", "inspect", "--format", "{{json .Config.Labels}}", "stage:build"]),
        "{\"team\":\"infra\"}\n"
    );
    fails_with(&r, &["build", "--target", "nope", c], "failed to reach build target nope in Dockerfile");
    fails_with(&r, &["build", "--platform", "linux/arm64", c], "cannot build for linux/arm64");
    // -f with a path outside the context, and a Dockerfile alone on stdin
    let other = tempfile::tempdir().unwrap();
    let df = other.path().join("Other.dockerfile");
    std::fs::write(&df, "FROM busybox\nCOPY keep.txt /k\n").unwrap();
    r.ok(&["build", "-q", "-f", df.to_str().unwrap(), "-t", "outside", c]);
    assert_eq!(r.ok(&["run", "--rm", "outside", "cat", "/k"]), "kept\n");
    // a proxy build arg reaches RUN without an ARG and stays out of the history
    let mut child = r
        .cmd()
        .args(["build", "-q", "--build-arg", "HTTP_PROXY=http://proxy.invalid:3128", "-t", "stdin", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"FROM busybox\nRUN echo \"$HTTP_PROXY\" > /p\n").unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(r.ok(&["run", "--rm", "stdin", "cat", "/p"]), "http://proxy.invalid:3128\n");
    assert!(!r.ok(&["history", "--no-trunc", "stdin"]).contains("proxy.invalid"));
    // a tar context on stdin
    let tarball = Command::new("tar").arg("-C").arg(ctx.path()).args(["-cf", "-", "."]).output().unwrap().stdout;
    let mut child = r
        .cmd()
        .args(["build", "-q", "-t", "fromtar", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tarball).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(r.ok(&["run", "--rm", "fromtar"]).lines().next(), Some("hello world"));
    // ADD of a URL: fetched when the build has a network, refused without
    let url = serve_http("fetched body\n", 1);
    let add = context(&[("Dockerfile", &format!("FROM busybox\nADD {url}/file.txt /dl/\n"))]);
    fails_with(
        &r,
        &["build", "--network", "none", add.path().to_str().unwrap()],
        "the build's network is none, so no URL is fetched",
    );
    r.ok(&["build", "-q", "-t", "fetched", add.path().to_str().unwrap()]);
    assert_eq!(r.ok(&["run", "--rm", "fetched", "cat", "/dl/file.txt"]), "fetched body\n");
    assert_eq!(r.ok(&["run", "--rm", "fetched", "stat", "-c", "%a", "/dl/file.txt"]), "600\n");
    // COPY of a path outside the context is refused, a missing one named
    let bad = context(&[("Dockerfile", "FROM busybox\nCOPY ../x /x\n")]);
    fails_with(&r, &["build", bad.path().to_str().unwrap()], "forbidden path outside the build context: ../x");
    let bad = context(&[("Dockerfile", "FROM busybox\nCOPY missing /x\n")]);
    fails_with(
        &r,
        &["build", bad.path().to_str().unwrap()],
        "file not found in build context or excluded by .dockerignore: stat missing",
    );
}
