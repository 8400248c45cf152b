//! Process isolation on a cgroup v2 host, for real (issue #35): this
//! machine is a v1 hybrid, so a utility VM plays the host. A privileged
//! hyperv container (moat's guest kernel, cgroup2 mounted by the agent) runs
//! this build's `moat` binary with a root on a tmpfs, and the
//! process-isolation limit checks run there: memory (an OOM kill gives 137
//! and `OOMKilled`), pids, CPU weight and max, the eBPF device filter (with
//! a positive control) and `stats`. Every value is read from the kernel's
//! cgroup files or seen in what the process could do, not from moat's record.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// The script the "host" runs: each check prints `key=value` lines.
const SCRIPT: &str = r#"
set -u
ln -s /hostusr/lib /lib; ln -s /hostusr/lib64 /lib64
M="/m/moat --root /inner/root"
echo "host.cgroupfs=$(stat -f -c %t /sys/fs/cgroup)"
$M load -q -i /fx/busybox.tar >/dev/null || echo "load failed"
R="$M run --rm --network none"

# this "host" is a container's cgroup namespace, whose root holds its
# processes: no controller can be handed down, and moat says so
$R -m 32m busybox true 2>&1 | sed 's/^/refused=/'
# as docker-in-docker's entrypoint does: the processes move to a leaf
mkdir /sys/fs/cgroup/init
for p in $(cat /sys/fs/cgroup/cgroup.procs); do echo $p > /sys/fs/cgroup/init/cgroup.procs 2>/dev/null; done

# memory: the limit in the kernel, then an OOM kill
$R -m 32m busybox cat /sys/fs/cgroup/memory.max | sed 's/^/memory.max=/'
$M run --name oom --network none -m 32m --memory-swap 32m busybox \
  sh -c 'x=0123456789; while :; do x="$x$x"; done' 2>/dev/null
echo "oom.exit=$?"
echo "oom.killed=$($M inspect -f '{{.State.OOMKilled}} {{.State.ExitCode}}' oom)"
$M rm oom >/dev/null

# pids: 12 at most; a subshell forks sleeps until the kernel refuses,
# then the count is read without forking
$R --pids-limit 12 busybox sh -c '
  read m < /sys/fs/cgroup/pids.max; echo "pids.max=$m"
  (for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do sleep 30 & done) 2>/dev/null
  read n < /sys/fs/cgroup/pids.current; echo "pids.current=$n"
  read e < /sys/fs/cgroup/pids.events; echo "pids.events=${e%% *}"'

# CPU: --cpus and --cpu-shares as cpu.max and cpu.weight
$R --cpus 0.5 --cpu-shares 512 busybox sh -c \
  'echo "cpu.max=$(cat /sys/fs/cgroup/cpu.max)"; echo "cpu.weight=$(cat /sys/fs/cgroup/cpu.weight)"'
$R busybox sh -c 'echo "cpu.default=$(cat /sys/fs/cgroup/cpu.max) $(cat /sys/fs/cgroup/cpu.weight)"'

# the device filter (eBPF on v2): /dev/kmsg (c 1:11) is not in Docker's
# default list; allowed by a rule, and /dev/null always
$R --tmpfs /t:dev busybox sh -c 'mknod /t/k c 1 11 && head -c 0 /t/k 2>&1 && echo "dev.kmsg=opened"' \
  | sed 's/^head: .t.k: /dev.kmsg.error=/'
$R --tmpfs /t:dev --device-cgroup-rule 'c 1:11 r' busybox sh -c 'mknod /t/k c 1 11 && head -c 0 /t/k && echo "dev.kmsg.allowed=opened"'
$R busybox sh -c 'head -c 1 /dev/zero | wc -c | sed "s/^/dev.zero=/"'

# stats of a running container, and its cgroup as the "host" sees it
$M run -d --name st --network none -m 64m busybox sh -c 'head -c 8388608 /dev/zero > /dev/shm/f; sleep 600' >/dev/null
sleep 3
echo "stats=$($M stats --no-stream --format '{{.MemUsage}}' st)"
id=$($M inspect -f '{{.Id}}' st)
echo "host.view.memory.max=$(cat /sys/fs/cgroup/moat/$id/memory.max 2>/dev/null || find /sys/fs/cgroup -name "$id" -maxdepth 4 | head -1)"
$M rm -f st >/dev/null
$M system reset --force >/dev/null && echo "reset=ok"
"#;

#[test]
fn process_limits_on_a_cgroup_v2_host_hyperv() {
    let r = root_with_busybox();
    let (archive, _) = busybox_archive();
    let fx = archive.parent().unwrap().to_str().unwrap().to_string();
    let name = archive.file_name().unwrap().to_str().unwrap();
    let script = SCRIPT.replace("/fx/busybox.tar", &format!("/fx/{name}"));
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_moat")).parent().unwrap().to_str().unwrap().to_string();
    let out = r.ok(&[
        "run",
        "--rm",
        "--isolation=hyperv",
        "--privileged",
        "--network",
        "none",
        "-m",
        "1g",
        "--tmpfs",
        "/inner",
        "-v",
        "/usr:/hostusr:ro",
        "-v",
        &format!("{bin}:/m:ro"),
        "-v",
        &format!("{fx}:/fx:ro"),
        "busybox",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let kv: std::collections::BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| kv.get(k).copied().unwrap_or_else(|| panic!("no {k} in:\n{out}"));
    assert_eq!(get("host.cgroupfs"), "63677270", "cgroup2's magic: {out}");
    let id_free = get("refused").split_once("/sys/fs/cgroup/moat/").map(|(a, b)| (a, b.split_once(':').map(|x| x.1)));
    assert_eq!(
        id_free,
        Some((
            "Error: cgroup v2: no memory controller in ",
            Some(
                " a cgroup that holds processes cannot hand controllers to its children; run moat from the root \
                 cgroup, or from a delegated one whose processes sit in a leaf (as docker-in-docker moves its own)"
            )
        )),
        "{out}"
    );
    assert_eq!(get("memory.max"), "33554432", "{out}");
    assert_eq!(get("oom.exit"), "137", "{out}");
    assert_eq!(get("oom.killed"), "true 137", "{out}");
    assert_eq!(get("pids.max"), "12", "{out}");
    // the shell, the subshell and 10 sleeps made 12; the subshell is gone
    assert_eq!(get("pids.current"), "11", "the shell and 10 sleeps, no more: {out}");
    assert_eq!(get("pids.events"), "max", "forks were refused: {out}");
    assert_eq!(get("cpu.max"), "50000 100000", "{out}");
    assert_eq!(get("cpu.weight"), "20", "runc's conversion of 512 shares: {out}");
    assert_eq!(get("cpu.default"), "max 100000 100", "{out}");
    assert_eq!(get("dev.kmsg.error"), "Operation not permitted", "{out}");
    assert!(!kv.contains_key("dev.kmsg"), "/dev/kmsg opened without a rule: {out}");
    assert_eq!(get("dev.kmsg.allowed"), "opened", "positive control: {out}");
    assert_eq!(get("dev.zero"), "1", "{out}");
    let stats = get("stats");
    let (used, limit) = stats.split_once(" / ").unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(limit, "64MiB", "{out}");
    assert!(used.ends_with("MiB") && used.trim_end_matches("MiB").parse::<f64>().unwrap() >= 8.0, "{out}");
    assert_eq!(get("host.view.memory.max"), "67108864", "{out}");
    assert_eq!(get("reset"), "ok", "{out}");
}
