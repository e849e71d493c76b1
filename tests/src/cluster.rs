//! A Kubernetes-style cluster in namespaces, the part of one that is bridgenet's job: node
//! namespaces on a fabric (a bridge in a namespace of its own, which also stands for the
//! outside at 198.18.0.100), a daemon per node with its own pod CIDR, routes between nodes for
//! the pod CIDRs (as flannel's host-gw or a cloud's routes), and pods attached by invoking
//! `bridgenet-cni` as a runtime does.
//!
//! ```text
//! fabric ns: br0 198.18.0.100/24 and 2001:db8:ff::100/64 (the outside)
//!   node N: eth0 198.18.0.N/24 and 2001:db8:ff::N/64, default routes via the outside,
//!           daemon, pod CIDRs 198.18.(16+N).0/24 and 2001:db8:10:N::/64,
//!           routes to every other node M's pod CIDRs via node M
//! cluster: pods 198.18.16.0/20 and 2001:db8:10::/48, nodes 198.18.0.0/28 and
//!          2001:db8:ff::/120 (all in nonMasqueradeCIDRs)
//! ```
use std::process::Command;

use serde_json::{Value, json};

use crate::{Topology, cni, control::ControlLab};

/// The outside (a host beyond the nodes' network), on the fabric.
pub const OUTSIDE: &str = "198.18.0.100";
pub const OUTSIDE6: &str = "2001:db8:ff::100";

/// The cluster's pod and node CIDRs, reached without masquerade.
pub const NON_MASQUERADE: [&str; 4] = [
    "198.18.16.0/20",
    "198.18.0.0/28",
    "2001:db8:10::/48",
    "2001:db8:ff::/120",
];

/// Node `n`'s address on the fabric (1-based).
pub fn node_addr(n: usize) -> String {
    format!("198.18.0.{n}")
}

pub fn node_addr6(n: usize) -> String {
    format!("2001:db8:ff::{n}")
}

/// Node `n`'s pod CIDR.
pub fn pod_cidr(n: usize) -> String {
    format!("198.18.{}.0/24", 16 + n)
}

pub fn pod_cidr6(n: usize) -> String {
    format!("2001:db8:10:{n}::/64")
}

/// IPv6 enabled on `iface` in `netns`, with `cidr` (no duplicate address detection to wait).
fn addr6(netns: &crate::topology::Netns, iface: &str, cidr: &str) {
    netns.sysctl(&format!("net.ipv6.conf.{iface}.disable_ipv6"), "0");
    netns.ip(&["-6", "addr", "add", cidr, "dev", iface, "nodad"]);
}

pub struct Cluster {
    /// Dropped first: daemons, pods and node namespaces before the fabric.
    pub nodes: Vec<ControlLab>,
    pub fabric: Topology,
}

/// A pod: its namespace and its addresses.
pub struct Pod {
    pub netns: String,
    pub ip: String,
    pub ip6: String,
}

impl Cluster {
    /// `count` nodes, each daemon started.
    pub fn up(count: usize) -> Self {
        let mut fabric = Topology::new();
        fabric.netns("fabric").bridge("fabric", "br0").addr(
            "fabric",
            "br0",
            &format!("{OUTSIDE}/24"),
        );
        addr6(fabric.ns("fabric"), "br0", &format!("{OUTSIDE6}/64"));
        let mut nodes = Vec::new();
        for n in 1..=count {
            let mut topo = Topology::new();
            topo.netns("host");
            let node = topo.ns("host").name().to_owned();
            let port = format!("n{n}");
            let f = fabric.ns("fabric");
            f.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node,
            ]);
            f.ip(&["link", "set", &port, "master", "br0", "up"]);
            let host = topo.ns("host");
            host.ip(&["link", "set", "eth0", "up"]);
            host.ip(&[
                "addr",
                "add",
                &format!("{}/24", node_addr(n)),
                "dev",
                "eth0",
            ]);
            host.ip(&["route", "add", "default", "via", OUTSIDE]);
            addr6(host, "eth0", &format!("{}/64", node_addr6(n)));
            host.ip(&["-6", "route", "add", "default", "via", OUTSIDE6]);
            for m in (1..=count).filter(|m| *m != n) {
                host.ip(&["route", "add", &pod_cidr(m), "via", &node_addr(m)]);
                host.ip(&["-6", "route", "add", &pod_cidr6(m), "via", &node_addr6(m)]);
            }
            let mut lab = ControlLab::on(topo, "auto", json!({}));
            lab.start();
            nodes.push(lab);
        }
        Self { nodes, fabric }
    }

    pub fn outside(&self) -> String {
        self.fabric.ns("fabric").name().to_owned()
    }

    /// The CNI configuration of node `n` (1-based), as its kubelet's config dir would hold it.
    pub fn conf(&self, n: usize) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "k8s-pod-network",
            "type": "bridgenet-cni",
            "network": "pods",
            "subnet": pod_cidr(n),
            "subnet6": pod_cidr6(n),
            "nonMasqueradeCIDRs": NON_MASQUERADE,
            "socket": self.nodes[n - 1].socket(),
            "capabilities": {"portMappings": true},
        })
    }

    /// A pod on node `n`: a namespace made as a runtime makes it, attached with CNI ADD
    /// (`ports`: the `portMappings` capability).
    pub fn pod(&mut self, n: usize, name: &str, ports: Value) -> Pod {
        let netns = self.nodes[n - 1].netns_name(name);
        let out = Command::new("ip")
            .args(["netns", "add", &netns])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip netns add {netns}");
        let mut conf = self.conf(n);
        conf["runtimeConfig"] = json!({ "portMappings": ports });
        let path = format!("/run/netns/{netns}");
        let result = cni::call("ADD", &cni::attachment(name, "eth0", &path), &conf);
        let ips = result.ok()["ips"].as_array().expect("ips").clone();
        let address = |v6: bool| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str())
                .find(|a| a.contains(':') == v6)
                .and_then(|a| a.split('/').next())
                .expect("an address of each family")
                .to_owned()
        };
        Pod {
            netns,
            ip: address(false),
            ip6: address(true),
        }
    }
}
