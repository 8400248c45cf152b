//! Choosing the accelerator: KVM only when hardware virtualisation is really usable.

use crate::qemu::Accel;

/// The accelerator and why: KVM needs a vmx/svm CPU flag *and* a `/dev/kvm` that opens.
pub fn detect() -> (Accel, String) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .find(|f| *f == "vmx" || *f == "svm");
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm");
    match (flag, kvm) {
        (Some(f), Ok(_)) => (Accel::Kvm, format!("{f} CPU flag present and /dev/kvm opens")),
        (None, Ok(_)) => {
            (Accel::Tcg, "/dev/kvm opens but the CPU has no vmx/svm flag (nested paravirtual host)".into())
        }
        (Some(f), Err(e)) => (Accel::Tcg, format!("{f} CPU flag present but /dev/kvm does not open: {e}")),
        (None, Err(e)) => (Accel::Tcg, format!("no vmx/svm CPU flag and /dev/kvm does not open: {e}")),
    }
}

/// The host TSC frequency in kHz (microvm needs it as `tsc_early_khz`).
pub fn tsc_khz() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
        if let Ok(v) = s.trim().parse() {
            return Some(v);
        }
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0).round() as u64)
}
