//! `bridgenet monitor` through the daemon with real traffic: each kind of drop (isolation,
//! spoofing, the user filter, hardening) shows with its reason, program, endpoint and exact
//! tuple; the filters keep only what they name; `--flows` shows translated flows opening and
//! closing; a flood is bounded by `monitor-rate` and what it did not show is counted as lost;
//! bad filters are refused; a reader that goes away ends the monitor quietly; a daemon stopped
//! while a monitor is attached stops at once.
//!
//! Packets with a chosen tuple (a SYN from a known port, a spoofed source, a bare ACK) are
//! crafted with etherparse (`packet`) and sent with a raw socket from the lab's namespaces
//! (`raw::send_ipv4`). Addresses: world 198.18.0.1, host (uplink0) 198.18.0.2, the default
//! network `bridge` (its endpoints' addresses read from `endpoint ls`), other networks in
//! 198.19.0.0/16.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use bridgenet_tests::{
    control::{self, ControlLab, Stop},
    packet::{self, tcp_flags},
    raw, sockets,
    topology::enter,
    traffic::{self, echo_once, open_roundtrip},
};
use serde_json::{Value, json};

/// What the CLI writes on stderr once attached, before any event.
const WATCHING: &str = "bridgenet monitor: watching";
/// Generous: the matrix runs under software emulation.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a filtered-out event is given to show up (wrongly) after one that passes it.
const SETTLE: Duration = Duration::from_secs(2);

const WORLD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const UPLINK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// A process this test started, killed by its pid when dropped (also while a panic unwinds).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: a signal to the child this test started, which has not been reaped.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

/// Starts `bridgenet --socket SOCK monitor --json ARGS` as `ControlLab::cli` runs the CLI (in
/// the test's namespace: only the socket matters), stdout piped; waits for the `watching` line
/// on stderr. Returns the process and its stderr so far (a thread keeps reading it).
fn spawn_monitor(lab: &ControlLab, args: &[&str]) -> (Running, Arc<Mutex<String>>) {
    let child = Command::new(control::binary())
        .arg("--socket")
        .arg(lab.socket())
        .args(["monitor", "--json"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bridgenet monitor");
    let mut running = Running(child);
    let stderr = running.0.stderr.take().expect("piped stderr");
    let text = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    {
        let text = text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let watching = line.starts_with(WATCHING);
                let mut text = text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
                if watching {
                    let _ = tx.send(());
                }
            }
        });
    }
    match rx.recv_timeout(ATTACH_TIMEOUT) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
            "bridgenet monitor {args:?} ended without {WATCHING:?}; stderr:\n{}\ndaemon log:\n{}",
            text.lock().unwrap(),
            lab.log()
        ),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "bridgenet monitor {args:?}: no {WATCHING:?} line within {ATTACH_TIMEOUT:?}; \
             stderr:\n{}\ndaemon log:\n{}",
            text.lock().unwrap(),
            lab.log()
        ),
    }
    (running, text)
}

/// A running `bridgenet monitor --json ARGS` whose events are collected as they come.
struct Monitor {
    running: Running,
    args: Vec<String>,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Monitor {
    /// Starts the monitor and waits until it is attached (its `watching` line).
    fn start(lab: &ControlLab, args: &[&str]) -> Self {
        let (mut running, stderr) = spawn_monitor(lab, args);
        let stdout = running.0.stdout.take().expect("piped stdout");
        let events = Arc::new(Mutex::new(Vec::new()));
        {
            let events = events.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    // A line that is not JSON is kept as a string, which `wait_for` reports.
                    let event = serde_json::from_str::<Value>(&line).unwrap_or(Value::String(line));
                    events.lock().unwrap().push(event);
                }
            });
        }
        Self {
            running,
            args: args.iter().map(|a| a.to_string()).collect(),
            events,
            stderr,
        }
    }

    /// Every line received so far.
    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for an event that `pred` accepts and returns it.
    fn wait_for(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        self.wait_while_sending(|| {}, pred, timeout)
    }

    /// `wait_for`, calling `send` at once and then every second until the event comes (what
    /// is sent may be lost on its way, or come before a slow guest is ready).
    fn wait_while_sending(
        &self,
        mut send: impl FnMut(),
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut next_send = Instant::now();
        loop {
            if Instant::now() >= next_send {
                send();
                next_send = Instant::now() + Duration::from_secs(1);
            }
            let events = self.events();
            if let Some(bad) = events.iter().find(|e| !e.is_object()) {
                panic!(
                    "monitor {:?}: a line that is not a JSON object: {bad}",
                    self.args
                );
            }
            if let Some(found) = events.iter().find(|e| pred(e)) {
                return found.clone();
            }
            if Instant::now() >= deadline {
                self.fail(&format!("no matching event within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The drop from `src` to `dst`, calling `send` until it shows.
    fn drop_of(&self, send: impl FnMut(), src: SocketAddrV4, dst: SocketAddrV4) -> Value {
        self.wait_while_sending(send, |e| is_drop(e, src, dst), EVENT_TIMEOUT)
    }

    /// Panics with `why`, the last events and the monitor's stderr.
    fn fail(&self, why: &str) -> ! {
        let events = self.events();
        let last: Vec<String> = events
            .iter()
            .skip(events.len().saturating_sub(40))
            .map(Value::to_string)
            .collect();
        panic!(
            "monitor {:?} (pid {}): {why}; {} events, the last ones:\n{}\nstderr:\n{}",
            self.args,
            self.running.0.id(),
            events.len(),
            last.join("\n"),
            self.stderr.lock().unwrap()
        );
    }

    /// Asserts that no event received so far is accepted by `pred`.
    fn assert_none(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        if let Some(found) = self.events().iter().find(|e| pred(e)) {
            self.fail(&format!("{what}: {found}"));
        }
    }
}

/// An endpoint as the tests need it: its namespace, address and veth (host end).
struct Ep {
    ns: String,
    ip: Ipv4Addr,
    veth: String,
}

impl Ep {
    fn at(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, port)
    }
}

/// Endpoint `name` on `network` in a namespace of its own, with the given `-p` options.
fn endpoint(lab: &mut ControlLab, name: &str, network: &str, publish: &[&str]) -> Ep {
    let ns = lab.netns_name(name);
    let options = ["--network", network, "--netns", &ns];
    let ports = publish.iter().flat_map(|p| ["-p", p]);
    let args: Vec<&str> = ["endpoint", "create", name]
        .into_iter()
        .chain(options)
        .chain(ports)
        .collect();
    lab.ok(&args);
    let endpoints = lab.json(&["endpoint", "ls"]);
    let ep = endpoints
        .as_array()
        .expect("endpoint ls is a list")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no endpoint {name} in {endpoints}"));
    Ep {
        ns,
        ip: ep["ip"].as_str().expect("an ip").parse().expect("an IPv4"),
        veth: ep["veth"].as_str().expect("a veth").to_owned(),
    }
}

/// Sends a TCP segment with `flags` from `src` to `dst` from namespace `ns` (a raw socket:
/// any source, the kernel routes it as it would its own).
fn send_tcp(ns: &str, src: SocketAddrV4, dst: SocketAddrV4, flags: u8) {
    let ack = if flags & tcp_flags::ACK != 0 { 1 } else { 0 };
    let frame = packet::tcp_segment(
        src.ip().octets(),
        src.port(),
        dst.ip().octets(),
        dst.port(),
        flags,
        1000,
        ack,
        &[],
    );
    raw::send_ipv4(ns, *dst.ip(), &packet::ip_packet(&frame, None));
}

/// Sends a UDP datagram from `src` to `dst` from namespace `ns` (a raw socket, as `send_tcp`).
fn send_udp(ns: &str, src: SocketAddrV4, dst: SocketAddrV4) {
    let frame = packet::udp_frame(
        src.ip().octets(),
        src.port(),
        dst.ip().octets(),
        dst.port(),
        b"monitor",
    );
    raw::send_ipv4(ns, *dst.ip(), &packet::ip_packet(&frame, None));
}

/// Whether `event` is a drop from `src` to `dst` (addresses and ports as the monitor prints
/// them).
fn is_drop(event: &Value, src: impl ToString, dst: impl ToString) -> bool {
    event["type"] == "drop" && event["src"] == src.to_string() && event["dst"] == dst.to_string()
}

/// Whether `event` is a flow event of `kind` (flow-opened, flow-closed) from `src`.
fn is_flow(event: &Value, kind: &str, src: impl ToString) -> bool {
    event["type"] == kind && event["src"] == src.to_string()
}

/// Asserts each field of `event`; and that its time is UTC as 2026-12-01T22:01:02.345Z.
fn assert_fields(event: &Value, fields: &[(&str, Value)]) {
    for (key, want) in fields {
        assert_eq!(&event[key], want, "field {key} of {event}");
    }
    let time = event["time"].as_str().unwrap_or_default().as_bytes();
    let shape = time.len() == 24
        && time.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape, "time of {event}");
}

/// Calls `send` until the drop from `src` to `dst` shows; asserts that it is a drop by
/// `endpoint_ingress` on the veth of `a` (endpoint `a` of network `bridge`) for `reason`, with
/// `proto`, and that `stats` counted it.
fn endpoint_drop_shows(
    lab: &ControlLab,
    monitor: &Monitor,
    a: &Ep,
    send: impl FnMut(),
    (src, dst): (SocketAddrV4, SocketAddrV4),
    reason: &str,
    proto: &str,
) {
    let event = monitor.drop_of(send, src, dst);
    assert_fields(
        &event,
        &[
            ("reason", json!(reason)),
            ("program", json!("endpoint_ingress")),
            ("interface", json!(a.veth)),
            ("endpoint", json!("a")),
            ("network", json!("bridge")),
            ("proto", json!(proto)),
        ],
    );
    assert!(
        lab.stat("endpoint_ingress", reason) > 0,
        "{reason} in stats"
    );
}

/// Waits until `lab.stat(program, outcome)` exceeds `before` (the drop happened).
fn wait_stat_above(lab: &ControlLab, program: &str, outcome: &str, before: u64) -> u64 {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let now = lab.stat(program, outcome);
        if now > before {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{program} {outcome} stayed at {before}: {}",
            lab.ok(&["stats"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

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

/// `--reason`, `--endpoint`, `--network` and `--proto` keep only the drops they name: a drop
/// they exclude, caused (and counted in `stats`) before one they keep, never shows.
#[test]
fn filters_keep_only_the_drops_they_name() {
    let mut lab = ControlLab::up();
    lab.ok(&["network", "create", "back", "--subnet", "198.19.20.0/24"]);
    let a = endpoint(&mut lab, "a", "bridge", &[]);
    let b = endpoint(&mut lab, "b", "back", &[]);
    let spoofed = |port| SocketAddrV4::new(Ipv4Addr::new(198, 19, 99, 9), port);
    let outside = SocketAddrV4::new(WORLD, 9);

    // --reason drop_isolation: a spoofing drop first, then an isolation drop.
    {
        let monitor = Monitor::start(&lab, &["--reason", "drop_isolation"]);
        let before = lab.stat("endpoint_ingress", "drop_spoofed");
        send_udp(&a.ns, spoofed(5001), outside);
        wait_stat_above(&lab, "endpoint_ingress", "drop_spoofed", before);
        let (src, dst) = (a.at(40101), b.at(80));
        let event = monitor.drop_of(|| send_tcp(&a.ns, src, dst, tcp_flags::SYN), src, dst);
        assert_fields(&event, &[("reason", json!("drop_isolation"))]);
        std::thread::sleep(SETTLE);
        monitor.assert_none(
            "a drop of another reason with --reason drop_isolation",
            |e| e["type"] == "drop" && e["reason"] != "drop_isolation",
        );
        monitor.assert_none("the spoofing drop", |e| {
            e["src"] == spoofed(5001).to_string()
        });
    }

    // --endpoint a: b's drop first, then a's.
    {
        let monitor = Monitor::start(&lab, &["--endpoint", "a"]);
        let before = lab.stat("endpoint_ingress", "drop_spoofed");
        send_udp(&b.ns, spoofed(5002), outside);
        wait_stat_above(&lab, "endpoint_ingress", "drop_spoofed", before);
        let event = monitor.drop_of(
            || send_udp(&a.ns, spoofed(5003), outside),
            spoofed(5003),
            outside,
        );
        assert_fields(&event, &[("endpoint", json!("a"))]);
        std::thread::sleep(SETTLE);
        monitor.assert_none("another endpoint's drop with --endpoint a", |e| {
            e["type"] == "drop" && e["endpoint"] != "a"
        });
        monitor.assert_none("b's drop", |e| e["src"] == spoofed(5002).to_string());
    }

    // --network back: a's drop (network bridge) first, then b's.
    {
        let monitor = Monitor::start(&lab, &["--network", "back"]);
        let before = lab.stat("endpoint_ingress", "drop_spoofed");
        send_udp(&a.ns, spoofed(5004), outside);
        wait_stat_above(&lab, "endpoint_ingress", "drop_spoofed", before);
        let event = monitor.drop_of(
            || send_udp(&b.ns, spoofed(5005), outside),
            spoofed(5005),
            outside,
        );
        assert_fields(
            &event,
            &[("endpoint", json!("b")), ("network", json!("back"))],
        );
        std::thread::sleep(SETTLE);
        monitor.assert_none("another network's drop with --network back", |e| {
            e["type"] == "drop" && e["network"] != "back"
        });
        monitor.assert_none("a's drop", |e| e["src"] == spoofed(5004).to_string());
    }

    // --proto udp: a TCP isolation drop first, then a UDP one (from a socket of a's own).
    {
        let monitor = Monitor::start(&lab, &["--proto", "udp"]);
        let before = lab.stat("endpoint_ingress", "drop_isolation");
        let (tcp_src, dst) = (a.at(40102), b.at(80));
        send_tcp(&a.ns, tcp_src, dst, tcp_flags::SYN);
        wait_stat_above(&lab, "endpoint_ingress", "drop_isolation", before);
        let udp_src = a.at(40103);
        let socket = enter(&a.ns, || sockets::udp_socket(udp_src));
        let udp_dst = b.at(81);
        let event = monitor.drop_of(
            || {
                let _ = socket.send_to(b"isolated", udp_dst);
            },
            udp_src,
            udp_dst,
        );
        assert_fields(
            &event,
            &[
                ("reason", json!("drop_isolation")),
                ("proto", json!("udp")),
                ("endpoint", json!("a")),
            ],
        );
        std::thread::sleep(SETTLE);
        monitor.assert_none("another protocol with --proto udp", |e| {
            e["type"] == "drop" && e["proto"] != "udp"
        });
        monitor.assert_none("the TCP drop", |e| e["src"] == tcp_src.to_string());
    }
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

/// Runs `bridgenet monitor ARGS` expecting it to refuse: it must exit (within 30 s) non-zero,
/// with one line on stderr and nothing on stdout. Returns the line.
fn refused(lab: &ControlLab, args: &[&str]) -> String {
    let child = Command::new(control::binary())
        .arg("--socket")
        .arg(lab.socket())
        .arg("monitor")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bridgenet monitor");
    let mut running = Running(child);
    let (mut stdout, mut stderr) = (
        running.0.stdout.take().unwrap(),
        running.0.stderr.take().unwrap(),
    );
    // Read while it runs: a monitor that streams instead of refusing must not block on a
    // full pipe before the deadline.
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            drop(running);
            panic!("bridgenet monitor {args:?} still runs after 30 s: it should refuse");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        !status.success(),
        "bridgenet monitor {args:?} succeeded: {stdout:?} {stderr:?}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "bridgenet monitor {args:?}: not one line on stderr: {stderr:?}"
    );
    assert!(
        stdout.is_empty(),
        "bridgenet monitor {args:?} wrote on stdout: {stdout:?}"
    );
    assert!(
        !stderr.contains("panicked"),
        "bridgenet monitor {args:?}: {stderr}"
    );
    stderr.trim_end().to_owned()
}

/// An unknown reason, endpoint or network is refused with one line, nothing streamed.
#[test]
fn unknown_filters_are_refused_with_one_line() {
    let mut lab = ControlLab::up();
    endpoint(&mut lab, "a", "bridge", &[]);
    for args in [
        &["--reason", "bogus"][..],
        &["--endpoint", "nosuch"],
        &["--network", "nosuch"],
        &["--json", "--reason", "bogus"],
        &["--json", "--endpoint", "nosuch"],
    ] {
        let line = refused(&lab, args);
        eprintln!("monitor {args:?}: {line}");
    }
    // The names that exist are accepted.
    drop(Monitor::start(
        &lab,
        &[
            "--reason",
            "drop_isolation",
            "--endpoint",
            "a",
            "--network",
            "bridge",
        ],
    ));
}

/// `bridgenet monitor --json | head -1`: once the reader has gone, the next event ends the
/// monitor quietly (no panic on the broken pipe).
#[test]
fn a_reader_that_goes_away_ends_the_monitor_quietly() {
    let mut lab = ControlLab::up();
    let a = endpoint(&mut lab, "a", "bridge", &[]);
    let (mut running, stderr) = spawn_monitor(&lab, &[]);
    let stdout = running.0.stdout.take().expect("piped stdout");
    let outside = SocketAddrV4::new(WORLD, 9);
    let spoofed = |port| SocketAddrV4::new(Ipv4Addr::new(198, 19, 99, 9), port);

    // The first line, read in a thread (a spoofing drop sent each second until it comes).
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(());
        // Dropped here: the pipe's read end closes.
        line
    });
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut port = 5100;
    while rx.try_recv().is_err() {
        assert!(
            Instant::now() < deadline,
            "no first line; stderr:\n{}",
            stderr.lock().unwrap()
        );
        send_udp(&a.ns, spoofed(port), outside);
        port += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    let first = reader.join().unwrap();
    let first: Value = serde_json::from_str(first.trim()).expect("the first line is JSON");
    assert_eq!(first["type"], "drop", "{first}");

    // More drops until the monitor notices the closed pipe and ends.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the monitor (pid {}) still runs {EVENT_TIMEOUT:?} after its reader went; \
             stderr:\n{}",
            running.0.id(),
            stderr.lock().unwrap()
        );
        send_udp(&a.ns, spoofed(port), outside);
        port += 1;
        std::thread::sleep(Duration::from_millis(500));
    };
    // The stderr thread reads to the end once the process is gone.
    std::thread::sleep(Duration::from_millis(200));
    let stderr = stderr.lock().unwrap().clone();
    assert!(
        !stderr.contains("panicked"),
        "the monitor panicked ({status}):\n{stderr}"
    );
    eprintln!("the monitor ended with {status}");
}

/// Whether process `pid` has exited (a zombie until its parent reaps it, or gone).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// SIGTERM while a monitor streams: the API's graceful shutdown waits for open requests, and
/// a monitor's never ends by itself; the daemon must end it and stop at once. The next daemon
/// serves monitors again.
#[test]
fn a_daemon_stopped_while_a_monitor_is_attached_stops_at_once() {
    let mut lab = ControlLab::up();
    let (mut running, stderr) = spawn_monitor(&lab, &[]);
    let pid = lab.daemon_pid().expect("the daemon runs");
    // SAFETY: a signal to the daemon this lab started; the lab reaps it below.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !exited(pid) {
        assert!(
            Instant::now() < deadline,
            "the daemon still runs 15 s after SIGTERM with a monitor attached:\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.stop(Stop::Term);
    let deadline = Instant::now() + Duration::from_secs(15);
    while running.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the monitor still runs after its daemon stopped; stderr:\n{}",
            stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.start();
    spawn_monitor(&lab, &[]);
}
