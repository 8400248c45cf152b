//! `system check [--repair]`: what crashed operations can leave behind in
//! a root, found from the kernel's and the disk's state rather than the
//! records alone, and (with `repair`) removed or reconciled.
//!
//! Only what can be attributed to this root is touched: a cgroup, link or
//! QEMU process counts when it bears the ID of one of this root's
//! containers that is not running (several roots share a host).

use crate::{shim_alive, Engine, EngineError};
use std::path::{Path, PathBuf};

/// One thing found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// What is wrong, in one line.
    pub problem: String,
    /// What `--repair` did about it (`None`: not repaired).
    pub repaired: Option<String>,
}

/// What a check found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    /// Each problem, in the order found.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    /// Problems left unrepaired.
    pub fn unrepaired(&self) -> usize {
        self.findings.iter().filter(|f| f.repaired.is_none()).count()
    }
}

/// Mount points under `dir` (deepest first), from this mount namespace.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    v
}

/// Host PIDs of QEMU processes named for container `id` (`-name moat-<id12>`).
fn qemu_of(id: &str) -> Vec<i32> {
    let want = format!("moat-{}", id.get(..12).unwrap_or(id));
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_qemu = args.first().is_some_and(|a| String::from_utf8_lossy(a).contains("qemu-system"));
        if is_qemu && args.windows(2).any(|w| w[0] == b"-name" && w[1] == want.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

impl Engine {
    /// Checks the root; with `repair`, fixes what it finds. Never touches
    /// a running container.
    pub fn system_check(&mut self, repair: bool) -> Result<CheckReport, EngineError> {
        let mut rep = CheckReport::default();
        let mut found = |problem: String, fix: Option<Result<String, String>>| {
            let repaired = match fix {
                Some(Ok(done)) => Some(done),
                Some(Err(why)) => {
                    rep.findings.push(Finding { problem: format!("{problem} (repair failed: {why})"), repaired: None });
                    return;
                }
                None => None,
            };
            rep.findings.push(Finding { problem, repaired });
        };
        let rows = self.images.store().containers()?;
        let ids: std::collections::HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();

        // records whose directory is gone
        for r in &rows {
            let dir = self.layout.container(&r.id);
            if !dir.is_dir() {
                let fix = repair.then(|| {
                    self.images
                        .store_mut()
                        .delete_container(&r.id)
                        .map(|_| "removed the record".to_string())
                        .map_err(|e| e.to_string())
                });
                found(
                    format!("container {} ({}): its directory {} is missing", r.name, &r.id[..12], dir.display()),
                    fix,
                );
            }
        }
        // directories without a record (a create or remove cut short)
        for e in std::fs::read_dir(self.layout.containers()).map_err(EngineError::io("list containers"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ids.contains(&name) || !e.path().is_dir() {
                continue;
            }
            if shim_alive(&self.layout, &name) {
                found(format!("directory containers/{name} has no record but a live shim"), None);
                continue;
            }
            let fix = repair.then(|| {
                for m in mounts_under(&e.path()) {
                    let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
                }
                std::fs::remove_dir_all(e.path()).map(|_| "removed it".to_string()).map_err(|e| e.to_string())
            });
            found(format!("directory containers/{name} has no record"), fix);
        }
        // the containers of this root that are not running, and what they left
        for r in rows {
            let id = r.id.clone();
            let Ok(c) = crate::engine::parse_row(r) else {
                found(format!("container {}: its record cannot be read", &id[..12]), None);
                continue;
            };
            let alive = shim_alive(&self.layout, &id);
            if c.is_running() && !alive {
                let fix = repair.then(|| {
                    self.reconcile(c.clone()).map(|_| "recorded it exited".to_string()).map_err(|e| e.to_string())
                });
                found(format!("container {} ({}): recorded running but its shim is gone", c.name(), &id[..12]), fix);
            }
            if alive {
                continue;
            }
            let dir = self.layout.container(&id);
            for m in mounts_under(&dir) {
                let fix = repair.then(|| {
                    nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH)
                        .map(|_| "unmounted it".to_string())
                        .map_err(|e| e.to_string())
                });
                found(format!("container {} ({}): {} is still mounted", c.name(), &id[..12], m.display()), fix);
            }
            if let Some(cg) = moat_sandbox::local::read_cgroup(&dir) {
                if cg.dirs.iter().any(|(_, d)| d.is_dir()) {
                    let fix = repair.then(|| cg.destroy().map(|_| "removed it".to_string()).map_err(|e| e.to_string()));
                    found(format!("container {} ({}): its cgroup is left", c.name(), &id[..12]), fix);
                }
            }
            for n in 0..c.config.networks.len().max(1) {
                for kind in ['t', 'v'] {
                    let link = moat_net::if_name(kind, &id, n);
                    if Path::new("/sys/class/net").join(&link).exists() {
                        let fix = repair.then(|| {
                            moat_net::link::del_link(&link);
                            "deleted it".to_string()
                        });
                        found(format!("container {} ({}): link {link} is left", c.name(), &id[..12]), fix.map(Ok));
                    }
                }
            }
            for pid in qemu_of(&id) {
                let fix = repair.then(|| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
                        .map(|_| "killed it".to_string())
                        .map_err(|e| e.to_string())
                });
                found(format!("container {} ({}): its QEMU (pid {pid}) still runs", c.name(), &id[..12]), fix);
            }
        }
        // switches whose bridge is gone (a create cut short, a host reboot)
        let switches = self.switches()?;
        for sw in &switches {
            if Path::new("/sys/class/net").join(&sw.config.bridge).exists() {
                continue;
            }
            let fix = repair.then(|| {
                moat_net::link::ensure_switch(&sw.config)
                    .map(|_| "made it again".to_string())
                    .map_err(|e| e.to_string())
            });
            found(format!("switch {}: its bridge {} is missing", sw.name, sw.config.bridge), fix);
        }
        // a create cut short between the bridge and its rules
        for sw in &switches {
            if !moat_net::link::exists(&sw.config.bridge) {
                continue;
            }
            let missing = moat_net::link::missing_rules(&sw.config);
            if !missing.is_empty() {
                let fix = repair.then(|| {
                    moat_net::link::ensure_rules(&sw.config)
                        .map(|_| "added them".to_string())
                        .map_err(|e| e.to_string())
                });
                found(format!("switch {}: {} of its iptables rules are missing", sw.name, missing.len()), fix);
            }
        }
        // bridges this root made that no switch records (a reset cut short)
        let bridges: std::collections::HashSet<&str> = switches.iter().map(|s| s.config.bridge.as_str()).collect();
        let owner = moat_net::owner_mark(self.layout.root());
        for b in moat_net::link::bridges_owned_by(&owner) {
            if bridges.contains(b.as_str()) {
                continue;
            }
            let fix = repair.then(|| {
                for p in moat_net::link::ports_of(&b) {
                    moat_net::link::del_link(&p);
                }
                moat_net::link::del_link(&b);
                "deleted it".to_string()
            });
            found(format!("bridge {b} of this root has no switch record"), fix.map(Ok));
        }
        // veths and taps on this root's bridges whose container is gone
        // (the ports first, then the records: a container or pod is recorded
        // before its link is made, so a port listed here whose owner is not
        // read below is one whose owner is gone)
        let ports: Vec<(&str, String)> =
            bridges.iter().flat_map(|b| moat_net::link::ports_of(b).into_iter().map(move |p| (*b, p))).collect();
        let mut owners: Vec<String> = self.images.store().containers()?.into_iter().map(|r| r.id).collect();
        owners.extend(self.images.store().pods()?.into_iter().map(|p| p.id));
        for (b, p) in ports {
            let Some(short) = p.strip_prefix("mt").and_then(|r| r.get(1..9)) else { continue };
            if owners.iter().any(|id| id.starts_with(short)) {
                continue;
            }
            let fix = repair.then(|| {
                moat_net::link::del_link(&p);
                "deleted it".to_string()
            });
            found(format!("link {p} on bridge {b} belongs to no container"), fix.map(Ok));
        }
        // this root's rules for a bridge it has no switch for
        if let Ok(lock) = moat_net::link::host_lock() {
            for (table, rule) in moat_net::link::stray_rules(&lock, &owner, &bridges) {
                let fix = repair.then(|| {
                    moat_net::link::delete_rule_line(&lock, table, &rule)
                        .map(|_| "deleted it".to_string())
                        .map_err(|e| e.to_string())
                });
                found(format!("iptables rule without its switch: -t {table} {rule}"), fix);
            }
        }
        // scratch directories of template builds that were killed (shared
        // by the roots of a kernel directory; a live build holds its lock)
        for d in moat_vm::template::stale_scratch(&moat_vm::template::dir(&self.options.kernel_dir())) {
            let fix = repair
                .then(|| std::fs::remove_dir_all(&d).map(|_| "removed it".to_string()).map_err(|e| e.to_string()));
            found(format!("template build scratch {} was left by a killed build", d.display()), fix);
        }
        // images whose layers are missing; layers and blobs no image needs
        let known: std::collections::HashSet<String> =
            self.images.store().layers()?.into_iter().map(|(d, _)| d.hex().to_string()).collect();
        for img in self.images.store().images()? {
            if let Some(d) = img.diff_ids.iter().find(|d| !self.layout.layer(d.hex()).is_dir()) {
                found(
                    format!("image {}: layer {} is missing (load or pull the image again)", img.id.short(), d.short()),
                    None,
                );
            }
        }
        let stray: Vec<String> = std::fs::read_dir(self.layout.layers())
            .map_err(EngineError::io("list layers"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !known.contains(n))
            .collect();
        if !stray.is_empty() {
            let fix = repair.then(|| {
                self.images.gc().map(|b| format!("removed them ({b} bytes of blobs)")).map_err(|e| e.to_string())
            });
            found(
                format!(
                    "{} layer director{} without a record",
                    stray.len(),
                    if stray.len() == 1 { "y" } else { "ies" }
                ),
                fix,
            );
        }
        Ok(rep)
    }
}
