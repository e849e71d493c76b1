//! 100,000 random and mutated frames (20,000 in an emulated kernel) through each program with
//! BPF_PROG_TEST_RUN: every run must succeed (no verifier or bounds failure), and nothing may
//! come out half-translated: no frame leaves the uplink with a managed (private) source,
//! nothing from outside reaches an endpoint address unless translated (a published flow or a
//! reply; routed subnets: only whole packets), and no frame whose checksums were right comes
//! out changed with a wrong one. IPv6 templates: only NAT66 (on the uplink) and hairpin (on
//! the endpoint's veth, to and from host addresses) change an IPv6 frame, its addresses and
//! transport only, with its checksum right when it was; none leaves a managed IPv6 subnet
//! across the uplink untranslated or enters one but translated from the uplink's address, and
//! an endpoint's leave only from its own addresses unless hairpin translated them.
use std::net::{Ipv4Addr, Ipv6Addr};

use bridgenet::datapath::{Datapath, GatewayMode, NetworkOptions, Proto};
use bridgenet_common::{ct_usage, maps, programs};
use bridgenet_tests::{packet, packet::fixture::*};
use etherparse::{NetHeaders, PacketHeaders, TransportHeader};

/// Frames per program. The kernel-dependent part (the verifier's bounds, the helpers) shows in
/// the first thousands; the many more that hunt for rare templates and mutations run on the
/// host's kernel, where all six tests take 5 s rather than 80.
fn frames() -> u32 {
    bridgenet_tests::repetitions(100_000, 20_000)
}
const TC_ACT_REDIRECT: u32 = 7;

/// The shared NAT datapath, with EP1 as the endpoint behind the test-run device; the endpoint
/// program sees frames from it with the templates' source MAC.
fn datapath() -> Datapath {
    let mut dp = nat_datapath();
    let network = u32::from(Ipv4Addr::new(172, 17, 0, 0));
    dp.add_endpoint(
        TEST_RUN_IFINDEX,
        Ipv4Addr::from(EP1),
        [2, 0, 0, 0, 0, 1],
        network,
    )
    .unwrap();
    dp.add_host_addr(Ipv4Addr::from(GATEWAY)).unwrap();
    // EP1's IPv6 network and address.
    dp.add_network6(
        "2001:db8:17::/64".parse().unwrap(),
        Ipv6Addr::from(GATEWAY6),
        &NetworkOptions {
            id: network,
            gateway: Ipv4Addr::from(GATEWAY),
            masquerade: true,
            icc: true,
            internal: false,
            gateway_mode: GatewayMode::Nat,
        },
    )
    .unwrap();
    dp.add_endpoint6(TEST_RUN_IFINDEX, Ipv6Addr::from(EP1_6))
        .unwrap();
    // The uplink's IPv6 address, which NAT66 masquerades EP1's IPv6 with, and EP1's ports
    // published on IPv6 (hairpin reaches them through it and the gateway).
    dp.set_uplink6(TEST_RUN_IFINDEX, Some(Ipv6Addr::from(UPLINK6)))
        .unwrap();
    let any = Ipv6Addr::UNSPECIFIED;
    dp.publish6(Proto::Tcp, any, 8080, Ipv6Addr::from(EP1_6), 80)
        .unwrap();
    dp.publish6(Proto::Udp, any, 5353, Ipv6Addr::from(EP1_6), 53)
        .unwrap();
    let mut usage: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(dp.ebpf_mut().map_mut(maps::CT_USAGE).unwrap()).unwrap();
    usage.set(ct_usage::LIMIT6, 4096, 0).unwrap();
    // State the ICMP error templates quote: a hairpin flow of EP1 to its own published port, a
    // flow of the host, a masqueraded flow of EP1.
    for (program, frame) in [
        (
            programs::ENDPOINT_INGRESS,
            packet::udp_frame(EP1, 5002, HOST, 5353, b"q"),
        ),
        (
            programs::UPLINK_EGRESS,
            packet::tcp_frame(HOST, 40000, SERVER, 80, true, false, b""),
        ),
        (
            programs::UPLINK_EGRESS,
            packet::udp_frame(EP1, 5003, SERVER, 53, b"q"),
        ),
        // A masqueraded IPv6 flow of EP1 (its port below the host's range is kept).
        (
            programs::UPLINK_EGRESS,
            ip6_frame(EP1_6, WORLD6, 17, &udp6(4000, 53)),
        ),
    ] {
        let out = packet::run_tc(&mut dp, program, &frame, 1).unwrap();
        assert_ne!(out.action, TC_ACT_SHOT, "{program}: setting up state");
    }
    dp
}

/// An ICMP port unreachable from EP1 to SERVER quoting (8 bytes of) `quoted`.
fn error_from_ep1(quoted: &[u8]) -> Vec<u8> {
    packet::icmp_error_frame(
        EP1,
        SERVER,
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ),
        &packet::ip_packet(quoted, Some(8)),
    )
}

/// Valid frames of every kind the programs translate, to be mutated.
fn templates() -> Vec<Vec<u8>> {
    let syn = packet::tcp_frame(EP1, 40000, SERVER, 7000, true, false, b"");
    let quoted = packet::ip_packet(&packet::udp_frame(HOST, 61000, SERVER, 53, b"q"), None);
    vec![
        syn.clone(),
        packet::tcp_frame(EP1, 40001, SERVER, 7000, false, true, &[9; 300]),
        packet::udp_frame(EP1, 5000, SERVER, 53, b"query"),
        packet::udp_frame_without_checksum(EP1, 5001, SERVER, 53, b"query"),
        packet::icmp_echo_frame(EP1, SERVER, 77, 1, false),
        packet::tcp_frame(SERVER, 50000, HOST, 8080, true, false, b""),
        packet::udp_frame(SERVER, 50000, HOST, 5353, b"q"),
        packet::icmp_echo_frame(SERVER, HOST, 61000, 1, true),
        packet::icmp_error_frame(
            SERVER,
            HOST,
            etherparse::Icmpv4Type::TimeExceeded(
                etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
            ),
            &quoted,
        ),
        packet::icmp_error_frame(
            EP1,
            SERVER,
            etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::Port,
            ),
            &packet::ip_packet(&syn, Some(8)),
        ),
        // Hairpin from EP1 to its published ports, through the uplink's address and through its
        // gateway, and the replies (the kept source port 5000 makes them match).
        packet::tcp_frame(EP1, 5000, HOST, 8080, true, false, b""),
        packet::tcp_frame(EP1, 80, GATEWAY, 5000, true, true, b""),
        packet::udp_frame(EP1, 5000, GATEWAY, 5353, b"q"),
        packet::udp_frame(EP1, 53, GATEWAY, 5000, b"a"),
        packet::udp_frame_without_checksum(EP1, 5001, HOST, 5353, b"q"),
        // Errors quoting the hairpin flow, the host's flow and the masquerade reply entry.
        error_from_ep1(&packet::udp_frame(HOST, 5353, EP1, 5002, b"q")),
        error_from_ep1(&packet::tcp_frame(SERVER, 80, HOST, 40000, true, true, b"")),
        error_from_ep1(&packet::udp_frame(HOST, 5003, SERVER, 53, b"q")),
        // From outside straight to endpoints: masqueraded, routed, and cut short.
        packet::tcp_frame(SERVER, 50000, EP1, 80, true, false, b""),
        packet::tcp_frame(SERVER, 50000, ROUTED, 22, true, false, b""),
        packet::udp_frame(SERVER, 50000, ROUTED, 53, b"q"),
        packet::icmp_echo_frame(SERVER, ROUTED, 9, 1, false),
    ]
    .into_iter()
    .chain(templates6())
    .collect()
}

const EP1_6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
];
const GATEWAY6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];
const SIBLING6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3,
];
const WORLD6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];
/// EP1's link-local address (its MAC is 02:00:00:00:00:01).
const EP1_LL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0, 0, 1];
const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// An IPv6 frame from `src` to `dst` with the raw `next` header and `rest` after the IPv6
/// header (extension headers, transport).
fn ip6_frame(src: [u8; 16], dst: [u8; 16], next: u8, rest: &[u8]) -> Vec<u8> {
    let mut f = vec![
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd, 0x60, 0, 0, 0,
    ];
    f.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 255]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(rest);
    f
}

/// A UDP header and one byte (checksum 0: the programs do not check it).
fn udp6(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 9, 0, 0, b'x']);
    u
}

/// IPv6 of every kind the programs judge: an endpoint's traffic, Neighbour Discovery, what
/// only routers send, extension headers and fragments; from outside to an endpoint, to the
/// host and to ::1.
fn templates6() -> Vec<Vec<u8>> {
    let udp = udp6;
    let nd = |kind: u8, target: [u8; 16]| {
        let mut m = vec![kind, 0, 0, 0, 0x20, 0, 0, 0];
        m.extend_from_slice(&target);
        m.extend_from_slice(&[if kind == 135 { 1 } else { 2 }, 1, 2, 0, 0, 0, 0, 1]);
        m
    };
    let ns = nd(135, GATEWAY6);
    let na = nd(136, EP1_6);
    let echo = [128, 0, 0, 0, 0, 1, 0, 1];
    let ra = [134, 0, 0, 0, 64, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0];
    let ext = |next: u8| [next, 0, 1, 4, 0, 0, 0, 0];
    let frag = |next: u8, offset: u16| {
        let o = ((offset << 3) | 1).to_be_bytes();
        [next, 0, o[0], o[1], 0, 0, 0, 7]
    };
    vec![
        ip6_frame(EP1_6, SIBLING6, 17, &udp(4000, 53)),
        ip6_frame(EP1_6, GATEWAY6, 58, &echo),
        ip6_frame(EP1_6, WORLD6, 17, &udp(4000, 53)),
        ip6_frame(EP1_LL, ALL_NODES, 58, &ns),
        ip6_frame([0; 16], ALL_NODES, 58, &nd(135, EP1_6)),
        ip6_frame(EP1_LL, GATEWAY6, 58, &na),
        ip6_frame(EP1_LL, ALL_NODES, 58, &ra),
        ip6_frame(
            EP1_LL,
            ALL_NODES,
            0,
            &[&ext(60)[..], &ext(58), &ra].concat(),
        ),
        ip6_frame(EP1_6, SIBLING6, 44, &[&frag(58, 0)[..], &echo].concat()),
        ip6_frame(EP1_6, SIBLING6, 44, &[&frag(58, 9)[..], &echo].concat()),
        ip6_frame(EP1_LL, ALL_NODES, 17, &udp(547, 546)),
        ip6_frame(WORLD6, EP1_6, 17, &udp(4000, 53)),
        // NAT66: the masqueraded flow's reply, a new flow, an echo request.
        ip6_frame(WORLD6, UPLINK6, 17, &udp(53, 4000)),
        ip6_frame(EP1_6, WORLD6, 6, &tcp_syn6(40000, 443)),
        ip6_frame(EP1_6, WORLD6, 58, &echo),
        ip6_frame(WORLD6, GATEWAY6, 58, &echo),
        ip6_frame(
            WORLD6,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            17,
            &udp(1, 2),
        ),
        // Hairpin from EP1 to its ports published on IPv6, through the uplink's address and
        // its gateway, and the replies (the kept source port 5000 makes them match); with
        // checksums, which translation must keep right.
        checksummed6(EP1_6, UPLINK6, true, 5000, 8080),
        checksummed6(EP1_6, GATEWAY6, true, 80, 5000),
        checksummed6(EP1_6, GATEWAY6, false, 5000, 5353),
        checksummed6(EP1_6, GATEWAY6, false, 53, 5000),
        // NAT66 with checksums.
        checksummed6(EP1_6, WORLD6, true, 40002, 443),
        checksummed6(WORLD6, UPLINK6, false, 53, 4000),
    ]
}

/// A TCP SYN (`tcp`) or UDP frame from EP1's MAC with its checksum right.
fn checksummed6(src: [u8; 16], dst: [u8; 16], tcp: bool, sport: u16, dport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(src, dst, 64);
    let mut f = Vec::new();
    if tcp {
        b.tcp(sport, dport, 1, 64240)
            .syn()
            .write(&mut f, b"")
            .unwrap();
    } else {
        b.udp(sport, dport).write(&mut f, b"q").unwrap();
    }
    f
}

/// The IPv6 source and destination of a frame, if it is IPv6.
fn addrs6(frame: &[u8]) -> Option<([u8; 16], [u8; 16])> {
    let is_ipv6 = frame.len() >= 54 && frame[12..14] == [0x86, 0xdd];
    is_ipv6.then(|| {
        (
            frame[22..38].try_into().unwrap(),
            frame[38..54].try_into().unwrap(),
        )
    })
}

/// A TCP SYN header (checksum 0).
fn tcp_syn6(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

/// The uplink's IPv6 address.
const UPLINK6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
];

/// A host IPv6 address: the uplink's or EP1's gateway.
fn host6(addr: [u8; 16]) -> bool {
    addr == UPLINK6 || addr == GATEWAY6
}

/// In EP1's IPv6 subnet, 2001:db8:17::/64.
fn managed6(addr: [u8; 16]) -> bool {
    addr[..8] == EP1_6[..8]
}

/// An endpoint of the routed (not masqueraded) subnet 172.18.0.0/16.
const ROUTED: [u8; 4] = [172, 18, 0, 5];

/// Whether `addr` is in a managed subnet of the fixture (172.17/16 masqueraded, 172.18/16
/// routed).
fn managed(addr: [u8; 4]) -> bool {
    addr[0] == 172 && (addr[1] == 17 || addr[1] == 18)
}

fn destination(frame: &[u8]) -> Option<[u8; 4]> {
    source(frame).map(|_| [frame[30], frame[31], frame[32], frame[33]])
}

/// Whether an IPv4 frame holds its whole IPv4 header and, unless it is a later fragment, the
/// L4 header its protocol needs to be judged (ports, flags, ICMP type), within the length its
/// IPv4 header gives.
fn whole(frame: &[u8]) -> bool {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    if ihl < 20 || total < ihl || 14 + total > frame.len() {
        return false;
    }
    if u16::from_be_bytes([frame[20], frame[21]]) & 0x1fff != 0 {
        return true;
    }
    let l4 = total - ihl;
    match frame[23] {
        6 => l4 >= 20,
        17 | 1 => l4 >= 8,
        _ => true,
    }
}

/// EP1's gateway: a host address too.
const GATEWAY: [u8; 4] = [172, 17, 0, 1];

/// A random frame: pure noise, or a template with random bytes changed and a random length.
fn random_frame(rng: &mut fastrand::Rng, templates: &[Vec<u8>]) -> Vec<u8> {
    if rng.u8(..) < 32 {
        let len = rng.usize(..200);
        return (0..len).map(|_| rng.u8(..)).collect();
    }
    let mut frame = templates[rng.usize(..templates.len())].clone();
    for _ in 0..rng.usize(..4) {
        let at = rng.usize(..frame.len());
        frame[at] = rng.u8(..);
    }
    if rng.bool() {
        frame.truncate(rng.usize(..=frame.len()));
    }
    frame
}

/// Checksums of an IP frame that are right (IPv4 header, full L4), or None if it is not a
/// complete IP frame etherparse can read.
fn right_checksums(frame: &[u8]) -> Option<(bool, bool)> {
    let headers = PacketHeaders::from_ethernet_slice(frame).ok()?;
    if let Some(NetHeaders::Ipv6(ip, _)) = &headers.net {
        return Some((true, right_checksum6(ip, &headers)?));
    }
    let Some(NetHeaders::Ipv4(ip, _)) = &headers.net else {
        return None;
    };
    let ip_ok = ip.header_checksum == ip.calc_header_checksum();
    let payload = headers.payload.slice();
    let l4_ok = match &headers.transport {
        Some(TransportHeader::Tcp(tcp)) => {
            tcp.calc_checksum_ipv4(ip, payload).ok() == Some(tcp.checksum)
        }
        Some(TransportHeader::Udp(udp)) => {
            udp.checksum == 0 || udp.calc_checksum_ipv4(ip, payload).ok() == Some(udp.checksum)
        }
        Some(TransportHeader::Icmpv4(icmp)) => {
            etherparse::Icmpv4Header::with_checksum(icmp.icmp_type.clone(), payload).checksum
                == icmp.checksum
        }
        _ => return None,
    };
    Some((ip_ok, l4_ok))
}

/// Whether an IPv6 frame's transport checksum (over IPv6's pseudo-header) is right.
fn right_checksum6(ip: &etherparse::Ipv6Header, headers: &PacketHeaders) -> Option<bool> {
    let payload = headers.payload.slice();
    let ok = match &headers.transport {
        Some(TransportHeader::Tcp(tcp)) => {
            tcp.calc_checksum_ipv6(ip, payload).ok() == Some(tcp.checksum)
        }
        Some(TransportHeader::Udp(udp)) => {
            udp.calc_checksum_ipv6(ip, payload).ok() == Some(udp.checksum)
        }
        Some(TransportHeader::Icmpv6(icmp)) => {
            let right = etherparse::Icmpv6Header::with_checksum(
                icmp.icmp_type,
                ip.source,
                ip.destination,
                payload,
            )
            .ok()?;
            right.checksum == icmp.checksum
        }
        _ => return None,
    };
    Some(ok)
}

fn refused_by_the_kernel(frame: &[u8]) -> bool {
    match frame.get(12..14) {
        None => true,
        Some([0x08, 0x00]) => frame.len() < 14 + 20,
        Some([0x86, 0xdd]) => frame.len() < 14 + 40,
        Some(_) => false,
    }
}

fn source(frame: &[u8]) -> Option<[u8; 4]> {
    let is_ipv4 = frame.len() >= 34 && frame[12..14] == [0x08, 0x00] && frame[14] >> 4 == 4;
    is_ipv4.then(|| [frame[26], frame[27], frame[28], frame[29]])
}

fn fuzz(program: &str, xdp: bool, seed: u64) {
    let mut dp = datapath();
    let templates = templates();
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut passed, mut dropped, mut refused, mut changed) = (0, 0, 0, 0);
    let mut i = 0;
    let frames = frames();
    while passed + dropped < frames {
        i += 1;
        let frame = random_frame(&mut rng, &templates);
        let result = if xdp {
            packet::run_xdp(&mut dp, program, &frame, 1)
        } else {
            packet::run_tc(&mut dp, program, &frame, 1)
        };
        let out = match result {
            Ok(out) => out,
            // The kernel refuses test runs, before the program runs, on frames shorter than an
            // Ethernet header, or than the IP header their EtherType announces.
            Err(_) if refused_by_the_kernel(&frame) => {
                refused += 1;
                continue;
            }
            Err(err) => panic!("{program}: frame {i} (seed {seed}) {frame:02x?}: {err}"),
        };
        let (pass, drop) = if xdp {
            (XDP_PASS, XDP_DROP)
        } else {
            (TC_ACT_OK, TC_ACT_SHOT)
        };
        // TC programs may send a translated frame straight to its next hop.
        let redirected = !xdp && out.action == TC_ACT_REDIRECT;
        assert!(
            out.action == pass || out.action == drop || redirected,
            "{program}: verdict {}",
            out.action
        );
        if out.action == drop {
            dropped += 1;
            continue;
        }
        passed += 1;
        if program == programs::UPLINK_EGRESS
            && let Some(src) = source(&out.frame)
        {
            assert!(
                !managed(src),
                "frame {i} (seed {seed}) left with a private source: {frame:02x?}"
            );
        }
        // From outside, an endpoint address is reached only through a translation (a
        // published port, a reply of masquerade); the routed subnet's directly, but only by
        // packets that could be judged whole.
        if (program == programs::UPLINK_INGRESS || program == programs::UPLINK_XDP)
            && let Some(dst) = destination(&out.frame)
            && managed(dst)
        {
            let translated = destination(&frame) != Some(dst);
            assert!(
                translated || (dst[1] == 18 && (xdp || whole(&out.frame))),
                "frame {i} (seed {seed}) reached endpoint {dst:?} untranslated: {frame:02x?}"
            );
        }
        // Only NAT66 changes IPv6, on the uplink, and only its addresses and transport: out
        // from a managed source to the uplink's address, in from the uplink's address to an
        // endpoint. Nothing else crosses the uplink out of or into a managed subnet, and the
        // endpoint sends only as itself.
        if let Some((src, dst)) = addrs6(&out.frame) {
            if out.frame != frame {
                let (old_src, old_dst) = addrs6(&frame).expect("IPv6 in");
                let translated = match program {
                    programs::UPLINK_EGRESS => managed6(old_src) && src == UPLINK6,
                    programs::UPLINK_INGRESS => old_dst == UPLINK6 && managed6(dst),
                    // Hairpin: to a host address, and out from one, to EP1 (forward) or to
                    // where EP1 sent from (reply).
                    programs::ENDPOINT_INGRESS => {
                        host6(old_dst) && host6(src) && (dst == EP1_6 || dst == old_src)
                    }
                    _ => false,
                };
                assert!(
                    translated && out.frame[..22] == frame[..22],
                    "frame {i} (seed {seed}): IPv6 changed by {program}: {frame:02x?}"
                );
            }
            assert!(
                !(program == programs::UPLINK_EGRESS && managed6(src)),
                "frame {i} (seed {seed}) left with a managed IPv6 source: {frame:02x?}"
            );
            let translated = addrs6(&frame).is_some_and(|(_, old_dst)| old_dst == UPLINK6);
            assert!(
                !managed6(dst)
                    || (program != programs::UPLINK_XDP
                        && (program != programs::UPLINK_INGRESS || translated)),
                "frame {i} (seed {seed}) reached a managed IPv6 address: {frame:02x?}"
            );
            let hairpin = out.frame != frame && host6(src);
            assert!(
                program != programs::ENDPOINT_INGRESS
                    || hairpin
                    || [EP1_6, EP1_LL, [0; 16]].contains(&src),
                "frame {i} (seed {seed}) left the endpoint as {src:02x?}: {frame:02x?}"
            );
        }
        if out.frame != frame {
            changed += 1;
        }
        if program == programs::ENDPOINT_INGRESS
            && out.frame != frame
            && let Some(src) = source(&out.frame)
        {
            // Only hairpin changes a frame there, and its sources are host addresses: never
            // another endpoint's.
            assert!(
                src == HOST || src == GATEWAY,
                "frame {i} (seed {seed}) left the endpoint as {src:?}: {frame:02x?}"
            );
        }
        if out.frame != frame
            && let Some((ip_ok, l4_ok)) = right_checksums(&frame)
        {
            let (out_ip_ok, out_l4_ok) =
                right_checksums(&out.frame).expect("a translated frame stays parsable");
            assert!(
                !ip_ok || out_ip_ok,
                "frame {i} (seed {seed}): IPv4 checksum broken by translation"
            );
            assert!(
                !l4_ok || out_l4_ok,
                "frame {i} (seed {seed}): L4 checksum broken by translation"
            );
        }
    }
    eprintln!(
        "{program}: {passed} passed ({changed} changed), {dropped} dropped ({refused} more refused by the kernel) (seed {seed}); counters: {:?}",
        dp.stats().unwrap()
    );
    assert!(passed > 0);
    if program == programs::ENDPOINT_INGRESS {
        assert!(changed > 0, "the mix exercises hairpin");
    }
    if program == programs::UPLINK_EGRESS {
        // Malformed frames from endpoints are dropped there (ingress leaves them to the host).
        assert!(dropped > 0, "the mix exercises both verdicts");
    }
}

#[test]
fn random_frames_through_uplink_egress() {
    fuzz(programs::UPLINK_EGRESS, false, 1);
}

#[test]
fn random_frames_through_uplink_ingress() {
    fuzz(programs::UPLINK_INGRESS, false, 2);
}

#[test]
fn random_frames_through_tc_count() {
    fuzz(programs::TC_COUNT, false, 3);
}

#[test]
fn random_frames_through_xdp_count() {
    fuzz(programs::XDP_COUNT, true, 4);
}

#[test]
fn random_frames_through_uplink_xdp() {
    fuzz(programs::UPLINK_XDP, true, 5);
}

#[test]
fn random_frames_through_endpoint_ingress() {
    fuzz(programs::ENDPOINT_INGRESS, false, 6);
}
