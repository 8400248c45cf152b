//! Whole-root operations: `system boot` (restart policies without a
//! daemon), `system df`, `system prune`, `network prune`, `system reset`.

use crate::config::{RestartPolicy, Status};
use crate::{Container, Engine, EngineError, StopOptions};
use serde::Serialize;

/// What `system boot` did with one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    /// The container's name.
    pub name: String,
    /// Started, or why not.
    pub result: Result<(), String>,
}

/// Whether a stopped container's restart policy wants it running again
/// after its shim (or the host) went away.
pub fn wants_restart(c: &Container) -> bool {
    if c.is_running() {
        return false;
    }
    // never started: nothing to restore
    if c.state.started_at.is_none() || c.state.status == Status::Created {
        return false;
    }
    match c.config.restart {
        RestartPolicy::No => false,
        // like Docker when its daemon starts: even a manually stopped one
        RestartPolicy::Always => true,
        RestartPolicy::UnlessStopped => !c.state.manually_stopped,
        RestartPolicy::OnFailure { max } => {
            c.state.exit_code != 0 && !c.state.manually_stopped && (max == 0 || c.state.restart_count < max)
        }
    }
}

/// Space used (`system df`).
#[derive(Debug, Clone, Serialize)]
pub struct DiskUsage {
    /// Images: count, in use, bytes, reclaimable bytes.
    #[serde(rename = "Images")]
    pub images: UsageRow,
    /// Containers: count, running, bytes of their writable layers, reclaimable.
    #[serde(rename = "Containers")]
    pub containers: UsageRow,
    /// Volumes.
    #[serde(rename = "Volumes")]
    pub volumes: UsageRow,
}

/// One row of `system df`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct UsageRow {
    /// Objects.
    #[serde(rename = "TotalCount")]
    pub total: usize,
    /// In use.
    #[serde(rename = "Active")]
    pub active: usize,
    /// Bytes.
    #[serde(rename = "Size")]
    pub size: u64,
    /// Bytes a prune would free.
    #[serde(rename = "Reclaimable")]
    pub reclaimable: u64,
}

/// What a prune removed.
#[derive(Debug, Clone, Default)]
pub struct PruneSummary {
    /// Pods (none of whose containers ran).
    pub pods: Vec<String>,
    /// Containers.
    pub containers: Vec<String>,
    /// Switch names.
    pub networks: Vec<String>,
    /// Image IDs.
    pub images: Vec<String>,
    /// Volume names (with `volumes`).
    pub volumes: Vec<String>,
    /// Build cache entries forgotten.
    pub build_cache: usize,
    /// Bytes freed.
    pub reclaimed: u64,
}

impl Engine {
    /// Repairs what crashes left (`system_check`), then starts every
    /// container whose restart policy wants it running but
    /// whose shim is gone (killed, or the host rebooted): what a daemon
    /// does when it starts. Run at boot by `contrib/moat-boot.service`.
    pub fn boot(&mut self) -> Result<Vec<Booted>, EngineError> {
        // what a crash (or the reboot) left behind goes first
        match self.system_check(true) {
            Ok(rep) => {
                for f in rep.findings {
                    tracing::warn!("system check: {}: {}", f.problem, f.repaired.as_deref().unwrap_or("left as it is"));
                }
            }
            Err(e) => tracing::warn!("system check: {e}"),
        }
        let mut out = Vec::new();
        for c in self.list()? {
            if wants_restart(&c) {
                let result = self.start(c.id()).map(|_| ()).map_err(|e| e.to_string());
                out.push(Booted { name: c.name().to_string(), result });
            }
        }
        Ok(out)
    }

    /// Space used by images and containers.
    pub fn disk_usage(&mut self) -> Result<DiskUsage, EngineError> {
        let containers = self.list()?;
        let images = self.images.list()?;
        let mut used = std::collections::HashSet::new();
        let mut cs = UsageRow { total: containers.len(), ..Default::default() };
        for c in &containers {
            used.insert(c.row.image_id.clone());
            let size = moat_store::dir_size(&self.layout.container(c.id()).join("upper"));
            cs.size += size;
            if c.is_running() {
                cs.active += 1;
            } else {
                cs.reclaimable += size;
            }
        }
        let mut is = UsageRow { total: images.len(), ..Default::default() };
        for i in &images {
            is.size += i.size;
            if used.contains(&i.id) {
                is.active += 1;
            } else {
                is.reclaimable += i.size;
            }
        }
        let mut vs = UsageRow::default();
        for (v, users) in self.volumes(&crate::volumes::VolumeFilter::default())? {
            let size = moat_store::dir_size(&v.mountpoint);
            vs.total += 1;
            vs.size += size;
            if users > 0 {
                vs.active += 1;
            } else {
                vs.reclaimable += size;
            }
        }
        Ok(DiskUsage { images: is, containers: cs, volumes: vs })
    }

    /// Removes switches no container uses (never the default switch).
    pub fn prune_switches(&mut self) -> Result<Vec<String>, EngineError> {
        let mut out = Vec::new();
        for s in self.switches()? {
            if crate::network::is_default(&s.name) || !self.images.store().switch_members(&s.id)?.is_empty() {
                continue;
            }
            self.remove_switch(&s.id)?;
            out.push(s.name);
        }
        Ok(out)
    }

    /// Stopped containers, unused switches, dangling (or, with `all`,
    /// unused) images, and with `volumes` unused anonymous volumes (with
    /// `all` too, every unused volume), like `docker system prune`.
    pub fn system_prune(&mut self, all: bool, volumes: bool) -> Result<PruneSummary, EngineError> {
        let pods = self.pod_prune()?.into_iter().map(|p| p.id).collect();
        let containers = self.prune(&crate::container_filter::ContainerFilter::default())?;
        let networks = self.prune_switches()?;
        let vols = if volumes {
            self.volume_prune(all, &crate::volumes::VolumeFilter::default())?
        } else {
            crate::volumes::VolumePrune::default()
        };
        let cache = self.build_prune()?;
        let mut rep = self.prune_images(all)?;
        rep.deleted.extend(cache.images);
        rep.reclaimed += cache.reclaimed;
        Ok(PruneSummary {
            build_cache: cache.entries,
            pods,
            containers: containers.deleted,
            networks,
            images: rep.deleted.iter().map(|d| d.to_string()).collect(),
            volumes: vols.deleted,
            reclaimed: rep.reclaimed + vols.reclaimed + containers.space_reclaimed,
        })
    }

    /// Removes everything of this root from the host: every container
    /// (stopped, their VMs and mounts gone), every switch (bridges, NAT and
    /// isolation rules, taps), then the root's files. What `rm -rf ROOT`
    /// would leave behind on the host is cleaned first.
    pub fn reset(mut self) -> Result<(usize, usize), EngineError> {
        let containers = self.list()?;
        for c in &containers {
            if c.is_running() {
                let _ = self.stop(c.id(), StopOptions { timeout: Some(0), signal: Some(libc::SIGKILL) });
            }
            for n in 0..c.config.networks.len() {
                moat_net::link::del_link(&moat_net::if_name('t', c.id(), n));
                moat_net::link::del_link(&moat_net::if_name('v', c.id(), n));
            }
        }
        let switches = self.switches()?;
        for s in &switches {
            moat_net::link::remove_switch(&s.config)?;
        }
        for p in self.pods()? {
            moat_runtime::cgroup::Cgroup::remove_group(&crate::pods::group_name(&p.id));
        }
        let root = self.layout.root().to_path_buf();
        drop(self);
        // mounts a crashed VM shim could not undo live in its own namespace;
        // anything left under the root on the host is unmounted first
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut mps: Vec<&str> = mi
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| std::path::Path::new(p).starts_with(&root) && std::path::Path::new(p) != root)
                .collect();
            mps.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for mp in mps {
                let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let rd = std::fs::read_dir(&root).map_err(EngineError::io(format!("list {}", root.display())))?;
        for e in rd.flatten() {
            let p = e.path();
            let r = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(EngineError::io(format!("remove {}", p.display())))?;
        }
        Ok((containers.len(), switches.len()))
    }
}
