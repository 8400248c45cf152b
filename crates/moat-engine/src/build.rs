//! `build`: an image from a Dockerfile, as Docker's classic builder makes
//! it. Each instruction makes an image (metadata only, or one more layer);
//! `RUN` runs through the engine as a container of the build's isolation
//! type (so `--isolation=hyperv` runs every step in a utility VM), its
//! changes becoming the layer; `COPY`/`ADD`/`WORKDIR` write their layer
//! directly. A step is reused from the cache when its parent image, its
//! instruction after expansion, the build args it sees and (for
//! `COPY`/`ADD`) the content of its sources match. The cache is a table
//! of keys to images; an entry goes with its image, so it never keeps one
//! alive (docs/build.md).

use crate::build_context::{clean, has_glob, Found, Ignore, Tree};
use crate::config::{ContainerConfig, CreateRequest};
use crate::registry::{PullOptions, PullPolicy};
use crate::session::{AttachOptions, SessionEvent};
use crate::{Engine, EngineError};
use moat_core::{Digest, Isolation};
use moat_dockerfile::{lex, Instruction};
use moat_store::ImageRecord;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use moat_image::compress::looks_like_archive;

/// Where the context comes from.
pub enum ContextSource {
    /// A directory on this host (the CLI's `moat build DIR`).
    Dir(PathBuf),
    /// A tar stream (the API's body, `moat build -`), possibly compressed.
    Tar(Box<dyn Read + Send>),
}

/// What to build.
pub struct BuildRequest {
    /// The context.
    pub context: ContextSource,
    /// The Dockerfile's path inside the context (default `Dockerfile`).
    pub dockerfile: Option<String>,
    /// The Dockerfile's text itself (`-f -`), instead of a path.
    pub dockerfile_text: Option<String>,
    /// `-t` names.
    pub tags: Vec<String>,
    /// `--build-arg K=V` (`None`: the front end found no value).
    pub build_args: BTreeMap<String, Option<String>>,
    /// `--target`.
    pub target: Option<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--pull`: pull every base image again.
    pub pull: bool,
    /// `--label`: labels of the final image.
    pub labels: BTreeMap<String, String>,
    /// `--platform` (only this host's is built).
    pub platform: Option<String>,
    /// Isolation of the `RUN` steps (default: the engine's).
    pub isolation: Option<Isolation>,
    /// `--network` of the `RUN` steps: `default`, `none`, `host` or a switch.
    pub network: Option<String>,
    /// Remove intermediate containers after a successful build (`--rm`, default).
    pub remove: bool,
    /// Remove intermediate containers even after a failure (`--force-rm`).
    pub force_remove: bool,
    /// Registry options of base image pulls.
    pub pull_options: PullOptions,
}

impl BuildRequest {
    /// A request with Docker's defaults for `context`.
    pub fn new(context: ContextSource) -> Self {
        Self {
            context,
            dockerfile: None,
            dockerfile_text: None,
            tags: Vec::new(),
            build_args: BTreeMap::new(),
            target: None,
            no_cache: false,
            pull: false,
            labels: BTreeMap::new(),
            platform: None,
            isolation: None,
            network: None,
            remove: true,
            force_remove: false,
            pull_options: PullOptions::default(),
        }
    }
}

/// What a build reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// A line of the builder's own output (`Step 2/5 : RUN make`,
    /// ` ---> Using cache`, ...), ending with a newline.
    Line(String),
    /// Output of a `RUN` step.
    Output(Vec<u8>),
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image.
    pub id: Digest,
    /// The names it got.
    pub tags: Vec<String>,
}

/// What `builder prune` reclaimed.
#[derive(Debug, Clone, Default)]
pub struct BuildPruneReport {
    /// Cache entries forgotten.
    pub entries: usize,
    /// Intermediate images removed.
    pub images: Vec<Digest>,
    /// Bytes freed.
    pub reclaimed: u64,
}

/// Build args usable without an `ARG` (and kept out of the history).
const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// `PATH` of a stage whose image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One stage being built.
struct Stage {
    name: Option<String>,
    image: Option<ImageRecord>,
    /// The image's runtime config (Docker's `config` object).
    config: Map<String, Value>,
    author: Option<String>,
    /// `ARG`s declared in this stage with their values.
    args: BTreeMap<String, Option<String>>,
    shell: Vec<String>,
    /// `CMD` was set in this stage (`ENTRYPOINT` then keeps it).
    cmd_set: bool,
}

impl Stage {
    fn env(&self) -> Vec<String> {
        self.config.get("Env").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
    }

    /// The value of `name` for expansion: `ENV` first, then `ARG`s.
    fn lookup(&self, name: &str) -> Option<String> {
        let env = self.env();
        if let Some(v) = env.iter().rev().find_map(|e| e.strip_prefix(&format!("{name}="))) {
            return Some(v.to_string());
        }
        self.args.get(name).cloned().flatten()
    }

    fn set_env(&mut self, k: &str, v: &str) {
        let mut env = self.env();
        let entry = format!("{k}={v}");
        match env.iter_mut().find(|e| e.split_once('=').map(|(n, _)| n) == Some(k) || *e == k) {
            Some(e) => *e = entry,
            None => env.push(entry),
        }
        self.config.insert("Env".into(), json!(env));
    }

    fn workdir(&self) -> String {
        self.config.get("WorkingDir").and_then(|v| v.as_str()).filter(|s| !s.is_empty()).unwrap_or("/").to_string()
    }
}

/// A step's effect before it runs.
enum Action {
    /// Only the config changes.
    Meta,
    /// `RUN` this argv with these extra environment entries.
    Run { argv: Vec<String>, env: Vec<String> },
    /// A layer of files (`COPY`, `ADD`, `WORKDIR`).
    Files(Vec<Put>),
}

/// One entry of a files layer.
struct Put {
    /// Path in the image (relative, clean).
    dest: String,
    what: PutKind,
    owner: Option<(u64, u64)>,
    mode: Option<u32>,
}

enum PutKind {
    /// A host file, directory or link (not followed).
    Host(PathBuf),
    /// A new directory.
    Dir,
    /// Content (a here-document, a downloaded URL) with mode 0644 unless told.
    Data(Vec<u8>),
}

fn step_err(step: &str, e: EngineError) -> EngineError {
    EngineError::Build { step: step.to_string(), cause: Box::new(e) }
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::Invalid(msg.into())
}

/// `user[:group]` of `--chown` as numbers (names are looked up in the
/// image's `/etc/passwd` and `/etc/group`).
fn chown_ids(spec: &str, root: &Tree) -> Result<(u64, u64), EngineError> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // (id, primary group) of a passwd line, (id, id) of a group line
    let lookup = |file: &str, name: &str| -> Option<(u64, u64)> {
        let f = root.stat(file)?;
        let mut text = String::new();
        open_nofollow(&f.host).ok()?.read_to_string(&mut text).ok()?;
        text.lines().find_map(|l| {
            let p: Vec<&str> = l.split(':').collect();
            if p.first() != Some(&name) || p.len() < 3 {
                return None;
            }
            let id = p[2].parse().ok()?;
            Some((id, p.get(3).and_then(|g| g.parse().ok()).unwrap_or(id)))
        })
    };
    let (uid, mut gid) = match u.parse::<u64>() {
        Ok(n) => (n, n),
        Err(_) => lookup("etc/passwd", u)
            .ok_or_else(|| invalid(format!("unable to find user {u}: no matching entries in passwd file")))?,
    };
    if let Some(g) = g {
        gid = match g.parse::<u64>() {
            Ok(n) => n,
            Err(_) => lookup("etc/group", g)
                .map(|(gid, _)| gid)
                .ok_or_else(|| invalid(format!("unable to find group {g}: no matching entries in group file")))?,
        };
    }
    Ok((uid, gid))
}

/// Docker's health check durations (`30s`, `1m30s`, `500ms`) in nanoseconds.
fn duration_ns(s: &str) -> Result<i64, EngineError> {
    let bad = || invalid(format!("invalid duration {s:?}"));
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(n) = chars.peek().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(*n);
            chars.next();
        }
        let v: f64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += v * match unit.as_str() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total as i64)
}

fn hex_sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Opens a regular file of a context or an image for reading, never
/// through a link (a file swapped for a link after it was listed is not
/// followed into the host).
fn open_nofollow(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(p)
}

/// A list as Go's `%q` prints a `[]string` (the classic builder's history
/// of `CMD`/`ENTRYPOINT`): `["a" "b c"]`.
fn go_quoted_list(v: &[String]) -> String {
    let q: Vec<String> = v.iter().map(|s| serde_json::to_string(s).unwrap_or_default()).collect();
    format!("[{}]", q.join(" "))
}

/// A duration as Go's `time.Duration` prints it (`1m30s`, `500ms`, `0s`).
fn go_duration(ns: i64) -> String {
    let trim = |x: f64| {
        let s = format!("{x:.9}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    match ns {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", trim(n as f64 / 1e3)),
        n if n < 1_000_000_000 => format!("{}ms", trim(n as f64 / 1e6)),
        n => {
            let (h, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
            let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
            let sec = trim(rest as f64 / 1e9);
            match (h, m) {
                (0, 0) => format!("{sec}s"),
                (0, m) => format!("{m}m{sec}s"),
                (h, m) => format!("{h}h{m}m{sec}s"),
            }
        }
    }
}

/// The classic builder's history of `HEALTHCHECK`: Go's `%q` of its
/// `*HealthConfig` (test, interval, timeout, start period, retries as a
/// character).
fn go_healthcheck(h: &Value) -> String {
    let test: Vec<String> = h.get("Test").and_then(|t| serde_json::from_value(t.clone()).ok()).unwrap_or_default();
    let d = |k: &str| go_duration(h.get(k).and_then(|v| v.as_i64()).unwrap_or(0));
    let r = h.get("Retries").and_then(|v| v.as_i64()).unwrap_or(0);
    let retries = match u8::try_from(r) {
        Ok(b'\'') => "'\\''".to_string(),
        Ok(b'\\') => "'\\\\'".to_string(),
        Ok(c) if (0x20..0x7f).contains(&c) => format!("'{}'", c as char),
        Ok(c) => format!("'\\x{c:02x}'"),
        Err(_) => format!("{r}"),
    };
    format!("&{{{} {:?} {:?} {:?} {retries}}}", go_quoted_list(&test), d("Interval"), d("Timeout"), d("StartPeriod"))
}

/// Whether `f` looks like an archive `ADD` unpacks (tar, gzip, bzip2, xz).
fn is_archive(f: &Path) -> bool {
    let mut head = [0u8; 262];
    let Ok(mut file) = open_nofollow(f) else { return false };
    let n = file.read(&mut head).unwrap_or(0);
    moat_image::compress::looks_like_archive(&head[..n])
}

impl Engine {
    /// Builds an image; `progress` receives the builder's lines and the
    /// `RUN` steps' output. A failure names the step; nothing is tagged
    /// then, and no step's container keeps running.
    pub fn build(&mut self, req: BuildRequest, progress: &(dyn Fn(BuildEvent) + Sync)) -> Result<Built, EngineError> {
        let line = |s: String| progress(BuildEvent::Line(s));
        if let Some(p) = &req.platform {
            let host = moat_registry::manifest::Platform::host();
            let want = moat_registry::manifest::Platform::parse(p)?;
            if want.os != host.os || want.architecture != host.architecture {
                return Err(EngineError::Unsupported(format!(
                    "cannot build for {p}: moat builds for this host's platform ({host}) only"
                )));
            }
        }
        for t in &req.tags {
            moat_core::ImageRef::parse(t).map_err(|e| invalid(format!("invalid tag {t:?}: {e}")))?;
        }
        // the context: a directory as it is, or a tar unpacked into scratch space
        let scratch = moat_store::tmp::TmpDir::new(&self.layout, "build")?;
        let dir = match req.context {
            ContextSource::Dir(d) => {
                let m = std::fs::metadata(&d)
                    .map_err(|e| invalid(format!("unable to prepare context: path {:?} not found: {e}", d)))?;
                if !m.is_dir() {
                    return Err(invalid(format!("unable to prepare context: {} is not a directory", d.display())));
                }
                d
            }
            ContextSource::Tar(r) => {
                let d = scratch.path().join("context");
                std::fs::create_dir(&d).map_err(EngineError::io("create the context directory"))?;
                let r = moat_image::compress::decompress(r).map_err(moat_image::ImageError::from)?;
                moat_image::unpack::unpack(r, &d, moat_image::unpack::Kind::Plain, self.images.limits)
                    .map_err(|e| invalid(format!("the build context is not a valid tar archive: {e}")))?;
                d
            }
        };
        let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
            Ok(t) => Ignore::parse(&t)?,
            Err(_) => Ignore::default(),
        };
        let ctx = Tree::context(dir.clone(), ignore);
        moat_core::crash::point("build.context");
        let text = match &req.dockerfile_text {
            Some(t) => t.clone(),
            None => {
                let name = req.dockerfile.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| "Dockerfile".into());
                let rel = clean(&name);
                // read through the tree: no link followed out of the context
                let found = Tree::context(dir.clone(), Ignore::default())
                    .stat(&rel)
                    .filter(|f| f.meta.is_file())
                    .or_else(|| {
                        (req.dockerfile.is_none())
                            .then(|| Tree::context(dir.clone(), Ignore::default()).stat("dockerfile"))
                            .flatten()
                    })
                    .ok_or_else(|| {
                        invalid(format!(
                            "Cannot locate specified Dockerfile: {name} (no such file in the build context)"
                        ))
                    })?;
                std::fs::read_to_string(&found.host)
                    .map_err(|e| invalid(format!("cannot read the Dockerfile {name}: {e}")))?
            }
        };
        let df = moat_dockerfile::parse(&text).map_err(|e| invalid(e.to_string()))?;
        let mut b = Builder {
            req_args: req.build_args.clone(),
            used_args: BTreeSet::new(),
            meta_args: BTreeMap::new(),
            escape: df.escape,
            stages: Vec::new(),
            ctx,
            no_cache: req.no_cache,
            pull: req.pull,
            isolation: req.isolation.unwrap_or(self.settings.default_isolation),
            network: req.network.clone().filter(|n| !n.is_empty() && n != "default"),
            remove: req.remove,
            force_remove: req.force_remove,
            pull_options: req.pull_options.clone(),
            scratch: scratch.path().to_path_buf(),
        };
        // where the instructions end: the target stage's last
        let mut end = df.instructions.len();
        if let Some(t) = &req.target {
            let mut seen = false;
            let mut stage = 0;
            for (i, ins) in df.instructions.iter().enumerate() {
                if ins.keyword == "FROM" {
                    if seen {
                        end = i;
                        break;
                    }
                    let words: Vec<&str> = ins.rest.split_whitespace().collect();
                    let name = (words.len() == 3 && words[1].eq_ignore_ascii_case("as")).then(|| words[2]);
                    if name.is_some_and(|n| n.eq_ignore_ascii_case(t)) || stage.to_string() == *t {
                        seen = true;
                    }
                    stage += 1;
                }
            }
            if !seen {
                return Err(invalid(format!("failed to reach build target {t} in Dockerfile")));
            }
        }
        let mut steps: Vec<Instruction> = df.instructions[..end].to_vec();
        if !req.labels.is_empty() {
            let rest = req.labels.iter().map(|(k, v)| format!("{k:?}={v:?}")).collect::<Vec<_>>().join(" ");
            steps.push(Instruction {
                line: 0,
                keyword: "LABEL".into(),
                flags: Vec::new(),
                original: format!("LABEL {rest}"),
                rest,
                heredocs: Vec::new(),
            });
        }
        if steps.first().is_some_and(|i| i.keyword != "FROM" && i.keyword != "ARG") {
            return Err(invalid("dockerfile parse error: the first instruction must be FROM (or ARG before FROM)"));
        }
        let total = steps.len();
        for (n, ins) in steps.iter().enumerate() {
            let label = format!("Step {}/{total} : {}", n + 1, ins.original);
            line(format!("{label}\n"));
            let step = format!("step {}/{total} ({})", n + 1, ins.original);
            self.step(&mut b, ins, progress).map_err(|e| step_err(&step, e))?;
            // the triggers of a FROM's image run right after it
            if ins.keyword == "FROM" {
                let triggers: Vec<String> = b
                    .stages
                    .last_mut()
                    .and_then(|s| s.config.remove("OnBuild"))
                    .and_then(|v| serde_json::from_value(v).ok())
                    .unwrap_or_default();
                if !triggers.is_empty() {
                    line(format!(
                        "# Executing {} build trigger{}\n",
                        triggers.len(),
                        if triggers.len() == 1 { "" } else { "s" }
                    ));
                }
                for t in triggers {
                    let trig = moat_dockerfile::parse_line(&t, b.escape, ins.line)
                        .map_err(|e| step_err(&step, invalid(format!("ONBUILD trigger {t:?}: {e}"))))?;
                    self.step(&mut b, &trig, progress).map_err(|e| step_err(&format!("{step}, trigger {t}"), e))?;
                }
                if let Some(img) = b.stages.last().and_then(|s| s.image.as_ref()) {
                    line(format!(" ---> {}\n", img.id.short()));
                }
            }
        }
        let unused: Vec<&String> = b
            .req_args
            .keys()
            .filter(|k| !b.used_args.contains(*k) && !PROXY_ARGS.contains(&k.as_str()) && !b.meta_args.contains_key(*k))
            .collect();
        if !unused.is_empty() {
            line(format!(
                "[Warning] One or more build-args [{}] were not consumed\n",
                unused.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
            ));
        }
        let stage = b.stages.pop().ok_or_else(|| invalid("no FROM instruction: nothing to build"))?;
        let image = match stage.image {
            Some(i) => i,
            // `FROM scratch` and nothing else: an empty image
            None => {
                let id = self.images.derive(
                    None,
                    None,
                    moat_image::CommitInfo { config: Value::Object(stage.config), ..Default::default() },
                )?;
                self.images.resolve(&id.to_string())?
            }
        };
        line(format!("Successfully built {}\n", image.id.short()));
        let mut tags = Vec::new();
        for t in &req.tags {
            let r = moat_core::ImageRef::parse(t).map_err(|e| invalid(format!("invalid tag {t:?}: {e}")))?;
            let full = r.tagged().ok_or_else(|| invalid(format!("invalid tag {t:?}")))?;
            self.tag_image(&image.id.to_string(), t)?;
            moat_core::crash::point("build.tagged");
            // the name as Docker shows it (`busybox:latest`, not `docker.io/library/...`)
            line(format!("Successfully tagged {r}\n"));
            tags.push(full);
        }
        drop(scratch);
        Ok(Built { id: image.id, tags })
    }

    /// Runs one instruction of `b`'s current stage (or starts a stage).
    fn step(
        &mut self,
        b: &mut Builder,
        ins: &Instruction,
        progress: &(dyn Fn(BuildEvent) + Sync),
    ) -> Result<(), EngineError> {
        let line = |s: String| progress(BuildEvent::Line(s));
        let kw = ins.keyword.as_str();
        if kw == "FROM" {
            return self.from(b, ins, progress);
        }
        if kw == "ARG" && b.stages.is_empty() {
            // before the first FROM: values for FROM lines only
            for (k, v) in moat_dockerfile::name_values(&ins.rest, "ARG", true, b.escape).map_err(invalid)? {
                let v = match b.req_args.get(&k) {
                    Some(given) => given.clone(),
                    None => v
                        .map(|v| lex::process_word(&v, &|n| b.meta_args.get(n).cloned().flatten(), b.escape))
                        .transpose()
                        .map_err(|e| invalid(e.to_string()))?,
                };
                b.meta_args.insert(k, v);
            }
            return Ok(());
        }
        if !["ADD", "COPY", "FROM", "HEALTHCHECK", "RUN"].contains(&kw) {
            ins.check_flags(&[]).map_err(invalid)?;
        }
        let escape = b.escape;
        let from_stage = ins.flag("from").map(|f| b.stage_image(&f));
        let stage = b.stages.last_mut().ok_or_else(|| invalid("no FROM before this instruction"))?;
        let expand =
            |s: &str, st: &Stage| lex::process_word(s, &|n| st.lookup(n), escape).map_err(|e| invalid(e.to_string()));
        let expand_words =
            |s: &str, st: &Stage| lex::process_words(s, &|n| st.lookup(n), escape).map_err(|e| invalid(e.to_string()));
        // the classic builder's history line: the stage's shell, `#(nop)`
        let nop = |shell: &[String], s: &str| format!("{} #(nop) {s}", shell.join(" "));
        let command = |ins: &Instruction, st: &Stage| -> Vec<String> {
            match ins.json() {
                Some(v) => v,
                None if ins.rest.is_empty() => Vec::new(),
                None => st.shell.iter().cloned().chain([ins.rest.clone()]).collect(),
            }
        };
        let mut action = Action::Meta;
        let mut key_extra = String::new();
        let created_by: String;
        match kw {
            "ARG" => {
                let pairs = moat_dockerfile::name_values(&ins.rest, "ARG", true, escape).map_err(invalid)?;
                for (k, default) in pairs {
                    let v = match b.req_args.get(&k) {
                        Some(given) => {
                            b.used_args.insert(k.clone());
                            given.clone()
                        }
                        None => match default {
                            Some(d) => Some(expand(&d, stage)?),
                            // a global ARG redeclared without a default takes its value
                            None => b.meta_args.get(&k).cloned().flatten(),
                        },
                    };
                    stage.args.insert(k, v);
                }
                created_by = nop(&stage.shell, &format!(" ARG {}", ins.rest));
            }
            "ENV" => {
                let pairs = moat_dockerfile::name_values(&ins.rest, "ENV", false, escape).map_err(invalid)?;
                // every value sees the environment before this instruction
                let pairs = pairs
                    .into_iter()
                    .map(|(k, v)| Ok((expand(&k, stage)?, expand(&v.unwrap_or_default(), stage)?)))
                    .collect::<Result<Vec<_>, EngineError>>()?;
                let mut shown = Vec::new();
                for (k, v) in pairs {
                    shown.push(format!("{k}={v}"));
                    stage.set_env(&k, &v);
                }
                created_by = nop(&stage.shell, &format!(" ENV {}", shown.join(" ")));
            }
            "LABEL" => {
                let pairs = moat_dockerfile::name_values(&ins.rest, "LABEL", false, escape).map_err(invalid)?;
                let mut labels: Map<String, Value> =
                    stage.config.get("Labels").and_then(|l| l.as_object().cloned()).unwrap_or_default();
                let mut shown = Vec::new();
                for (k, v) in pairs {
                    let k = expand(&k, stage)?;
                    let v = expand(&v.unwrap_or_default(), stage)?;
                    shown.push(format!("{k}={v}"));
                    labels.insert(k, Value::String(v));
                }
                stage.config.insert("Labels".into(), Value::Object(labels));
                created_by = nop(&stage.shell, &format!(" LABEL {}", shown.join(" ")));
            }
            "MAINTAINER" => {
                stage.author = Some(expand(&ins.rest, stage)?);
                created_by = nop(&stage.shell, &format!(" MAINTAINER {}", ins.rest));
            }
            "EXPOSE" => {
                let mut ports: Map<String, Value> =
                    stage.config.get("ExposedPorts").and_then(|l| l.as_object().cloned()).unwrap_or_default();
                // the history lists the words as written, sorted (Docker's)
                let mut shown = expand_words(&ins.rest, stage)?;
                shown.sort();
                for w in &shown {
                    let (p, proto) = w.split_once('/').unwrap_or((w, "tcp"));
                    let proto = proto.to_ascii_lowercase();
                    let Some((a, z)) = moat_net::parse_port_range(p) else {
                        return Err(invalid(format!("invalid containerPort: {p}")));
                    };
                    if !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
                        return Err(invalid(format!("invalid proto: {proto}")));
                    }
                    for port in a..=z {
                        ports.insert(format!("{port}/{proto}"), json!({}));
                    }
                }
                stage.config.insert("ExposedPorts".into(), Value::Object(ports));
                created_by = nop(&stage.shell, &format!(" EXPOSE {}", shown.join(" ")));
            }
            "VOLUME" => {
                let vols = match ins.json() {
                    Some(v) => v.iter().map(|w| expand(w, stage)).collect::<Result<Vec<_>, _>>()?,
                    None => expand_words(&ins.rest, stage)?,
                };
                let mut m: Map<String, Value> =
                    stage.config.get("Volumes").and_then(|l| l.as_object().cloned()).unwrap_or_default();
                for v in &vols {
                    if v.is_empty() {
                        return Err(invalid("VOLUME specified can not be an empty string"));
                    }
                    m.insert(v.clone(), json!({}));
                }
                stage.config.insert("Volumes".into(), Value::Object(m));
                created_by = nop(&stage.shell, &format!(" VOLUME [{}]", vols.join(" ")));
            }
            "USER" => {
                let u = expand(&ins.rest, stage)?;
                stage.config.insert("User".into(), Value::String(u.clone()));
                created_by = nop(&stage.shell, &format!(" USER {u}"));
            }
            "STOPSIGNAL" => {
                let s = expand(&ins.rest, stage)?;
                crate::client::parse_signal(&s).map_err(|_| invalid(format!("invalid signal: {s}")))?;
                stage.config.insert("StopSignal".into(), Value::String(s.clone()));
                created_by = nop(&stage.shell, &format!(" STOPSIGNAL {s}"));
            }
            "SHELL" => {
                let v = ins.json().filter(|v| !v.is_empty()).ok_or_else(|| {
                    invalid("SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/sh\", \"-c\"]")
                })?;
                stage.shell = v.clone();
                stage.config.insert("Shell".into(), json!(v));
                created_by = nop(&stage.shell, &format!(" SHELL [{}]", v.join(" ")));
            }
            "CMD" | "ENTRYPOINT" => {
                let argv = command(ins, stage);
                let field = if kw == "CMD" { "Cmd" } else { "Entrypoint" };
                if argv.is_empty() {
                    stage.config.insert(field.into(), Value::Null);
                } else {
                    stage.config.insert(field.into(), json!(argv));
                }
                if kw == "CMD" {
                    stage.cmd_set = true;
                } else if !stage.cmd_set {
                    // an ENTRYPOINT resets a CMD the base image set
                    stage.config.insert("Cmd".into(), Value::Null);
                }
                if ins.json().is_none() && !ins.rest.is_empty() {
                    stage.config.insert("ArgsEscaped".into(), Value::Bool(true));
                }
                created_by = nop(&stage.shell, &format!(" {kw} {}", go_quoted_list(&argv)));
            }
            "HEALTHCHECK" => {
                ins.check_flags(&["interval", "timeout", "start-period", "start-interval", "retries"])
                    .map_err(invalid)?;
                let words: Vec<&str> = ins.rest.splitn(2, char::is_whitespace).collect();
                let check = if words[0].eq_ignore_ascii_case("NONE") {
                    if words.len() > 1 || !ins.flags.is_empty() {
                        return Err(invalid("HEALTHCHECK NONE takes no arguments"));
                    }
                    json!({ "Test": ["NONE"] })
                } else if words[0].eq_ignore_ascii_case("CMD") {
                    let rest = words.get(1).copied().unwrap_or("").trim();
                    let test: Vec<String> = match serde_json::from_str::<Vec<String>>(rest) {
                        Ok(v) if rest.starts_with('[') => ["CMD".to_string()].into_iter().chain(v).collect(),
                        _ if rest.is_empty() => return Err(invalid("HEALTHCHECK CMD needs a command")),
                        _ => vec!["CMD-SHELL".into(), rest.into()],
                    };
                    let mut h = json!({ "Test": test });
                    for (flag, field) in [
                        ("interval", "Interval"),
                        ("timeout", "Timeout"),
                        ("start-period", "StartPeriod"),
                        ("start-interval", "StartInterval"),
                    ] {
                        if let Some(v) = ins.flag(flag) {
                            h[field] = json!(duration_ns(&v)?);
                        }
                    }
                    if let Some(r) = ins.flag("retries") {
                        let n: i64 = r.parse().map_err(|_| invalid(format!("invalid --retries {r:?}")))?;
                        h["Retries"] = json!(n);
                    }
                    h
                } else {
                    return Err(invalid(format!("unknown type {:?} in HEALTHCHECK (try CMD)", words[0])));
                };
                stage.config.insert("Healthcheck".into(), check.clone());
                created_by = nop(&stage.shell, &format!(" HEALTHCHECK {}", go_healthcheck(&check)));
            }
            "ONBUILD" => {
                let t = moat_dockerfile::parse_line(ins.rest.trim(), escape, ins.line)
                    .map_err(|e| invalid(e.to_string()))?;
                if matches!(t.keyword.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                    return Err(invalid(format!("{} isn't allowed as an ONBUILD trigger", t.keyword)));
                }
                let mut triggers: Vec<Value> =
                    stage.config.get("OnBuild").and_then(|v| v.as_array().cloned()).unwrap_or_default();
                triggers.push(Value::String(ins.rest.trim().to_string()));
                stage.config.insert("OnBuild".into(), Value::Array(triggers));
                created_by = nop(&stage.shell, &format!(" ONBUILD {}", ins.rest.trim()));
            }
            "WORKDIR" => {
                let w = expand(&ins.rest, stage)?;
                let abs = if w.starts_with('/') { w.clone() } else { format!("{}/{w}", stage.workdir()) };
                let rel = clean(&abs);
                let path = format!("/{rel}");
                stage.config.insert("WorkingDir".into(), Value::String(path.clone()));
                created_by = nop(&stage.shell, &format!("WORKDIR {path}"));
                let tree = self.tree_of(stage.image.as_ref());
                if !rel.is_empty() && tree.stat(&rel).is_none() {
                    // made for the current USER (BuildKit's and buildah's way)
                    let user = stage.config.get("User").and_then(|u| u.as_str()).unwrap_or_default().to_string();
                    let owner = if user.is_empty() { None } else { chown_ids(&user, &tree).ok() };
                    action = Action::Files(vec![Put { dest: rel, what: PutKind::Dir, owner, mode: None }]);
                }
            }
            "RUN" => {
                ins.check_flags(&[]).map_err(|e| {
                    invalid(format!("{e}; RUN --mount and --network are BuildKit's, which moat's builder is not"))
                })?;
                if stage.image.is_none() {
                    return Err(invalid("RUN has nothing to run in a stage FROM scratch: the image has no shell"));
                }
                let argv = match ins.json() {
                    Some(v) => v,
                    None => {
                        let script = match ins.heredocs.as_slice() {
                            // `RUN <<EOF` alone: the document is the script
                            [h] if moat_dockerfile::heredoc_markers(&ins.rest).len() == 1
                                && ins
                                    .rest
                                    .trim()
                                    .trim_start_matches("<<")
                                    .trim_start_matches('-')
                                    .trim_matches(['"', '\''])
                                    == h.name =>
                            {
                                h.body.clone()
                            }
                            hs => {
                                let mut s = ins.rest.clone();
                                for h in hs {
                                    s.push('\n');
                                    s.push_str(&h.body);
                                    s.push_str(&h.name);
                                }
                                s
                            }
                        };
                        stage.shell.iter().cloned().chain([script]).collect()
                    }
                };
                // build args in scope reach the command's environment (an ENV wins)
                let env_names: BTreeSet<String> =
                    stage.env().iter().map(|e| e.split('=').next().unwrap_or_default().to_string()).collect();
                let mut args: Vec<(String, String)> = Vec::new();
                for (k, v) in &stage.args {
                    if let (Some(v), false) = (v, env_names.contains(k)) {
                        args.push((k.clone(), v.clone()));
                    }
                }
                for p in PROXY_ARGS {
                    if let (Some(Some(v)), false) = (b.req_args.get(*p), stage.args.contains_key(*p)) {
                        b.used_args.insert(p.to_string());
                        args.push((p.to_string(), v.clone()));
                    }
                }
                let shown: Vec<String> = args
                    .iter()
                    .filter(|(k, _)| !PROXY_ARGS.contains(&k.as_str()))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let prefix =
                    if shown.is_empty() { String::new() } else { format!("|{} {} ", shown.len(), shown.join(" ")) };
                created_by = format!("{prefix}{}", argv.join(" "));
                key_extra = format!("{:?}|{:?}|{}", args, b.isolation, b.network.as_deref().unwrap_or(""));
                action = Action::Run { argv, env: args.iter().map(|(k, v)| format!("{k}={v}")).collect() };
            }
            "COPY" | "ADD" => {
                let add = kw == "ADD";
                let known: &[&str] =
                    if add { &["chown", "chmod", "checksum", "keep-git-dir"] } else { &["from", "chown", "chmod"] };
                ins.check_flags(known).map_err(invalid)?;
                let words = match ins.json() {
                    Some(v) => v.iter().map(|w| expand(w, stage)).collect::<Result<Vec<_>, _>>()?,
                    None => expand_words(&ins.rest, stage)?,
                };
                if words.len() < 2 {
                    return Err(invalid(format!("{kw} requires at least two arguments, but only one was provided. Destination could not be determined")));
                }
                let (dest_raw, srcs) = words.split_last().map(|(d, s)| (d.clone(), s.to_vec())).unwrap_or_default();
                let dest_dir = dest_raw.ends_with('/') || dest_raw == "." || dest_raw.ends_with("/.");
                let abs = if dest_raw.starts_with('/') {
                    dest_raw.clone()
                } else {
                    format!("{}/{dest_raw}", stage.workdir())
                };
                let dest = clean(&abs);
                let chmod = match ins.flag("chmod") {
                    Some(m) => Some(u32::from_str_radix(&m, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| {
                        invalid(format!("invalid chmod parameter {m:?}: use an octal mode such as 755"))
                    })?),
                    None => None,
                };
                let image_tree = self.tree_of(stage.image.as_ref());
                let owner = match ins.flag("chown") {
                    Some(c) => Some(chown_ids(&expand(&c, stage)?, &image_tree)?),
                    None => None,
                };
                // where the sources are read from
                let from = ins.flag("from");
                let from_tree;
                let src_tree: &Tree = match &from {
                    None => &b.ctx,
                    Some(f) => {
                        from_tree = match from_stage.clone().flatten() {
                            Some(img) => self.tree_of(img.as_ref()),
                            None => {
                                self.ensure_image(f, PullPolicy::Missing, &b.pull_options, &|_| {})?;
                                let img = self.images.resolve(f)?;
                                self.tree_of(Some(&img))
                            }
                        };
                        &from_tree
                    }
                };
                let mut puts = Vec::new();
                let mut hash = Sha256::new();
                let mut n_files = 0;
                // how many sources matched, and whether the only one is a directory
                let mut single_dir = false;
                let mut matched = 0;
                for (i, s) in srcs.iter().enumerate() {
                    if add && (s.starts_with("http://") || s.starts_with("https://")) {
                        if b.network.as_deref() == Some("none") {
                            return Err(invalid(format!("ADD {s}: the build's network is none, so no URL is fetched")));
                        }
                        let mut body = Vec::new();
                        moat_registry::fetch_url(s)?
                            .read_to_end(&mut body)
                            .map_err(|e| invalid(format!("ADD {s}: {e}")))?;
                        let name = s.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("index.html");
                        let d = if dest_dir { format!("{dest}/{name}") } else { dest.clone() };
                        hash.update(format!("url {s} {}\n", hex_sha(&body)));
                        puts.push(Put {
                            dest: clean(&d),
                            what: PutKind::Data(body),
                            owner,
                            mode: Some(chmod.unwrap_or(0o600)),
                        });
                        n_files += 1;
                        matched += 1;
                        continue;
                    }
                    if let Some(h) = s.strip_prefix("<<").and_then(|n| {
                        ins.heredocs.iter().find(|h| h.name == n.trim_start_matches('-').trim_matches(['"', '\'']))
                    }) {
                        let body = if h.expand {
                            expand(&h.body, stage).unwrap_or_else(|_| h.body.clone())
                        } else {
                            h.body.clone()
                        };
                        let d = if dest_dir || srcs.len() > 1 { format!("{dest}/{}", h.name) } else { dest.clone() };
                        hash.update(format!("heredoc {i} {}\n", hex_sha(body.as_bytes())));
                        puts.push(Put {
                            dest: clean(&d),
                            what: PutKind::Data(body.into_bytes()),
                            owner,
                            mode: Some(chmod.unwrap_or(0o644)),
                        });
                        n_files += 1;
                        matched += 1;
                        continue;
                    }
                    let rel = clean(s);
                    if from.is_none() && escapes(s) {
                        return Err(invalid(format!("forbidden path outside the build context: {s}")));
                    }
                    let matches: Vec<String> = if has_glob(&rel) { src_tree.glob(&rel)? } else { vec![rel.clone()] };
                    matched += matches.len();
                    if let [only] = matches.as_slice() {
                        single_dir = src_tree.stat(only).is_some_and(|f| f.meta.is_dir());
                    }
                    let mut any = false;
                    for m in matches {
                        let Some(top) = src_tree.stat(&m) else { continue };
                        any = true;
                        let multiple = srcs.len() > 1 || has_glob(&rel);
                        if top.meta.is_dir() {
                            // a directory's content is copied, not the directory
                            for f in src_tree.walk(&m) {
                                let sub = f.rel.strip_prefix(&m).unwrap_or(&f.rel).trim_start_matches('/').to_string();
                                let d = if sub.is_empty() { dest.clone() } else { format!("{dest}/{sub}") };
                                hash_found(&mut hash, &d, &f);
                                n_files += 1;
                                puts.push(Put { dest: clean(&d), what: PutKind::Host(f.host), owner, mode: chmod });
                            }
                            continue;
                        }
                        if multiple && !dest_dir {
                            return Err(invalid(format!("When using {kw} with more than one source file, the destination must be a directory and end with a /")));
                        }
                        let base =
                            Path::new(&m).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        if add && top.meta.is_file() && is_archive(&top.host) {
                            // a local archive is unpacked at the destination
                            let stage_dir = b.scratch.join(format!("add-{}", puts.len()));
                            std::fs::create_dir_all(&stage_dir)
                                .map_err(EngineError::io("create a directory for ADD"))?;
                            let f = open_nofollow(&top.host).map_err(EngineError::io("open the archive"))?;
                            let r = moat_image::compress::decompress(f).map_err(moat_image::ImageError::from)?;
                            moat_image::unpack::unpack(
                                r,
                                &stage_dir,
                                moat_image::unpack::Kind::Plain,
                                self.images.limits,
                            )
                            .map_err(|e| invalid(format!("ADD {m}: cannot unpack the archive: {e}")))?;
                            hash_found(&mut hash, &dest, &top);
                            let t = Tree::layers(vec![stage_dir]);
                            for f in t.walk("") {
                                let d = if f.rel.is_empty() { dest.clone() } else { format!("{dest}/{}", f.rel) };
                                n_files += 1;
                                puts.push(Put {
                                    dest: clean(&d),
                                    what: PutKind::Host(f.host),
                                    owner: None,
                                    mode: None,
                                });
                            }
                            continue;
                        }
                        let d = if dest_dir { format!("{dest}/{base}") } else { dest.clone() };
                        hash_found(&mut hash, &d, &top);
                        n_files += 1;
                        puts.push(Put { dest: clean(&d), what: PutKind::Host(top.host), owner, mode: chmod });
                    }
                    if !any {
                        return Err(invalid(match &from {
                            None => format!("COPY failed: file not found in build context or excluded by .dockerignore: stat {s}: file does not exist"),
                            Some(f) => format!("COPY failed: stat {s} in {f}: file does not exist"),
                        }));
                    }
                }
                if n_files == 0 && !has_glob(&dest_raw) {
                    // an empty directory still creates the destination
                    puts.push(Put { dest: dest.clone(), what: PutKind::Dir, owner, mode: None });
                }
                key_extra = format!("{}|{:?}|{:?}|{:?}", hex::encode(hash.finalize()), owner, chmod, from);
                let digest_short = &key_extra[..12];
                // Docker's words: one file, one directory, or several sources
                let kind = match (matched, single_dir) {
                    (1, true) => "dir",
                    (1, false) => "file",
                    _ => "multi",
                };
                created_by = nop(&stage.shell, &format!("{kw} {kind}:{digest_short} in {dest_raw} "));
                action = Action::Files(puts);
            }
            other => return Err(invalid(format!("unknown instruction: {other}"))),
        }
        // the step's key: parent, instruction after expansion, what it sees
        let stage = b.stages.last().ok_or_else(|| invalid("no stage"))?;
        let parent = stage.image.as_ref().map(|i| i.id.to_string()).unwrap_or_else(|| "scratch".into());
        let config = Value::Object(stage.config.clone());
        let key = hex_sha(
            format!(
                "moat-build-1\n{parent}\n{created_by}\n{config}\n{key_extra}\n{:?}\n{:?}",
                stage.author, stage.args
            )
            .as_bytes(),
        );
        if !b.no_cache {
            if let Some(id) = self.images.store().build_cache_get(&key)? {
                if let Some(img) = self.images.store().image(&id)? {
                    line(" ---> Using cache\n".into());
                    line(format!(" ---> {}\n", img.id.short()));
                    if let Some(s) = b.stages.last_mut() {
                        s.image = Some(img);
                    }
                    return Ok(());
                }
            }
        }
        let info = moat_image::CommitInfo {
            config,
            created_by,
            author: stage.author.clone().unwrap_or_default(),
            ..Default::default()
        };
        let parent_img = stage.image.clone();
        let id = match action {
            Action::Meta => self.images.derive(parent_img.as_ref(), None, info)?,
            Action::Files(puts) => {
                let tree = self.tree_of(parent_img.as_ref());
                let mut f = tempfile::tempfile_in(&b.scratch).map_err(EngineError::io("create a layer file"))?;
                files_layer(&tree, &puts, &mut f).map_err(EngineError::io("write the layer"))?;
                f.rewind().map_err(EngineError::io("rewind the layer"))?;
                self.images.derive(parent_img.as_ref(), Some(&mut f), info)?
            }
            Action::Run { argv, env } => {
                let img = parent_img.as_ref().ok_or_else(|| invalid("RUN needs an image"))?;
                self.run_step(b, img, argv, env, info, progress)?
            }
        };
        if let Some(p) = &parent_img {
            if p.id != id {
                self.images.store_mut().set_image_parent(&id, &p.id)?;
            }
        }
        self.images.store_mut().build_cache_put(&key, &id)?;
        moat_core::crash::point("build.step.cached");
        let img =
            self.images.store().image(&id)?.ok_or_else(|| EngineError::NotFound(format!("image {id} vanished")))?;
        line(format!(" ---> {}\n", img.id.short()));
        if let Some(s) = b.stages.last_mut() {
            s.image = Some(img);
        }
        Ok(())
    }

    /// `FROM`: a new stage on an image, an earlier stage or nothing.
    fn from(
        &mut self,
        b: &mut Builder,
        ins: &Instruction,
        progress: &(dyn Fn(BuildEvent) + Sync),
    ) -> Result<(), EngineError> {
        ins.check_flags(&["platform"]).map_err(invalid)?;
        let meta = |n: &str| b.meta_args.get(n).cloned().flatten();
        let words = lex::process_words(&ins.rest, &meta, b.escape).map_err(|e| invalid(e.to_string()))?;
        let (image, name) = match words.as_slice() {
            [i] => (i.clone(), None),
            [i, a, n] if a.eq_ignore_ascii_case("as") => (i.clone(), Some(n.to_ascii_lowercase())),
            _ => return Err(invalid("FROM requires either one or three arguments (FROM IMAGE [AS NAME])")),
        };
        if let Some(p) = ins.flag("platform") {
            let p = lex::process_word(&p, &meta, b.escape).map_err(|e| invalid(e.to_string()))?;
            let host = moat_registry::manifest::Platform::host();
            let want = moat_registry::manifest::Platform::parse(&p)?;
            if want.os != host.os || want.architecture != host.architecture {
                return Err(EngineError::Unsupported(format!("FROM --platform={p}: moat builds for {host} only")));
            }
        }
        if image.is_empty() {
            return Err(invalid(format!("base name ({}) should not be blank", ins.rest)));
        }
        let img = match b.stage_image(&image) {
            Some(i) => i,
            None if image == "scratch" => None,
            None => {
                let policy = if b.pull { PullPolicy::Always } else { PullPolicy::Missing };
                let report = |e: crate::registry::PullEvent| {
                    if let crate::registry::PullEvent::Status(s) = e {
                        progress(BuildEvent::Line(format!("{s}\n")));
                    }
                };
                self.ensure_image(&image, policy, &b.pull_options, &report)?;
                Some(self.images.resolve(&image)?)
            }
        };
        let config: Map<String, Value> = img
            .as_ref()
            .and_then(|i| serde_json::from_slice::<Value>(&i.config).ok())
            .and_then(|v| v.get("config").and_then(|c| c.as_object().cloned()))
            .unwrap_or_default();
        let mut config = config;
        // a stage without PATH gets the default one (BuildKit's and buildah's way)
        let env: Vec<String> =
            config.get("Env").and_then(|e| serde_json::from_value(e.clone()).ok()).unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            let mut env = env;
            env.insert(0, DEFAULT_PATH.to_string());
            config.insert("Env".into(), json!(env));
        }
        let shell: Vec<String> = config
            .get("Shell")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .filter(|s: &Vec<String>| !s.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
        let author = img
            .as_ref()
            .and_then(|i| serde_json::from_slice::<Value>(&i.config).ok())
            .and_then(|v| v.get("author").and_then(|a| a.as_str()).map(str::to_string));
        b.stages.push(Stage { name, image: img, config, author, args: BTreeMap::new(), shell, cmd_set: false });
        Ok(())
    }

    /// Runs a `RUN` step's container, commits its changes, removes it.
    fn run_step(
        &mut self,
        b: &Builder,
        img: &ImageRecord,
        argv: Vec<String>,
        env: Vec<String>,
        info: moat_image::CommitInfo,
        progress: &(dyn Fn(BuildEvent) + Sync),
    ) -> Result<Digest, EngineError> {
        let config = ContainerConfig {
            image: img.id.to_string(),
            entrypoint: vec![String::new()],
            cmd: argv.clone(),
            env,
            isolation: Some(b.isolation),
            network: b.network.clone().unwrap_or_default(),
            build_step: true,
            labels: BTreeMap::from([("moat.build.step".to_string(), "true".to_string())]),
            ..Default::default()
        };
        let c = self.create(CreateRequest { name: None, config, networks: Vec::new() })?;
        let id = c.id().to_string();
        moat_core::crash::point("build.step.container");
        progress(BuildEvent::Line(format!(" ---> Running in {}\n", &id[..12])));
        let result = (|| {
            let (_, mut s) = self.start(&id)?;
            s.attach(AttachOptions::default())?;
            let mut exit = None;
            while let Some(ev) = s.next_event()? {
                match ev {
                    SessionEvent::Stdout(d) | SessionEvent::Stderr(d) => progress(BuildEvent::Output(d)),
                    SessionEvent::Exit { code, .. } => {
                        exit = Some(code);
                        break;
                    }
                    SessionEvent::Error(m) => progress(BuildEvent::Output(format!("{m}\n").into_bytes())),
                }
            }
            let code = match exit {
                Some(c) => c,
                None => {
                    crate::client::wait_shim_gone(&self.layout, &id);
                    self.get(&id)?.state.exit_code
                }
            };
            if code != 0 {
                return Err(invalid(format!("The command '{}' returned a non-zero code: {code}", argv.join(" "))));
            }
            crate::client::wait_shim_gone(&self.layout, &id);
            let c = self.get(&id)?;
            let mut f = tempfile::tempfile_in(&b.scratch).map_err(EngineError::io("create a layer file"))?;
            self.changes_layer(&c, &mut f)?;
            moat_core::crash::point("build.step.layer");
            f.rewind().map_err(EngineError::io("rewind the layer"))?;
            Ok(self.images.derive(Some(img), Some(&mut f), info)?)
        })();
        if ((result.is_ok() && b.remove) || b.force_remove) && self.remove(&id, true, true).is_ok() {
            progress(BuildEvent::Line(format!("Removing intermediate container {}\n", &id[..12])));
        }
        result
    }

    /// The root filesystem of an image (or nothing, for scratch).
    fn tree_of(&self, img: Option<&ImageRecord>) -> Tree {
        match img {
            Some(i) => Tree::layers(i.diff_ids.iter().rev().map(|d| self.layout.layer(d.hex())).collect()),
            None => Tree::default(),
        }
    }

    /// Forgets the build cache and removes the intermediate images only it
    /// kept (untagged, unused, not the base of a container): `builder prune`.
    pub fn build_prune(&mut self) -> Result<BuildPruneReport, EngineError> {
        let mut rep = BuildPruneReport::default();
        let ids = self.images.store().build_cache_images()?;
        rep.entries = self.images.store_mut().build_cache_clear()?;
        moat_core::crash::point("builder.prune.forgotten");
        for id in ids {
            let Some(img) = self.images.store().image(&id)? else { continue };
            if !img.tags.is_empty() || !self.images.store().containers_using(&id)?.is_empty() {
                continue;
            }
            // a named image made from it keeps its own layers: it is whole without it
            self.images.store_mut().forget_children(&id)?;
            self.images.store_mut().delete_image(&id)?;
            rep.images.push(id);
        }
        rep.reclaimed = self.images.gc()?;
        Ok(rep)
    }
}

/// Whether relative path `s` climbs above its top with `..`.
fn escapes(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

/// Adds a source's identity to a step's key: path, type, mode, owner,
/// size and content (never its times).
fn hash_found(h: &mut Sha256, dest: &str, f: &Found) {
    let m = &f.meta;
    let mut line = format!("{dest} {:o} {}:{} {}", m.mode(), m.uid(), m.gid(), m.len());
    if m.file_type().is_symlink() {
        line.push_str(&format!(
            " -> {}",
            std::fs::read_link(&f.host).map(|p| p.display().to_string()).unwrap_or_default()
        ));
    } else if m.is_file() {
        let mut s = Sha256::new();
        if let Ok(mut file) = open_nofollow(&f.host) {
            let _ = std::io::copy(&mut file, &mut s);
        }
        line.push_str(&format!(" {}", hex::encode(s.finalize())));
    }
    h.update(line.as_bytes());
    h.update(b"\n");
}

/// State of one build.
struct Builder {
    req_args: BTreeMap<String, Option<String>>,
    used_args: BTreeSet<String>,
    /// `ARG`s before the first `FROM`.
    meta_args: BTreeMap<String, Option<String>>,
    escape: char,
    stages: Vec<Stage>,
    ctx: Tree,
    no_cache: bool,
    pull: bool,
    isolation: Isolation,
    network: Option<String>,
    remove: bool,
    force_remove: bool,
    pull_options: PullOptions,
    scratch: PathBuf,
}

impl Builder {
    /// An earlier stage by name or index: `Some(image)` (`None` inside
    /// for a stage still empty `FROM scratch`).
    fn stage_image(&self, name: &str) -> Option<Option<ImageRecord>> {
        let lower = name.to_ascii_lowercase();
        if let Some(s) = self.stages.iter().find(|s| s.name.as_deref() == Some(lower.as_str())) {
            return Some(s.image.clone());
        }
        name.parse::<usize>().ok().and_then(|i| self.stages.get(i)).map(|s| s.image.clone())
    }
}

/// Writes a layer of `puts` over `image`: each new entry's missing parent
/// directories (0755, the entry's owner) and, for parents the image has,
/// their entries as the image has them (so a layer never changes the
/// mode of `/tmp` by passing through it).
fn files_layer(image: &Tree, puts: &[Put], w: impl Write) -> std::io::Result<()> {
    let mut p = moat_image::pack::Packer::new(w);
    let mut done: BTreeSet<String> = BTreeSet::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dir_header = |mode: u32, owner: (u64, u64), mtime: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(mtime);
        h.set_size(0);
        h
    };
    for put in puts {
        // parents first
        let comps: Vec<&str> = put.dest.split('/').filter(|c| !c.is_empty()).collect();
        for i in 1..comps.len() {
            let parent = comps[..i].join("/");
            if !done.insert(parent.clone()) {
                continue;
            }
            match image.stat(&parent) {
                Some(f) if f.meta.is_dir() => {
                    p.set_override(None, None);
                    p.append_path(&f.host, Path::new(&parent))?;
                }
                _ => {
                    let mut h = dir_header(0o755, put.owner.unwrap_or((0, 0)), now);
                    p.append_data(&mut h, Path::new(&format!("{parent}/")), std::io::empty())?;
                }
            }
        }
        if put.dest.is_empty() || !done.insert(put.dest.clone()) && matches!(put.what, PutKind::Dir) {
            continue;
        }
        match &put.what {
            PutKind::Host(host) => {
                p.set_override(put.owner.or(Some((0, 0))), put.mode);
                p.append_path(host, Path::new(&put.dest))?;
                p.set_override(None, None);
            }
            PutKind::Dir => {
                let mut h = dir_header(put.mode.unwrap_or(0o755), put.owner.unwrap_or((0, 0)), now);
                p.append_data(&mut h, Path::new(&format!("{}/", put.dest)), std::io::empty())?;
            }
            PutKind::Data(data) => {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(put.mode.unwrap_or(0o644));
                let (u, g) = put.owner.unwrap_or((0, 0));
                h.set_uid(u);
                h.set_gid(g);
                h.set_mtime(now);
                h.set_size(data.len() as u64);
                p.append_data(&mut h, Path::new(&put.dest), &data[..])?;
            }
        }
    }
    p.finish().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formats() {
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(60_000_000_000), "1m0s");
        assert_eq!(go_duration(5_000_000_000), "5s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(0), "0s");
        let h = json!({"Test": ["CMD-SHELL", "test -e /tmp || exit 1"], "Interval": 5_000_000_000i64, "Timeout": 3_000_000_000i64, "StartPeriod": 60_000_000_000i64, "Retries": 2});
        assert_eq!(go_healthcheck(&h), r#"&{["CMD-SHELL" "test -e /tmp || exit 1"] "5s" "3s" "1m0s" '\x02'}"#);
        assert_eq!(go_healthcheck(&json!({"Test": ["NONE"]})), r#"&{["NONE"] "0s" "0s" "0s" '\x00'}"#);
        assert_eq!(go_quoted_list(&["cat".into(), "/out".into()]), r#"["cat" "/out"]"#);
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ns("30s").ok(), Some(30_000_000_000));
        assert_eq!(duration_ns("1m30s").ok(), Some(90_000_000_000));
        assert_eq!(duration_ns("500ms").ok(), Some(500_000_000));
        assert!(duration_ns("5").is_err());
        assert!(duration_ns("5x").is_err());
    }
}
