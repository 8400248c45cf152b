//! Docker's string syntaxes for container options — `HOST:CTR[:ro]`,
//! `PATH[:OPTS]`, `[IP:]HOST:CTR[/proto]`, `NAME=SOFT[:HARD]`,
//! `on-failure[:N]`, sizes, `KEY=VALUE` files — parsed once, for the CLI's
//! flags and the API's string fields (`HostConfig.Binds`, ...) alike.

use crate::config::{MountKind, MountSpec, NetworkAttachment, RestartPolicy};
use crate::EngineError;
use moat_core::isolation::IsolationRequest;
use moat_core::Isolation;
use std::path::{Path, PathBuf};

fn invalid(m: impl Into<String>) -> EngineError {
    EngineError::Invalid(m.into())
}

/// A host path of a bind mount: absolute, or relative (`./x`, `../x`, `.`)
/// to `cwd` when the front end has one (the CLI; the API has none).
fn host_path(src: &str, cwd: Option<&Path>, spec: &str) -> Result<String, EngineError> {
    if src.starts_with('/') {
        return Ok(src.to_string());
    }
    match cwd {
        Some(c) => Ok(clean(&c.join(src)).display().to_string()),
        None => Err(invalid(format!("invalid mount config {spec}: the host path must be absolute"))),
    }
}

/// `a/./b/../c` → `a/c`, without touching the filesystem.
fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Docker's rule for volume names.
pub fn volume_name(n: &str) -> Result<(), EngineError> {
    if n.len() > 255 {
        // the volume is a directory named after it: no file system takes more
        return Err(invalid(format!("volume name of {} bytes is too long: at most 255", n.len())));
    }
    let mut chars = n.chars();
    let ok = n.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{n:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
        )))
    }
}

fn propagation(p: &str) -> bool {
    matches!(p, "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave")
}

/// `-v [SOURCE:]TARGET[:OPTIONS]`: a bind of a host path (absolute, or
/// relative to `cwd`), a named volume, or (target only) an anonymous
/// volume. Options: `ro`, `rw`, `z`, `Z`, `nocopy`, a propagation mode, and
/// macOS's `consistent`/`cached`/`delegated` (no meaning on Linux).
pub fn volume(v: &str, cwd: Option<&Path>) -> Result<MountSpec, EngineError> {
    let parts: Vec<&str> = v.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [d] => ("", *d, ""),
        [s, d] if d.starts_with('/') => (*s, *d, ""),
        [d, o] if d.starts_with('/') => ("", *d, *o),
        [s, d, o] => (*s, *d, *o),
        _ => return Err(invalid(format!("invalid volume specification: {v:?}"))),
    };
    if !dst.starts_with('/') {
        return Err(invalid(format!("invalid volume specification: {v:?}: the container path must be absolute")));
    }
    let mut m = MountSpec { target: dst.to_string(), ..Default::default() };
    if src.is_empty() {
        m.kind = MountKind::Volume;
        m.anonymous = true;
    } else if src.starts_with('/') || src.starts_with('.') {
        m.kind = MountKind::Bind;
        m.source = host_path(src, cwd, &format!("{v:?}"))?;
        m.create_source = true;
    } else {
        volume_name(src)?;
        m.kind = MountKind::Volume;
        m.source = src.to_string();
    }
    // Docker's rule: at most one of each kind of mode (`ro,rw` is no mode)
    let kinds = |o: &str| match o {
        "ro" | "rw" => 1,
        "z" | "Z" => 2,
        "nocopy" => 3,
        "consistent" | "cached" | "delegated" => 4,
        p if propagation(p) => 5,
        _ => 0,
    };
    let modes: Vec<&str> = opts.split(',').filter(|o| !o.is_empty()).collect();
    for (i, o) in modes.iter().enumerate() {
        let k = kinds(o);
        if k != 0 && modes[..i].iter().any(|p| kinds(p) == k) {
            return Err(invalid(format!(
                "invalid mode {opts:?} in volume specification {v:?}: conflicting or repeated"
            )));
        }
    }
    for o in modes {
        match o {
            "ro" => m.readonly = true,
            "rw" => m.readonly = false,
            "z" | "Z" => m.relabel = o.to_string(),
            "nocopy" if m.kind == MountKind::Volume => m.nocopy = true,
            "consistent" | "cached" | "delegated" => {}
            p if propagation(p) && m.kind == MountKind::Bind => m.propagation = p.to_string(),
            o => return Err(invalid(format!("invalid mode {o:?} in volume specification {v:?}"))),
        }
    }
    Ok(m)
}

/// What one `--mount` value adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountArg {
    /// A bind or a volume.
    Mount(MountSpec),
    /// A tmpfs: target and mount options.
    Tmpfs(String, String),
}

/// One mount as Docker's `--mount` flag and the API's `HostConfig.Mounts`
/// describe it, before the engine checks it ([`MountOptions::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// `bind`, `volume` or `tmpfs`.
    pub kind: String,
    /// Host path (bind) or volume name (empty: an anonymous volume).
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Read-only.
    pub readonly: bool,
    /// A volume not filled from the image.
    pub nocopy: bool,
    /// A bind's propagation (`rprivate`, `rslave`, ...).
    pub propagation: String,
    /// SELinux relabelling (`z`, `Z`).
    pub relabel: String,
    /// A tmpfs's size (bytes or with a unit).
    pub tmpfs_size: Option<String>,
    /// A tmpfs's mode (octal).
    pub tmpfs_mode: Option<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            kind: "volume".into(),
            source: String::new(),
            target: String::new(),
            readonly: false,
            nocopy: false,
            propagation: String::new(),
            relabel: String::new(),
            tmpfs_size: None,
            tmpfs_mode: None,
        }
    }
}

impl MountOptions {
    /// `--mount type=bind|volume|tmpfs,source=..,target=..,readonly,...` (Docker's keys).
    pub fn parse(spec: &str) -> Result<MountOptions, EngineError> {
        let mut m = MountOptions::default();
        let bool_of = |k: &str, v: Option<&str>| match v {
            None | Some("1") | Some("true") => Ok(true),
            Some("0") | Some("false") => Ok(false),
            Some(v) => Err(invalid(format!("invalid value for {k}: {v:?}"))),
        };
        for field in spec.split(',').filter(|f| !f.is_empty()) {
            let (k, v) = match field.split_once('=') {
                Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
                None => (field.trim().to_ascii_lowercase(), None),
            };
            let need = |v: Option<&str>| {
                v.map(str::to_string)
                    .ok_or_else(|| invalid(format!("invalid field {field:?} in --mount {spec:?}: a value is required")))
            };
            match k.as_str() {
                "type" => m.kind = need(v)?,
                "source" | "src" => m.source = need(v)?,
                "target" | "destination" | "dst" => m.target = need(v)?,
                "readonly" | "ro" => m.readonly = bool_of(&k, v)?,
                "volume-nocopy" => m.nocopy = bool_of(&k, v)?,
                "bind-propagation" => m.propagation = need(v)?,
                "z" | "relabel" | "bind-selinux-relabel" => m.relabel = need(v).unwrap_or_else(|_| "z".into()),
                "volume-driver" if v != Some("local") => {
                    return Err(EngineError::Unsupported(format!(
                        "volume driver {:?} is not available: moat has the local driver only",
                        v.unwrap_or_default()
                    )))
                }
                "consistency" | "volume-driver" => {}
                "tmpfs-size" => m.tmpfs_size = Some(need(v)?),
                "tmpfs-mode" => m.tmpfs_mode = Some(need(v)?),
                "volume-label" | "volume-opt" | "bind-recursive" | "bind-nonrecursive" => {
                    return Err(EngineError::Unsupported(format!("--mount {k} is not supported yet")))
                }
                _ => return Err(invalid(format!("unexpected key {k:?} in --mount {spec:?}"))),
            }
        }
        Ok(m)
    }

    /// The mount the engine records, checked: `what` names it in errors
    /// (the flag's text or the API's field); a relative bind source is
    /// taken from `cwd` (the CLI's), refused without one.
    pub fn resolve(self, what: &str, cwd: Option<&Path>) -> Result<MountArg, EngineError> {
        let MountOptions { kind, source: src, target: dst, readonly: ro, nocopy, propagation: prop, relabel, .. } =
            self;
        let spec = what;
        if dst.is_empty() {
            return Err(invalid(format!("invalid {spec}: target is required")));
        }
        if !dst.starts_with('/') {
            return Err(invalid(format!("invalid {spec}: the target must be an absolute path")));
        }
        if !prop.is_empty() && (kind != "bind" || !propagation(&prop)) {
            return Err(invalid(format!("invalid {spec}: bind-propagation {prop:?} needs type=bind and one of rprivate, private, rslave, slave, rshared, shared")));
        }
        match kind.as_str() {
            "bind" => {
                if src.is_empty() {
                    return Err(invalid(format!("invalid {spec}: source is required for type=bind")));
                }
                let source = host_path(&src, cwd, spec)?;
                Ok(MountArg::Mount(MountSpec {
                    kind: MountKind::Bind,
                    source,
                    target: dst,
                    readonly: ro,
                    propagation: prop,
                    relabel,
                    ..Default::default()
                }))
            }
            "volume" => {
                if !src.is_empty() {
                    volume_name(&src)?;
                }
                let anonymous = src.is_empty();
                Ok(MountArg::Mount(MountSpec {
                    kind: MountKind::Volume,
                    source: src,
                    target: dst,
                    readonly: ro,
                    nocopy,
                    anonymous,
                    ..Default::default()
                }))
            }
            "tmpfs" => {
                if !src.is_empty() {
                    return Err(invalid(format!("invalid {spec}: type=tmpfs takes no source")));
                }
                let mut opts: Vec<String> = self.tmpfs_size.iter().map(|s| format!("size={s}")).collect();
                opts.extend(self.tmpfs_mode.iter().map(|m| format!("mode={m}")));
                if ro {
                    opts.push("ro".into());
                }
                Ok(MountArg::Tmpfs(dst, opts.join(",")))
            }
            k => Err(EngineError::Unsupported(format!("mount type={k} is not supported: use bind, volume or tmpfs"))),
        }
    }
}

/// `--mount type=bind|volume|tmpfs,source=..,target=..,readonly,...` (Docker's keys).
pub fn mount(spec: &str, cwd: Option<&Path>) -> Result<MountArg, EngineError> {
    MountOptions::parse(spec)?.resolve(&format!("--mount {spec:?}"), cwd)
}

/// `--tmpfs PATH[:OPTIONS]`.
pub fn tmpfs(t: &str) -> Result<(String, String), EngineError> {
    let (p, o) = t.split_once(':').unwrap_or((t, ""));
    if !p.starts_with('/') {
        return Err(invalid(format!("invalid tmpfs {t:?}: the path must be absolute")));
    }
    Ok((p.to_string(), o.to_string()))
}

/// `-p [IP:][HOST[-END]:]CONTAINER[-END][/tcp|udp]`: one mapping per port.
pub fn publish(p: &str) -> Result<Vec<moat_net::PortMap>, EngineError> {
    Ok(moat_net::parse_publish(p)?)
}

/// `--network NAME` or Docker's long form
/// `--network name=NAME[,ip=IPV4][,mac-address=MAC][,alias=A]...`.
pub fn network(n: &str) -> Result<NetworkAttachment, EngineError> {
    if !n.contains('=') {
        return Ok(NetworkAttachment { switch: n.to_string(), ..Default::default() });
    }
    let mut a = NetworkAttachment::default();
    for field in n.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        match k.trim() {
            "name" => a.switch = v.to_string(),
            "alias" => a.aliases.push(v.to_string()),
            "ip" => {
                a.ip = Some(
                    v.parse().map_err(|_| invalid(format!("invalid --network {n:?}: {v:?} is not an IPv4 address")))?,
                )
            }
            "mac-address" => a.mac = Some(v.to_string()),
            "ip6" | "link-local-ip" | "driver-opt" | "gw-priority" => {
                return Err(EngineError::Unsupported(format!("--network {k}= is not supported")))
            }
            _ => {
                return Err(invalid(format!(
                    "invalid --network {n:?}: unknown key {k:?} (use name, ip, mac-address, alias)"
                )))
            }
        }
    }
    if a.switch.is_empty() {
        return Err(invalid(format!("invalid --network {n:?}: name= is required")));
    }
    Ok(a)
}

/// One of the API's `PortBindings` (host IP, host port, `PORT[/PROTO]`;
/// empty parts unset): the same rules as `-p`.
pub fn port_binding(host_ip: &str, host_port: &str, container: &str) -> Result<Vec<moat_net::PortMap>, EngineError> {
    Ok(moat_net::port_binding(host_ip, host_port, container)?)
}

/// `--device HOST[:CONTAINER[:PERMISSIONS]]` (resolved on this host).
pub fn device(d: &str) -> Result<moat_runtime::devices::DeviceNode, EngineError> {
    Ok(moat_runtime::devices::parse_device(d)?)
}

/// `--ulimit NAME=SOFT[:HARD]`.
pub fn ulimit(u: &str) -> Result<moat_runtime::spec::Rlimit, EngineError> {
    moat_runtime::spec::parse_ulimit(u).map_err(EngineError::Invalid)
}

/// `--restart no|on-failure[:N]|always|unless-stopped`.
pub fn restart(r: &str) -> Result<RestartPolicy, EngineError> {
    r.parse().map_err(EngineError::Invalid)
}

/// `--isolation process|hyperv|vm|default` (`None` for the engine's default).
pub fn isolation(i: &str) -> Result<Option<Isolation>, EngineError> {
    match i.parse::<IsolationRequest>().map_err(|e| invalid(e.to_string()))? {
        IsolationRequest::Default => Ok(None),
        IsolationRequest::Explicit(i) => Ok(Some(i)),
    }
}

/// The isolation a `--runtime` names, given with `--isolation` (`default`
/// when none): `process` and `hyperv` (alias `vm`) are the runtimes `info`
/// lists; `runc` and `moat` leave the isolation to `--isolation`. Any other
/// runtime, and a runtime that contradicts `--isolation`, is refused.
pub fn runtime(runtime: &str, isolation: Option<Isolation>) -> Result<Option<Isolation>, EngineError> {
    let named = match runtime {
        "" | "runc" | "moat" => return Ok(isolation),
        "process" => Isolation::Process,
        "hyperv" | "vm" => Isolation::Hyperv,
        other => {
            return Err(invalid(format!(
                "unknown or invalid runtime name: {other} (moat's runtimes are process and hyperv; runc and moat take --isolation)"
            )))
        }
    };
    match isolation {
        Some(i) if i != named => Err(invalid(format!(
            "conflicting options: runtime {runtime} and isolation {i} (the runtime is the isolation type)"
        ))),
        _ => Ok(Some(named)),
    }
}

/// `--link NAME[:ALIAS]` (a leading `/` of either is dropped); the name is
/// resolved to the container's ID at create.
pub fn link(s: &str) -> Result<crate::config::Link, EngineError> {
    let (name, alias) = s.split_once(':').unwrap_or((s, ""));
    let name = name.trim_start_matches('/');
    // dockerd's own form in inspect: `/child:/parent/alias`
    let alias = alias.rsplit('/').next().unwrap_or_default();
    if name.is_empty() {
        return Err(invalid(format!("invalid link {s:?}: use NAME[:ALIAS]")));
    }
    Ok(crate::config::Link { id: name.to_string(), alias: alias.to_string() })
}

/// `--expose PORT[/PROTO]` or `START-END[/PROTO]` (tcp by default).
pub fn expose(s: &str) -> Result<Vec<(u16, String)>, EngineError> {
    let bad = || invalid(format!("invalid --expose {s:?}: use PORT[/PROTO] or START-END[/PROTO]"));
    let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    if !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    let (lo, hi): (u16, u16) = match ports.split_once('-') {
        Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
        None => {
            let p = ports.parse().map_err(|_| bad())?;
            (p, p)
        }
    };
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| (p, proto.to_string())).collect())
}

/// `--device-cgroup-rule "TYPE MAJOR:MINOR ACCESS"` (`c 1:3 rwm`, `b 8:* r`,
/// `a *:* m`): one more rule of the container's device allow-list.
pub fn device_cgroup_rule(s: &str) -> Result<moat_runtime::devices::DeviceRule, EngineError> {
    use moat_runtime::devices::{DevKind, DeviceRule};
    let bad = || invalid(format!("invalid device cgroup rule {s:?}: use TYPE MAJOR:MINOR ACCESS, e.g. 'c 1:3 rwm'"));
    let f: Vec<&str> = s.split_whitespace().collect();
    let [kind, nums, access] = f.as_slice() else { return Err(bad()) };
    let kind = match *kind {
        "c" => DevKind::Char,
        "b" => DevKind::Block,
        "a" => DevKind::All,
        _ => return Err(bad()),
    };
    let (maj, min) = nums.split_once(':').ok_or_else(bad)?;
    let num = |n: &str| -> Result<Option<u32>, EngineError> {
        if n == "*" {
            Ok(None)
        } else {
            n.parse().map(Some).map_err(|_| bad())
        }
    };
    if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
        return Err(bad());
    }
    Ok(DeviceRule::new(kind, num(maj)?, num(min)?, access))
}

/// `--memory-swappiness`: 0 to 100, or -1 for the kernel's default (none).
pub fn swappiness(s: i64) -> Result<Option<u64>, EngineError> {
    match s {
        -1 => Ok(None),
        0..=100 => Ok(Some(s as u64)),
        _ => Err(invalid(format!("invalid value: {s}, valid memory swappiness range is 0-100"))),
    }
}

/// The refusal of a CPU count this host cannot give.
pub fn cpus_out_of_range() -> EngineError {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    invalid(format!("range of CPUs is from 0.01 to {n}.00, as there are only {n} CPUs available"))
}

/// `--cpus 1.5` as Docker's `NanoCpus` (the range is the engine's check).
pub fn nano_cpus(c: f64) -> Result<i64, EngineError> {
    let n = (c * 1e9).round();
    if !n.is_finite() || n.abs() > i64::MAX as f64 {
        return Err(cpus_out_of_range());
    }
    Ok(n as i64)
}

/// A size (`64m`, `1.5g`, bytes) for a limit stored as `i64`.
pub fn size(what: &str, s: &str) -> Result<i64, EngineError> {
    let b = moat_core::human::parse_size(s).map_err(|e| invalid(e.to_string()))?;
    bytes(what, b)
}

/// A byte count from a front end, for a limit stored as `i64`.
pub fn bytes(what: &str, b: u64) -> Result<i64, EngineError> {
    i64::try_from(b).map_err(|_| invalid(format!("{what} of {b} bytes is too large")))
}

/// `--label KEY[=VALUE]`.
pub fn label(l: &str) -> (String, String) {
    let (k, v) = l.split_once('=').unwrap_or((l, ""));
    (k.to_string(), v.to_string())
}

/// `-e KEY=VALUE`, or `-e KEY` copying `lookup(KEY)` (skipped when unset).
pub fn env(e: &str, lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    if e.contains('=') {
        Some(e.to_string())
    } else {
        // the caller's value, or the bare KEY, which unsets the image's (Docker's CLI)
        Some(lookup(e).map(|v| format!("{e}={v}")).unwrap_or_else(|| e.to_string()))
    }
}

/// The lines of an `--env-file` (comments and blank lines skipped).
pub fn env_file(path: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Vec<String>, EngineError> {
    // at most 1 MiB (a device like /dev/zero would be read for ever)
    const MAX: u64 = 1 << 20;
    let mut text = String::new();
    let f = std::fs::File::open(path).map_err(|e| invalid(format!("cannot read env file {path}: {e}")))?;
    std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX + 1), &mut text)
        .map_err(|e| invalid(format!("cannot read env file {path}: {e}")))?;
    if text.len() as u64 > MAX {
        return Err(invalid(format!("env file {path} is larger than 1 MiB")));
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| env(l, &lookup))
        .collect())
}

/// `--detach-keys`: Docker's comma-separated keys (`ctrl-p,ctrl-q`, `a`,
/// `ctrl-@`, `ctrl-[` ...) as the bytes a terminal sends.
pub fn detach_keys(s: &str) -> Result<Vec<u8>, EngineError> {
    let bad =
        |k: &str| invalid(format!("invalid detach key {k:?} in {s:?}: use letters or ctrl-<key>, comma-separated"));
    let mut out = Vec::new();
    for k in s.split(',') {
        let k = k.trim();
        if let Some(c) = k.strip_prefix("ctrl-") {
            let b = match c.as_bytes() {
                [b @ b'a'..=b'z'] => b - b'a' + 1,
                [b'@'] => 0,
                [b'['] => 27,
                [b'\\'] => 28,
                [b']'] => 29,
                [b'^'] => 30,
                [b'_'] => 31,
                _ => return Err(bad(k)),
            };
            out.push(b);
        } else if k.len() == 1 && k.is_ascii() {
            out.push(k.as_bytes()[0]);
        } else {
            return Err(bad(k));
        }
    }
    Ok(out)
}

/// Docker's default detach keys, Ctrl-P Ctrl-Q.
pub const DEFAULT_DETACH_KEYS: &[u8] = &[0x10, 0x11];

/// `-a stdin|stdout|stderr` (several allowed; none: stdout and stderr).
pub fn attach_streams(list: &[String]) -> Result<(bool, bool, bool), EngineError> {
    if list.is_empty() {
        return Ok((false, true, true));
    }
    let mut s = (false, false, false);
    for a in list {
        match a.to_ascii_lowercase().as_str() {
            "stdin" => s.0 = true,
            "stdout" => s.1 = true,
            "stderr" => s.2 = true,
            x => return Err(invalid(format!("invalid argument {x:?} for -a: use stdin, stdout or stderr"))),
        }
    }
    Ok(s)
}

/// A signal name or number.
pub fn signal(s: &str) -> Result<i32, EngineError> {
    crate::client::parse_signal(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_flags_and_typed_mounts() -> Result<(), EngineError> {
        assert_eq!(network("front")?, NetworkAttachment { switch: "front".into(), ..Default::default() });
        assert_eq!(
            network("name=back,ip=10.1.2.3,alias=a,alias=b,mac-address=02:42:ac:11:00:02")?,
            NetworkAttachment {
                switch: "back".into(),
                ip: Some([10, 1, 2, 3].into()),
                mac: Some("02:42:ac:11:00:02".into()),
                aliases: vec!["a".into(), "b".into()],
            }
        );
        let e = |s: &str| network(s).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e("ip=10.1.2.3").contains("name= is required"), "{}", e("ip=10.1.2.3"));
        assert!(e("name=x,ip=nope").contains("not an IPv4 address"));
        assert!(e("name=x,colour=red").contains("unknown key \"colour\""));
        // the API's Mounts entry and the flag's text make the same mount
        let typed = MountOptions {
            kind: "tmpfs".into(),
            target: "/t".into(),
            tmpfs_size: Some("1048576".into()),
            tmpfs_mode: Some("1777".into()),
            readonly: true,
            ..Default::default()
        };
        assert_eq!(
            typed.clone().resolve("Mounts[0]", None)?,
            mount("type=tmpfs,dst=/t,tmpfs-size=1048576,tmpfs-mode=1777,ro", None)?
        );
        assert_eq!(typed.resolve("Mounts[0]", None)?, MountArg::Tmpfs("/t".into(), "size=1048576,mode=1777,ro".into()));
        let rel = MountOptions { kind: "bind".into(), source: "rel".into(), target: "/c".into(), ..Default::default() };
        let e = rel.clone().resolve("HostConfig.Mounts[2]", None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("HostConfig.Mounts[2]: the host path must be absolute"), "{e}");
        assert_eq!(
            rel.resolve("x", Some(Path::new("/home/u")))?,
            MountArg::Mount(MountSpec {
                kind: MountKind::Bind,
                source: "/home/u/rel".into(),
                target: "/c".into(),
                ..Default::default()
            })
        );
        // PortBindings: one entry, the same rules as -p
        assert_eq!(port_binding("127.0.0.1", "8080-8081", "80-81/udp")?, publish("127.0.0.1:8080-8081:80-81/udp")?);
        assert_eq!(port_binding("", "", "80")?, publish("80")?);
        assert!(port_binding("", "8080-8082", "80-81").is_err() && port_binding("", "", "80/sctp").is_err());
        Ok(())
    }

    #[test]
    fn syntaxes() -> Result<(), EngineError> {
        let b = volume("/a:/b:ro", None)?;
        assert_eq!((b.kind, b.source.as_str(), b.target.as_str(), b.readonly), (MountKind::Bind, "/a", "/b", true));
        assert!(b.create_source);
        let n = volume("data:/b:nocopy", None)?;
        assert_eq!((n.kind, n.source.as_str(), n.nocopy, n.anonymous), (MountKind::Volume, "data", true, false));
        let a = volume("/only", None)?;
        assert_eq!((a.kind, a.source.as_str(), a.anonymous), (MountKind::Volume, "", true));
        assert!(volume("/x:ro", None)?.readonly);
        assert_eq!(volume("./d/../e:/b:z,rslave", Some(Path::new("/w")))?.source, "/w/e");
        assert_eq!(volume("/a:/b:Z", None)?.relabel, "Z");
        assert!(volume("./rel:/b", None).is_err(), "no cwd: relative refused");
        assert!(volume("/a:rel", None).is_err() && volume("/a:/b:rx", None).is_err() && volume("a$:/b", None).is_err());
        assert!(volume("v:/b:rslave", None).is_err(), "propagation is for binds");
        assert_eq!(
            mount("type=bind,src=/h,dst=/c,readonly,bind-propagation=rslave", None)?,
            MountArg::Mount(MountSpec {
                source: "/h".into(),
                target: "/c".into(),
                readonly: true,
                propagation: "rslave".into(),
                ..Default::default()
            })
        );
        assert_eq!(mount("type=tmpfs,dst=/t,tmpfs-size=1m", None)?, MountArg::Tmpfs("/t".into(), "size=1m".into()));
        let m = mount("target=/v", None)?;
        assert!(matches!(m, MountArg::Mount(MountSpec { kind: MountKind::Volume, anonymous: true, .. })));
        assert!(mount("type=bind,dst=/c", None).is_err() && mount("type=npipe,dst=/c", None).is_err());
        assert!(mount("type=volume,src=v,dst=/c,bind-propagation=shared", None).is_err());
        assert_eq!(detach_keys("ctrl-p,ctrl-q")?, DEFAULT_DETACH_KEYS);
        assert_eq!(detach_keys("ctrl-x,a")?, vec![24, b'a']);
        assert!(detach_keys("ctrl-1").is_err() && detach_keys("ab").is_err());
        assert_eq!(attach_streams(&["STDOUT".into()])?, (false, true, false));
        assert_eq!(tmpfs("/t:size=1m")?, ("/t".to_string(), "size=1m".to_string()));
        assert_eq!(size("memory", "64m")?, 64 << 20);
        assert!(size("memory", "1e30").is_err());
        assert_eq!(isolation("vm")?, Some(Isolation::Hyperv));
        assert_eq!(isolation("default")?, None);
        assert_eq!(env("A", |_| Some("1".into())), Some("A=1".into()));
        assert_eq!(env("B", |_| None), Some("B".into()), "a bare KEY unsets the image's");
        assert_eq!(label("k"), ("k".to_string(), String::new()));
        assert_eq!(signal("HUP")?, 1);
        Ok(())
    }
}
