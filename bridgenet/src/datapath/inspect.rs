//! What `status` and the metrics read from the kernel about the datapath itself: each map's
//! fill against its size.
use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::Result;
use aya::maps::{Map, MapData};
use bridgenet_common::maps;

use super::{Datapath, layout};

/// One map: how many entries it holds (None for arrays, whose slots always exist) and may
/// hold, and the version of its pinned layout.
#[derive(Clone, Debug)]
pub struct MapFill {
    pub name: &'static str,
    pub entries: Option<u64>,
    pub max_entries: u64,
    pub layout_version: u32,
}

fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::LpmTrie(d)
        | Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d) => Some(d),
        _ => None,
    }
}

/// Counts the keys of a hash or trie map by walking them (BPF_MAP_GET_NEXT_KEY), whatever
/// their type: aya's typed iterators need the key type, and only the count matters here.
fn count_keys(data: &MapData, key_size: u32) -> Result<u64> {
    #[repr(C)]
    struct NextKey {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let fd = data.fd().as_fd().as_raw_fd() as u32;
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0u64;
    let mut first = true;
    loop {
        let attr = NextKey {
            map_fd: fd,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the attr points at buffers of the map's key size that outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const NextKey,
                std::mem::size_of::<NextKey>(),
            )
        };
        if ret != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(n);
            }
            return Err(err.into());
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

impl Datapath {
    /// Every map of the object with its fill. The conntrack table's is the datapath's own
    /// count of flows against its limit (the map has room past it, see `headroom`).
    pub fn map_fill(&self) -> Result<Vec<MapFill>> {
        let mut out = Vec::new();
        for name in maps::ALL {
            let Some(data) = self.ebpf.map(name).and_then(map_data) else {
                continue;
            };
            let info = data.info()?;
            let hashed = !matches!(
                self.ebpf.map(name),
                Some(Map::Array(_) | Map::PerCpuArray(_) | Map::RingBuf(_))
            );
            let (entries, max_entries) = if name == maps::CONNTRACK {
                let (entries, limit) = self.conntrack_usage()?;
                (Some(entries), limit)
            } else if hashed {
                (
                    Some(count_keys(data, info.key_size())?),
                    u64::from(info.max_entries()),
                )
            } else {
                (None, u64::from(info.max_entries()))
            };
            out.push(MapFill {
                name,
                entries,
                max_entries,
                layout_version: layout::version(name),
            });
        }
        Ok(out)
    }
}
