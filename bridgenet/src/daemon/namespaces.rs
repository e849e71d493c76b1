//! Network namespaces bridgenet creates for endpoints, named as `ip netns` names them (a file
//! under /run/netns that holds the namespace by a bind mount). Made with system calls rather
//! than an `ip` subprocess: an endpoint's start should not pay for a fork and exec.
use std::{io::ErrorKind, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::{Context as _, anyhow};
use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, unshare},
};

use crate::state::netns_path;

/// `ip netns add NAME`: a new namespace, held by /run/netns/NAME, that outlives the daemon.
pub(super) fn create_netns(name: &str) -> anyhow::Result<()> {
    let path = netns_path(name);
    let dir = path.parent().context("a namespace path has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    share(dir)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .with_context(|| format!("creating namespace {name}"))?;
    // A thread of its own enters the new namespace, so that no thread of the daemon changes
    // namespace; the bind mount keeps the namespace once the thread is gone.
    let target = path.clone();
    let made = std::thread::spawn(move || -> nix::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join()
    .map_err(|_| anyhow!("the thread creating namespace {name} panicked"))?;
    if let Err(err) = made {
        let _ = std::fs::remove_file(&path);
        return Err(anyhow!("creating namespace {name}: {err}"));
    }
    Ok(())
}

/// As `ip netns` does: /run/netns is a shared mount point, so that namespaces made later also
/// appear in mount namespaces that were copied from this one before.
fn share(dir: &Path) -> anyhow::Result<()> {
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Err(Errno::EINVAL) => {
            // Not a mount point yet: make it one.
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {}", dir.display()))?;
            shared().with_context(|| format!("sharing {}", dir.display()))
        }
        other => other.with_context(|| format!("sharing {}", dir.display())),
    }
}

/// `ip netns del NAME`: the namespace goes when its last process or interface leaves it.
pub(super) fn delete_netns(name: &str) {
    let path = netns_path(name);
    if let Err(err) = umount2(&path, MntFlags::MNT_DETACH)
        && err != Errno::EINVAL
        && err != Errno::ENOENT
    {
        tracing::warn!(
            "deleting namespace {name}: unmounting {}: {err}",
            path.display()
        );
    }
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            tracing::warn!("deleting namespace {name}: {err}")
        }
        _ => {}
    }
}
