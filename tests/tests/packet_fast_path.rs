//! BPF_PROG_TEST_RUN of the fast paths of `uplink_ingress`: a published flow's packet goes
//! straight into its endpoint's namespace (bpf_redirect_peer) when the FIB routes it to that
//! endpoint's bridge and knows its MAC; to the bridge (bpf_redirect_neigh) when the endpoint
//! has no peer entry or the FIB routes its address elsewhere; through the stack when the
//! neighbour is unknown.
//!
//! The programs run in a namespace with two bridges (no ports), forwarding on, and a
//! permanent neighbour entry for the endpoint when a test wants the MAC known.
use std::net::Ipv4Addr;

use bridgenet::datapath::Datapath;
use bridgenet_common::{outcome, program_id, programs};
use bridgenet_tests::{Topology, packet, packet::fixture::*};

const TC_ACT_REDIRECT: u32 = 7;
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
            let mac = EP1_MAC.map(|b| format!("{b:02x}")).join(":");
            topo.ns("host").ip(&[
                "neigh",
                "replace",
                "172.17.0.2",
                "lladdr",
                &mac,
                "dev",
                "br1",
                "nud",
                "permanent",
            ]);
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

    fn stat(&self, outcome: u32) -> u64 {
        self.dp.stat(program_id::UPLINK_INGRESS, outcome).unwrap()
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
    let gateway_mac = lab
        .topo
        .ns("host")
        .exec("cat", &["/sys/class/net/br1/address"]);
    let gateway_mac: Vec<u8> = gateway_mac
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    assert_eq!(out.frame[0..6], EP1_MAC);
    assert_eq!(out.frame[6..12], gateway_mac[..]);
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
