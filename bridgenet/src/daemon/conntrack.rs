//! Conntrack as users see it (`ct ls`, `ct flush`), its garbage collection, and `stats`.
//! Flow states, timeouts and expiry are the datapath's (`datapath::conntrack`); this layer
//! turns them into the API's shapes.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::Result;
use bridgenet_common::{Ct6Entry, Ct6Key, CtEntry, CtKey};
use bytes::Bytes;

use super::{Daemon, Error};
use crate::{
    api::{CtQuery, ErrorBody, Flow, Stat, Tuple},
    datapath::{
        conntrack::{
            self, CtReader, Flow as Tracked, Flow6 as Tracked6, FlowFilter, FlowState, monotonic_ns,
        },
        from_wire,
    },
};

/// Flows (one line of NDJSON each) sent together: a chunk of about 80 KB.
const LINES_PER_CHUNK: usize = 256;
/// Chunks on their way to the client: with the chunk size, what a listing holds in memory.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Walks the table off the async runtime and streams the flows that `filter` keeps as
/// newline-delimited JSON, with backpressure: the walk goes as fast as the client reads, and
/// stops when the client goes away.
pub fn stream_flows(
    reader: CtReader,
    filter: FlowFilter,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::new();
        let mut lines = 0;
        let mut gone = false;
        let mut send = |flow: Flow| {
            // Serializing a plain struct into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut chunk, &flow);
            chunk.push(b'\n');
            lines += 1;
            if lines == LINES_PER_CHUNK {
                lines = 0;
                gone = tx
                    .blocking_send(Bytes::from(std::mem::take(&mut chunk)))
                    .is_err();
            }
            !gone
        };
        let now = monotonic_ns();
        // IPv4's flows, then IPv6's.
        let result = reader
            .walk(now, |t| !filter.matches(&t) || send(api_flow(&t)))
            .and_then(|()| reader.walk6(now, |t| !filter.matches6(&t) || send(api_flow6(&t))));
        if let Err(err) = result {
            let _ = serde_json::to_writer(
                &mut chunk,
                &ErrorBody {
                    error: format!("listing the conntrack table: {err:#}"),
                },
            );
            chunk.push(b'\n');
        }
        if !gone && !chunk.is_empty() {
            let _ = tx.blocking_send(Bytes::from(chunk));
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok(chunk), rx))
    })
}

/// Removes expired flows (both directions) and orphaned entries, and recounts the table: a
/// pass with handles of its own, off the async runtime and without the daemon's lock, which a
/// pass over a full table would hold for seconds; the lock is taken only to start and to
/// record it.
pub async fn conntrack_gc(daemon: &tokio::sync::Mutex<Daemon>) -> Result<()> {
    let (mut collector, monitor) = {
        let d = daemon.lock().await;
        (d.dp.conntrack_collector()?, d.monitor.clone())
    };
    if monitor.watching_flows() {
        collector.keep_expired();
    }
    let (took, report, expired) = tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        let report = collector.gc()?;
        anyhow::Ok((start.elapsed(), report, collector.take_expired()))
    })
    .await??;
    monitor.closed(expired);
    daemon.lock().await.observed.gc_done(took, report);
    if report.flows_expired + report.orphans_removed > 0 {
        tracing::debug!("conntrack gc: {report:?}");
    }
    Ok(())
}

/// Counts the flows that `filter` keeps, off the async runtime.
pub async fn count_flows(reader: CtReader, filter: FlowFilter) -> Result<u64, Error> {
    let count = tokio::task::spawn_blocking(move || {
        let (mut n, now) = (0u64, monotonic_ns());
        reader
            .walk(now, |t| {
                n += u64::from(filter.matches(&t));
                true
            })
            .and_then(|()| {
                reader.walk6(now, |t| {
                    n += u64::from(filter.matches6(&t));
                    true
                })
            })
            .map(|()| n)
    })
    .await
    .map_err(anyhow::Error::from)??;
    Ok(count)
}

fn api_flow(t: &Tracked) -> Flow {
    let tuple = |(key, entry): &(CtKey, CtEntry)| Tuple {
        src: from_wire(key.saddr).into(),
        dst: from_wire(key.daddr).into(),
        sport: u16::from_be(key.sport),
        dport: u16::from_be(key.dport),
        packets: entry.packets,
        bytes: entry.bytes,
    };
    let proto = t.original.0.proto;
    flow(
        proto,
        t.state,
        t.expires_in,
        tuple(&t.original),
        tuple(&t.reply),
    )
}

fn api_flow6(t: &Tracked6) -> Flow {
    let tuple = |(key, entry): &(Ct6Key, Ct6Entry)| Tuple {
        src: IpAddr::from(key.saddr),
        dst: IpAddr::from(key.daddr),
        sport: u16::from_be(key.sport),
        dport: u16::from_be(key.dport),
        packets: entry.track.packets,
        bytes: entry.track.bytes,
    };
    let proto = t.original.0.proto;
    flow(
        proto,
        t.state,
        t.expires_in,
        tuple(&t.original),
        tuple(&t.reply),
    )
}

fn flow(proto: u8, state: FlowState, expires_in: Duration, original: Tuple, reply: Tuple) -> Flow {
    Flow {
        proto: proto_name(proto),
        state: state.name().into(),
        timeout: expires_in.as_secs(),
        original,
        reply: Some(reply),
    }
}
pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        p => p.to_string(),
    }
}

impl Daemon {
    /// What a listing needs from the daemon, taken under its lock; the walk itself runs
    /// without it (`stream_flows`, `count_flows`).
    pub fn flow_listing(&self, q: &CtQuery) -> Result<(CtReader, FlowFilter), Error> {
        let mut filter = FlowFilter::parse(
            q.proto.as_deref(),
            q.state.as_deref(),
            q.src.as_deref(),
            q.dst.as_deref(),
            q.port.as_deref(),
        )
        .map_err(Error::BadRequest)?;
        if let Some(name) = &q.endpoint {
            let endpoint = self.endpoint(name)?;
            filter.endpoint = Some((endpoint.ip, endpoint.ip6));
        }
        Ok((self.dp.conntrack_reader()?, filter))
    }

    /// Removes the flows that involve `ip` or `ip6` in either direction; returns how many.
    pub(super) fn conntrack_remove_addr(
        &mut self,
        ip: Ipv4Addr,
        ip6: Option<Ipv6Addr>,
    ) -> Result<usize> {
        let mut flows = self.dp.revoke(conntrack::uses_addr(ip))?.flows;
        if let Some(ip6) = ip6 {
            flows += self.dp.revoke6(conntrack::uses_addr6(ip6))?.flows;
        }
        Ok(flows)
    }

    /// `ct flush [--endpoint EP]`, both families: returns the number of flows removed.
    pub fn conntrack_flush(&mut self, endpoint: Option<&str>) -> Result<usize, Error> {
        match endpoint {
            Some(name) => {
                let endpoint = self.endpoint(name)?;
                let (ip, ip6) = (endpoint.ip, endpoint.ip6);
                Ok(self.conntrack_remove_addr(ip, ip6)?)
            }
            None => Ok(self.dp.revoke(|_, _| true)?.flows + self.dp.revoke6(|_, _| true)?.flows),
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
