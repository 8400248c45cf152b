//! `moat volume ...`: named and anonymous volumes.

use crate::format;
use anyhow::Result;
use clap::Subcommand;
use moat_core::human;
use moat_engine::filter::Filters;
use moat_engine::volumes::VolumeFilter;
use moat_engine::volumes::{VolumeCreate, VolumeListRow};
use moat_engine::Engine;

/// Volume subcommands.
#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume.
    Create {
        /// Name (random when absent).
        name: Option<String>,
        /// Driver (only `local`).
        #[arg(short = 'd', long)]
        driver: Option<String>,
        /// Labels: `KEY=VALUE`.
        #[arg(long = "label")]
        label: Vec<String>,
        /// Driver options (none are supported).
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        /// Filters: `name=`, `label=`, `dangling=true|false`, `driver=`.
        #[arg(short, long = "filter")]
        filter: Vec<String>,
        /// `table`, `json` or a Go template (`{{.Name}}`).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show volumes as JSON (or a Go template).
    Inspect {
        /// A Go template.
        #[arg(short = 'f', long)]
        format: Option<String>,
        /// Volumes.
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes no container uses.
    #[command(alias = "remove")]
    Rm {
        /// A missing volume is no error.
        #[arg(short, long)]
        force: bool,
        /// Volumes.
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove unused anonymous volumes (every unused one with --all).
    Prune {
        /// Named volumes too.
        #[arg(short, long)]
        all: bool,
        /// Filters (`label=`).
        #[arg(long = "filter")]
        filter: Vec<String>,
        /// Do not prompt (moat never prompts).
        #[arg(short, long)]
        force: bool,
    },
}

/// Runs a volume subcommand.
pub fn run(e: &mut Engine, cmd: VolumeCmd) -> Result<i32> {
    match cmd {
        VolumeCmd::Create { name, driver, label, opt } => {
            let v = e.volume_create(VolumeCreate {
                name,
                driver,
                labels: label.iter().map(|l| moat_engine::flags::label(l)).collect(),
                options: opt.iter().map(|o| moat_engine::flags::label(o)).collect(),
            })?;
            outln!("{}", v.name);
        }
        VolumeCmd::Ls { quiet, filter, format } => {
            let f = VolumeFilter::new(Filters::from_args(&filter)?)?;
            let all = e.volumes(&f)?;
            if quiet {
                for (v, _) in &all {
                    outln!("{}", v.name);
                }
                return Ok(0);
            }
            let rows: Vec<VolumeListRow> = all.iter().map(|(v, n)| VolumeListRow::of(v, *n)).collect();
            format::list(&format, "VOLUME NAME", &["DRIVER", "VOLUME NAME"], &rows, |r| {
                vec![r.driver.clone(), r.name.clone()]
            })?;
        }
        VolumeCmd::Inspect { format, volumes } => {
            let mut out = Vec::new();
            let mut code = 0;
            for n in &volumes {
                match e.volume(n) {
                    Ok(v) => out.push(serde_json::to_value(v.view(None))?),
                    Err(err) => {
                        error_line!("{err}");
                        code = 1;
                    }
                }
            }
            format::inspect(format.as_deref(), &out)?;
            return Ok(code);
        }
        VolumeCmd::Rm { force, volumes } => {
            let mut code = 0;
            for n in &volumes {
                match e.volume_remove(n, force) {
                    Ok(()) => outln!("{n}"),
                    Err(err) => {
                        error_line!("{err}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
        VolumeCmd::Prune { all, filter, force: _ } => {
            let f = VolumeFilter::new(Filters::from_args(&filter)?)?;
            let r = e.volume_prune(all, &f)?;
            crate::output::deleted("Deleted Volumes:", &r.deleted);
            outln!("Total reclaimed space: {}", human::size(r.reclaimed));
        }
    }
    Ok(0)
}
