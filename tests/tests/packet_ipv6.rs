//! BPF_PROG_TEST_RUN of what IPv6 may do: an endpoint sends from its own address or its
//! MAC's link-local address only, Neighbour Discovery only for itself and with its own MAC,
//! no Router Advertisement, Redirect or DHCPv6 reply; isolation, icc=false and internal hold;
//! extension headers are walked within a bound, and a first fragment must hold them all; on
//! the uplink nothing gets into or out of a managed IPv6 subnet, nor to ::1 or mapped
//! addresses (in XDP and again in TC). Each drop is counted under its reason, and nothing passed is changed.
use std::net::{Ipv4Addr, Ipv6Addr};

use bridgenet::datapath::{Datapath, GatewayMode, NetworkOptions};
use bridgenet_common::{monitor, outcome, program_id, programs};
use bridgenet_tests::{packet, require_root};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Test runs come from the loopback device: it plays the endpoint's veth (and the uplink).
const VETH_IFINDEX: u32 = 1;
const EP_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 2];
const SIBLING_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 3];
/// The bridge's MAC (02:42 and the IPv4 gateway).
const GW_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 1];

fn a(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

const EP: &str = "2001:db8:1::2";
const SIBLING: &str = "2001:db8:1::3";
const GATEWAY: &str = "2001:db8:1::1";
const OTHER_NET_EP: &str = "2001:db8:2::2";
const WORLD: &str = "2001:db8:ff::1";
/// EP_MAC's EUI-64 link-local address.
const EP_LL: &str = "fe80::42:acff:fe11:2";
const SIBLING_LL: &str = "fe80::42:acff:fe11:3";

const HOP_BY_HOP: u8 = 0;
const UDP: u8 = 17;
const FRAGMENT: u8 = 44;
const ICMP6: u8 = 58;
const DEST_OPTS: u8 = 60;

fn options(id: u32, gateway: [u8; 4], icc: bool, internal: bool) -> NetworkOptions {
    NetworkOptions {
        id,
        gateway: Ipv4Addr::from(gateway),
        masquerade: true,
        icc,
        internal,
        gateway_mode: GatewayMode::Nat,
    }
}

/// The endpoint (172.17.0.2, EP) on network 1 (172.17.0.0/16, 2001:db8:1::/64), network 2
/// (172.18.0.0/16, 2001:db8:2::/64) beside it; `with_ipv6` false: the endpoint has no IPv6
/// address.
fn datapath_with(icc: bool, internal: bool, with_ipv6: bool) -> Datapath {
    require_root();
    let mut dp = Datapath::load().expect("loading the datapath");
    let one = options(1, [172, 17, 0, 1], icc, internal);
    let two = options(2, [172, 18, 0, 1], true, true);
    dp.add_network("172.17.0.0/16".parse().unwrap(), &one)
        .unwrap();
    dp.add_network("172.18.0.0/16".parse().unwrap(), &two)
        .unwrap();
    dp.add_network6(
        "2001:db8:1::/64".parse().unwrap(),
        GATEWAY.parse().unwrap(),
        &one,
    )
    .unwrap();
    dp.add_network6(
        "2001:db8:2::/64".parse().unwrap(),
        "2001:db8:2::1".parse().unwrap(),
        &two,
    )
    .unwrap();
    dp.add_endpoint(VETH_IFINDEX, Ipv4Addr::new(172, 17, 0, 2), EP_MAC, 1)
        .unwrap();
    if with_ipv6 {
        dp.add_endpoint6(VETH_IFINDEX, EP.parse().unwrap()).unwrap();
    }
    dp
}

fn datapath(icc: bool, internal: bool) -> Datapath {
    datapath_with(icc, internal, true)
}

/// An IPv6 frame: `next` is the first header after IPv6, `rest` everything after the IPv6
/// header (extension headers and transport, checksums left 0: no program checks them).
fn ip6(src_mac: [u8; 6], dst_mac: [u8; 6], src: &str, dst: &str, next: u8, rest: &[u8]) -> Vec<u8> {
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 255]);
    f.extend_from_slice(&a(src));
    f.extend_from_slice(&a(dst));
    f.extend_from_slice(rest);
    f
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 9, 0, 0, b'x']);
    u
}

/// An ICMPv6 message: type, code 0, checksum 0, then `body`.
fn icmp6(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(body);
    m
}

/// A Neighbour Solicitation (135) or Advertisement (136) for `target`, with a link-layer
/// address option (source for 135, target for 136) when `lladdr` is given.
fn nd(kind: u8, target: &str, lladdr: Option<[u8; 6]>) -> Vec<u8> {
    let mut body = vec![0; 4];
    if kind == 136 {
        body[0] = 0x60; // solicited, override
    }
    body.extend_from_slice(&a(target));
    if let Some(mac) = lladdr {
        body.extend_from_slice(&[if kind == 135 { 1 } else { 2 }, 1]);
        body.extend_from_slice(&mac);
    }
    icmp6(kind, &body)
}

/// An extension header (hop-by-hop or destination options) of 8 bytes, followed by `next`.
fn ext(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// A fragment header followed by `next`, at `offset` (8-byte units), more fragments set.
fn frag(next: u8, offset: u16) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&((offset << 3) | 1).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 7]);
    h
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn run(dp: &mut Datapath, program: &str, frame: &[u8]) -> u32 {
    let out = packet::run_tc(dp, program, frame, 1).expect("test run");
    if out.action == TC_ACT_OK {
        assert_eq!(out.frame, frame, "{program} never changes an IPv6 frame");
    }
    out.action
}

fn passes(dp: &mut Datapath, frame: &[u8], what: &str) {
    assert_eq!(
        run(dp, programs::ENDPOINT_INGRESS, frame),
        TC_ACT_OK,
        "{what} passes"
    );
}

fn dropped_by(dp: &mut Datapath, program: (&str, u32), frame: &[u8], reason: u32, what: &str) {
    let before = dp.stat(program.1, reason).unwrap();
    assert_eq!(run(dp, program.0, frame), TC_ACT_SHOT, "{what} is dropped");
    assert_eq!(
        dp.stat(program.1, reason).unwrap(),
        before + 1,
        "{what}: counted under {}",
        outcome::NAMES[reason as usize]
    );
}

const ENDPOINT: (&str, u32) = (programs::ENDPOINT_INGRESS, program_id::ENDPOINT_INGRESS);

fn dropped(dp: &mut Datapath, frame: &[u8], reason: u32, what: &str) {
    dropped_by(dp, ENDPOINT, frame, reason, what);
}

#[test]
fn the_endpoint_talks_ipv6_in_its_network_as_itself() {
    let mut dp = datapath(true, true);
    for dst in [GATEWAY, SIBLING] {
        let f = ip6(EP_MAC, GW_MAC, EP, dst, UDP, &udp(4000, 53));
        passes(&mut dp, &f, &format!("UDP to {dst}"));
    }
    let echo = icmp6(128, &[0, 1, 0, 1]);
    passes(
        &mut dp,
        &ip6(EP_MAC, GW_MAC, EP, GATEWAY, ICMP6, &echo),
        "echo",
    );
    passes(
        &mut dp,
        &ip6(EP_MAC, SIBLING_MAC, EP_LL, SIBLING_LL, ICMP6, &echo),
        "echo between link-local addresses",
    );
    // Resolving the gateway, from either of its addresses, with its own MAC.
    for src in [EP, EP_LL] {
        let ns = nd(135, GATEWAY, Some(EP_MAC));
        let f = ip6(
            EP_MAC,
            [0x33, 0x33, 0xff, 0, 0, 1],
            src,
            "ff02::1:ff00:1",
            ICMP6,
            &ns,
        );
        passes(&mut dp, &f, &format!("a solicitation from {src}"));
    }
    // Answering for itself, and duplicate address detection from no address.
    let na = nd(136, EP, Some(EP_MAC));
    passes(
        &mut dp,
        &ip6(EP_MAC, GW_MAC, EP_LL, GATEWAY, ICMP6, &na),
        "its advertisement",
    );
    let dad = nd(135, EP, None);
    let f = ip6(
        EP_MAC,
        [0x33, 0x33, 0xff, 0, 0, 2],
        "::",
        "ff02::1:ff00:2",
        ICMP6,
        &dad,
    );
    passes(&mut dp, &f, "duplicate address detection");
    // An MLDv2 report from no address behind a hop-by-hop header (router alert), and a
    // router solicitation.
    let report = cat(&[&ext(ICMP6), &icmp6(143, &[0, 0, 0, 0])]);
    let f = ip6(
        EP_MAC,
        [0x33, 0x33, 0, 0, 0, 0x16],
        "::",
        "ff02::16",
        HOP_BY_HOP,
        &report,
    );
    passes(&mut dp, &f, "an MLDv2 report");
    let rs = icmp6(133, &[0, 0, 0, 0, 1, 1, 2, 0x42, 172, 17, 0, 2]);
    let f = ip6(
        EP_MAC,
        [0x33, 0x33, 0, 0, 0, 2],
        EP_LL,
        "ff02::2",
        ICMP6,
        &rs,
    );
    passes(&mut dp, &f, "a router solicitation");
    // A fragmented echo: the first fragment holds the header, the later ones nothing to see.
    let first = cat(&[&frag(ICMP6, 0), &echo]);
    passes(
        &mut dp,
        &ip6(EP_MAC, GW_MAC, EP, SIBLING, FRAGMENT, &first),
        "a first fragment",
    );
    let later = cat(&[&frag(ICMP6, 185), b"payload!"]);
    passes(
        &mut dp,
        &ip6(EP_MAC, GW_MAC, EP, SIBLING, FRAGMENT, &later),
        "a later fragment",
    );
}

#[test]
fn spoofed_ipv6_sources_and_neighbour_discovery_are_dropped() {
    let mut dp = datapath(true, true);
    let u = udp(4000, 53);
    for src in [
        SIBLING,
        SIBLING_LL,
        GATEWAY,
        "::1",
        "2001:db8:ff::2",
        "::ffff:172.17.0.2",
    ] {
        let f = ip6(EP_MAC, GW_MAC, src, GATEWAY, UDP, &u);
        dropped(
            &mut dp,
            &f,
            outcome::DROP_SPOOFED,
            &format!("UDP from {src}"),
        );
    }
    dropped(
        &mut dp,
        &ip6(SIBLING_MAC, GW_MAC, EP, GATEWAY, UDP, &u),
        outcome::DROP_SPOOFED,
        "its address from another MAC",
    );
    dropped(
        &mut dp,
        &ip6(EP_MAC, GW_MAC, "::", GATEWAY, UDP, &u),
        outcome::DROP_SPOOFED,
        "UDP from no address",
    );
    let cases = [
        (
            nd(136, SIBLING, Some(EP_MAC)),
            EP_LL,
            "an advertisement for a sibling's address",
        ),
        (
            nd(136, GATEWAY, None),
            EP_LL,
            "an advertisement for the gateway's address",
        ),
        (
            nd(136, EP, Some(SIBLING_MAC)),
            EP_LL,
            "an advertisement of its address at another MAC",
        ),
        (
            nd(135, GATEWAY, Some(SIBLING_MAC)),
            EP,
            "a solicitation from another MAC",
        ),
        (
            nd(135, SIBLING, None),
            "::",
            "duplicate address detection for a sibling's address",
        ),
    ];
    for (message, src, what) in cases {
        let f = ip6(EP_MAC, GW_MAC, src, "ff02::1", ICMP6, &message);
        dropped(&mut dp, &f, outcome::DROP_SPOOFED, what);
    }
}

#[test]
fn router_advertisements_redirects_and_dhcpv6_replies_from_an_endpoint_are_dropped() {
    let mut dp = datapath(true, true);
    // Router lifetime 1800 s, and a prefix option would follow: CVE-2020-13401's packet.
    let ra = icmp6(134, &[64, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
    let all_nodes = [0x33, 0x33, 0, 0, 0, 1];
    let f = ip6(EP_MAC, all_nodes, EP_LL, "ff02::1", ICMP6, &ra);
    dropped(&mut dp, &f, outcome::DROP_ROUTER, "a router advertisement");
    let hidden = cat(&[&ext(DEST_OPTS), &ext(ICMP6), &ra]);
    let f = ip6(EP_MAC, all_nodes, EP_LL, "ff02::1", HOP_BY_HOP, &hidden);
    dropped(
        &mut dp,
        &f,
        outcome::DROP_ROUTER,
        "an advertisement behind extension headers",
    );
    let in_fragment = cat(&[&frag(ICMP6, 0), &ra]);
    let f = ip6(EP_MAC, all_nodes, EP_LL, "ff02::1", FRAGMENT, &in_fragment);
    dropped(
        &mut dp,
        &f,
        outcome::DROP_ROUTER,
        "an advertisement in a first fragment",
    );
    let redirect = icmp6(137, &[0; 36]);
    let f = ip6(EP_MAC, GW_MAC, EP_LL, GATEWAY, ICMP6, &redirect);
    dropped(&mut dp, &f, outcome::DROP_ROUTER, "a redirect");
    let reply = ip6(EP_MAC, SIBLING_MAC, EP_LL, SIBLING_LL, UDP, &udp(547, 546));
    dropped(
        &mut dp,
        &reply,
        outcome::DROP_ROUTER,
        "a DHCPv6 server's reply",
    );
}

#[test]
fn extension_headers_are_walked_within_a_bound() {
    let mut dp = datapath(true, true);
    let echo = icmp6(128, &[0, 1, 0, 1]);
    let mut five = Vec::new();
    for _ in 0..5 {
        five.extend_from_slice(&ext(DEST_OPTS));
    }
    let mut at_bound = five.clone();
    at_bound.extend_from_slice(&ext(ICMP6));
    at_bound.extend_from_slice(&echo);
    let f = ip6(EP_MAC, GW_MAC, EP, SIBLING, DEST_OPTS, &at_bound);
    passes(&mut dp, &f, "six extension headers");
    let mut past = five;
    past.extend_from_slice(&ext(DEST_OPTS));
    past.extend_from_slice(&ext(ICMP6));
    past.extend_from_slice(&echo);
    let f = ip6(EP_MAC, GW_MAC, EP, SIBLING, DEST_OPTS, &past);
    dropped(
        &mut dp,
        &f,
        outcome::DROP_EXT_HEADER,
        "seven extension headers",
    );
    // RFC 7113's evasion: the first fragment ends within the header chain.
    let split = cat(&[&frag(DEST_OPTS, 0), &[ICMP6, 1, 0, 0]]);
    let f = ip6(EP_MAC, GW_MAC, EP_LL, "ff02::1", FRAGMENT, &split);
    dropped(
        &mut dp,
        &f,
        outcome::DROP_EXT_HEADER,
        "a first fragment without the transport header",
    );
    let cut = ip6(EP_MAC, GW_MAC, EP, SIBLING, HOP_BY_HOP, &[ICMP6]);
    dropped(
        &mut dp,
        &cut,
        outcome::DROP_EXT_HEADER,
        "a truncated extension header",
    );
    let cut = ip6(EP_MAC, GW_MAC, EP, SIBLING, ICMP6, &[128, 0]);
    dropped(
        &mut dp,
        &cut,
        outcome::DROP_EXT_HEADER,
        "a truncated transport header",
    );
}

#[test]
fn ipv6_isolation_icc_and_internal_hold() {
    let u = udp(4000, 53);
    let mut dp = datapath(true, true);
    let f = ip6(EP_MAC, GW_MAC, EP, OTHER_NET_EP, UDP, &u);
    dropped(&mut dp, &f, outcome::DROP_ISOLATION, "to another network");
    let f = ip6(EP_MAC, GW_MAC, EP, WORLD, UDP, &u);
    dropped(
        &mut dp,
        &f,
        outcome::DROP_INTERNAL,
        "out of an internal network",
    );

    // Not internal: out, to the uplink that masquerades it (packet_nat66).
    let mut dp = datapath(true, false);
    passes(&mut dp, &f, "out of a network that is not internal");

    let mut dp = datapath(false, true);
    let f = ip6(EP_MAC, GW_MAC, EP, GATEWAY, UDP, &u);
    passes(&mut dp, &f, "to the gateway with icc=false");
    let ns = nd(135, GATEWAY, Some(EP_MAC));
    let f = ip6(
        EP_MAC,
        [0x33, 0x33, 0xff, 0, 0, 1],
        EP_LL,
        "ff02::1:ff00:1",
        ICMP6,
        &ns,
    );
    passes(&mut dp, &f, "resolving the gateway with icc=false");
    let cases = [
        (GW_MAC, EP, SIBLING, "to a sibling"),
        ([0x33, 0x33, 0, 0, 0, 1], EP, "ff02::1", "to all nodes"),
        (SIBLING_MAC, EP, GATEWAY, "to a sibling's MAC"),
        (
            SIBLING_MAC,
            EP_LL,
            SIBLING_LL,
            "to a sibling's link-local address",
        ),
    ];
    for (mac, src, dst, what) in cases {
        let f = ip6(EP_MAC, mac, src, dst, UDP, &u);
        dropped(
            &mut dp,
            &f,
            outcome::DROP_ICC,
            &format!("{what} with icc=false"),
        );
    }
}

#[test]
fn an_endpoint_without_ipv6_sends_none() {
    let mut dp = datapath_with(true, true, false);
    let f = ip6(
        EP_MAC,
        GW_MAC,
        EP_LL,
        "ff02::2",
        ICMP6,
        &icmp6(133, &[0; 4]),
    );
    dropped(
        &mut dp,
        &f,
        outcome::DROP_PROTOCOL,
        "IPv6 from an IPv4-only endpoint",
    );
}

#[test]
fn nothing_crosses_the_uplink_into_or_out_of_a_managed_ipv6_subnet() {
    let mut dp = datapath(true, true);
    dp.set_uplink_addr(VETH_IFINDEX, Ipv4Addr::new(198, 18, 0, 2))
        .unwrap();
    let ingress = (programs::UPLINK_INGRESS, program_id::UPLINK_INGRESS);
    let egress = (programs::UPLINK_EGRESS, program_id::UPLINK_EGRESS);
    let (out_mac, u) = ([2, 0, 0, 0, 0, 9], udp(4000, 53));
    let cases = [
        (
            WORLD,
            EP,
            outcome::DROP_ENDPOINT_DIRECT,
            "straight to an endpoint",
        ),
        (
            SIBLING,
            "2001:db8:ff::2",
            outcome::DROP_SPOOFED,
            "from a managed address",
        ),
        (WORLD, "::1", outcome::DROP_MARTIAN, "to ::1"),
        (
            WORLD,
            "::ffff:198.18.0.2",
            outcome::DROP_MARTIAN,
            "to an IPv4-mapped address",
        ),
    ];
    for (src, dst, reason, what) in cases {
        let f = ip6(out_mac, GW_MAC, src, dst, UDP, &u);
        dropped_by(&mut dp, ingress, &f, reason, what);
        // XDP drops it first, before the stack spends anything on it.
        let before = dp.stat(program_id::UPLINK_XDP, reason).unwrap();
        let out = packet::run_xdp(&mut dp, programs::UPLINK_XDP, &f, 1).unwrap();
        assert_eq!(out.action, XDP_DROP, "{what}: in XDP");
        assert_eq!(dp.stat(program_id::UPLINK_XDP, reason).unwrap(), before + 1);
    }
    let f = ip6(out_mac, GW_MAC, WORLD, "2001:db8:ff::2", UDP, &u);
    assert_eq!(
        run(&mut dp, ingress.0, &f),
        TC_ACT_OK,
        "the host's own IPv6 passes"
    );
    let out = packet::run_xdp(&mut dp, programs::UPLINK_XDP, &f, 1).unwrap();
    assert_eq!(out.action, XDP_PASS, "the host's own IPv6 passes XDP");
    let f = ip6(GW_MAC, out_mac, EP, WORLD, UDP, &u);
    dropped_by(
        &mut dp,
        egress,
        &f,
        outcome::DROP_UNTRANSLATABLE,
        "a managed source leaving an uplink without an IPv6 address",
    );
    let f = ip6(GW_MAC, out_mac, "2001:db8:ff::2", WORLD, UDP, &u);
    assert_eq!(
        run(&mut dp, egress.0, &f),
        TC_ACT_OK,
        "the host's own IPv6 leaves"
    );
    // Routed to the host from an endpoint without the endpoint check's mark.
    let bridge = (programs::BRIDGE_INGRESS, program_id::BRIDGE_INGRESS);
    let f = ip6(EP_MAC, GW_MAC, EP, GATEWAY, UDP, &u);
    dropped_by(
        &mut dp,
        bridge,
        &f,
        outcome::DROP_UNCHECKED,
        "an unchecked managed source",
    );
}

#[test]
fn the_monitor_shows_an_ipv6_drop_with_its_addresses_and_type() {
    let mut dp = datapath(true, true);
    let (mut events, mut control) = dp.take_monitor().unwrap();
    control.configure(monitor::DROPS, 1000).unwrap();
    let ra = icmp6(134, &[64, 0, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
    let f = ip6(
        EP_MAC,
        [0x33, 0x33, 0, 0, 0, 1],
        EP_LL,
        "ff02::1",
        ICMP6,
        &ra,
    );
    dropped(&mut dp, &f, outcome::DROP_ROUTER, "a router advertisement");
    let f = ip6(EP_MAC, GW_MAC, EP, OTHER_NET_EP, UDP, &udp(4000, 53));
    dropped(&mut dp, &f, outcome::DROP_ISOLATION, "to another network");

    let event = events.read().expect("an event for the advertisement");
    assert_eq!(event.kind, monitor::KIND_DROP);
    assert_eq!(u32::from(event.outcome), outcome::DROP_ROUTER);
    assert_eq!(event.ether_type, 0x86dd);
    assert_eq!((event.saddr6, event.daddr6), (a(EP_LL), a("ff02::1")));
    assert_eq!(event.proto, ICMP6);
    assert_eq!(event.sport.to_ne_bytes(), [134, 0], "ICMPv6 type and code");
    let event = events.read().expect("an event for the UDP datagram");
    assert_eq!(u32::from(event.outcome), outcome::DROP_ISOLATION);
    assert_eq!((event.saddr6, event.daddr6), (a(EP), a(OTHER_NET_EP)));
    assert_eq!(event.proto, UDP);
    assert_eq!(
        (u16::from_be(event.sport), u16::from_be(event.dport)),
        (4000, 53)
    );
}

#[test]
fn an_endpoint_written_again_without_ipv6_loses_the_ipv6_address_of_the_last() {
    // A veth's ifindex reused by an IPv4-only endpoint: what the last one could send over
    // IPv6, the new one cannot.
    let mut dp = datapath(true, true);
    let f = ip6(EP_MAC, GW_MAC, EP, GATEWAY, UDP, &udp(4000, 53));
    passes(&mut dp, &f, "IPv6 from the dual-stack endpoint");
    dp.add_endpoint(VETH_IFINDEX, Ipv4Addr::new(172, 17, 0, 2), EP_MAC, 1)
        .unwrap();
    dropped(
        &mut dp,
        &f,
        outcome::DROP_PROTOCOL,
        "IPv6 from the IPv4-only endpoint",
    );
}

/// An endpoint of an IPv6-only network (no IPv4 address: 0.0.0.0 in `ENDPOINTS`, its MAC 02:42
/// and the last four bytes of its IPv6 address): its IPv6 passes as any endpoint's, it sends
/// neither IPv4 nor ARP (`drop_protocol`), and with `--icc=false` a frame to a sibling's MAC is
/// recognized by that scheme whatever its IPv6 destination, while one to the gateway's passes.
#[test]
fn an_endpoint_of_an_ipv6_only_network_sends_ipv6_only_and_icc_false_knows_its_siblings() {
    const ONLY_EP: &str = "2001:db8:7::2";
    const ONLY_GATEWAY: &str = "2001:db8:7::1";
    const ONLY_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 2];
    const ONLY_SIBLING_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 3];
    const ONLY_GATEWAY_MAC: [u8; 6] = [0x02, 0x42, 0, 0, 0, 1];
    require_root();
    let mut dp = Datapath::load().expect("loading the datapath");
    let id = 0x00ab_cdef;
    let only = options(id, [0, 0, 0, 0], false, false);
    dp.add_network6(
        "2001:db8:7::/64".parse().unwrap(),
        ONLY_GATEWAY.parse().unwrap(),
        &only,
    )
    .unwrap();
    dp.add_endpoint(VETH_IFINDEX, Ipv4Addr::UNSPECIFIED, ONLY_MAC, id)
        .unwrap();
    dp.add_endpoint6(VETH_IFINDEX, ONLY_EP.parse().unwrap())
        .unwrap();

    let to_gateway = ip6(
        ONLY_MAC,
        ONLY_GATEWAY_MAC,
        ONLY_EP,
        ONLY_GATEWAY,
        UDP,
        &udp(4000, 53),
    );
    passes(&mut dp, &to_gateway, "UDP to the gateway");
    let out = ip6(
        ONLY_MAC,
        ONLY_GATEWAY_MAC,
        ONLY_EP,
        WORLD,
        UDP,
        &udp(4000, 53),
    );
    passes(&mut dp, &out, "UDP out through the gateway");

    let mut v4 = packet::udp_frame([0, 0, 0, 0], 68, [255, 255, 255, 255], 67, b"x");
    v4[6..12].copy_from_slice(&ONLY_MAC);
    dropped(&mut dp, &v4, outcome::DROP_PROTOCOL, "IPv4");
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&ONLY_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&ONLY_MAC);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 198, 18, 0, 9]);
    dropped(&mut dp, &arp, outcome::DROP_PROTOCOL, "ARP");

    let sibling = ip6(
        ONLY_MAC,
        ONLY_SIBLING_MAC,
        ONLY_EP,
        "2001:db8:7::3",
        UDP,
        &udp(4000, 53),
    );
    dropped(&mut dp, &sibling, outcome::DROP_ICC, "UDP to a sibling");
    let by_mac = ip6(
        ONLY_MAC,
        ONLY_SIBLING_MAC,
        ONLY_EP,
        WORLD,
        UDP,
        &udp(4000, 53),
    );
    dropped(
        &mut dp,
        &by_mac,
        outcome::DROP_ICC,
        "a frame to a sibling's MAC with an outside destination",
    );
}
