//! Counters per program and outcome: packets translated, passed, and dropped with a reason.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use bridgenet_common::{OUTCOME_SLOTS, program_id, stats_index};

#[map]
static STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(program_id::COUNT * OUTCOME_SLOTS, 0);

#[inline(always)]
pub fn count(program: u32, outcome: u32) {
    if let Some(counter) = STATS.get_ptr_mut(stats_index(program, outcome)) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *counter += 1 };
    }
}
