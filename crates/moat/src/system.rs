//! `moat system ...`: boot, check, df, prune, reset.

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
    /// Find what crashed operations left behind (records without files,
    /// files without records, dead shims, mounts, cgroups, links, VM
    /// processes, layers); exit 1 when something is found and left.
    Check {
        /// Remove or reconcile what is found, and say what was done.
        #[arg(long)]
        repair: bool,
        /// `json` for the findings as JSON.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Show disk usage.
    Df {
        /// `table` or `json`.
        #[arg(long, default_value = "table")]
        format: String,
        /// Every image, container and volume with its space.
        #[arg(short = 'v', long)]
        verbose: bool,
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
        SystemCmd::Check { repair, format } => {
            let rep = e.system_check(repair)?;
            if format == "json" {
                outln!("{}", serde_json::to_string(&rep)?);
            } else {
                for f in &rep.findings {
                    match &f.repaired {
                        Some(done) => outln!("{}: {done}", f.problem),
                        None => outln!("{}", f.problem),
                    }
                }
                let left = rep.unrepaired();
                outln!(
                    "{} problem{} found, {} repaired",
                    rep.findings.len(),
                    if rep.findings.len() == 1 { "" } else { "s" },
                    rep.findings.len() - left
                );
            }
            Ok(i32::from(rep.unrepaired() > 0))
        }
        SystemCmd::Df { format, verbose } if verbose && format != "json" => {
            df_verbose(&mut e)?;
            Ok(0)
        }
        SystemCmd::Df { format, .. } => {
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
                ("Deleted Pods:", &s.pods),
                ("Deleted Containers:", &s.containers),
                ("Deleted Networks:", &s.networks),
                ("Deleted Volumes:", &s.volumes),
                ("Deleted Images:", &s.images),
            ] {
                crate::output::deleted(title, items);
            }
            if s.build_cache > 0 {
                outln!("Deleted build cache objects: {}", s.build_cache);
                outln!();
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

/// `system df -v`: Docker's three sections (images, containers, volumes)
/// and the (empty) build cache.
fn df_verbose(e: &mut Engine) -> Result<()> {
    use moat_core::human;
    let df = e.system_df()?;
    let when = |secs: i64| chrono::DateTime::from_timestamp(secs, 0).map(human::ago).unwrap_or_default();
    outln!("Images space usage:\n");
    let mut rows = Vec::new();
    for i in &df.images {
        let short = i.id.trim_start_matches("sha256:").chars().take(12).collect::<String>();
        let tags = if i.repo_tags.is_empty() { vec!["<none>:<none>".to_string()] } else { i.repo_tags.clone() };
        for t in tags {
            let (repo, tag) = t.rsplit_once(':').unwrap_or((&t, "<none>"));
            rows.push(vec![
                repo.to_string(),
                tag.to_string(),
                short.clone(),
                when(i.created),
                human::size(i.size.max(0) as u64),
                human::size(i.shared_size.max(0) as u64),
                human::size((i.size - i.shared_size.max(0)).max(0) as u64),
                i.containers.to_string(),
            ]);
        }
    }
    crate::output::table(
        &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE", "CONTAINERS"],
        &rows,
    )?;
    outln!("\nContainers space usage:\n");
    let rows: Vec<Vec<String>> = df
        .containers
        .iter()
        .map(|c| {
            let s = &c.summary;
            let vols = s.mounts.iter().filter(|m| m.kind == "volume").count();
            vec![
                s.id.chars().take(12).collect(),
                s.image.clone(),
                format!("\"{}\"", s.command),
                vols.to_string(),
                human::size(c.size_rw.max(0) as u64),
                when(s.created),
                s.status.clone(),
                s.names.iter().map(|n| n.trim_start_matches('/')).collect::<Vec<_>>().join(","),
            ]
        })
        .collect();
    crate::output::table(
        &["CONTAINER ID", "IMAGE", "COMMAND", "LOCAL VOLUMES", "SIZE", "CREATED", "STATUS", "NAMES"],
        &rows,
    )?;
    outln!("\nLocal Volumes space usage:\n");
    let rows: Vec<Vec<String>> = df
        .volumes
        .iter()
        .map(|v| {
            let u = v.usage_data.as_ref();
            vec![
                v.name.clone(),
                u.map(|u| u.ref_count.to_string()).unwrap_or_default(),
                human::size(u.map(|u| u.size.max(0) as u64).unwrap_or(0)),
            ]
        })
        .collect();
    crate::output::table(&["VOLUME NAME", "LINKS", "SIZE"], &rows)?;
    outln!("\nBuild cache usage: 0B\n");
    crate::output::table(&["CACHE ID", "CACHE TYPE", "SIZE", "CREATED", "LAST USED", "USAGE", "SHARED"], &[])?;
    Ok(())
}
