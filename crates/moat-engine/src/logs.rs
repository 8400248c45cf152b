//! Container logs in docker's json-file format: one JSON object per line,
//! `{"log":"text\n","stream":"stdout","time":"…"}`, rotated like Docker's
//! `max-size`/`max-file` options: `<id>-json.log` is the current file,
//! `<id>-json.log.1` the one before, and so on; readers go oldest first.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;

/// One log record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Text, with its newline.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// When the shim read it.
    pub time: DateTime<Utc>,
}

/// How a container's log is kept (`--log-driver`, `--log-opt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    /// `json-file` or `none`.
    pub driver: String,
    /// Rotate once the current file would exceed this many bytes.
    pub max_size: u64,
    /// Files kept, the current one included.
    pub max_file: u32,
    /// `labels=`: container labels shown by `logs --details`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// `env=`: environment variables shown by `logs --details`.
    #[serde(default)]
    pub env: Vec<String>,
    /// The options as the user gave them (what inspect shows, as Docker does:
    /// none when none were given, whatever defaults apply).
    #[serde(default)]
    pub given: std::collections::BTreeMap<String, String>,
}

impl Default for LogConfig {
    /// 20 MiB × 5 files (Docker's `local` driver): a noisy container costs
    /// at most about 100 MiB of disk.
    fn default() -> Self {
        Self {
            driver: "json-file".into(),
            max_size: 20 << 20,
            max_file: 5,
            labels: Vec::new(),
            env: Vec::new(),
            given: Default::default(),
        }
    }
}

impl LogConfig {
    /// Applies `--log-driver` and `--log-opt KEY=VALUE` values.
    pub fn parse(driver: Option<&str>, opts: &[String]) -> Result<Self, String> {
        let mut c = Self::default();
        if let Some(d) = driver {
            match d {
                "json-file" | "none" => c.driver = d.into(),
                // dockerd's words, and what moat has
                _ => {
                    return Err(format!(
                        "logger: no log driver named '{d}' is registered (moat has json-file and none)"
                    ))
                }
            }
        }
        for o in opts {
            let (k, v) = o.split_once('=').ok_or_else(|| format!("invalid log option {o:?}: use KEY=VALUE"))?;
            c.given.insert(k.to_string(), v.to_string());
            match k {
                "max-size" => {
                    c.max_size = moat_core::human::parse_size(v).map_err(|e| format!("log option max-size: {e}"))?;
                    if c.max_size < 1024 {
                        return Err(format!("log option max-size={v} is below the minimum of 1k"));
                    }
                }
                "max-file" => {
                    c.max_file = v
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| format!("log option max-file={v}: use a whole number of at least 1"))?;
                }
                "labels" => c.labels = v.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect(),
                "env" => c.env = v.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect(),
                _ => {
                    return Err(format!(
                        "unknown log option {k:?} for {}: use max-size, max-file, labels or env",
                        c.driver
                    ))
                }
            }
        }
        Ok(c)
    }

    /// The attributes `logs --details` shows before each line (`k=v,...`):
    /// the labels and variables named by the `labels`/`env` options.
    pub fn details(&self, labels: &std::collections::BTreeMap<String, String>, env: &[String]) -> String {
        let mut attrs: Vec<String> = Vec::new();
        for l in &self.labels {
            if let Some(v) = labels.get(l) {
                attrs.push(format!("{l}={v}"));
            }
        }
        for k in &self.env {
            if let Some(v) = env.iter().find_map(|e| e.strip_prefix(&format!("{k}="))) {
                attrs.push(format!("{k}={v}"));
            }
        }
        attrs.sort();
        attrs.join(",")
    }
}

fn rotated(path: &Path, n: u32) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    p.into()
}

/// Appends records, splitting output into lines, rotating by size.
pub struct LogWriter {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    config: LogConfig,
    partial: [Vec<u8>; 2],
}

/// Longest partial line kept before it is written as a record of its own.
const MAX_PARTIAL: usize = 16 << 10;

impl LogWriter {
    /// Opens (appending) the log file, readable by root only; with the
    /// `none` driver nothing is written.
    pub fn open(path: &Path, config: LogConfig) -> std::io::Result<Self> {
        let file = if config.driver == "none" { None } else { Some(Self::open_file(path)?) };
        let size = file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()).unwrap_or(0);
        Ok(Self { path: path.to_path_buf(), file, size, config, partial: [Vec::new(), Vec::new()] })
    }

    fn open_file(path: &Path) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
    }

    /// Writes encoded records (whole lines), rotating between records so no
    /// file grows past `max_size` (unless one record alone is larger).
    fn append(&mut self, out: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let mut rest = out;
        while !rest.is_empty() {
            let room = self.config.max_size.saturating_sub(self.size) as usize;
            // as many whole records as fit, at least one in an empty file
            let mut take = memchr::memrchr(b'\n', &rest[..room.min(rest.len())]).map_or(0, |i| i + 1);
            if take == 0 {
                if self.size == 0 {
                    take = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
                } else {
                    self.rotate()?;
                    continue;
                }
            }
            if let Some(f) = self.file.as_mut() {
                f.write_all(&rest[..take])?;
            }
            self.size += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        if self.config.max_file > 1 {
            for n in (1..self.config.max_file).rev() {
                let from = if n == 1 { self.path.clone() } else { rotated(&self.path, n - 1) };
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n))?;
                }
            }
        } else {
            std::fs::remove_file(&self.path)?;
        }
        self.file = Some(Self::open_file(&self.path)?);
        self.size = 0;
        Ok(())
    }

    /// Logs `data` from stream `err` (false = stdout); returns the JSON lines written.
    pub fn write(&mut self, err: bool, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let buf = &mut self.partial[err as usize];
        buf.extend_from_slice(data);
        let mut out = Vec::new();
        let now = time_json(Utc::now());
        // every whole line, then one drain (draining line by line would
        // move the rest of the buffer once per line)
        let mut start = 0;
        while let Some(rel) = memchr::memchr(b'\n', &buf[start..]) {
            let end = start + rel + 1;
            encode(&mut out, &buf[start..end], err, &now);
            start = end;
        }
        buf.drain(..start);
        if buf.len() > MAX_PARTIAL {
            let line = std::mem::take(buf);
            encode(&mut out, &line, err, &now);
        }
        self.append(&out)?;
        Ok(out)
    }

    /// Writes out unterminated lines (at exit).
    pub fn flush(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for err in [false, true] {
            let line = std::mem::take(&mut self.partial[err as usize]);
            if !line.is_empty() {
                encode(&mut out, &line, err, &time_json(Utc::now()));
            }
        }
        self.append(&out)?;
        Ok(out)
    }
}

/// A record's time as its JSON string (serde's RFC 3339 form).
fn time_json(t: DateTime<Utc>) -> String {
    serde_json::to_string(&t).unwrap_or_else(|_| "\"1970-01-01T00:00:00Z\"".into())
}

/// Encodes one record as a JSON line, exactly as `serde_json` writes a
/// [`Record`] (the unit test compares them), by hand: this runs for every
/// line a container prints, and serde_json's generic escaper, instantiated
/// in this crate, is slow in the debug builds the tests use.
fn encode(out: &mut Vec<u8>, line: &[u8], err: bool, time: &str) {
    let log = String::from_utf8_lossy(line);
    out.extend_from_slice(b"{\"log\":");
    push_json_str(out, log.as_bytes());
    out.extend_from_slice(if err { b",\"stream\":\"stderr\",\"time\":" } else { b",\"stream\":\"stdout\",\"time\":" });
    out.extend_from_slice(time.as_bytes());
    out.extend_from_slice(b"}\n");
}

/// serde_json's escaping: `"`, `\\`, the short forms of \b \t \n \f \r,
/// other control characters as `\u00XX`.
fn push_json_str(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// Reads records from the rotated files of `path` (oldest first) and from
/// `path` itself up to byte `limit` (all when `None`), keeping the last `tail`.
pub fn read(path: &Path, limit: Option<u64>, tail: Option<usize>) -> std::io::Result<Vec<Record>> {
    let mut older: Vec<std::path::PathBuf> = (1..1000).map(|n| rotated(path, n)).take_while(|p| p.exists()).collect();
    older.reverse();
    let mut out: std::collections::VecDeque<Record> = std::collections::VecDeque::new();
    let files = older.into_iter().map(|p| (p, None)).chain(std::iter::once((path.to_path_buf(), limit)));
    for (p, limit) in files {
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let r: Box<dyn std::io::Read> = match limit {
            Some(l) => Box::new(std::io::Read::take(f, l)),
            None => Box::new(f),
        };
        for line in std::io::BufReader::new(r).lines() {
            let line = line?;
            if let Ok(rec) = serde_json::from_str::<Record>(&line) {
                out.push_back(rec);
                if tail.is_some_and(|t| out.len() > t) {
                    out.pop_front();
                }
            }
        }
    }
    Ok(out.into())
}

/// Parses JSON lines (as streamed by a following shim).
pub fn parse_lines(data: &[u8]) -> Vec<Record> {
    data.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice(l).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_encoding_is_serde_json_s() {
        let t = Utc::now();
        let mut lines: Vec<Vec<u8>> = (0u8..=0x7f).map(|b| vec![b'a', b, b'z', b'\n']).collect();
        lines.push("héllo \u{2028} 日本\n".as_bytes().to_vec());
        lines.push(vec![0xff, 0xfe, b'"', b'\\', 0x1f, 0x7f]);
        lines.push(Vec::new());
        for (n, line) in lines.iter().enumerate() {
            let err = n % 2 == 1;
            let mut ours = Vec::new();
            encode(&mut ours, line, err, &time_json(t));
            let r = Record {
                log: String::from_utf8_lossy(line).into_owned(),
                stream: if err { "stderr" } else { "stdout" }.into(),
                time: t,
            };
            let mut theirs = serde_json::to_vec(&r).unwrap();
            theirs.push(b'\n');
            assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs), "line {line:?}");
        }
    }

    /// The defaults apply (5 x 20 MiB) while only what was given is shown.
    #[test]
    fn defaults_apply_and_given_options_are_kept() {
        let d = LogConfig::parse(None, &[]).expect("default");
        assert_eq!((d.driver.as_str(), d.max_size, d.max_file, d.given.len()), ("json-file", 20 << 20, 5, 0));
        let c = LogConfig::parse(None, &["max-size=1m".into()]).expect("max-size");
        assert_eq!((c.max_size, c.max_file), (1 << 20, 5));
        assert_eq!(c.given.into_iter().collect::<Vec<_>>(), vec![("max-size".to_string(), "1m".to_string())]);
        assert!(LogConfig::parse(Some("syslog"), &[]).is_err_and(|e| e.contains("no log driver named 'syslog'")));
    }

    #[test]
    fn lines_and_tail() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let p = d.path().join("log");
        let mut w = LogWriter::open(&p, LogConfig::default())?;
        let live = w.write(false, b"one\ntw")?;
        assert_eq!(parse_lines(&live).len(), 1);
        w.write(true, b"err\n")?;
        w.write(false, b"o\nthree")?;
        w.flush()?;
        let all = read(&p, None, None)?;
        let texts: Vec<&str> = all.iter().map(|r| r.log.as_str()).collect();
        assert_eq!(texts, vec!["one\n", "err\n", "two\n", "three"]);
        assert_eq!(all[1].stream, "stderr");
        assert_eq!(read(&p, None, Some(2))?.len(), 2);
        Ok(())
    }

    #[test]
    fn rotates_and_reads_across_files() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let p = d.path().join("log");
        let cfg =
            LogConfig::parse(None, &["max-size=1k".into(), "max-file=3".into()]).map_err(std::io::Error::other)?;
        let mut w = LogWriter::open(&p, cfg)?;
        for i in 0..200 {
            w.write(false, format!("line{i}\n").as_bytes())?;
        }
        let files: Vec<_> = std::fs::read_dir(d.path())?.flatten().map(|e| e.file_name()).collect();
        assert_eq!(files.len(), 3, "{files:?}");
        let total: u64 =
            std::fs::read_dir(d.path())?.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
        assert!(total <= 3 * 1024, "{total}");
        let all = read(&p, None, None)?;
        assert_eq!(all.last().map(|r| r.log.as_str()), Some("line199\n"));
        let nums: Vec<u32> = all.iter().filter_map(|r| r.log.trim().strip_prefix("line")?.parse().ok()).collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "in order, none lost within what is kept");
        assert!(nums[0] > 0, "the oldest lines were rotated away");
        let none = LogWriter::open(
            &d.path().join("none"),
            LogConfig::parse(Some("none"), &[]).map_err(std::io::Error::other)?,
        );
        none?.write(false, b"x\n")?;
        assert!(!d.path().join("none").exists());
        assert!(LogConfig::parse(Some("syslog"), &[]).is_err());
        assert!(LogConfig::parse(None, &["max-file=0".into()]).is_err());
        assert!(LogConfig::parse(None, &["bogus=x".into()]).is_err());
        let c =
            LogConfig::parse(None, &["labels=team,app".into(), "env=STAGE".into()]).map_err(std::io::Error::other)?;
        let labels = [("team".to_string(), "core".to_string())].into_iter().collect();
        assert_eq!(c.details(&labels, &["STAGE=dev".into(), "X=1".into()]), "STAGE=dev,team=core");
        Ok(())
    }
}
