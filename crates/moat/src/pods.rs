//! `moat pod ...`: pods, Podman's verbs (the engine does the work).

use crate::format;
use anyhow::Result;
use clap::Subcommand;
use moat_engine::flags;
use moat_engine::pods::{PodCreateRequest, PodInspect, PodListRow, PodWithContainers};
use moat_engine::Engine;

/// Pod subcommands.
#[derive(Subcommand, Debug)]
pub enum PodCmd {
    /// Create a pod (its infra container holds the sandbox).
    Create {
        /// Name (random when absent).
        #[arg(long)]
        name: Option<String>,
        /// Isolation of the pod's containers: process, hyperv (alias vm) or default.
        #[arg(long, default_value = "default")]
        isolation: String,
        /// Publish a port of the pod: `[IP:][HOST:]CONTAINER[/PROTO]`.
        #[arg(short = 'p', long = "publish")]
        publish: Vec<String>,
        /// The pod's switch (`--network` is the same), `none` or `host`.
        #[arg(long = "switch", visible_alias = "network", alias = "net")]
        network: Option<String>,
        /// Hostname of the pod's containers (default: the pod's name).
        #[arg(long)]
        hostname: Option<String>,
        /// Labels: `KEY=VALUE`.
        #[arg(short = 'l', long = "label")]
        label: Vec<String>,
        /// Memory limit of the whole pod (the VM's size in hyperv).
        #[arg(short = 'm', long)]
        memory: Option<String>,
        /// CPU limit of the whole pod (the VM's vCPUs in hyperv).
        #[arg(long)]
        cpus: Option<f64>,
        /// Add `NAME:IP` to the pod's /etc/hosts.
        #[arg(long = "add-host")]
        add_host: Vec<String>,
        /// DNS server of the pod.
        #[arg(long)]
        dns: Vec<String>,
    },
    /// List pods.
    #[command(alias = "list", alias = "ps")]
    Ls {
        /// Only IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate IDs.
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        /// Filters: `name=`, `id=`, `label=KEY[=VALUE]`, `status=`, `isolation=`.
        #[arg(short, long = "filter")]
        filter: Vec<String>,
        /// `table`, `json` or a Go template (`{{.Name}}`).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Show pods as JSON (or a Go template).
    Inspect {
        /// A Go template.
        #[arg(short = 'f', long)]
        format: Option<String>,
        /// Pods.
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Start pods: the infra container, then the others in creation order.
    Start {
        /// Pods.
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Stop pods: their containers in reverse order, the infra last.
    Stop {
        /// Seconds to wait before killing each container.
        #[arg(short = 't', long = "time")]
        time: Option<u32>,
        /// Pods.
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Stop and start pods.
    Restart {
        /// Seconds to wait before killing each container.
        #[arg(short = 't', long = "time")]
        time: Option<u32>,
        /// Pods.
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Send a signal to every running container of pods.
    Kill {
        /// Signal (name or number).
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        /// Pods.
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Freeze every container of pods.
    Pause {
        /// Pods.
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Thaw them.
    Unpause {
        /// Pods.
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// Remove pods with their containers.
    #[command(alias = "remove")]
    Rm {
        /// Stop running containers first.
        #[arg(short, long)]
        force: bool,
        /// Pods.
        #[arg(required = true)]
        pods: Vec<String>,
    },
    /// The processes of a pod's containers.
    Top {
        /// Pod.
        pod: String,
    },
    /// Resource usage of a pod's containers.
    Stats {
        /// One sample, then exit.
        #[arg(long = "no-stream")]
        no_stream: bool,
        /// `table`, `json` or a Go template.
        #[arg(long, default_value = "table")]
        format: String,
        /// Pod.
        pod: String,
    },
    /// Remove every pod none of whose containers runs.
    Prune {
        /// Do not prompt (moat never prompts).
        #[arg(short, long)]
        force: bool,
    },
    /// Convert a stopped pod with all its containers to another isolation type.
    Update {
        /// New isolation: process or hyperv (alias vm).
        #[arg(long)]
        isolation: String,
        /// Pod.
        pod: String,
    },
}

/// Runs `f` for each pod, printing the pod's ID (Podman's output) or an
/// error line; the exit code says whether any failed.
fn each(pods: &[String], mut f: impl FnMut(&str) -> Result<String, moat_engine::EngineError>) -> i32 {
    let mut code = 0;
    for p in pods {
        match f(p) {
            Ok(id) => outln!("{id}"),
            Err(e) => {
                error_line!("{e}");
                code = 125;
            }
        }
    }
    code
}

/// Runs a pod subcommand.
pub fn run(e: &mut Engine, cmd: PodCmd) -> Result<i32> {
    let id = |p: PodWithContainers| p.pod.id;
    Ok(match cmd {
        PodCmd::Create { name, isolation, publish, network, hostname, label, memory, cpus, add_host, dns } => {
            let pod = e.pod_create(PodCreateRequest {
                name,
                isolation: flags::isolation(&isolation)?,
                publish: publish.iter().map(|p| flags::publish(p)).collect::<Result<Vec<_>, _>>()?.concat(),
                network: network.unwrap_or_default(),
                hostname,
                labels: label.iter().map(|l| flags::label(l)).collect(),
                memory: memory.as_deref().map(|m| flags::size("memory", m)).transpose()?,
                cpus,
                add_hosts: add_host,
                dns,
            })?;
            outln!("{}", pod.id);
            0
        }
        PodCmd::Ls { quiet, no_trunc, filter, format } => {
            let filters = moat_engine::filter::Filters::from_args(&filter)?;
            let rows = e.pods_matching(&filters)?;
            let rows: Vec<PodListRow> = rows.iter().map(PodListRow::of).collect();
            let short = |s: &str| if no_trunc { s.to_string() } else { s[..s.len().min(12)].to_string() };
            if quiet {
                for r in &rows {
                    outln!("{}", short(&r.id));
                }
                return Ok(0);
            }
            format::list(
                &format,
                "POD ID",
                &["POD ID", "NAME", "STATUS", "CREATED", "INFRA ID", "# OF CONTAINERS", "ISOLATION"],
                &rows,
                |r| {
                    vec![
                        short(&r.id),
                        r.name.clone(),
                        r.status.clone(),
                        r.created_ago.clone(),
                        short(&r.infra_id),
                        r.num_containers.to_string(),
                        r.isolation.clone(),
                    ]
                },
            )?;
            0
        }
        PodCmd::Inspect { format, pods } => {
            let mut out = Vec::new();
            let mut code = 0;
            for p in &pods {
                match e.pod_with_containers(p) {
                    Ok(p) => out.push(serde_json::to_value(PodInspect::of(&p))?),
                    Err(err) => {
                        error_line!("{err}");
                        code = 125;
                    }
                }
            }
            format::inspect(format.as_deref(), &out)?;
            code
        }
        PodCmd::Start { pods } => each(&pods, |p| e.pod_start(p).map(id)),
        PodCmd::Stop { time, pods } => each(&pods, |p| e.pod_stop(p, time).map(id)),
        PodCmd::Restart { time, pods } => each(&pods, |p| e.pod_restart(p, time).map(id)),
        PodCmd::Kill { signal, pods } => {
            let sig = flags::signal(&signal)?;
            each(&pods, |p| e.pod_kill(p, sig).map(id))
        }
        PodCmd::Pause { pods } => each(&pods, |p| e.pod_pause(p, true).map(id)),
        PodCmd::Unpause { pods } => each(&pods, |p| e.pod_pause(p, false).map(id)),
        PodCmd::Rm { force, pods } => each(&pods, |p| e.pod_remove(p, force).map(|p| p.id)),
        PodCmd::Top { pod } => {
            let (titles, rows) = e.pod_top(&pod)?;
            let titles: Vec<&str> = titles.iter().map(String::as_str).collect();
            crate::output::table(&titles, &rows)?;
            0
        }
        PodCmd::Stats { no_stream, format, pod } => {
            let (_, running) = e.pod_running(&pod)?;
            let ids: Vec<String> = running.iter().map(|c| c.id().to_string()).collect();
            crate::containers::stats(e, no_stream, false, &format, &ids)?
        }
        PodCmd::Prune { force: _ } => {
            for p in e.pod_prune()? {
                outln!("{}", p.id);
            }
            0
        }
        PodCmd::Update { isolation, pod } => {
            let iso = flags::isolation(&isolation)?
                .ok_or_else(|| anyhow::anyhow!("--isolation: give process or hyperv (alias vm)"))?;
            outln!("{}", e.pod_update_isolation(&pod, iso)?.id);
            0
        }
    })
}
