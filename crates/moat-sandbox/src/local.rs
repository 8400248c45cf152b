//! Process isolation: the container runs on this kernel through the
//! runtime's relay; its host cgroup holds its limits and device list, and
//! its switch endpoints are veth pairs created as its init starts.

use crate::backend::{Backend, BackendEvent, ContainerPlan, ExecStart, Query, Source};
use crate::SandboxError;
use moat_proto::{ExecSpec, ShimReply, WinSize};
use moat_runtime::cgroup::Cgroup;
use moat_runtime::relay::{Event, Relay};
use std::os::fd::RawFd;

/// The local backend.
pub struct Local {
    relay: Relay,
}

impl Local {
    /// Creates the container's cgroup (recorded in `cgroup.json` so a reader
    /// that finds the shim dead can destroy it).
    pub fn new(plan: &ContainerPlan) -> Result<Self, SandboxError> {
        let name = match &plan.group {
            Some((group, limits)) => {
                Cgroup::create(group, limits)?;
                format!("{group}/{}", plan.id)
            }
            None => plan.id.clone(),
        };
        let cg = Cgroup::create(&name, &plan.limits)?;
        for w in &cg.warnings {
            tracing::warn!("{w}");
        }
        write_cgroup(plan, &cg);
        Ok(Self { relay: Relay::new(Some(cg), true)? })
    }
}

/// The cgroup recorded in container (or bundle) directory `dir`, if any.
pub fn read_cgroup(dir: &std::path::Path) -> Option<Cgroup> {
    std::fs::read(dir.join(moat_core::ctr_files::CGROUP)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Records the container's cgroup for readers.
pub(crate) fn write_cgroup(plan: &ContainerPlan, cg: &Cgroup) {
    if let Err(e) =
        std::fs::write(plan.dir.join(moat_core::ctr_files::CGROUP), serde_json::to_vec(cg).unwrap_or_default())
    {
        tracing::warn!("cannot record the cgroup: {e}");
    }
}

/// Relay events as backend events.
pub(crate) fn convert(events: Vec<Event>) -> Vec<BackendEvent> {
    events
        .into_iter()
        .map(|e| match e {
            Event::Output { sid, err, data } => BackendEvent::Output { sid, err, data },
            Event::Exited { sid, code, oom } => BackendEvent::Exited { sid, code, oom },
        })
        .collect()
}

impl Backend for Local {
    fn start_main(&mut self, plan: &ContainerPlan) -> Result<u32, SandboxError> {
        let id = plan.id.clone();
        let eps = plan.endpoints.clone();
        let plumb = move |pid: u32| -> Result<(), moat_runtime::RuntimeError> {
            for (n, e) in eps.iter().enumerate() {
                moat_net::link::add_veth(
                    &moat_net::if_name('v', &id, n),
                    &moat_net::if_name('p', &id, n),
                    pid,
                    &e.bridge,
                )
                .map_err(|e| moat_runtime::RuntimeError::Invalid(e.to_string()))?;
            }
            Ok(())
        };
        Ok(self.relay.start_main(&plan.spec, plan.stdin, &plumb)?)
    }

    fn exec(&mut self, sid: u32, x: &ExecSpec) -> Result<ExecStart, SandboxError> {
        Ok(ExecStart::Now(self.relay.exec(sid, x)?))
    }

    fn signal(&mut self, sid: u32, signal: i32) -> bool {
        self.relay.signal(sid, signal)
    }

    fn resize(&mut self, sid: u32, ws: WinSize) {
        self.relay.resize(sid, ws);
    }

    fn stdin(&mut self, sid: u32, data: Vec<u8>) {
        self.relay.stdin(sid, &data);
    }

    fn close_stdin(&mut self, sid: u32) {
        self.relay.close_stdin(sid);
    }

    fn query(&mut self, q: Query, _token: u64) -> Option<ShimReply> {
        let fail = |e: moat_runtime::RuntimeError| ShimReply::Error { message: e.to_string() };
        Some(match q {
            Query::Top => ShimReply::Procs { rows: self.relay.top() },
            Query::Stats => ShimReply::Usage(self.relay.stats()),
            Query::Pause => {
                self.relay.freeze(true).map(|()| ShimReply::Ok { warnings: Vec::new() }).unwrap_or_else(fail)
            }
            Query::Unpause => {
                self.relay.freeze(false).map(|()| ShimReply::Ok { warnings: Vec::new() }).unwrap_or_else(fail)
            }
            Query::Update(l) => {
                self.relay.update_limits(&l).map(|warnings| ShimReply::Ok { warnings }).unwrap_or_else(fail)
            }
        })
    }

    fn poll_fds(&self, full: &dyn Fn(u32) -> bool, out: &mut Vec<(RawFd, libc::c_short, Source)>) {
        let mut v = Vec::new();
        self.relay.poll_fds(&|sid| !full(sid), &mut v);
        out.extend(v.into_iter().map(|(fd, ev, s)| (fd, ev, Source::Relay(s))));
    }

    fn ready(&mut self, src: Source, _revents: libc::c_short, buf: &mut [u8]) -> Vec<BackendEvent> {
        match src {
            Source::Relay(s) => convert(self.relay.ready(s, buf.len(), buf)),
            _ => Vec::new(),
        }
    }

    fn teardown(&mut self, plan: &ContainerPlan) {
        self.relay.kill_all();
        if let Some(Err(e)) = self.relay.cgroup().map(|c| c.destroy()) {
            tracing::warn!("{e}");
        }
        let _ = std::fs::remove_file(plan.dir.join(moat_core::ctr_files::CGROUP));
    }
}
