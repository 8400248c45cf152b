//! `containerd-shim-moat-v2` (also installed as `-process-v2` and
//! `-hyperv-v2`): containerd's shim v2 for moat, reading its isolation type
//! from its own name ([`service::isolation_of`]).

mod rootfs;
mod service;
mod task;

fn main() {
    // moat's relay waits for the processes it starts (by PID): the crate's
    // catch-all reaper would take their exit statuses first
    let config = containerd_shim::Config { no_reaper: true, ..Default::default() };
    containerd_shim::run::<service::Service>("io.containerd.moat.v2", Some(config))
}
