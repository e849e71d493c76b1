//! `bridgenet filter`: the user filter (Docker's DOCKER-USER chain).
use std::path::Path;

use anyhow::{Result, bail};
use clap::Subcommand;
use hyper::Method;

use super::{block_on, get, name, print_json, send};
use crate::{
    api::{FilterCreate, FilterEntry, client},
    state::filter::{Action, Dport, parse_src},
};

#[derive(Subcommand)]
pub enum FilterCmd {
    /// Add a rule after the others, for packets from uplinks to endpoints (published or
    /// routed); the first rule that matches decides.
    Add {
        /// The destination endpoint's network; default: any.
        #[arg(long)]
        network: Option<String>,
        /// Source address or CIDR, IPv4 or IPv6 (a rule with one holds for its family only);
        /// default: any source of both families.
        #[arg(long)]
        src: Option<String>,
        /// Destination port as it arrives (the published host port), PORT[/PROTO], tcp by
        /// default; default: every protocol and port.
        #[arg(long, value_name = "PORT[/PROTO]")]
        dport: Option<String>,
        /// allow or drop (required).
        #[arg(long)]
        action: Option<String>,
    },
    /// List the rules in evaluation order, with the packets each decided.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a rule by its ID.
    Rm { id: String },
}

pub fn filter(socket: &Path, cmd: FilterCmd) -> Result<()> {
    match cmd {
        FilterCmd::Add {
            network,
            src,
            dport,
            action,
        } => {
            if let Some(n) = &network {
                name("network", n)?;
            }
            if let Some(s) = &src {
                parse_src(s).map_err(anyhow::Error::msg)?;
            }
            if let Some(d) = &dport {
                d.parse::<Dport>().map_err(anyhow::Error::msg)?;
            }
            // Checked here rather than by clap, whose message names the option on a second line.
            let Some(action) = action else {
                bail!("filter add needs --action allow or --action drop");
            };
            action.parse::<Action>().map_err(anyhow::Error::msg)?;
            let req = FilterCreate {
                network,
                src,
                dport,
                action,
            };
            let rule: FilterEntry = send(socket, Method::POST, "/filters", &req)?;
            println!("{}", rule.id);
        }
        FilterCmd::Ls { json } => {
            let rules: Vec<FilterEntry> = get(socket, "/filters")?;
            if json {
                return print_json(&rules);
            }
            println!(
                "{:<5} {:<16} {:<24} {:<10} {:<7} {:>12}",
                "ID", "NETWORK", "SRC", "DPORT", "ACTION", "PACKETS"
            );
            for r in rules {
                println!(
                    "{:<5} {:<16} {:<24} {:<10} {:<7} {:>12}",
                    r.id,
                    r.network.as_deref().unwrap_or("any"),
                    r.src.map_or("any".into(), |s| s.to_string()),
                    r.dport.map_or("any".into(), |d| d.to_string()),
                    r.action.to_string(),
                    r.packets
                );
            }
        }
        FilterCmd::Rm { id } => {
            if id.parse::<u32>().is_err() {
                bail!("invalid filter rule id {id:?} (a number, as `filter ls` shows)");
            }
            let rule: FilterEntry = block_on(client::call(
                socket,
                Method::DELETE,
                &format!("/filters/{id}"),
                None::<&()>,
            ))?;
            println!("{}", rule.id);
        }
    }
    Ok(())
}
