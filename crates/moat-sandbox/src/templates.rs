//! VM templates as the engine uses them (see `docs/vm-templates.md`):
//! whether VM containers start from a booted template, the template a
//! container's VM needs (built on first need), and the `moat vm template`
//! operations and views.

use crate::{SandboxError, VmOptions};
use moat_vm::launch::{Role, VmConfig};
use moat_vm::qemu::Version;
use moat_vm::template::{self, Shape, Template};
use serde::Serialize;
use std::path::PathBuf;

/// What every VM of a given size shares: kernel, initramfs, accelerator,
/// binaries and the QEMU version. The per-container fields of `cfg`
/// (root, run dir, taps, cgroups) are empty.
#[derive(Debug, Clone)]
pub struct Base {
    /// The VM's configuration without its per-container parts.
    pub cfg: VmConfig,
    /// The QEMU binary's version.
    pub version: Version,
    /// Guest kernel release.
    pub kernel: String,
}

/// The base of a VM with `mem_mib` MiB and `vcpus` vCPUs.
pub fn base(opts: &VmOptions, mem_mib: u64, vcpus: u32) -> Result<Base, SandboxError> {
    let kdir = opts.kernel_dir.clone();
    let kernel = moat_vm::kernel::current(&kdir)?;
    let agent = opts.agent()?;
    let initramfs = moat_vm::initramfs::build(&kernel, &agent, &kdir)?;
    let (accel, _) = moat_vm::accel::detect();
    let (qemu, virtiofsd) = moat_vm::launch::programs(opts.qemu.as_deref(), opts.virtiofsd.as_deref())?;
    let version = moat_vm::launch::qemu_version_cached(&qemu, &template::dir(&kdir))?;
    let release = kernel.version.clone();
    let cfg = VmConfig {
        kernel,
        initramfs,
        accel,
        mem_mib,
        vcpus,
        rootfs: PathBuf::new(),
        run_dir: PathBuf::new(),
        console_log: PathBuf::new(),
        name: String::new(),
        nics: Vec::new(),
        nics_netns: None,
        uid: 0,
        qemu: Some(qemu),
        virtiofsd: Some(virtiofsd),
        cgroup_procs: Vec::new(),
        ram: None,
        role: Role::Cold,
    };
    Ok(Base { cfg, version, kernel: release })
}

/// Whether VM containers start from templates, and why.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Status {
    /// Templates are used.
    pub enabled: bool,
    /// Why (or why not).
    pub reason: String,
}

/// Whether templates are used with QEMU `version` under `opts`.
pub fn status_for(opts: &VmOptions, version: Version) -> Status {
    let supported = template::supported(version);
    match (opts.templates, supported) {
        (Some(false), _) => {
            Status { enabled: false, reason: "disabled (MOAT_VM_TEMPLATES=off): every VM boots cold".into() }
        }
        (_, true) => Status {
            enabled: true,
            reason: format!(
                "QEMU {version} can snapshot virtio-fs VMs: VM containers are restored from a booted template"
            ),
        },
        (_, false) => Status {
            enabled: false,
            reason: format!(
                "QEMU {version} cannot migrate virtio-fs devices (needs {}): every VM boots cold",
                template::MIN_QEMU
            ),
        },
    }
}

/// Whether templates are used on this host (`moat info`).
pub fn status(opts: &VmOptions) -> Status {
    let found = moat_vm::launch::programs(opts.qemu.as_deref(), opts.virtiofsd.as_deref())
        .map_err(SandboxError::from)
        .and_then(|(q, _)| Ok(moat_vm::launch::qemu_version_cached(&q, &template::dir(&opts.kernel_dir.clone()))?));
    match found {
        Ok(v) => status_for(opts, v),
        Err(e) => Status { enabled: false, reason: format!("no usable QEMU: {e}") },
    }
}

/// The shape of the template a VM of `base` with `nics` NICs is cloned from.
pub fn shape(base: &Base, nics: usize) -> Result<Shape, SandboxError> {
    let c = &base.cfg;
    let id = |p: &std::path::Path| template::FileId::of(p);
    let bin = |p: &Option<PathBuf>| p.clone().unwrap_or_default();
    Ok(Shape {
        format: template::FORMAT,
        kernel: base.kernel.clone(),
        vmlinux: id(&c.kernel.vmlinux)?,
        initramfs: id(&c.initramfs)?,
        qemu: id(&bin(&c.qemu))?,
        qemu_version: base.version,
        virtiofsd: id(&bin(&c.virtiofsd))?,
        accel: c.accel,
        mem_mib: c.mem_mib,
        vcpus: c.vcpus,
        nics,
        qemu_args: moat_vm::launch::shape_args(c, base.version, nics),
    })
}

/// The template for `base` with `nics` NICs, booted and saved now if there
/// is none (racing callers build it once).
pub fn ensure(opts: &VmOptions, base: &Base, nics: usize) -> Result<Template, SandboxError> {
    let s = shape(base, nics)?;
    let dir = template::dir(&opts.kernel_dir.clone());
    let mut cfg = base.cfg.clone();
    cfg.nics = vec![(String::new(), String::new()); nics];
    cfg.uid = moat_vm::qemu::vm_uid(&s.digest());
    Ok(template::ensure(&dir, &s, |scratch| template::build(&cfg, base.version, scratch, opts.boot_timeout()))?)
}

/// A template as `moat vm template ls` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TemplateView {
    /// sha256 of its shape.
    pub digest: String,
    /// Guest kernel release.
    pub kernel: String,
    /// QEMU version.
    pub qemu: String,
    /// `tcg` or `kvm`.
    pub accelerator: String,
    /// Guest memory, MiB.
    #[serde(rename = "MemoryMiB")]
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// NICs.
    #[serde(rename = "NICs")]
    pub nics: usize,
    /// Bytes of guest RAM stored (what each clone copies).
    pub ram_bytes: u64,
    /// Bytes of device state.
    pub state_bytes: u64,
    /// Boot + snapshot time, ms.
    pub build_ms: u64,
    /// Unix seconds.
    pub created: u64,
    /// Made from the kernel, agent, QEMU and virtiofsd installed now (a
    /// stale one is never used and `prune` removes it).
    pub current: bool,
}

fn view(t: &Template, current: &dyn Fn(&Shape) -> bool) -> TemplateView {
    let s = &t.meta.shape;
    TemplateView {
        digest: t.meta.digest.clone(),
        kernel: s.kernel.clone(),
        qemu: s.qemu_version.to_string(),
        accelerator: s.accel.to_string(),
        memory_mib: s.mem_mib,
        vcpus: s.vcpus,
        nics: s.nics,
        ram_bytes: t.meta.ram_bytes,
        state_bytes: t.meta.state_bytes,
        build_ms: t.meta.build_ms,
        created: t.meta.created,
        current: current(s),
    }
}

/// A predicate: a template is current when the shape a VM of its size
/// needs now (kernel, agent, binaries, QEMU arguments) is exactly its shape.
/// What is installed is read once; only the size varies per template.
fn current(opts: &VmOptions) -> Result<impl Fn(&Shape) -> bool, SandboxError> {
    let now = base(opts, 0, 1)?;
    shape(&now, 0)?;
    Ok(move |s: &Shape| {
        let mut b = now.clone();
        (b.cfg.mem_mib, b.cfg.vcpus) = (s.mem_mib, s.vcpus);
        shape(&b, s.nics).is_ok_and(|n| &n == s)
    })
}

/// [`current`], or "nothing is current" when what is installed cannot be read.
fn current_or_none(opts: &VmOptions) -> Box<dyn Fn(&Shape) -> bool> {
    match current(opts) {
        Ok(f) => Box::new(f),
        Err(_) => Box::new(|_: &Shape| false),
    }
}

/// Builds (or finds) the template for a VM of this size (`moat vm template build`).
pub fn build(opts: &VmOptions, mem_mib: u64, vcpus: u32, nics: usize) -> Result<TemplateView, SandboxError> {
    let b = base(opts, mem_mib, vcpus)?;
    if !template::supported(b.version) {
        return Err(SandboxError::Unsupported(status_for(opts, b.version).reason));
    }
    let t = ensure(opts, &b, nics)?;
    Ok(view(&t, &current_or_none(opts)))
}

/// The templates on disk, newest first (`moat vm template ls`).
pub fn list(opts: &VmOptions) -> Vec<TemplateView> {
    let cur = current_or_none(opts);
    template::list(&template::dir(&opts.kernel_dir.clone())).iter().map(|t| view(t, &cur)).collect()
}

/// Removes templates by digest prefix (`moat vm template rm`).
pub fn remove(opts: &VmOptions, prefix: &str) -> Result<String, SandboxError> {
    Ok(template::remove(&template::dir(&opts.kernel_dir.clone()), prefix)?)
}

/// Removes stale templates, or all of them (`moat vm template prune [--all]`),
/// and the initramfs archives of agents and kernels no longer installed.
/// Without `--all` it needs to know what is current (kernel, agent, QEMU).
pub fn prune(opts: &VmOptions, all: bool) -> Result<Vec<String>, SandboxError> {
    let dir = template::dir(&opts.kernel_dir.clone());
    if let Ok(b) = base(opts, 0, 1) {
        moat_vm::initramfs::prune(&opts.kernel_dir.clone(), &b.cfg.initramfs);
    }
    if all {
        return Ok(template::prune(&dir, |_| false));
    }
    // what is installed now must be readable, or every template looks stale
    Ok(template::prune(&dir, current(opts)?))
}
