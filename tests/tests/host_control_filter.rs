//! The user filter through the daemon with real traffic: clients in the world namespace
//! (198.18.0.1 and a second address, 198.18.0.5) reach a published port while rules are added
//! and removed; drops show in `stats` as drop_filter and in `filter ls` per rule; rules
//! survive a daemon restart.
//!
//! Host only (xtask keeps `host_*` binaries out of the emulated kernels): what this adds to
//! `packet_filter`, which runs the filter's programs on every kernel of the matrix, is the
//! CLI, the daemon and its store, none of which depends on the kernel's version; restarts on
//! every kernel are `control_restart`'s.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::FromRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bridgenet_tests::control::{ControlLab, Stop};
use bridgenet_tests::sockets;
use bridgenet_tests::topology::enter;

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
const PUBLISHED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 8080);
const TIMEOUT: Duration = Duration::from_millis(800);

/// An echo server in `netns` for any number of connections, until `stop` is set.
fn echo_server(netns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let listener = enter(netns, || sockets::tcp_listener("0.0.0.0:80"));
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    std::thread::spawn(move || {
                        // Longer than a test's pauses: a flow a rule drops for a while comes
                        // back with TCP's backed-off retransmission, seconds later under
                        // emulation, and must find its connection still open.
                        stream
                            .set_read_timeout(Some(Duration::from_secs(60)))
                            .unwrap();
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = stream.read(&mut buf) {
                            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

/// A TCP connection from `src` (an address of `netns`) to `to`, or None within TIMEOUT.
fn connect_from(netns: &str, src: Ipv4Addr, to: SocketAddrV4) -> Option<TcpStream> {
    enter(netns, || {
        let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: TIMEOUT.as_micros() as libc::suseconds_t,
        };
        // SAFETY: plain socket calls on a descriptor owned by the TcpStream made from it.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket");
            let stream = TcpStream::from_raw_fd(fd);
            // On Linux the send timeout bounds connect() too.
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let local = sockaddr(SocketAddrV4::new(src, 0));
            assert_eq!(
                libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len),
                0
            );
            let remote = sockaddr(to);
            if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
                return None;
            }
            Some(stream)
        }
    })
}

/// One request from `src`: connect, send, read the echo.
fn request(netns: &str, src: Ipv4Addr) -> bool {
    let Some(mut stream) = connect_from(netns, src, PUBLISHED) else {
        return false;
    };
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut back = [0u8; 5];
    stream.write_all(b"hello").is_ok() && stream.read_exact(&mut back).is_ok() && &back == b"hello"
}

/// Requests from `src` one after the other until stopped: (when, answered) for each.
struct Stream {
    results: Arc<Mutex<Vec<(Instant, bool)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(netns: &str, src: Ipv4Addr) -> Self {
        let results = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, ns) = (results.clone(), stop.clone(), netns.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let ok = request(&ns, src);
                r.lock().unwrap().push((Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            results,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until `n` requests in a row that ended after `since` got `answered`.
    fn wait_for(&self, since: Instant, answered: bool, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let results = self.results.lock().unwrap().clone();
            let recent: Vec<bool> = results
                .iter()
                .filter(|(t, _)| *t > since)
                .map(|(_, ok)| *ok)
                .collect();
            if recent.len() >= n && recent[recent.len() - n..].iter().all(|ok| *ok == answered) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {n} requests in a row answered={answered}: {recent:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The drop_filter count over every uplink program (XDP or TC, whichever dropped).
fn filter_drops(lab: &ControlLab) -> u64 {
    lab.json(&["stats"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "drop_filter")
        .map(|s| s["count"].as_u64().unwrap())
        .sum()
}

fn packets(lab: &ControlLab, id: &str) -> u64 {
    let rules = lab.json(&["filter", "ls"]);
    rules
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"].as_u64() == id.parse().ok())
        .unwrap_or_else(|| panic!("no rule {id} in {rules}"))["packets"]
        .as_u64()
        .unwrap()
}

#[test]
fn filters_added_and_removed_while_traffic_flows() {
    let mut lab = ControlLab::up();
    let world = lab.topo.ns("world").name().to_owned();
    lab.topo
        .ns("world")
        .ip(&["addr", "add", "198.18.0.5/24", "dev", "eth0"]);
    let ns = lab.netns_name("web");
    lab.ok(&[
        "endpoint",
        "create",
        "web",
        "--network",
        "bridge",
        "--netns",
        &ns,
        "-p",
        "8080:80",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&ns, stop.clone());
    assert_eq!(
        lab.ok(&["filter", "ls"]).lines().count(),
        1,
        "only the header"
    );

    // B's requests flow; a drop for B takes effect on the next ones, A is not affected.
    let stream = Stream::start(&world, B);
    stream.wait_for(Instant::now(), true, 3);
    let drop_b = lab
        .ok(&[
            "filter",
            "add",
            "--src",
            "198.18.0.5/32",
            "--action",
            "drop",
        ])
        .trim()
        .to_owned();
    let added = Instant::now();
    stream.wait_for(added, false, 3);
    assert!(request(&world, A), "A is not filtered");
    assert!(filter_drops(&lab) > 0, "stats: {}", lab.ok(&["stats"]));
    assert!(lab.ok(&["stats"]).contains("drop_filter"));
    assert!(packets(&lab, &drop_b) > 0);

    // Removed: B gets through again.
    assert_eq!(lab.ok(&["filter", "rm", &drop_b]).trim(), drop_b);
    stream.wait_for(Instant::now(), true, 3);
    drop(stream);

    // An allow for one source before a drop of everything.
    let allow_a = lab
        .ok(&["filter", "add", "--src", "198.18.0.1", "--action", "allow"])
        .trim()
        .to_owned();
    let drop_all = lab
        .ok(&["filter", "add", "--action", "drop"])
        .trim()
        .to_owned();
    assert_ne!(allow_a, drop_b, "rule ids are not reused");
    assert!(request(&world, A));
    assert!(!request(&world, B));
    assert!(packets(&lab, &allow_a) > 0);
    assert!(packets(&lab, &drop_all) > 0);

    // A rule on a network and a port, listed after the others.
    let port_rule = lab
        .ok(&[
            "filter",
            "add",
            "--network",
            "bridge",
            "--dport",
            "8080",
            "--action",
            "drop",
        ])
        .trim()
        .to_owned();
    let ls = lab.ok(&["filter", "ls"]);
    let lines: Vec<Vec<&str>> = ls.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines[0],
        ["ID", "NETWORK", "SRC", "DPORT", "ACTION", "PACKETS"],
        "{ls}"
    );
    assert_eq!(
        lines[1][..5],
        [&allow_a, "any", "198.18.0.1/32", "any", "allow"],
        "{ls}"
    );
    assert_eq!(
        lines[2][..5],
        [&drop_all, "any", "any", "any", "drop"],
        "{ls}"
    );
    assert_eq!(
        lines[3][..6],
        [&port_rule, "bridge", "any", "8080/tcp", "drop", "0"],
        "{ls}"
    );
    let json = lab.json(&["filter", "ls"]);
    assert_eq!(
        json[2]["dport"],
        serde_json::json!({"port": 8080, "proto": "tcp"})
    );
    assert_eq!(json[2]["network"], "bridge");

    // The rules outlive the daemon: the restarted daemon lists and enforces them.
    lab.stop(Stop::Term);
    lab.start();
    // The same rules in the same order; PACKETS may have grown (a late SYN retransmission).
    let rules = |ls: &str| -> Vec<Vec<String>> {
        ls.lines()
            .map(|l| l.split_whitespace().take(5).map(String::from).collect())
            .collect()
    };
    assert_eq!(rules(&lab.ok(&["filter", "ls"])), rules(&ls));
    assert!(request(&world, A));
    assert!(!request(&world, B));

    // The allow removed, the port rule decides for A; every rule removed, all pass.
    lab.ok(&["filter", "rm", &allow_a]);
    assert!(!request(&world, A));
    lab.ok(&["filter", "rm", &drop_all]);
    lab.ok(&["filter", "rm", &port_rule]);
    assert!(request(&world, A));
    assert!(request(&world, B));
    assert_eq!(lab.ok(&["filter", "ls"]).lines().count(), 1);

    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}

#[test]
fn a_drop_takes_effect_on_an_established_connection() {
    let mut lab = ControlLab::up();
    let world = lab.topo.ns("world").name().to_owned();
    let ns = lab.netns_name("web");
    lab.ok(&[
        "endpoint",
        "create",
        "web",
        "--network",
        "bridge",
        "--netns",
        &ns,
        "-p",
        "8080:80",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo_server(&ns, stop.clone());
    let mut stream = connect_from(&world, A, PUBLISHED).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let echo = |stream: &mut TcpStream| {
        let mut back = [0u8; 4];
        stream.write_all(b"ping").is_ok() && stream.read_exact(&mut back).is_ok()
    };
    assert!(echo(&mut stream));
    let id = lab
        .ok(&["filter", "add", "--dport", "8080/tcp", "--action", "drop"])
        .trim()
        .to_owned();
    assert!(
        !echo(&mut stream),
        "the established flow still gets through"
    );
    lab.ok(&["filter", "rm", &id]);
    // TCP retransmits what was dropped; the connection recovers.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut back = [0u8; 4];
    stream
        .read_exact(&mut back)
        .expect("the echo after the rule went");
    assert_eq!(&back, b"ping");
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}
