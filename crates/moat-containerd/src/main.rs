//! `containerd-shim-moat-v2` (also installed as `-process-v2` and
//! `-hyperv-v2`): containerd's shim v2 for moat, reading its isolation type
//! from its own name ([`service::isolation_of`]).

mod rootfs;
mod service;
mod task;

/// The serving shim (no `start`/`delete` action) gets a mount namespace of
/// its own, a slave of the host's: the tasks' rootfs mounts and a utility
/// VM's share (which makes `/` private, see `moat_sandbox::link`) never
/// reach the host, and they go with the shim's last process. Called while
/// the process has one thread (`unshare(CLONE_NEWNS)` needs that).
fn own_mount_namespace() -> std::io::Result<()> {
    // SAFETY: unshare with a flag, in a single-threaded process
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(std::io::Error::from)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serving = containerd_shim::parse(&args).map(|f| f.action.is_empty() && !f.version).unwrap_or(false);
    if serving {
        if let Err(e) = own_mount_namespace() {
            eprintln!("containerd-shim-moat-v2: cannot make a mount namespace of its own: {e}");
            std::process::exit(1);
        }
    }
    // moat's relay waits for the processes it starts (by PID): the crate's
    // catch-all reaper would take their exit statuses first
    let config = containerd_shim::Config { no_reaper: true, ..Default::default() };
    containerd_shim::run::<service::Service>("io.containerd.moat.v2", Some(config))
}
