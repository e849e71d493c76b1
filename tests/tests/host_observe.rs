//! What an operator reads: `ct ls` and its filters on a table of known flows and on a full
//! table, and the Prometheus metrics. Host kernel only: listing, filtering and the exposition
//! happen in the daemon and the CLI, whatever the kernel's version (the flows and drops come
//! from real traffic or from the test's own map writes).
use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use bridgenet_common::{CtEntry, CtFlow, CtKey, action, ct_flags, direction, tcp_seen};
use bridgenet_tests::sockets;
use bridgenet_tests::{
    control::{ControlLab, binary},
    topology::enter,
    traffic::{UdpSink, UdpStream, echo_once, roundtrip},
};
use serde_json::Value;

/// Connections held open (both ends) so that their flows stay ESTABLISHED.
type Held = Vec<std::net::TcpStream>;

/// A TCP connection from `from` to `to`, accepted by a listener bound in `server_ns`.
fn held_connection(server_ns: &str, bind: &str, from: &str, to: &str) -> Held {
    use std::net::TcpStream;
    let listener = enter(server_ns, || sockets::tcp_listener(bind));
    let client = enter(from, || {
        TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(20)).expect("connect")
    });
    let (server, _) = listener.accept().expect("accept");
    vec![client, server]
}

/// Two endpoints and known flows that stay as they are while the test lists them: the world
/// to ep1's published port (TCP), ep2 to the world over TCP and UDP (masqueraded), all of
/// them established or assured.
fn lab_with_known_flows() -> (ControlLab, Held, UdpStream, UdpSink) {
    let mut lab = ControlLab::up();
    let ns1 = lab.endpoint("ep1", &["8080:80"]);
    let ns2 = lab.endpoint("ep2", &[]);
    let world = lab.topo.ns("world").name().to_owned();
    let mut held = held_connection(&ns1, "0.0.0.0:80", &world, "198.18.0.2:8080");
    held.extend(held_connection(
        &world,
        "198.18.0.1:7000",
        &ns2,
        "198.18.0.1:7000",
    ));
    let sink = UdpSink::new(&world, "198.18.0.1:7001", true);
    let stream = UdpStream::new(&ns2, "0.0.0.0:40001", "198.18.0.1:7001");
    // Both sides spoke and one spoke again: the UDP flow is assured, and stays so.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&lab, &["--proto", "udp", "--state", "ASSURED"]) != 1 {
        assert!(Instant::now() < deadline, "the UDP stream is not assured");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sink.any(|_, _| true), "the UDP stream reaches the world");
    (lab, held, stream, sink)
}

fn flows(lab: &ControlLab, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["ct", "ls"];
    args.extend(filters);
    lab.json(&args).as_array().expect("a list").clone()
}

fn count(lab: &ControlLab, filters: &[&str]) -> u64 {
    let mut args = vec!["ct", "ls", "--count"];
    args.extend(filters);
    lab.ok(&args).trim().parse().expect("a count")
}

/// A flow's identity: protocol and original tuple.
fn id(f: &Value) -> String {
    let o = &f["original"];
    format!(
        "{} {}:{} -> {}:{}",
        f["proto"], o["src"], o["sport"], o["dst"], o["dport"]
    )
}

fn ids(flows: &[Value]) -> BTreeSet<String> {
    flows.iter().map(id).collect()
}

#[test]
fn ct_ls_filters_pick_the_flows_of_known_traffic() {
    let (lab, _held, _stream, _sink) = lab_with_known_flows();
    let all = flows(&lab, &[]);
    let addr = |f: &Value, dir: &str, field: &str| f[dir][field].as_str().unwrap().to_owned();
    let port = |f: &Value, dir: &str, field: &str| f[dir][field].as_u64().unwrap();
    let has = |f: &Value, ip: &str| {
        ["original", "reply"]
            .iter()
            .any(|d| addr(f, d, "src") == ip || addr(f, d, "dst") == ip)
    };
    // The known flows are there.
    let published = |f: &Value| {
        f["proto"] == "tcp"
            && addr(f, "original", "src") == "198.18.0.1"
            && port(f, "original", "dport") == 8080
    };
    let udp = |f: &Value| f["proto"] == "udp" && addr(f, "original", "src") == "172.17.0.3";
    assert!(all.iter().any(published), "the published flow: {all:#?}");
    assert!(all.iter().any(udp), "ep2's UDP flow: {all:#?}");
    assert!(
        all.iter()
            .any(|f| f["proto"] == "tcp" && addr(f, "original", "src") == "172.17.0.3"),
        "ep2's TCP flow: {all:#?}"
    );

    // Each filter keeps exactly the flows of the full listing that it names.
    let expect = |filters: &[&str], keep: &dyn Fn(&Value) -> bool| {
        let want: Vec<Value> = all.iter().filter(|f| keep(f)).cloned().collect();
        let got = flows(&lab, filters);
        assert_eq!(ids(&got), ids(&want), "ct ls {filters:?}");
        assert!(!got.is_empty(), "ct ls {filters:?} found nothing");
        assert_eq!(
            count(&lab, filters),
            got.len() as u64,
            "--count {filters:?}"
        );
    };
    expect(&["--endpoint", "ep1"], &|f| has(f, "172.17.0.2"));
    expect(&["--endpoint", "ep2"], &|f| has(f, "172.17.0.3"));
    expect(&["--proto", "udp"], &|f| f["proto"] == "udp");
    expect(&["--proto", "TCP"], &|f| f["proto"] == "tcp");
    expect(&["--src", "198.18.0.1"], &|f| {
        addr(f, "original", "src") == "198.18.0.1"
    });
    expect(&["--dst", "198.18.0.1"], &|f| {
        addr(f, "original", "dst") == "198.18.0.1"
    });
    expect(&["--port", "8080"], &|f| {
        ["original", "reply"]
            .iter()
            .any(|d| port(f, d, "sport") == 8080 || port(f, d, "dport") == 8080)
    });
    expect(
        &["--port", "7001", "--proto", "udp", "--endpoint", "ep2"],
        &udp,
    );
    let states: BTreeSet<String> = all
        .iter()
        .map(|f| f["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        states,
        BTreeSet::from(["ASSURED".to_owned(), "ESTABLISHED".to_owned()])
    );
    for state in &states {
        expect(&["--state", &state.to_lowercase()], &|f| {
            f["state"] == *state
        });
    }
    assert!(published(
        &flows(&lab, &["--endpoint", "ep1", "--port", "8080"])[0]
    ));
    assert_eq!(count(&lab, &[]), all.len() as u64);
    assert_eq!(count(&lab, &["--src", "198.18.0.77"]), 0);

    // Bad filters: one line, nothing listed.
    for (args, wanted) in [
        (&["ct", "ls", "--state", "bogus"][..], "invalid state"),
        (&["ct", "ls", "--proto", "xyz"], "invalid protocol"),
        (&["ct", "ls", "--src", "10.0.0"], "invalid source"),
        (&["ct", "ls", "--port", "70000"], "invalid port"),
        (&["ct", "ls", "--endpoint", "nosuch"], "nosuch"),
    ] {
        let err = lab.fails(args);
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
    // The daemon refuses them too (an API client that skips the CLI's checks).
    let mut api = UnixStream::connect(lab.socket()).unwrap();
    api.write_all(
        b"GET /conntrack?state=bogus HTTP/1.1\r\nHost: bridgenet\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut body = String::new();
    api.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 400"), "{body}");
    assert!(body.contains(r#""error":"invalid state"#), "{body}");
}

/// CLOCK_MONOTONIC in ns, the clock of the entries' last-seen times.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes `n` established TCP flows of the host straight into the daemon's pinned table.
fn fill_table(lab: &ControlLab, n: u32) {
    let data = MapData::from_pin(lab.bpffs().join("CONNTRACK_v3")).expect("the pinned table");
    let mut map: HashMap<_, CtKey, CtFlow> =
        HashMap::try_from(Map::LruHashMap(data)).expect("an LRU hash");
    let base = u32::from(Ipv4Addr::new(198, 19, 0, 0));
    let server = u32::from(Ipv4Addr::new(198, 18, 0, 200)).to_be();
    let now = now_ns();
    for i in 0..n {
        let original = CtKey {
            saddr: (base + i / 8).to_be(),
            daddr: server,
            sport: (20000 + (i % 8) as u16).to_be(),
            dport: 443u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let reply = original.reversed();
        let entry = |peer: CtKey, dir: u8| CtEntry {
            peer,
            last_seen_ns: now,
            packets: 3,
            bytes: 180,
            action: action::HOST,
            direction: dir,
            tcp_seen: tcp_seen::SYN | tcp_seen::ACK,
            flags: ct_flags::ASSURED,
            ..CtEntry::default()
        };
        let (key, flow) = CtFlow::from_entries(
            (&original, &entry(reply, direction::ORIGINAL)),
            (&reply, &entry(original, direction::REPLY)),
        );
        map.insert(key, flow, 0).expect("insert");
    }
}

/// User and system time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// CPU time of this process's waited-for children.
fn children_cpu() -> Duration {
    // SAFETY: a zeroed rusage for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// `bridgenet ct ls ARGS | head -1`: what head printed, and the CLI's stderr and status.
fn into_head(lab: &ControlLab, args: &[&str]) -> (String, String, std::process::ExitStatus) {
    let mut cli = Command::new(binary())
        .arg("--socket")
        .arg(lab.socket())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bridgenet");
    let head = Command::new("head")
        .arg("-1")
        .stdin(cli.stdout.take().unwrap())
        .output()
        .expect("head");
    let out = cli.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&head.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status,
    )
}

/// The size of Linux's default `nf_conntrack_max` and of bridgenet's default table.
const FULL: u32 = 262_144;

#[test]
fn a_full_table_lists_with_bounded_daemon_memory_and_survives_its_reader_leaving() {
    use std::os::unix::process::ExitStatusExt as _;
    let lab = ControlLab::up();
    let start = Instant::now();
    fill_table(&lab, FULL);
    eprintln!("{FULL} flows written in {:?}", start.elapsed());
    let pid = lab.daemon_pid().unwrap();

    // A reader that goes away after one line: the CLI ends quietly (no panic, no message).
    for args in [&["ct", "ls"][..], &["ct", "ls", "--json"]] {
        let (head, stderr, status) = into_head(&lab, args);
        assert_eq!(head.lines().count(), 1, "{args:?}: {head}");
        assert!(
            stderr.is_empty(),
            "{args:?}: the CLI said something when its reader left: {stderr}"
        );
        assert!(
            status.success() || status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {status}"
        );
    }

    let start = Instant::now();
    assert_eq!(count(&lab, &[]), u64::from(FULL));
    eprintln!("ct ls --count: {:?}", start.elapsed());

    // The whole listing, read line by line while the daemon's memory is sampled. A GC pass
    // (every 10 s; seconds long on a full table in a debug build) needs memory of its own in
    // proportion to the table: the listing's growth is compared with a stretch without one
    // that holds a GC pass too.
    let (idle, ()) = peak_growth(pid, || std::thread::sleep(Duration::from_secs(11)));
    let start = Instant::now();
    let (daemon_cpu, cli_cpu) = (cpu_ticks(pid), children_cpu());
    let (listing, (lines, first)) = peak_growth(pid, || {
        let mut cli = Command::new(binary())
            .arg("--socket")
            .arg(lab.socket())
            .args(["ct", "ls"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = None;
        let mut lines = 0u64;
        for line in BufReader::new(cli.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            first.get_or_insert(start.elapsed());
            assert!(line.starts_with("tcp "), "{line}");
            lines += 1;
        }
        let out = cli.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (lines, first.unwrap())
    });
    eprintln!(
        "ct ls of {FULL} flows: first line after {first:?}, all in {:?} (CPU: daemon {} ticks, \
         CLI {:?}); daemon RSS +{listing} KiB at most while listing, +{idle} KiB at most over \
         11 s without",
        start.elapsed(),
        cpu_ticks(pid) - daemon_cpu,
        children_cpu() - cli_cpu,
    );
    assert_eq!(lines, u64::from(FULL));
    // Before, the daemon held every flow and the whole JSON answer (85 MB for 213,000 flows)
    // on top of what GC needs.
    assert!(
        listing <= idle + 32 * 1024,
        "the daemon's memory grew by {listing} KiB while listing, {idle} KiB without"
    );
}

/// Runs `f` while sampling `pid`'s resident memory every 10 ms; returns how far it rose above
/// where it was when `f` started, in KiB.
fn peak_growth<R>(pid: u32, f: impl FnOnce() -> R) -> (u64, R) {
    let before = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let result = f();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    (peak.load(Ordering::Relaxed).saturating_sub(before), result)
}

/// `GET /metrics` from inside the daemon's namespace: the content type and the body.
fn scrape(lab: &ControlLab, addr: &str) -> (String, String) {
    use std::net::TcpStream;
    let host = lab.topo.ns("host").name().to_owned();
    let mut stream = enter(&host, || {
        TcpStream::connect(addr).expect("connecting to the metrics")
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bridgenet\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (content_type, body.to_owned())
}

/// The value of the sample `name` whose labels include `labels`, if there is one.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain value"),
        })
}

#[test]
fn metrics_agree_with_stats_and_ct_ls_after_known_traffic() {
    let mut lab =
        ControlLab::up_with_config("on", serde_json::json!({"metrics": "127.0.0.1:9464"}));
    let ns1 = lab.endpoint("ep1", &["8080:80"]);
    let world = lab.topo.ns("world").name().to_owned();
    let server = echo_once(&ns1, "0.0.0.0:80");
    roundtrip(&world, "198.18.0.2:8080");
    server.join().unwrap();
    let server = echo_once(&world, "198.18.0.1:7000");
    roundtrip(&ns1, "198.18.0.1:7000");
    server.join().unwrap();
    // A known drop: the world straight to the endpoint.
    lab.exec_in(
        &world,
        "ip",
        &["route", "add", "172.17.0.0/16", "via", "198.18.0.2"],
    );
    assert!(bridgenet_tests::traffic::refused(&world, "172.17.0.2:81"));

    let stats_before = lab.json(&["stats"]);
    let (content_type, text) = scrape(&lab, "127.0.0.1:9464");
    let stats_after = lab.json(&["stats"]);
    let flows = flows(&lab, &[]);
    assert!(content_type.contains("openmetrics-text"), "{content_type}");
    let m = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();

    // Every counter of `stats`, as it was between the two reads.
    let count = |stats: &Value, p: &str, o: &str| {
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["program"] == p && s["outcome"] == o)
            .map_or(0.0, |s| s["count"].as_u64().unwrap() as f64)
    };
    for s in stats_after.as_array().unwrap() {
        let (p, o) = (
            s["program"].as_str().unwrap(),
            s["outcome"].as_str().unwrap(),
        );
        let got = sample(
            &m,
            "bridgenet_packets_total",
            &[("program", p), ("outcome", o)],
        )
        .unwrap_or(0.0);
        assert!(
            count(&stats_before, p, o) <= got && got <= count(&stats_after, p, o),
            "bridgenet_packets_total {p} {o}: {got}"
        );
    }
    assert!(count(&stats_after, "uplink_ingress", "dnat") > 0.0);
    let direct = sample(
        &m,
        "bridgenet_drops_total",
        &[("reason", "drop_endpoint_direct")],
    )
    .expect("drops by reason");
    assert!(
        direct >= 1.0
            && direct
                <= count(&stats_after, "uplink_xdp", "drop_endpoint_direct")
                    + count(&stats_after, "uplink_ingress", "drop_endpoint_direct")
    );

    // Flows by protocol and state, as `ct ls` lists them.
    let mut by_state = std::collections::BTreeMap::<(String, String), f64>::new();
    for f in &flows {
        *by_state
            .entry((
                f["proto"].as_str().unwrap().into(),
                f["state"].as_str().unwrap().into(),
            ))
            .or_default() += 1.0;
    }
    assert!(!by_state.is_empty());
    for ((proto, state), n) in &by_state {
        assert_eq!(
            sample(
                &m,
                "bridgenet_conntrack_flows",
                &[("proto", proto), ("state", state)]
            ),
            Some(*n),
            "{proto} {state}"
        );
    }
    assert_eq!(
        sample(&m, "bridgenet_conntrack_flows_limit", &[]),
        Some(262_144.0)
    );
    // ep1's flow to the world left with the uplink's address: one port in use.
    let masqueraded = flows
        .iter()
        .filter(|f| f["original"]["src"] == "172.17.0.2" && f["reply"]["dst"] == "198.18.0.2")
        .count();
    assert_eq!(masqueraded, 1, "{flows:#?}");
    assert_eq!(
        sample(
            &m,
            "bridgenet_masquerade_ports_in_use",
            &[("uplink", "uplink0"), ("address", "198.18.0.2")]
        ),
        Some(1.0)
    );
    // Map fill: one published port, 262,144 conntrack flows (one element each) at most.
    assert_eq!(
        sample(&m, "bridgenet_map_max_entries", &[("map", "CONNTRACK")]),
        Some(262_144.0)
    );
    assert!(sample(&m, "bridgenet_map_entries", &[("map", "PUBLISH")]) >= Some(1.0));
    assert!(sample(&m, "bridgenet_map_entries", &[("map", "ENDPOINTS")]) >= Some(1.0));
    // GC ran at start; the API counted the requests above.
    assert!(sample(&m, "bridgenet_conntrack_gc_passes_total", &[]) >= Some(1.0));
    assert!(sample(&m, "bridgenet_conntrack_gc_last_duration_seconds", &[]).is_some());
    assert!(
        sample(
            &m,
            "bridgenet_api_requests_total",
            &[("method", "GET"), ("path", "/stats"), ("status", "200")]
        ) >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &m,
            "bridgenet_api_request_duration_seconds_count",
            &[("method", "POST"), ("path", "/endpoints")]
        ) >= Some(1.0),
        "{text}"
    );

    // ep1's traffic, in and out: its veth's counters, which moved only by what arrived
    // between the two reads around the scrape.
    let veth = lab.endpoint_veth("ep1");
    // The fast path sends the published port's packets into ep1 past its veth: the only
    // endpoint, so all that `stats` counts as fast_path_peer.
    let peer = || lab.stat("uplink_ingress", "fast_path_peer") as f64;
    let (before, peer_before) = (lab.link_stats(&veth), peer());
    let (_, text) = scrape(&lab, "127.0.0.1:9464");
    let (after, peer_after) = (lab.link_stats(&veth), peer());
    assert!(
        peer_before > 0.0,
        "the published port's packets took no fast path into ep1"
    );
    let m = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    // The host end receives what the endpoint sends ("out") and sends what it receives ("in"),
    // with what the fast path sent into it; a frame of those is 54 to 1514 bytes.
    for (direction, host_end, fast) in [("out", "rx", (0.0, 0.0)), ("in", "tx", (54.0, 1514.0))] {
        for (metric, field, per_packet) in [
            ("bridgenet_endpoint_packets_total", "packets", (1.0, 1.0)),
            ("bridgenet_endpoint_bytes_total", "bytes", fast),
        ] {
            let labels = [
                ("endpoint", "ep1"),
                ("network", "bridge"),
                ("direction", direction),
            ];
            let got = sample(&m, metric, &labels).unwrap_or_else(|| panic!("{metric}: {text}"));
            let (low, high) = (&before[host_end][field], &after[host_end][field]);
            let (fast_low, fast_high) = if direction == "in" {
                (peer_before * per_packet.0, peer_after * per_packet.1)
            } else {
                (0.0, 0.0)
            };
            assert!(
                low.as_f64().unwrap() + fast_low <= got
                    && got <= high.as_f64().unwrap() + fast_high,
                "{metric} {direction}: {got}, the veth's {host_end} {field} went {low} -> {high}, \
                 the fast path's packets {peer_before} -> {peer_after}"
            );
        }
    }
    // Two round trips of a TCP connection each way: more than a handful of packets.
    assert!(
        sample(
            &m,
            "bridgenet_endpoint_packets_total",
            &[("endpoint", "ep1"), ("direction", "in")]
        ) >= Some(6.0)
    );
}

#[test]
fn json_logs_are_one_object_a_line_and_name_their_objects() {
    let mut lab = ControlLab::up_with_config("on", serde_json::json!({"log-format": "json"}));
    lab.endpoint("ep1", &["8080:80"]);
    // Someone detaches uplink_xdp: the daemon's warning names the program and the interface.
    lab.detach_link("uplink_xdp", "uplink0");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lab.log().contains("by someone else") {
        assert!(Instant::now() < deadline, "no warning:\n{}", lab.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines: Vec<Value> = lab
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for l in &lines {
        assert!(
            l["level"].is_string() && l["fields"]["message"].is_string(),
            "{l}"
        );
    }
    let has = |level: &str, message: &str| {
        lines.iter().find(|l| {
            l["level"] == level && l["fields"]["message"].as_str().unwrap().contains(message)
        })
    };
    assert!(has("INFO", "endpoint ep1 created").is_some(), "{lines:#?}");
    let warning = has("WARN", "uplink_xdp was detached from uplink0").expect("the warning");
    assert_eq!(warning["fields"]["program"], "uplink_xdp");
    assert_eq!(warning["fields"]["interface"], "uplink0");

    // A format it does not know: one line, nothing started.
    let out = lab.cli(&["daemon", "--log-format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("xml"), "{stderr}");
}
