//! What a utility VM costs the host in memory, read from `/proc`.
//!
//! The guest's RAM is a memfd shared by QEMU and virtiofsd. PSS splits the
//! pages of it that each process has *mapped*, which undercounts a restored
//! clone (its RAM copy is resident where the guest has not touched it yet)
//! and hides what free page reporting gave back. So the RAM is counted once,
//! by the pages the memfd has allocated, and each process adds its PSS
//! without its shared-memory share.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

/// Host memory, in bytes, held by the processes `pids` and their
/// descendants: their PSS less their shared-memory PSS, plus the allocated
/// pages of every memfd they hold (each counted once).
pub fn host_bytes(pids: &[u32]) -> u64 {
    let mut all = BTreeSet::new();
    let mut todo: Vec<u32> = pids.to_vec();
    while let Some(p) = todo.pop() {
        if all.insert(p) {
            todo.extend(children(p));
        }
    }
    let mut kib = 0;
    let mut memfds = BTreeSet::new();
    for &p in &all {
        kib += private_kib(p);
        let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/fd")) else { continue };
        for e in dir.flatten() {
            let is_memfd = std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:"));
            if !is_memfd {
                continue;
            }
            if let Ok(m) = std::fs::metadata(e.path()) {
                if memfds.insert((m.dev(), m.ino())) {
                    kib += m.blocks() / 2;
                }
            }
        }
    }
    kib * 1024
}

/// PSS less shared-memory PSS, KiB (0 when the process is gone).
fn private_kib(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else { return 0 };
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field("Pss:").saturating_sub(field("Pss_Shmem:"))
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_memfd_once_and_gone_processes_as_nothing() {
        let fd = crate::template::memfd("usage-test", 8 << 20).expect("memfd");
        let f = std::fs::File::from(fd);
        std::io::Write::write_all(&mut &f, &vec![1u8; 4 << 20]).expect("write");
        let me = std::process::id();
        let once = host_bytes(&[me]);
        // the memfd's 4 MiB are in, and naming the process twice adds nothing
        assert!(once >= 4 << 20, "{once}");
        let twice = host_bytes(&[me, me]);
        assert!(twice.abs_diff(once) < 2 << 20, "{once} vs {twice}");
        assert_eq!(host_bytes(&[u32::MAX - 1]), 0);
    }
}
