//! NAT on the uplinks: masquerade of the managed subnets, published ports (DNAT), and the
//! reverse translation of their replies, driven by conntrack entries.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR},
    macros::map,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use bridgenet_common::{
    CtEntry, CtKey, NatConfig, NonMasqueradeKey, PublishKey, PublishTarget, Subnet, SubnetBlocks,
    Uplink, action, ct_flags, direction, embryo_ring, outcome,
    port_hash::{self, PortSecret},
};

use crate::{
    conntrack::{self, InsertError},
    header,
    parse::{ICMP, IP_DADDR_OFF, IP_SADDR_OFF, Packet, TCP, UDP, l4_csum_off},
};

#[map]
pub static PUBLISH: HashMap<PublishKey, PublishTarget> = HashMap::with_max_entries(131_072, 0);

/// Uplinks by ifindex, with the address masquerade uses on each.
#[map]
pub static UPLINKS: HashMap<u32, Uplink> = HashMap::with_max_entries(64, 0);

/// Managed subnets, by prefix.
#[map]
pub static SUBNETS: LpmTrie<u32, Subnet> = LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Remote prefixes each network reaches with its endpoints' own addresses (no masquerade),
/// and that reach its endpoints directly: a cluster's pod and node CIDRs.
#[map]
pub static NON_MASQUERADE: LpmTrie<NonMasqueradeKey, u32> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// The host's own addresses: a port published on any address answers on each of them.
#[map]
pub static HOST_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

#[map]
pub static NAT_CONFIG: Array<NatConfig> = Array::with_max_entries(1, 0);

/// The key of masquerade's port sequence, written by the loader.
#[map]
pub static PORT_SECRET: Array<PortSecret> = Array::with_max_entries(1, 0);

/// How many ports masquerade tries, from the flow's own start, before it gives up on it.
const PORT_TRIES: u32 = 32;

/// The uplink's masquerade address, if `ifindex` is an uplink.
#[inline(always)]
pub fn uplink_addr(ifindex: u32) -> Option<u32> {
    unsafe { UPLINKS.get(ifindex) }.map(|uplink| uplink.addr)
}

/// The /16 blocks the managed subnets overlap (`SubnetBlocks`), written by the loader.
#[map]
pub static SUBNET_BLOCKS: Array<SubnetBlocks> = Array::with_max_entries(1, 0);

/// The managed subnet `addr` belongs to. An address in none of their blocks is answered
/// without the trie: an array lookup costs a few instructions, the trie's about 40 ns.
#[inline(always)]
pub fn subnet_of(addr: u32) -> Option<&'static Subnet> {
    if let Some(blocks) = SUBNET_BLOCKS.get(0)
        && !blocks.may_hold(addr)
    {
        return None;
    }
    SUBNETS.get(Key::new(32, addr))
}

/// Whether endpoints of `network` and `remote` talk with their own addresses.
#[inline(always)]
pub fn non_masquerade(network: u32, remote: u32) -> bool {
    let key = Key::new(
        64,
        NonMasqueradeKey {
            network,
            addr: remote,
        },
    );
    NON_MASQUERADE.get(key).is_some()
}

#[inline(always)]
pub fn is_host_addr(addr: u32) -> bool {
    unsafe { HOST_ADDRS.get(addr) }.is_some()
}

/// Applies a conntrack entry's action to the packet: the outcome to count.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn apply(ctx: &mut TcContext, packet: &Packet, act: u8, addr: u32, port: u16) -> u32 {
    match act {
        action::SNAT | action::DNAT => match rewrite(ctx, packet, act, addr, port) {
            Ok(()) if act == action::SNAT => outcome::SNAT,
            Ok(()) => outcome::DNAT,
            Err(_) => outcome::DROP_REWRITE_FAILED,
        },
        _ => outcome::PASSED,
    }
}

/// Opens a masquerade flow for a packet leaving through the uplink with address `nat_addr`.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn masquerade(ctx: &mut TcContext, packet: &Packet, nat_addr: u32) -> u32 {
    let key = packet.key;
    let seq = match conntrack::admit(embryo_ring::INSIDE) {
        Ok(seq) => seq,
        Err(drop) => return drop,
    };
    let mut reply = key.reversed();
    reply.daddr = nat_addr;
    // One entry on the stack, the reply's first, then made the original's in place: two
    // would pass the 512 bytes Linux 6.1 allows `uplink_egress`'s call chain.
    let mut entry = conntrack::new_entry(key, action::DNAT, direction::REPLY, key.saddr, key.sport);
    // The ICMP echo identifier stands in sport too.
    let result = reserve_reply(&mut reply, &entry, u16::from_be(key.sport));
    if result != outcome::PASSED {
        return result;
    }
    let nat_port = reply.dport;
    entry.peer = reply;
    entry.action = action::SNAT;
    entry.direction = direction::ORIGINAL;
    entry.nat_addr = nat_addr;
    entry.nat_port = nat_port;
    entry.ring_seq = seq;
    if let Err(err) = conntrack::insert_new(&key, &entry) {
        conntrack::remove(&reply);
        conntrack::release(2);
        return lost_race(ctx, packet, err);
    }
    conntrack::record(&key, seq);
    apply(ctx, packet, action::SNAT, nat_addr, nat_port)
}

/// Opens a flow for a packet that leaves with its endpoint's own address (gateway mode
/// routed): both entries translate to what the packet already carries, so that the flow's
/// replies are told from traffic routed in unasked, and the packet leaves as it is.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn route_out(ctx: &mut TcContext, packet: &Packet) -> u32 {
    let key = packet.key;
    let seq = match conntrack::admit(embryo_ring::INSIDE) {
        Ok(seq) => seq,
        Err(drop) => return drop,
    };
    let reply = key.reversed();
    let reply_entry =
        conntrack::new_entry(key, action::DNAT, direction::REPLY, key.saddr, key.sport);
    if let Err(err) = conntrack::insert_new(&reply, &reply_entry) {
        conntrack::release(2);
        return lost_race(ctx, packet, err);
    }
    let mut entry = conntrack::new_entry(
        reply,
        action::SNAT,
        direction::ORIGINAL,
        key.saddr,
        key.sport,
    );
    entry.ring_seq = seq;
    if let Err(err) = conntrack::insert_new(&key, &entry) {
        conntrack::remove(&reply);
        conntrack::release(2);
        return lost_race(ctx, packet, err);
    }
    conntrack::record(&key, seq);
    apply(ctx, packet, action::SNAT, key.saddr, key.sport)
}

/// Inserts a new flow's reply entry under `reply` (its room taken by `conntrack::admit`), with
/// `reply.dport` (the port the flow's source gets) set so that the tuple is free (see
/// `choose_port`). PASSED, or the outcome to drop the packet with (the room is given back).
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn reserve_reply(reply: &mut CtKey, reply_entry: &CtEntry, original: u16) -> u32 {
    let peer = &reply_entry.peer;
    let result = choose_port(original, port_hash4(peer), |port| {
        reply.dport = port.to_be();
        // A flow's reply tuple cannot be its own original one (hairpin to itself).
        if reply.dport == peer.dport && reply.sport == peer.sport && reply.saddr == peer.saddr {
            return Err(InsertError::Exists);
        }
        conntrack::insert_new(reply, reply_entry)
    });
    if result != outcome::PASSED {
        conntrack::release(2);
    }
    result
}

/// `port_hash::of4` of a flow's inside tuple under `PORT_SECRET` (read in place: a copy
/// would take stack from the deepest chain of calls, the hairpin path's).
// Inlined: a call of its own adds a frame to that chain, which Linux 6.1 counts as 32 bytes
// even when it is empty, past the 512 allowed.
#[inline(always)]
pub fn port_hash4(key: &CtKey) -> u64 {
    PORT_SECRET
        .get(0)
        .map_or(0, |secret| port_hash::of4(secret, key))
}

/// The port masquerade gives a flow whose source port is `original` (host byte order): that
/// one when it is outside the host's port range, else one of the NAT range from where `hash`
/// (the flow's `port_hash`) says on, the first for which `insert` (given the port, host byte
/// order) finds the tuple free. PASSED, DROP_CT_FULL or DROP_PORTS_EXHAUSTED; the caller
/// gives back the room it took.
#[inline(always)]
pub fn choose_port(
    original: u16,
    hash: u64,
    mut insert: impl FnMut(u16) -> Result<(), InsertError>,
) -> u32 {
    // An unset (zeroed) configuration means the defaults.
    let config = match NAT_CONFIG.get(0) {
        Some(config) if config.port_max != 0 => *config,
        _ => NatConfig::default(),
    };
    let keep = original < config.host_port_min || original > config.host_port_max;
    let span = u32::from(config.port_max.saturating_sub(config.port_min)) + 1;
    let start = (hash % u64::from(span)) as u32;
    for i in 0..=PORT_TRIES {
        let port = if i == 0 {
            if !keep {
                continue;
            }
            original
        } else {
            config.port_min + ((start + i - 1) % span) as u16
        };
        match insert(port) {
            Ok(()) => return outcome::PASSED,
            Err(InsertError::Exists) => continue,
            Err(InsertError::Full) => return outcome::DROP_CT_FULL,
        }
    }
    outcome::DROP_PORTS_EXHAUSTED
}

/// The endpoint a packet arriving on an uplink is published to, if any.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn published(packet: &Packet) -> Option<PublishTarget> {
    let key = packet.key;
    // A port published on 127.0.0.1 is for the host only (host_access.rs): a packet that
    // claims a loopback destination on the wire never matches.
    if key.proto != TCP && key.proto != UDP || u32::from_be(key.daddr) >> 24 == 127 {
        return None;
    }
    let mut lookup = PublishKey {
        addr: key.daddr,
        port: key.dport,
        proto: key.proto,
        _pad: 0,
    };
    if let Some(target) = unsafe { PUBLISH.get(lookup) } {
        return Some(*target);
    }
    if !is_host_addr(key.daddr) {
        return None;
    }
    lookup.addr = 0;
    unsafe { PUBLISH.get(lookup) }.copied()
}

/// Opens a flow to a published port: the client keeps its address, the destination becomes
/// the endpoint, and replies from the endpoint get the host address and port back.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn publish(ctx: &mut TcContext, packet: &Packet, target: PublishTarget) -> u32 {
    if !conntrack::opens_flow(packet) {
        return outcome::DROP_UNTRACKED;
    }
    let key = packet.key;
    let reply = CtKey {
        saddr: target.addr,
        daddr: key.saddr,
        sport: target.port,
        dport: key.sport,
        proto: key.proto,
        _pad: [0; 3],
    };
    let seq = match conntrack::admit(embryo_ring::OUTSIDE) {
        Ok(seq) => seq,
        Err(drop) => return drop,
    };
    let mut reply_entry =
        conntrack::new_entry(key, action::SNAT, direction::REPLY, key.daddr, key.dport);
    reply_entry.flags = ct_flags::INBOUND;
    let mut inserted = conntrack::insert_new(&reply, &reply_entry);
    // The endpoint's side of the tuple may still be held by a closed connection of the same
    // client port that reached it through another mapping: that one is over.
    if let Err(InsertError::Exists) = inserted
        && conntrack::evict_closed(&reply)
    {
        inserted = conntrack::insert_new(&reply, &reply_entry);
    }
    if let Err(err) = inserted {
        conntrack::release(2);
        // The same flow opened on another CPU has both keys; anything else holding the reply
        // tuple is another flow, and this one cannot be told apart from it.
        return lost_race(ctx, packet, err);
    }
    let mut entry = conntrack::new_entry(
        reply,
        action::DNAT,
        direction::ORIGINAL,
        target.addr,
        target.port,
    );
    entry.flags = ct_flags::INBOUND;
    entry.ring_seq = seq;
    if let Err(err) = conntrack::insert_new(&key, &entry) {
        conntrack::remove(&reply);
        conntrack::release(2);
        return lost_race(ctx, packet, err);
    }
    conntrack::record(&key, seq);
    apply(ctx, packet, action::DNAT, target.addr, target.port)
}

/// A new flow's entry could not be inserted. When the first packets of a flow race on two
/// CPUs, the loser finds the key taken by the winner: it then translates as the winner does.
/// Otherwise the table refused the entry, or the tuple is another flow's.
#[inline(always)]
fn lost_race(ctx: &mut TcContext, packet: &Packet, err: InsertError) -> u32 {
    if let InsertError::Full = err {
        return outcome::DROP_CT_FULL;
    }
    // Not counted here: the caller counts the packet (`conntrack::count_opening`).
    match unsafe { conntrack::CONNTRACK.get(packet.key) } {
        Some(entry) => {
            let (act, addr, port) = (entry.action, entry.nat_addr, entry.nat_port);
            apply(ctx, packet, act, addr, port)
        }
        None => outcome::DROP_PORTS_EXHAUSTED,
    }
}

/// Tracks a flow of the host itself in both directions, so masquerade never picks its tuple.
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit.
#[inline(never)]
pub fn track_host_flow(packet: &Packet) {
    // Host flows take room as any other (and are refused the same way when there is none: the
    // host's packet still passes, untracked).
    let Ok(seq) = conntrack::admit(embryo_ring::INSIDE) else {
        return;
    };
    let key = packet.key;
    let reply = key.reversed();
    let reply_entry = conntrack::new_entry(key, action::HOST, direction::REPLY, 0, 0);
    if conntrack::insert_new(&reply, &reply_entry).is_err() {
        conntrack::release(2);
        return;
    }
    let mut entry = conntrack::new_entry(reply, action::HOST, direction::ORIGINAL, 0, 0);
    entry.ring_seq = seq;
    if conntrack::insert_new(&key, &entry).is_ok() {
        conntrack::record(&key, seq);
    } else {
        conntrack::remove(&reply);
        conntrack::release(2);
    }
}

/// Rewrites the source (SNAT) or destination (DNAT) address and port, fixing the IPv4 and L4
/// checksums incrementally: the IPv4 header's in the program (`header`), the L4 one through the
/// helpers, which keep CHECKSUM_PARTIAL packets right; BPF_F_MARK_MANGLED_0 keeps a UDP
/// checksum of 0 (none) at 0.
#[inline(always)]
fn rewrite(ctx: &mut TcContext, packet: &Packet, act: u8, addr: u32, port: u16) -> Result<(), i64> {
    let key = packet.key;
    let (addr_off, old_addr, old_port, port_off) = if act == action::SNAT {
        (IP_SADDR_OFF, key.saddr, key.sport, packet.l4_off)
    } else {
        (IP_DADDR_OFF, key.daddr, key.dport, packet.l4_off + 2)
    };
    // The ICMP echo identifier stands where ports stand, in both directions.
    let port_off = if key.proto == ICMP {
        packet.l4_off + 4
    } else {
        port_off
    };
    let mangled_0 = if key.proto == UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let csum_off = l4_csum_off(key.proto, packet.l4_off);

    if addr != old_addr {
        header::set_addr(ctx, addr_off, old_addr, addr).ok_or(-1)?;
        if let (TCP | UDP, Some(csum_off)) = (key.proto, csum_off) {
            let flags = u64::from(BPF_F_PSEUDO_HDR) | mangled_0 | 4;
            ctx.l4_csum_replace(csum_off, u64::from(old_addr), u64::from(addr), flags)?;
        }
    }
    if port != old_port
        && !packet.fragment
        && let Some(csum_off) = csum_off
    {
        header::set_port(ctx, port_off, port).ok_or(-1)?;
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_port),
            u64::from(port),
            mangled_0 | 2,
        )?;
    }
    Ok(())
}
