//! Host access to published ports: the cgroup sock_addr hooks (`programs::HOST_ACCESS`) on
//! the cgroup v2 root, through bpf_links pinned in the pin directory. The links outlive the
//! daemon (the host keeps reaching published ports while it restarts); a restarted daemon
//! replaces them, `daemon --cleanup` unpins them, which detaches them.
use std::{
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::Array,
    programs::{
        CgroupAttachMode, CgroupSockAddr,
        links::{FdLink, PinnedLink},
    },
};
use bridgenet_common::{HostAccessConfig, maps, programs};

use super::{Datapath, program_mut};

/// Prefix of the pinned host access links in the pin directory.
const LINK_PIN_PREFIX: &str = "link_host_access_";

impl Datapath {
    /// Attaches the host access hooks to the cgroup v2 root for the calling thread's network
    /// namespace (whose cookie they compare with every socket's), replacing the links a
    /// previous daemon pinned in `pin_dir`. `scratch_dir` holds a short-lived cgroup2 mount.
    pub fn attach_host_access(&mut self, pin_dir: &Path, scratch_dir: &Path) -> Result<()> {
        let cookie = netns_cookie()?;
        let mut config: Array<_, HostAccessConfig> = Array::try_from(
            self.ebpf
                .map_mut(maps::HOST_ACCESS_CONFIG)
                .context("map HOST_ACCESS_CONFIG missing")?,
        )?;
        config.set(
            0,
            HostAccessConfig {
                netns_cookie: cookie,
            },
            0,
        )?;
        let root = cgroup2_root(scratch_dir)?;
        for name in programs::HOST_ACCESS {
            let program: &mut CgroupSockAddr = program_mut(&mut self.ebpf, name)?;
            let path = pin_dir.join(format!("{LINK_PIN_PREFIX}{name}"));
            // The new link goes in before the old one goes: no moment without the hook. Both
            // running at once is harmless (the second sees an address already translated).
            let old = PinnedLink::from_pin(&path).ok();
            // A bpf_link takes no attach flags (Single is 0) and always runs alongside the
            // other programs on the cgroup.
            let id = program
                .attach(&root, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to the cgroup v2 root"))?;
            let link: FdLink = program.take_link(id)?.try_into()?;
            if old.is_some() {
                std::fs::remove_file(&path)?;
            }
            link.pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
            // Its pin gone, the previous daemon's link detaches when this last handle drops.
            drop(old);
        }
        Ok(())
    }

    /// Detaches the host access hooks a daemon left: unpins their links in `pin_dir`.
    pub fn detach_host_access(pin_dir: &Path) {
        for name in programs::HOST_ACCESS {
            let _ = std::fs::remove_file(pin_dir.join(format!("{LINK_PIN_PREFIX}{name}")));
        }
    }
}

/// The cookie of the calling thread's network namespace, as bpf_get_netns_cookie gives it
/// (SO_NETNS_COOKIE, Linux 5.14+).
pub fn netns_cookie() -> Result<u64> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SO_NETNS_COOKIE");
    }
    // SAFETY: fd was just returned by socket(2).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for writes of their sizes.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt SO_NETNS_COOKIE");
    }
    if cookie == 0 {
        bail!("the kernel gave a netns cookie of 0");
    }
    Ok(cookie)
}

/// The root of the cgroup v2 hierarchy, opened through a cgroup2 mount made for the purpose
/// in `scratch_dir` and detached at once: /sys/fs/cgroup may be missing (inside `ip netns
/// exec`) or a v1 hierarchy.
fn cgroup2_root(scratch_dir: &Path) -> Result<File> {
    let dir = scratch_dir.join("cgroup2");
    // A mount left by a daemon killed right here.
    let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    nix::mount::mount(
        Some("cgroup2"),
        &dir,
        Some("cgroup2"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .with_context(|| format!("mounting a cgroup2 filesystem at {}", dir.display()))?;
    let root = File::open(&dir).with_context(|| format!("opening {}", dir.display()));
    nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH)
        .with_context(|| format!("unmounting {}", dir.display()))?;
    let _ = std::fs::remove_dir(&dir);
    root
}
