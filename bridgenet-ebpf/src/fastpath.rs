//! Fast path: a packet translated towards an endpoint skips the stack's forwarding path after
//! a FIB lookup. When the FIB routes it to the bridge of the endpoint it is for, and knows the
//! endpoint's MAC, it goes straight into the endpoint's namespace (bpf_redirect_peer), also
//! skipping the bridge and the veth; otherwise to the bridge with bpf_redirect_neigh. Whenever
//! the lookup does not give a plain answer (no route, forwarding off, the packet too big for
//! the MTU, TTL about to expire) the packet takes the normal path, which knows what to do.
//! A GSO packet (bulk TCP: up to 64 KiB) is checked as forwarding checks it: by the size of
//! the segments it will be cut into.
//! Out of an endpoint, what is sent to the gateway's MAC for an address the FIB routes out
//! through an uplink goes straight to that uplink; an IPv4 packet of a tracked flow translated
//! on the way (see `endpoint_ingress`). Both ways for IPv4 and IPv6.
//! The FIB's plain answers are kept a short while (`NEXT_HOPS`, `NEXT_HOPS6`): most packets
//! are answered without a lookup.
use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup,
        bpf_redir_neigh,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect, bpf_redirect_neigh,
        bpf_redirect_peer,
    },
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
    programs::TcContext,
};
use bridgenet_common::{EndpointPeer, outcome};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    header, mem, nat,
    nat6::UPLINKS6,
    parse::{self, IP_OFF, TCP},
    parse6::{self, ETH_P_IPV6, IP6_LEN, IP6_OFF, SADDR_OFF},
};

/// Endpoints by address (network byte order), written by the daemon once the container end
/// of the veth is in the endpoint's namespace (bpf_redirect_peer drops a packet whose peer is
/// in the same namespace). Per CPU for the counters; allocated as endpoints come.
#[map]
pub static ENDPOINT_PEERS: PerCpuHashMap<u32, EndpointPeer> =
    PerCpuHashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// The FIB's plain answers for IPv4 packets of the fast paths, per CPU, in a slot chosen by a
/// hash of the question. Each holds for `NEXT_HOP_TTL_NS`, and while the managed subnets stay
/// as they were (`SUBNET_BLOCKS`' generation, which the daemon moves as it adds or removes a
/// network of either family, whose bridge's routes come and go with it): a change of routes,
/// neighbours, MTUs or forwarding made outside bridgenet reaches the fast paths within that
/// time. Not pinned.
#[map]
static NEXT_HOPS: PerCpuArray<Kept<Question4>> = PerCpuArray::with_max_entries(NEXT_HOP_SLOTS, 0);

/// `NEXT_HOPS` for IPv6 packets.
#[map]
static NEXT_HOPS6: PerCpuArray<Kept<Question6>> = PerCpuArray::with_max_entries(NEXT_HOP_SLOTS, 0);

/// 256 slots: the pairs of addresses a CPU forwards within 20 ms seldom share one.
const NEXT_HOP_SLOTS: u32 = 256;

/// How long an answer holds: a lookup per 20 ms for a busy pair of addresses.
const NEXT_HOP_TTL_NS: u64 = 20_000_000;

/// A kept answer of the FIB to `question`.
#[repr(C)]
struct Kept<Q> {
    /// `SubnetBlocks::ready` when it was asked (0: no answer to reuse).
    generation: u64,
    /// When it is asked again (`bpf_ktime_get_coarse_ns`).
    expires_ns: u64,
    question: Q,
    /// The answer, asked with the packet's size: `mtu_result` is the route's MTU.
    fib: bpf_fib_lookup,
}

/// What a packet asks the FIB but its size, which each packet is checked against the answer's
/// MTU for.
trait Question: Copy {
    /// Its slot in a cache of `NEXT_HOP_SLOTS`.
    fn slot(&self) -> u32;
    fn same(&self, other: &Self) -> bool;
    /// Writes it into a zeroed lookup.
    fn ask(&self, fib: &mut bpf_fib_lookup);
}

/// An IPv4 packet's question: the interface it came in on, its addresses, TOS and protocol.
#[repr(C)]
#[derive(Clone, Copy)]
struct Question4 {
    iif: u32,
    saddr: u32,
    daddr: u32,
    tos_proto: u32,
}

impl Question4 {
    #[inline(always)]
    fn of(ctx: &TcContext, ip: &Ipv4Hdr) -> Self {
        Question4 {
            iif: unsafe { (*ctx.skb.skb).ifindex },
            saddr: u32::from_ne_bytes(ip.src_addr),
            daddr: u32::from_ne_bytes(ip.dst_addr),
            tos_proto: (u32::from(ip.tos) << 8) | u32::from(ip.proto),
        }
    }
}

impl Question for Question4 {
    #[inline(always)]
    fn slot(&self) -> u32 {
        nat::cache_slot(self.saddr ^ self.daddr.rotate_left(16) ^ self.iif)
    }

    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        self.iif == other.iif
            && self.saddr == other.saddr
            && self.daddr == other.daddr
            && self.tos_proto == other.tos_proto
    }

    #[inline(always)]
    fn ask(&self, fib: &mut bpf_fib_lookup) {
        fib.family = AF_INET;
        fib.l4_protocol = self.tos_proto as u8;
        fib.ifindex = self.iif;
        fib.__bindgen_anon_2.tos = (self.tos_proto >> 8) as u8;
        fib.__bindgen_anon_3.ipv4_src = self.saddr;
        fib.__bindgen_anon_4.ipv4_dst = self.daddr;
    }
}

/// An IPv6 packet's question: the interface it came in on, its traffic class and flow label,
/// next header and addresses.
#[repr(C)]
#[derive(Clone, Copy)]
struct Question6 {
    iif: u32,
    flowinfo: u32,
    /// The source's words, then the destination's, as they follow each other in the header.
    addrs: [u64; 4],
    proto: u32,
    _pad: u32,
}

impl Question6 {
    /// `hdr`: the IPv6 header's first 8 bytes.
    #[inline(always)]
    fn of(ctx: &TcContext, hdr: &[u8; 8]) -> Option<Self> {
        Some(Question6 {
            iif: unsafe { (*ctx.skb.skb).ifindex },
            flowinfo: u32::from_ne_bytes([hdr[0] & 0x0f, hdr[1], hdr[2], hdr[3]]),
            // Both addresses with one helper call: read in place, unaligned, they would be
            // byte loads whose spills take more stack than 6.1's limit leaves here.
            addrs: ctx.load(SADDR_OFF).ok()?,
            proto: u32::from(hdr[6]),
            _pad: 0,
        })
    }
}

impl Question for Question6 {
    #[inline(always)]
    fn slot(&self) -> u32 {
        let [s0, s1, d0, d1] = self.addrs;
        let x = s0 ^ s1 ^ (d0 ^ d1).rotate_left(32);
        nat::cache_slot((x ^ (x >> 32)) as u32 ^ self.iif)
    }

    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        self.iif == other.iif
            && self.flowinfo == other.flowinfo
            && self.proto == other.proto
            && self.addrs[0] == other.addrs[0]
            && self.addrs[1] == other.addrs[1]
            && self.addrs[2] == other.addrs[2]
            && self.addrs[3] == other.addrs[3]
    }

    #[inline(always)]
    fn ask(&self, fib: &mut bpf_fib_lookup) {
        fib.family = AF_INET6;
        fib.l4_protocol = self.proto as u8;
        fib.ifindex = self.iif;
        fib.__bindgen_anon_2.flowinfo = self.flowinfo;
        let [s0, s1, d0, d1] = self.addrs;
        // SAFETY: the same 16 bytes seen as words of another size.
        unsafe {
            fib.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u64; 2], [u32; 4]>([s0, s1]);
            fib.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u64; 2], [u32; 4]>([d0, d1]);
        }
    }
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `redirect4` for what `uplink_ingress` translated towards an endpoint.
// A BPF subprogram of its own: its lookup must not sit in uplink_ingress's frame.
#[inline(never)]
pub fn redirect(ctx: &mut TcContext) -> Option<(i32, u32)> {
    redirect4(ctx, false)
}

/// `redirect4` for a hairpin packet (`must`).
#[inline(always)]
pub fn redirect_hairpin(ctx: &mut TcContext) -> Option<(i32, u32)> {
    redirect4(ctx, true)
}

/// Redirects the (already translated) IPv4 packet to its next hop; the TC verdict and the
/// path taken (`outcome::FAST_PATH` or `FAST_PATH_PEER`), or None when the packet should take
/// the normal path.
///
/// `must`: the normal path would drop the packet (a hairpin packet's source is a host address,
/// a martian on a forwarded packet), so it is redirected whenever there is a route: an
/// unknown neighbour is resolved by bpf_redirect_neigh, and the kernel checks the size
/// against the MTU itself (an endpoint's veth passes 64 KiB GSO packets, cut into segments
/// of its own MTU, the bridge's).
#[inline(always)]
fn redirect4(ctx: &mut TcContext, must: bool) -> Option<(i32, u32)> {
    let (_, ip) = parse::eth_ipv4(ctx)?;
    if must {
        let mut slot = MaybeUninit::uninit();
        let (ret, fib) = lookup(ctx, &ip, &mut slot)?;
        if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) && ret != i64::from(BPF_FIB_LKUP_RET_NO_NEIGH)
        {
            return None;
        }
        header::decrement_ttl(ctx)?;
        return Some((to_neighbour(fib), outcome::FAST_PATH));
    }
    let fib = next_hop(ctx, &ip, segment4(ctx, &ip)?)?;
    header::decrement_ttl(ctx)?;
    if let Some(peer) = ENDPOINT_PEERS.get_ptr_mut(u32::from_ne_bytes(ip.dst_addr))
        && unsafe { (*peer).bridge } == fib.ifindex
    {
        // The MACs the bridge's routed packet would carry: the gateway's, to the endpoint's.
        set_macs(ctx, fib)?;
        return Some((into_peer(ctx, peer), outcome::FAST_PATH_PEER));
    }
    Some((to_neighbour(fib), outcome::FAST_PATH))
}

/// Sends the packet to the FIB's next hop, whose MAC the kernel resolves; the TC verdict.
#[inline(always)]
fn to_neighbour(fib: &bpf_fib_lookup) -> i32 {
    let mut neigh = MaybeUninit::uninit();
    // SAFETY: a kernel struct of integers.
    let neigh: &mut bpf_redir_neigh = unsafe { mem::zeroed(&mut neigh) };
    neigh.nh_family = u32::from(AF_INET);
    neigh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
    let action =
        unsafe { bpf_redirect_neigh(fib.ifindex, neigh, size_of::<bpf_redir_neigh>() as i32, 0) };
    action as i32
}

/// Sends the packet into the endpoint's namespace through `peer`'s veth, counted there; the TC
/// verdict.
#[inline(always)]
fn into_peer(ctx: &TcContext, peer: *mut EndpointPeer) -> i32 {
    // Per-CPU value: no other CPU writes it.
    unsafe {
        (*peer).packets += 1;
        (*peer).bytes += u64::from(ctx.len());
        bpf_redirect_peer((*peer).veth, 0) as i32
    }
}

/// `redirect` for an (already translated) IPv6 packet from an uplink towards an endpoint, when
/// the FIB has a plain answer (a route, a known neighbour, a size that fits the MTU, for a
/// GSO packet its segments'): straight into the endpoint's namespace when the next hop's MAC
/// is that of an endpoint on the bridge the FIB routes to (02:42 and its IPv4 address, as
/// bridgenet gives them, names it in `ENDPOINT_PEERS`), else to that bridge with the MACs set.
/// None: the normal path (which sends Packet Too Big, resolves neighbours, expires the hop
/// limit).
// A BPF subprogram of its own: its lookup must not sit in uplink_ingress's frame.
#[inline(never)]
pub fn redirect6(ctx: &mut TcContext) -> Option<(i32, u32)> {
    let fib = next_hop6(ctx)?;
    header::decrement_hop_limit(ctx)?;
    set_macs(ctx, fib)?;
    let mac = fib.dmac;
    if mac[..2] == [0x02, 0x42]
        && let Some(peer) =
            ENDPOINT_PEERS.get_ptr_mut(u32::from_ne_bytes([mac[2], mac[3], mac[4], mac[5]]))
        && unsafe { (*peer).bridge } == fib.ifindex
    {
        return Some((into_peer(ctx, peer), outcome::FAST_PATH_PEER));
    }
    Some((
        unsafe { bpf_redirect(fib.ifindex, 0) } as i32,
        outcome::FAST_PATH,
    ))
}

/// Fast path out of an endpoint: an IPv4 or IPv6 packet that passed the endpoint's checks, sent
/// to its gateway's MAC (`gateway`: the network's gateway address, whose MAC is 02:42 and the
/// address, as bridgenet gives its bridges), that the FIB routes out through an uplink to a
/// known neighbour and that fits the uplink's MTU (a GSO packet: its segments) goes straight
/// to that uplink's egress, skipping the bridge and the forwarding path. The TC verdict and,
/// for IPv4, the uplink's address, which the caller may translate the packet for (`0`: IPv6,
/// whose translation needs no address of the uplink: its flow has it); None for the normal
/// path (another MAC, a bridge that is not bridgenet's, no plain answer).
/// A call of its own: inlined, its lookup would add to the hairpin path's stack.
#[inline(never)]
pub fn out(ctx: &mut TcContext, gateway: u32) -> Option<(i32, u32)> {
    let [a, b, c, d] = gateway.to_ne_bytes();
    if gateway == 0 {
        return None;
    }
    let (eth, ip) = parse::eth_ipv4(ctx)?;
    if !mem::mac_eq(eth.dst_addr, [0x02, 0x42, a, b, c, d]) {
        return None;
    }
    let ether_type = eth.ether_type;
    if ether_type == ETH_P_IPV6 {
        return out6(ctx).map(|action| (action, 0));
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return None;
    }
    let fib = next_hop(ctx, &ip, segment4(ctx, &ip)?)?;
    // Only to an uplink.
    let uplink_addr = nat::uplink_addr(fib.ifindex)?;
    header::decrement_ttl(ctx)?;
    set_macs(ctx, fib)?;
    Some((unsafe { bpf_redirect(fib.ifindex, 0) } as i32, uplink_addr))
}

/// `out` for IPv6: to an uplink with an IPv6 address (`UPLINKS6`), for which the caller may
/// translate the packet (NAT66); the size is checked against the MTU as for IPv4.
// A BPF subprogram of its own: its lookup must not sit in the IPv4 path's frame.
#[inline(never)]
fn out6(ctx: &mut TcContext) -> Option<i32> {
    let fib = next_hop6(ctx)?;
    unsafe { UPLINKS6.get(fib.ifindex) }?;
    header::decrement_hop_limit(ctx)?;
    set_macs(ctx, fib)?;
    Some(unsafe { bpf_redirect(fib.ifindex, 0) } as i32)
}

/// `segment_len` of an IPv4 packet.
#[inline(always)]
fn segment4(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<Option<u16>> {
    segment_len(ctx, IP_OFF + usize::from(ip.ihl()), ip.proto)
}

/// The size of the segments a GSO packet will be cut into (IP and TCP headers, `l4` the
/// offset of TCP's), which forwarding checks against the MTU; Some(None) for a packet that is
/// not GSO, None (the normal path) for a GSO packet other than TCP.
#[inline(always)]
fn segment_len(ctx: &TcContext, l4: usize, proto: u8) -> Option<Option<u16>> {
    match gso_segment_len(ctx, l4, proto) {
        0 => Some(None),
        NOT_SIZED => None,
        len => Some(Some(len as u16)),
    }
}

const NOT_SIZED: u32 = u32::MAX;

/// `segment_len` as one register (0: not GSO; `NOT_SIZED`), a BPF subprogram of its own: the
/// callers' frames are as large as the stack allows.
#[inline(never)]
fn gso_segment_len(ctx: &TcContext, l4: usize, proto: u8) -> u32 {
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return 0;
    }
    // The data offset: the high 4 bits of byte 12, in 32-bit words.
    let Ok(data_offset) = ctx.load::<u8>(l4 + 12) else {
        return NOT_SIZED;
    };
    let len = (l4 - IP_OFF) as u32 + u32::from(data_offset >> 4) * 4 + gso_size;
    if proto != TCP || len > u32::from(u16::MAX) {
        return NOT_SIZED;
    }
    len
}

/// The FIB's plain answer (`BPF_FIB_LKUP_RET_SUCCESS`) for an IPv4 packet as forwarding would
/// ask, its size checked against the route's MTU (a GSO packet's by its segments, `segment`,
/// any other's by its frame, as forwarding checks them), or None for the normal path.
#[inline(always)]
fn next_hop(
    ctx: &TcContext,
    ip: &Ipv4Hdr,
    segment: Option<u16>,
) -> Option<&'static bpf_fib_lookup> {
    if ip.ttl <= 1 {
        return None;
    }
    let len = segment.unwrap_or_else(|| ip_len(ctx));
    kept(ctx, &NEXT_HOPS, &Question4::of(ctx, ip), len)
}

/// `next_hop` for an IPv6 packet (whose hop limit must be above 1: forwarding decrements it).
#[inline(always)]
fn next_hop6(ctx: &TcContext) -> Option<&'static bpf_fib_lookup> {
    // Version, traffic class and flow label; payload length; next header; hop limit.
    let hdr = parse6::ipv6_head(ctx)?;
    if hdr[7] <= 1 {
        return None;
    }
    let len = segment_len(ctx, IP6_OFF + IP6_LEN, hdr[6])?.unwrap_or_else(|| ip_len(ctx));
    kept(ctx, &NEXT_HOPS6, &Question6::of(ctx, &hdr)?, len)
}

/// The FIB's plain answer to `question` for a packet of `len` bytes: from `map` when the same
/// question was answered there lately (the size checked against the route's MTU it named);
/// else asked in the question's slot, which keeps a plain answer (asked with a size, the
/// kernel names the route's MTU in it). None for anything but a plain answer.
#[inline(always)]
fn kept<Q: Question>(
    ctx: &TcContext,
    map: &'static PerCpuArray<Kept<Q>>,
    question: &Q,
    len: u16,
) -> Option<&'static bpf_fib_lookup> {
    let generation = nat::subnets_generation();
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: this CPU's slot, which nothing else on this CPU uses meanwhile (softirq, or
    // bottom halves off).
    let kept = unsafe { &mut *map.get_ptr_mut(question.slot())? };
    if generation != 0
        && kept.generation == generation
        && now < kept.expires_ns
        && kept.question.same(question)
    {
        return (len <= unsafe { kept.fib.__bindgen_anon_1.mtu_result }).then_some(&kept.fib);
    }
    kept.generation = 0;
    // SAFETY: a `bpf_fib_lookup` seen as one not yet written (plain data).
    let slot = unsafe { &mut *(&raw mut kept.fib).cast::<MaybeUninit<bpf_fib_lookup>>() };
    // SAFETY: a kernel struct of integers.
    let fib = unsafe { mem::zeroed(slot) };
    question.ask(fib);
    fib.__bindgen_anon_1.tot_len = len;
    if ask(ctx, fib) != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return None;
    }
    kept.generation = generation;
    kept.expires_ns = now + NEXT_HOP_TTL_NS;
    kept.question = *question;
    Some(&kept.fib)
}

/// The size of a packet that is not GSO, as forwarding sizes it: what the frame carries past
/// Ethernet, whatever its IP header says (an endpoint writes that, and may understate it).
#[inline(always)]
fn ip_len(ctx: &TcContext) -> u16 {
    (ctx.len() as usize - EthHdr::LEN).min(0xffff) as u16
}

/// Asks the FIB, in `slot`, for the IPv4 packet as forwarding would, with no MTU check; its
/// return code and answer, or None when the TTL would expire.
#[inline(always)]
fn lookup<'a>(
    ctx: &TcContext,
    ip: &Ipv4Hdr,
    slot: &'a mut MaybeUninit<bpf_fib_lookup>,
) -> Option<(i64, &'a mut bpf_fib_lookup)> {
    if ip.ttl <= 1 {
        return None;
    }
    // SAFETY: a kernel struct of integers.
    let fib = unsafe { mem::zeroed(slot) };
    Question4::of(ctx, ip).ask(fib);
    Some((ask(ctx, fib), fib))
}

/// `bpf_fib_lookup` of the question written in `fib`: its return code.
#[inline(always)]
fn ask(ctx: &TcContext, fib: &mut bpf_fib_lookup) -> i64 {
    unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            fib,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    }
}

/// The next hop's MAC as destination, the output interface's as source.
#[inline(always)]
fn set_macs(ctx: &mut TcContext, fib: &bpf_fib_lookup) -> Option<()> {
    let [d0, d1, d2, d3, d4, d5] = fib.dmac;
    let [s0, s1, s2, s3, s4, s5] = fib.smac;
    header::set_macs(ctx, &[d0, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5])
}
