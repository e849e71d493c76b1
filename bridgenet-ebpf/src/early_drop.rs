//! Early drop in XDP on the uplinks, before the stack spends anything on a packet that must
//! not get in: packets from outside for the loopback range (CVE-2020-8558), packets that claim
//! the source address of a managed subnet, and packets sent straight to an endpoint of a
//! masqueraded or internal network instead of through a published port (gateway modes `nat`
//! and `isolated`), unless the network takes that source unmasqueraded (`NON_MASQUERADE`).
//! The same for IPv6: nothing from outside to `::1`, an IPv4-mapped address, or a managed
//! IPv6 subnet, nor from one (`endpoint6::outside`).
//! uplink_ingress (TC) repeats the check: one program detached by someone else is not a hole.
//! Both need only the IPv4 header, so they hold whatever follows it; a packet for an endpoint
//! whose L4 header cannot be read is then dropped too (`unjudged`).
use aya_ebpf::programs::XdpContext;
use bridgenet_common::{Subnet, network_flags, outcome};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{endpoint6, nat, parse6};

/// The outcome for the packet in `ctx`.
#[inline(always)]
pub fn check_xdp(ctx: &XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + EthHdr::LEN + Ipv4Hdr::LEN > end {
        return outcome::PASSED;
    }
    let eth = start as *const EthHdr;
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == parse6::ETH_P_IPV6 {
        if start + parse6::IP6_OFF + parse6::IP6_LEN > end {
            return outcome::PASSED;
        }
        let addrs = (start + parse6::IP6_OFF + 8) as *const [[u8; 16]; 2];
        let [saddr, daddr] = unsafe { *addrs };
        return endpoint6::outside(&saddr, &daddr);
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return outcome::PASSED;
    }
    let ip = (start + EthHdr::LEN) as *const Ipv4Hdr;
    check(
        u32::from_ne_bytes(unsafe { (*ip).src_addr }),
        u32::from_ne_bytes(unsafe { (*ip).dst_addr }),
    )
}

/// The outcome for a packet from outside from `saddr` to `daddr` (network byte order). TC
/// ingress checks it too, so that either program alone keeps these packets out.
#[inline(always)]
pub fn check(saddr: u32, daddr: u32) -> u32 {
    if daddr.to_ne_bytes()[0] == 127 {
        return outcome::DROP_MARTIAN;
    }
    // An endpoint's address never comes from outside: such a packet would be translated to a
    // published port and answered inside, as if an endpoint had sent it.
    if nat::subnet_cached(saddr).get().is_some() {
        return outcome::DROP_SPOOFED;
    }
    match nat::subnet_cached(daddr).get() {
        // Unless the source is one the network talks to unmasqueraded (another node's pods).
        Some(subnet)
            if !reachable_directly(subnet) && !nat::non_masquerade(subnet.network, saddr) =>
        {
            outcome::DROP_ENDPOINT_DIRECT
        }
        _ => outcome::PASSED,
    }
}

/// Whether traffic routed from outside may reach the endpoints of `subnet` at their own
/// address: in gateway modes `nat-unprotected` and `routed` (which `uplink_ingress` limits to
/// published ports), and on networks that neither masquerade nor are internal (Docker's
/// `enable_ip_masquerade=false`, whose endpoints' replies still cannot leave untranslated).
#[inline(always)]
fn reachable_directly(subnet: &Subnet) -> bool {
    if subnet.flags & (network_flags::DIRECT_ANY | network_flags::ROUTED) != 0 {
        return true;
    }
    subnet.masquerade == 0 && subnet.flags & network_flags::INTERNAL == 0
}

/// For a packet from outside whose headers past IPv4 cannot be parsed (cut short, bad header
/// length): nothing for an endpoint, which could not be judged (filter ports, conntrack);
/// what is for the host is the stack's to drop.
#[inline(always)]
pub fn unjudged(daddr: u32) -> u32 {
    if nat::subnet_cached(daddr).get().is_some() {
        outcome::DROP_MALFORMED
    } else {
        outcome::PASSED
    }
}
