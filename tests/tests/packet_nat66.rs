//! BPF_PROG_TEST_RUN of NAT66 on the uplink: what an endpoint sends over IPv6 leaves with the
//! uplink's IPv6 address (TCP, UDP, ICMPv6 echo), its replies come back to the endpoint, and
//! an ICMPv6 Packet Too Big about the flow reaches the endpoint with its quote translated back;
//! every checksum (with IPv6's pseudo-header) stays right. What cannot be translated never
//! leaves: fragments, segments of untracked connections, internal networks, an uplink without
//! an IPv6 address; a reset outside the window and a flood past the limit are dropped. Flows
//! are revoked by the address they were masqueraded with and by their endpoint's address.
//! An endpoint reaches its own port published on IPv6 through host addresses (hairpin).
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{Array, HashMap};
use bridgenet::datapath::{Datapath, GatewayMode, NetworkOptions, conntrack};
use bridgenet_common::{
    Ct6Entry, Ct6Key, NatConfig, ct_usage, direction, maps, outcome,
    port_hash::{self, PortSecret},
    program_id, programs,
};
use bridgenet_tests::{packet, require_root};
use etherparse::PacketBuilder;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
/// Test runs come from the loopback device: it plays the uplink.
const UPLINK_IFINDEX: u32 = 1;
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

const EP: &str = "2001:db8:1::2";
const INTERNAL_EP: &str = "2001:db8:2::2";
const UPLINK: &str = "2001:db8:ff::2";
const SERVER: &str = "2001:db8:ff:1::80";
const ROUTER: &str = "2001:db8:ff::1";

const UDP: u8 = 17;
const ICMP6: u8 = 58;
const PACKET_TOO_BIG: u8 = 2;

const EGRESS: (&str, u32) = (programs::UPLINK_EGRESS, program_id::UPLINK_EGRESS);
const INGRESS: (&str, u32) = (programs::UPLINK_INGRESS, program_id::UPLINK_INGRESS);

fn a(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

fn options(id: u32, internal: bool) -> NetworkOptions {
    NetworkOptions {
        id,
        gateway: Ipv4Addr::new(172, 16 + id as u8, 0, 1),
        masquerade: true,
        icc: true,
        internal,
        gateway_mode: GatewayMode::Nat,
    }
}

/// Network 1 (2001:db8:1::/64) masqueraded, network 2 (2001:db8:2::/64) internal; the uplink
/// (the loopback device of test runs) has UPLINK when `uplink_addr`, and the IPv6 table room
/// for `limit6` entries.
fn datapath(uplink_addr: bool, limit6: u64) -> Datapath {
    require_root();
    let mut dp = Datapath::load().expect("loading the datapath");
    for (id, internal) in [(1, false), (2, true)] {
        let subnet = format!("2001:db8:{id}::/64").parse().unwrap();
        let gateway = format!("2001:db8:{id}::1").parse().unwrap();
        dp.add_network6(subnet, gateway, &options(id, internal))
            .unwrap();
    }
    if uplink_addr {
        let mut uplinks: HashMap<_, u32, [u8; 16]> =
            HashMap::try_from(dp.ebpf_mut().map_mut(maps::UPLINKS6).unwrap()).unwrap();
        uplinks.insert(UPLINK_IFINDEX, a(UPLINK), 0).unwrap();
    }
    let mut usage: Array<_, u64> =
        Array::try_from(dp.ebpf_mut().map_mut(maps::CT_USAGE).unwrap()).unwrap();
    usage.set(ct_usage::LIMIT6, limit6, 0).unwrap();
    dp
}

fn builder(src: &str, dst: &str) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2(MAC_A, MAC_B).ipv6(a(src), a(dst), 64)
}

fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: &str, seq: u32, ack: u32) -> Vec<u8> {
    let mut b = builder(src, dst).tcp(sport, dport, seq, 64240);
    for flag in flags.chars() {
        b = match flag {
            'S' => b.syn(),
            'A' => b.ack(ack),
            'R' => b.rst(),
            'F' => b.fin(),
            'P' => b.psh(),
            _ => unreachable!(),
        };
    }
    let payload = b"data";
    let mut f = Vec::new();
    b.write(&mut f, payload).unwrap();
    f
}

fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let b = builder(src, dst).udp(sport, dport);
    let mut f = Vec::new();
    b.write(&mut f, b"query").unwrap();
    f
}

fn echo(src: &str, dst: &str, id: u16, reply: bool) -> Vec<u8> {
    let b = builder(src, dst);
    let b = if reply {
        b.icmpv6_echo_reply(id, 1)
    } else {
        b.icmpv6_echo_request(id, 1)
    };
    let mut f = Vec::new();
    b.write(&mut f, b"ping").unwrap();
    f
}

/// The one's complement sum of IPv6's pseudo-header and the transport bytes: a right checksum
/// makes it 0xffff.
fn pseudo_sum(src: &[u8], dst: &[u8], next: u8, l4: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(src);
    add(dst);
    add(&(l4.len() as u32).to_be_bytes());
    add(&[0, 0, 0, next]);
    add(l4);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An ICMPv6 Packet Too Big from `src` to `dst` with MTU 1280 quoting `quoted` (an IPv6 packet
/// without its Ethernet header), its checksum right.
fn packet_too_big(src: &str, dst: &str, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![PACKET_TOO_BIG, 0, 0, 0, 0, 0, 5, 0];
    icmp.extend_from_slice(quoted);
    let csum = !pseudo_sum(&a(src), &a(dst), ICMP6, &icmp);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut f = MAC_B.to_vec();
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[ICMP6, 64]);
    f.extend_from_slice(&a(src));
    f.extend_from_slice(&a(dst));
    f.extend_from_slice(&icmp);
    f
}

/// What an IPv6 frame carries, after checking its transport checksum.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    src: Ipv6Addr,
    dst: Ipv6Addr,
    /// Ports, or the echo identifier in both.
    sport: u16,
    dport: u16,
}

fn inspect(frame: &[u8]) -> Seen {
    let ip = &frame[14..];
    assert_eq!(ip[0] >> 4, 6, "IPv6");
    let next = ip[6];
    let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let l4 = &ip[40..40 + len];
    assert_eq!(
        pseudo_sum(&ip[8..24], &ip[24..40], next, l4),
        0xffff,
        "the transport checksum of {next} is right"
    );
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
    let (sport, dport) = match next {
        ICMP6 => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
    };
    Seen {
        src,
        dst,
        sport,
        dport,
    }
}

fn seen(src: &str, sport: u16, dst: &str, dport: u16) -> Seen {
    Seen {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport,
        dport,
    }
}

/// The UDP frame `u` as a first fragment: a Fragment header before UDP.
fn first_fragment(u: &[u8]) -> Vec<u8> {
    let mut f = u[..18].to_vec();
    f.extend_from_slice(&((u.len() - 54 + 8) as u16).to_be_bytes());
    f.extend_from_slice(&[44, 64]);
    f.extend_from_slice(&u[22..54]);
    f.extend_from_slice(&[UDP, 0, 0, 1, 0, 0, 0, 9]);
    f.extend_from_slice(&u[54..]);
    f
}

/// Runs `program` on `frame`: it must pass and count `counted`; the frame it let through.
fn translated(dp: &mut Datapath, program: (&str, u32), frame: &[u8], counted: u32) -> Vec<u8> {
    let before = dp.stat(program.1, counted).unwrap();
    let out = packet::run_tc(dp, program.0, frame, 1).expect("test run");
    assert_eq!(out.action, TC_ACT_OK, "{} passes it", program.0);
    assert_eq!(
        dp.stat(program.1, counted).unwrap(),
        before + 1,
        "{}: counted as {}",
        program.0,
        outcome::NAMES[counted as usize]
    );
    out.frame
}

fn dropped(dp: &mut Datapath, program: (&str, u32), frame: &[u8], reason: u32, what: &str) {
    let before = dp.stat(program.1, reason).unwrap();
    let out = packet::run_tc(dp, program.0, frame, 1).expect("test run");
    assert_eq!(out.action, TC_ACT_SHOT, "{what} is dropped");
    assert_eq!(
        dp.stat(program.1, reason).unwrap(),
        before + 1,
        "{what}: counted as {}",
        outcome::NAMES[reason as usize]
    );
}

/// TCP port 8080 published on `::`, to EP's port 80.
fn publish_8080(dp: &mut Datapath) {
    use bridgenet::datapath::Proto;
    dp.publish6(
        Proto::Tcp,
        Ipv6Addr::UNSPECIFIED,
        8080,
        EP.parse().unwrap(),
        80,
    )
    .unwrap();
}

/// Opens a TCP flow from EP:`sport` to SERVER:443 (SYN out, SYN-ACK back, ACK out): the port
/// the flow got on the uplink.
fn open_tcp(dp: &mut Datapath, sport: u16) -> u16 {
    let out = translated(
        dp,
        EGRESS,
        &tcp(EP, sport, SERVER, 443, "S", 1000, 0),
        outcome::SNAT,
    );
    let out = inspect(&out);
    assert_eq!(
        (out.src, out.dst, out.dport),
        (UPLINK.parse().unwrap(), SERVER.parse().unwrap(), 443),
        "the SYN leaves from the uplink's address"
    );
    let port = out.sport;
    let back = translated(
        dp,
        INGRESS,
        &tcp(SERVER, 443, UPLINK, port, "SA", 5000, 1001),
        outcome::DNAT,
    );
    assert_eq!(
        inspect(&back),
        seen(SERVER, 443, EP, sport),
        "the SYN-ACK comes back"
    );
    translated(
        dp,
        EGRESS,
        &tcp(EP, sport, SERVER, 443, "A", 1001, 5001),
        outcome::SNAT,
    );
    port
}

#[test]
fn tcp_udp_and_echo_leave_with_the_uplink_address_and_their_replies_come_back() {
    let mut dp = datapath(true, 1000);
    // A port in the host's range gets one of the NAT range; one outside it is kept.
    let port = open_tcp(&mut dp, 40000);
    assert!((61000..=65535).contains(&port), "NAT port {port}");
    let data = translated(
        &mut dp,
        INGRESS,
        &tcp(SERVER, 443, UPLINK, port, "PA", 5001, 1005),
        outcome::DNAT,
    );
    assert_eq!(inspect(&data), seen(SERVER, 443, EP, 40000));

    let out = translated(&mut dp, EGRESS, &udp(EP, 5000, SERVER, 53), outcome::SNAT);
    assert_eq!(
        inspect(&out),
        seen(UPLINK, 5000, SERVER, 53),
        "UDP keeps a low port"
    );
    let back = translated(
        &mut dp,
        INGRESS,
        &udp(SERVER, 53, UPLINK, 5000),
        outcome::DNAT,
    );
    assert_eq!(inspect(&back), seen(SERVER, 53, EP, 5000));

    let out = translated(
        &mut dp,
        EGRESS,
        &echo(EP, SERVER, 0x77, false),
        outcome::SNAT,
    );
    assert_eq!(
        inspect(&out),
        seen(UPLINK, 0x77, SERVER, 0x77),
        "echo request"
    );
    let back = translated(
        &mut dp,
        INGRESS,
        &echo(SERVER, UPLINK, 0x77, true),
        outcome::DNAT,
    );
    assert_eq!(inspect(&back), seen(SERVER, 0x77, EP, 0x77), "echo reply");

    // Nobody's flow: the host's own, left alone.
    let f = udp(SERVER, 53, UPLINK, 5001);
    let out = packet::run_tc(&mut dp, INGRESS.0, &f, 1).unwrap();
    assert_eq!(
        (out.action, out.frame),
        (TC_ACT_OK, f),
        "the host's own IPv6 passes as it is"
    );
}

/// NAT66 takes its ports as masquerade does: from the keyed hash of the flow's inside tuple
/// (IPv6's 40-byte key), as `packet_nat` checks for IPv4.
#[test]
fn nat66_ports_follow_the_keyed_hash_of_the_inside_tuple() {
    let mut dp = datapath(true, 1000);
    let secret = PortSecret {
        k0: 0x0123_4567_89ab_cdef,
        k1: 0xfedc_ba98_7654_3210,
    };
    dp.set_port_secret(secret).unwrap();
    let config = NatConfig::default();
    let span = u64::from(config.port_max - config.port_min) + 1;
    for sport in 40000..40008u16 {
        let key = Ct6Key {
            saddr: a(EP),
            daddr: a(SERVER),
            sport: sport.to_be(),
            dport: 443u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let start = config.port_min + (port_hash::of6(&secret, &key) % span) as u16;
        assert_eq!(open_tcp(&mut dp, sport), start, "{sport}");
    }
}

#[test]
fn a_packet_too_big_about_a_flow_reaches_its_endpoint_translated() {
    let mut dp = datapath(true, 1000);
    let port = open_tcp(&mut dp, 40001);
    // The segment a router could not forward, as it left the uplink, quoted whole and cut
    // short past the TCP checksum.
    let segment = tcp(UPLINK, port, SERVER, 443, "PA", 1005, 5001);
    for quote in [&segment[14..], &segment[14..14 + 40 + 18]] {
        let f = packet_too_big(ROUTER, UPLINK, quote);
        let out = translated(&mut dp, INGRESS, &f, outcome::DNAT);
        let outer = inspect(&out);
        assert_eq!(
            (outer.src, outer.dst),
            (ROUTER.parse().unwrap(), EP.parse().unwrap()),
            "the error goes to the endpoint"
        );
        let quoted = &out[14 + 40 + 8..];
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&quoted[8..24]).unwrap());
        let sport = u16::from_be_bytes([quoted[40], quoted[41]]);
        assert_eq!(
            (src, sport),
            (EP.parse().unwrap(), 40001),
            "the quote shows what the endpoint sent"
        );
        if quote.len() == segment.len() - 14 {
            assert_eq!(
                inspect(&[&out[..14], quoted].concat()),
                seen(EP, 40001, SERVER, 443)
            );
        }
    }
    // About no flow: the host's own.
    let stranger = tcp(UPLINK, 1234, SERVER, 443, "PA", 1, 1);
    let f = packet_too_big(ROUTER, UPLINK, &stranger[14..]);
    let out = packet::run_tc(&mut dp, INGRESS.0, &f, 1).unwrap();
    assert_eq!(
        (out.action, out.frame),
        (TC_ACT_OK, f),
        "an error about no flow"
    );
}

#[test]
fn what_cannot_be_translated_never_leaves() {
    let mut dp = datapath(true, 1000);
    dropped(
        &mut dp,
        EGRESS,
        &tcp(EP, 40002, SERVER, 443, "A", 1, 1),
        outcome::DROP_UNTRACKED,
        "a segment of no tracked connection",
    );
    let f = first_fragment(&udp(EP, 5000, SERVER, 53));
    dropped(&mut dp, EGRESS, &f, outcome::DROP_FRAGMENT, "a fragment");
    dropped(
        &mut dp,
        EGRESS,
        &udp(INTERNAL_EP, 5000, SERVER, 53),
        outcome::DROP_UNTRANSLATABLE,
        "out of an internal network",
    );
    let mut cut = tcp(EP, 40003, SERVER, 443, "S", 1, 0);
    cut.truncate(14 + 40 + 12);
    cut[18..20].copy_from_slice(&12u16.to_be_bytes());
    dropped(
        &mut dp,
        EGRESS,
        &cut,
        outcome::DROP_MALFORMED,
        "a TCP header cut short",
    );
    // A protocol masquerade does not translate.
    let mut gre = udp(EP, 5000, SERVER, 53);
    gre[20] = 47;
    dropped(&mut dp, EGRESS, &gre, outcome::DROP_UNTRANSLATABLE, "GRE");

    let mut dp = datapath(false, 1000);
    dropped(
        &mut dp,
        EGRESS,
        &udp(EP, 5000, SERVER, 53),
        outcome::DROP_UNTRANSLATABLE,
        "through an uplink without an IPv6 address",
    );
}

/// The flow's two entries as window tracking left them: (sequence number just past what that
/// direction sent, largest window it advertised), the endpoint's first.
fn windows(dp: &mut Datapath) -> [(u32, u32); 2] {
    let table: HashMap<_, Ct6Key, Ct6Entry> =
        HashMap::try_from(dp.ebpf_mut().map_mut(maps::CONNTRACK6).unwrap()).unwrap();
    let entries: Vec<Ct6Entry> = table.iter().map(|e| e.unwrap().1).collect();
    [direction::ORIGINAL, direction::REPLY].map(|d| {
        let e = entries.iter().find(|e| e.track.direction == d).unwrap();
        (e.track.td_end, e.track.td_maxwin)
    })
}

/// As for IPv4 (`packet_conntrack`): the payload window tracking counts is what the IPv6
/// payload length gives past the TCP header and its options, one more for SYN and FIN.
#[test]
fn window_tracking_counts_each_segments_payload() {
    let mut dp = datapath(true, 1000);
    let port = open_tcp(&mut dp, 40007);
    // Every segment of `tcp` carries 4 bytes; the SYNs one more; no window scale.
    assert_eq!(windows(&mut dp), [(1005, 64240), (5005, 64240)]);
    // 100 bytes after 12 bytes of TCP options (a data offset of 8 words).
    let mut segment = Vec::new();
    builder(EP, SERVER)
        .tcp(40007, 443, 1005, 64240)
        .ack(5005)
        .options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0])
        .unwrap()
        .write(&mut segment, &[7; 100])
        .unwrap();
    translated(&mut dp, EGRESS, &segment, outcome::SNAT);
    assert_eq!(windows(&mut dp)[0], (1105, 64240));
    translated(
        &mut dp,
        INGRESS,
        &tcp(SERVER, 443, UPLINK, port, "FA", 5005, 1105),
        outcome::DNAT,
    );
    assert_eq!(windows(&mut dp)[1], (5010, 64240));
}

#[test]
fn a_reset_outside_the_window_closes_nothing() {
    let mut dp = datapath(true, 1000);
    let port = open_tcp(&mut dp, 40004);
    dropped(
        &mut dp,
        INGRESS,
        &tcp(SERVER, 443, UPLINK, port, "R", 5001 + 10_000_000, 0),
        outcome::DROP_OUT_OF_WINDOW,
        "a spoofed reset far from the window",
    );
    // The flow still works, and a reset in the window goes through.
    translated(
        &mut dp,
        INGRESS,
        &tcp(SERVER, 443, UPLINK, port, "PA", 5001, 1005),
        outcome::DNAT,
    );
    translated(
        &mut dp,
        INGRESS,
        &tcp(SERVER, 443, UPLINK, port, "R", 5005, 0),
        outcome::DNAT,
    );
}

#[test]
fn new_flows_past_the_limit_are_refused_and_tracked_ones_go_on() {
    // Room for two flows.
    let mut dp = datapath(true, 4);
    let port = open_tcp(&mut dp, 40005);
    translated(&mut dp, EGRESS, &udp(EP, 5000, SERVER, 53), outcome::SNAT);
    dropped(
        &mut dp,
        EGRESS,
        &udp(EP, 5001, SERVER, 53),
        outcome::DROP_CT_FULL,
        "a third flow",
    );
    translated(
        &mut dp,
        INGRESS,
        &tcp(SERVER, 443, UPLINK, port, "PA", 5001, 1005),
        outcome::DNAT,
    );
}

/// A full IPv6 table makes room as IPv4's does: a new flow evicts the oldest flows of its
/// side's ring (`EMBRYOS6`) that are not assured, never an assured one, so that a flood of
/// spoofed SYNs to a port published on IPv6 locks neither the endpoints' new flows nor new
/// clients out.
#[test]
fn a_full_ipv6_table_makes_room_by_evicting_the_oldest_unassured_flows() {
    // Room for 32 flows; each side's ring holds the last 16 flows it admitted.
    let mut dp = datapath(true, 64);
    publish_8080(&mut dp);
    let ports: Vec<u16> = (0..4).map(|i| open_tcp(&mut dp, 41000 + i)).collect();
    let syn = |i: u16| {
        tcp(
            &format!("2001:db8:ee::{i:x}"),
            1000 + i,
            UPLINK,
            8080,
            "S",
            1,
            0,
        )
    };
    for i in 0..28 {
        translated(&mut dp, INGRESS, &syn(i), outcome::DNAT);
    }
    assert_eq!(entries6(&mut dp), 64, "full");
    // More of the flood, a new flow of the endpoint's each time, and a new client.
    for i in 28..200 {
        translated(&mut dp, INGRESS, &syn(i), outcome::DNAT);
        translated(
            &mut dp,
            EGRESS,
            &udp(EP, 5000 + i, SERVER, 53),
            outcome::SNAT,
        );
    }
    translated(
        &mut dp,
        INGRESS,
        &tcp(CLIENT, 50000, UPLINK, 8080, "S", 7000, 0),
        outcome::DNAT,
    );
    assert!(entries6(&mut dp) <= 64);
    assert!(dp.conntrack_evicted().unwrap() >= 2 * 172);
    // The assured flows are all still there and still translate.
    for (i, port) in ports.into_iter().enumerate() {
        let back = translated(
            &mut dp,
            INGRESS,
            &tcp(SERVER, 443, UPLINK, port, "PA", 5001, 1001),
            outcome::DNAT,
        );
        assert_eq!(inspect(&back), seen(SERVER, 443, EP, 41000 + i as u16));
    }
}

/// IPv6 entries in CT_USAGE, as the datapath counts them.
fn entries6(dp: &mut Datapath) -> u64 {
    let usage: Array<_, u64> =
        Array::try_from(dp.ebpf_mut().map_mut(maps::CT_USAGE).unwrap()).unwrap();
    usage.get(&ct_usage::ENTRIES6, 0).unwrap()
}

/// Revocation in CONNTRACK6, as the daemon does it when an uplink's IPv6 address changes and
/// when an endpoint goes: the flows masqueraded with the old address, then those of the
/// endpoint's address, go at once with both entries and their room in CT_USAGE, and their
/// replies are translated no more. Another address's flows stay.
#[test]
fn ipv6_flows_are_revoked_by_their_masquerade_address_and_by_their_endpoint() {
    let mut dp = datapath(true, 1000);
    let port = open_tcp(&mut dp, 40002);
    translated(&mut dp, EGRESS, &udp(EP, 5000, SERVER, 53), outcome::SNAT);
    assert_eq!(entries6(&mut dp), 4);

    let other = dp
        .revoke6(conntrack::masqueraded_with6(
            "2001:db8:ff::9".parse().unwrap(),
        ))
        .unwrap();
    assert_eq!(other.entries, 0, "another uplink address's flows");
    let revoked = dp
        .revoke6(conntrack::masqueraded_with6(UPLINK.parse().unwrap()))
        .unwrap();
    assert_eq!((revoked.flows, revoked.entries), (2, 4));
    assert_eq!(entries6(&mut dp), 0);
    for reply in [
        tcp(SERVER, 443, UPLINK, port, "PA", 5001, 1005),
        udp(SERVER, 53, UPLINK, 5000),
    ] {
        let out = packet::run_tc(&mut dp, INGRESS.0, &reply, 1).unwrap();
        assert_eq!(
            (out.action, out.frame),
            (TC_ACT_OK, reply),
            "a revoked flow's reply is the host's, untranslated"
        );
    }

    translated(&mut dp, EGRESS, &udp(EP, 5001, SERVER, 53), outcome::SNAT);
    let other = dp
        .revoke6(conntrack::uses_addr6(INTERNAL_EP.parse().unwrap()))
        .unwrap();
    assert_eq!(other.entries, 0, "another endpoint's flows");
    let revoked = dp
        .revoke6(conntrack::uses_addr6(EP.parse().unwrap()))
        .unwrap();
    assert_eq!((revoked.flows, revoked.entries), (1, 2));
    assert_eq!(entries6(&mut dp), 0);
    let reply = udp(SERVER, 53, UPLINK, 5001);
    let out = packet::run_tc(&mut dp, INGRESS.0, &reply, 1).unwrap();
    assert_eq!((out.action, out.frame), (TC_ACT_OK, reply));
}

const CLIENT: &str = "2001:db8:ff:2::7";
/// A second address of the host's, not the uplink's NAT66 address.
const OTHER_HOST: &str = "2001:db8:ff::3";

/// Ports published on IPv6: a new flow to the uplink's IPv6 address (a port published on `::`)
/// or to the address a port is published on reaches the endpoint with the client's address
/// kept, the endpoint's replies leave with the host's address and port, and a Packet Too Big
/// about a reply reaches the endpoint translated. What is not published, not for that
/// address, or not a flow's first packet is not translated; unpublishing revokes the flows.
#[test]
fn ports_published_on_ipv6_reach_the_endpoint_and_its_replies_leave_with_the_host_address() {
    use bridgenet::datapath::Proto;
    let mut dp = datapath(true, 1000);
    let (any, ep) = (Ipv6Addr::UNSPECIFIED, EP.parse().unwrap());
    dp.publish6(Proto::Tcp, any, 8080, ep, 80).unwrap();
    dp.publish6(Proto::Udp, OTHER_HOST.parse().unwrap(), 5353, ep, 53)
        .unwrap();

    let syn = tcp(CLIENT, 50000, UPLINK, 8080, "S", 7000, 0);
    let inbound = translated(&mut dp, INGRESS, &syn, outcome::DNAT);
    assert_eq!(
        inspect(&inbound),
        seen(CLIENT, 50000, EP, 80),
        "the SYN reaches the endpoint from the client's own address"
    );
    let syn_ack = tcp(EP, 80, CLIENT, 50000, "SA", 9000, 7001);
    let out = translated(&mut dp, EGRESS, &syn_ack, outcome::SNAT);
    assert_eq!(
        inspect(&out),
        seen(UPLINK, 8080, CLIENT, 50000),
        "the reply leaves with the host's address and port"
    );
    let ack = tcp(CLIENT, 50000, UPLINK, 8080, "A", 7001, 9001);
    let inbound = translated(&mut dp, INGRESS, &ack, outcome::DNAT);
    assert_eq!(inspect(&inbound), seen(CLIENT, 50000, EP, 80));
    assert_eq!(entries6(&mut dp), 2, "one flow, two entries");

    // A router on the way back to the client quotes the reply as it left the host.
    let reply = tcp(UPLINK, 8080, CLIENT, 50000, "PA", 9001, 7001);
    let f = packet_too_big(ROUTER, UPLINK, &reply[14..]);
    let out = translated(&mut dp, INGRESS, &f, outcome::DNAT);
    let outer = inspect(&out);
    assert_eq!(
        (outer.src, outer.dst),
        (ROUTER.parse().unwrap(), ep),
        "the Packet Too Big goes to the endpoint"
    );
    let quoted = &out[14 + 40 + 8..];
    assert_eq!(
        inspect(&[&out[..14], quoted].concat()),
        seen(EP, 80, CLIENT, 50000),
        "its quote shows what the endpoint sent"
    );

    // UDP on the one address it is published on, not on the uplink's.
    let query = udp(CLIENT, 40000, OTHER_HOST, 5353);
    let inbound = translated(&mut dp, INGRESS, &query, outcome::DNAT);
    assert_eq!(inspect(&inbound), seen(CLIENT, 40000, EP, 53));
    let answer = translated(&mut dp, EGRESS, &udp(EP, 53, CLIENT, 40000), outcome::SNAT);
    assert_eq!(inspect(&answer), seen(OTHER_HOST, 5353, CLIENT, 40000));
    for (frame, what) in [
        (
            udp(CLIENT, 40001, UPLINK, 5353),
            "a port published on another address",
        ),
        (udp(CLIENT, 40001, UPLINK, 8080), "another protocol"),
        (
            tcp(CLIENT, 50001, UPLINK, 8081, "S", 1, 0),
            "a port not published",
        ),
        (
            tcp(CLIENT, 50001, ROUTER, 8080, "S", 1, 0),
            "a destination that is not the host's",
        ),
    ] {
        let out = packet::run_tc(&mut dp, INGRESS.0, &frame, 1).unwrap();
        assert_eq!(
            (out.action, out.frame),
            (TC_ACT_OK, frame),
            "{what}: the host's"
        );
    }
    dropped(
        &mut dp,
        INGRESS,
        &tcp(CLIENT, 50002, UPLINK, 8080, "A", 1, 1),
        outcome::DROP_UNTRACKED,
        "a segment of no tracked connection to a published port",
    );

    // Unpublished: the flows through the port go at once, the other port's stay.
    dp.unpublish6(Proto::Tcp, any, 8080).unwrap();
    let revoked = dp
        .revoke6(conntrack::uses_mapping6(6, any, 8080, ep, 80))
        .unwrap();
    assert_eq!((revoked.flows, revoked.entries), (1, 2));
    assert_eq!(entries6(&mut dp), 2, "the UDP flow stays");
    for frame in [syn, ack] {
        let out = packet::run_tc(&mut dp, INGRESS.0, &frame, 1).unwrap();
        assert_eq!(
            (out.action, out.frame),
            (TC_ACT_OK, frame),
            "an unpublished port's packets are the host's"
        );
    }
    assert_eq!(dp.published6().unwrap().len(), 1);
}

const ENDPOINT: (&str, u32) = (programs::ENDPOINT_INGRESS, program_id::ENDPOINT_INGRESS);
/// Network 1's IPv6 gateway.
const GATEWAY1: &str = "2001:db8:1::1";

/// EP on the test runs' device, with the uplink's IPv6 address; TCP 8080 and UDP 5353
/// published on `::` to EP's 80 and 53.
fn hairpin_datapath() -> Datapath {
    use bridgenet::datapath::Proto;
    let mut dp = datapath(true, 1000);
    let ep: Ipv6Addr = EP.parse().unwrap();
    dp.set_uplink6(UPLINK_IFINDEX, Some(UPLINK.parse().unwrap()))
        .unwrap();
    // Test runs come from the loopback device: it plays EP's veth too.
    dp.add_endpoint(UPLINK_IFINDEX, Ipv4Addr::new(172, 17, 0, 2), MAC_A, 1)
        .unwrap();
    dp.add_endpoint6(UPLINK_IFINDEX, ep).unwrap();
    let any = Ipv6Addr::UNSPECIFIED;
    dp.publish6(Proto::Tcp, any, 8080, ep, 80).unwrap();
    dp.publish6(Proto::Udp, any, 5353, ep, 53).unwrap();
    dp
}

/// ICMPv6 errors about a hairpin flow reach the other side translated: EP's error (as the
/// server) about what it received goes back from the address the client used, quoting what
/// the client sent; its error (as the client) about the answer goes to the server from its
/// gateway, quoting what the server sent. Every checksum stays right; an error sent elsewhere
/// than where the quoted packet came from is left as it is.
#[test]
fn icmpv6_errors_about_a_hairpin_flow_reach_the_other_side_translated() {
    let mut dp = hairpin_datapath();
    let query = udp(EP, 40000, UPLINK, 5353);
    let received = translated(&mut dp, ENDPOINT, &query, outcome::DNAT);
    let port = inspect(&received).sport;
    assert_eq!(inspect(&received), seen(GATEWAY1, port, EP, 53));
    let quote = |frame: &[u8]| inspect(&[&frame[..14], &frame[14 + 40 + 8..]].concat());

    let error = packet_too_big(EP, GATEWAY1, &received[14..]);
    let out = translated(&mut dp, ENDPOINT, &error, outcome::SNAT);
    let outer = inspect(&out);
    assert_eq!(
        (outer.src, outer.dst),
        (UPLINK.parse().unwrap(), EP.parse().unwrap()),
        "from where the client sent to, to the client"
    );
    assert_eq!(out[14 + 40 + 4..14 + 40 + 8], [0, 0, 5, 0], "the MTU kept");
    assert_eq!(
        quote(&out),
        seen(EP, 40000, UPLINK, 5353),
        "what the client sent"
    );

    let answer = translated(
        &mut dp,
        ENDPOINT,
        &udp(EP, 53, GATEWAY1, port),
        outcome::SNAT,
    );
    assert_eq!(inspect(&answer), seen(UPLINK, 5353, EP, 40000));
    let error = packet_too_big(EP, UPLINK, &answer[14..]);
    let out = translated(&mut dp, ENDPOINT, &error, outcome::DNAT);
    let outer = inspect(&out);
    assert_eq!(
        (outer.src, outer.dst),
        (GATEWAY1.parse().unwrap(), EP.parse().unwrap()),
        "from the server's gateway, to the server"
    );
    assert_eq!(
        quote(&out),
        seen(EP, 53, GATEWAY1, port),
        "what the server sent"
    );

    let astray = packet_too_big(EP, UPLINK, &received[14..]);
    let out = packet::run_tc(&mut dp, ENDPOINT.0, &astray, 1).unwrap();
    assert_eq!(
        (out.action, out.frame),
        (TC_ACT_OK, astray),
        "left as it is"
    );
}

/// Hairpin over IPv6 on the endpoint's veth: EP reaches its own port published on `::` through
/// the uplink's IPv6 address (TCP) and through its gateway (UDP). The forward packets reach EP
/// from its network's gateway with a port of the flow's own, the replies go back from the
/// address and port EP used, every checksum right; a port not published is the host's,
/// untouched; unpublishing revokes the flows.
#[test]
fn an_endpoint_reaches_its_own_port_published_on_ipv6_through_host_addresses() {
    let mut dp = hairpin_datapath();
    let ep: Ipv6Addr = EP.parse().unwrap();

    let syn = tcp(EP, 50000, UPLINK, 8080, "S", 7000, 0);
    let forward = inspect(&translated(&mut dp, ENDPOINT, &syn, outcome::DNAT));
    assert_eq!(
        (forward.src, forward.dst, forward.dport),
        (GATEWAY1.parse().unwrap(), ep, 80),
        "the SYN reaches EP from its gateway"
    );
    let port = forward.sport;
    let syn_ack = tcp(EP, 80, GATEWAY1, port, "SA", 9000, 7001);
    assert_eq!(
        inspect(&translated(&mut dp, ENDPOINT, &syn_ack, outcome::SNAT)),
        seen(UPLINK, 8080, EP, 50000),
        "the SYN-ACK comes from where the SYN went"
    );
    let ack = tcp(EP, 50000, UPLINK, 8080, "A", 7001, 9001);
    assert_eq!(
        inspect(&translated(&mut dp, ENDPOINT, &ack, outcome::DNAT)),
        seen(GATEWAY1, port, EP, 80)
    );

    let query = udp(EP, 40000, GATEWAY1, 5353);
    let forward = inspect(&translated(&mut dp, ENDPOINT, &query, outcome::DNAT));
    assert_eq!((forward.src, forward.dst), (GATEWAY1.parse().unwrap(), ep));
    let answer = udp(EP, 53, GATEWAY1, forward.sport);
    assert_eq!(
        inspect(&translated(&mut dp, ENDPOINT, &answer, outcome::SNAT)),
        seen(GATEWAY1, 5353, EP, 40000)
    );
    assert_eq!(entries6(&mut dp), 4, "two flows, two entries each");

    let host_port = tcp(EP, 50001, UPLINK, 8081, "S", 7000, 0);
    let out = packet::run_tc(&mut dp, ENDPOINT.0, &host_port, 1).unwrap();
    assert_eq!(
        (out.action, out.frame),
        (TC_ACT_OK, host_port),
        "a port not published is the host's"
    );

    let revoked = dp
        .revoke6(conntrack::uses_mapping6(
            6,
            Ipv6Addr::UNSPECIFIED,
            8080,
            ep,
            80,
        ))
        .unwrap();
    assert_eq!((revoked.flows, revoked.entries), (1, 2), "unpublished");
    assert_eq!(entries6(&mut dp), 2);
}

/// `[EP]:53 -> [gateway]:53`, published to `[EP]:53`: the port chosen for the reply tuple
/// cannot be 53, which would make it the original tuple itself.
#[test]
fn a_hairpin_port_whose_reply_tuple_would_be_its_own_gets_another() {
    use bridgenet::datapath::Proto;
    let mut dp = datapath(true, 1000);
    let ep: Ipv6Addr = EP.parse().unwrap();
    dp.add_endpoint(UPLINK_IFINDEX, Ipv4Addr::new(172, 17, 0, 2), MAC_A, 1)
        .unwrap();
    dp.add_endpoint6(UPLINK_IFINDEX, ep).unwrap();
    dp.publish6(Proto::Udp, Ipv6Addr::UNSPECIFIED, 53, ep, 53)
        .unwrap();
    let query = udp(EP, 53, GATEWAY1, 53);
    let forward = inspect(&translated(&mut dp, ENDPOINT, &query, outcome::DNAT));
    assert_eq!(
        (forward.src, forward.dst, forward.dport),
        (GATEWAY1.parse().unwrap(), ep, 53)
    );
    assert_ne!(forward.sport, 53, "the reply tuple is not the original's");
    let answer = udp(EP, 53, GATEWAY1, forward.sport);
    assert_eq!(
        inspect(&translated(&mut dp, ENDPOINT, &answer, outcome::SNAT)),
        seen(GATEWAY1, 53, EP, 53)
    );
}

/// IPv6 gateway mode routed (network 3): what an endpoint opens leaves as it is, tracked, and
/// its replies come in as they are; from outside only a port published at the endpoint's own
/// address gets in (`drop_unpublished` for others), and a nat network's endpoints stay out of
/// reach (`drop_endpoint_direct`).
#[test]
fn ipv6_gateway_mode_routed_leaves_untranslated_and_lets_in_replies_and_published_ports() {
    use bridgenet::datapath::Proto;
    const ROUTED_EP: &str = "2001:db8:3::2";
    let mut dp = datapath(true, 1000);
    let mut routed = options(3, false);
    routed.gateway_mode = GatewayMode::Routed;
    dp.add_network6(
        "2001:db8:3::/64".parse().unwrap(),
        "2001:db8:3::1".parse().unwrap(),
        &routed,
    )
    .unwrap();

    let syn = tcp(ROUTED_EP, 40000, SERVER, 443, "S", 1000, 0);
    assert_eq!(translated(&mut dp, EGRESS, &syn, outcome::SNAT), syn);
    let syn_ack = tcp(SERVER, 443, ROUTED_EP, 40000, "SA", 5000, 1001);
    assert_eq!(
        translated(&mut dp, INGRESS, &syn_ack, outcome::DNAT),
        syn_ack
    );
    assert_eq!(entries6(&mut dp), 2, "tracked");

    dropped(
        &mut dp,
        INGRESS,
        &tcp(CLIENT, 50000, ROUTED_EP, 80, "S", 7000, 0),
        outcome::DROP_UNPUBLISHED,
        "a SYN to a port not published",
    );
    let ep: Ipv6Addr = ROUTED_EP.parse().unwrap();
    dp.publish6(Proto::Tcp, ep, 80, ep, 80).unwrap();
    let syn = tcp(CLIENT, 50000, ROUTED_EP, 80, "S", 7000, 0);
    assert_eq!(translated(&mut dp, INGRESS, &syn, outcome::DNAT), syn);
    let syn_ack = tcp(ROUTED_EP, 80, CLIENT, 50000, "SA", 9000, 7001);
    assert_eq!(
        translated(&mut dp, EGRESS, &syn_ack, outcome::SNAT),
        syn_ack
    );

    dropped(
        &mut dp,
        INGRESS,
        &tcp(CLIENT, 50001, EP, 80, "S", 7000, 0),
        outcome::DROP_ENDPOINT_DIRECT,
        "a SYN to a nat network's endpoint",
    );
}

/// CNI's `nonMasqueradeCIDRs` with an IPv6 prefix: towards it the network's endpoints leave
/// with their own addresses (untracked: nothing is translated, first fragments included), and
/// from it packets reach them directly, in TC and XDP; other destinations are masqueraded and
/// other sources kept away as before, and another network is not concerned.
#[test]
fn non_masquerade_ipv6_prefixes_pass_both_ways_untranslated() {
    const XDP_PASS: u32 = 2;
    const PEER: &str = "2001:db8:99::5";
    let mut dp = datapath(true, 1000);
    let untouched = |dp: &mut Datapath, program: &str, frame: &[u8], what: &str| {
        let out = packet::run_tc(dp, program, frame, 1).expect("test run");
        assert_eq!(out.action, TC_ACT_OK, "{what} passes");
        assert_eq!(out.frame, frame, "{what} passes unchanged");
    };
    // The network's IPv4 prefix is kept beside it in its own map.
    dp.set_non_masquerade(
        1,
        &[
            "198.19.0.0/16".parse().unwrap(),
            "2001:db8:99::/48".parse().unwrap(),
        ],
    )
    .unwrap();

    untouched(
        &mut dp,
        EGRESS.0,
        &tcp(EP, 40000, PEER, 7000, "S", 1, 0),
        "a SYN",
    );
    // Not a SYN either: nothing is tracked, so nothing is untracked.
    let data = tcp(EP, 40000, PEER, 7000, "PA", 2, 9);
    untouched(&mut dp, EGRESS.0, &data, "a data segment");
    untouched(&mut dp, EGRESS.0, &udp(EP, 5000, PEER, 53), "a datagram");
    untouched(
        &mut dp,
        EGRESS.0,
        &echo(EP, PEER, 7, false),
        "an echo request",
    );
    let fragment = first_fragment(&udp(EP, 5000, PEER, 53));
    untouched(&mut dp, EGRESS.0, &fragment, "a first fragment");
    assert_eq!(entries6(&mut dp), 0, "nothing is tracked");

    let answer = tcp(PEER, 7000, EP, 40000, "SA", 9, 2);
    untouched(&mut dp, INGRESS.0, &answer, "the answer");
    let out = packet::run_xdp(&mut dp, programs::UPLINK_XDP, &answer, 1).expect("test run");
    assert_eq!(out.action, XDP_PASS, "XDP lets the answer in");
    // Another source is still kept away from the endpoint, another destination masqueraded.
    dropped(
        &mut dp,
        INGRESS,
        &tcp(SERVER, 7000, EP, 40000, "SA", 9, 2),
        outcome::DROP_ENDPOINT_DIRECT,
        "another source straight to the endpoint",
    );
    let out = translated(&mut dp, EGRESS, &udp(EP, 5000, SERVER, 53), outcome::SNAT);
    assert_eq!(inspect(&out).src, UPLINK.parse::<Ipv6Addr>().unwrap());
    // Another network's endpoints are not concerned.
    dropped(
        &mut dp,
        EGRESS,
        &udp(INTERNAL_EP, 5000, PEER, 53),
        outcome::DROP_UNTRANSLATABLE,
        "another network's endpoint to the prefix",
    );

    // Only the IPv4 prefix left: the endpoint's IPv6 address no longer leaves nor is reached.
    dp.set_non_masquerade(1, &["198.19.0.0/16".parse().unwrap()])
        .unwrap();
    dropped(
        &mut dp,
        EGRESS,
        &data,
        outcome::DROP_UNTRACKED,
        "the data segment",
    );
    dropped(
        &mut dp,
        INGRESS,
        &answer,
        outcome::DROP_ENDPOINT_DIRECT,
        "the answer",
    );
    let trie: aya::maps::lpm_trie::LpmTrie<_, bridgenet_common::NonMasqueradeKey, u32> =
        aya::maps::lpm_trie::LpmTrie::try_from(dp.ebpf_mut().map(maps::NON_MASQUERADE).unwrap())
            .unwrap();
    assert_eq!(trie.keys().count(), 1, "the IPv4 prefix stays");
}

/// `frame` with an 8-byte extension header `kind` (Hop-by-Hop 0, Destination Options 60,
/// Routing 43) between IPv6 and its transport header; the transport checksum stays right.
fn with_ext(frame: &[u8], kind: u8) -> Vec<u8> {
    with_ext_of(frame, kind, 8)
}

/// `with_ext` with a header of `len` bytes (a multiple of 8).
fn with_ext_of(frame: &[u8], kind: u8, len: usize) -> Vec<u8> {
    let mut f = frame[..54].to_vec();
    let next = f[20];
    f[20] = kind;
    let payload = u16::from_be_bytes([f[18], f[19]]) + len as u16;
    f[18..20].copy_from_slice(&payload.to_be_bytes());
    // PadN over the header's options (Routing: type 0 with no segments left).
    f.extend_from_slice(&[next, (len / 8 - 1) as u8, 1, (len - 4) as u8]);
    f.resize(54 + len, 0);
    f.extend_from_slice(&frame[54..]);
    f
}

/// The inverse of `with_ext`, for `inspect`; asserts the header is still there.
fn without_ext(frame: &[u8], kind: u8) -> Vec<u8> {
    without_ext_of(frame, kind, 8)
}

/// The inverse of `with_ext_of`.
fn without_ext_of(frame: &[u8], kind: u8, len: usize) -> Vec<u8> {
    assert_eq!(frame[20], kind, "the extension header stays");
    let mut f = frame[..54].to_vec();
    f[20] = frame[54];
    let payload = u16::from_be_bytes([f[18], f[19]]) - len as u16;
    f[18..20].copy_from_slice(&payload.to_be_bytes());
    f.extend_from_slice(&frame[54 + len..]);
    f
}

/// NAT66 walks past Hop-by-Hop and Destination Options headers: a flow whose packets carry
/// them is masqueraded and its replies come back, and a port published on IPv6 is reached
/// through them, each checksum right. A Routing header (the destination is not the final
/// one) is never translated, and headers past the walk's bound are `drop_ext_header`.
#[test]
fn nat66_translates_packets_with_hop_by_hop_and_destination_options() {
    const DEST_OPTS: u8 = 60;
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    let mut dp = datapath(true, 1000);
    // Headers of 8 bytes, and of 32, which put the ports past where the rewrite writes them
    // in place.
    for (sport, len) in [(41000, 8), (41001, 32)] {
        let syn = with_ext_of(&tcp(EP, sport, SERVER, 443, "S", 1000, 0), DEST_OPTS, len);
        let out = translated(&mut dp, EGRESS, &syn, outcome::SNAT);
        let seen_out = inspect(&without_ext_of(&out, DEST_OPTS, len));
        assert_eq!(
            (seen_out.src, seen_out.dst, seen_out.dport),
            (UPLINK.parse().unwrap(), SERVER.parse().unwrap(), 443),
            "the SYN leaves from the uplink's address ({len} bytes of header)"
        );
        let back = with_ext_of(
            &tcp(SERVER, 443, UPLINK, seen_out.sport, "SA", 5000, 1001),
            HOP_BY_HOP,
            len,
        );
        let inbound = translated(&mut dp, INGRESS, &back, outcome::DNAT);
        assert_eq!(
            inspect(&without_ext_of(&inbound, HOP_BY_HOP, len)),
            seen(SERVER, 443, EP, sport),
            "the SYN-ACK comes back ({len} bytes of header)"
        );
    }

    publish_8080(&mut dp);
    let client = "2001:db8:ff:2::9";
    let syn = with_ext(&tcp(client, 50000, UPLINK, 8080, "S", 7000, 0), DEST_OPTS);
    let inbound = translated(&mut dp, INGRESS, &syn, outcome::DNAT);
    assert_eq!(
        inspect(&without_ext(&inbound, DEST_OPTS)),
        seen(client, 50000, EP, 80),
        "a published port is reached through the header"
    );

    dropped(
        &mut dp,
        EGRESS,
        &with_ext(&udp(EP, 5000, SERVER, 53), ROUTING),
        outcome::DROP_UNTRANSLATABLE,
        "a Routing header",
    );
    // Three headers are walked (as many as a packet carries: Hop-by-Hop, Destination
    // Options, Fragment); a fourth is past the bound.
    let mut deep = udp(EP, 5000, SERVER, 53);
    for _ in 0..3 {
        deep = with_ext(&deep, DEST_OPTS);
    }
    translated(&mut dp, EGRESS, &deep, outcome::SNAT);
    let mut deeper = udp(EP, 5001, SERVER, 53);
    for _ in 0..4 {
        deeper = with_ext(&deeper, DEST_OPTS);
    }
    dropped(
        &mut dp,
        EGRESS,
        &deeper,
        outcome::DROP_EXT_HEADER,
        "four extension headers",
    );
}
