//! `moat info` and `moat version`: the engine's views.

use crate::format;
use anyhow::Result;
use clap::Args;
use moat_engine::Engine;

/// `info` arguments.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// `table` (text), `json`, or a Go template (`{{.Isolation}}`, `{{.Hypervisor.Accelerator}}`).
    #[arg(short = 'f', long, default_value = "table")]
    format: String,
}

/// Prints engine information.
pub fn run(e: &mut Engine, a: InfoArgs) -> Result<i32> {
    let i = e.info()?;
    match a.format.as_str() {
        "table" => {
            let h = &i.hypervisor;
            outln!("Engine version:      {}", i.server_version);
            outln!("Root:                {}", i.docker_root_dir);
            outln!("Storage driver:      {}", i.driver);
            outln!("Default isolation:   {} (from {})", i.isolation, i.default_isolation_source);
            outln!("Cgroup version:      {} ({})", i.cgroup_version, i.cgroup_layout);
            outln!("Hypervisor accel:    {} ({})", h.accelerator, h.reason);
            outln!("Guest kernel:        {}", h.guest_kernel);
            outln!("VM templates:        {} ({})", if h.templates.enabled { "on" } else { "off" }, h.templates.reason);
            outln!(
                "VM defaults:         {} MiB memory (or --memory + {} MiB), {} vCPU (or ceil(--cpus))",
                h.default_memory_mib,
                h.memory_overhead_mib,
                h.default_vcpus
            );
            outln!("Host kernel:         {}", i.kernel_version);
            outln!("Images:              {}", i.images);
            outln!(
                "Containers:          {} ({} running, {} paused, {} stopped)",
                i.containers,
                i.containers_running,
                i.containers_paused,
                i.containers_stopped
            );
        }
        "json" => outln!("{}", serde_json::to_string_pretty(&i)?),
        t => outln!("{}", format::Tmpl::parse(t)?.render(&i)?),
    }
    Ok(0)
}

/// `version` arguments.
#[derive(Args, Debug)]
pub struct VersionArgs {
    /// `json`, or a Go template (`{{.Server.Version}}`).
    #[arg(short = 'f', long)]
    format: Option<String>,
}

/// Prints client and engine versions.
pub fn version(e: &Engine, a: VersionArgs) -> Result<i32> {
    let v = serde_json::json!({
        "Client": { "Version": env!("CARGO_PKG_VERSION"), "ApiVersion": moat_engine::view::API_VERSION, "Os": "linux", "Arch": "amd64" },
        "Server": e.version(),
    });
    match a.format.as_deref() {
        None => {
            outln!("Client:\n Version:    {}", env!("CARGO_PKG_VERSION"));
            let s = e.version();
            outln!("\nServer: moat\n Engine:\n  Version:       {}\n  API version:   {} (minimum version {})\n  OS/Arch:       {}/{}\n  Kernel:        {}",
                s.version, s.api_version, s.min_api_version, s.os, s.arch, s.kernel_version);
        }
        Some("json") => outln!("{}", serde_json::to_string(&v)?),
        Some(t) => outln!("{}", format::Tmpl::parse(t)?.render(&v)?),
    }
    Ok(0)
}
