//! The namespaces the lab and the bench share: an outside namespace (eth0 198.18.0.1) wired to
//! a host namespace (uplink0 198.18.0.2, default route to the outside), where the daemon runs.
use std::{
    ffi::OsStr,
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// `ip ARGS`, failing with ip's own message.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates `outside` and `host` and the veth pair between them; each namespace is pushed onto
/// `created` as soon as it exists, so the caller removes it whatever fails next.
pub fn outside_and_host(outside: &str, host: &str, created: &mut Vec<String>) -> Result<()> {
    for ns in [outside, host] {
        ip(&["netns", "add", ns])?;
        created.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "-n", outside, "link", "add", "eth0", "type", "veth", "peer", "name", "uplink0", "netns",
        host,
    ])?;
    ip(&["-n", outside, "addr", "add", "198.18.0.1/24", "dev", "eth0"])?;
    ip(&["-n", host, "addr", "add", "198.18.0.2/24", "dev", "uplink0"])?;
    ip(&["-n", outside, "link", "set", "eth0", "up"])?;
    ip(&["-n", host, "link", "set", "uplink0", "up"])?;
    ip(&["-n", host, "route", "add", "default", "via", "198.18.0.1"])
}

/// `bridgenet --socket DIR/bridgenet.sock daemon` with its state and bpf filesystem in `dir`.
pub fn daemon_args(dir: &Path) -> Vec<String> {
    let d = |p: &str| dir.join(p).display().to_string();
    vec![
        "--socket".into(),
        d("bridgenet.sock"),
        "daemon".into(),
        "--state-dir".into(),
        d("state"),
        "--bpffs".into(),
        d("bpffs"),
    ]
}

/// `program` in namespace `ns`, the network namespace only (`setns` before exec): `ip netns
/// exec` would also give it a private mount namespace, where a bpf filesystem and the
/// namespaces it makes would be lost.
pub fn command_in(ns: &str, program: impl AsRef<OsStr>) -> Result<Command> {
    let netns =
        File::open(format!("/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; the file stays open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}
