//! The conntrack table's limit and garbage collection, driven with BPF_PROG_TEST_RUN.
use std::time::Duration;

use bridgenet::datapath::Proto;
use bridgenet::datapath::{
    Datapath, LoadOptions,
    conntrack::{FlowState, monotonic_ns},
};
use bridgenet_common::{
    CtEntry, CtFlow, CtKey, action, ct_flags, ct_usage, direction, maps, outcome, program_id,
    programs,
};
use bridgenet_tests::{
    packet,
    packet::{fixture::*, tcp_flags::*},
};

/// The shared NAT datapath, with a table that holds `flows` flows.
fn datapath(flows: u32) -> Datapath {
    nat_datapath_with(&LoadOptions {
        conntrack_flows: flows,
        ..LoadOptions::default()
    })
}

fn egress(dp: &mut Datapath, frame: &[u8]) -> packet::Verdict {
    packet::run_tc(dp, programs::UPLINK_EGRESS, frame, 1).expect("test run")
}

/// Opens a UDP flow from EP1:`sport` and makes it assured (an answer, then a second query).
fn assured_udp_flow(dp: &mut Datapath, sport: u16) -> u16 {
    let out = egress(dp, &packet::udp_frame(EP1, sport, SERVER, 53, b"q"));
    assert_eq!(out.action, TC_ACT_OK);
    let nat_port = packet::inspect(&out.frame).sport;
    let answer = packet::udp_frame(SERVER, 53, HOST, nat_port, b"a");
    let back = packet::run_tc(dp, programs::UPLINK_INGRESS, &answer, 1).unwrap();
    assert_eq!(packet::inspect(&back.frame).dst, EP1);
    assert_eq!(
        egress(dp, &packet::udp_frame(EP1, sport, SERVER, 53, b"q2")).action,
        TC_ACT_OK
    );
    nat_port
}

#[test]
fn a_full_table_of_assured_flows_drops_new_flows_and_keeps_tracked_ones() {
    let mut dp = datapath(4);
    for sport in 40000..40004 {
        assured_udp_flow(&mut dp, sport);
    }
    assert!(
        dp.flows_at(monotonic_ns())
            .unwrap()
            .iter()
            .all(|f| f.state == FlowState::Assured)
    );
    assert_eq!(dp.conntrack_usage().unwrap(), (4, 4));
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
    // Room for two flows and two more: nothing is evicted to make room here.
    let mut dp = datapath(4);
    egress(&mut dp, &packet::udp_frame(EP1, 40000, SERVER, 53, b"q"));
    egress(
        &mut dp,
        &packet::tcp_frame(EP1, 40001, SERVER, 80, true, false, b""),
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
    assert_eq!((report.flows_expired, report.entries_left), (0, 2));
    // 21 s later the SYN_SENT flow (20 s: a handshake that never completed) is gone, the
    // unreplied UDP one (30 s) is not; 31 s later neither is left.
    let report = dp
        .gc_at(now + Duration::from_secs(21).as_nanos() as u64)
        .unwrap();
    assert_eq!((report.flows_expired, report.entries_left), (1, 1));
    assert_eq!(dp.conntrack_usage().unwrap().0, 1, "gc recounts the table");
    let report = dp
        .gc_at(now + Duration::from_secs(31).as_nanos() as u64)
        .unwrap();
    assert_eq!((report.flows_expired, report.entries_left), (1, 0));
    // The room is usable again.
    assert_eq!(
        egress(&mut dp, &packet::udp_frame(EP1, 40002, SERVER, 53, b"q")).action,
        TC_ACT_OK
    );
}

/// `CT_USAGE`'s count of exceptions.
fn exceptions_counted(dp: &mut Datapath) -> u64 {
    let usage: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(dp.ebpf_mut().map(maps::CT_USAGE).unwrap()).unwrap();
    usage.get(&ct_usage::EXCEPTIONS, 0).unwrap()
}

/// Marks the flow `key` as found from inside through `CT_EXCEPTIONS` only, as the programs do
/// for a flow whose port is past the candidates they probe.
fn make_exception(dp: &mut Datapath, key: &CtKey) -> CtKey {
    let mut map: aya::maps::HashMap<_, CtKey, CtFlow> =
        aya::maps::HashMap::try_from(dp.ebpf_mut().map_mut(maps::CONNTRACK).unwrap()).unwrap();
    let mut flow = map.get(key, 0).unwrap();
    flow.flags |= ct_flags::EXCEPTION;
    map.insert(key, flow, 0).unwrap();
    let inside = flow.inside_tuple(key);
    let mut exceptions: aya::maps::HashMap<_, CtKey, CtKey> =
        aya::maps::HashMap::try_from(dp.ebpf_mut().map_mut(maps::CT_EXCEPTIONS).unwrap()).unwrap();
    exceptions.insert(inside, key, 0).unwrap();
    let mut usage: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(dp.ebpf_mut().map_mut(maps::CT_USAGE).unwrap()).unwrap();
    let n = usage.get(&ct_usage::EXCEPTIONS, 0).unwrap();
    usage.set(ct_usage::EXCEPTIONS, n + 1, 0).unwrap();
    inside
}

fn exceptions(dp: &mut Datapath) -> Vec<(CtKey, CtKey)> {
    let map: aya::maps::HashMap<_, CtKey, CtKey> =
        aya::maps::HashMap::try_from(dp.ebpf_mut().map(maps::CT_EXCEPTIONS).unwrap()).unwrap();
    map.iter().map(Result::unwrap).collect()
}

#[test]
fn a_flows_exception_goes_with_it_and_gc_removes_one_whose_flow_is_gone() {
    let mut dp = datapath(16);
    for sport in [40000, 40001, 40002] {
        egress(&mut dp, &packet::udp_frame(EP1, sport, SERVER, 53, b"q"));
    }
    let keys: Vec<CtKey> = dp.flows().unwrap().into_iter().map(|(k, _)| k).collect();
    let inside: Vec<CtKey> = keys.iter().map(|k| make_exception(&mut dp, k)).collect();
    assert_eq!(exceptions_counted(&mut dp), 3);

    // Removed with its flow, and given back in the count.
    dp.conntrack_remove(&keys[0]).unwrap();
    assert_eq!(exceptions_counted(&mut dp), 2);
    assert!(!exceptions(&mut dp).iter().any(|(i, _)| *i == inside[0]));

    // A flow gone without its exception (the kernel's eviction): GC removes the exception
    // and recounts; the exception of a flow that is there stays.
    {
        let mut map: aya::maps::HashMap<_, CtKey, CtFlow> =
            aya::maps::HashMap::try_from(dp.ebpf_mut().map_mut(maps::CONNTRACK).unwrap()).unwrap();
        map.remove(&keys[1]).unwrap();
    }
    let report = dp.gc_at(monotonic_ns()).unwrap();
    assert_eq!((report.orphans_removed, report.entries_left), (1, 1));
    assert_eq!(exceptions(&mut dp), [(inside[2], keys[2])]);
    assert_eq!(exceptions_counted(&mut dp), 1);

    // Expired: the flow and its exception.
    let report = dp
        .gc_at(monotonic_ns() + Duration::from_secs(31).as_nanos() as u64)
        .unwrap();
    assert_eq!((report.flows_expired, report.entries_left), (1, 0));
    assert!(exceptions(&mut dp).is_empty());
    assert_eq!(exceptions_counted(&mut dp), 0);
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

/// A masqueraded connection EP1:40000 -> SERVER:80: the endpoint's segments leave through
/// `uplink_egress`, the server's come back through `uplink_ingress` to `nat_port`.
struct Masqueraded {
    nat_port: u16,
}

impl Masqueraded {
    /// Opens it with a full handshake: EP1 starts at `isn`, the server at 5000.
    fn open(dp: &mut Datapath, isn: u32) -> Self {
        let syn = packet::tcp_segment(EP1, 40000, SERVER, 80, SYN, isn, 0, b"");
        let nat_port = tcp(dp, programs::UPLINK_EGRESS, &syn).sport;
        let flow = Self { nat_port };
        assert_eq!(flow_state(dp), FlowState::SynSent);
        flow.server_sends(dp, SYN | ACK, 5000, isn + 1, b"");
        assert_eq!(flow_state(dp), FlowState::SynRecv);
        flow.endpoint_sends(dp, ACK, isn + 1, 5001, b"");
        assert_eq!(flow_state(dp), FlowState::Established);
        flow
    }

    fn endpoint_sends(&self, dp: &mut Datapath, flags: u8, seq: u32, ack: u32, data: &[u8]) {
        let segment = packet::tcp_segment(EP1, 40000, SERVER, 80, flags, seq, ack, data);
        tcp(dp, programs::UPLINK_EGRESS, &segment);
    }

    /// The server's segment, translated back to the endpoint.
    fn server_sends(&self, dp: &mut Datapath, flags: u8, seq: u32, ack: u32, data: &[u8]) {
        let segment = self.server_segment(flags, seq, ack, data);
        assert_eq!(tcp(dp, programs::UPLINK_INGRESS, &segment).dst, EP1);
    }

    fn server_segment(&self, flags: u8, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
        packet::tcp_segment(SERVER, 80, HOST, self.nat_port, flags, seq, ack, data)
    }
}

#[test]
fn a_syn_answered_by_rst_closes_the_flow_and_frees_its_port() {
    let mut dp = datapath(16);
    let syn = packet::tcp_segment(EP1, 40000, SERVER, 81, SYN, 1000, 0, b"");
    let out = tcp(&mut dp, programs::UPLINK_EGRESS, &syn);
    assert_eq!(flow_state(&dp), FlowState::SynSent);
    // A reset that does not acknowledge the SYN is not the server's answer: dropped.
    let blind = packet::tcp_segment(SERVER, 81, HOST, out.sport, RST | ACK, 0, 77, b"");
    let verdict = packet::run_tc(&mut dp, programs::UPLINK_INGRESS, &blind, 1).unwrap();
    assert_eq!(verdict.action, TC_ACT_SHOT);
    assert_eq!(flow_state(&dp), FlowState::SynSent);
    let rst = packet::tcp_segment(SERVER, 81, HOST, out.sport, RST | ACK, 0, 1001, b"");
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
    let flow = Masqueraded::open(&mut dp, 1000);
    flow.endpoint_sends(&mut dp, FIN | ACK, 1001, 5001, b"");
    flow.server_sends(&mut dp, FIN | ACK, 5001, 1002, b"");
    flow.endpoint_sends(&mut dp, ACK, 1002, 5002, b"");
    assert_eq!(flow_state(&dp), FlowState::Closed);

    // The endpoint connects again from the same port right away (TIME_WAIT reuse).
    let syn = packet::tcp_segment(EP1, 40000, SERVER, 80, SYN, 90_000, 0, b"");
    let again = tcp(&mut dp, programs::UPLINK_EGRESS, &syn);
    assert_eq!(
        again.sport, flow.nat_port,
        "same flow, same translation: no clash with itself"
    );
    assert_eq!(
        flow_state(&dp),
        FlowState::SynSent,
        "the new connection is not CLOSE"
    );
    flow.server_sends(&mut dp, SYN | ACK, 7000, 90_001, b"");
    flow.endpoint_sends(&mut dp, ACK, 90_001, 7001, b"");
    assert_eq!(flow_state(&dp), FlowState::Established);
    // So GC leaves it alone past the close timeout.
    let report = dp
        .gc_at(monotonic_ns() + Duration::from_secs(11).as_nanos() as u64)
        .unwrap();
    assert_eq!(report.flows_expired, 0);
}

/// Each direction's entry, as window tracking left it: (sequence number just past what it
/// sent, largest window it advertised, scaled).
fn windows(dp: &Datapath) -> [(u32, u32); 2] {
    let entries = dp.conntrack().unwrap();
    [direction::ORIGINAL, direction::REPLY].map(|d| {
        let (_, e) = entries.iter().find(|(_, e)| e.direction == d).unwrap();
        (e.td_end, e.td_maxwin)
    })
}

/// What window tracking records of each segment: the sequence number past its payload, which
/// the IP length gives (past TCP options, not counting the Ethernet padding of a short frame),
/// one more for SYN and FIN, and the window, scaled once the SYNs are through. A miscount
/// would move the window that spoofed RSTs and FINs are judged against.
#[test]
fn window_tracking_counts_each_segments_payload_and_window() {
    let mut dp = datapath(16);
    let flow = Masqueraded::open(&mut dp, 1000);
    // SYNs count one; the server's SYN-ACK window is not scaled, the endpoint's ACK's is (7).
    assert_eq!(windows(&dp), [(1001, 64240 << 7), (5001, 64240)]);

    // 100 bytes after 12 bytes of TCP options (timestamps: a data offset of 8 words).
    let mut segment = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(EP1, SERVER, 64)
        .tcp(40000, 80, 1001, 64240)
        .ack(5001)
        .options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0])
        .unwrap()
        .write(&mut segment, &[7; 100])
        .unwrap();
    tcp(&mut dp, programs::UPLINK_EGRESS, &segment);
    assert_eq!(windows(&dp)[0], (1101, 64240 << 7));

    // A bare ACK in a frame padded to Ethernet's 60 bytes: no payload.
    let mut ack = flow.server_segment(ACK, 5001, 1101, b"");
    ack.resize(60, 0);
    tcp(&mut dp, programs::UPLINK_INGRESS, &ack);
    assert_eq!(windows(&dp)[1], (5001, 64240 << 7));

    // 10 bytes and a FIN.
    flow.server_sends(&mut dp, FIN | ACK, 5001, 1101, &[8; 10]);
    assert_eq!(windows(&dp)[1], (5012, 64240 << 7));
}

#[test]
fn a_reset_or_fin_outside_the_window_closes_nothing() {
    let mut dp = datapath(16);
    let flow = Masqueraded::open(&mut dp, 1000);
    flow.endpoint_sends(&mut dp, ACK | PSH, 1001, 5001, &[7; 100]);
    flow.server_sends(&mut dp, ACK | PSH, 5001, 1101, &[8; 1000]);
    // A blind attacker's resets and FINs from the server's side: sequence numbers far from
    // the window (the server advertised 64240 << 7, the endpoint as much).
    let window = 64240u32 << 7;
    for seq in [
        6001u32.wrapping_add(1 << 31),
        6001 + window * 3,
        6001u32.wrapping_sub(window * 3),
    ] {
        let forged = flow.server_segment(RST, seq, 0, b"");
        let verdict = packet::run_tc(&mut dp, programs::UPLINK_INGRESS, &forged, 1).unwrap();
        assert_eq!(verdict.action, TC_ACT_SHOT, "forged RST seq {seq}");
        let fin = flow.server_segment(FIN | ACK, seq, 1101, b"");
        tcp(&mut dp, programs::UPLINK_INGRESS, &fin);
    }
    assert_eq!(flow_state(&dp), FlowState::Established);
    assert_eq!(
        dp.stat(program_id::UPLINK_INGRESS, outcome::DROP_OUT_OF_WINDOW)
            .unwrap(),
        3
    );
    // The same from the endpoint's side.
    let forged = packet::tcp_segment(EP1, 40000, SERVER, 80, RST, 1101 + (1 << 30), 0, b"");
    let verdict = packet::run_tc(&mut dp, programs::UPLINK_EGRESS, &forged, 1).unwrap();
    assert_eq!(verdict.action, TC_ACT_SHOT);
    assert_eq!(flow_state(&dp), FlowState::Established);
    // A reset in the window (what the server's stack would send) closes it.
    flow.server_sends(&mut dp, RST, 6001, 0, b"");
    assert_eq!(flow_state(&dp), FlowState::Closed);
}

#[test]
fn tcp_that_is_not_a_syn_opens_no_flow() {
    let mut dp = datapath(16);
    for flags in [ACK, ACK | PSH, FIN | ACK, RST, SYN | ACK] {
        // From an endpoint, to the world: a connection bridgenet does not track.
        let segment = packet::tcp_segment(EP1, 80, SERVER, 50000, flags, 1, 1, b"x");
        let verdict = egress(&mut dp, &segment);
        assert_eq!(verdict.action, TC_ACT_SHOT, "flags {flags:#x}");
        // From the world, to a published port.
        let segment = packet::tcp_segment(CLIENT, 50000, HOST, 8080, flags, 1, 1, b"x");
        let verdict = packet::run_tc(&mut dp, programs::UPLINK_INGRESS, &segment, 1).unwrap();
        assert_eq!(verdict.action, TC_ACT_SHOT, "flags {flags:#x}");
    }
    assert_eq!(dp.conntrack().unwrap().len(), 0, "no entry was made");
    assert_eq!(
        dp.stat(program_id::UPLINK_EGRESS, outcome::DROP_UNTRACKED)
            .unwrap(),
        5
    );
    assert_eq!(
        dp.stat(program_id::UPLINK_INGRESS, outcome::DROP_UNTRACKED)
            .unwrap(),
        5
    );
}

#[test]
fn a_syn_to_a_published_port_takes_over_the_tuple_of_a_closed_connection() {
    let mut dp = datapath(16);
    // EP1:80 published on two host ports; a client reached it through 8080 and closed.
    let publish = |dp: &mut Datapath, port| {
        dp.publish(Proto::Tcp, None, port, std::net::Ipv4Addr::from(EP1), 80)
            .unwrap()
    };
    publish(&mut dp, 8080);
    publish(&mut dp, 8081);
    let syn = |port| packet::tcp_segment(CLIENT, 50000, HOST, port, SYN, 100, 0, b"");
    tcp(&mut dp, programs::UPLINK_INGRESS, &syn(8080));
    let from_ep =
        |flags, seq, ack| packet::tcp_segment(EP1, 80, CLIENT, 50000, flags, seq, ack, b"");
    tcp(
        &mut dp,
        programs::UPLINK_EGRESS,
        &from_ep(SYN | ACK, 700, 101),
    );
    let rst = packet::tcp_segment(CLIENT, 50000, HOST, 8080, RST, 101, 0, b"");
    tcp(&mut dp, programs::UPLINK_INGRESS, &rst);
    assert_eq!(flow_state(&dp), FlowState::Closed);
    // The client reuses its port for the other mapping: the endpoint's side of the tuple is
    // the same, and the closed flow makes way at once.
    let seen = tcp(&mut dp, programs::UPLINK_INGRESS, &syn(8081));
    assert_eq!((seen.dst, seen.dport), (EP1, 80));
    assert_eq!(flow_state(&dp), FlowState::SynSent);
    let back = tcp(
        &mut dp,
        programs::UPLINK_EGRESS,
        &from_ep(SYN | ACK, 900, 101),
    );
    assert_eq!(back.sport, 8081);
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
    // The flows' clock is the coarse one, up to a tick (or, in a busy guest, a few) behind
    // `monotonic_ns`: the margins are wider than any tick.
    std::thread::sleep(Duration::from_millis(250));
    let pause = monotonic_ns();
    for sport in (0..500u16).step_by(2) {
        tcp(
            &mut dp,
            programs::UPLINK_EGRESS,
            &packet::udp_frame(EP1, 20000 + sport, SERVER, 53, b"q"),
        );
    }
    // 29.8 s after the pause: only the flows untouched since before it are past 30 s (30.05 s
    // at least); those seen again after it are at 29.8 s and their clock's lag.
    let report = dp
        .gc_at(pause + Duration::from_millis(29_800).as_nanos() as u64)
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

#[test]
fn a_full_table_makes_room_by_evicting_the_oldest_unassured_flows() {
    // 2048 flows; the ring of flows that may make room holds 1024 of them.
    let mut dp = datapath(2048);
    let nat_ports: Vec<u16> = (0..8)
        .map(|i| assured_udp_flow(&mut dp, 30000 + i))
        .collect();
    let flood = |dp: &mut Datapath, i: u16| {
        let src = [198, 19, (i >> 8) as u8, i as u8];
        let syn = packet::tcp_segment(src, 1000, HOST, 8080, SYN, 1, 0, b"");
        let out = packet::run_tc(dp, programs::UPLINK_INGRESS, &syn, 1).unwrap();
        assert_eq!(out.action, TC_ACT_OK, "flood SYN {i}");
    };
    // A flood of half-open connections to a published port from spoofed sources fills the rest.
    for i in 0..2040 {
        flood(&mut dp, i);
    }
    assert_eq!(dp.conntrack_usage().unwrap(), (2048, 2048));
    // More of the flood, and new flows of the endpoints: each one takes the room of the oldest
    // half-open one still in the ring, never that of an assured flow.
    for i in 2040..4000 {
        flood(&mut dp, i);
        let flow = packet::udp_frame(EP2, 10000 + i, SERVER, 53, b"q");
        assert_eq!(egress(&mut dp, &flow).action, TC_ACT_OK, "new flow {i}");
    }
    assert!(dp.conntrack_evicted().unwrap() >= 2 * 1960);
    assert!(dp.conntrack_usage().unwrap().0 <= 2048);
    // The assured flows are all still there and still translate.
    for (i, nat_port) in nat_ports.into_iter().enumerate() {
        let answer = packet::udp_frame(SERVER, 53, HOST, nat_port, b"a");
        let back = packet::run_tc(&mut dp, programs::UPLINK_INGRESS, &answer, 1).unwrap();
        let seen = packet::inspect(&back.frame);
        assert_eq!((seen.dst, seen.dport), (EP1, 30000 + i as u16));
    }
}

/// A flood from outside takes the room of flows opened from outside only: a connection an
/// endpoint opened keeps its half-open flow, however slow its handshake, and the other way
/// round (a CI run lost an endpoint's connection between its SYN-ACK and its ACK to an
/// unpaced flood that turned the whole ring over in 5 ms).
#[test]
fn a_flood_takes_room_only_from_flows_opened_on_its_side() {
    let mut dp = datapath(64);
    // Spoofed SYNs from outside to the published port, and an endpoint's scan of the world
    // (unanswered UDP).
    let outside = |dp: &mut Datapath, i: u16| {
        let src = [198, 19, (i >> 8) as u8, i as u8];
        let syn = packet::tcp_segment(src, 1000, HOST, 8080, SYN, 1, 0, b"");
        let out = packet::run_tc(dp, programs::UPLINK_INGRESS, &syn, 1).unwrap();
        assert_eq!(out.action, TC_ACT_OK, "outside SYN {i}");
    };
    let inside = |dp: &mut Datapath, i: u16| {
        let probe = packet::udp_frame(EP2, 10000 + i, [198, 19, 9, (i % 250) as u8], 53, b"q");
        assert_eq!(egress(dp, &probe).action, TC_ACT_OK, "inside probe {i}");
    };
    // The table is full of both floods.
    for i in 0..200 {
        outside(&mut dp, i);
        inside(&mut dp, i);
    }
    // An endpoint's connection to the server, answered but not yet acknowledged; then the
    // flood from outside turns the table over many times.
    let syn = packet::tcp_segment(EP1, 40000, SERVER, 80, SYN, 1000, 0, b"");
    let nat_port = tcp(&mut dp, programs::UPLINK_EGRESS, &syn).sport;
    let flow = Masqueraded { nat_port };
    flow.server_sends(&mut dp, SYN | ACK, 5000, 1001, b"");
    for i in 200..1200 {
        outside(&mut dp, i);
    }
    // The endpoint's connection completes and carries data both ways.
    flow.endpoint_sends(&mut dp, ACK, 1001, 5001, b"");
    flow.endpoint_sends(&mut dp, ACK | PSH, 1001, 5001, b"ping");
    flow.server_sends(&mut dp, ACK | PSH, 5001, 1005, b"pong");
    // A client's connection to the published port, half-open; then the flood from inside.
    let client_syn = packet::tcp_segment(CLIENT, 50000, HOST, 8080, SYN, 7000, 0, b"");
    assert_eq!(tcp(&mut dp, programs::UPLINK_INGRESS, &client_syn).dst, EP1);
    for i in 200..1200 {
        inside(&mut dp, i);
    }
    assert!(dp.conntrack_evicted().unwrap() >= 2000);
    // The client's connection completes.
    let ack = packet::tcp_segment(CLIENT, 50000, HOST, 8080, ACK, 7001, 1, b"");
    assert_eq!(tcp(&mut dp, programs::UPLINK_INGRESS, &ack).dst, EP1);
}

#[test]
fn host_flows_take_room_from_the_limit() {
    let mut dp = datapath(4);
    for sport in 0..3u16 {
        let host = packet::tcp_segment(HOST, 40000 + sport, SERVER, 22, SYN, 1, 0, b"");
        assert_eq!(egress(&mut dp, &host).action, TC_ACT_OK);
    }
    assert_eq!(dp.conntrack_usage().unwrap(), (3, 4));
    assert_eq!(dp.flows().unwrap().len(), 3, "every flow is counted");
    // A host flow past the limit is not tracked, and its packets pass all the same.
    for sport in 3..20u16 {
        let host = packet::udp_frame(HOST, 40000 + sport, SERVER, 53, b"q");
        assert_eq!(egress(&mut dp, &host).action, TC_ACT_OK);
        let (flows, limit) = dp.conntrack_usage().unwrap();
        assert!(flows <= limit);
        assert_eq!(dp.flows().unwrap().len() as u64, flows);
    }
}

/// GC passes over a large table while new flows arrive all the time (two loads of the datapath
/// sharing pinned maps, as the datapath and the daemon share them): no flow loses an entry.
#[test]
fn gc_passes_during_a_stream_of_new_flows_lose_no_entry() {
    let bpffs = bridgenet_tests::Bpffs::new("gc");
    let options = LoadOptions {
        pin_dir: Some(bpffs.0.clone()),
        conntrack_flows: 200_000,
        ..LoadOptions::default()
    };
    let mut flows = nat_datapath_with(&options);
    let mut gc = Datapath::load_with(&options).expect("second load on the same pins");
    // Flow i: 172.17.x.y:P -> 198.18-19.x.y:53, all distinct (a source port below the host's
    // range is kept).
    let frame = |i: u32| {
        let (hi, lo) = ((i >> 8) as u8, i as u8);
        let server = [198, 18 | ((i >> 16) & 1) as u8, hi, lo];
        let sport = 20000 + (i >> 17) as u16;
        packet::udp_frame([172, 17, hi, lo], sport, server, 53, b"q")
    };
    // When each batch of flows was opened: a flow idle for 30 s may expire (UDP, unreplied),
    // as it should, on a machine slow enough for the test to last that long.
    let mut batches: Vec<(u32, std::time::Instant)> = Vec::new();
    let mut next = 0u32;
    let mut open = |dp: &mut Datapath, count: u32| {
        for _ in 0..count {
            assert_eq!(egress(dp, &frame(next)).action, TC_ACT_OK, "flow {next}");
            next += 1;
        }
        batches.push((next, std::time::Instant::now()));
    };
    // A large table: the listing takes long enough for many flows to start during it (a
    // smaller one under emulation, where the listing is ten times slower).
    for _ in 0..bridgenet_tests::repetitions(60, 15) {
        open(&mut flows, 1000);
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let passes = std::thread::scope(|scope| {
        let gc_thread = scope.spawn(|| {
            let mut passes = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || passes < 3 {
                gc.gc_at(monotonic_ns()).unwrap();
                passes += 1;
            }
            passes
        });
        // About 15,000 new flows a second for 8 s: the table stays under its limit.
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            let batch = std::time::Instant::now();
            open(&mut flows, 500);
            std::thread::sleep(Duration::from_millis(33).saturating_sub(batch.elapsed()));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        gc_thread.join().unwrap()
    });
    let opened = next;
    // Flows opened before this could have expired; every later one is live.
    let young = batches
        .iter()
        .take_while(|(_, at)| at.elapsed() > Duration::from_secs(28))
        .last()
        .map_or(0, |(upto, _)| *upto);
    eprintln!("{opened} flows, {passes} GC passes, flows from {young} on must all be there");
    assert!(passes >= 3);
    let entries = flows.conntrack().unwrap();
    let keys: std::collections::HashSet<_> = entries.iter().map(|(k, _)| *k).collect();
    let lost = (young..opened)
        .filter(|&i| {
            let seen = packet::inspect(&frame(i));
            let key = bridgenet_common::CtKey {
                saddr: u32::from_ne_bytes(seen.src),
                daddr: u32::from_ne_bytes(seen.dst),
                sport: seen.sport.to_be(),
                dport: seen.dport.to_be(),
                proto: 17,
                _pad: [0; 3],
            };
            !keys.contains(&key)
        })
        .count();
    assert_eq!(lost, 0, "live flows that GC removed");
}

/// GC reads the table thousands of entries per system call (BPF_MAP_LOOKUP_BATCH): over a table
/// of many such chunks it removes exactly the idle flows and keeps the rest.
#[test]
fn gc_over_a_table_of_many_chunks_removes_exactly_the_idle_flows() {
    const FLOWS: u32 = 20_000;
    let mut dp = datapath(FLOWS);
    // GC's clock 200 s after the idle flows' last packet (a guest may have booted less than
    // 200 s ago: the clock is the test's).
    let idle_since = monotonic_ns();
    let now = idle_since + Duration::from_secs(200).as_nanos() as u64;
    let idle = |i: u32| i.is_multiple_of(3);
    {
        let mut map: aya::maps::HashMap<_, CtKey, CtFlow> =
            aya::maps::HashMap::try_from(dp.ebpf_mut().map_mut(maps::CONNTRACK).unwrap()).unwrap();
        for i in 0..FLOWS {
            let original = CtKey {
                saddr: u32::from_ne_bytes([10, 1, (i >> 8) as u8, i as u8]),
                daddr: u32::from_ne_bytes(SERVER),
                sport: (40_000 + (i % 20_000) as u16).to_be(),
                dport: 53u16.to_be(),
                proto: 17,
                _pad: [0; 3],
            };
            let reply = original.reversed();
            let last_seen_ns = if idle(i) { idle_since } else { now };
            let entry = |peer, dir| CtEntry {
                peer,
                last_seen_ns,
                direction: dir,
                action: action::HOST,
                ..CtEntry::default()
            };
            let (key, flow) = CtFlow::from_entries(
                (&original, &entry(reply, direction::ORIGINAL)),
                (&reply, &entry(original, direction::REPLY)),
            );
            map.insert(key, flow, 0).unwrap();
        }
    }
    let idle_flows = (0..FLOWS).filter(|i| idle(*i)).count();
    let report = dp.gc_at(now).unwrap();
    assert_eq!(report.flows_expired, idle_flows);
    assert_eq!(report.orphans_removed, 0);
    assert_eq!(report.entries_left, FLOWS as usize - idle_flows);
    let left = dp.conntrack().unwrap();
    assert_eq!(left.len(), 2 * report.entries_left);
    assert!(
        left.iter().all(|(_, e)| e.last_seen_ns == now),
        "an idle entry is left"
    );
}

/// The window scale a SYN announces, as its flow's entry records it (RST and FIN must fall in
/// the scaled window), whatever options surround it: Linux's, Windows' and macOS's layouts,
/// 37 NOPs before it (the longest walk), none, one after the end of the list, one whose
/// length is wrong, and one larger than TCP allows (14 kept).
#[test]
fn the_window_scale_is_found_in_every_layout_of_options() {
    let mut dp = nat_datapath();
    let mss = [2, 4, 5, 180];
    let ts = [8, 10, 0, 0, 0, 1, 0, 0, 0, 0];
    let nops_then_ws: Vec<u8> = std::iter::repeat_n(1, 37).chain([3, 3, 9]).collect();
    let cases: [(&str, Vec<u8>, u8); 9] = [
        ("Linux", [&mss[..], &[4, 2], &ts, &[1, 3, 3, 7]].concat(), 7),
        ("Windows", [&mss[..], &[1, 3, 3, 8, 1, 1, 4, 2]].concat(), 8),
        (
            "macOS",
            [&mss[..], &[1, 3, 3, 6, 1, 1], &ts, &[4, 2, 0, 0]].concat(),
            6,
        ),
        ("no options", Vec::new(), 0),
        ("MSS only", mss.to_vec(), 0),
        ("after the end of the list", vec![0, 3, 3, 7], 0),
        ("after 37 NOPs", nops_then_ws, 9),
        ("a wrong length", vec![3, 1, 7, 0], 0),
        ("too large", vec![3, 3, 20, 0], 14),
    ];
    for (i, (what, options, wscale)) in cases.into_iter().enumerate() {
        let sport = 30000 + i as u16;
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(EP1, SERVER, 64)
            .tcp(sport, 443, 1000, 64240)
            .syn()
            .options_raw(&options)
            .unwrap()
            .write(&mut frame, &[])
            .unwrap();
        assert_eq!(egress(&mut dp, &frame).action, TC_ACT_OK, "{what}");
        let entry = dp
            .conntrack()
            .unwrap()
            .into_iter()
            .find(|(k, e)| k.sport == sport.to_be() && e.direction == direction::ORIGINAL)
            .unwrap_or_else(|| panic!("{what}: no flow"))
            .1;
        assert_eq!(entry.wscale, wscale, "window scale with options {what}");
    }
}
