//! `moat image ...` and its top-level aliases.

use crate::format;
use crate::output::{self, CountReader};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use moat_core::human;
use moat_engine::filter::Filters;
use moat_engine::images::ImageFilter;
use moat_engine::view::{ImageInspect, ImageSummary, ImagesRow};
use moat_engine::Engine;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

/// Image subcommands.
#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Import a rootfs tarball (FILE, - for stdin, or an http(s) URL) as an image.
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
    /// Show the history of an image.
    History(HistoryArgs),
}

/// `image history` arguments.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Sizes and dates in a human-readable format (the default).
    #[arg(short = 'H', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = true)]
    human: bool,
    /// Do not truncate the output.
    #[arg(long)]
    no_trunc: bool,
    /// Only image IDs.
    #[arg(short, long)]
    quiet: bool,
    /// `table`, `json` or a Go template (`{{.CreatedBy}}`).
    #[arg(long, default_value = "table")]
    format: String,
    /// Image.
    image: String,
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
    /// Only images matching `REPOSITORY[:TAG]` (`*` patterns allowed).
    reference: Option<String>,
    /// Only show image IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Show full image IDs.
    #[arg(long)]
    no_trunc: bool,
    /// Show every image, also a build's intermediate ones (untagged, below another image).
    #[arg(short, long)]
    all: bool,
    /// Filter: reference=, dangling=true|false, label=KEY[=VALUE], before=, since=.
    #[arg(short, long)]
    filter: Vec<String>,
    /// `table`, `json` (one object per line), or a Go template (`{{.Repository}}:{{.Tag}}`).
    #[arg(long, default_value = "table")]
    format: String,
    /// Show digests (registry digests: `<none>` for images not pulled from a registry).
    #[arg(long)]
    digests: bool,
}

/// `image inspect` arguments.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A Go template (`{{.Id}}`, `{{json .Config}}`).
    #[arg(short = 'f', long)]
    format: Option<String>,
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
pub fn run(e: &mut Engine, cmd: ImageCmd) -> Result<i32> {
    match cmd {
        ImageCmd::Import(a) if a.file.starts_with("http://") || a.file.starts_with("https://") => {
            let msg = a.message.unwrap_or_else(|| format!("Imported from {}", a.file));
            outln!("{}", e.import_url(&a.file, a.name.as_deref(), &msg, &a.changes)?);
        }
        ImageCmd::Import(a) => {
            let (r, total) = input(Some(Path::new(&a.file)))?;
            let pb = output::progress("importing", total);
            let on_read = |n| pb.inc(n);
            let msg = a.message.unwrap_or_else(|| format!("Imported from {}", a.file));
            let id = e.import_image(CountReader::new(r, &on_read), a.name.as_deref(), &msg, &a.changes)?;
            pb.finish_and_clear();
            outln!("{id}");
        }
        ImageCmd::Load(a) => {
            let (r, total) = input(a.input.as_deref())?;
            let pb = if a.quiet { indicatif::ProgressBar::hidden() } else { output::progress("loading", total) };
            let on_read = |n| pb.inc(n);
            let loaded = e.load_images(CountReader::new(r, &on_read))?;
            pb.finish_and_clear();
            if !a.quiet {
                for line in loaded.iter().flat_map(|l| l.report()) {
                    outln!("{line}");
                }
            }
        }
        ImageCmd::Save(a) => match a.output {
            Some(p) => crate::output::to_file(&p, |w| Ok(e.save_images(&a.images, w)?))?,
            None => crate::output::to_stdout(|w| Ok(e.save_images(&a.images, w)?))?,
        },
        ImageCmd::Ls(a) => ls(e, a)?,
        ImageCmd::Inspect(a) => {
            let mut out = Vec::new();
            let mut code = 0;
            for name in &a.images {
                match e.image(name) {
                    Ok(img) => out.push(serde_json::to_value(ImageInspect::of_stored(e, &img))?),
                    Err(err) => {
                        error_line!("{err}");
                        code = 1;
                    }
                }
            }
            format::inspect(a.format.as_deref(), &out)?;
            return Ok(code);
        }
        ImageCmd::Tag(a) => e.tag_image(&a.source, &a.target)?,
        ImageCmd::History(a) => history(e, a)?,
        ImageCmd::Rm(a) => {
            let mut code = 0;
            for name in &a.images {
                match e.remove_image(name, a.force) {
                    Ok(lines) => lines.iter().for_each(|l| outln!("{l}")),
                    Err(err) => {
                        error_line!("{err}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
        ImageCmd::Prune(a) => {
            let _ = a.force;
            let rep = e.prune_images(a.all)?;
            let lines: Vec<String> = rep.deleted.iter().map(|d| format!("deleted: {d}")).collect();
            output::deleted("Deleted Images:", &lines);
            outln!("Total reclaimed space: {}", human::size(rep.reclaimed));
        }
    }
    Ok(0)
}

fn ls(e: &mut Engine, a: LsArgs) -> Result<()> {
    let mut terms = a.filter.clone();
    if let Some(r) = &a.reference {
        terms.push(format!("reference={r}"));
    }
    let mut f = ImageFilter::new(Filters::from_args(&terms)?)?;
    f.all = a.all;
    let imgs = e.images_matching(&f)?;
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        for img in &imgs {
            let id = if a.no_trunc { img.id.to_string() } else { img.id.short().to_string() };
            if seen.insert(id.clone()) {
                outln!("{id}");
            }
        }
        return Ok(());
    }
    let rows: Vec<ImagesRow> =
        imgs.iter().flat_map(|img| ImageSummary::rows_with_digests(e, img, a.no_trunc)).collect();
    if a.digests {
        return format::list(
            &a.format,
            "IMAGE ID",
            &["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"],
            &rows,
            |r| {
                vec![
                    r.repository.clone(),
                    r.tag.clone(),
                    r.digest.clone(),
                    r.id.clone(),
                    r.created_since.clone(),
                    r.size.clone(),
                ]
            },
        );
    }
    format::list(&a.format, "IMAGE ID", &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], &rows, |r| {
        vec![r.repository.clone(), r.tag.clone(), r.id.clone(), r.created_since.clone(), r.size.clone()]
    })
}

fn history(e: &mut Engine, a: HistoryArgs) -> Result<()> {
    let rows = e.image_history(&a.image)?;
    let short = |id: &str| {
        if a.no_trunc || id == "<missing>" {
            id.to_string()
        } else {
            id.trim_start_matches("sha256:").chars().take(12).collect()
        }
    };
    if a.quiet {
        for r in &rows {
            outln!("{}", short(&r.id));
        }
        return Ok(());
    }
    format::list(&a.format, "IMAGE", &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], &rows, |r| {
        let when = chrono::DateTime::from_timestamp(r.created, 0).unwrap_or_default();
        let by = if a.no_trunc || r.created_by.chars().count() <= 45 {
            r.created_by.clone()
        } else {
            r.created_by.chars().take(44).collect::<String>() + "…"
        };
        vec![
            short(&r.id),
            if a.human { moat_core::human::ago(when) } else { when.to_rfc3339() },
            by,
            if a.human { moat_core::human::size(r.size as u64) } else { r.size.to_string() },
            r.comment.clone(),
        ]
    })?;
    Ok(())
}
