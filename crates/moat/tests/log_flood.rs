//! A gigabyte of output (issue #35): a container writes 1 GB to stdout as
//! fast as it can (a million numbered lines of 1 kB) while three `moat logs
//! -f` and one `docker logs -f` (through `moat serve`) follow it from its
//! first line. Every follower gets every line, in order; the log is rotated
//! as configured (10 MB × 3) meanwhile; the shim and the followers stay
//! within their memory bounds (the shim holds a follower's backlog up to
//! 4 MiB, then stops reading the container: slow readers slow the writer,
//! they do not lose lines).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::BufRead;

const LINES: u64 = 1_000_000;
const PAD: usize = 1000;

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

/// Reads a follower's output, checking each line; returns (lines, bytes).
fn check(out: impl std::io::Read, who: &str) -> (u64, u64) {
    let mut r = std::io::BufReader::with_capacity(1 << 20, out);
    let mut line = String::new();
    let (mut n, mut bytes) = (0u64, 0u64);
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            return (n, bytes);
        }
        n += 1;
        bytes += line.len() as u64;
        // the number, then PAD spaces and the newline (checked by the length)
        let digits = line.bytes().position(|b| b == b' ').unwrap_or(line.len());
        let ok = line[..digits].parse::<u64>().ok() == Some(n) && line.len() == digits + PAD + 1;
        assert!(ok, "{who}: line {n} is {:?}", &line[..line.len().min(40)]);
    }
}

#[test]
fn a_gigabyte_followed_by_four_clients_loses_nothing() {
    let r = root_with_busybox();
    let api = ApiServer::start(&r);
    let gate = tempfile::tempdir().unwrap();
    let script = format!(
        "while [ ! -e /gate/go ]; do sleep 0.05; done; \
         awk 'BEGIN {{ s = sprintf(\"%{PAD}s\", \"\"); for (i = 1; i <= {LINES}; i++) print i s }}'"
    );
    let mount = format!("{}:/gate:ro", gate.path().display());
    r.ok(&[
        "run",
        "-d",
        "--name",
        "flood",
        "--network",
        "none",
        "-v",
        &mount,
        "--log-opt",
        "max-size=10m",
        "--log-opt",
        "max-file=3",
        "busybox",
        "sh",
        "-c",
        &script,
    ]);
    let id = r.ok(&["inspect", "-f", "{{.Id}}", "flood"]).trim().to_string();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.path().join("containers").join(&id).join("state.json")).unwrap())
            .unwrap();
    let shim = u32::try_from(state["shim_pid"].as_u64().unwrap()).unwrap();

    let mut followers = Vec::new();
    for i in 0..3 {
        let c = r.cmd().args(["logs", "-f", "flood"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
        followers.push((format!("moat logs -f #{i}"), c));
    }
    let c = api.docker_cmd().args(["logs", "-f", "flood"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    followers.push(("docker logs -f".to_string(), c));
    let pids: Vec<u32> = followers.iter().map(|(_, c)| c.id()).collect();
    let readers: Vec<_> = followers
        .iter_mut()
        .map(|(who, c)| {
            let out = c.stdout.take().unwrap();
            let who = who.clone();
            std::thread::spawn(move || check(out, &who))
        })
        .collect();
    // all four follow before the first line is written
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::write(gate.path().join("go"), "").unwrap();

    let log_dir = r.path().join("containers").join(&id);
    let (mut shim_peak, mut follower_peak, mut files_peak) = (0, 0, 0);
    while !readers.iter().all(|t| t.is_finished()) {
        shim_peak = shim_peak.max(rss_kb(shim));
        follower_peak = follower_peak.max(pids.iter().map(|p| rss_kb(*p)).max().unwrap_or(0));
        let files: Vec<u64> = std::fs::read_dir(&log_dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("-json.log"))
            .filter_map(|e| e.metadata().ok().map(|m| m.len()))
            .collect();
        assert!(files.len() <= 3 && files.iter().all(|l| *l <= 10 << 20), "rotation: {files:?}");
        files_peak = files_peak.max(files.len());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let want = (LINES, (1..=LINES).map(|i| i.to_string().len() as u64 + PAD as u64 + 1).sum::<u64>());
    for ((who, mut c), t) in followers.into_iter().zip(readers) {
        assert_eq!(t.join().unwrap(), want, "{who}: every line, in order");
        assert!(c.wait().unwrap().success(), "{who}");
    }
    assert!(want.1 > 1_000_000_000, "a gigabyte went through: {}", want.1);
    assert_eq!(files_peak, 3, "the log was rotated");
    assert_eq!(r.ok(&["inspect", "-f", "{{.State.ExitCode}}", "flood"]), "0\n");
    // bounds: the shim (its backlog per follower is 4 MiB) and each follower
    assert!(shim_peak > 0 && shim_peak < 64 << 10, "shim RSS peak {shim_peak} kB");
    assert!(follower_peak > 0 && follower_peak < 64 << 10, "follower RSS peak {follower_peak} kB");
    eprintln!("peaks: shim {shim_peak} kB, follower {follower_peak} kB");
}
