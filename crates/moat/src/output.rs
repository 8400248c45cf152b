//! Tables and progress bars for terminal output.

use std::io::{IsTerminal, Write};

/// What a prune removed, as Docker prints it: `title`, one line per item
/// and a blank line (nothing when nothing was removed).
pub fn deleted<T: std::fmt::Display>(title: &str, items: &[T]) {
    if items.is_empty() {
        return;
    }
    outln!("{title}");
    for i in items {
        outln!("{i}");
    }
    outln!();
}

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
    let pipe = |io: &std::io::Error| io.kind() == std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(pipe)
            || matches!(c.downcast_ref::<moat_engine::EngineError>(), Some(moat_engine::EngineError::Io(_, io)) if pipe(io))
    })
}

/// Writes an archive to `path` whole or not at all: into a temporary file
/// beside it, flushed, then renamed (`save -o`, `export -o`).
pub fn to_file(
    path: &std::path::Path,
    f: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".moat-out-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let mut w = std::io::BufWriter::new(tmp.as_file());
    f(&mut w)?;
    std::io::Write::flush(&mut w).context("cannot flush output")?;
    drop(w);
    tmp.as_file().sync_all().context("cannot flush output")?;
    tmp.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes an archive to stdout, refusing a terminal like Docker.
pub fn to_stdout(f: impl FnOnce(&mut std::io::BufWriter<std::io::Stdout>) -> anyhow::Result<()>) -> anyhow::Result<()> {
    if std::io::stdout().is_terminal() {
        anyhow::bail!("cowardly refusing to save to a terminal: use the -o flag or redirect");
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
    f(&mut w)?;
    std::io::Write::flush(&mut w).map_err(anyhow::Error::from)
}
