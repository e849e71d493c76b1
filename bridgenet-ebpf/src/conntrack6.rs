//! Conntrack for IPv6 flows: `conntrack` with IPv6 tuples. The entries carry an IPv4 entry's
//! tracking (`Ct6Entry::track`), so the TCP window tracking and the states are the same code;
//! only the table, its count and its limit are IPv6's own.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, LruHashMap},
    programs::TcContext,
};
use bridgenet_common::{
    Ct6Entry, Ct6Key, CtEntry, EMBRYO6_RING, Embryo6Slot, ct_flags, ct_usage, embryo_ring, outcome,
};

use crate::{
    conntrack::{self, InsertError},
    parse6::Packet6,
    tcp::Sides,
};

/// Sized by the loader above `ct_usage::LIMIT6`, as `CONNTRACK` is above its limit.
#[map]
pub static CONNTRACK6: LruHashMap<Ct6Key, Ct6Entry> = LruHashMap::with_max_entries(1024, 0);

/// Both directions of an IPv6 flow, from one entry's side: the other is found by its key.
#[derive(Clone, Copy)]
struct Entries {
    entry: *mut CtEntry,
    peer: *const Ct6Key,
}

impl Sides for Entries {
    type Half = *mut CtEntry;
    #[inline(always)]
    fn mine(&self) -> *mut CtEntry {
        self.entry
    }
    #[inline(always)]
    // By reference: a 40-byte key by value is one more copy on the stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    fn other(&self) -> Option<*mut CtEntry> {
        CONNTRACK6
            .get_ptr_mut(unsafe { &*self.peer })
            .map(|entry| unsafe { &raw mut (*entry).track })
    }
}

/// Flows in the order they were admitted, one ring per side, as `EMBRYOS` for IPv4.
#[map]
static EMBRYOS6: Array<Embryo6Slot> = Array::with_max_entries(embryo_ring::COUNT * EMBRYO6_RING, 0);

/// The next turn of each side's ring in `EMBRYOS6`.
#[map]
static EMBRYO6_CURSORS: Array<u32> = Array::with_max_entries(embryo_ring::COUNT, 0);

/// Takes room for a new flow's two entries and its turn in its side's ring, as
/// `conntrack::admit`: when the table is full, the flows in the next slots of the rings make
/// room if they are still not assured, so that a flood of spoofed SYNs to a port published on
/// IPv6 cannot lock other IPv6 flows out. Ok(ring_seq) for `record`, or the drop.
#[inline(always)]
pub fn admit(side: u32) -> Result<u32, u32> {
    let seq = next_seq(side);
    if reserve() {
        return Ok(seq);
    }
    for i in 0..conntrack::EVICT_TRIES {
        let victim = match i {
            0 => seq,
            i if i < conntrack::OWN_SIDE_TRIES => next_seq(side),
            _ => next_seq(side ^ 1),
        };
        evict(victim);
        if reserve() {
            return Ok(seq);
        }
    }
    Err(outcome::DROP_CT_FULL)
}

#[inline(always)]
fn reserve() -> bool {
    conntrack::reserve_in(ct_usage::ENTRIES6, ct_usage::LIMIT6, 2)
}

/// The next turn of `side`'s ring (never 0), as `conntrack`'s.
#[inline(always)]
fn next_seq(side: u32) -> u32 {
    let side = side & 1;
    let Some(cursor) = EMBRYO6_CURSORS.get_ptr_mut(side) else {
        return 2 | side;
    };
    unsafe {
        let turn = ((core::ptr::read_volatile(cursor) + 1) % (1 << 30)).max(1);
        core::ptr::write_volatile(cursor, turn);
        turn << 1 | side
    }
}

/// `seq`'s slot. A ring holds as many turns as half the flows of a full table (as IPv4's),
/// at most `EMBRYO6_RING`: a longer one would send a new flow of a small table to look for
/// room in slots whose flows are long gone.
#[inline(always)]
fn slot(seq: u32) -> Option<*mut Embryo6Slot> {
    let limit = *conntrack::CT_USAGE.get(ct_usage::LIMIT6)?;
    let size = (limit / 4).clamp(16, u64::from(EMBRYO6_RING));
    // Never 0, but the verifier rejects the panic path of an unchecked `%`.
    if size == 0 {
        return None;
    }
    let index = u64::from(seq & 1) * u64::from(EMBRYO6_RING) + u64::from(seq >> 1) % size;
    EMBRYOS6.get_ptr_mut(index as u32)
}

/// Removes the flow recorded in `seq`'s slot if it is still not assured. The keys are read in
/// place (map values as helper arguments): a 40-byte copy of each would push the callers past
/// the 512-byte stack.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)] // a borrow, not a copy: see above
fn evict(seq: u32) {
    let Some(slot) = slot(seq) else {
        return;
    };
    let old_seq = unsafe { (*slot).seq };
    if old_seq == 0 {
        return;
    }
    unsafe { (*slot).seq = 0 };
    let old_key = unsafe { &(*slot).key };
    let Some(entry) = CONNTRACK6.get_ptr(old_key) else {
        return;
    };
    let (ring_seq, flags) = unsafe { ((*entry).track.ring_seq, (*entry).track.flags) };
    if ring_seq != old_seq || flags & ct_flags::ASSURED != 0 {
        return;
    }
    // The peer first, while the entry that names it is still live.
    let _ = CONNTRACK6.remove(unsafe { &(*entry).peer });
    if CONNTRACK6.remove(old_key).is_ok() {
        release();
        conntrack::count_evicted();
    }
}

/// Records an admitted flow (its original key) in its ring slot.
#[inline(always)]
pub fn record(key: &Ct6Key, seq: u32) {
    if let Some(slot) = slot(seq) {
        unsafe {
            (*slot).key = *key;
            (*slot).seq = seq;
        }
    }
}

/// Gives back the room `admit` took.
#[inline(always)]
pub fn release() {
    conntrack::release_in(ct_usage::ENTRIES6, 2);
}

/// The entry of this packet's direction, counted and with its TCP state updated; Err with the
/// outcome to drop the packet with (a RST outside the flow's window).
#[inline(always)]
// By reference: a 40-byte key by value is one more copy on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn lookup(ctx: &TcContext, packet: &Packet6) -> Result<Option<*mut Ct6Entry>, u32> {
    let Some(entry) = CONNTRACK6.get_ptr_mut(&packet.key) else {
        return Ok(None);
    };
    match touch(ctx, entry, packet) {
        outcome::PASSED => Ok(Some(entry)),
        drop => Err(drop),
    }
}

/// Tracks `packet` in `entry` (TCP window, state, counters): PASSED or the drop.
#[inline(always)]
pub fn touch(ctx: &TcContext, entry: *mut Ct6Entry, packet: &Packet6) -> u32 {
    let sides = Entries {
        entry: unsafe { &raw mut (*entry).track },
        peer: unsafe { &raw const (*entry).peer },
    };
    conntrack::track(ctx, sides, packet.key.proto, &packet.tcp)
}

/// Counts the packet that opened a flow, as `conntrack::count_opening`.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn count_opening(ctx: &TcContext, packet: &Packet6) {
    if let Some(entry) = CONNTRACK6.get_ptr_mut(&packet.key) {
        let _ = touch(ctx, entry, packet);
    }
}

/// Inserts `entry` under `key` unless the key is taken.
#[inline(always)]
pub fn insert_new(key: &Ct6Key, entry: &Ct6Entry) -> Result<(), InsertError> {
    match CONNTRACK6.insert(key, entry, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        Err(err) if err == -conntrack::EEXIST => Err(InsertError::Exists),
        Err(_) => Err(InsertError::Full),
    }
}

/// Inserts a new flow's original entry under `key`, its reply's being in under `reply`, with
/// its turn `seq` in the ring; on failure the reply's entry and the flow's room go too.
#[inline(always)]
pub fn insert_original(
    key: &Ct6Key,
    entry: &mut Ct6Entry,
    reply: &Ct6Key,
    seq: u32,
) -> Result<(), InsertError> {
    entry.track.ring_seq = seq;
    if let Err(err) = insert_new(key, entry) {
        remove(reply);
        release();
        return Err(err);
    }
    record(key, seq);
    Ok(())
}

pub fn remove(key: &Ct6Key) {
    let _ = CONNTRACK6.remove(key);
}

/// Makes `entry` a fresh one for one direction of a new flow, in place: one built on the stack
/// and copied would take 120 bytes of it.
#[inline(always)]
pub fn fill(
    entry: &mut Ct6Entry,
    peer: &Ct6Key,
    action: u8,
    direction: u8,
    nat_addr: &[u8; 16],
    nat_port: u16,
) {
    unsafe { core::ptr::write_bytes(entry as *mut Ct6Entry, 0, 1) };
    entry.peer = *peer;
    entry.nat_addr = *nat_addr;
    entry.track.last_seen_ns = crate::conntrack::now();
    entry.track.action = action;
    entry.track.direction = direction;
    entry.track.nat_port = nat_port;
}
