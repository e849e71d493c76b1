//! TCP window tracking, a simplified form of Linux's tcp_in_window: each direction of a flow
//! keeps the sequence number just past what it sent and the largest window it advertised, so
//! that a RST or FIN changes a flow's state only when its sequence number lies in the window the
//! other side accepts. A spoofed reset must then guess that window, not just the four-tuple.
//! One logic for both tables: IPv4's flows hold both directions in one `CtFlow`, IPv6's in two
//! `CtEntry`s (`Half`).
use aya_ebpf::programs::TcContext;
use bridgenet_common::{CtEntry, CtFlow, ct_flags, direction, outcome, tcp_seen};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// Largest window scale (RFC 7323); also what a flow picked up without its SYN assumes.
const MAX_WSCALE: u8 = 14;

/// The tracking state of one direction of a flow, wherever it is kept.
pub trait Half: Copy {
    fn original(self) -> bool;
    fn td_end(self) -> *mut u32;
    fn td_maxwin(self) -> *mut u32;
    fn wscale(self) -> *mut u8;
    fn seen(self) -> *mut u8;
    fn packets(self) -> *mut u64;
    fn bytes(self) -> *mut u64;
    /// When the flow last saw a packet of this direction (IPv4: of either).
    fn last_seen(self) -> *mut u64;
    fn known(self) -> bool;
    fn set_known(self, known: bool);
    fn assured(self) -> bool;
    fn set_assured(self, assured: bool);
}

/// A packet's direction of a flow, and the other one: what `track` works on. Passed by
/// value, in two registers: on the stack it would take from the callers' frames.
pub trait Sides: Copy {
    type Half: Half;
    fn mine(&self) -> Self::Half;
    /// The other direction; None when it is gone (IPv6: its entry was removed).
    fn other(&self) -> Option<Self::Half>;
}

/// An IPv6 direction: one entry.
impl Half for *mut CtEntry {
    #[inline(always)]
    fn original(self) -> bool {
        unsafe { (*self).direction == direction::ORIGINAL }
    }
    #[inline(always)]
    fn td_end(self) -> *mut u32 {
        unsafe { &raw mut (*self).td_end }
    }
    #[inline(always)]
    fn td_maxwin(self) -> *mut u32 {
        unsafe { &raw mut (*self).td_maxwin }
    }
    #[inline(always)]
    fn wscale(self) -> *mut u8 {
        unsafe { &raw mut (*self).wscale }
    }
    #[inline(always)]
    fn seen(self) -> *mut u8 {
        unsafe { &raw mut (*self).tcp_seen }
    }
    #[inline(always)]
    fn packets(self) -> *mut u64 {
        unsafe { &raw mut (*self).packets }
    }
    #[inline(always)]
    fn bytes(self) -> *mut u64 {
        unsafe { &raw mut (*self).bytes }
    }
    #[inline(always)]
    fn last_seen(self) -> *mut u64 {
        unsafe { &raw mut (*self).last_seen_ns }
    }
    #[inline(always)]
    fn known(self) -> bool {
        unsafe { (*self).flags & ct_flags::WINDOW_KNOWN != 0 }
    }
    #[inline(always)]
    fn set_known(self, known: bool) {
        set_bit(
            unsafe { &raw mut (*self).flags },
            ct_flags::WINDOW_KNOWN,
            known,
        );
    }
    #[inline(always)]
    fn assured(self) -> bool {
        unsafe { (*self).flags & ct_flags::ASSURED != 0 }
    }
    #[inline(always)]
    fn set_assured(self, assured: bool) {
        set_bit(
            unsafe { &raw mut (*self).flags },
            ct_flags::ASSURED,
            assured,
        );
    }
}

/// An IPv4 direction: `dir` of one flow.
#[derive(Clone, Copy)]
pub struct FlowHalf {
    pub flow: *mut CtFlow,
    pub dir: usize,
}

impl Half for FlowHalf {
    #[inline(always)]
    fn original(self) -> bool {
        self.dir == direction::ORIGINAL as usize
    }
    #[inline(always)]
    fn td_end(self) -> *mut u32 {
        unsafe {
            (&raw mut (*self.flow).td_end)
                .cast::<u32>()
                .add(self.dir & 1)
        }
    }
    #[inline(always)]
    fn td_maxwin(self) -> *mut u32 {
        unsafe {
            (&raw mut (*self.flow).td_maxwin)
                .cast::<u32>()
                .add(self.dir & 1)
        }
    }
    #[inline(always)]
    fn wscale(self) -> *mut u8 {
        unsafe {
            (&raw mut (*self.flow).wscale)
                .cast::<u8>()
                .add(self.dir & 1)
        }
    }
    #[inline(always)]
    fn seen(self) -> *mut u8 {
        unsafe {
            (&raw mut (*self.flow).tcp_seen)
                .cast::<u8>()
                .add(self.dir & 1)
        }
    }
    #[inline(always)]
    fn packets(self) -> *mut u64 {
        unsafe {
            (&raw mut (*self.flow).packets)
                .cast::<u64>()
                .add(self.dir & 1)
        }
    }
    #[inline(always)]
    fn bytes(self) -> *mut u64 {
        unsafe {
            (&raw mut (*self.flow).bytes)
                .cast::<u64>()
                .add(self.dir & 1)
        }
    }
    #[inline(always)]
    fn last_seen(self) -> *mut u64 {
        unsafe { &raw mut (*self.flow).last_seen_ns }
    }
    #[inline(always)]
    fn known(self) -> bool {
        unsafe { (*self.flow).flags & ct_flags::WINDOW_KNOWN << (self.dir & 1) != 0 }
    }
    #[inline(always)]
    fn set_known(self, known: bool) {
        let bit = ct_flags::WINDOW_KNOWN << (self.dir & 1);
        set_bit(unsafe { &raw mut (*self.flow).flags }, bit, known);
    }
    /// Shared by both directions.
    #[inline(always)]
    fn assured(self) -> bool {
        unsafe { (*self.flow).flags & ct_flags::ASSURED != 0 }
    }
    #[inline(always)]
    fn set_assured(self, assured: bool) {
        set_bit(
            unsafe { &raw mut (*self.flow).flags },
            ct_flags::ASSURED,
            assured,
        );
    }
}

/// Both directions of an IPv4 flow, from `dir`'s side.
impl Sides for FlowHalf {
    type Half = FlowHalf;
    #[inline(always)]
    fn mine(&self) -> FlowHalf {
        *self
    }
    #[inline(always)]
    fn other(&self) -> Option<FlowHalf> {
        Some(FlowHalf {
            flow: self.flow,
            dir: self.dir ^ 1,
        })
    }
}

#[inline(always)]
fn set_bit(flags: *mut u8, bit: u8, on: bool) {
    unsafe {
        if on {
            *flags |= bit;
        } else {
            *flags &= !bit;
        }
    }
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

/// Records a TCP segment of `sides`' direction: its flags, what it sent, and the window it
/// advertised. PASSED, or DROP_OUT_OF_WINDOW for a RST outside the window (an out-of-window
/// FIN passes but closes nothing).
// A BPF subprogram of its own: it runs for every tracked TCP packet, from several callers.
#[inline(never)]
pub fn track<S: Sides>(ctx: &TcContext, sides: S, seg: &Segment) -> u32 {
    let flags = seg.flags;
    let end = seg.end();
    let win = u32::from(seg.win);
    let e = sides.mine();
    unsafe {
        if flags & SYN != 0 {
            if flags & ACK == 0 && e.original() {
                restart_if_closed(e, sides.other());
            }
            *e.wscale() = wscale(ctx, usize::from(seg.l4_off), usize::from(seg.doff));
            *e.td_end() = end;
            // The window of a SYN is never scaled.
            *e.td_maxwin() = win.max(1);
            e.set_known(true);
            *e.seen() |= seen_flags(flags);
            return outcome::PASSED;
        }
        if flags & (RST | FIN) != 0 && !in_window(e, sides.other(), seg) {
            return if flags & RST != 0 {
                outcome::DROP_OUT_OF_WINDOW
            } else {
                outcome::PASSED
            };
        }
        if !e.known() {
            // Picked up without its SYN (migrated state): learn, and assume the largest scale.
            *e.wscale() = MAX_WSCALE;
            *e.td_end() = end;
            *e.td_maxwin() = win << MAX_WSCALE;
            e.set_known(true);
        } else {
            if after(end, *e.td_end()) {
                *e.td_end() = end;
            }
            let win = win << (*e.wscale()).min(MAX_WSCALE);
            if win > *e.td_maxwin() {
                *e.td_maxwin() = win;
            }
        }
        *e.seen() |= seen_flags(flags);
        if flags & ACK != 0 && !e.assured() && e.original() {
            assure(e, sides.other());
        }
    }
    outcome::PASSED
}

/// Whether a RST or FIN from `e`'s direction lies in the window the other side accepts.
#[inline(always)]
fn in_window<H: Half>(e: H, peer: Option<H>, seg: &Segment) -> bool {
    let flags = seg.flags;
    let Some(peer) = peer else {
        return true;
    };
    let peer_known = peer.known();
    unsafe {
        if !e.known() {
            // Nothing sent yet from this side: only a reset that acknowledges the other side's
            // SYN (a refused connection) is believed. Neither side known: state migrated, loose.
            return !peer_known
                || (flags & RST != 0 && flags & ACK != 0 && seg.ack == *peer.td_end());
        }
        let win = if peer_known {
            (*peer.td_maxwin()).max(1)
        } else {
            1
        };
        // seq in [td_end - win, td_end + win], modulo 2^32.
        seg.seq.wrapping_sub((*e.td_end()).wrapping_sub(win)) <= win.saturating_mul(2)
    }
}

/// A SYN opens a new connection on the tuple of a closed one (TIME_WAIT reuse, as Linux's
/// conntrack allows): both directions start afresh, or the flow would keep its CLOSE state and
/// GC would remove it under the new connection.
#[inline(always)]
fn restart_if_closed<H: Half>(e: H, peer: Option<H>) {
    let Some(peer) = peer else {
        return;
    };
    unsafe {
        if (*e.seen() | *peer.seen()) & (tcp_seen::FIN | tcp_seen::RST) == 0 {
            return;
        }
        *e.seen() = 0;
        e.set_assured(false);
        *peer.seen() = 0;
        *peer.packets() = 0;
        peer.set_assured(false);
        peer.set_known(false);
    }
}

/// The opener acknowledged: the handshake is complete once the other side sent its SYN.
#[inline(always)]
fn assure<H: Half>(e: H, peer: Option<H>) {
    if let Some(peer) = peer
        && unsafe { *peer.seen() } & tcp_seen::SYN != 0
    {
        e.set_assured(true);
        peer.set_assured(true);
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
