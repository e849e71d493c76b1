//! Host access to published ports, with real traffic: processes of the daemon's namespace
//! reach a published port through 127.0.0.1, the uplink's address and a gateway, translated
//! at the socket by the cgroup hooks; other namespaces are left alone; a port published on
//! 127.0.0.1 is for the host only; IPv6 sockets reach them through IPv4-mapped addresses;
//! restart replaces the hooks and cleanup removes them.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::Command,
    time::Duration,
};

use bridgenet_tests::control::{ControlLab, Stop};
use bridgenet_tests::sockets;
use bridgenet_tests::topology::{enter, mac_of};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP echo server for `count` connections in `netns`; returns the peers it saw.
fn tcp_echo(netns: &str, bind: &str, count: usize) -> std::thread::JoinHandle<Vec<SocketAddr>> {
    let listener = enter(netns, || sockets::tcp_listener(bind));
    std::thread::spawn(move || {
        (0..count)
            .map(|_| {
                let (mut stream, peer) = listener.accept().expect("accept");
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                let mut buf = [0u8; 64];
                let n = stream.read(&mut buf).expect("read");
                stream.write_all(&buf[..n]).expect("write");
                peer
            })
            .collect()
    })
}

/// Connects from `netns` to `to`, sends a line and checks it comes back.
fn tcp_roundtrip(netns: &str, to: &str) {
    let to: SocketAddr = to.parse().unwrap();
    let mut stream = enter(netns, || TcpStream::connect_timeout(&to, TIMEOUT))
        .unwrap_or_else(|err| panic!("connect to {to}: {err}"));
    // The application sees the peer it connected to, not the endpoint.
    assert_eq!(stream.peer_addr().unwrap(), to);
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"hello host").unwrap();
    let mut back = [0u8; 10];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"hello host");
}

fn tcp_refused(netns: &str, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    enter(netns, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_err()
    })
}

/// A UDP echo server for `count` datagrams in `netns`.
fn udp_echo(netns: &str, bind: &str, count: usize) -> std::thread::JoinHandle<()> {
    let socket = enter(netns, || sockets::udp_socket(bind));
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..count {
            let (n, peer) = socket.recv_from(&mut buf).expect("recv");
            socket.send_to(&buf[..n], peer).expect("send");
        }
    })
}

/// Sends a datagram from `netns` to `to` (with sendto, or connect then send) and returns where
/// the reply came from, as the application sees it.
fn udp_roundtrip(netns: &str, to: &str, connected: bool) -> SocketAddr {
    let to: SocketAddr = to.parse().unwrap();
    let any = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let socket = enter(netns, || std::net::UdpSocket::bind(any).expect("bind"));
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    if connected {
        socket.connect(to).unwrap();
        assert_eq!(socket.peer_addr().unwrap(), to);
        socket.send(b"hello udp").unwrap();
    } else {
        socket.send_to(b"hello udp", to).unwrap();
    }
    let mut buf = [0u8; 64];
    let (n, from) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|err| panic!("reply from {to}: {err}"));
    assert_eq!(&buf[..n], b"hello udp");
    from
}

/// Ids of the host access links pinned in the lab's bpf filesystem.
fn pinned_links(lab: &ControlLab) -> Vec<u64> {
    bridgenet_common::programs::HOST_ACCESS
        .iter()
        .map(|name| {
            let path = lab.bpffs().join(format!("link_host_access_{name}"));
            let out = Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(&path)
                .output()
                .expect("bpftool");
            assert!(
                out.status.success(),
                "no link pinned at {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let link: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            assert_eq!(link["type"], "cgroup", "{link}");
            link["id"].as_u64().expect("link id")
        })
        .collect()
}

/// Ids of every bpf link of the machine. A link that goes away while they are listed (other
/// tests attach and detach all the time) is left out: `bpftool link show` failed the whole
/// listing then.
fn all_links() -> Vec<u64> {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|link| u64::from(link.id()))
        .collect()
}

#[test]
fn other_namespaces_are_left_alone() {
    let mut lab = ControlLab::up();
    let ep = lab.endpoint("ep1", &["18080:80", "18053:53/udp"]);
    let _server = tcp_echo(&ep, "0.0.0.0:80", 1);
    // The world namespace has its own 127.0.0.1:18080 and 18053, which its clients reach while
    // the hooks run for every socket of the machine.
    let world = lab.topo.ns("world").name().to_owned();
    let local = tcp_echo(&world, "127.0.0.1:18080", 1);
    tcp_roundtrip(&world, "127.0.0.1:18080");
    assert_eq!(local.join().unwrap()[0].ip().to_string(), "127.0.0.1");
    let local = udp_echo(&world, "127.0.0.1:18053", 2);
    for connected in [false, true] {
        let from = udp_roundtrip(&world, "127.0.0.1:18053", connected);
        assert_eq!(from.to_string(), "127.0.0.1:18053");
    }
    local.join().unwrap();
    // Meanwhile the host namespace's 127.0.0.1:18080 is the endpoint.
    tcp_roundtrip(lab.topo.ns("host").name(), "127.0.0.1:18080");
}

/// From `host`, TCP 18080 and UDP 18053 (sent to, and connected) through each of `addrs`
/// reach the endpoint in `ep` (which sees the gateway), and the application sees the address
/// it used as the peer.
fn reaches_published_ports(host: &str, ep: &str, addrs: &[String]) {
    let server = tcp_echo(ep, "0.0.0.0:80", addrs.len());
    for addr in addrs {
        tcp_roundtrip(host, &format!("{addr}:18080"));
    }
    // The host reaches the endpoint over the bridge, from its gateway address.
    for peer in server.join().unwrap() {
        assert_eq!(peer.ip().to_string(), "172.17.0.1");
    }
    let server = udp_echo(ep, "0.0.0.0:53", 2 * addrs.len());
    for addr in addrs {
        for connected in [false, true] {
            let to = format!("{addr}:18053");
            let from = udp_roundtrip(host, &to, connected);
            assert_eq!(
                from.to_string(),
                to,
                "the reply's source (connected: {connected})"
            );
        }
    }
    server.join().unwrap();
}

#[test]
fn host_reaches_published_ports_through_any_host_address() {
    let mut lab = ControlLab::up();
    let ep = lab.endpoint("ep1", &["18080:80", "18053:53/udp"]);
    let host = lab.topo.ns("host").name().to_owned();
    let addrs = ["127.0.0.1", "127.0.0.2", "198.18.0.2", "172.17.0.1"];

    reaches_published_ports(&host, &ep, &addrs.map(str::to_owned));

    // A port that is not published stays the host's own.
    let local = tcp_echo(&host, "127.0.0.1:18081", 1);
    tcp_roundtrip(&host, "127.0.0.1:18081");
    local.join().unwrap();
    // TCP and UDP are published apart: 18080/udp is not published.
    let local = udp_echo(&host, "127.0.0.1:18080", 1);
    assert_eq!(
        udp_roundtrip(&host, "127.0.0.1:18080", false).to_string(),
        "127.0.0.1:18080"
    );
    local.join().unwrap();
}

#[test]
fn ipv6_sockets_reach_published_ports_through_ipv4_mapped_host_addresses() {
    let mut lab = ControlLab::up();
    let ep = lab.endpoint("ep1", &["18080:80", "18053:53/udp"]);
    let host = lab.topo.ns("host").name().to_owned();
    let addrs = ["::ffff:127.0.0.1", "::ffff:198.18.0.2", "::ffff:172.17.0.1"];

    // Dual-stack (AF_INET6) sockets: their peer stays the mapped address they used.
    reaches_published_ports(&host, &ep, &addrs.map(|a| format!("[{a}]")));
    // Not published there: the host's own.
    let local = tcp_echo(&host, "127.0.0.1:18081", 1);
    tcp_roundtrip(&host, "[::ffff:127.0.0.1]:18081");
    local.join().unwrap();
}

/// Sends a UDP datagram from the world (198.18.0.1) to `dst:dport` as a raw frame on its eth0,
/// whatever its routes say: a forged packet for the host's uplink.
fn forge_udp_from_world(lab: &ControlLab, dst: [u8; 4], dport: u16) {
    let src_mac = mac_of(lab.topo.ns("world").name(), "eth0");
    let dst_mac = mac_of(lab.topo.ns("host").name(), "uplink0");
    let builder = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4([198, 18, 0, 1], dst, 64)
        .udp(40000, dport);
    let mut frame = Vec::new();
    builder.write(&mut frame, b"forged").unwrap();
    let ifindex = lab.topo.ns("world").ifindex("eth0");
    lab.topo.ns("world").enter(|| {
        // SAFETY: plain socket calls on a socket owned by this closure.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&dst_mac);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            libc::close(fd);
            assert_eq!(sent, frame.len() as isize, "sending the forged frame");
        }
    });
}

/// Whether a datagram reaches `socket` within a second.
fn receives(socket: &UdpSocket) -> bool {
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    socket.recv_from(&mut [0u8; 64]).is_ok()
}

#[test]
fn a_port_published_on_127_0_0_1_is_for_the_host_only() {
    let mut lab = ControlLab::up();
    let ep = lab.endpoint(
        "ep1",
        &[
            "127.0.0.1:18090:80",
            "127.0.0.1:18091:91/udp",
            "18092:92/udp",
        ],
    );
    let host = lab.topo.ns("host").name().to_owned();
    let world = lab.topo.ns("world").name().to_owned();
    assert_eq!(
        lab.ok(&["port", "ls", "ep1"]),
        "80/tcp -> 127.0.0.1:18090\n91/udp -> 127.0.0.1:18091\n92/udp -> 0.0.0.0:18092\n"
    );

    // From the host, through 127.0.0.1 only: the port is published on that address alone.
    let server = tcp_echo(&ep, "0.0.0.0:80", 1);
    tcp_roundtrip(&host, "127.0.0.1:18090");
    server.join().unwrap();
    let _listener = enter(&ep, || sockets::tcp_listener("0.0.0.0:80"));
    assert!(tcp_refused(&host, "198.18.0.2:18090"));
    assert!(tcp_refused(&host, "127.0.0.2:18090"));
    let server = udp_echo(&ep, "0.0.0.0:91", 1);
    assert_eq!(
        udp_roundtrip(&host, "127.0.0.1:18091", false).to_string(),
        "127.0.0.1:18091"
    );
    server.join().unwrap();

    // From the world, never: not through the host's address...
    assert!(tcp_refused(&world, "198.18.0.2:18090"));
    // ...nor with a packet forged for 127.0.0.1. The same forgery to a port published on
    // every address arrives, so the forged frames do reach the host.
    let udp91 = enter(&ep, || sockets::udp_socket("0.0.0.0:91"));
    let udp92 = enter(&ep, || sockets::udp_socket("0.0.0.0:92"));
    forge_udp_from_world(&lab, [198, 18, 0, 2], 18092);
    assert!(
        receives(&udp92),
        "the forged control datagram did not arrive"
    );
    forge_udp_from_world(&lab, [127, 0, 0, 1], 18091);
    assert!(
        !receives(&udp91),
        "a datagram from the world reached 127.0.0.1:18091"
    );
    forge_udp_from_world(&lab, [198, 18, 0, 2], 18091);
    assert!(
        !receives(&udp91),
        "a datagram from the world reached 127.0.0.1:18091"
    );

    // bridgenet never opens 127/8 to the wire.
    let host_ns = lab.topo.ns("host");
    for conf in ["all", "default", "uplink0", "bridgenet0"] {
        let path = format!("net.ipv4.conf.{conf}.route_localnet");
        let value = host_ns.exec("sysctl", &["-n", &path]);
        assert_eq!(value.trim(), "0", "{path}");
    }
}

#[test]
fn cleanup_removes_the_hooks_even_after_a_kill() {
    let mut lab = ControlLab::up();
    let ep = lab.endpoint("ep1", &["18080:80"]);
    let host = lab.topo.ns("host").name().to_owned();
    let server = tcp_echo(&ep, "0.0.0.0:80", 1);
    tcp_roundtrip(&host, "127.0.0.1:18080");
    server.join().unwrap();
    let links = pinned_links(&lab);
    assert_eq!(links.len(), bridgenet_common::programs::HOST_ACCESS.len());

    lab.stop(Stop::Kill);
    // The hooks outlive the daemon: the host still reaches the endpoint.
    let server = tcp_echo(&ep, "0.0.0.0:80", 1);
    tcp_roundtrip(&host, "127.0.0.1:18080");
    server.join().unwrap();

    lab.cleanup();
    let all = all_links();
    for id in &links {
        assert!(
            !all.contains(id),
            "link {id} is still attached after cleanup"
        );
    }
    // 127.0.0.1:18080 is the host's own again.
    let local = tcp_echo(&host, "127.0.0.1:18080", 1);
    tcp_roundtrip(&host, "127.0.0.1:18080");
    assert_eq!(local.join().unwrap()[0].ip().to_string(), "127.0.0.1");
}

#[test]
fn a_restarted_daemon_replaces_the_hooks() {
    let mut lab = ControlLab::up();
    let ep = lab.endpoint("ep1", &["18080:80", "18053:53/udp"]);
    let host = lab.topo.ns("host").name().to_owned();
    let before = pinned_links(&lab);

    lab.stop(Stop::Term);
    assert_eq!(pinned_links(&lab), before, "the links outlive the daemon");
    lab.start();
    let after = pinned_links(&lab);
    let all = all_links();
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old, new, "the restarted daemon did not replace link {old}");
        assert!(
            !all.contains(old),
            "link {old} of the first daemon is still attached"
        );
        assert!(all.contains(new), "link {new} is not attached");
    }

    let server = tcp_echo(&ep, "0.0.0.0:80", 2);
    tcp_roundtrip(&host, "127.0.0.1:18080");
    tcp_roundtrip(&host, "198.18.0.2:18080");
    server.join().unwrap();
    let server = udp_echo(&ep, "0.0.0.0:53", 1);
    assert_eq!(
        udp_roundtrip(&host, "127.0.0.1:18053", false).to_string(),
        "127.0.0.1:18053"
    );
    server.join().unwrap();
}
