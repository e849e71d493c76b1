//! Two nodes of a Kubernetes-style cluster in namespaces (`tests/src/cluster.rs`): pods
//! attached through `bridgenet-cni`, pod to pod on a node and across nodes with their own
//! addresses (`nonMasqueradeCIDRs`), pod to the outside masqueraded with its node's address,
//! a `hostPort` reached from the outside and from a pod on the other node with the client's
//! address kept, and a node's daemon killed and restarted under cross-node traffic with no
//! reset; the same over IPv6 in a dual-stack cluster (IPv6 `nonMasqueradeCIDRs`).
//!
//! Host kernel only: three daemon starts cost minutes under the matrix's software emulation
//! (over 3 minutes on 6.1, against 11 s here). What depends on the kernel, the datapath's
//! `NON_MASQUERADE` checks in TC and XDP, is tested on every kernel by `packet_nat` and
//! `packet_nat66` (`non_masquerade_prefixes_pass_both_ways_untranslated`,
//! `non_masquerade_ipv6_prefixes_pass_both_ways_untranslated`); the rest is the daemons' and the
//! plugin's bookkeeping.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bridgenet_tests::{
    cluster::{Cluster, OUTSIDE, OUTSIDE6, node_addr, node_addr6, pod_cidr, pod_cidr6},
    control::Stop,
    topology::enter,
    traffic::{TIMEOUT, echo_once, seen},
};
use serde_json::json;

/// A connection from `client_ns` to `to` that exchanges a byte every 10 ms until stopped;
/// any error (a reset, a timeout) is counted.
struct Stream {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Stream {
    fn open(client_ns: &str, to: &str) -> Self {
        let to: SocketAddr = to.parse().unwrap();
        let mut conn = enter(client_ns, || {
            TcpStream::connect_timeout(&to, TIMEOUT).unwrap()
        });
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (stop, rounds) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, r) = (stop.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            let mut b = [0u8; 1];
            while !s.load(Ordering::SeqCst) {
                conn.write_all(b"x").map_err(|e| format!("write: {e}"))?;
                conn.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
                r.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        });
        Self {
            stop,
            rounds,
            thread,
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Waits until `more` further rounds went through (or the stream failed).
    fn advances(&self, more: u64) {
        let start = self.rounds();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while self.rounds() < start + more && !self.thread.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the stream stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn close(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let rounds = self.rounds();
        self.thread
            .join()
            .unwrap()
            .expect("the stream kept working");
        rounds
    }
}

#[test]
fn pods_talk_across_nodes_with_their_own_addresses_and_survive_a_daemon_restart() {
    let mut cluster = Cluster::up(2);
    let a1 = cluster.pod(1, "a1", json!([]));
    let a2 = cluster.pod(1, "a2", json!([]));
    let b1 = cluster.pod(
        2,
        "b1",
        json!([{"hostPort": 30080, "containerPort": 80, "protocol": "tcp"}]),
    );
    let outside = cluster.outside();
    assert_eq!(a1.ip, "198.18.17.2");
    assert_eq!(b1.ip, "198.18.18.2");

    // Same node, and across nodes: the receiver sees the sender's own address.
    let to = |pod: &bridgenet_tests::cluster::Pod, port: u16| format!("{}:{port}", pod.ip);
    assert_eq!(
        seen(&a2.netns, "0.0.0.0:7001", &a1.netns, &to(&a2, 7001)).to_string(),
        a1.ip
    );
    assert_eq!(
        seen(&b1.netns, "0.0.0.0:7002", &a1.netns, &to(&b1, 7002)).to_string(),
        a1.ip
    );
    assert_eq!(
        seen(&a1.netns, "0.0.0.0:7003", &b1.netns, &to(&a1, 7003)).to_string(),
        b1.ip
    );
    // To the outside: masqueraded with the node's address.
    assert_eq!(
        seen(
            &outside,
            "0.0.0.0:7004",
            &a1.netns,
            &format!("{OUTSIDE}:7004")
        )
        .to_string(),
        node_addr(1)
    );
    // The hostPort on node 2, from the outside and from a pod on node 1: the client's address.
    let host_port = format!("{}:30080", node_addr(2));
    assert_eq!(
        seen(&b1.netns, "0.0.0.0:80", &outside, &host_port).to_string(),
        OUTSIDE
    );
    assert_eq!(
        seen(&b1.netns, "0.0.0.0:80", &a1.netns, &host_port).to_string(),
        a1.ip
    );
    // The outside, even with a route, cannot reach a pod directly (the cluster's CIDRs can).
    cluster.fabric.route("fabric", &pod_cidr(1), &node_addr(1));
    assert!(bridgenet_tests::traffic::refused(&outside, &to(&a1, 7003)));

    // Node 2's daemon is killed and restarted while a pod-to-pod stream and a hostPort
    // stream from node 1 flow: neither is reset.
    let pod_server = echo_once(&b1.netns, "0.0.0.0:7005");
    let direct = Stream::open(&a1.netns, &to(&b1, 7005));
    let port_server = echo_once(&b1.netns, "0.0.0.0:80");
    let published = Stream::open(&a1.netns, &host_port);
    direct.advances(5);
    published.advances(5);
    cluster.nodes[1].stop(Stop::Kill);
    direct.advances(5);
    published.advances(5);
    cluster.nodes[1].start();
    direct.advances(20);
    published.advances(20);
    assert!(direct.close() >= 30);
    assert!(published.close() >= 30);
    assert_eq!(pod_server.join().unwrap().ip().to_string(), a1.ip);
    assert_eq!(port_server.join().unwrap().ip().to_string(), a1.ip);
}

/// The cluster over IPv6: pods across nodes see each other's own IPv6 addresses, the outside
/// sees the node's, a hostPort on the node's IPv6 address keeps the client's, and the outside
/// cannot reach a pod directly.
#[test]
fn pods_talk_across_nodes_over_ipv6_with_their_own_addresses() {
    let mut cluster = Cluster::up(2);
    let a1 = cluster.pod(1, "a1", json!([]));
    let b1 = cluster.pod(
        2,
        "b1",
        json!([{"hostPort": 30080, "containerPort": 80, "protocol": "tcp"}]),
    );
    let outside = cluster.outside();
    assert_eq!(a1.ip6, "2001:db8:10:1::2");
    assert_eq!(b1.ip6, "2001:db8:10:2::2");
    let to = |pod: &bridgenet_tests::cluster::Pod, port: u16| format!("[{}]:{port}", pod.ip6);

    assert_eq!(
        seen(&b1.netns, "[::]:7002", &a1.netns, &to(&b1, 7002)).to_string(),
        a1.ip6
    );
    assert_eq!(
        seen(&a1.netns, "[::]:7003", &b1.netns, &to(&a1, 7003)).to_string(),
        b1.ip6
    );
    assert_eq!(
        seen(
            &outside,
            "[::]:7004",
            &a1.netns,
            &format!("[{OUTSIDE6}]:7004")
        )
        .to_string(),
        node_addr6(1)
    );
    let host_port = format!("[{}]:30080", node_addr6(2));
    assert_eq!(
        seen(&b1.netns, "[::]:80", &outside, &host_port).to_string(),
        OUTSIDE6
    );
    assert_eq!(
        seen(&b1.netns, "[::]:80", &a1.netns, &host_port).to_string(),
        a1.ip6
    );
    cluster
        .fabric
        .route("fabric", &pod_cidr6(1), &node_addr6(1));
    assert!(bridgenet_tests::traffic::refused(&outside, &to(&a1, 7003)));
}
