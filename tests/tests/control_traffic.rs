//! The control plane end to end with real traffic: the daemon in a host namespace, endpoints
//! made by the CLI, a world namespace at 198.18.0.1 that has no route to the endpoints.
use std::{net::Ipv4Addr, path::Path, time::Duration};

use bridgenet_tests::sockets;
use bridgenet_tests::topology::enter;
use bridgenet_tests::traffic::{
    UdpSink, UdpStream, echo_once, open_roundtrip, refused, roundtrip, roundtrip_data,
    roundtrip_within,
};
use bridgenet_tests::{Netns, control::ControlLab};

#[test]
fn published_port_and_masquerade_through_the_daemon() {
    let mut lab = ControlLab::up();
    let ns = lab.netns_name("ep1");
    let out = lab.ok(&[
        "endpoint",
        "create",
        "ep1",
        "--network",
        "bridge",
        "--netns",
        &ns,
        "-p",
        "8080:80",
    ]);
    assert_eq!(out.trim(), "ep1 172.17.0.2");
    assert_eq!(lab.ok(&["port", "ls", "ep1"]), "80/tcp -> 0.0.0.0:8080\n");

    // World -> published port -> endpoint, which sees the real client; endpoint -> world,
    // masqueraded behind the uplink's address. Both stay open while `ct ls` lists them.
    let world = lab.topo.ns("world").name().to_owned();
    let host_ns = lab.topo.ns("host").name().to_owned();
    let server_in = echo_once(&ns, "0.0.0.0:80");
    let inbound = open_roundtrip(&world, "198.18.0.2:8080");
    let server_out = echo_once(&world, "198.18.0.1:7000");
    let outbound = open_roundtrip(&ns, "198.18.0.1:7000");

    let ct = lab.ok(&["ct", "ls"]);
    assert!(
        ct.contains("src=198.18.0.1 dst=198.18.0.2") && ct.contains("dport=8080"),
        "ct ls: {ct}"
    );
    assert!(ct.contains("src=172.17.0.2 dst=198.18.0.1"), "ct ls: {ct}");
    assert!(lab.stat("uplink_ingress", "dnat") > 0);
    assert!(lab.stat("uplink_egress", "snat") > 0);
    // Once the bridge knows the endpoint's MAC, its packets go straight into its namespace.
    let peer_path = |lab: &ControlLab| lab.stat("uplink_ingress", "fast_path_peer");
    assert!(peer_path(&lab) > 0, "no packet went straight into ep1");
    // What ep1 sends out (its masqueraded flow, its published flow's replies) goes straight
    // to the uplink: the bridge has the gateway's MAC of Docker's scheme.
    let bridge_mac = lab.exec_in(&host_ns, "cat", &["/sys/class/net/bridgenet0/address"]);
    assert_eq!(
        String::from_utf8_lossy(&bridge_mac.stdout).trim(),
        "02:42:ac:11:00:01"
    );
    assert!(
        lab.stat("endpoint_ingress", "fast_path") > 0,
        "nothing went straight out of ep1"
    );
    // Translated on ep1's veth, it passes the uplink's uplink_egress as it is.
    assert!(lab.stat("uplink_egress", "fast_path") > 0);
    drop((inbound, outbound));
    assert_eq!(server_in.join().unwrap().ip(), Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(
        server_out.join().unwrap().ip(),
        Ipv4Addr::new(198, 18, 0, 2)
    );

    // Flushing the endpoint's flows empties the table of them.
    let flushed = lab.ok(&["ct", "flush", "--endpoint", "ep1"]);
    assert!(
        flushed.ends_with("flows removed\n") && !flushed.starts_with("0 "),
        "{flushed}"
    );
    let ct = lab.ok(&["ct", "ls"]);
    assert!(!ct.contains("172.17.0.2"), "ct ls after flush: {ct}");

    // Unpublished, the port no longer answers.
    assert_eq!(
        lab.ok(&["port", "unpublish", "ep1", "8080:80"]),
        "80/tcp -> 0.0.0.0:8080\n"
    );
    assert_eq!(lab.ok(&["port", "ls", "ep1"]), "");
    let _listener = enter(&ns, || sockets::tcp_listener("0.0.0.0:80"));
    assert!(refused(lab.topo.ns("world").name(), "198.18.0.2:8080"));

    // Published again at run time, with a UDP one and a range.
    let out = lab.ok(&[
        "port",
        "publish",
        "ep1",
        "8081:80",
        "5353:53/udp",
        "9000-9001:90-91",
    ]);
    assert_eq!(
        out,
        "80/tcp -> 0.0.0.0:8081\n53/udp -> 0.0.0.0:5353\n90/tcp -> 0.0.0.0:9000\n91/tcp -> 0.0.0.0:9001\n"
    );
    drop(_listener);
    let server = echo_once(&ns, "0.0.0.0:80");
    roundtrip(lab.topo.ns("world").name(), "198.18.0.2:8081");
    server.join().unwrap();

    // Removing the endpoint removes its namespace (bridgenet made it) at once, and its veth
    // right after the answer; the bridge forgets its MAC at once, since a new endpoint may take
    // its address, and so its MAC, while the old veth is still going.
    let mac = String::from_utf8(
        lab.exec_in(&ns, "cat", &["/sys/class/net/eth0/address"])
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let host = lab.topo.ns("host").name().to_owned();
    let fdb = || {
        let out = lab.exec_in(&host, "bridge", &["fdb", "show", "br", "bridgenet0"]);
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(
        fdb().contains(&mac),
        "ep1 sent traffic: its MAC is learned\n{}",
        fdb()
    );
    lab.ok(&["endpoint", "rm", "ep1"]);
    assert!(!Path::new("/run/netns").join(&ns).exists());
    let learned = fdb();
    assert!(
        !learned.contains(&mac),
        "the bridge still sends {mac} to the removed endpoint's port:\n{learned}"
    );
    assert_eq!(lab.ok(&["port", "ls"]), "");
    let peers = lab.json(&["status"])["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "ENDPOINT_PEERS")
        .map(|m| m["entries"].clone());
    assert_eq!(
        peers,
        Some(serde_json::json!(0)),
        "the fast path still goes into the removed endpoint"
    );
    let sent_before = peer_path(&lab);
    // Created again at once, under the same name (it waits for the old veth) and with the same
    // address: it answers the first SYN (a lost one is retransmitted only after 1 s).
    let ns = lab.endpoint("ep1", &["8082:80"]);
    let ep1: serde_json::Value =
        serde_json::from_str(&lab.ok(&["endpoint", "inspect", "ep1"])).unwrap();
    assert_eq!(ep1["ip"], "172.17.0.2", "{ep1}");
    let server = echo_once(&ns, "0.0.0.0:80");
    roundtrip_within(&world, "198.18.0.2:8082", Duration::from_millis(900))
        .expect("the endpoint created again answers at once");
    server.join().unwrap();
    assert!(
        peer_path(&lab) > sent_before,
        "no packet went straight into the new ep1"
    );
    lab.ok(&["endpoint", "rm", "ep1"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let links = lab.topo.ns("host").ip(&["-o", "link"]);
        if !links.contains("ve-ep1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ve-ep1 outlives its endpoint by 10 s: {links}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bulk TCP both ways (echoed), in 64 KiB GSO packets: what comes from the uplink goes straight
/// into the endpoint (past its veth, which sends next to nothing), what the endpoint sends
/// straight out to the uplink (past the bridge); everything arrives intact.
#[test]
fn bulk_traffic_arrives_intact_and_takes_the_fast_paths_it_should() {
    // No XDP on the veth uplink (the default): with it, the world's veth would cut its bulk
    // into segments of the MTU before sending (veth turns GSO off on the peer of an XDP veth).
    let mut lab = ControlLab::up_with_xdp("auto");
    let ns = lab.endpoint("ep1", &["8080:80"]);
    let world = lab.topo.ns("world").name().to_owned();
    let veth = lab.endpoint_veth("ep1");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let stats = |lab: &ControlLab| {
        (
            lab.stat("uplink_ingress", "fast_path_peer"),
            lab.stat("endpoint_ingress", "fast_path"),
            lab.stat("bridge_ingress", "passed"),
            lab.link_stats(&veth)["tx"]["bytes"]
                .as_u64()
                .expect("tx bytes"),
        )
    };
    let before = stats(&lab);
    let server = echo_once(&ns, "0.0.0.0:80");
    roundtrip_data(&world, "198.18.0.2:8080", &data);
    server.join().unwrap();
    let server = echo_once(&world, "198.18.0.1:7000");
    roundtrip_data(&ns, "198.18.0.1:7000", &data);
    server.join().unwrap();
    let after = stats(&lab);
    // 8 MiB each way in GSO packets (up to 45 segments each), and the ACKs.
    assert!(after.0 > before.0 + 100, "{before:?} -> {after:?}");
    assert!(after.1 > before.1 + 100, "{before:?} -> {after:?}");
    // Through the bridge, at most the first packets (before the bridge had ep1's neighbour).
    assert!(after.2 < before.2 + 10, "{before:?} -> {after:?}");
    // 8 MiB went into ep1 (the world's upload, the world's echo): through its veth, which
    // the bridge sends into, only what took the normal path (at most the first packets,
    // before the bridge knew ep1's MAC).
    assert!(after.3 - before.3 < 256 << 10, "{before:?} -> {after:?}");
}

#[test]
fn networks_endpoints_and_addresses_follow_docker() {
    let mut lab = ControlLab::up();
    // The default network takes the first pool; the next network the second.
    let nets = lab.json(&["network", "ls"]);
    assert_eq!(nets[0]["name"], "bridge");
    assert_eq!(nets[0]["subnet"], "172.17.0.0/16");
    lab.ok(&["network", "create", "web"]);
    let web: serde_json::Value =
        serde_json::from_str(&lab.ok(&["network", "inspect", "web"])).unwrap();
    assert_eq!(web["subnet"], "172.18.0.0/16");
    assert_eq!(web["gateway"], "172.18.0.1");
    assert_eq!(web["bridge"], "bn-web");
    let addr = lab
        .topo
        .ns("host")
        .ip(&["-o", "addr", "show", "dev", "bn-web"]);
    assert!(addr.contains("172.18.0.1/16"), "{addr}");

    lab.ok(&[
        "network",
        "create",
        "back",
        "--subnet",
        "10.20.0.0/24",
        "--gateway",
        "10.20.0.254",
        "--bridge",
        "br-back",
        "--icc=false",
        "--masquerade=false",
    ]);
    let back: serde_json::Value =
        serde_json::from_str(&lab.ok(&["network", "inspect", "back"])).unwrap();
    assert_eq!(back["icc"], false);
    assert_eq!(back["masquerade"], false);
    assert_eq!(back["gateway"], "10.20.0.254");

    // Sequential addresses from .2, Docker's MAC, eth0, lo up, default route via the gateway.
    let a = lab.netns_name("a");
    let b = lab.netns_name("b");
    assert_eq!(
        lab.ok(&["endpoint", "create", "a", "--network", "web", "--netns", &a])
            .trim(),
        "a 172.18.0.2"
    );
    assert_eq!(
        lab.ok(&["endpoint", "create", "b", "--network", "web", "--netns", &b])
            .trim(),
        "b 172.18.0.3"
    );
    let ep: serde_json::Value =
        serde_json::from_str(&lab.ok(&["endpoint", "inspect", "b"])).unwrap();
    assert_eq!(ep["mac"], "02:42:ac:12:00:03");
    let link = String::from_utf8(
        lab.exec_in(&b, "ip", &["-o", "link", "show", "eth0"])
            .stdout,
    )
    .unwrap();
    assert!(link.contains("02:42:ac:12:00:03"), "{link}");
    let route = String::from_utf8(lab.exec_in(&b, "ip", &["route"]).stdout).unwrap();
    assert!(route.contains("default via 172.18.0.1 dev eth0"), "{route}");
    let lo =
        String::from_utf8(lab.exec_in(&b, "ip", &["-o", "link", "show", "lo"]).stdout).unwrap();
    assert!(lo.contains("UP"), "{lo}");
    // Endpoints of one network reach each other over the bridge.
    let ping = lab.exec_in(&a, "ping", &["-c", "1", "-W", "2", "172.18.0.3"]);
    assert!(ping.status.success(), "a cannot ping b");

    // --ip, and a namespace given as a path, which bridgenet does not remove.
    let outside = Netns::new("path");
    let path = format!("/run/netns/{}", outside.name());
    lab.ok(&[
        "endpoint",
        "create",
        "c",
        "--network",
        "back",
        "--netns",
        &path,
        "--ip",
        "10.20.0.7",
    ]);
    let ls = lab.ok(&["endpoint", "ls"]);
    assert!(ls.contains("10.20.0.7"), "{ls}");
    lab.ok(&["endpoint", "rm", "c"]);
    assert!(
        Path::new(&path).exists(),
        "a namespace bridgenet did not make was removed"
    );

    // An internal network: no default route in its endpoints.
    lab.ok(&["network", "create", "inside", "--internal"]);
    let i = lab.netns_name("i");
    lab.ok(&[
        "endpoint",
        "create",
        "i",
        "--network",
        "inside",
        "--netns",
        &i,
    ]);
    let route = String::from_utf8(lab.exec_in(&i, "ip", &["route"]).stdout).unwrap();
    assert!(!route.contains("default"), "{route}");
    lab.ok(&["endpoint", "rm", "i"]);
    lab.ok(&["network", "rm", "inside"]);

    // -P publishes every --expose'd port on a host port of the ephemeral range.
    let p = lab.netns_name("p");
    lab.ok(&[
        "endpoint",
        "create",
        "p",
        "--network",
        "web",
        "--netns",
        &p,
        "--expose",
        "80",
        "--expose",
        "53/udp",
        "-P",
    ]);
    let ports = lab.json(&["port", "ls"]);
    let ports = ports.as_array().unwrap();
    assert_eq!(ports.len(), 2, "{ports:?}");
    for port in ports {
        let host_port = port["host_port"].as_u64().unwrap();
        assert!((32768..=60999).contains(&host_port), "{port}");
    }
    let server = echo_once(&p, "0.0.0.0:80");
    let tcp = ports.iter().find(|p| p["proto"] == "tcp").unwrap();
    roundtrip(
        lab.topo.ns("world").name(),
        &format!("198.18.0.2:{}", tcp["host_port"]),
    );
    server.join().unwrap();

    for ep in ["a", "b", "p"] {
        lab.ok(&["endpoint", "rm", ep]);
    }
    for net in ["web", "back"] {
        lab.ok(&["network", "rm", net]);
    }
    let links = lab.topo.ns("host").ip(&["-o", "link"]);
    assert!(
        !links.contains("bn-web") && !links.contains("br-back"),
        "{links}"
    );
    assert_eq!(lab.json(&["endpoint", "ls"]), serde_json::json!([]));
}

#[test]
fn masquerade_follows_a_changed_uplink_address() {
    let mut lab = ControlLab::up();
    let ns = lab.netns_name("ep1");
    lab.ok(&[
        "endpoint",
        "create",
        "ep1",
        "--network",
        "bridge",
        "--netns",
        &ns,
    ]);
    let world = lab.topo.ns("world").name().to_owned();

    let server = echo_once(&world, "198.18.0.1:7000");
    roundtrip(&ns, "198.18.0.1:7000");
    assert_eq!(server.join().unwrap().ip(), Ipv4Addr::new(198, 18, 0, 2));

    // The uplink gets a new primary address and loses the old one.
    let host = lab.topo.ns("host");
    // The new address takes over as primary when the old one goes (and keeps its routes).
    host.sysctl("net.ipv4.conf.uplink0.promote_secondaries", "1");
    host.ip(&["addr", "add", "198.18.0.3/24", "dev", "uplink0"]);
    host.ip(&["addr", "del", "198.18.0.2/24", "dev", "uplink0"]);
    // The daemon follows within its poll interval; new flows then leave with the new address.
    // A connection opened just before the daemon follows leaves with the old address, and its
    // flow is revoked with that address: it stalls. Each try gets 3 s, the next a new port.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut port = 7001;
    loop {
        let server = echo_once(&world, &format!("198.18.0.1:{port}"));
        let to = format!("198.18.0.1:{port}");
        if roundtrip_within(&ns, &to, Duration::from_secs(3)).is_ok() {
            let seen = server.join().unwrap().ip();
            if seen == Ipv4Addr::new(198, 18, 0, 3) {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "masquerade never used the new address"
        );
        port += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A lab with a network of its own (198.19.1.0/24) and endpoints `a` (198.19.1.2) and `b`
/// (198.19.1.3), `a` publishing UDP 8080 -> 80; each endpoint receives on port 80.
fn two_udp_endpoints() -> (ControlLab, UdpSink, UdpSink) {
    let mut lab = ControlLab::up();
    lab.ok(&["network", "create", "rv", "--subnet", "198.19.1.0/24"]);
    let (a, b) = (lab.netns_name("a"), lab.netns_name("b"));
    lab.ok(&[
        "endpoint",
        "create",
        "a",
        "--network",
        "rv",
        "--netns",
        &a,
        "-p",
        "8080:80/udp",
    ]);
    lab.ok(&["endpoint", "create", "b", "--network", "rv", "--netns", &b]);
    let sink_a = UdpSink::new(&a, "0.0.0.0:80", false);
    let sink_b = UdpSink::new(&b, "0.0.0.0:80", false);
    (lab, sink_a, sink_b)
}

/// Within this, a revoked flow must have let the next datagram find the new mapping (the
/// stream sends every 10 ms; slack for a loaded machine).
const AT_ONCE: Duration = Duration::from_secs(2);

#[test]
fn a_udp_stream_follows_a_port_moved_to_another_endpoint() {
    let (lab, sink_a, sink_b) = two_udp_endpoints();
    let world = lab.topo.ns("world").name().to_owned();
    let stream = UdpStream::new(&world, "198.18.0.1:40000", "198.18.0.2:8080");
    assert!(
        sink_a.wait_for(Duration::from_secs(10), |_, _| true),
        "a never received the stream"
    );

    lab.ok(&["port", "unpublish", "a", "8080:80/udp"]);
    let unpublished = stream.now();
    lab.ok(&["port", "publish", "b", "8080:80/udp"]);
    let published = stream.now();
    assert!(
        sink_b.wait_for(AT_ONCE, |seq, _| seq >= published),
        "b got nothing of the stream within {AT_ONCE:?}: its flow still goes to a\nct ls:\n{}",
        lab.ok(&["ct", "ls"])
    );
    // Nothing sent after the unpublish (one datagram in flight aside) reached a.
    assert!(
        !sink_a.any(|seq, _| seq > unpublished + 1),
        "a still got datagrams after the unpublish"
    );
}

#[test]
fn a_removed_endpoint_takes_its_flows_along() {
    let (lab, sink_a, sink_b) = two_udp_endpoints();
    let world = lab.topo.ns("world").name().to_owned();
    let stream = UdpStream::new(&world, "198.18.0.1:40001", "198.18.0.2:8080");
    assert!(
        sink_a.wait_for(Duration::from_secs(10), |_, _| true),
        "a never received the stream"
    );

    lab.ok(&["endpoint", "rm", "a"]);
    let ct = lab.ok(&["ct", "ls"]);
    assert!(!ct.contains("198.19.1.2"), "a's flows outlive it:\n{ct}");
    lab.ok(&["port", "publish", "b", "8080:80/udp"]);
    let published = stream.now();
    assert!(
        sink_b.wait_for(AT_ONCE, |seq, _| seq >= published),
        "b got nothing of the stream within {AT_ONCE:?}\nct ls:\n{}",
        lab.ok(&["ct", "ls"])
    );
    drop(sink_a);
}

#[test]
fn a_live_masqueraded_flow_follows_a_changed_uplink_address() {
    let mut lab = ControlLab::up();
    lab.ok(&["network", "create", "rv", "--subnet", "198.19.1.0/24"]);
    let a = lab.netns_name("a");
    lab.ok(&["endpoint", "create", "a", "--network", "rv", "--netns", &a]);
    let world = lab.topo.ns("world").name().to_owned();
    let server = UdpSink::new(&world, "198.18.0.1:7000", true);
    let stream = UdpStream::new(&a, "0.0.0.0:40002", "198.18.0.1:7000");
    let (old, new) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3));
    assert!(
        server.wait_for(Duration::from_secs(10), |_, from| from.ip() == old),
        "the stream never arrived masqueraded with {old}"
    );

    let host = lab.topo.ns("host");
    // The new address takes over as primary when the old one goes (and keeps its routes).
    host.sysctl("net.ipv4.conf.uplink0.promote_secondaries", "1");
    host.ip(&["addr", "add", "198.18.0.3/24", "dev", "uplink0"]);
    host.ip(&["addr", "del", "198.18.0.2/24", "dev", "uplink0"]);
    let changed = stream.now();
    // The daemon hears of the change through rtnetlink at once, else at its 1 s poll.
    let within = AT_ONCE + Duration::from_secs(1);
    assert!(
        server.wait_for(within, |seq, from| seq >= changed && from.ip() == new),
        "the flow still leaves with {old} {within:?} after the change\nct ls:\n{}",
        lab.ok(&["ct", "ls"])
    );
    // And the answers come back to the endpoint through the new address.
    let back = stream.now();
    let replies = stream.replies.clone();
    let deadline = std::time::Instant::now() + AT_ONCE;
    while !replies.lock().unwrap().iter().any(|&(seq, _)| seq >= back) {
        assert!(
            std::time::Instant::now() < deadline,
            "no answer came back through {new}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
