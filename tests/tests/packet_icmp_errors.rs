//! ICMP errors about translated flows, in both directions through masquerade and published
//! ports: the outer header, the quoted header and every checksum (outer IPv4, ICMP, quoted
//! IPv4, quoted L4 when it is there) must come out right.

use bridgenet::datapath::Datapath;
use bridgenet_common::{outcome, program_id, programs};
use bridgenet_tests::{packet, packet::fixture::*};
use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader, icmpv4::TimeExceededCode};

const HOST: [u8; 4] = [198, 18, 0, 2];
const SERVER: [u8; 4] = [198, 18, 0, 1];
const ROUTER: [u8; 4] = [198, 18, 0, 254];
const CLIENT: [u8; 4] = [198, 18, 5, 5];
const EP1: [u8; 4] = [172, 17, 0, 2];

fn frag_needed() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1400,
    })
}

fn ttl_exceeded() -> Icmpv4Type {
    Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)
}

fn port_unreachable() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
}

fn run(dp: &mut Datapath, program: &str, frame: &[u8]) -> packet::Verdict {
    packet::run_tc(dp, program, frame, 1).expect("test run")
}

/// Sends `first` out through masquerade and returns the frame as it left.
fn masquerade(dp: &mut Datapath, first: &[u8]) -> Vec<u8> {
    let out = run(dp, programs::UPLINK_EGRESS, first);
    assert_eq!(out.action, TC_ACT_OK);
    out.frame
}

/// An error from the world about a masqueraded packet reaches the endpoint, quoting the packet
/// as the endpoint sent it.
fn world_error_about_masquerade(first: Vec<u8>, icmp_type: Icmpv4Type, l4_bytes: Option<usize>) {
    let mut dp = nat_datapath();
    world_error_about_masquerade_in(&mut dp, first, icmp_type, l4_bytes);
}

fn world_error_about_masquerade_in(
    dp: &mut Datapath,
    first: Vec<u8>,
    icmp_type: Icmpv4Type,
    l4_bytes: Option<usize>,
) {
    let dp = &mut *dp;
    let sent = masquerade(dp, &first);
    let error =
        packet::icmp_error_frame(ROUTER, HOST, icmp_type, &packet::ip_packet(&sent, l4_bytes));
    let out = run(dp, programs::UPLINK_INGRESS, &error);
    assert_eq!(out.action, TC_ACT_OK);
    let outer = packet::inspect(&out.frame); // checks the outer IPv4 and ICMP checksums
    assert_eq!((outer.src, outer.dst), (ROUTER, EP1));
    let quoted = packet::inspect_quoted(&out.frame, l4_bytes.is_none());
    let original = packet::inspect(&first);
    assert_eq!(
        (quoted.src, quoted.sport, quoted.dst, quoted.dport),
        (original.src, original.sport, original.dst, original.dport)
    );
    if l4_bytes.is_none() {
        assert_eq!(
            quoted.l4_checksum, original.l4_checksum,
            "the quoted checksum is the endpoint's own"
        );
    }
    assert_eq!(
        dp.stat(program_id::UPLINK_INGRESS, outcome::DNAT).unwrap(),
        1
    );
}

#[test]
fn frag_needed_for_masqueraded_tcp_reaches_the_endpoint() {
    let syn = packet::tcp_frame(EP1, 40000, SERVER, 7000, true, false, b"");
    world_error_about_masquerade(syn, frag_needed(), None);
}

#[test]
fn frag_needed_quoting_only_8_bytes_of_tcp() {
    // The TCP checksum is not in the quote: nothing to fix there, the rest must still be right.
    // The connection is open first: TCP that is not a SYN opens no flow.
    let mut dp = nat_datapath();
    let syn = packet::tcp_frame(EP1, 40000, SERVER, 7000, true, false, b"");
    masquerade(&mut dp, &syn);
    let data = packet::tcp_frame(EP1, 40000, SERVER, 7000, false, true, &[1; 1400]);
    world_error_about_masquerade_in(&mut dp, data, frag_needed(), Some(8));
}

#[test]
fn ttl_exceeded_for_masqueraded_udp() {
    let datagram = packet::udp_frame(EP1, 40000, SERVER, 33434, b"traceroute");
    world_error_about_masquerade(datagram, ttl_exceeded(), None);
}

#[test]
fn ttl_exceeded_for_masqueraded_ping() {
    let request = packet::icmp_echo_frame(EP1, SERVER, 0x4242, 7, false);
    world_error_about_masquerade(request, ttl_exceeded(), None);
}

#[test]
fn port_unreachable_for_masqueraded_udp_from_the_server() {
    let datagram = packet::udp_frame(EP1, 40000, SERVER, 9, b"discard?");
    world_error_about_masquerade(datagram, port_unreachable(), None);
}

#[test]
fn an_endpoint_error_about_a_masqueraded_reply_leaves_with_the_host_address() {
    let mut dp = nat_datapath();
    let sent = packet::inspect(&masquerade(
        &mut dp,
        &packet::udp_frame(EP1, 40000, SERVER, 53, b"q"),
    ));
    // The reply arrives and is translated to the endpoint, which then rejects it.
    let reply = packet::udp_frame(SERVER, 53, HOST, sent.sport, b"late answer");
    let delivered = run(&mut dp, programs::UPLINK_INGRESS, &reply).frame;
    let error = packet::icmp_error_frame(
        EP1,
        SERVER,
        port_unreachable(),
        &packet::ip_packet(&delivered, None),
    );
    let out = run(&mut dp, programs::UPLINK_EGRESS, &error);
    assert_eq!(out.action, TC_ACT_OK);
    let outer = packet::inspect(&out.frame);
    assert_eq!((outer.src, outer.dst), (HOST, SERVER));
    let quoted = packet::inspect_quoted(&out.frame, true);
    assert_eq!(
        (quoted.src, quoted.sport, quoted.dst, quoted.dport),
        (SERVER, 53, HOST, sent.sport),
        "the quote is the reply as the server sent it"
    );
}

#[test]
fn an_endpoint_error_about_a_published_flow_leaves_with_the_published_address() {
    let mut dp = nat_datapath();
    let query = packet::udp_frame(CLIENT, 40000, HOST, 5353, b"query");
    let delivered = run(&mut dp, programs::UPLINK_INGRESS, &query).frame;
    assert_eq!(packet::inspect(&delivered).dst, EP1);
    let error = packet::icmp_error_frame(
        EP1,
        CLIENT,
        port_unreachable(),
        &packet::ip_packet(&delivered, None),
    );
    let out = run(&mut dp, programs::UPLINK_EGRESS, &error);
    assert_eq!(out.action, TC_ACT_OK);
    let outer = packet::inspect(&out.frame);
    assert_eq!((outer.src, outer.dst), (HOST, CLIENT));
    let quoted = packet::inspect_quoted(&out.frame, true);
    assert_eq!(
        (quoted.src, quoted.sport, quoted.dst, quoted.dport),
        (CLIENT, 40000, HOST, 5353),
        "the quote is what the client sent"
    );
}

#[test]
fn frag_needed_for_a_published_reply_reaches_the_endpoint() {
    let mut dp = nat_datapath();
    let syn = packet::tcp_frame(CLIENT, 50000, HOST, 8080, true, false, b"");
    run(&mut dp, programs::UPLINK_INGRESS, &syn);
    let reply = packet::tcp_frame(EP1, 80, CLIENT, 50000, false, true, &[2; 1400]);
    let sent = run(&mut dp, programs::UPLINK_EGRESS, &reply).frame;
    assert_eq!(packet::inspect(&sent).src, HOST);
    let error = packet::icmp_error_frame(
        ROUTER,
        HOST,
        frag_needed(),
        &packet::ip_packet(&sent, Some(8)),
    );
    let out = run(&mut dp, programs::UPLINK_INGRESS, &error);
    assert_eq!(out.action, TC_ACT_OK);
    let outer = packet::inspect(&out.frame);
    assert_eq!((outer.src, outer.dst), (ROUTER, EP1));
    let quoted = packet::inspect_quoted(&out.frame, false);
    assert_eq!(
        (quoted.src, quoted.sport, quoted.dst, quoted.dport),
        (EP1, 80, CLIENT, 50000)
    );
}

#[test]
fn errors_about_unknown_flows() {
    let mut dp = nat_datapath();
    // From the world: the host's business, untouched.
    let stray = packet::udp_frame(HOST, 1234, SERVER, 53, b"host");
    let error = packet::icmp_error_frame(
        ROUTER,
        HOST,
        port_unreachable(),
        &packet::ip_packet(&stray, None),
    );
    let out = run(&mut dp, programs::UPLINK_INGRESS, &error);
    assert_eq!(
        (out.action, out.frame.as_slice()),
        (TC_ACT_OK, error.as_slice())
    );
    // From an endpoint: it would leave with a private source, so it does not leave.
    let unknown = packet::udp_frame(SERVER, 53, EP1, 999, b"never sent");
    let error = packet::icmp_error_frame(
        EP1,
        SERVER,
        port_unreachable(),
        &packet::ip_packet(&unknown, None),
    );
    assert_eq!(
        run(&mut dp, programs::UPLINK_EGRESS, &error).action,
        TC_ACT_SHOT
    );
    assert_eq!(
        dp.stat(program_id::UPLINK_EGRESS, outcome::DROP_UNTRANSLATABLE)
            .unwrap(),
        1
    );
}

#[test]
fn an_error_quoting_less_than_8_bytes_is_malformed() {
    let mut dp = nat_datapath();
    let first = packet::udp_frame(EP1, 40000, SERVER, 53, b"q");
    masquerade(&mut dp, &first);
    let error = packet::icmp_error_frame(
        EP1,
        SERVER,
        port_unreachable(),
        &packet::ip_packet(&first, Some(2)),
    );
    assert_eq!(
        run(&mut dp, programs::UPLINK_EGRESS, &error).action,
        TC_ACT_SHOT
    );
    assert_eq!(
        dp.stat(program_id::UPLINK_EGRESS, outcome::DROP_MALFORMED)
            .unwrap(),
        1
    );
}
