//! BPF_MAP_LOOKUP_BATCH, which aya 0.14 does not wrap: a hash map read thousands of entries
//! per system call, instead of two calls per entry (the next key, then its value). What makes
//! a pass of conntrack GC over a full table cheap.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use bytemuck::Pod;

/// From linux/bpf.h (`enum bpf_cmd`): stable ABI.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of linux/bpf.h's `union bpf_attr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries asked for per call: a few hundred KB of a conntrack table at a time.
const CHUNK: usize = 4096;

/// Calls `each` with every entry of the hash map `map` (keys `K`, values `V`, of the map's own
/// sizes), `CHUNK` entries per system call, in the map's order, until it returns false. The
/// read goes bucket by bucket: an entry added or removed meanwhile may or may not be seen, but
/// none is seen twice and a map under churn cannot hold the read forever.
pub fn for_each<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    mut each: impl FnMut(&K, &V) -> bool,
) -> io::Result<()> {
    let mut chunk = CHUNK;
    let mut keys = vec![K::zeroed(); chunk];
    let mut values = vec![V::zeroed(); chunk];
    // A hash map's batch position is a bucket index; none: from the start.
    let mut position: Option<u32> = None;
    loop {
        let mut next = 0u32;
        let mut attr = BatchAttr {
            in_batch: position
                .as_ref()
                .map_or(0, |p| std::ptr::from_ref(p) as u64),
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers of `chunk` keys and values of the map's
        // sizes (the caller's types), and at `position` and `next`, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let read = (attr.count as usize).min(chunk);
        for (k, v) in keys[..read].iter().zip(&values[..read]) {
            if !each(k, v) {
                return Ok(());
            }
        }
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None => position = Some(next),
            // Past the last bucket: done (the last entries came with it).
            Some(libc::ENOENT) => return Ok(()),
            // One bucket holds more entries than a chunk: ask again with room for it.
            Some(libc::ENOSPC) if read == 0 && chunk < 1 << 20 => {
                chunk *= 2;
                keys.resize(chunk, K::zeroed());
                values.resize(chunk, V::zeroed());
            }
            Some(_) => return Err(err.expect("an error")),
        }
    }
}

/// Every entry of the hash map `map`, read as `for_each` reads it.
pub fn collect<K: Pod, V: Pod>(map: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    for_each(map, |k: &K, v: &V| {
        entries.push((*k, *v));
        true
    })?;
    Ok(entries)
}
