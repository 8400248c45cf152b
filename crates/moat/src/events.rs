//! `moat events`: the engine's event log, streamed like `docker events`.

use crate::format;
use anyhow::Result;
use clap::Args;
use moat_engine::events::EventFilter;
use moat_engine::filter::{parse_time, Filters};
use moat_engine::Engine;
use std::io::Write;

/// `events` arguments.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Events from this time (RFC 3339, Unix seconds, or a duration like 10m); default: from now.
    #[arg(long)]
    since: Option<String>,
    /// Stop at this time (`0s`: now); default: stream until interrupted.
    #[arg(long)]
    until: Option<String>,
    /// Filter: type=, event=, container=, image=, label=, network=.
    #[arg(short, long)]
    filter: Vec<String>,
    /// `json` (one object per line), or a Go template (`{{.Action}} {{.Actor.ID}}`).
    #[arg(long)]
    format: Option<String>,
}

fn line(e: &moat_engine::events::Event) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(e.time_nano).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let attrs: Vec<String> = e.actor.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{t} {} {} {} ({})", e.kind, e.action, e.actor.id, attrs.join(", "))
}

/// Prints events until `--until` (or forever).
pub fn run(e: &mut Engine, a: EventsArgs) -> Result<i32> {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let since = a.since.as_deref().map(parse_time).transpose()?.unwrap_or(now);
    let until = a.until.as_deref().map(parse_time).transpose()?;
    let f = EventFilter::new(Filters::from_args(&a.filter)?, since)?;
    let tmpl = match a.format.as_deref() {
        None | Some("json") => None,
        Some(t) => Some(format::Tmpl::parse(t)?),
    };
    let json = a.format.as_deref() == Some("json");
    let mut failed = None;
    moat_engine::events::follow(e.images().store(), &f, until, |ev| {
        let text = match (&tmpl, json) {
            (Some(t), _) => t.render(&ev.fields()),
            (None, true) => serde_json::to_string(ev).map_err(Into::into),
            (None, false) => Ok(line(ev)),
        };
        match text {
            // a closed stdout ends the stream
            Ok(t) => writeln!(std::io::stdout(), "{t}").is_ok(),
            Err(err) => {
                failed = Some(err);
                false
            }
        }
    })?;
    match failed {
        Some(err) => Err(err),
        None => Ok(0),
    }
}
