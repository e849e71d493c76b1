//! Frames built with etherparse, and BPF_PROG_TEST_RUN of the real programs on them.
use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp};
use bridgenet::datapath::Datapath;
use etherparse::PacketBuilder;

/// What a program did with one frame.
#[derive(Debug)]
pub struct Verdict {
    pub action: u32,
    pub frame: Vec<u8>,
}

/// An Ethernet/IPv4/UDP frame carrying `payload`.
pub fn udp_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, payload)
        .expect("building a UDP frame");
    frame
}

/// An Ethernet/IPv4/TCP SYN frame.
pub fn tcp_syn_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut frame = Vec::with_capacity(builder.size(0));
    builder
        .write(&mut frame, &[])
        .expect("building a TCP frame");
    frame
}

/// Keeps the calling thread on CPU 0, so that its test runs all meet the same CPU's share of
/// the programs' per-CPU caches (`SUBNET_CACHE`, `NEXT_HOPS`).
pub fn on_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is empty; the calls only read and set it.
    unsafe {
        let mut cpus: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut cpus);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const cpus),
            0,
            "pinning the test to CPU 0"
        );
    }
}

/// Runs TC program `name` once on `frame` (`repeat` times when given) and returns its verdict
/// and output frame.
pub fn run_tc(
    dp: &mut Datapath,
    name: &str,
    frame: &[u8],
    repeat: u32,
) -> Result<Verdict, ProgramError> {
    let program: &mut SchedClassifier = dp.program_mut(name).expect("a TC program");
    run(program, frame, repeat)
}

/// Runs XDP program `name` on `frame`.
pub fn run_xdp(
    dp: &mut Datapath,
    name: &str,
    frame: &[u8],
    repeat: u32,
) -> Result<Verdict, ProgramError> {
    let program: &mut Xdp = dp.program_mut(name).expect("an XDP program");
    run(program, frame, repeat)
}

/// Runs TC program `name` once on `frame` as a GSO packet to be cut into segments of
/// `gso_size` bytes of payload (what GRO makes of bulk TCP, or a veth passes from a sender).
pub fn run_tc_gso(
    dp: &mut Datapath,
    name: &str,
    frame: &[u8],
    gso_size: u32,
) -> Result<Verdict, ProgramError> {
    // struct __sk_buff; the test run takes gso_segs and gso_size from it.
    const GSO_SEGS: usize = 164;
    const GSO_SIZE: usize = 176;
    let mut skb = [0u8; SKB_LEN];
    let segments = (frame.len() as u32).div_ceil(gso_size);
    skb[GSO_SEGS..GSO_SEGS + 4].copy_from_slice(&segments.to_ne_bytes());
    skb[GSO_SIZE..GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
    let program: &mut SchedClassifier = dp.program_mut(name).expect("a TC program");
    run_with(program, frame, 1, Some(&skb), None)
}

/// Runs TC program `name` once on `frame` carrying the skb mark `mark`: its verdict, and the
/// mark it left.
pub fn run_tc_marked(
    dp: &mut Datapath,
    name: &str,
    frame: &[u8],
    mark: u32,
) -> Result<(Verdict, u32), ProgramError> {
    let mut skb = [0u8; SKB_LEN];
    skb[SKB_MARK..SKB_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
    let mut skb_out = [0u8; SKB_LEN];
    let program: &mut SchedClassifier = dp.program_mut(name).expect("a TC program");
    let verdict = run_with(program, frame, 1, Some(&skb), Some(&mut skb_out))?;
    let mark = u32::from_ne_bytes(skb_out[SKB_MARK..SKB_MARK + 4].try_into().unwrap());
    Ok((verdict, mark))
}

/// The size of struct __sk_buff, and where its mark is.
const SKB_LEN: usize = 192;
const SKB_MARK: usize = 8;

fn run<P>(program: &mut P, frame: &[u8], repeat: u32) -> Result<Verdict, ProgramError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    run_with(program, frame, repeat, None, None)
}

fn run_with<P>(
    program: &mut P,
    frame: &[u8],
    repeat: u32,
    skb: Option<&[u8]>,
    skb_out: Option<&mut [u8]>,
) -> Result<Verdict, ProgramError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    // Room for programs that grow the frame (encapsulation, ICMP errors).
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = skb;
    opts.ctx_out = skb_out;
    opts.data_out = Some(&mut out);
    opts.repeat = repeat.max(1);
    let result = program.test_run(opts)?;
    out.truncate(result.data_size_out as usize);
    Ok(Verdict {
        action: result.return_value,
        frame: out,
    })
}

/// The addresses, ports (ICMP echo: identifier in both) and protocol of an IPv4 frame, after
/// checking that its IPv4 and L4 checksums are right. Panics on a frame etherparse rejects.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    /// The L4 checksum as found in the frame.
    pub l4_checksum: u16,
}

pub fn inspect(frame: &[u8]) -> Seen {
    use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("a parsable frame");
    let Some(NetHeaders::Ipv4(ip, _)) = &headers.net else {
        panic!("not IPv4: {headers:?}")
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let payload = headers.payload.slice();
    let mut seen = Seen {
        src: ip.source,
        dst: ip.destination,
        sport: 0,
        dport: 0,
        l4_checksum: 0,
    };
    match &headers.transport {
        Some(TransportHeader::Tcp(tcp)) => {
            let right = tcp.calc_checksum_ipv4(ip, payload).unwrap();
            assert_eq!(tcp.checksum, right, "TCP checksum");
            (seen.sport, seen.dport, seen.l4_checksum) =
                (tcp.source_port, tcp.destination_port, tcp.checksum);
        }
        Some(TransportHeader::Udp(udp)) => {
            if udp.checksum != 0 {
                let right = udp.calc_checksum_ipv4(ip, payload).unwrap();
                assert_eq!(udp.checksum, right, "UDP checksum");
            }
            (seen.sport, seen.dport, seen.l4_checksum) =
                (udp.source_port, udp.destination_port, udp.checksum);
        }
        Some(TransportHeader::Icmpv4(icmp)) => {
            let right = etherparse::Icmpv4Header::with_checksum(icmp.icmp_type.clone(), payload);
            assert_eq!(icmp.checksum, right.checksum, "ICMP checksum");
            if let etherparse::Icmpv4Type::EchoRequest(echo)
            | etherparse::Icmpv4Type::EchoReply(echo) = &icmp.icmp_type
            {
                (seen.sport, seen.dport) = (echo.id, echo.id);
            }
            seen.l4_checksum = icmp.checksum;
        }
        other => panic!("unexpected transport {other:?}"),
    }
    seen
}

/// An Ethernet/IPv4/UDP frame whose UDP checksum is 0 (none), as senders may choose.
pub fn udp_frame_without_checksum(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = udp_frame(src, sport, dst, dport, payload);
    // Ethernet 14 + IPv4 20 + UDP checksum at 6.
    frame[40] = 0;
    frame[41] = 0;
    frame
}

/// An Ethernet/IPv4/TCP frame with the given flags (SYN, ACK, ...) and payload.
pub fn tcp_frame(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    syn: bool,
    ack: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240);
    if syn {
        builder = builder.syn();
    }
    if ack {
        builder = builder.ack(1);
    }
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, payload)
        .expect("building a TCP frame");
    frame
}

/// TCP header flags, for `tcp_segment`.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// An Ethernet/IPv4/TCP frame with the given flags, sequence and acknowledgment numbers and a
/// 64240-byte window; a SYN carries MSS and window scale (7) options, as Linux sends them.
#[allow(clippy::too_many_arguments)]
pub fn tcp_segment(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    use etherparse::TcpOptionElement::{MaximumSegmentSize, Noop, WindowScale};
    let mut builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 64240);
    if flags & tcp_flags::SYN != 0 {
        builder = builder
            .syn()
            .options(&[MaximumSegmentSize(1460), Noop, WindowScale(7)])
            .expect("TCP options");
    }
    if flags & tcp_flags::ACK != 0 {
        builder = builder.ack(ack);
    }
    if flags & tcp_flags::FIN != 0 {
        builder = builder.fin();
    }
    if flags & tcp_flags::RST != 0 {
        builder = builder.rst();
    }
    if flags & tcp_flags::PSH != 0 {
        builder = builder.psh();
    }
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, payload)
        .expect("building a TCP frame");
    frame
}

/// An Ethernet/IPv4 ICMP echo request (or reply) frame.
pub fn icmp_echo_frame(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16, reply: bool) -> Vec<u8> {
    let base = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(src, dst, 64);
    let builder = if reply {
        base.icmpv4_echo_reply(id, seq)
    } else {
        base.icmpv4_echo_request(id, seq)
    };
    let mut frame = Vec::with_capacity(builder.size(8));
    builder
        .write(&mut frame, b"pingpong")
        .expect("building an ICMP frame");
    frame
}

/// An ICMP error from `src` to `dst` quoting `quoted` (an IPv4 packet, possibly cut short).
pub fn icmp_error_frame(
    src: [u8; 4],
    dst: [u8; 4],
    icmp_type: etherparse::Icmpv4Type,
    quoted: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .icmpv4(icmp_type);
    let mut frame = Vec::with_capacity(builder.size(quoted.len()));
    builder
        .write(&mut frame, quoted)
        .expect("building an ICMP error");
    frame
}

/// The IPv4 packet a frame carries (what an ICMP error quotes), cut to its IP header and
/// `l4_bytes` bytes of L4 header (None: all of it).
pub fn ip_packet(frame: &[u8], l4_bytes: Option<usize>) -> Vec<u8> {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let end = l4_bytes.map_or(frame.len(), |n| (14 + ihl + n).min(frame.len()));
    frame[14..end].to_vec()
}

/// What an ICMP error frame quotes: addresses and ports (ICMP echo: the identifier in both),
/// after checking the quoted IPv4 checksum and, when `full` (the whole L4 header is quoted),
/// the quoted L4 checksum.
pub fn inspect_quoted(frame: &[u8], full: bool) -> Seen {
    use etherparse::{Ipv4Header, TcpHeader, UdpHeader};
    let quoted = &frame[14 + 20 + 8..];
    let (ip, rest) = Ipv4Header::from_slice(quoted).expect("a quoted IPv4 header");
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "quoted IPv4 checksum"
    );
    let mut seen = Seen {
        src: ip.source,
        dst: ip.destination,
        sport: 0,
        dport: 0,
        l4_checksum: 0,
    };
    let port = |at: usize| u16::from_be_bytes([rest[at], rest[at + 1]]);
    match ip.protocol {
        etherparse::IpNumber::TCP => {
            (seen.sport, seen.dport) = (port(0), port(2));
            if full {
                let (tcp, payload) = TcpHeader::from_slice(rest).expect("quoted TCP header");
                assert_eq!(
                    tcp.checksum,
                    tcp.calc_checksum_ipv4(&ip, payload).unwrap(),
                    "quoted TCP checksum"
                );
                seen.l4_checksum = tcp.checksum;
            }
        }
        etherparse::IpNumber::UDP => {
            (seen.sport, seen.dport) = (port(0), port(2));
            let (udp, payload) = UdpHeader::from_slice(rest).expect("quoted UDP header");
            if full && udp.checksum != 0 {
                assert_eq!(
                    udp.checksum,
                    udp.calc_checksum_ipv4(&ip, payload).unwrap(),
                    "quoted UDP checksum"
                );
            }
            seen.l4_checksum = udp.checksum;
        }
        etherparse::IpNumber::ICMP => {
            (seen.sport, seen.dport) = (port(4), port(4));
            if full {
                let icmp = etherparse::Icmpv4Slice::from_slice(rest).expect("quoted ICMP");
                let right =
                    etherparse::Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload());
                assert_eq!(icmp.checksum(), right.checksum, "quoted ICMP checksum");
            }
            seen.l4_checksum = u16::from_be_bytes([rest[2], rest[3]]);
        }
        other => panic!("unexpected quoted protocol {other:?}"),
    }
    seen
}

/// Addresses, verdicts and the datapath setup the packet tests share.
pub mod fixture {
    use std::net::Ipv4Addr;

    use bridgenet::datapath::{Datapath, LoadOptions, Proto};

    pub const TC_ACT_OK: u32 = 0;
    pub const TC_ACT_SHOT: u32 = 2;
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    /// BPF_PROG_TEST_RUN runs frames as if they crossed the loopback device: it plays the
    /// uplink (or an endpoint's veth) in these tests.
    pub const TEST_RUN_IFINDEX: u32 = 1;
    /// The uplink's address.
    pub const HOST: [u8; 4] = [198, 18, 0, 2];
    pub const SERVER: [u8; 4] = [198, 18, 0, 1];
    pub const CLIENT: [u8; 4] = [198, 18, 5, 5];
    pub const ROUTER: [u8; 4] = [198, 18, 0, 254];
    pub const EP1: [u8; 4] = [172, 17, 0, 2];
    pub const EP2: [u8; 4] = [172, 17, 0, 3];

    /// A datapath with uplink address HOST, the managed subnet 172.17.0.0/16 (masqueraded),
    /// 172.18.0.0/16 (not masqueraded), and tcp 8080 and udp 5353 published to EP1.
    pub fn nat_datapath() -> Datapath {
        nat_datapath_with(&LoadOptions::default())
    }

    pub fn nat_datapath_with(options: &LoadOptions) -> Datapath {
        crate::require_root();
        let mut dp = Datapath::load_with(options).expect("loading the datapath");
        dp.set_uplink_addr(TEST_RUN_IFINDEX, Ipv4Addr::from(HOST))
            .unwrap();
        dp.add_subnet("172.17.0.0/16".parse().unwrap(), true)
            .unwrap();
        dp.add_subnet("172.18.0.0/16".parse().unwrap(), false)
            .unwrap();
        dp.publish(Proto::Tcp, None, 8080, Ipv4Addr::from(EP1), 80)
            .unwrap();
        dp.publish(Proto::Udp, None, 5353, Ipv4Addr::from(EP1), 53)
            .unwrap();
        dp
    }
}
