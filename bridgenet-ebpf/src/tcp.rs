//! TCP window tracking, a simplified form of Linux's tcp_in_window: each direction's entry
//! keeps the sequence number just past what it sent and the largest window it advertised, so
//! that a RST or FIN changes a flow's state only when its sequence number lies in the window the
//! other side accepts. A spoofed reset must then guess that window, not just the four-tuple.
use aya_ebpf::programs::TcContext;
use bridgenet_common::{CtEntry, ct_flags, direction, outcome, tcp_seen};

use crate::parse::IP_OFF;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// Largest window scale (RFC 7323); also what a flow picked up without its SYN assumes.
const MAX_WSCALE: u8 = 14;

/// The key of an entry's other direction, in the table of its family: how window tracking
/// finds the other side of an IPv4 or an IPv6 flow.
pub trait PeerKey {
    fn peer_entry(&self) -> Option<*mut CtEntry>;
}

/// Where a segment is: its TCP header's offset and flags, and its IP family (which says where
/// the IP length is).
pub struct At {
    pub l4_off: usize,
    pub flags: u8,
    pub ipv6: bool,
}

/// The fields of a segment that window tracking reads (host byte order).
struct Segment {
    seq: u32,
    ack: u32,
    /// `seq` plus the payload length, plus one for SYN and for FIN.
    end: u32,
    win: u32,
    /// Header length in bytes.
    doff: usize,
}

impl Segment {
    fn load(ctx: &TcContext, at: &At) -> Option<Self> {
        let l4 = at.l4_off;
        let seq = u32::from_be(ctx.load::<u32>(l4 + 4).ok()?);
        let ack = u32::from_be(ctx.load::<u32>(l4 + 8).ok()?);
        let doff = usize::from(ctx.load::<u8>(l4 + 12).ok()? >> 4) * 4;
        let win = u32::from(u16::from_be(ctx.load::<u16>(l4 + 14).ok()?));
        // IPv4's total length, or IPv6's payload length after its 40-byte header.
        let total = if at.ipv6 {
            usize::from(u16::from_be(ctx.load::<u16>(IP_OFF + 4).ok()?)) + 40
        } else {
            usize::from(u16::from_be(ctx.load::<u16>(IP_OFF + 2).ok()?))
        };
        // A GSO packet of more than 64 KiB has a length of 0: its payload counts as none,
        // which only makes the window lag.
        let payload = total.saturating_sub(l4 - IP_OFF + doff) as u32;
        let flags = at.flags;
        let end = seq
            .wrapping_add(payload)
            .wrapping_add(u32::from(flags & SYN != 0))
            .wrapping_add(u32::from(flags & FIN != 0));
        Some(Self {
            seq,
            ack,
            end,
            win,
            doff,
        })
    }
}

/// Records a TCP segment of `entry`'s direction: its flags, what it sent, and the window it
/// advertised. PASSED, or DROP_OUT_OF_WINDOW for a RST outside the window (an out-of-window
/// FIN passes but closes nothing).
// A BPF subprogram of its own: it runs for every tracked TCP packet, from several callers.
#[inline(never)]
pub fn track<K: PeerKey>(ctx: &TcContext, entry: *mut CtEntry, peer: *const K, at: &At) -> u32 {
    let flags = at.flags;
    let Some(seg) = Segment::load(ctx, at) else {
        return outcome::PASSED;
    };
    // `peer` may point into `entry` (IPv4's key): read only through the raw pointer, when
    // the other direction is needed.
    let peer_entry = || unsafe { (*peer).peer_entry() };
    let e = unsafe { &mut *entry };
    if flags & SYN != 0 {
        if flags & ACK == 0 && e.direction == direction::ORIGINAL {
            restart_if_closed(e, peer_entry());
        }
        e.wscale = wscale(ctx, at.l4_off, seg.doff);
        e.td_end = seg.end;
        // The window of a SYN is never scaled.
        e.td_maxwin = seg.win.max(1);
        e.flags |= ct_flags::WINDOW_KNOWN;
        e.tcp_seen |= seen_flags(flags);
        return outcome::PASSED;
    }
    if flags & (RST | FIN) != 0 && !in_window(e, peer_entry(), &seg, flags) {
        return if flags & RST != 0 {
            outcome::DROP_OUT_OF_WINDOW
        } else {
            outcome::PASSED
        };
    }
    if e.flags & ct_flags::WINDOW_KNOWN == 0 {
        // Picked up without its SYN (migrated state): learn, and assume the largest scale.
        e.wscale = MAX_WSCALE;
        e.td_end = seg.end;
        e.td_maxwin = seg.win << MAX_WSCALE;
        e.flags |= ct_flags::WINDOW_KNOWN;
    } else {
        if after(seg.end, e.td_end) {
            e.td_end = seg.end;
        }
        let win = seg.win << e.wscale.min(MAX_WSCALE);
        if win > e.td_maxwin {
            e.td_maxwin = win;
        }
    }
    e.tcp_seen |= seen_flags(flags);
    if flags & ACK != 0 && e.flags & ct_flags::ASSURED == 0 && e.direction == direction::ORIGINAL {
        assure(e, peer_entry());
    }
    outcome::PASSED
}

/// Whether a RST or FIN from `e`'s direction lies in the window the other side accepts.
#[inline(always)]
fn in_window(e: &CtEntry, peer: Option<*mut CtEntry>, seg: &Segment, flags: u8) -> bool {
    let Some(peer) = peer.map(|p| unsafe { &*p }) else {
        return true;
    };
    let peer_known = peer.flags & ct_flags::WINDOW_KNOWN != 0;
    if e.flags & ct_flags::WINDOW_KNOWN == 0 {
        // Nothing sent yet from this side: only a reset that acknowledges the other side's SYN
        // (a refused connection) is believed. Neither side known: state migrated, loose.
        return !peer_known || (flags & RST != 0 && flags & ACK != 0 && seg.ack == peer.td_end);
    }
    let win = if peer_known { peer.td_maxwin.max(1) } else { 1 };
    // seq in [td_end - win, td_end + win], modulo 2^32.
    seg.seq.wrapping_sub(e.td_end.wrapping_sub(win)) <= win.saturating_mul(2)
}

/// A SYN opens a new connection on the tuple of a closed one (TIME_WAIT reuse, as Linux's
/// conntrack allows): both directions start afresh, or the flow would keep its CLOSE state and
/// GC would remove it under the new connection.
#[inline(always)]
fn restart_if_closed(e: &mut CtEntry, peer: Option<*mut CtEntry>) {
    let Some(peer) = peer else {
        return;
    };
    let peer = unsafe { &mut *peer };
    if (e.tcp_seen | peer.tcp_seen) & (tcp_seen::FIN | tcp_seen::RST) == 0 {
        return;
    }
    e.tcp_seen = 0;
    e.flags &= !ct_flags::ASSURED;
    peer.tcp_seen = 0;
    peer.packets = 0;
    peer.flags &= !(ct_flags::ASSURED | ct_flags::WINDOW_KNOWN);
}

/// The opener acknowledged: the handshake is complete once the other side sent its SYN.
#[inline(always)]
fn assure(e: &mut CtEntry, peer: Option<*mut CtEntry>) {
    if let Some(peer) = peer {
        let peer = unsafe { &mut *peer };
        if peer.tcp_seen & tcp_seen::SYN != 0 {
            e.flags |= ct_flags::ASSURED;
            peer.flags |= ct_flags::ASSURED;
        }
    }
}

/// The window scale option of a SYN whose header is `doff` bytes (0 when it has none).
#[inline(always)]
fn wscale(ctx: &TcContext, l4_off: usize, doff: usize) -> u8 {
    let mut walk = Walk {
        skb: ctx.skb.skb,
        off: (l4_off + 20) as u32,
        end: (l4_off + doff.min(60)) as u32,
        wscale: 0,
    };
    // At most 40 bytes of options, one byte each at the least. Through bpf_loop (Linux
    // 5.17+), the verifier checks a step once, not once per iteration of each inlined copy of
    // the loop: the unrolled walk was about half of the programs' verification (issue 14).
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(
            40,
            walk_step as *mut core::ffi::c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    walk.wscale as u8
}

/// Where `walk_step` is in a SYN's options, and the scale it found.
#[repr(C)]
struct Walk {
    skb: *mut aya_ebpf::bindings::__sk_buff,
    off: u32,
    end: u32,
    wscale: u32,
}

/// The byte at `off` of the packet.
fn load_u8(skb: *mut aya_ebpf::bindings::__sk_buff, off: u32) -> Option<u8> {
    let mut b = 0u8;
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            skb as *const core::ffi::c_void,
            off,
            (&raw mut b).cast(),
            1,
        )
    };
    (ret == 0).then_some(b)
}

/// One option of the walk: 0 to go on to the next, 1 to stop.
#[inline(never)]
extern "C" fn walk_step(_i: u32, ctx: *mut core::ffi::c_void) -> i64 {
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    if w.off + 1 > w.end {
        return 1;
    }
    let Some(kind) = load_u8(w.skb, w.off) else {
        return 1;
    };
    match kind {
        0 => 1,
        1 => {
            w.off += 1;
            0
        }
        _ => {
            let Some(len) = load_u8(w.skb, w.off + 1) else {
                return 1;
            };
            if kind == 3 && len == 3 {
                w.wscale = u32::from(load_u8(w.skb, w.off + 2).map_or(0, |s| s.min(MAX_WSCALE)));
                return 1;
            }
            if len < 2 {
                return 1;
            }
            w.off += u32::from(len);
            0
        }
    }
}

/// `a` comes after `b` in sequence space.
#[inline(always)]
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// TCP header flags mapped to the `tcp_seen` bits.
#[inline(always)]
pub fn seen_flags(tcp_flags: u8) -> u8 {
    let mut seen = 0;
    if tcp_flags & SYN != 0 {
        seen |= tcp_seen::SYN;
    }
    if tcp_flags & ACK != 0 {
        seen |= tcp_seen::ACK;
    }
    if tcp_flags & FIN != 0 {
        seen |= tcp_seen::FIN;
    }
    if tcp_flags & RST != 0 {
        seen |= tcp_seen::RST;
    }
    seen
}
