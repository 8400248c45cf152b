//! Tables and progress bars for terminal output.

use std::io::{IsTerminal, Write};

/// Prints rows as a docker-style table: columns separated by at least three spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut tw = tabwriter::TabWriter::new(std::io::stdout().lock()).padding(3);
    writeln!(tw, "{}", header.join("\t"))?;
    for r in rows {
        writeln!(tw, "{}", r.join("\t"))?;
    }
    tw.flush()
}

/// A byte-progress bar on a terminal stdout, nothing otherwise.
pub fn progress(what: &str, total: Option<u64>) -> indicatif::ProgressBar {
    if !std::io::stdout().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = match total {
        Some(t) => indicatif::ProgressBar::new(t).with_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        ),
    };
    pb.set_message(what.to_string());
    pb
}

/// A reader that reports how many bytes went through it (for progress bars).
pub struct CountReader<'a, R> {
    inner: R,
    on_read: &'a dyn Fn(u64),
}

impl<'a, R: std::io::Read> CountReader<'a, R> {
    /// Calls `on_read(n)` after every read of `n` bytes.
    pub fn new(inner: R, on_read: &'a dyn Fn(u64)) -> Self {
        Self { inner, on_read }
    }
}

impl<R: std::io::Read> std::io::Read for CountReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_read)(n as u64);
        Ok(n)
    }
}

/// True when `e` comes from writing to a closed pipe (`moat ps | head`):
/// a normal end of output, not an error.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
