//! `moat vm template` as the engine offers it: the sandbox crate's template
//! operations with the engine's options (see `docs/vm-templates.md`).

use crate::{EngineError, EngineOptions};
pub use moat_sandbox::templates::{Status, TemplateView};

/// Whether templates are used on this host (`moat info`).
pub fn status(opts: &EngineOptions) -> Status {
    moat_sandbox::templates::status(&opts.vm_options())
}

/// Builds (or finds) the template for a VM of this size (`moat vm template build`).
pub fn build(opts: &EngineOptions, mem_mib: u64, vcpus: u32, nics: usize) -> Result<TemplateView, EngineError> {
    Ok(moat_sandbox::templates::build(&opts.vm_options(), mem_mib, vcpus, nics)?)
}

/// The templates on disk, newest first (`moat vm template ls`).
pub fn list(opts: &EngineOptions) -> Vec<TemplateView> {
    moat_sandbox::templates::list(&opts.vm_options())
}

/// Removes templates by digest prefix (`moat vm template rm`).
pub fn remove(opts: &EngineOptions, prefix: &str) -> Result<String, EngineError> {
    Ok(moat_sandbox::templates::remove(&opts.vm_options(), prefix)?)
}

/// Removes stale templates, or all of them (`moat vm template prune [--all]`).
pub fn prune(opts: &EngineOptions, all: bool) -> Result<Vec<String>, EngineError> {
    Ok(moat_sandbox::templates::prune(&opts.vm_options(), all)?)
}
