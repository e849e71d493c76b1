//! Per-interface packet and byte counters.
use aya_ebpf::{macros::map, maps::PerCpuHashMap};
use bridgenet_common::{IfCounters, MAX_INTERFACES};

#[map]
static IF_COUNTERS: PerCpuHashMap<u32, IfCounters> =
    PerCpuHashMap::with_max_entries(MAX_INTERFACES, 0);

/// Adds one packet of `len` bytes to the counters of `ifindex`.
#[inline(always)]
pub fn count_interface(ifindex: u32, len: u32) {
    match IF_COUNTERS.get_ptr_mut(ifindex) {
        // Per-CPU value: no other CPU writes it, so plain adds are safe.
        Some(counters) => unsafe {
            (*counters).packets += 1;
            (*counters).bytes += u64::from(len);
        },
        None => {
            let first = IfCounters {
                packets: 1,
                bytes: u64::from(len),
            };
            // Another packet on this CPU cannot race us; on failure (map full) the packet
            // simply goes uncounted.
            let _ = IF_COUNTERS.insert(ifindex, first, 0);
        }
    }
}
