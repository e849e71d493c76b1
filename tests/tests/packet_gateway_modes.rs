//! BPF_PROG_TEST_RUN of the uplink programs for each gateway mode (Docker 28's
//! `gateway_mode_ipv4`): what traffic routed from outside straight to an endpoint meets, and
//! what address the endpoints' own traffic leaves with, each drop counted with its reason.
use std::net::Ipv4Addr;

use bridgenet::datapath::{Datapath, GatewayMode, NetworkOptions, Proto};
use bridgenet_common::{outcome, program_id, programs};
use bridgenet_tests::{
    packet::fixture::*,
    packet::{self, Verdict},
    require_root,
};

const CLIENT: [u8; 4] = [198, 18, 5, 5];
const SERVER: [u8; 4] = [198, 18, 0, 1];
/// An endpoint of the network under test (198.19.40.0/24, gateway .1).
const EP: [u8; 4] = [198, 19, 40, 2];

/// The uplink (address HOST) and one network in `mode`.
fn datapath(mode: GatewayMode) -> Datapath {
    require_root();
    let mut dp = Datapath::load().expect("loading the datapath");
    dp.set_uplink_addr(TEST_RUN_IFINDEX, Ipv4Addr::from(HOST))
        .unwrap();
    dp.add_network(
        "198.19.40.0/24".parse().unwrap(),
        &NetworkOptions {
            id: 40,
            gateway: Ipv4Addr::new(198, 19, 40, 1),
            masquerade: true,
            icc: true,
            internal: mode == GatewayMode::Isolated,
            gateway_mode: mode,
        },
    )
    .unwrap();
    dp
}

fn ingress(dp: &mut Datapath, frame: &[u8]) -> Verdict {
    packet::run_tc(dp, programs::UPLINK_INGRESS, frame, 1).expect("test run")
}

fn egress(dp: &mut Datapath, frame: &[u8]) -> Verdict {
    packet::run_tc(dp, programs::UPLINK_EGRESS, frame, 1).expect("test run")
}

fn xdp(dp: &mut Datapath, frame: &[u8]) -> u32 {
    packet::run_xdp(dp, programs::UPLINK_XDP, frame, 1)
        .expect("test run")
        .action
}

/// The frame passed as it came (no translation).
fn passed_as_is(out: &Verdict, frame: &[u8], what: &str) {
    assert_eq!(
        out.action,
        TC_ACT_OK,
        "{what}: {:?}",
        packet::inspect(frame)
    );
    assert_eq!(out.frame, frame, "{what}: passed, but changed");
}

/// Dropped by `program` with `reason`, counted once.
fn dropped(dp: &mut Datapath, program: u32, reason: u32, run: impl FnOnce(&mut Datapath) -> u32) {
    let before = dp.stat(program, reason).unwrap();
    let drop = if program == program_id::UPLINK_XDP {
        XDP_DROP
    } else {
        TC_ACT_SHOT
    };
    assert_eq!(
        run(dp),
        drop,
        "expected {}",
        outcome::NAMES[reason as usize]
    );
    assert_eq!(dp.stat(program, reason).unwrap(), before + 1, "counted");
}

#[test]
fn gateway_mode_nat_keeps_routed_traffic_away_from_endpoints() {
    let mut dp = datapath(GatewayMode::Nat);
    let syn = packet::tcp_frame(CLIENT, 50000, EP, 22, true, false, b"");
    dropped(
        &mut dp,
        program_id::UPLINK_XDP,
        outcome::DROP_ENDPOINT_DIRECT,
        |dp| xdp(dp, &syn),
    );
    dropped(
        &mut dp,
        program_id::UPLINK_INGRESS,
        outcome::DROP_ENDPOINT_DIRECT,
        |dp| ingress(dp, &syn).action,
    );
    // Out: masqueraded with the uplink's address.
    let out = egress(
        &mut dp,
        &packet::tcp_frame(EP, 40000, SERVER, 7000, true, false, b""),
    );
    assert_eq!(packet::inspect(&out.frame).src, HOST);
}

#[test]
fn gateway_mode_nat_unprotected_lets_routed_traffic_reach_any_endpoint_port_and_its_replies_out() {
    let mut dp = datapath(GatewayMode::NatUnprotected);
    for port in [22, 80, 5000] {
        let syn = packet::tcp_frame(CLIENT, 50000 + port, EP, port, true, false, b"");
        assert_eq!(xdp(&mut dp, &syn), XDP_PASS, "port {port}");
        passed_as_is(&ingress(&mut dp, &syn), &syn, "routed SYN");
        // The endpoint's answer leaves with its own address: it belongs to the routed flow.
        let synack = packet::tcp_frame(EP, port, CLIENT, 50000 + port, true, true, b"");
        passed_as_is(&egress(&mut dp, &synack), &synack, "its SYN-ACK");
    }
    let datagram = packet::udp_frame(CLIENT, 4000, EP, 53, b"q");
    passed_as_is(&ingress(&mut dp, &datagram), &datagram, "routed UDP");
    let answer = packet::udp_frame(EP, 53, CLIENT, 4000, b"a");
    passed_as_is(&egress(&mut dp, &answer), &answer, "its answer");
    // What the endpoint opens itself is still masqueraded.
    let out = egress(
        &mut dp,
        &packet::tcp_frame(EP, 40000, SERVER, 7000, true, false, b""),
    );
    assert_eq!(packet::inspect(&out.frame).src, HOST);
}

#[test]
fn gateway_mode_routed_reaches_published_endpoint_ports_only_and_leaves_with_the_endpoints_address()
{
    let mut dp = datapath(GatewayMode::Routed);
    // What the daemon writes for `-p 8080:80` on a routed network: the endpoint's own port.
    let ep = Ipv4Addr::from(EP);
    dp.publish(Proto::Tcp, Some(ep), 80, ep, 80).unwrap();

    let syn = packet::tcp_frame(CLIENT, 50000, EP, 80, true, false, b"");
    assert_eq!(xdp(&mut dp, &syn), XDP_PASS);
    passed_as_is(&ingress(&mut dp, &syn), &syn, "SYN to a published port");
    let synack = packet::tcp_frame(EP, 80, CLIENT, 50000, true, true, b"");
    passed_as_is(&egress(&mut dp, &synack), &synack, "its SYN-ACK");

    // Any other port, TCP or UDP: dropped, whatever the client.
    for frame in [
        packet::tcp_frame(CLIENT, 50001, EP, 22, true, false, b""),
        packet::udp_frame(CLIENT, 4000, EP, 80, b"q"),
    ] {
        dropped(
            &mut dp,
            program_id::UPLINK_INGRESS,
            outcome::DROP_UNPUBLISHED,
            |dp| ingress(dp, &frame).action,
        );
    }

    // Out: the endpoint's own address, and the answer comes back in; nothing else does.
    let open = packet::tcp_frame(EP, 40000, SERVER, 7000, true, false, b"");
    passed_as_is(&egress(&mut dp, &open), &open, "the endpoint's SYN");
    let answer = packet::tcp_frame(SERVER, 7000, EP, 40000, true, true, b"");
    passed_as_is(&ingress(&mut dp, &answer), &answer, "the server's SYN-ACK");
    let unasked = packet::tcp_frame(SERVER, 7000, EP, 40001, true, false, b"");
    dropped(
        &mut dp,
        program_id::UPLINK_INGRESS,
        outcome::DROP_UNPUBLISHED,
        |dp| ingress(dp, &unasked).action,
    );
}

#[test]
fn gateway_mode_isolated_takes_nothing_from_outside_and_sends_nothing_out() {
    let mut dp = datapath(GatewayMode::Isolated);
    let syn = packet::tcp_frame(CLIENT, 50000, EP, 80, true, false, b"");
    dropped(
        &mut dp,
        program_id::UPLINK_XDP,
        outcome::DROP_ENDPOINT_DIRECT,
        |dp| xdp(dp, &syn),
    );
    dropped(
        &mut dp,
        program_id::UPLINK_INGRESS,
        outcome::DROP_ENDPOINT_DIRECT,
        |dp| ingress(dp, &syn).action,
    );
    let open = packet::tcp_frame(EP, 40000, SERVER, 7000, true, false, b"");
    dropped(
        &mut dp,
        program_id::UPLINK_EGRESS,
        outcome::DROP_UNTRANSLATABLE,
        |dp| egress(dp, &open).action,
    );
}
