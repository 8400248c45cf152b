//! The event log (`moat events`, `GET /events`): lifecycle events of
//! containers, images and switches, recorded durably in the store with a
//! time and the actor's attributes, in Docker's shape. The engine records
//! what front ends ask for; each shim records what happens while nobody
//! watches (start, die with its exit code, oom, restart, exec).

use crate::container::Container;
use crate::error::EngineError;
use crate::filter::{any, label_matches, Filters};
use serde::Serialize;
use std::collections::BTreeMap;

/// The actor of an event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Actor {
    /// Object ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Attributes (name, image, exitCode, signal, ...).
    pub attributes: BTreeMap<String, String>,
}

/// An event as a Go template sees Docker's `events.Message`: by its Go
/// field names (`{{.Status}}`, `{{.ID}}`, `{{.TimeNano}}`), the legacy ones
/// empty where Docker's are (not containers).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventFields<'a> {
    /// The action (containers).
    pub status: &'a str,
    /// The actor's ID (containers).
    #[serde(rename = "ID")]
    pub id: &'a str,
    /// The image (containers).
    pub from: &'a str,
    /// `container`, `image`, `network`...
    #[serde(rename = "Type")]
    pub kind: &'a str,
    /// What happened.
    pub action: &'a str,
    /// Who it happened to.
    pub actor: &'a Actor,
    /// Always `local`.
    pub scope: &'a str,
    /// Seconds since the epoch.
    pub time: i64,
    /// Nanoseconds since the epoch.
    pub time_nano: i64,
}

/// One event, as Docker's `/events` stream carries it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Event {
    /// `container`, `image`, `network`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// What happened.
    #[serde(rename = "Action")]
    pub action: String,
    /// Who it happened to.
    #[serde(rename = "Actor")]
    pub actor: Actor,
    /// Always `local`.
    pub scope: String,
    /// Seconds since the epoch.
    pub time: i64,
    /// Nanoseconds since the epoch.
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
    /// Position in the log.
    #[serde(skip)]
    pub seq: i64,
    /// Docker's legacy `status` (= action; container and image events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Docker's legacy `id` (container and image events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Docker's legacy `from` (the image, containers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl Event {
    /// The event by Docker's Go field names, for templates.
    pub fn fields(&self) -> EventFields<'_> {
        EventFields {
            status: self.status.as_deref().unwrap_or(""),
            id: self.id.as_deref().unwrap_or(""),
            from: self.from.as_deref().unwrap_or(""),
            kind: &self.kind,
            action: &self.action,
            actor: &self.actor,
            scope: &self.scope,
            time: self.time,
            time_nano: self.time_nano,
        }
    }

    /// An event of `kind` about `id`, now.
    pub fn new(kind: &str, action: &str, id: &str) -> Self {
        let now = chrono::Utc::now();
        let nano = now.timestamp_nanos_opt().unwrap_or(0);
        Self {
            kind: kind.into(),
            action: action.into(),
            actor: Actor { id: id.into(), attributes: BTreeMap::new() },
            scope: "local".into(),
            time: nano / 1_000_000_000,
            time_nano: nano,
            seq: 0,
            status: None,
            id: None,
            from: None,
        }
    }

    /// A container event with the container's name, image and labels.
    pub fn container(action: &str, c: &Container) -> Self {
        let mut e = Self::new("container", action, c.id());
        e.actor.attributes.insert("name".into(), c.name().into());
        e.actor.attributes.insert("image".into(), c.config.image.clone());
        e.actor.attributes.insert("isolation".into(), c.config.isolation().to_string());
        for (k, v) in &c.config.labels {
            e.actor.attributes.entry(k.clone()).or_insert_with(|| v.clone());
        }
        e
    }

    /// Adds an attribute.
    pub fn attr(mut self, k: &str, v: &str) -> Self {
        self.actor.attributes.insert(k.into(), v.into());
        self
    }

    fn row(&self) -> moat_store::EventRow {
        moat_store::EventRow {
            seq: 0,
            time_nano: self.time_nano,
            kind: self.kind.clone(),
            action: self.action.clone(),
            actor: self.actor.id.clone(),
            attributes: serde_json::to_string(&self.actor.attributes).unwrap_or_else(|_| "{}".into()),
        }
    }

    fn from_row(r: moat_store::EventRow) -> Self {
        let attributes: BTreeMap<String, String> = serde_json::from_str(&r.attributes).unwrap_or_default();
        let container = r.kind == "container";
        // dockerd fills the legacy fields for container and image events
        let legacy = container || r.kind == "image";
        Self {
            status: legacy.then(|| r.action.clone()),
            id: legacy.then(|| r.actor.clone()),
            from: if container { attributes.get("image").cloned() } else { None },
            kind: r.kind,
            action: r.action,
            actor: Actor { id: r.actor, attributes },
            scope: "local".into(),
            time: r.time_nano / 1_000_000_000,
            time_nano: r.time_nano,
            seq: r.seq,
        }
    }
}

/// Records an event; a store that cannot take it (a full disk) only loses
/// the event, never the operation.
pub fn record(store: &mut moat_store::Store, ev: Event) {
    if let Err(err) = store.append_event(&ev.row()) {
        tracing::warn!("cannot record event {} {}: {err}", ev.kind, ev.action);
    }
}

/// The newest event's sequence number.
pub fn last_seq(store: &moat_store::Store) -> Result<i64, EngineError> {
    Ok(store.last_event_seq()?)
}

/// Recorded events from `since_seq` (all when `None`) and before
/// `until_nano` that match `f`.
pub fn list(
    store: &moat_store::Store,
    since_seq: Option<i64>,
    until_nano: Option<i64>,
    f: &EventFilter,
) -> Result<Vec<Event>, EngineError> {
    let rows = store.events(since_seq.unwrap_or(0), f.since_nano, until_nano.unwrap_or(i64::MAX))?;
    Ok(rows.into_iter().map(Event::from_row).filter(|ev| f.matches(ev)).collect())
}

/// Streams events matching `f` to `sink` (which returns false to stop):
/// the recorded ones from `f.since_nano`, then new ones as they are
/// recorded, until `until_nano` (forever when `None`).
pub fn follow(
    store: &moat_store::Store,
    f: &EventFilter,
    until_nano: Option<i64>,
    mut sink: impl FnMut(&Event) -> bool,
) -> Result<(), EngineError> {
    let mut next = 0;
    loop {
        let rows = store.events(next, f.since_nano, until_nano.unwrap_or(i64::MAX))?;
        for r in rows {
            next = r.seq + 1;
            let ev = Event::from_row(r);
            if f.matches(&ev) && !sink(&ev) {
                return Ok(());
            }
        }
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        if until_nano.is_some_and(|u| u <= now) {
            return Ok(());
        }
        if next == 0 {
            next = last_seq(store)? + 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
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
