//! Docker's list filters, implemented once: `ps --filter`, `images
//! --filter`, `events --filter` in the CLI and the `filters` query of the
//! API (which arrives as JSON in two shapes) become the same [`Filters`].

use crate::config::Status;
use crate::events::Event;
use crate::{Container, Engine, EngineError};
use std::collections::BTreeMap;

/// Filter terms: key → values (values of one key are alternatives, keys all apply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(pub BTreeMap<String, Vec<String>>);

impl Filters {
    /// From `KEY=VALUE` strings (`--filter`).
    pub fn from_args(args: &[String]) -> Result<Self, EngineError> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in args {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| EngineError::Invalid(format!("bad format of filter (expected name=value): {a}")))?;
            m.entry(k.trim().to_string()).or_default().push(v.to_string());
        }
        Ok(Self(m))
    }

    /// From the API's JSON: `{"label":{"a=b":true}}` (the CLI's) or `{"label":["a=b"]}`.
    pub fn from_json(s: &str) -> Result<Self, EngineError> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| EngineError::Invalid(format!("invalid filters: {e}")))?;
        let obj = v.as_object().ok_or_else(|| EngineError::Invalid("invalid filters: not an object".into()))?;
        let mut m = BTreeMap::new();
        for (k, vals) in obj {
            let list: Vec<String> = match vals {
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
                serde_json::Value::Object(o) => {
                    o.iter().filter(|(_, on)| on.as_bool().unwrap_or(false)).map(|(x, _)| x.clone()).collect()
                }
                serde_json::Value::String(s) => vec![s.clone()],
                _ => return Err(EngineError::Invalid(format!("invalid filters: bad value of {k:?}"))),
            };
            m.insert(k.clone(), list);
        }
        Ok(Self(m))
    }

    fn check(&self, allowed: &[&str]) -> Result<(), EngineError> {
        for k in self.0.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(EngineError::Invalid(format!("invalid filter '{k}'")));
            }
        }
        Ok(())
    }

    /// Drops key `k` (a front end that handles it itself).
    pub fn remove(&mut self, k: &str) {
        self.0.remove(k);
    }

    /// The values given for `k`.
    pub fn get(&self, k: &str) -> &[String] {
        self.0.get(k).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// `label=KEY` or `label=KEY=VALUE` against a label map.
fn label_matches(labels: &BTreeMap<String, String>, want: &str) -> bool {
    match want.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(want),
    }
}

/// Every term of one key matched as alternatives.
fn any(vals: &[String], mut f: impl FnMut(&str) -> bool) -> bool {
    vals.is_empty() || vals.iter().any(|v| f(v))
}

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
        for u in f.get("until") {
            let t = parse_time(u)?;
            if c.row.created.timestamp_nanos_opt().unwrap_or(0) >= t {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Image filters: `reference` (a `*` pattern on `repo[:tag]`), `dangling`,
/// `label`, `before`, `since` (image references).
#[derive(Debug, Clone, Default)]
pub struct ImageFilter {
    f: Filters,
}

/// `*` in `pat` matches any run of characters (not `/`, like Docker's path match).
fn glob(pat: &str, s: &str) -> bool {
    let re = format!("^{}$", regex::escape(pat).replace("\\*", "[^/]*"));
    regex::Regex::new(&re).is_ok_and(|r| r.is_match(s))
}

impl ImageFilter {
    /// Checks the keys.
    pub fn new(f: Filters) -> Result<Self, EngineError> {
        f.check(&["reference", "dangling", "label", "before", "since", "until"])?;
        for d in f.get("dangling") {
            if !["true", "false", "1", "0"].contains(&d.as_str()) {
                return Err(EngineError::Invalid(format!("invalid filter 'dangling={d}': use true or false")));
            }
        }
        Ok(Self { f })
    }

    /// True when `img` passes every term.
    pub fn matches(&self, img: &moat_store::ImageRecord, e: &mut Engine) -> Result<bool, EngineError> {
        let f = &self.f;
        let refs = |pat: &str| {
            img.tags.iter().any(|t| {
                let (repo, _) = t.rsplit_once(':').unwrap_or((t, ""));
                let short = |s: &str| {
                    s.strip_prefix("docker.io/library/")
                        .or_else(|| s.strip_prefix("docker.io/"))
                        .unwrap_or(s)
                        .to_string()
                };
                [t.clone(), short(t)].iter().any(|full| glob(pat, full))
                    || [repo.to_string(), short(repo)].iter().any(|r| glob(pat, r))
            })
        };
        let labels = moat_image::runtime_config(&img.config).ok().and_then(|c| c.labels).unwrap_or_default();
        let ok = any(f.get("reference"), refs)
            && any(f.get("dangling"), |d| (d == "true" || d == "1") == img.tags.is_empty())
            && f.get("label").iter().all(|l| label_matches(&labels, l));
        if !ok {
            return Ok(false);
        }
        let created = img.created.unwrap_or(img.added);
        for (key, later) in [("before", false), ("since", true)] {
            for other in f.get(key) {
                let o = e.images().resolve(other)?;
                let oc = o.created.unwrap_or(o.added);
                if (later && created <= oc) || (!later && created >= oc) {
                    return Ok(false);
                }
            }
        }
        for u in f.get("until") {
            if created.timestamp_nanos_opt().unwrap_or(0) >= parse_time(u)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Volume filters: `name` (substring, like Docker), `label`, `dangling`
/// (used by no container), `driver`.
#[derive(Debug, Clone, Default)]
pub struct VolumeFilter {
    f: Filters,
}

impl VolumeFilter {
    /// Checks the keys.
    pub fn new(f: Filters) -> Result<Self, EngineError> {
        f.check(&["name", "label", "dangling", "driver"])?;
        for d in f.get("dangling") {
            if !["true", "false", "1", "0"].contains(&d.as_str()) {
                return Err(EngineError::Invalid(format!("invalid filter 'dangling={d}': use true or false")));
            }
        }
        Ok(Self { f })
    }

    /// True when the volume passes every term (`users`: how many containers use it).
    pub fn matches(&self, v: &crate::volumes::Volume, users: usize) -> bool {
        let f = &self.f;
        any(f.get("name"), |n| v.name.contains(n))
            && f.get("label").iter().all(|l| label_matches(&v.config.labels, l))
            && any(f.get("dangling"), |d| (d == "true" || d == "1") == (users == 0))
            && any(f.get("driver"), |d| v.config.driver == d)
    }
}

/// Switch filters: `name` (substring), `id` (prefix), `driver`, `type`
/// (`builtin` for the default switch, `custom`), `dangling` (no containers).
#[derive(Debug, Clone, Default)]
pub struct SwitchFilter {
    f: Filters,
}

impl SwitchFilter {
    /// Checks the keys.
    pub fn new(f: Filters) -> Result<Self, EngineError> {
        f.check(&["name", "id", "driver", "type", "dangling", "scope", "label"])?;
        for t in f.get("type") {
            if !["builtin", "custom"].contains(&t.as_str()) {
                return Err(EngineError::Invalid(format!("invalid filter 'type={t}': use builtin or custom")));
            }
        }
        Ok(Self { f })
    }

    /// True when the switch (with `members` containers) passes every term.
    pub fn matches(&self, s: &crate::network::Switch, members: usize) -> bool {
        let f = &self.f;
        let builtin = crate::network::is_default(&s.name);
        any(f.get("name"), |n| crate::network::shown_name(&s.name).contains(n))
            && any(f.get("id"), |i| s.id.starts_with(i))
            && any(f.get("driver"), |d| d == "bridge")
            && any(f.get("scope"), |d| d == "local")
            && any(f.get("type"), |t| (t == "builtin") == builtin)
            && any(f.get("dangling"), |d| (d == "true" || d == "1") == (members == 0 && !builtin))
            && f.get("label").iter().all(|l| label_matches(&s.config.labels, l))
    }
}

/// Event filters: `type`, `event` (action), `container`, `image`, `label`,
/// `network`, and the start time.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    f: Filters,
    /// Events from this time on (nanoseconds since the epoch).
    pub since_nano: i64,
}

impl EventFilter {
    /// Checks the keys.
    pub fn new(f: Filters, since_nano: i64) -> Result<Self, EngineError> {
        f.check(&["type", "event", "container", "image", "label", "network", "volume"])?;
        Ok(Self { f, since_nano })
    }

    /// Events of container `id` with `action`.
    pub fn for_container(id: &str, action: &str) -> Self {
        let mut m = BTreeMap::new();
        m.insert("container".to_string(), vec![id.to_string()]);
        m.insert("event".to_string(), vec![action.to_string()]);
        Self { f: Filters(m), since_nano: 0 }
    }

    /// True when `ev` passes every term.
    pub fn matches(&self, ev: &Event) -> bool {
        let f = &self.f;
        let attr = |k: &str| ev.actor.attributes.get(k).map(String::as_str).unwrap_or("");
        let is_container = ev.kind == "container";
        any(f.get("type"), |t| ev.kind == t)
            && any(f.get("event"), |a| ev.action == a || ev.action.split(':').next() == Some(a))
            && any(f.get("container"), |c| {
                is_container && (ev.actor.id.starts_with(c) || attr("name") == c.trim_start_matches('/'))
            })
            && any(f.get("image"), |i| attr("image") == i || (ev.kind == "image" && ev.actor.id.contains(i)))
            && f.get("label").iter().all(|l| label_matches(&ev.actor.attributes, l))
            && any(f.get("network"), |n| ev.kind == "network" && (ev.actor.id.starts_with(n) || attr("name") == n))
            && any(f.get("volume"), |v| ev.kind == "volume" && ev.actor.id == v)
    }
}

/// Docker's time values: RFC 3339, Unix seconds (`1700000000.5`), or a
/// duration before now (`10m`, `1h30m`, `0s`). Nanoseconds since the epoch.
pub fn parse_time(s: &str) -> Result<i64, EngineError> {
    let bad = || EngineError::Invalid(format!("invalid time {s:?}: use RFC 3339, Unix seconds or a duration like 10m"));
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t.timestamp_nanos_opt().ok_or_else(bad);
    }
    // Docker's shorter forms, without a zone: the local time
    let local = |n: chrono::NaiveDateTime| {
        use chrono::TimeZone;
        chrono::Local.from_local_datetime(&n).earliest().and_then(|t| t.timestamp_nanos_opt())
    };
    for (f, with) in [("%Y-%m-%dT%H:%M:%S%.f", ""), ("%Y-%m-%dT%H:%M", ""), ("%Y-%m-%dT%H:%M", ":00")] {
        if let Ok(n) = chrono::NaiveDateTime::parse_from_str(&format!("{s}{with}"), f) {
            return local(n).ok_or_else(bad);
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return local(d.and_time(chrono::NaiveTime::MIN)).ok_or_else(bad);
    }
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok((secs * 1e9) as i64);
        }
        return Err(bad());
    }
    let d = parse_duration(s).ok_or_else(bad)?;
    let now = chrono::Utc::now().timestamp_nanos_opt().ok_or_else(bad)?;
    Ok(now - d.as_nanos().min(i64::MAX as u128) as i64)
}

/// Go-style durations: `300ms`, `10s`, `1h30m`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..n_end].parse().ok()?;
        rest = &rest[n_end..];
        let u_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let mult = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u_end..];
        total += n * mult;
    }
    (total.is_finite() && total >= 0.0).then(|| std::time::Duration::from_secs_f64(total))
}

/// A port filter value: `PORT[/PROTO]` or `START-END[/PROTO]` (tcp by default).
fn port_filter(v: &str) -> Option<(u16, u16, String)> {
    let (ports, proto) = v.split_once('/').unwrap_or((v, "tcp"));
    if !matches!(proto, "tcp" | "udp" | "sctp") {
        return None;
    }
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let p = ports.parse().ok()?;
            (p, p)
        }
    };
    (lo <= hi).then(|| (lo, hi, proto.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_json_shapes_and_args() -> Result<(), EngineError> {
        let a = Filters::from_json(r#"{"label":{"a=b":true,"c":false},"status":["running"]}"#)?;
        assert_eq!(a.0["label"], vec!["a=b"]);
        assert_eq!(a.0["status"], vec!["running"]);
        let b = Filters::from_args(&["label=a=b".into(), "status=running".into()])?;
        assert_eq!(a, b);
        assert!(Filters::from_args(&["nonsense".into()]).is_err());
        assert!(ContainerFilter::new(Filters::from_args(&["bogus=1".into()])?).is_err());
        assert!(ContainerFilter::new(Filters::from_args(&["status=sleepy".into()])?).is_err());
        assert!(ContainerFilter::new(Filters::from_args(&["name=[".into()])?).is_err());
        Ok(())
    }

    #[test]
    fn times_and_globs() {
        assert_eq!(parse_duration("1h30m"), Some(std::time::Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Some(std::time::Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_none());
        assert_eq!(parse_time("1700000000").ok(), Some(1_700_000_000_000_000_000));
        assert!(parse_time("2026-01-02T03:04:05Z").is_ok());
        // Docker's forms without a zone are local times
        let local = |y, mo, d, h, mi, sec| {
            use chrono::TimeZone;
            chrono::Local.with_ymd_and_hms(y, mo, d, h, mi, sec).earliest().and_then(|t| t.timestamp_nanos_opt())
        };
        assert_eq!(parse_time("2026-12-07T00:11:01").ok(), local(2026, 12, 7, 0, 11, 1));
        assert_eq!(parse_time("2026-12-07T00:11").ok(), local(2026, 12, 7, 0, 11, 0));
        assert_eq!(parse_time("2026-12-07T05").ok(), local(2026, 12, 7, 5, 0, 0));
        assert_eq!(parse_time("2026-12-07").ok(), local(2026, 12, 7, 0, 0, 0));
        assert!(parse_time("2026-13-07").is_err());
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        assert!(parse_time("1m").is_ok_and(|t| (now - t - 60_000_000_000).abs() < 5_000_000_000));
        assert!(glob("busy*", "busybox:latest") && !glob("busy*", "library/busybox"));
        assert!(glob("*/app:*", "me/app:v1"));
    }

    #[test]
    fn labels_and_events() {
        let mut l = BTreeMap::new();
        l.insert("tier".to_string(), "web".to_string());
        assert!(label_matches(&l, "tier") && label_matches(&l, "tier=web") && !label_matches(&l, "tier=db"));
        let ev = Event::new("container", "die", &"ab".repeat(32)).attr("name", "web").attr("exitCode", "3");
        let f = |args: &[&str]| {
            EventFilter::new(
                Filters::from_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                0,
            )
            .map(|f| f.matches(&ev))
            .unwrap_or(false)
        };
        assert!(f(&["container=web", "event=die"]));
        assert!(f(&["container=abab", "type=container"]));
        assert!(!f(&["event=start"]));
        assert!(f(&["event=start", "event=die"]), "alternatives of one key");
    }
}
