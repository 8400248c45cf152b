//! Which device nodes a container may use, enforced by the kernel.
//!
//! Like Docker and Podman, a container may create any device node (`m`) but
//! open only an allow-list of character devices (`/dev/null`, `/dev/zero`,
//! `/dev/full`, `/dev/random`, `/dev/urandom`, `/dev/tty`, `/dev/console`,
//! `/dev/ptmx`, its ptys, `/dev/net/tun`) plus what `--device` adds. On
//! cgroup v1 the `devices` controller holds the list; on cgroup v2 a small
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program generated here (the same shape as
//! runc's `devicefilter`) is attached to the container's cgroup. Together
//! with a `nodev` `/dev` this is defence in depth: a node made with `mknod`
//! can be neither opened through the filesystem nor through the cgroup.
//!
//! The program is written out instruction by instruction instead of using a
//! BPF toolchain crate: it is about ten instructions per rule, and the crates
//! that assemble BPF pull in an LLVM or libbpf build for what fits on a page.

use crate::RuntimeError;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub use moat_spec::devices::{default_rules, DevKind, DeviceNode, DevicePolicy, DeviceRule};

/// Applies the rules to a v1 `devices` cgroup directory: deny all, then allow each.
pub fn apply_v1(dir: &std::path::Path, rules: &[DeviceRule]) -> Result<(), RuntimeError> {
    let w = |file: &str, v: &str| {
        std::fs::write(dir.join(file), v)
            .map_err(|e| RuntimeError::Io(format!("cgroup: write {v:?} to {}", dir.join(file).display()), e))
    };
    w("devices.deny", "a")?;
    for r in rules {
        w("devices.allow", &r.v1_line())?;
    }
    Ok(())
}

// bpf_cgroup_dev_ctx: access_type = (access << 16) | type; major; minor
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0xf), off, imm }
}

/// The device-filter program for `rules`: r2 = type, r3 = access, r4 =
/// major, r5 = minor; one block per rule that jumps to the next block on a
/// mismatch and returns 1 (allow) when everything matched; 0 at the end.
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules {
        // each check is (instructions before the jump, jump register, immediate)
        let mut checks: Vec<(Vec<Insn>, u8, i32)> = Vec::new();
        match r.kind {
            DevKind::Char => checks.push((vec![], 2, DEV_CHAR)),
            DevKind::Block => checks.push((vec![], 2, DEV_BLOCK)),
            DevKind::All => {}
        }
        let acc = r.access_bits();
        if acc != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // r1 = access & ~allowed; any bit left means a mismatch
            checks.push((vec![insn(MOV64_X, 1, 3, 0, 0), insn(ALU32_AND_K, 1, 0, 0, !(acc as i32))], 1, 0));
        }
        if let Some(m) = r.major {
            checks.push((vec![], 4, m as i32));
        }
        if let Some(m) = r.minor {
            checks.push((vec![], 5, m as i32));
        }
        let len: usize = checks.iter().map(|(pre, _, _)| pre.len() + 1).sum::<usize>() + 2;
        let mut emitted = 0;
        for (pre, reg, imm) in checks {
            emitted += pre.len() + 1;
            p.extend(pre);
            // jump over the rest of this block
            p.push(insn(JNE_K, reg, 0, (len - emitted) as i16, imm));
        }
        p.push(insn(MOV64_K, 0, 0, 0, 1));
        p.push(insn(EXIT, 0, 0, 0, 0));
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// Evaluates `program` for one access the way the kernel would (for tests
/// of the generator; the kernel's verifier and interpreter are the real judge).
pub fn evaluate(prog: &[Insn], kind: DevKind, major: u32, minor: u32, access: &str) -> bool {
    let t = match kind {
        DevKind::Block => DEV_BLOCK as u64,
        _ => DEV_CHAR as u64,
    };
    let acc = DeviceRule::new(kind, None, None, access).access_bits() as u64;
    let ctx = [(acc << 16) | t, major as u64, minor as u64];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    while pc < prog.len() {
        let i = prog[pc];
        let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
        pc += 1;
        match i.code {
            LDX_MEM_W => r[dst] = ctx[(i.off / 4) as usize] & 0xffff_ffff,
            ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
            ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
            MOV64_X => r[dst] = r[src],
            MOV64_K => r[dst] = i.imm as i64 as u64,
            JNE_K => {
                if r[dst] != i.imm as i64 as u64 {
                    pc += i.off as usize;
                }
            }
            EXIT => return r[0] == 1,
            _ => return false,
        }
    }
    false
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Device filters this process has loaded, by program: a utility VM's
/// agent loads the default filter in its template, so that every clone
/// only attaches it (the BPF verifier is slow code to run cold under TCG).
static LOADED: std::sync::Mutex<Vec<(Vec<Insn>, OwnedFd)>> = std::sync::Mutex::new(Vec::new());

/// Loads the default device filter (Docker's allow-list) once per process
/// and keeps it.
pub fn preload_default() -> Result<(), RuntimeError> {
    loaded(&program(&moat_spec::devices::default_rules())).map(drop)
}

/// How many distinct filters this process has loaded.
#[cfg(test)]
pub(crate) fn loaded_count() -> usize {
    LOADED.lock().map(|c| c.len()).unwrap_or_else(|p| p.into_inner().len())
}

/// The loaded filter `prog` (a duplicate of the kept fd).
fn loaded(prog: &[Insn]) -> Result<OwnedFd, RuntimeError> {
    let mut cache = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, fd)) = cache.iter().find(|(p, _)| p == prog) {
        return fd.try_clone().map_err(RuntimeError::io("duplicate the device filter"));
    }
    let fd = match load(prog, None) {
        Ok(fd) => fd,
        Err(err) => {
            // load again with the verifier's log, only to explain the failure
            let mut log = vec![0u8; 1 << 20];
            let _ = load(prog, Some(&mut log));
            let text = String::from_utf8_lossy(&log);
            let last = text.trim_end_matches('\0').trim().lines().last().unwrap_or("").to_string();
            return Err(RuntimeError::Sys(format!("load the device filter (BPF): {last}"), err));
        }
    };
    let dup = fd.try_clone().map_err(RuntimeError::io("duplicate the device filter"))?;
    cache.push((prog.to_vec(), fd));
    Ok(dup)
}

/// Loads the device filter for `rules` (or reuses it, see [`preload_default`]) and
/// attaches it to the cgroup v2 directory `dir` (before any process joins
/// it). The attachment lives as long as the cgroup.
pub fn attach_v2(dir: &std::path::Path, rules: &[DeviceRule]) -> Result<(), RuntimeError> {
    let prog_fd = loaded(&program(rules))?;
    let cg = std::fs::File::open(dir).map_err(RuntimeError::io(format!("open cgroup {}", dir.display())))?;
    let attach = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: attach points to a valid attribute struct for the call
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(RuntimeError::Sys(format!("attach the device filter to {}", dir.display()), nix::Error::last()));
    }
    Ok(())
}

/// `BPF_PROG_LOAD` of a device program, with the verifier log in `log` if given.
fn load(prog: &[Insn], log: Option<&mut [u8]>) -> Result<OwnedFd, nix::Error> {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"moat_device");
    let (log_level, log_size, log_buf) = match log {
        Some(l) => (1, l.len() as u32, l.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: attr points to valid memory (program, license, log buffer) for the call
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoadAttr, std::mem::size_of::<ProgLoadAttr>())
    };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: a fresh descriptor returned by the kernel
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Parses and resolves `--device HOST[:CONTAINER[:PERMISSIONS]]` (the host
/// path must be a device node).
pub fn parse_device(s: &str) -> Result<DeviceNode, RuntimeError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (host, ctr, perms) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, c] if c.chars().all(|x| "rwm".contains(x)) && !c.is_empty() => (*h, *h, *c),
        [h, c] => (*h, *c, "rwm"),
        [h, c, p] => (*h, *c, *p),
        _ => return Err(RuntimeError::Invalid(format!("invalid device {s:?}: use HOST[:CONTAINER[:PERMISSIONS]]"))),
    };
    if !host.starts_with('/') || !ctr.starts_with('/') {
        return Err(RuntimeError::Invalid(format!("invalid device {s:?}: paths must be absolute")));
    }
    if perms.is_empty() || !perms.chars().all(|c| "rwm".contains(c)) {
        return Err(RuntimeError::Invalid(format!("invalid device permissions {perms:?}: use a subset of rwm")));
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(host)
        .map_err(|e| RuntimeError::Invalid(format!("error gathering device information for {host:?}: {e}")))?;
    let kind = if m.file_type().is_char_device() {
        DevKind::Char
    } else if m.file_type().is_block_device() {
        DevKind::Block
    } else {
        return Err(RuntimeError::Invalid(format!("{host} is not a device node")));
    };
    let rdev = m.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    Ok(DeviceNode {
        host_path: host.into(),
        path: ctr.into(),
        rule: DeviceRule::new(kind, Some(major), Some(minor), perms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_program_allows_the_list_only() {
        let p = program(&default_rules());
        assert!(evaluate(&p, DevKind::Char, 1, 3, "rw"), "/dev/null");
        assert!(evaluate(&p, DevKind::Char, 136, 7, "rw"), "a pty");
        assert!(evaluate(&p, DevKind::Char, 10, 200, "rw"), "tun");
        assert!(evaluate(&p, DevKind::Block, 7, 0, "m"), "mknod of a block device is allowed");
        assert!(!evaluate(&p, DevKind::Block, 7, 0, "r"), "reading a loop device");
        assert!(!evaluate(&p, DevKind::Block, 7, 0, "rw"));
        assert!(!evaluate(&p, DevKind::Char, 10, 232, "rw"), "/dev/kvm");
        assert!(!evaluate(&p, DevKind::Char, 1, 11, "w"), "/dev/kmsg");
        assert!(!evaluate(&p, DevKind::Char, 4, 64, "rw"), "serial console");
        assert!(evaluate(&p, DevKind::Char, 1, 3, "rwm"));
    }

    #[test]
    fn extra_rules_and_access_subsets() {
        let mut rules = default_rules();
        rules.push(DeviceRule::new(DevKind::Char, Some(10), Some(229), "r"));
        let p = program(&rules);
        assert!(evaluate(&p, DevKind::Char, 10, 229, "r"));
        assert!(!evaluate(&p, DevKind::Char, 10, 229, "rw"), "write was not granted");
        assert_eq!(rules.last().map(DeviceRule::v1_line).as_deref(), Some("c 10:229 r"));
        assert_eq!(default_rules()[0].v1_line(), "c *:* m");
    }

    #[test]
    fn device_flags() -> Result<(), RuntimeError> {
        let d = parse_device("/dev/null:/dev/mynull:r")?;
        assert_eq!(
            (d.path.as_str(), d.rule.major, d.rule.minor, d.rule.access.as_str()),
            ("/dev/mynull", Some(1), Some(3), "r")
        );
        assert_eq!(parse_device("/dev/zero:rw")?.path, "/dev/zero");
        assert!(parse_device("/etc/passwd").is_err());
        assert!(parse_device("/dev/null:/x:rwx").is_err());
        assert!(parse_device("relative").is_err());
        Ok(())
    }
}
