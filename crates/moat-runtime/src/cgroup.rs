//! Resource limits through cgroups, on both cgroup v1 (including the hybrid
//! layout) and v2. Each container gets `moat/<id>` in every hierarchy used.
//!
//! Written directly against the cgroupfs files: the handful moat needs
//! (memory, swap, cpu quota/weight, pids, OOM events, usage) differ between
//! v1 and v2 in names only, and a library that hides which version it wrote
//! to would make the OOM/limit tests ambiguous.

use crate::RuntimeError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    /// Legacy or hybrid: one hierarchy per controller.
    V1,
    /// Unified hierarchy.
    V2,
}

pub use moat_spec::Limits;

/// A container's cgroup (one directory per v1 controller, or one v2 directory).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cgroup {
    /// Layout.
    pub version: Version,
    /// v1: controller → directory; v2: one entry `("", dir)`.
    pub dirs: Vec<(String, PathBuf)>,
    /// Warnings about limits this host cannot enforce.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

const CGROUP2_MAGIC: i64 = 0x6367_7270;
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "freezer", "devices", "blkio", "cpuset"];

fn is_cgroup2(path: &str) -> Option<bool> {
    nix::sys::statfs::statfs(path).ok().map(|s| s.filesystem_type().0 == CGROUP2_MAGIC)
}

/// Detects the layout from the filesystem at /sys/fs/cgroup.
pub fn version() -> Version {
    if is_cgroup2("/sys/fs/cgroup") == Some(true) {
        Version::V2
    } else {
        Version::V1
    }
}

/// The layout in words, for `moat info`: `("2"|"1"|"none", description)`.
pub fn describe() -> (&'static str, &'static str) {
    match (is_cgroup2("/sys/fs/cgroup"), is_cgroup2("/sys/fs/cgroup/unified")) {
        (Some(true), _) => ("2", "unified (cgroup v2)"),
        (Some(false), Some(true)) => ("1", "hybrid (cgroup v1 controllers, cgroup v2 at /sys/fs/cgroup/unified)"),
        (Some(false), _) => ("1", "legacy (cgroup v1)"),
        (None, _) => ("none", "no cgroup filesystem mounted"),
    }
}

/// True when a v1 hierarchy also carries another controller moat needs (`cpu,cpuacct` co-mounted).
fn v1_mounts_share(mp: &Path) -> bool {
    mp.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(','))
}

/// v1 controller mount points from /proc/self/mountinfo.
fn v1_mounts() -> Vec<(String, PathBuf)> {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut out = Vec::new();
    for l in mi.lines() {
        let Some((pre, post)) = l.split_once(" - ") else { continue };
        let mut post = post.split(' ');
        if post.next() != Some("cgroup") {
            continue;
        }
        let opts = post.nth(1).unwrap_or("");
        let Some(mp) = pre.split(' ').nth(4) else { continue };
        for o in opts.split(',') {
            if V1_CONTROLLERS.contains(&o) && !out.iter().any(|(c, _)| c == o) {
                out.push((o.to_string(), PathBuf::from(mp)));
            }
        }
    }
    out
}

/// A v1 hierarchy as a container sees it: the directory name under
/// `/sys/fs/cgroup` (the host's, e.g. `cpu,cpuacct`) and its controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1View {
    /// The host's mount point name.
    pub name: String,
    /// Its controllers (the mount's options), e.g. `cpu,cpuacct`.
    pub controllers: String,
}

impl Cgroup {
    /// The v1 hierarchies this container's cgroup is in, to mount inside
    /// its cgroup namespace (where each shows the container's own cgroup as
    /// its root); the others are left out, since there the namespace's root
    /// would be the host's. Empty on cgroup v2.
    pub fn v1_views(&self) -> Vec<V1View> {
        if self.version != Version::V1 {
            return Vec::new();
        }
        let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
        let mut out: Vec<V1View> = Vec::new();
        for l in mi.lines() {
            let Some((pre, post)) = l.split_once(" - ") else { continue };
            let mut post = post.split(' ');
            if post.next() != Some("cgroup") {
                continue;
            }
            let (Some(mp), Some(opts)) = (pre.split(' ').nth(4), post.nth(1)) else { continue };
            let controllers: Vec<&str> = opts.split(',').filter(|o| V1_CONTROLLERS.contains(o)).collect();
            let mp = Path::new(mp);
            let joined = self.dirs.iter().any(|(_, d)| d.starts_with(mp));
            let name = mp.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if joined && !controllers.is_empty() && !name.is_empty() && !out.iter().any(|v| v.name == name) {
                out.push(V1View { name, controllers: controllers.join(",") });
            }
        }
        out
    }
}

fn write(dir: &Path, file: &str, val: &str) -> Result<(), RuntimeError> {
    std::fs::write(dir.join(file), val).map_err(|e| {
        let ctrl = file.split('.').next().unwrap_or(file);
        if !dir.join(file).exists() && dir.join("cgroup.controllers").exists() {
            // cgroup v2: the file appears only when the parent hands the
            // controller down, which it cannot while it holds processes
            return RuntimeError::Invalid(format!(
                "cgroup v2: no {ctrl} controller in {}: a cgroup that holds processes cannot hand controllers \
                 to its children; run moat from the root cgroup, or from a delegated one whose processes sit in \
                 a leaf (as docker-in-docker moves its own)",
                dir.display()
            ));
        }
        RuntimeError::Io(format!("cgroup: write {val:?} to {}", dir.join(file).display()), e)
    })
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok().map(|s| s.trim().to_string())
}

fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    read(dir, file)?.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(key)).then(|| f.next().and_then(|v| v.parse().ok())).flatten()
    })
}

impl Cgroup {
    /// Creates `moat/<name>` with `limits` applied. `name` may nest
    /// (`pod-x/ID`): the levels between `moat` and the container's cgroup
    /// are a group's (a pod's), whose own limits bound all of it.
    pub fn create(name: &str, limits: &Limits) -> Result<Self, RuntimeError> {
        match version() {
            Version::V2 => Self::create_v2(Path::new("/sys/fs/cgroup"), name, limits),
            Version::V1 => {
                // joining a v1 `cpu` cgroup costs ~20 ms of RCU synchronisation
                // per container start: only do it when a CPU limit asks for it
                // (usage is still accounted by `cpuacct`)
                // (a nested cgroup joins it always: its group's CPU limit must apply)
                let want_cpu = limits.cpus.is_some() || limits.cpu_shares.is_some() || name.contains('/');
                // likewise the cpuset hierarchy, only for a cpuset
                let want_cpuset = limits.cpuset_cpus.is_some() || limits.cpuset_mems.is_some();
                let mounts: Vec<(String, PathBuf)> = v1_mounts()
                    .into_iter()
                    .filter(|(c, mp)| want_cpu || c != "cpu" || v1_mounts_share(mp))
                    .filter(|(c, _)| want_cpuset || c != "cpuset")
                    .collect();
                Self::create_v1(&mounts, name, limits)
            }
        }
    }

    /// Creates `moat` under a unified hierarchy mounted at `base`, with the
    /// memory, cpu, pids and io controllers enabled for its children (a
    /// utility VM's template does this once for all its clones).
    pub fn prepare_v2(base: &Path) -> Result<PathBuf, RuntimeError> {
        let parent = base.join("moat");
        std::fs::create_dir_all(&parent).map_err(RuntimeError::io("cgroup: create moat"))?;
        // a non-root cgroup that holds processes (moat in a container's
        // cgroup namespace) takes no domain controller for its children;
        // enabling only the threaded ones would turn it threaded and make
        // its processes unmovable: leave it alone (a limit then fails with
        // the reason, see `write`)
        let root = !base.join("cgroup.type").exists();
        let busy = read(base, "cgroup.procs").is_some_and(|p| !p.is_empty());
        let levels: &[&Path] = if busy && !root { &[parent.as_path()] } else { &[base, parent.as_path()] };
        for d in levels {
            let on = read(d, "cgroup.subtree_control").unwrap_or_default();
            // one by one: a controller missing on an exotic setup must not block the others
            for c in ["memory", "cpu", "pids", "io", "cpuset"] {
                if !on.split_whitespace().any(|x| x == c) {
                    let _ = std::fs::write(d.join("cgroup.subtree_control"), format!("+{c}"));
                }
            }
        }
        Ok(parent)
    }

    /// Creates `moat/<name>` under a unified hierarchy mounted at `base`.
    pub fn create_v2(base: &Path, name: &str, limits: &Limits) -> Result<Self, RuntimeError> {
        let moat = Self::prepare_v2(base)?;
        let dir = moat.join(name);
        std::fs::create_dir_all(&dir).map_err(RuntimeError::io("cgroup: create container cgroup"))?;
        // a group's level hands its controllers down too
        let mut level = dir.parent().map(Path::to_path_buf);
        while let Some(l) = level.filter(|l| l.starts_with(&moat) && *l != moat) {
            let on = read(&l, "cgroup.subtree_control").unwrap_or_default();
            for c in ["memory", "cpu", "pids", "io", "cpuset"] {
                if !on.split_whitespace().any(|x| x == c) {
                    let _ = std::fs::write(l.join("cgroup.subtree_control"), format!("+{c}"));
                }
            }
            level = l.parent().map(Path::to_path_buf);
        }
        Self { version: Version::V2, dirs: vec![(String::new(), dir)], warnings: Vec::new() }.finish(limits)
    }

    /// Creates `moat/<name>` in each v1 controller hierarchy of `mounts`.
    pub fn create_v1(mounts: &[(String, PathBuf)], name: &str, limits: &Limits) -> Result<Self, RuntimeError> {
        let mut dirs: Vec<(String, PathBuf)> = Vec::new();
        for (ctrl, mp) in mounts {
            let dir = mp.join("moat").join(name);
            std::fs::create_dir_all(&dir).map_err(RuntimeError::io(format!("cgroup: create {}", dir.display())))?;
            if ctrl == "cpuset" {
                // a v1 cpuset takes no task until its CPUs and nodes are set:
                // each level starts with its parent's
                let mut levels = vec![mp.clone(), mp.join("moat")];
                let mut at = mp.join("moat");
                for part in Path::new(name).components() {
                    at = at.join(part);
                    levels.push(at.clone());
                }
                for (parent, child) in levels.iter().zip(levels.iter().skip(1)) {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        if read(child, f).is_none_or(|v| v.is_empty()) {
                            write(child, f, &read(parent, f).unwrap_or_default())?;
                        }
                    }
                }
            }
            if !dirs.iter().any(|(_, d)| d == &dir) {
                dirs.push((ctrl.clone(), dir));
            }
        }
        Self { version: Version::V1, dirs, warnings: Vec::new() }.finish(limits)
    }

    fn finish(mut self, limits: &Limits) -> Result<Self, RuntimeError> {
        if let Err(e) = self.apply(limits) {
            let _ = self.destroy();
            return Err(e);
        }
        Ok(self)
    }

    fn dir(&self, ctrl: &str) -> Option<&Path> {
        match self.version {
            Version::V2 => self.dirs.first().map(|(_, d)| d.as_path()),
            Version::V1 => self.dirs.iter().find(|(c, _)| c == ctrl).map(|(_, d)| d.as_path()),
        }
    }

    fn need(&self, ctrl: &str) -> Result<&Path, RuntimeError> {
        self.dir(ctrl)
            .ok_or_else(|| RuntimeError::Invalid(format!("cgroup controller {ctrl} is not available on this host")))
    }

    fn apply(&mut self, l: &Limits) -> Result<(), RuntimeError> {
        match self.version {
            Version::V1 => {
                if let Some(m) = l.memory {
                    let d = self.need("memory")?;
                    let swap = match l.memory_swap {
                        Some(-1) => Some(-1),
                        Some(s) => Some(s),
                        None => Some(m.saturating_mul(2)),
                    };
                    let memsw = d.join("memory.memsw.limit_in_bytes").exists();
                    // memory ≤ memory+swap at every step: raising past the old
                    // memsw needs memsw first (a running container's update)
                    if write(d, "memory.limit_in_bytes", &m.to_string()).is_err() {
                        if let (Some(s), true) = (swap, memsw) {
                            write(d, "memory.memsw.limit_in_bytes", &s.to_string())?;
                        }
                        write(d, "memory.limit_in_bytes", &m.to_string())?;
                    }
                    if let Some(s) = swap {
                        if memsw {
                            write(d, "memory.memsw.limit_in_bytes", &s.to_string())?;
                        } else if l.memory_swap.is_some() {
                            self.warnings.push(
                                "your kernel does not support swap limit capabilities: --memory-swap discarded".into(),
                            );
                        }
                    }
                }
                if let Some(c) = l.cpus {
                    let d = self.need("cpu")?;
                    write(d, "cpu.cfs_period_us", "100000")?;
                    write(d, "cpu.cfs_quota_us", &((c * 100_000.0).round() as i64).to_string())?;
                }
                if let Some(s) = l.cpu_shares {
                    write(self.need("cpu")?, "cpu.shares", &s.to_string())?;
                }
                if let Some(p) = l.pids.filter(|p| *p > 0) {
                    write(self.need("pids")?, "pids.max", &p.to_string())?;
                }
                if let Some(rules) = l.devices.rules() {
                    crate::devices::apply_v1(self.need("devices")?, &rules)?;
                }
                if let Some(r) = l.memory_reservation {
                    write(self.need("memory")?, "memory.soft_limit_in_bytes", &r.to_string())?;
                }
                if let Some(s) = l.swappiness {
                    write(self.need("memory")?, "memory.swappiness", &s.to_string())?;
                }
                if l.oom_kill_disable {
                    write(self.need("memory")?, "memory.oom_control", "1")?;
                }
                if let Some(c) = &l.cpuset_cpus {
                    write(self.need("cpuset")?, "cpuset.cpus", c)?;
                }
                if let Some(m) = &l.cpuset_mems {
                    write(self.need("cpuset")?, "cpuset.mems", m)?;
                }
            }
            Version::V2 => {
                let d = self.need("")?.to_path_buf();
                if let Some(m) = l.memory {
                    write(&d, "memory.max", &m.to_string())?;
                    let swap = match l.memory_swap {
                        Some(-1) => "max".to_string(),
                        Some(s) => (s - m).max(0).to_string(),
                        None => m.to_string(),
                    };
                    if d.join("memory.swap.max").exists() {
                        write(&d, "memory.swap.max", &swap)?;
                    } else if l.memory_swap.is_some() {
                        self.warnings.push(
                            "your kernel does not support swap limit capabilities: --memory-swap discarded".into(),
                        );
                    }
                }
                if let Some(c) = l.cpus {
                    write(&d, "cpu.max", &format!("{} 100000", (c * 100_000.0).round() as i64))?;
                }
                if let Some(s) = l.cpu_shares {
                    // runc's conversion of shares [2, 262144] to weight [1, 10000]
                    let w = 1 + ((s.clamp(2, 262_144) - 2) * 9999) / 262_142;
                    write(&d, "cpu.weight", &w.to_string())?;
                }
                if let Some(p) = l.pids.filter(|p| *p > 0) {
                    write(&d, "pids.max", &p.to_string())?;
                }
                if let Some(rules) = l.devices.rules() {
                    crate::devices::attach_v2(&d, &rules)?;
                }
                if let Some(r) = l.memory_reservation {
                    write(&d, "memory.low", &r.to_string())?;
                }
                if l.swappiness.is_some() || l.oom_kill_disable {
                    return Err(RuntimeError::Invalid(
                        "cgroup v2 has no per-container swappiness or OOM-killer switch".into(),
                    ));
                }
                if let Some(c) = &l.cpuset_cpus {
                    write(&d, "cpuset.cpus", c)?;
                }
                if let Some(m) = &l.cpuset_mems {
                    write(&d, "cpuset.mems", m)?;
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files of every hierarchy (a process joins by writing `0`).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.join("cgroup.procs")).collect()
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: u32) -> Result<(), RuntimeError> {
        for (_, d) in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// True when the kernel OOM-killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        let n = match self.version {
            Version::V1 => self.dir("memory").and_then(|d| keyed(d, "memory.oom_control", "oom_kill")),
            Version::V2 => self.dir("").and_then(|d| keyed(d, "memory.events", "oom_kill")),
        };
        n.unwrap_or(0) > 0
    }

    /// Host PIDs of the cgroup's processes.
    pub fn pids(&self) -> Vec<u32> {
        let d = match self.version {
            Version::V1 => self.dir("pids").or_else(|| self.dir("memory")),
            Version::V2 => self.dir(""),
        };
        d.and_then(|d| read(d, "cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Current usage.
    pub fn stats(&self) -> moat_spec::Stats {
        let num = |d: Option<&Path>, f: &str| d.and_then(|d| read(d, f)).and_then(|s| s.parse::<u64>().ok());
        let (mem_usage, mem_limit, cpu_ns, pids) = match self.version {
            Version::V1 => {
                let mem = num(self.dir("memory"), "memory.usage_in_bytes").unwrap_or(0);
                let lim = num(self.dir("memory"), "memory.limit_in_bytes").filter(|l| *l < (1 << 62)).unwrap_or(0);
                let cpu = num(self.dir("cpuacct"), "cpuacct.usage").unwrap_or(0);
                let pids = num(self.dir("pids"), "pids.current").unwrap_or(0);
                (mem, lim, cpu, pids)
            }
            Version::V2 => {
                let d = self.dir("");
                let mem = num(d, "memory.current").unwrap_or(0);
                let lim = num(d, "memory.max").unwrap_or(0);
                let cpu = d.and_then(|d| keyed(d, "cpu.stat", "usage_usec")).unwrap_or(0) * 1000;
                let pids = num(d, "pids.current").unwrap_or(0);
                (mem, lim, cpu, pids)
            }
        };
        let (blk_read, blk_write) = self.block_io();
        moat_spec::Stats { mem_usage, mem_limit, cpu_ns, pids, blk_read, blk_write, ..Default::default() }
    }

    /// Bytes read and written on block devices by the cgroup (v2
    /// `io.stat`, v1 `blkio.throttle.io_service_bytes`), all devices summed.
    fn block_io(&self) -> (u64, u64) {
        let (mut r, mut w) = (0, 0);
        match self.version {
            Version::V2 => {
                for l in self.dir("").and_then(|d| read(d, "io.stat")).unwrap_or_default().lines() {
                    for kv in l.split_whitespace().skip(1) {
                        match kv.split_once('=') {
                            Some(("rbytes", v)) => r += v.parse::<u64>().unwrap_or(0),
                            Some(("wbytes", v)) => w += v.parse::<u64>().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
            }
            Version::V1 => {
                let text =
                    self.dir("blkio").and_then(|d| read(d, "blkio.throttle.io_service_bytes")).unwrap_or_default();
                for l in text.lines() {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    match f.as_slice() {
                        [_, "Read", v] => r += v.parse::<u64>().unwrap_or(0),
                        [_, "Write", v] => w += v.parse::<u64>().unwrap_or(0),
                        _ => {}
                    }
                }
            }
        }
        (r, w)
    }

    /// Freezes (`true`) or thaws every process of the cgroup and waits for
    /// the freezer to settle (v1 `freezer.state`, v2 `cgroup.freeze`).
    pub fn freeze(&self, frozen: bool) -> Result<(), RuntimeError> {
        match self.version {
            Version::V1 => {
                let d = self.need("freezer")?;
                let want = if frozen { "FROZEN" } else { "THAWED" };
                write(d, "freezer.state", want)?;
                for _ in 0..1000 {
                    if read(d, "freezer.state").as_deref() == Some(want) {
                        return Ok(());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(RuntimeError::Invalid(format!("the freezer did not reach {want}")))
            }
            Version::V2 => {
                let d = self.need("")?;
                write(d, "cgroup.freeze", if frozen { "1" } else { "0" })?;
                for _ in 0..1000 {
                    if keyed(d, "cgroup.events", "frozen") == Some(frozen as u64) {
                        return Ok(());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(RuntimeError::Invalid("the cgroup did not settle its freeze state".into()))
            }
        }
    }

    /// Applies new limits to a cgroup in use (memory, swap, CPU, pids; not
    /// devices). A v1 `cpu` hierarchy the cgroup skipped at start (no CPU
    /// limit then) is joined now, with every process in it.
    pub fn update(&mut self, l: &Limits) -> Result<Vec<String>, RuntimeError> {
        if self.version == Version::V1 && (l.cpus.is_some() || l.cpu_shares.is_some()) && self.dir("cpu").is_none() {
            if let Some((_, mp)) = v1_mounts().into_iter().find(|(c, _)| c == "cpu") {
                let dir = mp.join("moat").join(self.dirs.first().and_then(|(_, d)| d.file_name()).unwrap_or_default());
                std::fs::create_dir_all(&dir).map_err(RuntimeError::io(format!("cgroup: create {}", dir.display())))?;
                for p in self.pids() {
                    write(&dir, "cgroup.procs", &p.to_string())?;
                }
                self.dirs.push(("cpu".into(), dir));
            }
        }
        let only = Limits { devices: crate::devices::DevicePolicy::AllowAll, ..l.clone() };
        self.warnings.clear();
        self.apply(&only)?;
        Ok(std::mem::take(&mut self.warnings))
    }

    /// Removes group `moat/<name>` (a pod's) in every hierarchy, once its
    /// containers' cgroups are gone; a group still in use stays.
    pub fn remove_group(name: &str) {
        let mut bases: Vec<PathBuf> = v1_mounts().into_iter().map(|(_, mp)| mp).collect();
        if version() == Version::V2 {
            bases = vec![PathBuf::from("/sys/fs/cgroup")];
        }
        bases.dedup();
        for b in bases {
            let _ = std::fs::remove_dir(b.join("moat").join(name));
        }
    }

    /// Kills whatever is left and removes the directories.
    pub fn destroy(&self) -> Result<(), RuntimeError> {
        for _ in 0..200 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut last = Ok(());
        for (_, d) in &self.dirs {
            // a just-killed task can keep the cgroup busy for a moment
            for attempt in 0..200 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if attempt == 199 => {
                        last = Err(RuntimeError::Io(format!("cgroup: remove {}", d.display()), e))
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::DevicePolicy;

    fn limits() -> Limits {
        Limits {
            memory: Some(64 << 20),
            memory_swap: Some(-1),
            cpus: Some(0.5),
            cpu_shares: Some(512),
            pids: Some(20),
            // a fake cgroupfs takes no BPF program: the real one is tested below
            devices: DevicePolicy::AllowAll,
            cpuset_cpus: Some("1".into()),
            cpuset_mems: Some("0".into()),
            memory_reservation: Some(32 << 20),
            swappiness: None,
            oom_kill_disable: false,
        }
    }

    fn rd(p: PathBuf) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    /// cgroup v2 file names and values, against a fake cgroupfs directory.
    #[test]
    fn v2_writes_unified_files() -> Result<(), RuntimeError> {
        let d = tempfile::tempdir().map_err(RuntimeError::io("tempdir"))?;
        std::fs::create_dir_all(d.path().join("moat/c1")).map_err(RuntimeError::io("mkdir"))?;
        std::fs::write(d.path().join("moat/c1/memory.swap.max"), "").map_err(RuntimeError::io("seed"))?;
        let cg = Cgroup::create_v2(d.path(), "c1", &limits())?;
        let dir = d.path().join("moat/c1");
        assert_eq!(rd(dir.join("memory.max")), "67108864");
        assert_eq!(rd(dir.join("memory.swap.max")), "max");
        assert_eq!(rd(dir.join("cpu.max")), "50000 100000");
        assert_eq!(rd(dir.join("cpu.weight")), "20");
        assert_eq!(rd(dir.join("pids.max")), "20");
        assert_eq!((rd(dir.join("cpuset.cpus")), rd(dir.join("cpuset.mems"))), ("1".into(), "0".into()));
        assert_eq!(rd(dir.join("memory.low")), "33554432");
        assert_eq!(
            rd(d.path().join("moat/cgroup.subtree_control")),
            "+cpuset",
            "controllers enabled (last write wins on a plain file)"
        );
        std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
            .map_err(RuntimeError::io("seed"))?;
        assert!(cg.oom_killed());
        std::fs::write(dir.join("cgroup.procs"), "").map_err(RuntimeError::io("seed"))?;
        assert!(cg.pids().is_empty());
        Ok(())
    }

    /// cgroup v1 file names and values, against fake per-controller dirs.
    #[test]
    fn v1_writes_per_controller_files() -> Result<(), RuntimeError> {
        let d = tempfile::tempdir().map_err(RuntimeError::io("tempdir"))?;
        let mounts: Vec<(String, PathBuf)> =
            ["memory", "cpu", "pids", "devices", "cpuset"].iter().map(|c| (c.to_string(), d.path().join(c))).collect();
        // the root cpuset of a fake hierarchy: what each new level starts with
        std::fs::create_dir_all(d.path().join("cpuset")).map_err(RuntimeError::io("mkdir"))?;
        std::fs::write(d.path().join("cpuset/cpuset.cpus"), "0-1\n").map_err(RuntimeError::io("seed"))?;
        std::fs::write(d.path().join("cpuset/cpuset.mems"), "0\n").map_err(RuntimeError::io("seed"))?;
        let cg = Cgroup::create_v1(
            &mounts,
            "c1",
            &Limits {
                memory_swap: None,
                devices: DevicePolicy::default(),
                swappiness: Some(10),
                oom_kill_disable: true,
                ..limits()
            },
        )?;
        assert_eq!(rd(d.path().join("devices/moat/c1/devices.deny")), "a");
        assert_eq!(rd(d.path().join("devices/moat/c1/devices.allow")), "c 10:200 rwm", "the last allow rule");
        assert_eq!(rd(d.path().join("memory/moat/c1/memory.limit_in_bytes")), "67108864");
        assert_eq!(rd(d.path().join("cpu/moat/c1/cpu.cfs_quota_us")), "50000");
        assert_eq!(rd(d.path().join("cpu/moat/c1/cpu.shares")), "512");
        assert_eq!(rd(d.path().join("memory/moat/c1/memory.soft_limit_in_bytes")), "33554432");
        assert_eq!(rd(d.path().join("memory/moat/c1/memory.swappiness")), "10");
        assert_eq!(rd(d.path().join("memory/moat/c1/memory.oom_control")), "1");
        assert_eq!(rd(d.path().join("pids/moat/c1/pids.max")), "20");
        assert_eq!(rd(d.path().join("cpuset/moat/cpuset.cpus")), "0-1", "the parent level starts with the root's");
        assert_eq!(rd(d.path().join("cpuset/moat/cpuset.mems")), "0");
        assert_eq!(rd(d.path().join("cpuset/moat/c1/cpuset.cpus")), "1");
        std::fs::write(
            d.path().join("memory/moat/c1/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .map_err(RuntimeError::io("seed"))?;
        assert!(!cg.oom_killed());
        Ok(())
    }

    /// The v2 device filter for real: a BPF program attached to a cgroup of
    /// this host's unified hierarchy (also present on v1-hybrid hosts) stops
    /// a process in it from opening /dev/kvm while /dev/null still works.
    #[test]
    fn v2_device_filter_is_enforced_by_the_kernel() -> Result<(), RuntimeError> {
        let base = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .find(|p| is_cgroup2(p) == Some(true))
            .ok_or_else(|| RuntimeError::Invalid("no cgroup2 hierarchy on this host".into()))?;
        let name = format!("devtest-{}", std::process::id());
        let dir = Path::new(base).join("moat").join(&name);
        std::fs::create_dir_all(&dir).map_err(RuntimeError::io("mkdir"))?;
        // as a template's agent does: the filter loaded once, then only attached
        crate::devices::preload_default()?;
        crate::devices::preload_default()?;
        assert_eq!(crate::devices::loaded_count(), 1, "one load for the same program");
        let attached = crate::devices::attach_v2(&dir, &crate::devices::default_rules());
        let out = attached.and_then(|()| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && echo ok > /dev/null && head -c1 /dev/zero >/dev/null && \
                     if (exec 3<>/dev/kvm); then echo OPENED; else echo DENIED; fi",
                    dir.display()
                ))
                .output()
                .map_err(RuntimeError::io("run sh"))
        });
        let _ = std::fs::remove_dir(&dir);
        let out = out?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "sh failed: {text} {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(text.trim(), "DENIED", "stderr: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("not permitted"));
        Ok(())
    }
}
