//! `cargo xtask run --nodes N`: the lab as a Kubernetes-style cluster, in namespaces removed
//! on exit (the same layout as `tests/src/cluster.rs`):
//!
//! fabric namespace: bridge br0 198.18.0.100/24, which also stands for the outside
//!   node K: eth0 198.18.0.K/24, a bridgenet daemon, pod CIDR 198.18.(16+K).0/24, routes to the
//!           other nodes' pod CIDRs; pods attached by running bridgenet-cni as a runtime does
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::{
    netns::{self, command_in, ip},
    run::{STOP, on_signal, request, request_timeout, say, serve, step},
    setup,
};

const OUTSIDE: &str = "198.18.0.100";

pub fn run(nodes: usize) -> Result<()> {
    if !(2..=9).contains(&nodes) {
        bail!("--nodes {nodes}: the cluster has 2 to 9 nodes");
    }
    setup::build_tools()?;
    setup::programs(setup::TEST_PROGRAMS)?;
    setup::cargo(&["build", "--quiet", "--package", "bridgenet"])?;
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug");
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut cluster = Cluster::new(&target, nodes)?;
    cluster.show()
}

fn node_addr(k: usize) -> String {
    format!("198.18.0.{k}")
}

fn pod_cidr(k: usize) -> String {
    format!("198.18.{}.0/24", 16 + k)
}

/// Everything the cluster made; dropping it removes all of it.
struct Cluster {
    binary: PathBuf,
    cni: PathBuf,
    prefix: String,
    dir: PathBuf,
    nodes: usize,
    /// The fabric, the nodes and the pods' namespaces, in the order they were made.
    namespaces: Vec<String>,
    daemons: Vec<Child>,
}

impl Cluster {
    fn new(target: &Path, nodes: usize) -> Result<Self> {
        let prefix = format!("bn-lab-{}", std::process::id());
        let mut c = Self {
            binary: target.join("bridgenet"),
            cni: target.join("bridgenet-cni"),
            dir: std::env::temp_dir().join(&prefix),
            prefix,
            nodes,
            namespaces: Vec::new(),
            daemons: Vec::new(),
        };
        std::fs::create_dir_all(&c.dir)?;
        let fabric = c.add_ns("fabric")?;
        say(&format!(
            "fabric {fabric}: bridge br0 {OUTSIDE}/24 (also the outside)"
        ));
        ip(&["-n", &fabric, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &fabric,
            "addr",
            "add",
            &format!("{OUTSIDE}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &fabric, "link", "set", "br0", "up"])?;
        for k in 1..=nodes {
            let node = c.add_ns(&format!("node{k}"))?;
            let port = format!("n{k}");
            ip(&[
                "-n", &fabric, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &node,
            ])?;
            ip(&["-n", &fabric, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &node, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &node,
                "addr",
                "add",
                &format!("{}/24", node_addr(k)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &node, "route", "add", "default", "via", OUTSIDE])?;
            for m in (1..=nodes).filter(|m| *m != k) {
                ip(&[
                    "-n",
                    &node,
                    "route",
                    "add",
                    &pod_cidr(m),
                    "via",
                    &node_addr(m),
                ])?;
            }
            say(&format!(
                "node{k} {node}: eth0 {}, pod CIDR {}, routes to the other nodes' pods",
                node_addr(k),
                pod_cidr(k)
            ));
            c.start_daemon(k)?;
        }
        Ok(c)
    }

    fn add_ns(&mut self, tag: &str) -> Result<String> {
        let ns = format!("{}-{tag}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn node_ns(&self, k: usize) -> String {
        format!("{}-node{k}", self.prefix)
    }

    fn node_dir(&self, k: usize) -> PathBuf {
        self.dir.join(format!("node{k}"))
    }

    fn start_daemon(&mut self, k: usize) -> Result<()> {
        let dir = self.node_dir(k);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let child = command_in(&self.node_ns(k), &self.binary)?
            .args(netns::daemon_args(&dir))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.daemons.push(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.join("bridgenet.sock").exists()
            || !Command::new(&self.binary)
                .arg("--socket")
                .arg(dir.join("bridgenet.sock"))
                .args(["network", "ls"])
                .output()
                .is_ok_and(|o| o.status.success())
        {
            if Instant::now() > deadline {
                bail!(
                    "node{k}'s daemon did not answer; its log:\n{}",
                    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The CNI configuration of node `k`, as its kubelet's config directory would hold it.
    fn conf(&self, k: usize, ports: Value) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "k8s-pod-network",
            "type": "bridgenet-cni",
            "network": "pods",
            "subnet": pod_cidr(k),
            "nonMasqueradeCIDRs": ["198.18.16.0/20", "198.18.0.0/28"],
            "socket": self.node_dir(k).join("bridgenet.sock"),
            "runtimeConfig": {"portMappings": ports},
        })
    }

    /// A pod on node `k`: a namespace, then `bridgenet-cni` ADD as a runtime runs it; its
    /// namespace and address.
    fn pod(&mut self, k: usize, name: &str, ports: Value) -> Result<(String, String)> {
        let ns = self.add_ns(name)?;
        let conf = self.conf(k, ports);
        println!(
            "\n  $ CNI_COMMAND=ADD CNI_CONTAINERID={name} CNI_IFNAME=eth0 CNI_NETNS=/run/netns/{ns} \
             bridgenet-cni < node{k}.conf"
        );
        let mut child = Command::new(&self.cni)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", name)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", format!("/run/netns/{ns}"))
            .env("CNI_PATH", self.cni.parent().unwrap_or(Path::new(".")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("running bridgenet-cni")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let result: Value =
            serde_json::from_slice(&out.stdout).context("bridgenet-cni's answer")?;
        if !out.status.success() {
            bail!("bridgenet-cni ADD {name}: {result}");
        }
        let address = result["ips"][0]["address"].as_str().unwrap_or_default();
        println!("  {{\"ips\": [{{\"address\": \"{address}\", ...}}], ...}}");
        let ip = address.split('/').next().unwrap_or_default().to_owned();
        Ok((ns, ip))
    }

    fn show(&mut self) -> Result<()> {
        step("Pods: a1 and a2 on node1, b1 on node2 with hostPort 30080 -> 80.");
        let (a1, a1_ip) = self.pod(1, "a1", json!([]))?;
        let (a2, a2_ip) = self.pod(1, "a2", json!([]))?;
        let ports = json!([{"hostPort": 30080, "containerPort": 80, "protocol": "tcp"}]);
        let (b1, b1_ip) = self.pod(2, "b1", ports)?;
        let fabric = format!("{}-fabric", self.prefix);
        serve(&a2, "0.0.0.0:7000", "a2")?;
        serve(&b1, "0.0.0.0:7000", "b1")?;
        serve(&b1, "0.0.0.0:80", "b1")?;
        serve(&fabric, &format!("{OUTSIDE}:7000"), "outside")?;

        step(&format!(
            "1. a1 ({a1_ip}) -> a2 on the same node ({a2_ip}:7000)."
        ));
        say(&format!(
            "   a1 got: {}",
            request(&a1, &format!("{a2_ip}:7000"))?
        ));
        step(&format!(
            "2. a1 -> b1 on node2 ({b1_ip}:7000), routed between the nodes."
        ));
        say(&format!(
            "   a1 got: {}",
            request(&a1, &format!("{b1_ip}:7000"))?
        ));
        say("   -> b1 saw a1's own address: the pod CIDR is in nonMasqueradeCIDRs.");
        step(&format!("3. a1 -> the outside ({OUTSIDE}:7000)."));
        say(&format!(
            "   a1 got: {}",
            request(&a1, &format!("{OUTSIDE}:7000"))?
        ));
        say(&format!(
            "   -> masqueraded with node1's address {}.",
            node_addr(1)
        ));
        let host_port = format!("{}:30080", node_addr(2));
        step(&format!(
            "4. The outside -> b1's hostPort on node2 ({host_port})."
        ));
        say(&format!(
            "   outside got: {}",
            request(&fabric, &host_port)?
        ));
        step(&format!("5. a1 on node1 -> b1's hostPort ({host_port})."));
        say(&format!("   a1 got: {}", request(&a1, &host_port)?));
        say("   -> the client's address is kept both times.");
        step(&format!(
            "6. The outside -> a1 directly ({a1_ip}:7000), with a route to it."
        ));
        ip(&[
            "-n",
            &fabric,
            "route",
            "add",
            &pod_cidr(1),
            "via",
            &node_addr(1),
        ])?;
        match request_timeout(&fabric, &format!("{a1_ip}:7000"), Duration::from_secs(2)) {
            Ok(answer) => say(&format!("   UNEXPECTED: {answer}")),
            Err(err) => say(&format!(
                "   -> blocked ({err:#}): drop_endpoint_direct on node1."
            )),
        }
        step("Each node's endpoints and ports (bridgenet endpoint ls; port ls):");
        for k in 1..=self.nodes {
            for args in [&["endpoint", "ls"][..], &["port", "ls"][..]] {
                let out = Command::new(&self.binary)
                    .arg("--socket")
                    .arg(self.node_dir(k).join("bridgenet.sock"))
                    .args(args)
                    .output()?;
                println!("\n  node{k} $ bridgenet {}", args.join(" "));
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    println!("  {line}");
                }
            }
        }
        println!(
            "\ncluster: up. Try it from another shell, e.g.\n  \
             BRIDGENET_SOCKET={} {} endpoint ls\n  \
             ip netns exec {a1} nc {b1_ip} 7000\n\
             Ctrl-C removes everything.",
            self.node_dir(1).join("bridgenet.sock").display(),
            self.binary.display(),
        );
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for daemon in &mut self.daemons {
            // SAFETY: SIGTERM to a daemon this cluster started.
            unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
            let _ = daemon.wait();
        }
        for k in 1..=self.daemons.len() {
            let dir = self.node_dir(k);
            let mut args = netns::daemon_args(&dir);
            args.push("--cleanup".into());
            match command_in(&self.node_ns(k), &self.binary)
                .and_then(|mut cmd| cmd.args(&args).output().context("running daemon --cleanup"))
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "cluster: node{k} cleanup: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(err) => eprintln!("cluster: node{k} cleanup: {err:#}"),
            }
            if let Ok(c) = std::ffi::CString::new(dir.join("bpffs").as_os_str().as_encoded_bytes())
            {
                // SAFETY: a valid C string; a failure (not mounted) is fine.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("cluster: removed");
    }
}
