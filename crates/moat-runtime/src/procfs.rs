//! Reading process information from /proc for `top`.

use moat_spec::ProcRow;

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// Rows for the given host PIDs, with PIDs as the container sees them
/// (from `NSpid`) and host PIDs kept when `with_host_pid`.
pub fn list(host_pids: &[u32], with_host_pid: bool) -> Vec<ProcRow> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let mut rows = Vec::new();
    let mut map = std::collections::HashMap::new();
    let mut raw = Vec::new();
    for &hp in host_pids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{hp}/status")) else { continue };
        let ns_pid: u32 = status_field(&status, "NSpid:")
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(hp);
        let ppid: u32 = status_field(&status, "PPid:").and_then(|v| v.parse().ok()).unwrap_or(0);
        let uid: u32 = status_field(&status, "Uid:")
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let rss_kb: u64 = status_field(&status, "VmRSS:")
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let cpu_secs = std::fs::read_to_string(format!("/proc/{hp}/stat"))
            .ok()
            .and_then(|s| {
                let after = s.rsplit_once(')')?.1;
                let f: Vec<&str> = after.split_whitespace().collect();
                let ut: f64 = f.get(11)?.parse().ok()?;
                let st: f64 = f.get(12)?.parse().ok()?;
                Some((ut + st) / ticks)
            })
            .unwrap_or(0.0);
        let cmd = std::fs::read(format!("/proc/{hp}/cmdline"))
            .ok()
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| format!("[{}]", status_field(&status, "Name:").unwrap_or("?")));
        map.insert(hp, ns_pid);
        raw.push((hp, ns_pid, ppid, uid, rss_kb, cpu_secs, cmd));
    }
    for (hp, pid, ppid, uid, rss_kb, cpu_secs, cmd) in raw {
        rows.push(ProcRow {
            pid,
            ppid: map.get(&ppid).copied().unwrap_or(0),
            host_pid: with_host_pid.then_some(hp),
            uid,
            rss_kb,
            cpu_secs,
            cmd,
        });
    }
    rows.sort_by_key(|r| r.pid);
    rows
}

/// Bytes received and sent on the interfaces of `pid`'s network namespace
/// (loopback excluded), from `/proc/<pid>/net/dev`.
pub fn net_bytes(pid: u32) -> (u64, u64) {
    parse_net_dev(&std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default())
}

fn parse_net_dev(text: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0, 0);
    for l in text.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else { continue };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        if f.len() >= 9 {
            rx += f[0];
            tx += f[8];
        }
    }
    (rx, tx)
}

#[cfg(test)]
mod net_tests {
    #[test]
    fn sums_interfaces_but_loopback() {
        let t = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 2000 20 0 0 0 0 0 0 300 3 0 0 0 0 0 0\n  eth1: 5 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n";
        assert_eq!(super::parse_net_dev(t), (2005, 307));
    }
}
