//! Pinned maps across versions. A pin's name carries its map's layout version
//! (`bridgenet_common::layout`): `NAME` for v1 (as every daemon before versions named them),
//! `NAME_vN` from v2 on (bpffs refuses dots in names). A load adopts the pins of this build's
//! versions, migrates older ones into fresh maps (saying per map what it kept and what it
//! dropped), and refuses newer ones: a map is never reinterpreted under another layout.
use std::{
    collections::HashMap as StdHashMap,
    fmt,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use bridgenet_common::{
    CtEntry, CtFlow, CtKey, Uplink, ct_flags, ct_usage, direction, layout, maps, stats_index,
};
use bytemuck::{Pod, Zeroable};

use super::{Datapath, conntrack::found_from_inside};

/// Why a conntrack migration drops entries.
const CONNTRACK_DROPPED: &str = "their other direction was missing, or the table was full";

/// The layout version of map `name` in this build.
pub fn version(name: &str) -> u32 {
    match name {
        maps::CONNTRACK => layout::CONNTRACK,
        maps::STATS => layout::STATS,
        maps::CT_USAGE => layout::CT_USAGE,
        maps::EMBRYOS => layout::EMBRYOS,
        _ => layout::FIRST,
    }
}

/// The file name of map `name`'s pin at layout `version`.
pub fn pin_name(name: &str, version: u32) -> String {
    if version <= 1 {
        name.to_owned()
    } else {
        format!("{name}_v{version}")
    }
}

/// A pin in the pin directory: which map, at which layout version.
#[derive(Clone, Debug)]
pub(super) struct Pin {
    pub map: &'static str,
    pub version: u32,
    pub path: PathBuf,
}

/// The pins of bridgenet's maps in `dir` (other files are left alone), at any version.
pub(super) fn pins(dir: &Path) -> Result<Vec<Pin>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let (name, version) = match file.rsplit_once("_v") {
            Some((name, v)) => match v.parse::<u32>() {
                Ok(v) => (name, v),
                Err(_) => continue,
            },
            None => (file, 1),
        };
        if let Some(map) = maps::ALL.iter().find(|m| **m == name) {
            out.push(Pin {
                map,
                version,
                path: entry.path(),
            });
        }
    }
    Ok(out)
}

/// The pins in `dir` of layouts older than this build's, to migrate; fails with one line on
/// a layout newer than this build's.
pub(super) fn older_pins(dir: &Path) -> Result<Vec<Pin>> {
    let mut older = Vec::new();
    for pin in pins(dir)? {
        let ours = version(pin.map);
        if pin.version > ours {
            bail!(
                "pinned map {} ({}) has layout v{}, newer than this bridgenet's v{ours}: \
                 refusing to start (run the bridgenet that pinned it, or drop its state with \
                 `bridgenet daemon --cleanup`)",
                pin.map,
                pin.path.display(),
                pin.version
            );
        }
        if pin.version < ours {
            older.push(pin);
        }
    }
    Ok(older)
}

/// What a migration did to one map: the daemon's log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub map: &'static str,
    pub from: u32,
    pub to: u32,
    pub migrated: usize,
    pub dropped: usize,
    /// Why entries were dropped.
    pub why: &'static str,
    /// CONNTRACK: migrated flows the programs find from inside only through `CT_EXCEPTIONS`.
    pub exceptions: usize,
}

impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pinned map {}: layout v{} -> v{}: {} entries migrated, {} dropped",
            self.map, self.from, self.to, self.migrated, self.dropped
        )?;
        if self.dropped > 0 {
            write!(f, " ({})", self.why)?;
        }
        if self.exceptions > 0 {
            write!(f, "; {} flows in CT_EXCEPTIONS", self.exceptions)?;
        }
        Ok(())
    }
}

/// `CtEntry` of layout v1 (56 bytes: no flags, no TCP window).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct CtEntryV1 {
    peer: CtKey,
    last_seen_ns: u64,
    packets: u64,
    bytes: u64,
    nat_addr: u32,
    nat_port: u16,
    action: u8,
    direction: u8,
    tcp_seen: u8,
    _pad: [u8; 7],
}

const _: () = assert!(size_of::<CtEntryV1>() == 56);

// SAFETY: Pod (checked by bytemuck's derive).
unsafe impl aya::Pod for CtEntryV1 {}

/// `STATS` v1: a dense index, `program * 20 + outcome`, over 5 programs.
const STATS_V1_OUTCOMES: u32 = 20;
const STATS_V1_PROGRAMS: u32 = 5;
/// `CT_USAGE` v1: entries and limit.
const CT_USAGE_V1_SLOTS: u32 = 2;
/// `CT_USAGE` v2: up to `LIMIT6`.
const CT_USAGE_V2_SLOTS: u32 = 8;

/// What a conntrack migration did, in the old pin's entries.
struct Copied {
    migrated: usize,
    dropped: usize,
    /// Flows entered in `CT_EXCEPTIONS`.
    exceptions: usize,
}

fn open(pin: &Pin) -> Result<Map> {
    let data = MapData::from_pin(&pin.path)
        .with_context(|| format!("opening pinned map {}", pin.path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// The keys of a map of any layout, counted with BPF_MAP_GET_NEXT_KEY: what a map that
/// cannot be migrated loses.
fn count_keys(pin: &Pin) -> Result<usize> {
    let data = MapData::from_pin(&pin.path)?;
    let key_size = data.info()?.key_size() as usize;
    let fd = data.fd().as_fd().as_raw_fd();
    let (mut key, mut next) = (vec![0u8; key_size.max(1)], vec![0u8; key_size.max(1)]);
    let mut count = 0;
    loop {
        #[repr(C)]
        struct Attr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            next_key: u64,
            _rest: [u64; 13],
        }
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            key: if count == 0 { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            _rest: [0; 13],
        };
        const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
        // SAFETY: attr and the key buffers outlive the call and have the sizes it uses.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const Attr,
                size_of::<Attr>() as u32,
            )
        };
        if ret != 0 {
            return Ok(count);
        }
        count += 1;
        std::mem::swap(&mut key, &mut next);
    }
}

impl Datapath {
    /// Migrates one older pin into this build's map (already loaded); logs and returns what
    /// it did. The old pin is left for `finish_upgrade` (conntrack) or removed (the others).
    pub(super) fn migrate(&mut self, pin: &Pin) -> Result<Migration> {
        let to = version(pin.map);
        let mut exceptions = 0;
        let mut done = match pin.map {
            maps::CONNTRACK => self.migrate_conntrack(pin)?.map(|c| {
                exceptions = c.exceptions;
                (c.migrated, c.dropped, CONNTRACK_DROPPED)
            }),
            maps::STATS => self.migrate_stats(pin)?,
            maps::CT_USAGE => self.migrate_ct_usage(pin)?,
            // EMBRYOS v1 (one ring for both sides): the rings start empty. Nothing is lost:
            // the half-open flows the old ring named stay in the table and expire by GC
            // instead of making room for new ones.
            maps::EMBRYOS => Some((0, 0, "")),
            _ => None,
        };
        if done.is_none() {
            // No migration from this layout: say what is lost rather than guess.
            done = Some((0, count_keys(pin)?, "no migration from this layout"));
        }
        let (migrated, dropped, why) = done.expect("set above");
        if pin.map != maps::CONNTRACK {
            remove_pin(&pin.path);
        }
        let migration = Migration {
            map: pin.map,
            from: pin.version,
            to,
            migrated,
            dropped,
            why,
            exceptions,
        };
        if dropped > 0 {
            tracing::warn!("{migration}");
        } else {
            tracing::info!("{migration}");
        }
        Ok(migration)
    }

    /// CONNTRACK v1 (56-byte entries) or v2 into v3: each flow whose two entries are there
    /// (v1's ASSURED when both directions saw packets) as one element; entries whose other
    /// direction is missing are dropped. A pin of the v1 name with the v2 layout is read as v2.
    fn migrate_conntrack(&mut self, pin: &Pin) -> Result<Option<Copied>> {
        let old = open(pin)?;
        let info = match &old {
            Map::HashMap(data) | Map::LruHashMap(data) => data.info()?,
            _ => return Ok(None),
        };
        let entries: Vec<(CtKey, CtEntry)> = match (info.key_size(), info.value_size()) {
            (16, 56) => {
                let map: HashMap<_, CtKey, CtEntryV1> = HashMap::try_from(old)?;
                let old: StdHashMap<CtKey, CtEntryV1> = map.iter().collect::<Result<_, _>>()?;
                old.iter()
                    .map(|(key, e)| {
                        let both = old
                            .get(&e.peer)
                            .is_some_and(|p| p.peer == *key && p.packets > 0 && e.packets > 0);
                        let entry = CtEntry {
                            peer: e.peer,
                            last_seen_ns: e.last_seen_ns,
                            packets: e.packets,
                            bytes: e.bytes,
                            nat_addr: e.nat_addr,
                            nat_port: e.nat_port,
                            action: e.action,
                            direction: e.direction,
                            tcp_seen: e.tcp_seen,
                            flags: if both { ct_flags::ASSURED } else { 0 },
                            ..CtEntry::default()
                        };
                        (*key, entry)
                    })
                    .collect()
            }
            (16, 64) => {
                let map: HashMap<_, CtKey, CtEntry> = HashMap::try_from(old)?;
                map.iter().collect::<Result<_, _>>()?
            }
            _ => return Ok(None),
        };
        self.copy_conntrack(&entries).map(Some)
    }

    /// Inserts the flows of `entries` (layout v2's, two per flow) that the map does not hold
    /// yet, one element each, up to the table's limit; a flow the programs would not find
    /// from inside (`found_from_inside`) also gets its `CT_EXCEPTIONS` entry. Sets the
    /// table's count and adds to the exceptions'.
    fn copy_conntrack(&mut self, entries: &[(CtKey, CtEntry)]) -> Result<Copied> {
        let by_key: StdHashMap<CtKey, CtEntry> = entries.iter().copied().collect();
        let (_, limit) = self.conntrack_usage()?;
        let (nat, secret) = (self.nat_config()?, self.port_secret()?);
        let published_by: StdHashMap<_, _> = self.published_by()?.into_iter().collect();
        let uplinks: HashMap<_, u32, Uplink> = HashMap::try_from(
            self.ebpf
                .map(maps::UPLINKS)
                .ok_or_else(|| anyhow::anyhow!("map UPLINKS missing"))?,
        )?;
        let uplink_addrs: Vec<u32> = uplinks
            .iter()
            .filter_map(Result::ok)
            .map(|(_, uplink)| uplink.addr)
            .collect();
        let found = |key: &CtKey, flow: &CtFlow| {
            found_from_inside(
                key,
                flow,
                &nat,
                &secret,
                |k| published_by.get(k).copied(),
                &uplink_addrs,
            )
        };
        let mut exceptions: HashMap<_, CtKey, CtKey> =
            HashMap::try_from(self.own_map(maps::CT_EXCEPTIONS)?)?;
        let mut map: HashMap<_, CtKey, CtFlow> = HashMap::try_from(self.map_mut(maps::CONNTRACK)?)?;
        let mut held = map.keys().count();
        let mut copied = Copied {
            migrated: 0,
            dropped: 0,
            exceptions: 0,
        };
        for (key, entry) in entries {
            let peer = by_key.get(&entry.peer).filter(|p| p.peer == *key);
            let Some(peer) = peer else {
                copied.dropped += 1;
                continue;
            };
            if entry.direction != direction::ORIGINAL {
                continue;
            }
            let (flow_key, mut flow) = CtFlow::from_entries((key, entry), (&entry.peer, peer));
            if map.get(&flow_key, 0).is_ok() {
                // Already there (a second pass, or the flow went on in the new programs).
                continue;
            }
            if held as u64 >= limit {
                copied.dropped += 2;
                continue;
            }
            if !found(&flow_key, &flow) {
                // Its exception first: the flow is never in the table unfound from inside.
                let inside = flow.inside_tuple(&flow_key);
                if exceptions.insert(inside, flow_key, 0).is_err() {
                    copied.dropped += 2;
                    continue;
                }
                flow.flags |= ct_flags::EXCEPTION;
                copied.exceptions += 1;
            }
            map.insert(flow_key, flow, 0)?;
            held += 1;
            copied.migrated += 2;
        }
        let mut usage: Array<_, u64> = Array::try_from(self.map_mut(maps::CT_USAGE)?)?;
        usage.set(ct_usage::ENTRIES, held as u64, 0)?;
        let counted = usage.get(&ct_usage::EXCEPTIONS, 0)?;
        usage.set(ct_usage::EXCEPTIONS, counted + copied.exceptions as u64, 0)?;
        Ok(copied)
    }

    /// STATS v1 (`program * 20 + outcome`) into `stats_index`, per CPU; a pin of the old name
    /// with the v2 size is copied as it is.
    fn migrate_stats(&mut self, pin: &Pin) -> Result<Option<(usize, usize, &'static str)>> {
        let old: PerCpuArray<_, u64> = match PerCpuArray::try_from(open(pin)?) {
            Ok(old) => old,
            Err(_) => return Ok(None),
        };
        let slots: Vec<(u32, u32)> = if old.len() == STATS_V1_PROGRAMS * STATS_V1_OUTCOMES {
            (0..STATS_V1_PROGRAMS)
                .flat_map(|p| (0..STATS_V1_OUTCOMES).map(move |o| (p, o)))
                .map(|(p, o)| (p * STATS_V1_OUTCOMES + o, stats_index(p, o)))
                .collect()
        } else if old.len() == stats_index(STATS_V1_PROGRAMS, 0) {
            (0..old.len()).map(|i| (i, i)).collect()
        } else {
            return Ok(None);
        };
        let mut new: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map_mut(maps::STATS)?)?;
        let mut migrated = 0;
        for (from, to) in slots {
            let values = old.get(&from, 0)?;
            if values.iter().all(|v| *v == 0) {
                continue;
            }
            let now = new.get(&to, 0)?;
            let sum: Vec<u64> = values.iter().zip(now.iter()).map(|(a, b)| a + b).collect();
            new.set(to, PerCpuValues::try_from(sum)?, 0)?;
            migrated += 1;
        }
        Ok(Some((migrated, 0, "")))
    }

    /// CT_USAGE v1 (entries, limit) or v2 into v3. The counts of the IPv6 table and of the
    /// embryo rings carry over (v2); the IPv4 count is the conntrack migration's (in flows,
    /// after this one), and the limits (`LIMIT`, `LIMIT6`, `RING_SIZE`) are what the loader set
    /// for this build's options and maps, the old pin's for the same ones: they count as
    /// carried over. `EXCEPTIONS` starts at 0, for the conntrack migration to count.
    fn migrate_ct_usage(&mut self, pin: &Pin) -> Result<Option<(usize, usize, &'static str)>> {
        let old: Array<_, u64> = match Array::try_from(open(pin)?) {
            Ok(old) if old.len() >= CT_USAGE_V1_SLOTS => old,
            _ => return Ok(None),
        };
        let old_len = old.len().min(CT_USAGE_V2_SLOTS);
        let carried = if old_len == CT_USAGE_V2_SLOTS {
            [
                ct_usage::EVICTED,
                ct_usage::RING_CURSOR,
                ct_usage::RING_CURSOR_INSIDE,
                ct_usage::ENTRIES6,
            ]
            .as_slice()
        } else {
            &[]
        };
        let mut usage: Array<_, u64> = Array::try_from(self.map_mut(maps::CT_USAGE)?)?;
        for slot in carried {
            usage.set(*slot, old.get(slot, 0)?, 0)?;
        }
        // Every old slot is carried over, as it is or as what replaces it.
        Ok(Some((old_len as usize, 0, "")))
    }

    /// After the new programs are attached: copies the conntrack entries the old programs
    /// made since `load_with` migrated them, then removes the older pins. Until then the old
    /// programs (still attached during a restart) keep using the old map.
    pub fn finish_upgrade(&mut self) -> Result<()> {
        for pin in std::mem::take(&mut self.upgrading) {
            if let Some(Copied { migrated, .. }) = self.migrate_conntrack(&pin)?
                && migrated > 0
            {
                tracing::info!(
                    "pinned map {}: {migrated} entries made by the previous programs since the \
                     migration copied",
                    pin.map
                );
            }
            remove_pin(&pin.path);
        }
        Ok(())
    }
}

fn remove_pin(path: &Path) {
    if let Err(err) = std::fs::remove_file(path) {
        tracing::warn!("removing the old pin {}: {err}", path.display());
    }
}

/// Removes every pin of bridgenet's maps in `dir`, whatever its version (`daemon --cleanup`).
pub fn remove_pins(dir: &Path) {
    for pin in pins(dir).unwrap_or_default() {
        let _ = std::fs::remove_file(&pin.path);
    }
}
