//! Types shared by the eBPF programs and the daemon.
//!
//! Every type here is `#[repr(C)]` and derives bytemuck's `Pod`, so a type with implicit
//! padding does not compile; the `const` assertions pin the sizes the kernel side expects.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// Packet and byte counts of one interface, one per CPU in a per-CPU hash map keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct IfCounters {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<IfCounters>() == 16);

/// Names of the maps, as the programs declare them and the loader finds them.
pub mod maps {
    pub const IF_COUNTERS: &str = "IF_COUNTERS";
}

/// Names of the programs in the object.
pub mod programs {
    pub const TC_COUNT: &str = "tc_count";
    pub const XDP_COUNT: &str = "xdp_count";
}

/// Largest number of interfaces whose counters the maps hold.
pub const MAX_INTERFACES: u32 = 4096;

#[cfg(feature = "user")]
mod user {
    // SAFETY: these types are Pod (checked by bytemuck's derive above).
    unsafe impl aya::Pod for super::IfCounters {}
}
