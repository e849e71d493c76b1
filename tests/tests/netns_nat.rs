//! Masquerade and published ports with real TCP, UDP and ICMP traffic between namespaces:
//! world (198.18.0.1) -- uplink0 (198.18.0.2) host [br0 172.17.0.1/16] -- endpoint (172.17.0.2).
//! The world has no route to 172.17.0.0/16: only translated traffic can cross.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use bridgenet::datapath::{Datapath, Proto, TcMode};
use bridgenet_common::{outcome, program_id};
use bridgenet_tests::Topology;
use bridgenet_tests::sockets;
use bridgenet_tests::traffic::{echo_once, roundtrip_data};

/// Generous: the kernel matrix runs these under software emulation.
const TIMEOUT: Duration = Duration::from_secs(20);

struct Lab {
    topo: Topology,
    dp: Datapath,
}

fn lab() -> Lab {
    let mut topo = Topology::new();
    topo.netns("world")
        .netns("host")
        .veth(("world", "eth0"), ("host", "uplink0"))
        .addr("world", "eth0", "198.18.0.1/24");
    host_with_endpoint(topo)
}

/// Adds the host side of every lab to a topology that has a "host" namespace with uplink0:
/// uplink0's address 198.18.0.2/24, br0 (172.17.0.1/16) with the endpoint "ep"
/// (172.17.0.2) on it, and the datapath on uplink0 with tcp 8080 and udp 5353 published to ep.
fn host_with_endpoint(mut topo: Topology) -> Lab {
    topo.addr("host", "uplink0", "198.18.0.2/24")
        .netns("ep")
        .bridge("host", "br0")
        .addr("host", "br0", "172.17.0.1/16")
        .veth(("host", "vep"), ("ep", "eth0"))
        .attach_to_bridge("host", "vep", "br0")
        .addr("ep", "eth0", "172.17.0.2/16")
        .route("ep", "default", "172.17.0.1")
        .sysctl("host", "net.ipv4.ip_forward", "1");
    let endpoint = Ipv4Addr::new(172, 17, 0, 2);
    let dp = topo.ns("host").enter(|| {
        let mut dp = Datapath::load().expect("loading the datapath");
        let uplink = Ipv4Addr::new(198, 18, 0, 2);
        dp.attach_uplink("uplink0", uplink, TcMode::Auto)
            .expect("attaching");
        dp.add_subnet("172.17.0.0/16".parse().unwrap(), true)
            .unwrap();
        dp.publish(Proto::Tcp, None, 8080, endpoint, 80).unwrap();
        dp.publish(Proto::Udp, None, 5353, endpoint, 53).unwrap();
        dp
    });
    Lab { topo, dp }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn masquerade_tcp_shows_the_host_address_to_the_world() {
    let lab = lab();
    let server = echo_once(lab.topo.ns("world").name(), "198.18.0.1:7000");
    roundtrip_data(
        lab.topo.ns("ep").name(),
        "198.18.0.1:7000",
        &payload(200_000),
    );
    let peer = server.join().unwrap();
    assert_eq!(
        peer.ip(),
        Ipv4Addr::new(198, 18, 0, 2),
        "the world sees the uplink address"
    );
    assert!(
        lab.dp
            .stat(program_id::UPLINK_EGRESS, outcome::SNAT)
            .unwrap()
            > 0
    );
}

#[test]
fn masquerade_tcp_with_checksum_offload_off() {
    let lab = lab();
    // With tx offload off the endpoint computes full checksums (CHECKSUM_NONE after veth);
    // with it on (the default, other test) packets arrive CHECKSUM_PARTIAL.
    lab.topo
        .ns("ep")
        .exec("ethtool", &["-K", "eth0", "tx", "off"]);
    lab.topo
        .ns("world")
        .exec("ethtool", &["-K", "eth0", "tx", "off"]);
    let server = echo_once(lab.topo.ns("world").name(), "198.18.0.1:7001");
    roundtrip_data(
        lab.topo.ns("ep").name(),
        "198.18.0.1:7001",
        &payload(200_000),
    );
    assert_eq!(server.join().unwrap().ip(), Ipv4Addr::new(198, 18, 0, 2));
}

#[test]
fn masquerade_udp_and_icmp() {
    let lab = lab();
    let server = lab
        .topo
        .ns("world")
        .enter(|| sockets::udp_socket("198.18.0.1:9999"));
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let client = lab
        .topo
        .ns("ep")
        .enter(|| std::net::UdpSocket::bind("172.17.0.2:0").expect("bind"));
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.send_to(b"ping", "198.18.0.1:9999").unwrap();
    let mut buf = [0u8; 16];
    let (n, peer) = server
        .recv_from(&mut buf)
        .expect("datagram reaches the world");
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(peer.ip(), Ipv4Addr::new(198, 18, 0, 2));
    server.send_to(b"pong", peer).unwrap();
    let (n, from) = client
        .recv_from(&mut buf)
        .expect("reply reaches the endpoint");
    assert_eq!(
        (&buf[..n], from),
        (&b"pong"[..], "198.18.0.1:9999".parse().unwrap())
    );

    let ping = lab
        .topo
        .ns("ep")
        .output("ping", &["-c", "3", "-i", "0.2", "-W", "2", "198.18.0.1"]);
    assert!(
        ping.status.success(),
        "ping through masquerade: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
}

#[test]
fn published_tcp_port_reaches_the_endpoint_with_the_client_address() {
    let lab = lab();
    let server = echo_once(lab.topo.ns("ep").name(), "0.0.0.0:80");
    roundtrip_data(
        lab.topo.ns("world").name(),
        "198.18.0.2:8080",
        &payload(200_000),
    );
    let peer = server.join().unwrap();
    assert_eq!(
        peer.ip(),
        Ipv4Addr::new(198, 18, 0, 1),
        "the endpoint sees the real client"
    );
    assert!(
        lab.dp
            .stat(program_id::UPLINK_INGRESS, outcome::DNAT)
            .unwrap()
            > 0
    );
}

#[test]
fn published_udp_port_and_its_reply() {
    let lab = lab();
    let server = lab
        .topo
        .ns("ep")
        .enter(|| sockets::udp_socket("0.0.0.0:53"));
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let client = lab
        .topo
        .ns("world")
        .enter(|| std::net::UdpSocket::bind("198.18.0.1:0").expect("bind"));
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.send_to(b"query", "198.18.0.2:5353").unwrap();
    let mut buf = [0u8; 16];
    let (n, peer) = server
        .recv_from(&mut buf)
        .expect("datagram reaches the endpoint");
    assert_eq!(&buf[..n], b"query");
    assert_eq!(peer.ip(), Ipv4Addr::new(198, 18, 0, 1));
    server.send_to(b"answer", peer).unwrap();
    let (n, from) = client.recv_from(&mut buf).expect("the answer comes back");
    assert_eq!(&buf[..n], b"answer");
    assert_eq!(
        from,
        "198.18.0.2:5353".parse().unwrap(),
        "from the published address and port"
    );
}

#[test]
fn unpublished_ports_and_endpoint_addresses_are_not_reachable_from_the_world() {
    let lab = lab();
    let _listener = lab
        .topo
        .ns("ep")
        .enter(|| sockets::tcp_listener("0.0.0.0:81"));
    let to: SocketAddr = "198.18.0.2:81".parse().unwrap();
    let attempt = lab
        .topo
        .ns("world")
        .enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(1)));
    assert!(attempt.is_err(), "an unpublished port answered");
}

/// world (198.18.1.1) -- router-a ==(MTU 1280)== router-b -- host uplink0 (198.18.0.2):
/// every host has MTU 1500, so full-size packets from the endpoint only get through after
/// path MTU discovery, which needs router-b's "fragmentation needed" errors translated back
/// to the endpoint.
fn routed_lab() -> Lab {
    let mut topo = Topology::new();
    topo.netns("router-b")
        .netns("host")
        .veth(("router-b", "eth0"), ("host", "uplink0"))
        .netns("world")
        .netns("router-a")
        .veth(("world", "eth0"), ("router-a", "r-up"))
        .veth(("router-a", "r-mid"), ("router-b", "r-mid"))
        .addr("world", "eth0", "198.18.1.1/24")
        .addr("router-a", "r-up", "198.18.1.2/24")
        .addr("router-a", "r-mid", "198.18.2.1/24")
        .addr("router-b", "r-mid", "198.18.2.2/24")
        .addr("router-b", "eth0", "198.18.0.1/24")
        .route("world", "198.18.0.0/24", "198.18.1.2")
        .route("router-a", "198.18.0.0/24", "198.18.2.2")
        .route("router-b", "198.18.1.0/24", "198.18.2.1")
        .sysctl("router-a", "net.ipv4.ip_forward", "1")
        .sysctl("router-b", "net.ipv4.ip_forward", "1");
    topo.ns("router-a")
        .ip(&["link", "set", "r-mid", "mtu", "1280"]);
    topo.ns("router-b")
        .ip(&["link", "set", "r-mid", "mtu", "1280"]);
    let mut lab = host_with_endpoint(topo);
    lab.topo.route("host", "default", "198.18.0.1");
    lab
}

#[test]
fn path_mtu_discovery_through_masquerade() {
    let lab = routed_lab();
    let server = echo_once(lab.topo.ns("world").name(), "198.18.1.1:7000");
    // The echo comes back through the 1280 link too, in the other direction.
    roundtrip_data(
        lab.topo.ns("ep").name(),
        "198.18.1.1:7000",
        &payload(30_000),
    );
    assert_eq!(server.join().unwrap().ip(), Ipv4Addr::new(198, 18, 0, 2));
    let route = lab
        .topo
        .ns("ep")
        .exec("ip", &["route", "get", "198.18.1.1"]);
    assert!(
        route.contains("mtu 1280"),
        "the endpoint learned the path MTU: {route}"
    );
}

#[test]
fn path_mtu_discovery_through_a_published_port() {
    let lab = routed_lab();
    let server = echo_once(lab.topo.ns("ep").name(), "0.0.0.0:80");
    roundtrip_data(
        lab.topo.ns("world").name(),
        "198.18.0.2:8080",
        &payload(30_000),
    );
    assert_eq!(server.join().unwrap().ip(), Ipv4Addr::new(198, 18, 1, 1));
    let route = lab
        .topo
        .ns("ep")
        .exec("ip", &["route", "get", "198.18.1.1"]);
    assert!(
        route.contains("mtu 1280"),
        "the endpoint learned the path MTU: {route}"
    );
}

#[test]
fn no_iptables_or_nftables_rule_in_the_host_namespace() {
    let lab = lab();
    let server = echo_once(lab.topo.ns("ep").name(), "0.0.0.0:80");
    roundtrip_data(lab.topo.ns("world").name(), "198.18.0.2:8080", b"hello");
    server.join().unwrap();
    let host = lab.topo.ns("host");
    let iptables = host.exec("iptables-save", &[]);
    let rules: Vec<&str> = iptables.lines().filter(|l| l.starts_with("-A")).collect();
    assert!(
        rules.is_empty(),
        "iptables rules in the host namespace: {rules:?}"
    );
    let nft = host.exec("nft", &["list", "ruleset"]);
    assert!(
        !nft.contains("rule") && !nft.contains("dnat") && !nft.contains("masquerade"),
        "nftables ruleset: {nft}"
    );
}
