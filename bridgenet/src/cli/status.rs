//! `bridgenet status`: one screen that says whether the datapath is healthy. The exit status
//! is non-zero when something is detached, missing or full, for scripts and health checks.
use std::path::Path;

use anyhow::{Result, bail};

use super::{get, print_json};
use crate::api::Status;

pub fn status(socket: &Path, json: bool) -> Result<()> {
    let s: Status = get(socket, "/status")?;
    if json {
        print_json(&s)?;
    } else {
        print(&s);
    }
    match s.problems.as_slice() {
        [] => Ok(()),
        [one] => bail!("unhealthy: {one}"),
        [first, rest @ ..] => bail!("unhealthy: {first} (and {} more)", rest.len()),
    }
}

fn print(s: &Status) {
    let health = if s.problems.is_empty() {
        "healthy"
    } else {
        "UNHEALTHY"
    };
    println!("bridgenet {}  up {}s  {health}", s.version, s.uptime_secs);
    for p in &s.problems {
        println!("  problem: {p}");
    }
    println!("\nUPLINK           ADDRESS          XDP      IPV6");
    for u in &s.uplinks {
        let addr6 = u.addr6.map_or("-".to_owned(), |a| a.to_string());
        println!(
            "{:<16} {:<16} {:<8} {addr6}",
            u.name,
            u.addr.to_string(),
            u.xdp
        );
    }
    println!("\nPROGRAM            INTERFACE        HOOK         MODE           ATTACHED");
    for p in &s.programs {
        println!(
            "{:<18} {:<16} {:<12} {:<14} {}",
            p.program,
            p.iface,
            p.hook,
            p.mode,
            if p.attached { "yes" } else { "NO" }
        );
    }
    println!("\nMAP                ENTRIES      LIMIT  LAYOUT");
    for m in &s.maps {
        let entries = m.entries.map_or("-".into(), |n| n.to_string());
        println!(
            "{:<18} {:>7} {:>10}  v{}",
            m.name, entries, m.limit, m.layout_version
        );
    }
    let ct = &s.conntrack;
    println!("\nconntrack: {} flows of {}", ct.flows, ct.limit);
    for f in &ct.by_state {
        println!("  {:<5} {:<12} {}", f.proto, f.state, f.flows);
    }
    match &ct.last_gc {
        Some(gc) => println!(
            "  last GC pass {}s ago: {} ms, {} flows expired, {} orphaned entries removed",
            gc.secs_ago, gc.duration_ms, gc.flows_expired, gc.orphans_removed
        ),
        None => println!("  no GC pass yet"),
    }
    println!("\ndrops in the last {}s:", s.window_secs);
    if s.drops.is_empty() {
        println!("  none");
    }
    for d in &s.drops {
        println!("  {:<18} {:<22} {}", d.program, d.outcome, d.count);
    }
    match &s.docker {
        Some(socket) => println!("\ndocker: network driver on {socket}"),
        None => println!("\ndocker: off"),
    }
}
