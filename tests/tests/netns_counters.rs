//! The counting programs attached to a veth in a test namespace, with real traffic.
use std::{net::UdpSocket, time::Duration};

use aya::programs::{TcAttachType, XdpMode};
use bridgenet::datapath::{self, Datapath, TcMode};
use bridgenet_tests::{Topology, kernel_note};

const DATAGRAMS: u64 = 20;

/// Two namespaces joined by a veth: client 198.18.0.1 and server 198.18.0.2, on eth0 each.
fn pair() -> Topology {
    let mut topo = Topology::new();
    topo.netns("client")
        .netns("server")
        .veth(("client", "eth0"), ("server", "eth0"))
        .addr("client", "eth0", "198.18.0.1/24")
        .addr("server", "eth0", "198.18.0.2/24");
    topo
}

/// Sends DATAGRAMS UDP datagrams from client to server and checks that all of them arrived.
fn send_udp(topo: &Topology) {
    let server = topo
        .ns("server")
        .enter(|| UdpSocket::bind("198.18.0.2:7000").expect("bind in server"));
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    topo.ns("client").enter(|| {
        let client = UdpSocket::bind("198.18.0.1:0").expect("bind in client");
        for i in 0..DATAGRAMS {
            client
                .send_to(&i.to_be_bytes(), "198.18.0.2:7000")
                .expect("send");
        }
    });
    let mut buf = [0u8; 8];
    for _ in 0..DATAGRAMS {
        server.recv_from(&mut buf).expect("every datagram arrives");
    }
}

/// Attaches tc_count on the server's eth0 ingress, sends traffic and checks the counters.
fn tc_counts_traffic(mode: TcMode) -> Topology {
    let topo = pair();
    let ifindex = topo.ns("server").ifindex("eth0");
    let dp = topo.ns("server").enter(|| {
        let mut dp = Datapath::load().expect("loading the datapath");
        dp.attach_tc_count("eth0", TcAttachType::Ingress, mode)
            .expect("attaching");
        dp
    });
    assert!(
        dp.if_counters().unwrap().is_empty(),
        "nothing counted before traffic"
    );

    send_udp(&topo);

    let counters = dp.if_counters().unwrap();
    let seen = counters.get(&ifindex).expect("server eth0 has counters");
    // The datagrams plus the ARP exchange that precedes them.
    assert!(
        seen.packets >= DATAGRAMS && seen.packets <= DATAGRAMS + 4,
        "{seen:?}"
    );
    // 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + 8 bytes of payload per datagram.
    assert!(seen.bytes >= DATAGRAMS * 50, "{seen:?}");
    assert_eq!(
        counters.len(),
        1,
        "only the attached interface counts: {counters:?}"
    );
    drop(dp);
    topo
}

#[test]
fn tc_count_through_netlink_clsact() {
    let topo = tc_counts_traffic(TcMode::Netlink);
    // Attached as a classic tc filter: while attached `tc filter show` lists it. The program is
    // gone with the datapath; the qdisc stays until the namespace is removed.
    let qdiscs = topo
        .ns("server")
        .exec("tc", &["qdisc", "show", "dev", "eth0"]);
    assert!(qdiscs.contains("clsact"), "{qdiscs}");
}

#[test]
fn tc_count_through_the_default_attach_path() {
    let topo = pair();
    let dp = topo.ns("server").enter(|| {
        let mut dp = Datapath::load().expect("loading the datapath");
        dp.attach_tc_count("eth0", TcAttachType::Ingress, TcMode::Auto)
            .expect("attaching");
        dp
    });
    let filters = topo
        .ns("server")
        .exec("tc", &["filter", "show", "dev", "eth0", "ingress"]);
    if datapath::tcx_supported() {
        kernel_note!("tcx link expected (Linux 6.6 and later)");
        assert!(
            !filters.contains("tc_count"),
            "tcx attach must not create a tc filter: {filters}"
        );
    } else {
        kernel_note!("netlink clsact expected (tcx exists from Linux 6.6)");
        assert!(
            filters.contains("tc_count"),
            "netlink fallback must show as a tc filter: {filters}"
        );
    }
    drop(dp);
    drop(tc_counts_traffic(TcMode::Auto));
}

#[test]
fn xdp_count_on_a_veth() {
    let topo = pair();
    let ifindex = topo.ns("server").ifindex("eth0");
    let (dp, mode) = topo.ns("server").enter(|| {
        let mut dp = Datapath::load().expect("loading the datapath");
        let mode = dp.attach_xdp_count("eth0").expect("attaching");
        (dp, mode)
    });
    // veth has native XDP on every kernel of the matrix.
    assert!(matches!(mode, XdpMode::Driver), "{mode:?}");
    let link = topo.ns("server").ip(&["link", "show", "eth0"]);
    assert!(
        link.contains("xdp"),
        "ip link shows the XDP program: {link}"
    );

    send_udp(&topo);

    let counters = dp.if_counters().unwrap();
    let seen = counters.get(&ifindex).expect("server eth0 has counters");
    assert!(
        seen.packets >= DATAGRAMS && seen.packets <= DATAGRAMS + 4,
        "{seen:?}"
    );
}

#[test]
fn dropping_the_datapath_detaches_the_programs() {
    let topo = pair();
    let ifindex = topo.ns("server").ifindex("eth0");
    let dp = topo.ns("server").enter(|| {
        let mut dp = Datapath::load().expect("loading the datapath");
        dp.attach_xdp_count("eth0").expect("attaching");
        dp
    });
    drop(dp);
    let link = topo.ns("server").ip(&["link", "show", "eth0"]);
    assert!(!link.contains("xdp"), "XDP left attached: {link}");
    // Traffic still flows with nothing attached.
    send_udp(&topo);
    let _ = ifindex;
}
