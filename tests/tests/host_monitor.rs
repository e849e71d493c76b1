//! `bridgenet monitor`'s daemon and CLI side, on the host's kernel only: what these tests check
//! is done in userspace, the same on every kernel (the filters, applied by the daemon to each
//! monitor; refusals of bad filters; the CLI when its reader goes away; the daemon's shutdown
//! with a monitor attached). The datapath's side runs on every kernel in `control_monitor`.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, SocketAddrV4},
    sync::mpsc,
    time::{Duration, Instant},
};

use bridgenet_tests::{
    control::{ControlLab, Stop},
    monitor::*,
    packet::tcp_flags,
    sockets,
    topology::enter,
};
use serde_json::{Value, json};

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

/// Runs `bridgenet monitor ARGS` expecting it to refuse: it must exit (within 30 s) non-zero,
/// with one line on stderr and nothing on stdout. Returns the line.
fn refused(lab: &ControlLab, args: &[&str]) -> String {
    let mut running = start_monitor(lab, args);
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

/// `monitor-rate` 0 would lose every event a monitor asks for: the daemon refuses it at start
/// with one line, as it refuses a `conntrack-max` too small.
#[test]
fn a_monitor_rate_of_zero_is_refused_at_start() {
    let mut lab = ControlLab::prepared_with("on", json!({"monitor-rate": 0}));
    let log = lab.start_refused();
    assert!(log.contains("--monitor-rate 0"), "{log}");
}
