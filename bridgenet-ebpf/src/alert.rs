//! Warnings for the daemon's log (through aya-log) about drops that call for an operator: a
//! full conntrack table, exhausted masquerade ports, an endpoint whose program was detached.
//! At most one per reason per CPU per second: a flood cannot flood the log.
use aya_ebpf::{EbpfContext, helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray};
use aya_log_ebpf::warn;
use bridgenet_common::outcome;

/// When each reason was last reported, per CPU (ns since boot).
#[map]
static LAST_ALERT: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(bridgenet_common::OUTCOME_SLOTS, 0);

const INTERVAL_NS: u64 = 1_000_000_000;

#[inline(never)]
pub fn drop<C: EbpfContext>(ctx: &C, result: u32) {
    if !matches!(
        result,
        outcome::DROP_CT_FULL | outcome::DROP_PORTS_EXHAUSTED | outcome::DROP_UNCHECKED
    ) {
        return;
    }
    let Some(last) = LAST_ALERT.get_ptr_mut(result) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(unsafe { *last }) < INTERVAL_NS {
        return;
    }
    unsafe { *last = now };
    match result {
        outcome::DROP_CT_FULL => warn!(
            ctx,
            "conntrack table full: new flows are refused (drop_ct_full)"
        ),
        outcome::DROP_PORTS_EXHAUSTED => warn!(
            ctx,
            "no free masquerade port towards a destination: new flows are refused \
             (drop_ports_exhausted)"
        ),
        _ => warn!(
            ctx,
            "dropped what an endpoint sent without the endpoint check: its program is \
             detached (drop_unchecked)"
        ),
    }
}
