use std::time::Duration;

use anyhow::Result;
use aya::programs::TcAttachType;
use bridgenet::datapath::{Datapath, TcMode};
use clap::{Parser, Subcommand};

/// bridgenet: Docker-style bridge networking with an eBPF dataplane.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the packet counters to interfaces and print their counts every second until Ctrl-C.
    Watch {
        /// Interfaces in this network namespace.
        #[arg(required = true)]
        ifaces: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Watch { ifaces } => watch(&ifaces),
    }
}

fn watch(ifaces: &[String]) -> Result<()> {
    let mut dp = Datapath::load()?;
    let mut names = std::collections::BTreeMap::new();
    for iface in ifaces {
        dp.attach_tc_count(iface, TcAttachType::Ingress, TcMode::Auto)?;
        dp.attach_tc_count(iface, TcAttachType::Egress, TcMode::Auto)?;
        names.insert(
            nix::net::if_::if_nametoindex(iface.as_str())?,
            iface.clone(),
        );
    }
    println!(
        "counting packets on {} (TC ingress and egress); Ctrl-C stops",
        ifaces.join(", ")
    );
    loop {
        std::thread::sleep(Duration::from_secs(1));
        for (ifindex, counters) in dp.if_counters()? {
            let name = names.get(&ifindex).map_or("?", String::as_str);
            println!(
                "{name:<12} {:>8} packets {:>10} bytes",
                counters.packets, counters.bytes
            );
        }
    }
}
