//! The engine's queries behind the views: `info`, `version`, container,
//! image and switch listings, a switch's inspect, `system df`. They read the
//! store and the host; the views they fill (`view`) do no I/O.

use crate::config::Status;
use crate::view::*;
use crate::{Container, Engine, EngineError};
use std::collections::BTreeMap;

impl Engine {
    /// containerd's tasks that moat's containerd shim runs (`ps
    /// --namespace`): read from containerd's state directory `state`, never
    /// moat's store; one namespace or all.
    pub fn containerd_tasks(
        &self,
        state: &std::path::Path,
        namespace: Option<&str>,
    ) -> Vec<moat_core::containerd::ContainerdTask> {
        moat_core::containerd::tasks(state, namespace)
    }

    /// `info`.
    pub fn info(&mut self) -> Result<SystemInfo, EngineError> {
        let all = self.list()?;
        let running = all.iter().filter(|c| c.state.status == Status::Running).count();
        let paused = all.iter().filter(|c| c.state.status == Status::Paused).count();
        let (cg, cg_detail) = moat_runtime::cgroup::describe();
        let (accel, why) = moat_vm::accel::detect();
        let kernel = moat_vm::kernel::current(&self.options.kernel_dir())
            .map(|k| k.version)
            .unwrap_or_else(|_| "not installed (moat vm kernel install)".into());
        let agent = self.options.agent().map(|p| p.display().to_string()).unwrap_or_else(|e| e.to_string());
        let uname = nix::sys::utsname::uname().ok();
        let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
            uname.as_ref().map(|u| f(u).to_string_lossy().into_owned()).unwrap_or_default()
        };
        Ok(SystemInfo {
            id: moat_core::digest::Digest::of(self.layout.root().display().to_string().as_bytes()).hex()[..36]
                .to_string(),
            containers: all.len(),
            containers_running: running,
            containers_paused: paused,
            containers_stopped: all.len() - running - paused,
            images: self.images.list()?.len(),
            driver: "overlay".into(),
            docker_root_dir: self.layout.root().display().to_string(),
            kernel_version: field(|u| u.release()),
            operating_system: "moat".into(),
            os_type: "linux".into(),
            architecture: field(|u| u.machine()),
            ncpu: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            mem_total: mem_total(),
            name: field(|u| u.nodename()),
            server_version: env!("CARGO_PKG_VERSION").into(),
            cgroup_driver: "cgroupfs".into(),
            cgroup_version: cg.into(),
            cgroup_layout: cg_detail.into(),
            isolation: self.settings.default_isolation.to_string(),
            default_isolation_source: self.settings.default_isolation_source.clone(),
            hypervisor: HypervisorInfo {
                accelerator: accel.to_string(),
                reason: why,
                guest_kernel: kernel,
                agent,
                default_memory_mib: moat_vm::launch::DEFAULT_MEMORY_MIB,
                memory_overhead_mib: moat_vm::launch::MEMORY_OVERHEAD_MIB,
                default_vcpus: 1,
                templates: crate::templates::status(&self.options),
            },
            logging_driver: "json-file".into(),
            security_options: vec!["name=seccomp,profile=builtin".into(), "name=no-new-privileges".into()],
            plugins: InfoPlugins {
                volume: vec!["local".into()],
                network: ["bridge", "host", "null"].map(String::from).to_vec(),
                log: ["json-file", "none"].map(String::from).to_vec(),
                authorization: None,
            },
            swarm: InfoSwarm {
                local_node_state: "inactive".into(),
                node_id: String::new(),
                node_addr: String::new(),
                control_available: false,
                error: String::new(),
                remote_managers: None,
            },
            more: InfoMore::read(&self.settings.default_isolation.to_string(), cg == "2"),
        })
    }

    /// `version`.
    pub fn version(&self) -> VersionInfo {
        let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let mut details = BTreeMap::new();
        details.insert("ApiVersion".into(), API_VERSION.into());
        details.insert("MinAPIVersion".into(), MIN_API_VERSION.into());
        details.insert("Os".into(), "linux".into());
        details.insert("Arch".into(), "amd64".into());
        details.insert("KernelVersion".into(), kernel.clone());
        details.insert("GitCommit".into(), String::new());
        details.insert("GoVersion".into(), "rust".into());
        details.insert("BuildTime".into(), String::new());
        details.insert("Experimental".into(), "false".into());
        VersionInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: API_VERSION.into(),
            min_api_version: MIN_API_VERSION.into(),
            git_commit: String::new(),
            go_version: "rust".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            kernel_version: kernel,
            components: vec![Component { name: "Engine".into(), version: env!("CARGO_PKG_VERSION").into(), details }],
            platform: Platform { name: format!("moat {}", env!("CARGO_PKG_VERSION")) },
            build_time: String::new(),
        }
    }

    /// The summary of containers matching `f` (all states with `all`).
    pub fn containers(
        &mut self,
        all: bool,
        f: &crate::container_filter::ContainerFilter,
    ) -> Result<Vec<Container>, EngineError> {
        let mut out = Vec::new();
        for c in self.list()? {
            if (all || c.is_running()) && f.matches(&c, self)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Images matching `f` (and `reference` when given, like `docker images REPO[:TAG]`).
    pub fn images_matching(
        &mut self,
        f: &crate::images::ImageFilter,
    ) -> Result<Vec<moat_store::ImageRecord>, EngineError> {
        let mut out = Vec::new();
        for img in self.images.list()? {
            if f.matches(&img, self)? {
                out.push(img);
            }
        }
        Ok(out)
    }

    /// How many containers use each image.
    pub fn image_users(&mut self, img: &moat_store::ImageRecord) -> Result<usize, EngineError> {
        Ok(self.images.store().containers_using(&img.id)?.len())
    }

    /// The network view of a switch.
    pub fn inspect_switch(&mut self, key: &str) -> Result<NetworkInspect, EngineError> {
        let s = self.find_switch(key)?;
        let all = self.list()?;
        Ok(NetworkInspect::of(&s, &all))
    }
}

impl Engine {
    /// The `system/df` view.
    pub fn system_df(&mut self) -> Result<SystemDf, EngineError> {
        let layers_size = self.disk_usage()?.images.size as i64;
        let mut images = Vec::new();
        for img in self.images.list()? {
            images.push(ImageSummary::of_stored(self, &img)?);
        }
        let mut containers = Vec::new();
        for c in self.list()? {
            let (rw, image) = container_sizes(self, &c);
            containers.push(DfContainer {
                summary: ContainerSummary::of(self, &c),
                size_rw: rw as i64,
                size_root_fs: (rw + image) as i64,
            });
        }
        let f = crate::volumes::VolumeFilter::new(crate::filter::Filters::default())?;
        let mut volumes = Vec::new();
        for (v, _) in self.volumes(&f)? {
            let usage = self.volume_usage(&v)?;
            volumes.push(v.view(Some(usage)));
        }
        Ok(SystemDf { layers_size, images, containers, volumes, build_cache: Vec::new(), builder_size: 0 })
    }
}

impl Engine {
    /// Switches passing `f`, by name.
    pub fn switches_matching(
        &mut self,
        f: &crate::network::SwitchFilter,
    ) -> Result<Vec<crate::network::Switch>, EngineError> {
        let mut out = Vec::new();
        for s in self.switches()? {
            let members = self.images.store().switch_members(&s.id)?.len();
            if f.matches(&s, members) {
                out.push(s);
            }
        }
        Ok(out)
    }
}
