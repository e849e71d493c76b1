//! Conntrack as users see it (`ct ls`, `ct flush`), its garbage collection, and `stats`.
//! Flow states, timeouts and expiry are the datapath's (`datapath::conntrack`); this layer
//! turns them into the API's shapes.
use std::net::Ipv4Addr;

use anyhow::Result;
use bridgenet_common::{CtEntry, CtKey};

use super::{Daemon, Error};
use crate::{
    api::{Flow, Stat, Tuple},
    datapath::{
        conntrack::{self, Flow as Tracked, monotonic_ns},
        from_wire,
    },
};

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

impl Daemon {
    /// Every flow with both its directions, as the datapath tracks it now.
    fn tracked(&self) -> Result<Vec<Tracked>> {
        self.dp.flows_at(monotonic_ns())
    }

    pub fn flows(&self) -> Result<Vec<Flow>, Error> {
        let mut flows: Vec<Flow> = self
            .tracked()?
            .iter()
            .map(|t| Flow {
                proto: proto_name(t.original.0.proto),
                state: t.state.name().into(),
                timeout: t.expires_in.as_secs(),
                original: tuple(&t.original.0, &t.original.1),
                reply: Some(tuple(&t.reply.0, &t.reply.1)),
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

    /// Removes expired flows (both directions) and orphaned entries, and recounts the table.
    pub(super) fn conntrack_gc(&mut self) -> Result<()> {
        let report = self.dp.gc()?;
        if report.flows_expired + report.orphans_removed > 0 {
            tracing::debug!("conntrack gc: {report:?}");
        }
        Ok(())
    }

    /// Removes the flows that involve `ip` in either direction; returns how many.
    pub(super) fn conntrack_remove_addr(&mut self, ip: Ipv4Addr) -> Result<usize> {
        Ok(self.dp.revoke(conntrack::uses_addr(ip))?.flows)
    }

    /// `ct flush [--endpoint EP]`: returns the number of flows removed.
    pub fn conntrack_flush(&mut self, endpoint: Option<&str>) -> Result<usize, Error> {
        match endpoint {
            Some(name) => {
                let ip = self.endpoint(name)?.ip;
                Ok(self.conntrack_remove_addr(ip)?)
            }
            None => Ok(self.dp.revoke(|_, _| true)?.flows),
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
