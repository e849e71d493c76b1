//! The endpoint program with real traffic: two networks on two bridges in a host namespace,
//! endpoints in their own namespaces.
//! network 1: br1 172.17.0.1/16, endpoints a (.2) and b (.3); network 2: br2 172.18.0.1/16,
//! endpoint c (.2).
use std::time::Duration;

use bridgenet::datapath::{Datapath, GatewayMode, NetworkOptions, TcMode};
use bridgenet_common::{outcome, program_id};
use bridgenet_tests::sockets;
use bridgenet_tests::{Topology, topology::mac_of};

struct Lab {
    topo: Topology,
    dp: Datapath,
}

fn lab(icc: bool) -> Lab {
    let mut topo = Topology::new();
    topo.netns("host").netns("a").netns("b").netns("c");
    topo.bridge("host", "br1")
        .addr("host", "br1", "172.17.0.1/16");
    topo.bridge("host", "br2")
        .addr("host", "br2", "172.18.0.1/16");
    for (ep, veth, bridge, cidr, gw) in [
        ("a", "veth-a", "br1", "172.17.0.2/16", "172.17.0.1"),
        ("b", "veth-b", "br1", "172.17.0.3/16", "172.17.0.1"),
        ("c", "veth-c", "br2", "172.18.0.2/16", "172.18.0.1"),
    ] {
        topo.veth(("host", veth), (ep, "eth0"))
            .attach_to_bridge("host", veth, bridge)
            .addr(ep, "eth0", cidr)
            .route(ep, "default", gw);
    }
    topo.sysctl("host", "net.ipv4.ip_forward", "1");
    let macs = ["a", "b", "c"].map(|ns| mac_of(topo.ns(ns).name(), "eth0"));
    let ifindexes = [
        topo.ns("host").ifindex("veth-a"),
        topo.ns("host").ifindex("veth-b"),
        topo.ns("host").ifindex("veth-c"),
    ];
    let dp = topo.ns("host").enter(|| {
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
        let addrs = [[172, 17, 0, 2], [172, 17, 0, 3], [172, 18, 0, 2]];
        for (i, veth) in ["veth-a", "veth-b", "veth-c"].iter().enumerate() {
            let network = if i < 2 { 1 } else { 2 };
            dp.add_endpoint(ifindexes[i], addrs[i].into(), macs[i], network)
                .unwrap();
            dp.attach_endpoint(veth, TcMode::Auto).unwrap();
        }
        dp
    });
    Lab { topo, dp }
}

/// Whether a datagram sent from namespace `from` (bound to `src`) reaches `to` in namespace
/// `to_ns`.
fn udp_gets_through(lab: &Lab, from: &str, src: &str, to_ns: &str, to: &str) -> bool {
    let receiver = lab.topo.ns(to_ns).enter(|| sockets::udp_socket(to));
    receiver
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let sender = lab.topo.ns(from).enter(|| sockets::udp_socket(src));
    for _ in 0..3 {
        sender.send_to(b"hello", to).unwrap();
    }
    receiver.recv_from(&mut [0u8; 16]).is_ok()
}

#[test]
fn endpoints_of_one_network_talk_and_other_networks_are_isolated() {
    let lab = lab(true);
    assert!(
        udp_gets_through(&lab, "a", "172.17.0.2:0", "b", "172.17.0.3:7000"),
        "same network"
    );
    assert!(
        !udp_gets_through(&lab, "a", "172.17.0.2:0", "c", "172.18.0.2:7000"),
        "a reached network 2"
    );
    assert!(
        !udp_gets_through(&lab, "c", "172.18.0.2:0", "a", "172.17.0.2:7001"),
        "c reached network 1"
    );
    // Nor the other network's gateway (an address of the host).
    let ping = lab
        .topo
        .ns("a")
        .output("ping", &["-c", "1", "-W", "1", "172.18.0.1"]);
    assert!(!ping.status.success(), "a reached network 2's gateway");
    let own = lab
        .topo
        .ns("a")
        .output("ping", &["-c", "1", "-W", "2", "172.17.0.1"]);
    assert!(own.status.success(), "a reaches its own gateway");
    assert!(
        lab.dp
            .stat(program_id::ENDPOINT_INGRESS, outcome::DROP_ISOLATION)
            .unwrap()
            >= 7
    );
}

#[test]
fn icc_false_keeps_endpoints_of_a_network_apart() {
    let lab = lab(false);
    assert!(!udp_gets_through(
        &lab,
        "a",
        "172.17.0.2:0",
        "b",
        "172.17.0.3:7000"
    ));
    assert!(
        lab.dp
            .stat(program_id::ENDPOINT_INGRESS, outcome::DROP_ICC)
            .unwrap()
            >= 3
    );
    let gateway = lab
        .topo
        .ns("a")
        .output("ping", &["-c", "1", "-W", "2", "172.17.0.1"]);
    assert!(gateway.status.success(), "the gateway stays reachable");
}

#[test]
fn spoofed_addresses_and_macs_do_not_get_through() {
    let lab = lab(true);
    let (a, b) = (lab.topo.ns("a"), lab.topo.ns("b"));
    // a takes an address that is not its own and sends from it; b's neighbour entry is static,
    // so the datagrams themselves go out, not only ARP.
    a.ip(&["addr", "add", "172.17.0.99/16", "dev", "eth0"]);
    let b_mac = b.exec("cat", &["/sys/class/net/eth0/address"]);
    let neigh = [
        "neigh",
        "replace",
        "172.17.0.3",
        "lladdr",
        b_mac.trim(),
        "dev",
        "eth0",
    ];
    a.ip(&neigh);
    assert!(!udp_gets_through(
        &lab,
        "a",
        "172.17.0.99:0",
        "b",
        "172.17.0.3:7000"
    ));
    let spoofed = lab
        .dp
        .stat(program_id::ENDPOINT_INGRESS, outcome::DROP_SPOOFED);
    assert!(spoofed.unwrap() >= 3, "{:?}", lab.dp.stats().unwrap());
    // a changes its MAC: nothing it sends gets through, not even from its own address.
    a.ip(&["link", "set", "eth0", "address", "02:00:00:00:00:99"]);
    b.ip(&["neigh", "flush", "dev", "eth0"]);
    assert!(!udp_gets_through(
        &lab,
        "a",
        "172.17.0.2:0",
        "b",
        "172.17.0.3:7001"
    ));
}

/// The daemon looks links up by name with one request (`Netlink::link`), not a dump of every
/// link, so that an endpoint's create and remove cost the same beside 1 or 1,000 others. A
/// name of 16 characters or more names no link, even where its first 15 do: the kernel would
/// refuse it, or cut it to a link that exists.
#[test]
fn links_are_looked_up_by_name() {
    let mut topo = Topology::new();
    topo.netns("host").netns("peer");
    topo.veth(("host", "abcdefghijklmno"), ("peer", "eth0"));
    let index = topo.ns("host").ifindex("abcdefghijklmno");
    topo.ns("host").enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let nl = bridgenet::netlink::Netlink::new().unwrap();
            let found = nl.link("abcdefghijklmno").await.unwrap();
            assert_eq!(found.map(|l| l.index), Some(index));
            for missing in ["abcdefghijklmnop", "nope", ""] {
                let link = nl.link(missing).await.unwrap();
                assert!(link.is_none(), "{missing:?} found {link:?}");
            }
        });
    });
}
