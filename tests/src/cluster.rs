//! A Kubernetes-style cluster in namespaces, the part of one that is bridgenet's job: node
//! namespaces on a fabric (a bridge in a namespace of its own, which also stands for the
//! outside at 198.18.0.100), a daemon per node with its own pod CIDR, routes between nodes for
//! the pod CIDRs (as flannel's host-gw or a cloud's routes), and pods attached by invoking
//! `bridgenet-cni` as a runtime does.
//!
//! ```text
//! fabric ns: br0 198.18.0.100/24 (the outside)
//!   node N: eth0 198.18.0.N/24, default via 198.18.0.100, daemon, pod CIDR 198.18.(16+N).0/24
//!           route 198.18.(16+M).0/24 via 198.18.0.M for every other node M
//! cluster: pods 198.18.16.0/20, nodes 198.18.0.0/28 (both in nonMasqueradeCIDRs)
//! ```
use std::process::Command;

use serde_json::{Value, json};

use crate::{Topology, cni, control::ControlLab};

/// The outside (a host beyond the nodes' network), on the fabric.
pub const OUTSIDE: &str = "198.18.0.100";

/// The cluster's pod and node CIDRs, reached without masquerade.
pub const NON_MASQUERADE: [&str; 2] = ["198.18.16.0/20", "198.18.0.0/28"];

/// Node `n`'s address on the fabric (1-based).
pub fn node_addr(n: usize) -> String {
    format!("198.18.0.{n}")
}

/// Node `n`'s pod CIDR.
pub fn pod_cidr(n: usize) -> String {
    format!("198.18.{}.0/24", 16 + n)
}

pub struct Cluster {
    /// Dropped first: daemons, pods and node namespaces before the fabric.
    pub nodes: Vec<ControlLab>,
    pub fabric: Topology,
}

/// A pod: its namespace and its address.
pub struct Pod {
    pub netns: String,
    pub ip: String,
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
            for m in (1..=count).filter(|m| *m != n) {
                host.ip(&["route", "add", &pod_cidr(m), "via", &node_addr(m)]);
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
        let address = result.ok()["ips"][0]["address"]
            .as_str()
            .expect("an address")
            .to_owned();
        let ip = address.split('/').next().unwrap().to_owned();
        Pod { netns, ip }
    }
}
