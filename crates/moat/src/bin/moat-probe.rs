//! A probe run *inside* containers by moat's tests: prints what the process
//! can see and do, one `key=value` per line, so the tests can assert the
//! security defaults from the inside.

use std::ffi::CString;

fn errno_name(r: i64) -> String {
    if r >= 0 {
        return "ok".into();
    }
    match std::io::Error::last_os_error().raw_os_error().unwrap_or(0) {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::EROFS => "EROFS".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::ETXTBSY => "ETXTBSY".into(),
        e => format!("errno{e}"),
    }
}

fn status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn syscall_probes() {
    // SAFETY: each call uses harmless or invalid arguments; we only look at errno
    unsafe {
        let r = libc::syscall(libc::SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3i64 /* session */, 0);
        println!("sys.keyctl={}", errno_name(r));
        let r = libc::unshare(libc::CLONE_NEWUSER) as i64;
        println!("sys.unshare_user={}", errno_name(r));
        let r = libc::mount(c"none".as_ptr(), c"/tmp".as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) as i64;
        println!("sys.mount={}", errno_name(r));
        let r = libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0);
        println!("sys.kexec_load={}", errno_name(r));
        let r = libc::syscall(libc::SYS_init_module, 0, 0, c"".as_ptr());
        println!("sys.init_module={}", errno_name(r));
        let r = libc::syscall(libc::SYS_bpf, 0, 0, 0);
        println!("sys.bpf={}", errno_name(r));
        let r = libc::syscall(libc::SYS_perf_event_open, 0, 0, -1, -1, 0);
        println!("sys.perf_event_open={}", errno_name(r));
        let r = libc::syscall(libc::SYS_userfaultfd, 0);
        println!("sys.userfaultfd={}", errno_name(r));
        // a target the kernel lets this process trace (its own child, same
        // uid), so only seccomp can be what refuses the attach
        let child = libc::fork();
        if child == 0 {
            libc::pause();
            libc::_exit(0);
        }
        let r = libc::ptrace(libc::PTRACE_ATTACH, child, 0, 0);
        println!("sys.ptrace={}", errno_name(r));
        if r == 0 {
            let mut st = 0;
            libc::waitpid(child, &mut st, 0);
            libc::ptrace(libc::PTRACE_DETACH, child, 0, 0);
        }
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
        let r = libc::syscall(libc::SYS_open_by_handle_at, -1, 0, 0);
        println!("sys.open_by_handle_at={}", errno_name(r));
    }
}

/// `probe cached FILE`: opens FILE and prints how many of its pages are in
/// the page cache right after the open (`mincore` on a mapping, which faults
/// nothing in).
fn cached(path: &str) {
    match resident_pages(path) {
        Some((resident, pages)) => println!("cached={resident}/{pages}"),
        None => println!("cached=err"),
    }
}

/// (resident, total) pages of `path`, right after opening it.
fn resident_pages(path: &str) -> Option<(usize, usize)> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len() as usize;
    // SAFETY: sysconf has no preconditions
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: a read-only shared mapping of our open file, inspected with
    // mincore and unmapped; nothing is read through it
    let r = unsafe {
        let m = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0);
        if m == libc::MAP_FAILED {
            return None;
        }
        let r = libc::mincore(m, len, vec.as_mut_ptr());
        libc::munmap(m, len);
        r
    };
    (r == 0).then(|| (vec.iter().filter(|b| **b & 1 != 0).count(), vec.len()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, cmd, path] = args.as_slice() {
        if cmd == "cached" {
            cached(path);
            return;
        }
    }
    for k in ["Uid", "CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb", "NoNewPrivs", "Seccomp"] {
        println!("{k}={}", status(k));
    }
    // open descriptors, excluding the one read_dir uses to list them
    let mut fds: Vec<String> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
        for e in rd.flatten() {
            let target = std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
            if !target.starts_with("/proc/") || !target.ends_with("/fd") {
                fds.push(format!("{}:{}", e.file_name().to_string_lossy(), target));
            }
        }
    }
    fds.sort();
    println!("fds={}", fds.join(","));
    println!("cwd={}", std::fs::read_link("/proc/self/cwd").map(|p| p.display().to_string()).unwrap_or_default());
    for p in ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"] {
        match std::fs::read(p) {
            Ok(b) => println!("read.{p}={}", b.len()),
            Err(e) => println!("read.{p}=err:{}", e.raw_os_error().unwrap_or(0)),
        }
    }
    let fw = std::fs::read_dir("/sys/firmware").map(|d| d.count().to_string()).unwrap_or_else(|e| format!("err:{e}"));
    println!("ls./sys/firmware={fw}");
    for p in ["/proc/sysrq-trigger", "/proc/sys/kernel/hostname"] {
        let c = CString::new(p).unwrap_or_default();
        // SAFETY: plain open for writing
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY) };
        println!("write.{p}={}", errno_name(fd as i64));
        if fd >= 0 {
            // SAFETY: closing what we opened
            unsafe { libc::close(fd) };
        }
    }
    // SAFETY: plain open for writing
    let fd = unsafe { libc::open(c"/proc/self/exe".as_ptr(), libc::O_WRONLY) };
    println!("write./proc/self/exe={}", errno_name(fd as i64));
    let moat_visible = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains("moat"))
                    .unwrap_or(false)
                    && e.file_name() != "self"
                    && e.file_name().to_string_lossy() != std::process::id().to_string()
            })
        })
        .unwrap_or(false);
    println!("moat_process_visible={moat_visible}");
    syscall_probes();
}
