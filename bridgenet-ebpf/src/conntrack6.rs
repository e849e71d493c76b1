//! Conntrack for IPv6 flows: `conntrack` with IPv6 tuples. The entries carry an IPv4 entry's
//! tracking (`Ct6Entry::track`), so the TCP window tracking and the states are the same code;
//! only the table, its count and its limit are IPv6's own.
use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, macros::map, maps::LruHashMap,
    programs::TcContext,
};
use bridgenet_common::{Ct6Entry, Ct6Key, CtEntry, ct_usage, outcome};

use crate::{
    conntrack::{self, InsertError},
    parse6::Packet6,
    tcp::{self, PeerKey},
};

/// Sized by the loader above `ct_usage::LIMIT6`, as `CONNTRACK` is above its limit.
#[map]
pub static CONNTRACK6: LruHashMap<Ct6Key, Ct6Entry> = LruHashMap::with_max_entries(1024, 0);

impl PeerKey for Ct6Key {
    #[inline(always)]
    fn peer_entry(&self) -> Option<*mut CtEntry> {
        CONNTRACK6
            .get_ptr_mut(self)
            .map(|entry| unsafe { &raw mut (*entry).track })
    }
}

/// Takes room for a new flow's two entries: Err(drop_ct_full) at the limit. (A flood of
/// flows that are not assured is not evicted to make room yet, as IPv4's are.)
#[inline(always)]
pub fn admit() -> Result<(), u32> {
    if conntrack::reserve_in(ct_usage::ENTRIES6, ct_usage::LIMIT6, 2) {
        Ok(())
    } else {
        Err(outcome::DROP_CT_FULL)
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

#[inline(always)]
fn touch(ctx: &TcContext, entry: *mut Ct6Entry, packet: &Packet6) -> u32 {
    let at = tcp::At {
        l4_off: packet.l4_off,
        flags: packet.tcp_flags,
        ipv6: true,
    };
    let (track, peer) = unsafe { (&raw mut (*entry).track, &raw const (*entry).peer) };
    conntrack::track(ctx, track, peer, packet.key.proto, &at)
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
    entry.track.last_seen_ns = unsafe { bpf_ktime_get_ns() };
    entry.track.action = action;
    entry.track.direction = direction;
    entry.track.nat_port = nat_port;
}
