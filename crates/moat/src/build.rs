//! `moat build` and `moat builder prune`: flags to a `BuildRequest`, the
//! builder's lines and `RUN` output to the terminal.

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use moat_core::human;
use moat_engine::build::{BuildEvent, BuildRequest, ContextSource};
use moat_engine::Engine;
use std::io::{Read, Write};

/// `build` arguments (Docker's classic builder's flags).
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Name and optionally a tag (`name:tag`); repeatable.
    #[arg(short, long = "tag")]
    tag: Vec<String>,
    /// The Dockerfile (a path in the context, or `-` for stdin).
    #[arg(short, long)]
    file: Option<String>,
    /// A build-time variable (`KEY=VALUE`, or `KEY` to take it from the environment).
    #[arg(long = "build-arg")]
    build_arg: Vec<String>,
    /// The stage to build (the last one by default).
    #[arg(long)]
    target: Option<String>,
    /// Do not use the build cache.
    #[arg(long)]
    no_cache: bool,
    /// Pull every base image again.
    #[arg(long)]
    pull: bool,
    /// A label of the image (`KEY=VALUE`); repeatable.
    #[arg(long)]
    label: Vec<String>,
    /// The platform (only this host's: moat does not emulate others).
    #[arg(long)]
    platform: Option<String>,
    /// Isolation of the RUN steps: process or hyperv (each step in a utility VM).
    #[arg(long)]
    isolation: Option<String>,
    /// Network of the RUN steps: default, none, host or a switch.
    #[arg(long)]
    network: Option<String>,
    /// Print only the image ID.
    #[arg(short, long)]
    quiet: bool,
    /// Write the image ID to this file.
    #[arg(long)]
    iidfile: Option<std::path::PathBuf>,
    /// Remove intermediate containers after a successful build.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    rm: bool,
    /// Always remove intermediate containers.
    #[arg(long)]
    force_rm: bool,
    /// The context: a directory, or `-` (a tar, or a lone Dockerfile, on stdin).
    context: String,
}

/// `builder` subcommands.
#[derive(Subcommand, Debug)]
pub enum BuilderCmd {
    /// Remove the build cache (and the intermediate images only it kept).
    Prune {
        /// Do not ask (moat never asks).
        #[arg(short, long)]
        force: bool,
        /// Docker's: the whole cache (moat's prune always is).
        #[arg(short, long)]
        all: bool,
    },
}

/// A reader that shows its progress (a context sent on stdin).
struct Counted<R> {
    inner: R,
    pb: indicatif::ProgressBar,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pb.inc(n as u64);
        Ok(n)
    }
}

/// Runs `build`.
pub fn build(e: &mut Engine, a: BuildArgs) -> Result<i32> {
    let mut req;
    let mut sending: Option<indicatif::ProgressBar> = None;
    let stdin_file = a.file.as_deref() == Some("-");
    if a.context == "-" {
        if stdin_file {
            anyhow::bail!("invalid argument: can't use stdin for both the build context and the Dockerfile");
        }
        let mut head = Vec::new();
        std::io::stdin().lock().take(512).read_to_end(&mut head).context("read stdin")?;
        if moat_engine::build::looks_like_archive(&head) {
            let rest = std::io::Cursor::new(head).chain(std::io::stdin());
            let pb = if a.quiet {
                indicatif::ProgressBar::hidden()
            } else {
                crate::output::progress("sending build context", None)
            };
            sending = Some(pb.clone());
            req = BuildRequest::new(ContextSource::Tar(Box::new(Counted { inner: rest, pb })));
            req.dockerfile = a.file.clone();
        } else {
            // a Dockerfile alone: an empty context
            let mut text = head;
            std::io::stdin().lock().read_to_end(&mut text).context("read stdin")?;
            let empty = vec![0u8; 1024]; // an empty tar: its two end blocks
            req = BuildRequest::new(ContextSource::Tar(Box::new(std::io::Cursor::new(empty))));
            req.dockerfile_text = Some(String::from_utf8(text).context("the Dockerfile on stdin is not UTF-8")?);
        }
    } else {
        req = BuildRequest::new(ContextSource::Dir(a.context.clone().into()));
        if stdin_file {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("read the Dockerfile from stdin")?;
            req.dockerfile_text = Some(text);
        } else if let Some(f) = &a.file {
            // a path given on the command line is relative to the current
            // directory (Docker's): inside the context it is read from there
            let p = std::path::Path::new(f);
            let ctx = std::fs::canonicalize(&a.context).unwrap_or_else(|_| a.context.clone().into());
            match std::fs::canonicalize(p).ok().and_then(|abs| abs.strip_prefix(&ctx).ok().map(|r| r.to_path_buf())) {
                Some(rel) => req.dockerfile = Some(rel.display().to_string()),
                None if p.exists() => {
                    req.dockerfile_text = Some(std::fs::read_to_string(p).with_context(|| format!("read {f}"))?)
                }
                None => req.dockerfile = Some(f.clone()),
            }
        }
    }
    for b in &a.build_arg {
        match b.split_once('=') {
            Some((k, v)) => req.build_args.insert(k.to_string(), Some(v.to_string())),
            None => req.build_args.insert(b.clone(), std::env::var(b).ok()),
        };
    }
    for l in &a.label {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        req.labels.insert(k.to_string(), v.to_string());
    }
    req.tags = a.tag.clone();
    req.target = a.target.clone();
    req.no_cache = a.no_cache;
    req.pull = a.pull;
    req.platform = a.platform.clone();
    req.isolation = match &a.isolation {
        Some(i) => moat_engine::flags::isolation(i)?,
        None => None,
    };
    req.network = a.network.clone();
    req.remove = a.rm;
    req.force_remove = a.force_rm;
    let quiet = a.quiet;
    let progress = move |ev: BuildEvent| {
        // the context has been read once the builder speaks
        if let Some(pb) = &sending {
            if !pb.is_finished() {
                pb.finish_and_clear();
            }
        }
        if quiet {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = match ev {
            BuildEvent::Line(l) => out.write_all(l.as_bytes()),
            BuildEvent::Output(d) => out.write_all(&d),
        };
        let _ = out.flush();
    };
    let built = e.build(req, &progress)?;
    if quiet {
        outln!("{}", built.id);
    }
    if let Some(f) = &a.iidfile {
        std::fs::write(f, built.id.to_string()).with_context(|| format!("write {}", f.display()))?;
    }
    Ok(0)
}

/// Runs a `builder` subcommand.
pub fn builder(e: &mut Engine, c: BuilderCmd) -> Result<i32> {
    match c {
        BuilderCmd::Prune { .. } => {
            let r = e.build_prune()?;
            crate::output::deleted("Deleted build cache objects:", &r.images);
            outln!("Total reclaimed space: {}", human::size(r.reclaimed));
            Ok(0)
        }
    }
}
