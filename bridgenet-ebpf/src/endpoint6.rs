//! What an endpoint may send over IPv6, checked on its veth as `endpoint` checks IPv4, and
//! what of the managed IPv6 subnets may cross an uplink (`nat6` translates what leaves). The
//! checks keep isolation, and keep what only a router may send (Router Advertisements,
//! Redirects, DHCPv6 replies: CVE-2020-13401) and Neighbour Discovery for addresses or MACs
//! that are not the endpoint's (the IPv6 ARP spoofing) off the bridge.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use bridgenet_common::{Endpoint, NonMasquerade6Key, Subnet6, network_flags, outcome};

use crate::{
    endpoint::sibling_mac,
    mem, nat,
    parse6::{self, ICMP6, SADDR_OFF, UDP, transport},
};

/// Managed IPv6 subnets, by prefix.
#[map]
pub static SUBNETS6: LpmTrie<[u8; 16], Subnet6> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Remote IPv6 prefixes each network reaches with its endpoints' own addresses, and that
/// reach its endpoints directly (`NON_MASQUERADE` for IPv6).
#[map]
pub static NON_MASQUERADE6: LpmTrie<NonMasquerade6Key, u32> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Endpoints' IPv6 addresses by the ifindex of their veth's host end.
#[map]
pub static ENDPOINTS6: HashMap<u32, [u8; 16]> = HashMap::with_max_entries(65_536, 0);

const ROUTER_SOLICIT: u8 = 133;
const ROUTER_ADVERT: u8 = 134;
const NEIGH_SOLICIT: u8 = 135;
const NEIGH_ADVERT: u8 = 136;
const REDIRECT: u8 = 137;
const MLD_REPORT: u8 = 131;
const MLD_DONE: u8 = 132;
const MLD2_REPORT: u8 = 143;
/// Neighbour Discovery options that carry a link-layer address.
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
/// Options walked in an ND message; an address option past them is not looked at, and the
/// kernel takes the first one it finds.
const MAX_OPTS: usize = 3;
const DHCP6_SERVER_PORT: u16 = 547_u16.to_be();

/// The link-local address the kernel derives from `mac` (EUI-64, Linux's default).
#[inline(always)]
fn link_local(mac: &[u8; 6]) -> [u8; 16] {
    [
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]
}

/// The outcome of an IPv6 frame the endpoint `ep` sent from its veth `ifindex` (whose source
/// MAC `endpoint::check` found to be the endpoint's). A function of its own: inlined, its
/// addresses would join the IPv4 path's stack frame, past the verifier's 512 bytes.
#[inline(never)]
pub fn check(ctx: &TcContext, ifindex: u32, ep: &Endpoint, dst_mac: &[u8; 6]) -> u32 {
    // An endpoint of a network without IPv6 sends none.
    let Some(own_addr) = (unsafe { ENDPOINTS6.get(ifindex) }) else {
        return outcome::DROP_PROTOCOL;
    };
    let Some(head) = parse6::ipv6_head(ctx) else {
        return outcome::DROP_MALFORMED;
    };
    let (mut saddr, mut daddr) = ([0; 16], [0; 16]);
    if !parse6::addrs(ctx, &mut saddr, &mut daddr) {
        return outcome::DROP_MALFORMED;
    }
    let t = match transport(ctx, head[6]) {
        Ok(t) => t,
        Err(result) => return result,
    };
    let own_ll = link_local(&ep.mac);
    let unspecified = mem::eq16(&saddr, &[0; 16]);
    if !mem::eq16(&saddr, own_addr) && !mem::eq16(&saddr, &own_ll) && !unspecified {
        return outcome::DROP_SPOOFED;
    }
    let mut neighbour_discovery = false;
    if t.proto == ICMP6 {
        let Ok(icmp_type) = ctx.load::<u8>(t.off) else {
            return outcome::DROP_MALFORMED;
        };
        let result = match icmp_type {
            ROUTER_ADVERT | REDIRECT => outcome::DROP_ROUTER,
            ROUTER_SOLICIT => link_layer_options(ctx, t.off + 8, &ep.mac),
            NEIGH_SOLICIT | NEIGH_ADVERT => {
                let Ok(target) = ctx.load::<[u8; 16]>(t.off + 8) else {
                    return outcome::DROP_MALFORMED;
                };
                // An advertisement is for the sender's own address; so is a solicitation
                // from no address (duplicate address detection).
                let own_target = target == *own_addr || target == own_ll;
                if (icmp_type == NEIGH_ADVERT || unspecified) && !own_target {
                    outcome::DROP_SPOOFED
                } else {
                    link_layer_options(ctx, t.off + 24, &ep.mac)
                }
            }
            _ => outcome::PASSED,
        };
        if result != outcome::PASSED {
            return result;
        }
        neighbour_discovery = matches!(
            icmp_type,
            ROUTER_SOLICIT | NEIGH_SOLICIT | NEIGH_ADVERT | MLD_REPORT | MLD_DONE | MLD2_REPORT
        );
        if unspecified && !matches!(icmp_type, NEIGH_SOLICIT | MLD2_REPORT | MLD_REPORT) {
            return outcome::DROP_SPOOFED;
        }
    } else if unspecified {
        return outcome::DROP_SPOOFED;
    } else if t.proto == UDP
        && ctx
            .load::<u16>(t.off)
            .is_ok_and(|sport| sport == DHCP6_SERVER_PORT)
    {
        return outcome::DROP_ROUTER;
    }
    destination(ep, own_addr, &daddr, dst_mac, neighbour_discovery)
}

/// Isolation, icc and internal for what the endpoint sends to `daddr` (in a frame to
/// `dst_mac`); `neighbour_discovery` passes with `--icc=false` as ARP does for IPv4.
#[inline(always)]
fn destination(
    ep: &Endpoint,
    own_addr: &[u8; 16],
    daddr: &[u8; 16],
    dst_mac: &[u8; 6],
    neighbour_discovery: bool,
) -> u32 {
    let Some(own) = subnet_of(own_addr) else {
        return outcome::DROP_UNKNOWN;
    };
    let no_icc = own.flags & network_flags::NO_ICC != 0;
    // To a group or a sibling's MAC, whatever the address says.
    if no_icc
        && !neighbour_discovery
        && (dst_mac[0] & 1 != 0
            || nat::subnet_of(ep.addr).is_some_and(|s| sibling_mac(dst_mac, s))
            || (ep.addr == 0 && sibling_mac6(dst_mac, own_addr, own)))
    {
        return outcome::DROP_ICC;
    }
    if daddr[0] == 0xff || (daddr[0] == 0xfe && daddr[1] & 0xc0 == 0x80) {
        // Multicast and link-local stay on the bridge, which the checks above judged.
        return outcome::PASSED;
    }
    match subnet_of(daddr) {
        Some(subnet) if subnet.network != ep.network => outcome::DROP_ISOLATION,
        Some(subnet) if no_icc && *daddr != subnet.gateway => outcome::DROP_ICC,
        Some(_) => outcome::PASSED,
        None if own.flags & network_flags::INTERNAL != 0 => outcome::DROP_INTERNAL,
        // Out through an uplink, which masquerades it (`nat6`).
        None => outcome::PASSED,
    }
}

/// Whether `mac` is that of another endpoint of the IPv6-only network `own` of `own_addr`
/// (02:42 and the last four bytes of its IPv6 address, as bridgenet gives them; the gateway's
/// is the bridge's).
#[inline(always)]
fn sibling_mac6(mac: &[u8; 6], own_addr: &[u8; 16], own: &Subnet6) -> bool {
    if mac[..2] != [0x02, 0x42] {
        return false;
    }
    let mut addr = *own_addr;
    addr[12..].copy_from_slice(&mac[2..]);
    addr != own.gateway && subnet_of(&addr).is_some_and(|s| s.network == own.network)
}

/// The link-layer address options of a Neighbour Discovery message whose options start at
/// `off` must carry the endpoint's MAC.
#[inline(always)]
fn link_layer_options(ctx: &TcContext, mut off: usize, mac: &[u8; 6]) -> u32 {
    for _ in 0..MAX_OPTS {
        let Ok(opt) = ctx.load::<[u8; 8]>(off) else {
            return outcome::PASSED;
        };
        if opt[1] == 0 {
            // Invalid (RFC 4861 says to drop the message): it would loop.
            return outcome::DROP_MALFORMED;
        }
        if (opt[0] == OPT_SOURCE_LL || opt[0] == OPT_TARGET_LL) && opt[2..8] != mac[..] {
            return outcome::DROP_SPOOFED;
        }
        off += opt[1] as usize * 8;
    }
    outcome::PASSED
}

#[inline(always)]
pub fn subnet_of(addr: &[u8; 16]) -> Option<&'static Subnet6> {
    SUBNETS6.get(Key::new(128, *addr))
}

/// From outside, on an uplink, from `saddr` to `daddr`: a managed IPv6 address is never a
/// source there, nor a destination unless its network's IPv6 gateway mode lets routed traffic
/// in (`nat-unprotected`, `routed`: `nat6::ingress` judges the ports); neither are `::1` and
/// IPv4-mapped addresses, which the host would take for its own.
#[inline(always)]
pub fn outside(saddr: &[u8; 16], daddr: &[u8; 16]) -> u32 {
    if loopback_or_mapped(daddr) {
        return outcome::DROP_MARTIAN;
    }
    if subnet_of(saddr).is_some() {
        return outcome::DROP_SPOOFED;
    }
    match subnet_of(daddr) {
        // Unless the source is one the network talks to unmasqueraded (another node's pods).
        Some(subnet)
            if subnet.flags & (network_flags::DIRECT_ANY | network_flags::ROUTED) == 0
                && !non_masquerade(subnet.network, saddr) =>
        {
            outcome::DROP_ENDPOINT_DIRECT
        }
        _ => outcome::PASSED,
    }
}

/// Whether endpoints of `network` and `remote` talk with their own IPv6 addresses.
// A BPF subprogram of its own: its 24-byte key must not sit in the callers' frames.
#[inline(never)]
pub fn non_masquerade(network: u32, remote: &[u8; 16]) -> bool {
    let key = Key::new(
        32 + 128,
        NonMasquerade6Key {
            network,
            addr: *remote,
        },
    );
    NON_MASQUERADE6.get(key).is_some()
}

/// On a bridge's ingress: whether an IPv6 packet's source is a managed address.
#[inline(always)]
pub fn managed_source(ctx: &TcContext) -> bool {
    ctx.load::<[u8; 16]>(SADDR_OFF)
        .is_ok_and(|saddr| subnet_of(&saddr).is_some())
}

/// `::1`, and `::ffff:0:0/96`.
#[inline(always)]
fn loopback_or_mapped(addr: &[u8; 16]) -> bool {
    let head = addr[..10] == [0; 10];
    head && ((addr[10..15] == [0; 5] && addr[15] == 1) || addr[10..12] == [0xff, 0xff])
}
