//! Types shared by the eBPF programs and the daemon.
//!
//! Every type here is `#[repr(C)]` and derives bytemuck's `Pod`, so a type with implicit
//! padding does not compile; the `const` assertions pin the sizes the kernel side expects.
#![no_std]

use bytemuck::{Pod, Zeroable};

pub mod ct_flow;
pub mod port_hash;

pub use ct_flow::{CtFlow, PUBLISHED_BY_SLOTS, PublishedBy, flow_kind};

/// Packet and byte counts of one interface, one per CPU in a per-CPU hash map keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct IfCounters {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<IfCounters>() == 16);

/// One direction of a flow as a hook sees it before translation. Addresses and ports are in
/// network byte order, as on the wire. For ICMP echo the identifier stands in `sport` for a
/// request and in `dport` for a reply, so that swapping the ports gives the other direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

impl CtKey {
    /// The key of the same flow seen in the other direction, with no translation.
    pub const fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// What a conntrack entry does to the packets that match its key.
pub mod action {
    /// Rewrite the source to `nat_addr:nat_port` (masquerade; replies of published ports).
    pub const SNAT: u8 = 1;
    /// Rewrite the destination to `nat_addr:nat_port` (published ports; replies of masquerade).
    pub const DNAT: u8 = 2;
    /// A flow of the host itself, tracked so that masquerade never takes its tuple: pass.
    pub const HOST: u8 = 3;
    /// Hairpin (an endpoint to a published port through a host address), on the endpoint's
    /// veth: rewrite the source and the destination so the packet becomes `peer` reversed.
    pub const HAIRPIN: u8 = 4;
}

/// Which direction of its flow a conntrack entry describes.
pub mod direction {
    pub const ORIGINAL: u8 = 0;
    pub const REPLY: u8 = 1;
}

/// TCP flags a conntrack entry has seen, OR-ed together; userspace derives the state from both
/// directions (SYN sent, established, closing, closed) and the timeout from the state.
pub mod tcp_seen {
    pub const SYN: u8 = 1;
    pub const ACK: u8 = 2;
    pub const FIN: u8 = 4;
    pub const RST: u8 = 8;
}

/// Bits of `CtEntry::flags`.
pub mod ct_flags {
    /// TCP: the three-way handshake completed (the opener acknowledged the answer's SYN);
    /// UDP and ICMP: both sides spoke and one of them spoke again. A flow that is not assured
    /// gets GC's short timeouts and may be evicted to make room when the table is full.
    pub const ASSURED: u8 = 1;
    /// The flow was opened from outside (to a published port). Set on both entries.
    pub const INBOUND: u8 = 2;
    /// TCP: `td_end`, `td_maxwin` and `wscale` hold what this direction sent (window
    /// tracking). Unset until its first segment, and on entries migrated from a layout without
    /// window tracking, which learn it from their next segment. In a `CtFlow` this bit is the
    /// original direction's, `WINDOW_KNOWN << 1` the reply's.
    pub const WINDOW_KNOWN: u8 = 4;
    /// `CtFlow`: the flow is also found from inside through `CT_EXCEPTIONS` (its inside tuple
    /// is not among those the inside hooks compute), which GC and eviction clear with it.
    pub const EXCEPTION: u8 = 16;
}

/// One direction of a tracked flow. The other direction's entry has the key
/// `CtEntry::peer`, so both are found from either.
///
/// Pinned: a change of this layout changes `layout::CONNTRACK` and needs a migration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtEntry {
    /// The key of the other direction, as the hook that sees it looks it up.
    pub peer: CtKey,
    /// CLOCK_MONOTONIC_COARSE (bpf_ktime_get_coarse_ns) at the last packet.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Address and port written by `action`, network byte order.
    pub nat_addr: u32,
    pub nat_port: u16,
    pub action: u8,
    pub direction: u8,
    /// `tcp_seen` bits of the packets of this direction that were accepted (a RST or FIN out
    /// of the window is not recorded).
    pub tcp_seen: u8,
    /// `ct_flags` bits.
    pub flags: u8,
    /// TCP window scale this direction announced in its SYN (0 when it announced none).
    pub wscale: u8,
    pub _pad: u8,
    /// TCP: the sequence number just past the last byte this direction sent (SYN and FIN
    /// count one), host byte order.
    pub td_end: u32,
    /// TCP: the largest receive window this direction advertised, scaled: how far past the
    /// other direction's `td_end` it may send.
    pub td_maxwin: u32,
    /// Original entry: the turn of its side's `EMBRYOS` ring the flow was admitted at (see
    /// `embryo_ring`), so that a later flow on a reused slot is told apart.
    pub ring_seq: u32,
}

const _: () = assert!(core::mem::size_of::<CtEntry>() == 64);

/// One direction of an IPv6 flow as a hook sees it before translation: `CtKey` with IPv6
/// addresses. For ICMPv6 echo the identifier stands in the ports as for ICMP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Ct6Key {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<Ct6Key>() == 40);

impl Ct6Key {
    /// The key of the same flow seen in the other direction, with no translation.
    pub const fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// One direction of a tracked IPv6 flow, in `CONNTRACK6`: the other direction's key, the
/// address `track.action` writes, and the tracking an IPv4 entry has (`track`: its counters,
/// TCP window, flags and port; its `peer` and `nat_addr` stay zero). One state machine and
/// one GC serve both families.
///
/// Pinned: a change of this layout changes `layout::CONNTRACK6` and needs a migration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Ct6Entry {
    pub peer: Ct6Key,
    pub nat_addr: [u8; 16],
    pub track: CtEntry,
}

const _: () = assert!(core::mem::size_of::<Ct6Entry>() == 120);

/// A published port: protocol, host port and host address (0 for any host address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PublishKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<PublishKey>() == 8);

/// Where a published port leads: the endpoint's address and port, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PublishTarget {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<PublishTarget>() == 8);

/// A port published on IPv6: protocol, host port and host address (`::` for the uplink's
/// IPv6 address). Network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Publish6Key {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<Publish6Key>() == 20);

/// Where a port published on IPv6 leads: the endpoint's IPv6 address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Publish6Target {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<Publish6Target>() == 20);

/// An uplink: the interface whose address masquerade uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Uplink {
    /// The uplink's primary IPv4 address, network byte order.
    pub addr: u32,
}

/// Key of the `NON_MASQUERADE` LPM trie: a network (`Subnet::network`) and a remote address,
/// network byte order. The network's endpoints reach the remote prefixes it holds with their
/// own addresses, and those prefixes reach them directly (CNI's `nonMasqueradeCIDRs`). The
/// prefix length counts the network's 32 bits too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NonMasqueradeKey {
    pub network: u32,
    pub addr: u32,
}

/// Key of the `NON_MASQUERADE6` LPM trie: `NonMasqueradeKey` for IPv6 (a network and a
/// remote IPv6 address; the prefix length counts the network's 32 bits too).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NonMasquerade6Key {
    pub network: u32,
    pub addr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<NonMasquerade6Key>() == 20);

/// A managed subnet, value of the `SUBNETS` LPM trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Subnet {
    /// 1 when traffic from the subnet to the outside is masqueraded.
    pub masquerade: u32,
    /// The network the subnet belongs to: endpoints of different networks are isolated.
    pub network: u32,
    /// The network's gateway (the bridge's address), network byte order.
    pub gateway: u32,
    /// `network_flags`.
    pub flags: u32,
}

/// `SUBNET_BLOCKS[0]`: the /16 blocks of IPv4 (an address's first two bytes) that some
/// managed subnet overlaps, one bit each, so that an address in none of them is known to be
/// in no managed subnet without a lookup in the `SUBNETS` trie (most addresses the programs
/// ask about: clients, remote servers, the host's). A superset: blocks are added before their
/// subnet and recomputed after a subnet goes. `ready` 0 (a map just made, not filled yet):
/// every address may be managed; otherwise the generation of `SUBNETS`, which the daemon
/// changes after every change of the trie, so that the programs know when what they cached
/// of it went stale (the layout is v1's, where `ready` was 1 once filled).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SubnetBlocks {
    pub words: [u64; SUBNET_BLOCK_WORDS],
    pub ready: u64,
}

pub const SUBNET_BLOCK_WORDS: usize = 1024;

impl SubnetBlocks {
    /// The generation after this one (`ready`: never 0, which means not filled).
    pub fn next_generation(&self) -> u64 {
        self.ready.wrapping_add(1).max(1)
    }

    /// Whether `addr` (network byte order) may be in a managed subnet.
    #[inline(always)]
    pub fn may_hold(&self, addr: u32) -> bool {
        if self.ready == 0 {
            return true;
        }
        let block = u32::from_be(addr) >> 16;
        // Masked rather than checked: the verifier sees the bound.
        let word = (block / 64) as usize & (SUBNET_BLOCK_WORDS - 1);
        self.words[word] >> (block % 64) & 1 != 0
    }

    /// Adds the blocks of the subnet `network/prefix_len` (network in host byte order).
    pub fn add(&mut self, network: u32, prefix_len: u8) {
        let first = network >> 16;
        // A prefix longer than 16 bits lies in one block; a shorter one spans 2^(16 - len).
        let count = 1u32 << 16u8.saturating_sub(prefix_len.min(16));
        let first = first & !(count - 1);
        for block in first..first + count {
            self.words[(block / 64) as usize] |= 1 << (block % 64);
        }
    }
}

/// Options of a network, in `Subnet::flags`.
pub mod network_flags {
    /// `--icc=false`: endpoints of the network cannot reach each other.
    pub const NO_ICC: u32 = 1;
    /// `--internal`: no way out of the network.
    pub const INTERNAL: u32 = 2;
    /// Gateway mode `nat-unprotected`: traffic routed from outside straight to an endpoint
    /// reaches any of its ports (tracked, with no translation).
    pub const DIRECT_ANY: u32 = 4;
    /// Gateway mode `routed`: endpoints' traffic leaves with their own address (tracked, with
    /// no translation), and traffic routed from outside reaches their published ports only,
    /// at the endpoint's port (a `PUBLISH` entry keyed by the endpoint's address and port).
    pub const ROUTED: u32 = 8;
}

/// A managed IPv6 subnet, value of the `SUBNETS6` LPM trie (keyed by the address's 16 bytes):
/// what `Subnet` is for IPv4, without masquerade (IPv6 does not leave its network yet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Subnet6 {
    pub network: u32,
    /// `network_flags`.
    pub flags: u32,
    /// The network's IPv6 gateway (the bridge's address).
    pub gateway: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<Subnet6>() == 24);

/// An endpoint, by the ifindex of its veth's host end: what it may send as.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Endpoint {
    /// Its address, network byte order.
    pub addr: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    pub network: u32,
}

const _: () = assert!(core::mem::size_of::<Endpoint>() == 16);

/// `ENDPOINT_PEERS`' value, per CPU, keyed by the endpoint's address (network byte order):
/// where the fast path into the endpoint goes, and what it sent there (the veth's own
/// counters never see those packets).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EndpointPeer {
    /// The host end of the endpoint's veth: `bpf_redirect_peer` goes to its peer.
    pub veth: u32,
    /// The endpoint's bridge: the FIB must route the address there.
    pub bridge: u32,
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<EndpointPeer>() == 24);

/// Source ports masquerade may choose when it cannot keep the original one (host byte order).
/// Kept outside the host's ip_local_port_range so that the host's own connections never clash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NatConfig {
    pub port_min: u16,
    pub port_max: u16,
    /// The host's ip_local_port_range: an original port inside it is never kept.
    pub host_port_min: u16,
    pub host_port_max: u16,
}

impl Default for NatConfig {
    fn default() -> Self {
        Self {
            port_min: 61000,
            port_max: 65535,
            host_port_min: 32768,
            host_port_max: 60999,
        }
    }
}

/// What the host access hooks (cgroup sock_addr) need from the daemon: the cookie of its
/// network namespace. The hooks act on sockets of that namespace only; 0 means on none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct HostAccessConfig {
    pub netns_cookie: u64,
}

/// A socket and the endpoint (`addr:port`, network byte order) the host access hooks sent
/// it to instead of a published port: the key of the peer the application used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct HostPeerKey {
    pub socket_cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<HostPeerKey>() == 16);

/// The address and port an application connected or sent to, network byte order: what
/// getpeername(2) and a UDP reply's source show instead of the endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct HostPeer {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<HostPeer>() == 8);

/// `HostPeerKey` for an IPv6 socket sent to an endpoint's IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct HostPeer6Key {
    pub socket_cookie: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<HostPeer6Key>() == 32);

/// `HostPeer` for an IPv6 socket: the address and port it used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct HostPeer6 {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<HostPeer6>() == 20);

/// Program ids, the first index of the `STATS` counters.
pub mod program_id {
    pub const UPLINK_INGRESS: u32 = 0;
    pub const UPLINK_EGRESS: u32 = 1;
    pub const UPLINK_XDP: u32 = 2;
    pub const ENDPOINT_INGRESS: u32 = 3;
    pub const BRIDGE_INGRESS: u32 = 4;
    pub const COUNT: u32 = 5;
    pub const NAMES: [&str; COUNT as usize] = [
        "uplink_ingress",
        "uplink_egress",
        "uplink_xdp",
        "endpoint_ingress",
        "bridge_ingress",
    ];
}

/// What happened to a packet: the second index of the `STATS` counters. Every drop has one.
pub mod outcome {
    pub const PASSED: u32 = 0;
    pub const SNAT: u32 = 1;
    pub const DNAT: u32 = 2;
    /// Translated and sent straight to the next hop (counted besides SNAT or DNAT); on
    /// `uplink_egress`, a packet the fast path out translated (`TRANSLATED_MARK`), passed as it
    /// is.
    pub const FAST_PATH: u32 = 3;
    pub const DROP_MALFORMED: u32 = 4;
    pub const DROP_FRAGMENT: u32 = 5;
    pub const DROP_CT_FULL: u32 = 6;
    pub const DROP_PORTS_EXHAUSTED: u32 = 7;
    pub const DROP_REWRITE_FAILED: u32 = 8;
    /// A managed source that masquerade does not translate (masquerade off, ICMP errors about
    /// unknown flows, other protocols): it would leave with a private address.
    pub const DROP_UNTRANSLATABLE: u32 = 9;
    /// From outside, for the loopback range.
    pub const DROP_MARTIAN: u32 = 10;
    /// From outside, straight to an endpoint of a masqueraded or internal network (gateway
    /// modes `nat` and `isolated`).
    pub const DROP_ENDPOINT_DIRECT: u32 = 11;
    /// From an endpoint, with a source address or MAC that is not its own; from outside, with
    /// the source address of a managed subnet.
    pub const DROP_SPOOFED: u32 = 12;
    /// From an endpoint, to an address of another network.
    pub const DROP_ISOLATION: u32 = 13;
    /// From an endpoint, to another endpoint of its network with `--icc=false`.
    pub const DROP_ICC: u32 = 14;
    /// From an endpoint of an `--internal` network, to outside it.
    pub const DROP_INTERNAL: u32 = 15;
    /// From a veth bridgenet does not know (fails closed).
    pub const DROP_UNKNOWN: u32 = 16;
    /// Routed from an endpoint without the endpoint check's mark: its veth lost the program
    /// (detached by someone else) and the daemon has not restored it yet.
    pub const DROP_UNCHECKED: u32 = 17;
    /// From outside, towards an endpoint, dropped by a user filter rule (`filter add`).
    pub const DROP_FILTER: u32 = 18;
    /// From an endpoint, neither IPv4 nor ARP, nor IPv6 when its network has an IPv6 subnet.
    pub const DROP_PROTOCOL: u32 = 19;
    /// TCP that is not a SYN, on no tracked flow: never opens a flow (nor a masquerade port).
    pub const DROP_UNTRACKED: u32 = 20;
    /// A TCP RST outside the flow's sequence window (a spoofed or stale reset).
    pub const DROP_OUT_OF_WINDOW: u32 = 21;
    /// From outside, routed straight to an endpoint of a network in gateway mode `routed`, on
    /// a port that is not published.
    pub const DROP_UNPUBLISHED: u32 = 22;
    /// Translated and sent straight into the endpoint's namespace (`bpf_redirect_peer`),
    /// skipping the bridge and the veth: counted besides DNAT, instead of FAST_PATH.
    pub const FAST_PATH_PEER: u32 = 23;
    /// From an endpoint, what only a router or a DHCP server sends: an IPv6 Router
    /// Advertisement or Redirect, a DHCPv6 server's message (rogue routers, CVE-2020-13401).
    pub const DROP_ROUTER: u32 = 24;
    /// IPv6 whose extension headers cannot be walked within the bound (too many, unknown, or
    /// a first fragment that does not hold the whole chain and the transport header).
    pub const DROP_EXT_HEADER: u32 = 25;
    /// Numbers are stable (pinned counters are indexed by them): a new outcome takes the next
    /// free number, below `SLOTS`, and is never renumbered.
    pub const COUNT: u32 = 26;
    pub const NAMES: [&str; COUNT as usize] = [
        "passed",
        "snat",
        "dnat",
        "fast_path",
        "drop_malformed",
        "drop_fragment",
        "drop_ct_full",
        "drop_ports_exhausted",
        "drop_rewrite_failed",
        "drop_untranslatable",
        "drop_martian",
        "drop_endpoint_direct",
        "drop_spoofed",
        "drop_isolation",
        "drop_icc",
        "drop_internal",
        "drop_unknown",
        "drop_unchecked",
        "drop_filter",
        "drop_protocol",
        "drop_untracked",
        "drop_out_of_window",
        "drop_unpublished",
        "fast_path_peer",
        "drop_router",
        "drop_ext_header",
    ];

    /// The drops are numbers 4 to 22 and 24 on; a drop numbered later is added here.
    pub const fn is_drop(outcome: u32) -> bool {
        matches!(
            outcome,
            DROP_MALFORMED..=DROP_UNPUBLISHED | DROP_ROUTER..=DROP_EXT_HEADER
        )
    }
}

/// Counter slots per program in `STATS`: room for outcomes yet to come, so that adding one
/// never moves a pinned counter.
pub const OUTCOME_SLOTS: u32 = 64;

const _: () = assert!(outcome::COUNT <= OUTCOME_SLOTS);

/// Index of a counter in `STATS`.
pub const fn stats_index(program: u32, outcome: u32) -> u32 {
    program * OUTCOME_SLOTS + outcome
}

/// Default limit of the conntrack table, in flows (one `CtFlow` each). New flows past it are
/// dropped (counted as `drop_ct_full`) while tracked ones keep working.
pub const CT_MAX_FLOWS: u32 = 262_144;

/// Slots of the `CT_USAGE` array.
pub mod ct_usage {
    /// Flows in `CONNTRACK` (the datapath adds and gives back atomically, GC recounts).
    /// Entries, two per flow, before `layout::CT_USAGE` v3.
    pub const ENTRIES: u32 = 0;
    /// The limit, in flows: new ones past it are refused, unless a flow that is not assured
    /// yet makes room (`EVICTED`).
    pub const LIMIT: u32 = 1;
    /// Flows not yet assured (half-open, unanswered) removed to make room for a new flow,
    /// as Linux's early_drop does: a flood of them never locks other flows out.
    pub const EVICTED: u32 = 2;
    /// Flows opened from outside so far: the next turn of their `EMBRYOS` ring.
    pub const RING_CURSOR: u32 = 3;
    /// Slots of each `EMBRYOS` ring (set by the loader from the map's size).
    pub const RING_SIZE: u32 = 4;
    /// Flows opened from inside so far: the next turn of their ring (unused before
    /// `layout::EMBRYOS` v2, so 0 there: a valid start).
    pub const RING_CURSOR_INSIDE: u32 = 5;
    /// Entries in `CONNTRACK6` (unused before IPv6 flows, so 0 there).
    pub const ENTRIES6: u32 = 6;
    /// The limit of `CONNTRACK6`, past which new IPv6 flows are refused (`drop_ct_full`).
    pub const LIMIT6: u32 = 7;
    /// Flows in `CT_EXCEPTIONS`: while 0 the inside hooks do not look there.
    pub const EXCEPTIONS: u32 = 8;
    pub const SLOTS: u32 = 9;
}

/// The two rings of `EMBRYOS`, one per side a flow is opened from: a flood from one side takes
/// the room of the half-open flows of its own side first, so that a flood of spoofed SYNs from
/// outside cannot end the handshakes of connections the endpoints open, and an endpoint's scan
/// cannot end those of clients of published ports. A turn `ring_seq` is `cursor << 1 | side`;
/// its slot is `side * RING_SIZE + cursor % RING_SIZE`.
pub mod embryo_ring {
    /// Flows opened by packets from the uplink (published ports, routed endpoints).
    pub const OUTSIDE: u32 = 0;
    /// Flows opened by the endpoints and the host (masquerade, hairpin, the host's own).
    pub const INSIDE: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// A slot of the `EMBRYOS` ring: a flow in the order flows were admitted. When the table is
/// full, the flow in the next slot is evicted if it is still not assured.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EmbryoSlot {
    /// The flow's original key.
    pub key: CtKey,
    /// `CtEntry::ring_seq` of the flow admitted here (0: none).
    pub seq: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<EmbryoSlot>() == 24);

/// `EmbryoSlot` for IPv6 flows, in `EMBRYOS6`: one ring per side of `EMBRYO6_RING` slots, a
/// fixed size (a new flow evicts the half-open one admitted that many turns before it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Embryo6Slot {
    pub key: Ct6Key,
    pub seq: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Embryo6Slot>() == 48);

/// Slots of each of `EMBRYOS6`'s two rings.
pub const EMBRYO6_RING: u32 = 4096;

/// The user filter (`filter add`): rules compiled into one LPM trie keyed by match class and
/// source prefix, so that a packet costs at most four lookups however many rules there are.
pub mod filter {
    /// Largest number of rules; also the size of the per-rule counters.
    pub const MAX_RULES: u32 = 1024;
    /// Two generations of compiled rules live in the trie at once (see `FilterState`).
    pub const MAX_ENTRIES: u32 = 2 * MAX_RULES;
    /// Bits of `FilterKey` before `src`: every field but the source is matched exactly.
    pub const FIXED_BITS: u32 = 96;
    /// Match classes, bits of `FilterKey::class`: the rule names a network, a port.
    pub const CLASS_NETWORK: u8 = 1;
    pub const CLASS_PORT: u8 = 2;
    pub const CLASS_COUNT: u8 = 4;
    pub const ALLOW: u8 = 1;
    pub const DROP: u8 = 2;
}

/// The data of a `FILTER` LPM trie key: the fixed fields of a match class, then the source
/// prefix (the prefix length is `filter::FIXED_BITS` plus the source prefix's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FilterKey {
    /// Which of the two compiled rule sets (`FilterState::generation`) the entry belongs to.
    pub generation: u8,
    /// `filter::CLASS_*` bits; fields the class does not match on are 0.
    pub class: u8,
    /// IP protocol of the port.
    pub proto: u8,
    pub _pad: u8,
    /// Destination port as it arrives (the published host port), network byte order.
    pub dport: u16,
    pub _pad2: u16,
    /// The destination endpoint's network (`Subnet::network`).
    pub network: u32,
    /// Source address, network byte order.
    pub src: u32,
}

const _: () = assert!(core::mem::size_of::<FilterKey>() == 16);
const _: () = assert!(filter::FIXED_BITS as usize == 8 * 12);

/// `FilterKey` for IPv6 sources (the `FILTER6` trie): the same fixed fields, then the source.
/// A rule without a source is in both tries; one with a source, in its family's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FilterKey6 {
    pub generation: u8,
    pub class: u8,
    pub proto: u8,
    pub _pad: u8,
    pub dport: u16,
    pub _pad2: u16,
    pub network: u32,
    pub src: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<FilterKey6>() == 28);

/// The value at a trie entry: the first rule (lowest `order`) of the class that matches every
/// source of the entry's prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FilterMatch {
    /// Position of the rule in the rule list: the lowest one of the classes' matches decides.
    pub order: u32,
    /// Index of the rule's counter in `FILTER_HITS`.
    pub slot: u16,
    /// `filter::ALLOW` or `filter::DROP`.
    pub action: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<FilterMatch>() == 8);

/// `FILTER_STATE[0]`: which generation of the trie the programs use, and whether any rule
/// exists (none: no lookup at all).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FilterState {
    pub generation: u32,
    pub rules: u32,
}

/// Layout versions of the pinned maps. A map's layout is its key and value types and its size
/// semantics; a daemon that finds a pin of another version migrates it or says what it drops.
pub mod layout {
    /// v1: 56-byte `CtEntry` without window tracking; v2: 64 bytes, one per direction; v3:
    /// one 80-byte `CtFlow` per flow, keyed by its outside tuple.
    pub const CONNTRACK: u32 = 3;
    /// v1: `program * outcome::COUNT + outcome` (20 outcomes); v2: `stats_index`.
    pub const STATS: u32 = 2;
    /// v1: 2 slots (ENTRIES, LIMIT); v2: 8 slots; v3: `ct_usage::SLOTS`, IPv4's count and
    /// limit in flows.
    pub const CT_USAGE: u32 = 3;
    /// v1: one ring for every flow; v2: one per side (`embryo_ring`).
    pub const EMBRYOS: u32 = 2;
    /// Every other map.
    pub const FIRST: u32 = 1;
}

/// Names of the maps, as the programs declare them and the loader finds them.
pub mod maps {
    pub const IF_COUNTERS: &str = "IF_COUNTERS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const PUBLISH: &str = "PUBLISH";
    pub const UPLINKS: &str = "UPLINKS";
    pub const SUBNETS: &str = "SUBNETS";
    pub const SUBNET_BLOCKS: &str = "SUBNET_BLOCKS";
    pub const HOST_ADDRS: &str = "HOST_ADDRS";
    pub const NAT_CONFIG: &str = "NAT_CONFIG";
    /// The key of masquerade's port sequence (`port_hash`).
    pub const PORT_SECRET: &str = "PORT_SECRET";
    pub const STATS: &str = "STATS";
    pub const CT_USAGE: &str = "CT_USAGE";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const ENDPOINT_PEERS: &str = "ENDPOINT_PEERS";
    /// IPv6: the managed subnets, and each endpoint's address by its veth.
    pub const SUBNETS6: &str = "SUBNETS6";
    pub const ENDPOINTS6: &str = "ENDPOINTS6";
    pub const CONNTRACK6: &str = "CONNTRACK6";
    pub const UPLINKS6: &str = "UPLINKS6";
    pub const PUBLISH6: &str = "PUBLISH6";
    /// IPv6: the uplinks' addresses (a port published on `::` answers there), and the peers
    /// of IPv6 sockets the host access hooks translated.
    pub const HOST_ADDRS6: &str = "HOST_ADDRS6";
    pub const HOST_PEERS6: &str = "HOST_PEERS6";
    /// IPv6's rings of flows in the order they were admitted, and their next turns.
    pub const EMBRYOS6: &str = "EMBRYOS6";
    pub const EMBRYO6_CURSORS: &str = "EMBRYO6_CURSORS";
    pub const HOST_ACCESS_CONFIG: &str = "HOST_ACCESS_CONFIG";
    pub const HOST_PEERS: &str = "HOST_PEERS";
    pub const FILTER: &str = "FILTER";
    /// The host ports each endpoint port is published on (`PublishedBy`).
    pub const PUBLISHED_BY: &str = "PUBLISHED_BY";
    /// Flows the inside hooks cannot compute the key of, by their inside tuple.
    pub const CT_EXCEPTIONS: &str = "CT_EXCEPTIONS";
    pub const FILTER6: &str = "FILTER6";
    pub const FILTER_STATE: &str = "FILTER_STATE";
    pub const FILTER_HITS: &str = "FILTER_HITS";
    pub const EMBRYOS: &str = "EMBRYOS";
    pub const NON_MASQUERADE: &str = "NON_MASQUERADE";
    pub const NON_MASQUERADE6: &str = "NON_MASQUERADE6";
    /// The monitor's, not pinned (`monitor`).
    pub const MONITOR_EVENTS: &str = "MONITOR_EVENTS";
    pub const MONITOR_CONFIG: &str = "MONITOR_CONFIG";
    pub const MONITOR_LOST: &str = "MONITOR_LOST";
    /// Every map, for pinning.
    pub const ALL: [&str; 33] = [
        PUBLISHED_BY,
        CT_EXCEPTIONS,
        PORT_SECRET,
        SUBNET_BLOCKS,
        NON_MASQUERADE6,
        FILTER6,
        EMBRYOS6,
        EMBRYO6_CURSORS,
        HOST_ADDRS6,
        HOST_PEERS6,
        PUBLISH6,
        SUBNETS6,
        ENDPOINTS6,
        CONNTRACK6,
        UPLINKS6,
        EMBRYOS,
        ENDPOINT_PEERS,
        FILTER,
        FILTER_STATE,
        FILTER_HITS,
        CT_USAGE,
        ENDPOINTS,
        IF_COUNTERS,
        CONNTRACK,
        PUBLISH,
        UPLINKS,
        SUBNETS,
        HOST_ADDRS,
        NAT_CONFIG,
        STATS,
        HOST_ACCESS_CONFIG,
        HOST_PEERS,
        NON_MASQUERADE,
    ];
}

/// Names of the programs in the object.
pub mod programs {
    pub const TC_COUNT: &str = "tc_count";
    pub const XDP_COUNT: &str = "xdp_count";
    pub const UPLINK_INGRESS: &str = "uplink_ingress";
    pub const UPLINK_EGRESS: &str = "uplink_egress";
    pub const UPLINK_XDP: &str = "uplink_xdp";
    pub const ENDPOINT_INGRESS: &str = "endpoint_ingress";
    pub const BRIDGE_INGRESS: &str = "bridge_ingress";
    /// Host access (cgroup sock_addr hooks on the cgroup v2 root).
    pub const HOST_CONNECT4: &str = "host_connect4";
    pub const HOST_SENDMSG4: &str = "host_sendmsg4";
    pub const HOST_RECVMSG4: &str = "host_recvmsg4";
    pub const HOST_GETPEERNAME4: &str = "host_getpeername4";
    /// The same on IPv6 sockets, for IPv4-mapped addresses.
    pub const HOST_CONNECT6: &str = "host_connect6";
    pub const HOST_SENDMSG6: &str = "host_sendmsg6";
    pub const HOST_RECVMSG6: &str = "host_recvmsg6";
    pub const HOST_GETPEERNAME6: &str = "host_getpeername6";
    pub const HOST_ACCESS: [&str; 8] = [
        HOST_CONNECT4,
        HOST_SENDMSG4,
        HOST_RECVMSG4,
        HOST_GETPEERNAME4,
        HOST_CONNECT6,
        HOST_SENDMSG6,
        HOST_RECVMSG6,
        HOST_GETPEERNAME6,
    ];
}

/// The skb mark bit `endpoint_ingress` sets on what it passed, and `bridge_ingress` checks
/// and clears: a packet routed from an endpoint without it skipped the endpoint check.
pub const CHECKED_MARK: u32 = 1 << 26;

/// The skb mark bit `endpoint_ingress` sets on an IPv4 packet of a tracked flow that its fast
/// path out sends to an uplink after translating it as `uplink_egress` would have;
/// `uplink_egress` passes such a packet as it is, and clears the bit. Set after the packet left
/// the endpoint's namespace (whose marks a veth clears), so an endpoint cannot set it.
pub const TRANSLATED_MARK: u32 = 1 << 27;

/// What `monitor` is told of, through the `MONITOR_EVENTS` ring buffer. The monitor maps
/// are each daemon's own (never pinned): events mean nothing to another daemon.
pub mod monitor {
    /// `MonitorConfig::kinds` bits; 0 while no monitor is attached, and nothing is emitted.
    pub const DROPS: u32 = 1;
    pub const FLOWS: u32 = 2;
    /// `MonitorEvent::kind`.
    pub const KIND_DROP: u8 = 1;
    pub const KIND_FLOW_OPENED: u8 = 2;
    /// Ring buffer size: about 4,600 events of 104 bytes (with the ring's 8-byte headers).
    pub const RING_BYTES: u32 = 512 * 1024;
}

/// What the monitor wants (`MONITOR_CONFIG`, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct MonitorConfig {
    /// `monitor::DROPS` | `monitor::FLOWS`.
    pub kinds: u32,
    /// Events per second per CPU (and the burst): what a flood may cost.
    pub rate: u32,
}

/// Each CPU's token bucket for events (`MONITOR_BUDGET`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct MonitorBudget {
    pub refilled_ns: u64,
    pub tokens: u64,
}

/// One datapath event. Addresses and ports in network byte order, as on the wire. For ICMP
/// the ports hold type and code (`sport`: type << 8 | code) and the echo identifier (`dport`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct MonitorEvent {
    pub kind: u8,
    /// `program_id`.
    pub program: u8,
    /// `outcome`: the drop's reason, or SNAT/DNAT for a flow.
    pub outcome: u8,
    pub proto: u8,
    pub ifindex: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// A flow: the packet as translated.
    pub nat_saddr: u32,
    pub nat_daddr: u32,
    pub nat_sport: u16,
    pub nat_dport: u16,
    /// Host byte order; the frame's, also when it is not IPv4.
    pub ether_type: u16,
    pub _pad: [u8; 6],
    /// IPv6 (`ether_type` 0x86dd): its addresses, in place of `saddr` and `daddr`; for a
    /// drop `proto` is its first next header, and the ports are read when that is TCP, UDP
    /// or ICMPv6.
    pub saddr6: [u8; 16],
    pub daddr6: [u8; 16],
    /// An IPv6 flow: the packet as translated, in place of `nat_saddr` and `nat_daddr`.
    pub nat_saddr6: [u8; 16],
    pub nat_daddr6: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<MonitorEvent>() == 104);

/// Largest number of interfaces whose counters the maps hold.
pub const MAX_INTERFACES: u32 = 4096;

#[cfg(feature = "user")]
mod user {
    // SAFETY: these types are Pod (checked by bytemuck's derive above).
    unsafe impl aya::Pod for super::IfCounters {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::SubnetBlocks {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::Ct6Key {}
    unsafe impl aya::Pod for super::Ct6Entry {}
    unsafe impl aya::Pod for super::EmbryoSlot {}
    unsafe impl aya::Pod for super::Embryo6Slot {}
    unsafe impl aya::Pod for super::PublishKey {}
    unsafe impl aya::Pod for super::PublishTarget {}
    unsafe impl aya::Pod for super::Publish6Key {}
    unsafe impl aya::Pod for super::Publish6Target {}
    unsafe impl aya::Pod for super::Uplink {}
    unsafe impl aya::Pod for super::Subnet {}
    unsafe impl aya::Pod for super::Subnet6 {}
    unsafe impl aya::Pod for super::NonMasqueradeKey {}
    unsafe impl aya::Pod for super::NonMasquerade6Key {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::EndpointPeer {}
    unsafe impl aya::Pod for super::NatConfig {}
    unsafe impl aya::Pod for super::HostAccessConfig {}
    unsafe impl aya::Pod for super::HostPeerKey {}
    unsafe impl aya::Pod for super::HostPeer {}
    unsafe impl aya::Pod for super::HostPeer6Key {}
    unsafe impl aya::Pod for super::HostPeer6 {}
    unsafe impl aya::Pod for super::FilterKey {}
    unsafe impl aya::Pod for super::FilterKey6 {}
    unsafe impl aya::Pod for super::FilterMatch {}
    unsafe impl aya::Pod for super::FilterState {}
    unsafe impl aya::Pod for super::MonitorConfig {}
    unsafe impl aya::Pod for super::MonitorEvent {}
    unsafe impl aya::Pod for super::port_hash::PortSecret {}
    unsafe impl aya::Pod for super::CtFlow {}
    unsafe impl aya::Pod for super::PublishedBy {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn blocks(subnets: &[([u8; 4], u8)]) -> SubnetBlocks {
        let mut blocks = SubnetBlocks::zeroed();
        blocks.ready = 1;
        for (net, len) in subnets {
            blocks.add(u32::from_be_bytes(*net), *len);
        }
        blocks
    }

    #[test]
    fn subnet_blocks_hold_every_address_of_their_subnets_and_little_else() {
        let b = blocks(&[
            ([172, 17, 0, 0], 16),
            ([10, 88, 3, 0], 24),
            ([100, 64, 0, 0], 10),
        ]);
        for a in [
            [172, 17, 0, 2],
            [172, 17, 255, 255],
            [10, 88, 3, 7],
            [10, 88, 0, 1],
        ] {
            assert!(b.may_hold(wire(a)), "{a:?}");
        }
        // A /10 spans 64 blocks: 100.64.0.0 - 100.127.255.255.
        for a in [[100, 64, 0, 0], [100, 100, 1, 1], [100, 127, 255, 255]] {
            assert!(b.may_hold(wire(a)), "{a:?}");
        }
        for a in [
            [172, 18, 0, 2],
            [172, 16, 0, 1],
            [198, 18, 0, 2],
            [100, 63, 255, 255],
            [100, 128, 0, 0],
            [10, 89, 3, 7],
        ] {
            assert!(!b.may_hold(wire(a)), "{a:?}");
        }
        let all = blocks(&[([0, 0, 0, 0], 0)]);
        assert!(all.may_hold(wire([255, 255, 255, 255])) && all.may_hold(wire([0, 0, 0, 1])));
        // Not filled yet: anything may be managed.
        assert!(SubnetBlocks::zeroed().may_hold(wire([198, 18, 0, 2])));
    }
}
