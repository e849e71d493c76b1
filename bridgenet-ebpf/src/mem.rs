//! Zeroing and comparing in a few wide operations. bpf-linker asks LLVM to expand memcpy in
//! order (`--bpf-expand-memcpy-in-order`), which also turns off its inline expansion of memset
//! and memcmp: zeroing a struct or comparing two MACs becomes a call to aya-ebpf's byte-at-a-
//! time loop (64 iterations for a `bpf_fib_lookup`). What the hot path zeroes or compares goes
//! through here instead.
use core::mem::MaybeUninit;

/// `slot` with every byte 0, written 4 bytes at a time, in place (a zeroed value returned
/// and then moved is copied with a memset again). Volatile stores: LLVM would merge plain ones
/// back into a memset. `T`'s size and alignment must be multiples of 4 (checked when built).
///
/// # Safety
/// All zeroes must be a valid `T` (plain data: the kernel's structs for helpers).
#[inline(always)]
pub unsafe fn zeroed<T: Copy>(slot: &mut MaybeUninit<T>) -> &mut T {
    const { assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>().is_multiple_of(4)) };
    let words = slot.as_mut_ptr().cast::<u32>();
    for i in 0..size_of::<T>() / 4 {
        // SAFETY: within `slot`, 4-aligned (checked above).
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte written, and all zeroes is a valid `T` (the caller's promise).
    unsafe { slot.assume_init_mut() }
}

/// Whether two MACs are equal, without the comparisons LLVM merges into a memcmp call.
// A BPF subprogram of its own, the MACs passed in registers: inlined, or given by reference,
// its twelve loads spilled registers onto the caller's stack (16-32 bytes more in
// `endpoint_ingress`, whose deepest chain of calls then passed the 512 bytes Linux 6.1 allows).
#[inline(never)]
pub fn mac_eq(a: [u8; 6], b: [u8; 6]) -> bool {
    let mut diff = 0;
    for i in 0..6 {
        diff |= a[i] ^ b[i];
    }
    diff == 0
}

/// Whether two IPv6 addresses are equal, compared as two words each rather than by the
/// byte-wise comparison LLVM makes of two arrays here.
#[inline(always)]
pub fn eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (a.as_ptr().cast::<u64>(), b.as_ptr().cast::<u64>());
    // SAFETY: two 8-byte reads within each 16-byte array.
    unsafe {
        (a.read_unaligned() ^ b.read_unaligned())
            | (a.add(1).read_unaligned() ^ b.add(1).read_unaligned())
            == 0
    }
}
