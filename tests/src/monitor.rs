//! `bridgenet monitor` in the tests: a running monitor whose JSON events are collected, the
//! lab's endpoints as the monitor tests use them, crafted packets with a chosen tuple, and
//! checks of events (`control_monitor`, `host_monitor`).
use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    control::{self, ControlLab},
    packet::{self, tcp_flags},
    raw,
};

/// What the CLI writes on stderr once attached, before any event.
pub const WATCHING: &str = "bridgenet monitor: watching";
/// Generous: the matrix runs under software emulation.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a filtered-out event is given to show up (wrongly) after one that passes it.
pub const SETTLE: Duration = Duration::from_secs(2);

pub const WORLD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const UPLINK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// A process this test started, killed by its pid when dropped (also while a panic unwinds).
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: a signal to the child this test started, which has not been reaped.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

/// Starts `bridgenet --socket SOCK monitor ARGS` as `ControlLab::cli` runs the CLI, stdin
/// closed, stdout and stderr piped.
pub fn start_monitor(lab: &ControlLab, args: &[&str]) -> Running {
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
    Running(child)
}

/// Starts `bridgenet --socket SOCK monitor --json ARGS` as `ControlLab::cli` runs the CLI (in
/// the test's namespace: only the socket matters), stdout piped; waits for the `watching` line
/// on stderr. Returns the process and its stderr so far (a thread keeps reading it).
pub fn spawn_monitor(lab: &ControlLab, args: &[&str]) -> (Running, Arc<Mutex<String>>) {
    let json: Vec<&str> = std::iter::once("--json")
        .chain(args.iter().copied())
        .collect();
    let mut running = start_monitor(lab, &json);
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
pub struct Monitor {
    running: Running,
    args: Vec<String>,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Monitor {
    /// Starts the monitor and waits until it is attached (its `watching` line).
    pub fn start(lab: &ControlLab, args: &[&str]) -> Self {
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
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for an event that `pred` accepts and returns it.
    pub fn wait_for(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        self.wait_while_sending(|| {}, pred, timeout)
    }

    /// `wait_for`, calling `send` at once and then every second until the event comes (what
    /// is sent may be lost on its way, or come before a slow guest is ready).
    pub fn wait_while_sending(
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
    pub fn drop_of(&self, send: impl FnMut(), src: SocketAddrV4, dst: SocketAddrV4) -> Value {
        self.wait_while_sending(send, |e| is_drop(e, src, dst), EVENT_TIMEOUT)
    }

    /// Panics with `why`, the last events and the monitor's stderr.
    pub fn fail(&self, why: &str) -> ! {
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
    pub fn assert_none(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        if let Some(found) = self.events().iter().find(|e| pred(e)) {
            self.fail(&format!("{what}: {found}"));
        }
    }
}

/// An endpoint as the tests need it: its namespace, address and veth (host end).
pub struct Ep {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub veth: String,
}

impl Ep {
    pub fn at(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.ip, port)
    }
}

/// Endpoint `name` on `network` in a namespace of its own, with the given `-p` options.
pub fn endpoint(lab: &mut ControlLab, name: &str, network: &str, publish: &[&str]) -> Ep {
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
pub fn send_tcp(ns: &str, src: SocketAddrV4, dst: SocketAddrV4, flags: u8) {
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
pub fn send_udp(ns: &str, src: SocketAddrV4, dst: SocketAddrV4) {
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
pub fn is_drop(event: &Value, src: impl ToString, dst: impl ToString) -> bool {
    event["type"] == "drop" && event["src"] == src.to_string() && event["dst"] == dst.to_string()
}

/// Whether `event` is a flow event of `kind` (flow-opened, flow-closed) from `src`.
pub fn is_flow(event: &Value, kind: &str, src: impl ToString) -> bool {
    event["type"] == kind && event["src"] == src.to_string()
}

/// Asserts each field of `event`; and that its time is UTC as 2026-12-01T22:01:02.345Z.
pub fn assert_fields(event: &Value, fields: &[(&str, Value)]) {
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
pub fn endpoint_drop_shows(
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
pub fn wait_stat_above(lab: &ControlLab, program: &str, outcome: &str, before: u64) -> u64 {
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
