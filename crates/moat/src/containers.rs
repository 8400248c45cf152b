//! Container commands: create, run, start, stop, exec, logs, ps, ...

use crate::session::{self, End, Opts};
use crate::{format, output};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use moat_engine::config::ContainerConfig;
use moat_engine::container_filter::ContainerFilter;
use moat_engine::create_body::CreateBody;
use moat_engine::filter::Filters;
use moat_engine::view::StatsRow;
use moat_engine::view::{ContainerInspect, PsRow};
use moat_engine::{flags, AttachOptions, Container, CreateRequest, Engine, EngineError, ExecSpec, StopOptions};
use std::collections::BTreeMap;

/// Flags shared by `create` and `run`.
#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Assign a name to the container.
    #[arg(long)]
    name: Option<String>,
    /// Suppress the pull output.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Set environment variables (`KEY=VALUE`, or `KEY` to copy from this environment).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file")]
    env_file: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User (`name|uid[:group|gid]`).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Container host name.
    #[arg(short = 'h', long)]
    hostname: Option<String>,
    /// Container NIS domain name.
    #[arg(long)]
    domainname: Option<String>,
    /// PID namespace: `host` shares the host's (process isolation).
    #[arg(long = "pid")]
    pid: Option<String>,
    /// IPC namespace: `private` (default), `shareable` or `host` (process isolation).
    #[arg(long = "ipc")]
    ipc: Option<String>,
    /// Cgroup namespace: `private` (default) or `host` (process isolation).
    #[arg(long = "cgroupns")]
    cgroupns: Option<String>,
    /// UTS namespace: `host` shares the host's names (process isolation).
    #[arg(long = "uts")]
    uts: Option<String>,
    /// Tune the container's OOM preference (-1000 to 1000).
    #[arg(long = "oom-score-adj", allow_hyphen_values = true)]
    oom_score_adj: Option<i32>,
    /// Add a rule to the device allow-list ('c 1:3 rwm').
    #[arg(long = "device-cgroup-rule")]
    device_cgroup_rule: Vec<String>,
    /// Add a legacy link to another container (NAME[:ALIAS]).
    #[arg(long = "link")]
    link: Vec<String>,
    /// Add supplementary groups (names in the container's /etc/group, or GIDs).
    #[arg(long = "group-add")]
    group_add: Vec<String>,
    /// Print help (`-h` is the host name, as in Docker).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Overwrite the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Bind mount a host path or mount a volume: `HOST:CONTAINER[:OPTS]`,
    /// `NAME:CONTAINER[:OPTS]`, or `CONTAINER` (an anonymous volume).
    #[arg(short = 'v', long = "volume")]
    volume: Vec<String>,
    /// Mount: `type=bind|volume|tmpfs,source=..,target=..[,readonly]...`.
    #[arg(long = "mount")]
    mount: Vec<String>,
    /// Command to run to check health (run with /bin/sh -c).
    #[arg(long)]
    health_cmd: Option<String>,
    /// Time between health checks (e.g. 30s).
    #[arg(long)]
    health_interval: Option<String>,
    /// Maximum time a check may take (e.g. 30s).
    #[arg(long)]
    health_timeout: Option<String>,
    /// Consecutive failures to report unhealthy.
    #[arg(long)]
    health_retries: Option<i64>,
    /// Time for the container to start before failures count (e.g. 1m).
    #[arg(long)]
    health_start_period: Option<String>,
    /// Time between checks during the start period.
    #[arg(long)]
    health_start_interval: Option<String>,
    /// Disable the image's health check.
    #[arg(long)]
    no_healthcheck: bool,
    /// Pull the image: missing (default), always, never.
    #[arg(long, default_value = "missing")]
    pull: String,
    /// Platform to pull for a multi-platform image: `os/arch[/variant]`.
    #[arg(long)]
    platform: Option<String>,
    /// Run an init as PID 1 that forwards signals and reaps orphans.
    #[arg(long)]
    init: bool,
    /// Mount the volumes of another container: `CONTAINER[:ro|rw]`.
    #[arg(long = "volumes-from")]
    volumes_from: Vec<String>,
    /// Mount a tmpfs: `PATH[:OPTIONS]`.
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Set metadata: `KEY=VALUE`.
    #[arg(short = 'l', long = "label")]
    label: Vec<String>,
    /// Isolation: process, hyperv (alias vm) or default.
    #[arg(long, default_value = "default")]
    isolation: String,
    /// Runtime: process or hyperv (Docker's name for the isolation type; runc and moat take --isolation).
    #[arg(long)]
    runtime: Option<String>,
    /// Put the container in a pod (its sandbox: network, hostname, VM in hyperv).
    #[arg(long)]
    pod: Option<String>,
    /// Keep stdin open.
    #[arg(short = 'i', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    tty: bool,
    /// Restart policy: no, on-failure[:N], always, unless-stopped.
    #[arg(long, default_value = "no")]
    restart: String,
    /// Memory limit (e.g. 64m).
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// Memory plus swap limit; -1 for unlimited swap.
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Memory soft limit (e.g. 32m).
    #[arg(long = "memory-reservation")]
    memory_reservation: Option<String>,
    /// How readily the container's memory is swapped, 0 to 100 (cgroup v1).
    #[arg(long = "memory-swappiness")]
    memory_swappiness: Option<i64>,
    /// Never OOM-kill the container's processes (cgroup v1).
    #[arg(long = "oom-kill-disable")]
    oom_kill_disable: bool,
    /// Add an annotation: `KEY=VALUE` (recorded and shown in inspect).
    #[arg(long = "annotation")]
    annotation: Vec<String>,
    /// Number of CPUs (e.g. 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Relative CPU weight.
    #[arg(short = 'c', long = "cpu-shares")]
    cpu_shares: Option<u64>,
    /// CPUs in which to allow execution (0-3, 0,1; process isolation).
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    /// Memory nodes in which to allow execution (0-3, 0,1; process isolation).
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    /// Maximum number of processes (-1 for unlimited).
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Add Linux capabilities.
    #[arg(long = "cap-add")]
    cap_add: Vec<String>,
    /// Drop Linux capabilities.
    #[arg(long = "cap-drop")]
    cap_drop: Vec<String>,
    /// Give extended privileges.
    #[arg(long)]
    privileged: bool,
    /// Security options (`seccomp=unconfined|PROFILE.json`, `no-new-privileges=false`).
    #[arg(long = "security-opt")]
    security_opt: Vec<String>,
    /// Mount the root filesystem read-only.
    #[arg(long = "read-only")]
    read_only: bool,
    /// Switch to attach to (`--network` is the same), `none` (loopback only),
    /// `host` (the host's network; process isolation only) or
    /// `container:NAME` (its sandbox). Default: the default switch. Repeat
    /// for more switches; `name=NAME,ip=IP,mac-address=MAC,alias=A` sets
    /// one switch's address and names.
    #[arg(long = "switch", visible_alias = "network", alias = "net")]
    network: Vec<String>,
    /// Another name the container answers to on its switches (repeatable).
    #[arg(long = "network-alias", alias = "net-alias")]
    network_alias: Vec<String>,
    /// IPv4 address on the switch.
    #[arg(long)]
    ip: Option<std::net::Ipv4Addr>,
    /// MAC address on the switch.
    #[arg(long = "mac-address")]
    mac_address: Option<String>,
    /// DNS server for /etc/resolv.conf.
    #[arg(long)]
    dns: Vec<String>,
    /// Extra /etc/hosts entry `NAME:IP`.
    #[arg(long = "add-host")]
    add_host: Vec<String>,
    /// Publish a port: `[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]`.
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Publish every port the image exposes on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// Expose a port or a range (`80`, `8000-8010/udp`) without publishing it.
    #[arg(long = "expose")]
    expose: Vec<String>,
    /// Signal to stop the container.
    #[arg(long = "stop-signal")]
    stop_signal: Option<String>,
    /// Seconds to wait before killing on stop.
    #[arg(long = "stop-timeout")]
    stop_timeout: Option<u32>,
    /// Size of /dev/shm.
    #[arg(long = "shm-size")]
    shm_size: Option<String>,
    /// Resource limit `NAME=SOFT[:HARD]` (e.g. nofile=1024:2048).
    #[arg(long)]
    ulimit: Vec<String>,
    /// Add a host device: `HOST[:CONTAINER[:PERMISSIONS]]` (process isolation).
    #[arg(long)]
    device: Vec<String>,
    /// Namespaced kernel parameter `KEY=VALUE` (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*).
    #[arg(long)]
    sysctl: Vec<String>,
    /// DNS search domain.
    #[arg(long = "dns-search")]
    dns_search: Vec<String>,
    /// DNS resolver option.
    #[arg(long = "dns-option")]
    dns_option: Vec<String>,
    /// Read labels from a file of `KEY=VALUE` lines.
    #[arg(long = "label-file")]
    label_file: Vec<String>,
    /// Write the container ID to this file.
    #[arg(long)]
    cidfile: Option<std::path::PathBuf>,
    /// Logging driver: json-file (default) or none.
    #[arg(long = "log-driver")]
    log_driver: Option<String>,
    /// Log driver option: max-size=SIZE (default 20m), max-file=N (default 5).
    #[arg(long = "log-opt")]
    log_opt: Vec<String>,
    /// IMAGE [COMMAND] [ARG...]: options after the image belong to the command.
    #[arg(required = true, trailing_var_arg = true, value_name = "IMAGE [COMMAND] [ARG...]")]
    image_and_command: Vec<String>,
}

/// `run` flags.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    rm: bool,
    /// Forward signals to the process (non-terminal sessions).
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set)]
    sig_proxy: bool,
    /// Attach to these streams only: stdin, stdout, stderr.
    #[arg(short = 'a', long = "attach")]
    attach: Vec<String>,
    /// Keys that detach from a terminal session (default ctrl-p,ctrl-q).
    #[arg(long = "detach-keys")]
    detach_keys: Option<String>,
    #[command(flatten)]
    create: CreateArgs,
}

/// Container subcommands (`moat container ...`; most also top-level).
#[derive(Subcommand, Debug)]
pub enum ContainerCmd {
    /// Create a container.
    #[command(disable_help_flag = true)]
    Create(CreateArgs),
    /// Create and start a container.
    #[command(disable_help_flag = true)]
    Run(RunArgs),
    /// Start stopped containers.
    Start {
        /// Attach stdout/stderr and forward signals.
        #[arg(short = 'a', long)]
        attach: bool,
        /// Attach stdin.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Keys that detach from a terminal session (default ctrl-p,ctrl-q).
        #[arg(long = "detach-keys")]
        detach_keys: Option<String>,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop running containers.
    Stop {
        /// Seconds to wait before killing.
        #[arg(short = 't', long = "time", alias = "timeout")]
        time: Option<u32>,
        /// Signal to send.
        #[arg(short = 's', long)]
        signal: Option<String>,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Restart containers.
    Restart {
        /// Seconds to wait before killing.
        #[arg(short = 't', long = "time", alias = "timeout")]
        time: Option<u32>,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers.
    Kill {
        /// Signal (default KILL).
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    #[command(alias = "remove")]
    Rm {
        /// Stop and remove running containers.
        #[arg(short = 'f', long)]
        force: bool,
        /// Also remove the container's anonymous volumes.
        #[arg(short = 'v', long)]
        volumes: bool,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers.
    #[command(alias = "list", alias = "ls")]
    Ps(PsArgs),
    /// Show details of containers, images or switches as JSON (or a Go template).
    Inspect(InspectArgs),
    /// Show a container's output.
    Logs {
        /// Follow new output.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Number of lines from the end (or `all`).
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        /// Show timestamps.
        #[arg(short = 't', long)]
        timestamps: bool,
        /// Only output since this time (RFC 3339, Unix seconds, or a duration like 10m).
        #[arg(long)]
        since: Option<String>,
        /// Only output before this time.
        #[arg(long)]
        until: Option<String>,
        /// Show the log attributes (`--log-opt labels=...,env=...`) before each line.
        #[arg(long)]
        details: bool,
        /// Container.
        container: String,
    },
    /// Wait for containers to exit and print their exit codes.
    Wait {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Attach to a running container's main process.
    Attach {
        /// Do not attach stdin.
        #[arg(long = "no-stdin")]
        no_stdin: bool,
        /// Forward signals to the process.
        #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set)]
        sig_proxy: bool,
        /// Keys that detach from a terminal session (default ctrl-p,ctrl-q).
        #[arg(long = "detach-keys")]
        detach_keys: Option<String>,
        /// Container.
        container: String,
    },
    /// Show a container's processes (with ps options: the host's ps, process isolation).
    Top {
        /// Container.
        container: String,
        /// Options of ps (e.g. `aux`, `-o pid,args`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Copy files between a container and the host (`CTR:PATH`; `-` is a tar stream).
    Cp {
        /// Keep the owners (uid/gid) of the copied files.
        #[arg(short = 'a', long)]
        archive: bool,
        /// Follow a symbolic link given as the source.
        #[arg(short = 'L', long)]
        follow_link: bool,
        /// Print nothing (moat prints no progress anyway).
        #[arg(short = 'q', long)]
        quiet: bool,
        /// `CONTAINER:SRC_PATH` or a host path (`-`: a tar stream on stdin).
        src: String,
        /// `CONTAINER:DEST_PATH` or a host path (`-`: a tar stream on stdout).
        dst: String,
    },
    /// Show the changes to a container's filesystem (A added, C changed, D deleted).
    Diff {
        /// Container.
        container: String,
    },
    /// Make an image from a container's changes.
    Commit {
        /// Author.
        #[arg(short = 'a', long)]
        author: Option<String>,
        /// Dockerfile instruction to apply (CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE, VOLUME, STOPSIGNAL).
        #[arg(short = 'c', long = "change")]
        change: Vec<String>,
        /// Commit message.
        #[arg(short = 'm', long)]
        message: Option<String>,
        /// Pause the container while committing.
        #[arg(short = 'p', long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = true)]
        pause: bool,
        /// Container.
        container: String,
        /// `REPOSITORY[:TAG]` for the image.
        reference: Option<String>,
    },
    /// Export a container's filesystem as a tar archive.
    Export {
        /// Write to a file instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<std::path::PathBuf>,
        /// Container.
        container: String,
    },
    /// Rename a container.
    Rename {
        /// Container.
        container: String,
        /// New name.
        name: String,
    },
    /// Remove all stopped containers.
    Prune {
        /// Do not prompt (moat never prompts).
        #[arg(short = 'f', long)]
        force: bool,
        /// Only those matching: `until=TIME`, `label=KEY[=VALUE]`.
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Freeze every process of containers (the whole VM for hyperv).
    Pause {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Thaw paused containers.
    Unpause {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Change containers: limits (at once, also while running), restart
    /// policy, isolation type (stopped containers, or with --restart).
    Update(UpdateArgs),
    /// List a container's published ports.
    Port {
        /// Container.
        container: String,
        /// Only this container port: `PORT[/tcp|udp]`.
        private_port: Option<String>,
    },
    /// Show resource usage.
    Stats {
        /// Print one sample and exit.
        #[arg(long = "no-stream")]
        no_stream: bool,
        /// Show all containers, not just running ones.
        #[arg(short = 'a', long)]
        all: bool,
        /// `table`, `json` or a Go template (`{{.Name}} {{.MemUsage}}`).
        #[arg(long, default_value = "table")]
        format: String,
        /// Containers (default: all running).
        containers: Vec<String>,
    },
}

/// `exec` flags.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Run in the background.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Environment variables.
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file")]
    env_file: Vec<String>,
    /// Working directory.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Extended privileges for this process.
    #[arg(long)]
    privileged: bool,
    /// Keys that detach from a terminal session (default ctrl-p,ctrl-q).
    #[arg(long = "detach-keys")]
    detach_keys: Option<String>,

    /// CONTAINER COMMAND [ARG...]: options after the container belong to the command.
    #[arg(required = true, num_args = 2.., trailing_var_arg = true, value_name = "CONTAINER COMMAND [ARG...]")]
    container_and_command: Vec<String>,
}

/// `update` flags.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// New isolation: process, hyperv (alias vm) or default.
    #[arg(long)]
    isolation: Option<String>,
    /// A restart policy (`--restart always`, `--restart=on-failure:3`); alone
    /// with --isolation and no value: stop, convert and start a running container.
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    restart: Option<String>,
    /// Memory limit.
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// Memory plus swap (-1: unlimited swap).
    #[arg(long = "memory-swap", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Memory soft limit.
    #[arg(long = "memory-reservation")]
    memory_reservation: Option<String>,
    /// CPUs.
    #[arg(long)]
    cpus: Option<f64>,
    /// CPU shares.
    #[arg(short = 'c', long = "cpu-shares")]
    cpu_shares: Option<u64>,
    /// Pids limit.
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Containers.
    containers: Vec<String>,
}

/// `inspect` flags.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A Go template (`{{.State.Status}}`, `{{json .Config}}`).
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// Only objects of this type: container, image, network (switch).
    #[arg(long = "type")]
    kind: Option<String>,
    /// A container's sizes too (`SizeRw`, `SizeRootFs`).
    #[arg(short = 's', long = "size")]
    size: bool,
    /// Objects.
    #[arg(required = true)]
    names: Vec<String>,
}

/// `ps` flags.
#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show all containers (default: running only).
    #[arg(short = 'a', long)]
    all: bool,
    /// Only IDs.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Do not truncate.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Filter: status=, name= (a regular expression), id=, label=KEY[=VALUE],
    /// ancestor=, before=, since=, exited=, isolation=, network=.
    #[arg(short = 'f', long)]
    filter: Vec<String>,
    /// `table`, `json`, or a Go template (`{{.Names}}\t{{.Status}}`, `table ...`).
    #[arg(long, default_value = "table")]
    format: String,
    /// Only the N newest containers (all states).
    #[arg(short = 'n', long = "last")]
    last: Option<usize>,
    /// Only the newest container (all states).
    #[arg(short = 'l', long)]
    latest: bool,
    /// Show sizes: the writable layer and, virtual, with the image.
    #[arg(short = 's', long)]
    size: bool,
    /// Show each container's pod (ID and name).
    #[arg(long)]
    pod: bool,
    /// Instead: containerd's containers that moat's containerd shim runs,
    /// in this containerd namespace (`k8s.io` for Kubernetes').
    #[arg(long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Instead: containerd's containers that moat's shim runs, in every namespace.
    #[arg(long = "all-namespaces")]
    all_namespaces: bool,
    /// containerd's state directory.
    #[arg(long = "containerd-state", env = "MOAT_CONTAINERD_STATE", default_value = moat_core::containerd::DEFAULT_STATE)]
    containerd_state: std::path::PathBuf,
}

fn env_value(e: &str) -> Option<String> {
    flags::env(e, |k| std::env::var(k).ok())
}

/// Translates `create`/`run` flags into the engine's request (the engine validates).
/// `--health-*` and `--no-healthcheck` as the engine's check (merged with
/// the image's at create).
fn healthcheck(a: &CreateArgs) -> Result<Option<moat_engine::health::HealthConfig>> {
    use moat_engine::health::{duration_flag, HealthConfig};
    let d = |what: &str, v: &Option<String>| {
        v.as_deref().map(|s| duration_flag(what, s)).transpose().map(|o| o.unwrap_or(0))
    };
    let h = HealthConfig {
        test: match (&a.health_cmd, a.no_healthcheck) {
            (Some(_), true) => bail!("--no-healthcheck conflicts with --health-* options"),
            (_, true) => vec!["NONE".into()],
            (Some(c), false) => vec!["CMD-SHELL".into(), c.clone()],
            (None, false) => Vec::new(),
        },
        interval: d("--health-interval", &a.health_interval)?,
        timeout: d("--health-timeout", &a.health_timeout)?,
        start_period: d("--health-start-period", &a.health_start_period)?,
        start_interval: d("--health-start-interval", &a.health_start_interval)?,
        retries: a.health_retries.unwrap_or(0),
    };
    Ok((h != HealthConfig::default()).then_some(h))
}

/// The options as the engine takes them, with its notes printed.
fn build_request(a: &CreateArgs, rm: bool) -> Result<CreateRequest> {
    // relative host paths are the user's: resolved against this directory
    let cwd = std::env::current_dir().ok();
    let req = body_of(a, rm)?.into_request(a.name.as_deref(), cwd.as_deref())?;
    for w in moat_engine::validate::warnings(&req.config) {
        errln!("WARNING: {w}");
    }
    Ok(req)
}

/// `--device HOST[:CONTAINER][:PERMISSIONS]` as the API's entry (the
/// docker CLI's split: a second part of `r`, `w`, `m` only is permissions).
fn device_body(d: &str) -> moat_engine::create_body::DeviceBody {
    let perms = |p: &str| !p.is_empty() && p.chars().all(|c| "rwm".contains(c));
    let (h, c, p) = match d.splitn(3, ':').collect::<Vec<_>>().as_slice() {
        [h, p] if perms(p) => (*h, "", *p),
        [h, c] => (*h, *c, ""),
        [h, c, p] => (*h, *c, *p),
        _ => (d, "", ""),
    };
    moat_engine::create_body::DeviceBody {
        path_on_host: h.to_string(),
        path_in_container: c.to_string(),
        cgroup_permissions: p.to_string(),
    }
}

/// The flags as Docker's create body, as the docker CLI sends it.
fn body_of(a: &CreateArgs, rm: bool) -> Result<CreateBody> {
    use moat_engine::create_body::{
        EndpointBody, HostConfigBody, IpamBody, LogConfigBody, MountBody, NetworkingConfigBody, RestartPolicyBody,
        Strings, UlimitBody,
    };
    let (image, command) = a.image_and_command.split_first().ok_or_else(|| anyhow!("an image is required"))?;
    if image.starts_with('-') {
        // clap takes anything after the flags it knows as IMAGE [COMMAND...]
        return Err(crate::with_exit(anyhow!("unknown flag: {image} (see 'moat run --help')"), 125));
    }
    let mut env = Vec::new();
    for f in &a.env_file {
        env.extend(flags::env_file(f, |k| std::env::var(k).ok())?);
    }
    env.extend(a.env.iter().filter_map(|e| env_value(e)));
    let mut labels = BTreeMap::new();
    for f in &a.label_file {
        for l in flags::env_file(f, |_| None)? {
            labels.extend([flags::label(&l)]);
        }
    }
    labels.extend(a.label.iter().map(|l| flags::label(l)));
    let tmpfs = a.tmpfs.iter().map(|t| flags::tmpfs(t)).collect::<Result<BTreeMap<_, _>, _>>()?;
    // each --mount checked as written, for an error that names the flag
    let cwd = std::env::current_dir().ok();
    let mounts = a
        .mount
        .iter()
        .map(|m| {
            flags::mount(m, cwd.as_deref()).and_then(|_| flags::MountOptions::parse(m)).and_then(MountBody::try_from)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let size = |what: &str, v: &Option<String>| v.as_deref().map(|s| flags::size(what, s)).transpose();
    let mut port_bindings: BTreeMap<String, Option<Vec<_>>> = BTreeMap::new();
    for p in a.publish.iter().map(|p| flags::publish(p)).collect::<Result<Vec<_>, _>>()?.concat() {
        let host = |n: u16| if n == 0 { String::new() } else { n.to_string() };
        let ip = if p.host_ip.is_unspecified() { String::new() } else { p.host_ip.to_string() };
        port_bindings
            .entry(format!("{}/{}", p.ctr_port, p.proto))
            .or_default()
            .get_or_insert_with(Vec::new)
            .push(moat_engine::create_body::PortBindingBody { host_ip: ip, host_port: host(p.host_port) });
    }
    let mut exposed_ports = BTreeMap::new();
    for (p, proto) in a.expose.iter().map(|p| flags::expose(p)).collect::<Result<Vec<_>, _>>()?.concat() {
        exposed_ports.insert(format!("{p}/{proto}"), serde_json::json!({}));
    }
    // the first --network is the container's own, named by NetworkMode with
    // --ip, --mac-address and --network-alias; the rest are further endpoints
    let nets = a.network.iter().map(|n| flags::network(n)).collect::<Result<Vec<_>, _>>()?;
    let network_mode = nets.first().map(|n| n.switch.clone()).unwrap_or_default();
    let mut endpoints = BTreeMap::new();
    for (i, n) in nets.into_iter().enumerate() {
        let first = i == 0;
        let ip = if first { a.ip.or(n.ip) } else { n.ip };
        let mut aliases = if first { a.network_alias.clone() } else { Vec::new() };
        aliases.extend(n.aliases);
        let mac = if first { a.mac_address.clone().or(n.mac) } else { n.mac };
        endpoints.insert(
            n.switch,
            EndpointBody {
                ipam_config: ip.map(|ip| IpamBody { ipv4_address: ip.to_string(), ..Default::default() }),
                aliases,
                mac_address: mac.unwrap_or_default(),
            },
        );
    }
    let (mut ip, mut mac, mut network_alias) = (a.ip, a.mac_address.clone(), a.network_alias.clone());
    if !endpoints.is_empty() {
        // carried by the first endpoint
        (ip, mac, network_alias) = (None, None, Vec::new());
    }
    if ip.is_some() || !network_alias.is_empty() {
        // no --network: the default switch's endpoint
        endpoints.insert(
            "default".to_string(),
            EndpointBody {
                ipam_config: ip.map(|ip| IpamBody { ipv4_address: ip.to_string(), ..Default::default() }),
                aliases: network_alias,
                mac_address: String::new(),
            },
        );
    }
    let log = (a.log_driver.is_some() || !a.log_opt.is_empty()).then(|| LogConfigBody {
        kind: a.log_driver.clone().unwrap_or_default(),
        config: a.log_opt.iter().map(|o| flags::label(o)).collect(),
    });
    Ok(CreateBody {
        image: image.clone(),
        cmd: Strings(command.to_vec()),
        entrypoint: a.entrypoint.as_ref().map(|e| Strings(vec![e.clone()])),
        env,
        working_dir: a.workdir.clone().unwrap_or_default(),
        user: a.user.clone().unwrap_or_default(),
        hostname: a.hostname.clone().unwrap_or_default(),
        domainname: a.domainname.clone().unwrap_or_default(),
        tty: a.tty,
        open_stdin: a.interactive,
        stdin_once: a.interactive,
        labels,
        exposed_ports,
        healthcheck: healthcheck(a)?,
        mac_address: mac.unwrap_or_default(),
        stop_signal: a.stop_signal.clone().unwrap_or_default(),
        stop_timeout: a.stop_timeout.map(i64::from),
        pod: a.pod.clone(),
        host_config: HostConfigBody {
            binds: a.volume.clone(),
            tmpfs,
            mounts,
            port_bindings,
            publish_all_ports: a.publish_all,
            memory: size("memory limit", &a.memory)?.unwrap_or(0),
            memory_swap: match a.memory_swap.as_deref() {
                Some("-1") => -1,
                Some(s) => flags::size("memory-swap limit", s)?,
                None => 0,
            },
            memory_reservation: size("memory reservation", &a.memory_reservation)?.unwrap_or(0),
            memory_swappiness: a.memory_swappiness,
            oom_kill_disable: a.oom_kill_disable,
            nano_cpus: a.cpus.map(flags::nano_cpus).transpose()?.unwrap_or(0),
            cpu_shares: a.cpu_shares.map(|s| s as i64).unwrap_or(0),
            cpuset_cpus: a.cpuset_cpus.clone().unwrap_or_default(),
            cpuset_mems: a.cpuset_mems.clone().unwrap_or_default(),
            pids_limit: a.pids_limit,
            restart_policy: RestartPolicyBody::of(&flags::restart(&a.restart)?),
            auto_remove: rm,
            isolation: a.isolation.clone(),
            runtime: a.runtime.clone().unwrap_or_default(),
            network_mode,
            log_config: log,
            devices: a.device.iter().map(|d| device_body(d)).collect(),
            ulimits: a
                .ulimit
                .iter()
                .map(|u| {
                    let name = u.split_once('=').map_or(u.as_str(), |(n, _)| n).to_string();
                    flags::ulimit(u).map(|r| UlimitBody { name, soft: r.soft as i64, hard: r.hard as i64 })
                })
                .collect::<Result<_, _>>()?,
            dns: a.dns.clone(),
            dns_search: a.dns_search.clone(),
            dns_options: a.dns_option.clone(),
            extra_hosts: a.add_host.clone(),
            sysctls: a
                .sysctl
                .iter()
                .map(|s| {
                    s.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| anyhow!("invalid --sysctl {s:?}: use KEY=VALUE"))
                })
                .collect::<Result<_>>()?,
            shm_size: size("shm size", &a.shm_size)?.unwrap_or(0),
            init: a.init,
            readonly_rootfs: a.read_only,
            cap_add: a.cap_add.clone(),
            cap_drop: a.cap_drop.clone(),
            privileged: a.privileged,
            security_opt: a.security_opt.clone(),
            volumes_from: a.volumes_from.clone(),
            links: a.link.clone(),
            oom_score_adj: a.oom_score_adj.map(i64::from).unwrap_or(0),
            group_add: a.group_add.clone(),
            pid_mode: a.pid.clone().unwrap_or_default(),
            ipc_mode: a.ipc.clone().unwrap_or_default(),
            uts_mode: a.uts.clone().unwrap_or_default(),
            cgroupns_mode: a.cgroupns.clone().unwrap_or_default(),
            annotations: a.annotation.iter().map(|l| flags::label(l)).collect(),
            device_cgroup_rules: a.device_cgroup_rule.clone(),
            console_size: if a.tty { session::term_size().map(|w| [w.rows, w.cols]) } else { None },
            ..Default::default()
        },
        networking_config: NetworkingConfigBody { endpoints_config: endpoints },
        ..Default::default()
    })
}

/// `--cidfile` must not exist before the container is created (Docker's check).
fn check_cidfile(a: &CreateArgs) -> Result<()> {
    match a.cidfile.as_deref().filter(|p| p.exists()) {
        Some(p) => Err(crate::with_exit(
            anyhow!("container ID file found, make sure the other container isn't running or delete {}", p.display()),
            125,
        )),
        None => Ok(()),
    }
}

/// `--cidfile`: the container's ID, in a file that must not exist yet.
fn write_cidfile(a: &CreateArgs, id: &str) -> Result<()> {
    if let Some(p) = &a.cidfile {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .map_err(|e| anyhow!("cannot write the container ID file {}: {e}", p.display()))?;
        f.write_all(id.as_bytes())?;
    }
    Ok(())
}

/// The implicit pull of `create`/`run` (`--pull`), progress on stderr.
fn pull_for(e: &mut Engine, a: &CreateArgs) -> Result<()> {
    let Some(image) = a.image_and_command.first().filter(|i| !i.starts_with('-')) else { return Ok(()) };
    let policy: moat_engine::registry::PullPolicy =
        a.pull.parse().map_err(|err| crate::with_exit(anyhow!("{err}"), 125))?;
    let p = crate::registry::Progress::new(false, a.quiet, false);
    let o = moat_engine::registry::PullOptions { platform: a.platform.clone(), ..Default::default() };
    e.ensure_image(image, policy, &o, &|ev| p.show(ev)).map_err(|err| crate::with_exit(err.into(), 125))
}

/// `--detach-keys` as bytes (Docker's default when absent).
fn keys(k: Option<&str>) -> Result<Vec<u8>> {
    Ok(match k {
        Some(k) => flags::detach_keys(k).map_err(|err| crate::with_exit(err.into(), 125))?,
        None => flags::DEFAULT_DETACH_KEYS.to_vec(),
    })
}

/// Exit code of a start failure, printing its message.
fn start_failed(e: EngineError) -> Result<i32> {
    match e {
        EngineError::Start { message, code } => {
            error_line!("{message}");
            Ok(if code == 0 { 125 } else { code })
        }
        e => Err(crate::with_exit(e.into(), 125)),
    }
}

fn end_code(end: End) -> Result<i32> {
    match end {
        End::Exit(c) => Ok(c),
        End::Detached => Ok(0),
        End::Lost => bail!("lost the connection to the container's shim"),
    }
}

/// Runs one container subcommand.
pub fn run(e: &mut Engine, cmd: ContainerCmd) -> Result<i32> {
    match cmd {
        ContainerCmd::Create(a) => {
            check_cidfile(&a)?;
            pull_for(e, &a)?;
            // StdinOnce is `run`'s, attached to stdin (Docker's)
            let c = build_request(&a, false)
                .map(|r| CreateRequest { config: ContainerConfig { stdin_once: false, ..r.config }, ..r })
                .and_then(|r| Ok(e.create(r)?))
                .map_err(|err| crate::with_exit(err, 125))?;
            write_cidfile(&a, c.id())?;
            outln!("{}", c.id());
            Ok(0)
        }
        ContainerCmd::Run(a) => {
            let mut req = build_request(&a.create, a.rm).map_err(|err| crate::with_exit(err, 125))?;
            req.config.stdin_once = a.create.interactive && !a.detach;
            let detach_keys = keys(a.detach_keys.as_deref())?;
            check_cidfile(&a.create)?;
            pull_for(e, &a.create)?;
            let (c, mut s) = match e.run(req) {
                Ok(v) => v,
                Err(err) => return start_failed(err),
            };
            write_cidfile(&a.create, c.id())?;
            if a.detach {
                outln!("{}", c.id());
                return Ok(0);
            }
            // a process that already exited has closed the shim: its output and exit status are still queued
            let (stdin, stdout, stderr) = flags::attach_streams(&a.attach)?;
            let stdin = a.create.interactive || stdin;
            let _ = s.attach(AttachOptions { stdin, stdin_once: true, skip_stdout: !stdout, skip_stderr: !stderr });
            end_code(session::relay(s, Opts { stdin, sig_proxy: a.sig_proxy, detach_keys })?)
        }
        ContainerCmd::Start { attach, interactive, detach_keys, containers } => {
            let mut code = 0;
            let detach_keys = keys(detach_keys.as_deref())?;
            for name in &containers {
                match e.start_unless_running(name, |_| {}) {
                    Ok(moat_engine::Started::Now(c, mut s)) => {
                        if attach || interactive {
                            let o = AttachOptions { stdin: interactive, stdin_once: interactive, ..Default::default() };
                            let _ = s.attach(o);
                            let stdin = interactive && c.config.open_stdin;
                            return end_code(session::relay(s, Opts { stdin, sig_proxy: true, detach_keys })?);
                        }
                        outln!("{name}");
                    }
                    Ok(moat_engine::Started::AlreadyRunning(_)) if !attach => outln!("{name}"),
                    Ok(moat_engine::Started::AlreadyRunning(c)) => {
                        error_line!("container {} is already running", c.name());
                        code = 1;
                    }
                    // Docker: the daemon's refusal (no such container, ...) exits 1
                    Err(err @ EngineError::Start { .. }) => code = start_failed(err)?,
                    Err(err) => {
                        error_line!("{err}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        ContainerCmd::Stop { time, signal, containers } => {
            let signal = signal.as_deref().map(flags::signal).transpose()?;
            each(&containers, |n| {
                e.stop(n, StopOptions { timeout: time, signal })?;
                outln!("{n}");
                Ok(())
            })
        }
        ContainerCmd::Restart { time, containers } => each(&containers, |n| {
            e.restart(n, StopOptions { timeout: time, signal: None })?;
            outln!("{n}");
            Ok(())
        }),
        ContainerCmd::Kill { signal, containers } => {
            let sig = flags::signal(&signal)?;
            each(&containers, |n| {
                e.kill(n, sig)?;
                outln!("{n}");
                Ok(())
            })
        }
        ContainerCmd::Rm { force, volumes, containers } => each(&containers, |n| {
            e.remove(n, force, volumes)?;
            outln!("{n}");
            Ok(())
        }),
        ContainerCmd::Ps(a) => ps(e, a),
        ContainerCmd::Inspect(a) => inspect(e, a),
        ContainerCmd::Logs { follow, tail, timestamps, since, until, details, container } => {
            let o = moat_engine::LogOptions {
                details,
                follow,
                since: since.as_deref().map(moat_engine::filter::parse_time).transpose()?,
                until: until.as_deref().map(moat_engine::filter::parse_time).transpose()?,
                tail: match tail.as_str() {
                    "all" | "-1" => None,
                    n => Some(n.parse::<usize>().map_err(|_| anyhow!("invalid --tail value {n:?}"))?),
                },
            };
            let (_, mut logs) = e.logs(&container, &o)?;
            while let Some(r) = logs.next_record()? {
                if !print_record(&r, timestamps) {
                    break;
                }
            }
            Ok(0)
        }
        ContainerCmd::Wait { containers } => each(&containers, |n| {
            let r = e.wait(n, moat_engine::WaitCondition::NotRunning)?;
            outln!("{}", r.code);
            Ok(())
        }),
        ContainerCmd::Exec(a) => exec(e, a),
        ContainerCmd::Attach { no_stdin, sig_proxy, detach_keys, container } => {
            let detach_keys = keys(detach_keys.as_deref())?;
            let (c, s) = e.attach(&container, AttachOptions { stdin: !no_stdin, ..Default::default() })?;
            let stdin = !no_stdin && c.config.open_stdin;
            end_code(session::relay(s, Opts { stdin, sig_proxy, detach_keys })?)
        }
        ContainerCmd::Top { container, ps_args } => {
            let (titles, rows) = e.top_table(&container, &ps_args)?;
            output::table(&titles.iter().map(String::as_str).collect::<Vec<_>>(), &rows)?;
            Ok(0)
        }
        ContainerCmd::Rename { container, name } => {
            e.rename(&container, &name)?;
            Ok(0)
        }
        ContainerCmd::Cp { archive, follow_link, quiet: _, src, dst } => {
            use moat_engine::cp::{split_arg, CopyOptions};
            let opts = CopyOptions { archive, follow_link };
            match (split_arg(&src), split_arg(&dst)) {
                ((Some(c), p), (None, d)) => {
                    if d == "-" {
                        crate::output::to_stdout(|w| Ok(e.copy_from(c, p, d, opts, w)?))?;
                    } else {
                        e.copy_from(c, p, d, opts, std::io::sink())?;
                    }
                }
                ((None, s), (Some(c), p)) => e.copy_to(s, c, p, opts, std::io::stdin())?,
                ((Some(_), _), (Some(_), _)) => bail!("copying between containers is not supported"),
                _ => bail!("must specify at least one container source"),
            }
            Ok(0)
        }
        ContainerCmd::Diff { container } => {
            for c in e.diff(&container)? {
                outln!("{} {}", c.kind.letter(), c.path);
            }
            Ok(0)
        }
        ContainerCmd::Commit { author, change, message, pause, container, reference } => {
            let id = e.commit(
                &container,
                moat_engine::changes::CommitRequest {
                    reference,
                    comment: message.unwrap_or_default(),
                    author: author.unwrap_or_default(),
                    changes: change,
                    pause,
                },
            )?;
            outln!("{id}");
            Ok(0)
        }
        ContainerCmd::Export { output, container } => {
            match output {
                Some(p) => crate::output::to_file(&p, |w| Ok(e.export(&container, w)?))?,
                None => crate::output::to_stdout(|w| Ok(e.export(&container, w)?))?,
            }
            Ok(0)
        }
        ContainerCmd::Prune { force: _, filter } => {
            let f = ContainerFilter::new(Filters::from_args(&filter)?)?;
            let r = e.prune(&f)?;
            if !r.deleted.is_empty() {
                outln!("Deleted Containers:");
                for i in &r.deleted {
                    outln!("{i}");
                }
                outln!();
            }
            outln!("Total reclaimed space: {}", moat_core::human::size(r.space_reclaimed));
            Ok(0)
        }
        ContainerCmd::Pause { containers } => each(&containers, |n| {
            e.pause(n, true)?;
            outln!("{n}");
            Ok(())
        }),
        ContainerCmd::Unpause { containers } => each(&containers, |n| {
            e.pause(n, false)?;
            outln!("{n}");
            Ok(())
        }),
        ContainerCmd::Stats { no_stream, all, format, containers } => stats(e, no_stream, all, &format, &containers),
        ContainerCmd::Port { container, private_port } => {
            for p in e.published_ports(&container, private_port.as_deref())? {
                if private_port.is_some() {
                    outln!("{}:{}", p.host_ip, p.host_port);
                } else {
                    outln!("{}/{} -> {}:{}", p.ctr_port, p.proto, p.host_ip, p.host_port);
                }
            }
            Ok(0)
        }
        ContainerCmd::Update(a) => update(e, a),
    }
}

fn update(e: &mut Engine, a: UpdateArgs) -> Result<i32> {
    // `--restart` alone (before a container name) converts a running
    // container; `--restart POLICY` sets the policy
    let mut containers = a.containers.clone();
    let mut restart = a.restart.clone();
    if let Some(r) = restart.as_deref().filter(|r| !r.is_empty() && flags::restart(r).is_err()) {
        containers.insert(0, r.to_string());
        restart = Some(String::new());
    }
    if containers.is_empty() {
        return Err(crate::with_exit(anyhow!("'moat update' requires at least 1 container"), 125));
    }
    let restart_now = restart.as_deref() == Some("");
    let mut u = moat_engine::UpdateRequest {
        memory: a.memory.as_deref().map(|m| flags::size("memory limit", m)).transpose()?,
        memory_swap: a
            .memory_swap
            .as_deref()
            .map(|s| if s == "-1" { Ok(-1) } else { flags::size("memory-swap limit", s) })
            .transpose()?,
        memory_reservation: a
            .memory_reservation
            .as_deref()
            .map(|r| flags::size("memory reservation", r))
            .transpose()?,
        cpus: a.cpus,
        cpu_shares: a.cpu_shares,
        pids: a.pids_limit,
        restart: restart.as_deref().filter(|p| !p.is_empty()).map(flags::restart).transpose()?,
        isolation: None,
        restart_for_isolation: restart_now,
    };
    if let Some(i) = a.isolation.as_deref() {
        u.isolation = Some(flags::isolation(i)?.unwrap_or(e.settings.default_isolation));
    }
    each(&containers, |n| {
        let (_, warnings) = e.update(n, &u)?;
        for w in warnings {
            errln!("Warning: {w}");
        }
        outln!("{n}");
        Ok(())
    })
}

/// Runs `f` for each name; prints errors and returns 1 if any failed.
fn each(names: &[String], mut f: impl FnMut(&str) -> Result<()>) -> Result<i32> {
    if names.len() == 1 {
        f(&names[0])?;
        return Ok(0);
    }
    let mut code = 0;
    for n in names {
        if let Err(err) = f(n) {
            error_line!("{err:#}");
            code = 1;
        }
    }
    Ok(code)
}

fn exec(e: &mut Engine, a: ExecArgs) -> Result<i32> {
    let (container, command) =
        a.container_and_command.split_first().ok_or_else(|| anyhow!("a container is required"))?;
    if container.starts_with('-') {
        return Err(crate::with_exit(anyhow!("unknown flag: {container} (see 'moat exec --help')"), 125));
    }
    let mut env = Vec::new();
    for f in &a.env_file {
        env.extend(flags::env_file(f, |k| std::env::var(k).ok())?);
    }
    env.extend(a.env.iter().filter_map(|v| env_value(v)));
    let spec = ExecSpec {
        args: command.to_vec(),
        env,
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        tty: a.tty,
        stdin: a.interactive,
        size: if a.tty { session::term_size() } else { None },
        detach: a.detach,
        privileged: a.privileged,
        ..Default::default()
    };
    let detach_keys = keys(a.detach_keys.as_deref())?;
    let s = match e.exec(container, spec) {
        Ok(s) => s,
        Err(EngineError::Start { message, code }) => {
            error_line!("{message}");
            return Ok(code);
        }
        Err(err) => return Err(err.into()),
    };
    if a.detach {
        return Ok(0);
    }
    let end = session::relay(s, Opts { stdin: a.interactive, sig_proxy: true, detach_keys })?;
    end_code(end)
}

/// Prints a log record; false when stdout is closed.
fn print_record(r: &moat_engine::logs::Record, timestamps: bool) -> bool {
    use std::io::Write;
    let line = if timestamps {
        format!("{} {}", r.time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true), r.log)
    } else {
        r.log.clone()
    };
    if r.stream == "stderr" {
        let _ = std::io::stderr().write_all(line.as_bytes());
        true
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(line.as_bytes()).and_then(|()| o.flush()).is_ok()
    }
}

fn ps(e: &mut Engine, a: PsArgs) -> Result<i32> {
    if a.namespace.is_some() || a.all_namespaces {
        return ps_containerd(e, a);
    }
    let f = ContainerFilter::new(Filters::from_args(&a.filter)?)?;
    let limit = if a.latest { Some(1) } else { a.last };
    let mut list = e.containers(a.all || limit.is_some(), &f)?;
    if let Some(n) = limit {
        list.truncate(n);
    }
    if a.quiet {
        let mut out = std::io::stdout().lock();
        for c in &list {
            use std::io::Write;
            if writeln!(out, "{}", if a.no_trunc { c.id() } else { &c.id()[..12] }).is_err() {
                break;
            }
        }
        return Ok(0);
    }
    let rows: Vec<PsRow> = list
        .iter()
        .map(|c| {
            let r = if a.size { PsRow::of(c, a.no_trunc).with_size(e, c) } else { PsRow::of(c, a.no_trunc) };
            if a.pod {
                r.with_pod(e, c, a.no_trunc)
            } else {
                r
            }
        })
        .collect();
    let mut header = vec!["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES", "ISOLATION"];
    if a.size {
        header.push("SIZE");
    }
    if a.pod {
        header.extend(["POD ID", "PODNAME"]);
    }
    format::list(&a.format, "CONTAINER ID", &header, &rows, |r| {
        let mut cmd = r.command.clone();
        if !a.no_trunc && cmd.chars().count() > 22 {
            cmd = format!("{}…\"", cmd.chars().take(20).collect::<String>());
        }
        vec![
            r.id.clone(),
            r.image.clone(),
            cmd,
            r.running_for.clone(),
            r.status.clone(),
            r.ports.clone(),
            r.names.clone(),
            r.isolation.clone(),
        ]
        .into_iter()
        .chain(a.size.then(|| r.size.clone()))
        .chain(a.pod.then(|| [r.pod.clone(), r.pod_name.clone()]).into_iter().flatten())
        .collect()
    })?;
    Ok(0)
}

/// `moat ps --namespace NS | --all-namespaces`: containerd's containers
/// that moat's shim runs (running ones unless `-a`).
fn ps_containerd(e: &Engine, a: PsArgs) -> Result<i32> {
    let list: Vec<_> = e
        .containerd_tasks(&a.containerd_state, a.namespace.as_deref())
        .into_iter()
        .filter(|t| a.all || t.record.is_up())
        .collect();
    if a.quiet {
        for t in &list {
            outln!("{}", t.id);
        }
        return Ok(0);
    }
    let header = ["NAMESPACE", "CONTAINER ID", "COMMAND", "STATUS", "ISOLATION", "POD"];
    format::list(&a.format, "CONTAINER ID", &header, &list, |t| {
        let mut cmd = format!("\"{}\"", t.command.join(" "));
        if !a.no_trunc && cmd.chars().count() > 22 {
            cmd = format!("{}…\"", cmd.chars().take(20).collect::<String>());
        }
        let id = if a.no_trunc { t.id.clone() } else { t.id.chars().take(12).collect() };
        vec![
            t.namespace.clone(),
            id,
            cmd,
            t.record.status_text(),
            t.record.isolation.clone(),
            t.pod.clone().unwrap_or_default(),
        ]
    })?;
    Ok(0)
}

/// `moat inspect`: containers first, then images, then switches, like docker.
fn inspect(e: &mut Engine, a: InspectArgs) -> Result<i32> {
    let kind = a.kind.as_deref();
    if let Some(k) = kind {
        if !["container", "image", "network", "switch"].contains(&k) {
            bail!("invalid --type {k:?}: use container, image or network");
        }
    }
    let want = |k: &str| kind.is_none_or(|t| t == k || (k == "network" && t == "switch"));
    let mut out = Vec::new();
    let mut code = 0;
    for n in &a.names {
        let found: Result<serde_json::Value, EngineError> = (|| {
            if want("container") {
                match e.get(n) {
                    Ok(c) => {
                        let mut v = ContainerInspect::of(e, &c);
                        if a.size {
                            v = v.with_size(e, &c);
                        }
                        return Ok(serde_json::to_value(v).unwrap_or_default());
                    }
                    Err(EngineError::NoSuchContainer(_)) => {}
                    Err(err) => return Err(err),
                }
            }
            if want("image") {
                match e.image(n) {
                    Ok(img) => {
                        return Ok(serde_json::to_value(moat_engine::view::ImageInspect::of_stored(e, &img))
                            .unwrap_or_default())
                    }
                    Err(err) if err.kind() == moat_engine::ErrorKind::NotFound => {}
                    Err(err) => return Err(err),
                }
            }
            if want("network") {
                match e.inspect_switch(n) {
                    Ok(s) => return Ok(serde_json::to_value(s).unwrap_or_default()),
                    Err(EngineError::NoSuchSwitch(_)) => {}
                    Err(err) => return Err(err),
                }
            }
            Err(EngineError::Invalid(format!("No such object: {n}")))
        })();
        match found {
            Ok(v) => out.push(v),
            Err(err) => {
                error_line!("{err}");
                code = 1;
            }
        }
    }
    format::inspect(a.format.as_deref(), &out)?;
    Ok(code)
}

pub(crate) fn stats(e: &mut Engine, no_stream: bool, all: bool, format: &str, names: &[String]) -> Result<i32> {
    let targets: Vec<Container> = if names.is_empty() {
        e.list()?.into_iter().filter(|c| all || c.is_running()).collect()
    } else {
        names.iter().map(|n| e.get(n)).collect::<Result<_, _>>()?
    };
    let sample = |e: &mut Engine| -> Vec<Option<moat_engine::Stats>> {
        targets.iter().map(|c| e.stats(c).ok().flatten()).collect()
    };
    loop {
        let t0 = std::time::Instant::now();
        let a = sample(e);
        // CPU % needs two samples
        std::thread::sleep(std::time::Duration::from_millis(500));
        let b = sample(e);
        let dt = t0.elapsed().as_nanos().max(1) as f64;
        let rows: Vec<StatsRow> = targets
            .iter()
            .zip(a.iter().zip(&b))
            .map(|(c, (x, y))| StatsRow::of(c, x.as_ref(), y.as_ref(), dt))
            .collect();
        if !no_stream && format == "table" {
            print!("\x1b[2J\x1b[H");
        }
        let shown = format::list(
            format,
            "CONTAINER ID",
            &["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS"],
            &rows,
            |r| {
                vec![
                    r.id.clone(),
                    r.name.clone(),
                    r.cpu.clone(),
                    r.mem_usage.clone(),
                    r.mem_perc.clone(),
                    r.net_io.clone(),
                    r.block_io.clone(),
                    r.pids.clone(),
                ]
            },
        );
        if shown.is_err() || no_stream {
            // a closed stdout (`| head`) ends the stream quietly
            return shown.map(|()| 0).or_else(|err| if crate::output::is_broken_pipe(&err) { Ok(0) } else { Err(err) });
        }
    }
}
