//! Health checks: Docker's `HEALTHCHECK` (from the image or
//! `--health-*`), run by the container's shim — there is no daemon — as an
//! exec in the container every interval, through the same backend as any
//! exec, so they work the same in both isolation types. Results go into the
//! container's state (`inspect`'s `State.Health`, `ps`'s "(healthy)") and
//! the event log (`health_status: healthy`).

use crate::EngineError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Docker's defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u32 = 3;
/// Results kept (Docker keeps 5).
const LOG_LEN: usize = 5;
/// Output kept per result (Docker keeps 4 KiB).
pub const OUTPUT_LIMIT: usize = 4096;

/// A health check as Docker writes it (image config and API): `Test` is
/// `["CMD", arg...]`, `["CMD-SHELL", "command"]` or `["NONE"]`; durations in
/// nanoseconds, 0 for the default.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(default, rename_all = "PascalCase")]
pub struct HealthConfig {
    /// The test.
    pub test: Vec<String>,
    /// Between checks.
    pub interval: i64,
    /// Before a check counts as failed.
    pub timeout: i64,
    /// Failures during this time after start do not count.
    pub start_period: i64,
    /// Between checks during the start period.
    pub start_interval: i64,
    /// Consecutive failures that make the container unhealthy.
    pub retries: i64,
}

fn dur(ns: i64, default: Duration) -> Duration {
    if ns > 0 {
        Duration::from_nanos(ns as u64)
    } else {
        default
    }
}

impl HealthConfig {
    /// The command to exec, or `None` when the check is disabled.
    pub fn command(&self) -> Option<Vec<String>> {
        match self.test.split_first() {
            Some((k, rest)) if k == "CMD" && !rest.is_empty() => Some(rest.to_vec()),
            Some((k, rest)) if k == "CMD-SHELL" && !rest.is_empty() => {
                Some(vec!["/bin/sh".into(), "-c".into(), rest.join(" ")])
            }
            _ => None,
        }
    }
    /// Between checks.
    pub fn interval(&self) -> Duration {
        dur(self.interval, DEFAULT_INTERVAL)
    }
    /// Timeout of one check.
    pub fn timeout(&self) -> Duration {
        dur(self.timeout, DEFAULT_TIMEOUT)
    }
    /// The start period.
    pub fn start_period(&self) -> Duration {
        dur(self.start_period, Duration::ZERO)
    }
    /// Between checks in the start period.
    pub fn start_interval(&self) -> Duration {
        dur(self.start_interval, DEFAULT_START_INTERVAL)
    }
    /// Failures before unhealthy.
    pub fn retries(&self) -> u32 {
        if self.retries > 0 {
            self.retries as u32
        } else {
            DEFAULT_RETRIES
        }
    }

    /// The container's check: the image's, with each field the container
    /// sets taking precedence (Docker's merge); `--no-healthcheck` is `NONE`.
    pub fn merge(image: Option<&HealthConfig>, ctr: Option<&HealthConfig>) -> Option<HealthConfig> {
        let (i, c) = match (image, ctr) {
            (None, None) => return None,
            (Some(i), None) => return Some(i.clone()),
            (None, Some(c)) => return Some(c.clone()),
            (Some(i), Some(c)) => (i, c),
        };
        let pick = |a: i64, b: i64| if a != 0 { a } else { b };
        Some(HealthConfig {
            test: if c.test.is_empty() { i.test.clone() } else { c.test.clone() },
            interval: pick(c.interval, i.interval),
            timeout: pick(c.timeout, i.timeout),
            start_period: pick(c.start_period, i.start_period),
            start_interval: pick(c.start_interval, i.start_interval),
            retries: pick(c.retries, i.retries),
        })
    }

    /// Checks the values (negative durations, an empty test).
    pub fn validate(&self) -> Result<(), EngineError> {
        for (what, v) in [
            ("--health-interval", self.interval),
            ("--health-timeout", self.timeout),
            ("--health-start-period", self.start_period),
            ("--health-start-interval", self.start_interval),
        ] {
            if v < 0 || (v > 0 && v < 1_000_000) {
                return Err(EngineError::Invalid(format!("{what} must be at least 1ms")));
            }
        }
        if self.retries < 0 {
            return Err(EngineError::Invalid("--health-retries must not be negative".into()));
        }
        match self.test.first().map(String::as_str) {
            None | Some("NONE") => Ok(()),
            Some("CMD") | Some("CMD-SHELL") if self.test.len() > 1 => Ok(()),
            Some(t) => Err(EngineError::Invalid(format!(
                "invalid health check test {t:?}: use CMD, CMD-SHELL or NONE with a command"
            ))),
        }
    }
}

/// A duration flag (`30s`, `1m30s`, `500ms`) in nanoseconds.
pub fn duration_flag(what: &str, s: &str) -> Result<i64, EngineError> {
    crate::filter::parse_duration(s)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .ok_or_else(|| EngineError::Invalid(format!("invalid {what} {s:?}: use a duration like 30s or 1m30s")))
}

/// Docker's health states.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// In the start period or before the first result.
    #[default]
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct HealthResult {
    /// When it started.
    pub start: DateTime<Utc>,
    /// When it ended.
    pub end: DateTime<Utc>,
    /// Exit code (-1: could not run, or timed out).
    pub exit_code: i32,
    /// Output, at most [`OUTPUT_LIMIT`] bytes.
    pub output: String,
}

/// `State.Health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, rename_all = "PascalCase")]
pub struct Health {
    /// Status.
    pub status: HealthStatus,
    /// Failures in a row.
    pub failing_streak: u32,
    /// The last results, oldest first.
    pub log: Vec<HealthResult>,
}

impl Health {
    /// Records a result; returns the new status when it changed.
    /// Failures within the start period do not count (Docker's rule).
    pub fn record(&mut self, r: HealthResult, retries: u32, in_start_period: bool) -> Option<HealthStatus> {
        let before = self.status;
        if r.exit_code == 0 {
            self.status = HealthStatus::Healthy;
            self.failing_streak = 0;
        } else if !in_start_period {
            self.failing_streak += 1;
            if self.failing_streak >= retries {
                self.status = HealthStatus::Unhealthy;
            }
        }
        self.log.push(r);
        if self.log.len() > LOG_LEN {
            self.log.remove(0);
        }
        (self.status != before).then_some(self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(code: i32) -> HealthResult {
        HealthResult { start: Utc::now(), end: Utc::now(), exit_code: code, output: String::new() }
    }

    #[test]
    fn transitions_like_docker() {
        let mut h = Health::default();
        assert_eq!(h.record(result(1), 2, true), None, "start period: not counted");
        assert_eq!(h.failing_streak, 0);
        assert_eq!(h.record(result(0), 2, true), Some(HealthStatus::Healthy));
        assert_eq!(h.record(result(1), 2, false), None);
        assert_eq!(h.record(result(1), 2, false), Some(HealthStatus::Unhealthy));
        assert_eq!(h.failing_streak, 2);
        for _ in 0..10 {
            h.record(result(1), 2, false);
        }
        assert_eq!(h.log.len(), LOG_LEN);
        assert_eq!(h.record(result(0), 2, false), Some(HealthStatus::Healthy));
        assert_eq!(h.failing_streak, 0);
    }

    #[test]
    fn merge_and_commands() -> Result<(), EngineError> {
        let image =
            HealthConfig { test: vec!["CMD".into(), "true".into()], interval: 5, retries: 7, ..Default::default() };
        let ctr = HealthConfig { interval: 9, ..Default::default() };
        let m = HealthConfig::merge(Some(&image), Some(&ctr)).unwrap_or_default();
        assert_eq!((m.test.clone(), m.interval, m.retries), (image.test.clone(), 9, 7));
        assert_eq!(m.command(), Some(vec!["true".to_string()]));
        let shell = HealthConfig { test: vec!["CMD-SHELL".into(), "exit 1".into()], ..Default::default() };
        assert_eq!(shell.command(), Some(vec!["/bin/sh".into(), "-c".into(), "exit 1".into()]));
        let none = HealthConfig { test: vec!["NONE".into()], ..Default::default() };
        assert_eq!(HealthConfig::merge(Some(&image), Some(&none)).and_then(|h| h.command()), None);
        assert_eq!(shell.interval(), DEFAULT_INTERVAL);
        assert!(HealthConfig { test: vec!["BOGUS".into()], ..Default::default() }.validate().is_err());
        assert!(HealthConfig { interval: -1, ..Default::default() }.validate().is_err());
        assert_eq!(duration_flag("--health-interval", "1m30s")?, 90_000_000_000);
        Ok(())
    }
}
