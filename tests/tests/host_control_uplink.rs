//! Uplinks without an Ethernet header (tun, WireGuard, ipip: the IP header at offset 0) are
//! refused with one line, named with `--uplink` or found from the default route, and the
//! refusal changes nothing (no state dir, no bpf filesystem, no bridge).
//!
//! Host only (xtask keeps `host_*` binaries out of the emulated kernels): uplink refusals (a link
//! type read over netlink) are decided before the datapath is touched and do not depend on the
//! kernel's version, which the matrix tests through the datapath, attach and restart tests.
use std::{path::Path, process::Command, time::Duration};

use bridgenet_tests::{Topology, control::binary};

/// A host namespace with a tun device (`tun0`, 198.18.3.2/24, up) and, when `default_via_tun`,
/// the default route through it.
fn host_with_tun(default_via_tun: bool) -> Topology {
    // Debian's kernels build tun as a module, which a fresh VM of the matrix has not loaded
    // (no /dev/net/tun yet); the host's kernel has it built in.
    if !Path::new("/dev/net/tun").exists() {
        let _ = Command::new("modprobe").arg("tun").status();
    }
    assert!(
        Path::new("/dev/net/tun").exists(),
        "this kernel has no tun device (CONFIG_TUN)"
    );
    let mut topo = Topology::new();
    topo.netns("host");
    let host = topo.ns("host");
    host.ip(&["tuntap", "add", "dev", "tun0", "mode", "tun"]);
    host.ip(&["addr", "add", "198.18.3.2/24", "dev", "tun0"]);
    host.ip(&["link", "set", "tun0", "up"]);
    if default_via_tun {
        host.ip(&["route", "add", "default", "dev", "tun0"]);
    }
    topo
}

/// Runs the daemon in the topology's host namespace with `extra` arguments; it must exit on its
/// own, failing with one line on stderr, which is returned.
fn daemon_refuses(topo: &Topology, dir: &Path, extra: &[&str]) -> String {
    let netns = format!("--net=/run/netns/{}", topo.ns("host").name());
    let mut child = Command::new("nsenter")
        .arg(&netns)
        .arg(binary())
        .arg("--socket")
        .arg(dir.join("sock"))
        .args(["daemon", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--bpffs")
        .arg(dir.join("bpffs"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the daemon");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            // SAFETY: a signal to the child this test started.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
            unmount(&dir.join("bpffs"));
            panic!("the daemon accepted the uplink and kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
    assert!(!out.status.success(), "the daemon succeeded: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    let left = dir.join("state").exists() || dir.join("bpffs").exists();
    unmount(&dir.join("bpffs"));
    assert!(
        !left,
        "the refused start left a state dir or bpf filesystem"
    );
    let links = topo.ns("host").ip(&["-o", "link"]);
    assert!(!links.contains("bridgenet"), "a link was made: {links}");
    stderr
}

/// Unmounts a bpf filesystem a daemon may have mounted at `path`, so that a failed test leaves
/// no mount behind (its temporary directory could not be removed otherwise).
fn unmount(path: &Path) {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a valid C string; an error (nothing mounted there) is ignored.
    unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
}

#[test]
fn an_uplink_without_an_ethernet_header_is_refused_with_one_line() {
    let topo = host_with_tun(false);
    let dir = tempfile::tempdir().unwrap();
    let line = daemon_refuses(&topo, dir.path(), &["--uplink", "tun0"]);
    assert!(
        line.contains("tun0") && line.contains("Ethernet"),
        "unclear: {line}"
    );
}

#[test]
fn a_default_route_through_an_l3_device_is_refused_with_one_line() {
    let topo = host_with_tun(true);
    let dir = tempfile::tempdir().unwrap();
    let line = daemon_refuses(&topo, dir.path(), &[]);
    assert!(
        line.contains("tun0") && line.contains("Ethernet"),
        "unclear: {line}"
    );
}
