use anyhow::Result;
use clap::Parser;

/// bridgenet: Docker-style bridge networking with an eBPF dataplane.
#[derive(Parser)]
#[command(version)]
struct Cli {}

fn main() -> Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
