//! BPF_PROG_TEST_RUN of the fast paths of `uplink_ingress`: a published flow's packet goes
//! straight into its endpoint's namespace (bpf_redirect_peer) when the FIB routes it to that
//! endpoint's bridge and knows its MAC; to the bridge (bpf_redirect_neigh) when the endpoint
//! has no peer entry or the FIB routes its address elsewhere; through the stack when the
//! neighbour is unknown. The same for IPv6 (`redirect6`), whose peer is named by the next hop's
//! MAC.
//!
//! The programs run in a namespace with two bridges (no ports), forwarding on, and a
//! permanent neighbour entry for the endpoint when a test wants the MAC known.
use std::net::Ipv4Addr;

use bridgenet::datapath::Datapath;
use bridgenet_common::{TRANSLATED_MARK, outcome, program_id, programs};
use bridgenet_tests::{Topology, packet, packet::fixture::*, packet::tcp_flags, topology::mac_of};

const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_SHOT: u32 = 2;
/// The endpoint's MAC, as the FIB's neighbour entry knows it.
const EP1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xaa];
/// The host end of EP1's veth: any ifindex, since a test run does not carry out the redirect.
const VETH: u32 = 4242;

struct Lab {
    /// Dropped before the namespace.
    dp: Datapath,
    topo: Topology,
}

impl Lab {
    /// `known`: the bridge knows EP1's MAC.
    fn new(known: bool) -> Self {
        let mut topo = Topology::new();
        topo.netns("host")
            .bridge("host", "br1")
            .addr("host", "br1", "172.17.0.1/16")
            .bridge("host", "br2")
            .addr("host", "br2", "172.19.0.1/16")
            .sysctl("host", "net.ipv4.ip_forward", "1");
        if known {
            neighbour(topo.ns("host"), "172.17.0.2", EP1_MAC, "br1");
        }
        Lab {
            dp: nat_datapath(),
            topo,
        }
    }

    fn bridge(&self, name: &str) -> u32 {
        self.topo.ns("host").ifindex(name)
    }

    fn ingress(&mut self, frame: &[u8]) -> packet::Verdict {
        let dp = &mut self.dp;
        self.topo
            .ns("host")
            .enter(|| packet::run_tc(dp, programs::UPLINK_INGRESS, frame, 1).expect("test run"))
    }

    /// `ingress` of a GSO packet (`packet::run_tc_gso`).
    fn ingress_gso(&mut self, frame: &[u8], gso_size: u32) -> packet::Verdict {
        let dp = &mut self.dp;
        self.topo.ns("host").enter(|| {
            packet::run_tc_gso(dp, programs::UPLINK_INGRESS, frame, gso_size).expect("test run")
        })
    }

    fn stat(&self, outcome: u32) -> u64 {
        self.dp.stat(program_id::UPLINK_INGRESS, outcome).unwrap()
    }

    /// A lab whose flow from CLIENT:`sport` went into EP1's peer behind br1: the FIB's answer
    /// is kept (`NEXT_HOPS`) on CPU 0, where the test stays.
    fn with_answer_kept(sport: u16) -> Self {
        packet::on_one_cpu();
        let mut lab = Lab::new(true);
        let br1 = lab.bridge("br1");
        lab.dp
            .add_endpoint_peer(Ipv4Addr::from(EP1), VETH, br1)
            .unwrap();
        assert_eq!(lab.ingress(&syn(sport)).action, TC_ACT_REDIRECT);
        assert_eq!(lab.paths(), (0, 1));
        lab
    }

    /// The packets counted to the bridge (`fast_path`) and into a peer (`fast_path_peer`).
    fn paths(&self) -> (u64, u64) {
        (
            self.stat(outcome::FAST_PATH),
            self.stat(outcome::FAST_PATH_PEER),
        )
    }

    /// EP1's peer entry: (packets, bytes) the fast path sent into it.
    fn sent_into_ep1(&self) -> Option<(u64, u64)> {
        self.dp
            .endpoint_peers()
            .unwrap()
            .into_iter()
            .find(|(addr, _)| *addr == Ipv4Addr::from(EP1))
            .map(|(_, p)| (p.packets, p.bytes))
    }
}

/// Network 1 (gateway 172.17.0.1, masqueraded) as the labs here add it.
fn network1() -> bridgenet::datapath::NetworkOptions {
    bridgenet::datapath::NetworkOptions {
        id: 1,
        gateway: GW1.into(),
        masquerade: true,
        icc: true,
        internal: false,
        gateway_mode: bridgenet::datapath::GatewayMode::Nat,
    }
}

/// A permanent neighbour entry in `host`: `addr` is at `mac` on `dev`.
fn neighbour(host: &bridgenet_tests::topology::Netns, addr: &str, mac: [u8; 6], dev: &str) {
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    host.ip(&[
        "neigh",
        "replace",
        addr,
        "lladdr",
        &mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

fn syn(sport: u16) -> Vec<u8> {
    packet::tcp_frame(CLIENT, sport, HOST, 8080, true, false, b"")
}

#[test]
fn a_published_flow_goes_straight_into_the_endpoint() {
    let mut lab = Lab::new(true);
    let br1 = lab.bridge("br1");
    lab.dp
        .add_endpoint_peer(Ipv4Addr::from(EP1), VETH, br1)
        .unwrap();
    let frame = syn(40000);
    let out = lab.ingress(&frame);
    assert_eq!(out.action, TC_ACT_REDIRECT, "redirected");
    let seen = packet::inspect(&out.frame);
    assert_eq!((seen.src, seen.dst, seen.dport), (CLIENT, EP1, 80));
    // As the bridge would have sent it: to the endpoint's MAC, from the gateway's, TTL - 1.
    let gateway_mac = mac_of(lab.topo.ns("host").name(), "br1");
    assert_eq!(out.frame[0..6], EP1_MAC);
    assert_eq!(out.frame[6..12], gateway_mac);
    assert_eq!(out.frame[14 + 8], 63, "forwarded: TTL decremented");
    assert_eq!(
        (
            lab.stat(outcome::DNAT),
            lab.stat(outcome::FAST_PATH_PEER),
            lab.stat(outcome::FAST_PATH)
        ),
        (1, 1, 0)
    );
    assert_eq!(lab.sent_into_ep1(), Some((1, frame.len() as u64)));

    // The flow's next packet takes the same path.
    let ack = packet::tcp_frame(CLIENT, 40000, HOST, 8080, false, true, b"hello");
    assert_eq!(lab.ingress(&ack).action, TC_ACT_REDIRECT);
    assert_eq!(lab.stat(outcome::FAST_PATH_PEER), 2);
    assert_eq!(
        lab.sent_into_ep1(),
        Some((2, (frame.len() + ack.len()) as u64))
    );

    // Re-adding the same entry (a daemon's restart) keeps its counters.
    lab.dp
        .add_endpoint_peer(Ipv4Addr::from(EP1), VETH, br1)
        .unwrap();
    assert_eq!(lab.sent_into_ep1().map(|s| s.0), Some(2));
}

#[test]
fn without_a_peer_entry_the_packet_goes_to_the_bridge() {
    // Docker's endpoint before Docker moved its container end: no entry yet.
    let mut lab = Lab::new(true);
    let out = lab.ingress(&syn(40001));
    assert_eq!(out.action, TC_ACT_REDIRECT);
    assert_eq!(
        (
            lab.stat(outcome::FAST_PATH),
            lab.stat(outcome::FAST_PATH_PEER)
        ),
        (1, 0)
    );
    assert_eq!(lab.sent_into_ep1(), None);
}

#[test]
fn an_address_the_fib_routes_to_another_bridge_does_not_go_to_the_peer() {
    // The entry says br2, the FIB says br1 (routes changed under the daemon): the FIB wins.
    let mut lab = Lab::new(true);
    let br2 = lab.bridge("br2");
    lab.dp
        .add_endpoint_peer(Ipv4Addr::from(EP1), VETH, br2)
        .unwrap();
    let out = lab.ingress(&syn(40002));
    assert_eq!(out.action, TC_ACT_REDIRECT);
    assert_eq!(
        (
            lab.stat(outcome::FAST_PATH),
            lab.stat(outcome::FAST_PATH_PEER)
        ),
        (1, 0)
    );
    assert_eq!(lab.sent_into_ep1(), Some((0, 0)));
}

/// The FIB's answers are kept 20 ms (`NEXT_HOPS`): a route changed outside bridgenet reaches
/// the fast path within that time. Here EP1's address moves from br1 to br2 under the daemon:
/// 40 ms later (the programs' coarse clock moves a tick at a time) its flow's packets go to br2,
/// not into the peer behind br1.
#[test]
fn a_route_changed_outside_bridgenet_reaches_the_fast_path_within_20_ms() {
    let mut lab = Lab::with_answer_kept(40003);
    let host = lab.topo.ns("host");
    host.ip(&["route", "add", "172.17.0.2/32", "dev", "br2"]);
    neighbour(host, "172.17.0.2", EP1_MAC, "br2");
    std::thread::sleep(std::time::Duration::from_millis(40));
    let ack = packet::tcp_frame(CLIENT, 40003, HOST, 8080, false, true, b"hello");
    assert_eq!(lab.ingress(&ack).action, TC_ACT_REDIRECT);
    assert_eq!(lab.paths(), (1, 1), "to br2, where the FIB now routes it");
}

/// A network the daemon adds moves the generation under which the FIB's answers are kept:
/// the next packet asks the FIB again. Here network 1 is made again on br2 (removed, then
/// added with the same subnet, as `docker network rm` and `create` do), and its endpoint's
/// flow goes into the endpoint's peer behind br2 at once, not to br1, which the kept answer
/// named.
#[test]
fn a_network_made_again_on_another_bridge_is_seen_by_the_next_packet() {
    let mut lab = Lab::with_answer_kept(40004);
    let br2 = lab.bridge("br2");
    let host = lab.topo.ns("host");
    host.ip(&["addr", "del", "172.17.0.1/16", "dev", "br1"]);
    host.ip(&["addr", "add", "172.17.0.1/16", "dev", "br2"]);
    neighbour(host, "172.17.0.2", EP1_MAC, "br2");
    let subnet = "172.17.0.0/16".parse().unwrap();
    lab.dp.remove_subnet(subnet).unwrap();
    lab.dp.add_network(subnet, &network1()).unwrap();
    lab.dp
        .add_endpoint_peer(Ipv4Addr::from(EP1), VETH, br2)
        .unwrap();
    let ack = packet::tcp_frame(CLIENT, 40004, HOST, 8080, false, true, b"hello");
    assert_eq!(lab.ingress(&ack).action, TC_ACT_REDIRECT);
    assert_eq!(lab.paths(), (0, 2));
}

#[test]
fn an_unknown_neighbour_takes_the_stack() {
    // The stack resolves the MAC (ARP) and queues the packet meanwhile.
    let mut lab = Lab::new(false);
    let br1 = lab.bridge("br1");
    lab.dp
        .add_endpoint_peer(Ipv4Addr::from(EP1), VETH, br1)
        .unwrap();
    let out = lab.ingress(&syn(40003));
    assert_eq!(out.action, TC_ACT_OK);
    assert_eq!(packet::inspect(&out.frame).dst, EP1, "translated");
    assert_eq!(out.frame[14 + 8], 64, "the stack decrements the TTL itself");
    assert_eq!(
        (
            lab.stat(outcome::DNAT),
            lab.stat(outcome::FAST_PATH),
            lab.stat(outcome::FAST_PATH_PEER)
        ),
        (1, 0, 0)
    );
    assert_eq!(lab.sent_into_ep1(), Some((0, 0)));
}

/// Bulk TCP from an uplink arrives as GSO packets of up to 64 KiB. One goes into the endpoint
/// when the segments it will be cut into fit the bridge's MTU, as forwarding checks it;
/// otherwise the stack's (fragmentation needed), as for any packet too big that is not GSO.
#[test]
fn a_gso_packet_goes_into_the_endpoint_when_its_segments_fit_the_mtu() {
    let mut lab = Lab::new(true);
    let br1 = lab.bridge("br1");
    lab.dp
        .add_endpoint_peer(Ipv4Addr::from(EP1), VETH, br1)
        .unwrap();
    let first = syn(40010);
    assert_eq!(lab.ingress(&first).action, TC_ACT_REDIRECT);
    // 2,040 bytes in all; segments of 20 + 20 + 1,448 bytes fit br1's 1,500.
    let bulk = packet::tcp_frame(CLIENT, 40010, HOST, 8080, false, true, &[7; 2000]);
    let out = lab.ingress_gso(&bulk, 1448);
    assert_eq!(out.action, TC_ACT_REDIRECT, "into the endpoint");
    let seen = packet::inspect(&out.frame);
    assert_eq!((seen.src, seen.dst, seen.dport), (CLIENT, EP1, 80));
    assert_eq!(out.frame[0..6], EP1_MAC);
    assert_eq!(out.frame[14 + 8], 63, "forwarded: TTL decremented");
    assert_eq!(
        lab.sent_into_ep1(),
        Some((2, (first.len() + bulk.len()) as u64))
    );

    // Segments of 1,480 bytes of data would be 1,520 bytes long; the same packet not GSO is
    // 2,040: both to the stack, translated, TTL untouched.
    for gso_size in [1480, 0] {
        let out = if gso_size == 0 {
            lab.ingress(&bulk)
        } else {
            lab.ingress_gso(&bulk, gso_size)
        };
        assert_eq!(out.action, TC_ACT_OK, "GSO size {gso_size}: the stack's");
        assert_eq!(packet::inspect(&out.frame).dst, EP1, "translated");
        assert_eq!(out.frame[14 + 8], 64);
    }
    assert_eq!(lab.sent_into_ep1().map(|s| s.0), Some(2));
    assert_eq!(
        (
            lab.stat(outcome::DNAT),
            lab.stat(outcome::FAST_PATH_PEER),
            lab.stat(outcome::FAST_PATH)
        ),
        (4, 2, 0)
    );
}

/// The fast path out of an endpoint (`endpoint_ingress`): a namespace with bridgenet's bridge
/// (the gateway's MAC of Docker's scheme), an uplink (a veth to a world namespace) whose
/// neighbour 198.18.0.1 is known, forwarding on; EP1 sends from the test-run device.
struct OutLab {
    /// Dropped before the namespaces.
    dp: Datapath,
    topo: Topology,
}

const GW1: [u8; 4] = [172, 17, 0, 1];
const GATEWAY_MAC: [u8; 6] = [0x02, 0x42, 172, 17, 0, 1];
const EP_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

impl OutLab {
    fn new() -> Self {
        bridgenet_tests::require_root();
        let mut topo = Topology::new();
        topo.netns("host")
            .netns("world")
            .bridge("host", "br1")
            .addr("host", "br1", "172.17.0.1/16")
            .veth(("host", "uplink0"), ("world", "eth0"))
            .addr("host", "uplink0", "198.18.0.2/24")
            .addr("world", "eth0", "198.18.0.1/24")
            .sysctl("host", "net.ipv4.ip_forward", "1");
        let host = topo.ns("host");
        host.ip(&["link", "set", "br1", "address", "02:42:ac:11:00:01"]);
        let world_mac = mac_of(topo.ns("world").name(), "eth0");
        neighbour(host, "198.18.0.1", world_mac, "uplink0");
        let mut dp = Datapath::load().expect("loading the datapath");
        dp.set_uplink_addr(host.ifindex("uplink0"), Ipv4Addr::from(HOST))
            .unwrap();
        let options = network1();
        dp.add_network("172.17.0.0/16".parse().unwrap(), &options)
            .unwrap();
        dp.add_endpoint(TEST_RUN_IFINDEX, Ipv4Addr::from(EP1), EP_MAC, 1)
            .unwrap();
        OutLab { dp, topo }
    }

    /// Runs `endpoint_ingress` on `frame`, sent by EP1 to MAC `to`.
    fn send(&mut self, to: [u8; 6], frame: &[u8]) -> packet::Verdict {
        self.send_gso(to, frame, 0)
    }

    /// `send` of a GSO packet of `gso_size` (0: not GSO).
    fn send_gso(&mut self, to: [u8; 6], frame: &[u8], gso_size: u32) -> packet::Verdict {
        let mut frame = frame.to_vec();
        frame[..6].copy_from_slice(&to);
        frame[6..12].copy_from_slice(&EP_MAC);
        let dp = &mut self.dp;
        let name = programs::ENDPOINT_INGRESS;
        self.topo.ns("host").enter(|| {
            if gso_size == 0 {
                packet::run_tc(dp, name, &frame, 1)
            } else {
                packet::run_tc_gso(dp, name, &frame, gso_size)
            }
            .expect("test run")
        })
    }

    /// `send`, also giving the skb mark `endpoint_ingress` left.
    fn send_marked(&mut self, to: [u8; 6], frame: &[u8]) -> (packet::Verdict, u32) {
        let mut frame = frame.to_vec();
        frame[..6].copy_from_slice(&to);
        frame[6..12].copy_from_slice(&EP_MAC);
        let dp = &mut self.dp;
        let name = programs::ENDPOINT_INGRESS;
        self.topo
            .ns("host")
            .enter(|| packet::run_tc_marked(dp, name, &frame, 0).expect("test run"))
    }

    /// Runs `uplink_egress` on `frame` carrying skb mark `mark`, as the uplink's egress would
    /// (the test run's device stands for the uplink): its verdict and the mark it left.
    fn egress(&mut self, frame: &[u8], mark: u32) -> (packet::Verdict, u32) {
        let dp = &mut self.dp;
        let name = programs::UPLINK_EGRESS;
        self.topo
            .ns("host")
            .enter(|| packet::run_tc_marked(dp, name, frame, mark).expect("test run"))
    }

    /// `fast`, which `endpoint_ingress` sent out with `mark`, was translated there, the first
    /// of its flow's packets to be (the flow's first packet was `uplink_egress`'s): marked, and
    /// `uplink_egress` passes it as it is and clears the mark.
    fn translated_once(&mut self, fast: &packet::Verdict, mark: u32) {
        assert_eq!(
            (fast.action, mark & TRANSLATED_MARK),
            (TC_ACT_REDIRECT, TRANSLATED_MARK)
        );
        assert_eq!(self.stat(program_id::ENDPOINT_INGRESS, outcome::SNAT), 1);
        let (passed, left) = self.egress(&fast.frame, mark);
        assert_eq!(passed.action, TC_ACT_OK);
        assert_eq!(passed.frame, fast.frame, "passed as it is");
        assert_eq!(left & TRANSLATED_MARK, 0, "the mark is cleared");
        assert_eq!(
            (
                self.stat(program_id::UPLINK_EGRESS, outcome::FAST_PATH),
                self.stat(program_id::UPLINK_EGRESS, outcome::SNAT),
            ),
            (1, 1)
        );
    }

    fn fast(&self) -> u64 {
        self.dp
            .stat(program_id::ENDPOINT_INGRESS, outcome::FAST_PATH)
            .unwrap()
    }

    fn stat(&self, program: u32, outcome: u32) -> u64 {
        self.dp.stat(program, outcome).unwrap()
    }

    /// The frame went the normal way: through the bridge, marked as checked, unchanged.
    fn normal(&mut self, to: [u8; 6], frame: &[u8]) {
        self.normal_gso(to, frame, 0);
    }

    /// `normal` for a GSO packet of `gso_size`.
    fn normal_gso(&mut self, to: [u8; 6], frame: &[u8], gso_size: u32) {
        let before = self.fast();
        let out = self.send_gso(to, frame, gso_size);
        assert_eq!(out.action, TC_ACT_OK);
        assert_eq!(out.frame[..6], to);
        assert_eq!(out.frame[12..], frame[12..], "unchanged");
        assert_eq!(self.fast(), before, "not counted as fast");
    }
}

#[test]
fn what_an_endpoint_sends_out_goes_straight_to_the_uplink() {
    let mut lab = OutLab::new();
    let frame = packet::tcp_frame(EP1, 40000, SERVER, 7000, true, false, b"");
    let (out, mark) = lab.send_marked(GATEWAY_MAC, &frame);
    assert_eq!(out.action, TC_ACT_REDIRECT);
    // To the world's MAC from the uplink's, TTL - 1, not translated yet: a flow's first packet
    // is uplink_egress's to translate (and open the flow), as for a routed packet.
    assert_eq!(out.frame[..6], mac_of(lab.topo.ns("world").name(), "eth0"));
    assert_eq!(
        out.frame[6..12],
        mac_of(lab.topo.ns("host").name(), "uplink0")
    );
    assert_eq!(out.frame[14 + 8], 63, "forwarded: TTL decremented");
    let seen = packet::inspect(&out.frame);
    assert_eq!((seen.src, seen.sport, seen.dst), (EP1, 40000, SERVER));
    assert_eq!(mark & TRANSLATED_MARK, 0, "left for uplink_egress");
    assert_eq!(
        (
            lab.fast(),
            lab.stat(program_id::ENDPOINT_INGRESS, outcome::PASSED)
        ),
        (1, 1)
    );
}

/// A tracked flow's packet is translated once, on the endpoint's veth: the fast path out
/// translates it by its flow and marks it (`TRANSLATED_MARK`), and `uplink_egress` passes it as
/// it is (clearing the mark), counted as `fast_path`. The same segment through the stack
/// (unmarked) leaves through `uplink_egress` as the fast path sent it. What the flow's tracking
/// drops (a RST outside the window) is dropped on the veth; a segment of no flow is left to
/// `uplink_egress`, which drops it.
#[test]
fn what_the_fast_path_out_translates_leaves_translated_once() {
    let mut lab = OutLab::new();
    // The test run's device stands for the uplink too, with the uplink's address.
    lab.dp
        .set_uplink_addr(TEST_RUN_IFINDEX, Ipv4Addr::from(HOST))
        .unwrap();
    let syn = packet::tcp_segment(EP1, 40000, SERVER, 7000, tcp_flags::SYN, 1000, 0, b"");
    let (out, mark) = lab.send_marked(GATEWAY_MAC, &syn);
    assert_eq!((out.action, mark), (TC_ACT_REDIRECT, 0));
    // uplink_egress opens the flow.
    let (opened, _) = lab.egress(&out.frame, mark);
    assert_eq!(opened.action, TC_ACT_OK);
    let seen = packet::inspect(&opened.frame);
    assert_eq!((seen.src, seen.dst), (HOST, SERVER));
    let port = seen.sport;
    assert_eq!(lab.stat(program_id::UPLINK_EGRESS, outcome::SNAT), 1);

    let data = packet::tcp_segment(EP1, 40000, SERVER, 7000, tcp_flags::ACK, 1001, 1, b"hi");
    let (fast, mark) = lab.send_marked(GATEWAY_MAC, &data);
    lab.translated_once(&fast, mark);
    let seen = packet::inspect(&fast.frame);
    assert_eq!((seen.src, seen.sport, seen.dst), (HOST, port, SERVER));

    // Through the stack: out through uplink_egress, unmarked, with the same translation.
    let (normal, _) = lab.egress(&data, 0);
    assert_eq!(normal.action, TC_ACT_OK);
    let seen = packet::inspect(&normal.frame);
    assert_eq!((seen.src, seen.sport, seen.dst), (HOST, port, SERVER));
    assert_eq!(lab.stat(program_id::UPLINK_EGRESS, outcome::SNAT), 2);

    let rst = packet::tcp_segment(EP1, 40000, SERVER, 7000, tcp_flags::RST, 500_000, 0, b"");
    let (dropped, _) = lab.send_marked(GATEWAY_MAC, &rst);
    assert_eq!(dropped.action, TC_ACT_SHOT);
    assert_eq!(
        lab.stat(program_id::ENDPOINT_INGRESS, outcome::DROP_OUT_OF_WINDOW),
        1
    );

    let stray = packet::tcp_segment(EP1, 40001, SERVER, 7000, tcp_flags::ACK, 1, 1, b"late");
    let (left_as_is, mark) = lab.send_marked(GATEWAY_MAC, &stray);
    assert_eq!((left_as_is.action, mark), (TC_ACT_REDIRECT, 0));
    let (dropped, _) = lab.egress(&left_as_is.frame, mark);
    assert_eq!(dropped.action, TC_ACT_SHOT);
    assert_eq!(
        lab.stat(program_id::UPLINK_EGRESS, outcome::DROP_UNTRACKED),
        1
    );
}

/// A kept answer of the FIB (`NEXT_HOPS`, `NEXT_HOPS6`) still has every packet checked
/// against the route's MTU: after a small packet to the server went the fast way, one bigger
/// than the uplink's MTU, and a GSO packet whose segments would be, go the normal way; IPv4
/// and IPv6.
#[test]
fn a_kept_answer_of_the_fib_still_checks_the_mtu() {
    packet::on_one_cpu();
    let OutLab6(mut lab) = OutLab6::new();
    let small = packet::tcp_frame(EP1, 40000, SERVER, 7000, false, true, b"hello");
    assert_eq!(lab.send(GATEWAY_MAC, &small).action, TC_ACT_REDIRECT);
    assert_eq!(lab.send(GATEWAY_MAC, &small).action, TC_ACT_REDIRECT);
    assert_eq!(lab.fast(), 2);
    let big = packet::tcp_frame(EP1, 40000, SERVER, 7000, false, true, &[0; 1500]);
    lab.normal(GATEWAY_MAC, &big);
    let bulk = packet::tcp_frame(EP1, 40000, SERVER, 7000, false, true, &[7; 2000]);
    lab.normal_gso(GATEWAY_MAC, &bulk, 1461);
    assert_eq!(
        lab.send_gso(GATEWAY_MAC, &bulk, 1460).action,
        TC_ACT_REDIRECT
    );

    let small6 = from_ep6(WORLD6, 64, 5);
    assert_eq!(lab.send(GATEWAY_MAC, &small6).action, TC_ACT_REDIRECT);
    assert_eq!(lab.send(GATEWAY_MAC, &small6).action, TC_ACT_REDIRECT);
    assert_eq!(lab.fast(), 5);
    lab.normal(GATEWAY_MAC, &from_ep6(WORLD6, 64, 1500));
    let bulk6 = from_ep6(WORLD6, 64, 2000);
    lab.normal_gso(GATEWAY_MAC, &bulk6, 1441);
    assert_eq!(
        lab.send_gso(GATEWAY_MAC, &bulk6, 1440).action,
        TC_ACT_REDIRECT
    );
}

/// A frame is sized by what it carries, as forwarding sizes it, not by its IP header: a
/// container's frame bigger than the uplink's MTU whose IPv4 header says 40 bytes (or 0), or
/// whose IPv6 header says 20 bytes of payload, goes the normal way, where the stack judges it.
#[test]
fn a_frame_bigger_than_its_ip_header_says_is_sized_by_the_frame() {
    packet::on_one_cpu();
    let mut lab = OutLab6::new();
    let big = packet::tcp_frame(EP1, 40000, SERVER, 7000, false, true, &[0; 1500]);
    for says in [40u16, 0] {
        let lying = with_ipv4_header(&big, |ip| ip[2..4].copy_from_slice(&says.to_be_bytes()));
        lab.0.normal(GATEWAY_MAC, &lying);
    }
    let mut lying6 = from_ep6(WORLD6, 64, 1500);
    lying6[14 + 4..14 + 6].copy_from_slice(&20u16.to_be_bytes());
    lab.0.normal(GATEWAY_MAC, &lying6);
}

/// `frame` with its IPv4 header changed by `edit` and its checksum made right again.
fn with_ipv4_header(frame: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut frame = frame.to_vec();
    let ip = &mut frame[14..34];
    edit(ip);
    ip[10..12].fill(0);
    let csum = etherparse::Ipv4HeaderSlice::from_slice(ip)
        .unwrap()
        .to_header()
        .calc_header_checksum();
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    frame
}

/// An endpoint's bulk TCP leaves as GSO packets of up to 64 KiB: one goes straight to the
/// uplink when the segments it will be cut into fit the uplink's MTU (1,500), else the normal
/// way (where the stack sends fragmentation needed or Packet Too Big); IPv4 and IPv6.
#[test]
fn an_endpoints_gso_packet_goes_straight_out_when_its_segments_fit_the_uplinks_mtu() {
    let mut lab = OutLab6::new();
    let bulk = packet::tcp_frame(EP1, 40000, SERVER, 7000, false, true, &[7; 2000]);
    // 20 + 20 + 1,460 bytes fit.
    let out = lab.0.send_gso(GATEWAY_MAC, &bulk, 1460);
    assert_eq!(out.action, TC_ACT_REDIRECT);
    assert_eq!(out.frame[14 + 8], 63, "forwarded: TTL decremented");
    assert_eq!(lab.0.fast(), 1);
    lab.0.normal_gso(GATEWAY_MAC, &bulk, 1461);

    // 40 + 20 + 1,440 bytes fit.
    let bulk6 = from_ep6(WORLD6, 64, 2000);
    let out = lab.0.send_gso(GATEWAY_MAC, &bulk6, 1440);
    assert_eq!(out.action, TC_ACT_REDIRECT);
    assert_eq!(out.frame[14 + 7], 63, "forwarded: hop limit decremented");
    assert_eq!(lab.0.fast(), 2);
    lab.0.normal_gso(GATEWAY_MAC, &bulk6, 1441);
}

#[test]
fn what_the_fast_path_out_must_not_take_goes_the_normal_way() {
    let mut lab = OutLab::new();
    let to_server = packet::tcp_frame(EP1, 40000, SERVER, 7000, true, false, b"");
    // Sent to a sibling's MAC (one that routes for it, say): the bridge delivers it there.
    lab.normal([0x02, 0x42, 172, 17, 0, 3], &to_server);
    // To a sibling's address through the gateway's MAC: the bridge's business.
    let sibling = packet::tcp_frame(EP1, 40000, [172, 17, 0, 3], 80, true, false, b"");
    lab.normal(GATEWAY_MAC, &sibling);
    // A neighbour the uplink does not know yet: the stack resolves it.
    let unknown = packet::tcp_frame(EP1, 40000, [198, 18, 0, 77], 80, true, false, b"");
    lab.normal(GATEWAY_MAC, &unknown);
    // A TTL about to expire: the stack sends the ICMP error.
    let last_hop = with_ipv4_header(&to_server, |ip| ip[8] = 1);
    lab.normal(GATEWAY_MAC, &last_hop);
    // Bigger than the uplink's MTU: the stack fragments it or sends "fragmentation needed".
    lab.topo
        .ns("host")
        .ip(&["link", "set", "uplink0", "mtu", "1280"]);
    let big = packet::tcp_frame(EP1, 40000, SERVER, 7000, false, true, &[0; 1300]);
    lab.normal(GATEWAY_MAC, &big);
}

/// The fast path into endpoints for IPv6 (`redirect6`): a namespace with br1 (2001:db8:1::1/64,
/// IPv6 forwarding on) and, when a test wants it, a neighbour entry for EP1's IPv6 address
/// with the MAC bridgenet gives EP1 (02:42 and its IPv4 address), which names it in
/// `ENDPOINT_PEERS`; TCP 8080 published on `::` to `[EP1_6]:80`.
struct Lab6 {
    /// Dropped before the namespace.
    dp: Datapath,
    topo: Topology,
}

const EP1_6: &str = "2001:db8:1::2";
const UPLINK6: &str = "2001:db8:ff::2";
const CLIENT6: &str = "2001:db8:ff:2::7";
const EP1_MAC_DOCKER: [u8; 6] = [0x02, 0x42, 172, 17, 0, 2];

impl Lab6 {
    fn new(known: bool) -> Self {
        use bridgenet::datapath::Proto;
        bridgenet_tests::require_root();
        let mut topo = Topology::new();
        // IPv6 on (new namespaces may inherit it off), the address usable at once (no DAD).
        topo.netns("host")
            .sysctl("host", "net.ipv6.conf.all.disable_ipv6", "0")
            .sysctl("host", "net.ipv6.conf.default.disable_ipv6", "0")
            .sysctl("host", "net.ipv6.conf.default.accept_dad", "0")
            .bridge("host", "br1")
            .addr("host", "br1", "2001:db8:1::1/64")
            .sysctl("host", "net.ipv6.conf.all.forwarding", "1");
        if known {
            neighbour(topo.ns("host"), EP1_6, EP1_MAC_DOCKER, "br1");
        }
        let mut dp = Datapath::load().expect("loading the datapath");
        let options = network1();
        dp.add_network6(
            "2001:db8:1::/64".parse().unwrap(),
            "2001:db8:1::1".parse().unwrap(),
            &options,
        )
        .unwrap();
        dp.set_uplink6(TEST_RUN_IFINDEX, Some(UPLINK6.parse().unwrap()))
            .unwrap();
        dp.publish6(
            Proto::Tcp,
            std::net::Ipv6Addr::UNSPECIFIED,
            8080,
            EP1_6.parse().unwrap(),
            80,
        )
        .unwrap();
        Lab6 { dp, topo }
    }

    fn ingress(&mut self, frame: &[u8]) -> packet::Verdict {
        let dp = &mut self.dp;
        self.topo
            .ns("host")
            .enter(|| packet::run_tc(dp, programs::UPLINK_INGRESS, frame, 1).expect("test run"))
    }

    fn ingress_gso(&mut self, frame: &[u8], gso_size: u32) -> packet::Verdict {
        let dp = &mut self.dp;
        self.topo.ns("host").enter(|| {
            packet::run_tc_gso(dp, programs::UPLINK_INGRESS, frame, gso_size).expect("test run")
        })
    }

    /// A lab whose flow from CLIENT6:`sport` went into EP1's peer behind br1, with a second
    /// bridge, br2: the FIB's answer is kept (`NEXT_HOPS6`) on CPU 0, where the test stays.
    fn with_answer_kept(sport: u16) -> Self {
        packet::on_one_cpu();
        let mut lab = Lab6::new(true);
        let host = lab.topo.ns("host");
        host.ip(&["link", "add", "br2", "type", "bridge"]);
        host.ip(&["link", "set", "br2", "up"]);
        let br1 = host.ifindex("br1");
        lab.dp
            .add_endpoint_peer(Ipv4Addr::from(EP1), VETH, br1)
            .unwrap();
        assert_eq!(lab.ingress(&syn6(sport, 64)).action, TC_ACT_REDIRECT);
        assert_eq!(lab.stats(), (1, 0, 1));
        lab
    }

    fn stats(&self) -> (u64, u64, u64) {
        let stat = |o| self.dp.stat(program_id::UPLINK_INGRESS, o).unwrap();
        (
            stat(outcome::DNAT),
            stat(outcome::FAST_PATH),
            stat(outcome::FAST_PATH_PEER),
        )
    }
}

/// A SYN from CLIENT6 to `[UPLINK6]:8080` with hop limit `hops`.
fn syn6(sport: u16, hops: u8) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8])
        .ipv6(
            CLIENT6.parse::<std::net::Ipv6Addr>().unwrap().octets(),
            UPLINK6.parse::<std::net::Ipv6Addr>().unwrap().octets(),
            hops,
        )
        .tcp(sport, 8080, 7000, 64240)
        .syn();
    let mut frame = Vec::new();
    builder.write(&mut frame, b"").unwrap();
    frame
}

/// The flow of `syn6(sport, 64)`'s data segment, acknowledging the SYN-ACK, with `len` bytes.
fn data6(sport: u16, len: usize) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 8])
        .ipv6(
            CLIENT6.parse::<std::net::Ipv6Addr>().unwrap().octets(),
            UPLINK6.parse::<std::net::Ipv6Addr>().unwrap().octets(),
            64,
        )
        .tcp(sport, 8080, 7001, 64240)
        .ack(1);
    let mut frame = Vec::new();
    builder.write(&mut frame, &vec![7; len]).unwrap();
    frame
}

/// The destination address and port of an IPv6 TCP frame, and its hop limit.
fn dst6(frame: &[u8]) -> (std::net::Ipv6Addr, u16, u8) {
    let addr: [u8; 16] = frame[14 + 24..14 + 40].try_into().unwrap();
    let port = u16::from_be_bytes([frame[14 + 40 + 2], frame[14 + 40 + 3]]);
    (addr.into(), port, frame[14 + 7])
}

#[test]
fn an_ipv6_published_flow_goes_straight_into_the_endpoint() {
    let mut lab = Lab6::new(true);
    let br1 = lab.topo.ns("host").ifindex("br1");
    lab.dp
        .add_endpoint_peer(Ipv4Addr::from(EP1), VETH, br1)
        .unwrap();
    let frame = syn6(40000, 64);
    let out = lab.ingress(&frame);
    assert_eq!(out.action, TC_ACT_REDIRECT, "redirected");
    assert_eq!(
        dst6(&out.frame),
        (EP1_6.parse().unwrap(), 80, 63),
        "translated, hop limit decremented"
    );
    // As the bridge would have sent it: to the endpoint's MAC, from the gateway's.
    let gateway_mac = mac_of(lab.topo.ns("host").name(), "br1");
    assert_eq!(out.frame[0..6], EP1_MAC_DOCKER);
    assert_eq!(out.frame[6..12], gateway_mac);
    assert_eq!(lab.stats(), (1, 0, 1));
    let sent = lab
        .dp
        .endpoint_peers()
        .unwrap()
        .into_iter()
        .find(|(addr, _)| *addr == Ipv4Addr::from(EP1))
        .map(|(_, p)| (p.packets, p.bytes));
    assert_eq!(
        sent,
        Some((1, frame.len() as u64)),
        "counted for the endpoint"
    );
}

#[test]
fn an_ipv6_flow_without_a_peer_entry_goes_to_the_bridge_and_the_rest_to_the_stack() {
    // No peer entry (Docker's endpoint before Docker moved it): to the bridge.
    let mut lab = Lab6::new(true);
    let out = lab.ingress(&syn6(40001, 64));
    assert_eq!(out.action, TC_ACT_REDIRECT);
    assert_eq!(dst6(&out.frame), (EP1_6.parse().unwrap(), 80, 63));
    assert_eq!(lab.stats(), (1, 1, 0));
    // A hop limit about to expire: the stack sends Time Exceeded.
    let out = lab.ingress(&syn6(40002, 1));
    assert_eq!(out.action, TC_ACT_OK);
    assert_eq!(dst6(&out.frame), (EP1_6.parse().unwrap(), 80, 1));
    assert_eq!(lab.stats(), (2, 1, 0));

    // A neighbour the host does not know yet: the stack resolves it (Neighbour Discovery).
    let mut lab = Lab6::new(false);
    let out = lab.ingress(&syn6(40003, 64));
    assert_eq!(out.action, TC_ACT_OK);
    assert_eq!(
        dst6(&out.frame),
        (EP1_6.parse().unwrap(), 80, 64),
        "translated; the stack decrements the hop limit itself"
    );
    assert_eq!(lab.stats(), (1, 0, 0));
}

/// `a_route_changed_outside_bridgenet_reaches_the_fast_path_within_20_ms` for IPv6: EP1's
/// IPv6 address moves to br2 under the daemon; 40 ms later its flow goes to br2.
#[test]
fn an_ipv6_route_changed_outside_bridgenet_reaches_the_fast_path_within_20_ms() {
    let mut lab = Lab6::with_answer_kept(40010);
    let host = lab.topo.ns("host");
    host.ip(&["-6", "route", "add", "2001:db8:1::2/128", "dev", "br2"]);
    neighbour(host, EP1_6, EP1_MAC_DOCKER, "br2");
    std::thread::sleep(std::time::Duration::from_millis(40));
    assert_eq!(lab.ingress(&data6(40010, 5)).action, TC_ACT_REDIRECT);
    assert_eq!(
        lab.stats(),
        (2, 1, 1),
        "to br2, where the FIB now routes it"
    );
}

/// `a_network_made_again_on_another_bridge_is_seen_by_the_next_packet` for IPv6: the network's
/// IPv6 subnet made again on br2 moves the generation too.
#[test]
fn an_ipv6_network_made_again_on_another_bridge_is_seen_by_the_next_packet() {
    let mut lab = Lab6::with_answer_kept(40011);
    let host = lab.topo.ns("host");
    let br2 = host.ifindex("br2");
    host.ip(&["addr", "del", "2001:db8:1::1/64", "dev", "br1"]);
    host.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "br2"]);
    neighbour(host, EP1_6, EP1_MAC_DOCKER, "br2");
    let subnet = "2001:db8:1::/64".parse().unwrap();
    lab.dp.remove_subnet6(subnet).unwrap();
    lab.dp
        .add_network6(subnet, "2001:db8:1::1".parse().unwrap(), &network1())
        .unwrap();
    lab.dp
        .add_endpoint_peer(Ipv4Addr::from(EP1), VETH, br2)
        .unwrap();
    assert_eq!(lab.ingress(&data6(40011, 5)).action, TC_ACT_REDIRECT);
    assert_eq!(lab.stats(), (2, 0, 2), "into the peer behind br2");
}

/// The fast path out of an endpoint for IPv6: `OutLab`'s namespace with IPv6 on br1
/// (2001:db8:1::1/64) and on the uplink (2001:db8:ff::2/64, its address in `UPLINKS6`), the
/// world's neighbour known; EP1 also has 2001:db8:1::2.
struct OutLab6(OutLab);

const WORLD6: &str = "2001:db8:ff::1";

impl OutLab6 {
    fn new() -> Self {
        let mut lab = OutLab::new();
        let host = lab.topo.ns("host");
        for (key, value) in [
            ("net.ipv6.conf.all.disable_ipv6", "0"),
            ("net.ipv6.conf.default.disable_ipv6", "0"),
            ("net.ipv6.conf.br1.disable_ipv6", "0"),
            ("net.ipv6.conf.uplink0.disable_ipv6", "0"),
            ("net.ipv6.conf.br1.accept_dad", "0"),
            ("net.ipv6.conf.uplink0.accept_dad", "0"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ] {
            host.sysctl(key, value);
        }
        host.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "br1"]);
        host.ip(&["addr", "add", "2001:db8:ff::2/64", "dev", "uplink0"]);
        let world_mac = mac_of(lab.topo.ns("world").name(), "eth0");
        neighbour(host, WORLD6, world_mac, "uplink0");
        let uplink = host.ifindex("uplink0");
        let options = network1();
        lab.dp
            .add_network6(
                "2001:db8:1::/64".parse().unwrap(),
                "2001:db8:1::1".parse().unwrap(),
                &options,
            )
            .unwrap();
        lab.dp
            .add_endpoint6(TEST_RUN_IFINDEX, EP1_6.parse().unwrap())
            .unwrap();
        lab.dp
            .set_uplink6(uplink, Some("2001:db8:ff::2".parse().unwrap()))
            .unwrap();
        OutLab6(lab)
    }
}

/// A TCP segment from EP1_6 to `[to]:7000` with hop limit `hops` and `len` bytes of payload.
fn from_ep6(to: &str, hops: u8, len: usize) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([0; 6], [0; 6])
        .ipv6(
            EP1_6.parse::<std::net::Ipv6Addr>().unwrap().octets(),
            to.parse::<std::net::Ipv6Addr>().unwrap().octets(),
            hops,
        )
        .tcp(40000, 7000, 7000, 64240)
        .syn();
    let mut frame = Vec::new();
    builder.write(&mut frame, &vec![0; len]).unwrap();
    frame
}

#[test]
fn what_an_endpoint_sends_out_over_ipv6_goes_straight_to_the_uplink() {
    let mut lab = OutLab6::new();
    let frame = from_ep6(WORLD6, 64, 0);
    let out = lab.0.send(GATEWAY_MAC, &frame);
    assert_eq!(out.action, TC_ACT_REDIRECT);
    assert_eq!(
        out.frame[..6],
        mac_of(lab.0.topo.ns("world").name(), "eth0")
    );
    assert_eq!(
        out.frame[6..12],
        mac_of(lab.0.topo.ns("host").name(), "uplink0")
    );
    // Hop limit - 1, not translated yet: uplink_egress applies NAT66 on the way out.
    assert_eq!(out.frame[14 + 7], 63, "forwarded: hop limit decremented");
    assert_eq!(out.frame[14 + 8..], frame[14 + 8..], "otherwise unchanged");
    assert_eq!(lab.0.fast(), 1);
}

#[test]
fn what_the_ipv6_fast_path_out_must_not_take_goes_the_normal_way() {
    let mut lab = OutLab6::new();
    let to_world = from_ep6(WORLD6, 64, 0);
    // Sent to a sibling's MAC: the bridge delivers it there.
    lab.0.normal([0x02, 0x42, 172, 17, 0, 3], &to_world);
    // To a sibling's address through the gateway's MAC: the bridge's business.
    lab.0.normal(GATEWAY_MAC, &from_ep6("2001:db8:1::3", 64, 0));
    // To the host's own address: delivered, not forwarded.
    lab.0
        .normal(GATEWAY_MAC, &from_ep6("2001:db8:ff::2", 64, 0));
    // A neighbour the uplink does not know yet: the stack resolves it.
    lab.0
        .normal(GATEWAY_MAC, &from_ep6("2001:db8:ff::77", 64, 0));
    // A hop limit about to expire: the stack sends Time Exceeded.
    lab.0.normal(GATEWAY_MAC, &from_ep6(WORLD6, 1, 0));
    // Bigger than the uplink's MTU: the stack sends Packet Too Big.
    lab.0
        .topo
        .ns("host")
        .ip(&["link", "set", "uplink0", "mtu", "1280"]);
    lab.0.normal(GATEWAY_MAC, &from_ep6(WORLD6, 64, 1300));
}

/// A TCP segment from EP1_6:`sport` to WORLD6:7000 with `flags` (S, A, R), `seq` and `ack`.
fn segment6(sport: u16, flags: &str, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = etherparse::PacketBuilder::ethernet2([0; 6], [0; 6])
        .ipv6(
            EP1_6.parse::<std::net::Ipv6Addr>().unwrap().octets(),
            WORLD6.parse::<std::net::Ipv6Addr>().unwrap().octets(),
            64,
        )
        .tcp(sport, 7000, seq, 64240);
    for flag in flags.chars() {
        b = match flag {
            'S' => b.syn(),
            'A' => b.ack(ack),
            'R' => b.rst(),
            _ => unreachable!(),
        };
    }
    let mut frame = Vec::new();
    b.write(&mut frame, payload).unwrap();
    frame
}

/// An IPv6 TCP frame's source, source port and destination, after checking its TCP checksum
/// (over IPv6's pseudo-header).
fn ends6(frame: &[u8]) -> (std::net::Ipv6Addr, u16, std::net::Ipv6Addr) {
    use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
    let headers = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let Some(NetHeaders::Ipv6(ip, _)) = &headers.net else {
        panic!("not IPv6: {frame:?}");
    };
    let Some(TransportHeader::Tcp(tcp)) = &headers.transport else {
        panic!("not TCP: {frame:?}");
    };
    let right = tcp.calc_checksum_ipv6(ip, headers.payload.slice()).unwrap();
    assert_eq!(tcp.checksum, right, "the TCP checksum is right");
    (ip.source.into(), tcp.source_port, ip.destination.into())
}

/// `what_the_fast_path_out_translates_leaves_translated_once` over IPv6: a tracked NAT66
/// flow's segment is translated on the endpoint's veth (its checksum right) and marked, and
/// `uplink_egress` passes it as it is; through the stack (unmarked) `uplink_egress` translates
/// the same segment the same way. A RST outside the window is dropped on the veth; a flow's
/// first segment and a segment of no flow are left to `uplink_egress` as they are, which opens
/// the one and drops the other.
#[test]
fn what_the_ipv6_fast_path_out_translates_leaves_translated_once() {
    let OutLab6(mut lab) = OutLab6::new();
    // The test run's device stands for the uplink too, with the uplink's IPv6 address.
    lab.dp
        .set_uplink6(TEST_RUN_IFINDEX, Some(UPLINK6.parse().unwrap()))
        .unwrap();
    let (uplink, world, ep) = (
        UPLINK6.parse().unwrap(),
        WORLD6.parse().unwrap(),
        EP1_6.parse().unwrap(),
    );
    let (out, mark) = lab.send_marked(GATEWAY_MAC, &segment6(40000, "S", 1000, 0, b""));
    assert_eq!((out.action, mark), (TC_ACT_REDIRECT, 0));
    assert_eq!(ends6(&out.frame), (ep, 40000, world), "left as it is");
    // uplink_egress opens the flow.
    let (opened, _) = lab.egress(&out.frame, mark);
    assert_eq!(opened.action, TC_ACT_OK);
    let (src, port, dst) = ends6(&opened.frame);
    assert_eq!((src, dst), (uplink, world));
    assert_eq!(lab.stat(program_id::UPLINK_EGRESS, outcome::SNAT), 1);

    let data = segment6(40000, "A", 1001, 1, b"hi");
    let (fast, mark) = lab.send_marked(GATEWAY_MAC, &data);
    lab.translated_once(&fast, mark);
    assert_eq!(ends6(&fast.frame), (uplink, port, world));
    assert_eq!(fast.frame[14 + 7], 63, "forwarded: hop limit decremented");

    // Through the stack: out through uplink_egress, unmarked, with the same translation.
    let (normal, _) = lab.egress(&data, 0);
    assert_eq!(normal.action, TC_ACT_OK);
    assert_eq!(ends6(&normal.frame), (uplink, port, world));
    assert_eq!(lab.stat(program_id::UPLINK_EGRESS, outcome::SNAT), 2);

    let (dropped, _) = lab.send_marked(GATEWAY_MAC, &segment6(40000, "R", 500_000, 0, b""));
    assert_eq!(dropped.action, TC_ACT_SHOT);
    assert_eq!(
        lab.stat(program_id::ENDPOINT_INGRESS, outcome::DROP_OUT_OF_WINDOW),
        1
    );

    let stray = segment6(40001, "A", 1, 1, b"late");
    let (left_as_is, mark) = lab.send_marked(GATEWAY_MAC, &stray);
    assert_eq!((left_as_is.action, mark), (TC_ACT_REDIRECT, 0));
    assert_eq!(ends6(&left_as_is.frame), (ep, 40001, world));
    let (dropped, _) = lab.egress(&left_as_is.frame, mark);
    assert_eq!(dropped.action, TC_ACT_SHOT);
    assert_eq!(
        lab.stat(program_id::UPLINK_EGRESS, outcome::DROP_UNTRACKED),
        1
    );
}

/// `a_gso_packet_goes_into_the_endpoint_when_its_segments_fit_the_mtu` over IPv6: segments of
/// 40 + 20 + 1,440 bytes fit br1's 1,500, one byte more does not (the stack sends Packet Too
/// Big), nor does the same packet not GSO.
#[test]
fn an_ipv6_gso_packet_goes_into_the_endpoint_when_its_segments_fit_the_mtu() {
    let mut lab = Lab6::new(true);
    let br1 = lab.topo.ns("host").ifindex("br1");
    lab.dp
        .add_endpoint_peer(Ipv4Addr::from(EP1), VETH, br1)
        .unwrap();
    assert_eq!(lab.ingress(&syn6(40010, 64)).action, TC_ACT_REDIRECT);
    let bulk = data6(40010, 2000);
    let out = lab.ingress_gso(&bulk, 1440);
    assert_eq!(out.action, TC_ACT_REDIRECT, "into the endpoint");
    assert_eq!(dst6(&out.frame), (EP1_6.parse().unwrap(), 80, 63));
    assert_eq!(out.frame[0..6], EP1_MAC_DOCKER);
    assert_eq!(lab.stats(), (2, 0, 2));
    for gso_size in [1441, 0] {
        let out = if gso_size == 0 {
            lab.ingress(&bulk)
        } else {
            lab.ingress_gso(&bulk, gso_size)
        };
        assert_eq!(out.action, TC_ACT_OK, "GSO size {gso_size}: the stack's");
        assert_eq!(
            dst6(&out.frame),
            (EP1_6.parse().unwrap(), 80, 64),
            "translated, hop limit untouched"
        );
    }
    assert_eq!(lab.stats(), (4, 0, 2));
}
