//! Load (issue #35): 50 concurrent `moat run --rm` in process isolation,
//! twice, and 8 in hyperv, on the default switch; 50 concurrent creates
//! with generated names; 8 concurrent switches with allocated subnets. All
//! succeed, nothing is shared (IP, MAC, name, subnet, boot ID), nothing is
//! left (links, cgroups, containers), checked on the host.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::collections::BTreeSet;
use std::process::Stdio;

/// Runs `n` copies of `moat ARGS(i)` at once; returns (status ok, stdout).
fn concurrently(r: &Root, n: usize, args: impl Fn(usize) -> Vec<String>) -> Vec<(bool, String, String)> {
    let children: Vec<_> =
        (0..n).map(|i| r.cmd().args(args(i)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()).collect();
    children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .collect()
}

/// Each run prints its address, MAC and boot ID, and stays until every
/// run has (a barrier on a shared bind mount): all are alive at once, so
/// no two may hold the same address.
fn runs_share_nothing(r: &Root, n: usize, iso: &str) {
    let dir = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let script = format!(
        "ip -4 -o addr show eth0 | awk '{{print $4}}'; cat /sys/class/net/eth0/address; cat /proc/sys/kernel/random/boot_id; \
         touch /shared/$(hostname); i=0; while [ $(ls /shared | wc -l) -lt {n} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done"
    );
    let bind = format!("{}:/shared", shared.path().display());
    let out = concurrently(r, n, |i| {
        let cid = dir.path().join(format!("cid{i}"));
        vec![
            "run".into(),
            "--rm".into(),
            "--isolation".into(),
            iso.into(),
            "--cidfile".into(),
            cid.display().to_string(),
            "-v".into(),
            bind.clone(),
            "busybox".into(),
            "sh".into(),
            "-c".into(),
            script.clone(),
        ]
    });
    let failed: Vec<_> = out.iter().filter(|(ok, ..)| !ok).map(|(_, _, e)| e.clone()).collect();
    assert!(failed.is_empty(), "{iso}: {} of {n} runs failed: {failed:?}", failed.len());
    // every run reached the barrier (so all were alive together)
    assert_eq!(std::fs::read_dir(shared.path()).unwrap().count(), n);
    let (mut ips, mut macs, mut boots) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (_, o, _) in &out {
        let l: Vec<&str> = o.lines().collect();
        assert_eq!(l.len(), 3, "{o}");
        ips.insert(l[0].to_string());
        macs.insert(l[1].to_string());
        boots.insert(l[2].to_string());
    }
    assert_eq!((ips.len(), macs.len()), (n, n), "{iso}: duplicate addresses: {ips:?} {macs:?}");
    // process containers share the host's kernel (one boot ID); VMs never
    assert_eq!(boots.len(), if iso == "hyperv" { n } else { 1 }, "{iso}: boot IDs {boots:?}");
    // nothing left on the host: links, cgroups, records
    for i in 0..n {
        let id = std::fs::read_to_string(dir.path().join(format!("cid{i}"))).unwrap();
        eventually(&format!("{iso}: container {id} gone from the host"), || {
            ["t", "v"].iter().all(|k| !std::path::Path::new(&format!("/sys/class/net/mt{k}{}0", &id[..8])).exists())
                && cgroups_of(&id).is_empty()
                && host_pids_matching(&format!("moat-{}", &id[..12])).is_empty()
        });
    }
    assert_eq!(r.ok(&["ps", "-a", "-q"]), "");
}

#[test]
fn fifty_concurrent_process_runs_twice_share_nothing() {
    let r = root_with_busybox();
    for _ in 0..2 {
        runs_share_nothing(&r, 50, "process");
    }
    // generated names under concurrency: all distinct, all removable at once
    let out = concurrently(&r, 50, |_| vec!["create".into(), "--network".into(), "none".into(), "busybox".into()]);
    assert!(out.iter().all(|(ok, ..)| *ok), "{:?}", out.iter().filter(|o| !o.0).collect::<Vec<_>>());
    let names: BTreeSet<String> = r.ok(&["ps", "-a", "--format", "{{.Names}}"]).lines().map(str::to_string).collect();
    assert_eq!(names.len(), 50, "{names:?}");
    let ids: Vec<String> = out.iter().map(|(_, o, _)| o.trim().to_string()).collect();
    let rm = concurrently(&r, 50, |i| vec!["rm".into(), ids[i].clone()]);
    assert!(rm.iter().all(|(ok, ..)| *ok), "{:?}", rm.iter().filter(|o| !o.0).collect::<Vec<_>>());
    assert_eq!(r.ok(&["ps", "-a", "-q"]), "");
    // switches with allocated subnets, created at once: all distinct
    let out = concurrently(&r, 8, |i| vec!["switch".into(), "create".into(), format!("load{i}")]);
    assert!(out.iter().all(|(ok, ..)| *ok), "{:?}", out.iter().filter(|o| !o.0).collect::<Vec<_>>());
    let subnets: BTreeSet<String> = (0..8)
        .map(|i| {
            r.ok(&["switch", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", &format!("load{i}")])
        })
        .collect();
    assert_eq!(subnets.len(), 8, "{subnets:?}");
    let rm = concurrently(&r, 8, |i| vec!["switch".into(), "rm".into(), format!("load{i}")]);
    assert!(rm.iter().all(|(ok, ..)| *ok), "{:?}", rm.iter().filter(|o| !o.0).collect::<Vec<_>>());
}

#[test]
fn eight_concurrent_vm_runs_share_nothing_hyperv() {
    let r = root_with_busybox();
    runs_share_nothing(&r, 8, "hyperv");
}
