//! Revocation of flows (`Datapath::revoke`) with the real programs (BPF_PROG_TEST_RUN): only
//! the flows of what went away are removed, with their exceptions, and their room in the table
//! is usable again at once, before any garbage collection.
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap};
use bridgenet::datapath::{
    Datapath, LoadOptions, Proto,
    conntrack::{masqueraded_with, uses_addr, uses_mapping},
};
use bridgenet_common::{CtFlow, CtKey, ct_flags, ct_usage, maps, programs};
use bridgenet_tests::{packet, packet::fixture::*};

fn run(dp: &mut Datapath, program: &str, frame: &[u8]) -> packet::Verdict {
    packet::run_tc(dp, program, frame, TEST_RUN_IFINDEX).expect("test run")
}

#[test]
fn revoking_removes_the_matching_flows_only_and_gives_their_room_back() {
    // Room for 4 flows.
    let mut dp = nat_datapath_with(&LoadOptions {
        conntrack_flows: 4,
        ..LoadOptions::default()
    });
    // Two masqueraded flows from EP1, one UDP flow to the published 5353 (EP1:53), one to
    // 8080 (EP1:80), then a fifth flow is refused: the table is full.
    for sport in [40000, 40001] {
        let out = run(
            &mut dp,
            programs::UPLINK_EGRESS,
            &packet::udp_frame(EP1, sport, SERVER, 53, b"q"),
        );
        assert_eq!(out.action, TC_ACT_OK);
    }
    let to_5353 = packet::udp_frame(CLIENT, 50000, HOST, 5353, b"q");
    assert_eq!(
        run(&mut dp, programs::UPLINK_INGRESS, &to_5353).action,
        TC_ACT_OK
    );
    let to_8080 = packet::tcp_syn_frame(CLIENT, 50001, HOST, 8080);
    assert_eq!(
        run(&mut dp, programs::UPLINK_INGRESS, &to_8080).action,
        TC_ACT_OK
    );
    let fifth = packet::udp_frame(EP2, 40002, SERVER, 53, b"q");
    assert_eq!(
        run(&mut dp, programs::UPLINK_EGRESS, &fifth).action,
        TC_ACT_SHOT
    );
    assert_eq!(dp.conntrack_usage().unwrap(), (4, 4));

    // Unpublishing udp 5353 revokes its flow and nothing else; an unrelated mapping matches
    // nothing.
    let (ep1, host) = (Ipv4Addr::from(EP1), Ipv4Addr::from(HOST));
    let none = dp
        .revoke(uses_mapping(Proto::Udp as u8, None, 5353, ep1, 80))
        .unwrap();
    assert_eq!((none.flows, none.entries), (0, 0));
    let report = dp
        .revoke(uses_mapping(Proto::Udp as u8, None, 5353, ep1, 53))
        .unwrap();
    assert_eq!((report.flows, report.entries), (1, 1));
    let left = dp.conntrack().unwrap();
    assert_eq!(left.len(), 6);
    assert!(
        left.iter()
            .all(|(k, _)| k.proto != 17 || u16::from_be(k.dport) != 5353)
    );
    assert_eq!(
        dp.conntrack_usage().unwrap().0,
        3,
        "room given back at once"
    );
    assert_eq!(
        run(&mut dp, programs::UPLINK_EGRESS, &fifth).action,
        TC_ACT_OK
    );

    // The old uplink address takes the masqueraded flows (the two of EP1 and EP2's), not the
    // published one.
    let report = dp.revoke(masqueraded_with(host)).unwrap();
    assert_eq!((report.flows, report.entries), (3, 3));
    assert_eq!(dp.conntrack_usage().unwrap().0, 1);

    // The endpoint's address takes the rest: the flow to 8080, published to it.
    let report = dp.revoke(uses_addr(ep1)).unwrap();
    assert_eq!((report.flows, report.entries), (1, 1));
    assert!(dp.conntrack().unwrap().is_empty());
    assert_eq!(dp.conntrack_usage().unwrap().0, 0);
}

#[test]
fn the_exception_of_a_revoked_flow_goes_too() {
    let mut dp = nat_datapath();
    let to_8080 = packet::tcp_syn_frame(CLIENT, 50001, HOST, 8080);
    assert_eq!(
        run(&mut dp, programs::UPLINK_INGRESS, &to_8080).action,
        TC_ACT_OK
    );
    // Found from inside through CT_EXCEPTIONS, as a flow of a fifth mapping of EP1:80 is.
    let (key, mut flow) = dp.flows().unwrap()[0];
    flow.flags |= ct_flags::EXCEPTION;
    let ebpf = dp.ebpf_mut();
    HashMap::<_, CtKey, CtFlow>::try_from(ebpf.map_mut(maps::CONNTRACK).unwrap())
        .unwrap()
        .insert(key, flow, 0)
        .unwrap();
    HashMap::<_, CtKey, CtKey>::try_from(ebpf.map_mut(maps::CT_EXCEPTIONS).unwrap())
        .unwrap()
        .insert(flow.inside_tuple(&key), key, 0)
        .unwrap();
    let mut usage = Array::<_, u64>::try_from(ebpf.map_mut(maps::CT_USAGE).unwrap()).unwrap();
    usage.set(ct_usage::EXCEPTIONS, 1, 0).unwrap();

    let report = dp
        .revoke(uses_mapping(
            Proto::Tcp as u8,
            None,
            8080,
            Ipv4Addr::from(EP1),
            80,
        ))
        .unwrap();
    assert_eq!((report.flows, report.entries), (1, 1));
    assert!(dp.conntrack().unwrap().is_empty());
    let ebpf = dp.ebpf_mut();
    let exceptions =
        HashMap::<_, CtKey, CtKey>::try_from(ebpf.map(maps::CT_EXCEPTIONS).unwrap()).unwrap();
    assert_eq!(exceptions.keys().count(), 0);
    let usage = Array::<_, u64>::try_from(ebpf.map(maps::CT_USAGE).unwrap()).unwrap();
    assert_eq!(usage.get(&ct_usage::EXCEPTIONS, 0).unwrap(), 0);
}
