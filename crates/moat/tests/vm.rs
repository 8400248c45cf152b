//! VM isolation specifics: the guest kernel, what the host sees, QEMU dying,
//! and clear errors (with cleanup) when the VM cannot start.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

fn vm_info(r: &Root, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", name])).unwrap();
    v[0].clone()
}

#[test]
fn guest_kernel_and_host_view_hyperv() {
    let r = root_with_busybox();
    let guest = r.ok(&["run", "--rm", "--isolation=hyperv", "busybox", "uname", "-r"]);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(guest.trim(), host.trim());
    assert_eq!(guest.trim(), guest_kernel_release());
    assert!(guest.trim().ends_with("-moat"), "make kernel installs moat's own kernel: {guest}");
    let info: serde_json::Value = serde_json::from_str(&r.ok(&["info", "--format", "json"])).unwrap();
    assert_eq!(info["Hypervisor"]["GuestKernel"].as_str().unwrap(), guest.trim());

    r.ok(&["run", "-d", "--isolation=vm", "--name", "v", "--memory", "64m", "--cpus", "1", "busybox", "sleep", "3201"]);
    let v = vm_info(&r, "v");
    assert_eq!(v["HostConfig"]["Isolation"], "hyperv");
    let accel = v["VM"]["Accelerator"].as_str().unwrap();
    assert!(accel == "tcg" || accel == "kvm");
    assert_eq!(v["VM"]["MemoryMiB"], 64 + 96, "--memory plus the documented overhead");
    let (qemu, vfsd) = (v["VM"]["QemuPid"].as_u64().unwrap(), v["VM"]["VirtiofsdPid"].as_u64().unwrap());
    assert!(alive(qemu) && alive(vfsd));
    // QEMU carries the container's name in the host's process list
    let id12 = &v["Id"].as_str().unwrap()[..12];
    assert_eq!(host_pids_matching(&format!("-name moat-{id12}")), vec![qemu as u32]);
    // the host sees QEMU, not the container's process
    assert!(host_pids_matching("sleep 3201").is_empty());
    let ps = r.ok(&["exec", "v", "ps"]);
    assert!(ps.contains("sleep 3201"), "{ps}");
    // an idle guest stops its tick (one-shot timers need the APIC timer's
    // ARAT flag on microvm): a periodic tick at HZ=250 would be >= 500 here
    let loc = r.ok(&["exec", "v", "sh", "-c", "grep LOC: /proc/interrupts; sleep 2; grep LOC: /proc/interrupts"]);
    let n: Vec<u64> = loc.lines().map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap()).collect();
    assert!(n[1] - n[0] < 200, "local timer interrupts in 2 s of idle: {loc}");
    // QEMU runs without transparent huge pages (they inflated TCG's code buffer)
    let status = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap();
    assert!(status.lines().any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])), "{status}");
    // moat's kernel gives each virtio-console receive queue 64 one-page
    // buffers, not one per entry of virtio-mmio's 1024-entry queues (which
    // made >= 2048 4 KiB slab objects), and 8 MiB of stdin still flow through
    let mut c = r.cmd();
    c.args(["exec", "-i", "v", "wc", "-c"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &vec![b'x'; 8 << 20]).unwrap());
    let out = child.wait_with_output().unwrap();
    feed.join().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (8 << 20).to_string());
    let slab = r.ok(&["exec", "v", "cat", "/proc/slabinfo"]);
    let k4: u64 = slab
        .lines()
        .find_map(|l| l.strip_prefix("kmalloc-4k "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(k4 < 1024, "4 KiB slab objects in the guest: {k4}");
    // the limit also applies inside the guest
    let lim = r.ok(&["exec", "v", "cat", "/proc/self/cgroup"]);
    assert!(lim.starts_with("0::/"), "cgroup v2 inside the guest: {lim}");
    let stats = r.ok(&["stats", "--no-stream", "v"]);
    assert!(stats.contains("/ 64MiB"), "{stats}");
    // the usage is what the VM holds on the host: QEMU, virtiofsd and the
    // guest RAM it has touched, which the guest kernel alone puts above 20 MiB
    let used = r.ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "v"]);
    let used = used.split_whitespace().next().unwrap();
    let mib: f64 = match used.strip_suffix("GiB") {
        Some(g) => g.parse::<f64>().unwrap() * 1024.0,
        None => used.strip_suffix("MiB").and_then(|m| m.parse().ok()).unwrap_or(0.0),
    };
    assert!(mib > 20.0, "host-side memory of the VM: {used}");
    // the root filesystem is the same overlay as process isolation: writes land in the container's upper dir
    r.ok(&["exec", "v", "sh", "-c", "echo guest-wrote > /root/marker"]);
    let id = v["Id"].as_str().unwrap().to_string();
    let upper = r.path().join("containers").join(&id).join("upper/root/marker");
    assert_eq!(std::fs::read_to_string(&upper).unwrap(), "guest-wrote\n");
    r.ok(&["rm", "-f", "v"]);
    eventually("rm leaves no QEMU or virtiofsd", || !alive(qemu) && !alive(vfsd));
    assert!(!r.path().join("containers").join(&id).exists(), "rm leaves no files");
}

/// The guest keeps an unchanged file's pages across `open` (moat's guest
/// kernel patch: virtiofsd's `cache=auto` would drop them at every open, so
/// every exec re-read its binary), and still sees what the host changes: a
/// file rewritten in place in a bind mount (same size, new mtime) and a file
/// replaced by `cp` (new inode, seen once the 1 s entry timeout passed).
#[test]
fn guest_page_cache_survives_open_and_follows_the_host_hyperv() {
    let r = Root::new();
    r.ok(&["load", "-q", "-i", probe_archive().to_str().unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let bound = dir.path().join("b");
    std::fs::create_dir(&bound).unwrap();
    std::fs::write(bound.join("f.txt"), "one\n").unwrap();
    let vol = format!("{}:/b", bound.display());
    r.ok(&["run", "-d", "--isolation=hyperv", "--name", "pc", "-v", &vol, "probe", "sleep", "3202"]);
    let got = r.ok(&["exec", "pc", "sh", "-c", "cat /bin/busybox > /dev/null; /probe cached /bin/busybox"]);
    let (cached, total) = got.trim().strip_prefix("cached=").and_then(|v| v.split_once('/')).unwrap();
    assert!(total.parse::<u32>().unwrap() > 100, "{got}");
    assert_eq!(cached, total, "busybox's pages survive the open: {got}");
    // what the guest reads once it shows `want` (or when `until` gives up)
    let guest_reads =
        |path: &str, want: &str| until(&r, &["exec", "pc", "cat", path], |o| o.trim() == want).trim().to_string();
    assert_eq!(guest_reads("/b/f.txt", "one"), "one");
    let c = r.ok(&["exec", "pc", "/probe", "cached", "/b/f.txt"]);
    assert_eq!(c.trim(), "cached=1/1", "the guest holds the file's page");
    // rewritten in place on the host: same inode, same size
    std::fs::write(bound.join("f.txt"), "two\n").unwrap();
    assert_eq!(guest_reads("/b/f.txt", "two"), "two", "an in-place change on the host reaches the guest");
    // replaced through `cp`
    let f = dir.path().join("f.txt");
    for word in ["tri", "for"] {
        std::fs::write(&f, format!("{word}\n")).unwrap();
        r.ok(&["cp", f.to_str().unwrap(), "pc:/f.txt"]);
        assert_eq!(guest_reads("/f.txt", word), word, "a file cp replaced reaches the guest");
    }
    r.ok(&["rm", "-f", "pc"]);
}

#[test]
fn qemu_killed_is_reported_and_cleaned_hyperv() {
    let r = root_with_busybox();
    r.ok(&["run", "-d", "--isolation=vm", "--name", "k", "busybox", "sleep", "3202"]);
    let v = vm_info(&r, "k");
    let (qemu, vfsd) = (v["VM"]["QemuPid"].as_u64().unwrap(), v["VM"]["VirtiofsdPid"].as_u64().unwrap());
    // SAFETY: SIGKILL to the QEMU this test's container started
    unsafe { libc::kill(qemu as i32, libc::SIGKILL) };
    let t0 = std::time::Instant::now();
    loop {
        let v = vm_info(&r, "k");
        if v["State"]["Status"] == "exited" {
            assert_eq!(v["State"]["ExitCode"], 137);
            assert!(v["State"]["Error"].as_str().unwrap().contains("qemu was killed by signal 9"), "{v}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "death not recorded: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ps = r.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.starts_with("k Exited (137)"), "{ps}");
    assert!(!alive(vfsd), "virtiofsd reaped");
    r.ok(&["rm", "k"]);
    assert!(r.ok(&["ps", "-a", "-q"]).is_empty());
}

#[test]
fn vm_start_failures_are_clear_and_clean_hyperv() {
    let r = root_with_busybox();
    // no kernel
    let empty = tempfile::tempdir().unwrap();
    let o = r
        .cmd()
        .env("MOAT_KERNEL_DIR", empty.path())
        .args(["run", "--rm", "--isolation=vm", "busybox", "true"])
        .output()
        .unwrap();
    assert_fails_one_line(&o, "no kernel");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no guest kernel installed"));
    // no QEMU
    let o = r
        .cmd()
        .env("MOAT_QEMU", "/nonexistent/qemu")
        .args(["run", "--rm", "--isolation=vm", "busybox", "true"])
        .output()
        .unwrap();
    assert_fails_one_line(&o, "no qemu");
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/qemu"), "{}", String::from_utf8_lossy(&o.stderr));
    // a guest that never says Ready (busybox as PID 1): times out, with the console in the error
    let o = r
        .cmd()
        .env("MOAT_AGENT", "/bin/busybox")
        .env("MOAT_VM_BOOT_TIMEOUT", "8")
        .args(["run", "--name", "stuck", "--isolation=vm", "busybox", "true"])
        .output()
        .unwrap();
    assert_fails_one_line(&o, "stuck guest");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did not come up within 8s") && err.contains("guest console"), "{err}");
    let v = vm_info(&r, "stuck");
    assert_ne!(v["State"]["Status"], "running");
    assert!(v["State"]["Error"].as_str().unwrap().contains("did not come up"));
    let id = v["Id"].as_str().unwrap();
    eventually("no QEMU left behind", || host_pids_matching(&format!("moat-{}", &id[..12])).is_empty());
    let tap = format!("mtt{}0", &id[..8]);
    assert!(!std::path::Path::new("/sys/class/net").join(&tap).exists(), "no tap left behind: {tap}");
    assert!(host_pids_matching(&format!("--shared-dir={}", r.path().display())).is_empty(), "no virtiofsd left behind");
    r.ok(&["rm", "stuck"]);
    // the engine still works afterwards
    assert_eq!(r.ok(&["run", "--rm", "--isolation=vm", "busybox", "echo", "ok"]), "ok\n");
}

/// `rm -f` while the VM is still starting (QEMU up, the start not done):
/// the start finishes or fails, and nothing of the container is left, no
/// record and no process (it used to delete the record of a VM that then ran on).
#[test]
fn rm_force_during_vm_start_leaves_nothing_hyperv() {
    let r = root_with_busybox();
    let id = r.ok(&["create", "--isolation=vm", "--name", "early", "busybox", "sleep", "3203"]).trim().to_string();
    let needle = format!("moat-{}", &id[..12]);
    let mut start = r.cmd().args(["start", "early"]).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while host_pids_matching(&needle).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "QEMU never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    r.ok(&["rm", "-f", "early"]);
    let _ = start.wait().unwrap();
    assert!(r.ok(&["ps", "-a", "-q"]).is_empty());
    let t0 = std::time::Instant::now();
    while !(host_pids_matching(&needle).is_empty() && host_pids_matching(&id).is_empty()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "left running: {:?}", host_pids_matching(&id[..12]));
        std::thread::sleep(Duration::from_millis(50));
    }
}
