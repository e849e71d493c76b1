//! The conntrack table's limit and garbage collection, driven with BPF_PROG_TEST_RUN.
use std::{net::Ipv4Addr, time::Duration};

use bridgenet::datapath::{
    Datapath, LoadOptions,
    conntrack::{FlowState, monotonic_ns},
};
use bridgenet_common::{outcome, program_id, programs};
use bridgenet_tests::{packet, require_root};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const HOST: [u8; 4] = [198, 18, 0, 2];
const SERVER: [u8; 4] = [198, 18, 0, 1];
const EP1: [u8; 4] = [172, 17, 0, 2];
const EP2: [u8; 4] = [172, 17, 0, 3];

/// A datapath whose table holds `flows` flows.
fn datapath(flows: u32) -> Datapath {
    require_root();
    let options = LoadOptions {
        conntrack_entries: flows * 2,
        ..LoadOptions::default()
    };
    let mut dp = Datapath::load_with(&options).expect("loading the datapath");
    dp.set_uplink_addr(1, Ipv4Addr::from(HOST)).unwrap();
    dp.add_subnet("172.17.0.0/16".parse().unwrap(), true)
        .unwrap();
    dp
}

fn egress(dp: &mut Datapath, frame: &[u8]) -> packet::Verdict {
    packet::run_tc(dp, programs::UPLINK_EGRESS, frame, 1).expect("test run")
}

#[test]
fn a_full_table_drops_new_flows_and_keeps_tracked_ones() {
    let mut dp = datapath(4);
    for sport in 40000..40004 {
        assert_eq!(
            egress(&mut dp, &packet::udp_frame(EP1, sport, SERVER, 53, b"q")).action,
            TC_ACT_OK
        );
    }
    assert_eq!(dp.conntrack_usage().unwrap(), (8, 8));
    // A flood of new flows from another endpoint: dropped, counted, nothing leaves untranslated.
    for sport in 50000..50100 {
        assert_eq!(
            egress(&mut dp, &packet::udp_frame(EP2, sport, SERVER, 53, b"q")).action,
            TC_ACT_SHOT
        );
    }
    assert_eq!(
        dp.stat(program_id::UPLINK_EGRESS, outcome::DROP_CT_FULL)
            .unwrap(),
        100
    );
    // The tracked flows keep working, in both directions.
    let out = egress(
        &mut dp,
        &packet::udp_frame(EP1, 40000, SERVER, 53, b"again"),
    );
    assert_eq!(out.action, TC_ACT_OK);
    let nat_port = packet::inspect(&out.frame).sport;
    let reply = packet::udp_frame(SERVER, 53, HOST, nat_port, b"a");
    let back = packet::run_tc(&mut dp, programs::UPLINK_INGRESS, &reply, 1).unwrap();
    assert_eq!(packet::inspect(&back.frame).dst, EP1);
    // The host's own traffic is never dropped for lack of room.
    let host = packet::udp_frame(HOST, 1234, SERVER, 53, b"host");
    assert_eq!(egress(&mut dp, &host).action, TC_ACT_OK);
}

#[test]
fn gc_removes_expired_flows_only_and_makes_room() {
    let mut dp = datapath(2);
    egress(&mut dp, &packet::udp_frame(EP1, 40000, SERVER, 53, b"q"));
    egress(
        &mut dp,
        &packet::tcp_frame(EP1, 40001, SERVER, 80, true, false, b""),
    );
    assert_eq!(
        egress(&mut dp, &packet::udp_frame(EP1, 40002, SERVER, 53, b"q")).action,
        TC_ACT_SHOT
    );

    let now = monotonic_ns();
    let flows = dp.flows_at(now).unwrap();
    assert_eq!(flows.len(), 2);
    let states: Vec<FlowState> = flows.iter().map(|f| f.state).collect();
    assert!(
        states.contains(&FlowState::Unreplied) && states.contains(&FlowState::SynSent),
        "{states:?}"
    );

    // Nothing is idle long enough yet.
    let report = dp.gc_at(now).unwrap();
    assert_eq!((report.flows_expired, report.entries_left), (0, 4));
    // 31 s later the unreplied UDP flow (30 s) is gone, the SYN_SENT one (60 s) is not.
    let report = dp
        .gc_at(now + Duration::from_secs(31).as_nanos() as u64)
        .unwrap();
    assert_eq!((report.flows_expired, report.entries_left), (1, 2));
    assert_eq!(dp.conntrack_usage().unwrap().0, 2, "gc recounts the table");
    // The room is usable again.
    assert_eq!(
        egress(&mut dp, &packet::udp_frame(EP1, 40002, SERVER, 53, b"q")).action,
        TC_ACT_OK
    );
}

#[test]
fn gc_removes_an_entry_whose_other_direction_is_gone() {
    let mut dp = datapath(16);
    egress(&mut dp, &packet::udp_frame(EP1, 40000, SERVER, 53, b"q"));
    let (reply_key, _) = dp
        .conntrack()
        .unwrap()
        .into_iter()
        .find(|(_, e)| e.direction == 1)
        .unwrap();
    dp.remove_conntrack_entry(&reply_key).unwrap();
    let report = dp.gc_at(monotonic_ns()).unwrap();
    assert_eq!((report.orphans_removed, report.entries_left), (1, 0));
}
