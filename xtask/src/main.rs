//! `cargo xtask`: the developer commands. Each first installs what it needs (idempotently).
mod bench;
mod cluster;
mod netns;
mod run;
mod setup;
mod static_keys;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "bridgenet's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build bridgenet and run the lab demo; `cargo xtask run -- ARGS` runs bridgenet ARGS instead.
    Run {
        /// A cluster of this many nodes (2 to 9) with pods attached through bridgenet-cni,
        /// instead of the one-host lab.
        #[arg(long)]
        nodes: Option<usize>,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test on the running kernel, then on each kernel of --kernels in a VM.
    Test {
        /// Debian kernel series to boot with virtme-ng as well, e.g. 6.1,6.12.
        #[arg(long, value_delimiter = ',')]
        kernels: Vec<String>,
        /// Only the kernels of --kernels, not the running one.
        #[arg(long)]
        no_host: bool,
        /// Run only the tests whose names contain this string, or the tests of one file
        /// (`control_monitor`).
        filter: Option<String>,
    },
    /// bridgenet against Docker's iptables NAT, nftables and plain routing; writes BENCHMARKS.md.
    Bench {
        /// One short round (seconds), for CI; the report goes to target/bench-quick/.
        #[arg(long)]
        quick: bool,
    },
    /// cargo fmt --check and clippy with warnings denied, on the userspace and eBPF crates.
    Lint,
    /// Runs already-built test binaries on this kernel; used inside the matrix VMs.
    #[command(hide = true)]
    GuestTest {
        #[arg(long)]
        plan: std::path::PathBuf,
        #[arg(long)]
        report: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { nodes: Some(n), .. } => cluster::run(n),
        Command::Run { nodes: None, args } => run::run(&args),
        Command::Test {
            kernels,
            no_host,
            filter,
        } => test::test(&kernels, !no_host, filter.as_deref()),
        Command::Bench { quick } => bench::bench(quick),
        Command::Lint => lint(),
        Command::GuestTest { plan, report } => test::guest(&plan, &report),
    }
}

fn lint() -> Result<()> {
    setup::build_tools()?;
    setup::rustup_component("stable", "rustfmt")?;
    setup::rustup_component("stable", "clippy")?;
    setup::rustup_component("nightly", "clippy")?;
    setup::cargo(&["fmt", "--all", "--check"])?;
    setup::cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "bridgenet-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    setup::cargo(&[
        "+nightly",
        "clippy",
        "--package",
        "bridgenet-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ])?;
    println!("lint: ok");
    Ok(())
}
