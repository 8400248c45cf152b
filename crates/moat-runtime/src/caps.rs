//! Capability sets: Docker's default set, `--cap-add`/`--cap-drop`, and applying them.

use crate::RuntimeError;
use caps::{CapSet, Capability, CapsHashSet};
use std::str::FromStr;

/// Docker's default capabilities.
pub const DEFAULT: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

fn parse(name: &str) -> Result<Option<Capability>, RuntimeError> {
    let up = name.trim().to_ascii_uppercase();
    if up == "ALL" {
        return Ok(None);
    }
    let full = if up.starts_with("CAP_") { up } else { format!("CAP_{up}") };
    Capability::from_str(&full).map(Some).map_err(|_| RuntimeError::Invalid(format!("unknown capability {name:?}")))
}

/// Every capability this process may pass on (its bounding set): "all" for
/// `--privileged` and `--cap-add ALL`, since no child can get more.
fn available() -> CapsHashSet {
    caps::read(None, CapSet::Bounding).unwrap_or_else(|_| caps::all())
}

/// The capability numbers a container gets: Docker's default set (or all when
/// privileged), then `drop`, then `add` (`ALL` allowed in both, like docker),
/// limited to what this process can grant.
pub fn compute(add: &[String], drop: &[String], privileged: bool) -> Result<Vec<u8>, RuntimeError> {
    let all = available();
    let mut set: CapsHashSet = if privileged { all.clone() } else { DEFAULT.iter().copied().collect() };
    for d in drop {
        match parse(d)? {
            None => set.clear(),
            Some(c) => {
                set.remove(&c);
            }
        }
    }
    for a in add {
        match parse(a)? {
            None => set.extend(all.iter().copied()),
            Some(c) => {
                set.insert(c);
            }
        }
    }
    let mut v: Vec<u8> = set.iter().filter(|c| all.contains(c)).map(|c| c.index()).collect();
    v.sort_unstable();
    Ok(v)
}

/// Restricts the bounding set to `keep` (call before changing user).
pub fn limit_bounding(keep: &[u8]) -> Result<(), RuntimeError> {
    for c in caps::all() {
        if !keep.contains(&c.index()) {
            caps::drop(None, CapSet::Bounding, c)
                .map_err(|e| RuntimeError::Invalid(format!("drop bounding capability {c}: {e}")))?;
        }
    }
    Ok(())
}

/// Sets effective, permitted and inheritable (inheritable and ambient empty,
/// as docker does) to `keep`; for a non-root user, call after the uid change
/// with `keep` empty.
pub fn apply(keep: &[u8]) -> Result<(), RuntimeError> {
    let set: CapsHashSet = caps::all().into_iter().filter(|c| keep.contains(&c.index())).collect();
    let err = |what: &str, e: caps::errors::CapsError| RuntimeError::Invalid(format!("set {what} capabilities: {e}"));
    caps::clear(None, CapSet::Ambient).map_err(|e| err("ambient", e))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(|e| err("inheritable", e))?;
    caps::set(None, CapSet::Effective, &set).map_err(|e| err("effective", e))?;
    caps::set(None, CapSet::Permitted, &set).map_err(|e| err("permitted", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_drop() -> Result<(), RuntimeError> {
        let d = compute(&[], &[], false)?;
        assert_eq!(d.len(), DEFAULT.len());
        let v = compute(&["sys_admin".into()], &["CAP_NET_RAW".into()], false)?;
        assert!(v.contains(&Capability::CAP_SYS_ADMIN.index()));
        assert!(!v.contains(&Capability::CAP_NET_RAW.index()));
        assert_eq!(compute(&[], &["ALL".into()], false)?, Vec::<u8>::new());
        assert_eq!(compute(&["chown".into()], &["all".into()], false)?, vec![Capability::CAP_CHOWN.index()]);
        assert_eq!(compute(&[], &[], true)?.len(), available().len());
        assert!(compute(&["CAP_BOGUS".into()], &[], false).is_err());
        Ok(())
    }
}
