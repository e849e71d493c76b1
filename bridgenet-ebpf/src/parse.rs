//! Parsing: Ethernet, IPv4 and the L4 header fields that conntrack and NAT need. Reads go
//! through bpf_skb_load_bytes, so non-linear (GRO/GSO) packets parse like linear ones.
use aya_ebpf::programs::TcContext;
use bridgenet_common::CtKey;
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr},
};

pub const TCP: u8 = IpProto::Tcp as u8;
pub const UDP: u8 = IpProto::Udp as u8;
pub const ICMP: u8 = IpProto::Icmp as u8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

pub const IP_OFF: usize = EthHdr::LEN;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
pub const IP_DADDR_OFF: usize = IP_OFF + 16;

/// The fields of one IPv4 packet that the datapath works on.
pub struct Packet {
    pub key: CtKey,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// A fragment (MF set or non-zero offset): its ports, if any, cannot be trusted.
    pub fragment: bool,
    /// TCP flags byte (TCP only).
    pub tcp_flags: u8,
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
    /// Not IPv4 (ARP, IPv6, ...): not ours to translate.
    Other,
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
    let Ok(ether_type) = ctx.load::<u16>(12) else {
        return Parsed::Other;
    };
    if ether_type != EtherType::Ipv4 as u16 {
        return Parsed::Other;
    }
    let Ok(ip) = ctx.load::<Ipv4Hdr>(IP_OFF) else {
        return Parsed::Malformed(None);
    };
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
        tcp_flags: 0,
        icmp_type: 0,
        inner: None,
    };
    if packet.fragment && ip.frag_offset() != 0 {
        // No L4 header in a later fragment.
        return Parsed::Ipv4(packet);
    }
    let l4 = packet.l4_off;
    // Translation rewrites the L4 checksum: a header cut before it is malformed, refused before
    // any state is created for it.
    let l4_min = match ip.proto {
        TCP => 20,
        UDP | ICMP => 8,
        _ => 0,
    };
    if end < l4 + l4_min {
        return malformed;
    }
    match ip.proto {
        TCP | UDP => {
            let (Ok(sport), Ok(dport)) = (ctx.load::<u16>(l4), ctx.load::<u16>(l4 + 2)) else {
                return malformed;
            };
            packet.key.sport = sport;
            packet.key.dport = dport;
            if ip.proto == TCP {
                let Ok(flags) = ctx.load::<u8>(l4 + 13) else {
                    return malformed;
                };
                packet.tcp_flags = flags;
            }
        }
        ICMP => {
            let (Ok(icmp_type), Ok(id)) = (ctx.load::<u8>(l4), ctx.load::<u16>(l4 + 4)) else {
                return malformed;
            };
            packet.icmp_type = icmp_type;
            match icmp_type {
                ICMP_ECHO_REQUEST => packet.key.sport = id,
                ICMP_ECHO_REPLY => packet.key.dport = id,
                t if is_icmp_error(t) => match parse_inner(ctx, l4 + 8) {
                    Some(inner) => packet.inner = Some(inner),
                    None => return malformed,
                },
                _ => {}
            }
        }
        _ => {}
    }
    Parsed::Ipv4(packet)
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
#[inline(always)]
fn key_of(ip: &Ipv4Hdr) -> CtKey {
    CtKey {
        saddr: u32::from_ne_bytes(ip.src_addr),
        daddr: u32::from_ne_bytes(ip.dst_addr),
        sport: 0,
        dport: 0,
        proto: ip.proto,
        _pad: [0; 3],
    }
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
