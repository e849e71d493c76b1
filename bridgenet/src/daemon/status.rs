//! `status`: whether the datapath is healthy (every program attached, no table full) and
//! what it is made of, and the bookkeeping it needs while the daemon runs (start time, the
//! last GC pass, a ring of counter snapshots for the drops of the last minute).
use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use bridgenet_common::programs;

use super::{Daemon, Error, attachments::Attachment, conntrack::proto_name};
use crate::{
    api::{
        ConntrackStatus, FlowsInState, GcPass, MapStatus, ProgramStatus, Stat, Status, UplinkStatus,
    },
    datapath::{
        Hook, MapFill,
        conntrack::{Census, CtReader, GcReport, monotonic_ns},
        uses_tcx,
    },
    netlink::{Netlink, Traffic},
};

/// How far back `status` looks for drops.
const DROP_WINDOW: Duration = Duration::from_secs(60);

/// Counter snapshots kept: one per GC tick (10 s), a little more than the window.
const SNAPSHOTS: usize = 8;

/// What the daemon remembers for `status` and the metrics.
pub struct Observed {
    started: Instant,
    /// The last pass: when it ended (monotonic and wall clock), how long it took, what it did.
    last_gc: Option<(Instant, SystemTime, Duration, GcReport)>,
    gc_totals: GcTotals,
    /// (when, every non-zero counter), oldest first.
    snapshots: VecDeque<(Instant, Vec<Stat>)>,
    docker: Option<PathBuf>,
    /// Attachments (program, interface) the daemon fails to put back: logged once.
    pub attach_failing: std::collections::BTreeSet<(&'static str, String)>,
}

impl Observed {
    pub fn new(docker: Option<PathBuf>) -> Self {
        Self {
            started: Instant::now(),
            last_gc: None,
            gc_totals: GcTotals::default(),
            snapshots: VecDeque::new(),
            docker,
            attach_failing: Default::default(),
        }
    }

    pub fn gc_done(&mut self, took: Duration, report: GcReport) {
        self.last_gc = Some((Instant::now(), SystemTime::now(), took, report));
        let t = &mut self.gc_totals;
        t.passes += 1;
        t.flows_expired += report.flows_expired as u64;
        t.orphans_removed += report.orphans_removed as u64;
        t.last_duration = took;
    }
}

/// GC since the daemon started.
#[derive(Clone, Copy, Debug, Default)]
pub struct GcTotals {
    pub passes: u64,
    pub flows_expired: u64,
    pub orphans_removed: u64,
    pub last_duration: Duration,
}

/// What the metrics read under the daemon's lock (the conntrack census comes after, from
/// the reader, without it).
pub struct Observation {
    pub stats: Vec<Stat>,
    pub maps: Vec<MapFill>,
    /// Flows the conntrack table may hold.
    pub conntrack_limit: u64,
    /// (name, address) of each uplink.
    pub uplinks: Vec<(String, std::net::Ipv4Addr)>,
    pub gc: GcTotals,
    /// The endpoints' traffic, read after the lock.
    pub traffic: TrafficReader,
}

/// Reads each endpoint's traffic from the counters of its veth's host end (one link dump),
/// without the daemon's lock: the kernel counts it already, so the datapath pays nothing
/// but for what its fast path sends past the veth, which it counts itself.
pub struct TrafficReader {
    nl: Netlink,
    /// (endpoint, network, host end of its veth), for the endpoints that have a veth.
    veths: Vec<(String, String, String)>,
    /// (packets, bytes) the fast path sent into the endpoint of each veth (by ifindex).
    fast_path: BTreeMap<u32, (u64, u64)>,
}

/// An endpoint's traffic.
pub struct EndpointTraffic {
    pub endpoint: String,
    pub network: String,
    /// rx is what the endpoint sent, tx what it received: its veth's host end's counters,
    /// and in tx what the fast path sent straight into the endpoint.
    pub host_end: Traffic,
}

impl TrafficReader {
    pub async fn read(self) -> Result<Vec<EndpointTraffic>, Error> {
        let links = self.nl.links().await?;
        Ok(self
            .veths
            .into_iter()
            .filter_map(|(endpoint, network, veth)| {
                let link = links.iter().find(|l| l.name == veth)?;
                let mut host_end = link.traffic;
                if let Some((packets, bytes)) = self.fast_path.get(&link.index) {
                    host_end.tx_packets += packets;
                    host_end.tx_bytes += bytes;
                }
                Some(EndpointTraffic {
                    endpoint,
                    network,
                    host_end,
                })
            })
            .collect())
    }
}

fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::TcIngress => "tc ingress",
        Hook::TcEgress => "tc egress",
        Hook::Xdp => "xdp",
    }
}

impl Daemon {
    /// What the metrics report, and a reader for the conntrack census.
    pub fn observe(&self) -> Result<(Observation, CtReader), Error> {
        Ok((
            Observation {
                stats: self.stats()?,
                maps: self.dp.map_fill()?,
                conntrack_limit: self.dp.conntrack_usage()?.1,
                uplinks: self
                    .uplinks
                    .iter()
                    .map(|u| (u.name.clone(), u.addr))
                    .collect(),
                gc: self.observed.gc_totals,
                traffic: TrafficReader {
                    nl: self.nl.clone(),
                    veths: self
                        .state
                        .endpoints
                        .values()
                        .filter(|e| !e.veth.is_empty())
                        .map(|e| (e.name.clone(), e.network.clone(), e.veth.clone()))
                        .collect(),
                    fast_path: self
                        .dp
                        .endpoint_peers()?
                        .into_iter()
                        .map(|(_, p)| (p.veth, (p.packets, p.bytes)))
                        .collect(),
                },
            },
            self.dp.conntrack_reader()?,
        ))
    }

    /// Keeps a snapshot of the counters (every GC tick), for the drops of the last minute.
    pub(super) fn snapshot_counters(&mut self) -> Result<(), Error> {
        let now = self.stats()?;
        let ring = &mut self.observed.snapshots;
        ring.push_back((Instant::now(), now));
        while ring.len() > SNAPSHOTS {
            ring.pop_front();
        }
        Ok(())
    }

    /// Drops since the newest snapshot at least a minute old (else the oldest), and the
    /// seconds that covers.
    fn recent_drops(&self, now: &[Stat]) -> (Vec<Stat>, u64) {
        let ring = &self.observed.snapshots;
        let base = ring
            .iter()
            .rev()
            .find(|(at, _)| at.elapsed() >= DROP_WINDOW)
            .or(ring.front());
        let (since, before) = match base {
            Some((at, stats)) => (*at, stats.as_slice()),
            None => (self.observed.started, &[][..]),
        };
        let drops = now
            .iter()
            .filter(|s| s.outcome.starts_with("drop_"))
            .filter_map(|s| {
                let was = before
                    .iter()
                    .find(|b| b.program == s.program && b.outcome == s.outcome)
                    .map_or(0, |b| b.count);
                (s.count > was).then(|| Stat {
                    count: s.count - was,
                    ..s.clone()
                })
            })
            .collect();
        (drops, since.elapsed().as_secs())
    }

    /// `GET /status` but the conntrack census, read under the daemon's lock; `census` then
    /// walks the table without it.
    pub async fn status(&self) -> Result<(Status, CtReader), Error> {
        let mut problems = Vec::new();
        let links = self.nl.links().await?;
        let mut program_rows = Vec::new();
        let attachments: Vec<Attachment> = self.attachments();
        for a in &attachments {
            let attached = self.attached(a, &links).await?;
            let mode = match a.hook {
                Hook::Xdp => {
                    let link = links.iter().find(|l| l.name == a.iface);
                    format!("xdp {}", link.and_then(|l| l.xdp_mode).unwrap_or("-"))
                }
                _ if uses_tcx(a.program) => "tcx".into(),
                _ => "netlink".into(),
            };
            if !attached {
                problems.push(format!(
                    "{} is not attached to {} ({})",
                    a.program,
                    a.iface,
                    hook_name(a.hook)
                ));
            }
            program_rows.push(ProgramStatus {
                program: a.program.into(),
                iface: a.iface.clone(),
                hook: hook_name(a.hook).into(),
                mode,
                attached,
            });
        }
        let uplinks = self
            .uplinks
            .iter()
            .map(|u| {
                let xdp = program_rows
                    .iter()
                    .find(|p| p.program == programs::UPLINK_XDP && p.iface == u.name);
                UplinkStatus {
                    name: u.name.clone(),
                    addr: u.addr,
                    addr6: u.addr6,
                    xdp: match xdp {
                        None => "off".into(),
                        Some(p) if !p.attached => "detached".into(),
                        Some(p) => p.mode.trim_start_matches("xdp ").into(),
                    },
                }
            })
            .collect();
        let mut maps = Vec::new();
        for m in self.dp.map_fill()? {
            if let Some(n) = m.entries
                && n >= m.max_entries
            {
                problems.push(if m.name == bridgenet_common::maps::CONNTRACK {
                    format!(
                        "the conntrack table is full: {n} flows of {} (new flows are dropped: \
                         drop_ct_full)",
                        m.max_entries
                    )
                } else {
                    format!("map {} is full: {n} entries of {}", m.name, m.max_entries)
                });
            }
            maps.push(MapStatus {
                name: m.name.into(),
                entries: m.entries,
                limit: m.max_entries,
                layout_version: m.layout_version,
            });
        }
        let (_, limit) = self.dp.conntrack_usage()?;
        let stats = self.stats()?;
        let (drops, window_secs) = self.recent_drops(&stats);
        Ok((
            Status {
                version: env!("CARGO_PKG_VERSION").into(),
                uptime_secs: self.observed.started.elapsed().as_secs(),
                problems,
                uplinks,
                programs: program_rows,
                maps,
                conntrack: ConntrackStatus {
                    flows: 0,
                    limit,
                    by_state: Vec::new(),
                    last_gc: self.observed.last_gc.map(|(at, wall, took, r)| GcPass {
                        secs_ago: at.elapsed().as_secs(),
                        ended_unix_ms: wall
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                        duration_ms: took.as_millis() as u64,
                        flows_expired: r.flows_expired as u64,
                        orphans_removed: r.orphans_removed as u64,
                    }),
                },
                drops,
                window_secs,
                docker: self
                    .observed
                    .docker
                    .as_ref()
                    .map(|p| p.display().to_string()),
            },
            self.dp.conntrack_reader()?,
        ))
    }
}

/// Fills in the flows by protocol and state, walking the table off the async runtime.
pub async fn census(mut status: Status, reader: CtReader) -> Result<Status, Error> {
    let census = walk_census(reader).await?;
    status.conntrack.flows = census.by_state.values().sum();
    status.conntrack.by_state = census
        .by_state
        .into_iter()
        .map(|((proto, state), flows)| FlowsInState {
            proto: proto_name(proto),
            state: state.into(),
            flows,
        })
        .collect();
    Ok(status)
}

/// `CtReader::census` off the async runtime.
pub async fn walk_census(reader: CtReader) -> Result<Census, Error> {
    Ok(
        tokio::task::spawn_blocking(move || reader.census(monotonic_ns()))
            .await
            .map_err(anyhow::Error::from)??,
    )
}
