//! `ps --filter` and the API's container list filters.

use crate::config::Status;
use crate::filter::{any, label_matches, parse_time, port_filter, Filters};
use crate::{Container, Engine, EngineError};

/// Container filters: `status`, `name` (a regular expression, like Docker),
/// `id` (prefix), `label`, `ancestor` (image name, tag or ID), `before`,
/// `since` (container name or ID), `exited`, `isolation`, `network`,
/// `publish`, `expose`, `volume`.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    f: Filters,
    names: Vec<regex::Regex>,
}

impl ContainerFilter {
    /// Checks the keys and compiles the name patterns.
    pub fn new(f: Filters) -> Result<Self, EngineError> {
        f.check(&[
            "status",
            "name",
            "id",
            "label",
            "ancestor",
            "before",
            "since",
            "exited",
            "isolation",
            "network",
            "until",
            "health",
            "publish",
            "expose",
            "volume",
            "pod",
        ])?;
        for k in ["publish", "expose"] {
            for v in f.get(k) {
                port_filter(v).ok_or_else(|| {
                    EngineError::Invalid(format!("invalid filter '{k}={v}': use PORT[/PROTO] or START-END[/PROTO]"))
                })?;
            }
        }
        for s in f.get("status") {
            if !["created", "restarting", "running", "removing", "paused", "exited", "dead"].contains(&s.as_str()) {
                return Err(EngineError::Invalid(format!(
                    "invalid filter 'status={s}': use created, restarting, running, removing, paused, exited or dead"
                )));
            }
        }
        let names = f
            .get("name")
            .iter()
            .map(|n| regex::Regex::new(n).map_err(|e| EngineError::Invalid(format!("invalid filter 'name={n}': {e}"))))
            .collect::<Result<_, _>>()?;
        Ok(Self { f, names })
    }

    /// True when `c` passes every term.
    pub fn matches(&self, c: &Container, e: &mut Engine) -> Result<bool, EngineError> {
        let f = &self.f;
        let ok = any(f.get("status"), |s| c.state.status.to_string() == s)
            && (self.names.is_empty()
                || self.names.iter().any(|r| r.is_match(&format!("/{}", c.name())) || r.is_match(c.name())))
            && any(f.get("id"), |i| c.id().starts_with(i))
            && f.get("label").iter().all(|l| label_matches(&c.config.labels, l))
            && any(f.get("exited"), |x| c.state.status == Status::Exited && c.state.exit_code.to_string() == x)
            && any(f.get("isolation"), |i| {
                i.parse::<moat_core::Isolation>().is_ok_and(|want| want == c.config.isolation())
            })
            && any(f.get("network"), |n| {
                c.config.networks.iter().any(|ep| {
                    ep.switch == n || crate::network::shown_name(&ep.switch) == n || ep.switch_id.starts_with(n)
                })
            })
            // Docker's: a published container port, an exposed one (publishing exposes)
            && any(f.get("publish"), |p| {
                let (lo, hi, proto) = port_filter(p).unwrap_or((0, 0, String::new()));
                c.config.publish.iter().any(|m| (lo..=hi).contains(&m.ctr_port) && m.proto == proto)
            })
            && any(f.get("expose"), |p| {
                let (lo, hi, proto) = port_filter(p).unwrap_or((0, 0, String::new()));
                c.config.exposed.iter().any(|(port, pr)| (lo..=hi).contains(port) && *pr == proto)
                    || c.config.publish.iter().any(|m| (lo..=hi).contains(&m.ctr_port) && m.proto == proto)
            })
            // a volume's name or any mount's destination
            && any(f.get("volume"), |v| {
                let clean = v.trim_end_matches('/');
                c.config.binds.iter().any(|b| {
                    (b.kind == crate::config::MountKind::Volume && b.source == v) || b.target.trim_end_matches('/') == clean
                }) || c.config.tmpfs.keys().any(|t| t.trim_end_matches('/') == clean)
            })
            && any(f.get("health"), |h| match &c.state.health {
                Some(x) if c.is_running() => x.status.to_string() == h,
                _ => h == "none",
            });
        if !ok {
            return Ok(false);
        }
        for a in f.get("ancestor") {
            let id = e.images().resolve(a).ok().map(|i| i.id);
            if !(c.config.image == *a || id.as_ref() == Some(&c.row.image_id)) {
                return Ok(false);
            }
        }
        for (key, later) in [("before", false), ("since", true)] {
            for other in f.get(key) {
                let o = e.get(other)?;
                if (later && c.row.created <= o.row.created) || (!later && c.row.created >= o.row.created) {
                    return Ok(false);
                }
            }
        }
        if !f.get("pod").is_empty() {
            let mut ids = Vec::new();
            for p in f.get("pod") {
                ids.push(e.pod(p)?.id);
            }
            if !c.config.pod.as_ref().is_some_and(|p| ids.contains(p)) {
                return Ok(false);
            }
        }
        for u in f.get("until") {
            let t = parse_time(u)?;
            if c.row.created.timestamp_nanos_opt().unwrap_or(0) >= t {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
