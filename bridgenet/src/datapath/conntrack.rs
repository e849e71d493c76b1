//! Conntrack in userspace: the state of a flow from its two directions, a timeout per state,
//! and garbage collection of expired flows. An IPv4 flow is one `CtFlow` (layout v3), read as
//! its two v2 entries (`CtFlow::entries`); an IPv6 flow is two `Ct6Entry`s, and GC also
//! removes the IPv6 entries whose other direction is gone.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, IterableMap, Map, MapData};
use bridgenet_common::{
    Ct6Entry, Ct6Key, CtEntry, CtFlow, CtKey, EmbryoSlot, NatConfig, PublishKey, PublishedBy,
    action, ct_flags, ct_usage, direction, embryo_ring, flow_kind, maps, port_hash,
    port_hash::PortSecret, tcp_seen,
};

use super::{Datapath, batch, from_wire, wire};

const TCP: u8 = 6;

/// Where a flow is in its life, as `ct ls` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// TCP: SYN sent, no answer yet.
    SynSent,
    /// TCP: SYN answered, the opener has not acknowledged yet (half-open).
    SynRecv,
    /// TCP: the handshake completed (assured).
    Established,
    /// TCP: a FIN was seen.
    Closing,
    /// TCP: a RST, or FINs from both sides.
    Closed,
    /// UDP or ICMP: nothing came back yet.
    Unreplied,
    /// UDP or ICMP: the other side answered, once.
    Replied,
    /// UDP or ICMP: both sides spoke and one spoke again (a stream).
    Assured,
}

impl FlowState {
    /// How long a flow in this state lives without packets: Linux conntrack's defaults, with
    /// established TCP at one hour and flows that never completed a handshake at 20 s, as
    /// Calico has them, so that half-open floods go quickly.
    pub fn timeout(self, _proto: u8) -> Duration {
        match self {
            Self::SynSent | Self::SynRecv => Duration::from_secs(20),
            Self::Established => Duration::from_secs(3600),
            Self::Closing => Duration::from_secs(120),
            Self::Closed => Duration::from_secs(10),
            Self::Unreplied | Self::Replied => Duration::from_secs(30),
            Self::Assured => Duration::from_secs(180),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::Established => "ESTABLISHED",
            Self::Closing => "FIN_WAIT",
            Self::Closed => "CLOSE",
            Self::Unreplied => "UNREPLIED",
            Self::Replied => "REPLIED",
            Self::Assured => "ASSURED",
        }
    }
}

/// The state of a flow from the entry of each direction.
pub fn state_of(proto: u8, original: &CtEntry, reply: &CtEntry) -> FlowState {
    let assured = (original.flags | reply.flags) & ct_flags::ASSURED != 0;
    if proto != TCP {
        return if assured {
            FlowState::Assured
        } else if reply.packets > 0 {
            FlowState::Replied
        } else {
            FlowState::Unreplied
        };
    }
    let seen = original.tcp_seen | reply.tcp_seen;
    if seen & tcp_seen::RST != 0 || (original.tcp_seen & reply.tcp_seen & tcp_seen::FIN) != 0 {
        FlowState::Closed
    } else if seen & tcp_seen::FIN != 0 {
        FlowState::Closing
    } else if assured {
        FlowState::Established
    } else if reply.tcp_seen & tcp_seen::SYN != 0 {
        FlowState::SynRecv
    } else {
        FlowState::SynSent
    }
}

/// One flow: its two entries, original direction first.
#[derive(Clone, Debug)]
pub struct Flow {
    pub original: (CtKey, CtEntry),
    pub reply: (CtKey, CtEntry),
    pub state: FlowState,
    /// Time without packets before it expires.
    pub expires_in: Duration,
}

/// One IPv6 flow (`CONNTRACK6`), as `Flow`.
#[derive(Clone, Debug)]
pub struct Flow6 {
    pub original: (Ct6Key, Ct6Entry),
    pub reply: (Ct6Key, Ct6Entry),
    pub state: FlowState,
    pub expires_in: Duration,
}

/// Every state `ct ls --state` takes.
const STATES: [FlowState; 8] = [
    FlowState::SynSent,
    FlowState::SynRecv,
    FlowState::Established,
    FlowState::Closing,
    FlowState::Closed,
    FlowState::Unreplied,
    FlowState::Replied,
    FlowState::Assured,
];

/// Which flows a listing keeps: `ct ls`'s filters, checked and resolved.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    /// An endpoint's addresses, IPv4 and IPv6 if it has one: in either entry's tuple or
    /// translation.
    pub endpoint: Option<(Ipv4Addr, Option<Ipv6Addr>)>,
    proto: Option<u8>,
    state: Option<FlowState>,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    port: Option<u16>,
}

impl FlowFilter {
    /// Checks every filter but `--endpoint` (an address the daemon resolves, `addr`): one
    /// line per bad value, the CLI's and the daemon's alike.
    pub fn parse(
        proto: Option<&str>,
        state: Option<&str>,
        src: Option<&str>,
        dst: Option<&str>,
        port: Option<&str>,
    ) -> Result<Self, String> {
        let addr = |what: &str, v: Option<&str>| {
            v.map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| format!("invalid {what} {s:?} (expected an IP address)"))
            })
            .transpose()
        };
        Ok(Self {
            endpoint: None,
            proto: proto
                .map(|p| match p.to_ascii_lowercase().as_str() {
                    "tcp" => Ok(6),
                    "udp" => Ok(17),
                    "icmp" => Ok(1),
                    "icmpv6" => Ok(58),
                    other => other.parse::<u8>().map_err(|_| {
                        format!(
                            "invalid protocol {p:?} (expected tcp, udp, icmp, icmpv6 or a number)"
                        )
                    }),
                })
                .transpose()?,
            state: state
                .map(|s| {
                    STATES
                        .into_iter()
                        .find(|st| st.name().eq_ignore_ascii_case(s))
                        .ok_or_else(|| {
                            let names: Vec<&str> = STATES.iter().map(|st| st.name()).collect();
                            format!("invalid state {s:?} (expected one of {})", names.join(", "))
                        })
                })
                .transpose()?,
            src: addr("source", src)?,
            dst: addr("destination", dst)?,
            port: port
                .map(|p| {
                    p.parse::<u16>()
                        .map_err(|_| format!("invalid port {p:?} (expected 0-65535)"))
                })
                .transpose()?,
        })
    }

    pub fn matches(&self, flow: &Flow) -> bool {
        let (ok, oe) = &flow.original;
        let (rk, re) = &flow.reply;
        let ports = [ok.sport, ok.dport, rk.sport, rk.dport].map(u16::from_be);
        self.proto.is_none_or(|p| ok.proto == p)
            && self.state.is_none_or(|s| flow.state == s)
            && self
                .src
                .is_none_or(|a| IpAddr::V4(from_wire(ok.saddr)) == a)
            && self
                .dst
                .is_none_or(|a| IpAddr::V4(from_wire(ok.daddr)) == a)
            && self.port.is_none_or(|p| ports.contains(&p))
            && self.endpoint.is_none_or(|(a, _)| {
                let uses = uses_addr(a);
                uses(ok, oe) || uses(rk, re)
            })
    }

    pub fn matches6(&self, flow: &Flow6) -> bool {
        let (ok, oe) = &flow.original;
        let (rk, re) = &flow.reply;
        let ports = [ok.sport, ok.dport, rk.sport, rk.dport].map(u16::from_be);
        self.proto.is_none_or(|p| ok.proto == p)
            && self.state.is_none_or(|s| flow.state == s)
            && self.src.is_none_or(|a| IpAddr::from(ok.saddr) == a)
            && self.dst.is_none_or(|a| IpAddr::from(ok.daddr) == a)
            && self.port.is_none_or(|p| ports.contains(&p))
            && self.endpoint.is_none_or(|(_, a)| {
                a.is_some_and(|a| {
                    let uses = uses_addr6(a);
                    uses(ok, oe) || uses(rk, re)
                })
            })
    }
}

/// How long an IPv6 entry without its other direction is left alone: a new flow's second
/// entry follows its first within microseconds.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// What a garbage collection pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub flows_expired: usize,
    /// IPv6 entries whose other direction was gone, and `CT_EXCEPTIONS` entries whose flow
    /// was.
    pub orphans_removed: usize,
    /// Elements left in the tables: one per IPv4 flow, two per IPv6 flow.
    pub entries_left: usize,
}

/// CLOCK_MONOTONIC in nanoseconds: the flows' last-seen times are its coarse reading
/// (bpf_ktime_get_coarse_ns, a tick behind at most), so ages are taken saturating.
pub fn monotonic_ns() -> u64 {
    let now =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

impl Flow {
    /// The flow of an original entry and its reply entry, at monotonic time `now_ns`.
    fn of(original: (CtKey, CtEntry), reply: (CtKey, CtEntry), now_ns: u64) -> Self {
        let (key, entry) = original;
        let state = state_of(key.proto, &entry, &reply.1);
        let idle = Duration::from_nanos(
            now_ns.saturating_sub(entry.last_seen_ns.max(reply.1.last_seen_ns)),
        );
        Self {
            original,
            reply,
            state,
            expires_in: state.timeout(key.proto).saturating_sub(idle),
        }
    }

    /// The flow of the `CONNTRACK` element `key`, at monotonic time `now_ns`.
    pub fn of_element(key: &CtKey, flow: &CtFlow, now_ns: u64) -> Self {
        let [original, reply] = flow.entries(key);
        Self::of(original, reply, now_ns)
    }
}

/// Whether the flow `key` is idle past its state's timeout at `now_ns`.
fn expired(key: &CtKey, flow: &CtFlow, now_ns: u64) -> bool {
    let [(_, original), (_, reply)] = flow.entries(key);
    let timeout = state_of(key.proto, &original, &reply).timeout(key.proto);
    now_ns.saturating_sub(flow.last_seen_ns) > timeout.as_nanos() as u64
}

/// Whether the programs find the flow `key` from inside without `CT_EXCEPTIONS`: the rule
/// of their inside lookups (docs/conntrack.md), which a migrated flow is checked against. A
/// masquerade flow's port, or a hairpin flow's gateway port, is one of the first candidates of
/// its inside tuple's sequence (`port_hash`); a published flow's host side is one of its
/// endpoint port's `PUBLISHED_BY` slots (`published_by`), on its address, or on any when the
/// flow came to an uplink's address (`uplink_addrs`: the programs try the address of the
/// uplink the reply leaves through); an untranslated flow is its reversed tuple.
pub fn found_from_inside(
    key: &CtKey,
    flow: &CtFlow,
    nat: &NatConfig,
    secret: &PortSecret,
    published_by: impl Fn(&PublishKey) -> Option<PublishedBy>,
    uplink_addrs: &[u32],
) -> bool {
    match flow.kind {
        flow_kind::MASQUERADE | flow_kind::HAIRPIN => {
            let inside = flow.inside_tuple(key);
            let hash = port_hash::of4(secret, &inside);
            let (original, port) = (u16::from_be(inside.sport), u16::from_be(key.dport));
            (0..=port_hash::FOUND_WITHIN)
                .any(|i| port_hash::candidate(nat, original, hash, i) == Some(port))
        }
        flow_kind::PUBLISHED => {
            let endpoint = PublishKey {
                addr: flow.inside_addr,
                port: flow.inside_port,
                proto: key.proto,
                _pad: 0,
            };
            published_by(&endpoint).is_some_and(|by| by.answers(key, |a| uplink_addrs.contains(&a)))
        }
        flow_kind::HOST | flow_kind::ROUTED => true,
        _ => false,
    }
}

/// Handles of its own on the conntrack maps, for walks that must not hold the daemon: a
/// listing of a full table takes seconds.
pub struct CtReader {
    map: HashMap<MapData, CtKey, CtFlow>,
    map6: HashMap<MapData, Ct6Key, Ct6Entry>,
}

/// The table counted: flows by protocol and state, and masqueraded flows (each holds a port)
/// by the address they leave with.
#[derive(Clone, Debug, Default)]
pub struct Census {
    pub by_state: std::collections::BTreeMap<(u8, &'static str), u64>,
    pub masquerade: std::collections::BTreeMap<Ipv4Addr, u64>,
}

impl CtReader {
    /// Counts the table in one walk (see `walk`).
    pub fn census(&self, now_ns: u64) -> Result<Census> {
        let mut census = Census::default();
        self.walk(now_ns, |f| {
            *census
                .by_state
                .entry((f.original.0.proto, f.state.name()))
                .or_default() += 1;
            if f.original.1.action == action::SNAT {
                *census
                    .masquerade
                    .entry(from_wire(f.original.1.nat_addr))
                    .or_default() += 1;
            }
            true
        })?;
        self.walk6(now_ns, |f| {
            *census
                .by_state
                .entry((f.original.0.proto, f.state.name()))
                .or_default() += 1;
            true
        })?;
        Ok(census)
    }

    /// Calls `each` with every flow, one at a time, in the map's order; stops early when
    /// `each` returns false. Memory does not grow with the table: the flows are read a chunk
    /// at a time (`batch`). A flow opened or removed during the walk may or may not be seen,
    /// none twice.
    pub fn walk(&self, now_ns: u64, mut each: impl FnMut(Flow) -> bool) -> Result<()> {
        let fd = IterableMap::map(&self.map).fd().as_fd();
        batch::for_each(fd, |key: &CtKey, flow: &CtFlow| {
            each(Flow::of_element(key, flow, now_ns))
        })
        .context("reading the conntrack table")
    }

    /// `walk` over the IPv6 flows, whose two entries must both be there: the reply entry is
    /// looked up by key.
    pub fn walk6(&self, now_ns: u64, mut each: impl FnMut(Flow6) -> bool) -> Result<()> {
        let fd = IterableMap::map(&self.map6).fd().as_fd();
        batch::for_each(fd, |key: &Ct6Key, entry: &Ct6Entry| {
            if entry.track.direction != direction::ORIGINAL {
                return true;
            }
            let Ok(reply) = self.map6.get(&entry.peer, 0) else {
                return true;
            };
            let (track, reply_track) = (&entry.track, &reply.track);
            let state = state_of(key.proto, track, reply_track);
            let idle = Duration::from_nanos(
                now_ns.saturating_sub(track.last_seen_ns.max(reply_track.last_seen_ns)),
            );
            each(Flow6 {
                original: (*key, *entry),
                reply: (entry.peer, reply),
                state,
                expires_in: state.timeout(key.proto).saturating_sub(idle),
            })
        })
        .context("reading the IPv6 conntrack table")
    }
}

impl Datapath {
    /// Every tracked flow, with its state and time left, at monotonic time `now_ns`.
    pub fn flows_at(&self, now_ns: u64) -> Result<Vec<Flow>> {
        Ok(self
            .flows()?
            .iter()
            .map(|(key, flow)| Flow::of_element(key, flow, now_ns))
            .collect())
    }

    /// A handle of its own on map `name` (the same kernel map), so that what holds it does not
    /// borrow the datapath.
    pub(super) fn own_map(&self, name: &str) -> Result<Map> {
        let (data, wrap): (&MapData, fn(MapData) -> Map) = match self.ebpf.map(name) {
            Some(Map::LruHashMap(data)) => (data, Map::LruHashMap),
            Some(Map::HashMap(data)) => (data, Map::HashMap),
            Some(Map::Array(data)) => (data, Map::Array),
            _ => anyhow::bail!("map {name} missing, or not a hash or an array"),
        };
        let data =
            MapData::from_id(data.info()?.id()).with_context(|| format!("opening {name}"))?;
        Ok(wrap(data))
    }

    /// A reader of the conntrack maps that does not borrow the datapath.
    pub fn conntrack_reader(&self) -> Result<CtReader> {
        Ok(CtReader {
            map: HashMap::try_from(self.own_map(maps::CONNTRACK)?)?,
            map6: HashMap::try_from(self.own_map(maps::CONNTRACK6)?)?,
        })
    }

    /// A GC pass's own handles on the conntrack maps and their usage counters, so that the
    /// pass does not borrow the datapath (nor hold the daemon: a full table takes seconds).
    pub fn conntrack_collector(&self) -> Result<CtCollector> {
        Ok(CtCollector {
            table: self.flow_table()?,
            map6: HashMap::try_from(self.own_map(maps::CONNTRACK6)?)?,
            usage: Array::try_from(self.own_map(maps::CT_USAGE)?)?,
            expired: None,
        })
    }

    /// Handles of its own on the IPv4 table and `CT_EXCEPTIONS`, to remove flows with.
    fn flow_table(&self) -> Result<FlowTable> {
        Ok(FlowTable {
            map: HashMap::try_from(self.own_map(maps::CONNTRACK)?)?,
            exceptions: HashMap::try_from(self.own_map(maps::CT_EXCEPTIONS)?)?,
        })
    }

    /// One GC pass at `now_ns` (see `CtCollector::gc_at`).
    pub fn gc_at(&mut self, now_ns: u64) -> Result<GcReport> {
        self.conntrack_collector()?.gc_at(now_ns)
    }

    /// Flows the IPv4 table may hold (IPv6's limit follows); new flows past it are dropped and
    /// counted.
    pub fn set_conntrack_limit(&mut self, flows: u64) -> Result<()> {
        // The ring as the kernel has it: a pinned one keeps the size it was made with.
        let ring: Array<_, EmbryoSlot> = Array::try_from(
            self.ebpf
                .map(maps::EMBRYOS)
                .context("map EMBRYOS missing")?,
        )?;
        let ring_size = u64::from(ring.len() / embryo_ring::COUNT);
        // A pinned IPv6 table keeps the size it was made with, as IPv4's.
        let capacity6 = match self.ebpf.map(maps::CONNTRACK6) {
            Some(Map::LruHashMap(map)) => map.info()?.max_entries(),
            _ => anyhow::bail!("map CONNTRACK6 missing or not an LRU hash"),
        };
        let limit6 = u64::from(super::limit6(flows.min(u64::from(u32::MAX)) as u32))
            .min(u64::from(capacity6) * 3 / 4);
        let mut usage: Array<_, u64> = Array::try_from(
            self.ebpf
                .map_mut(maps::CT_USAGE)
                .context("map CT_USAGE missing")?,
        )?;
        usage.set(ct_usage::LIMIT, flows, 0)?;
        usage.set(ct_usage::LIMIT6, limit6, 0)?;
        usage.set(ct_usage::RING_SIZE, ring_size, 0)?;
        Ok(())
    }

    /// Flows not yet assured that the datapath removed to make room for new ones.
    pub fn conntrack_evicted(&self) -> Result<u64> {
        let usage: Array<_, u64> = Array::try_from(
            self.ebpf
                .map(maps::CT_USAGE)
                .context("map CT_USAGE missing")?,
        )?;
        Ok(usage.get(&ct_usage::EVICTED, 0)?)
    }

    /// (IPv4 flows counted by the datapath, limit in flows).
    pub fn conntrack_usage(&self) -> Result<(u64, u64)> {
        let usage: Array<_, u64> = Array::try_from(
            self.ebpf
                .map(maps::CT_USAGE)
                .context("map CT_USAGE missing")?,
        )?;
        Ok((
            usage.get(&ct_usage::ENTRIES, 0)?,
            usage.get(&ct_usage::LIMIT, 0)?,
        ))
    }
}

/// The IPv4 table and the exceptions that go with its flows, on handles of their own.
struct FlowTable {
    map: HashMap<MapData, CtKey, CtFlow>,
    exceptions: HashMap<MapData, CtKey, CtKey>,
}

impl FlowTable {
    /// Removes the flow `key` (as read: `flow`) and its `CT_EXCEPTIONS` entry, when it has
    /// one that is still its own: (whether the flow was removed, whether an exception was).
    fn remove(&mut self, key: &CtKey, flow: &CtFlow) -> (bool, bool) {
        let removed = self.map.remove(key).is_ok();
        let inside = flow.inside_tuple(key);
        let exception = flow.flags & ct_flags::EXCEPTION != 0
            && self.exceptions.get(&inside, 0).is_ok_and(|k| k == *key)
            && self.exceptions.remove(&inside).is_ok();
        (removed, exception)
    }

    /// Every flow, read a chunk at a time.
    fn flows(&self) -> Result<Vec<(CtKey, CtFlow)>> {
        batch::collect(IterableMap::map(&self.map).fd().as_fd())
            .context("reading the conntrack table")
    }

    /// Removes the `CT_EXCEPTIONS` entries of `listed` (read before the table was) whose flow
    /// is not in the table, or is another flow now: evicted by the kernel, or removed while
    /// its exception was being written. Returns how many went.
    fn remove_orphan_exceptions(&mut self, listed: &[(CtKey, CtKey)]) -> usize {
        let owned = |inside: &CtKey, key: &CtKey, flow: &CtFlow| {
            flow.flags & ct_flags::EXCEPTION != 0 && flow.inside_tuple(key) == *inside
        };
        let mut removed = 0;
        for (inside, key) in listed {
            let has_flow = |map: &HashMap<MapData, CtKey, CtFlow>| {
                map.get(key, 0).is_ok_and(|f| owned(inside, key, &f))
            };
            if has_flow(&self.map) {
                continue;
            }
            // Read again: still this entry (the tuple may be a new flow's now), whose flow is
            // still not there.
            if self.exceptions.get(inside, 0).is_ok_and(|k| k == *key)
                && !has_flow(&self.map)
                && self.exceptions.remove(inside).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }
}

/// Takes `n` from the `CT_USAGE` count in `slot`. Not atomic against the datapath's adds
/// (userspace has no atomic add on a map value): a flow opened in between may be lost from
/// the count, which GC recounts.
fn give_back<T: std::borrow::BorrowMut<MapData>>(
    usage: &mut Array<T, u64>,
    slot: u32,
    n: usize,
) -> Result<()> {
    if n > 0 {
        let now = usage.get(&slot, 0)?;
        usage.set(slot, now.saturating_sub(n as u64), 0)?;
    }
    Ok(())
}

/// Handles of its own on the conntrack maps and CT_USAGE, for GC passes.
pub struct CtCollector {
    table: FlowTable,
    map6: HashMap<MapData, Ct6Key, Ct6Entry>,
    usage: Array<MapData, u64>,
    /// The flows a pass removed as expired, kept when a monitor asks for them.
    expired: Option<Expired>,
}

/// The flows of both families that garbage collection removed as expired.
#[derive(Debug, Default)]
pub struct Expired {
    pub flows: Vec<Flow>,
    pub flows6: Vec<Flow6>,
}

impl CtCollector {
    /// Removes flows idle past their state's timeout (with their exceptions), IPv6 entries
    /// whose other direction is gone and exceptions whose flow is, then recounts them for the
    /// datapath's limits. A flow is read again just before it is deleted, so a flow that saw a
    /// packet meanwhile stays.
    pub fn gc_at(&mut self, now_ns: u64) -> Result<GcReport> {
        let mut report = GcReport::default();
        let left = self.sweep(now_ns, &mut report)?;
        let expired = &mut self.expired;
        let left6 = sweep6(&mut self.map6, now_ns, &mut report, |key, entry, peer| {
            if let Some(expired) = expired {
                expired.flows6.push(Flow6 {
                    original: (*key, *entry),
                    reply: (entry.peer, *peer),
                    state: state_of(key.proto, &entry.track, &peer.track),
                    expires_in: Duration::ZERO,
                });
            }
        })?;
        self.usage.set(ct_usage::ENTRIES6, left6 as u64, 0)?;
        report.entries_left = left + left6;
        Ok(report)
    }

    /// The IPv4 part of a pass: the flows left. `ENTRIES` and `EXCEPTIONS` are recounted.
    fn sweep(&mut self, now_ns: u64, report: &mut GcReport) -> Result<usize> {
        // The exceptions first: one made after the listing of the table is not an orphan.
        let counted = self.usage.get(&ct_usage::EXCEPTIONS, 0)?;
        let exceptions: Vec<(CtKey, CtKey)> =
            batch::collect(IterableMap::map(&self.table.exceptions).fd().as_fd())
                .context("reading CT_EXCEPTIONS")?;
        let flows = self.table.flows()?;
        let (mut removed, mut exceptions_removed) = (0, 0);
        for (key, flow) in &flows {
            if !expired(key, flow, now_ns) {
                continue;
            }
            // Read again: a packet may have arrived since the listing.
            let Ok(flow) = self.table.map.get(key, 0) else {
                continue;
            };
            if !expired(key, &flow, now_ns) {
                continue;
            }
            let (gone, exception) = self.table.remove(key, &flow);
            exceptions_removed += usize::from(exception);
            if gone {
                removed += 1;
                report.flows_expired += 1;
                if let Some(expired) = &mut self.expired {
                    let mut flow = Flow::of_element(key, &flow, now_ns);
                    flow.expires_in = Duration::ZERO;
                    expired.flows.push(flow);
                }
            }
        }
        let orphans = self.table.remove_orphan_exceptions(&exceptions);
        report.orphans_removed += orphans;
        // Counted from the listings, not by walking the maps again: one walk per pass is what
        // GC costs (flows made since the listing are counted at the next pass). A revocation
        // during the pass may leave the count high until the next one.
        let left = flows.len().saturating_sub(removed);
        self.usage.set(ct_usage::ENTRIES, left as u64, 0)?;
        // With what the datapath added and took meanwhile: a count too low would hide a
        // flow's exception from the programs (they look there only while it is not 0).
        let moved = self.usage.get(&ct_usage::EXCEPTIONS, 0)? as i64 - counted as i64;
        let exceptions_left = exceptions.len() as i64 - (exceptions_removed + orphans) as i64;
        self.usage.set(
            ct_usage::EXCEPTIONS,
            (exceptions_left + moved).max(0) as u64,
            0,
        )?;
        Ok(left)
    }

    /// One garbage collection pass now.
    pub fn gc(&mut self) -> Result<GcReport> {
        self.gc_at(monotonic_ns())
    }

    /// Keeps the flows that the next passes remove as expired, for `take_expired`.
    pub fn keep_expired(&mut self) {
        self.expired.get_or_insert_with(Expired::default);
    }

    /// The flows removed as expired since `keep_expired`.
    pub fn take_expired(&mut self) -> Expired {
        self.expired
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

/// The IPv6 part of a GC pass (see `CtCollector::gc_at`): the entries left, with `report`
/// counting what went and `on_expired` told of each expired flow (key, entry, reply entry).
fn sweep6(
    map: &mut HashMap<MapData, Ct6Key, Ct6Entry>,
    now_ns: u64,
    report: &mut GcReport,
    mut on_expired: impl FnMut(&Ct6Key, &Ct6Entry, &Ct6Entry),
) -> Result<usize> {
    let fd = IterableMap::map(map).fd().as_fd();
    let entries: Vec<(Ct6Key, Ct6Entry)> =
        batch::collect(fd).context("reading the IPv6 conntrack table")?;
    // Indexes, not copies, and a fast hash (the keys are the kernel's, not an attacker's
    // choice of collisions against a random seed): a full table is many entries.
    let mut by_key: std::collections::HashMap<Ct6Key, usize, foldhash::fast::RandomState> =
        std::collections::HashMap::with_capacity_and_hasher(entries.len(), Default::default());
    by_key.extend(entries.iter().enumerate().map(|(i, (k, _))| (*k, i)));
    let mut removed = 0;
    for (key, entry) in &entries {
        let Some(peer) = by_key.get(&entry.peer).map(|&i| &entries[i].1) else {
            // Its other direction is not in the listing: either gone, and then this entry
            // can no longer translate a whole flow, or inserted while the listing ran (a
            // new flow's entries are inserted one after the other). Only an entry whose
            // peer is still missing when read again, and that has been idle past a grace
            // time, is an orphan.
            if map.get(&entry.peer, 0).is_ok() {
                continue;
            }
            let Ok(current) = map.get(key, 0) else {
                continue;
            };
            let idle = now_ns.saturating_sub(current.track.last_seen_ns);
            if idle < ORPHAN_GRACE.as_nanos() as u64 {
                continue;
            }
            if map.remove(key).is_ok() {
                report.orphans_removed += 1;
                removed += 1;
            }
            continue;
        };
        if entry.track.direction != direction::ORIGINAL {
            continue;
        }
        let proto = key.proto;
        let expired = |original: &CtEntry, reply: &CtEntry| {
            let last = original.last_seen_ns.max(reply.last_seen_ns);
            let timeout = state_of(proto, original, reply).timeout(proto);
            now_ns.saturating_sub(last) > timeout.as_nanos() as u64
        };
        if !expired(&entry.track, &peer.track) {
            continue;
        }
        // Read both again: a packet may have arrived since the listing.
        let (Ok(entry), Ok(peer)) = (map.get(key, 0), map.get(&entry.peer, 0)) else {
            continue;
        };
        if expired(&entry.track, &peer.track) {
            removed += usize::from(map.remove(key).is_ok());
            removed += usize::from(map.remove(&entry.peer).is_ok());
            report.flows_expired += 1;
            on_expired(key, &entry, &peer);
        }
    }
    // Counted from the listing, not by walking the map again: one walk per pass is what GC
    // costs (entries made since the listing are counted at the next pass).
    Ok(entries.len().saturating_sub(removed))
}

/// What `revoke` removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevokeReport {
    /// Whole flows removed.
    pub flows: usize,
    /// Elements removed in all: one per IPv4 flow; two per IPv6 flow, and IPv6 orphans
    /// (entries whose other direction was gone).
    pub entries: usize,
}

// Revocation: a separate block, apart from the timeouts and GC above.
impl Datapath {
    /// Removes at once every flow one of whose directions, as a v2 entry (`CtFlow::entries`),
    /// `matches`, with its exception, and gives their room back in `CT_USAGE`: a mapping, an
    /// endpoint or an address that goes away must not keep translating the flows that used
    /// it.
    pub fn revoke(&mut self, matches: impl Fn(&CtKey, &CtEntry) -> bool) -> Result<RevokeReport> {
        let mut table = self.flow_table()?;
        let mut report = RevokeReport::default();
        let mut exceptions = 0;
        for (key, flow) in &table.flows()? {
            if !flow.entries(key).iter().any(|(k, e)| matches(k, e)) {
                continue;
            }
            let (gone, exception) = table.remove(key, flow);
            if gone {
                report.flows += 1;
                report.entries += 1;
            }
            exceptions += usize::from(exception);
        }
        let mut usage: Array<_, u64> = Array::try_from(self.map_mut(maps::CT_USAGE)?)?;
        give_back(&mut usage, ct_usage::ENTRIES, report.flows)?;
        give_back(&mut usage, ct_usage::EXCEPTIONS, exceptions)?;
        Ok(report)
    }

    /// Removes the flow whose key (its element's in `CONNTRACK`) is `key`, with its exception;
    /// GC recounts the table.
    pub fn conntrack_remove(&mut self, key: &CtKey) -> Result<()> {
        let mut table = self.flow_table()?;
        let Ok(flow) = table.map.get(key, 0) else {
            return Ok(());
        };
        if table.remove(key, &flow).1 {
            let mut usage: Array<_, u64> = Array::try_from(self.map_mut(maps::CT_USAGE)?)?;
            give_back(&mut usage, ct_usage::EXCEPTIONS, 1)?;
        }
        Ok(())
    }

    /// `revoke` for IPv6 flows (`CONNTRACK6`): both entries of each flow one of whose entries
    /// `matches`, and a matching entry whose other direction is gone.
    pub fn revoke6(
        &mut self,
        matches: impl Fn(&Ct6Key, &Ct6Entry) -> bool,
    ) -> Result<RevokeReport> {
        let mut map: HashMap<_, Ct6Key, Ct6Entry> =
            HashMap::try_from(self.map_mut(maps::CONNTRACK6)?)?;
        let entries: Vec<(Ct6Key, Ct6Entry)> =
            batch::collect(IterableMap::map(&map).fd().as_fd()).context("reading CONNTRACK6")?;
        let by_key: std::collections::HashMap<Ct6Key, Ct6Entry> = entries.iter().copied().collect();
        let mut gone = std::collections::HashSet::new();
        let mut report = RevokeReport::default();
        for (key, entry) in &entries {
            if gone.contains(key) || !matches(key, entry) {
                continue;
            }
            let peer_key = entry.peer;
            // The other direction, if it is this flow's (its key may be another flow's now).
            let peer = by_key
                .get(&peer_key)
                .filter(|p| p.peer == *key && !gone.contains(&peer_key));
            for k in std::iter::once(key).chain(peer.map(|_| &peer_key)) {
                if map.remove(k).is_ok() {
                    report.entries += 1;
                }
                gone.insert(*k);
            }
            if peer.is_some() {
                report.flows += 1;
            }
        }
        let mut usage: Array<_, u64> = Array::try_from(self.map_mut(maps::CT_USAGE)?)?;
        give_back(&mut usage, ct_usage::ENTRIES6, report.entries)?;
        Ok(report)
    }
}

/// `revoke`'s test for the flows of a published port (`proto` `host_port` on `host_addr`, None
/// for every address, to `target:target_port`): the client's entry translated to the target
/// (through an uplink or hairpin), and the target's reply entry.
pub fn uses_mapping(
    proto: u8,
    host_addr: Option<Ipv4Addr>,
    host_port: u16,
    target: Ipv4Addr,
    target_port: u16,
) -> impl Fn(&CtKey, &CtEntry) -> bool {
    let (host_addr, host_port) = (host_addr.map(wire), host_port.to_be());
    let (target, target_port) = (wire(target), target_port.to_be());
    move |key, entry| {
        let on_addr = |addr: u32| host_addr.is_none_or(|a| a == addr);
        let translated = matches!(entry.action, action::DNAT | action::HAIRPIN | action::SNAT);
        key.proto == proto
            && translated
            && match entry.direction {
                direction::ORIGINAL => {
                    entry.action != action::SNAT
                        && key.dport == host_port
                        && on_addr(key.daddr)
                        && entry.nat_addr == target
                        && entry.nat_port == target_port
                }
                _ => {
                    entry.action != action::DNAT
                        && key.saddr == target
                        && key.sport == target_port
                        && entry.nat_port == host_port
                        && on_addr(entry.nat_addr)
                }
            }
    }
}

/// `revoke`'s test for the flows to or from `addr` (a removed endpoint's), translated or not.
pub fn uses_addr(addr: Ipv4Addr) -> impl Fn(&CtKey, &CtEntry) -> bool {
    let addr = wire(addr);
    move |key, entry| key.saddr == addr || key.daddr == addr || entry.nat_addr == addr
}

/// `revoke6`'s test for the IPv6 flows to or from `addr` (a removed endpoint's).
pub fn uses_addr6(addr: Ipv6Addr) -> impl Fn(&Ct6Key, &Ct6Entry) -> bool {
    let addr = addr.octets();
    move |key, entry| key.saddr == addr || key.daddr == addr || entry.nat_addr == addr
}

/// `revoke6`'s test for the IPv6 flows opened through a port published on IPv6: `proto`
/// `host_port` on `host_addr` (`::`: any) to `[target]:target_port`, through an uplink or
/// hairpin.
pub fn uses_mapping6(
    proto: u8,
    host_addr: Ipv6Addr,
    host_port: u16,
    target: Ipv6Addr,
    target_port: u16,
) -> impl Fn(&Ct6Key, &Ct6Entry) -> bool {
    let any = host_addr.is_unspecified();
    let (host_addr, host_port) = (host_addr.octets(), host_port.to_be());
    let (target, target_port) = (target.octets(), target_port.to_be());
    move |key, entry| {
        let on_addr = |addr: &[u8; 16]| any || *addr == host_addr;
        let track = &entry.track;
        key.proto == proto
            && match (track.action, track.direction) {
                (action::DNAT | action::HAIRPIN, direction::ORIGINAL) => {
                    key.dport == host_port
                        && on_addr(&key.daddr)
                        && entry.nat_addr == target
                        && track.nat_port == target_port
                }
                (action::SNAT | action::HAIRPIN, direction::REPLY) => {
                    key.saddr == target
                        && key.sport == target_port
                        && track.nat_port == host_port
                        && on_addr(&entry.nat_addr)
                }
                _ => false,
            }
    }
}

/// `revoke6`'s test for the IPv6 flows masqueraded with `addr` (an uplink's old address).
pub fn masqueraded_with6(addr: Ipv6Addr) -> impl Fn(&Ct6Key, &Ct6Entry) -> bool {
    let addr = addr.octets();
    move |key, entry| match (entry.track.action, entry.track.direction) {
        (action::SNAT, direction::ORIGINAL) => entry.nat_addr == addr,
        (action::DNAT, direction::REPLY) => key.daddr == addr,
        _ => false,
    }
}

/// `revoke`'s test for the flows masqueraded with `addr` (an uplink's old address).
pub fn masqueraded_with(addr: Ipv4Addr) -> impl Fn(&CtKey, &CtEntry) -> bool {
    let addr = wire(addr);
    move |key, entry| match (entry.action, entry.direction) {
        (action::SNAT, direction::ORIGINAL) => entry.nat_addr == addr,
        (action::DNAT, direction::REPLY) => key.daddr == addr,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP: u8 = 17;

    fn entry(packets: u64, tcp_seen: u8) -> CtEntry {
        CtEntry {
            packets,
            tcp_seen,
            ..CtEntry::default()
        }
    }

    #[test]
    fn tcp_states_follow_the_flags_of_both_directions() {
        use tcp_seen::{ACK, FIN, RST, SYN};
        assert_eq!(
            state_of(TCP, &entry(1, SYN), &entry(0, 0)),
            FlowState::SynSent
        );
        // Answered, but the opener has not acknowledged: half-open, not established.
        assert_eq!(
            state_of(TCP, &entry(1, SYN), &entry(1, SYN | ACK)),
            FlowState::SynRecv
        );
        let assured = |mut e: CtEntry| {
            e.flags |= ct_flags::ASSURED;
            e
        };
        assert_eq!(
            state_of(
                TCP,
                &assured(entry(2, SYN | ACK)),
                &assured(entry(1, SYN | ACK))
            ),
            FlowState::Established
        );
        assert_eq!(
            state_of(TCP, &entry(3, SYN | ACK | FIN), &entry(1, SYN | ACK)),
            FlowState::Closing
        );
        assert_eq!(
            state_of(TCP, &entry(3, ACK | FIN), &entry(2, ACK | FIN)),
            FlowState::Closed
        );
        assert_eq!(
            state_of(TCP, &entry(1, SYN), &entry(1, RST | ACK)),
            FlowState::Closed
        );
    }

    #[test]
    fn udp_is_unreplied_until_an_answer_and_lives_long_once_assured() {
        assert_eq!(
            state_of(UDP, &entry(3, 0), &entry(0, 0)),
            FlowState::Unreplied
        );
        assert_eq!(
            state_of(UDP, &entry(1, 0), &entry(1, 0)),
            FlowState::Replied
        );
        let mut original = entry(2, 0);
        original.flags = ct_flags::ASSURED;
        assert_eq!(state_of(UDP, &original, &entry(1, 0)), FlowState::Assured);
        assert!(FlowState::Replied.timeout(UDP) < FlowState::Assured.timeout(UDP));
    }

    #[test]
    fn unfinished_handshakes_expire_soon() {
        assert!(FlowState::SynSent.timeout(TCP) <= Duration::from_secs(20));
        assert!(FlowState::SynRecv.timeout(TCP) <= Duration::from_secs(20));
    }

    /// A flow as v3 holds it, from the v2 entries of its original and reply directions
    /// (`act` and `nat` of each).
    fn v3(original: CtKey, reply: CtKey, act: [u8; 2], nat: [(u32, u16); 2]) -> (CtKey, CtFlow) {
        let entry = |d: usize, peer| CtEntry {
            peer,
            nat_addr: nat[d].0,
            nat_port: nat[d].1,
            action: act[d],
            direction: d as u8,
            ..CtEntry::default()
        };
        CtFlow::from_entries((&original, &entry(0, reply)), (&reply, &entry(1, original)))
    }

    fn tuple(saddr: u32, sport: u16, daddr: u32, dport: u16) -> CtKey {
        CtKey {
            saddr,
            daddr,
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto: TCP,
            _pad: [0; 3],
        }
    }

    #[test]
    fn a_flow_is_found_from_inside_as_the_programs_look_for_it() {
        let (ep, r, host, c, b, other) = (10, 20, 30, 40, 50, 60);
        let nat = NatConfig::default();
        let secret = PortSecret { k0: 7, k1: 11 };
        let none = |_: &PublishKey| None;
        let found =
            |(key, flow): (CtKey, CtFlow)| found_from_inside(&key, &flow, &nat, &secret, none, &[]);

        // Masquerade: the NAT port is among the first candidates of the inside tuple.
        let inside = tuple(ep, 40000, r, 80);
        let hash = port_hash::of4(&secret, &inside);
        let port = |i| port_hash::candidate(&nat, 40000, hash, i).unwrap();
        let masquerade = |np: u16| {
            v3(
                inside,
                tuple(r, 80, host, np),
                [action::SNAT, action::DNAT],
                [(host, np.to_be()), (ep, 40000u16.to_be())],
            )
        };
        assert!(found(masquerade(port(1))));
        assert!(found(masquerade(port(port_hash::FOUND_WITHIN))));
        assert!(!found(masquerade(port(port_hash::FOUND_WITHIN + 1))));
        // An original port outside the host's range is candidate 0.
        let kept = tuple(ep, 1000, r, 80);
        let (key, flow) = v3(
            kept,
            tuple(r, 80, host, 1000),
            [action::SNAT, action::DNAT],
            [(host, 1000u16.to_be()), (ep, 1000u16.to_be())],
        );
        assert_eq!(flow.kind, flow_kind::MASQUERADE);
        assert!(found((key, flow)));

        // Hairpin: the gateway port, from the hash of the sender's tuple a:ap -> h:hp.
        let sender = tuple(ep, 40000, host, 8080);
        let hash = port_hash::of4(&secret, &sender);
        let hairpin = |gp: u16| {
            v3(
                sender,
                tuple(b, 80, host, gp),
                [action::HAIRPIN; 2],
                [(b, 80u16.to_be()), (host, 8080u16.to_be())],
            )
        };
        let gp = port_hash::candidate(&nat, 40000, hash, 3).unwrap();
        assert!(found(hairpin(gp)));
        assert!(!found(hairpin(port(1).wrapping_add(1000))));

        // Published: the host side is a slot of the endpoint port, on its address or any.
        let published = v3(
            tuple(c, 50000, host, 8080),
            tuple(ep, 80, c, 50000),
            [action::DNAT, action::SNAT],
            [(ep, 80u16.to_be()), (host, 8080u16.to_be())],
        );
        assert_eq!(published.1.kind, flow_kind::PUBLISHED);
        let with_uplinks = |slots: &[(u32, u16)], uplinks: &[u32]| {
            let mut by = PublishedBy::default();
            for (slot, (addr, port)) in by.hosts.iter_mut().zip(slots) {
                slot.addr = *addr;
                slot.port = port.to_be();
            }
            let (key, flow) = published;
            found_from_inside(
                &key,
                &flow,
                &nat,
                &secret,
                |k| {
                    (*k == PublishKey {
                        addr: ep,
                        port: 80u16.to_be(),
                        proto: TCP,
                        _pad: 0,
                    })
                    .then_some(by)
                },
                uplinks,
            )
        };
        let with = |slots: &[(u32, u16)]| with_uplinks(slots, &[host]);
        assert!(with(&[(0, 9090), (host, 8080)]));
        assert!(with(&[(0, 8080)]));
        // On any address but reached at one that is no uplink's: the reply would not try it.
        assert!(!with_uplinks(&[(0, 8080)], &[other]));
        assert!(with_uplinks(&[(host, 8080)], &[other]));
        assert!(!with(&[(other, 8080), (host, 9090)]));
        assert!(!with(&[]));
        assert!(!found(published));

        // Untranslated: the reversed tuple.
        let routed_in = tuple(c, 50000, ep, 80);
        let routed = v3(
            routed_in,
            routed_in.reversed(),
            [action::DNAT, action::SNAT],
            [(ep, 80u16.to_be()); 2],
        );
        assert_eq!(routed.1.kind, flow_kind::ROUTED);
        assert!(found(routed));
        let own = tuple(host, 33000, r, 443);
        let host_flow = v3(own, own.reversed(), [action::HOST; 2], [(0, 0); 2]);
        assert_eq!(host_flow.1.kind, flow_kind::HOST);
        assert!(found(host_flow));
    }

    #[test]
    fn closed_flows_expire_first() {
        assert!(FlowState::Closed.timeout(TCP) < FlowState::Closing.timeout(TCP));
        assert!(FlowState::Closing.timeout(TCP) < FlowState::Established.timeout(TCP));
    }
}
