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

/// The cgroup layout of this host.
pub fn cgroup_version() -> (&'static str, String) {
    const CGROUP2: i64 = 0x6367_7270;
    let fstype = |p: &str| rustix::fs::statfs(p).map(|s| s.f_type).ok();
    match fstype("/sys/fs/cgroup") {
        Some(CGROUP2) => ("2", "unified (cgroup v2)".into()),
        Some(_) if fstype("/sys/fs/cgroup/unified") == Some(CGROUP2) => {
            ("1", "hybrid (cgroup v1 controllers, cgroup v2 at /sys/fs/cgroup/unified)".into())
        }
        Some(_) => ("1", "legacy (cgroup v1)".into()),
        None => ("none", "no cgroup filesystem mounted".into()),
    }
}

/// Whether hardware virtualisation is usable: `("kvm"|"tcg", reason)`.
pub fn accelerator() -> (&'static str, String) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .find(|f| *f == "vmx" || *f == "svm");
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm");
    match (flag, kvm) {
        (Some(f), Ok(_)) => ("kvm", format!("{f} CPU flag present and /dev/kvm opens")),
        (None, Ok(_)) => ("tcg", "/dev/kvm opens but the CPU has no vmx/svm flag (nested paravirtual host)".into()),
        (Some(f), Err(e)) => ("tcg", format!("{f} CPU flag present but /dev/kvm does not open: {e}")),
        (None, Err(e)) => ("tcg", format!("no vmx/svm CPU flag and /dev/kvm does not open: {e}")),
    }
}

/// Prints engine information.
pub fn run(root: &Path, a: InfoArgs) -> Result<i32> {
    let s = crate::images::open(root)?;
    let images = s.list()?.len();
    let containers = s.store().containers()?.len();
    let (cg, cg_detail) = cgroup_version();
    let (accel, accel_why) = accelerator();
    let info = serde_json::json!({
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Root": root.display().to_string(),
        "Driver": "overlay",
        "DefaultIsolation": "process",
        "CgroupVersion": cg,
        "CgroupLayout": cg_detail,
        "Hypervisor": { "Accelerator": accel, "Reason": accel_why },
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
            println!("Default isolation:   process");
            println!("Cgroup version:      {cg} ({cg_detail})");
            println!("Hypervisor accel:    {accel} ({accel_why})");
            println!("Host kernel:         {}", info["KernelVersion"].as_str().unwrap_or_default());
            println!("Images:              {images}");
            println!("Containers:          {containers}");
        }
    }
    Ok(0)
}
