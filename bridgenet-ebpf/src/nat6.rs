//! NAT66 on the uplinks: masquerade of the managed IPv6 subnets with the uplink's global
//! address, and the reverse translation of the replies, driven by `CONNTRACK6` entries.
use aya_ebpf::{macros::map, maps::HashMap};

/// Uplinks by ifindex, with the IPv6 address masquerade uses on each.
#[map]
pub static UPLINKS6: HashMap<u32, [u8; 16]> = HashMap::with_max_entries(64, 0);
