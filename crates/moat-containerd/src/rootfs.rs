//! The rootfs mounts containerd's snapshotter hands a task (an overlay of
//! the image's layers, or a bind of a prepared directory), mounted on the
//! bundle's `rootfs` in this process. containerd-shim's own `mount_rootfs`
//! forks and waits through its catch-all reaper, which this shim turns off
//! (moat's relay waits for its processes itself).

use nix::mount::MsFlags;
use std::path::Path;

/// Mounts one of containerd's mounts (`type`, `source`, `options`) on `target`.
pub fn mount(kind: &str, source: &str, options: &[String], target: &Path) -> Result<(), String> {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            other => data.push(other),
        }
    }
    let data = data.join(",");
    // one page of mount data at most (an image of very many layers)
    if data.len() >= 4096 - 512 {
        return Err(format!("the {kind} mount's options are {} bytes: too many layers for one mount call", data.len()));
    }
    std::fs::create_dir_all(target).map_err(|e| format!("create {}: {e}", target.display()))?;
    let fstype = if flags.contains(MsFlags::MS_BIND) { None } else { Some(kind) };
    let ro_bind = flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY);
    nix::mount::mount(Some(source), target, fstype, flags, (!data.is_empty()).then_some(data.as_str()))
        .map_err(|e| format!("mount {kind} {source} on {}: {e}", target.display()))?;
    if ro_bind {
        // a bind ignores MS_RDONLY until remounted
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("remount {} read-only: {e}", target.display()))?;
    }
    Ok(())
}

/// Unmounts `target` (lazily: a process may still hold it).
pub fn unmount(target: &Path) {
    let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
}

/// containerd's overlay rootfs (the overlayfs snapshotter's one mount) as
/// moat's root for a utility VM, which mounts it in its share itself.
pub fn overlay(mounts: &[(String, Vec<String>)]) -> Result<moat_runtime::spec::Rootfs, String> {
    let [(kind, options)] = mounts else {
        return Err(format!("hyperv needs one rootfs mount from containerd, not {}", mounts.len()));
    };
    if kind != "overlay" {
        return Err(format!("hyperv needs containerd's overlayfs snapshotter: the rootfs is a {kind:?} mount"));
    }
    let opt = |k: &str| options.iter().find_map(|o| o.strip_prefix(k)).map(str::to_string);
    let lower = opt("lowerdir=").ok_or("the overlay rootfs has no lowerdir")?;
    let upper = opt("upperdir=").ok_or("the overlay rootfs has no upperdir (a read-only view)")?;
    let work = opt("workdir=").ok_or("the overlay rootfs has no workdir")?;
    Ok(moat_runtime::spec::Rootfs::Overlay {
        // overlayfs lists the topmost layer first, as moat does
        lower: lower.split(':').map(std::path::PathBuf::from).collect(),
        upper: upper.into(),
        work: work.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerds_overlay_as_moats_root() {
        let m = vec![(
            "overlay".to_string(),
            vec![
                "index=off".into(),
                "workdir=/s/2/work".into(),
                "upperdir=/s/2/fs".into(),
                "lowerdir=/s/1/fs:/s/0/fs".into(),
            ],
        )];
        match overlay(&m) {
            Ok(moat_runtime::spec::Rootfs::Overlay { lower, upper, work }) => {
                assert_eq!(lower, [std::path::PathBuf::from("/s/1/fs"), "/s/0/fs".into()]);
                assert_eq!((upper, work), ("/s/2/fs".into(), "/s/2/work".into()));
            }
            other => panic!("{other:?}"),
        }
        let bind = vec![("bind".to_string(), vec!["rbind".into()])];
        assert!(overlay(&bind).err().is_some_and(|e| e.contains("overlayfs snapshotter")));
        assert!(overlay(&[]).is_err());
    }
}
