//! Isolation through the daemon, with real traffic: every address and port of another network
//! (its endpoints, its gateway, published and unpublished ports) from an endpoint, in both
//! directions; published ports stay reachable through a host address (hairpin); `--icc=false`.
//!
//! Host only (xtask keeps `host_*` binaries out of the emulated kernels): the programs'
//! isolation and hairpin, with real traffic, are `netns_endpoint`'s and `netns_hairpin`'s on
//! every kernel of the matrix; what this adds is the daemon's bookkeeping of networks and
//! ports, which does not depend on the kernel's version.
use std::{net::TcpListener, time::Duration};

use bridgenet_tests::control::ControlLab;
use bridgenet_tests::sockets;
use bridgenet_tests::topology::enter;
use bridgenet_tests::traffic::{echo_once, refused, roundtrip};

/// A UDP echo server in `netns` for as long as the test runs.
fn udp_echo(netns: &str, bind: &str) {
    let socket = enter(netns, || sockets::udp_socket(bind));
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], peer);
        }
    });
}

/// Whether a datagram from `netns` to `to` gets its echo (from `to`, the socket is connected).
fn udp_answered(netns: &str, to: &str) -> bool {
    let socket = enter(netns, || {
        std::net::UdpSocket::bind("0.0.0.0:0").expect("bind")
    });
    socket.connect(to).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    socket.send(b"ping").unwrap();
    let mut buf = [0u8; 16];
    matches!(socket.recv(&mut buf), Ok(4))
}

#[test]
fn networks_are_isolated_but_published_ports_stay_reachable() {
    let mut lab = ControlLab::up();
    let host = lab.topo.ns("host").name().to_owned();
    lab.ok(&["network", "create", "back", "--subnet", "10.77.0.0/24"]);
    let (a, b) = (lab.netns_name("a"), lab.netns_name("b"));
    lab.ok(&[
        "endpoint",
        "create",
        "a",
        "--network",
        "bridge",
        "--netns",
        &a,
    ]);
    lab.ok(&[
        "endpoint",
        "create",
        "b",
        "--network",
        "back",
        "--netns",
        &b,
        "-p",
        "8080:80",
        "-p",
        "8081:81/udp",
    ]);
    // Servers on every port tried: what is not isolated would answer.
    let _b_tcp: Vec<TcpListener> = ["0.0.0.0:80", "0.0.0.0:82"]
        .iter()
        .map(|bind| enter(&b, || sockets::tcp_listener(bind)))
        .collect();
    udp_echo(&b, "0.0.0.0:81");
    let _a_tcp = enter(&a, || sockets::tcp_listener("0.0.0.0:80"));
    // The host listens on every address: each gateway's unpublished port 82.
    let _host_tcp = enter(&host, || sockets::tcp_listener("0.0.0.0:82"));
    udp_echo(&host, "0.0.0.0:83");

    // a -> network back: b's address, published and unpublished ports, and back's gateway.
    for to in [
        "10.77.0.2:80",
        "10.77.0.2:82",
        "10.77.0.2:8080",
        "10.77.0.1:82",
    ] {
        assert!(refused(&a, to), "a reached {to}");
    }
    assert!(!udp_answered(&a, "10.77.0.2:81"), "a reached b's UDP 81");
    assert!(
        !udp_answered(&a, "10.77.0.1:83"),
        "a reached back's gateway"
    );
    // b -> network bridge, the other way.
    for to in ["172.17.0.2:80", "172.17.0.1:82"] {
        assert!(refused(&b, to), "b reached {to}");
    }
    assert!(lab.stat("endpoint_ingress", "drop_isolation") > 0);
    // a's own gateway is the host: allowed.
    assert!(!refused(&a, "172.17.0.1:82"));
    assert!(udp_answered(&a, "172.17.0.1:83"));

    // b's published ports through host addresses: the uplink's and back's gateway (hairpin).
    drop(_b_tcp);
    for to in ["198.18.0.2:8080", "10.77.0.1:8080"] {
        let server = echo_once(&b, "0.0.0.0:80");
        roundtrip(&a, to);
        // b sees its own network's gateway as the client, as with Docker.
        assert_eq!(server.join().unwrap().ip().to_string(), "10.77.0.1");
    }
    assert!(udp_answered(&a, "198.18.0.2:8081"));
}

#[test]
fn icc_false_blocks_endpoints_of_a_network_from_each_other_only() {
    let mut lab = ControlLab::up();
    lab.ok(&[
        "network",
        "create",
        "quiet",
        "--subnet",
        "10.78.0.0/24",
        "--icc=false",
    ]);
    let (q1, q2) = (lab.netns_name("q1"), lab.netns_name("q2"));
    lab.ok(&[
        "endpoint",
        "create",
        "q1",
        "--network",
        "quiet",
        "--netns",
        &q1,
        "-p",
        "9090:90",
    ]);
    lab.ok(&[
        "endpoint",
        "create",
        "q2",
        "--network",
        "quiet",
        "--netns",
        &q2,
    ]);
    let _q1_tcp = enter(&q1, || sockets::tcp_listener("0.0.0.0:91"));
    udp_echo(&q1, "0.0.0.0:92");
    assert!(refused(&q2, "10.78.0.2:91"));
    assert!(!udp_answered(&q2, "10.78.0.2:92"));
    assert!(lab.stat("endpoint_ingress", "drop_icc") > 0);
    // Through the host's published port, q2 reaches q1.
    let server = echo_once(&q1, "0.0.0.0:90");
    roundtrip(&q2, "198.18.0.2:9090");
    server.join().unwrap();
    // And the world still reaches q1, and q2 the world.
    let server = echo_once(&q1, "0.0.0.0:90");
    roundtrip(lab.topo.ns("world").name(), "198.18.0.2:9090");
    server.join().unwrap();
    let server = echo_once(lab.topo.ns("world").name(), "198.18.0.1:7000");
    roundtrip(&q2, "198.18.0.1:7000");
    server.join().unwrap();
}
