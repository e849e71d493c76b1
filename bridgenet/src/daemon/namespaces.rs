//! Network namespaces bridgenet creates for endpoints (`ip netns` names under /run/netns).
use std::process::Command;

use anyhow::Context as _;

/// `ip netns add NAME`: a namespace file under /run/netns that outlives the daemon.
pub(super) fn create_netns(name: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "add", name])
        .output()
        .context("running ip netns add")?;
    if !out.status.success() {
        anyhow::bail!(
            "creating namespace {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(super) fn delete_netns(name: &str) {
    match Command::new("ip").args(["netns", "del", name]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::warn!(
            "deleting namespace {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => tracing::warn!("deleting namespace {name}: {err}"),
    }
}
