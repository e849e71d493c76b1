//! The conntrack table's limit and garbage collection, driven with BPF_PROG_TEST_RUN.
use std::time::Duration;

use bridgenet::datapath::{
    Datapath, LoadOptions,
    conntrack::{FlowState, monotonic_ns},
};
use bridgenet_common::{outcome, program_id, programs};
use bridgenet_tests::{packet, packet::fixture::*};

/// The shared NAT datapath, with a table that holds `flows` flows.
fn datapath(flows: u32) -> Datapath {
    nat_datapath_with(&LoadOptions {
        conntrack_entries: flows * 2,
        ..LoadOptions::default()
    })
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
    // Refused flows give their room back: the count stays at the limit, not past it.
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
    dp.conntrack_remove(&reply_key).unwrap();
    let report = dp.gc_at(monotonic_ns()).unwrap();
    assert_eq!((report.orphans_removed, report.entries_left), (1, 0));
}

fn tcp(dp: &mut Datapath, program: &str, frame: &[u8]) -> packet::Seen {
    let out = packet::run_tc(dp, program, frame, 1).expect("test run");
    assert_eq!(out.action, TC_ACT_OK);
    packet::inspect(&out.frame)
}

fn flow_state(dp: &Datapath) -> FlowState {
    let flows = dp.flows_at(monotonic_ns()).unwrap();
    assert_eq!(flows.len(), 1, "{flows:?}");
    flows[0].state
}

/// Flags: SYN 0x02, ACK 0x10, FIN 0x01, RST 0x04, set on a frame built by `packet::tcp_frame`.
fn with_flags(mut frame: Vec<u8>, flags: u8) -> Vec<u8> {
    frame[14 + 20 + 13] = flags;
    let mut header = etherparse::TcpHeader::from_slice(&frame[34..]).unwrap().0;
    let ip = etherparse::Ipv4Header::from_slice(&frame[14..]).unwrap().0;
    header.checksum = header
        .calc_checksum_ipv4(&ip, &frame[34 + header.header_len()..])
        .unwrap();
    frame[34 + 16..34 + 18].copy_from_slice(&header.checksum.to_be_bytes());
    frame
}

#[test]
fn a_syn_answered_by_rst_closes_the_flow_and_frees_its_port() {
    let mut dp = datapath(16);
    let out = tcp(
        &mut dp,
        programs::UPLINK_EGRESS,
        &packet::tcp_frame(EP1, 40000, SERVER, 81, true, false, b""),
    );
    assert_eq!(flow_state(&dp), FlowState::SynSent);
    let rst = with_flags(
        packet::tcp_frame(SERVER, 81, HOST, out.sport, false, true, b""),
        0x14,
    );
    tcp(&mut dp, programs::UPLINK_INGRESS, &rst);
    assert_eq!(flow_state(&dp), FlowState::Closed);
    // Closed flows go after 10 s, and their port with them.
    let report = dp
        .gc_at(monotonic_ns() + Duration::from_secs(11).as_nanos() as u64)
        .unwrap();
    assert_eq!((report.flows_expired, report.entries_left), (1, 0));
}

#[test]
fn reconnecting_on_the_tuple_of_a_closed_connection_starts_a_fresh_flow() {
    let mut dp = datapath(16);
    let syn = packet::tcp_frame(EP1, 40000, SERVER, 80, true, false, b"");
    let first = tcp(&mut dp, programs::UPLINK_EGRESS, &syn);
    let synack = packet::tcp_frame(SERVER, 80, HOST, first.sport, true, true, b"");
    tcp(&mut dp, programs::UPLINK_INGRESS, &synack);
    assert_eq!(flow_state(&dp), FlowState::Established);
    let fin = with_flags(
        packet::tcp_frame(EP1, 40000, SERVER, 80, false, true, b""),
        0x11,
    );
    tcp(&mut dp, programs::UPLINK_EGRESS, &fin);
    let fin_back = with_flags(
        packet::tcp_frame(SERVER, 80, HOST, first.sport, false, true, b""),
        0x11,
    );
    tcp(&mut dp, programs::UPLINK_INGRESS, &fin_back);
    assert_eq!(flow_state(&dp), FlowState::Closed);

    // The endpoint connects again from the same port right away (TIME_WAIT reuse).
    let again = tcp(&mut dp, programs::UPLINK_EGRESS, &syn);
    assert_eq!(
        again.sport, first.sport,
        "same flow, same translation: no clash with itself"
    );
    assert_eq!(
        flow_state(&dp),
        FlowState::SynSent,
        "the new connection is not CLOSE"
    );
    tcp(&mut dp, programs::UPLINK_INGRESS, &synack);
    assert_eq!(flow_state(&dp), FlowState::Established);
    // So GC leaves it alone past the close timeout.
    let report = dp
        .gc_at(monotonic_ns() + Duration::from_secs(11).as_nanos() as u64)
        .unwrap();
    assert_eq!(report.flows_expired, 0);
}

#[test]
fn gc_under_churn_keeps_every_live_flow() {
    let mut dp = datapath(4096);
    // 500 flows; half see traffic again after a (simulated) 40 s pause.
    for sport in 0..500u16 {
        tcp(
            &mut dp,
            programs::UPLINK_EGRESS,
            &packet::udp_frame(EP1, 20000 + sport, SERVER, 53, b"q"),
        );
    }
    std::thread::sleep(Duration::from_millis(50));
    let pause = monotonic_ns();
    for sport in (0..500u16).step_by(2) {
        tcp(
            &mut dp,
            programs::UPLINK_EGRESS,
            &packet::udp_frame(EP1, 20000 + sport, SERVER, 53, b"q"),
        );
    }
    // Just under 30 s after the pause: only the flows untouched since before it are past 30 s.
    let report = dp
        .gc_at(pause + Duration::from_millis(29_999).as_nanos() as u64)
        .unwrap();
    assert_eq!(report.flows_expired, 250);
    let left = dp.flows_at(monotonic_ns()).unwrap();
    assert_eq!(left.len(), 250);
    assert!(
        left.iter()
            .all(|f| u16::from_be(f.original.0.sport) % 2 == 0),
        "only live flows are left"
    );
}
