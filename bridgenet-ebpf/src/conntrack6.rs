//! Conntrack for IPv6 flows: `conntrack` with IPv6 tuples. The entries carry an IPv4 entry's
//! tracking (`Ct6Entry::track`), so the TCP window tracking and the states are the same code;
//! only the table, its count and its limit are IPv6's own.
use aya_ebpf::{macros::map, maps::LruHashMap};
use bridgenet_common::{Ct6Entry, Ct6Key};

/// Sized by the loader above `ct_usage::LIMIT6`, as `CONNTRACK` is above its limit.
#[map]
pub static CONNTRACK6: LruHashMap<Ct6Key, Ct6Entry> = LruHashMap::with_max_entries(1024, 0);
