//! `bridgenet monitor` and the datapath, on every kernel of the matrix (the events are the
//! programs': TC and XDP emit them into a ring buffer, with a token bucket per CPU): each kind
//! of drop (isolation, spoofing, the user filter on XDP, hardening) shows with its reason,
//! program, endpoint and exact tuple; `--flows` shows translated flows opening and closing; a
//! flood is bounded by `monitor-rate` and what it did not show is counted as lost.
//!
//! Packets with a chosen tuple (a SYN from a known port, a spoofed source, a bare ACK) are
//! crafted with etherparse (`packet`) and sent with a raw socket from the lab's namespaces
//! (`raw::send_ipv4`). Addresses: world 198.18.0.1, host (uplink0) 198.18.0.2, the default
//! network `bridge` (its endpoints' addresses read from `endpoint ls`), other networks in
//! 198.19.0.0/16.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use bridgenet_tests::{
    control::ControlLab,
    monitor::*,
    packet::tcp_flags,
    sockets,
    topology::enter,
    traffic::{self, echo_once, open_roundtrip},
};
use serde_json::{Value, json};

/// A connection attempt from an endpoint of `bridge` to an endpoint of another network is
/// dropped by isolation, and the monitor shows it with the sender and the exact tuple.
#[test]
fn an_isolation_drop_shows_with_its_endpoint_and_tuple() {
    let mut lab = ControlLab::up();
    lab.ok(&["network", "create", "back", "--subnet", "198.19.10.0/24"]);
    let a = endpoint(&mut lab, "a", "bridge", &[]);
    let b = endpoint(&mut lab, "b", "back", &[]);
    let monitor = Monitor::start(&lab, &[]);
    let (src, dst) = (a.at(40000), b.at(80));
    let send = || send_tcp(&a.ns, src, dst, tcp_flags::SYN);
    endpoint_drop_shows(
        &lab,
        &monitor,
        &a,
        send,
        (src, dst),
        "drop_isolation",
        "tcp",
    );
}

/// A packet an endpoint sends with an address that is not its own shows as drop_spoofed with
/// the spoofed source.
#[test]
fn a_spoofed_source_shows_as_drop_spoofed() {
    let mut lab = ControlLab::up();
    let a = endpoint(&mut lab, "a", "bridge", &[]);
    let monitor = Monitor::start(&lab, &[]);
    let src = SocketAddrV4::new(Ipv4Addr::new(198, 19, 99, 9), 5000);
    let dst = SocketAddrV4::new(WORLD, 9);
    let send = || send_udp(&a.ns, src, dst);
    endpoint_drop_shows(&lab, &monitor, &a, send, (src, dst), "drop_spoofed", "udp");
}

/// A user filter rule dropping the world's traffic to a published port shows as drop_filter
/// on the uplink (XDP or TC, whichever dropped) with the world's tuple.
#[test]
fn a_user_filter_drop_shows_as_drop_filter() {
    let mut lab = ControlLab::up();
    endpoint(&mut lab, "web", "bridge", &["8080:80"]);
    lab.ok(&[
        "filter",
        "add",
        "--src",
        "198.18.0.1/32",
        "--action",
        "drop",
    ]);
    let world = lab.topo.ns("world").name().to_owned();
    let monitor = Monitor::start(&lab, &[]);
    let src = SocketAddrV4::new(WORLD, 40003);
    let dst = SocketAddrV4::new(UPLINK, 8080);
    let event = monitor.drop_of(|| send_tcp(&world, src, dst, tcp_flags::SYN), src, dst);
    assert_fields(
        &event,
        &[
            ("reason", json!("drop_filter")),
            ("interface", json!("uplink0")),
            ("proto", json!("tcp")),
        ],
    );
    let program = event["program"].as_str().unwrap_or_default();
    assert!(
        ["uplink_xdp", "uplink_ingress"].contains(&program),
        "program of {event}"
    );
    // Dropped on the uplink, before any translation: named by the published port it was for.
    assert_fields(
        &event,
        &[("endpoint", json!("web")), ("network", json!("bridge"))],
    );
}

/// TCP segments that open no flow (bare ACKs, from the world to a published port and from an
/// endpoint to the world) show as drop_untracked with their tuples; and without `--flows` a
/// connection that goes through shows nothing.
#[test]
fn segments_that_open_no_flow_show_as_drop_untracked() {
    let mut lab = ControlLab::up();
    let web = endpoint(&mut lab, "web", "bridge", &["8080:80"]);
    let world = lab.topo.ns("world").name().to_owned();
    let monitor = Monitor::start(&lab, &[]);

    // From the world, to the published port: uplink_ingress.
    let src = SocketAddrV4::new(WORLD, 40004);
    let published = SocketAddrV4::new(UPLINK, 8080);
    let event = monitor.drop_of(
        || send_tcp(&world, src, published, tcp_flags::ACK),
        src,
        published,
    );
    assert_fields(
        &event,
        &[
            ("reason", json!("drop_untracked")),
            ("program", json!("uplink_ingress")),
            ("interface", json!("uplink0")),
            ("proto", json!("tcp")),
            ("endpoint", json!("web")),
            ("network", json!("bridge")),
        ],
    );

    // From the endpoint, to the world: uplink_egress, before any masquerade.
    let src = web.at(40005);
    let dst = SocketAddrV4::new(WORLD, 7000);
    let event = monitor.drop_of(|| send_tcp(&web.ns, src, dst, tcp_flags::ACK), src, dst);
    assert_fields(
        &event,
        &[
            ("reason", json!("drop_untracked")),
            ("program", json!("uplink_egress")),
            ("interface", json!("uplink0")),
            ("proto", json!("tcp")),
            ("endpoint", json!("web")),
            ("network", json!("bridge")),
        ],
    );

    // Drops only by default: a connection (DNAT) and then a drop as a marker; no flow event
    // before the marker.
    let server = echo_once(&web.ns, "0.0.0.0:80");
    traffic::roundtrip(&world, "198.18.0.2:8080");
    server.join().unwrap();
    let marker = SocketAddrV4::new(WORLD, 40006);
    monitor.drop_of(
        || send_tcp(&world, marker, published, tcp_flags::ACK),
        marker,
        published,
    );
    monitor.assert_none("a flow event without --flows", |e| {
        e["type"] == "flow-opened" || e["type"] == "flow-closed"
    });
}

/// The fields of a TCP flow of endpoint `web` (network `bridge`) to `dst`, with `translation`
/// to `translated_src` and `translated_dst`.
fn web_flow(
    translation: &str,
    dst: &str,
    translated_src: impl ToString,
    translated_dst: impl ToString,
) -> Vec<(&'static str, Value)> {
    vec![
        ("endpoint", json!("web")),
        ("network", json!("bridge")),
        ("proto", json!("tcp")),
        ("dst", json!(dst)),
        ("translation", json!(translation)),
        ("translated_src", json!(translated_src.to_string())),
        ("translated_dst", json!(translated_dst.to_string())),
    ]
}

/// The fields of an event seen by `program` on the lab's uplink.
fn on_uplink(program: &str) -> [(&'static str, Value); 2] {
    [("program", json!(program)), ("interface", json!("uplink0"))]
}

/// `--flows`: a connection from the world to a published port opens a DNAT flow, one from an
/// endpoint to the world a masquerade (SNAT) flow, each with its exact translation; once the
/// DNAT connection is closed by both sides, GC removes its flow and the monitor shows it.
#[test]
fn flows_open_with_their_translation_and_close_after_gc() {
    let mut lab = ControlLab::up();
    let web = endpoint(&mut lab, "web", "bridge", &["8080:80"]);
    let world = lab.topo.ns("world").name().to_owned();
    let monitor = Monitor::start(&lab, &["--flows"]);

    // DNAT: the world to 198.18.0.2:8080, translated to web:80.
    let server = echo_once(&web.ns, "0.0.0.0:80");
    let stream = open_roundtrip(&world, "198.18.0.2:8080");
    let client = stream.local_addr().unwrap();
    // The client keeps its address; the destination becomes web's port 80.
    let dnat = web_flow("dnat", "198.18.0.2:8080", client, web.at(80));
    let event = monitor.wait_for(|e| is_flow(e, "flow-opened", client), EVENT_TIMEOUT);
    assert_fields(&event, &dnat);
    assert_fields(&event, &on_uplink("uplink_ingress"));
    // Closed by both sides: the client first, then the echo server when it reads the end.
    drop(stream);
    let peer = server.join().unwrap();
    assert_eq!(peer, client, "the endpoint sees the client's own address");

    // SNAT: web to the world, leaving with the uplink's address.
    let server = echo_once(&world, "198.18.0.1:7000");
    let stream = open_roundtrip(&web.ns, "198.18.0.1:7000");
    let endpoint_side = stream.local_addr().unwrap();
    drop(stream);
    let translated: SocketAddr = server.join().unwrap();
    assert_eq!(translated.ip().to_string(), UPLINK.to_string());
    let event = monitor.wait_for(|e| is_flow(e, "flow-opened", endpoint_side), EVENT_TIMEOUT);
    let world_server: SocketAddr = "198.18.0.1:7000".parse().unwrap();
    assert_fields(
        &event,
        &web_flow("snat", "198.18.0.1:7000", translated, world_server),
    );
    assert_fields(&event, &on_uplink("uplink_egress"));
    assert_eq!(
        event["src"],
        web.at(endpoint_side.port()).to_string(),
        "src of {event}"
    );

    // The DNAT flow, closed by FINs both ways, expires 10 s later; GC runs every 10 s.
    let event = monitor.wait_for(
        |e| is_flow(e, "flow-closed", client),
        Duration::from_secs(40),
    );
    assert_fields(&event, &dnat);
    // `ct ls` names the state CLOSE; the spec's example spells it "closed": either, any case.
    let state = event["state"].as_str().unwrap_or_default().to_uppercase();
    assert!(
        state == "CLOSE" || state == "CLOSED",
        "state of {event}: a flow closed by FINs both ways"
    );
}

/// A flood of drops past `monitor-rate`: what the monitor shows stays within the rate (per
/// CPU, burst = rate), the rest is reported as lost, and shown plus lost account for what
/// `stats` counted.
#[test]
fn a_flood_is_bounded_by_the_rate_and_the_rest_is_counted_as_lost() {
    const RATE: u64 = 50;
    const BURST: u32 = 3_000;
    let mut lab = ControlLab::up_with_config("on", json!({"monitor-rate": RATE}));
    lab.ok(&["network", "create", "back", "--subnet", "198.19.30.0/24"]);
    let a = endpoint(&mut lab, "a", "bridge", &[]);
    let b = endpoint(&mut lab, "b", "back", &[]);
    let monitor = Monitor::start(&lab, &[]);

    // One drop first: the gateway's ARP resolved, the monitor shows drops.
    let dst = b.at(9);
    let warm = enter(&a.ns, || sockets::udp_socket(a.at(40019)));
    monitor.drop_of(
        || {
            let _ = warm.send_to(b"warm", dst);
        },
        a.at(40019),
        dst,
    );

    // The burst: datagrams to the isolated network, as fast as one socket sends them.
    let src = a.at(40020);
    let socket = enter(&a.ns, || sockets::udp_socket(src));
    let before = lab.stat("endpoint_ingress", "drop_isolation");
    let started = Instant::now();
    let mut sent = 0u32;
    for _ in 0..BURST {
        if socket.send_to(b"flood", dst).is_ok() {
            sent += 1;
        }
    }
    // What the veth still queues gets through the program within a moment.
    std::thread::sleep(Duration::from_secs(1));
    let after = lab.stat("endpoint_ingress", "drop_isolation");
    let elapsed = started.elapsed().as_secs_f64();
    let dropped = after - before;
    assert!(dropped > 0, "the burst was dropped ({sent} sent)");

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let shown = |events: &[Value]| {
        events
            .iter()
            .filter(|e| is_drop(e, src, dst) && e["reason"] == "drop_isolation")
            .count() as u64
    };
    let lost = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["type"] == "lost")
            .filter_map(|e| e["events"].as_u64())
            .max()
            .unwrap_or(0)
    };
    monitor.wait_for(
        |e| e["type"] == "lost" && e["events"].as_u64() > Some(0),
        EVENT_TIMEOUT,
    );
    // `lost` is cumulative and sent at most once a second: wait until it accounts for the
    // burst (or time is up).
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let (received, lost_events) = loop {
        let events = monitor.events();
        let (received, lost_events) = (shown(&events), lost(&events));
        if (received + lost_events) * 10 >= dropped * 9 || Instant::now() >= deadline {
            break (received, lost_events);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "{sent} sent, {dropped} dropped in {elapsed:.2} s on {cpus} CPUs: {received} shown, \
         {lost_events} lost"
    );
    let bound = RATE as f64 * cpus * (elapsed + 2.0);
    assert!(
        received >= 1,
        "the burst's first drops are shown (the bucket starts full)"
    );
    assert!(
        received as f64 <= bound,
        "{received} events shown, more than {RATE}/s on {cpus} CPUs in {elapsed:.2} s allow \
         ({bound})"
    );
    assert!(lost_events > 0, "a lost event with events > 0");
    assert!(
        (received + lost_events) * 10 >= dropped * 9,
        "shown {received} + lost {lost_events} < 90% of the {dropped} drops counted in stats"
    );
}
