//! Hairpin: an endpoint reaches a published port (its own, a sibling's, another network's)
//! through a host address, as Docker's DNAT plus self-MASQUERADE rules allow. On the sender's
//! veth the destination becomes the published endpoint and the source the gateway of that
//! endpoint's network, with a port that makes the reply tuple unique: the reply goes to that
//! gateway, which the target's own isolation check allows, and its flow translates it back.
//! The flow is keyed by the reply as the target's veth sees it; the sender's packets find it
//! through the keyed sequence of gateway ports (`conntrack::probe`).
//! Both directions then go straight to the destination's bridge (fastpath): their source is a
//! host address, which the stack drops as a martian on a forwarded packet. ICMP errors about a
//! hairpin flow are translated for the other side and go the same way.
use aya_ebpf::programs::TcContext;
use bridgenet_common::{
    CtFlow, CtKey, PublishKey, PublishTarget, action, direction, embryo_ring, flow_kind,
    network_flags, outcome, program_id,
};

use crate::{
    conntrack::{self, CONNTRACK},
    fastpath, icmp, monitor,
    nat::{self, PUBLISH},
    parse::{self, Inner, Packet, Parsed, TCP, UDP, parse},
};

/// Sends a translated hairpin packet straight to its destination's bridge.
// A BPF subprogram of its own: it is not on the stack while the packet is translated.
#[inline(never)]
pub fn redirect(ctx: &mut TcContext) -> Option<i32> {
    fastpath::redirect_hairpin(ctx).map(|(action, _)| action)
}

/// Translates a hairpin packet that the endpoint's checks judged `checked` (PASSED, or
/// DROP_ISOLATION for another network's address): DNAT for the forward direction, SNAT for
/// replies, or `checked` when it is no hairpin packet.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn translate(ctx: &mut TcContext, checked: u32) -> u32 {
    // Both directions go to a host address: the forward one to where the port is published,
    // the reply to the target's gateway. Asked of the destination alone before the packet is
    // parsed: most of what endpoints send goes elsewhere (and `subnet_cached` answers an outside
    // address from `SUBNET_BLOCKS`, without the trie).
    let Some((_, daddr)) = parse::ipv4_addrs(ctx) else {
        return checked;
    };
    let gateway = matches!(nat::subnet_cached(daddr).get(), Some(s) if s.gateway == daddr);
    if !gateway && !nat::is_host_addr(daddr) {
        return checked;
    }
    // Matched by reference: a copy of the packet would double this frame.
    let parsed = parse(ctx);
    let Parsed::Ipv4(packet) = &parsed else {
        return checked;
    };
    let key = packet.key;
    if packet.fragment {
        return checked;
    }
    if let Some(inner) = &packet.inner {
        return error(ctx, packet, inner, checked);
    }
    if key.proto != TCP && key.proto != UDP {
        return checked;
    }
    if let Some(result) = tracked_reply(ctx, packet) {
        return result;
    }
    // Another network's gateway, not published: isolated. A host address: the host's.
    let Some(target) = published(&packet.key, gateway) else {
        return checked;
    };
    let mut flow_key = key;
    if let Some(flow) = find_forward(&key, &target, &mut flow_key) {
        let touched = conntrack::touch(ctx, flow, direction::ORIGINAL as usize, packet);
        if touched != outcome::PASSED {
            return touched;
        }
        let to = flow_key;
        return rewrite(
            ctx,
            packet,
            to.daddr,
            to.dport,
            to.saddr,
            to.sport,
            outcome::DNAT,
        );
    }
    let result = open(ctx, packet, target, checked);
    if result == outcome::DNAT {
        // Counted here rather than in `open`: see `conntrack::count_opening`.
        conntrack::count_opening(ctx, packet);
        monitor::flow_opened(ctx, program_id::ENDPOINT_INGRESS, result, &packet.key);
    }
    result
}

/// An ICMP error about a hairpin flow (port unreachable, fragmentation needed), which the
/// endpoint the quoted packet reached sends back to the host address it came from: it becomes
/// the error the other side expects, about the packet that side sent, from the address that
/// side sent it to. `checked` when it quotes no hairpin flow.
// A BPF subprogram of its own: its keys must not sit in `translate`'s frame.
#[inline(never)]
fn error(ctx: &mut TcContext, packet: &Packet, inner: &Inner, checked: u32) -> u32 {
    let quoted = inner.key;
    // From where the quoted packet went, to where it came from: an endpoint cannot forge an
    // error about another endpoint's flow.
    if packet.key.saddr != quoted.daddr || packet.key.daddr != quoted.saddr {
        return checked;
    }
    // The quoted packet went the other way: its reverse is what the sender sends. From the
    // target, that is the flow's key, and the other side sent the flow's original tuple; from
    // the sender, its own tuple, and the other side sent the flow's key.
    let sent = quoted.reversed();
    if let Some(flow) = CONNTRACK.get_ptr(sent)
        && unsafe { (*flow).kind } == flow_kind::HAIRPIN
    {
        let original = unsafe { (*flow).inside_tuple(&sent) };
        return icmp::rewrite_quoting(ctx, packet, inner, &original, outcome::SNAT);
    }
    let Some(target) = published(&sent, true) else {
        return checked;
    };
    let mut key = sent;
    if find_forward(&sent, &target, &mut key).is_none() {
        return checked;
    }
    icmp::rewrite_quoting(ctx, packet, inner, &key, outcome::DNAT)
}

/// The port published where the packet goes: on its address, or on any host address (an
/// uplink's or a gateway's).
#[inline(always)]
fn published(key: &CtKey, gateway: bool) -> Option<PublishTarget> {
    if let Some(target) = nat::published(key) {
        return Some(target);
    }
    if !gateway {
        return None;
    }
    let any = PublishKey {
        addr: 0,
        port: key.dport,
        proto: key.proto,
        _pad: 0,
    };
    unsafe { PUBLISH.get(any) }.copied()
}

/// Translates a packet of a hairpin flow's target (its key is the packet's tuple); None when
/// the packet has no hairpin flow.
#[inline(always)]
fn tracked_reply(ctx: &mut TcContext, packet: &Packet) -> Option<u32> {
    let flow = CONNTRACK.get_ptr_mut(packet.key)?;
    // The uplinks' flows are theirs to apply.
    if unsafe { (*flow).kind } != flow_kind::HAIRPIN {
        return None;
    }
    let touched = conntrack::touch(ctx, flow, direction::REPLY as usize, packet);
    if touched != outcome::PASSED {
        return Some(touched);
    }
    // Back to the sender, from where it sent to.
    let f = unsafe { &*flow };
    let (from, from_port, to, to_port) =
        (f.hairpin_addr, f.hairpin_port, f.inside_addr, f.inside_port);
    Some(rewrite(
        ctx,
        packet,
        from,
        from_port,
        to,
        to_port,
        outcome::SNAT,
    ))
}

/// The hairpin flow whose sender sends `tuple` to `target`'s published port, its key written
/// to `key`: the target's reply tuple to its gateway, at each of the sender's candidate ports.
#[inline(always)]
fn find_forward(tuple: &CtKey, target: &PublishTarget, key: &mut CtKey) -> Option<*mut CtFlow> {
    let to = nat::subnet_of(target.addr)?;
    *key = CtKey {
        saddr: target.addr,
        daddr: to.gateway,
        sport: target.port,
        dport: 0,
        proto: tuple.proto,
        _pad: [0; 3],
    };
    conntrack::probe(tuple, flow_kind::HAIRPIN, key)
}

/// Opens a hairpin flow to `target`, keyed by the target's reply to its gateway at a port of
/// the sender's keyed sequence.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
fn open(ctx: &mut TcContext, packet: &Packet, target: PublishTarget, checked: u32) -> u32 {
    let tuple = packet.key;
    // Published to an address that is no endpoint of ours: nothing to hairpin to.
    let Some(to) = nat::subnet_of(target.addr) else {
        return checked;
    };
    let (network, gateway) = (to.network, to.gateway);
    // The endpoints of an --internal network reach no other network, published or not.
    if let Some(own) = nat::subnet_of(tuple.saddr)
        && own.flags & network_flags::INTERNAL != 0
        && own.network != network
    {
        return outcome::DROP_INTERNAL;
    }
    if !conntrack::opens_flow(packet) {
        return outcome::DROP_UNTRACKED;
    }
    let kind = flow_kind::HAIRPIN;
    let flow = match conntrack::open_flow(embryo_ring::INSIDE, kind, 0, tuple.saddr, tuple.sport) {
        Ok(flow) => flow,
        Err(drop) => return drop,
    };
    unsafe {
        (*flow).hairpin_addr = tuple.daddr;
        (*flow).hairpin_port = tuple.dport;
    }
    let mut key = CtKey {
        saddr: target.addr,
        daddr: gateway,
        sport: target.port,
        dport: 0,
        proto: tuple.proto,
        _pad: [0; 3],
    };
    let result = nat::open_at_port(&mut key, &tuple, flow);
    if result != outcome::PASSED {
        return result;
    }
    rewrite(
        ctx,
        packet,
        key.daddr,
        key.dport,
        key.saddr,
        key.sport,
        outcome::DNAT,
    )
}

/// Rewrites the packet's source to `from:from_port` and its destination to `to:to_port`:
/// `result`, or DROP_REWRITE_FAILED.
#[inline(always)]
fn rewrite(
    ctx: &mut TcContext,
    packet: &Packet,
    from: u32,
    from_port: u16,
    to: u32,
    to_port: u16,
    result: u32,
) -> u32 {
    // Each side's rewrite reads only that side's old values from `packet`.
    if nat::apply(ctx, packet, action::SNAT, from, from_port) != outcome::SNAT {
        return outcome::DROP_REWRITE_FAILED;
    }
    if nat::apply(ctx, packet, action::DNAT, to, to_port) != outcome::DNAT {
        return outcome::DROP_REWRITE_FAILED;
    }
    result
}
