//! BPF_PROG_TEST_RUN of the user filter on uplink_xdp and uplink_ingress: first-match order,
//! every match class, what is not subject to it (the host's own flows, replies of masqueraded
//! flows), per-rule counters and the drop_filter outcome, and random rule sets against a plain
//! first-match walk; the same for IPv6 sources and ports published on IPv6.
use std::net::{Ipv4Addr, Ipv6Addr};

use bridgenet::datapath::{
    Datapath, GatewayMode, NetworkOptions, Proto,
    filter::{Probe, Rule, first_match},
};
use bridgenet_common::{outcome, program_id, programs};
use bridgenet_tests::{packet, packet::fixture::*};
use etherparse::PacketBuilder;

/// A routed (not masqueraded) endpoint, on 172.18.0.0/16.
const ROUTED: [u8; 4] = [172, 18, 0, 5];
const OTHER: [u8; 4] = [198, 18, 7, 7];

fn xdp(dp: &mut Datapath, frame: &[u8]) -> u32 {
    packet::run_xdp(dp, programs::UPLINK_XDP, frame, 1)
        .expect("test run")
        .action
}

fn tc(dp: &mut Datapath, frame: &[u8]) -> u32 {
    packet::run_tc(dp, programs::UPLINK_INGRESS, frame, 1)
        .expect("test run")
        .action
}

/// Whether both uplink programs let the frame in (and agree on it).
fn admitted(dp: &mut Datapath, frame: &[u8]) -> bool {
    let by_xdp = xdp(dp, frame);
    let by_tc = tc(dp, frame);
    assert!(by_xdp == XDP_PASS || by_xdp == XDP_DROP, "{by_xdp}");
    assert_eq!(
        by_xdp == XDP_PASS,
        by_tc == TC_ACT_OK,
        "XDP and TC disagree"
    );
    by_tc == TC_ACT_OK
}

/// The network ids of the fixture's subnets, as the programs have them.
fn network_of(dp: &Datapath, subnet: &str) -> u32 {
    let subnet = subnet.parse().unwrap();
    dp.network_ids()
        .unwrap()
        .into_iter()
        .find(|(s, _)| *s == subnet)
        .unwrap()
        .1
}

fn rule(src: &str, network: Option<u32>, port: Option<(Proto, u16)>, drop: bool) -> Rule {
    Rule {
        src: Some(src.parse().unwrap()),
        network,
        port,
        drop,
        slot: 0,
    }
}

/// The rules with slots 0, 1, 2... in order.
fn numbered(rules: &[Rule]) -> Vec<Rule> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| Rule {
            slot: i as u16,
            ..*r
        })
        .collect()
}

fn syn_to_published(src: [u8; 4]) -> Vec<u8> {
    packet::tcp_frame(src, 50000, HOST, 8080, true, false, b"")
}

#[test]
fn the_first_matching_rule_decides() {
    let mut dp = nat_datapath();
    let allow_world = rule("198.18.0.0/16", None, None, false);
    let drop_client = rule("198.18.5.5/32", None, Some((Proto::Tcp, 8080)), true);

    // A broad allow before a narrower drop: the allow wins.
    dp.set_filter(&numbered(&[allow_world, drop_client]))
        .unwrap();
    assert!(admitted(&mut dp, &syn_to_published(CLIENT)));
    // The reverse: the drop wins for its source, the allow for the others.
    dp.set_filter(&numbered(&[drop_client, allow_world]))
        .unwrap();
    assert!(!admitted(&mut dp, &syn_to_published(CLIENT)));
    assert!(admitted(&mut dp, &syn_to_published(OTHER)));

    // An allow for one source before a drop of everything.
    let drop_all = rule("0.0.0.0/0", None, None, true);
    let allow_client = rule("198.18.5.5/32", None, None, false);
    dp.set_filter(&numbered(&[allow_client, drop_all])).unwrap();
    assert!(admitted(&mut dp, &syn_to_published(CLIENT)));
    assert!(!admitted(&mut dp, &syn_to_published(OTHER)));
    // Translated as usual once admitted.
    let out = packet::run_tc(
        &mut dp,
        programs::UPLINK_INGRESS,
        &syn_to_published(CLIENT),
        1,
    )
    .unwrap();
    assert_eq!(packet::inspect(&out.frame).dst, EP1);

    // No rule left: everything is admitted again.
    dp.set_filter(&[]).unwrap();
    assert!(admitted(&mut dp, &syn_to_published(OTHER)));
}

#[test]
fn each_match_class() {
    let mut dp = nat_datapath();
    let net17 = network_of(&dp, "172.17.0.0/16");
    let net18 = network_of(&dp, "172.18.0.0/16");
    let tcp_8080 = syn_to_published(OTHER);
    let udp_5353 = packet::udp_frame(OTHER, 40000, HOST, 5353, b"q");
    let routed_tcp = packet::tcp_frame(OTHER, 40000, ROUTED, 22, true, false, b"");
    let routed_ping = packet::icmp_echo_frame(OTHER, ROUTED, 9, 1, false);
    let all = [&tcp_8080, &udp_5353, &routed_tcp, &routed_ping];
    let expect = |dp: &mut Datapath, rules: &[Rule], admitted_want: [bool; 4]| {
        dp.set_filter(&numbered(rules)).unwrap();
        let got = all.map(|f| admitted(dp, f));
        assert_eq!(got, admitted_want, "rules {rules:?}");
    };
    // Network: the published target's network, or the routed destination's.
    expect(
        &mut dp,
        &[rule("0.0.0.0/0", Some(net17), None, true)],
        [false, false, true, true],
    );
    expect(
        &mut dp,
        &[rule("0.0.0.0/0", Some(net18), None, true)],
        [true, true, false, false],
    );
    // Port and protocol, as the packet arrives (the published host port, before DNAT).
    expect(
        &mut dp,
        &[rule("0.0.0.0/0", None, Some((Proto::Tcp, 8080)), true)],
        [false, true, true, true],
    );
    expect(
        &mut dp,
        &[rule("0.0.0.0/0", None, Some((Proto::Udp, 5353)), true)],
        [true, false, true, true],
    );
    // The endpoint's port (80 behind 8080) is not what a rule sees.
    expect(
        &mut dp,
        &[rule("0.0.0.0/0", None, Some((Proto::Tcp, 80)), true)],
        [true, true, true, true],
    );
    // Network and port together.
    expect(
        &mut dp,
        &[rule("0.0.0.0/0", Some(net18), Some((Proto::Tcp, 22)), true)],
        [true, true, false, true],
    );
    expect(
        &mut dp,
        &[rule("0.0.0.0/0", Some(net17), Some((Proto::Tcp, 22)), true)],
        [true, true, true, true],
    );
    // Source prefix only.
    expect(
        &mut dp,
        &[rule("198.18.7.0/24", None, None, true)],
        [false, false, false, false],
    );
    expect(
        &mut dp,
        &[rule("198.18.5.0/24", None, None, true)],
        [true, true, true, true],
    );
}

#[test]
fn the_hosts_own_traffic_and_masquerade_replies_are_not_subject() {
    let mut dp = nat_datapath();
    dp.set_filter(&numbered(&[rule("0.0.0.0/0", None, None, true)]))
        .unwrap();
    // An endpoint's flow out, masqueraded; its reply comes back to the host's address.
    let syn = packet::tcp_frame(EP1, 40000, SERVER, 7000, true, false, b"");
    let out = packet::run_tc(&mut dp, programs::UPLINK_EGRESS, &syn, 1).unwrap();
    let nat_port = packet::inspect(&out.frame).sport;
    let synack = packet::tcp_frame(SERVER, 7000, HOST, nat_port, true, true, b"");
    assert!(admitted(&mut dp, &synack));
    let back = packet::run_tc(&mut dp, programs::UPLINK_INGRESS, &synack, 1).unwrap();
    assert_eq!(packet::inspect(&back.frame).dst, EP1);
    // Traffic for the host itself (a port that is not published).
    let ssh = packet::tcp_frame(SERVER, 40000, HOST, 22, true, false, b"");
    assert!(admitted(&mut dp, &ssh));
    // A published port is subject, also for a flow already tracked: the drop takes effect.
    dp.set_filter(&[]).unwrap();
    let syn = syn_to_published(SERVER);
    assert!(admitted(&mut dp, &syn));
    dp.set_filter(&numbered(&[rule("0.0.0.0/0", None, None, true)]))
        .unwrap();
    let data = packet::tcp_frame(SERVER, 50000, HOST, 8080, false, true, b"more");
    assert!(!admitted(&mut dp, &data));
}

#[test]
fn later_fragments_match_only_rules_without_a_port() {
    let mut dp = nat_datapath();
    let net18 = network_of(&dp, "172.18.0.0/16");
    // A later fragment (offset 8 bytes) of a UDP datagram to a routed endpoint.
    let mut frag = packet::udp_frame(OTHER, 40000, ROUTED, 53, &[7; 64]);
    frag[20] = 0;
    frag[21] = 1;
    frag[24] = 0;
    frag[25] = 0;
    let sum: u32 = frag[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let csum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    frag[24..26].copy_from_slice(&csum.to_be_bytes());

    dp.set_filter(&numbered(&[rule(
        "0.0.0.0/0",
        None,
        Some((Proto::Udp, 53)),
        true,
    )]))
    .unwrap();
    assert!(admitted(&mut dp, &frag));
    dp.set_filter(&numbered(&[rule("0.0.0.0/0", Some(net18), None, true)]))
        .unwrap();
    assert!(!admitted(&mut dp, &frag));
}

/// Rule 0 allows `allowed`, rule 1 drops `dropped`: XDP counts what it drops, TC every packet
/// a rule decides, so each packet is counted once, by its reason and its rule.
fn counted_once(dp: &mut Datapath, dropped: &[u8], allowed: &[u8]) {
    for _ in 0..3 {
        assert_eq!(xdp(dp, dropped), XDP_DROP);
    }
    for _ in 0..2 {
        assert_eq!(tc(dp, dropped), TC_ACT_SHOT);
    }
    assert_eq!(xdp(dp, allowed), XDP_PASS);
    assert_eq!(tc(dp, allowed), TC_ACT_OK);
    assert_eq!(
        dp.stat(program_id::UPLINK_XDP, outcome::DROP_FILTER)
            .unwrap(),
        3
    );
    assert_eq!(
        dp.stat(program_id::UPLINK_INGRESS, outcome::DROP_FILTER)
            .unwrap(),
        2
    );
    assert_eq!(dp.filter_hits(0).unwrap(), 1);
    assert_eq!(dp.filter_hits(1).unwrap(), 5);
}

#[test]
fn drops_are_counted_with_their_reason_and_rule() {
    let mut dp = nat_datapath();
    let allow_client = rule("198.18.5.5/32", None, None, false);
    let drop_all = rule("0.0.0.0/0", None, None, true);
    dp.set_filter(&numbered(&[allow_client, drop_all])).unwrap();
    counted_once(&mut dp, &syn_to_published(OTHER), &syn_to_published(CLIENT));
    assert_eq!(outcome::NAMES[outcome::DROP_FILTER as usize], "drop_filter");
    assert!(outcome::is_drop(outcome::DROP_FILTER));
    dp.reset_filter_hits(1).unwrap();
    assert_eq!(dp.filter_hits(1).unwrap(), 0);
}

/// Random rule sets, swapped in one after the other on one datapath, against random packets
/// run through both programs: the verdict is always the first matching rule's.
#[test]
fn random_rule_sets_agree_with_first_match() {
    let mut dp = nat_datapath();
    let networks = [
        network_of(&dp, "172.17.0.0/16"),
        network_of(&dp, "172.18.0.0/16"),
    ];
    let sources = [CLIENT, OTHER, SERVER, [198, 18, 5, 6], [203, 0, 113, 1]];
    let prefixes = [0, 8, 16, 24, 31, 32];
    let ports = [(Proto::Tcp, 8080), (Proto::Udp, 5353), (Proto::Tcp, 22)];
    let mut rng = fastrand::Rng::with_seed(7);
    let mut decided = 0;
    for _ in 0..60 {
        let n = rng.usize(0..12);
        let rules: Vec<Rule> = (0..n)
            .map(|i| Rule {
                src: Some(
                    ipnet::Ipv4Net::new(
                        Ipv4Addr::from(sources[rng.usize(..sources.len())]),
                        prefixes[rng.usize(..prefixes.len())],
                    )
                    .unwrap()
                    .trunc()
                    .into(),
                ),
                network: rng.bool().then(|| networks[rng.usize(..2)]),
                port: rng.bool().then(|| ports[rng.usize(..ports.len())]),
                drop: rng.bool(),
                slot: i as u16,
            })
            .collect();
        dp.set_filter(&rules).unwrap();
        for _ in 0..25 {
            let src = sources[rng.usize(..sources.len())];
            let (frame, probe) = match rng.usize(0..4) {
                0 => (syn_to_published(src), (Some(networks[0]), Some(ports[0]))),
                1 => (
                    packet::udp_frame(src, 40000, HOST, 5353, b"q"),
                    (Some(networks[0]), Some(ports[1])),
                ),
                2 => (
                    packet::tcp_frame(src, 40000, ROUTED, 22, true, false, b""),
                    (Some(networks[1]), Some(ports[2])),
                ),
                _ => (
                    packet::icmp_echo_frame(src, ROUTED, 3, 1, false),
                    (Some(networks[1]), None),
                ),
            };
            let probe = Probe {
                src: Ipv4Addr::from(src).into(),
                network: probe.0,
                port: probe.1,
            };
            let want = first_match(&rules, &probe).is_none_or(|i| !rules[i].drop);
            decided += usize::from(first_match(&rules, &probe).is_some());
            assert_eq!(
                admitted(&mut dp, &frame),
                want,
                "rules {rules:#?}\nprobe {probe:?}"
            );
        }
    }
    assert!(decided > 300, "{decided}");
}

const UPLINK6: &str = "2001:db8:ff::2";
const OTHER_HOST6: &str = "2001:db8:ff::3";
const EP6: &str = "2001:db8:17::5";
const CLIENT6: &str = "2001:db8:5::5";
const OTHER6: &str = "2001:db8:6::6";

/// The fixture's datapath, dual stack: network 172.17.0.0/16 also has 2001:db8:17::/64, the
/// uplink has UPLINK6, tcp 8080 is published on `::` and udp 5353 on OTHER_HOST6 to EP6.
fn dual_stack_datapath() -> Datapath {
    let mut dp = nat_datapath();
    let id = network_of(&dp, "172.17.0.0/16");
    let options = NetworkOptions {
        id,
        gateway: Ipv4Addr::new(172, 17, 0, 1),
        masquerade: true,
        icc: true,
        internal: false,
        gateway_mode: GatewayMode::Nat,
    };
    dp.add_network6(
        "2001:db8:17::/64".parse().unwrap(),
        "2001:db8:17::1".parse().unwrap(),
        &options,
    )
    .unwrap();
    dp.set_uplink6(1, Some(UPLINK6.parse().unwrap())).unwrap();
    let ep: Ipv6Addr = EP6.parse().unwrap();
    dp.publish6(Proto::Tcp, Ipv6Addr::UNSPECIFIED, 8080, ep, 80)
        .unwrap();
    dp.publish6(Proto::Udp, OTHER_HOST6.parse().unwrap(), 5353, ep, 53)
        .unwrap();
    dp
}

fn a6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

fn syn6(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(a6(src), a6(dst), 64)
        .tcp(50000, dport, 1000, 64240)
        .syn();
    let mut f = Vec::new();
    b.write(&mut f, b"").unwrap();
    f
}

fn udp6(src: &str, dst: &str, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(a6(src), a6(dst), 64)
        .udp(40000, dport);
    let mut f = Vec::new();
    b.write(&mut f, b"q").unwrap();
    f
}

/// The same packet behind an empty Destination Options header (the transport checksum does
/// not change: the pseudo-header has the transport's own length and protocol).
fn behind_destination_options(frame: &[u8]) -> Vec<u8> {
    let (eth, ip, l4) = (&frame[..14], &frame[14..54], &frame[54..]);
    let mut ip = ip.to_vec();
    let next = ip[6];
    ip[6] = 60;
    let len = u16::from_be_bytes([ip[4], ip[5]]) + 8;
    ip[4..6].copy_from_slice(&len.to_be_bytes());
    let options = [next, 0, 1, 4, 0, 0, 0, 0];
    [eth, &ip, &options, l4].concat()
}

/// Issue 13 item 4: IPv6 sources in user filter rules. A rule with an IPv6 source judges IPv6
/// packets to ports published on IPv6, one with an IPv4 source only IPv4 ones, one without a
/// source both; network and port classes hold for IPv6 as for IPv4; the host's own IPv6
/// traffic and what XDP cannot read past (extension headers) stay right.
#[test]
fn ipv6_sources_are_filtered_on_ports_published_on_ipv6() {
    let mut dp = dual_stack_datapath();
    let net17 = network_of(&dp, "172.17.0.0/16");
    let client = syn6(CLIENT6, UPLINK6, 8080);
    let other = syn6(OTHER6, UPLINK6, 8080);
    let v4 = syn_to_published(CLIENT);

    // Nothing filtered: the client's SYN reaches the endpoint.
    assert!(admitted(&mut dp, &client));
    let out = packet::run_tc(&mut dp, programs::UPLINK_INGRESS, &client, 1).unwrap();
    assert_eq!(out.frame[38..54], a6(EP6), "translated to the endpoint");

    // An IPv6 prefix: its sources only; IPv4 stays open.
    dp.set_filter(&numbered(&[rule("2001:db8:5::/48", None, None, true)]))
        .unwrap();
    assert!(!admitted(&mut dp, &client));
    assert!(admitted(&mut dp, &other));
    assert!(admitted(&mut dp, &v4));
    // An IPv4 prefix, even 0.0.0.0/0, judges IPv4 only.
    dp.set_filter(&numbered(&[rule("0.0.0.0/0", None, None, true)]))
        .unwrap();
    assert!(admitted(&mut dp, &client));
    assert!(!admitted(&mut dp, &v4));
    // No source: both families.
    let drop_any = Rule {
        src: None,
        network: None,
        port: None,
        drop: true,
        slot: 0,
    };
    dp.set_filter(&[drop_any]).unwrap();
    assert!(!admitted(&mut dp, &client));
    assert!(!admitted(&mut dp, &v4));
    // First match: an allow for one IPv6 client before the drop of every source.
    let allow_client = rule("2001:db8:5::5/128", None, None, false);
    dp.set_filter(&numbered(&[allow_client, drop_any])).unwrap();
    assert!(admitted(&mut dp, &client));
    assert!(!admitted(&mut dp, &other));

    // The host's own IPv6 traffic (a port that is not published) is not subject.
    assert!(admitted(&mut dp, &syn6(OTHER6, UPLINK6, 22)));
    // Neither is a port published on another address, at the uplink's address.
    assert!(admitted(&mut dp, &udp6(OTHER6, UPLINK6, 5353)));

    // Classes: the published target's network, and the port as it arrives.
    let udp = udp6(OTHER6, OTHER_HOST6, 5353);
    let cases = [
        (Some(net17), None, [false, false]),
        (Some(net17 + 1), None, [true, true]),
        (None, Some((Proto::Tcp, 8080)), [false, true]),
        (None, Some((Proto::Udp, 5353)), [true, false]),
        (None, Some((Proto::Tcp, 80)), [true, true]),
    ];
    for (network, port, want) in cases {
        let r = Rule {
            src: Some("2001:db8::/32".parse().unwrap()),
            network,
            port,
            drop: true,
            slot: 0,
        };
        dp.set_filter(&[r]).unwrap();
        let got = [&other, &udp].map(|f| admitted(&mut dp, f));
        assert_eq!(got, want, "{r:?}");
    }

    // Behind an extension header XDP cannot judge it (it passes); TC walks past the header,
    // so the filter judges it before NAT66 translates it: it never reaches the endpoint
    // unjudged.
    let hidden = behind_destination_options(&other);
    dp.set_filter(&[]).unwrap();
    let out = packet::run_tc(&mut dp, programs::UPLINK_INGRESS, &hidden, 1).unwrap();
    assert_eq!(
        (out.action, &out.frame[38..54]),
        (TC_ACT_OK, &a6(EP6)[..]),
        "without a rule, it reaches the endpoint"
    );
    dp.set_filter(&numbered(&[rule("2001:db8:6::/48", None, None, true)]))
        .unwrap();
    assert_eq!(xdp(&mut dp, &hidden), XDP_PASS);
    let out = packet::run_tc(&mut dp, programs::UPLINK_INGRESS, &hidden, 1).unwrap();
    assert_eq!(out.action, TC_ACT_SHOT, "the filter drops it in TC");
}

/// IPv6 drops are counted as IPv4's: each packet once, by its reason and its rule.
#[test]
fn ipv6_drops_are_counted_with_their_reason_and_rule() {
    let mut dp = dual_stack_datapath();
    let allow_client = rule("2001:db8:5::5/128", None, None, false);
    let drop_v6 = rule("::/0", None, None, true);
    dp.set_filter(&numbered(&[allow_client, drop_v6])).unwrap();
    counted_once(
        &mut dp,
        &syn6(OTHER6, UPLINK6, 8080),
        &syn6(CLIENT6, UPLINK6, 8080),
    );
}
