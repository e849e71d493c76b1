//! Conntrack as users see it (`ct ls`, `ct flush`), its garbage collection, and `stats`.
//! The programs record the TCP flags each direction has seen; the state and its timeout are
//! derived here, with Calico's timeouts.
use std::{collections::HashMap, net::Ipv4Addr};

use anyhow::Result;
use bridgenet_common::{CtEntry, CtKey, direction, tcp_seen};

use super::{Daemon, Error};
use crate::{
    api::{Flow, Stat, Tuple},
    datapath::from_wire,
};

/// A flow's state, from the flags both directions have seen.
fn state(proto: u8, original: &CtEntry, reply: Option<&CtEntry>) -> (&'static str, u64) {
    let seen = original.tcp_seen | reply.map_or(0, |r| r.tcp_seen);
    let replied = reply.is_some_and(|r| r.packets > 0);
    match proto {
        6 if seen & tcp_seen::RST != 0 => ("CLOSE", 10),
        6 if seen & tcp_seen::FIN != 0 => ("TIME_WAIT", 30),
        6 if replied && seen & tcp_seen::ACK != 0 => ("ESTABLISHED", 3600),
        6 => ("SYN_SENT", 20),
        17 if replied => ("ASSURED", 60),
        17 => ("UNREPLIED", 60),
        _ => ("", 5),
    }
}

fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        p => p.to_string(),
    }
}

fn tuple(key: &CtKey, entry: &CtEntry) -> Tuple {
    Tuple {
        src: from_wire(key.saddr),
        dst: from_wire(key.daddr),
        sport: u16::from_be(key.sport),
        dport: u16::from_be(key.dport),
        packets: entry.packets,
        bytes: entry.bytes,
    }
}

/// Nanoseconds on the clock bpf_ktime_get_ns reads.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Tracked {
    key: CtKey,
    entry: CtEntry,
    reply: Option<(CtKey, CtEntry)>,
    /// Seconds left before expiry.
    left: u64,
    state: &'static str,
}

impl Daemon {
    /// Every flow, from its original direction's entry and its peer.
    fn tracked(&self) -> Result<Vec<Tracked>> {
        let entries: HashMap<CtKey, CtEntry> = self.dp.conntrack()?.into_iter().collect();
        let now = now_ns();
        let mut out = Vec::new();
        for (key, entry) in &entries {
            if entry.direction != direction::ORIGINAL {
                continue;
            }
            let reply = entries.get(&entry.peer).map(|r| (entry.peer, *r));
            let (state, timeout) = state(key.proto, entry, reply.as_ref().map(|(_, r)| r));
            let last = entry
                .last_seen_ns
                .max(reply.map_or(0, |(_, r)| r.last_seen_ns));
            let idle = now.saturating_sub(last) / 1_000_000_000;
            out.push(Tracked {
                key: *key,
                entry: *entry,
                reply,
                left: timeout.saturating_sub(idle),
                state,
            });
        }
        Ok(out)
    }

    pub fn flows(&self) -> Result<Vec<Flow>, Error> {
        let mut flows: Vec<Flow> = self
            .tracked()?
            .iter()
            .map(|t| Flow {
                proto: proto_name(t.key.proto),
                state: t.state.into(),
                timeout: t.left,
                original: tuple(&t.key, &t.entry),
                reply: t.reply.as_ref().map(|(k, e)| tuple(k, e)),
            })
            .collect();
        flows.sort_by_key(|f| {
            (
                f.original.src,
                f.original.sport,
                f.original.dst,
                f.original.dport,
            )
        });
        Ok(flows)
    }

    fn remove_flow(&mut self, t: &Tracked) -> Result<()> {
        self.dp.conntrack_remove(&t.key)?;
        if let Some((key, _)) = &t.reply {
            self.dp.conntrack_remove(key)?;
        }
        Ok(())
    }

    /// Removes expired flows (both directions).
    pub(super) fn conntrack_gc(&mut self) -> Result<()> {
        let expired: Vec<Tracked> = self
            .tracked()?
            .into_iter()
            .filter(|t| t.left == 0)
            .collect();
        for t in &expired {
            self.remove_flow(t)?;
        }
        if !expired.is_empty() {
            tracing::debug!("conntrack: {} flows expired", expired.len());
        }
        Ok(())
    }

    /// Removes the flows that involve `ip` in either direction; returns how many.
    pub(super) fn conntrack_remove_addr(&mut self, ip: Ipv4Addr) -> Result<usize> {
        let ip = crate::datapath::wire(ip);
        let hit = |k: &CtKey| k.saddr == ip || k.daddr == ip;
        let flows: Vec<Tracked> = self
            .tracked()?
            .into_iter()
            .filter(|t| {
                hit(&t.key)
                    || t.entry.nat_addr == ip
                    || t.reply
                        .as_ref()
                        .is_some_and(|(k, e)| hit(k) || e.nat_addr == ip)
            })
            .collect();
        for t in &flows {
            self.remove_flow(t)?;
        }
        Ok(flows.len())
    }

    /// `ct flush [--endpoint EP]`: returns the number of flows removed.
    pub fn conntrack_flush(&mut self, endpoint: Option<&str>) -> Result<usize, Error> {
        match endpoint {
            Some(name) => {
                let ip = self.endpoint(name)?.ip;
                Ok(self.conntrack_remove_addr(ip)?)
            }
            None => {
                let all = self.tracked()?;
                for t in &all {
                    self.remove_flow(t)?;
                }
                Ok(all.len())
            }
        }
    }

    pub fn stats(&self) -> Result<Vec<Stat>, Error> {
        Ok(self
            .dp
            .stats()?
            .into_iter()
            .map(|(program, outcome, count)| Stat {
                program: program.into(),
                outcome: outcome.into(),
                count,
            })
            .collect())
    }
}
