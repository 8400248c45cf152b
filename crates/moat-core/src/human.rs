//! Docker-style human formatting of sizes and ages.

use chrono::{DateTime, Utc};

/// Size in SI units the way docker prints it: `4.26MB`, `512B`, `1.2GB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        let s = format!("{v:.3}");
        // docker prints 4 significant digits at most, trimming zeros
        let s = format!("{:.*}", 2usize.saturating_sub(s.find('.').unwrap_or(1).saturating_sub(1)), v);
        let s = s.trim_end_matches('0').trim_end_matches('.').to_string();
        format!("{s}{}", UNITS[i])
    }
}

/// Errors parsing a size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid size {0:?}: use a number with an optional unit b, k, m or g (e.g. 512m)")]
pub struct BadSize(pub String);

/// Parses docker-style sizes: `1024`, `512k`, `32m`, `1.5g` (binary units).
pub fn parse_size(s: &str) -> Result<u64, BadSize> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.parse().map_err(|_| BadSize(s.into()))?;
    if !v.is_finite() || v < 0.0 {
        return Err(BadSize(s.into()));
    }
    Ok((v * mult as f64) as u64)
}

/// A duration in docker's words: `Less than a second`, `3 seconds`, `About a minute`, `2 hours`.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        172_800..=1_209_599 => format!("{} days", s / 86400),
        1_209_600..=5_183_999 => format!("{} weeks", s / 604_800),
        5_184_000..=63_071_999 => format!("{} months", s / 2_592_000),
        _ => format!("{} years", s / 31_536_000),
    }
}

/// `N units ago` relative to now.
pub fn ago(t: DateTime<Utc>) -> String {
    format!("{} ago", duration((Utc::now() - t).num_seconds()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(512), "512B");
        assert_eq!(size(4_260_000), "4.26MB");
        assert_eq!(size(12_345_678), "12.3MB");
        assert_eq!(size(123_456_789), "123MB");
        assert_eq!(size(1_000), "1kB");
    }

    #[test]
    fn parse_sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("32m"), Ok(32 << 20));
        assert_eq!(parse_size("32MB"), Ok(32 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("10b"), Ok(10));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1m").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "Less than a second");
        assert_eq!(duration(5), "5 seconds");
        assert_eq!(duration(90), "About a minute");
        assert_eq!(duration(600), "10 minutes");
        assert_eq!(duration(3 * 86400), "3 days");
    }
}
