//! `bridgenet monitor`: the datapath's drops (and with `--flows` the flows opened and closed)
//! as they happen, one line each, until Ctrl-C.
use std::{io::Write as _, path::Path};

use anyhow::Result;
use clap::Args;

use super::block_on;
use crate::api::{MonitorEvent, MonitorQuery, client};

#[derive(Args)]
pub struct MonitorArgs {
    /// Also flows opened (with their translation) and closed.
    #[arg(long)]
    flows: bool,
    /// Only events about this endpoint.
    #[arg(long)]
    endpoint: Option<String>,
    /// Only events about this network.
    #[arg(long)]
    network: Option<String>,
    /// Only drops of this reason (drop_isolation, drop_spoofed...; `bridgenet stats` lists
    /// them); flows are kept.
    #[arg(long)]
    reason: Option<String>,
    /// tcp, udp, icmp, arp or ipv6.
    #[arg(long)]
    proto: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn monitor(socket: &Path, args: MonitorArgs) -> Result<()> {
    let query = MonitorQuery {
        flows: args.flows,
        endpoint: args.endpoint,
        network: args.network,
        reason: args.reason,
        proto: args.proto,
    };
    let path = format!("/monitor{}", query.to_query());
    let out = std::cell::RefCell::new(std::io::stdout().lock());
    block_on(client::stream(
        socket,
        &path,
        |e: MonitorEvent| {
            if e.kind == "watching" {
                let what = if query.flows {
                    "drops and flows"
                } else {
                    "drops"
                };
                let rate = e.rate.unwrap_or_default();
                eprintln!(
                    "bridgenet monitor: watching {what} (at most {rate} events/s per CPU; \
                     Ctrl-C to stop)"
                );
            } else if args.json {
                writeln!(out.borrow_mut(), "{}", serde_json::to_string(&e)?)?;
            } else {
                writeln!(out.borrow_mut(), "{}", line(&e))?;
            }
            Ok(())
        },
        || Ok(out.borrow_mut().flush()?),
    ))
}

/// An event as one line of text.
fn line(e: &MonitorEvent) -> String {
    // The time of day, to the millisecond: the date is the day's.
    let time = e.time.get(11..23).unwrap_or(&e.time);
    let some = |s: &Option<String>| s.clone().unwrap_or_default();
    let about = match (&e.endpoint, &e.network) {
        (Some(ep), Some(n)) => format!(" ({ep}, {n})"),
        (None, Some(n)) => format!(" ({n})"),
        _ => String::new(),
    };
    let tuple = match (&e.src, &e.dst) {
        (Some(s), Some(d)) => format!(" {s} -> {d}"),
        _ => String::new(),
    };
    let icmp = match (e.icmp_type, e.icmp_code) {
        (Some(t), Some(c)) => format!(" type {t} code {c}"),
        _ => String::new(),
    };
    let proto = some(&e.proto);
    match e.kind.as_str() {
        "drop" => format!(
            "{time} {} {} {}{about}: {proto}{tuple}{icmp}",
            some(&e.reason),
            some(&e.program),
            some(&e.interface),
        ),
        "flow-opened" | "flow-closed" => {
            let translated = format!(
                " => {} -> {}",
                some(&e.translated_src),
                some(&e.translated_dst)
            );
            let place = match (&e.program, &e.interface) {
                (Some(p), Some(i)) => format!(" {p} {i}"),
                _ => String::new(),
            };
            let state = e
                .state
                .as_ref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default();
            format!(
                "{time} {} {}{place}{about}: {proto}{tuple}{translated}{state}",
                e.kind,
                some(&e.translation),
            )
        }
        "lost" => format!(
            "{time} lost {} events (over the datapath's rate, or the ring buffer full)",
            e.events.unwrap_or_default()
        ),
        other => format!("{time} {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drop_reads_as_reason_place_and_packet() {
        let e = MonitorEvent {
            time: "2026-12-01T22:01:02.345Z".into(),
            kind: "drop".into(),
            reason: Some("drop_isolation".into()),
            program: Some("endpoint_ingress".into()),
            interface: Some("bn1234".into()),
            endpoint: Some("web".into()),
            network: Some("n1".into()),
            proto: Some("tcp".into()),
            src: Some("198.18.1.2:40000".into()),
            dst: Some("198.18.2.2:80".into()),
            ..MonitorEvent::default()
        };
        assert_eq!(
            line(&e),
            "22:01:02.345 drop_isolation endpoint_ingress bn1234 (web, n1): tcp \
             198.18.1.2:40000 -> 198.18.2.2:80"
        );
    }
}
