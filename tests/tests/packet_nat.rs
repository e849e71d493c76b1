//! BPF_PROG_TEST_RUN of the uplink programs: masquerade, published ports (DNAT) and their
//! replies, with every checksum verified and the conntrack and counter maps inspected.
use std::net::Ipv4Addr;

use bridgenet::datapath::{Datapath, Proto};
use bridgenet_common::{
    CtKey, NatConfig, action, outcome,
    port_hash::{self, PortSecret},
    program_id, programs,
};
use bridgenet_tests::{
    packet::fixture::*,
    packet::{self, Seen},
};

const HOST: [u8; 4] = [198, 18, 0, 2];
const SERVER: [u8; 4] = [198, 18, 0, 1];
const EP1: [u8; 4] = [172, 17, 0, 2];
const EP2: [u8; 4] = [172, 17, 0, 3];

fn egress(dp: &mut Datapath, frame: &[u8]) -> packet::Verdict {
    packet::run_tc(dp, programs::UPLINK_EGRESS, frame, 1).expect("test run")
}

fn ingress(dp: &mut Datapath, frame: &[u8]) -> packet::Verdict {
    packet::run_tc(dp, programs::UPLINK_INGRESS, frame, 1).expect("test run")
}

fn passed_untouched(verdict: &packet::Verdict, frame: &[u8]) {
    assert_eq!(verdict.action, TC_ACT_OK);
    assert_eq!(verdict.frame, frame, "the frame must pass unchanged");
}

#[test]
fn masquerade_tcp_and_its_reply() {
    let mut dp = nat_datapath();
    let syn = packet::tcp_frame(EP1, 40000, SERVER, 7000, true, false, b"");
    let out = egress(&mut dp, &syn);
    assert_eq!(out.action, TC_ACT_OK);
    let seen = packet::inspect(&out.frame);
    assert_eq!((seen.src, seen.dst, seen.dport), (HOST, SERVER, 7000));
    // 40000 is inside the host's ephemeral range, so masquerade picks from its own range.
    let config = NatConfig::default();
    assert!(
        (config.port_min..=config.port_max).contains(&seen.sport),
        "{seen:?}"
    );

    let synack = packet::tcp_frame(SERVER, 7000, HOST, seen.sport, true, true, b"");
    let back = ingress(&mut dp, &synack);
    assert_eq!(back.action, TC_ACT_OK);
    let back = packet::inspect(&back.frame);
    assert_eq!(
        (back.src, back.sport, back.dst, back.dport),
        (SERVER, 7000, EP1, 40000)
    );

    // Both directions are tracked, each pointing at the other.
    let ct = dp.conntrack().unwrap();
    assert_eq!(ct.len(), 2, "{ct:?}");
    let (okey, orig) = ct.iter().find(|(_, e)| e.action == action::SNAT).unwrap();
    let (rkey, reply) = ct.iter().find(|(_, e)| e.action == action::DNAT).unwrap();
    assert_eq!(orig.peer, *rkey);
    assert_eq!(reply.peer, *okey);
    assert_eq!((orig.packets, reply.packets), (1, 1));
    assert_eq!(
        dp.stat(program_id::UPLINK_EGRESS, outcome::SNAT).unwrap(),
        1
    );
    assert_eq!(
        dp.stat(program_id::UPLINK_INGRESS, outcome::DNAT).unwrap(),
        1
    );
}

#[test]
fn masquerade_keeps_a_source_port_outside_the_host_range_when_free() {
    let mut dp = nat_datapath();
    let first =
        packet::inspect(&egress(&mut dp, &packet::udp_frame(EP1, 5000, SERVER, 53, b"q")).frame);
    assert_eq!((first.src, first.sport), (HOST, 5000));
    // Same source port, same server, another endpoint: the tuple is taken, another port is used.
    let second =
        packet::inspect(&egress(&mut dp, &packet::udp_frame(EP2, 5000, SERVER, 53, b"q")).frame);
    assert_eq!(second.src, HOST);
    assert_ne!(second.sport, 5000);
    // Each reply reaches its own endpoint.
    for (nat_port, endpoint) in [(5000, EP1), (second.sport, EP2)] {
        let reply = packet::udp_frame(SERVER, 53, HOST, nat_port, b"a");
        let back = packet::inspect(&ingress(&mut dp, &reply).frame);
        assert_eq!((back.dst, back.dport), (endpoint, 5000));
    }
}

#[test]
fn udp_checksum_zero_stays_zero_and_others_stay_right() {
    let mut dp = nat_datapath();
    let none = packet::udp_frame_without_checksum(EP1, 40001, SERVER, 53, b"no checksum");
    let out = packet::inspect(&egress(&mut dp, &none).frame);
    assert_eq!(out.src, HOST);
    assert_eq!(
        out.l4_checksum, 0,
        "a UDP checksum of 0 means none and must stay 0"
    );

    let with = packet::udp_frame(EP1, 40002, SERVER, 53, b"with checksum");
    let out = packet::inspect(&egress(&mut dp, &with).frame); // inspect checks the checksum
    assert_ne!(out.l4_checksum, 0);
}

#[test]
fn masquerade_icmp_echo_by_identifier() {
    let mut dp = nat_datapath();
    let request = packet::icmp_echo_frame(EP1, SERVER, 0x1234, 1, false);
    let out = packet::inspect(&egress(&mut dp, &request).frame);
    assert_eq!((out.src, out.dst), (HOST, SERVER));
    let reply = packet::icmp_echo_frame(SERVER, HOST, out.sport, 1, true);
    let back = packet::inspect(&ingress(&mut dp, &reply).frame);
    assert_eq!((back.src, back.dst, back.dport), (SERVER, EP1, 0x1234));
}

#[test]
fn published_port_and_its_reply() {
    let mut dp = nat_datapath();
    let client = [198, 18, 5, 5];
    let syn = packet::tcp_frame(client, 50000, HOST, 8080, true, false, b"");
    let out = ingress(&mut dp, &syn);
    assert_eq!(out.action, TC_ACT_OK);
    let seen = packet::inspect(&out.frame);
    assert_eq!(
        seen,
        Seen {
            src: client,
            sport: 50000,
            dst: EP1,
            dport: 80,
            l4_checksum: seen.l4_checksum
        }
    );

    let synack = packet::tcp_frame(EP1, 80, client, 50000, true, true, b"");
    let back = packet::inspect(&egress(&mut dp, &synack).frame);
    assert_eq!(
        (back.src, back.sport, back.dst, back.dport),
        (HOST, 8080, client, 50000)
    );

    let data = packet::udp_frame(client, 40000, HOST, 5353, b"dns?");
    let out = packet::inspect(&ingress(&mut dp, &data).frame);
    assert_eq!((out.src, out.dst, out.dport), (client, EP1, 53));
    assert_eq!(
        dp.stat(program_id::UPLINK_INGRESS, outcome::DNAT).unwrap(),
        2
    );
}

#[test]
fn a_port_bound_to_one_host_address_answers_only_there() {
    let mut dp = nat_datapath();
    dp.add_host_addr(Ipv4Addr::new(198, 18, 0, 3)).unwrap();
    dp.publish(
        Proto::Tcp,
        Some(Ipv4Addr::new(198, 18, 0, 3)),
        9000,
        Ipv4Addr::from(EP2),
        90,
    )
    .unwrap();
    let on_other = packet::tcp_frame(SERVER, 50000, HOST, 9000, true, false, b"");
    passed_untouched(&ingress(&mut dp, &on_other), &on_other);
    let on_bound = packet::tcp_frame(SERVER, 50000, [198, 18, 0, 3], 9000, true, false, b"");
    let seen = packet::inspect(&ingress(&mut dp, &on_bound).frame);
    assert_eq!((seen.dst, seen.dport), (EP2, 90));
}

#[test]
fn unpublished_ports_and_other_addresses_pass_untouched() {
    let mut dp = nat_datapath();
    for frame in [
        packet::tcp_frame(SERVER, 50000, HOST, 8081, true, false, b""),
        // A published port on an address that is not the host's is not ours.
        packet::tcp_frame(SERVER, 50000, [198, 18, 9, 9], 8080, true, false, b""),
        packet::udp_frame(SERVER, 50000, HOST, 8080, b"tcp only"),
    ] {
        passed_untouched(&ingress(&mut dp, &frame), &frame);
    }
    assert!(dp.conntrack().unwrap().is_empty());
}

#[test]
fn the_hosts_own_traffic_passes_untouched_and_its_tuple_is_reserved() {
    let mut dp = nat_datapath();
    let frame = packet::udp_frame(HOST, 5001, SERVER, 53, b"host");
    passed_untouched(&egress(&mut dp, &frame), &frame);
    // An endpoint with the same source port to the same server must not take the host's tuple.
    let out =
        packet::inspect(&egress(&mut dp, &packet::udp_frame(EP1, 5001, SERVER, 53, b"ep")).frame);
    assert_eq!(out.src, HOST);
    assert_ne!(out.sport, 5001);
    // The host's reply still reaches the host.
    let reply = packet::udp_frame(SERVER, 53, HOST, 5001, b"a");
    passed_untouched(&ingress(&mut dp, &reply), &reply);
}

#[test]
fn fragments_from_endpoints_are_dropped_and_counted() {
    let mut dp = nat_datapath();
    let mut frame = packet::udp_frame(EP1, 40000, SERVER, 53, &[7; 64]);
    // More-fragments flag in the IPv4 header (byte 20 of the frame), header checksum fixed.
    frame[20] |= 0x20;
    let out = egress(&mut dp, &fix_ip_checksum(frame));
    assert_eq!(out.action, TC_ACT_SHOT);
    assert_eq!(
        dp.stat(program_id::UPLINK_EGRESS, outcome::DROP_FRAGMENT)
            .unwrap(),
        1
    );
    assert!(
        dp.conntrack().unwrap().is_empty(),
        "no state for a dropped packet"
    );
}

#[test]
fn a_subnet_without_masquerade_never_leaves_with_its_private_source() {
    let mut dp = nat_datapath();
    let frame = packet::udp_frame([172, 18, 0, 2], 40000, SERVER, 53, b"x");
    assert_eq!(egress(&mut dp, &frame).action, TC_ACT_SHOT);
    assert_eq!(
        dp.stat(program_id::UPLINK_EGRESS, outcome::DROP_UNTRANSLATABLE)
            .unwrap(),
        1
    );
}

#[test]
fn port_exhaustion_is_dropped_and_counted() {
    let mut dp = nat_datapath();
    dp.set_nat_config(NatConfig {
        port_min: 61000,
        port_max: 61001,
        ..NatConfig::default()
    })
    .unwrap();
    let mut ports = Vec::new();
    for sport in [40000, 40001] {
        let out = egress(&mut dp, &packet::udp_frame(EP1, sport, SERVER, 53, b"x"));
        assert_eq!(out.action, TC_ACT_OK);
        ports.push(packet::inspect(&out.frame).sport);
    }
    ports.sort();
    assert_eq!(ports, [61000, 61001]);
    let out = egress(&mut dp, &packet::udp_frame(EP1, 40002, SERVER, 53, b"x"));
    assert_eq!(
        out.action, TC_ACT_SHOT,
        "nothing leaves with a private source"
    );
    assert_eq!(
        dp.stat(program_id::UPLINK_EGRESS, outcome::DROP_PORTS_EXHAUSTED)
            .unwrap(),
        1
    );
    // Another server has its own port space.
    let out = egress(
        &mut dp,
        &packet::udp_frame(EP1, 40002, [198, 18, 0, 9], 53, b"x"),
    );
    assert_eq!(out.action, TC_ACT_OK);
}

/// Masquerade's port for a flow is computed from its inside tuple under the datapath's key
/// (the start of its sequence), and the next free one on from there when that is taken:
/// the tuple names its port again, and only with the key.
#[test]
fn masquerade_ports_follow_the_keyed_hash_of_the_inside_tuple() {
    let secret = PortSecret {
        k0: 0x0123_4567_89ab_cdef,
        k1: 0xfedc_ba98_7654_3210,
    };
    let start = |config: &NatConfig, sport: u16| {
        let key = CtKey {
            saddr: u32::from_ne_bytes(EP1),
            daddr: u32::from_ne_bytes(SERVER),
            sport: sport.to_be(),
            dport: 7000u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let span = u64::from(config.port_max - config.port_min) + 1;
        config.port_min + (port_hash::of4(&secret, &key) % span) as u16
    };
    let syn = |sport| packet::tcp_frame(EP1, sport, SERVER, 7000, true, false, b"");

    let mut dp = nat_datapath();
    dp.set_port_secret(secret).unwrap();
    let config = NatConfig::default();
    for sport in 40000..40016 {
        let out = egress(&mut dp, &syn(sport));
        assert_eq!(out.action, TC_ACT_OK);
        assert_eq!(
            packet::inspect(&out.frame).sport,
            start(&config, sport),
            "{sport}"
        );
    }

    // Four ports: the flows' starts collide, each takes the next free port after its own.
    let mut dp = nat_datapath();
    dp.set_port_secret(secret).unwrap();
    let config = NatConfig {
        port_min: 61000,
        port_max: 61003,
        ..NatConfig::default()
    };
    dp.set_nat_config(config).unwrap();
    let mut taken = Vec::new();
    let mut collided = 0;
    for sport in 40000..40004 {
        let mut port = start(&config, sport);
        if taken.contains(&port) {
            collided += 1;
        }
        while taken.contains(&port) {
            port = if port == config.port_max {
                config.port_min
            } else {
                port + 1
            };
        }
        let out = egress(&mut dp, &syn(sport));
        assert_eq!(packet::inspect(&out.frame).sport, port, "{sport}");
        taken.push(port);
    }
    assert!(
        collided > 0,
        "the starts must collide for this test to mean anything"
    );

    // Another key, other ports.
    let mut dp = nat_datapath();
    dp.set_port_secret(PortSecret { k0: 1, ..secret }).unwrap();
    let moved = (40000..40016)
        .filter(|&sport| {
            packet::inspect(&egress(&mut dp, &syn(sport)).frame).sport
                != start(&NatConfig::default(), sport)
        })
        .count();
    assert!(moved >= 14, "{moved} of 16 ports moved with the key");
}

#[test]
fn truncated_headers_from_endpoints_are_dropped() {
    let mut dp = nat_datapath();
    let frame = packet::tcp_frame(EP1, 40000, SERVER, 7000, true, false, b"");
    // Cut inside the TCP header: ports present, flags missing.
    let cut = &frame[..14 + 20 + 10];
    assert_eq!(egress(&mut dp, cut).action, TC_ACT_SHOT);
    assert_eq!(
        dp.stat(program_id::UPLINK_EGRESS, outcome::DROP_MALFORMED)
            .unwrap(),
        1
    );
}

#[test]
fn non_ipv4_passes_untouched() {
    let mut dp = nat_datapath();
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    passed_untouched(&egress(&mut dp, &arp), &arp);
    passed_untouched(&ingress(&mut dp, &arp), &arp);
}

fn fix_ip_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let mut header = etherparse::Ipv4Header::from_slice(&frame[14..]).unwrap().0;
    header.header_checksum = header.calc_header_checksum();
    let (a, b) = (
        header.header_checksum.to_be_bytes()[0],
        header.header_checksum.to_be_bytes()[1],
    );
    frame[24] = a;
    frame[25] = b;
    frame
}

#[test]
fn uplink_xdp_drops_martians_and_direct_access_to_masqueraded_endpoints() {
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    let mut dp = nat_datapath();
    let cases = [
        (
            packet::udp_frame(SERVER, 1000, [127, 0, 0, 1], 8080, b"x"),
            XDP_DROP,
            outcome::DROP_MARTIAN,
        ),
        (
            packet::tcp_frame(SERVER, 1000, EP1, 80, true, false, b""),
            XDP_DROP,
            outcome::DROP_ENDPOINT_DIRECT,
        ),
        // 172.18.0.0/16 is not masqueraded (routed): direct access is its point.
        (
            packet::tcp_frame(SERVER, 1000, [172, 18, 0, 2], 80, true, false, b""),
            XDP_PASS,
            outcome::PASSED,
        ),
        (
            packet::tcp_frame(SERVER, 1000, HOST, 8080, true, false, b""),
            XDP_PASS,
            outcome::PASSED,
        ),
    ];
    for (frame, action, counted) in cases {
        let before = dp.stat(program_id::UPLINK_XDP, counted).unwrap();
        let out = packet::run_xdp(&mut dp, programs::UPLINK_XDP, &frame, 1).expect("test run");
        assert_eq!(out.action, action, "{:?}", packet::inspect(&frame));
        assert_eq!(
            dp.stat(program_id::UPLINK_XDP, counted).unwrap(),
            before + 1
        );
    }
}

/// CNI's `nonMasqueradeCIDRs`: towards a network's non-masquerade prefixes its endpoints'
/// addresses leave as they are (untracked: nothing is translated), and from them packets reach
/// its endpoints directly, in TC and XDP; other destinations and sources are unchanged.
#[test]
fn non_masquerade_prefixes_pass_both_ways_untranslated() {
    const XDP_PASS: u32 = 2;
    const PEER: [u8; 4] = [198, 19, 1, 2];
    let mut dp = nat_datapath();
    let network = u32::from(Ipv4Addr::new(172, 17, 0, 0));
    dp.set_non_masquerade(network, &["198.19.0.0/16".parse().unwrap()])
        .unwrap();

    let syn = packet::tcp_frame(EP1, 40000, PEER, 7000, true, false, b"");
    passed_untouched(&egress(&mut dp, &syn), &syn);
    // Not a SYN either: nothing is tracked, so nothing is untracked.
    let data = packet::tcp_frame(EP1, 40000, PEER, 7000, false, true, b"data");
    passed_untouched(&egress(&mut dp, &data), &data);
    let udp = packet::udp_frame(EP1, 5000, PEER, 53, b"q");
    passed_untouched(&egress(&mut dp, &udp), &udp);
    assert!(dp.conntrack().unwrap().is_empty());

    let answer = packet::tcp_frame(PEER, 7000, EP1, 40000, true, true, b"");
    passed_untouched(&ingress(&mut dp, &answer), &answer);
    let out = packet::run_xdp(&mut dp, programs::UPLINK_XDP, &answer, 1).expect("test run");
    assert_eq!(out.action, XDP_PASS);
    // Another source is still kept away from the endpoint, another destination masqueraded.
    let direct = packet::tcp_frame(SERVER, 7000, EP1, 40000, true, true, b"");
    assert_eq!(ingress(&mut dp, &direct).action, TC_ACT_SHOT);
    let out = egress(&mut dp, &packet::udp_frame(EP1, 5000, SERVER, 53, b"q"));
    assert_eq!(packet::inspect(&out.frame).src, HOST);
    // Another network's endpoints are not concerned.
    let other = packet::udp_frame([172, 18, 0, 2], 5000, PEER, 53, b"q");
    assert_eq!(egress(&mut dp, &other).action, TC_ACT_SHOT);

    // Removed: the endpoint's address no longer leaves.
    dp.set_non_masquerade(network, &[]).unwrap();
    assert_eq!(egress(&mut dp, &data).action, TC_ACT_SHOT);
    assert_eq!(ingress(&mut dp, &answer).action, TC_ACT_SHOT);
}

/// The IPv4 header checksum is updated in the program (RFC 1624), not by a helper: every value
/// it can start from comes out right, both ways. The IP identification runs through all 65,536
/// values (the checksum with it), so the rare sums that carry twice are among them.
#[test]
fn the_ipv4_header_checksum_is_right_from_every_starting_value() {
    let mut dp = nat_datapath();
    let first =
        packet::inspect(&egress(&mut dp, &packet::udp_frame(EP1, 5000, SERVER, 53, b"q")).frame);
    let frames = bridgenet_tests::repetitions(65_536, 4_096);
    let step = 65_536 / frames;
    for n in 0..frames {
        let id = (n * step) as u16;
        let out = egress(
            &mut dp,
            &with_ip_id(&packet::udp_frame(EP1, 5000, SERVER, 53, b"q"), id),
        );
        let seen = packet::inspect(&out.frame);
        assert_eq!((seen.src, seen.sport), (HOST, first.sport), "id {id}");
        let reply = with_ip_id(&packet::udp_frame(SERVER, 53, HOST, first.sport, b"a"), id);
        let back = packet::inspect(&ingress(&mut dp, &reply).frame);
        assert_eq!((back.dst, back.dport), (EP1, 5000), "id {id}");
    }
}

/// `frame` (Ethernet, IPv4) with identification `id` and its header checksum made right.
fn with_ip_id(frame: &[u8], id: u16) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[18..20].copy_from_slice(&id.to_be_bytes());
    fix_ip_checksum(frame)
}

/// A masquerade flow whose port lies past the candidates the inside hooks probe
/// (`port_hash::FOUND_WITHIN`) is found through `CT_EXCEPTIONS`: its later packets leave from
/// its port and its replies come back; removed, it takes its exception with it.
#[test]
fn a_masquerade_flow_past_the_probed_ports_is_found_through_its_exception() {
    // Twelve ports and twelve flows to one server port: the last ones walk far from their
    // start. A key for which one walks past the probed candidates, found as the programs do.
    let config = NatConfig {
        port_min: 61000,
        port_max: 61011,
        ..NatConfig::default()
    };
    let sports: Vec<u16> = (40000..40012).collect();
    let inside = |sport: u16| CtKey {
        saddr: u32::from_ne_bytes(EP1),
        daddr: u32::from_ne_bytes(SERVER),
        sport: sport.to_be(),
        dport: 7000u16.to_be(),
        proto: 6,
        _pad: [0; 3],
    };
    let allocate = |secret: &PortSecret| {
        let mut taken: Vec<(u16, u16, u32)> = Vec::new();
        for &sport in &sports {
            let hash = port_hash::of4(secret, &inside(sport));
            let (i, port) = (1..=port_hash::TRIES)
                .map(|i| (i, port_hash::candidate(&config, sport, hash, i).unwrap()))
                .find(|(_, port)| !taken.iter().any(|t| t.1 == *port))
                .unwrap();
            taken.push((sport, port, i));
        }
        taken
    };
    let (secret, taken) = (1..1000u64)
        .map(|k0| PortSecret { k0, k1: 99 })
        .map(|secret| (secret, allocate(&secret)))
        .find(|(_, taken)| taken.iter().any(|t| t.2 > port_hash::FOUND_WITHIN))
        .expect("a key that sends a flow past the probed ports");

    let mut dp = nat_datapath();
    dp.set_port_secret(secret).unwrap();
    dp.set_nat_config(config).unwrap();
    for &(sport, port, _) in &taken {
        let syn = packet::tcp_frame(EP1, sport, SERVER, 7000, true, false, b"");
        assert_eq!(packet::inspect(&egress(&mut dp, &syn).frame).sport, port);
    }
    let flows = dp.flows().unwrap();
    let excepted = |key: &CtKey| {
        flows
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, f)| f.flags & bridgenet_common::ct_flags::EXCEPTION != 0)
    };
    for &(sport, port, i) in &taken {
        let key = CtKey {
            saddr: u32::from_ne_bytes(SERVER),
            daddr: u32::from_ne_bytes(HOST),
            sport: 7000u16.to_be(),
            dport: port.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        assert_eq!(
            excepted(&key),
            Some(i > port_hash::FOUND_WITHIN),
            "{sport} -> {port}"
        );
        // Either way the flow is found from inside and from outside.
        let ack = packet::tcp_frame(EP1, sport, SERVER, 7000, false, true, b"x");
        let out = egress(&mut dp, &ack);
        assert_eq!(out.action, TC_ACT_OK);
        assert_eq!(packet::inspect(&out.frame).sport, port, "{sport}");
        let reply = packet::tcp_frame(SERVER, 7000, HOST, port, false, true, b"y");
        let back = packet::inspect(&ingress(&mut dp, &reply).frame);
        assert_eq!((back.dst, back.dport), (EP1, sport));
        if i > port_hash::FOUND_WITHIN {
            // Removed with its exception: the endpoint's next segment belongs to no flow.
            dp.conntrack_remove(&key).unwrap();
            let out = egress(&mut dp, &ack);
            assert_eq!(out.action, TC_ACT_SHOT, "{sport}: found after its removal");
        }
    }
}

/// A fifth mapping of one endpoint port has no `PUBLISHED_BY` slot: its flows are found
/// through `CT_EXCEPTIONS`, the first four's through the slots.
#[test]
fn a_fifth_mapping_of_an_endpoint_port_is_answered_through_an_exception() {
    let mut dp = nat_datapath();
    for port in 8081..8085 {
        dp.publish(Proto::Tcp, None, port, Ipv4Addr::from(EP1), 80)
            .unwrap();
    }
    let client = [198, 18, 5, 5];
    for (i, port) in (8080..8085).enumerate() {
        let cport = 50000 + i as u16;
        let syn = packet::tcp_frame(client, cport, HOST, port, true, false, b"");
        let seen = packet::inspect(&ingress(&mut dp, &syn).frame);
        assert_eq!((seen.dst, seen.dport), (EP1, 80));
        let synack = packet::tcp_frame(EP1, 80, client, cport, true, true, b"");
        let back = packet::inspect(&egress(&mut dp, &synack).frame);
        assert_eq!((back.src, back.sport), (HOST, port), "through {port}");
        let key = CtKey {
            saddr: u32::from_ne_bytes(client),
            daddr: u32::from_ne_bytes(HOST),
            sport: cport.to_be(),
            dport: port.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let flow = dp.flows().unwrap().into_iter().find(|(k, _)| *k == key);
        let excepted = flow.unwrap().1.flags & bridgenet_common::ct_flags::EXCEPTION != 0;
        assert_eq!(excepted, port == 8084, "through {port}");
    }
}

/// The programs keep what they learn of the managed subnets per CPU (`SUBNET_CACHE`): a
/// subnet added, changed or removed is seen by the very next packet, because each change of
/// `SUBNETS` moves the generation in `SUBNET_BLOCKS` that the answers were cached under.
#[test]
fn the_next_packet_sees_a_subnet_added_changed_or_removed() {
    packet::on_one_cpu();
    let mut dp = nat_datapath();
    // 172.19.1.0/24 keeps the /16 block in SUBNET_BLOCKS, so that an address of
    // 172.19.0.0/24 is answered from the cache (or the trie), not from the blocks alone.
    let (ep, subnet) = ([172, 19, 0, 2], "172.19.0.0/24".parse().unwrap());
    dp.add_subnet("172.19.1.0/24".parse().unwrap(), true)
        .unwrap();
    let mut sport = 40000;
    let mut leave = |dp: &mut Datapath| {
        sport += 1;
        let syn = packet::tcp_frame(ep, sport, SERVER, 7000, true, false, b"");
        let out = egress(dp, &syn);
        (out.action == TC_ACT_OK).then(|| packet::inspect(&out.frame).src)
    };
    // Not managed yet: it leaves as it is (a host's own address would).
    assert_eq!(leave(&mut dp), Some(ep));
    dp.add_subnet(subnet, true).unwrap();
    assert_eq!(leave(&mut dp), Some(HOST), "added, masqueraded");
    dp.remove_subnet(subnet).unwrap();
    assert_eq!(leave(&mut dp), Some(ep), "removed");
    dp.add_subnet(subnet, false).unwrap();
    assert_eq!(
        leave(&mut dp),
        None,
        "added again, not masqueraded: it cannot leave"
    );
    dp.add_subnet(subnet, true).unwrap();
    assert_eq!(leave(&mut dp), Some(HOST), "changed in place, masqueraded");
}
