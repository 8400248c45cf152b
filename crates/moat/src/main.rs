//! The `moat` command line.

mod containers;
mod images;
mod info;
mod output;
mod session;
mod switches;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
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
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, env = "MOAT_LOG", default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the moat version.
    Version,
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
    /// Manage containers.
    #[command(subcommand)]
    Container(containers::ContainerCmd),
    #[command(flatten)]
    Lifecycle(containers::ContainerCmd),
    /// Manage virtual switches (networks).
    #[command(subcommand, alias = "network")]
    Switch(switches::SwitchCmd),
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
    /// Utility VMs: the guest kernel and the agent.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Internal: the per-container shim.
    #[command(hide = true)]
    Shim {
        /// Container ID.
        id: String,
    },
}

/// `moat vm ...`.
#[derive(Subcommand, Debug)]
enum VmCmd {
    /// Manage the guest kernel.
    #[command(subcommand)]
    Kernel(KernelCmd),
}

/// `moat vm kernel ...`.
#[derive(Subcommand, Debug)]
enum KernelCmd {
    /// Download and install Debian's current cloud kernel (linux-image-cloud-amd64).
    Install,
    /// Show the installed kernel.
    Show,
}

fn vm(root: &std::path::Path, c: VmCmd) -> Result<i32> {
    let dir = moat_vm::kernel::dir(root);
    match c {
        VmCmd::Kernel(KernelCmd::Install) => {
            let k = moat_vm::kernel::install(&dir)?;
            let agent = moat_vm::initramfs::find_agent()?;
            let initrd = moat_vm::initramfs::build(&k, &agent, &dir)?;
            println!("installed guest kernel {} in {}", k.version, dir.display());
            println!("initramfs {}", initrd.display());
        }
        VmCmd::Kernel(KernelCmd::Show) => {
            let k = moat_vm::kernel::current(&dir)?;
            println!("{} {}", k.version, k.vmlinux.display());
        }
    }
    Ok(0)
}

/// Output format option shared by listing commands.
#[derive(Args, Debug, Clone)]
pub struct FormatArg {
    /// Output format: `table` or `json`.
    #[arg(long, default_value = "table")]
    format: String,
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Version => {
            println!("moat version {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Cmd::Info(a) => info::run(&cli.root, a),
        Cmd::Image(c) => images::run(&cli.root, c),
        Cmd::Images(a) => images::run(&cli.root, images::ImageCmd::Ls(a)),
        Cmd::Import(a) => images::run(&cli.root, images::ImageCmd::Import(a)),
        Cmd::Load(a) => images::run(&cli.root, images::ImageCmd::Load(a)),
        Cmd::Save(a) => images::run(&cli.root, images::ImageCmd::Save(a)),
        Cmd::Tag(a) => images::run(&cli.root, images::ImageCmd::Tag(a)),
        Cmd::Rmi(a) => images::run(&cli.root, images::ImageCmd::Rm(a)),
        Cmd::Container(c) | Cmd::Lifecycle(c) => containers::run(&cli.root, c),
        Cmd::Vm(c) => vm(&cli.root, c),
        Cmd::Switch(c) => switches::run(&cli.root, c),
        Cmd::PortProxy { proto, target } => {
            use std::os::fd::FromRawFd;
            // SAFETY: fd 3 is the bound socket the shim passed
            if proto == "udp" {
                moat_net::proxy::udp(unsafe { std::net::UdpSocket::from_raw_fd(3) }, target)?;
            } else {
                moat_net::proxy::tcp(unsafe { std::net::TcpListener::from_raw_fd(3) }, target)?;
            }
            Ok(0)
        }
        Cmd::Shim { id } => Ok(moat_engine::shim::main(&cli.root, &id)),
    }
}

fn main() {
    // `moat --root R shim ID` (how the engine starts shims) skips the CLI
    // parser: a shim lives as long as its container, and not touching clap's
    // code keeps its resident memory small
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 5 && argv[1] == "--root" && argv[3] == "shim" {
        let root = PathBuf::from(&argv[2]);
        let id = argv[4].to_string_lossy().into_owned();
        let level = std::env::var("MOAT_LOG").unwrap_or_else(|_| "warn".into());
        let filter = tracing_subscriber::EnvFilter::try_new(level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
        std::process::exit(moat_engine::shim::main(&root, &id));
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => std::process::exit(usage_error(e)),
    };
    if let Some(d) = &cli.default_isolation {
        // read by the engine's settings loader; set before any other thread exists
        std::env::set_var("MOAT_DEFAULT_ISOLATION", d);
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let code = match run(cli) {
        Ok(c) => c,
        Err(e) => {
            // one line: the whole cause chain joined
            eprintln!("Error: {}", format!("{e:#}").replace('\n', " "));
            e.downcast_ref::<Exit>().map(|x| x.0).unwrap_or(1)
        }
    };
    std::process::exit(code);
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
const NOT_YET: &[(&str, &str)] = &[
    ("pull", "moat has no registry client yet: get the image as a tarball (`docker save`, `skopeo copy ... docker-archive:x.tar`) and `moat load -i x.tar`"),
    ("push", "moat has no registry client yet: `moat save -o x.tar IMAGE` and push it with another tool"),
    ("login", "moat has no registry client yet, so there is nothing to log in to: see `moat load`"),
    ("logout", "moat has no registry client yet, so there is nothing to log out of"),
    ("build", "moat cannot build images yet: build with another tool, then `moat load -i image.tar`"),
];

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
    eprintln!("Error: {line}");
    125
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        fn walk(c: clap::Command) {
            let c = c.clone();
            for s in c.get_subcommands() {
                walk(s.clone());
            }
            c.debug_assert();
        }
        walk(super::Cli::command());
    }
}
