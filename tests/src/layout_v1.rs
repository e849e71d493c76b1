//! Pinned maps as daemons before layout versions left them (layout v1), for upgrade tests.
use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use bridgenet_common::{CtFlow, CtKey, EmbryoSlot, OUTCOME_SLOTS, ct_usage, program_id};

/// `CtEntry` of layout v1 (56 bytes: no flags, no TCP window).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CtEntryV1 {
    pub peer: CtKey,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub nat_addr: u32,
    pub nat_port: u16,
    pub action: u8,
    pub direction: u8,
    pub tcp_seen: u8,
    pub _pad: [u8; 7],
}

const _: () = assert!(size_of::<CtEntryV1>() == 56);

// SAFETY: repr(C), no padding (16 + 24 + 16 bytes), every bit pattern valid.
unsafe impl aya::Pod for CtEntryV1 {}

/// `STATS` v1: `program * 20 + outcome`.
pub const STATS_V1_OUTCOMES: u32 = 20;

fn open(path: &Path) -> Map {
    Map::from_map_data(MapData::from_pin(path).expect("pinned map")).expect("map")
}

/// Replaces the pins of CONNTRACK (v3), STATS (v2), CT_USAGE (v3) and EMBRYOS (v2) in `dir`
/// with v1 pins of the same content, as a daemon of layout v1 would have left them, and removes
/// those of the maps it did not have (PUBLISHED_BY, CT_EXCEPTIONS); returns the conntrack
/// entries (two per flow).
pub fn downgrade_pins(dir: &Path) -> usize {
    let ct: HashMap<_, CtKey, CtFlow> = HashMap::try_from(open(&dir.join("CONNTRACK_v3"))).unwrap();
    let mut old: HashMap<MapData, CtKey, CtEntryV1> = HashMap::create(1024, 0).unwrap();
    let mut n = 0;
    let entries = ct.iter().flat_map(|flow| {
        let (key, flow) = flow.unwrap();
        flow.entries(&key)
    });
    for (key, e) in entries {
        let v1 = CtEntryV1 {
            peer: e.peer,
            last_seen_ns: e.last_seen_ns,
            packets: e.packets,
            bytes: e.bytes,
            nat_addr: e.nat_addr,
            nat_port: e.nat_port,
            action: e.action,
            direction: e.direction,
            tcp_seen: e.tcp_seen,
            _pad: [0; 7],
        };
        old.insert(key, v1, 0).unwrap();
        n += 1;
    }
    old.pin(dir.join("CONNTRACK")).unwrap();

    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(open(&dir.join("STATS_v2"))).unwrap();
    let mut old: PerCpuArray<MapData, u64> =
        PerCpuArray::create(program_id::COUNT * STATS_V1_OUTCOMES, 0).unwrap();
    for p in 0..program_id::COUNT {
        for o in 0..STATS_V1_OUTCOMES {
            let values = stats.get(&(p * OUTCOME_SLOTS + o), 0).unwrap();
            old.set(p * STATS_V1_OUTCOMES + o, values, 0).unwrap();
        }
    }
    old.pin(dir.join("STATS")).unwrap();

    // CT_USAGE v1: entries (two per flow) and their limit.
    let usage: Array<_, u64> = Array::try_from(open(&dir.join("CT_USAGE_v3"))).unwrap();
    let mut old: Array<MapData, u64> = Array::create(2, 0).unwrap();
    for slot in [ct_usage::ENTRIES, ct_usage::LIMIT] {
        old.set(slot, 2 * usage.get(&slot, 0).unwrap(), 0).unwrap();
    }
    old.pin(dir.join("CT_USAGE")).unwrap();

    // EMBRYOS v1: one ring for both sides, of the size of one side's.
    let ring: Array<_, EmbryoSlot> = Array::try_from(open(&dir.join("EMBRYOS_v2"))).unwrap();
    let mut old: Array<MapData, EmbryoSlot> = Array::create(ring.len() / 2, 0).unwrap();
    for slot in 0..ring.len() / 2 {
        old.set(slot, ring.get(&slot, 0).unwrap(), 0).unwrap();
    }
    old.pin(dir.join("EMBRYOS")).unwrap();

    for name in [
        "CONNTRACK_v3",
        "STATS_v2",
        "CT_USAGE_v3",
        "EMBRYOS_v2",
        "PUBLISHED_BY",
        "CT_EXCEPTIONS",
    ] {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    n
}
