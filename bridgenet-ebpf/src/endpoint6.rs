//! What an endpoint may send over IPv6, checked on its veth as `endpoint` checks IPv4.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LpmTrie},
};
use bridgenet_common::Subnet6;

/// Managed IPv6 subnets, by prefix.
#[map]
pub static SUBNETS6: LpmTrie<[u8; 16], Subnet6> =
    LpmTrie::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Endpoints' IPv6 addresses by the ifindex of their veth's host end.
#[map]
pub static ENDPOINTS6: HashMap<u32, [u8; 16]> = HashMap::with_max_entries(65_536, 0);
