//! Parsing IPv6: the extension headers walked to the transport header (bounded), and the
//! fields conntrack and NAT66 need, as `parse` has them for IPv4.
use aya_ebpf::programs::TcContext;
use bridgenet_common::{Ct6Key, outcome};
use network_types::eth::EthHdr;

use crate::{
    parse::{linear, ports},
    tcp::Segment,
};

pub const ETH_P_IPV6: u16 = 0x86dd_u16.to_be();
pub const IP6_OFF: usize = EthHdr::LEN;
pub const IP6_LEN: usize = 40;
pub const SADDR_OFF: usize = IP6_OFF + 8;
pub const DADDR_OFF: usize = IP6_OFF + 24;

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const NO_NEXT: u8 = 59;
const DEST_OPTS: u8 = 60;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP6: u8 = 58;
/// Extension headers walked before the transport header; more is `drop_ext_header`.
const MAX_EXT: usize = 6;

pub const ECHO_REQUEST: u8 = 128;
pub const ECHO_REPLY: u8 = 129;
const DEST_UNREACH: u8 = 1;
const PACKET_TOO_BIG: u8 = 2;
const TIME_EXCEEDED: u8 = 3;
const PARAMETER_PROBLEM: u8 = 4;

/// The transport header of an IPv6 packet, past its extension headers.
pub struct Transport {
    /// Its protocol; `NO_NEXT` when there is none (or it is in a later fragment).
    pub proto: u8,
    pub off: usize,
    /// A Fragment header was walked.
    pub fragment: bool,
}

/// Walks the extension headers from the IPv6 header's next header `proto`: Err(outcome) when
/// they cannot be walked within `MAX_EXT`, or a first fragment does not hold them all and the
/// transport header's start.
#[inline(always)]
pub fn transport(ctx: &TcContext, mut proto: u8) -> Result<Transport, u32> {
    let mut off = IP6_OFF + IP6_LEN;
    let mut fragment = false;
    // One more round than headers: the last finds the transport header.
    for _ in 0..=MAX_EXT {
        let hdr: [u8; 4] = match proto {
            HOP_BY_HOP | ROUTING | DEST_OPTS | AUTH | FRAGMENT => {
                ctx.load(off).map_err(|_| outcome::DROP_EXT_HEADER)?
            }
            _ => {
                // The transport header must be there to be judged (RA guard evasion hides it
                // in a second fragment, RFC 7113).
                // (What bpf_skb_load_bytes of 4 bytes there would check, without the call.)
                if proto != NO_NEXT && (ctx.len() as usize) < off + 4 {
                    return Err(outcome::DROP_EXT_HEADER);
                }
                return Ok(Transport {
                    proto,
                    off,
                    fragment,
                });
            }
        };
        off += match proto {
            // AH counts 4-byte units, less 2; the others 8-byte units, less 1.
            AUTH => (hdr[1] as usize + 2) * 4,
            FRAGMENT => {
                fragment = true;
                if u16::from_be_bytes([hdr[2], hdr[3]]) & !7 != 0 {
                    // A later fragment: its transport header was judged in the first one.
                    return Ok(Transport {
                        proto: NO_NEXT,
                        off,
                        fragment,
                    });
                }
                8
            }
            _ => (hdr[1] as usize + 1) * 8,
        };
        proto = hdr[0];
    }
    Err(outcome::DROP_EXT_HEADER)
}

/// `walk`'s answer when the extension headers cannot be walked (the outcome in the low bits).
const WALK_FAILED: u32 = 1 << 31;

/// Extension headers NAT66 walks past: Hop-by-Hop, Destination Options and Fragment, each
/// once, as a packet carries them; more is `drop_ext_header`. Fewer rounds than `transport`'s
/// keep the walk cheap to verify at each call of `parse6`.
const NAT_EXT: usize = 3;

/// The transport header behind Hop-by-Hop, Destination Options and Fragment headers, packed
/// in one scalar: protocol (bits 0-7; `ROUTING` at a Routing or Authentication header, which
/// NAT66 must not rewrite past), offset (8-23), fragment (24); or `WALK_FAILED` and the
/// outcome.
// A BPF subprogram of its own, returning a scalar: the walk's paths end at its return, so
// that they do not multiply the states of every caller of `parse6`.
#[inline(never)]
fn walk(ctx: &TcContext) -> u32 {
    let pack = |proto: u8, off: usize, fragment: bool| {
        u32::from(proto) | ((off as u32) << 8) | (u32::from(fragment) << 24)
    };
    let Ok(mut proto) = ctx.load::<u8>(IP6_OFF + 6) else {
        return WALK_FAILED | outcome::DROP_MALFORMED;
    };
    let mut off = IP6_OFF + IP6_LEN;
    let mut fragment = false;
    // One more round than headers: the last finds the transport header.
    for _ in 0..=NAT_EXT {
        match proto {
            HOP_BY_HOP | DEST_OPTS | FRAGMENT => {}
            // The destination is not the final one, or AH covers the addresses.
            ROUTING | AUTH => return pack(ROUTING, off, fragment),
            _ => {
                // (What bpf_skb_load_bytes of 4 bytes there would check, without the call.)
                if proto != NO_NEXT && (ctx.len() as usize) < off + 4 {
                    return WALK_FAILED | outcome::DROP_EXT_HEADER;
                }
                return pack(proto, off, fragment);
            }
        }
        let Ok(hdr) = ctx.load::<[u8; 4]>(off) else {
            return WALK_FAILED | outcome::DROP_EXT_HEADER;
        };
        if proto == FRAGMENT {
            fragment = true;
            if u16::from_be_bytes([hdr[2], hdr[3]]) & !7 != 0 {
                // A later fragment: no transport header.
                return pack(NO_NEXT, off, fragment);
            }
            off += 8;
        } else {
            off += (hdr[1] as usize + 1) * 8;
        }
        proto = hdr[0];
    }
    WALK_FAILED | outcome::DROP_EXT_HEADER
}

/// The fields of one IPv6 packet that conntrack and NAT66 work on.
#[derive(Default)]
pub struct Packet6 {
    pub key: Ct6Key,
    /// Offset of the transport header.
    pub l4_off: usize,
    /// A fragment: its ports, if any, cannot be trusted.
    pub fragment: bool,
    /// What window tracking needs of a TCP segment, flags included (TCP only).
    pub tcp: Segment,
    /// ICMPv6 type (ICMPv6 only).
    pub icmp_type: u8,
    /// An ICMPv6 error about a packet NAT66 may have translated: `inner` holds it.
    pub error: bool,
    pub inner: Inner6,
}

/// The packet an ICMPv6 error quotes, as `parse::Inner` for IPv4. The quote holds no
/// extension headers (what NAT66 tracks sends none). Not an `Option`: LLVM's copies of one
/// read registers the verifier refuses on the paths where it is `None`.
#[derive(Default)]
pub struct Inner6 {
    pub key: Ct6Key,
    pub ip_off: usize,
    pub l4_off: usize,
    /// Whether the quoted L4 checksum is inside the packet.
    pub has_l4_csum: bool,
}

/// Parses an IPv6 frame (the caller checked the ethertype) for conntrack and NAT66: Err(outcome)
/// when it is cut short, its extension headers cannot be walked (`drop_ext_header`), or its
/// transport header is cut before the fields NAT66 rewrites. Hop-by-Hop and Destination
/// Options headers are walked past (NAT66 translates what follows them); a Fragment header
/// makes it `fragment`; a Routing or Authentication header gives it `proto` ROUTING, which
/// nothing translates.
// A BPF subprogram of its own: its addresses would otherwise sit in every caller's frame. It
// fills the caller's `packet` and returns PASSED or the outcome: a subprogram cannot return a
// pointer to the caller's stack, which a returned struct is.
#[inline(never)]
pub fn parse6(ctx: &TcContext, packet: &mut Packet6) -> u32 {
    match parse(ctx, packet) {
        Ok(()) => outcome::PASSED,
        Err(drop) => drop,
    }
}

/// Fills `packet` in place: a struct built here and copied would double the frame.
#[inline(always)]
fn parse(ctx: &TcContext, packet: &mut Packet6) -> Result<(), u32> {
    let Some(head) = linear(ctx, IP6_OFF + IP6_LEN) else {
        return Err(outcome::DROP_MALFORMED);
    };
    // SAFETY: within the bytes `linear` checked.
    let ip = unsafe { head.add(IP6_OFF).cast::<Ipv6Head>().read_unaligned() };
    let (saddr, daddr, next) = (ip.saddr, ip.daddr, ip.next);
    let frame = ctx.len() as usize;
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    let payload = usize::from(u16::from_be_bytes(ip.payload));
    // 0 is what GSO packets past 64 KiB carry (BIG TCP); the frame's length holds for them.
    let end = if payload == 0 && gso {
        frame
    } else {
        IP6_OFF + IP6_LEN + payload
    };
    if end > frame {
        return Err(outcome::DROP_MALFORMED);
    }
    let walked = if next == TCP || next == UDP || next == ICMP6 {
        // No extension header, as most packets: no walk.
        u32::from(next) | (((IP6_OFF + IP6_LEN) as u32) << 8)
    } else {
        walk(ctx)
    };
    if walked & WALK_FAILED != 0 {
        return Err(walked & 0xff);
    }
    let t = Transport {
        proto: walked as u8,
        off: ((walked >> 8) & 0xffff) as usize,
        fragment: walked & (1 << 24) != 0,
    };
    packet.key = Ct6Key {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto: t.proto,
        _pad: [0; 3],
    };
    packet.l4_off = t.off;
    packet.fragment = t.fragment;
    packet.tcp = Segment::none(t.off);
    packet.icmp_type = 0;
    packet.error = false;
    let l4 = t.off;
    let l4_min = match t.proto {
        TCP => 20,
        UDP | ICMP6 => 8,
        _ => 0,
    };
    if end < l4 + l4_min {
        return Err(outcome::DROP_MALFORMED);
    }
    match t.proto {
        TCP => {
            let h = ctx
                .load::<[u8; 16]>(l4)
                .map_err(|_| outcome::DROP_MALFORMED)?;
            (packet.key.sport, packet.key.dport) = ports(&h);
            // The IPv6 payload's length from the TCP header on.
            packet.tcp = Segment::read(&h, l4, (IP6_OFF + IP6_LEN + payload).saturating_sub(l4));
        }
        UDP => {
            let h = ctx
                .load::<[u8; 4]>(l4)
                .map_err(|_| outcome::DROP_MALFORMED)?;
            (packet.key.sport, packet.key.dport) = ports(&h);
        }
        ICMP6 => {
            let Ok(h) = ctx.load::<[u8; 8]>(l4) else {
                return Err(outcome::DROP_MALFORMED);
            };
            let (icmp_type, id) = (h[0], u16::from_ne_bytes([h[4], h[5]]));
            packet.icmp_type = icmp_type;
            match icmp_type {
                ECHO_REQUEST => packet.key.sport = id,
                ECHO_REPLY => packet.key.dport = id,
                t if is_error(t) => packet.error = parse_inner(ctx, l4 + 8, &mut packet.inner),
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// The IPv6 header, read in place.
#[repr(C)]
struct Ipv6Head {
    _version_class_flow: [u8; 4],
    payload: [u8; 2],
    next: u8,
    _hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// The IPv6 source and destination addresses, read in place into `saddr` and `daddr`; false
/// when the packet is shorter than the fixed header.
#[inline(always)]
pub fn addrs(ctx: &TcContext, saddr: &mut [u8; 16], daddr: &mut [u8; 16]) -> bool {
    let Some(head) = linear(ctx, IP6_OFF + IP6_LEN) else {
        return false;
    };
    // SAFETY: both within the bytes `linear` checked.
    unsafe {
        *saddr = head.add(SADDR_OFF).cast::<[u8; 16]>().read_unaligned();
        *daddr = head.add(DADDR_OFF).cast::<[u8; 16]>().read_unaligned();
    }
    true
}

/// The IPv6 header's first 8 bytes (version, traffic class and flow label, payload length,
/// next header, hop limit), read in place; None when the packet is shorter than the fixed
/// header.
#[inline(always)]
pub fn ipv6_head(ctx: &TcContext) -> Option<[u8; 8]> {
    let head = linear(ctx, IP6_OFF + IP6_LEN)?;
    // SAFETY: within the bytes `linear` checked.
    Some(unsafe { head.add(IP6_OFF).cast::<[u8; 8]>().read_unaligned() })
}

/// Whether the frame is IPv6.
#[inline(always)]
pub fn is_ipv6(ctx: &TcContext) -> bool {
    ctx.load::<u16>(12).is_ok_and(|t| t == ETH_P_IPV6)
}

/// Whether an ICMPv6 type is an error that quotes a packet of the flow it is about.
#[inline(always)]
pub fn is_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        DEST_UNREACH | PACKET_TOO_BIG | TIME_EXCEEDED | PARAMETER_PROBLEM
    )
}

/// The IPv6 packet quoted at `ip_off`, into `inner`: its addresses and the ports or echo
/// identifier from the first 8 bytes of its transport header. False for what is never
/// translated (a quote with extension headers, an error about an error).
#[inline(always)]
fn parse_inner(ctx: &TcContext, ip_off: usize, inner: &mut Inner6) -> bool {
    let (Ok(saddr), Ok(daddr), Ok(proto)) = (
        ctx.load::<[u8; 16]>(ip_off + 8),
        ctx.load::<[u8; 16]>(ip_off + 24),
        ctx.load::<u8>(ip_off + 6),
    ) else {
        return false;
    };
    let l4_off = ip_off + IP6_LEN;
    inner.key = Ct6Key {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto,
        _pad: [0; 3],
    };
    inner.ip_off = ip_off;
    inner.l4_off = l4_off;
    let len = ctx.len() as usize;
    match proto {
        TCP | UDP => {
            let (Ok(sport), Ok(dport)) = (ctx.load::<u16>(l4_off), ctx.load::<u16>(l4_off + 2))
            else {
                return false;
            };
            inner.key.sport = sport;
            inner.key.dport = dport;
            inner.has_l4_csum = len
                >= if proto == TCP {
                    l4_off + 18
                } else {
                    l4_off + 8
                };
        }
        ICMP6 => {
            let (Ok(kind), Ok(id)) = (ctx.load::<u8>(l4_off), ctx.load::<u16>(l4_off + 4)) else {
                return false;
            };
            match kind {
                ECHO_REQUEST => inner.key.sport = id,
                ECHO_REPLY => inner.key.dport = id,
                _ => return false,
            }
            inner.has_l4_csum = true;
        }
        _ => return false,
    }
    true
}
