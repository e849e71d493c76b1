//! BPF_PROG_TEST_RUN of hairpin on the endpoint program: an endpoint reaching a published port
//! (its own, a sibling's, another network's) through a host address gets the published
//! endpoint as destination and the gateway of that endpoint's network as source; the reply is
//! translated back; both go straight to the target's bridge. Isolation, icc and internal judge
//! the original destination.
//!
//! The programs run in a namespace that has the two networks' bridges (no ports) and
//! forwarding on, so the FIB lookup finds the target's bridge and the program redirects there.
use std::net::Ipv4Addr;

use bridgenet::datapath::{Datapath, GatewayMode, NetworkOptions, Proto};
use bridgenet_common::{
    CtEntry, CtKey, NatConfig, action, direction, outcome, program_id, programs,
};
use bridgenet_tests::{Topology, packet, packet::Seen, require_root};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// Test runs come from the loopback device: it plays the sending endpoint's veth.
const VETH_IFINDEX: u32 = 1;
/// The source MAC of the packet module's frames: every endpoint here sends with it.
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// The uplink's address.
const HOST: [u8; 4] = [198, 18, 0, 2];
/// Network 1 (172.17.0.0/16): a and b; network 2 (172.18.0.0/16): c.
const GW1: [u8; 4] = [172, 17, 0, 1];
const A: [u8; 4] = [172, 17, 0, 2];
const B: [u8; 4] = [172, 17, 0, 3];
const GW2: [u8; 4] = [172, 18, 0, 1];
const C: [u8; 4] = [172, 18, 0, 2];

struct Lab {
    /// Dropped after the datapath: the namespace the programs run in.
    dp: Datapath,
    topo: Topology,
}

/// Published: tcp 8080 and udp 5353 to a (80, 53), tcp 8081 to b:80, tcp 9090 to c:80, and
/// tcp 7070 on the uplink's address only, to b:70.
fn lab(icc: bool) -> Lab {
    lab_with(icc, false)
}

/// The lab with network 1's options.
fn lab_with(icc: bool, internal: bool) -> Lab {
    require_root();
    let mut topo = Topology::new();
    topo.netns("host")
        .bridge("host", "br1")
        .addr("host", "br1", "172.17.0.1/16")
        .bridge("host", "br2")
        .addr("host", "br2", "172.18.0.1/16")
        .sysctl("host", "net.ipv4.ip_forward", "1");
    let mut dp = Datapath::load().expect("loading the datapath");
    let net = |id, gateway: [u8; 4], icc, internal| NetworkOptions {
        id,
        gateway: gateway.into(),
        masquerade: true,
        icc,
        internal,
        gateway_mode: GatewayMode::Nat,
    };
    dp.add_network(
        "172.17.0.0/16".parse().unwrap(),
        &net(1, GW1, icc, internal),
    )
    .unwrap();
    dp.add_network("172.18.0.0/16".parse().unwrap(), &net(2, GW2, true, false))
        .unwrap();
    // An uplink that is not the test-run device: only its address matters here.
    dp.set_uplink_addr(1000, HOST.into()).unwrap();
    for (proto, port, target, target_port) in [
        (Proto::Tcp, 8080, A, 80),
        (Proto::Udp, 5353, A, 53),
        (Proto::Tcp, 8081, B, 80),
        (Proto::Tcp, 9090, C, 80),
    ] {
        dp.publish(proto, None, port, target.into(), target_port)
            .unwrap();
    }
    dp.publish(Proto::Tcp, Some(HOST.into()), 7070, B.into(), 70)
        .unwrap();
    Lab { dp, topo }
}

/// Runs the endpoint program on `frame` sent by endpoint `from`.
fn send(lab: &mut Lab, from: [u8; 4], frame: &[u8]) -> packet::Verdict {
    let network = if from[1] == 17 { 1 } else { 2 };
    lab.dp
        .add_endpoint(VETH_IFINDEX, Ipv4Addr::from(from), MAC, network)
        .unwrap();
    let dp = &mut lab.dp;
    lab.topo
        .ns("host")
        .enter(|| packet::run_tc(dp, programs::ENDPOINT_INGRESS, frame, 1).expect("test run"))
}

/// Sends `frame` from `from` and expects it translated and redirected: what it became.
fn translated(lab: &mut Lab, from: [u8; 4], frame: &[u8]) -> Seen {
    let out = send(lab, from, frame);
    assert_eq!(
        out.action, TC_ACT_REDIRECT,
        "redirected to the target's bridge"
    );
    assert_eq!(out.frame[14 + 8], 63, "forwarded: TTL decremented");
    packet::inspect(&out.frame)
}

fn passed_untouched(lab: &mut Lab, from: [u8; 4], frame: &[u8]) {
    let out = send(lab, from, frame);
    assert_eq!(out.action, TC_ACT_OK);
    assert_eq!(out.frame, frame, "the frame must pass unchanged");
}

fn dropped_for(lab: &mut Lab, from: [u8; 4], frame: &[u8], reason: u32) {
    let before = lab.dp.stat(program_id::ENDPOINT_INGRESS, reason).unwrap();
    assert_eq!(send(lab, from, frame).action, TC_ACT_SHOT);
    assert_eq!(
        lab.dp.stat(program_id::ENDPOINT_INGRESS, reason).unwrap(),
        before + 1,
        "counted under its reason"
    );
}

fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    packet::tcp_frame(src, sport, dst, dport, syn, !syn, b"hello")
}

/// (src, sport, dst, dport) of a translated frame.
fn tuple(seen: &Seen) -> ([u8; 4], u16, [u8; 4], u16) {
    (seen.src, seen.sport, seen.dst, seen.dport)
}

fn hairpin_entries(dp: &Datapath) -> Vec<(CtKey, CtEntry)> {
    let mut ct = dp.conntrack().unwrap();
    ct.retain(|(_, e)| e.action == action::HAIRPIN);
    ct
}

#[test]
fn tcp_to_its_own_port_through_the_uplink_address_and_back() {
    let mut lab = lab(true);
    // 40000 is inside the host's ephemeral range: the port comes from the NAT range.
    let seen = translated(&mut lab, A, &tcp(A, 40000, HOST, 8080, true));
    let (src, sport, dst, dport) = tuple(&seen);
    assert_eq!((src, dst, dport), (GW1, A, 80), "{seen:?}");
    let config = NatConfig::default();
    assert!((config.port_min..=config.port_max).contains(&sport));

    let reply = translated(&mut lab, A, &tcp(A, 80, GW1, sport, true));
    assert_eq!(tuple(&reply), (HOST, 8080, A, 40000));

    // Both directions are tracked, each naming the other; later packets hit them.
    let again = translated(&mut lab, A, &tcp(A, 40000, HOST, 8080, false));
    assert_eq!(tuple(&again), tuple(&seen));
    let ct = hairpin_entries(&lab.dp);
    assert_eq!(ct.len(), 2, "{ct:?}");
    let (okey, orig) = ct
        .iter()
        .find(|(_, e)| e.direction == direction::ORIGINAL)
        .unwrap();
    let (rkey, reply) = ct
        .iter()
        .find(|(_, e)| e.direction == direction::REPLY)
        .unwrap();
    assert_eq!((orig.peer, reply.peer), (*rkey, *okey));
    assert_eq!((orig.packets, reply.packets), (2, 1));
    assert_eq!(okey.daddr, u32::from_ne_bytes(HOST));
    assert_eq!(rkey.daddr, u32::from_ne_bytes(GW1));
    assert_ne!(orig.tcp_seen & reply.tcp_seen, 0, "TCP flags tracked");

    let stat = |o| lab.dp.stat(program_id::ENDPOINT_INGRESS, o).unwrap();
    assert_eq!(
        (
            stat(outcome::DNAT),
            stat(outcome::SNAT),
            stat(outcome::FAST_PATH)
        ),
        (2, 1, 3)
    );
}

#[test]
fn udp_keeps_a_port_outside_the_host_range_and_comes_back() {
    let mut lab = lab(true);
    let seen = translated(
        &mut lab,
        A,
        &packet::udp_frame(A, 5000, HOST, 5353, b"query"),
    );
    assert_eq!(tuple(&seen), (GW1, 5000, A, 53));
    let reply = translated(&mut lab, A, &packet::udp_frame(A, 53, GW1, 5000, b"answer"));
    assert_eq!(tuple(&reply), (HOST, 5353, A, 5000));
    // No checksum stays no checksum.
    let none = packet::udp_frame_without_checksum(A, 5001, HOST, 5353, b"q");
    let seen = translated(&mut lab, A, &none);
    assert_eq!((tuple(&seen), seen.l4_checksum), ((GW1, 5001, A, 53), 0));
}

#[test]
fn a_port_whose_reply_tuple_would_be_its_own_gets_another() {
    let mut lab = lab(true);
    lab.dp.publish(Proto::Udp, None, 53, A.into(), 53).unwrap();
    // a:53 -> gw1:53 -> a:53: kept, the reply tuple a:53 -> gw1:53 would be the original's.
    let seen = translated(&mut lab, A, &packet::udp_frame(A, 53, GW1, 53, b"q"));
    assert_eq!((seen.src, seen.dst, seen.dport), (GW1, A, 53));
    assert_ne!(seen.sport, 53);
    let reply = translated(
        &mut lab,
        A,
        &packet::udp_frame(A, 53, GW1, seen.sport, b"a"),
    );
    assert_eq!(tuple(&reply), (GW1, 53, A, 53));
}

#[test]
fn a_sibling_through_the_gateway_and_a_port_bound_to_the_uplink_address() {
    let mut lab = lab(true);
    let seen = translated(&mut lab, A, &tcp(A, 5000, GW1, 8081, true));
    assert_eq!(tuple(&seen), (GW1, 5000, B, 80));
    let reply = translated(&mut lab, B, &tcp(B, 80, GW1, 5000, true));
    assert_eq!(tuple(&reply), (GW1, 8081, A, 5000));

    let seen = translated(&mut lab, A, &tcp(A, 5001, HOST, 7070, true));
    assert_eq!(tuple(&seen), (GW1, 5001, B, 70));
    // Bound to the uplink's address: not published on the gateway, which is the host's.
    passed_untouched(&mut lab, A, &tcp(A, 5002, GW1, 7070, true));
}

#[test]
fn another_networks_published_ports_are_reachable_through_a_host_address() {
    let mut lab = lab(true);
    // c to a's port, through the uplink's address and through network 1's gateway: the source
    // is network 1's gateway, where a's reply goes.
    for (n, via) in [HOST, GW1].into_iter().enumerate() {
        let sport = 5000 + n as u16;
        let seen = translated(&mut lab, C, &tcp(C, sport, via, 8080, true));
        assert_eq!(tuple(&seen), (GW1, sport, A, 80));
        let reply = translated(&mut lab, A, &tcp(A, 80, GW1, sport, true));
        assert_eq!(tuple(&reply), (via, 8080, C, sport));
    }
    // a to c's port through network 2's gateway.
    let seen = translated(&mut lab, A, &tcp(A, 5000, GW2, 9090, true));
    assert_eq!(tuple(&seen), (GW2, 5000, C, 80));
    let reply = translated(&mut lab, C, &tcp(C, 80, GW2, 5000, true));
    assert_eq!(tuple(&reply), (GW2, 9090, A, 5000));
}

#[test]
fn another_network_stays_isolated_apart_from_published_ports() {
    let mut lab = lab(true);
    // An unpublished port on the uplink's address is the host's.
    passed_untouched(&mut lab, C, &tcp(C, 5000, HOST, 9999, true));
    // An unpublished port on network 1's gateway, and network 1's endpoints themselves.
    for (dst, port) in [(GW1, 9999), (A, 80), (A, 8080), (B, 80)] {
        dropped_for(
            &mut lab,
            C,
            &tcp(C, 5000, dst, port, true),
            outcome::DROP_ISOLATION,
        );
    }
    dropped_for(
        &mut lab,
        A,
        &packet::udp_frame(A, 5000, GW2, 53, b"q"),
        outcome::DROP_ISOLATION,
    );
    // A reply-looking packet with no hairpin flow behind it is no reply.
    passed_untouched(&mut lab, A, &tcp(A, 80, GW1, 61000, false));
    assert!(hairpin_entries(&lab.dp).is_empty());
}

#[test]
fn icc_false_drops_siblings_but_not_hairpin_to_them() {
    let mut lab = lab(false);
    dropped_for(&mut lab, A, &tcp(A, 5000, B, 80, true), outcome::DROP_ICC);
    let seen = translated(&mut lab, A, &tcp(A, 5000, HOST, 8081, true));
    assert_eq!(tuple(&seen), (GW1, 5000, B, 80));
    let reply = translated(&mut lab, B, &tcp(B, 80, GW1, 5000, true));
    assert_eq!(tuple(&reply), (HOST, 8081, A, 5000));
}

#[test]
fn an_internal_network_hairpins_within_itself_only() {
    let mut lab = lab_with(true, true);
    let seen = translated(&mut lab, A, &tcp(A, 5000, GW1, 8081, true));
    assert_eq!(tuple(&seen), (GW1, 5000, B, 80));
    // c's port, through its own gateway or the uplink's address: out of the network.
    for via in [GW1, HOST] {
        dropped_for(
            &mut lab,
            A,
            &tcp(A, 5001, via, 9090, true),
            outcome::DROP_INTERNAL,
        );
    }
}

#[test]
fn without_a_route_to_the_target_the_translated_packet_takes_the_normal_path() {
    let mut lab = lab(true);
    lab.topo.ns("host").ip(&["link", "del", "br1"]);
    let out = send(&mut lab, A, &tcp(A, 5000, HOST, 8080, true));
    assert_eq!(out.action, TC_ACT_OK);
    assert_eq!(tuple(&packet::inspect(&out.frame)), (GW1, 5000, A, 80));
    assert_eq!(
        lab.dp
            .stat(program_id::ENDPOINT_INGRESS, outcome::FAST_PATH)
            .unwrap(),
        0
    );
}

/// ICMP errors about a hairpin flow reach the other side translated, as conntrack's RELATED
/// translation does under Docker's rules: b's error about what it received goes to a from the
/// address a used and quotes what a sent (the whole TCP header, or only 8 bytes of it); a's
/// error about b's reply goes to b from its gateway and quotes what b sent. Every checksum
/// stays right. An endpoint cannot send an error about another's flow.
#[test]
fn icmp_errors_about_a_hairpin_flow_reach_the_other_side_translated() {
    use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
    let mut lab = lab(true);
    let syn = tcp(A, 40000, HOST, 8081, true);
    let out = send(&mut lab, A, &syn);
    assert_eq!(out.action, TC_ACT_REDIRECT);
    let received = out.frame;
    let port = packet::inspect(&received).sport;
    assert_eq!(
        tuple(&packet::inspect(&received)),
        (GW1, port, B, 80),
        "a to b's port through the uplink's address"
    );
    let stat = |lab: &Lab, o| lab.dp.stat(program_id::ENDPOINT_INGRESS, o).unwrap();

    let frag_needed =
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400,
        });
    for l4_bytes in [None, Some(8)] {
        let quote = packet::ip_packet(&received, l4_bytes);
        let error = packet::icmp_error_frame(B, GW1, frag_needed.clone(), &quote);
        let snat = stat(&lab, outcome::SNAT);
        let back = send(&mut lab, B, &error);
        assert_eq!(back.action, TC_ACT_REDIRECT, "to a's bridge ({l4_bytes:?})");
        let outer = packet::inspect(&back.frame);
        assert_eq!(
            (outer.src, outer.dst),
            (HOST, A),
            "from where a sent to, to a"
        );
        assert_eq!(
            back.frame[14 + 20 + 6..14 + 20 + 8],
            1400u16.to_be_bytes(),
            "the MTU kept"
        );
        let quoted = packet::inspect_quoted(&back.frame, l4_bytes.is_none());
        assert_eq!(
            tuple(&quoted),
            (A, 40000, HOST, 8081),
            "quoting what a sent"
        );
        assert_eq!(
            stat(&lab, outcome::SNAT),
            snat + 1,
            "counted as b's replies"
        );
    }

    // b answers; a's error about that answer goes back to b.
    let syn_ack = packet::tcp_frame(B, 80, GW1, port, true, true, b"");
    let answer = send(&mut lab, B, &syn_ack);
    assert_eq!(
        tuple(&packet::inspect(&answer.frame)),
        (HOST, 8081, A, 40000)
    );
    let unreachable = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    let quote = packet::ip_packet(&answer.frame, None);
    let error = packet::icmp_error_frame(A, HOST, unreachable.clone(), &quote);
    let dnat = stat(&lab, outcome::DNAT);
    let back = send(&mut lab, A, &error);
    assert_eq!(back.action, TC_ACT_REDIRECT, "to b's bridge");
    let outer = packet::inspect(&back.frame);
    assert_eq!((outer.src, outer.dst), (GW1, B), "from b's gateway, to b");
    assert_eq!(
        tuple(&packet::inspect_quoted(&back.frame, true)),
        (B, 80, GW1, port),
        "quoting what b sent"
    );
    assert_eq!(
        stat(&lab, outcome::DNAT),
        dnat + 1,
        "counted as a's packets"
    );

    // a forging b's error about b's flow, and b's error sent elsewhere than where the packet
    // came from: left as they are, for the host, which has no such flow.
    let forged = packet::icmp_error_frame(
        A,
        GW1,
        unreachable.clone(),
        &packet::ip_packet(&received, None),
    );
    passed_untouched(&mut lab, A, &forged);
    let astray =
        packet::icmp_error_frame(B, HOST, unreachable, &packet::ip_packet(&received, None));
    passed_untouched(&mut lab, B, &astray);
}
