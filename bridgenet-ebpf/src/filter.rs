//! The user filter (Docker's DOCKER-USER chain): ordered allow/drop rules on source prefix,
//! destination network and destination port, for packets that enter from an uplink towards an
//! endpoint (a published port, or an address of a managed subnet). The daemon compiles the
//! rules into the `FILTER` LPM trie, one logical trie per match class; the first matching rule
//! of the packet is the lowest-order answer of at most four lookups, whatever the rule count.
//!
//! IPv6 sources are matched in `FILTER6`, the same way (a rule without a source is in both).
//!
//! XDP drops early and counts only its drops; TC ingress checks again (so the filter never
//! depends on XDP being attached) and counts every rule hit, so each packet is counted once.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use bridgenet_common::{
    FilterKey, FilterKey6, FilterMatch, FilterState, Publish6Key, PublishKey, filter, outcome,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    early_drop, endpoint6,
    nat::{self, PUBLISH},
    nat6::{PUBLISH6, UPLINKS6},
    parse::{Header, IP_OFF, Packet, TCP, UDP},
    parse6::Packet6,
};

#[map]
static FILTER: LpmTrie<FilterKey, FilterMatch> =
    LpmTrie::with_max_entries(filter::MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static FILTER6: LpmTrie<FilterKey6, FilterMatch> =
    LpmTrie::with_max_entries(filter::MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
static FILTER_STATE: Array<FilterState> = Array::with_max_entries(1, 0);

/// Packets decided by each rule, by the rule's slot.
#[map]
static FILTER_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(filter::MAX_RULES, 0);

/// The ports of the packet are known (not a later fragment).
const PORTS: u32 = 1 << 8;
/// Count allowed packets too (TC); XDP counts only what it drops.
const COUNT_ALLOW: u32 = 1 << 9;

/// XDP: the outcome of the filter for the frame in `ctx`.
#[inline(always)]
pub fn check_xdp(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + EthHdr::LEN + Ipv4Hdr::LEN > end {
        return outcome::PASSED;
    }
    let ether_type = unsafe { (*(start as *const EthHdr)).ether_type };
    if ether_type == EtherType::Ipv6 as u16 {
        return check_xdp6(ctx);
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return outcome::PASSED;
    }
    let ip = unsafe { &*((start + EthHdr::LEN) as *const Ipv4Hdr) };
    let (saddr, daddr) = (
        u32::from_ne_bytes(ip.src_addr),
        u32::from_ne_bytes(ip.dst_addr),
    );
    let proto = ip.proto;
    let mut flags = u32::from(proto);
    let mut dport = 0;
    if ip.frag_offset() == 0 {
        flags |= PORTS;
        if proto == TCP || proto == UDP {
            let ihl = usize::from(ip.ihl());
            let l4 = start + EthHdr::LEN + ihl;
            if ihl < Ipv4Hdr::LEN || l4 + 4 > end {
                // Cut short: rules without a port still judge it by its source; then nothing
                // that cannot be judged reaches an endpoint.
                let result = evaluate(saddr, daddr, u32::from(proto), 0);
                if result != outcome::PASSED {
                    return result;
                }
                return early_drop::unjudged(daddr);
            }
            dport = unsafe { *((l4 + 2) as *const u16) };
        }
    }
    evaluate(saddr, daddr, flags, dport)
}

/// XDP, IPv6: TCP and UDP right after the fixed header; the rest (extension headers, other
/// protocols, frames cut short) TC judges, which walks extension headers.
#[inline(always)]
fn check_xdp6(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    let ip = start + EthHdr::LEN;
    if ip + IPV6_LEN + 4 > end {
        return outcome::PASSED;
    }
    let next = unsafe { *((ip + 6) as *const u8) };
    if next != TCP && next != UDP {
        return outcome::PASSED;
    }
    let saddr: [u8; 16] = unsafe { core::ptr::read_unaligned((ip + 8) as *const [u8; 16]) };
    let daddr: [u8; 16] = unsafe { core::ptr::read_unaligned((ip + 24) as *const [u8; 16]) };
    let dport = unsafe { core::ptr::read_unaligned((ip + IPV6_LEN + 2) as *const u16) };
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    evaluate6(&saddr, &daddr, u32::from(next) | PORTS, dport, ifindex)
}

const IPV6_LEN: usize = 40;

/// TC, IPv6: the outcome of the filter for a parsed packet that is not a fragment (fragments
/// are the host's, which reassembles them for itself and never forwards them).
#[inline(always)]
pub fn check_tc6(packet: &Packet6, ifindex: u32) -> u32 {
    let key = &packet.key;
    let flags = u32::from(key.proto) | COUNT_ALLOW | PORTS;
    evaluate6(&key.saddr, &key.daddr, flags, key.dport, ifindex)
}

/// TC: the outcome of the filter for a parsed packet.
#[inline(always)]
pub fn check_tc(ctx: &TcContext, packet: &Packet) -> u32 {
    let key = &packet.key;
    let mut flags = u32::from(key.proto) | COUNT_ALLOW;
    // A later fragment has no ports: only rules without a port can match it. The first
    // fragment carries them, and a datagram whose first fragment is dropped never arrives.
    let later_fragment = packet.fragment
        && ctx
            .load::<u16>(IP_OFF + 6)
            .is_ok_and(|f| u16::from_be(f) & 0x1fff != 0);
    if !later_fragment {
        flags |= PORTS;
    }
    evaluate(key.saddr, key.daddr, flags, key.dport)
}

/// TC, for a packet whose headers past IPv4 cannot be parsed: rules without a port only.
#[inline(always)]
pub fn check_header(header: &Header) -> u32 {
    evaluate(
        header.saddr,
        header.daddr,
        u32::from(header.proto) | COUNT_ALLOW,
        0,
    )
}

/// The first matching rule decides; no rule, or a packet not going to an endpoint: passed.
/// `flags`: IP protocol in the low byte, `PORTS`, `COUNT_ALLOW`.
// A BPF subprogram of its own: it keeps the callers' stacks small.
#[inline(never)]
fn evaluate(saddr: u32, daddr: u32, flags: u32, dport: u16) -> u32 {
    let state = match FILTER_STATE.get(0) {
        Some(state) if state.rules != 0 => *state,
        _ => return outcome::PASSED,
    };
    let proto = flags as u8;
    let ports = flags & PORTS != 0 && (proto == TCP || proto == UDP);
    // Towards an endpoint: a published port (its target's network), or a managed subnet.
    let mut target = None;
    if ports {
        let mut key = PublishKey {
            addr: daddr,
            port: dport,
            proto,
            _pad: 0,
        };
        target = unsafe { PUBLISH.get(key) }.map(|t| t.addr);
        if target.is_none() && nat::is_host_addr(daddr) {
            key.addr = 0;
            target = unsafe { PUBLISH.get(key) }.map(|t| t.addr);
        }
    }
    let network = match target {
        Some(addr) => nat::subnet_of(addr).map(|s| s.network),
        None => match nat::subnet_of(daddr) {
            Some(subnet) => Some(subnet.network),
            // Not towards an endpoint (the host itself, replies of masqueraded flows).
            None => return outcome::PASSED,
        },
    };

    let mut best: Option<FilterMatch> = None;
    for class in 0..filter::CLASS_COUNT {
        let by_network = class & filter::CLASS_NETWORK != 0;
        let by_port = class & filter::CLASS_PORT != 0;
        if (by_network && network.is_none()) || (by_port && !ports) {
            continue;
        }
        let data = FilterKey {
            generation: state.generation as u8,
            class,
            proto: if by_port { proto } else { 0 },
            _pad: 0,
            dport: if by_port { dport } else { 0 },
            _pad2: 0,
            network: if by_network { network.unwrap_or(0) } else { 0 },
            src: saddr,
        };
        if let Some(found) = FILTER.get(Key::new(filter::FIXED_BITS + 32, data))
            && best.is_none_or(|b| found.order < b.order)
        {
            best = Some(*found);
        }
    }
    decide(best, flags)
}

/// `evaluate` for IPv6: towards an endpoint is a port published on IPv6 (on the destination,
/// or on `::` when it is the uplink's IPv6 address, as `nat6` translates), or an address of a
/// managed IPv6 subnet.
#[inline(never)]
// By reference: a 20-byte key by value is one more copy on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
fn evaluate6(saddr: &[u8; 16], daddr: &[u8; 16], flags: u32, dport: u16, ifindex: u32) -> u32 {
    let state = match FILTER_STATE.get(0) {
        Some(state) if state.rules != 0 => *state,
        _ => return outcome::PASSED,
    };
    let proto = flags as u8;
    let ports = flags & PORTS != 0 && (proto == TCP || proto == UDP);
    // nat6::published's lookup, written again: shared through a function that returns the
    // target, it costs uplink_ingress a frame past 6.1's 512-byte limit.
    let mut target = None;
    if ports {
        let mut key = Publish6Key {
            addr: *daddr,
            port: dport,
            proto,
            _pad: 0,
        };
        target = unsafe { PUBLISH6.get(&key) };
        if target.is_none() && unsafe { UPLINKS6.get(ifindex) } == Some(daddr) {
            key.addr = [0; 16];
            target = unsafe { PUBLISH6.get(&key) };
        }
    }
    let network = match target {
        Some(target) => endpoint6::subnet_of(&target.addr).map(|s| s.network),
        None => match endpoint6::subnet_of(daddr) {
            Some(subnet) => Some(subnet.network),
            // Not towards an endpoint (the host itself, replies of masqueraded flows).
            None => return outcome::PASSED,
        },
    };
    // IPv4's loop with IPv6's key: one loop for both through a closure returning the match
    // leaves a register the verifier refuses to read (R5 !read_ok).
    let mut best: Option<FilterMatch> = None;
    for class in 0..filter::CLASS_COUNT {
        let by_network = class & filter::CLASS_NETWORK != 0;
        let by_port = class & filter::CLASS_PORT != 0;
        if (by_network && network.is_none()) || (by_port && !ports) {
            continue;
        }
        let data = FilterKey6 {
            generation: state.generation as u8,
            class,
            proto: if by_port { proto } else { 0 },
            _pad: 0,
            dport: if by_port { dport } else { 0 },
            _pad2: 0,
            network: if by_network { network.unwrap_or(0) } else { 0 },
            src: *saddr,
        };
        if let Some(found) = FILTER6.get(Key::new(filter::FIXED_BITS + 128, data))
            && best.is_none_or(|b| found.order < b.order)
        {
            best = Some(*found);
        }
    }
    decide(best, flags)
}

/// The deciding rule's action, counted in its slot (only drops unless `COUNT_ALLOW`).
#[inline(always)]
fn decide(best: Option<FilterMatch>, flags: u32) -> u32 {
    let Some(rule) = best else {
        return outcome::PASSED;
    };
    let drop = rule.action == filter::DROP;
    if (drop || flags & COUNT_ALLOW != 0)
        && let Some(hits) = FILTER_HITS.get_ptr_mut(u32::from(rule.slot))
    {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *hits += 1 };
    }
    if drop {
        outcome::DROP_FILTER
    } else {
        outcome::PASSED
    }
}
