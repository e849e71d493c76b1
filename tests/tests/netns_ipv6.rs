//! The endpoint program with real IPv6 traffic: the kernel's own Neighbour Discovery, MLD
//! and router solicitations pass, endpoints of a network talk (global and link-local), other
//! networks are out of reach, and a rogue Router Advertisement or a spoofed Neighbour
//! Advertisement from an endpoint changes nothing. Endpoint d has no program on its veth: what
//! it sends shows that the host would take the same packets, so the tests cannot pass by
//! sending something the kernel ignores anyway.
//! network 1: br1 172.17.0.1/16 2001:db8:1::1/64, endpoints a (.2, ::2), b (.3, ::3) and the
//! unguarded d (.4, ::4); network 2: br2 172.18.0.1/16 2001:db8:2::1/64, endpoint c (.2, ::2).
use std::{
    net::Ipv6Addr,
    thread,
    time::{Duration, Instant},
};

use bridgenet::datapath::{Datapath, GatewayMode, NetworkOptions, TcMode};
use bridgenet_common::{outcome, program_id};
use bridgenet_tests::{Topology, ipv6, raw, sockets, topology::mac_of};

struct Lab {
    topo: Topology,
    dp: Datapath,
    macs: [[u8; 6]; 4],
}

const ENDPOINTS: [(&str, &str, &str, &str, &str); 4] = [
    (
        "a",
        "br1",
        "172.17.0.2/16",
        "2001:db8:1::2/64",
        "2001:db8:1::1",
    ),
    (
        "b",
        "br1",
        "172.17.0.3/16",
        "2001:db8:1::3/64",
        "2001:db8:1::1",
    ),
    (
        "c",
        "br2",
        "172.18.0.2/16",
        "2001:db8:2::2/64",
        "2001:db8:2::1",
    ),
    (
        "d",
        "br1",
        "172.17.0.4/16",
        "2001:db8:1::4/64",
        "2001:db8:1::1",
    ),
];

fn lab() -> Lab {
    let mut topo = Topology::new();
    for ns in ["host", "a", "b", "c", "d"] {
        // IPv6 on (new namespaces may inherit it off), and addresses usable at once: no
        // duplicate address detection to wait for.
        topo.netns(ns)
            .sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "0")
            .sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "0")
            .sysctl(ns, "net.ipv6.conf.default.accept_dad", "0");
    }
    topo.sysctl("host", "net.ipv6.conf.all.forwarding", "1");
    for (br, v4, v6) in [
        ("br1", "172.17.0.1/16", "2001:db8:1::1/64"),
        ("br2", "172.18.0.1/16", "2001:db8:2::1/64"),
    ] {
        topo.bridge("host", br)
            .addr("host", br, v4)
            .addr("host", br, v6);
    }
    for (ep, bridge, v4, v6, gw6) in ENDPOINTS {
        let veth = format!("veth-{ep}");
        topo.veth(("host", &veth), (ep, "eth0"))
            .attach_to_bridge("host", &veth, bridge)
            .addr(ep, "eth0", v4)
            .addr(ep, "eth0", v6);
        topo.ns(ep)
            .ip(&["-6", "route", "add", "default", "via", gw6]);
    }
    let macs = ["a", "b", "c", "d"].map(|ns| mac_of(topo.ns(ns).name(), "eth0"));
    let ifindexes = ["a", "b", "c"].map(|ep| topo.ns("host").ifindex(&format!("veth-{ep}")));
    let dp = topo.ns("host").enter(|| {
        let mut dp = Datapath::load().expect("loading the datapath");
        let net = |id, gw: [u8; 4]| NetworkOptions {
            id,
            gateway: gw.into(),
            masquerade: true,
            icc: true,
            internal: true,
            gateway_mode: GatewayMode::Nat,
        };
        for (id, v4, v6, gw4, gw6) in [
            (
                1,
                "172.17.0.0/16",
                "2001:db8:1::/64",
                [172, 17, 0, 1],
                "2001:db8:1::1",
            ),
            (
                2,
                "172.18.0.0/16",
                "2001:db8:2::/64",
                [172, 18, 0, 1],
                "2001:db8:2::1",
            ),
        ] {
            dp.add_network(v4.parse().unwrap(), &net(id, gw4)).unwrap();
            dp.add_network6(v6.parse().unwrap(), gw6.parse().unwrap(), &net(id, gw4))
                .unwrap();
        }
        for (i, (ep, _, v4, v6, _)) in ENDPOINTS[..3].iter().enumerate() {
            let network = if *ep == "c" { 2 } else { 1 };
            let v4: ipnet::Ipv4Net = v4.parse().unwrap();
            let v6: ipnet::Ipv6Net = v6.parse().unwrap();
            dp.add_endpoint(ifindexes[i], v4.addr(), macs[i], network)
                .unwrap();
            dp.add_endpoint6(ifindexes[i], v6.addr()).unwrap();
            dp.attach_endpoint(&format!("veth-{ep}"), TcMode::Auto)
                .unwrap();
        }
        dp
    });
    Lab { topo, dp, macs }
}

fn pings(lab: &Lab, from: &str, to: &str) -> bool {
    lab.topo
        .ns(from)
        .output("ping", &["-6", "-c", "1", "-W", "2", to])
        .status
        .success()
}

fn stat(lab: &Lab, reason: u32) -> u64 {
    lab.dp.stat(program_id::ENDPOINT_INGRESS, reason).unwrap()
}

/// Polls `what` for up to two seconds.
fn eventually(mut what: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if what() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `frame` from endpoint `ep`'s eth0.
fn send(lab: &Lab, ep: &str, frame: &[u8]) {
    raw::send_frame(lab.topo.ns(ep).name(), "eth0", frame);
}

fn rogue_routes(lab: &Lab, ns: &str) -> Vec<String> {
    ipv6::rogue_routes(&lab.topo.ns(ns).ip(&["-6", "route"]))
}

#[test]
fn endpoints_talk_ipv6_on_their_network_and_not_across_networks() {
    let lab = lab();
    assert!(pings(&lab, "a", "2001:db8:1::3"), "a reaches b");
    assert!(pings(&lab, "a", "2001:db8:1::1"), "a reaches its gateway");
    let b_ll = Ipv6Addr::from(ipv6::link_local(lab.macs[1]));
    assert!(
        pings(&lab, "a", &format!("{b_ll}%eth0")),
        "a reaches b's link-local address"
    );
    // The kernel's own Neighbour Discovery, MLD reports and router solicitations passed.
    assert_eq!(
        stat(&lab, outcome::DROP_SPOOFED),
        0,
        "nothing of the stack's was spoofed"
    );
    assert_eq!(stat(&lab, outcome::DROP_PROTOCOL), 0);

    let before = stat(&lab, outcome::DROP_ISOLATION);
    assert!(!pings(&lab, "a", "2001:db8:2::2"), "a reached network 2");
    let receiver = lab
        .topo
        .ns("c")
        .enter(|| sockets::udp_socket("[2001:db8:2::2]:7000"));
    receiver
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let sender = lab
        .topo
        .ns("a")
        .enter(|| sockets::udp_socket("[2001:db8:1::2]:0"));
    for _ in 0..3 {
        sender.send_to(b"hello", "[2001:db8:2::2]:7000").unwrap();
    }
    assert!(
        receiver.recv_from(&mut [0u8; 16]).is_err(),
        "UDP crossed networks"
    );
    assert!(stat(&lab, outcome::DROP_ISOLATION) >= before + 4);
}

#[test]
fn a_rogue_router_advertisement_from_an_endpoint_changes_no_route() {
    let lab = lab();
    // The host forwards, so it takes advertisements only with accept_ra 2 (a host that does
    // is what the CVE hit); the endpoints take them by default.
    lab.topo
        .ns("host")
        .sysctl("net.ipv6.conf.br1.accept_ra", "2");
    let before = stat(&lab, outcome::DROP_ROUTER);
    send(&lab, "b", &ipv6::router_advertisement(lab.macs[1]));
    thread::sleep(Duration::from_millis(700));
    for ns in ["host", "a"] {
        assert_eq!(rogue_routes(&lab, ns), Vec::<String>::new(), "in {ns}");
    }
    assert_eq!(stat(&lab, outcome::DROP_ROUTER), before + 1);

    // The same advertisement from the unguarded d is taken: the check above meant something.
    send(&lab, "d", &ipv6::router_advertisement(lab.macs[3]));
    for ns in ["host", "a"] {
        assert!(
            eventually(|| !rogue_routes(&lab, ns).is_empty()),
            "d's advertisement in {ns}"
        );
    }
}

#[test]
fn a_spoofed_neighbour_advertisement_from_an_endpoint_changes_no_neighbour() {
    let lab = lab();
    assert!(pings(&lab, "host", "2001:db8:1::2"), "the host reaches a");
    let a_at = |mac: [u8; 6]| {
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        let neigh = lab
            .topo
            .ns("host")
            .ip(&["-6", "neigh", "show", "2001:db8:1::2"]);
        neigh.contains(&mac)
    };
    assert!(a_at(lab.macs[0]));
    let before = stat(&lab, outcome::DROP_SPOOFED);
    let a: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
    send(&lab, "b", &ipv6::neighbour_advertisement(lab.macs[1], a));
    thread::sleep(Duration::from_millis(700));
    assert!(a_at(lab.macs[0]), "b took a's address over");
    assert_eq!(stat(&lab, outcome::DROP_SPOOFED), before + 1);

    send(&lab, "d", &ipv6::neighbour_advertisement(lab.macs[3], a));
    assert!(
        eventually(|| a_at(lab.macs[3])),
        "d's advertisement was not taken"
    );
}
