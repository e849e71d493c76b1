//! Hairpin over IPv6: an endpoint reaches a port published on IPv6 (its own, a sibling's,
//! another network's) through a host address (the uplink's IPv6 address or a network's IPv6
//! gateway), as `hairpin` does for IPv4. On the sender's veth the destination becomes the
//! published endpoint and the source the IPv6 gateway of that endpoint's network, with a port
//! that makes the reply tuple unique; the reply's entry translates it back on the target's
//! veth; ICMPv6 errors about a hairpin flow are translated for the other side. Unlike IPv4,
//! the stack forwards both directions as they are: IPv6 forwarding drops no packet for having
//! a host address as its source.
use aya_ebpf::programs::TcContext;
use bridgenet_common::{
    Ct6Key, Publish6Target, action, direction, embryo_ring, network_flags, outcome, program_id,
};

use crate::{
    conntrack::{self, InsertError},
    conntrack6::{self, CONNTRACK6},
    endpoint6, monitor,
    nat6::{self, Scratch6},
    parse6::{self, DADDR_OFF, Packet6, TCP, UDP},
};

/// Translates an IPv6 hairpin packet that the endpoint's checks judged `checked` (PASSED, or
/// DROP_ISOLATION for another network's gateway): DNAT for the forward direction, SNAT for
/// replies, or `checked` when it is no hairpin packet.
// A BPF subprogram of its own: the IPv4 path's frame must not carry IPv6's addresses.
#[inline(never)]
pub fn translate(ctx: &mut TcContext, checked: u32) -> u32 {
    // Both directions go to a host address: the forward one to where the port is published,
    // the reply to the target's gateway. Anything else (most of what endpoints send) is left
    // after one lookup.
    let Ok(daddr) = ctx.load::<[u8; 16]>(DADDR_OFF) else {
        return checked;
    };
    if !nat6::is_host_addr6(&daddr) {
        return checked;
    }
    let Some(scratch) = nat6::scratch() else {
        return checked;
    };
    if parse6::parse6(ctx, &mut scratch.packet) != outcome::PASSED {
        return checked;
    }
    let packet = &scratch.packet;
    let proto = packet.key.proto;
    if packet.error {
        return error(ctx, scratch, checked);
    }
    if packet.fragment || (proto != TCP && proto != UDP) {
        return checked;
    }
    if let Some(result) = tracked(ctx, scratch) {
        return result;
    }
    let packet = &scratch.packet;
    let Some(target) = nat6::published_at(&packet.key.daddr, packet.key.dport, proto) else {
        // Not published: the host's own port, or another network's gateway (isolated).
        return checked;
    };
    let result = open(ctx, scratch, &target, checked);
    if result == outcome::DNAT {
        conntrack6::count_opening(ctx, &scratch.packet);
        monitor::flow_opened6(ctx, program_id::ENDPOINT_INGRESS, result, &scratch.packet);
    }
    result
}

/// An ICMPv6 error about a hairpin flow (port unreachable, packet too big), which the endpoint
/// the quoted packet reached sends back to the host address it came from: it becomes the error
/// the other side expects, as in `hairpin::error`. `checked` when it quotes no hairpin flow.
#[inline(always)]
fn error(ctx: &mut TcContext, scratch: &mut Scratch6, checked: u32) -> u32 {
    let Scratch6 { packet, reply, .. } = scratch;
    let quoted = &packet.inner.key;
    // From where the quoted packet went, to where it came from: an endpoint cannot forge an
    // error about another endpoint's flow.
    if packet.key.saddr != quoted.daddr || packet.key.daddr != quoted.saddr {
        return checked;
    }
    // The quoted packet went the other way: its reverse is the sender's own entry, whose peer
    // is the packet the other side sent.
    let Some(entry) = CONNTRACK6.get_ptr(quoted.reversed()) else {
        return checked;
    };
    if unsafe { (*entry).track.action } != action::HAIRPIN {
        return checked;
    }
    let result = if unsafe { (*entry).track.direction } == direction::ORIGINAL {
        outcome::DNAT
    } else {
        outcome::SNAT
    };
    *reply = unsafe { (*entry).peer };
    nat6::rewrite_quoting(ctx, packet, reply, result)
}

/// Translates a packet of a tracked hairpin flow; None when the packet has no hairpin entry.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
fn tracked(ctx: &mut TcContext, scratch: &mut Scratch6) -> Option<u32> {
    let Scratch6 { packet, reply, .. } = scratch;
    let entry = CONNTRACK6.get_ptr_mut(&packet.key)?;
    // Entries of the uplinks' flows are theirs to apply.
    if unsafe { (*entry).track.action } != action::HAIRPIN {
        return None;
    }
    let touched = conntrack6::touch(ctx, entry, packet);
    if touched != outcome::PASSED {
        return Some(touched);
    }
    let result = if unsafe { (*entry).track.direction } == direction::ORIGINAL {
        outcome::DNAT
    } else {
        outcome::SNAT
    };
    // Each direction becomes the other's key turned around.
    *reply = unsafe { (*entry).peer }.reversed();
    Some(rewrite(ctx, packet, reply, result))
}

/// Opens a hairpin flow to `target`: the reply entry first (it picks the source port on the
/// target's gateway), then the forward one, each naming the other.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit. Keys by reference: a 40-byte key by value is one more copy on it.
#[inline(never)]
#[allow(clippy::needless_borrows_for_generic_args)]
fn open(ctx: &mut TcContext, scratch: &mut Scratch6, target: &Publish6Target, checked: u32) -> u32 {
    // Published to an address that is no endpoint of ours: nothing to hairpin to.
    let Some(to) = endpoint6::subnet_of(&target.addr) else {
        return checked;
    };
    let (network, gateway) = (to.network, to.gateway);
    let Scratch6 {
        packet,
        entry,
        reply,
    } = scratch;
    let key = &packet.key;
    // From the endpoint's own IPv6 address only: a reply to a link-local one could not be
    // routed back from another network.
    let Some(own) = endpoint6::subnet_of(&key.saddr) else {
        return checked;
    };
    // The endpoints of an --internal network reach no other network, published or not.
    if own.flags & network_flags::INTERNAL != 0 && own.network != network {
        return outcome::DROP_INTERNAL;
    }
    if !conntrack::opens(key.proto, packet.tcp.flags) {
        return outcome::DROP_UNTRACKED;
    }
    let seq = match conntrack6::admit(embryo_ring::INSIDE) {
        Ok(seq) => seq,
        Err(drop) => return drop,
    };
    *reply = Ct6Key {
        saddr: target.addr,
        daddr: gateway,
        sport: target.port,
        dport: key.sport,
        proto: key.proto,
        _pad: [0; 3],
    };
    conntrack6::fill(
        entry,
        key,
        action::HAIRPIN,
        direction::REPLY,
        &key.daddr,
        key.dport,
    );
    let result = nat6::reserve_reply(reply, entry, u16::from_be(key.sport));
    if result != outcome::PASSED {
        return result;
    }
    conntrack6::fill(
        entry,
        reply,
        action::HAIRPIN,
        direction::ORIGINAL,
        &target.addr,
        target.port,
    );
    if let Err(err) = conntrack6::insert_original(key, entry, reply, seq) {
        if let InsertError::Full = err {
            return outcome::DROP_CT_FULL;
        }
        // The same flow, opened on another CPU meanwhile: translated as it is there.
        return match CONNTRACK6.get_ptr(&packet.key) {
            Some(won) if unsafe { (*won).track.action } == action::HAIRPIN => {
                *reply = unsafe { (*won).peer }.reversed();
                rewrite(ctx, packet, reply, outcome::DNAT)
            }
            _ => outcome::DROP_PORTS_EXHAUSTED,
        };
    }
    *reply = reply.reversed();
    rewrite(ctx, packet, reply, outcome::DNAT)
}

/// Rewrites the packet's addresses and ports to `to`'s: `result`, or DROP_REWRITE_FAILED.
#[inline(always)]
fn rewrite(ctx: &mut TcContext, packet: &Packet6, to: &Ct6Key, result: u32) -> u32 {
    // Each side's rewrite reads only that side's old values from `packet`.
    if nat6::apply(ctx, packet, action::SNAT, &to.saddr, to.sport) != outcome::SNAT {
        return outcome::DROP_REWRITE_FAILED;
    }
    if nat6::apply(ctx, packet, action::DNAT, &to.daddr, to.dport) != outcome::DNAT {
        return outcome::DROP_REWRITE_FAILED;
    }
    result
}
