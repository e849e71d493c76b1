//! Conntrack: both directions of every translated flow in one LRU hash, keyed by the tuple
//! each hook sees before translation. Userspace expires entries by state and age.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, LruHashMap},
    programs::TcContext,
};
use bridgenet_common::{
    CT_MAX_ENTRIES, CtEntry, CtKey, EmbryoSlot, ct_flags, ct_usage, embryo_ring, outcome, tcp_seen,
};

use crate::{
    parse::{Packet, TCP},
    tcp::{self, PeerKey},
};

pub const EEXIST: i32 = 17;

/// LRU, sized by the loader above the limit in `CT_USAGE`, so that the limit (not eviction)
/// decides: new flows past it are refused, tracked ones are never pushed out by a flood.
#[map]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(CT_MAX_ENTRIES, 0);

#[map]
pub static CT_USAGE: Array<u64> = Array::with_max_entries(ct_usage::SLOTS, 0);

/// Flows in the order they were admitted, one ring per side (`embryo_ring`), sized by the
/// loader (`ct_usage::RING_SIZE` each).
#[map]
static EMBRYOS: Array<EmbryoSlot> = Array::with_max_entries(1, 0);

/// Takes room for `entries` new entries; false when the table is at its limit.
#[inline(always)]
pub fn reserve(entries: u64) -> bool {
    reserve_in(ct_usage::ENTRIES, ct_usage::LIMIT, entries)
}

/// `reserve` in the count and limit of `CT_USAGE`'s slots `count` and `limit`: IPv4's
/// table or IPv6's.
#[inline(always)]
pub fn reserve_in(count: u32, limit: u32, entries: u64) -> bool {
    let (Some(count), Some(limit)) = (CT_USAGE.get_ptr_mut(count), CT_USAGE.get(limit)) else {
        return false;
    };
    // Add first, then check: concurrent new flows may each see the other's room taken and
    // both back out (a refusal near the limit), but the count never drifts.
    add(count, entries);
    if unsafe { core::ptr::read_volatile(count) } > *limit {
        add(count, entries.wrapping_neg());
        return false;
    }
    true
}

/// Gives back room taken by `reserve` for entries that were not inserted after all.
#[inline(always)]
pub fn release(entries: u64) {
    release_in(ct_usage::ENTRIES, entries);
}

/// `release` of room taken by `reserve_in` in the count of slot `count`.
#[inline(always)]
pub fn release_in(count: u32, entries: u64) {
    if let Some(count) = CT_USAGE.get_ptr_mut(count) {
        add(count, entries.wrapping_neg());
    }
}

/// An atomic add (BPF_XADD): the BPF target has no atomic types in core, but the instruction
/// exists on every kernel.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn add(counter: *mut u64, value: u64) {
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, value,
        )
    };
}

/// The entry of this packet's direction, with its counters and TCP state updated; Err with the
/// outcome to drop the packet with (a RST outside the flow's window).
#[inline(always)]
pub fn lookup(ctx: &TcContext, packet: &Packet) -> Result<Option<*mut CtEntry>, u32> {
    let Some(entry) = CONNTRACK.get_ptr_mut(packet.key) else {
        return Ok(None);
    };
    match touch(ctx, entry, packet) {
        outcome::PASSED => Ok(Some(entry)),
        drop => Err(drop),
    }
}

/// Counts a packet of `entry`'s direction and records what it says about the flow's state:
/// PASSED, or the outcome to drop it with.
#[inline(always)]
pub fn touch(ctx: &TcContext, entry: *mut CtEntry, packet: &Packet) -> u32 {
    track(
        ctx,
        entry,
        unsafe { &raw const (*entry).peer },
        packet.key.proto,
        &packet.tcp,
    )
}

/// `touch` for an entry of either family, whose other direction has the key at `peer`.
#[inline(always)]
pub fn track<K: PeerKey>(
    ctx: &TcContext,
    entry: *mut CtEntry,
    peer: *const K,
    proto: u8,
    seg: &tcp::Segment,
) -> u32 {
    unsafe {
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        (*entry).packets += 1;
        (*entry).bytes += u64::from(ctx.len());
    }
    if proto == TCP {
        return tcp::track(ctx, entry, peer, seg);
    }
    if unsafe { (*entry).flags } & ct_flags::ASSURED == 0 {
        assure_datagram(entry, unsafe { (*peer).peer_entry() });
    }
    outcome::PASSED
}

impl PeerKey for CtKey {
    #[inline(always)]
    fn peer_entry(&self) -> Option<*mut CtEntry> {
        CONNTRACK.get_ptr_mut(self)
    }
}

/// UDP and ICMP: assured once both sides spoke and one spoke again (one packet each way, as a
/// spoofed flood answered by a server makes, is not enough).
#[inline(always)]
fn assure_datagram(entry: *mut CtEntry, peer: Option<*mut CtEntry>) {
    let Some(peer) = peer else {
        return;
    };
    unsafe {
        let (mine, theirs) = ((*entry).packets, (*peer).packets);
        if mine > 0 && theirs > 0 && mine + theirs >= 3 {
            (*entry).flags |= ct_flags::ASSURED;
            (*peer).flags |= ct_flags::ASSURED;
        }
    }
}

/// Takes room for a new flow's two entries and its turn in its side's `EMBRYOS` ring (`side`:
/// `embryo_ring::OUTSIDE` or `INSIDE`): Ok(ring_seq) for `record`, or the outcome to drop the
/// packet with. When the table is full, the flows in the next slots of the ring make room if
/// they are still not assured (the oldest half-open or unanswered flows first, as Linux's
/// early_drop): a flood of such flows cannot lock out the others, which the table keeps until
/// they close. The same side's flows go first; the other side's only when the next ones of
/// this side are all assured, so that a flood never ends the other side's handshakes.
#[inline(always)]
pub fn admit(side: u32) -> Result<u32, u32> {
    let seq = next_ring_seq(side);
    if reserve(2) {
        return Ok(seq);
    }
    for i in 0..EVICT_TRIES {
        let victim = match i {
            0 => seq,
            i if i < OWN_SIDE_TRIES => next_ring_seq(side),
            _ => next_ring_seq(side ^ 1),
        };
        evict(victim);
        if reserve(2) {
            return Ok(seq);
        }
    }
    Err(outcome::DROP_CT_FULL)
}

/// Slots of the rings a new flow may look at for room, and how many of them on its own side.
pub const EVICT_TRIES: u32 = 8;
pub const OWN_SIDE_TRIES: u32 = 6;

/// The next turn of `side`'s ring (never 0). Not atomic: two CPUs may take the same slot, and
/// the flow whose record is overwritten is then left to GC instead of eviction.
#[inline(always)]
fn next_ring_seq(side: u32) -> u32 {
    let side = side & 1;
    let slot = if side == embryo_ring::INSIDE {
        ct_usage::RING_CURSOR_INSIDE
    } else {
        ct_usage::RING_CURSOR
    };
    let Some(cursor) = CT_USAGE.get_ptr_mut(slot) else {
        return 2 | side;
    };
    unsafe {
        let turn = ((core::ptr::read_volatile(cursor) + 1) % (1 << 31)).max(1);
        core::ptr::write_volatile(cursor, turn);
        (turn as u32) << 1 | side
    }
}

#[inline(always)]
fn ring_slot(seq: u32) -> Option<*mut EmbryoSlot> {
    let size = *CT_USAGE.get(ct_usage::RING_SIZE)?;
    if size == 0 {
        return None;
    }
    let index = u64::from(seq & 1) * size + u64::from(seq >> 1) % size;
    EMBRYOS.get_ptr_mut(index as u32)
}

/// Removes the flow recorded in `seq`'s slot if it is still not assured.
#[inline(always)]
fn evict(seq: u32) {
    let Some(slot) = ring_slot(seq) else {
        return;
    };
    let old = unsafe { *slot };
    unsafe { (*slot).seq = 0 };
    if old.seq == 0 {
        return;
    }
    let Some(entry) = (unsafe { CONNTRACK.get(old.key) }) else {
        return;
    };
    if entry.ring_seq != old.seq || entry.flags & ct_flags::ASSURED != 0 {
        return;
    }
    let peer = entry.peer;
    if CONNTRACK.remove(old.key).is_ok() {
        let _ = CONNTRACK.remove(peer);
        release(2);
        count_evicted();
    }
}

/// Counts a flow that was not assured evicted to make room (`ct_usage::EVICTED`).
#[inline(always)]
pub fn count_evicted() {
    if let Some(evicted) = CT_USAGE.get_ptr_mut(ct_usage::EVICTED) {
        add(evicted, 1);
    }
}

/// Records an admitted flow (its original key) in its ring slot.
#[inline(always)]
pub fn record(key: &CtKey, seq: u32) {
    if let Some(slot) = ring_slot(seq) {
        unsafe {
            *slot = EmbryoSlot {
                key: *key,
                seq,
                _pad: 0,
            }
        };
    }
}

/// When the tuple a new connection needs is held by another flow that is closed (a FIN from
/// both sides, or a reset), that flow is over: it is removed so that the new one can start, as
/// Linux's conntrack replaces a TIME_WAIT entry. True when it was removed.
#[inline(always)]
pub fn evict_closed(key: &CtKey) -> bool {
    if key.proto != TCP {
        return false;
    }
    let Some(holder) = (unsafe { CONNTRACK.get(key) }) else {
        return false;
    };
    let peer_key = holder.peer;
    let Some(peer) = (unsafe { CONNTRACK.get(peer_key) }) else {
        return false;
    };
    let both_fin = holder.tcp_seen & peer.tcp_seen & tcp_seen::FIN != 0;
    let reset = (holder.tcp_seen | peer.tcp_seen) & tcp_seen::RST != 0;
    if !both_fin && !reset || CONNTRACK.remove(key).is_err() {
        return false;
    }
    let _ = CONNTRACK.remove(peer_key);
    release(2);
    true
}

/// Whether a packet with no flow may open one: for TCP only a SYN (no ACK, RST or FIN). The rest
/// belongs to a connection that is not tracked (any more): it must not become a new flow, let
/// alone a masqueraded one from the port of a published service.
#[inline(always)]
pub fn opens_flow(packet: &Packet) -> bool {
    opens(packet.key.proto, packet.tcp.flags)
}

/// `opens_flow` for a packet of either family.
#[inline(always)]
pub fn opens(proto: u8, tcp_flags: u8) -> bool {
    proto != TCP || tcp_flags & (tcp::SYN | tcp::ACK | tcp::RST | tcp::FIN) == tcp::SYN
}

/// Host builds only type-check the programs.
#[cfg(not(target_arch = "bpf"))]
pub fn add(counter: *mut u64, value: u64) {
    unsafe { *counter = (*counter).wrapping_add(value) };
}

/// Why a new flow could not be tracked.
pub enum InsertError {
    /// The key is taken: another flow uses that tuple.
    Exists,
    /// The map refused the entry.
    Full,
}

/// Inserts `entry` under `key` unless the key is taken.
#[inline(always)]
pub fn insert_new(key: &CtKey, entry: &CtEntry) -> Result<(), InsertError> {
    match CONNTRACK.insert(key, entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        Err(err) if err == -EEXIST => Err(InsertError::Exists),
        Err(_) => Err(InsertError::Full),
    }
}

pub fn remove(key: &CtKey) {
    let _ = CONNTRACK.remove(key);
}

/// A fresh entry for one direction of a new flow.
#[inline(always)]
pub fn new_entry(peer: CtKey, action: u8, direction: u8, nat_addr: u32, nat_port: u16) -> CtEntry {
    CtEntry {
        peer,
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        nat_addr,
        nat_port,
        action,
        direction,
        ..CtEntry::default()
    }
}

/// Counts the packet that opened a flow (or found it opened on another CPU) in its entry, as
/// any later one. Called by the program entries once the flow is open, not by the stage that
/// opened it: the window tracking's frame on top of that stage's would pass the 512 bytes of
/// stack that Linux 6.1 allows a call chain.
#[inline(always)]
pub fn count_opening(ctx: &TcContext, packet: &Packet) {
    if let Some(entry) = CONNTRACK.get_ptr_mut(packet.key) {
        let _ = touch(ctx, entry, packet);
    }
}
