//! BPF_PROG_TEST_RUN of the verdict holes of issue 10: a managed source never leaves the uplink
//! untranslated (ICMP errors quoting hairpin, host and masquerade-reply entries included), and
//! the checks that need only the IPv4 header run on uplink ingress whatever follows it, with
//! what cannot be judged for an endpoint address dropped as malformed.
use std::net::Ipv4Addr;

use bridgenet::datapath::{Datapath, Proto, filter::Rule};
use bridgenet_common::{outcome, program_id, programs};
use bridgenet_tests::{packet, packet::fixture::*};
use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};

/// EP1's gateway: a host address (hairpin's source).
const GATEWAY: [u8; 4] = [172, 17, 0, 1];
/// An endpoint of the routed (not masqueraded) subnet 172.18.0.0/16.
const ROUTED: [u8; 4] = [172, 18, 0, 5];

/// The shared NAT datapath with EP1 behind the test-run device (which plays its veth as well as
/// the uplink), its gateway a host address.
fn datapath() -> Datapath {
    let mut dp = nat_datapath();
    dp.add_endpoint(
        TEST_RUN_IFINDEX,
        Ipv4Addr::from(EP1),
        [2, 0, 0, 0, 0, 1],
        u32::from(Ipv4Addr::new(172, 17, 0, 0)),
    )
    .unwrap();
    dp.add_host_addr(Ipv4Addr::from(GATEWAY)).unwrap();
    dp
}

fn port_unreachable() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
}

/// Runs uplink_egress on an ICMP error from EP1 to SERVER quoting `quoted` (a frame): it must
/// be dropped as untranslatable, never leave with EP1's address.
fn egress_error_dropped(dp: &mut Datapath, quoted: &[u8], what: &str) {
    let error = packet::icmp_error_frame(
        EP1,
        SERVER,
        port_unreachable(),
        &packet::ip_packet(quoted, Some(8)),
    );
    let before = dp
        .stat(program_id::UPLINK_EGRESS, outcome::DROP_UNTRANSLATABLE)
        .unwrap();
    let out = packet::run_tc(dp, programs::UPLINK_EGRESS, &error, 1).unwrap();
    let src = packet::inspect(&out.frame).src;
    assert_eq!(
        out.action, TC_ACT_SHOT,
        "{what}: an ICMP error left the uplink from {src:?}"
    );
    assert_eq!(
        dp.stat(program_id::UPLINK_EGRESS, outcome::DROP_UNTRANSLATABLE)
            .unwrap(),
        before + 1,
        "{what}: counted as drop_untranslatable"
    );
}

#[test]
fn an_icmp_error_quoting_a_hairpin_flow_never_leaves_with_the_endpoint_address() {
    let mut dp = datapath();
    // EP1 opens a hairpin flow to its own published port through the uplink's address.
    let hairpin = packet::udp_frame(EP1, 5000, HOST, 5353, b"q");
    let out = packet::run_tc(&mut dp, programs::ENDPOINT_INGRESS, &hairpin, 1).unwrap();
    assert_ne!(out.action, TC_ACT_SHOT, "the hairpin flow opens");
    assert!(
        dp.conntrack()
            .unwrap()
            .iter()
            .any(|(_, e)| e.action == bridgenet_common::action::HAIRPIN),
        "a hairpin entry exists"
    );
    // The errors EP1 could send about it: quoting the way in (its reverse is the hairpin's
    // original entry), and quoting the translated packet it received (the reply entry).
    let quote_in = packet::udp_frame(HOST, 5353, EP1, 5000, b"q");
    egress_error_dropped(&mut dp, &quote_in, "quoting the hairpin's way in");
    // The reply entry: EP1's port 53 back to its gateway, at the port hairpin chose.
    let reply_port = dp
        .conntrack()
        .unwrap()
        .iter()
        .find(|(k, e)| {
            e.action == bridgenet_common::action::HAIRPIN
                && k.saddr == u32::from_ne_bytes(EP1)
                && u16::from_be(k.sport) == 53
        })
        .map(|(k, _)| u16::from_be(k.dport))
        .expect("the hairpin reply entry");
    let quote_back = packet::udp_frame(GATEWAY, reply_port, EP1, 53, b"q");
    egress_error_dropped(
        &mut dp,
        &quote_back,
        "quoting the hairpin's translated packet",
    );
}

#[test]
fn an_icmp_error_quoting_a_host_flow_or_a_masquerade_reply_never_leaves_untranslated() {
    let mut dp = datapath();
    // A flow of the host itself (tracked as action HOST).
    let host_syn = packet::tcp_frame(HOST, 40000, SERVER, 80, true, false, b"");
    let out = packet::run_tc(&mut dp, programs::UPLINK_EGRESS, &host_syn, 1).unwrap();
    assert_eq!(out.action, TC_ACT_OK);
    let quote = packet::tcp_frame(SERVER, 80, HOST, 40000, true, true, b"");
    egress_error_dropped(&mut dp, &quote, "quoting a host flow");

    // A masqueraded flow of EP1 (port 5000 kept): an error quoting the translated packet the
    // other way matches the reply entry (a DNAT one), which translates the destination only.
    let first = packet::udp_frame(EP1, 5000, SERVER, 53, b"q");
    let out = packet::run_tc(&mut dp, programs::UPLINK_EGRESS, &first, 1).unwrap();
    assert_eq!(out.action, TC_ACT_OK);
    assert_eq!(packet::inspect(&out.frame).src, HOST);
    let quote = packet::udp_frame(HOST, 5000, SERVER, 53, b"q");
    egress_error_dropped(&mut dp, &quote, "quoting a masquerade reply entry");

    // The error EP1 may send about its own masqueraded flow still leaves, translated.
    let quote = packet::udp_frame(SERVER, 53, EP1, 5000, b"a");
    let error = packet::icmp_error_frame(
        EP1,
        SERVER,
        port_unreachable(),
        &packet::ip_packet(&quote, None),
    );
    let out = packet::run_tc(&mut dp, programs::UPLINK_EGRESS, &error, 1).unwrap();
    assert_eq!(out.action, TC_ACT_OK);
    assert_eq!(packet::inspect(&out.frame).src, HOST);
}

/// A TCP segment from SERVER to `dst` cut to `tcp_bytes` bytes of its header (the IPv4 header
/// says so), padded to `frame_len` bytes as Ethernet pads short frames.
fn truncated_tcp(dst: [u8; 4], tcp_bytes: usize, frame_len: usize) -> Vec<u8> {
    let full = packet::tcp_frame(SERVER, 40000, dst, 22, true, false, b"");
    let mut frame = full[..14 + 20 + tcp_bytes].to_vec();
    let total = (20 + tcp_bytes) as u16;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    // The IPv4 checksum for the new total length.
    frame[24..26].copy_from_slice(&[0, 0]);
    let header = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..34])
        .unwrap()
        .to_header();
    frame[24..26].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
    frame.resize(frame_len.max(frame.len()), 0);
    frame
}

fn ingress(dp: &mut Datapath, frame: &[u8]) -> u32 {
    packet::run_tc(dp, programs::UPLINK_INGRESS, frame, 1)
        .expect("test run")
        .action
}

fn dropped_for(dp: &mut Datapath, program: u32, frame: &[u8], reason: u32) {
    let before = dp.stat(program, reason).unwrap();
    let action = if program == program_id::UPLINK_XDP {
        packet::run_xdp(dp, programs::UPLINK_XDP, frame, 1)
            .unwrap()
            .action
    } else {
        ingress(dp, frame)
    };
    let drop = if program == program_id::UPLINK_XDP {
        XDP_DROP
    } else {
        TC_ACT_SHOT
    };
    assert_eq!(
        action, drop,
        "program {program}: reason {reason} {frame:02x?}"
    );
    assert_eq!(
        dp.stat(program, reason).unwrap(),
        before + 1,
        "program {program}: counted under {}",
        outcome::NAMES[reason as usize]
    );
}

#[test]
fn a_truncated_segment_straight_to_an_endpoint_never_gets_in() {
    let mut dp = datapath();
    for frame_len in [0, 60] {
        // A masqueraded endpoint: reached only through a published port.
        dropped_for(
            &mut dp,
            program_id::UPLINK_INGRESS,
            &truncated_tcp(EP1, 10, frame_len),
            outcome::DROP_ENDPOINT_DIRECT,
        );
        // A routed endpoint: reachable, but a segment no one can judge is not let in.
        dropped_for(
            &mut dp,
            program_id::UPLINK_INGRESS,
            &truncated_tcp(ROUTED, 10, frame_len),
            outcome::DROP_MALFORMED,
        );
        // Loopback, whatever follows the header.
        dropped_for(
            &mut dp,
            program_id::UPLINK_INGRESS,
            &truncated_tcp([127, 0, 0, 1], 10, frame_len),
            outcome::DROP_MARTIAN,
        );
        // For the host itself: the host stack's to drop.
        assert_eq!(
            ingress(&mut dp, &truncated_tcp(HOST, 10, frame_len)),
            TC_ACT_OK
        );
    }
    // A bad IPv4 header length, to an endpoint: dropped too.
    let mut bad_ihl = packet::tcp_frame(SERVER, 40000, ROUTED, 22, true, false, b"");
    bad_ihl[14] = 0x44;
    dropped_for(
        &mut dp,
        program_id::UPLINK_INGRESS,
        &bad_ihl,
        outcome::DROP_MALFORMED,
    );
    // A whole segment to the routed endpoint still gets in.
    let whole = packet::tcp_frame(SERVER, 40000, ROUTED, 22, true, false, b"");
    assert_eq!(ingress(&mut dp, &whole), TC_ACT_OK);
}

#[test]
fn the_user_filter_by_source_holds_for_truncated_segments() {
    let mut dp = datapath();
    dp.set_filter(&[Rule {
        src: Some("198.18.0.1/32".parse().unwrap()),
        network: None,
        port: None,
        drop: true,
        slot: 0,
    }])
    .unwrap();
    // Cut inside the ports: XDP cannot read them, the source alone decides.
    for tcp_bytes in [2, 10] {
        let frame = truncated_tcp(ROUTED, tcp_bytes, 0);
        dropped_for(
            &mut dp,
            program_id::UPLINK_XDP,
            &frame,
            outcome::DROP_FILTER,
        );
        dropped_for(
            &mut dp,
            program_id::UPLINK_INGRESS,
            &frame,
            outcome::DROP_FILTER,
        );
    }
    // A rule with a port cannot match what has no port; the segment is still not let in.
    dp.set_filter(&[Rule {
        src: Some("0.0.0.0/0".parse().unwrap()),
        network: None,
        port: Some((Proto::Tcp, 22)),
        drop: true,
        slot: 0,
    }])
    .unwrap();
    dropped_for(
        &mut dp,
        program_id::UPLINK_XDP,
        &truncated_tcp(ROUTED, 2, 0),
        outcome::DROP_MALFORMED,
    );
    dropped_for(
        &mut dp,
        program_id::UPLINK_INGRESS,
        &truncated_tcp(ROUTED, 2, 0),
        outcome::DROP_MALFORMED,
    );
}

/// From outside, a source address of a managed subnet is a lie: translated to a published
/// port, the packet would be answered inside as if an endpoint had sent it.
/// The early drop's answer for each source: spoofed, or not (the packet, to a port that is
/// not published, goes on to the host).
fn spoofed(dp: &mut Datapath, src: [u8; 4]) -> bool {
    let syn = packet::tcp_frame(src, 50000, HOST, 9, true, false, b"");
    let before = dp
        .stat(program_id::UPLINK_INGRESS, outcome::DROP_SPOOFED)
        .unwrap();
    let action = ingress(dp, &syn);
    let counted = dp
        .stat(program_id::UPLINK_INGRESS, outcome::DROP_SPOOFED)
        .unwrap()
        - before;
    let xdp = packet::run_xdp(dp, programs::UPLINK_XDP, &syn, 1)
        .unwrap()
        .action;
    assert_eq!(
        action == TC_ACT_SHOT,
        counted == 1,
        "{src:?}: counted as spoofed"
    );
    assert_eq!(
        action == TC_ACT_SHOT,
        xdp == XDP_DROP,
        "{src:?}: XDP agrees"
    );
    action == TC_ACT_SHOT
}

/// The programs skip the subnet trie for an address outside every /16 block a managed subnet
/// overlaps (`SUBNET_BLOCKS`): subnets sharing a block, one spanning several, and the removal
/// of one whose block another still uses leave every managed address guarded.
#[test]
fn subnets_sharing_or_spanning_blocks_stay_guarded_as_they_come_and_go() {
    let mut dp = datapath();
    for subnet in ["172.20.1.0/24", "172.20.2.0/24", "172.24.0.0/13"] {
        dp.add_subnet(subnet.parse().unwrap(), true).unwrap();
    }
    for src in [
        [172, 20, 1, 5],
        [172, 20, 2, 5],
        [172, 24, 0, 9],
        [172, 31, 200, 1],
    ] {
        assert!(spoofed(&mut dp, src), "{src:?} is managed");
    }
    // In a block a subnet overlaps, but in no subnet: the trie decides.
    for src in [[172, 20, 3, 5], [172, 23, 255, 1], [172, 32, 0, 1]] {
        assert!(!spoofed(&mut dp, src), "{src:?} is not managed");
    }
    dp.remove_subnet("172.20.1.0/24".parse().unwrap()).unwrap();
    assert!(
        spoofed(&mut dp, [172, 20, 2, 5]),
        "the block's other subnet"
    );
    assert!(!spoofed(&mut dp, [172, 20, 1, 5]), "the removed subnet");
    dp.remove_subnet("172.24.0.0/13".parse().unwrap()).unwrap();
    assert!(!spoofed(&mut dp, [172, 31, 200, 1]), "the removed /13");
    assert!(spoofed(&mut dp, EP2), "the datapath's own subnets");
}

#[test]
fn a_managed_source_from_outside_is_dropped_as_spoofed() {
    let mut dp = datapath();
    for src in [EP2, ROUTED] {
        let syn = packet::tcp_frame(src, 50000, HOST, 8080, true, false, b"");
        dropped_for(
            &mut dp,
            program_id::UPLINK_INGRESS,
            &syn,
            outcome::DROP_SPOOFED,
        );
        dropped_for(&mut dp, program_id::UPLINK_XDP, &syn, outcome::DROP_SPOOFED);
        let datagram = packet::udp_frame(src, 50000, HOST, 5353, b"q");
        dropped_for(
            &mut dp,
            program_id::UPLINK_INGRESS,
            &datagram,
            outcome::DROP_SPOOFED,
        );
    }
    assert!(dp.conntrack().unwrap().is_empty(), "no flow was opened");
}
