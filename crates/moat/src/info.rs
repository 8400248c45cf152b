//! `moat info`: engine and host facts.

use anyhow::Result;
use clap::Args;
use std::path::Path;

/// `info` arguments.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Output format: `table` (text) or `json`.
    #[arg(long, default_value = "table")]
    format: String,
}

/// Prints engine information.
pub fn run(root: &Path, a: InfoArgs) -> Result<i32> {
    let mut e = moat_engine::Engine::open(root)?;
    let images = e.images().list()?.len();
    let containers = e.list()?.len();
    let (iso, iso_src) = (e.settings.default_isolation, e.settings.default_isolation_source.clone());
    let (cg, cg_detail) = moat_runtime::cgroup::describe();
    let (accel, accel_why) = moat_vm::accel::detect();
    let kernel = moat_vm::kernel::current(&moat_vm::kernel::dir(root))
        .map(|k| k.version)
        .unwrap_or_else(|_| "not installed (moat vm kernel install)".into());
    let agent = moat_vm::initramfs::find_agent().map(|p| p.display().to_string()).unwrap_or_else(|e| e.to_string());
    let info = serde_json::json!({
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Root": root.display().to_string(),
        "Driver": "overlay",
        "DefaultIsolation": iso.to_string(),
        "DefaultIsolationSource": iso_src,
        "CgroupVersion": cg,
        "CgroupLayout": cg_detail,
        "Hypervisor": { "Accelerator": accel, "Reason": accel_why, "GuestKernel": kernel, "Agent": agent,
            "DefaultMemoryMiB": moat_vm::launch::DEFAULT_MEMORY_MIB, "MemoryOverheadMiB": moat_vm::launch::MEMORY_OVERHEAD_MIB, "DefaultVcpus": 1 },
        "Images": images,
        "Containers": containers,
        "KernelVersion": rustix::system::uname().release().to_string_lossy(),
    });
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&info)?),
        _ => {
            println!("Engine version:      {}", env!("CARGO_PKG_VERSION"));
            println!("Root:                {}", root.display());
            println!("Storage driver:      overlay");
            println!("Default isolation:   {iso} (from {iso_src})");
            println!("Cgroup version:      {cg} ({cg_detail})");
            println!("Hypervisor accel:    {accel} ({accel_why})");
            println!("Guest kernel:        {kernel}");
            println!(
                "VM defaults:         {} MiB memory (or --memory + {} MiB), 1 vCPU (or ceil(--cpus))",
                moat_vm::launch::DEFAULT_MEMORY_MIB,
                moat_vm::launch::MEMORY_OVERHEAD_MIB
            );
            println!("Host kernel:         {}", info["KernelVersion"].as_str().unwrap_or_default());
            println!("Images:              {images}");
            println!("Containers:          {containers}");
        }
    }
    Ok(0)
}
