//! Seccomp: moat's default profile, docker-format JSON profiles, and
//! compiling them to BPF with `seccompiler`.
//!
//! The default profile allows everything except calls that reach outside the
//! container or into the kernel's administration: kexec, module loading,
//! mounting and namespace changes, keyrings, bpf, perf, ptrace and cross-process
//! memory access, clock changes, swap, reboot, raw I/O ports, handle-based
//! opens (the "shocker" escape), userfaultfd and io_uring. As in docker, a
//! capability granted with `--cap-add` re-allows the calls it governs
//! (SYS_ADMIN: mount & namespaces, SYS_PTRACE: ptrace, SYS_MODULE, SYS_BOOT,
//! SYS_TIME, SYS_PACCT, SYS_RAWIO). `clone3` fails with ENOSYS so libc falls
//! back to `clone`, whose namespace flags are then checked.

use crate::RuntimeError;
use caps::Capability;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::str::FromStr;
use syscalls::Sysno;

/// Groups of denied calls, each re-allowed by a capability (or never, for `None`).
const DENY: &[(Option<Capability>, &[&str])] = &[
    (
        Some(Capability::CAP_SYS_ADMIN),
        &[
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
            "unshare",
            "setns",
            "quotactl",
            "lookup_dcookie",
            "bpf",
            "perf_event_open",
            "fanotify_init",
            "name_to_handle_at",
            "syslog",
            "setdomainname",
            "sethostname",
        ],
    ),
    (Some(Capability::CAP_SYS_PTRACE), &["ptrace", "process_vm_readv", "process_vm_writev", "kcmp"]),
    (Some(Capability::CAP_SYS_MODULE), &["init_module", "finit_module", "delete_module"]),
    (Some(Capability::CAP_SYS_BOOT), &["reboot", "kexec_load", "kexec_file_load"]),
    (Some(Capability::CAP_SYS_TIME), &["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"]),
    (Some(Capability::CAP_SYS_PACCT), &["acct"]),
    (Some(Capability::CAP_SYS_RAWIO), &["iopl", "ioperm"]),
    (Some(Capability::CAP_DAC_READ_SEARCH), &["open_by_handle_at"]),
    (
        None,
        &[
            "add_key",
            "request_key",
            "keyctl",
            "swapon",
            "swapoff",
            "uselib",
            "userfaultfd",
            "ustat",
            "sysfs",
            "_sysctl",
            "vhangup",
            "nfsservctl",
            "create_module",
            "get_kernel_syms",
            "query_module",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
        ],
    ),
];

/// Namespace-creating clone flags refused without CAP_SYS_ADMIN.
const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn arch() -> TargetArch {
    TargetArch::x86_64
}

fn sysno(name: &str) -> Option<i64> {
    Sysno::from_str(name).ok().map(|s| s.id() as i64)
}

fn bad(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Invalid(format!("seccomp: {e}"))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, RuntimeError> {
    SeccompFilter::new(rules, mismatch, matched, arch()).and_then(BpfProgram::try_from).map_err(bad)
}

/// Default profiles this process has compiled, by sorted capability set.
static COMPILED: std::sync::Mutex<Vec<(Vec<u8>, Vec<BpfProgram>)>> = std::sync::Mutex::new(Vec::new());

/// The default profile for a container with capabilities `caps`, as one or
/// more BPF programs to install in order. Compiled once per capability set
/// and process: the guest agent compiles Docker's default set in its
/// template (see [`preload_default`]), so clones skip the ~10 ms it takes
/// under TCG.
pub fn default_profile(caps: &[u8]) -> Result<Vec<BpfProgram>, RuntimeError> {
    let mut key = caps.to_vec();
    key.sort_unstable();
    key.dedup();
    let mut cache = COMPILED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, progs)) = cache.iter().find(|(k, _)| *k == key) {
        return Ok(progs.clone());
    }
    let progs = compile_default(&key)?;
    cache.push((key, progs.clone()));
    Ok(progs)
}

/// Compiles the default profile for Docker's default capabilities, so that
/// containers with them find it compiled.
pub fn preload_default() -> Result<(), RuntimeError> {
    default_profile(&crate::caps::compute(&[], &[], false)?).map(drop)
}

fn compile_default(caps: &[u8]) -> Result<Vec<BpfProgram>, RuntimeError> {
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let mut rules = BTreeMap::new();
    for (cap, names) in DENY {
        if cap.is_some_and(|c| caps.contains(&c.index())) {
            continue;
        }
        for n in *names {
            if let Some(nr) = sysno(n) {
                rules.insert(nr, vec![]);
            }
        }
    }
    if !caps.contains(&Capability::CAP_SYS_ADMIN.index()) {
        let clone_rules = NS_FLAGS
            .iter()
            .map(|f| {
                SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*f), *f)
                    .and_then(|c| SeccompRule::new(vec![c]))
                    .map_err(bad)
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_clone, clone_rules);
    }
    let deny = compile(rules, SeccompAction::Allow, eperm)?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, vec![]);
    let enosys = compile(clone3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32))?;
    Ok(vec![deny, enosys])
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Vec<DockerRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerRule {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<DockerArg>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerArg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

fn action(a: &str, errno: Option<u32>) -> Result<SeccompAction, RuntimeError> {
    Ok(match a {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        other => return Err(bad(format!("unsupported action {other}"))),
    })
}

fn condition(a: &DockerArg) -> Result<SeccompCondition, RuntimeError> {
    let op = match a.op.as_str() {
        "SCMP_CMP_EQ" => SeccompCmpOp::Eq,
        "SCMP_CMP_NE" => SeccompCmpOp::Ne,
        "SCMP_CMP_LT" => SeccompCmpOp::Lt,
        "SCMP_CMP_LE" => SeccompCmpOp::Le,
        "SCMP_CMP_GT" => SeccompCmpOp::Gt,
        "SCMP_CMP_GE" => SeccompCmpOp::Ge,
        "SCMP_CMP_MASKED_EQ" => SeccompCmpOp::MaskedEq(a.value),
        other => return Err(bad(format!("unsupported argument operator {other}"))),
    };
    let value = if a.op == "SCMP_CMP_MASKED_EQ" { a.value_two } else { a.value };
    SeccompCondition::new(a.index, SeccompCmpArgLen::Qword, op, value).map_err(bad)
}

/// Compiles a docker-format JSON profile. Entries whose action differs from
/// the most common non-default action become extra stacked filters; the
/// kernel applies the most restrictive verdict across them.
pub fn docker_profile(json: &str) -> Result<Vec<BpfProgram>, RuntimeError> {
    let p: DockerProfile = serde_json::from_str(json).map_err(bad)?;
    let default = action(&p.default_action, p.default_errno_ret)?;
    // group rules by action
    // None = unconditional match for that syscall
    type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;
    let mut groups: Vec<(SeccompAction, Rules)> = Vec::new();
    for r in &p.syscalls {
        let act = action(&r.action, r.errno_ret)?;
        if act == default {
            continue;
        }
        let conds = r.args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
        let idx = match groups.iter().position(|(a, _)| *a == act) {
            Some(i) => i,
            None => {
                groups.push((act, BTreeMap::new()));
                groups.len() - 1
            }
        };
        for n in r.names.iter().chain(r.name.iter()) {
            let Some(nr) = sysno(n) else { continue }; // unknown on this arch: skip, as runc does
            let e = groups[idx].1.entry(nr).or_insert_with(|| Some(Vec::new()));
            match (e.as_mut(), conds.is_empty()) {
                (_, true) => *e = None, // unconditional
                (Some(v), false) => v.push(SeccompRule::new(conds.clone()).map_err(bad)?),
                (None, false) => {}
            }
        }
    }
    let groups: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = groups
        .into_iter()
        .map(|(a, m)| (a, m.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect()))
        .collect();
    let mut out = Vec::new();
    if default == SeccompAction::Allow {
        for (act, rules) in groups {
            out.push(compile(rules, SeccompAction::Allow, act)?);
        }
        return Ok(out);
    }
    // default deny: one allow-list filter holding every listed syscall, plus
    // a filter per other action for its syscalls
    let mut allow: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (act, rules) in &groups {
        for (nr, rs) in rules {
            if *act == SeccompAction::Allow {
                allow.insert(*nr, rs.clone());
            } else {
                allow.insert(*nr, vec![]);
            }
        }
    }
    out.push(compile(allow, default, SeccompAction::Allow)?);
    for (act, rules) in groups.into_iter().filter(|(a, _)| *a != SeccompAction::Allow) {
        out.push(compile(rules, SeccompAction::Allow, act)?);
    }
    Ok(out)
}

/// Installs the programs in the calling thread after setting no_new_privs
/// (seccompiler's way; works without privileges).
pub fn install(progs: &[BpfProgram]) -> Result<(), RuntimeError> {
    for p in progs {
        seccompiler::apply_filter(p).map_err(bad)?;
    }
    Ok(())
}

/// Installs the programs without setting no_new_privs, which needs
/// CAP_SYS_ADMIN: called before the process drops its privileges, so that
/// setuid binaries keep working (Docker's default; runc does the same).
pub fn install_privileged(progs: &[BpfProgram]) -> Result<(), RuntimeError> {
    for p in progs {
        let prog = libc::sock_fprog {
            len: u16::try_from(p.len()).map_err(|_| RuntimeError::Invalid("seccomp program too long".into()))?,
            filter: p.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `p`, which outlives the call; the kernel copies it
        let rc = unsafe {
            libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog)
        };
        if rc != 0 {
            return Err(RuntimeError::sys("seccomp")(nix::Error::last()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_compiles_and_honours_caps() -> Result<(), RuntimeError> {
        let base = default_profile(&[])?;
        assert_eq!(base.len(), 2);
        let with_admin = default_profile(&[Capability::CAP_SYS_ADMIN.index()])?;
        assert!(with_admin[0].len() < base[0].len(), "SYS_ADMIN re-allows mount & co");
        Ok(())
    }

    #[test]
    fn default_profiles_are_compiled_once_per_capability_set() -> Result<(), RuntimeError> {
        let (a, b) = (Capability::CAP_KILL.index(), Capability::CAP_SYS_PTRACE.index());
        let first = default_profile(&[a, b])?;
        assert_eq!(default_profile(&[b, a, a])?, first, "order and repeats do not matter");
        assert_eq!(first, compile_default(&[a, b])?, "the cached programs are the compiled ones");
        let cache = COMPILED.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = vec![a, b];
        key.sort_unstable();
        assert_eq!(cache.iter().filter(|(k, _)| *k == key).count(), 1);
        Ok(())
    }

    #[test]
    fn docker_profiles() -> Result<(), RuntimeError> {
        let allowlist = r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
            {"names":["read","write","exit_group","bogus_call"],"action":"SCMP_ACT_ALLOW"},
            {"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
            {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#;
        assert_eq!(docker_profile(allowlist)?.len(), 2);
        let denylist =
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
        assert_eq!(docker_profile(denylist)?.len(), 1);
        assert!(docker_profile("{").is_err());
        assert!(docker_profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).is_err());
        Ok(())
    }
}
