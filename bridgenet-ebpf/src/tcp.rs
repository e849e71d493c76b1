//! TCP window tracking, a simplified form of Linux's tcp_in_window: each direction's entry
//! keeps the sequence number just past what it sent and the largest window it advertised, so
//! that a RST or FIN changes a flow's state only when its sequence number lies in the window the
//! other side accepts. A spoofed reset must then guess that window, not just the four-tuple.
use aya_ebpf::programs::TcContext;
use bridgenet_common::{CtEntry, ct_flags, direction, outcome, tcp_seen};

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

/// The fields of a segment that window tracking reads (host byte order), read by the parser
/// with the ports in one load: a helper call per field costs more than the rest of tracking.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Segment {
    pub seq: u32,
    pub ack: u32,
    /// Bytes of payload after the header (an IP length has 16 bits).
    pub payload: u16,
    pub win: u16,
    /// Offset of the TCP header in the packet.
    pub l4_off: u16,
    /// Header length in bytes.
    pub doff: u8,
    pub flags: u8,
}

impl Segment {
    /// No TCP segment (another protocol), at `l4_off`. Made of two words: a segment of zero
    /// fields is written by a call to a byte loop (see `mem`).
    #[inline(always)]
    pub fn none(l4_off: usize) -> Self {
        const {
            assert!(cfg!(target_endian = "little") && size_of::<Self>() == 16);
            assert!(core::mem::offset_of!(Self, l4_off) == 12);
        };
        // SAFETY: 16 bytes of plain integers, all 0 but `l4_off` (bytes 12-13, little-endian).
        unsafe { core::mem::transmute::<[u64; 2], Self>([0, (l4_off as u16 as u64) << 32]) }
    }

    /// From the first 16 bytes of a TCP header at `l4_off`, and the IP payload's length from
    /// that header on (0 for a GSO packet of more than 64 KiB, whose length says 0: its payload
    /// counts as none, which only makes the window lag).
    #[inline(always)]
    pub fn read(h: &[u8; 16], l4_off: usize, l4_len: usize) -> Self {
        let doff = (h[12] >> 4) * 4;
        Self {
            seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            payload: l4_len.saturating_sub(usize::from(doff)) as u16,
            win: u16::from_be_bytes([h[14], h[15]]),
            l4_off: l4_off as u16,
            doff,
            flags: h[13],
        }
    }

    /// `seq` plus the payload length, plus one for SYN and for FIN.
    #[inline(always)]
    fn end(&self) -> u32 {
        self.seq
            .wrapping_add(u32::from(self.payload))
            .wrapping_add(u32::from(self.flags & SYN != 0))
            .wrapping_add(u32::from(self.flags & FIN != 0))
    }
}

/// Records a TCP segment of `entry`'s direction: its flags, what it sent, and the window it
/// advertised. PASSED, or DROP_OUT_OF_WINDOW for a RST outside the window (an out-of-window
/// FIN passes but closes nothing).
// A BPF subprogram of its own: it runs for every tracked TCP packet, from several callers.
#[inline(never)]
pub fn track<K: PeerKey>(
    ctx: &TcContext,
    entry: *mut CtEntry,
    peer: *const K,
    seg: &Segment,
) -> u32 {
    let flags = seg.flags;
    let end = seg.end();
    let win = u32::from(seg.win);
    // `peer` may point into `entry` (IPv4's key): read only through the raw pointer, when
    // the other direction is needed.
    let peer_entry = || unsafe { (*peer).peer_entry() };
    let e = unsafe { &mut *entry };
    if flags & SYN != 0 {
        if flags & ACK == 0 && e.direction == direction::ORIGINAL {
            restart_if_closed(e, peer_entry());
        }
        e.wscale = wscale(ctx, usize::from(seg.l4_off), usize::from(seg.doff));
        e.td_end = end;
        // The window of a SYN is never scaled.
        e.td_maxwin = win.max(1);
        e.flags |= ct_flags::WINDOW_KNOWN;
        e.tcp_seen |= seen_flags(flags);
        return outcome::PASSED;
    }
    if flags & (RST | FIN) != 0 && !in_window(e, peer_entry(), seg) {
        return if flags & RST != 0 {
            outcome::DROP_OUT_OF_WINDOW
        } else {
            outcome::PASSED
        };
    }
    if e.flags & ct_flags::WINDOW_KNOWN == 0 {
        // Picked up without its SYN (migrated state): learn, and assume the largest scale.
        e.wscale = MAX_WSCALE;
        e.td_end = end;
        e.td_maxwin = win << MAX_WSCALE;
        e.flags |= ct_flags::WINDOW_KNOWN;
    } else {
        if after(end, e.td_end) {
            e.td_end = end;
        }
        let win = win << e.wscale.min(MAX_WSCALE);
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
fn in_window(e: &CtEntry, peer: Option<*mut CtEntry>, seg: &Segment) -> bool {
    let flags = seg.flags;
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
