//! NAT66 on the uplinks: masquerade of the managed IPv6 subnets with the uplink's IPv6
//! address, the reverse translation of the replies, and ICMPv6 errors about either (Packet
//! Too Big above all: IPv6 routers never fragment, so path MTU discovery needs them), driven
//! by `CONNTRACK6` entries. Every checksum covers the addresses through IPv6's pseudo-header.
use aya_ebpf::{
    bindings::BPF_F_PSEUDO_HDR,
    helpers::bpf_csum_diff,
    macros::map,
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use bridgenet_common::{
    Ct6Entry, Ct6Key, Publish6Key, Publish6Target, action, ct_flags, direction, embryo_ring,
    network_flags, outcome, port_hash, program_id,
};

use crate::{
    conntrack::{self, InsertError},
    conntrack6, endpoint6, header, monitor, nat,
    parse6::{self, DADDR_OFF, ICMP6, Inner6, Packet6, SADDR_OFF, TCP, UDP},
};

/// Uplinks by ifindex, with the IPv6 address masquerade uses on each.
#[map]
pub static UPLINKS6: HashMap<u32, [u8; 16]> = HashMap::with_max_entries(64, 0);

/// The uplinks' IPv6 addresses, the host's own for host access to ports published on `::`.
#[map]
pub static HOST_ADDRS6: HashMap<[u8; 16], u32> = HashMap::with_max_entries(64, 0);

/// Ports published on IPv6: by protocol, host port and host address (`::`: the uplink's
/// IPv6 address), the endpoint's IPv6 address and port.
#[map]
pub static PUBLISH6: HashMap<Publish6Key, Publish6Target> = HashMap::with_max_entries(131_072, 0);

/// `::1`.
const LOOPBACK6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// An IPv6 address of this host: `::1`, an uplink's IPv6 address or a network's IPv6 gateway.
#[inline(always)]
pub fn is_host_addr6(addr: &[u8; 16]) -> bool {
    *addr == LOOPBACK6
        || unsafe { HOST_ADDRS6.get(addr) }.is_some()
        || endpoint6::subnet_of(addr).is_some_and(|subnet| subnet.gateway == *addr)
}

/// The endpoint behind `[addr]:port` when it is published there on IPv6: on that very
/// address first, then on `::` (for a host address only).
#[inline(never)]
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn published_at(addr: &[u8; 16], port: u16, proto: u8) -> Option<Publish6Target> {
    if proto != TCP && proto != UDP {
        return None;
    }
    let mut key = Publish6Key {
        addr: *addr,
        port,
        proto,
        _pad: 0,
    };
    if let Some(target) = unsafe { PUBLISH6.get(&key) } {
        return Some(*target);
    }
    if !is_host_addr6(addr) {
        return None;
    }
    key.addr = [0; 16];
    unsafe { PUBLISH6.get(&key) }.copied()
}

/// Room for one IPv6 packet's fields and a new flow's entry, off the stack: IPv4's path
/// leaves IPv6 little of the 512 bytes a call chain may use. TC programs do not nest on a CPU.
#[map]
static SCRATCH6: PerCpuArray<Scratch6> = PerCpuArray::with_max_entries(1, 0);

pub struct Scratch6 {
    pub packet: Packet6,
    pub entry: Ct6Entry,
    pub reply: Ct6Key,
}

/// This CPU's `SCRATCH6`.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch6> {
    SCRATCH6
        .get_ptr_mut(0)
        .map(|scratch| unsafe { &mut *scratch })
}

/// `uplink_egress` for IPv6 on the uplink `ifindex`: a managed source leaves masqueraded (a
/// tracked flow's packet, or one that opens a flow), or not at all; the host's own passes.
// A BPF subprogram of its own: the IPv4 path's frame must not carry IPv6's addresses.
#[inline(never)]
pub fn egress(ctx: &mut TcContext, ifindex: u32) -> u32 {
    let Ok(saddr) = ctx.load::<[u8; 16]>(SADDR_OFF) else {
        return outcome::PASSED;
    };
    let Some(subnet) = endpoint6::subnet_of(&saddr) else {
        return outcome::PASSED;
    };
    let (flags, network) = (subnet.flags, subnet.network);
    let Some(scratch) = SCRATCH6.get_ptr_mut(0) else {
        return outcome::DROP_UNTRANSLATABLE;
    };
    let parsed = parse6::parse6(ctx, unsafe { &mut (*scratch).packet });
    if parsed != outcome::PASSED {
        return parsed;
    }
    // To a non-masquerade destination (another node's pods) an endpoint's own address leaves.
    let direct = endpoint6::non_masquerade(network, unsafe { &(*scratch).packet.key.daddr });
    let result = egress_translate(ctx, unsafe { &mut *scratch }, ifindex, flags, direct);
    leaves_translated(direct, result)
}

/// Whatever path decided, a managed source leaves translated (or to a non-masquerade
/// destination, `direct`) or not at all: `result`, or a drop.
#[inline(always)]
fn leaves_translated(direct: bool, result: u32) -> u32 {
    if !direct && result != outcome::SNAT && !outcome::is_drop(result) {
        return outcome::DROP_UNTRANSLATABLE;
    }
    result
}

/// The fast path out's part of `egress`, on an endpoint's veth: an IPv6 packet of a tracked
/// flow (masquerade, a published flow's reply, gateway mode routed) is translated by its flow
/// as `egress` would (its outcome, final). None for anything else (a flow's first packet, a
/// fragment, an ICMPv6 error, a segment of no flow), left to the uplink's `egress` as it is,
/// as IPv4's `egress_tracked` leaves it: the verifier walks only this part of `egress` twice.
// A BPF subprogram of its own: in endpoint_ingress its frame would add to the hairpin path's
// chain of calls.
#[inline(never)]
pub fn egress_tracked(ctx: &mut TcContext) -> Option<u32> {
    let scratch = scratch()?;
    if parse6::parse6(ctx, &mut scratch.packet) != outcome::PASSED {
        return None;
    }
    let packet = &scratch.packet;
    if packet.fragment || packet.error {
        return None;
    }
    let network = endpoint6::subnet_of(&packet.key.saddr)?.network;
    let direct = endpoint6::non_masquerade(network, &packet.key.daddr);
    let result = tracked(ctx, packet)?;
    Some(leaves_translated(direct, result))
}

#[inline(always)]
fn egress_translate(
    ctx: &mut TcContext,
    scratch: &mut Scratch6,
    ifindex: u32,
    flags: u32,
    direct: bool,
) -> u32 {
    let packet = &scratch.packet;
    if packet.fragment {
        // Fragments of endpoint flows are dropped (and counted), never sent untranslated.
        return if direct {
            outcome::PASSED
        } else {
            outcome::DROP_FRAGMENT
        };
    }
    if packet.error {
        return translate_error(ctx, packet, &packet.inner);
    }
    if let Some(result) = tracked(ctx, packet) {
        return result;
    }
    if direct {
        // Not translated, so nothing to track (replies of published flows were handled above).
        return outcome::PASSED;
    }
    if !conntrack::opens(packet.key.proto, packet.tcp.flags) {
        // A segment of a connection no longer tracked: it would leave from a new port.
        return outcome::DROP_UNTRACKED;
    }
    let translatable = match packet.key.proto {
        TCP | UDP => true,
        ICMP6 => packet.icmp_type == parse6::ECHO_REQUEST,
        _ => false,
    };
    if !translatable || flags & network_flags::INTERNAL != 0 {
        return outcome::DROP_UNTRANSLATABLE;
    }
    let result = if flags & network_flags::ROUTED != 0 {
        // Gateway mode routed: the endpoint's own address leaves, tracked so that replies
        // come back in (and nothing else does).
        route_out(ctx, scratch)
    } else {
        match unsafe { UPLINKS6.get(ifindex) } {
            Some(nat_addr) => masquerade(ctx, scratch, nat_addr),
            // An uplink without an IPv6 address.
            None => return outcome::DROP_UNTRANSLATABLE,
        }
    };
    let packet = &scratch.packet;
    if !outcome::is_drop(result) {
        conntrack6::count_opening(ctx, packet);
        monitor::flow_opened6(ctx, program_id::UPLINK_EGRESS, result, packet);
    }
    result
}

/// `uplink_ingress` for IPv6, before the user filter: what must never come in from outside is
/// dropped; what cannot be parsed is the host stack's, which drops it, and so are fragments,
/// which it reassembles for itself and never forwards untranslated. Err: the verdict; Ok: the
/// packet, parsed, for the filter and `ingress`.
#[inline(always)]
pub fn ingress_parse(ctx: &TcContext) -> Result<&'static mut Scratch6, u32> {
    let Some(scratch) = SCRATCH6.get_ptr_mut(0) else {
        return Err(outcome::PASSED);
    };
    let scratch = unsafe { &mut *scratch };
    // Loaded into the scratch, not the stack: uplink_ingress's call chain is near its limit.
    let key = &mut scratch.packet.key;
    if !parse6::addrs(ctx, &mut key.saddr, &mut key.daddr) {
        return Err(outcome::PASSED);
    }
    let early = endpoint6::outside(&key.saddr, &key.daddr);
    if early != outcome::PASSED {
        return Err(early);
    }
    if parse6::parse6(ctx, &mut scratch.packet) != outcome::PASSED || scratch.packet.fragment {
        return Err(outcome::PASSED);
    }
    Ok(scratch)
}

/// `uplink_ingress` for IPv6, after the user filter: replies of masqueraded flows (and ICMPv6
/// errors about them) go back to their endpoint, new flows to a port published on IPv6 are
/// translated to the endpoint (`PUBLISH6`); the rest is the host's.
// A BPF subprogram of its own: the IPv4 path's frame must not carry IPv6's addresses.
#[inline(never)]
pub fn ingress(ctx: &mut TcContext, scratch: &mut Scratch6) -> u32 {
    let packet = &scratch.packet;
    if packet.error {
        return translate_error(ctx, packet, &packet.inner);
    }
    if let Some(result) = tracked(ctx, packet) {
        return result;
    }
    let target = match published(ctx, packet) {
        Some(target) => target,
        None => match direct(packet) {
            outcome::DNAT => Publish6Target {
                addr: packet.key.daddr,
                port: packet.key.dport,
                _pad: 0,
            },
            result => return result,
        },
    };
    let result = publish(ctx, scratch, &target);
    if !outcome::is_drop(result) {
        conntrack6::count_opening(ctx, &scratch.packet);
        monitor::flow_opened6(ctx, program_id::UPLINK_INGRESS, result, &scratch.packet);
    }
    result
}

/// The endpoint a packet arriving on an uplink is published to, if any: a port published on
/// the packet's destination (in IPv6 gateway mode routed, the endpoint's own address), or on
/// `::` when the destination is the uplink's IPv6 address.
#[inline(always)]
// By reference: a 20-byte key by value is one more copy on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
fn published(ctx: &TcContext, packet: &Packet6) -> Option<Publish6Target> {
    let key = &packet.key;
    if key.proto != TCP && key.proto != UDP {
        return None;
    }
    let mut lookup = Publish6Key {
        addr: key.daddr,
        port: key.dport,
        proto: key.proto,
        _pad: 0,
    };
    if let Some(target) = unsafe { PUBLISH6.get(&lookup) } {
        return Some(*target);
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if unsafe { UPLINKS6.get(ifindex) } != Some(&key.daddr) {
        return None;
    }
    lookup.addr = [0; 16];
    unsafe { PUBLISH6.get(&lookup) }.copied()
}

/// A new flow routed from outside straight to an endpoint's IPv6 address, on no published
/// port: DNAT in IPv6 gateway mode `nat-unprotected` (TCP and UDP: the caller tracks it as
/// published to itself, so that the endpoint's replies leave as they are), DROP_UNPUBLISHED in
/// `routed` (its published ports have `PUBLISH6` entries of their own, at the endpoint), else
/// PASSED: the host stack's (`endpoint6::outside` dropped what goes to the other modes').
// A BPF subprogram of its own: the LPM key it builds must not sit in `ingress`'s frame, which
// 6.1's stack limit leaves no room for.
#[inline(never)]
fn direct(packet: &Packet6) -> u32 {
    let key = &packet.key;
    let Some(subnet) = endpoint6::subnet_of(&key.daddr) else {
        return outcome::PASSED;
    };
    if subnet.flags & network_flags::DIRECT_ANY != 0 && (key.proto == TCP || key.proto == UDP) {
        outcome::DNAT
    } else if subnet.flags & network_flags::ROUTED != 0 {
        outcome::DROP_UNPUBLISHED
    } else {
        outcome::PASSED
    }
}

/// Opens a flow to a port published on IPv6: the client keeps its address, the destination
/// becomes the endpoint, and replies from the endpoint get the host address and port back.
// A BPF subprogram of its own: its locals would push the caller past the 512-byte stack.
#[inline(never)]
fn publish(ctx: &mut TcContext, scratch: &mut Scratch6, target: &Publish6Target) -> u32 {
    let Scratch6 {
        packet,
        entry,
        reply,
    } = scratch;
    if !conntrack::opens(packet.key.proto, packet.tcp.flags) {
        return outcome::DROP_UNTRACKED;
    }
    let seq = match conntrack6::admit(embryo_ring::OUTSIDE) {
        Ok(seq) => seq,
        Err(drop) => return drop,
    };
    let key = &packet.key;
    *reply = Ct6Key {
        saddr: target.addr,
        daddr: key.saddr,
        sport: target.port,
        dport: key.sport,
        proto: key.proto,
        _pad: [0; 3],
    };
    // The reply's entry first, then the original's.
    conntrack6::fill(
        entry,
        key,
        action::SNAT,
        direction::REPLY,
        &key.daddr,
        key.dport,
    );
    entry.track.flags = ct_flags::INBOUND;
    if let Err(err) = conntrack6::insert_new(reply, entry) {
        conntrack6::release();
        return lost_race(ctx, packet, err);
    }
    conntrack6::fill(
        entry,
        reply,
        action::DNAT,
        direction::ORIGINAL,
        &target.addr,
        target.port,
    );
    entry.track.flags = ct_flags::INBOUND;
    if let Err(err) = conntrack6::insert_original(key, entry, reply, seq) {
        return lost_race(ctx, packet, err);
    }
    apply(ctx, packet, action::DNAT, &target.addr, target.port)
}

/// A new flow's entry could not be inserted: the table is full, or the same flow opened on
/// another CPU (then translate as the winner does), or the tuple is another flow's.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
fn lost_race(ctx: &mut TcContext, packet: &Packet6, err: InsertError) -> u32 {
    if let InsertError::Full = err {
        return outcome::DROP_CT_FULL;
    }
    match conntrack6::CONNTRACK6.get_ptr(&packet.key) {
        Some(won) => {
            let (act, port) = unsafe { ((*won).track.action, (*won).track.nat_port) };
            apply(ctx, packet, act, unsafe { &(*won).nat_addr }, port)
        }
        None => outcome::DROP_PORTS_EXHAUSTED,
    }
}

/// The packet's tracked flow applied to it (or the drop its entry decided).
#[inline(always)]
fn tracked(ctx: &mut TcContext, packet: &Packet6) -> Option<u32> {
    match conntrack6::lookup(ctx, packet) {
        Err(drop) => Some(drop),
        Ok(Some(entry)) => {
            let (act, port) = unsafe { ((*entry).track.action, (*entry).track.nat_port) };
            Some(apply(ctx, packet, act, unsafe { &(*entry).nat_addr }, port))
        }
        Ok(None) => None,
    }
}

/// Opens a flow for a packet that leaves with its endpoint's own address (IPv6 gateway mode
/// routed), as `nat::route_out`: both entries translate to what the packet already carries, so
/// that the flow's replies are told from traffic routed in unasked.
// A BPF subprogram of its own: its locals would push the caller past the 512-byte stack.
#[inline(never)]
fn route_out(ctx: &mut TcContext, scratch: &mut Scratch6) -> u32 {
    let seq = match conntrack6::admit(embryo_ring::INSIDE) {
        Ok(seq) => seq,
        Err(drop) => return drop,
    };
    let Scratch6 {
        packet,
        entry,
        reply,
    } = scratch;
    let key = &packet.key;
    *reply = key.reversed();
    conntrack6::fill(
        entry,
        key,
        action::DNAT,
        direction::REPLY,
        &key.saddr,
        key.sport,
    );
    if let Err(err) = conntrack6::insert_new(reply, entry) {
        conntrack6::release();
        return lost_race(ctx, packet, err);
    }
    conntrack6::fill(
        entry,
        reply,
        action::SNAT,
        direction::ORIGINAL,
        &key.saddr,
        key.sport,
    );
    if let Err(err) = conntrack6::insert_original(key, entry, reply, seq) {
        return lost_race(ctx, packet, err);
    }
    apply(ctx, packet, action::SNAT, &key.saddr, key.sport)
}

/// Opens a masquerade flow for `scratch.packet` leaving with `nat_addr`, its keys and entries
/// built in `scratch`.
// A BPF subprogram of its own: its locals would push the caller past the 512-byte stack.
#[inline(never)]
fn masquerade(ctx: &mut TcContext, scratch: &mut Scratch6, nat_addr: &[u8; 16]) -> u32 {
    let seq = match conntrack6::admit(embryo_ring::INSIDE) {
        Ok(seq) => seq,
        Err(drop) => return drop,
    };
    let Scratch6 {
        packet,
        entry,
        reply,
    } = scratch;
    let key = &packet.key;
    *reply = key.reversed();
    reply.daddr = *nat_addr;
    // The reply's entry first, then the original's.
    conntrack6::fill(
        entry,
        key,
        action::DNAT,
        direction::REPLY,
        &key.saddr,
        key.sport,
    );
    // The ICMPv6 echo identifier stands in sport too.
    let result = reserve_reply(reply, entry, u16::from_be(key.sport));
    if result != outcome::PASSED {
        return result;
    }
    let nat_port = reply.dport;
    conntrack6::fill(
        entry,
        reply,
        action::SNAT,
        direction::ORIGINAL,
        nat_addr,
        nat_port,
    );
    if let Err(err) = conntrack6::insert_original(key, entry, reply, seq) {
        return lost_race(ctx, packet, err);
    }
    apply(ctx, packet, action::SNAT, nat_addr, nat_port)
}

/// Inserts a new flow's reply entry under `reply` (its room taken by `conntrack6::admit`),
/// with `reply.dport` (the port the flow's source gets) set so that the tuple is free, as
/// `nat::reserve_reply` for IPv4. PASSED, or the outcome to drop the packet with (the room is
/// given back).
#[inline(always)]
pub fn reserve_reply(reply: &mut Ct6Key, entry: &Ct6Entry, original: u16) -> u32 {
    let peer = &entry.peer;
    let result = nat::choose_port(original, port_hash6(peer), |port, _| {
        reply.dport = port.to_be();
        // A flow's reply tuple cannot be its own original one (hairpin to itself).
        if reply.dport == peer.dport && reply.sport == peer.sport && reply.saddr == peer.saddr {
            return Err(InsertError::Exists);
        }
        conntrack6::insert_new(reply, entry)
    });
    if result != outcome::PASSED {
        conntrack6::release();
    }
    result
}

/// `port_hash::of6` of a flow's inside tuple under `PORT_SECRET`, as `nat::port_hash4`.
#[inline(never)]
fn port_hash6(key: &Ct6Key) -> u64 {
    nat::PORT_SECRET
        .get(0)
        .map_or(0, |secret| port_hash::of6(secret, key))
}

/// Applies an entry's action: the outcome to count.
// A BPF subprogram of its own, shared by every path that translates.
#[inline(never)]
pub fn apply(ctx: &mut TcContext, packet: &Packet6, act: u8, addr: &[u8; 16], port: u16) -> u32 {
    match act {
        action::SNAT | action::DNAT => match rewrite(ctx, packet, act, addr, port) {
            Ok(()) if act == action::SNAT => outcome::SNAT,
            Ok(()) => outcome::DNAT,
            Err(_) => outcome::DROP_REWRITE_FAILED,
        },
        _ => outcome::PASSED,
    }
}

/// Rewrites the source (SNAT) or destination (DNAT) address and port, and the transport
/// checksum, which covers the addresses (TCP, UDP and ICMPv6 alike) through the pseudo-header.
#[inline(always)]
fn rewrite(
    ctx: &mut TcContext,
    packet: &Packet6,
    act: u8,
    addr: &[u8; 16],
    port: u16,
) -> Result<(), i64> {
    let key = &packet.key;
    let l4 = packet.l4_off;
    let (addr_off, old_addr, old_port, port_off) = if act == action::SNAT {
        (SADDR_OFF, &key.saddr, key.sport, l4)
    } else {
        (DADDR_OFF, &key.daddr, key.dport, l4 + 2)
    };
    let (csum_off, port_off) = match key.proto {
        TCP => (l4 + 16, port_off),
        UDP => (l4 + 6, port_off),
        // The echo identifier stands where ports stand, in both directions.
        _ => (l4 + 2, l4 + 4),
    };
    if addr != old_addr {
        let diff = addr_diff(old_addr, addr);
        header::set_addr6(ctx, addr_off, addr).ok_or(-1)?;
        ctx.l4_csum_replace(csum_off, 0, diff, u64::from(BPF_F_PSEUDO_HDR))?;
    }
    if port != old_port {
        // In place where `set_port` reaches (no extension header, as most packets).
        if header::set_port(ctx, port_off, port).is_none() {
            ctx.store(port_off, &port, 0)?;
        }
        ctx.l4_csum_replace(csum_off, u64::from(old_port), u64::from(port), 2)?;
    }
    Ok(())
}

/// The one's complement difference between two addresses, for a checksum update of size 0.
#[inline(always)]
fn addr_diff(old: &[u8; 16], new: &[u8; 16]) -> u64 {
    // The helper only reads both (its pointers are not const in the bindings).
    let diff = unsafe {
        bpf_csum_diff(
            old.as_ptr().cast_mut().cast(),
            16,
            new.as_ptr().cast_mut().cast(),
            16,
            0,
        )
    };
    diff as u32 as u64
}

/// Translates an ICMPv6 error whose quoted packet belongs to a tracked flow, as `icmp` does
/// for IPv4: the outer header gets the flow's translation, the quoted packet the opposite one.
/// PASSED when no tracked flow is quoted (the caller decides).
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
fn translate_error(ctx: &mut TcContext, packet: &Packet6, inner: &Inner6) -> u32 {
    // The quoted packet went the other way: its reverse is the key this hook tracks.
    let Some(entry) = conntrack6::CONNTRACK6.get_ptr(inner.key.reversed()) else {
        return outcome::PASSED;
    };
    let Ct6Entry {
        nat_addr, track, ..
    } = unsafe { *entry };
    let snat = match track.action {
        action::SNAT => true,
        action::DNAT => false,
        _ => return outcome::PASSED,
    };
    match rewrite_error(ctx, packet, inner, snat, &nat_addr, track.nat_port) {
        Ok(()) if snat => outcome::SNAT,
        Ok(()) => outcome::DNAT,
        Err(_) => outcome::DROP_REWRITE_FAILED,
    }
}

/// Rewrites an ICMPv6 error so that it quotes `quoted` (a packet as its sender sent it) and
/// goes from that packet's destination back to its source: `result`, or DROP_REWRITE_FAILED.
/// For hairpin, whose flows are translated on both sides.
// A BPF subprogram of its own, as translate_error.
#[inline(never)]
pub fn rewrite_quoting(ctx: &mut TcContext, packet: &Packet6, quoted: &Ct6Key, result: u32) -> u32 {
    let inner = &packet.inner;
    // Each call rewrites one side (outer source and quoted destination, then outer destination
    // and quoted source), reading only that side's old values.
    match rewrite_error(ctx, packet, inner, true, &quoted.daddr, quoted.dport)
        .and_then(|()| rewrite_error(ctx, packet, inner, false, &quoted.saddr, quoted.sport))
    {
        Ok(()) => result,
        Err(_) => outcome::DROP_REWRITE_FAILED,
    }
}

/// `snat`: the outer source and the quoted destination become `addr` (and the quoted
/// destination port `port`); else the outer destination and the quoted source. The ICMPv6
/// checksum covers the outer addresses (pseudo-header) and the whole quote, whose own
/// transport checksum covers the quoted addresses and ports.
#[inline(always)]
fn rewrite_error(
    ctx: &mut TcContext,
    packet: &Packet6,
    inner: &Inner6,
    snat: bool,
    addr: &[u8; 16],
    port: u16,
) -> Result<(), i64> {
    let icmp_csum = packet.l4_off + 2;
    let (outer_off, outer_old) = if snat {
        (SADDR_OFF, &packet.key.saddr)
    } else {
        (DADDR_OFF, &packet.key.daddr)
    };
    if outer_old != addr {
        let diff = addr_diff(outer_old, addr);
        ctx.store(outer_off, addr, 0)?;
        ctx.l4_csum_replace(icmp_csum, 0, diff, u64::from(BPF_F_PSEUDO_HDR))?;
    }
    let k = &inner.key;
    let (addr_off, old_addr, port_off, old_port) = if snat {
        (inner.ip_off + 24, &k.daddr, inner.l4_off + 2, k.dport)
    } else {
        (inner.ip_off + 8, &k.saddr, inner.l4_off, k.sport)
    };
    let (inner_csum, port_off) = match k.proto {
        TCP => (inner.l4_off + 16, port_off),
        UDP => (inner.l4_off + 6, port_off),
        _ => (inner.l4_off + 2, inner.l4_off + 4),
    };
    if old_addr != addr {
        let diff = addr_diff(old_addr, addr);
        ctx.store(addr_off, addr, 0)?;
        ctx.l4_csum_replace(icmp_csum, 0, diff, 0)?;
        // The quoted checksum covers the quoted addresses (all three protocols in IPv6).
        fix_quoted(ctx, inner, inner_csum, icmp_csum, 0, diff, 0)?;
    }
    if old_port != port {
        ctx.store(port_off, &port, 0)?;
        ctx.l4_csum_replace(icmp_csum, u64::from(old_port), u64::from(port), 2)?;
        fix_quoted(
            ctx,
            inner,
            inner_csum,
            icmp_csum,
            u64::from(old_port),
            u64::from(port),
            2,
        )?;
    }
    Ok(())
}

/// Updates the quoted transport checksum for a changed field (`size` 0: `to` is a
/// difference), and the ICMPv6 checksum for that update. One cut off by the quote is left.
#[inline(always)]
fn fix_quoted(
    ctx: &mut TcContext,
    inner: &Inner6,
    csum_off: usize,
    icmp_csum: usize,
    from: u64,
    to: u64,
    size: u64,
) -> Result<(), i64> {
    if !inner.has_l4_csum {
        return Ok(());
    }
    let old: u16 = ctx.load(csum_off)?;
    ctx.l3_csum_replace(csum_off, from, to, size)?;
    let new: u16 = ctx.load(csum_off)?;
    ctx.l4_csum_replace(icmp_csum, u64::from(old), u64::from(new), 2)
}
