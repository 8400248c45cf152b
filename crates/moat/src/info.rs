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
            println!("Engine version:      {}", i.server_version);
            println!("Root:                {}", i.docker_root_dir);
            println!("Storage driver:      {}", i.driver);
            println!("Default isolation:   {} (from {})", i.isolation, i.default_isolation_source);
            println!("Cgroup version:      {} ({})", i.cgroup_version, i.cgroup_layout);
            println!("Hypervisor accel:    {} ({})", h.accelerator, h.reason);
            println!("Guest kernel:        {}", h.guest_kernel);
            println!(
                "VM defaults:         {} MiB memory (or --memory + {} MiB), {} vCPU (or ceil(--cpus))",
                h.default_memory_mib, h.memory_overhead_mib, h.default_vcpus
            );
            println!("Host kernel:         {}", i.kernel_version);
            println!("Images:              {}", i.images);
            println!(
                "Containers:          {} ({} running, {} paused, {} stopped)",
                i.containers, i.containers_running, i.containers_paused, i.containers_stopped
            );
        }
        "json" => println!("{}", serde_json::to_string_pretty(&i)?),
        t => println!("{}", format::Tmpl::parse(t)?.render(&i)?),
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
            println!("Client:\n Version:    {}", env!("CARGO_PKG_VERSION"));
            let s = e.version();
            println!("\nServer: moat\n Engine:\n  Version:       {}\n  API version:   {} (minimum version {})\n  OS/Arch:       {}/{}\n  Kernel:        {}",
                s.version, s.api_version, s.min_api_version, s.os, s.arch, s.kernel_version);
        }
        Some("json") => println!("{}", serde_json::to_string(&v)?),
        Some(t) => println!("{}", format::Tmpl::parse(t)?.render(&v)?),
    }
    Ok(0)
}
