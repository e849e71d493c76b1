//! Hairpin: an endpoint reaches a published port (its own, a sibling's, another network's)
//! through a host address, as Docker's DNAT plus self-MASQUERADE rules allow. On the sender's
//! veth the destination becomes the published endpoint and the source the gateway of that
//! endpoint's network, with a port that makes the reply tuple unique: the reply goes to that
//! gateway, which the target's own isolation check allows, and its entry translates it back.
//! Both directions then go straight to the destination's bridge (fastpath): their source is a
//! host address, which the stack drops as a martian on a forwarded packet. ICMP errors about a
//! hairpin flow are translated for the other side and go the same way.
use aya_ebpf::programs::TcContext;
use bridgenet_common::{
    CtKey, PublishKey, PublishTarget, action, direction, embryo_ring, network_flags, outcome,
    program_id,
};

use crate::{
    conntrack::{self, CONNTRACK, InsertError},
    fastpath, icmp, monitor,
    nat::{self, PUBLISH},
    parse::{IP_DADDR_OFF, Inner, Packet, Parsed, TCP, UDP, parse},
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
    // parsed: most of what endpoints send goes elsewhere (and `subnet_of` answers an outside
    // address from `SUBNET_BLOCKS`, without the trie).
    let Ok(daddr) = ctx.load::<u32>(IP_DADDR_OFF) else {
        return checked;
    };
    let gateway = matches!(nat::subnet_of(daddr), Some(s) if s.gateway == daddr);
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
    if let Some(result) = tracked(ctx, packet) {
        return result;
    }
    match published(packet, gateway) {
        Some(target) => {
            let result = open(ctx, packet, target, checked);
            if result == outcome::DNAT {
                // Counted here rather than in `open`: see `conntrack::count_opening`.
                conntrack::count_opening(ctx, packet);
                monitor::flow_opened(ctx, program_id::ENDPOINT_INGRESS, result, &packet.key);
            }
            result
        }
        // Another network's gateway, not published: isolated. A host address: the host's.
        None => checked,
    }
}

/// An ICMP error about a hairpin flow (port unreachable, fragmentation needed), which the
/// endpoint the quoted packet reached sends back to the host address it came from: it becomes
/// the error the other side expects, about the packet that side sent, from the address that
/// side sent it to. `checked` when it quotes no hairpin flow.
#[inline(always)]
fn error(ctx: &mut TcContext, packet: &Packet, inner: &Inner, checked: u32) -> u32 {
    let quoted = inner.key;
    // From where the quoted packet went, to where it came from: an endpoint cannot forge an
    // error about another endpoint's flow.
    if packet.key.saddr != quoted.daddr || packet.key.daddr != quoted.saddr {
        return checked;
    }
    // The quoted packet went the other way: its reverse is the sender's own entry, whose peer
    // is the packet the other side sent.
    let Some(entry) = (unsafe { CONNTRACK.get(quoted.reversed()) }) else {
        return checked;
    };
    if entry.action != action::HAIRPIN {
        return checked;
    }
    let result = if entry.direction == direction::ORIGINAL {
        outcome::DNAT
    } else {
        outcome::SNAT
    };
    let peer = entry.peer;
    icmp::rewrite_quoting(ctx, packet, inner, &peer, result)
}

/// The port published where the packet goes: on its address, or on any host address (an
/// uplink's or a gateway's).
#[inline(always)]
fn published(packet: &Packet, gateway: bool) -> Option<PublishTarget> {
    if let Some(target) = nat::published(packet) {
        return Some(target);
    }
    if !gateway {
        return None;
    }
    let any = PublishKey {
        addr: 0,
        port: packet.key.dport,
        proto: packet.key.proto,
        _pad: 0,
    };
    unsafe { PUBLISH.get(any) }.copied()
}

/// Translates a packet of a tracked hairpin flow; None when the packet has no hairpin entry.
#[inline(always)]
fn tracked(ctx: &mut TcContext, packet: &Packet) -> Option<u32> {
    let entry = CONNTRACK.get_ptr_mut(packet.key)?;
    // Entries of the uplinks' flows are theirs to apply.
    if unsafe { (*entry).action } != action::HAIRPIN {
        return None;
    }
    let touched = conntrack::touch(ctx, entry, packet);
    if touched != outcome::PASSED {
        return Some(touched);
    }
    let (peer, dir) = unsafe { ((*entry).peer, (*entry).direction) };
    let result = if dir == direction::ORIGINAL {
        outcome::DNAT
    } else {
        outcome::SNAT
    };
    Some(rewrite(ctx, packet, &peer.reversed(), result))
}

/// Opens a hairpin flow to `target`: the reply entry first (it picks the source port), then
/// the forward one, each naming the other.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
fn open(ctx: &mut TcContext, packet: &Packet, target: PublishTarget, checked: u32) -> u32 {
    let key = packet.key;
    // Published to an address that is no endpoint of ours: nothing to hairpin to.
    let Some(to) = nat::subnet_of(target.addr) else {
        return checked;
    };
    let (network, gateway) = (to.network, to.gateway);
    // The endpoints of an --internal network reach no other network, published or not.
    if let Some(own) = nat::subnet_of(key.saddr)
        && own.flags & network_flags::INTERNAL != 0
        && own.network != network
    {
        return outcome::DROP_INTERNAL;
    }
    let mut reply = CtKey {
        saddr: target.addr,
        daddr: gateway,
        sport: target.port,
        dport: key.sport,
        proto: key.proto,
        _pad: [0; 3],
    };
    if !conntrack::opens_flow(packet) {
        return outcome::DROP_UNTRACKED;
    }
    let seq = match conntrack::admit(embryo_ring::INSIDE) {
        Ok(seq) => seq,
        Err(drop) => return drop,
    };
    // In a block of its own, so that its stack slot is the forward entry's afterwards.
    let result = {
        let reply_entry =
            conntrack::new_entry(key, action::HAIRPIN, direction::REPLY, key.daddr, key.dport);
        nat::reserve_reply(&mut reply, &reply_entry, u16::from_be(key.sport))
    };
    if result != outcome::PASSED {
        return result;
    }
    let mut entry = conntrack::new_entry(
        reply,
        action::HAIRPIN,
        direction::ORIGINAL,
        target.addr,
        target.port,
    );
    entry.ring_seq = seq;
    if let Err(err) = conntrack::insert_new(&key, &entry) {
        conntrack::remove(&reply);
        conntrack::release(2);
        if let InsertError::Full = err {
            return outcome::DROP_CT_FULL;
        }
        // The same flow, opened on another CPU meanwhile: translated as it is there.
        return match unsafe { CONNTRACK.get(key) } {
            Some(won) if won.action == action::HAIRPIN => {
                let peer = won.peer;
                rewrite(ctx, packet, &peer.reversed(), outcome::DNAT)
            }
            _ => outcome::DROP_PORTS_EXHAUSTED,
        };
    }
    conntrack::record(&key, seq);
    rewrite(ctx, packet, &reply.reversed(), outcome::DNAT)
}

/// Rewrites the packet's addresses and ports to `to`'s: `result`, or DROP_REWRITE_FAILED.
#[inline(always)]
fn rewrite(ctx: &mut TcContext, packet: &Packet, to: &CtKey, result: u32) -> u32 {
    // Each side's rewrite reads only that side's old values from `packet`.
    if nat::apply(ctx, packet, action::SNAT, to.saddr, to.sport) != outcome::SNAT {
        return outcome::DROP_REWRITE_FAILED;
    }
    if nat::apply(ctx, packet, action::DNAT, to.daddr, to.dport) != outcome::DNAT {
        return outcome::DROP_REWRITE_FAILED;
    }
    result
}
