//! Writes to the Ethernet and outer IPv4 and IPv6 headers and to the L4 ports straight into
//! the packet rather than through a helper call each (about 27 ns apiece here), with the IPv4
//! header checksum updated here: unlike the L4 checksum it never depends on the skb's checksum
//! state. The headers are in the skb's linear part; when they are not, they are pulled there
//! first (`parse::linear`).
use aya_ebpf::programs::TcContext;

use crate::{
    parse::{self, HEAD, IP_CSUM_OFF, IP_OFF, L4_OFF_MAX},
    parse6::{IP6_LEN, IP6_OFF},
};

/// Past the ICMP echo identifier of the farthest L4 header, the farthest port.
const PORT_END: usize = L4_OFF_MAX + 6;
const TTL_OFF: usize = IP_OFF + 8;
/// The Ethernet header and the fixed IPv6 header.
const HEAD6: usize = IP6_OFF + IP6_LEN;
const HOP_LIMIT_OFF: usize = IP6_OFF + 7;

/// The packet's first `HEAD` bytes, writable (a program that writes to its packet has its
/// skb uncloned by the kernel before it runs); None when the packet is shorter.
#[inline(always)]
fn head(ctx: &TcContext) -> Option<*mut u8> {
    parse::linear(ctx, HEAD)
}

/// Forwarding decrements the hop limit (IPv6 has no header checksum); so does the fast path.
/// The hop limit must be above 1.
#[inline(always)]
pub fn decrement_hop_limit(ctx: &TcContext) -> Option<()> {
    let head = parse::linear(ctx, HEAD6)?;
    // SAFETY: within `HEAD6` bytes.
    unsafe {
        let hop_limit = head.add(HOP_LIMIT_OFF);
        hop_limit.write(hop_limit.read().wrapping_sub(1));
    }
    Some(())
}

/// Replaces the IPv4 address at `off` (source or destination), `old` by `new` (both as they
/// lie in the packet), and the header checksum with it.
#[inline(always)]
pub fn set_addr(ctx: &TcContext, off: usize, old: u32, new: u32) -> Option<()> {
    if off + 4 > HEAD {
        return None;
    }
    let head = head(ctx)?;
    // Both halves of each address, as the 16-bit words the checksum sums.
    let diff =
        u32::from(!(old as u16)) + u32::from(!((old >> 16) as u16)) + (new & 0xffff) + (new >> 16);
    // SAFETY: `off` + 4 and the checksum are within the `HEAD` bytes `head` checked.
    unsafe {
        head.add(off).cast::<u32>().write_unaligned(new);
        update_csum(head, diff);
    }
    Some(())
}

/// Writes the IPv6 address at `off` (source or destination): IPv6 has no header checksum, and
/// the L4 checksum is the caller's.
#[inline(always)]
pub fn set_addr6(ctx: &TcContext, off: usize, addr: &[u8; 16]) -> Option<()> {
    if off + 16 > HEAD6 {
        return None;
    }
    let head = parse::linear(ctx, HEAD6)?;
    // SAFETY: `off` + 16 is within the `HEAD6` bytes `linear` checked.
    unsafe { head.add(off).cast::<[u8; 16]>().write_unaligned(*addr) };
    Some(())
}

/// Forwarding decrements the TTL; so does the fast path. The TTL must be above 1.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext) -> Option<()> {
    let head = head(ctx)?;
    // SAFETY: the TTL, the protocol and the checksum are within `HEAD` bytes.
    unsafe {
        let word = head.add(TTL_OFF).cast::<u16>();
        let old = word.read_unaligned();
        // The TTL is the word's first byte in the packet, whatever the CPU's byte order.
        let [ttl, proto] = old.to_ne_bytes();
        let new = u16::from_ne_bytes([ttl.wrapping_sub(1), proto]);
        word.write_unaligned(new);
        update_csum(head, u32::from(!old) + u32::from(new));
    }
    Some(())
}

/// Writes the 16-bit port (or ICMP echo identifier) at `off`, as it lies in the packet; the
/// L4 checksum is the caller's (through the helper: it depends on the checksum state).
#[inline(always)]
pub fn set_port(ctx: &TcContext, off: usize, port: u16) -> Option<()> {
    if off > PORT_END - 2 {
        return None;
    }
    if ctx.data() + off + 2 > ctx.data_end() {
        ctx.pull_data((off + 2) as u32).ok()?;
    }
    let at = ctx.data() + off;
    if at + 2 > ctx.data_end() {
        return None;
    }
    // SAFETY: two bytes before `data_end`, checked above.
    unsafe { (at as *mut u16).write_unaligned(port) };
    Some(())
}

/// The destination and source MACs (in that order, as in the header).
#[inline(always)]
pub fn set_macs(ctx: &TcContext, macs: &[u8; 12]) -> Option<()> {
    let head = head(ctx)?;
    // SAFETY: 12 bytes within `HEAD`.
    unsafe { head.cast::<[u8; 12]>().write_unaligned(*macs) };
    Some(())
}

/// Adds `diff` (the one's complement sum of the old words' complements and the new words) to
/// the IPv4 header checksum: RFC 1624's HC' = ~(~HC + ~m + m').
///
/// # Safety
/// `head` points to at least `HEAD` writable bytes.
#[inline(always)]
unsafe fn update_csum(head: *mut u8, diff: u32) {
    let csum = unsafe { head.add(IP_CSUM_OFF).cast::<u16>() };
    let mut sum = u32::from(!unsafe { csum.read_unaligned() }) + diff;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    unsafe { csum.write_unaligned(!(sum as u16)) };
}
