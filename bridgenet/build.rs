//! Builds the eBPF programs (bridgenet-ebpf) with the nightly toolchain and bpf-linker, so that
//! `cargo build -p bridgenet` needs no manual step. `AYA_BUILD_SKIP=1` skips it (clippy, docs):
//! the binary then carries an empty object and says so when it tries to load it.
use std::{fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../bridgenet-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    let ebpf = Package {
        name: "bridgenet-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default()).context(
        "building the eBPF programs failed; `cargo xtask test` installs the nightly rust-src \
         component and bpf-linker 0.10.3 they need",
    )?;

    let object = PathBuf::from(std::env::var("OUT_DIR")?).join("bridgenet-ebpf");
    if !object.exists() {
        fs::write(&object, [])?;
    }
    Ok(())
}
