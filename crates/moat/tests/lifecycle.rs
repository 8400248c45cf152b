//! Container lifecycle end to end, through the real CLI. Every test takes the
//! isolation type as a parameter; `modes!` instantiates it for both types.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::*;
use std::time::{Duration, Instant};

modes!(
    run_prints_and_propagates_exit_codes,
    pid_one_and_host_visibility,
    detached_logs_follow_and_tail,
    exec_env_workdir_user_and_codes,
    interactive_terminal_run_and_exec,
    stop_kill_rm_and_ps_states,
    errors_are_one_line,
    restart_policy_on_failure,
    binds_tmpfs_and_read_only,
    stdin_is_forwarded_and_closed,
);

fn run_prints_and_propagates_exit_codes(iso: &str) {
    let r = root_with_busybox();
    assert_eq!(r.ok(&["run", "--rm", "--isolation", iso, "busybox", "echo", "hi"]), "hi\n");
    let o = r.run(&["run", "--rm", "--isolation", iso, "busybox", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    // stderr is kept apart from stdout
    let o = r.run(&["run", "--rm", "--isolation", iso, "busybox", "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    // death by signal gives 128+N
    let o = r.run(&["run", "--rm", "--isolation", iso, "busybox", "sh", "-c", "sh -c 'kill -SEGV $$'; echo inner=$?"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "inner=139");
    r.ok(&["run", "-d", "--name", "sig", "--isolation", iso, "busybox", "sleep", "300"]);
    r.ok(&["kill", "sig"]);
    assert_eq!(r.ok(&["wait", "sig"]).trim(), "137");
    // --rm leaves nothing behind
    assert_eq!(r.ok(&["ps", "-a", "-q"]).lines().count(), 1);
}

fn pid_one_and_host_visibility(iso: &str) {
    // distinct per mode: both modes' tests run at the same time and look at the host's processes
    let secs = if iso == "process" { "301" } else { "402" };
    let r = root_with_busybox();
    let out = r.ok(&["run", "--rm", "--isolation", iso, "busybox", "cat", "/proc/1/cmdline"]);
    assert_eq!(out, "cat\0/proc/1/cmdline\0");
    let id = r.ok(&["run", "-d", "--name", "s", "--isolation", iso, "busybox", "sleep", secs]).trim().to_string();
    assert_eq!(id.len(), 64);
    let host = host_pids_matching(&format!("sleep {secs}"));
    let top = r.ok(&["top", "s"]);
    let row = top.lines().find(|l| l.contains(&format!("sleep {secs}"))).unwrap_or_else(|| panic!("top: {top}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "1", "PID inside the container: {top}");
    if iso == "process" {
        let hp: u32 = cols[3].parse().unwrap();
        assert!(host.contains(&hp), "host PID {hp} of {top} not among host's {host:?}");
    } else {
        assert!(host.is_empty(), "a VM container's process is visible on the host: {host:?}");
        assert_eq!(cols[3], "-", "no host PID inside a VM: {top}");
        let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "s"])).unwrap();
        let q = v[0]["VM"]["QemuPid"].as_u64().unwrap() as u32;
        let args = std::fs::read_to_string(format!("/proc/{q}/cmdline")).unwrap();
        assert!(args.starts_with("/usr/bin/qemu-system-x86_64") || args.contains("qemu-system"), "{args}");
        let uname = r.ok(&["exec", "s", "uname", "-r"]);
        assert_ne!(uname.trim(), std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim(), "guest kernel");
    }
    let ps = r.ok(&["exec", "s", "ps"]);
    assert!(ps.lines().any(|l| l.contains(&format!("sleep {secs}"))), "{ps}");
    r.ok(&["rm", "-f", "s"]);
    assert!(host_pids_matching(&format!("sleep {secs}")).iter().all(|p| !host.contains(p)), "sleep survived rm -f");
}

fn detached_logs_follow_and_tail(iso: &str) {
    let r = root_with_busybox();
    r.ok(&[
        "run",
        "-d",
        "--name",
        "l",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "echo one; echo err >&2; sleep 1; echo two",
    ]);
    // follow ends when the container exits, with every line
    let out = r.run(&["logs", "-f", "l"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(r.ok(&["logs", "--tail", "1", "l"]), "two\n");
    let ts = r.ok(&["logs", "-t", "l"]);
    assert!(ts.lines().all(|l| l.len() > 30 && l.as_bytes()[4] == b'-' && l.contains('T')), "{ts}");
    let ps = r.ok(&["ps", "-a", "--format", "{{.Names}} {{.State}} {{.Status}}"]);
    assert!(ps.starts_with("l exited Exited (0)"), "{ps}");
}

fn exec_env_workdir_user_and_codes(iso: &str) {
    let r = root_with_busybox();
    r.ok(&["run", "-d", "--name", "x", "-e", "FOO=bar", "--isolation", iso, "busybox", "sleep", "300"]);
    assert_eq!(r.ok(&["exec", "x", "sh", "-c", "echo $FOO"]), "bar\n");
    assert_eq!(r.ok(&["exec", "-e", "FOO=baz", "x", "sh", "-c", "echo $FOO"]), "baz\n");
    assert_eq!(r.ok(&["exec", "-w", "/tmp", "x", "pwd"]), "/tmp\n");
    assert_eq!(r.ok(&["exec", "-u", "nobody", "x", "id", "-u"]), "65534\n");
    assert!(r.ok(&["exec", "-u", "1234:99", "x", "id"]).starts_with("uid=1234 gid=99"));
    assert_eq!(r.run(&["exec", "x", "sh", "-c", "exit 3"]).status.code(), Some(3));
    // an exec that cannot start: 126, as dockerd records it (a run's is 127)
    let o = r.run(&["exec", "x", "no-such-binary"]);
    assert_eq!(o.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&o.stderr).contains("executable file not found"));
    r.ok(&["exec", "-d", "x", "sh", "-c", "echo detached > /tmp/d"]);
    let t0 = Instant::now();
    while r.run(&["exec", "x", "cat", "/tmp/d"]).stdout != b"detached\n" {
        assert!(t0.elapsed() < Duration::from_secs(10), "exec -d never ran");
    }
    r.ok(&["rm", "-f", "x"]);
    let e = r.fails(&["exec", "x", "true"]);
    assert!(e.contains("No such container"), "{e}");
}

fn interactive_terminal_run_and_exec(iso: &str) {
    let r = root_with_busybox();
    let moat = env!("CARGO_BIN_EXE_moat");
    let root = r.path().display().to_string();
    let o = with_pty(
        &format!("{moat} --root {root} run --rm -it --isolation {iso} busybox sh -c 'tty; stty size; exit 4'"),
        None,
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{out}");
    // the whole output: a terminal inside, of the outer terminal's size
    assert_eq!(out, "/dev/pts/0\r\n31 97\r\n");
    r.ok(&["run", "-d", "--name", "t", "--isolation", iso, "busybox", "sleep", "300"]);
    let o =
        with_pty(&format!("{moat} --root {root} exec -it t sh"), Some("echo in-$((6*7)); tty; stty size; exit 6\n"));
    let out = String::from_utf8_lossy(&o.stdout);
    // the shell's prompt and echo of the typed line, then the whole output
    let lines: Vec<&str> = out.split("\r\n").collect();
    assert_eq!(lines[lines.len() - 4..], ["in-42", "/dev/pts/0", "31 97", ""], "{out:?}");
    assert_eq!(o.status.code(), Some(6), "{out}");
    r.ok(&["rm", "-f", "t"]);
}

fn stop_kill_rm_and_ps_states(iso: &str) {
    let r = root_with_busybox();
    r.ok(&["create", "--name", "c", "--isolation", iso, "busybox", "true"]);
    r.ok(&["run", "-d", "--name", "up", "--isolation", iso, "busybox", "sleep", "300"]);
    assert_eq!(
        r.run(&["run", "--name", "bad", "--isolation", iso, "busybox", "sh", "-c", "exit 2"]).status.code(),
        Some(2)
    );
    let ps = r.ok(&["ps", "-a"]);
    let shown = if iso == "vm" { "hyperv" } else { iso };
    let line = |n: &str| {
        ps.lines()
            .find(|l| l.split_whitespace().last() == Some(shown) && l.contains(&format!(" {n} ")))
            .map(str::to_string)
    };
    assert!(line("c").unwrap().contains("Created"), "{ps}");
    assert!(line("up").unwrap().contains("Up "), "{ps}");
    assert!(line("bad").unwrap().contains("Exited (2)"), "{ps}");
    assert_eq!(r.ok(&["ps", "-q"]).lines().count(), 1, "ps without -a shows running only");
    assert_eq!(r.ok(&["ps", "-a", "-q", "--filter", "status=exited"]).lines().count(), 1);
    let e = r.fails(&["rm", "up"]);
    assert!(e.contains("container is running"), "{e}");
    // sleep ignores SIGTERM as PID 1: stop waits -t seconds, then kills
    let t0 = Instant::now();
    r.ok(&["stop", "-t", "1", "up"]);
    assert!(t0.elapsed() < Duration::from_secs(20));
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "up"])).unwrap();
    assert_eq!(v[0]["State"]["Status"], "exited");
    assert_eq!(v[0]["State"]["ExitCode"], 137);
    assert_eq!(v[0]["HostConfig"]["Isolation"], if iso == "vm" { "hyperv" } else { iso });
    // a container that handles SIGTERM stops at once (once its trap is set)
    r.ok(&[
        "run",
        "-d",
        "--name",
        "term",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    let t0 = Instant::now();
    while r.ok(&["logs", "term"]) != "ready\n" {
        assert!(t0.elapsed() < Duration::from_secs(30), "term never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    r.ok(&["stop", "-t", "30", "term"]);
    assert!(t0.elapsed() < Duration::from_secs(20), "SIGTERM was not delivered");
    assert!(r.ok(&["inspect", "--", "term"]).contains("\"ExitCode\": 0"));
    // restart and rename
    r.ok(&["start", "up"]);
    r.ok(&["rename", "up", "up2"]);
    assert!(r.ok(&["ps"]).contains("up2"));
    r.ok(&["restart", "-t", "0", "up2"]);
    assert!(r.ok(&["ps"]).contains("up2"));
    r.ok(&["rm", "-f", "up2"]);
    let pruned = r.ok(&["container", "prune", "-f"]);
    assert!(pruned.contains("Deleted Containers"), "{pruned}");
    assert!(r.ok(&["ps", "-a", "-q"]).is_empty());
    assert_eq!(std::fs::read_dir(r.path().join("containers")).unwrap().count(), 0, "container dirs removed");
}

fn errors_are_one_line(iso: &str) {
    let r = root_with_busybox();
    r.ok(&["create", "--name", "dup", "--isolation", iso, "busybox", "true"]);
    let e = r.fails(&["create", "--name", "dup", "--isolation", iso, "busybox", "true"]);
    assert!(e.contains("is already in use"), "{e}");
    let e = r.fails(&["run", "--pull", "never", "--isolation", iso, "nosuchimage", "true"]);
    assert!(e.contains("No such image: nosuchimage"), "{e}");
    let o = r.run(&["run", "--rm", "--isolation", iso, "busybox", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("executable file not found in $PATH") && err.trim().lines().count() == 1, "{err}");
    let e = r.fails(&["run", "--isolation", "kvm", "busybox", "true"]);
    assert!(e.contains("invalid isolation"), "{e}");
    let e = r.fails(&["run", "--memory", "lots", "busybox", "true"]);
    assert!(e.contains("invalid size"), "{e}");
    let e = r.fails(&["run", "-v", "relative/dir:/x", "busybox", "true"]);
    assert!(e.contains("use absolute path"), "{e}");
    let e = r.fails(&["stop", "ghost"]);
    assert!(e.contains("No such container: ghost"), "{e}");
    let e = r.fails(&["run", "--restart", "sometimes", "busybox", "true"]);
    assert!(e.contains("restart policy"), "{e}");
    let e = r.fails(&["run", "--cap-add", "CAP_MAGIC", "busybox", "true"]);
    assert!(e.contains("unknown capability"), "{e}");
}

fn restart_policy_on_failure(iso: &str) {
    let r = root_with_busybox();
    r.ok(&[
        "run",
        "-d",
        "--name",
        "rp",
        "--restart",
        "on-failure:2",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "echo run; exit 3",
    ]);
    // the shim restarts it twice, then gives up
    let t0 = Instant::now();
    loop {
        let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "rp"])).unwrap();
        if v[0]["State"]["Status"] == "exited" && v[0]["RestartCount"] == 2 {
            assert_eq!(v[0]["State"]["ExitCode"], 3, "{v}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "restart policy did not finish: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(r.ok(&["logs", "rp"]), "run\nrun\nrun\n");
    // always: restarts after exit 0 too, and stop stands it down
    r.ok(&["run", "-d", "--name", "ra", "--restart", "always", "--isolation", iso, "busybox", "sh", "-c", "sleep 0.2"]);
    let t0 = Instant::now();
    loop {
        let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "ra"])).unwrap();
        if v[0]["RestartCount"].as_u64().unwrap() >= 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "always policy did not restart: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
    r.ok(&["stop", "ra"]);
    let state = || r.ok(&["inspect", "-f", "{{.State.Status}} {{.RestartCount}}", "ra"]);
    let stopped = state();
    assert!(stopped.starts_with("exited "), "{stopped}");
    // it stays down past the longest back-off a restart could still be
    // waiting out (100 ms doubling per restart: a few restarts in, < 2 s)
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(state(), stopped, "stop stood the policy down for good");
}

fn binds_tmpfs_and_read_only(iso: &str) {
    let r = root_with_busybox();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from host\n").unwrap();
    let v = format!("{}:/data", host.path().display());
    let vro = format!("{}:/ro:ro", host.path().display());
    let out = r.ok(&[
        "run",
        "--rm",
        "--isolation",
        iso,
        "-v",
        &v,
        "-v",
        &vro,
        "--tmpfs",
        "/scratch:size=1m",
        "busybox",
        "sh",
        "-c",
        "cat /data/in.txt; echo written > /data/out.txt; touch /ro/x 2>/dev/null || echo ro-refused; \
         grep ' /scratch ' /proc/mounts | cut -d' ' -f3; echo s > /scratch/f && cat /scratch/f",
    ]);
    assert_eq!(out, "from host\nro-refused\ntmpfs\ns\n");
    assert_eq!(std::fs::read_to_string(host.path().join("out.txt")).unwrap(), "written\n");
    let out = r.ok(&[
        "run",
        "--rm",
        "--read-only",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "touch /x 2>/dev/null || echo refused; touch /tmp/y 2>/dev/null || echo tmp-refused",
    ]);
    assert!(out.starts_with("refused\n"), "{out}");
    let out = r.ok(&[
        "run",
        "--rm",
        "--ulimit",
        "nofile=512:1024",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "ulimit -n; ulimit -Hn",
    ]);
    assert_eq!(out, "512\n1024\n");
    let out = r.ok(&[
        "run",
        "--rm",
        "--shm-size",
        "8m",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "df -k /dev/shm | tail -1",
    ]);
    assert!(out.split_whitespace().nth(1) == Some("8192"), "{out}");
    // the filesystem survives stop/start: each run appends to the same file
    let first = r.ok(&[
        "run",
        "--name",
        "keep",
        "--isolation",
        iso,
        "busybox",
        "sh",
        "-c",
        "echo kept >> /root/f; cat /root/f",
    ]);
    assert_eq!(first, "kept\n");
    assert_eq!(r.ok(&["start", "-a", "keep"]), "kept\nkept\n", "the second start sees the first one's file");
    assert_eq!(r.ok(&["run", "--rm", "--isolation", iso, "busybox", "cat", "/etc/hostname"]).len(), 13);
    r.ok(&["rm", "keep"]);
}

fn stdin_is_forwarded_and_closed(iso: &str) {
    let r = root_with_busybox();
    let mut c = r.cmd();
    c.args(["run", "--rm", "-i", "--isolation", iso, "busybox", "sh", "-c", "tr a-z A-Z; echo done"]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hello stdin\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "HELLO STDIN\ndone\n");
    assert!(o.status.success());
}
