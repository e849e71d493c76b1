//! bridgenet's datapath: thin program entries that call the stages in the modules below.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds on shared counters (conntrack::add): core has no atomic types for BPF.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod alert;
mod conntrack;
mod conntrack6;
mod counters;
mod early_drop;
mod endpoint;
mod endpoint6;
mod fastpath;
mod filter;
mod hairpin;
mod hairpin6;
mod header;
mod host_access;
mod icmp;
mod mark;
mod mem;
mod monitor;
mod nat;
mod nat6;
mod parse;
mod parse6;
mod stats;
mod tcp;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use bridgenet_common::{
    PublishTarget, Subnet, TRANSLATED_MARK, action, flow_kind, network_flags, outcome, program_id,
};
use conntrack::search;
use parse::{Header, Packet, Parsed, parse};

/// Counts every packet seen by TC on the interface it is attached to, in either direction.
#[classifier]
pub fn tc_count(ctx: TcContext) -> i32 {
    counters::count_interface(unsafe { (*ctx.skb.skb).ifindex }, ctx.len());
    TC_ACT_OK
}

/// Counts every packet that reaches XDP on the interface it is attached to.
#[xdp]
pub fn xdp_count(ctx: XdpContext) -> u32 {
    let len = ctx.data_end().saturating_sub(ctx.data()) as u32;
    counters::count_interface(ctx.ingress_ifindex() as u32, len);
    xdp_action::XDP_PASS
}

/// Endpoint veth (host end) ingress: what the endpoint sends, checked before anything else;
/// then hairpin to published ports through a host address, sent straight to the target, and
/// what goes out through an uplink, sent straight there. What passes through the bridge
/// carries CHECKED_MARK, which bridge_ingress requires of routed packets.
#[classifier]
pub fn endpoint_ingress(mut ctx: TcContext) -> i32 {
    let (checked, gateway) = endpoint::check(&ctx);
    let ipv6 = checked & endpoint::IPV6 != 0;
    let mut result = checked & !endpoint::IPV6;
    // Isolation judged the original destination: another network's gateway may still be a
    // host address with published ports.
    if (result == outcome::PASSED || result == outcome::DROP_ISOLATION) && ipv6 {
        // The stack forwards IPv6 hairpin packets as they are (see hairpin6).
        result = hairpin6::translate(&mut ctx, result);
    } else if result == outcome::PASSED || result == outcome::DROP_ISOLATION {
        result = hairpin::translate(&mut ctx, result);
        if (result == outcome::DNAT || result == outcome::SNAT)
            && let Some(action) = hairpin::redirect(&mut ctx)
        {
            stats::count(program_id::ENDPOINT_INGRESS, outcome::FAST_PATH);
            stats::count(program_id::ENDPOINT_INGRESS, result);
            return action;
        }
    }
    // Not for a host address (hairpin left it as it was): out through an uplink. A tracked
    // flow's packet is translated here, and passes the uplink's uplink_egress as it is.
    if result == outcome::PASSED
        && let Some((action, uplink_addr)) = fastpath::out(&mut ctx, gateway)
    {
        let tracked = if ipv6 {
            nat6::egress_tracked(&mut ctx)
        } else if uplink_addr != 0 {
            egress_tracked(&mut ctx, uplink_addr)
        } else {
            None
        };
        if let Some(tracked) = tracked {
            if outcome::is_drop(tracked) {
                return verdict(&ctx, program_id::ENDPOINT_INGRESS, tracked);
            }
            mark::set(&ctx, TRANSLATED_MARK);
            result = tracked;
        }
        stats::count(program_id::ENDPOINT_INGRESS, outcome::FAST_PATH);
        stats::count(program_id::ENDPOINT_INGRESS, result);
        return action;
    }
    if !outcome::is_drop(result) {
        endpoint::mark_checked(&ctx);
    }
    verdict(&ctx, program_id::ENDPOINT_INGRESS, result)
}

/// Bridge ingress (what endpoints send to be routed): fails closed when an endpoint's veth
/// lost its program, by dropping what endpoint_ingress did not mark.
#[classifier]
pub fn bridge_ingress(ctx: TcContext) -> i32 {
    verdict(
        &ctx,
        program_id::BRIDGE_INGRESS,
        endpoint::require_checked(&ctx),
    )
}

/// Uplink XDP: drops what must never get in from outside, and what the user filter drops,
/// before the stack sees it.
#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    let mut result = early_drop::check_xdp(&ctx);
    if result == outcome::PASSED {
        result = filter::check_xdp(&ctx);
    }
    stats::count(program_id::UPLINK_XDP, result);
    if outcome::is_drop(result) {
        monitor::drop(&ctx, program_id::UPLINK_XDP, result);
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Host access: connect(2) from the daemon's namespace to a published port on a host address
/// goes to the endpoint. Every other socket of the machine is left alone.
#[cgroup_sock_addr(connect4)]
pub fn host_connect4(ctx: SockAddrContext) -> i32 {
    host_access::connect4(&ctx)
}

/// Host access: UDP sendto(2), as connect.
#[cgroup_sock_addr(sendmsg4)]
pub fn host_sendmsg4(ctx: SockAddrContext) -> i32 {
    host_access::sendmsg4(&ctx)
}

/// Host access: UDP replies come from the address the application sent to.
#[cgroup_sock_addr(recvmsg4)]
pub fn host_recvmsg4(ctx: SockAddrContext) -> i32 {
    host_access::recvmsg4(&ctx)
}

/// Host access: getpeername(2) of a translated socket shows what it connected to.
#[cgroup_sock_addr(getpeername4)]
pub fn host_getpeername4(ctx: SockAddrContext) -> i32 {
    host_access::getpeername4(&ctx)
}

/// Host access on IPv6 sockets: to an IPv4-mapped address as connect4; to `::1` or a host
/// IPv6 address, with the ports published on IPv6.
#[cgroup_sock_addr(connect6)]
pub fn host_connect6(ctx: SockAddrContext) -> i32 {
    host_access::connect6(&ctx)
}

/// Host access on IPv6 sockets: UDP sendto(2), as host_connect6.
#[cgroup_sock_addr(sendmsg6)]
pub fn host_sendmsg6(ctx: SockAddrContext) -> i32 {
    host_access::connect6(&ctx)
}

/// Host access on IPv6 sockets: as recvmsg4, mapped.
#[cgroup_sock_addr(recvmsg6)]
pub fn host_recvmsg6(ctx: SockAddrContext) -> i32 {
    host_access::restore_peer6(&ctx)
}

/// Host access on IPv6 sockets: as getpeername4, mapped.
#[cgroup_sock_addr(getpeername6)]
pub fn host_getpeername6(ctx: SockAddrContext) -> i32 {
    host_access::restore_peer6(&ctx)
}

/// Uplink ingress: replies of masqueraded flows go back to their endpoint, new flows to a
/// published port are translated to the endpoint (DNAT), and ICMP errors about either follow;
/// for IPv6, replies of masqueraded flows, new flows to ports published on IPv6 and ICMPv6
/// errors about either (`nat6`).
#[classifier]
pub fn uplink_ingress(mut ctx: TcContext) -> i32 {
    // Matched by reference: a packet moved out of `Parsed` would be a second copy in the frame.
    let parsed = parse(&ctx);
    let (result, ipv4) = match &parsed {
        Parsed::Ipv6 => (uplink_ingress_ipv6(&mut ctx), false),
        Parsed::Other => (outcome::PASSED, false),
        Parsed::Malformed(header) => (uplink_ingress_malformed(*header), true),
        Parsed::Ipv4(packet) => (uplink_ingress_ipv4(&mut ctx, packet), true),
    };
    if result == outcome::DNAT
        && let Some((action, path)) = if ipv4 {
            fastpath::redirect(&mut ctx)
        } else {
            fastpath::redirect6(&mut ctx)
        }
    {
        stats::count(program_id::UPLINK_INGRESS, path);
        stats::count(program_id::UPLINK_INGRESS, result);
        return action;
    }
    verdict(&ctx, program_id::UPLINK_INGRESS, result)
}

/// IPv6 from an uplink: the checks before any state, the user filter before any translation
/// (as for IPv4), then NAT66 (a subprogram of its own).
#[inline(always)]
fn uplink_ingress_ipv6(ctx: &mut TcContext) -> u32 {
    let scratch = match nat6::ingress_parse(ctx) {
        Ok(scratch) => scratch,
        Err(result) => return result,
    };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let result = filter::check_tc6(&scratch.packet, ifindex);
    if result != outcome::PASSED {
        return result;
    }
    nat6::ingress(ctx, scratch)
}

/// IPv4 that cannot be parsed: the checks that need only the IPv4 header, then nothing for an
/// endpoint, whose packets cannot be judged; the rest is the host stack's, which drops it.
#[inline(always)]
fn uplink_ingress_malformed(header: Option<Header>) -> u32 {
    // Not even an IPv4 header: the stack drops it before routing.
    let Some(header) = header else {
        return outcome::PASSED;
    };
    let early = early_drop::check(header.saddr, header.daddr);
    if outcome::is_drop(early) {
        return early;
    }
    let result = filter::check_header(&header);
    if result != outcome::PASSED {
        return result;
    }
    early_drop::unjudged(header.daddr)
}

#[inline(always)]
fn uplink_ingress_ipv4(ctx: &mut TcContext, packet: &Packet) -> u32 {
    let early = early_drop::check(packet.key.saddr, packet.key.daddr);
    if outcome::is_drop(early) {
        return early;
    }
    // The user filter, before any translation: also here, so that it holds without XDP.
    let result = filter::check_tc(ctx, packet);
    if result != outcome::PASSED {
        return result;
    }
    if packet.fragment {
        // Fragments for a host address are reassembled by the host stack, which never forwards
        // them to an endpoint: they cannot reach one untranslated.
        return outcome::PASSED;
    }
    if let Some(inner) = &packet.inner {
        return icmp::translate(ctx, packet, inner, 0);
    }
    if let Some(result) = tracked_outside(ctx, packet) {
        return result;
    }
    match nat::published(&packet.key) {
        Some(target) => {
            let result = nat::publish(ctx, packet, target, arrived_at(ctx));
            opened(ctx, program_id::UPLINK_INGRESS, packet, result)
        }
        None => direct(ctx, packet),
    }
}

/// The address of the uplink the packet arrived on (0 when it has none).
#[inline(always)]
fn arrived_at(ctx: &TcContext) -> u32 {
    nat::uplink_addr(unsafe { (*ctx.skb.skb).ifindex }).unwrap_or(0)
}

/// A new flow routed from outside straight to an endpoint's address, on no published port:
/// in gateway mode `nat-unprotected` it is tracked as a flow published to itself (so that the
/// endpoint's replies leave as they are); in `routed` it is dropped (its published ports have
/// `PUBLISH` entries of their own). Anything else is the host stack's.
#[inline(always)]
fn direct(ctx: &mut TcContext, packet: &Packet) -> u32 {
    let key = packet.key;
    match nat::subnet_cached(key.daddr).get() {
        Some(subnet)
            if subnet.flags & network_flags::DIRECT_ANY != 0
                && (key.proto == parse::TCP || key.proto == parse::UDP) =>
        {
            let itself = PublishTarget {
                addr: key.daddr,
                port: key.dport,
                _pad: 0,
            };
            let result = nat::publish(ctx, packet, itself, arrived_at(ctx));
            opened(ctx, program_id::UPLINK_INGRESS, packet, result)
        }
        Some(subnet) if subnet.flags & network_flags::ROUTED != 0 => outcome::DROP_UNPUBLISHED,
        _ => outcome::PASSED,
    }
}

/// Uplink egress: packets of the managed subnets leave with the uplink's address
/// (masquerade), replies from published endpoints with the host's address and port, and
/// ICMP errors about either with their quoted packet translated back.
/// What endpoint_ingress's fast path out translated for this uplink passes as it is.
#[classifier]
pub fn uplink_egress(mut ctx: TcContext) -> i32 {
    if mark::take(&ctx, TRANSLATED_MARK) {
        return verdict(&ctx, program_id::UPLINK_EGRESS, outcome::FAST_PATH);
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // IPv6 first: an uplink may have no IPv4 address.
    if parse6::is_ipv6(&ctx) {
        let result = nat6::egress(&mut ctx, ifindex);
        return verdict(&ctx, program_id::UPLINK_EGRESS, result);
    }
    let Some(nat_addr) = nat::uplink_addr(ifindex) else {
        return verdict(&ctx, program_id::UPLINK_EGRESS, outcome::PASSED);
    };
    // Matched by reference, as in uplink_ingress.
    let parsed = parse(&ctx);
    let result = match &parsed {
        // IPv6 went to nat6::egress above.
        Parsed::Other | Parsed::Ipv6 => outcome::PASSED,
        // A managed source must never leave as it is, so what cannot be parsed does not leave.
        Parsed::Malformed(_) => outcome::DROP_MALFORMED,
        Parsed::Ipv4(packet) => uplink_egress_ipv4(&mut ctx, packet, nat_addr),
    };
    verdict(&ctx, program_id::UPLINK_EGRESS, result)
}

/// A managed source leaves only translated (SNAT: masquerade, or the reply of a published
/// flow). Whatever path decided, anything else from a managed source is dropped here: an ICMP
/// error quoting a hairpin, host or masquerade-reply entry would otherwise leave as it is.
#[inline(always)]
fn uplink_egress_ipv4(ctx: &mut TcContext, packet: &Packet, nat_addr: u32) -> u32 {
    let managed = nat::subnet_cached(packet.key.saddr);
    let managed = managed.get();
    // To a non-masquerade destination (another node's pods) an endpoint's own address leaves.
    // Asked only where the answer matters: a tracked flow's packet leaves as its entry says.
    let direct = || managed.is_some_and(|s| nat::non_masquerade(s.network, packet.key.daddr));
    let result = uplink_egress_translate(ctx, packet, nat_addr, managed, direct);
    leaves_translated(managed, result, direct)
}

/// `result`, unless it would let a managed source leave untranslated (to a masquerade
/// destination): then a drop.
#[inline(always)]
fn leaves_translated(managed: Option<&Subnet>, result: u32, direct: impl Fn() -> bool) -> u32 {
    if managed.is_some() && result != outcome::SNAT && !outcome::is_drop(result) && !direct() {
        return outcome::DROP_UNTRANSLATABLE;
    }
    result
}

/// The fast path out's part of uplink_egress, on an endpoint's veth: an IPv4 packet of a
/// tracked flow leaving through the uplink with address `nat_addr` is translated by its flow,
/// as uplink_egress would (its outcome, final). None for anything else (a flow's first packet,
/// a fragment, an ICMP error, a segment of no flow), left to uplink_egress as it is: most
/// packets out are of tracked flows, and the verifier walks only this much of uplink_egress's
/// code twice.
// A BPF subprogram of its own: in endpoint_ingress its frame (the parsed packet) would add to
// the hairpin path's chain of calls.
#[inline(never)]
fn egress_tracked(ctx: &mut TcContext, nat_addr: u32) -> Option<u32> {
    let parsed = parse(ctx);
    let Parsed::Ipv4(packet) = &parsed else {
        return None;
    };
    if packet.fragment || packet.inner.is_some() {
        return None;
    }
    let managed = nat::subnet_cached(packet.key.saddr);
    let managed = managed.get();
    let direct = || managed.is_some_and(|s| nat::non_masquerade(s.network, packet.key.daddr));
    let result = tracked_inside(ctx, packet, nat_addr, managed)?;
    Some(leaves_translated(managed, result, direct))
}

#[inline(always)]
fn uplink_egress_translate(
    ctx: &mut TcContext,
    packet: &Packet,
    nat_addr: u32,
    managed: Option<&Subnet>,
    direct: impl Fn() -> bool,
) -> u32 {
    if packet.fragment {
        // Fragments of endpoint flows are dropped (and counted), never sent untranslated.
        return if managed.is_some() && !direct() {
            outcome::DROP_FRAGMENT
        } else {
            outcome::PASSED
        };
    }
    if let Some(inner) = &packet.inner {
        // Untranslated (PASSED): the host's own error passes, a managed source's is dropped
        // above.
        return icmp::translate(ctx, packet, inner, nat_addr);
    }
    if let Some(result) = tracked_inside(ctx, packet, nat_addr, managed) {
        return result;
    }
    match managed {
        // Not translated, so nothing to track (replies of published flows were handled above).
        Some(_) if direct() => outcome::PASSED,
        // An endpoint's segment of a connection no longer tracked (its flow expired or was
        // revoked): it would leave from a new port, or worse from a published one.
        Some(_) if !conntrack::opens_flow(packet) => outcome::DROP_UNTRACKED,
        Some(subnet) if subnet.masquerade != 0 && nat_translatable(packet) => {
            let result = nat::masquerade(ctx, packet, nat_addr);
            opened(ctx, program_id::UPLINK_EGRESS, packet, result)
        }
        // Gateway mode routed: the endpoint's own address leaves, tracked so that replies
        // come back in (and nothing else does).
        Some(subnet) if subnet.flags & network_flags::ROUTED != 0 && nat_translatable(packet) => {
            let result = nat::route_out(ctx, packet);
            opened(ctx, program_id::UPLINK_EGRESS, packet, result)
        }
        // Without masquerade (or for what it cannot translate) a private source must not leave.
        Some(_) => outcome::DROP_UNTRANSLATABLE,
        None => {
            if packet.key.saddr == nat_addr {
                nat::track_host_flow(packet);
                conntrack::count_opening(ctx, packet);
            }
            outcome::PASSED
        }
    }
}

/// The tracked flow of a packet from outside applied to it (or the drop its tracking
/// decided); None when the packet belongs to no tracked flow.
#[inline(always)]
fn tracked_outside(ctx: &mut TcContext, packet: &Packet) -> Option<u32> {
    match conntrack::lookup_outside(ctx, packet) {
        Err(drop) => Some(drop),
        Ok(Some(flow)) => {
            let (kind, addr, port) =
                unsafe { ((*flow).kind, (*flow).inside_addr, (*flow).inside_port) };
            Some(match kind {
                // Hairpin flows are the endpoints' veths' to apply.
                flow_kind::HOST | flow_kind::HAIRPIN => outcome::PASSED,
                _ => nat::apply(ctx, packet, action::DNAT, addr, port),
            })
        }
        Ok(None) => None,
    }
}

/// The tracked flow of a packet leaving through the uplink with address `nat_addr` applied
/// to it (or the drop its tracking decided); None when it belongs to no tracked flow. Only the
/// kinds of flow its source may have are looked for: an endpoint's in its network's modes, the
/// host's (any other source) untranslated.
#[inline(always)]
fn tracked_inside(
    ctx: &mut TcContext,
    packet: &Packet,
    nat_addr: u32,
    managed: Option<&Subnet>,
) -> Option<u32> {
    let kinds = match managed {
        None => search::REVERSED,
        Some(subnet) => {
            let mut kinds = search::PUBLISHED;
            if subnet.masquerade != 0 {
                kinds |= search::MASQUERADE;
            }
            if subnet.flags & (network_flags::ROUTED | network_flags::DIRECT_ANY) != 0 {
                kinds |= search::REVERSED;
            }
            kinds
        }
    };
    let mut key = packet.key;
    let flow = conntrack::find_inside(&packet.key, nat_addr, kinds, &mut key)?;
    let dir = unsafe { (*flow).outside_direction() } ^ 1;
    let touched = conntrack::touch(ctx, flow, dir, packet);
    if touched != outcome::PASSED {
        return Some(touched);
    }
    Some(match unsafe { (*flow).kind } {
        flow_kind::HOST => outcome::PASSED,
        _ => nat::apply(ctx, packet, action::SNAT, key.daddr, key.dport),
    })
}

/// A stage of `program` opened a flow for the packet (unless it dropped it): the packet is
/// counted in it, and a monitor told.
#[inline(always)]
fn opened(ctx: &TcContext, program: u32, packet: &Packet, result: u32) -> u32 {
    if !outcome::is_drop(result) {
        conntrack::count_opening(ctx, packet);
        monitor::flow_opened(ctx, program, result, &packet.key);
    }
    result
}

/// Masquerade translates TCP, UDP and ICMP echo requests.
fn nat_translatable(packet: &Packet) -> bool {
    match packet.key.proto {
        parse::TCP | parse::UDP => true,
        parse::ICMP => packet.icmp_type == parse::ICMP_ECHO_REQUEST,
        _ => false,
    }
}

/// Counts the outcome and turns it into a TC verdict.
#[inline(always)]
fn verdict(ctx: &TcContext, program: u32, result: u32) -> i32 {
    stats::count(program, result);
    if outcome::is_drop(result) {
        alert::drop(ctx, result);
        monitor::drop(ctx, program, result);
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this, so it is never called.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Host builds (clippy, cargo check) only type-check the programs.
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
