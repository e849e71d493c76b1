//! Parsing: Ethernet, IPv4 and the L4 header fields that conntrack and NAT need. One read for
//! the Ethernet and IPv4 headers, through bpf_skb_load_bytes, and one for the L4 fields, in
//! place when the skb's linear part holds them (nearly always) and through the helper when
//! not, so non-linear (GRO/GSO) packets parse like linear ones.
use aya_ebpf::programs::TcContext;
use bridgenet_common::CtKey;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr},
};

use crate::tcp::Segment;

pub const TCP: u8 = IpProto::Tcp as u8;
pub const UDP: u8 = IpProto::Udp as u8;
pub const ICMP: u8 = IpProto::Icmp as u8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

pub const IP_OFF: usize = EthHdr::LEN;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
pub const IP_DADDR_OFF: usize = IP_OFF + 16;
/// Past the longest IPv4 header (60 bytes): the farthest an L4 header starts, which bounds
/// what `read` reads in place (and `header::set_port` writes).
pub const L4_OFF_MAX: usize = IP_OFF + 60;

/// The fields of one IPv4 packet that the datapath works on.
pub struct Packet {
    pub key: CtKey,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// A fragment (MF set or non-zero offset): its ports, if any, cannot be trusted.
    pub fragment: bool,
    /// What window tracking needs of a TCP segment, flags included (TCP only).
    pub tcp: Segment,
    /// ICMP type (ICMP only).
    pub icmp_type: u8,
    /// For an ICMP error: the packet it quotes.
    pub inner: Option<Inner>,
}

/// The packet an ICMP error quotes: the flow it is about, seen in that packet's direction.
pub struct Inner {
    pub key: CtKey,
    /// Offsets of the quoted IPv4 header and of its L4 header.
    pub ip_off: usize,
    pub l4_off: usize,
    /// Whether the quoted L4 checksum is inside the packet (a TCP header may be cut to 8 bytes).
    pub has_l4_csum: bool,
}

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// Whether an ICMP type is an error that quotes a packet of the flow it is about.
pub fn is_icmp_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    )
}

pub enum Parsed {
    /// Neither IPv4 nor IPv6 (ARP, ...): not ours to translate.
    Other,
    /// IPv6, for parse6 (told here so that a program need not read the EtherType again).
    Ipv6,
    Ipv4(Packet),
    /// IPv4 whose headers are cut short or invalid; its addresses when 20 bytes of IPv4 header
    /// are there, for the checks that need nothing else.
    Malformed(Option<Header>),
}

/// What the first 20 bytes of an IPv4 header tell, whatever follows them.
#[derive(Clone, Copy)]
pub struct Header {
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
}

pub fn parse(ctx: &TcContext) -> Parsed {
    let Ok(head) = ctx.load::<Head>(0) else {
        // Shorter than Ethernet and IPv4 headers: IPv4 cut short, or not IPv4.
        return match ctx.load::<u16>(12) {
            Ok(t) if t == EtherType::Ipv4 as u16 => Parsed::Malformed(None),
            Ok(t) if t == EtherType::Ipv6 as u16 => Parsed::Ipv6,
            _ => Parsed::Other,
        };
    };
    if head.eth.ether_type != EtherType::Ipv4 as u16 {
        return if head.eth.ether_type == EtherType::Ipv6 as u16 {
            Parsed::Ipv6
        } else {
            Parsed::Other
        };
    }
    let ip = head.ip;
    let malformed = Parsed::Malformed(Some(Header {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        proto: ip.proto,
    }));
    let ihl = ip.ihl() as usize;
    // The packet ends where its IPv4 header says, not where the frame does (Ethernet pads
    // short frames): the stack trims it there before anything reads the L4 header. 0 is what
    // GSO packets past 64 KiB carry (BIG TCP); the frame's length holds for them only.
    let total = usize::from(ip.tot_len());
    let frame = ctx.len() as usize;
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    let end = if total == 0 && gso {
        frame
    } else {
        IP_OFF + total
    };
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN || end > frame || end < IP_OFF + ihl {
        return malformed;
    }
    let mut packet = Packet {
        key: key_of(&ip),
        l4_off: IP_OFF + ihl,
        fragment: ip.frag_flags() & 1 != 0 || ip.frag_offset() != 0,
        tcp: Segment::default(),
        icmp_type: 0,
        inner: None,
    };
    if packet.fragment && ip.frag_offset() != 0 {
        // No L4 header in a later fragment.
        return Parsed::Ipv4(packet);
    }
    if !read_l4(ctx, &mut packet, end, total) {
        return malformed;
    }
    Parsed::Ipv4(packet)
}

/// Reads the L4 fields of `packet` (its ports, TCP's segment, ICMP's type and quoted packet),
/// in a packet that ends at `end` and whose IPv4 header gives `total` bytes; false when they
/// are cut short.
#[inline(always)]
fn read_l4(ctx: &TcContext, packet: &mut Packet, end: usize, total: usize) -> bool {
    let l4 = packet.l4_off;
    // Translation rewrites the L4 checksum: a header cut before it is malformed, refused before
    // any state is created for it.
    let l4_min = match packet.key.proto {
        TCP => 20,
        UDP | ICMP => 8,
        _ => 0,
    };
    if end < l4 + l4_min {
        return false;
    }
    match packet.key.proto {
        TCP => {
            let Some(h) = read::<[u8; 16]>(ctx, l4) else {
                return false;
            };
            (packet.key.sport, packet.key.dport) = ports(&h);
            packet.tcp = Segment::read(&h, l4, total.saturating_sub(l4 - IP_OFF));
        }
        UDP => {
            let Some(h) = read::<[u8; 4]>(ctx, l4) else {
                return false;
            };
            (packet.key.sport, packet.key.dport) = ports(&h);
        }
        ICMP => {
            let Ok(h) = ctx.load::<[u8; 8]>(l4) else {
                return false;
            };
            let (icmp_type, id) = (h[0], u16::from_ne_bytes([h[4], h[5]]));
            packet.icmp_type = icmp_type;
            match icmp_type {
                ICMP_ECHO_REQUEST => packet.key.sport = id,
                ICMP_ECHO_REPLY => packet.key.dport = id,
                t if is_icmp_error(t) => match parse_inner(ctx, l4 + 8) {
                    Some(inner) => packet.inner = Some(inner),
                    None => return false,
                },
                _ => {}
            }
        }
        _ => {}
    }
    true
}

/// The Ethernet and IPv4 headers, read together (with one helper call: `parse` returns its
/// answer through the caller's stack, and reading them in place, after a possible
/// `bpf_skb_pull_data`, had LLVM leave that pointer in R0, which the verifier refuses).
#[repr(C)]
struct Head {
    eth: EthHdr,
    ip: Ipv4Hdr,
}

/// The Ethernet header and 20 bytes of IPv4 header (what `eth_ipv4` reads, and what
/// `header`'s IPv4 writes need).
pub const HEAD: usize = IP_OFF + Ipv4Hdr::LEN;

/// The packet's first `len` bytes, read and written in place rather than through a helper
/// call each (about 27 ns apiece here); pulled into the skb's linear part first when they are
/// not there. None when the packet is shorter. (A program that writes to its packet has its
/// skb uncloned by the kernel before it runs.)
#[inline(always)]
pub fn linear(ctx: &TcContext, len: usize) -> Option<*mut u8> {
    if ctx.data() + len > ctx.data_end() {
        ctx.pull_data(len as u32).ok()?;
        if ctx.data() + len > ctx.data_end() {
            return None;
        }
    }
    Some(ctx.data() as *mut u8)
}

/// A `T` at `off` (an L4 header's, at most `L4_OFF_MAX`), read in place when the skb's linear
/// part holds it, as nearly every packet's does (a helper call costs about 27 ns here), and
/// through bpf_skb_load_bytes when not; None when the packet is shorter.
#[inline(always)]
fn read<T>(ctx: &TcContext, off: usize) -> Option<T> {
    let at = ctx.data() + off;
    if off <= L4_OFF_MAX && at + core::mem::size_of::<T>() <= ctx.data_end() {
        // SAFETY: within the linear part, checked above.
        return Some(unsafe { (at as *const T).read_unaligned() });
    }
    ctx.load::<T>(off).ok()
}

/// The Ethernet header; None when the packet is shorter.
#[inline(always)]
pub fn eth(ctx: &TcContext) -> Option<EthHdr> {
    let head = linear(ctx, EthHdr::LEN)?;
    // SAFETY: within `EthHdr::LEN` bytes.
    Some(unsafe { head.cast::<EthHdr>().read_unaligned() })
}

/// The Ethernet header and the IPv4 header's first 20 bytes (what an IPv6 packet has there
/// too, for one that is); None when the packet is shorter.
#[inline(always)]
pub fn eth_ipv4(ctx: &TcContext) -> Option<(EthHdr, Ipv4Hdr)> {
    let head = linear(ctx, HEAD)?;
    // SAFETY: both within the bytes `linear` checked.
    unsafe {
        Some((
            head.cast::<EthHdr>().read_unaligned(),
            head.add(IP_OFF).cast::<Ipv4Hdr>().read_unaligned(),
        ))
    }
}

/// The IPv4 source and destination addresses (as they lie in the packet); None when the
/// packet is shorter than the Ethernet header and 20 bytes of IPv4 header.
#[inline(always)]
pub fn ipv4_addrs(ctx: &TcContext) -> Option<(u32, u32)> {
    let head = linear(ctx, HEAD)?;
    // SAFETY: both within the bytes `linear` checked.
    unsafe {
        Some((
            head.add(IP_SADDR_OFF).cast::<u32>().read_unaligned(),
            head.add(IP_DADDR_OFF).cast::<u32>().read_unaligned(),
        ))
    }
}

/// Source and destination ports (network byte order) from the start of a TCP or UDP header.
#[inline(always)]
pub fn ports(h: &[u8]) -> (u16, u16) {
    (
        u16::from_ne_bytes([h[0], h[1]]),
        u16::from_ne_bytes([h[2], h[3]]),
    )
}

/// Parses the IPv4 packet quoted by an ICMP error at `ip_off`: addresses and the first 8 bytes
/// of its L4 header (all RFC 792 promises), the ports or echo identifier from them.
fn parse_inner(ctx: &TcContext, ip_off: usize) -> Option<Inner> {
    let ip = ctx.load::<Ipv4Hdr>(ip_off).ok()?;
    let ihl = ip.ihl() as usize;
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN {
        return None;
    }
    let l4_off = ip_off + ihl;
    let mut key = key_of(&ip);
    let len = ctx.len() as usize;
    let has_l4_csum = match ip.proto {
        TCP | UDP => {
            key.sport = ctx.load::<u16>(l4_off).ok()?;
            key.dport = ctx.load::<u16>(l4_off + 2).ok()?;
            let csum_end = if ip.proto == TCP {
                l4_off + 18
            } else {
                l4_off + 8
            };
            len >= csum_end
        }
        ICMP => {
            let icmp_type = ctx.load::<u8>(l4_off).ok()?;
            let id = ctx.load::<u16>(l4_off + 4).ok()?;
            match icmp_type {
                ICMP_ECHO_REQUEST => key.sport = id,
                ICMP_ECHO_REPLY => key.dport = id,
                // Errors about errors are never translated.
                _ => return None,
            }
            true
        }
        _ => return None,
    };
    Some(Inner {
        key,
        ip_off,
        l4_off,
        has_l4_csum,
    })
}

/// The addresses and protocol of an IPv4 header as a conntrack key; ports are filled in later.
/// Made of two words: written field by field, the padding's `[0; 3]` is a call to a byte loop
/// (see `mem`).
#[inline(always)]
fn key_of(ip: &Ipv4Hdr) -> CtKey {
    const {
        assert!(cfg!(target_endian = "little") && size_of::<CtKey>() == 16);
        assert!(
            core::mem::offset_of!(CtKey, daddr) == 4 && core::mem::offset_of!(CtKey, proto) == 12
        );
    };
    let addrs = u64::from(u32::from_ne_bytes(ip.src_addr))
        | u64::from(u32::from_ne_bytes(ip.dst_addr)) << 32;
    let ports_proto = u64::from(ip.proto) << 32;
    // SAFETY: CtKey is 16 bytes of plain integers: the addresses in the first word, the ports
    // (0) and the protocol (byte 12; the padding after it 0) in the second, little-endian.
    unsafe { core::mem::transmute::<[u64; 2], CtKey>([addrs, ports_proto]) }
}

/// Offset of the L4 checksum, if the protocol has one that covers addresses or ports we change.
pub fn l4_csum_off(proto: u8, l4_off: usize) -> Option<usize> {
    match proto {
        TCP => Some(l4_off + 16),
        UDP => Some(l4_off + 6),
        ICMP => Some(l4_off + 2),
        _ => None,
    }
}
