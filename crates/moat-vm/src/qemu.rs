//! QEMU's command line as values: the machine, accelerator, memory backend,
//! devices and the privilege drop are fields that render to arguments, so a
//! new device set (a template restore, a block root) is one more field, and
//! the exact argv has a unit test.

use std::fmt;
use std::path::PathBuf;

/// The hypervisor accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        })
    }
}

/// A QEMU version (`major.minor.patch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parses `QEMU emulator version 7.2.22 (Debian ...)`.
    pub fn parse(banner: &str) -> Option<Self> {
        let v = banner.split("version").nth(1)?.split_whitespace().next()?;
        let mut n = v.split('.').map(|p| p.parse::<u32>().ok());
        Some(Self(n.next()??, n.next().flatten().unwrap_or(0), n.next().flatten().unwrap_or(0)))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memory {
    /// An anonymous shared memfd (cold boot).
    Memfd,
    /// A file (a template's RAM, or a clone's copy of it).
    File(PathBuf),
}

/// Dropping privileges once QEMU has opened what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// User and group ID QEMU switches to.
    pub uid: u32,
    /// Group ID.
    pub gid: u32,
    /// An empty directory QEMU chroots into.
    pub chroot: PathBuf,
}

/// A NIC: a tap device passed as a descriptor, and its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Descriptor number of the open tap in QEMU.
    pub fd: i32,
    /// MAC address.
    pub mac: String,
}

/// Everything that shapes one QEMU process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The QEMU version the arguments are for.
    pub version: Version,
    /// Accelerator.
    pub accel: Accel,
    /// `-name` (shown in the host's process list).
    pub name: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Memory backend.
    pub memory: Memory,
    /// Guest kernel (ELF vmlinux, PVH boot).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub append: String,
    /// Descriptor of the agent channel (virtio-serial port `ctl0`).
    pub ctl_fd: i32,
    /// Descriptor of the connection to virtiofsd.
    pub vfs_fd: i32,
    /// virtio-fs tag.
    pub vfs_tag: String,
    /// Descriptor of the QMP connection.
    pub qmp_fd: Option<i32>,
    /// NICs.
    pub nics: Vec<Nic>,
    /// Privilege drop.
    pub run_as: Option<RunAs>,
    /// Wait for a restore (`-incoming defer`, then QMP `migrate-incoming`).
    pub incoming: bool,
    /// Emulate the i8254 PIT. Under TCG with the TSC frequency known it is
    /// off: QEMU 10's PIT made ~40% of this kernel's boots die with a
    /// divide error right after `srcu_init` (0 of 30 without it).
    pub pit: bool,
}

impl Command {
    /// The arguments (without the program).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        match self.accel {
            Accel::Kvm => {
                push("-accel", "kvm".into());
                push("-cpu", "host".into());
            }
            Accel::Tcg => {
                push("-accel", "tcg".into());
                // ARAT (the APIC timer keeps running in deep C-states): without
                // it, and with no HPET or PIT on microvm to broadcast, the guest
                // cannot use one-shot timers and ticks at HZ even when idle
                push("-cpu", "qemu64,+arat".into());
            }
        }
        push("-name", self.name.clone());
        push("-smp", self.vcpus.to_string());
        push("-m", format!("{}M", self.mem_mib));
        let pit = if self.pit { "on" } else { "off" };
        push("-M", format!("microvm,pit={pit},pic=on,rtc=on,memory-backend=mem"));
        let mem = match &self.memory {
            Memory::Memfd => format!("memory-backend-memfd,id=mem,size={}M,share=on", self.mem_mib),
            Memory::File(p) => {
                format!("memory-backend-file,id=mem,size={}M,mem-path={},share=on", self.mem_mib, p.display())
            }
        };
        push("-object", mem);
        push("-global", "virtio-mmio.force-legacy=false".into());
        a.extend(["-nodefaults", "-no-user-config"].map(String::from));
        let mut push = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        push("-display", "none".into());
        push("-serial", "stdio".into());
        push("-kernel", self.kernel.display().to_string());
        push("-initrd", self.initrd.display().to_string());
        push("-append", self.append.clone());
        push("-device", "virtio-serial-device".into());
        push("-chardev", format!("socket,id=ctl,fd={}", self.ctl_fd));
        push("-device", format!("virtserialport,chardev=ctl,name={}", moat_proto::CONTROL_PORT));
        push("-chardev", format!("socket,id=vfs,fd={}", self.vfs_fd));
        push("-device", format!("vhost-user-fs-device,chardev=vfs,tag={}", self.vfs_tag));
        // free page reporting: the guest hands back 2 MiB blocks it has
        // not used for 2 s, and QEMU punches them out of the RAM memfd
        push("-device", "virtio-balloon-device,free-page-reporting=on".into());
        if let Some(fd) = self.qmp_fd {
            push("-chardev", format!("socket,id=qmp,fd={fd}"));
            push("-mon", "chardev=qmp,mode=control".into());
        }
        for (n, nic) in self.nics.iter().enumerate() {
            push("-netdev", format!("tap,id=n{n},fd={},vhost=off", nic.fd));
            push("-device", format!("virtio-net-device,netdev=n{n},mac={}", nic.mac));
        }
        a.push("-no-reboot".into());
        if self.incoming {
            a.extend(["-incoming", "defer"].map(String::from));
        }
        let mut push = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        // the privilege drop itself calls set*id (denied by `deny` and, in
        // QEMU 7.2, by `children` too); once QEMU is an unprivileged uid
        // without capabilities, set*id cannot give anything back
        let elevate = if self.run_as.is_some() { "allow" } else { "deny" };
        push("-sandbox", format!("on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"));
        if let Some(r) = &self.run_as {
            let user = format!("{}:{}", r.uid, r.gid);
            // -chroot became -run-with chroot= in 8.1; -runas became -run-with user= in 9.1
            if self.version >= Version(9, 1, 0) {
                push("-run-with", format!("user={user},chroot={}", r.chroot.display()));
            } else if self.version >= Version(8, 1, 0) {
                push("-run-with", format!("chroot={}", r.chroot.display()));
                push("-runas", user);
            } else {
                push("-chroot", r.chroot.display().to_string());
                push("-runas", user);
            }
        }
        a
    }

    /// The arguments with what each VM has of its own blanked (name,
    /// descriptors, MACs, the RAM file, the user it runs as, the restore
    /// flag): what a template and every clone of it must agree on, so a
    /// changed device, CPU or machine argument can never restore a stale
    /// template.
    pub fn shape_args(&self) -> String {
        let mut c = self.clone();
        c.name = String::new();
        c.memory = Memory::File(PathBuf::new());
        (c.ctl_fd, c.vfs_fd, c.qmp_fd) = (0, 0, c.qmp_fd.map(|_| 0));
        for n in &mut c.nics {
            (n.fd, n.mac) = (0, String::new());
        }
        c.run_as = c.run_as.map(|_| RunAs { uid: 0, gid: 0, chroot: PathBuf::new() });
        c.incoming = false;
        c.args().join(" ")
    }
}

/// The unprivileged user a VM's QEMU runs as: one ID per container (from
/// its ID) in a range no distribution allocates, so no two VMs share a uid
/// and none shares one with a host account.
pub fn vm_uid(container_id: &str) -> u32 {
    // moat's IDs are hex; others (containerd's names) are hashed (FNV-1a)
    let h = u32::from_str_radix(container_id.get(..6).unwrap_or("-"), 16)
        .unwrap_or_else(|_| container_id.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193)));
    BASE_UID + (h & 0x00ff_ffff)
}

/// First uid of the range [`vm_uid`] uses.
pub const BASE_UID: u32 = 0x5000_0000;

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(version: Version) -> Command {
        Command {
            version,
            accel: Accel::Tcg,
            name: "moat-abc".into(),
            vcpus: 1,
            mem_mib: 256,
            memory: Memory::Memfd,
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.cpio".into(),
            append: "console=ttyS0".into(),
            ctl_fd: 3,
            vfs_fd: 4,
            vfs_tag: "rootfs".into(),
            qmp_fd: Some(5),
            nics: vec![Nic { fd: 6, mac: "02:42:0a:00:00:02".into() }],
            run_as: Some(RunAs { uid: 1_342_177_280, gid: 1_342_177_280, chroot: "/r/empty".into() }),
            incoming: false,
            pit: true,
        }
    }

    #[test]
    fn exact_argv() {
        let a = cmd(Version(7, 2, 22)).args().join(" ");
        assert_eq!(
            a,
            "-accel tcg -cpu qemu64,+arat -name moat-abc -smp 1 -m 256M -M microvm,pit=on,pic=on,rtc=on,memory-backend=mem \
             -object memory-backend-memfd,id=mem,size=256M,share=on -global virtio-mmio.force-legacy=false \
             -nodefaults -no-user-config -display none -serial stdio -kernel /k/vmlinux -initrd /k/initrd.cpio \
             -append console=ttyS0 -device virtio-serial-device -chardev socket,id=ctl,fd=3 \
             -device virtserialport,chardev=ctl,name=ctl0 -chardev socket,id=vfs,fd=4 \
             -device vhost-user-fs-device,chardev=vfs,tag=rootfs -device virtio-balloon-device,free-page-reporting=on \
             -chardev socket,id=qmp,fd=5 \
             -mon chardev=qmp,mode=control -netdev tap,id=n0,fd=6,vhost=off \
             -device virtio-net-device,netdev=n0,mac=02:42:0a:00:00:02 -no-reboot \
             -sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny \
             -chroot /r/empty -runas 1342177280:1342177280"
        );
    }

    #[test]
    fn versions_and_variants() {
        assert!(cmd(Version(10, 0, 2))
            .args()
            .join(" ")
            .ends_with("-run-with user=1342177280:1342177280,chroot=/r/empty"));
        let mid = cmd(Version(8, 2, 0)).args().join(" ");
        assert!(mid.ends_with("-run-with chroot=/r/empty -runas 1342177280:1342177280"), "{mid}");
        let mut k = cmd(Version(10, 0, 2));
        k.accel = Accel::Kvm;
        k.memory = Memory::File("/dev/shm/t.ram".into());
        k.incoming = true;
        let a = k.args().join(" ");
        assert!(a.contains("-no-reboot -incoming defer -sandbox"), "{a}");
        assert!(a.starts_with("-accel kvm -cpu host "));
        assert!(a.contains("memory-backend-file,id=mem,size=256M,mem-path=/dev/shm/t.ram,share=on"));
        assert_eq!(
            Version::parse("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some(Version(7, 2, 22))
        );
        assert_eq!(Version::parse("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)"), Some(Version(10, 0, 2)));
        assert_eq!(Version::parse("garbage"), None);
        assert_ne!(vm_uid(&"ab".repeat(32)), vm_uid(&"cd".repeat(32)));
        assert!(vm_uid(&"ff".repeat(32)) >= BASE_UID);
        // containerd's names are not hex: hashed, each its own uid
        assert_ne!(vm_uid("web"), vm_uid("db"));
        assert!(vm_uid("web") >= BASE_UID);
    }

    #[test]
    fn shape_args_keep_the_devices_and_blank_the_vm() {
        let t = cmd(Version(10, 0, 2));
        let mut c = t.clone();
        c.name = "moat-other".into();
        c.memory = Memory::File("/proc/self/fd/7".into());
        c.nics[0].mac = "02:42:0a:00:00:09".into();
        c.run_as = Some(RunAs { uid: 7, gid: 7, chroot: "/r/other".into() });
        c.incoming = true;
        assert_eq!(t.shape_args(), c.shape_args());
        c.pit = false;
        assert_ne!(t.shape_args(), c.shape_args());
        let mut d = t.clone();
        d.accel = Accel::Kvm;
        assert_ne!(t.shape_args(), d.shape_args());
        d = t.clone();
        d.nics.clear();
        assert_ne!(t.shape_args(), d.shape_args());
    }
}
