//! One topology for one variant:
//!
//! client (eth0 198.18.0.1) --veth-- (uplink0 198.18.0.2) host --bridge-- (eth0 172.17.0.2) endpoint
//!         2001:db8:ff::1                    2001:db8:ff::2                   2001:db8:17::2
//!
//! The IPv6 addresses are there in the labs of the variants measured over IPv6 too
//! (`Variant::ipv6`); the other labs are IPv4 only.
//! The host namespace holds the bridge and the variant's NAT: bridgenet's daemon, Docker's
//! iptables rules (nft or legacy), netavark-style nftables, the reference CNI plugins' rules,
//! or nothing (plain routing: the client reaches 172.17.0.2 directly). Every lab is built fresh, so no variant inherits
//! another's netfilter hooks or conntrack entries. Dropping it removes all of it.
use std::{
    fs::File,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    cni::Pod,
    load::{self, Servers},
    rulesets::{self, Family, Mapping},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const ENDPOINT: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
pub const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 2);
pub const ENDPOINT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x17, 0, 0, 0, 0, 2);
/// Published ports: UDP echo, iperf3, then the measured range (host 10000+i -> 20000+i).
pub const UDP_PORT: u16 = 9999;
pub const IPERF_PORT: u16 = 5201;
pub const IPERF_MASQ_PORT: u16 = 5202;
/// The client's iperf3 server on its IPv6 address (one server runs one test at a time).
pub const IPERF_MASQ_PORT6: u16 = 5203;
const HOST_BASE: u16 = 10_000;
const CONTAINER_BASE: u16 = 20_000;
/// Namespaces of the bench start with this, then the pid of the run.
pub const PREFIX: &str = "bn-bench-";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    Bridgenet,
    IptablesNft,
    IptablesLegacy,
    Netavark,
    /// The reference CNI plugins `bridge` + `portmap`, as Kubernetes nodes run them.
    CniReference,
    Plain,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::Bridgenet,
        Variant::IptablesNft,
        Variant::IptablesLegacy,
        Variant::Netavark,
        Variant::CniReference,
        Variant::Plain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Bridgenet => "bridgenet",
            Variant::IptablesNft => "iptables-nft",
            Variant::IptablesLegacy => "iptables-legacy",
            Variant::Netavark => "nftables (netavark)",
            Variant::CniReference => "CNI bridge + portmap",
            Variant::Plain => "routing, no NAT",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Variant::Bridgenet => "bn",
            Variant::IptablesNft => "nft",
            Variant::IptablesLegacy => "leg",
            Variant::Netavark => "nv",
            Variant::CniReference => "cni",
            Variant::Plain => "pl",
        }
    }

    /// Whether the variant is also measured over IPv6: bridgenet against Docker's ip6tables
    /// rules (its default backend) and plain IPv6 routing.
    pub fn ipv6(self) -> bool {
        matches!(
            self,
            Variant::Bridgenet | Variant::IptablesNft | Variant::Plain
        )
    }

    /// The restore tool of an iptables variant.
    pub fn iptables(self) -> Option<&'static str> {
        match self {
            Variant::IptablesNft => Some("iptables-nft"),
            Variant::IptablesLegacy => Some("iptables-legacy"),
            _ => None,
        }
    }
}

/// The most mappings the variant is measured with: `portmap` rewrites its rules with one
/// `iptables-restore` per ADD, which took over a minute for 1,000 mappings here.
pub const CNI_MOST_MAPPINGS: u32 = 1_000;

/// The mappings with `n` measured TCP ports: UDP echo and iperf3 first, the measured port
/// (host 10000+n-1) last, so in the iptables variants it is the last rule of its chain.
pub fn mappings(n: u32) -> Vec<Mapping> {
    let mut all = vec![
        Mapping {
            proto: "udp",
            host: UDP_PORT,
            container: UDP_PORT,
        },
        Mapping {
            proto: "tcp",
            host: IPERF_PORT,
            container: IPERF_PORT,
        },
    ];
    all.extend((0..n as u16).map(|i| Mapping {
        proto: "tcp",
        host: HOST_BASE + i,
        container: CONTAINER_BASE + i,
    }));
    all
}

/// The endpoint's port that serves the measurement at `n` mappings.
pub fn container_port(n: u32) -> u16 {
    CONTAINER_BASE + n as u16 - 1
}

pub struct Lab {
    pub variant: Variant,
    prefix: String,
    binary: PathBuf,
    dir: PathBuf,
    namespaces: Vec<String>,
    daemon: Option<Child>,
    children: Vec<Child>,
    servers: Option<Servers>,
    /// The pod of the CNI variant.
    pod: Option<Pod>,
    /// TCP ports published so far (bridgenet adds; the others rewrite the whole ruleset).
    published: u32,
    /// Whether the lab is dual stack.
    pub ipv6: bool,
}

impl Lab {
    /// Builds the namespaces, the bridge (or bridgenet's daemon and endpoint) and the servers;
    /// dual stack when `ipv6` (for a variant that `Variant::ipv6` names).
    pub fn new(
        variant: Variant,
        id: &str,
        binary: &Path,
        counts: &[u32],
        ipv6: bool,
    ) -> Result<Self> {
        let ipv6 = ipv6 && variant.ipv6();
        let prefix = format!("{PREFIX}{}-{id}{}", std::process::id(), variant.tag());
        let mut lab = Self {
            variant,
            dir: std::env::temp_dir().join(&prefix),
            prefix,
            binary: binary.to_owned(),
            namespaces: Vec::new(),
            daemon: None,
            children: Vec::new(),
            servers: None,
            pod: None,
            published: 0,
            ipv6,
        };
        let (client, host) = (lab.ns("client"), lab.ns("host"));
        crate::netns::outside_and_host(&client, &host, &mut lab.namespaces)?;
        // Plain routing reaches the endpoint directly.
        ip(&[
            "-n",
            &client,
            "route",
            "add",
            rulesets::SUBNET,
            "via",
            "198.18.0.2",
        ])?;
        if ipv6 {
            lab.ipv6_outside(&client, &host)?;
        }
        // Many short connections from one address (over IPv6 too): reuse TIME_WAIT ports, use
        // them all.
        lab.sysctl(&client, "net.ipv4.tcp_tw_reuse", "1")?;
        lab.sysctl(&client, "net.ipv4.ip_local_port_range", "1024 65000")?;
        lab.sysctl(&host, "net.ipv4.ip_forward", "1")?;
        let endpoint = lab.ns("ep");
        if variant == Variant::Bridgenet {
            std::fs::create_dir_all(&lab.dir)?;
            lab.start_daemon()?;
            let network = if ipv6 {
                // The default network as a dual-stack one, as `dockerd --ipv6
                // --fixed-cidr-v6` makes it.
                lab.cli(&["network", "rm", "bridge"])?;
                lab.cli(&[
                    "network",
                    "create",
                    "bench",
                    "--ipv6",
                    "--subnet",
                    rulesets::SUBNET,
                    "--subnet",
                    rulesets::SUBNET6,
                ])?;
                "bench"
            } else {
                "bridge"
            };
            lab.cli(&[
                "endpoint",
                "create",
                "ep",
                "--network",
                network,
                "--netns",
                &endpoint,
                "-p",
                &format!("{UDP_PORT}:{UDP_PORT}/udp"),
                "-p",
                &format!("{IPERF_PORT}:{IPERF_PORT}"),
            ])?;
            let listing = lab.cli(&["endpoint", "ls", "--json"])?;
            let mut addresses = vec![IpAddr::V4(ENDPOINT)];
            if ipv6 {
                addresses.push(IpAddr::V6(ENDPOINT6));
            }
            for address in addresses {
                if !listing.contains(&format!("\"{address}\"")) {
                    bail!("bridgenet did not give the endpoint {address}: {listing}");
                }
            }
        } else if variant == Variant::CniReference {
            ip(&["netns", "add", &endpoint])?;
            lab.namespaces.push(endpoint.clone());
            ip(&["-n", &endpoint, "link", "set", "lo", "up"])?;
            std::fs::create_dir_all(&lab.dir)?;
            lab.pod = Some(Pod::attach(&host, &endpoint, &lab.dir.join("cni"))?);
        } else {
            let br = lab.bridge();
            ip(&["netns", "add", &endpoint])?;
            lab.namespaces.push(endpoint.clone());
            ip(&["-n", &endpoint, "link", "set", "lo", "up"])?;
            ip(&["-n", &host, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", &host, "addr", "add", "172.17.0.1/16", "dev", br])?;
            ip(&["-n", &host, "link", "set", br, "up"])?;
            ip(&[
                "-n", &endpoint, "link", "add", "eth0", "type", "veth", "peer", "name", "veth0",
                "netns", &host,
            ])?;
            ip(&["-n", &host, "link", "set", "veth0", "master", br, "up"])?;
            ip(&[
                "-n",
                &endpoint,
                "addr",
                "add",
                "172.17.0.2/16",
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &endpoint, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &endpoint,
                "route",
                "add",
                "default",
                "via",
                "172.17.0.1",
            ])?;
            if ipv6 {
                for (ns, dev, addr) in [
                    (&host, br, "2001:db8:17::1/64"),
                    (&endpoint, "eth0", "2001:db8:17::2/64"),
                ] {
                    ip(&["-n", ns, "addr", "add", addr, "dev", dev, "nodad"])?;
                }
                ip(&[
                    "-n",
                    &endpoint,
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    "2001:db8:17::1",
                ])?;
            }
        }
        let ports: Vec<u16> = counts.iter().map(|n| container_port(*n)).collect();
        // IPv6 is measured at one mapping.
        let ports6 = if ipv6 {
            vec![container_port(1)]
        } else {
            Vec::new()
        };
        lab.servers = Some(Servers::start(&endpoint, &ports, &ports6, UDP_PORT, 8)?);
        // iperf3 listens on both families.
        lab.spawn_in(&endpoint, "iperf3", &["-s", "-p", &IPERF_PORT.to_string()])?;
        lab.spawn_in(
            &client,
            "iperf3",
            &[
                "-s",
                "-B",
                &CLIENT.to_string(),
                "-p",
                &IPERF_MASQ_PORT.to_string(),
            ],
        )?;
        if ipv6 {
            lab.spawn_in(
                &client,
                "iperf3",
                &[
                    "-s",
                    "-B",
                    &CLIENT6.to_string(),
                    "-p",
                    &IPERF_MASQ_PORT6.to_string(),
                ],
            )?;
            // Neighbour discovery and, for bridgenet, the endpoint's address: ready before
            // anything is timed.
            lab.publish(1)?;
            load::reachable(&client, lab.target6(1), Duration::from_secs(10))?;
        }
        Ok(lab)
    }

    /// IPv6 between the client and the host, as `netns::outside_and_host` sets up IPv4; the
    /// client routes the endpoints' IPv6 subnet through the host (plain routing).
    fn ipv6_outside(&self, client: &str, host: &str) -> Result<()> {
        ip(&[
            "-n",
            client,
            "addr",
            "add",
            "2001:db8:ff::1/64",
            "dev",
            "eth0",
            "nodad",
        ])?;
        ip(&[
            "-n",
            host,
            "addr",
            "add",
            "2001:db8:ff::2/64",
            "dev",
            "uplink0",
            "nodad",
        ])?;
        ip(&[
            "-n",
            host,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:ff::1",
        ])?;
        ip(&[
            "-n",
            client,
            "-6",
            "route",
            "add",
            rulesets::SUBNET6,
            "via",
            "2001:db8:ff::2",
        ])?;
        self.sysctl(host, "net.ipv6.conf.all.forwarding", "1")
    }

    /// The pid of bridgenet's daemon, in its variant.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    pub fn ns(&self, tag: &str) -> String {
        format!("{}-{tag}", self.prefix)
    }

    fn bridge(&self) -> &'static str {
        match self.variant {
            Variant::Netavark => "podman0",
            _ => "docker0",
        }
    }

    /// Where the client sends its connections when `n` ports are published.
    pub fn target(&self, n: u32) -> SocketAddr {
        match self.variant {
            Variant::Plain => (ENDPOINT, container_port(n)).into(),
            _ => (HOST, HOST_BASE + n as u16 - 1).into(),
        }
    }

    /// `target` over IPv6.
    pub fn target6(&self, n: u32) -> SocketAddr {
        match self.variant {
            Variant::Plain => (ENDPOINT6, container_port(n)).into(),
            _ => (HOST6, HOST_BASE + n as u16 - 1).into(),
        }
    }

    /// Where the client sends UDP and iperf3 traffic.
    pub fn front(&self) -> Ipv4Addr {
        match self.variant {
            Variant::Plain => ENDPOINT,
            _ => HOST,
        }
    }

    /// `front` over IPv6.
    pub fn front6(&self) -> Ipv6Addr {
        match self.variant {
            Variant::Plain => ENDPOINT6,
            _ => HOST6,
        }
    }

    /// Publishes `n` TCP ports (and the UDP and iperf3 ports).
    pub fn publish(&mut self, n: u32) -> Result<()> {
        let host = self.ns("host");
        match self.variant {
            Variant::Bridgenet => {
                if n > self.published {
                    let (a, b) = (self.published as u16, n as u16 - 1);
                    let spec = format!(
                        "{}-{}:{}-{}",
                        HOST_BASE + a,
                        HOST_BASE + b,
                        CONTAINER_BASE + a,
                        CONTAINER_BASE + b
                    );
                    self.cli(&["port", "publish", "ep", &spec])?;
                }
            }
            Variant::IptablesNft | Variant::IptablesLegacy => {
                let iptables = self.variant.iptables().unwrap();
                let mut families = vec![Family::V4];
                if self.ipv6 {
                    families.push(Family::V6);
                }
                for family in families {
                    let tool = format!("{}-restore", family.tool(iptables));
                    let rules = rulesets::docker_restore(self.bridge(), &mappings(n), family);
                    self.stdin_in(&host, &tool, &[], &rules)?;
                }
            }
            Variant::Netavark => {
                let rules = rulesets::netavark_nft(self.bridge(), &mappings(n));
                self.stdin_in(&host, "nft", &["-f", "-"], &rules)?;
            }
            Variant::CniReference => {
                let previous = if self.published > 0 {
                    mappings(self.published)
                } else {
                    Vec::new()
                };
                let pod = self.pod.as_ref().expect("the CNI variant has a pod");
                pod.map_ports(&previous, &mappings(n))?;
            }
            Variant::Plain => {}
        }
        self.published = n;
        Ok(())
    }

    /// A command in namespace `ns` (the network namespace only: `setns` before exec).
    pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        crate::netns::command_in(ns, program)
    }

    pub fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<String> {
        checked(
            Self::command_in(ns, program)?
                .args(args)
                .output()
                .with_context(|| format!("running {program}"))?,
            program,
            args,
        )
    }

    fn stdin_in(&self, ns: &str, program: &str, args: &[&str], input: &str) -> Result<String> {
        let mut child = Self::command_in(ns, program)?
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {program}"))?;
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
        checked(child.wait_with_output()?, program, args)
    }

    fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        Self::run_in(ns, "sysctl", &["-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    fn spawn_in(&mut self, ns: &str, program: &str, args: &[&str]) -> Result<()> {
        let child = Self::command_in(ns, program)?
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        self.children.push(child);
        Ok(())
    }

    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    fn daemon_args(&self) -> Vec<String> {
        let mut args = crate::netns::daemon_args(&self.dir);
        args.extend(["--uplink".into(), "uplink0".into()]);
        args
    }

    fn start_daemon(&mut self) -> Result<()> {
        let log = File::create(self.dir.join("daemon.log"))?;
        self.daemon = Some(
            Self::command_in(&self.ns("host"), &self.binary)?
                .args(self.daemon_args())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.cli(&["network", "ls"]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not answer; its log:\n{}",
                    std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// One request to the daemon's API (see `unix_request`); fails unless the answer is 2xx.
    pub fn api(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Result<()> {
        unix_request(&self.dir.join("bridgenet.sock"), method, path, body)
    }

    /// `bridgenet --socket SOCK ARGS`: its stdout, or its stderr as the error.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.binary)
            .arg("--socket")
            .arg(self.dir.join("bridgenet.sock"))
            .args(args)
            .output()?;
        checked(out, "bridgenet", args)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The servers hold sockets of the endpoint's namespace: close them first.
        self.servers = None;
        for mut child in self.children.drain(..) {
            // SAFETY: a signal to a child this lab started.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
        }
        if let Some(mut daemon) = self.daemon.take() {
            // SAFETY: SIGTERM to the daemon this lab started.
            unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
            let _ = daemon.wait();
        }
        if self.variant == Variant::Bridgenet {
            // Endpoints, their namespaces, bridges, pins and the bpf filesystem.
            let mut args = self.daemon_args();
            args.push("--cleanup".into());
            match Self::command_in(&self.ns("host"), &self.binary).and_then(|mut c| {
                c.args(&args);
                Ok(c.output()?)
            }) {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "bench: cleanup: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(err) => eprintln!("bench: cleanup: {err:#}"),
            }
            let ep = self.ns("ep");
            if Path::new("/run/netns").join(&ep).exists() {
                let _ = ip(&["netns", "del", &ep]);
            }
            if let Ok(c) = std::ffi::CString::new(self.bpffs().as_os_str().as_encoded_bytes()) {
                // SAFETY: a valid C string; failing (not mounted) is fine.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
        // bridgenet's state, or host-local's leases of the CNI variant.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP request on a Unix socket, as plainly as a client can send it (HTTP/1.1, the
/// connection closed after the answer); fails unless the answer is 2xx.
pub fn unix_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<()> {
    use std::io::Read as _;
    let body = body.map(ToString::to_string).unwrap_or_default();
    let mut conn = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    match answer.split(' ').nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        _ => bail!("{method} {path}: {answer}"),
    }
}

/// `program ARGS`' stdout when it succeeded, else its stderr as the error.
pub fn checked(out: Output, program: &str, args: &[&str]) -> Result<String> {
    if !out.status.success() {
        let mut shown = args.join(" ");
        shown.truncate(200);
        bail!(
            "{program} {shown}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub use crate::netns::ip;

/// Removes the namespaces of bench runs whose process is gone.
pub fn remove_leftovers() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if of_dead_run(&name) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// Whether `name` (`PREFIX`, the run's pid, then anything) belongs to a run whose process is
/// gone.
pub fn of_dead_run(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let pid = rest.split('-').next().unwrap_or("");
    !pid.is_empty() && !Path::new("/proc").join(pid).exists()
}
