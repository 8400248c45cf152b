//! Switches end to end: process and VM containers on one switch reach each
//! other by name and IP, published ports, isolation between switches,
//! `--network none`, parallel IPAM, and cleanup of every bridge, veth, tap
//! and rule. Traffic stays between the host, moat's bridges, namespaces and
//! VMs on this machine.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const HTTPD: &str = "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 80 -h /www";

fn ip_of(r: &Root, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", name])).unwrap();
    v[0]["NetworkSettings"]["IPAddress"].as_str().unwrap().to_string()
}

fn links(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn fetch_until_ok(r: &Root, args: &[&str]) -> String {
    // a server that was just started may not listen yet: retry, bounded
    for _ in 0..50 {
        let o = r.run(args);
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).into_owned();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("never reachable: {args:?}");
}

#[test]
fn process_and_vm_reach_each_other_on_virtual_switch_hyperv() {
    let r = root_with_busybox();
    let id = r.ok(&["switch", "create", "Virtual Switch"]).trim().to_string();
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["switch", "inspect", "Virtual Switch"])).unwrap();
    let bridge = v[0]["Options"]["com.docker.network.bridge.name"].as_str().unwrap().to_string();
    assert!(bridge.len() <= 15 && links(&bridge).len() == 1, "derived bridge {bridge}");
    assert!(r.ok(&["network", "ls"]).contains("Virtual Switch"), "network is an alias of switch");
    r.ok(&[
        "run",
        "-d",
        "--name",
        "pweb",
        "--hostname",
        "pweb-host",
        "--switch",
        "Virtual Switch",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    ]);
    r.ok(&[
        "run",
        "-d",
        "--name",
        "vweb",
        "--hostname",
        "vweb-host",
        "--isolation=vm",
        "--switch",
        "Virtual Switch",
        "busybox",
        "sh",
        "-c",
        HTTPD,
    ]);
    let (pip, vip) = (ip_of(&r, "pweb"), ip_of(&r, "vweb"));
    assert_ne!(pip, vip);
    // VM -> process, by name and by IP
    let by_name = fetch_until_ok(&r, &["exec", "vweb", "wget", "-q", "-O", "-", "http://pweb/"]);
    assert_eq!(by_name.trim(), "pweb-host");
    let by_ip = fetch_until_ok(&r, &["exec", "vweb", "wget", "-q", "-O", "-", &format!("http://{pip}/")]);
    assert_eq!(by_ip.trim(), "pweb-host");
    // process -> VM, by name and by IP
    let by_name = fetch_until_ok(&r, &["exec", "pweb", "wget", "-q", "-O", "-", "http://vweb/"]);
    assert_eq!(by_name.trim(), "vweb-host");
    let by_ip = fetch_until_ok(&r, &["exec", "pweb", "wget", "-q", "-O", "-", &format!("http://{vip}/")]);
    assert_eq!(by_ip.trim(), "vweb-host");
    // IPv4-only switches: like Docker, no IPv6 on eth0 in either mode; lo keeps ::1
    for c in ["pweb", "vweb"] {
        let v6 = r.ok(&["exec", c, "ip", "-6", "-o", "addr"]);
        assert!(v6.contains("::1/128") && !v6.contains("eth0"), "{c}: {v6}");
        assert_eq!(r.ok(&["exec", c, "cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"]).trim(), "1", "{c}");
    }
    let insp: serde_json::Value = serde_json::from_str(&r.ok(&["switch", "inspect", &id[..12]])).unwrap();
    assert_eq!(insp[0]["Containers"].as_object().unwrap().len(), 2);
    let e = r.fails(&["switch", "rm", "Virtual Switch"]);
    assert!(e.contains("attached containers"), "{e}");
    r.ok(&["rm", "-f", "pweb", "vweb"]);
    r.ok(&["switch", "rm", "Virtual Switch"]);
    assert!(links(&bridge).is_empty(), "bridge removed");
}

#[test]
fn published_ports_in_both_modes_hyperv() {
    let r = root_with_busybox();
    for (iso, port) in [("process", "18080"), ("hyperv", "18081")] {
        let name = format!("web-{iso}");
        r.ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            &name,
            "--isolation",
            iso,
            "-p",
            &format!("127.0.0.1:{port}:80"),
            "busybox",
            "sh",
            "-c",
            HTTPD,
        ]);
        assert!(r.ok(&["port", &name]).contains(&format!("80/tcp -> 127.0.0.1:{port}")));
        assert!(r.ok(&["ps"]).contains(&format!("127.0.0.1:{port}->80/tcp")));
        let mut got = String::new();
        for _ in 0..50 {
            let o = std::process::Command::new("/bin/busybox")
                .args(["wget", "-q", "-O", "-", &format!("http://127.0.0.1:{port}/")])
                .output()
                .unwrap();
            if o.status.success() {
                got = String::from_utf8_lossy(&o.stdout).into_owned();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(got.trim(), name, "{iso}: the host reaches the container through the published port");
        // the port is taken while the container runs: refused before anything
        // starts (no VM boots), and the container stays created, as in Docker
        let clash = format!("clash-{iso}");
        let e = r.fails(&[
            "run",
            "-d",
            "--name",
            &clash,
            "--isolation",
            iso,
            "-p",
            &format!("127.0.0.1:{port}:80"),
            "busybox",
            "sleep",
            "1",
        ]);
        assert!(e.contains("cannot publish"), "{e}");
        let st = r.ok(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{.State.Error}}", &clash]);
        assert!(st.starts_with("created 125 cannot publish"), "{iso}: {st}");
        let vm = r.ok(&["inspect", "-f", "{{json .VM}}", &clash]);
        assert!(!vm.contains("\"Boot\""), "{iso}: no utility VM was booted: {vm}");
        r.ok(&["rm", &clash]);
        r.ok(&["rm", "-f", &name]);
        let free = std::net::TcpListener::bind(format!("127.0.0.1:{port}"));
        assert!(free.is_ok(), "{iso}: the proxy released the port");
    }
    // -P picks free ports for the image's exposed ports
    let imp = write_fixture("expose.tar", &tar_dir(busybox_rootfs()));
    r.ok(&["import", "-c", "EXPOSE 80", "-c", "CMD [\"sh\"]", imp.to_str().unwrap(), "exposed:1"]);
    r.ok(&["run", "-d", "--name", "pall", "-P", "exposed:1", "sh", "-c", HTTPD]);
    let line = r.ok(&["port", "pall"]);
    assert!(line.starts_with("80/tcp -> 0.0.0.0:"), "{line}");
    r.ok(&["rm", "-f", "pall"]);
}

#[test]
fn switches_are_isolated_and_none_has_only_loopback() {
    let r = root_with_busybox();
    r.ok(&["switch", "create", "left"]);
    r.ok(&["switch", "create", "right", "--internal"]);
    r.ok(&["run", "-d", "--name", "lweb", "--switch", "left", "busybox", "sh", "-c", HTTPD]);
    let lip = ip_of(&r, "lweb");
    fetch_until_ok(
        &r,
        &["run", "--rm", "--switch", "left", "busybox", "wget", "-q", "-O", "-", &format!("http://{lip}/")],
    );
    let out = r.ok(&[
        "run",
        "--rm",
        "--switch",
        "right",
        "busybox",
        "sh",
        "-c",
        &format!("timeout 3 wget -q -O - http://{lip}/ || echo BLOCKED"),
    ]);
    assert_eq!(out.trim(), "BLOCKED", "no traffic between switches");
    // between two ordinary switches (each with a gateway and forwarding, so
    // only the isolation rules stand between them): the container on `mid`
    // reaches its own gateway (the positive control) but not `left`'s web server
    r.ok(&["switch", "create", "mid"]);
    let out = r.ok(&[
        "run",
        "--rm",
        "--switch",
        "mid",
        "busybox",
        "sh",
        "-c",
        &format!(
            "gw=$(ip -4 route show default | cut -d' ' -f3); ping -c1 -W3 $gw >/dev/null && echo GATEWAY; \
             timeout 3 wget -q -O - http://{lip}/ || echo BLOCKED"
        ),
    ]);
    assert_eq!(out, "GATEWAY\nBLOCKED\n", "no traffic between ordinary switches");
    let out = r.ok(&["run", "--rm", "--network", "none", "busybox", "sh", "-c", "ls /sys/class/net"]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), vec!["lo"]);
    // --ip, --mac-address, --add-host, --dns
    let want = format!("{}.99", lip.rsplit_once('.').unwrap().0);
    let out =
        r.ok(&["run", "--rm", "--switch", "left", "--ip", &want, "busybox", "sh", "-c", "ip -4 -o addr show eth0"]);
    assert!(out.contains(&format!("inet {want}/")), "{out}");
    let e = r.fails(&["run", "--rm", "--switch", "left", "--ip", "192.0.2.250", "busybox", "true"]);
    assert!(e.contains("not a host address"), "{e}");
    let out = r.run(&["run", "--rm", "--switch", "left", "--ip", &lip, "busybox", "true"]);
    assert_fails_one_line(&out, "taken ip");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
    let out = r.ok(&[
        "run",
        "--rm",
        "--switch",
        "left",
        "--mac-address",
        "02:11:22:33:44:55",
        "--add-host",
        "db:10.1.2.3",
        "--dns",
        "10.0.0.53",
        "busybox",
        "sh",
        "-c",
        "cat /sys/class/net/eth0/address; grep -w db /etc/hosts; cat /etc/resolv.conf",
    ]);
    assert_eq!(out, "02:11:22:33:44:55\n10.1.2.3\tdb\nnameserver 10.0.0.53\n");
    r.ok(&["rm", "-f", "lweb"]);
    // VM isolation refuses --network host, with the reason
    let e = r.fails(&["run", "--rm", "--isolation=vm", "--network", "host", "busybox", "true"]);
    assert!(e.contains("network mode host"), "{e}");
}

#[test]
fn parallel_runs_get_distinct_addresses_and_rm_releases_them() {
    let r = root_with_busybox();
    r.ok(&["switch", "create", "par"]);
    let kids: Vec<_> = (0..8)
        .map(|i| {
            r.cmd().args(["create", "--name", &format!("p{i}"), "--switch", "par", "busybox", "true"]).spawn().unwrap()
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    let ips: std::collections::HashSet<String> = (0..8).map(|i| ip_of(&r, &format!("p{i}"))).collect();
    assert_eq!(ips.len(), 8, "no duplicate addresses: {ips:?}");
    let first = ip_of(&r, "p0");
    r.ok(&["rm", "p0"]);
    r.ok(&["create", "--name", "again", "--switch", "par", "busybox", "true"]);
    assert_eq!(ip_of(&r, "again"), first, "the released address is reused");
}

#[test]
fn endpoints_are_cleaned_after_stop_and_crash_hyperv() {
    let r = root_with_busybox();
    let pid = r.ok(&["run", "-d", "--name", "a", "busybox", "sleep", "3400"]).trim().to_string();
    let vid = r.ok(&["run", "-d", "--name", "b", "--isolation=vm", "busybox", "sleep", "3401"]).trim().to_string();
    let veth = format!("mtv{}0", &pid[..8]);
    let tap = format!("mtt{}0", &vid[..8]);
    assert_eq!(links(&veth).len(), 1);
    assert_eq!(links(&tap).len(), 1);
    r.ok(&["stop", "-t", "0", "a", "b"]);
    // the tap goes with the shim's (and QEMU's) last descriptor of it, just after the stop
    eventually("stop removes veth and tap", || links(&veth).is_empty() && links(&tap).is_empty());
    // a shim killed with SIGKILL leaves its tap; the next command cleans it
    r.ok(&["start", "b"]);
    assert_eq!(links(&tap).len(), 1);
    let shim = host_pids_matching(&format!("shim {vid}"));
    let qemu = host_pids_matching(&format!("moat-{}", &vid[..12]));
    assert_eq!(qemu.len(), 1, "the VM's QEMU");
    // SAFETY: SIGKILL to the shim this test started
    unsafe { libc::kill(shim[0] as i32, libc::SIGKILL) };
    eventually("the shim did not die", || host_pids_matching(&format!("shim {vid}")).is_empty());
    r.ok(&["ps", "-a"]);
    assert!(links(&tap).is_empty(), "stale tap removed by the next command");
    // QEMU dropped its privileges (which clears PDEATHSIG): the container's
    // host cgroup is what ends it
    eventually("QEMU outlived its shim", || !std::path::Path::new(&format!("/proc/{}", qemu[0])).exists());
    // the tap is not persistent: when shim and QEMU both die and no moat
    // command runs after them, the kernel still removes it
    r.ok(&["start", "b"]);
    assert_eq!(links(&tap).len(), 1);
    let shim = host_pids_matching(&format!("shim {vid}"));
    let qemu = host_pids_matching(&format!("moat-{}", &vid[..12]));
    assert_eq!((shim.len(), qemu.len()), (1, 1), "the shim and QEMU of b");
    for pid in [shim[0], qemu[0]] {
        // SAFETY: SIGKILL to processes this test started
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    eventually("a dead VM's tap vanishes by itself", || links(&tap).is_empty());
    r.ok(&["rm", "-f", "a", "b"]);
}

#[test]
fn connect_and_disconnect_containers() {
    let r = root_with_busybox();
    r.ok(&["switch", "create", "second"]);
    r.ok(&["create", "--name", "multi", "busybox", "sh", "-c", "ls /sys/class/net | tr '\\n' ' '"]);
    r.ok(&["switch", "connect", "second", "multi"]);
    let e = r.fails(&["switch", "connect", "second", "multi"]);
    assert!(e.contains("already on switch"), "{e}");
    assert_eq!(r.ok(&["start", "-a", "multi"]).trim(), "eth0 eth1 lo");
    let v: serde_json::Value = serde_json::from_str(&r.ok(&["inspect", "multi"])).unwrap();
    assert_eq!(v[0]["NetworkSettings"]["Networks"].as_object().unwrap().len(), 2);
    // a running process container changes at once (more in parity.rs)
    r.ok(&["run", "-d", "--name", "busy", "busybox", "sleep", "3500"]);
    r.ok(&["switch", "connect", "second", "busy"]);
    assert!(r.ok(&["exec", "busy", "ls", "/sys/class/net"]).contains("eth1"));
    r.ok(&["switch", "disconnect", "second", "multi"]);
    assert_eq!(r.ok(&["start", "-a", "multi"]).trim(), "eth0 lo");
    r.ok(&["rm", "-f", "busy"]);
    r.ok(&["switch", "rm", "second"]);
}
