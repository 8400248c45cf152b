//! Container commands: create, run, start, stop, exec, logs, ps, ...

use crate::output;
use crate::session::{self, End, Opts};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use moat_core::human;
use moat_core::isolation::IsolationRequest;
use moat_engine::config::{BindMount, ContainerConfig, Status};
use moat_engine::{Container, Engine, EngineError};
use moat_proto::{ExecSpec, Msg};
use std::collections::BTreeMap;
use std::path::Path;

/// Flags shared by `create` and `run`.
#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Assign a name to the container.
    #[arg(long)]
    name: Option<String>,
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
    /// Container host name (`-h` is help in moat; use --hostname).
    #[arg(long)]
    hostname: Option<String>,
    /// Overwrite the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Bind mount a host path: `HOST:CONTAINER[:ro]`.
    #[arg(short = 'v', long = "volume")]
    volume: Vec<String>,
    /// Mount a tmpfs: `PATH[:OPTIONS]`.
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Set metadata: `KEY=VALUE`.
    #[arg(short = 'l', long = "label")]
    label: Vec<String>,
    /// Isolation: process, hyperv (alias vm) or default.
    #[arg(long, default_value = "default")]
    isolation: String,
    /// Keep stdin open.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
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
    /// Number of CPUs (e.g. 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Relative CPU weight.
    #[arg(short = 'c', long = "cpu-shares")]
    cpu_shares: Option<u64>,
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
    /// or `host` (the host's network; process isolation only). Default: the
    /// default switch.
    #[arg(long = "switch", visible_alias = "network", alias = "net")]
    network: Option<String>,
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
    /// Logging driver: json-file (default) or none.
    #[arg(long = "log-driver")]
    log_driver: Option<String>,
    /// Log driver option: max-size=SIZE (default 20m), max-file=N (default 5).
    #[arg(long = "log-opt")]
    log_opt: Vec<String>,
    /// IMAGE [COMMAND] [ARG...]: options after the image belong to the command.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND] [ARG...]"
    )]
    image_and_command: Vec<String>,
}

/// `run` flags.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run in the background and print the container ID.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Forward signals to the process (non-terminal sessions).
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set)]
    sig_proxy: bool,
    #[command(flatten)]
    create: CreateArgs,
}

/// Container subcommands (`moat container ...`; most also top-level).
#[derive(Subcommand, Debug)]
pub enum ContainerCmd {
    /// Create a container.
    Create(CreateArgs),
    /// Create and start a container.
    Run(RunArgs),
    /// Start stopped containers.
    Start {
        /// Attach stdout/stderr and forward signals.
        #[arg(short = 'a', long)]
        attach: bool,
        /// Attach stdin.
        #[arg(short = 'i', long)]
        interactive: bool,
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
        /// Accepted for docker compatibility (moat has no anonymous volumes).
        #[arg(short = 'v', long)]
        volumes: bool,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers.
    #[command(alias = "list", alias = "ls")]
    Ps(PsArgs),
    /// Show details of containers (or images) as JSON.
    Inspect {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
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
        /// Container.
        container: String,
    },
    /// Show a container's processes.
    Top {
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
    },
    /// Change a container's settings: its isolation type (a stopped
    /// container, or any with --restart) or its restart policy.
    Update {
        /// New isolation: process, hyperv (alias vm) or default.
        #[arg(long)]
        isolation: Option<String>,
        /// Alone: stop a running container, convert it, start it again.
        /// With a value (`--restart=always`, `=` required): the restart policy.
        #[arg(long, num_args = 0..=1, default_missing_value = "", require_equals = true)]
        restart: Option<String>,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List a container's published ports.
    Port {
        /// Container.
        container: String,
    },
    /// Show resource usage.
    Stats {
        /// Print one sample and exit.
        #[arg(long = "no-stream")]
        no_stream: bool,
        /// Show all containers, not just running ones.
        #[arg(short = 'a', long)]
        all: bool,
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
    /// Working directory.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// User.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Extended privileges for this process.
    #[arg(long)]
    privileged: bool,
    /// CONTAINER COMMAND [ARG...]: options after the container belong to the command.
    #[arg(required = true, num_args = 2.., trailing_var_arg = true, allow_hyphen_values = true, value_name = "CONTAINER COMMAND [ARG...]")]
    container_and_command: Vec<String>,
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
    /// Filter: status=, name=, id=, label=KEY[=VALUE], ancestor=, isolation=.
    #[arg(short = 'f', long)]
    filter: Vec<String>,
    /// `table`, `json`, or a template like `{{.Names}} {{.Status}}`.
    #[arg(long, default_value = "table")]
    format: String,
}

fn env_value(e: &str) -> Option<String> {
    if e.contains('=') {
        Some(e.to_string())
    } else {
        std::env::var(e).ok().map(|v| format!("{e}={v}"))
    }
}

fn build_config(a: &CreateArgs, rm: bool) -> Result<ContainerConfig> {
    let mut env = Vec::new();
    for f in &a.env_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read env file {f}"))?;
        for l in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            env.extend(env_value(l));
        }
    }
    for e in &a.env {
        env.extend(env_value(e));
    }
    let mut binds = Vec::new();
    for v in &a.volume {
        let parts: Vec<&str> = v.split(':').collect();
        let (src, dst, mode) = match parts.as_slice() {
            [s, d] => (*s, *d, ""),
            [s, d, m] => (*s, *d, *m),
            _ => bail!("invalid volume specification {v:?}: use HOST:CONTAINER[:ro]"),
        };
        if !src.starts_with('/') {
            bail!(
                "invalid volume specification {v:?}: named volumes are not supported, the host path must be absolute"
            );
        }
        if !dst.starts_with('/') {
            bail!("invalid volume specification {v:?}: the container path must be absolute");
        }
        let readonly = match mode {
            "" | "rw" => false,
            "ro" => true,
            m => bail!("invalid volume mode {m:?} in {v:?}: use ro or rw"),
        };
        binds.push(BindMount { source: src.into(), target: dst.into(), readonly });
    }
    let mut tmpfs = BTreeMap::new();
    for t in &a.tmpfs {
        let (p, o) = t.split_once(':').unwrap_or((t, ""));
        if !p.starts_with('/') {
            bail!("invalid tmpfs {t:?}: the path must be absolute");
        }
        tmpfs.insert(p.to_string(), o.to_string());
    }
    let mut labels = BTreeMap::new();
    for l in &a.label {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let isolation = match a.isolation.parse::<IsolationRequest>()? {
        IsolationRequest::Default => None,
        IsolationRequest::Explicit(i) => Some(i),
    };
    let mut limits = moat_runtime::cgroup::Limits::default();
    if let Some(m) = &a.memory {
        limits.memory = Some(moat_engine::validate::bytes("memory limit", human::parse_size(m)?)?);
    }
    if let Some(s) = &a.memory_swap {
        limits.memory_swap = Some(if s == "-1" {
            -1
        } else {
            moat_engine::validate::bytes("memory-swap limit", human::parse_size(s)?)?
        });
    }
    limits.cpus = a.cpus;
    limits.cpu_shares = a.cpu_shares;
    limits.pids = a.pids_limit;
    let (image, command) = a.image_and_command.split_first().ok_or_else(|| anyhow!("an image is required"))?;
    if image.starts_with('-') {
        // clap takes anything after the flags it knows as IMAGE [COMMAND...]
        return Err(crate::with_exit(anyhow!("unknown flag: {image} (see 'moat run --help')"), 125));
    }
    Ok(ContainerConfig {
        image: image.clone(),
        cmd: command.to_vec(),
        entrypoint: a
            .entrypoint
            .as_ref()
            .map(|e| if e.is_empty() { vec![String::new()] } else { vec![e.clone()] })
            .unwrap_or_default(),
        env,
        workdir: a.workdir.clone().unwrap_or_default(),
        user: a.user.clone().unwrap_or_default(),
        hostname: a.hostname.clone().unwrap_or_default(),
        tty: a.tty,
        open_stdin: a.interactive,
        stdin_once: a.interactive,
        labels,
        binds,
        tmpfs,
        readonly_rootfs: a.read_only,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        privileged: a.privileged,
        security_opt: a.security_opt.clone(),
        limits,
        restart: a.restart.parse().map_err(|e: String| anyhow!(e))?,
        auto_remove: rm,
        isolation,
        network: a.network.clone().unwrap_or_default(),
        stop_signal: a.stop_signal.clone().unwrap_or_default(),
        stop_timeout: a.stop_timeout,
        shm_size: a.shm_size.as_deref().map(human::parse_size).transpose()?,
        ulimits: a
            .ulimit
            .iter()
            .map(|u| moat_runtime::spec::parse_ulimit(u))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!(e))?,
        args: Vec::new(),
        networks: Vec::new(),
        ip: a.ip,
        mac: a.mac_address.clone(),
        dns: a.dns.clone(),
        add_hosts: a.add_host.clone(),
        publish: a.publish.iter().map(|p| moat_net::parse_publish(p)).collect::<Result<_, _>>()?,
        publish_all: a.publish_all,
        exposed: Vec::new(),
        devices: a.device.iter().map(|d| moat_runtime::devices::parse_device(d)).collect::<Result<_, _>>()?,
        log: moat_engine::logs::LogConfig::parse(a.log_driver.as_deref(), &a.log_opt).map_err(|e| anyhow!(e))?,
    })
}

/// Exit code of a start failure, printing its message.
fn start_failed(e: EngineError) -> Result<i32> {
    match e {
        EngineError::Start { message, code } => {
            eprintln!("Error: {message}");
            Ok(if code == 0 { 125 } else { code })
        }
        e => Err(e.into()),
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
pub fn run(root: &Path, cmd: ContainerCmd) -> Result<i32> {
    let mut e = Engine::open(root).with_context(|| format!("cannot open moat root {}", root.display()))?;
    match cmd {
        ContainerCmd::Create(a) => {
            let c = build_config(&a, false)
                .and_then(|cfg| Ok(e.create(a.name.as_deref(), cfg)?))
                .map_err(|err| crate::with_exit(err, 125))?;
            println!("{}", c.id());
            Ok(0)
        }
        ContainerCmd::Run(a) => {
            let cfg = build_config(&a.create, a.rm).map_err(|err| crate::with_exit(err, 125))?;
            let tty = cfg.tty;
            let c = e.create(a.create.name.as_deref(), cfg).map_err(|err| crate::with_exit(err.into(), 125))?;
            let (c, mut conn) = match e.start(c.id()) {
                Ok(v) => v,
                Err(err) => {
                    if a.rm {
                        let _ = e.remove(c.id(), true);
                    }
                    return start_failed(err);
                }
            };
            if a.detach {
                println!("{}", c.id());
                return Ok(0);
            }
            // a process that already exited has closed the shim: its output and exit status are still queued
            let _ = conn.send_msg(&Msg::Attach { stdin: a.create.interactive, stdin_once: true });
            end_code(session::relay(conn, Opts { tty, stdin: a.create.interactive, sig_proxy: a.sig_proxy })?)
        }
        ContainerCmd::Start { attach, interactive, containers } => {
            let mut code = 0;
            for name in &containers {
                match e.start(name) {
                    Ok((c, mut conn)) => {
                        if attach || interactive {
                            let _ = conn.send_msg(&Msg::Attach { stdin: interactive, stdin_once: interactive });
                            let opts =
                                Opts { tty: c.config.tty, stdin: interactive && c.config.open_stdin, sig_proxy: true };
                            return end_code(session::relay(conn, opts)?);
                        }
                        println!("{name}");
                    }
                    Err(EngineError::Conflict(_)) if !attach => println!("{name}"),
                    Err(err) => {
                        code = start_failed(err)?;
                    }
                }
            }
            Ok(code)
        }
        ContainerCmd::Stop { time, signal, containers } => {
            let sig = signal.as_deref().map(moat_engine::client::parse_signal).transpose()?;
            each(&containers, |n| {
                e.stop(n, time, sig)?;
                println!("{n}");
                Ok(())
            })
        }
        ContainerCmd::Restart { time, containers } => each(&containers, |n| {
            e.stop(n, time, None)?;
            e.start(n)?;
            println!("{n}");
            Ok(())
        }),
        ContainerCmd::Kill { signal, containers } => {
            let sig = moat_engine::client::parse_signal(&signal)?;
            each(&containers, |n| {
                e.kill(n, sig)?;
                println!("{n}");
                Ok(())
            })
        }
        ContainerCmd::Rm { force, volumes: _, containers } => each(&containers, |n| {
            e.remove(n, force)?;
            println!("{n}");
            Ok(())
        }),
        ContainerCmd::Ps(a) => ps(&mut e, a),
        ContainerCmd::Inspect { containers } => {
            drop(e);
            inspect_any(root, &containers)
        }
        ContainerCmd::Logs { follow, tail, timestamps, container } => {
            logs(&mut e, &container, follow, &tail, timestamps)
        }
        ContainerCmd::Wait { containers } => each(&containers, |n| {
            let c = e.get(n)?;
            let code = e.wait(c.id())?;
            println!("{code}");
            Ok(())
        }),
        ContainerCmd::Exec(a) => exec(&mut e, a),
        ContainerCmd::Attach { no_stdin, sig_proxy, container } => {
            let c = e.get(&container)?;
            if !c.is_running() {
                bail!("You cannot attach to a stopped container, start it first");
            }
            let mut conn = e.connect(&c)?;
            let stdin = !no_stdin && c.config.open_stdin;
            conn.send_msg(&Msg::Attach { stdin, stdin_once: false })?;
            end_code(session::relay(conn, Opts { tty: c.config.tty, stdin, sig_proxy })?)
        }
        ContainerCmd::Top { container } => {
            let c = e.get(&container)?;
            if !c.is_running() {
                bail!("container {} is not running", c.name());
            }
            let rows = match e.connect(&c)?.request(&Msg::Top)? {
                Msg::Procs { rows } => rows,
                Msg::Error { message } => bail!(message),
                m => bail!("unexpected reply {m:?}"),
            };
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.uid.to_string(),
                        r.pid.to_string(),
                        r.ppid.to_string(),
                        r.host_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        format!("{}", r.rss_kb),
                        format!(
                            "{:02}:{:02}:{:02}",
                            (r.cpu_secs as u64) / 3600,
                            (r.cpu_secs as u64) / 60 % 60,
                            (r.cpu_secs as u64) % 60
                        ),
                        r.cmd.clone(),
                    ]
                })
                .collect();
            output::table(&["UID", "PID", "PPID", "HOST PID", "RSS", "TIME", "CMD"], &table)?;
            Ok(0)
        }
        ContainerCmd::Rename { container, name } => {
            e.rename(&container, &name)?;
            Ok(0)
        }
        ContainerCmd::Prune { force: _ } => {
            let ids = e.prune()?;
            if !ids.is_empty() {
                println!("Deleted Containers:");
                for i in &ids {
                    println!("{i}");
                }
                println!();
            }
            println!("Total reclaimed space: 0B");
            Ok(0)
        }
        ContainerCmd::Stats { no_stream, all, containers } => stats(&mut e, no_stream, all, &containers),
        ContainerCmd::Port { container } => {
            let c = e.get(&container)?;
            for p in &c.state.ports {
                println!("{}/{} -> {}:{}", p.ctr_port, p.proto, p.host_ip, p.host_port);
            }
            Ok(0)
        }
        ContainerCmd::Update { isolation, restart, containers } => {
            let restart_now = restart.as_deref() == Some("");
            let policy = restart
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(|p| p.parse().map_err(|e: String| anyhow!(e)))
                .transpose()?;
            if isolation.is_none() && policy.is_none() {
                bail!("nothing to update: use --isolation and/or --restart=POLICY");
            }
            let iso = match isolation.as_deref().map(str::parse::<IsolationRequest>).transpose()? {
                Some(r) => Some(r.resolve(e.settings.default_isolation)),
                None => None,
            };
            each(&containers, |n| {
                if let Some(p) = policy {
                    e.update_restart_policy(n, p)?;
                }
                if let Some(i) = iso {
                    e.update_isolation(n, i, restart_now)?;
                }
                println!("{n}");
                Ok(())
            })
        }
    }
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
            eprintln!("Error: {}", format!("{err:#}").replace('\n', " "));
            code = 1;
        }
    }
    Ok(code)
}

fn exec(e: &mut Engine, a: ExecArgs) -> Result<i32> {
    let (container, command) =
        a.container_and_command.split_first().ok_or_else(|| anyhow!("a container is required"))?;
    let c = e.get(container)?;
    if !c.is_running() {
        bail!("container {} is not running", c.id());
    }
    let mut conn = e.connect(&c)?;
    let env: Vec<String> = a.env.iter().filter_map(|v| env_value(v)).collect();
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
    };
    match conn.request(&Msg::Exec(spec))? {
        Msg::Started { .. } => {}
        Msg::Error { message } => {
            eprintln!("Error: {message}");
            let code = match conn.recv_msg() {
                Ok(Msg::Exit { code, .. }) => code,
                _ => 126,
            };
            return Ok(code);
        }
        m => bail!("unexpected reply {m:?}"),
    }
    if a.detach {
        return Ok(0);
    }
    end_code(session::relay(conn, Opts { tty: a.tty, stdin: a.interactive, sig_proxy: true })?)
}

fn print_record(r: &moat_engine::logs::Record, timestamps: bool) {
    use std::io::Write;
    let line = if timestamps {
        format!("{} {}", r.time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true), r.log)
    } else {
        r.log.clone()
    };
    if r.stream == "stderr" {
        let _ = std::io::stderr().write_all(line.as_bytes());
    } else {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(line.as_bytes());
        let _ = o.flush();
    }
}

fn logs(e: &mut Engine, key: &str, follow: bool, tail: &str, timestamps: bool) -> Result<i32> {
    let c = e.get(key)?;
    if c.config.log.driver == "none" {
        bail!("configured logging driver does not support reading: container {} logs with driver \"none\"", c.name());
    }
    let tail = match tail {
        "all" | "-1" => None,
        n => Some(n.parse::<usize>().map_err(|_| anyhow!("invalid --tail value {n:?}"))?),
    };
    let path = e.layout().container(c.id()).join(format!("{}-json.log", c.id()));
    let mut conn = None;
    let mut limit = None;
    if follow && c.is_running() {
        if let Ok(mut cn) = e.connect(&c) {
            if let Ok(Msg::LogOffset { offset }) = cn.request(&Msg::Follow) {
                limit = Some(offset);
                conn = Some(cn);
            }
        }
    }
    for r in moat_engine::logs::read(&path, limit, tail).context("cannot read log")? {
        print_record(&r, timestamps);
    }
    if let Some(mut cn) = conn {
        while let Ok(f) = cn.recv() {
            match f.kind {
                moat_proto::Kind::Stdout => {
                    for r in moat_engine::logs::parse_lines(&f.data) {
                        print_record(&r, timestamps);
                    }
                }
                moat_proto::Kind::Control => {
                    if let Ok(Msg::Exit { .. }) = f.msg() {
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(0)
}

fn command_text(c: &Container) -> String {
    c.config
        .args
        .iter()
        .map(|a| if a.contains(' ') { format!("{a:?}") } else { a.clone() })
        .collect::<Vec<_>>()
        .join(" ")
}

fn matches(c: &Container, filters: &[String]) -> Result<bool> {
    for f in filters {
        let (k, v) = f.split_once('=').ok_or_else(|| anyhow!("bad filter {f:?}: use KEY=VALUE"))?;
        let ok = match k {
            "status" => c.state.status.to_string() == v,
            "name" => c.name().contains(v.trim_start_matches('/')),
            "id" => c.id().starts_with(v),
            "label" => match v.split_once('=') {
                Some((lk, lv)) => c.config.labels.get(lk).is_some_and(|x| x == lv),
                None => c.config.labels.contains_key(v),
            },
            "ancestor" => c.config.image == v || c.row.image_id.to_string().contains(v),
            "isolation" => {
                c.config.isolation().to_string() == v || (v == "vm" && c.config.isolation().to_string() == "hyperv")
            }
            "exited" => c.state.status == Status::Exited && c.state.exit_code.to_string() == v,
            _ => bail!("invalid filter {k:?}"),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn ps_json(c: &Container, no_trunc: bool) -> serde_json::Value {
    serde_json::json!({
        "ID": if no_trunc { c.id().to_string() } else { c.id()[..12].to_string() },
        "Image": c.config.image,
        "Command": format!("\"{}\"", command_text(c)),
        "CreatedAt": c.row.created.format("%Y-%m-%d %H:%M:%S %z UTC").to_string(),
        "RunningFor": human::ago(c.row.created),
        "Status": c.status_text(),
        "State": c.state.status.to_string(),
        "Names": c.name(),
        "Labels": c.config.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
        "Ports": ports_text(c),
        "Networks": c.config.networks.iter().map(|e| e.switch.clone()).collect::<Vec<_>>().join(","),
        "Isolation": c.config.isolation().to_string(),
        "ExitCode": c.state.exit_code,
    })
}

/// Expands `{{.Field}}` placeholders (docker's Go templates, the common subset).
pub fn template(t: &str, v: &serde_json::Value) -> String {
    let t = t.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = t.as_str();
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find("}}") else { break };
        let key = rest[i + 2..i + j].trim().trim_start_matches('.');
        match &v[key] {
            serde_json::Value::String(s) => out.push_str(s),
            serde_json::Value::Null => {}
            x => out.push_str(&x.to_string()),
        }
        rest = &rest[i + j + 2..];
    }
    out.push_str(rest);
    out
}

fn ps(e: &mut Engine, a: PsArgs) -> Result<i32> {
    let mut list = Vec::new();
    for c in e.list()? {
        if (a.all || c.is_running()) && matches(&c, &a.filter)? {
            list.push(c);
        }
    }
    if a.quiet {
        for c in &list {
            println!("{}", if a.no_trunc { c.id() } else { &c.id()[..12] });
        }
        return Ok(0);
    }
    match a.format.as_str() {
        "table" => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    let mut cmd = format!("\"{}\"", command_text(c));
                    if !a.no_trunc && cmd.len() > 22 {
                        cmd = format!("{}…\"", &cmd[..cmd.char_indices().nth(20).map(|(i, _)| i).unwrap_or(cmd.len())]);
                    }
                    vec![
                        if a.no_trunc { c.id().to_string() } else { c.id()[..12].to_string() },
                        c.config.image.clone(),
                        cmd,
                        human::ago(c.row.created),
                        c.status_text(),
                        ports_text(c),
                        c.name().to_string(),
                        c.config.isolation().to_string(),
                    ]
                })
                .collect();
            output::table(
                &["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES", "ISOLATION"],
                &rows,
            )?;
        }
        "json" => {
            for c in &list {
                println!("{}", ps_json(c, a.no_trunc));
            }
        }
        t => {
            for c in &list {
                println!("{}", template(t, &ps_json(c, a.no_trunc)));
            }
        }
    }
    Ok(0)
}

pub fn inspect_json(e: &Engine, c: &Container) -> serde_json::Value {
    let dir = e.layout().container(c.id());
    let vm: serde_json::Value = if c.config.isolation() == moat_core::Isolation::Hyperv {
        let mut v: serde_json::Value = std::fs::read(dir.join("vm.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        if !c.is_running() {
            // pids of a VM that is gone mean nothing
            if let Some(o) = v.as_object_mut() {
                o.remove("QemuPid");
                o.remove("VirtiofsdPid");
            }
        }
        v["Accelerator"] = serde_json::json!(moat_vm::accel::detect().0.to_string());
        v
    } else {
        serde_json::Value::Null
    };
    let cfg = &c.config;
    let st = &c.state;
    let t = |x: Option<chrono::DateTime<chrono::Utc>>| {
        x.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
            .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
    };
    let restart = serde_json::to_value(cfg.restart).unwrap_or_default();
    serde_json::json!({
        "Id": c.id(),
        "Created": c.row.created.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "Path": cfg.args.first().cloned().unwrap_or_default(),
        "Args": cfg.args.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": st.status.to_string(),
            "Running": st.status == Status::Running,
            "Paused": false,
            "Restarting": st.status == Status::Restarting,
            "OOMKilled": st.oom_killed,
            "Dead": st.status == Status::Dead,
            "Pid": st.pid,
            "ExitCode": st.exit_code,
            "Error": st.error,
            "StartedAt": t(st.started_at),
            "FinishedAt": t(st.finished_at),
            "Isolation": cfg.isolation().to_string(),
            "IsolationChangedAt": st.isolation_changed_at.map(|x| x.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
        },
        "Image": c.row.image_id.to_string(),
        "ResolvConfPath": dir.join("resolv.conf"),
        "HostnamePath": dir.join("hostname"),
        "HostsPath": dir.join("hosts"),
        "LogPath": dir.join(format!("{}-json.log", c.id())),
        "Name": format!("/{}", c.name()),
        "RestartCount": st.restart_count,
        "VM": vm,
        "Driver": "overlay",
        "Platform": "linux",
        "HostConfig": {
            "Binds": cfg.binds.iter().map(|b| format!("{}:{}{}", b.source, b.target, if b.readonly { ":ro" } else { "" })).collect::<Vec<_>>(),
            "NetworkMode": cfg.network,
            "RestartPolicy": restart,
            "AutoRemove": cfg.auto_remove,
            "CapAdd": cfg.cap_add,
            "CapDrop": cfg.cap_drop,
            "Privileged": cfg.privileged,
            "ReadonlyRootfs": cfg.readonly_rootfs,
            "SecurityOpt": cfg.security_opt,
            "Tmpfs": cfg.tmpfs,
            "Memory": cfg.limits.memory.unwrap_or(0),
            "MemorySwap": cfg.limits.memory_swap.unwrap_or(0),
            "NanoCpus": cfg.limits.cpus.map(|c| (c * 1e9) as i64).unwrap_or(0),
            "CpuShares": cfg.limits.cpu_shares.unwrap_or(0),
            "PidsLimit": cfg.limits.pids,
            "Isolation": cfg.isolation().to_string(),
            "ShmSize": cfg.shm_size.unwrap_or(64 << 20),
            "LogConfig": { "Type": cfg.log.driver, "Config": cfg.log.options() },
        },
        "NetworkSettings": {
            "Networks": cfg.networks.iter().map(|e| (e.switch.clone(), serde_json::json!({
                "NetworkID": e.switch_id, "IPAddress": e.ip.to_string(), "IPPrefixLen": e.prefix,
                "Gateway": e.gateway.map(|g| g.to_string()).unwrap_or_default(), "MacAddress": e.mac,
                "HostInterface": if cfg.isolation() == moat_core::Isolation::Hyperv {
                    (0..cfg.networks.len()).find(|n| cfg.networks[*n].switch_id == e.switch_id).map(|n| moat_net::if_name('t', c.id(), n)).unwrap_or_default()
                } else {
                    (0..cfg.networks.len()).find(|n| cfg.networks[*n].switch_id == e.switch_id).map(|n| moat_net::if_name('v', c.id(), n)).unwrap_or_default()
                },
            }))).collect::<serde_json::Map<_, _>>(),
            "IPAddress": cfg.networks.first().map(|e| e.ip.to_string()).unwrap_or_default(),
            "Ports": st.ports.iter().map(|p| (format!("{}/{}", p.ctr_port, p.proto), serde_json::json!([{"HostIp": p.host_ip.to_string(), "HostPort": p.host_port.to_string()}]))).collect::<serde_json::Map<_, _>>(),
        },
        "Mounts": cfg.binds.iter().map(|b| serde_json::json!({
            "Type": "bind", "Source": b.source, "Destination": b.target, "RW": !b.readonly, "Mode": if b.readonly { "ro" } else { "" }, "Propagation": "rprivate"
        })).collect::<Vec<_>>(),
        "Config": {
            "Hostname": cfg.hostname,
            "User": cfg.user,
            "Tty": cfg.tty,
            "OpenStdin": cfg.open_stdin,
            "StdinOnce": cfg.stdin_once,
            "Env": cfg.env,
            "Cmd": cfg.cmd,
            "Entrypoint": if cfg.entrypoint.is_empty() { serde_json::Value::Null } else { serde_json::json!(cfg.entrypoint) },
            "Image": cfg.image,
            "WorkingDir": cfg.workdir,
            "Labels": cfg.labels,
            "StopSignal": cfg.stop_signal,
            "StopTimeout": cfg.stop_timeout,
        },
    })
}

fn stats(e: &mut Engine, no_stream: bool, all: bool, names: &[String]) -> Result<i32> {
    let targets: Vec<Container> = if names.is_empty() {
        e.list()?.into_iter().filter(|c| all || c.is_running()).collect()
    } else {
        names.iter().map(|n| e.get(n)).collect::<Result<_, _>>()?
    };
    let sample = |e: &mut Engine| -> Vec<Option<moat_proto::Stats>> {
        targets
            .iter()
            .map(|c| match e.connect(c).and_then(|mut cn| cn.request(&Msg::Stats)) {
                Ok(Msg::Usage(s)) => Some(s),
                _ => None,
            })
            .collect()
    };
    loop {
        let t0 = std::time::Instant::now();
        let a = sample(e);
        // CPU % needs two samples
        std::thread::sleep(std::time::Duration::from_millis(500));
        let b = sample(e);
        let dt = t0.elapsed().as_nanos().max(1) as f64;
        let rows: Vec<Vec<String>> = targets
            .iter()
            .zip(a.iter().zip(&b))
            .map(|(c, (x, y))| match (x, y) {
                (Some(x), Some(y)) => {
                    let cpu = (y.cpu_ns.saturating_sub(x.cpu_ns)) as f64 / dt * 100.0;
                    let lim = if y.mem_limit == 0 { total_mem() } else { y.mem_limit };
                    vec![
                        c.id()[..12].to_string(),
                        c.name().to_string(),
                        format!("{cpu:.2}%"),
                        format!("{} / {}", bin(y.mem_usage), bin(lim)),
                        format!("{:.2}%", y.mem_usage as f64 / lim.max(1) as f64 * 100.0),
                        y.pids.to_string(),
                    ]
                }
                _ => vec![
                    c.id()[..12].to_string(),
                    c.name().to_string(),
                    "--".into(),
                    "-- / --".into(),
                    "--".into(),
                    "--".into(),
                ],
            })
            .collect();
        if !no_stream {
            print!("\x1b[2J\x1b[H");
        }
        output::table(&["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS"], &rows)?;
        if no_stream {
            return Ok(0);
        }
    }
}

fn total_mem() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn bin(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    // docker prints up to 4 significant digits: 64MiB, 2.426MiB
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{}", U[i])
}

/// `moat inspect`: containers first, then images, like docker.
pub fn inspect_any(root: &Path, names: &[String]) -> Result<i32> {
    let mut e = Engine::open(root)?;
    let mut out = Vec::new();
    let mut code = 0;
    for n in names {
        match e.get(n) {
            Ok(c) => out.push(inspect_json(&e, &c)),
            Err(EngineError::NoSuchContainer(_)) => match e.images().resolve(n) {
                Ok(img) => out.push(crate::images::inspect_json(&img)),
                Err(moat_image::ImageError::NoSuchImage(_)) => {
                    eprintln!("Error: No such object: {n}");
                    code = 1;
                }
                Err(err) => {
                    eprintln!("Error: {err}");
                    code = 1;
                }
            },
            Err(err) => {
                eprintln!("Error: {err}");
                code = 1;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(code)
}

fn ports_text(c: &Container) -> String {
    c.state
        .ports
        .iter()
        .map(|p| format!("{}:{}->{}/{}", p.host_ip, p.host_port, p.ctr_port, p.proto))
        .collect::<Vec<_>>()
        .join(", ")
}
