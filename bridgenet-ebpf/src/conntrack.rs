//! Conntrack: both directions of every translated flow in one LRU hash, keyed by the tuple
//! each hook sees before translation. Userspace expires entries by state and age.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, LruHashMap},
};
use bridgenet_common::{CT_MAX_ENTRIES, CtEntry, CtKey, ct_usage, direction, tcp_seen};

use crate::parse::{Packet, TCP};

const EEXIST: i32 = 17;

/// LRU, sized by the loader above the limit in `CT_USAGE`, so that the limit (not eviction)
/// decides: new flows past it are refused, tracked ones are never pushed out by a flood.
#[map]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(CT_MAX_ENTRIES, 0);

#[map]
static CT_USAGE: Array<u64> = Array::with_max_entries(ct_usage::SLOTS, 0);

/// Takes room for `entries` new entries; false when the table is at its limit.
///
/// The count is shared by all CPUs and updated without atomics (the BPF target has no atomic
/// read-modify-write in Rust's core): concurrent new flows can lose an update. Garbage
/// collection recounts the table on every pass, and the map has room past the limit for the
/// drift in between.
#[inline(always)]
pub fn reserve(entries: u64) -> bool {
    let (Some(count), Some(limit)) = (
        CT_USAGE.get_ptr_mut(ct_usage::ENTRIES),
        CT_USAGE.get(ct_usage::LIMIT),
    ) else {
        return false;
    };
    unsafe {
        let now = core::ptr::read_volatile(count);
        if now + entries > *limit {
            return false;
        }
        core::ptr::write_volatile(count, now + entries);
    }
    true
}

/// Gives back room taken by `reserve` for entries that were not inserted after all.
#[inline(always)]
pub fn release(entries: u64) {
    if let Some(count) = CT_USAGE.get_ptr_mut(ct_usage::ENTRIES) {
        unsafe {
            core::ptr::write_volatile(
                count,
                core::ptr::read_volatile(count).saturating_sub(entries),
            )
        };
    }
}

/// The entry of this packet's direction, with its counters and TCP flags updated.
#[inline(always)]
pub fn lookup(packet: &Packet, len: u32) -> Option<*mut CtEntry> {
    let entry = CONNTRACK.get_ptr_mut(packet.key)?;
    touch(entry, packet, len);
    Some(entry)
}

/// Counts a packet of `entry`'s direction and the TCP flags it carries.
#[inline(always)]
pub fn touch(entry: *mut CtEntry, packet: &Packet, len: u32) {
    unsafe {
        (*entry).last_seen_ns = bpf_ktime_get_ns();
        (*entry).packets += 1;
        (*entry).bytes += u64::from(len);
        if packet.key.proto == TCP {
            let seen = seen_flags(packet.tcp_flags);
            let closed = (*entry).tcp_seen & (tcp_seen::FIN | tcp_seen::RST) != 0;
            if closed && seen == tcp_seen::SYN && (*entry).direction == direction::ORIGINAL {
                // A new connection on the tuple of a closed one (TIME_WAIT reuse): it starts
                // afresh, or its state would say CLOSE and GC would remove it under it.
                (*entry).tcp_seen = seen;
                if let Some(peer) = CONNTRACK.get_ptr_mut((*entry).peer) {
                    (*peer).tcp_seen = 0;
                    (*peer).packets = 0;
                }
            } else {
                (*entry).tcp_seen |= seen;
            }
        }
    }
}

/// TCP header flags mapped to the `tcp_seen` bits.
#[inline(always)]
pub fn seen_flags(tcp_flags: u8) -> u8 {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    let mut seen = 0;
    if tcp_flags & SYN != 0 {
        seen |= tcp_seen::SYN;
    }
    if tcp_flags & ACK != 0 {
        seen |= tcp_seen::ACK;
    }
    if tcp_flags & FIN != 0 {
        seen |= tcp_seen::FIN;
    }
    if tcp_flags & RST != 0 {
        seen |= tcp_seen::RST;
    }
    seen
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

/// A fresh entry for one direction of a new flow; `first` is the packet that opened it, counted
/// in the entry of its own direction.
#[inline(always)]
pub fn new_entry(
    peer: CtKey,
    action: u8,
    direction: u8,
    nat_addr: u32,
    nat_port: u16,
    first: Option<(&Packet, u32)>,
) -> CtEntry {
    let mut entry = CtEntry {
        peer,
        last_seen_ns: unsafe { bpf_ktime_get_ns() },
        nat_addr,
        nat_port,
        action,
        direction,
        ..CtEntry::default()
    };
    if let Some((packet, len)) = first {
        entry.packets = 1;
        entry.bytes = u64::from(len);
        if packet.key.proto == TCP {
            entry.tcp_seen = seen_flags(packet.tcp_flags);
        }
    }
    entry
}
