//! The verdict holes of issue 10 with real traffic through the daemon (`uplink_xdp` off, the
//! default on a veth uplink): an ICMP error quoting a hairpin flow never leaves with the
//! endpoint's private address; truncated segments from a neighbour never reach an endpoint;
//! with `--icc=false`, broadcast, multicast and frames to a sibling's MAC never reach it.
//! Addresses: world 198.18.0.1, host 198.18.0.2, networks in 198.19.0.0/16.
use std::{net::Ipv4Addr, time::Duration};

use bridgenet_tests::control::ControlLab;
use bridgenet_tests::raw::{self, Capture};
use bridgenet_tests::sockets;
use bridgenet_tests::topology::{enter, mac_of};
use etherparse::PacketBuilder;

const WORLD: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// How long a capture waits for what must not come (and for what must).
const SETTLE: Duration = Duration::from_millis(1500);

fn endpoint(lab: &mut ControlLab, name: &str, network: &str, extra: &[&str]) -> String {
    let netns = lab.netns_name(name);
    let mut args = vec![
        "endpoint",
        "create",
        name,
        "--network",
        network,
        "--netns",
        &netns,
    ];
    args.extend_from_slice(extra);
    lab.ok(&args);
    netns
}

#[test]
fn an_icmp_error_quoting_a_hairpin_flow_never_leaves_with_a_private_source() {
    let mut lab = ControlLab::up_with_xdp("off");
    lab.ok(&["network", "create", "edge", "--subnet", "198.19.1.0/24"]);
    let a = endpoint(&mut lab, "a", "edge", &["-p", "5353:53/udp"]);
    let a_addr = Ipv4Addr::new(198, 19, 1, 2);
    let world = lab.topo.ns("world").name().to_owned();
    let capture = Capture::open(&world, "eth0");

    // a reaches its own published port through the host's address: a hairpin flow.
    let sock = enter(&a, || sockets::udp_socket((a_addr, 5000)));
    sock.send_to(b"hairpin", (HOST, 5353)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Then an error to the world quoting that flow (the packet that came in through it).
    let quoted = {
        let builder = PacketBuilder::ipv4(HOST.octets(), a_addr.octets(), 64).udp(5353, 5000);
        let mut out = Vec::new();
        builder.write(&mut out, b"hairpin").unwrap();
        out[..28].to_vec()
    };
    let icmp = etherparse::Icmpv4Header::with_checksum(
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ),
        &quoted,
    );
    let mut message = icmp.to_bytes().to_vec();
    message.extend_from_slice(&quoted);
    for _ in 0..3 {
        raw::send_icmp(&a, WORLD, &message);
    }
    // A datagram that is masqueraded, to show that the capture sees a's traffic.
    sock.send_to(b"visible", (WORLD, 9)).unwrap();

    let seen: Vec<_> = capture
        .frames(SETTLE)
        .iter()
        .filter_map(|f| raw::ipv4_of(f))
        .collect();
    let private: Vec<_> = seen
        .iter()
        .filter(|(src, ..)| src.octets()[..3] == [198, 19, 1])
        .collect();
    assert!(
        private.is_empty(),
        "left with a private source: {private:?}"
    );
    assert!(
        seen.iter()
            .any(|(src, dst, proto)| *src == HOST && *dst == WORLD && *proto == 17),
        "the masqueraded datagram arrives: {seen:?}"
    );
    assert!(lab.stat("uplink_egress", "drop_untranslatable") >= 3);
}

/// An endpoint cannot have its packets taken for ones the fast path out translated: the veth
/// clears the marks set in its namespace, `TRANSLATED_MARK` with them, so datagrams sent with
/// that mark (SO_MARK) leave masqueraded, through the stack (the first, before the host knows
/// the world's MAC) and through the fast path (the rest), never with a's own address.
#[test]
fn an_endpoint_that_marks_its_packets_as_translated_still_leaves_masqueraded() {
    let mut lab = ControlLab::up_with_xdp("off");
    lab.ok(&["network", "create", "edge", "--subnet", "198.19.1.0/24"]);
    let a = endpoint(&mut lab, "a", "edge", &[]);
    let world = lab.topo.ns("world").name().to_owned();
    let capture = Capture::open(&world, "eth0");
    // The world's MAC unknown: the first datagram takes the stack, which resolves it.
    lab.topo
        .ns("host")
        .ip(&["neigh", "flush", "dev", "uplink0"]);
    let sock = enter(&a, || {
        let sock = sockets::udp_socket((Ipv4Addr::new(198, 19, 1, 2), 5000));
        let mark = bridgenet_common::TRANSLATED_MARK;
        // SAFETY: an int option of a socket this test owns.
        let set = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&raw const mark).cast(),
                size_of::<u32>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "SO_MARK: {}", std::io::Error::last_os_error());
        sock
    });
    for _ in 0..5 {
        sock.send_to(b"marked", (WORLD, 9)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen: Vec<_> = capture
        .frames(SETTLE)
        .iter()
        .filter_map(|f| raw::ipv4_of(f))
        .filter(|(_, dst, proto)| *dst == WORLD && *proto == 17)
        .collect();
    assert_eq!(seen.len(), 5, "every datagram arrives: {seen:?}");
    assert!(
        seen.iter().all(|(src, ..)| *src == HOST),
        "each leaves with the host's address: {seen:?}"
    );
    assert_eq!(
        lab.stat("uplink_egress", "snat"),
        1,
        "the first took the stack"
    );
    assert_eq!(
        lab.stat("endpoint_ingress", "snat"),
        4,
        "the rest the fast path"
    );
}

/// An IPv4 packet from the world to `dst` carrying the first `tcp_bytes` bytes of a TCP SYN.
fn tcp_from_world(dst: Ipv4Addr, tcp_bytes: usize) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(WORLD.octets(), dst.octets(), 64)
        .tcp(40000, 22, 1000, 64240)
        .syn();
    let mut out = Vec::new();
    builder.write(&mut out, &[]).unwrap();
    out.truncate(20 + tcp_bytes);
    out
}

#[test]
fn truncated_segments_from_a_neighbour_never_reach_an_endpoint() {
    let mut lab = ControlLab::up_with_xdp("off");
    lab.ok(&["network", "create", "edge", "--subnet", "198.19.1.0/24"]);
    lab.ok(&[
        "network",
        "create",
        "routed",
        "--subnet",
        "198.19.2.0/24",
        "--masquerade=false",
    ]);
    let a = endpoint(&mut lab, "a", "edge", &[]);
    let c = endpoint(&mut lab, "c", "routed", &[]);
    let (a_addr, c_addr) = (Ipv4Addr::new(198, 19, 1, 2), Ipv4Addr::new(198, 19, 2, 2));
    let world = lab.topo.ns("world").name().to_owned();
    lab.topo
        .ns("world")
        .ip(&["route", "add", "198.19.0.0/16", "via", "198.18.0.2"]);
    let (cap_a, cap_c) = (Capture::open(&a, "eth0"), Capture::open(&c, "eth0"));

    for tcp_bytes in [2, 10] {
        raw::send_ipv4(&world, a_addr, &tcp_from_world(a_addr, tcp_bytes));
        raw::send_ipv4(&world, c_addr, &tcp_from_world(c_addr, tcp_bytes));
    }
    // A whole SYN to the routed endpoint arrives: the capture works and routing is on.
    raw::send_ipv4(&world, c_addr, &tcp_from_world(c_addr, 20));

    let from_world = |cap: &Capture| -> Vec<usize> {
        cap.frames(SETTLE)
            .iter()
            .filter(|f| matches!(raw::ipv4_of(f), Some((src, _, 6)) if src == WORLD))
            .map(|f| u16::from_be_bytes([f[16], f[17]]) as usize)
            .collect()
    };
    let at_a = from_world(&cap_a);
    let at_c = from_world(&cap_c);
    assert!(at_a.is_empty(), "reached a (IPv4 lengths {at_a:?})");
    assert_eq!(at_c, vec![40], "only the whole SYN reaches c");
    assert!(lab.stat("uplink_ingress", "drop_endpoint_direct") >= 2);
    assert!(lab.stat("uplink_ingress", "drop_malformed") >= 2);
}

#[test]
fn with_icc_false_broadcast_multicast_and_sibling_frames_never_reach_a_sibling() {
    let mut lab = ControlLab::up_with_xdp("off");
    lab.ok(&[
        "network",
        "create",
        "quiet",
        "--subnet",
        "198.19.3.0/24",
        "--icc=false",
    ]);
    let a = endpoint(&mut lab, "a", "quiet", &[]);
    let b = endpoint(&mut lab, "b", "quiet", &[]);
    let host = lab.topo.ns("host").name().to_owned();
    let (a_addr, b_addr) = (Ipv4Addr::new(198, 19, 3, 2), Ipv4Addr::new(198, 19, 3, 3));
    let group = Ipv4Addr::new(224, 0, 0, 251);
    let listener = enter(&b, || {
        let sock = sockets::udp_socket("0.0.0.0:7777");
        sock.join_multicast_v4(&group, &b_addr).unwrap();
        sock
    });
    listener
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let host_listener = enter(&host, || sockets::udp_socket("198.19.3.1:7777"));
    host_listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let capture = Capture::open(&b, "eth0");

    // b hears what the host sends it: its socket works.
    enter(&host, || {
        std::net::UdpSocket::bind("198.19.3.1:0").expect("bind")
    })
    .send_to(b"to-b", (b_addr, 7777))
    .unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = listener.recv_from(&mut buf).expect("b hears the host");
    assert_eq!(&buf[..n], b"to-b");

    let sender = enter(&a, || {
        let sock = sockets::udp_socket((a_addr, 0));
        sock.set_broadcast(true).unwrap();
        sock
    });
    for to in [
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(198, 19, 3, 255),
        group,
        b_addr,
    ] {
        sender.send_to(b"from-a", (to, 7777)).unwrap();
    }
    // A frame for the world sent to b's MAC, past the gateway.
    let (a_mac, b_mac) = (mac_of(&a, "eth0"), mac_of(&b, "eth0"));
    let frame = {
        let builder = PacketBuilder::ethernet2(a_mac, b_mac)
            .ipv4(a_addr.octets(), WORLD.octets(), 64)
            .udp(4000, 7777);
        let mut out = Vec::new();
        builder.write(&mut out, b"from-a").unwrap();
        out
    };
    raw::send_frame(&a, "eth0", &frame);
    // The gateway still hears a.
    sender.send_to(b"to-gw", ("198.19.3.1", 7777)).unwrap();
    let (n, _) = host_listener
        .recv_from(&mut buf)
        .expect("the gateway hears a");
    assert_eq!(&buf[..n], b"to-gw");

    let from_a: Vec<_> = capture
        .frames(SETTLE)
        .iter()
        .filter_map(|f| raw::ipv4_of(f))
        .filter(|(src, ..)| *src == a_addr)
        .collect();
    assert!(from_a.is_empty(), "a's packets reached b: {from_a:?}");
    assert!(
        listener.recv_from(&mut buf).is_err(),
        "b's socket got something from a"
    );
    assert!(lab.stat("endpoint_ingress", "drop_icc") >= 5);
}
