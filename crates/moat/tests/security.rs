//! Security defaults, asserted from inside real containers by the probe, and
//! resource limits on the host's cgroup layout (v1 or v2).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

fn probe(r: &Root, extra: &[&str]) -> std::collections::HashMap<String, String> {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(extra);
    args.push("probe");
    let out = r.ok(&args);
    probe_map(&out)
}

fn root_with_probe() -> Root {
    let r = Root::new();
    r.ok(&["load", "-q", "-i", probe_archive().to_str().unwrap()]);
    r
}

/// Docker's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID
/// SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

#[test]
fn default_capabilities_nnp_and_seccomp() {
    let r = root_with_probe();
    let p = probe(&r, &[]);
    assert_eq!(p["CapEff"], DOCKER_DEFAULT_CAPS);
    assert_eq!(p["CapPrm"], DOCKER_DEFAULT_CAPS);
    assert_eq!(p["CapBnd"], DOCKER_DEFAULT_CAPS);
    assert_eq!(p["CapInh"], "0000000000000000");
    assert_eq!(p["CapAmb"], "0000000000000000");
    assert_eq!(p["NoNewPrivs"], "0", "no_new_privs is off by default, like Docker");
    assert_eq!(p["Seccomp"], "2", "a seccomp filter is installed without no_new_privs");
    for call in [
        "keyctl",
        "unshare_user",
        "mount",
        "kexec_load",
        "init_module",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "ptrace",
        "open_by_handle_at",
    ] {
        assert_eq!(p[&format!("sys.{call}")], "EPERM", "{call} must be refused: {p:?}");
    }
    // the filter, not just missing capabilities, is what refuses them
    let u = probe(&r, &["--security-opt", "seccomp=unconfined"]);
    assert_eq!(u["Seccomp"], "0");
    assert_eq!(u["sys.keyctl"], "ok", "{u:?}");
    assert_eq!(u["sys.unshare_user"], "ok", "{u:?}");
    // the probe attaches to its own child: the kernel allows it, the filter does not
    assert_eq!(u["sys.ptrace"], "ok", "{u:?}");
    // a user profile in docker's format
    let prof = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        prof.path(),
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let spec = format!("seccomp={}", prof.path().display());
    let o = r.run(&["run", "--rm", "--security-opt", &spec, "--entrypoint", "sh", "probe", "-c", "mkdir /tmp/x"]);
    assert!(!o.status.success(), "mkdir must fail under the custom profile");
    assert!(String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"));
    let o = r.run(&["run", "--rm", "--entrypoint", "sh", "probe", "-c", "mkdir /tmp/x"]);
    assert!(o.status.success(), "mkdir works under the default profile");
}

#[test]
fn cap_add_drop_privileged_and_user() {
    let r = root_with_probe();
    let p = probe(&r, &["--cap-drop", "ALL", "--cap-add", "NET_ADMIN"]);
    assert_eq!(p["CapEff"], "0000000000001000");
    let p = probe(&r, &["--cap-drop", "CHOWN"]);
    assert_eq!(
        u64::from_str_radix(&p["CapEff"], 16).unwrap(),
        u64::from_str_radix(DOCKER_DEFAULT_CAPS, 16).unwrap() & !1
    );
    let p = probe(&r, &["--privileged"]);
    assert!(u64::from_str_radix(&p["CapEff"], 16).unwrap() > 0xffff_ffff, "all capabilities: {p:?}");
    assert_eq!(p["Seccomp"], "0");
    assert_eq!(p["NoNewPrivs"], "0");
    let p = probe(&r, &["--user", "nobody"]);
    assert_eq!(p["CapEff"], "0000000000000000", "non-root gets no effective capabilities");
    assert_eq!(p["CapBnd"], DOCKER_DEFAULT_CAPS);
}

#[test]
fn masked_and_read_only_paths_fds_and_cwd() {
    let r = root_with_probe();
    let p = probe(&r, &["-w", "/tmp"]);
    for m in ["/proc/keys", "/proc/timer_list", "/proc/sched_debug"] {
        let v = &p[&format!("read.{m}")];
        assert!(v == "0" || v == "err:2", "{m} must be masked (empty or absent), got {v}");
    }
    if std::path::Path::new("/proc/kcore").exists() {
        assert_eq!(p["read./proc/kcore"], "0");
    }
    assert_eq!(p["ls./sys/firmware"], "0", "/sys/firmware is an empty tmpfs");
    if std::path::Path::new("/proc/sysrq-trigger").exists() {
        assert_eq!(p["write./proc/sysrq-trigger"], "EROFS");
    }
    assert_eq!(p["write./proc/sys/kernel/hostname"], "EROFS");
    // no host descriptor reaches the process (CVE-2024-21626 class)
    let fds: Vec<&str> = p["fds"].split(',').collect();
    assert_eq!(fds.len(), 3, "only stdio: {fds:?}");
    assert!(fds.iter().all(|f| f.starts_with("0:") || f.starts_with("1:") || f.starts_with("2:")), "{fds:?}");
    assert!(!p["fds"].contains("/work") && !p["fds"].contains(r.path().to_str().unwrap()), "{fds:?}");
    assert_eq!(p["cwd"], "/tmp");
    // the probe cannot write its own binary, and sees no moat process
    assert_eq!(p["write./proc/self/exe"], "ETXTBSY");
    assert_eq!(p["moat_process_visible"], "false");
    // privileged drops the masks
    let p = probe(&r, &["--privileged"]);
    assert_eq!(
        p["ls./sys/firmware"] == "0",
        !std::fs::read_dir("/sys/firmware").map(|d| d.count() > 0).unwrap_or(false)
    );
}

/// CVE-2019-5736 class: every process the shim forks (container init, exec)
/// starts from a moat binary on a read-only bind mount, so nothing inside a
/// container can reopen it for writing through /proc/<pid>/exe.
#[test]
fn moat_binary_is_read_only_for_container_processes() {
    let r = root_with_probe();
    let id = r.ok(&["run", "-d", "--entrypoint", "sleep", "probe", "302"]).trim().to_string();
    let shims = host_pids_matching(&format!("shim {id}"));
    assert_eq!(shims.len(), 1, "one shim for {id}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", shims[0])).unwrap();
    let mi = std::fs::read_to_string(format!("/proc/{}/mountinfo", shims[0])).unwrap();
    let line = mi
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(exe.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no mount over {} in the shim's namespace", exe.display()));
    let opts = line.split(' ').nth(5).unwrap();
    assert!(opts.split(',').any(|o| o == "ro"), "binary mount must be read-only: {line}");
    // the container's init is a fork of that shim, in a mount namespace made
    // from the shim's: the only moat binary it could ever reach through
    // /proc/<pid>/exe is the read-only bind above
    let init: u32 = serde_json::from_str::<serde_json::Value>(&r.ok(&["inspect", &id])).unwrap()[0]["State"]["Pid"]
        .as_u64()
        .unwrap() as u32;
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let ppid: u32 = status.lines().find_map(|l| l.strip_prefix("PPid:")).unwrap().trim().parse().unwrap();
    assert_eq!(ppid, shims[0], "the init's parent is the shim");
    let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap();
    assert_ne!(ns(shims[0]), ns(std::process::id()), "the shim has a mount namespace of its own");
    r.ok(&["rm", "-f", &id]);
}

fn cgroup_file(id: &str, v1_ctrl: &str, file: &str) -> Option<String> {
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let p = if v2 {
        format!("/sys/fs/cgroup/moat/{id}/{file}")
    } else {
        format!("/sys/fs/cgroup/{v1_ctrl}/moat/{id}/{file}")
    };
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

#[test]
fn limits_reach_the_cgroup_and_oom_is_reported() {
    let r = root_with_busybox();
    let id = r
        .ok(&[
            "run",
            "-d",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--cpu-shares",
            "512",
            "--pids-limit",
            "20",
            "busybox",
            "sleep",
            "303",
        ])
        .trim()
        .to_string();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        assert_eq!(cgroup_file(&id, "", "memory.max").as_deref(), Some("67108864"));
        assert_eq!(cgroup_file(&id, "", "cpu.max").as_deref(), Some("50000 100000"));
        assert_eq!(cgroup_file(&id, "", "pids.max").as_deref(), Some("20"));
    } else {
        assert_eq!(cgroup_file(&id, "memory", "memory.limit_in_bytes").as_deref(), Some("67108864"));
        assert_eq!(cgroup_file(&id, "cpu", "cpu.cfs_quota_us").as_deref(), Some("50000"));
        assert_eq!(cgroup_file(&id, "cpu", "cpu.shares").as_deref(), Some("512"));
        assert_eq!(cgroup_file(&id, "pids", "pids.max").as_deref(), Some("20"));
    }
    // the pids limit bites from inside
    let o = r.run(&["exec", &id, "sh", "-c", "for i in $(seq 40); do sleep 5 & done"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("can't fork"), "forks past the limit fail: {err}");
    let cur: usize = cgroup_file(&id, "pids", "pids.current").unwrap().parse().unwrap();
    // at the limit while the loop ran (the main process, the exec's shell
    // and 18 sleeps): once the shell has exited, the main process and 18
    assert_eq!(cur, 19, "the cgroup was filled to its limit");
    let stats = r.ok(&["stats", "--no-stream", &id]);
    assert!(stats.contains("64MiB"), "{stats}");
    r.ok(&["rm", "-f", &id]);
    assert!(cgroup_file(&id, "memory", "cgroup.procs").is_none(), "cgroup removed with the container");
    // OOM: exit 137 and OOMKilled
    let o = r.run(&["run", "--name", "oom", "--memory", "32m", "busybox", "sh", "-c", "head -c 100m /dev/zero | tail"]);
    assert_eq!(o.status.code(), Some(137));
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "oom"])).unwrap();
    assert_eq!(v[0]["State"]["OOMKilled"], true);
    assert_eq!(v[0]["State"]["ExitCode"], 137);
    // a normal exit is not an OOM kill
    r.ok(&["run", "--name", "fine", "--memory", "32m", "busybox", "true"]);
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "fine"])).unwrap();
    assert_eq!(v[0]["State"]["OOMKilled"], false);
}

/// The same security defaults hold inside a utility VM: the agent runs the
/// container with the same runtime code.
#[test]
fn same_defaults_inside_the_vm_hyperv() {
    let r = root_with_probe();
    let p = probe(&r, &["--isolation=hyperv"]);
    assert_eq!(p["CapEff"], DOCKER_DEFAULT_CAPS);
    assert_eq!(p["CapBnd"], DOCKER_DEFAULT_CAPS);
    assert_eq!(p["NoNewPrivs"], "0");
    assert_eq!(p["Seccomp"], "2");
    for call in ["keyctl", "unshare_user", "mount", "kexec_load", "init_module", "bpf", "ptrace"] {
        assert_eq!(p[&format!("sys.{call}")], "EPERM", "{call} inside the VM: {p:?}");
    }
    assert_eq!(p["write./proc/sys/kernel/hostname"], "EROFS");
    assert_eq!(p["ls./sys/firmware"], "0");
    let fds: Vec<&str> = p["fds"].split(',').collect();
    assert_eq!(fds.len(), 3, "only stdio inside the VM too: {fds:?}");
    let u = probe(&r, &["--isolation=hyperv", "--security-opt", "seccomp=unconfined"]);
    assert_eq!(u["sys.keyctl"], "ok", "{u:?}");
    assert_eq!(u["sys.ptrace"], "ok", "{u:?}");
    // OOM inside the guest's cgroup is reported the same way
    let o = r.run(&[
        "run",
        "--name",
        "voom",
        "--isolation=hyperv",
        "--memory",
        "32m",
        "--entrypoint",
        "sh",
        "probe",
        "-c",
        "head -c 100m /dev/zero | tail",
    ]);
    assert_eq!(o.status.code(), Some(137));
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "voom"])).unwrap();
    assert_eq!(v[0]["State"]["OOMKilled"], true);
}
