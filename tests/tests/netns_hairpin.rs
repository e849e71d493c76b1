//! Hairpin with real TCP and UDP traffic: endpoints reach published ports (their own, a
//! sibling's, another network's) through the uplink's address and through a gateway, and the
//! server sees the gateway of its own network as the client.
//! host: uplink0 198.18.0.2/24 (to "world"); network 1: br1 172.17.0.1/16, endpoints a (.2) and
//! b (.3); network 2: br2 172.18.0.1/16, endpoint c (.2).
//! Published (any host address): tcp 8080 / udp 5353 to a:80 / a:53, tcp 8081 / udp 5354 to
//! b:80 / b:53.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use bridgenet::datapath::{Datapath, GatewayMode, NetworkOptions, Proto, TcMode};
use bridgenet_common::{outcome, program_id};
use bridgenet_tests::sockets;
use bridgenet_tests::traffic::{echo_once, roundtrip_data};
use bridgenet_tests::{Topology, topology::mac_of};

/// Generous: the kernel matrix runs these under software emulation.
const TIMEOUT: Duration = Duration::from_secs(20);
const UPLINK: &str = "198.18.0.2";
const GW1: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);

struct Lab {
    /// Dropped before the namespaces.
    dp: Datapath,
    topo: Topology,
}

fn lab(icc: bool) -> Lab {
    let mut topo = Topology::new();
    topo.netns("world")
        .netns("host")
        .netns("a")
        .netns("b")
        .netns("c")
        .veth(("world", "eth0"), ("host", "uplink0"))
        .addr("world", "eth0", "198.18.0.1/24")
        .addr("host", "uplink0", "198.18.0.2/24");
    topo.bridge("host", "br1")
        .addr("host", "br1", "172.17.0.1/16");
    topo.bridge("host", "br2")
        .addr("host", "br2", "172.18.0.1/16");
    let endpoints = [
        ("a", "veth-a", "br1", "172.17.0.2/16", "172.17.0.1"),
        ("b", "veth-b", "br1", "172.17.0.3/16", "172.17.0.1"),
        ("c", "veth-c", "br2", "172.18.0.2/16", "172.18.0.1"),
    ];
    for (ep, veth, bridge, cidr, gw) in endpoints {
        topo.veth(("host", veth), (ep, "eth0"))
            .attach_to_bridge("host", veth, bridge)
            .addr(ep, "eth0", cidr)
            .route(ep, "default", gw);
    }
    topo.sysctl("host", "net.ipv4.ip_forward", "1");
    let macs = ["a", "b", "c"].map(|ns| mac_of(topo.ns(ns).name(), "eth0"));
    let host = topo.ns("host");
    let ifindexes = ["veth-a", "veth-b", "veth-c"].map(|veth| host.ifindex(veth));
    let uplink = host.ifindex("uplink0");
    let dp = host.enter(|| {
        let mut dp = Datapath::load().expect("loading the datapath");
        let net = |id, gw: [u8; 4], icc| NetworkOptions {
            id,
            gateway: gw.into(),
            masquerade: true,
            icc,
            internal: false,
            gateway_mode: GatewayMode::Nat,
        };
        dp.add_network(
            "172.17.0.0/16".parse().unwrap(),
            &net(1, [172, 17, 0, 1], icc),
        )
        .unwrap();
        dp.add_network(
            "172.18.0.0/16".parse().unwrap(),
            &net(2, [172, 18, 0, 1], true),
        )
        .unwrap();
        dp.set_uplink_addr(uplink, UPLINK.parse().unwrap()).unwrap();
        let addrs = [[172, 17, 0, 2], [172, 17, 0, 3], [172, 18, 0, 2]];
        for (i, (_, veth, ..)) in endpoints.iter().enumerate() {
            let network = if i < 2 { 1 } else { 2 };
            dp.add_endpoint(ifindexes[i], addrs[i].into(), macs[i], network)
                .unwrap();
            dp.attach_endpoint(veth, TcMode::Auto).unwrap();
        }
        let (a, b) = (Ipv4Addr::from(addrs[0]), Ipv4Addr::from(addrs[1]));
        dp.publish(Proto::Tcp, None, 8080, a, 80).unwrap();
        dp.publish(Proto::Udp, None, 5353, a, 53).unwrap();
        dp.publish(Proto::Tcp, None, 8081, b, 80).unwrap();
        dp.publish(Proto::Udp, None, 5354, b, 53).unwrap();
        dp
    });
    Lab { dp, topo }
}

/// TCP from namespace `client` to `to`, served by `server` on `bind`: the peer the server saw.
fn tcp_hairpin(lab: &Lab, client: &str, to: &str, server: &str, bind: &str) -> Ipv4Addr {
    let echo = echo_once(lab.topo.ns(server).name(), bind);
    // Past a few GSO segments, in both directions.
    let data: Vec<u8> = (0..200_000).map(|i| (i * 7 % 251) as u8).collect();
    roundtrip_data(lab.topo.ns(client).name(), to, &data);
    match echo.join().unwrap() {
        SocketAddr::V4(peer) => *peer.ip(),
        other => panic!("{other}"),
    }
}

/// A datagram from namespace `client` to `to`, echoed by `server` on `bind`; the client's socket
/// is connected to `to`, so only a reply from exactly there gets in. The peer the server saw.
fn udp_hairpin(lab: &Lab, client: &str, to: &str, server: &str, bind: &str) -> Ipv4Addr {
    let echo = lab.topo.ns(server).enter(|| sockets::udp_socket(bind));
    echo.set_read_timeout(Some(TIMEOUT)).unwrap();
    let sock = lab.topo.ns(client).enter(|| {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.connect(to).unwrap();
        sock
    });
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    sock.send(b"ping").unwrap();
    let mut buf = [0u8; 16];
    let (n, peer) = echo
        .recv_from(&mut buf)
        .expect("datagram reaches the server");
    assert_eq!(&buf[..n], b"ping");
    echo.send_to(b"pong", peer).unwrap();
    let n = sock.recv(&mut buf).expect("reply reaches the client");
    assert_eq!(&buf[..n], b"pong");
    match peer {
        SocketAddr::V4(peer) => *peer.ip(),
        other => panic!("{other}"),
    }
}

fn hairpinned(lab: &Lab) -> u64 {
    lab.dp
        .stat(program_id::ENDPOINT_INGRESS, outcome::DNAT)
        .unwrap()
}

#[test]
fn an_endpoint_reaches_its_own_published_ports_through_the_uplink_and_its_gateway() {
    let lab = lab(true);
    for via in [UPLINK, "172.17.0.1"] {
        let peer = tcp_hairpin(&lab, "a", &format!("{via}:8080"), "a", "0.0.0.0:80");
        assert_eq!(peer, GW1, "tcp through {via}");
        let peer = udp_hairpin(&lab, "a", &format!("{via}:5353"), "a", "0.0.0.0:53");
        assert_eq!(peer, GW1, "udp through {via}");
    }
    assert!(hairpinned(&lab) >= 4);
    assert!(
        lab.dp
            .stat(program_id::ENDPOINT_INGRESS, outcome::FAST_PATH)
            .unwrap()
            > 4
    );
}

#[test]
fn an_endpoint_reaches_a_siblings_published_ports() {
    let lab = lab(true);
    let peer = tcp_hairpin(&lab, "a", &format!("{UPLINK}:8081"), "b", "0.0.0.0:80");
    assert_eq!(peer, GW1);
    let peer = udp_hairpin(&lab, "a", "172.17.0.1:5354", "b", "0.0.0.0:53");
    assert_eq!(peer, GW1);
}

/// ICMP errors about hairpin flows reach the other side, as under Docker's rules: a UDP
/// client of a sibling's published port where nothing listens is refused, and so is a server
/// that answers a client gone meanwhile.
#[test]
fn udp_through_hairpin_is_refused_by_a_closed_port_on_either_side() {
    let lab = lab(true);
    let client = |lab: &Lab| {
        let sock = lab.topo.ns("a").enter(|| {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            sock.connect(format!("{UPLINK}:5354")).unwrap();
            sock
        });
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        sock
    };
    let mut buf = [0u8; 16];
    // Nothing listens on b:53.
    let sock = client(&lab);
    sockets::expect_refused(&sock, b"ping", "nothing listens on b:53");

    let server = lab.topo.ns("b").enter(|| sockets::udp_socket("0.0.0.0:53"));
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let sock = client(&lab);
    sock.send(b"ping").unwrap();
    let (_, peer) = server.recv_from(&mut buf).expect("the datagram reaches b");
    drop(sock);
    server.connect(peer).unwrap();
    sockets::expect_refused(&server, b"late", "the client has gone");
}

#[test]
fn another_network_reaches_published_ports_but_nothing_else() {
    let lab = lab(true);
    for via in [UPLINK, "172.17.0.1"] {
        let peer = tcp_hairpin(&lab, "c", &format!("{via}:8080"), "a", "0.0.0.0:80");
        assert_eq!(
            peer, GW1,
            "tcp through {via}: the server sees its own gateway"
        );
        let peer = udp_hairpin(&lab, "c", &format!("{via}:5353"), "a", "0.0.0.0:53");
        assert_eq!(peer, GW1, "udp through {via}");
    }
    // Not a directly, nor an unpublished port on network 1's gateway.
    let before = lab
        .dp
        .stat(program_id::ENDPOINT_INGRESS, outcome::DROP_ISOLATION)
        .unwrap();
    for to in ["172.17.0.2:80", "172.17.0.1:9999"] {
        let to: SocketAddr = to.parse().unwrap();
        let connected = lab
            .topo
            .ns("c")
            .enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)));
        assert!(connected.is_err(), "c reached {to}");
    }
    assert!(
        lab.dp
            .stat(program_id::ENDPOINT_INGRESS, outcome::DROP_ISOLATION)
            .unwrap()
            >= before + 2
    );
}

#[test]
fn icc_false_allows_hairpin_to_a_sibling_but_not_direct_traffic() {
    let lab = lab(false);
    let to: SocketAddr = "172.17.0.3:80".parse().unwrap();
    let _server = lab
        .topo
        .ns("b")
        .enter(|| sockets::tcp_listener("0.0.0.0:80"));
    let direct = lab
        .topo
        .ns("a")
        .enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)));
    assert!(direct.is_err(), "a reached b directly");
    assert!(
        lab.dp
            .stat(program_id::ENDPOINT_INGRESS, outcome::DROP_ICC)
            .unwrap()
            >= 1
    );
    drop(_server);
    let peer = tcp_hairpin(&lab, "a", &format!("{UPLINK}:8081"), "b", "0.0.0.0:80");
    assert_eq!(peer, GW1);
    let peer = udp_hairpin(&lab, "a", &format!("{UPLINK}:5354"), "b", "0.0.0.0:53");
    assert_eq!(peer, GW1);
}
