//! Container logs in docker's json-file format: one JSON object per line,
//! `{"log":"text\n","stream":"stdout","time":"…"}`.

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

/// Appends records, splitting output into lines.
pub struct LogWriter {
    file: std::fs::File,
    partial: [Vec<u8>; 2],
}

/// Longest partial line kept before it is written as a record of its own.
const MAX_PARTIAL: usize = 16 << 10;

impl LogWriter {
    /// Opens (appending) the log file, readable by root only.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(Self { file, partial: [Vec::new(), Vec::new()] })
    }

    /// Logs `data` from stream `err` (false = stdout); returns the JSON lines written.
    pub fn write(&mut self, err: bool, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let buf = &mut self.partial[err as usize];
        buf.extend_from_slice(data);
        let mut out = Vec::new();
        let now = Utc::now();
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            encode(&mut out, &line, err, now);
        }
        if buf.len() > MAX_PARTIAL {
            let line = std::mem::take(buf);
            encode(&mut out, &line, err, now);
        }
        self.file.write_all(&out)?;
        Ok(out)
    }

    /// Writes out unterminated lines (at exit).
    pub fn flush(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for err in [false, true] {
            let line = std::mem::take(&mut self.partial[err as usize]);
            if !line.is_empty() {
                encode(&mut out, &line, err, Utc::now());
            }
        }
        self.file.write_all(&out)?;
        Ok(out)
    }
}

fn encode(out: &mut Vec<u8>, line: &[u8], err: bool, time: DateTime<Utc>) {
    let r = Record {
        log: String::from_utf8_lossy(line).into_owned(),
        stream: if err { "stderr" } else { "stdout" }.into(),
        time,
    };
    if let Ok(s) = serde_json::to_vec(&r) {
        out.extend_from_slice(&s);
        out.push(b'\n');
    }
}

/// Reads records from `path` up to byte `limit` (all when `None`), keeping the last `tail`.
pub fn read(path: &Path, limit: Option<u64>, tail: Option<usize>) -> std::io::Result<Vec<Record>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let r: Box<dyn std::io::Read> = match limit {
        Some(l) => Box::new(std::io::Read::take(f, l)),
        None => Box::new(f),
    };
    let mut out: std::collections::VecDeque<Record> = std::collections::VecDeque::new();
    for line in std::io::BufReader::new(r).lines() {
        let line = line?;
        if let Ok(rec) = serde_json::from_str::<Record>(&line) {
            out.push_back(rec);
            if tail.is_some_and(|t| out.len() > t) {
                out.pop_front();
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
    fn lines_and_tail() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let p = d.path().join("log");
        let mut w = LogWriter::open(&p)?;
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
}
