//! What an operator reads: `ct ls` and its filters on a table of known flows and on a full
//! table. Host kernel only: listing and filtering happen in the daemon and the CLI, whatever
//! the kernel's version (the flows come from real traffic or from the test's own map writes).
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
use bridgenet_common::{CtEntry, CtKey, action, ct_flags, direction, tcp_seen};
use bridgenet_tests::{
    control::{ControlLab, binary},
    traffic::{UdpSink, UdpStream, echo_once, roundtrip},
};
use serde_json::Value;

/// Two endpoints and known traffic: the world to ep1's published port (TCP), ep2 to the world
/// over TCP and UDP (masqueraded).
fn lab_with_known_flows() -> (ControlLab, UdpStream, UdpSink) {
    let mut lab = ControlLab::up();
    for (name, publish) in [("ep1", Some("8080:80")), ("ep2", None)] {
        let ns = lab.netns_name(name);
        let mut args = vec!["endpoint", "create", name, "--network", "bridge", "--netns", &ns];
        if let Some(p) = publish {
            args.extend(["-p", p]);
        }
        lab.ok(&args);
    }
    let ns1 = lab.ok(&["endpoint", "inspect", "ep1"]);
    let ns1: Value = serde_json::from_str(&ns1).unwrap();
    let ns2: Value = serde_json::from_str(&lab.ok(&["endpoint", "inspect", "ep2"])).unwrap();
    let (ns1, ns2) = (
        ns1["netns"].as_str().unwrap().to_owned(),
        ns2["netns"].as_str().unwrap().to_owned(),
    );
    let world = lab.topo.ns("world").name().to_owned();
    let server = echo_once(&ns1, "0.0.0.0:80");
    roundtrip(&world, "198.18.0.2:8080");
    server.join().unwrap();
    let server = echo_once(&world, "198.18.0.1:7000");
    roundtrip(&ns2, "198.18.0.1:7000");
    server.join().unwrap();
    let sink = UdpSink::new(&world, "198.18.0.1:7001", true);
    let stream = UdpStream::new(&ns2, "0.0.0.0:40001", "198.18.0.1:7001");
    assert!(
        sink.wait_for(Duration::from_secs(10), |_, _| true),
        "the UDP stream reaches the world"
    );
    (lab, stream, sink)
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
    let (lab, _stream, _sink) = lab_with_known_flows();
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
        assert_eq!(count(&lab, filters), got.len() as u64, "--count {filters:?}");
    };
    expect(&["--endpoint", "ep1"], &|f| has(f, "172.17.0.2"));
    expect(&["--endpoint", "ep2"], &|f| has(f, "172.17.0.3"));
    expect(&["--proto", "udp"], &|f| f["proto"] == "udp");
    expect(&["--proto", "TCP"], &|f| f["proto"] == "tcp");
    expect(&["--src", "198.18.0.1"], &|f| addr(f, "original", "src") == "198.18.0.1");
    expect(&["--dst", "198.18.0.1"], &|f| addr(f, "original", "dst") == "198.18.0.1");
    expect(&["--port", "8080"], &|f| {
        ["original", "reply"]
            .iter()
            .any(|d| port(f, d, "sport") == 8080 || port(f, d, "dport") == 8080)
    });
    expect(&["--port", "7001", "--proto", "udp", "--endpoint", "ep2"], &udp);
    let states: BTreeSet<String> = all
        .iter()
        .map(|f| f["state"].as_str().unwrap().to_owned())
        .collect();
    for state in &states {
        expect(&["--state", &state.to_lowercase()], &|f| f["state"] == *state);
    }
    assert!(published(&flows(&lab, &["--endpoint", "ep1", "--port", "8080"])[0]));
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

/// Writes `n` established TCP flows (both entries) straight into the daemon's pinned table.
fn fill_table(lab: &ControlLab, n: u32) {
    let data = MapData::from_pin(lab.bpffs().join("CONNTRACK_v2")).expect("the pinned table");
    let mut map: HashMap<_, CtKey, CtEntry> =
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
        map.insert(original, entry(reply, direction::ORIGINAL), 0)
            .expect("insert");
        map.insert(reply, entry(original, direction::REPLY), 0)
            .expect("insert");
    }
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
    // (every 10 s) needs memory of its own in proportion to the table: a listing that met one
    // is taken again.
    let mut growth = Vec::new();
    for _ in 0..2 {
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
        let start = Instant::now();
        let mut cli = Command::new(binary())
            .arg("--socket")
            .arg(lab.socket())
            .args(["ct", "ls"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first_line_after = None;
        let mut lines = 0u64;
        for line in BufReader::new(cli.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            first_line_after.get_or_insert(start.elapsed());
            assert!(line.starts_with("tcp "), "{line}");
            lines += 1;
        }
        let out = cli.wait_with_output().unwrap();
        done.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(lines, u64::from(FULL));
        let grew = peak.load(Ordering::Relaxed).saturating_sub(before);
        eprintln!(
            "ct ls of {FULL} flows: first line after {:?}, all in {:?}; daemon RSS {before} KiB, +{grew} KiB at most",
            first_line_after.unwrap(),
            start.elapsed()
        );
        growth.push(grew);
        if grew < 32 * 1024 {
            break;
        }
    }
    // Before, the daemon held every flow and the whole JSON answer (85 MB for 213,000 flows).
    assert!(
        growth.iter().any(|g| *g < 32 * 1024),
        "the daemon's memory grew by {growth:?} KiB while listing"
    );
}
