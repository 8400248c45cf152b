//! Docker's list filters, implemented once: `ps --filter`, `images
//! --filter`, `events --filter` in the CLI and the `filters` query of the
//! API (which arrives as JSON in two shapes) become the same [`Filters`].
//! Each resource's matcher lives next to the resource (`ContainerFilter` in
//! `container_filter`, `ImageFilter` in `images`, `VolumeFilter` in
//! `volumes`, `SwitchFilter` in `network`, `EventFilter` in `events`); this
//! module is the bottom layer they share: parsing, label and port terms,
//! times and durations.

use crate::EngineError;
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

    pub(crate) fn check(&self, allowed: &[&str]) -> Result<(), EngineError> {
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
pub(crate) fn label_matches(labels: &BTreeMap<String, String>, want: &str) -> bool {
    match want.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(want),
    }
}

/// Every term of one key matched as alternatives.
pub(crate) fn any(vals: &[String], mut f: impl FnMut(&str) -> bool) -> bool {
    vals.is_empty() || vals.iter().any(|v| f(v))
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

/// `*` in `pat` matches any run of characters (not `/`, like Docker's path match).
pub(crate) fn glob(pat: &str, s: &str) -> bool {
    let re = format!("^{}$", regex::escape(pat).replace("\\*", "[^/]*"));
    regex::Regex::new(&re).is_ok_and(|r| r.is_match(s))
}

/// A port filter value: `PORT[/PROTO]` or `START-END[/PROTO]` (tcp by default).
pub(crate) fn port_filter(v: &str) -> Option<(u16, u16, String)> {
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
    use crate::container_filter::ContainerFilter;
    use crate::events::{Event, EventFilter};

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
