//! `moat pull`, `push`, `login`, `logout`, and the progress of a pull
//! (bars on a terminal, Docker's lines otherwise).

use anyhow::{bail, Context, Result};
use clap::Args;
use moat_engine::registry::{LayerStatus, PullEvent, PullOptions};
use moat_engine::Engine;
use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::sync::Mutex;

/// `pull` arguments.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// Platform of a multi-platform image: `os/arch[/variant]`.
    #[arg(long)]
    platform: Option<String>,
    /// Only the image ID and name.
    #[arg(short, long)]
    quiet: bool,
    /// Every tag of the repository.
    #[arg(short, long)]
    all_tags: bool,
    /// Verify the registry's TLS certificate (`--tls-verify=false` for a test registry).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = true)]
    tls_verify: bool,
    /// `NAME[:TAG|@DIGEST]`.
    reference: String,
}

/// `push` arguments.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// Only the digest.
    #[arg(short, long)]
    quiet: bool,
    /// Verify the registry's TLS certificate.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = true)]
    tls_verify: bool,
    /// `NAME[:TAG]` (a registry host as its first component).
    reference: String,
}

/// `login` arguments.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// User name.
    #[arg(short, long)]
    username: Option<String>,
    /// Password (prefer --password-stdin: this one is seen by other users in `ps`).
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Registry (default: Docker Hub).
    server: Option<String>,
}

/// Draws progress events: a bar per layer on a terminal, a line per state
/// otherwise — on stdout for `pull`/`push` (as Docker does), on stderr for
/// the implicit pull of `run`/`create` (their stdout is the container's).
pub struct Progress {
    push: bool,
    quiet: bool,
    stdout: bool,
    bars: Option<(indicatif::MultiProgress, Mutex<HashMap<String, indicatif::ProgressBar>>)>,
    last: Mutex<HashMap<String, LayerStatus>>,
}

impl Progress {
    /// For a pull (`push` false) or a push; `quiet` prints nothing;
    /// `stdout` or stderr.
    pub fn new(push: bool, quiet: bool, stdout: bool) -> Self {
        let term = if stdout { std::io::stdout().is_terminal() } else { std::io::stderr().is_terminal() };
        let target =
            if stdout { indicatif::ProgressDrawTarget::stdout() } else { indicatif::ProgressDrawTarget::stderr() };
        let bars =
            (!quiet && term).then(|| (indicatif::MultiProgress::with_draw_target(target), Mutex::new(HashMap::new())));
        Self { push, quiet, stdout, bars, last: Mutex::new(HashMap::new()) }
    }

    fn line(&self, s: &str) {
        if self.stdout {
            let _ = writeln!(std::io::stdout(), "{s}");
        } else {
            errln!("{s}");
        }
    }

    /// Shows one event.
    pub fn show(&self, ev: PullEvent) {
        if self.quiet {
            return;
        }
        match ev {
            PullEvent::Status(s) => match &self.bars {
                Some((m, _)) => {
                    let _ = m.println(s);
                }
                None => self.line(&s),
            },
            PullEvent::Layer { id, status, current, total } => {
                if let Some((m, bars)) = &self.bars {
                    let Ok(mut bars) = bars.lock() else { return };
                    let bar = bars.entry(id.clone()).or_insert_with(|| {
                        let b = m.add(indicatif::ProgressBar::new(total.max(1)));
                        b.set_style(
                            indicatif::ProgressStyle::with_template(
                                "{prefix}: {msg:<16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                            )
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                        );
                        b.set_prefix(id.clone());
                        b
                    });
                    bar.set_message(status.text(self.push));
                    match status {
                        LayerStatus::Transferring => bar.set_position(current),
                        LayerStatus::Exists | LayerStatus::Complete | LayerStatus::Mounted => {
                            bar.set_style(
                                indicatif::ProgressStyle::with_template("{prefix}: {msg}")
                                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                            );
                            bar.finish_with_message(status.text(self.push));
                        }
                        _ => {}
                    }
                } else {
                    // without a terminal: a line when the state changes
                    let Ok(mut last) = self.last.lock() else { return };
                    if last.get(&id) != Some(&status) {
                        last.insert(id.clone(), status);
                        self.line(&format!("{id}: {}", status.text(self.push)));
                    }
                }
            }
        }
    }
}

/// Runs `pull`.
pub fn pull(e: &mut Engine, a: PullArgs) -> Result<i32> {
    let p = Progress::new(false, a.quiet, true);
    let o = PullOptions { platform: a.platform.clone(), no_tls_verify: !a.tls_verify, ..Default::default() };
    if a.all_tags {
        for r in e.pull_all_tags(&a.reference, &o, &|ev| p.show(ev))? {
            outln!("{}", r.reference);
        }
        return Ok(0);
    }
    let r = e.pull(&a.reference, &o, &|ev| p.show(ev))?;
    outln!("{}", r.reference);
    Ok(0)
}

/// Runs `push`.
pub fn push(e: &mut Engine, a: PushArgs) -> Result<i32> {
    let p = Progress::new(true, a.quiet, true);
    let o = PullOptions { no_tls_verify: !a.tls_verify, ..Default::default() };
    let d = e.push(&a.reference, &o, &|ev| p.show(ev))?;
    if a.quiet {
        outln!("{d}");
    }
    Ok(0)
}

/// Runs `login`.
pub fn login(e: &mut Engine, a: LoginArgs) -> Result<i32> {
    let user = match a.username {
        Some(u) => u,
        None => bail!("give a user name with -u (moat does not prompt)"),
    };
    let password = match (a.password, a.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(p), false) => {
            errln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, true) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("read the password from stdin")?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("give the password with --password-stdin (moat does not prompt)"),
    };
    let reg = e.login(a.server.as_deref(), &user, &password)?;
    errln!("Login to {reg}: credentials stored in {} (mode 0600)", e.auth_file().display());
    outln!("Login Succeeded");
    Ok(0)
}

/// Runs `logout`.
pub fn logout(e: &mut Engine, server: Option<String>) -> Result<i32> {
    let (reg, had) = e.logout(server.as_deref())?;
    if had {
        outln!("Removing login credentials for {reg}");
    } else {
        outln!("Not logged in to {reg}");
    }
    Ok(0)
}
