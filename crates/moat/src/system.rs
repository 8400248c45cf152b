//! `moat system ...`: boot, df, prune, reset.

use anyhow::{bail, Result};
use clap::Subcommand;
use moat_core::human;
use moat_engine::Engine;

/// System subcommands.
#[derive(Subcommand, Debug)]
pub enum SystemCmd {
    /// Start the containers whose restart policy wants them running but
    /// whose shim is gone (after a reboot, or a killed shim).
    Boot,
    /// Show disk usage.
    Df {
        /// `table` or `json`.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Remove stopped containers, unused switches and dangling images.
    Prune {
        /// Remove every unused image, not just dangling ones.
        #[arg(short, long)]
        all: bool,
        /// Also remove unused anonymous volumes (with --all, every unused volume).
        #[arg(long)]
        volumes: bool,
        /// Do not prompt (moat never prompts).
        #[arg(short, long)]
        force: bool,
    },
    /// Remove everything of this root: containers, their VMs and mounts,
    /// switches with their bridges, rules and taps, images, the files.
    Reset {
        /// Required: this cannot be undone.
        #[arg(short, long)]
        force: bool,
    },
}

/// Runs a system subcommand.
pub fn run(e: Engine, cmd: SystemCmd) -> Result<i32> {
    let mut e = e;
    match cmd {
        SystemCmd::Boot => {
            let mut code = 0;
            for b in e.boot()? {
                match b.result {
                    Ok(()) => outln!("{}", b.name),
                    Err(err) => {
                        error_line!("{}: {err}", b.name);
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        SystemCmd::Df { format } => {
            let u = e.disk_usage()?;
            if format == "json" {
                outln!("{}", serde_json::to_string(&u)?);
                return Ok(0);
            }
            let row = |t: &str, r: &moat_engine::system::UsageRow| {
                let pct = (r.reclaimable * 100).checked_div(r.size).unwrap_or(0);
                vec![
                    t.into(),
                    r.total.to_string(),
                    r.active.to_string(),
                    human::size(r.size),
                    format!("{} ({pct}%)", human::size(r.reclaimable)),
                ]
            };
            crate::output::table(
                &["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"],
                &[row("Images", &u.images), row("Containers", &u.containers), row("Local Volumes", &u.volumes)],
            )?;
            Ok(0)
        }
        SystemCmd::Prune { all, volumes, force: _ } => {
            let s = e.system_prune(all, volumes)?;
            for (title, items) in [
                ("Deleted Containers:", &s.containers),
                ("Deleted Networks:", &s.networks),
                ("Deleted Volumes:", &s.volumes),
                ("Deleted Images:", &s.images),
            ] {
                if !items.is_empty() {
                    outln!("{title}");
                    for i in items {
                        outln!("{i}");
                    }
                    outln!();
                }
            }
            outln!("Total reclaimed space: {}", human::size(s.reclaimed));
            Ok(0)
        }
        SystemCmd::Reset { force } => {
            if !force {
                bail!(
                    "refusing to reset without --force: this removes every container, switch and image of {}",
                    e.layout().root().display()
                );
            }
            let (c, s) = e.reset()?;
            outln!("removed {c} containers and {s} switches, and the root's files");
            Ok(0)
        }
    }
}
