//! The `moat` command line.

/// `println!` that ends the process quietly (exit 0) when stdout is a
/// closed pipe (`moat images | head -1`) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// `eprintln!` without its panic: a closed or broken stderr (`2>&1 | head`)
/// loses the line instead of ending the command with a backtrace.
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// An error as the CLI prints it: `Error: ` and one escaped line of at most
/// 2000 characters ([`one_line`]), best-effort like [`errln!`].
macro_rules! error_line {
    ($($t:tt)*) => {
        errln!("Error: {}", $crate::one_line(&format!($($t)*)))
    };
}

mod build;
mod containers;
mod events;
mod format;
#[cfg(test)]
mod fuzz;
mod images;
mod info;
mod output;
mod pods;
mod registry;
mod session;
mod switches;
mod system;
mod volumes;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use moat_engine::{Engine, EngineOptions};
use std::path::PathBuf;

/// moat: containers with process or hyperv (utility VM) isolation.
#[derive(Parser, Debug)]
#[command(name = "moat", version, about, disable_help_subcommand = true)]
pub struct Cli {
    /// Root directory of all moat state.
    #[arg(long, global = true, env = "MOAT_ROOT", default_value = "/var/lib/moat")]
    root: PathBuf,
    /// Isolation for containers created without --isolation or with `default`
    /// (overrides the config files).
    #[arg(long, global = true, env = "MOAT_DEFAULT_ISOLATION")]
    default_isolation: Option<String>,
    /// The system-wide config file.
    #[arg(long, global = true, env = "MOAT_CONFIG", hide = true)]
    config: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, env = "MOAT_LOG", default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the moat version.
    Version(info::VersionArgs),
    /// Stream the engine's events.
    Events(events::EventsArgs),
    /// Show engine and host information.
    Info(info::InfoArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(images::ImageCmd),
    /// List images.
    Images(images::LsArgs),
    /// Import a rootfs tarball as an image.
    Import(images::ImportArgs),
    /// Load images from a docker-archive or OCI layout tarball.
    Load(images::LoadArgs),
    /// Save images to a docker-archive tarball.
    Save(images::SaveArgs),
    /// Give an image another name.
    Tag(images::TagArgs),
    /// Remove images.
    Rmi(images::RmArgs),
    /// Download an image from a registry.
    Pull(registry::PullArgs),
    /// Upload an image to a registry.
    Push(registry::PushArgs),
    /// Log in to a registry (credentials kept 0600 in the root).
    Login(registry::LoginArgs),
    /// Forget the login for a registry.
    Logout {
        /// Registry (default: Docker Hub).
        server: Option<String>,
    },
    /// Show the history of an image.
    History(images::HistoryArgs),
    /// Build an image from a Dockerfile (RUN steps in either isolation type).
    Build(build::BuildArgs),
    /// Manage the build cache.
    #[command(subcommand)]
    Builder(build::BuilderCmd),
    /// Manage containers.
    #[command(subcommand)]
    Container(containers::ContainerCmd),
    #[command(flatten)]
    Lifecycle(containers::ContainerCmd),
    /// Manage virtual switches (networks).
    #[command(subcommand, alias = "network")]
    Switch(switches::SwitchCmd),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(volumes::VolumeCmd),
    /// Manage pods: sandboxes holding several containers (one VM per pod in hyperv).
    #[command(subcommand)]
    Pod(pods::PodCmd),
    /// Internal: a published port's proxy.
    #[command(hide = true)]
    PortProxy {
        /// tcp or udp.
        #[arg(long)]
        proto: String,
        /// Container address:port.
        #[arg(long)]
        target: std::net::SocketAddr,
    },
    /// Whole-root operations: boot, df, prune, reset.
    #[command(subcommand)]
    System(system::SystemCmd),
    /// Utility VMs: the guest kernel and the agent.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Serve the Docker Engine API (docker CLI, compose, docker-py, bollard).
    Serve(ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Internal: write man pages (moat.1, moat-run.1, ...) into a directory (`make install`).
    #[command(hide = true)]
    Man {
        /// Output directory.
        dir: PathBuf,
    },
    /// Internal: the per-container shim.
    #[command(hide = true)]
    Shim {
        /// Container ID.
        id: String,
        /// The engine's options (JSON).
        options: String,
    },
}

/// `moat vm ...`.
#[derive(Subcommand, Debug)]
enum VmCmd {
    /// Manage the guest kernel.
    #[command(subcommand)]
    Kernel(KernelCmd),
    /// Manage the booted VM templates VM containers are restored from.
    #[command(subcommand)]
    Template(TemplateCmd),
}

/// `moat vm template ...`.
#[derive(Subcommand, Debug)]
enum TemplateCmd {
    /// Boot and save the template for VMs of this size now (runs build it on first need).
    Build {
        /// Guest memory as a container's `--memory` would set it (e.g. 256m; default: moat's default VM size).
        #[arg(short = 'm', long)]
        memory: Option<String>,
        /// vCPUs as a container's `--cpus` would set them.
        #[arg(long)]
        cpus: Option<f64>,
        /// Number of NICs (switches the container joins).
        #[arg(long, default_value_t = 1)]
        nics: usize,
    },
    /// List templates.
    #[command(alias = "list")]
    Ls {
        /// `table`, `json`, or a Go template (`{{.Digest}}`).
        #[arg(short = 'f', long, default_value = "table")]
        format: String,
        /// Only digests.
        #[arg(short = 'q', long)]
        quiet: bool,
    },
    /// Remove templates by digest (or a prefix of at least 4 characters).
    #[command(alias = "remove")]
    Rm {
        /// Digests.
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// Remove templates made from an old kernel, agent, QEMU or virtiofsd (all with --all).
    Prune {
        /// Remove every template.
        #[arg(short = 'a', long)]
        all: bool,
    },
}

/// `moat vm kernel ...`.
#[derive(Subcommand, Debug)]
enum KernelCmd {
    /// Download and install Debian's current cloud kernel
    /// (linux-image-cloud-amd64), or install a kernel of your own.
    Install {
        /// An ELF vmlinux with everything built in (scripts/guest-kernel.sh builds one).
        #[arg(long, value_name = "FILE")]
        vmlinux: Option<PathBuf>,
    },
    /// Show the installed kernel.
    Show,
}

fn vm(o: &EngineOptions, c: VmCmd) -> Result<i32> {
    match c {
        VmCmd::Kernel(KernelCmd::Install { vmlinux }) => {
            let k = moat_engine::vm::install_kernel(o, vmlinux.as_deref())?;
            outln!("installed guest kernel {} in {}", k.version, k.dir.display());
            if let Some(i) = k.initramfs {
                outln!("initramfs {}", i.display());
            }
        }
        VmCmd::Kernel(KernelCmd::Show) => {
            let k = moat_engine::vm::current_kernel(o)?;
            outln!("{} {}", k.version, k.vmlinux.display());
        }
        VmCmd::Template(t) => return template(o, t),
    }
    Ok(0)
}

fn template(o: &EngineOptions, c: TemplateCmd) -> Result<i32> {
    use moat_engine::templates;
    match c {
        TemplateCmd::Build { memory, cpus, nics } => {
            let (mem, vcpus) = moat_engine::vm::sizing_for(memory.as_deref(), cpus)?;
            let t = templates::build(o, mem, vcpus, nics)?;
            outln!("{}", t.digest);
        }
        TemplateCmd::Ls { format, quiet } => {
            let list = templates::list(o);
            if quiet {
                list.iter().for_each(|t| outln!("{}", t.digest));
            } else {
                match format.as_str() {
                    "table" => {
                        outln!("DIGEST         KERNEL                 QEMU     ACCEL  MEMORY    VCPUS  NICS  RAM STORED  BUILD    CURRENT");
                        for t in &list {
                            outln!(
                                "{:<14} {:<22} {:<8} {:<6} {:<9} {:<6} {:<5} {:<11} {:<8} {}",
                                &t.digest[..12],
                                t.kernel,
                                t.qemu,
                                t.accelerator,
                                format!("{}MiB", t.memory_mib),
                                t.vcpus,
                                t.nics,
                                format!("{:.1}MiB", t.ram_bytes as f64 / 1048576.0),
                                format!("{:.2}s", t.build_ms as f64 / 1000.0),
                                if t.current { "yes" } else { "stale" }
                            );
                        }
                    }
                    "json" => outln!("{}", serde_json::to_string_pretty(&list)?),
                    f => {
                        let t = format::Tmpl::parse(f)?;
                        for v in &list {
                            outln!("{}", t.render(v)?);
                        }
                    }
                }
            }
        }
        TemplateCmd::Rm { digests } => {
            let mut code = 0;
            for d in digests {
                match templates::remove(o, &d) {
                    Ok(full) => outln!("{full}"),
                    Err(e) => {
                        error_line!("{e}");
                        code = 1;
                    }
                }
            }
            return Ok(code);
        }
        TemplateCmd::Prune { all } => {
            for d in templates::prune(o, all)? {
                outln!("deleted {d}");
            }
        }
    }
    Ok(0)
}

/// The engine's options from the command line and the environment (the
/// only place that reads `MOAT_*` variables).
fn options(cli: &Cli) -> Result<EngineOptions> {
    let env_path = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let env_num = |k: &str| -> Result<Option<u64>> {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| v.parse().with_context(|| format!("{k} must be a number")))
            .transpose()
    };
    Ok(EngineOptions {
        root: cli.root.clone(),
        default_isolation: match cli.default_isolation.as_deref().filter(|d| !d.is_empty()) {
            Some(d) => Some(
                d.parse()
                    .map_err(|e: moat_core::isolation::BadIsolation| anyhow::anyhow!("--default-isolation: {e}"))?,
            ),
            None => None,
        },
        config_file: cli.config.clone(),
        kernel_dir: env_path("MOAT_KERNEL_DIR"),
        agent: env_path("MOAT_AGENT"),
        qemu: env_path("MOAT_QEMU"),
        virtiofsd: env_path("MOAT_VIRTIOFSD"),
        // shims and port proxies are this binary
        shim_exe: Some(std::env::current_exe().context("locate the moat binary")?),
        vm_boot_timeout_secs: env_num("MOAT_VM_BOOT_TIMEOUT")?,
        crash_point: std::env::var("MOAT_CRASHPOINT").ok().filter(|v| !v.is_empty()),
        vm_templates: match std::env::var("MOAT_VM_TEMPLATES").unwrap_or_default().to_ascii_lowercase().as_str() {
            "" | "auto" => None,
            "0" | "off" | "false" | "no" => Some(false),
            "1" | "on" | "true" | "yes" => Some(true),
            v => anyhow::bail!("MOAT_VM_TEMPLATES must be auto, on or off, not {v:?}"),
        },
        max_unpack_bytes: env_num("MOAT_MAX_UNPACK_BYTES")?,
        max_unpack_entries: env_num("MOAT_MAX_UNPACK_ENTRIES")?,
        in_process: None,
    })
}

/// `serve` arguments.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The unix socket (0660, owned by root and --group).
    #[arg(long, default_value = "/run/moat/docker.sock")]
    socket: PathBuf,
    /// Listen here instead: unix:///PATH, tcp://127.0.0.1:PORT or fd:// (systemd); repeatable.
    #[arg(short = 'H', long = "host")]
    host: Vec<String>,
    /// Group allowed to use the socket (default: root only).
    #[arg(long)]
    group: Option<String>,
    /// Allow tcp:// on addresses beyond loopback. The API has no authentication:
    /// anyone who reaches the port is root on this host.
    #[arg(long)]
    insecure_tcp: bool,
    /// Connections served at once; more are answered 503.
    #[arg(long, default_value_t = 1000)]
    max_connections: usize,
    /// Seconds a client may take to send a request's head.
    #[arg(long, default_value_t = 30.0)]
    header_timeout: f64,
    /// Seconds a request body may send nothing before the request fails (408).
    #[arg(long, default_value_t = 60.0)]
    body_timeout: f64,
}

/// A positive number of seconds.
fn seconds(s: f64, flag: &str) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} {s}: give a positive number of seconds"))
}

fn serve(o: EngineOptions, a: ServeArgs) -> Result<i32> {
    let listen = if a.host.is_empty() {
        vec![moat_api::Listen::Unix(a.socket)]
    } else {
        a.host.iter().map(|h| h.parse()).collect::<Result<Vec<_>, _>>()?
    };
    let group = match a.group {
        None => None,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => Some(
                nix::unistd::Group::from_name(&g)
                    .ok()
                    .flatten()
                    .with_context(|| format!("no group named {g:?}"))?
                    .gid
                    .as_raw(),
            ),
        },
    };
    moat_api::serve(moat_api::ServeOptions {
        engine: o,
        listen,
        group,
        insecure_tcp: a.insecure_tcp,
        max_body: 16 << 20,
        limits: moat_api::ConnLimits {
            max_connections: a.max_connections.max(1),
            header_timeout: seconds(a.header_timeout, "--header-timeout")?,
            body_idle: seconds(a.body_timeout, "--body-timeout")?,
        },
    })?;
    Ok(0)
}

fn run(cli: Cli) -> Result<i32> {
    let o = options(&cli)?;
    let root = cli.root.clone();
    let open = || Engine::open(o.clone()).with_context(|| format!("cannot open moat root {}", root.display()));
    match cli.cmd {
        Cmd::Version(a) => info::version(&open()?, a),
        Cmd::Info(a) => info::run(&mut open()?, a),
        Cmd::Events(a) => events::run(&mut open()?, a),
        Cmd::Image(c) => images::run(&mut open()?, c),
        Cmd::Build(a) => build::build(&mut open()?, a),
        Cmd::Builder(c) => build::builder(&mut open()?, c),
        Cmd::Images(a) => images::run(&mut open()?, images::ImageCmd::Ls(a)),
        Cmd::Import(a) => images::run(&mut open()?, images::ImageCmd::Import(a)),
        Cmd::Load(a) => images::run(&mut open()?, images::ImageCmd::Load(a)),
        Cmd::Save(a) => images::run(&mut open()?, images::ImageCmd::Save(a)),
        Cmd::Tag(a) => images::run(&mut open()?, images::ImageCmd::Tag(a)),
        Cmd::Rmi(a) => images::run(&mut open()?, images::ImageCmd::Rm(a)),
        Cmd::Pull(a) => registry::pull(&mut open()?, a),
        Cmd::Push(a) => registry::push(&mut open()?, a),
        Cmd::Login(a) => registry::login(&mut open()?, a),
        Cmd::Logout { server } => registry::logout(&mut open()?, server),
        Cmd::History(a) => images::run(&mut open()?, images::ImageCmd::History(a)),
        Cmd::Container(c) | Cmd::Lifecycle(c) => containers::run(&mut open()?, c),
        Cmd::Vm(c) => vm(&o, c),
        Cmd::Serve(a) => serve(o.clone(), a),
        Cmd::Completion { shell } => {
            let mut cmd = command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "moat", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(0)
        }
        Cmd::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let cmd = command();
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
            Ok(0)
        }
        Cmd::System(c) => system::run(open()?, c),
        Cmd::Switch(c) => switches::run(&mut open()?, c),
        Cmd::Volume(c) => volumes::run(&mut open()?, c),
        Cmd::Pod(c) => pods::run(&mut open()?, c),
        Cmd::PortProxy { proto, target } => {
            moat_engine::shim::serve_port_proxy(&proto, target)?;
            Ok(0)
        }
        Cmd::Shim { id, options } => Ok(moat_engine::shim::main(&id, &options)),
    }
}

/// The command line's definition: every option that takes a value takes a
/// negative number too (`--pids-limit -1`, `--memory-swap -1`, `-t -1`),
/// as Docker's do, instead of reading it as an unknown flag.
pub fn command() -> clap::Command {
    fn negative(c: clap::Command) -> clap::Command {
        c.mut_args(
            |a| if a.get_action().takes_values() && !a.is_positional() { a.allow_negative_numbers(true) } else { a },
        )
        .mut_subcommands(negative)
    }
    negative(<Cli as clap::CommandFactory>::command())
}

/// An error as one readable line: line breaks joined, control characters
/// and other bytes a terminal would act on escaped (an archive's garbage
/// quoted in a message), and at most 2000 characters (a list of thousands
/// of names is cut, with the count of what was left out).
pub fn one_line(s: &str) -> String {
    const MAX: usize = 2000;
    let mut out = String::new();
    let total = s.chars().count();
    for (n, c) in s.chars().enumerate() {
        if n == MAX {
            out.push_str(&format!("… ({} more characters)", total - MAX));
            break;
        }
        match c {
            '\n' | '\r' => out.push(' '),
            c if c.is_control() && c != '\t' => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// Marks every descriptor from 3 up close-on-exec: what moat was started
/// with (a harness's pipe, a terminal's extra descriptors) must not reach
/// the shims, QEMU, virtiofsd or port proxies it starts, which would keep
/// it open for as long as a container lives. What moat hands on it hands
/// on explicitly. This process can still use them (`fd://` sockets).
fn cloexec_inherited() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return;
    }
    // kernels before 5.11: one by one
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; a closed one fails harmlessly
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

fn main() {
    cloexec_inherited();
    // `moat --root R shim ID OPTIONS` (how the engine starts shims) skips
    // the CLI parser: a shim lives as long as its container, and not
    // touching clap's code keeps its resident memory small
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 6 && argv[1] == "--root" && argv[3] == "shim" {
        let id = argv[4].to_string_lossy().into_owned();
        let options = argv[5].to_string_lossy().into_owned();
        let level = std::env::var("MOAT_LOG").unwrap_or_else(|_| "warn".into());
        let filter = tracing_subscriber::EnvFilter::try_new(level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        // a shim must survive a full disk: its log (stderr) may not take
        // a line, and tracing's fallback would panic in eprintln
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| BestEffort(std::io::stderr())).init();
        std::process::exit(moat_engine::shim::main(&id, &options));
    }
    let cli = match command().try_get_matches().and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m)) {
        Ok(c) => c,
        // `moat help CMD...` is `moat CMD... --help`, as with docker
        Err(e)
            if e.kind() == clap::error::ErrorKind::InvalidSubcommand
                && matches!(e.get(clap::error::ContextKind::InvalidSubcommand), Some(clap::error::ContextValue::String(s)) if s == "help") =>
        {
            let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
            if let Some(i) = args.iter().position(|a| a == "help") {
                args.remove(i);
            }
            args.push("--help".into());
            match command().try_get_matches_from(args) {
                Err(e) => std::process::exit(usage_error(e)),
                Ok(_) => std::process::exit(0),
            }
        }
        Err(e) => std::process::exit(usage_error(e)),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| BestEffort(std::io::stderr())).init();
    let code = match run(cli) {
        Ok(c) => c,
        // a closed stdout (`moat ps | head`) is a normal end
        Err(e) if output::is_broken_pipe(&e) => 0,
        Err(e) => {
            // one line: the whole cause chain joined
            error_line!("{e:#}");
            e.downcast_ref::<Exit>().map(|x| x.0).unwrap_or(1)
        }
    };
    std::process::exit(code);
}

/// A writer that never fails: what cannot be written is dropped.
struct BestEffort<W>(W);

impl<W: std::io::Write> std::io::Write for BestEffort<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// An error that exits with a given code (Docker's 125 for errors of the
/// engine itself before a container runs): the exit code and the one-line message.
#[derive(Debug)]
pub struct Exit(pub i32, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

/// Wraps `e` so that it exits with `code` (its message unchanged).
pub fn with_exit(e: anyhow::Error, code: i32) -> anyhow::Error {
    if e.downcast_ref::<Exit>().is_some() {
        return e;
    }
    anyhow::Error::new(Exit(code, format!("{e:#}")))
}

/// Verbs Docker users type that moat does not have yet, and what to do instead.
const NOT_YET: &[(&str, &str)] = &[("buildx", "moat has no BuildKit: `moat build` is Docker's classic builder")];

/// Prints a command-line error as one line and returns the exit code:
/// 0 for help and version, 125 (Docker's) for usage errors.
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return 0;
        }
        _ => {}
    }
    let ctx = |k: ContextKind| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let line = match e.kind() {
        // name what is missing (clap puts it on the lines after the first)
        ErrorKind::MissingRequiredArgument => {
            let missing = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::Strings(v)) => v.join(", "),
                Some(ContextValue::String(v)) => v.clone(),
                _ => String::new(),
            };
            format!("missing {missing} (see 'moat --help')")
        }
        ErrorKind::UnknownArgument => {
            format!("unknown flag: {} (see 'moat --help')", ctx(ContextKind::InvalidArg).unwrap_or_default())
        }
        ErrorKind::InvalidSubcommand => {
            let verb = ctx(ContextKind::InvalidSubcommand).unwrap_or_default();
            match NOT_YET.iter().find(|(v, _)| *v == verb) {
                Some((v, why)) => format!("'moat {v}' is not available: {why}"),
                None => format!("'{verb}' is not a moat command (see 'moat --help')"),
            }
        }
        _ => {
            let text = e.to_string();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
            format!("{} (see 'moat --help')", first.trim().trim_start_matches("error: "))
        }
    };
    error_line!("{line}");
    125
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        fn walk(c: clap::Command) {
            let c = c.clone();
            for s in c.get_subcommands() {
                walk(s.clone());
            }
            c.debug_assert();
        }
        walk(super::command());
    }
}
