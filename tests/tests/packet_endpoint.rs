//! BPF_PROG_TEST_RUN of the endpoint program: anti-spoofing (address, MAC, ARP), isolation
//! between networks, icc=false and internal networks, each drop counted with its reason.
use std::net::Ipv4Addr;

use bridgenet::datapath::{Datapath, GatewayMode, NetworkOptions};
use bridgenet_common::{outcome, program_id, programs};
use bridgenet_tests::{packet, require_root};
use etherparse::PacketBuilder;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
/// Test runs come from the loopback device: it plays the endpoint's veth here.
const VETH_IFINDEX: u32 = 1;
const EP_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 2];
const EP: [u8; 4] = [172, 17, 0, 2];
const SIBLING: [u8; 4] = [172, 17, 0, 3];
const GATEWAY: [u8; 4] = [172, 17, 0, 1];
const OTHER_NET_EP: [u8; 4] = [172, 18, 0, 2];
const OTHER_NET_GW: [u8; 4] = [172, 18, 0, 1];
const WORLD: [u8; 4] = [198, 18, 0, 1];

fn network(id: u32, gateway: [u8; 4], icc: bool, internal: bool) -> NetworkOptions {
    NetworkOptions {
        id,
        gateway: Ipv4Addr::from(gateway),
        masquerade: true,
        icc,
        internal,
        gateway_mode: GatewayMode::Nat,
    }
}

/// The endpoint EP (MAC 02:42:ac:11:00:02) on network 1 (172.17.0.0/16), with network 2
/// (172.18.0.0/16) beside it.
fn datapath(icc: bool, internal: bool) -> Datapath {
    require_root();
    let mut dp = Datapath::load().expect("loading the datapath");
    dp.add_network(
        "172.17.0.0/16".parse().unwrap(),
        &network(1, GATEWAY, icc, internal),
    )
    .unwrap();
    dp.add_network(
        "172.18.0.0/16".parse().unwrap(),
        &network(2, OTHER_NET_GW, true, false),
    )
    .unwrap();
    dp.add_endpoint(VETH_IFINDEX, Ipv4Addr::from(EP), EP_MAC, 1)
        .unwrap();
    dp
}

/// A UDP frame from `src_mac`/`src` to `dst`.
fn frame(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac, [0x02, 0, 0, 0, 0, 0xff])
        .ipv4(src, dst, 64)
        .udp(4000, 53);
    let mut out = Vec::with_capacity(builder.size(1));
    builder.write(&mut out, b"x").unwrap();
    out
}

/// An ARP request from `sha`/`spa` for `tpa`.
fn arp(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

fn verdict(dp: &mut Datapath, frame: &[u8]) -> u32 {
    let out = packet::run_tc(dp, programs::ENDPOINT_INGRESS, frame, 1).expect("test run");
    if out.action == TC_ACT_OK {
        assert_eq!(
            out.frame, frame,
            "the endpoint program never changes a frame"
        );
    }
    out.action
}

fn dropped_for(dp: &mut Datapath, frame: &[u8], reason: u32) {
    let before = dp.stat(program_id::ENDPOINT_INGRESS, reason).unwrap();
    assert_eq!(verdict(dp, frame), TC_ACT_SHOT);
    assert_eq!(
        dp.stat(program_id::ENDPOINT_INGRESS, reason).unwrap(),
        before + 1,
        "counted under its reason"
    );
}

#[test]
fn the_endpoint_reaches_the_world_its_gateway_its_siblings_and_arps_as_itself() {
    let mut dp = datapath(true, false);
    for dst in [WORLD, GATEWAY, SIBLING, [198, 18, 0, 2]] {
        assert_eq!(
            verdict(&mut dp, &frame(EP_MAC, EP, dst)),
            TC_ACT_OK,
            "to {dst:?}"
        );
    }
    assert_eq!(verdict(&mut dp, &arp(EP_MAC, EP, GATEWAY)), TC_ACT_OK);
}

#[test]
fn spoofed_sources_are_dropped() {
    let mut dp = datapath(true, false);
    // Another endpoint, the host, loopback, another subnet.
    for src in [SIBLING, [198, 18, 0, 2], [127, 0, 0, 1], [10, 9, 9, 9]] {
        dropped_for(&mut dp, &frame(EP_MAC, src, WORLD), outcome::DROP_SPOOFED);
    }
    // A forged MAC with the right address: another endpoint's, and the endpoint's own with
    // one bit changed in each of its six bytes (every byte is compared).
    dropped_for(
        &mut dp,
        &frame([0x02, 0x42, 172, 17, 0, 3], EP, WORLD),
        outcome::DROP_SPOOFED,
    );
    for byte in 0..6 {
        let mut mac = EP_MAC;
        mac[byte] ^= 0x10;
        dropped_for(&mut dp, &frame(mac, EP, WORLD), outcome::DROP_SPOOFED);
        // In the ARP body only.
        let mut forged = arp(EP_MAC, EP, GATEWAY);
        forged[22..28].copy_from_slice(&mac);
        dropped_for(&mut dp, &forged, outcome::DROP_SPOOFED);
    }
    // ARP claiming another address, or another MAC inside the ARP body.
    dropped_for(
        &mut dp,
        &arp(EP_MAC, SIBLING, GATEWAY),
        outcome::DROP_SPOOFED,
    );
    let mut forged = arp(EP_MAC, EP, GATEWAY);
    forged[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    dropped_for(&mut dp, &forged, outcome::DROP_SPOOFED);
}

#[test]
fn another_network_is_unreachable_its_gateway_included() {
    let mut dp = datapath(true, false);
    for dst in [OTHER_NET_EP, OTHER_NET_GW, [172, 18, 255, 255]] {
        dropped_for(&mut dp, &frame(EP_MAC, EP, dst), outcome::DROP_ISOLATION);
    }
}

#[test]
fn icc_false_blocks_siblings_but_not_the_gateway_or_the_world() {
    let mut dp = datapath(false, false);
    dropped_for(&mut dp, &frame(EP_MAC, EP, SIBLING), outcome::DROP_ICC);
    assert_eq!(verdict(&mut dp, &frame(EP_MAC, EP, GATEWAY)), TC_ACT_OK);
    assert_eq!(verdict(&mut dp, &frame(EP_MAC, EP, WORLD)), TC_ACT_OK);
}

#[test]
fn an_internal_network_has_no_way_out() {
    let mut dp = datapath(true, true);
    dropped_for(&mut dp, &frame(EP_MAC, EP, WORLD), outcome::DROP_INTERNAL);
    assert_eq!(verdict(&mut dp, &frame(EP_MAC, EP, SIBLING)), TC_ACT_OK);
}

#[test]
fn an_unknown_veth_and_other_protocols_fail_closed() {
    require_root();
    let mut dp = Datapath::load().unwrap();
    dropped_for(&mut dp, &frame(EP_MAC, EP, WORLD), outcome::DROP_UNKNOWN);
    let mut dp = datapath(true, false);
    let mut ipv6 = frame(EP_MAC, EP, WORLD);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    // Long enough for the IPv6 header the kernel checks before the program runs.
    ipv6.extend_from_slice(&[0; 40]);
    dropped_for(&mut dp, &ipv6, outcome::DROP_PROTOCOL);
}

/// A UDP frame from EP to `dst` sent to the Ethernet address `dst_mac`.
fn frame_to_mac(dst_mac: [u8; 6], dst: [u8; 4]) -> Vec<u8> {
    let mut f = frame(EP_MAC, EP, dst);
    f[..6].copy_from_slice(&dst_mac);
    f
}

const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// The Ethernet address of 224.0.0.251 (mDNS).
const MDNS_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 0xfb];
const SIBLING_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 3];

#[test]
fn icc_false_blocks_broadcast_multicast_and_frames_to_a_sibling_mac() {
    let mut dp = datapath(false, false);
    let frames = [
        ("limited broadcast", frame_to_mac(BROADCAST_MAC, [255; 4])),
        (
            "subnet broadcast",
            frame_to_mac(BROADCAST_MAC, [172, 17, 255, 255]),
        ),
        (
            "multicast 224.0.0.251",
            frame_to_mac(MDNS_MAC, [224, 0, 0, 251]),
        ),
        (
            "multicast 239.1.2.3",
            frame_to_mac([0x01, 0x00, 0x5e, 1, 2, 3], [239, 1, 2, 3]),
        ),
        (
            "the gateway's address, L2 broadcast",
            frame_to_mac(BROADCAST_MAC, GATEWAY),
        ),
        (
            "the world's address, L2 multicast",
            frame_to_mac(MDNS_MAC, WORLD),
        ),
        (
            "the world's address, to a sibling's MAC",
            frame_to_mac(SIBLING_MAC, WORLD),
        ),
        (
            "the gateway's address, to a sibling's MAC",
            frame_to_mac(SIBLING_MAC, GATEWAY),
        ),
    ];
    for (what, f) in &frames {
        let before = dp
            .stat(program_id::ENDPOINT_INGRESS, outcome::DROP_ICC)
            .unwrap();
        assert_eq!(verdict(&mut dp, f), TC_ACT_SHOT, "{what}");
        assert_eq!(
            dp.stat(program_id::ENDPOINT_INGRESS, outcome::DROP_ICC)
                .unwrap(),
            before + 1,
            "{what}: counted as drop_icc"
        );
    }
    // The gateway and the world, through the gateway's MAC, as before; ARP (to the gateway and,
    // as with Docker's icc=false, for a sibling) still resolves.
    assert_eq!(verdict(&mut dp, &frame(EP_MAC, EP, GATEWAY)), TC_ACT_OK);
    assert_eq!(verdict(&mut dp, &frame(EP_MAC, EP, WORLD)), TC_ACT_OK);
    assert_eq!(verdict(&mut dp, &arp(EP_MAC, EP, GATEWAY)), TC_ACT_OK);
    assert_eq!(verdict(&mut dp, &arp(EP_MAC, EP, SIBLING)), TC_ACT_OK);

    // With icc, broadcast and multicast between endpoints go through.
    let mut dp = datapath(true, false);
    for (what, f) in &frames[..4] {
        assert_eq!(verdict(&mut dp, f), TC_ACT_OK, "icc=true: {what}");
    }
}
