//! Checks for, and installs when missing, what the build and the tests need. One line each.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

/// bpf-linker releases after 0.10.3 need a system LLVM 23; 0.10.3 uses the nightly's own LLVM.
const BPF_LINKER_VERSION: &str = "0.10.3";
const VIRTME_NG_VERSION: &str = "1.42";

/// What building the eBPF programs needs: the nightly's rust-src and bpf-linker.
pub fn build_tools() -> Result<()> {
    rustup_component("nightly", "rust-src")?;
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    let version = installed
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    println!("setup: installing bpf-linker {BPF_LINKER_VERSION} (a few minutes)");
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!(
            "installing bpf-linker failed; run `cargo install bpf-linker --version {BPF_LINKER_VERSION} --locked`"
        );
    }
    Ok(())
}

/// `rustup component add COMPONENT --toolchain TOOLCHAIN`, unless already there.
pub fn rustup_component(toolchain: &str, component: &str) -> Result<()> {
    let list = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .context("rustup is needed (https://rustup.rs)")?;
    if String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.starts_with(component))
    {
        println!("setup: {component} ({toolchain}) present");
        return Ok(());
    }
    println!("setup: adding {component} to the {toolchain} toolchain");
    let status = Command::new("rustup")
        .args(["component", "add", component, "--toolchain", toolchain])
        .status()?;
    if !status.success() {
        bail!(
            "could not add {component}; run `rustup component add {component} --toolchain {toolchain}`"
        );
    }
    Ok(())
}

/// Programs the tests run, and the Debian package of each.
pub const TEST_PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("ping", "iputils-ping"),
    ("sysctl", "procps"),
    ("ethtool", "ethtool"),
    ("bpftool", "bpftool"),
    ("iptables-save", "iptables"),
    ("nft", "nftables"),
];

/// What the Docker tests (`tests/host_docker.rs`) run: Debian's dockerd 20.10 with its
/// containerd and runc, and busybox for the image they import.
pub const DOCKER_PROGRAMS: &[(&str, &str)] = &[
    ("dockerd", "docker.io"),
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("busybox", "busybox-static"),
    // Debian's own (a path: a pyenv shim on PATH would not do): the UDP echo of the tests
    // runs it inside a container from the host's /usr, bound read-only.
    ("/usr/bin/python3", "python3"),
];

/// What the Podman test (`tests/host_podman.rs`) runs: Debian's podman 4.3 with its CNI
/// backend (the reference plugins come along; `loopback` is the one it may call).
pub const PODMAN_PROGRAMS: &[(&str, &str)] = &[
    ("podman", "podman"),
    ("/usr/lib/cni/loopback", "containernetworking-plugins"),
];

/// Programs the kernel matrix needs besides virtme-ng.
pub const VM_PROGRAMS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    // Strips the binaries staged for the guests (xtask/src/test.rs).
    ("objcopy", "binutils"),
];

/// Installs with apt the packages of the programs in `programs` that are not on PATH.
pub fn programs(programs: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = programs
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        let names: Vec<&str> = programs.iter().map(|(bin, _)| *bin).collect();
        println!("setup: {} present", names.join(", "));
        return Ok(());
    }
    apt_install(&missing)
}

/// `apt-get install` of `packages`, after one `apt-get update`.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    println!("setup: apt-get install {}", packages.join(" "));
    let update = Command::new("apt-get").args(["update", "-qq"]).status();
    if !matches!(update, Ok(s) if s.success()) {
        bail!(
            "apt-get update failed; install {} by hand (as root)",
            packages.join(" ")
        );
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!(
            "apt-get install failed; install {} by hand (as root)",
            packages.join(" ")
        );
    }
    Ok(())
}

/// virtme-ng (vng) from PyPI, which boots a kernel with the host's filesystem; returns the
/// command to run it. pip puts it in the scripts directory of the python that installed it,
/// which need not be on PATH (pyenv, for one, only adds it after a rehash).
pub fn virtme_ng() -> Result<PathBuf> {
    let scripts = || -> Option<PathBuf> {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .ok()?;
        Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("vng"))
    };
    if on_path("vng") {
        println!("setup: vng present");
        return Ok(PathBuf::from("vng"));
    }
    if let Some(vng) = scripts().filter(|p| p.is_file()) {
        println!("setup: vng present ({})", vng.display());
        return Ok(vng);
    }
    println!("setup: pip install virtme-ng=={VIRTME_NG_VERSION}");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            &format!("virtme-ng=={VIRTME_NG_VERSION}"),
        ])
        .status()
        .context("python3 is needed for virtme-ng")?;
    let _ = Command::new("pyenv").arg("rehash").status();
    match scripts().filter(|p| p.is_file()) {
        Some(vng) if status.success() => Ok(vng),
        _ => bail!(
            "could not install virtme-ng; run `python3 -m pip install virtme-ng=={VIRTME_NG_VERSION}`"
        ),
    }
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Runs cargo with `args`, failing with the command line when it fails.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new("cargo")
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}
