//! NAT on the uplinks: masquerade of the managed subnets, published ports (DNAT), and the
//! reverse translation of their replies, driven by conntrack entries.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR},
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use bridgenet_common::{
    CtFlow, CtKey, NatConfig, NonMasqueradeKey, PublishKey, PublishTarget, PublishedBy, Subnet,
    SubnetBlocks, Uplink, action, ct_flags, embryo_ring, flow_kind, outcome,
    port_hash::{self, PortSecret},
};

use crate::{
    conntrack::{self, InsertError, search},
    header,
    parse::{ICMP, IP_DADDR_OFF, IP_SADDR_OFF, Packet, TCP, UDP, l4_csum_off},
};

#[map]
pub static PUBLISH: HashMap<PublishKey, PublishTarget> = HashMap::with_max_entries(131_072, 0);

/// The host ports each endpoint port is published on, kept by the daemon beside `PUBLISH`:
/// how the endpoint's replies find their flow (`conntrack::find_inside`). Allocated as ports
/// are published: preallocated, its room for every possible mapping would take 11 MiB.
#[map]
pub static PUBLISHED_BY: HashMap<PublishKey, PublishedBy> =
    HashMap::with_max_entries(131_072, BPF_F_NO_PREALLOC);

/// Uplinks by ifindex, with the address masquerade uses on each.
#[map]
pub static UPLINKS: HashMap<u32, Uplink> = HashMap::with_max_entries(64, 0);

/// Managed subnets, by prefix.
#[map]
pub static SUBNETS: LpmTrie<u32, Subnet> = LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Remote prefixes each network reaches with its endpoints' own addresses (no masquerade),
/// and that reach its endpoints directly: a cluster's pod and node CIDRs.
#[map]
pub static NON_MASQUERADE: LpmTrie<NonMasqueradeKey, u32> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// The host's own addresses: a port published on any address answers on each of them.
#[map]
pub static HOST_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

#[map]
pub static NAT_CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

/// The key of masquerade's port sequence, written by the loader.
#[map]
pub static PORT_SECRET: Array<PortSecret> = Array::with_max_entries(1, 0);

/// The uplink's masquerade address, if `ifindex` is an uplink.
#[inline(always)]
pub fn uplink_addr(ifindex: u32) -> Option<u32> {
    unsafe { UPLINKS.get(ifindex) }.map(|uplink| uplink.addr)
}

/// The /16 blocks the managed subnets overlap (`SubnetBlocks`), written by the loader.
#[map]
pub static SUBNET_BLOCKS: Array<SubnetBlocks> = Array::with_max_entries(1, 0);

/// `subnet_cached`'s answers, per CPU, in a slot chosen by a hash of the address: each valid
/// while `SUBNETS` is as it was when it was read (`SubnetBlocks::ready`, which the daemon
/// changes after each change of the trie). Not pinned: a cache, which each load of the
/// programs starts empty.
#[map]
static SUBNET_CACHE: PerCpuArray<SubnetCached> =
    PerCpuArray::with_max_entries(SUBNET_CACHE_SLOTS, 0);

/// 256 slots: the addresses a CPU's packets name within one change of the subnets (endpoints
/// and their gateways) seldom share one.
const SUBNET_CACHE_SLOTS: u32 = 256;

#[repr(C)]
struct SubnetCached {
    /// `SubnetBlocks::ready` when the answer was read from the trie (0: an empty slot).
    generation: u64,
    addr: u32,
    answer: SubnetCopy,
}

/// A copy of the managed subnet an address is in, or of none: written whole on every path.
/// (An `Option<Subnet>` leaves its payload undefined when it is None, and LLVM then spilled
/// registers that path never wrote, which the verifier refuses.)
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SubnetCopy {
    found: u32,
    subnet: Subnet,
}

impl SubnetCopy {
    const NONE: Self = Self {
        found: 0,
        subnet: Subnet {
            masquerade: 0,
            network: 0,
            gateway: 0,
            flags: 0,
        },
    };

    #[inline(always)]
    fn of(subnet: Option<&Subnet>) -> Self {
        match subnet {
            Some(subnet) => Self {
                found: 1,
                subnet: *subnet,
            },
            None => Self::NONE,
        }
    }

    /// The subnet, if the address is in one.
    #[inline(always)]
    pub fn get(&self) -> Option<&Subnet> {
        (self.found != 0).then_some(&self.subnet)
    }
}

/// `subnet_of` for the packet programs: an address asked about before is answered from
/// `SUBNET_CACHE`, without the trie (whose lookup costs about 30 ns). A copy, because a
/// reference into the cache would change under the caller when its next question takes the
/// same slot. Not for the cgroup hooks: they run in a process, where a packet's program can
/// interrupt them on their CPU and take the slot they are reading or writing; the packet
/// programs run in softirq or with bottom halves off, which nothing on their CPU interrupts.
#[inline(always)]
pub fn subnet_cached(addr: u32) -> SubnetCopy {
    // The generation is read before the trie: a change between the two leaves an answer
    // cached under the generation before it, which the next question finds stale.
    let generation = match SUBNET_BLOCKS.get(0) {
        Some(blocks) if !blocks.may_hold(addr) => return SubnetCopy::NONE,
        Some(blocks) => blocks.ready,
        None => 0,
    };
    // Host order: the hash spreads the last bytes, where endpoints differ.
    let slot = cache_slot(u32::from_be(addr));
    let cached = match SUBNET_CACHE.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot, which nothing else on this CPU uses meanwhile.
        Some(cached) if generation != 0 => unsafe { &mut *cached },
        // Blocks not filled yet: no generation to check an answer against.
        _ => return SubnetCopy::of(SUBNETS.get(Key::new(32, addr))),
    };
    if cached.generation != generation || cached.addr != addr {
        cached.answer = SubnetCopy::of(SUBNETS.get(Key::new(32, addr)));
        cached.generation = generation;
        cached.addr = addr;
    }
    cached.answer
}

/// The slot of `x` in a per-CPU cache of 256 (`SUBNET_CACHE`, `fastpath`'s `NEXT_HOPS` and
/// `NEXT_HOPS6`): the top byte of a multiplicative hash, which every bit of `x` moves.
#[inline(always)]
pub fn cache_slot(x: u32) -> u32 {
    x.wrapping_mul(0x9e37_79b1) >> 24
}

/// The generation of the managed subnets (`SubnetBlocks::ready`; 0 before the daemon filled
/// them).
#[inline(always)]
pub fn subnets_generation() -> u64 {
    SUBNET_BLOCKS.get(0).map_or(0, |blocks| blocks.ready)
}

/// The managed subnet `addr` belongs to. An address in none of their blocks is answered
/// without the trie: an array lookup costs a few instructions, the trie's about 30 ns.
#[inline(always)]
pub fn subnet_of(addr: u32) -> Option<&'static Subnet> {
    if let Some(blocks) = SUBNET_BLOCKS.get(0)
        && !blocks.may_hold(addr)
    {
        return None;
    }
    SUBNETS.get(Key::new(32, addr))
}

/// Whether endpoints of `network` and `remote` talk with their own addresses.
#[inline(always)]
pub fn non_masquerade(network: u32, remote: u32) -> bool {
    let key = Key::new(
        64,
        NonMasqueradeKey {
            network,
            addr: remote,
        },
    );
    NON_MASQUERADE.get(key).is_some()
}

#[inline(always)]
pub fn is_host_addr(addr: u32) -> bool {
    unsafe { HOST_ADDRS.get(addr) }.is_some()
}

/// Applies a conntrack entry's action to the packet: the outcome to count.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn apply(ctx: &mut TcContext, packet: &Packet, act: u8, addr: u32, port: u16) -> u32 {
    match act {
        action::SNAT | action::DNAT => match rewrite(ctx, packet, act, addr, port) {
            Ok(()) if act == action::SNAT => outcome::SNAT,
            Ok(()) => outcome::DNAT,
            Err(_) => outcome::DROP_REWRITE_FAILED,
        },
        _ => outcome::PASSED,
    }
}

/// The mappings of the endpoint port `tuple` comes from (`PUBLISHED_BY`).
#[inline(always)]
pub fn published_by(tuple: &CtKey) -> Option<&'static PublishedBy> {
    let key = PublishKey {
        addr: tuple.saddr,
        port: tuple.sport,
        proto: tuple.proto,
        _pad: 0,
    };
    unsafe { PUBLISHED_BY.get(key) }
}

/// The NAT port range; an unset (zeroed) configuration means the defaults.
#[inline(always)]
pub fn nat_config() -> NatConfig {
    match NAT_CONFIG.get(0) {
        Some(config) if config.port_max != 0 => *config,
        _ => NatConfig::default(),
    }
}

/// Opens a masquerade flow for a packet leaving through the uplink with address `nat_addr`.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn masquerade(ctx: &mut TcContext, packet: &Packet, nat_addr: u32) -> u32 {
    let tuple = packet.key;
    let kind = flow_kind::MASQUERADE;
    let flow = match conntrack::open_flow(embryo_ring::INSIDE, kind, 0, tuple.saddr, tuple.sport) {
        Ok(flow) => flow,
        Err(drop) => return drop,
    };
    let mut key = conntrack::masquerade_key(&tuple, nat_addr);
    let result = open_at_port(&mut key, &tuple, flow);
    if result != outcome::PASSED {
        return result;
    }
    apply(ctx, packet, action::SNAT, nat_addr, key.dport)
}

/// Opens a flow for a packet that leaves with its endpoint's own address (gateway mode
/// routed): tracked so that the flow's replies are told from traffic routed in unasked, and
/// the packet leaves as it is.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn route_out(ctx: &mut TcContext, packet: &Packet) -> u32 {
    let tuple = packet.key;
    let result = open_reversed(&tuple, flow_kind::ROUTED);
    if result != outcome::PASSED {
        return result;
    }
    apply(ctx, packet, action::SNAT, tuple.saddr, tuple.sport)
}

/// Opens a flow from inside that keeps its tuple (routed, the host's own), keyed by the
/// tuple reversed: PASSED, or the drop (the room given back).
#[inline(always)]
fn open_reversed(tuple: &CtKey, kind: u8) -> u32 {
    if let Err(drop) = conntrack::open_flow(embryo_ring::INSIDE, kind, 0, tuple.saddr, tuple.sport)
    {
        return drop;
    }
    let key = tuple.reversed();
    match conntrack::insert_opening(&key) {
        Ok(()) => outcome::PASSED,
        Err(err) => {
            conntrack::release(1);
            match err {
                InsertError::Full => outcome::DROP_CT_FULL,
                // The same flow, opened on another CPU meanwhile; anything else holding the
                // tuple is another flow (masquerade's, on the host's address).
                InsertError::Exists => match unsafe { conntrack::CONNTRACK.get(key) } {
                    Some(won) if won.sent_by(kind, tuple) => {
                        conntrack::opened_by_another(&key);
                        outcome::PASSED
                    }
                    _ => outcome::DROP_PORTS_EXHAUSTED,
                },
            }
        }
    }
}

/// Inserts the new flow `flow` (the `OPENING` one, begun by `conntrack::open_flow`) under
/// `key`, whose destination port is chosen from `tuple`'s keyed sequence so that the key is
/// free: masquerade's source port, hairpin's gateway port (the first candidate, as
/// `choose_port` walks them, whose key is free). A flow that got a port past what the inside
/// hooks probe is entered in `CT_EXCEPTIONS`. PASSED with the port in `key`, or the outcome
/// to drop the packet with (the room is given back).
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit. The candidates through bpf_loop (Linux 5.17+), as `conntrack::probe`:
// the verifier checks one step instead of 33 for every state a caller reaches it in.
#[inline(never)]
pub fn open_at_port(key: &mut CtKey, tuple: &CtKey, flow: *mut CtFlow) -> u32 {
    let Some(walk) = PORT_WALK.get_ptr_mut(0) else {
        conntrack::release(1);
        return outcome::DROP_CT_FULL;
    };
    unsafe {
        (*walk).key = *key;
        (*walk).tuple = *tuple;
        (*walk).hash = port_hash4(tuple);
        (*walk).config = nat_config();
        (*walk).original = u16::from_be(tuple.sport);
        (*walk).raced = 0;
        (*walk).result = outcome::DROP_PORTS_EXHAUSTED;
        aya_ebpf::helpers::generated::bpf_loop(
            port_hash::TRIES + 1,
            open_step as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        );
        key.dport = (*walk).key.dport;
    }
    let (result, raced) = unsafe { ((*walk).result, (*walk).raced) };
    if result != outcome::PASSED || raced != 0 {
        conntrack::release(1);
        return result;
    }
    if unsafe { (*flow).flags } & ct_flags::EXCEPTION != 0 && !conntrack::add_exception(tuple, key)
    {
        // Not `remove_flow`: there is no exception to remove, and its frame is not needed.
        let _ = conntrack::CONNTRACK.remove(key);
        conntrack::release(1);
        return outcome::DROP_CT_FULL;
    }
    outcome::PASSED
}

/// `open_at_port`'s walk, where its bpf_loop callback finds it. Not bpf_loop's context: that
/// has to be on the stack, in `open_at_port`'s frame, which is on the hairpin path's deepest
/// chain of calls; Linux 6.1 counts the callback's frame in that chain too (512 bytes).
#[repr(C)]
struct PortWalk {
    /// The flow's key, its destination port the candidate being tried.
    key: CtKey,
    /// The sender's tuple.
    tuple: CtKey,
    hash: u64,
    config: NatConfig,
    /// `tuple`'s source port, host byte order.
    original: u16,
    /// 1 when the flow was found opened on another CPU (`same_flow`).
    raced: u8,
    _pad: u8,
    /// PASSED once inserted (or raced), DROP_CT_FULL, or DROP_PORTS_EXHAUSTED while no
    /// candidate was free.
    result: u32,
}

#[map]
static PORT_WALK: PerCpuArray<PortWalk> = PerCpuArray::with_max_entries(1, 0);

/// Candidate `i` of `open_at_port`'s walk: 0 to go on to the next, 1 to stop (inserted,
/// raced, or the table refused it).
#[inline(never)]
extern "C" fn open_step(i: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let (Some(w), Some(flow)) = (PORT_WALK.get_ptr_mut(0), conntrack::opening()) else {
        return 1;
    };
    let w = unsafe { &mut *w };
    let Some(port) = port_hash::candidate(&w.config, w.original, w.hash, i) else {
        return 0;
    };
    w.key.dport = port.to_be();
    let (key, tuple) = (&w.key, &w.tuple);
    // A flow's key cannot be its sender's own tuple (hairpin to itself): the sender's
    // packets would be taken for the other side's.
    if key.dport == tuple.dport && key.sport == tuple.sport && key.saddr == tuple.saddr {
        return 0;
    }
    if i > port_hash::FOUND_WITHIN {
        unsafe { (*flow).flags |= ct_flags::EXCEPTION };
    }
    w.result = match conntrack::insert_opening(key) {
        Ok(()) => outcome::PASSED,
        Err(InsertError::Exists) if same_flow(key, tuple, flow) => {
            w.raced = 1;
            outcome::PASSED
        }
        Err(InsertError::Exists) => return 0,
        Err(InsertError::Full) => outcome::DROP_CT_FULL,
    };
    1
}

/// Whether the flow at `key` is the one `opening` would be (the same sender's, opened on
/// another CPU meanwhile): then the packet is translated as it is there.
#[inline(always)]
fn same_flow(key: &CtKey, tuple: &CtKey, opening: *mut CtFlow) -> bool {
    let Some(won) = (unsafe { conntrack::CONNTRACK.get(key) }) else {
        return false;
    };
    if !won.sent_by(unsafe { (*opening).kind }, tuple) {
        return false;
    }
    conntrack::opened_by_another(key);
    true
}

/// `port_hash::of4` of a flow's inside tuple under `PORT_SECRET` (read in place: a copy
/// would take stack from the deepest chain of calls, the hairpin path's).
// Inlined: a call of its own adds a frame to that chain, which Linux 6.1 counts as 32 bytes
// even when it is empty, past the 512 allowed.
#[inline(always)]
pub fn port_hash4(key: &CtKey) -> u64 {
    PORT_SECRET
        .get(0)
        .map_or(0, |secret| port_hash::of4(secret, key))
}

/// The port masquerade gives an IPv6 flow whose source port is `original` (host byte order):
/// the first of its candidates (`port_hash::candidate`: that one when it is outside the
/// host's port range, then ports of the NAT range from where `hash` says on) for which
/// `insert` (given the port, host byte order, and the candidate's index) finds the key free.
/// PASSED, DROP_CT_FULL or DROP_PORTS_EXHAUSTED; the caller gives back the room it took.
/// IPv4's walk is `open_at_port`'s, the same through bpf_loop.
#[inline(always)]
pub fn choose_port(
    original: u16,
    hash: u64,
    mut insert: impl FnMut(u16, u32) -> Result<(), InsertError>,
) -> u32 {
    let config = nat_config();
    for i in 0..=port_hash::TRIES {
        let Some(port) = port_hash::candidate(&config, original, hash, i) else {
            continue;
        };
        match insert(port, i) {
            Ok(()) => return outcome::PASSED,
            Err(InsertError::Exists) => continue,
            Err(InsertError::Full) => return outcome::DROP_CT_FULL,
        }
    }
    outcome::DROP_PORTS_EXHAUSTED
}

/// The endpoint a packet arriving on an uplink is published to, if any.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn published(key: &CtKey) -> Option<PublishTarget> {
    // A port published on 127.0.0.1 is for the host only (host_access.rs): a packet that
    // claims a loopback destination on the wire never matches.
    if key.proto != TCP && key.proto != UDP || u32::from_be(key.daddr) >> 24 == 127 {
        return None;
    }
    let mut lookup = PublishKey {
        addr: key.daddr,
        port: key.dport,
        proto: key.proto,
        _pad: 0,
    };
    if let Some(target) = unsafe { PUBLISH.get(lookup) } {
        return Some(*target);
    }
    if !is_host_addr(key.daddr) {
        return None;
    }
    lookup.addr = 0;
    unsafe { PUBLISH.get(lookup) }.copied()
}

/// Opens a flow to a published port, arrived on the uplink with address `uplink_addr`: the
/// client keeps its address, the destination becomes the endpoint, and replies from the
/// endpoint get the host address and port back. A flow routed straight to an endpoint
/// (nat-unprotected) is one published to itself.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn publish(
    ctx: &mut TcContext,
    packet: &Packet,
    target: PublishTarget,
    uplink_addr: u32,
) -> u32 {
    if !conntrack::opens_flow(packet) {
        return outcome::DROP_UNTRACKED;
    }
    let key = packet.key;
    let kind = if (target.addr, target.port) == (key.daddr, key.dport) {
        flow_kind::ROUTED
    } else {
        flow_kind::PUBLISHED
    };
    // The endpoint's side of the tuple must be no other flow's. It may still be held by a
    // closed connection of the same client port that reached it through another mapping:
    // that one is over.
    let inside = CtKey {
        saddr: target.addr,
        daddr: key.saddr,
        sport: target.port,
        dport: key.sport,
        proto: key.proto,
        _pad: [0; 3],
    };
    let mut held = key;
    if let Some(holder) = conntrack::find_computed(
        &inside,
        uplink_addr,
        search::PUBLISHED | search::REVERSED,
        &mut held,
    ) && !conntrack::evict_closed(&held, holder)
    {
        return outcome::DROP_PORTS_EXHAUSTED;
    }
    let exception = kind == flow_kind::PUBLISHED && !found_from_inside(&key, &inside, uplink_addr);
    let flags = if exception {
        ct_flags::INBOUND | ct_flags::EXCEPTION
    } else {
        ct_flags::INBOUND
    };
    let side = embryo_ring::OUTSIDE;
    if let Err(drop) = conntrack::open_flow(side, kind, flags, target.addr, target.port) {
        return drop;
    }
    if let Err(err) = conntrack::insert_opening(&key) {
        conntrack::release(1);
        if let InsertError::Full = err {
            return outcome::DROP_CT_FULL;
        }
        // The same flow, opened on another CPU meanwhile: translated as it is there.
        return match unsafe { conntrack::CONNTRACK.get(key) } {
            Some(won) if won.sent_by(kind, &inside) => {
                conntrack::opened_by_another(&key);
                let (addr, port) = (won.inside_addr, won.inside_port);
                apply(ctx, packet, action::DNAT, addr, port)
            }
            _ => outcome::DROP_PORTS_EXHAUSTED,
        };
    }
    if exception && !conntrack::add_exception(&inside, &key) {
        conntrack::remove_flow(&key);
        return outcome::DROP_CT_FULL;
    }
    apply(ctx, packet, action::DNAT, target.addr, target.port)
}

/// Whether the endpoint's replies (`inside`) find the published flow `key` through
/// `PUBLISHED_BY`: its mapping has a slot there, and a mapping on any host address was
/// reached at the address of the uplink the replies leave through (the one it came in by).
#[inline(always)]
fn found_from_inside(key: &CtKey, inside: &CtKey, uplink_addr: u32) -> bool {
    published_by(inside).is_some_and(|by| by.answers(key, |addr| addr == uplink_addr))
}

/// Tracks a flow of the host itself, so masquerade never picks its tuple.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn track_host_flow(packet: &Packet) {
    // Host flows take room as any other (and are refused the same way when there is none: the
    // host's packet still passes, untracked).
    let _ = open_reversed(&packet.key, flow_kind::HOST);
}

/// Rewrites the source (SNAT) or destination (DNAT) address and port, fixing the IPv4 and L4
/// checksums incrementally: the IPv4 header's in the program (`header`), the L4 one through the
/// helpers, which keep CHECKSUM_PARTIAL packets right; BPF_F_MARK_MANGLED_0 keeps a UDP
/// checksum of 0 (none) at 0.
#[inline(always)]
fn rewrite(ctx: &mut TcContext, packet: &Packet, act: u8, addr: u32, port: u16) -> Result<(), i64> {
    let key = packet.key;
    let (addr_off, old_addr, old_port, port_off) = if act == action::SNAT {
        (IP_SADDR_OFF, key.saddr, key.sport, packet.l4_off)
    } else {
        (IP_DADDR_OFF, key.daddr, key.dport, packet.l4_off + 2)
    };
    // The ICMP echo identifier stands where ports stand, in both directions.
    let port_off = if key.proto == ICMP {
        packet.l4_off + 4
    } else {
        port_off
    };
    let mangled_0 = if key.proto == UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let csum_off = l4_csum_off(key.proto, packet.l4_off);

    if addr != old_addr {
        header::set_addr(ctx, addr_off, old_addr, addr).ok_or(-1)?;
        if let (TCP | UDP, Some(csum_off)) = (key.proto, csum_off) {
            let flags = u64::from(BPF_F_PSEUDO_HDR) | mangled_0 | 4;
            ctx.l4_csum_replace(csum_off, u64::from(old_addr), u64::from(addr), flags)?;
        }
    }
    if port != old_port
        && !packet.fragment
        && let Some(csum_off) = csum_off
    {
        header::set_port(ctx, port_off, port).ok_or(-1)?;
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_port),
            u64::from(port),
            mangled_0 | 2,
        )?;
    }
    Ok(())
}
