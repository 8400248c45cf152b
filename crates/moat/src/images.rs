//! `moat image ...` and its top-level aliases.

use crate::output;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use moat_core::human;
use moat_image::{hashing::CountReader, ImageStore};
use moat_store::{Layout, Store};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

/// Image subcommands.
#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Import a rootfs tarball (FILE or - for stdin) as an image.
    Import(ImportArgs),
    /// Load images from a docker-archive or OCI layout tarball.
    Load(LoadArgs),
    /// Save images to a docker-archive tarball.
    Save(SaveArgs),
    /// List images.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show details of images as JSON.
    Inspect(InspectArgs),
    /// Give an image another name.
    Tag(TagArgs),
    /// Remove images.
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Remove unused images.
    Prune(PruneArgs),
}

/// `import` arguments.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Tarball path, or `-` for standard input.
    file: String,
    /// Name for the image, `NAME[:TAG]`.
    name: Option<String>,
    /// Commit message recorded in the image history.
    #[arg(short = 'm', long)]
    message: Option<String>,
    /// Dockerfile instruction to apply (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE).
    #[arg(short = 'c', long = "change")]
    changes: Vec<String>,
}

/// `load` arguments.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read from this file instead of standard input.
    #[arg(short, long)]
    input: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
}

/// `save` arguments.
#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Images to save.
    #[arg(required = true)]
    images: Vec<String>,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// `images` / `image ls` arguments.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only show image IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Show full image IDs.
    #[arg(long)]
    no_trunc: bool,
    /// Output format: `table` or `json` (one object per line, like docker).
    #[arg(long, default_value = "table")]
    format: String,
}

/// `image inspect` arguments.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Images to inspect.
    #[arg(required = true)]
    images: Vec<String>,
}

/// `tag` arguments.
#[derive(Args, Debug)]
pub struct TagArgs {
    /// Existing image.
    source: String,
    /// New name, `NAME[:TAG]`.
    target: String,
}

/// `rmi` arguments.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// Images to remove.
    #[arg(required = true)]
    images: Vec<String>,
    /// Remove even if used by containers or tagged several times.
    #[arg(short, long)]
    force: bool,
}

/// `image prune` arguments.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Remove all images not used by a container, not just dangling ones.
    #[arg(short, long)]
    all: bool,
    /// Do not ask for confirmation (moat never asks; accepted for docker compatibility).
    #[arg(short, long)]
    force: bool,
}

/// Opens the image store of `root`, with limits from the environment.
pub fn open(root: &Path) -> Result<ImageStore> {
    let store = Store::open(Layout::new(root)).with_context(|| format!("cannot open moat root {}", root.display()))?;
    let mut s = ImageStore::open(store)?;
    if let Ok(v) = std::env::var("MOAT_MAX_UNPACK_BYTES") {
        s.limits.max_bytes = v.parse().context("MOAT_MAX_UNPACK_BYTES must be a number of bytes")?;
    }
    if let Ok(v) = std::env::var("MOAT_MAX_UNPACK_ENTRIES") {
        s.limits.max_entries = v.parse().context("MOAT_MAX_UNPACK_ENTRIES must be a number")?;
    }
    Ok(s)
}

/// Opens `-`/stdin or a file, with its size when known.
fn input(file: Option<&Path>) -> Result<(Box<dyn Read>, Option<u64>)> {
    match file {
        Some(p) if p != Path::new("-") => {
            let f = std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            Ok((Box::new(f), len))
        }
        _ => {
            if std::io::stdin().is_terminal() {
                bail!("requested load from stdin, but stdin is a terminal: use -i FILE or redirect input");
            }
            Ok((Box::new(std::io::stdin().lock()), None))
        }
    }
}

/// Runs one image subcommand.
pub fn run(root: &Path, cmd: ImageCmd) -> Result<i32> {
    let mut s = open(root)?;
    match cmd {
        ImageCmd::Import(a) => {
            let (r, total) = input(Some(Path::new(&a.file)))?;
            let pb = output::progress("importing", total);
            let on_read = |n| pb.inc(n);
            let msg = a.message.unwrap_or_else(|| format!("Imported from {}", a.file));
            let id = s.import(CountReader::new(r, &on_read), a.name.as_deref(), &msg, &a.changes)?;
            pb.finish_and_clear();
            println!("{id}");
        }
        ImageCmd::Load(a) => {
            let (r, total) = input(a.input.as_deref())?;
            let pb = if a.quiet { indicatif::ProgressBar::hidden() } else { output::progress("loading", total) };
            let on_read = |n| pb.inc(n);
            let loaded = s.load(CountReader::new(r, &on_read))?;
            pb.finish_and_clear();
            if !a.quiet {
                for l in loaded {
                    if l.tags.is_empty() {
                        println!("Loaded image ID: {}", l.id);
                    }
                    for t in l.tags {
                        println!("Loaded image: {t}");
                    }
                }
            }
        }
        ImageCmd::Save(a) => match a.output {
            Some(p) => {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let tmp = tempfile_in(dir)?;
                s.save(&a.images, std::io::BufWriter::new(tmp.as_file()))?;
                tmp.as_file().sync_all().context("cannot flush output")?;
                tmp.persist(&p).with_context(|| format!("cannot write {}", p.display()))?;
            }
            None => {
                if std::io::stdout().is_terminal() {
                    bail!("cowardly refusing to save to a terminal: use the -o flag or redirect");
                }
                s.save(&a.images, std::io::BufWriter::new(std::io::stdout().lock()))?;
            }
        },
        ImageCmd::Ls(a) => ls(&s, a)?,
        ImageCmd::Inspect(a) => {
            let mut out = Vec::new();
            let mut code = 0;
            for name in &a.images {
                match s.resolve(name) {
                    Ok(img) => out.push(inspect_json(&img)),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 1;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(code);
        }
        ImageCmd::Tag(a) => s.tag(&a.source, &a.target)?,
        ImageCmd::Rm(a) => {
            let mut code = 0;
            for name in &a.images {
                match s.remove(name, a.force) {
                    Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
        ImageCmd::Prune(a) => {
            let _ = a.force;
            let rep = s.prune(a.all)?;
            if !rep.deleted.is_empty() {
                println!("Deleted Images:");
                for d in &rep.deleted {
                    println!("deleted: {d}");
                }
                println!();
            }
            println!("Total reclaimed space: {}", human::size(rep.reclaimed));
        }
    }
    Ok(0)
}

fn tempfile_in(dir: &Path) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".moat-save-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))
}

fn ls(s: &ImageStore, a: LsArgs) -> Result<()> {
    let imgs = s.list()?;
    let mut rows = Vec::new();
    for img in &imgs {
        let id = if a.no_trunc { img.id.to_string() } else { img.id.short().to_string() };
        let created = img.created.unwrap_or(img.added);
        let names: Vec<(String, String)> = if img.tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            img.tags
                .iter()
                .map(|t| {
                    t.rsplit_once(':')
                        .map(|(r, t)| (r.to_string(), t.to_string()))
                        .unwrap_or((t.clone(), "<none>".into()))
                })
                .collect()
        };
        for (repo, tag) in names {
            rows.push((repo, tag, id.clone(), created, img.size, img.id.to_string()));
        }
    }
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        for r in &rows {
            if seen.insert(r.2.clone()) {
                println!("{}", r.2);
            }
        }
        return Ok(());
    }
    match a.format.as_str() {
        "json" => {
            for (repo, tag, id, created, size, _) in &rows {
                let v = serde_json::json!({
                    "Repository": repo, "Tag": tag, "ID": id,
                    "CreatedAt": created.format("%Y-%m-%d %H:%M:%S %z UTC").to_string(),
                    "CreatedSince": human::ago(*created),
                    "Size": human::size(*size),
                    "Digest": "<none>",
                });
                println!("{v}");
            }
        }
        "table" => {
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|(repo, tag, id, created, size, _)| vec![repo, tag, id, human::ago(created), human::size(size)])
                .collect();
            output::table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows)?;
        }
        f => bail!("unknown format {f:?}: use table or json"),
    }
    Ok(())
}

pub fn inspect_json(img: &moat_store::ImageRecord) -> serde_json::Value {
    let cfg: serde_json::Value = serde_json::from_slice(&img.config).unwrap_or_default();
    serde_json::json!({
        "Id": img.id.to_string(),
        "RepoTags": img.tags,
        "RepoDigests": [],
        "Created": cfg.get("created").cloned().unwrap_or_default(),
        "Size": img.size,
        "Architecture": cfg.get("architecture").cloned().unwrap_or_default(),
        "Os": cfg.get("os").cloned().unwrap_or_default(),
        "Config": cfg.get("config").cloned().unwrap_or_default(),
        "RootFS": { "Type": "layers", "Layers": img.diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>() },
        "Metadata": { "LastTagTime": img.added.to_rfc3339() },
    })
}
