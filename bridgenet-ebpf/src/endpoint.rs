//! What an endpoint may send, checked on its veth before the bridge or any conntrack or NAT
//! state sees the packet: its own source address and MAC only (ARP included), nothing to
//! another network (isolation), nothing to its own network's endpoints with `--icc=false`
//! (broadcast, multicast and frames to a sibling's MAC included; ARP stays, as with Docker),
//! nothing out of an `--internal` network.
use aya_ebpf::{macros::map, maps::HashMap, programs::TcContext};
use bridgenet_common::{CHECKED_MARK, Endpoint, Subnet, network_flags, outcome};
use network_types::eth::{EthHdr, EtherType};

use crate::{
    endpoint6, mark, mem, nat,
    parse::{self, IP_SADDR_OFF},
    parse6,
};

/// Endpoints by the ifindex of their veth's host end.
#[map]
pub static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::with_max_entries(65_536, 0);

/// Set in `check`'s outcome for an IPv6 frame: the caller need not read the EtherType again.
pub const IPV6: u32 = 1 << 16;

/// ARP sender hardware and protocol addresses, after the Ethernet header.
const ARP_SHA_OFF: usize = EthHdr::LEN + 8;
const ARP_SPA_OFF: usize = EthHdr::LEN + 14;

/// The outcome (with `IPV6` set for an IPv6 frame), and for an IPv4 packet that passed to an
/// address outside the managed subnets, or an IPv6 packet that passed, its network's (IPv4)
/// gateway (else 0): the fast path out takes only what is sent to the gateway's MAC.
// A BPF subprogram of its own: inlined, its locals (the copies of subnets it asks for) would
// add to endpoint_ingress's frame, at the head of the hairpin path's chain of calls, which
// Linux 6.1 limits to 512 bytes.
#[inline(never)]
pub fn check(ctx: &TcContext) -> (u32, u32) {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Fail closed: a veth this program is on but that has no endpoint passes nothing.
    let Some(ep) = (unsafe { ENDPOINTS.get(ifindex) }) else {
        return (outcome::DROP_UNKNOWN, 0);
    };
    let Some(eth) = parse::eth(ctx) else {
        return (outcome::DROP_UNKNOWN, 0);
    };
    if !mem::mac_eq(eth.src_addr, ep.mac) {
        return (outcome::DROP_SPOOFED, 0);
    }
    let ether_type = eth.ether_type;
    if ether_type == parse6::ETH_P_IPV6 {
        let result = endpoint6::check(ctx, ifindex, ep, &eth.dst_addr);
        if result != outcome::PASSED {
            return (result | IPV6, 0);
        }
        // The gateway names the bridge's MAC for the fast path out, which asks the FIB
        // whether the destination is outside (an IPv6-only network's bridge has no such MAC).
        return (
            result | IPV6,
            nat::subnet_cached(ep.addr)
                .get()
                .map_or(0, |own| own.gateway),
        );
    }
    // An endpoint of an IPv6-only network (no IPv4 address) sends neither ARP nor IPv4.
    if ep.addr == 0 {
        return (outcome::DROP_PROTOCOL, 0);
    }
    if ether_type == EtherType::Arp as u16 {
        let (Ok(sha), Ok(spa)) = (
            ctx.load::<[u8; 6]>(ARP_SHA_OFF),
            ctx.load::<u32>(ARP_SPA_OFF),
        ) else {
            return (outcome::DROP_SPOOFED, 0);
        };
        let result = if mem::mac_eq(sha, ep.mac) && spa == ep.addr {
            outcome::PASSED
        } else {
            outcome::DROP_SPOOFED
        };
        return (result, 0);
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return (outcome::DROP_PROTOCOL, 0);
    }
    let Some((saddr, daddr)) = parse::ipv4_addrs(ctx) else {
        return (outcome::DROP_SPOOFED, 0);
    };
    if saddr != ep.addr {
        return (outcome::DROP_SPOOFED, 0);
    }
    let own = nat::subnet_cached(saddr);
    let own = own.get();
    if let Some(own) = own
        && own.flags & network_flags::NO_ICC != 0
        && reaches_siblings(&eth.dst_addr, daddr, own)
    {
        return (outcome::DROP_ICC, 0);
    }
    match nat::subnet_cached(daddr).get() {
        Some(subnet) if subnet.network != ep.network => (outcome::DROP_ISOLATION, 0),
        Some(subnet) if subnet.flags & network_flags::NO_ICC != 0 && daddr != subnet.gateway => {
            (outcome::DROP_ICC, 0)
        }
        Some(_) => (outcome::PASSED, 0),
        None => match own {
            Some(own) if own.flags & network_flags::INTERNAL != 0 => (outcome::DROP_INTERNAL, 0),
            _ => (outcome::PASSED, own.map_or(0, |s| s.gateway)),
        },
    }
}

/// Whether an IPv4 frame would reach other endpoints of the network `own` whatever its IPv4
/// destination (which the caller judges): sent to a group (L2 broadcast or multicast, IPv4
/// limited broadcast or multicast), or straight to a sibling's MAC (02:42 and an address of
/// the network, as bridgenet gives them), which the bridge delivers without routing.
#[inline(always)]
fn reaches_siblings(dst_mac: &[u8; 6], daddr: u32, own: &Subnet) -> bool {
    if dst_mac[0] & 1 != 0 || daddr == u32::MAX || daddr.to_ne_bytes()[0] & 0xf0 == 0xe0 {
        return true;
    }
    sibling_mac(dst_mac, own)
}

/// Whether `mac` is that of another endpoint of the network `own` (02:42 and its IPv4
/// address, as bridgenet gives them; the gateway's is the bridge's).
#[inline(always)]
pub fn sibling_mac(mac: &[u8; 6], own: &Subnet) -> bool {
    if mac[..2] != [0x02, 0x42] {
        return false;
    }
    let addr = u32::from_ne_bytes([mac[2], mac[3], mac[4], mac[5]]);
    addr != own.gateway
        && nat::subnet_cached(addr)
            .get()
            .is_some_and(|s| s.network == own.network)
}

/// Marks a packet as checked by `check`.
#[inline(always)]
pub fn mark_checked(ctx: &TcContext) {
    mark::set(ctx, CHECKED_MARK);
}

/// On a bridge's ingress: a packet from a managed subnet (either family) must carry the mark (which is
/// then cleared, so that it never reaches the host's own routing rules or sockets).
#[inline(always)]
pub fn require_checked(ctx: &TcContext) -> u32 {
    if mark::take(ctx, CHECKED_MARK) {
        return outcome::PASSED;
    }
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return outcome::PASSED;
    };
    let ether_type = eth.ether_type;
    if ether_type == parse6::ETH_P_IPV6 {
        return if endpoint6::managed_source(ctx) {
            outcome::DROP_UNCHECKED
        } else {
            outcome::PASSED
        };
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return outcome::PASSED;
    }
    match ctx.load::<u32>(IP_SADDR_OFF) {
        Ok(saddr) if nat::subnet_cached(saddr).get().is_some() => outcome::DROP_UNCHECKED,
        _ => outcome::PASSED,
    }
}
