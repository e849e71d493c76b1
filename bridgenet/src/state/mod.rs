//! What the daemon manages (networks, endpoints, published ports) and the crash-safe store that
//! keeps it across restarts. IPAM is derived from it: a network's taken addresses are its
//! gateway and its endpoints' addresses.
pub mod filter;
pub mod ipam;
pub mod ports;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub use ports::{PortMapping, PortSpec, Proto};

/// The store's schema version, written in every store. Stores from before versions (no
/// `version`) have the same shape as version 1: they are read as it and rewritten.
pub const SCHEMA_VERSION: u32 = 1;

/// A bridge network, Docker's `docker network create -d bridge`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: String,
    /// None on an IPv6-only network (`--ipv4=false`), which then has `subnet6`. Left out
    /// when None, so that other stores are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// On the bridge: in `subnet`, its first host unless given; None with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The Linux bridge.
    pub bridge: String,
    /// Inter-endpoint traffic on the bridge (Docker's enable_icc).
    pub icc: bool,
    /// No traffic to or from outside the network.
    pub internal: bool,
    /// Traffic to the outside leaves with the uplink's address.
    pub masquerade: bool,
    /// How the network meets the outside (Docker's `gateway_mode_ipv4`). Stores from before
    /// gateway modes have none: `nat`, what those networks did. Left out when `nat`, so that
    /// such stores stay readable by older builds.
    #[serde(default, skip_serializing_if = "GatewayMode::is_nat")]
    pub gateway_mode: GatewayMode,
    /// The bridge existed before the network (Docker's `-b`): it is left as it was found when
    /// the network goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<Adopted>,
    /// The MTU of the bridge and of every veth pair; None: the kernel's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Remote prefixes its endpoints reach with their own addresses and that reach them
    /// directly (CNI's `nonMasqueradeCIDRs`: a cluster's pod and node CIDRs), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_masquerade: Vec<IpNet>,
    /// The network's IPv6 subnet (`--ipv6 --subnet`), dual stack with `subnet`, or alone on an
    /// IPv6-only network. Left out when None, so that IPv4-only stores are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// The IPv6 gateway, on the bridge: in `subnet6`, its first address unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// How the network's IPv6 meets the outside (Docker's `gateway_mode_ipv6`): `nat`,
    /// `nat-unprotected` or `routed`. Left out when `nat`.
    #[serde(default, skip_serializing_if = "GatewayMode::is_nat")]
    pub gateway_mode6: GatewayMode,
}

impl Network {
    /// What is wrong with the network's IPv4 side, as a store problem.
    fn problem4(&self) -> Option<String> {
        match (self.subnet, self.gateway) {
            (None, None) if self.subnet6.is_some() => None,
            (None, None) => Some("has neither an IPv4 nor an IPv6 subnet".to_owned()),
            (Some(s), Some(g)) => {
                if let Some((range, what)) = ipam::reserved(&s) {
                    Some(format!("has subnet {s} in {range} ({what})"))
                } else if !ipam::is_host(&s, g) {
                    Some(format!("has gateway {g} outside {s}"))
                } else {
                    None
                }
            }
            (Some(s), None) => Some(format!("has subnet {s} but no gateway")),
            (None, Some(g)) => Some(format!("has gateway {g} but no subnet")),
        }
    }

    /// What is wrong with `ip` as the IPv4 address of an endpoint of this network (0.0.0.0:
    /// none, which only an IPv6-only network's endpoints have).
    fn ip_problem(&self, ip: Ipv4Addr) -> Option<String> {
        match (self.subnet, self.gateway) {
            (None, _) if ip.is_unspecified() => None,
            (None, _) => Some(format!(
                "has address {ip}, but network {} has no IPv4 subnet",
                self.name
            )),
            (Some(s), g) if !ipam::is_host(&s, ip) || Some(ip) == g => {
                Some(format!("has address {ip}, not an endpoint's in {s}"))
            }
            (Some(_), _) => None,
        }
    }

    /// The network's subnets, both families, as listings show them.
    pub fn subnets(&self) -> Vec<String> {
        let v4 = self.subnet.map(|s| s.to_string());
        v4.into_iter()
            .chain(self.subnet6.map(|s| s.to_string()))
            .collect()
    }

    /// Its gateways, both families, as listings show them.
    pub fn gateways(&self) -> Vec<String> {
        let v4 = self.gateway.map(|g| g.to_string());
        v4.into_iter()
            .chain(self.gateway6.map(|g| g.to_string()))
            .collect()
    }

    /// What is wrong with the network's IPv6 side, as a store problem.
    fn problem6(&self) -> Option<String> {
        match (self.subnet6, self.gateway6) {
            (None, None) => None,
            (Some(s), Some(g)) => {
                if let Some((range, what)) = ipam::reserved6(&s) {
                    Some(format!("has subnet6 {s} in {range} ({what})"))
                } else if !ipam::is_host6(&s, g) {
                    Some(format!("has gateway6 {g} outside {s}"))
                } else {
                    None
                }
            }
            (Some(s), None) => Some(format!("has subnet6 {s} but no gateway6")),
            (None, Some(g)) => Some(format!("has gateway6 {g} but no subnet6")),
        }
    }

    /// What is wrong with `ip6` as the IPv6 address of an endpoint of this network.
    fn ip6_problem(&self, ip6: Option<Ipv6Addr>) -> Option<String> {
        match (self.subnet6, ip6) {
            (None, None) | (Some(_), None) => None,
            (None, Some(a)) => Some(format!(
                "has IPv6 address {a}, but network {} has no IPv6 subnet",
                self.name
            )),
            (Some(s), Some(a)) if !ipam::is_host6(&s, a) || Some(a) == self.gateway6 => {
                Some(format!("has address {a}, not an endpoint's in {s}"))
            }
            (Some(_), Some(_)) => None,
        }
    }
}

/// What bridgenet changed on a bridge it adopted, to undo on `network rm` and `--cleanup`
/// (besides its program on the bridge and its endpoints' veths).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adopted {
    /// The bridge had no address: bridgenet added the gateway's.
    pub address_added: bool,
    /// The bridge had no address in the network's IPv6 subnet: bridgenet added the IPv6
    /// gateway's. Left out when false, so that IPv4-only stores are unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub address6_added: bool,
}

/// A network's gateway mode, as Docker 28's `com.docker.network.bridge.gateway_mode_ipv4`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayMode {
    /// Masquerade out; only published ports (on host addresses) in.
    #[default]
    Nat,
    /// As nat, and traffic routed straight to an endpoint reaches any of its ports.
    NatUnprotected,
    /// No masquerade: endpoints' traffic leaves with their own address, and traffic routed to
    /// them reaches their published ports only, at the endpoint's port.
    Routed,
    /// No way in or out (an internal network whose bridge has no address).
    Isolated,
}

impl GatewayMode {
    pub const NAMES: &str = "nat, nat-unprotected, routed or isolated";

    pub fn is_nat(&self) -> bool {
        *self == GatewayMode::Nat
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            GatewayMode::Nat => "nat",
            GatewayMode::NatUnprotected => "nat-unprotected",
            GatewayMode::Routed => "routed",
            GatewayMode::Isolated => "isolated",
        }
    }
}

impl std::fmt::Display for GatewayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GatewayMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            GatewayMode::Nat,
            GatewayMode::NatUnprotected,
            GatewayMode::Routed,
            GatewayMode::Isolated,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| format!("invalid gateway mode {s:?} (expected {})", Self::NAMES))
    }
}

/// How an endpoint is connected, Docker's `--network` modes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A veth pair to the network's bridge (Docker's default).
    #[default]
    Bridge,
    /// A namespace with lo only.
    None,
    /// Shares the namespace (and address) of another endpoint, named here.
    Container(String),
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Bridge => f.write_str("bridge"),
            Mode::None => f.write_str("none"),
            Mode::Container(ep) => write!(f, "container:{ep}"),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bridge" => Ok(Mode::Bridge),
            "none" => Ok(Mode::None),
            _ => match s.strip_prefix("container:") {
                Some(ep) if !ep.is_empty() => Ok(Mode::Container(ep.to_owned())),
                _ => Err(format!(
                    "invalid mode {s:?} (expected bridge, none or container:ENDPOINT)"
                )),
            },
        }
    }
}

/// An endpoint: one network namespace attached to one network with a veth pair (or, in the
/// other modes, lo only or another endpoint's namespace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub name: String,
    #[serde(default)]
    pub mode: Mode,
    /// Empty in mode none.
    pub network: String,
    /// The namespace as given: a name under /run/netns or a path; empty when the container
    /// runtime moves the container end itself (`for_runtime`).
    pub netns: String,
    /// Whether bridgenet created the namespace (and removes it with the endpoint).
    pub netns_created: bool,
    /// 0.0.0.0 when it has none (mode none, an IPv6-only network); the shared endpoint's in
    /// mode container.
    pub ip: Ipv4Addr,
    pub mac: String,
    /// The host end of the veth pair, on the network's bridge; the other end is eth0 in netns.
    /// Empty in the modes without a veth pair.
    pub veth: String,
    /// `--expose`d ports, which `-P` publishes.
    pub exposed: Vec<(u16, Proto)>,
    pub ports: Vec<PortMapping>,
    /// The CNI attachment it was made for (`bridgenet-cni`); absent for the CLI's and
    /// Docker's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniAttachment>,
    /// Its IPv6 address when its network has an IPv6 subnet (the shared endpoint's in mode
    /// container; none in mode none). Its interface also has the link-local address its MAC
    /// gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
}

/// A CNI attachment: the runtime's container ID and the interface's name in the container's
/// namespace (the spec's key for everything ADD made).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniAttachment {
    pub container_id: String,
    pub ifname: String,
}

/// The interface name of an endpoint in its namespace when no CNI runtime named it.
pub const DEFAULT_IFNAME: &str = "eth0";

impl Endpoint {
    /// The name of its interface inside its namespace.
    pub fn ifname(&self) -> &str {
        self.cni
            .as_ref()
            .map_or(DEFAULT_IFNAME, |c| c.ifname.as_str())
    }

    /// The MAC of its interface: the one recorded, else the one derived from its address.
    pub fn mac_bytes(&self) -> [u8; 6] {
        ipam::parse_mac(&self.mac).unwrap_or_else(|| ipam::endpoint_mac(self.ip, self.ip6))
    }

    /// Its IPv4 address, if it has one.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        (!self.ip.is_unspecified()).then_some(self.ip)
    }

    /// Its addresses, both families, as listings show them.
    pub fn addresses(&self) -> Vec<String> {
        let v4 = self.ipv4().map(|ip| ip.to_string());
        v4.into_iter()
            .chain(self.ip6.map(|ip6| ip6.to_string()))
            .collect()
    }

    /// The host end of its veth pair, in mode bridge.
    pub fn veth(&self) -> Option<&str> {
        (self.mode == Mode::Bridge).then_some(self.veth.as_str())
    }

    /// Whether the container end of its veth pair was left for the container runtime to move
    /// (Docker's driver): no namespace of its own.
    pub fn for_runtime(&self) -> bool {
        self.mode == Mode::Bridge && self.netns.is_empty()
    }

    /// The namespace file.
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }
}

/// A name is under /run/netns; anything with a slash is a path.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/run/netns").join(netns)
    }
}

/// Everything the daemon manages. Unknown fields are refused: they come from a newer or
/// foreign writer whose meaning this build cannot keep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// [`SCHEMA_VERSION`]; 0 in stores from before versions.
    #[serde(default)]
    pub version: u32,
    pub networks: BTreeMap<String, Network>,
    pub endpoints: BTreeMap<String, Endpoint>,
    /// User filter rules (absent in stores written before filters existed).
    #[serde(default)]
    pub filter: filter::Filter,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: SCHEMA_VERSION,
            networks: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            filter: filter::Filter::default(),
        }
    }
}

/// Something in a store that the daemon cannot act on, found when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The network is left out of the datapath (and so are its endpoints).
    Network(String, String),
    /// The endpoint is left out of the datapath; `endpoint rm` removes it.
    Endpoint(String, String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Network(name, why) => write!(
                f,
                "network {name} {why}: left out of the datapath (remove it, or fix the store)"
            ),
            Problem::Endpoint(name, why) => write!(
                f,
                "endpoint {name} {why}: left out of the datapath (`endpoint rm {name}` removes it)"
            ),
        }
    }
}

impl State {
    /// Every inconsistency of the store, in order; the names of the problems are left out of
    /// the datapath, the rest works.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut sound: BTreeMap<&str, &Network> = BTreeMap::new();
        for (key, n) in &self.networks {
            let why = if *key != n.name {
                Some(format!("is stored under the name {key}"))
            } else if let Some(why) = n.problem4() {
                Some(why)
            } else if let Some(why) = n.problem6() {
                Some(why)
            } else {
                sound
                    .values()
                    .find(|o| {
                        matches!((o.subnet, n.subnet), (Some(a), Some(b))
                                if ipam::overlaps(&a, &b))
                            || o.bridge == n.bridge
                            || matches!((o.subnet6, n.subnet6), (Some(a), Some(b))
                                if ipam::overlaps6(&a, &b))
                    })
                    .map(|o| format!("shares its subnet or bridge with network {}", o.name))
            };
            match why {
                Some(why) => problems.push(Problem::Network(key.clone(), why)),
                None => {
                    sound.insert(key, n);
                }
            }
        }
        let mut taken = BTreeSet::new();
        let mut taken6 = BTreeSet::new();
        let mut ports = ports::PortTable::new([], (1, 1));
        for (key, e) in &self.endpoints {
            let why = match &e.mode {
                _ if *key != e.name => Some(format!("is stored under the name {key}")),
                Mode::Bridge => match self.networks.get(&e.network) {
                    None => Some(format!(
                        "names network {}, which the store does not have",
                        e.network
                    )),
                    Some(_) if !sound.contains_key(e.network.as_str()) => {
                        Some(format!("is on network {}, which is left out", e.network))
                    }
                    Some(n) if n.ip_problem(e.ip).is_some() => n.ip_problem(e.ip),
                    Some(_)
                        if !e.ip.is_unspecified()
                            && taken.contains(&(e.network.as_str(), e.ip)) =>
                    {
                        Some(format!("has address {}, which another endpoint has", e.ip))
                    }
                    Some(n) if n.ip6_problem(e.ip6).is_some() => n.ip6_problem(e.ip6),
                    Some(_)
                        if e.ip6
                            .is_some_and(|a| taken6.contains(&(e.network.as_str(), a))) =>
                    {
                        Some(format!(
                            "has address {}, which another endpoint has",
                            e.ip6.unwrap_or(Ipv6Addr::UNSPECIFIED)
                        ))
                    }
                    Some(_) => e
                        .ports
                        .iter()
                        .find(|m| ports.clash(m).is_some())
                        .map(|m| format!("publishes {m}, which another endpoint publishes")),
                },
                Mode::None => None,
                Mode::Container(shared) => match self.endpoints.get(shared) {
                    Some(other) if other.mode == Mode::Bridge || other.mode == Mode::None => None,
                    Some(_) => Some(format!("shares endpoint {shared}, which shares another")),
                    None => Some(format!(
                        "shares endpoint {shared}, which the store does not have"
                    )),
                },
            };
            match why {
                Some(why) => problems.push(Problem::Endpoint(key.clone(), why)),
                None if e.mode == Mode::Bridge => {
                    taken.insert((e.network.as_str(), e.ip));
                    taken6.extend(e.ip6.map(|a| (e.network.as_str(), a)));
                    e.ports.iter().for_each(|m| ports.insert(m));
                }
                None => {}
            }
        }
        problems
    }

    /// Addresses taken in `network`: its gateway and its endpoints' addresses.
    pub fn taken_addresses(&self, network: &Network) -> BTreeSet<Ipv4Addr> {
        let mut taken: BTreeSet<Ipv4Addr> = network.gateway.into_iter().collect();
        taken.extend(
            self.endpoints
                .values()
                .filter(|e| e.network == network.name && e.mode == Mode::Bridge)
                .map(|e| e.ip),
        );
        taken
    }

    /// IPv6 addresses taken in `network`: its gateway6 and its endpoints' ip6.
    pub fn taken_addresses6(&self, network: &Network) -> BTreeSet<Ipv6Addr> {
        let mut taken: BTreeSet<Ipv6Addr> = network.gateway6.into_iter().collect();
        taken.extend(
            self.endpoints
                .values()
                .filter(|e| e.network == network.name && e.mode == Mode::Bridge)
                .filter_map(|e| e.ip6),
        );
        taken
    }

    /// Every published port with its endpoint.
    pub fn mappings(&self) -> impl Iterator<Item = (&Endpoint, &PortMapping)> {
        self.endpoints
            .values()
            .flat_map(|e| e.ports.iter().map(move |m| (e, m)))
    }

    /// Where the datapath opens mapping `m` of `endpoint`: as given, except on a network in
    /// gateway mode routed, where (as with Docker) the host address and port are not used and
    /// the endpoint's own address and port are opened to routed traffic.
    pub fn opened(&self, endpoint: &Endpoint, m: &PortMapping) -> PortMapping {
        match self.networks.get(&endpoint.network) {
            Some(n) if n.gateway_mode == GatewayMode::Routed && m.host_v4().is_some() => {
                PortMapping {
                    host_ip: Some(std::net::IpAddr::V4(endpoint.ip)),
                    host_port: m.port,
                    ..*m
                }
            }
            _ => *m,
        }
    }

    /// Where the datapath opens mapping `m` of `endpoint` on IPv6, if anywhere (an endpoint
    /// with an IPv6 address, a mapping of that family): the host address and port, except on a
    /// network in IPv6 gateway mode routed, where the endpoint's own IPv6 address and port are
    /// opened to routed traffic (as `opened` for IPv4).
    pub fn opened6(&self, endpoint: &Endpoint, m: &PortMapping) -> Option<(Ipv6Addr, u16)> {
        let (ip6, host) = (endpoint.ip6?, m.host_v6()?);
        match self.networks.get(&endpoint.network) {
            Some(n) if n.gateway_mode6 == GatewayMode::Routed => Some((ip6, m.port)),
            _ => Some((host, m.host_port)),
        }
    }
}

/// The state file, replaced atomically: written to a temporary file, synced, renamed over the
/// old one, and the directory synced, so a crash leaves either the old or the new state.
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("state.json"),
        }
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// The stored state (empty when there is none). A store from before schema versions is
    /// read as version 1 (its `version` stays 0 until saved); one of a newer version, with a
    /// field this build does not know, or not JSON, is refused with one line.
    pub fn load(&self) -> Result<State> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(err) => {
                return Err(err).with_context(|| format!("reading {}", self.path.display()));
            }
        };
        Self::parse(&bytes).with_context(|| format!("reading {}", self.path.display()))
    }

    fn parse(bytes: &[u8]) -> Result<State> {
        /// The version alone first: a newer store may not have this build's shape.
        #[derive(Deserialize)]
        struct Probe {
            version: Option<u32>,
        }
        let probe: Probe = serde_json::from_slice(bytes)?;
        if let Some(version) = probe.version
            && version > SCHEMA_VERSION
        {
            bail!(
                "schema version {version}, newer than this build's {SCHEMA_VERSION}: run the \
                 bridgenet that wrote it"
            );
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|err| match err.path().to_string() {
            path if path == "." => anyhow!("{}", err.inner()),
            path => anyhow!("{path}: {}", err.inner()),
        })
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let dir = self.path.parent().context("state file has no directory")?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(state)?)?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        fs::File::open(dir)?.sync_all()?;
        Ok(())
    }

    pub fn remove(&self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        }
    }
}

/// An interface name for `name` with `prefix`: readable when it fits in 15 bytes, else a hash.
pub fn ifname(prefix: &str, name: &str) -> String {
    let readable = format!("{prefix}{name}");
    if readable.len() <= 15 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return readable;
    }
    // FNV-1a: stable across versions, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    format!("{prefix}{:x}", hash)[..15.min(prefix.len() + 16)].to_owned()
}

/// Names of networks and endpoints: Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name {name:?} (letters, digits, _ . -, starting with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(!store.exists());
        assert_eq!(store.load().unwrap(), State::default());
        let mut state = State::default();
        state.networks.insert(
            "n".into(),
            Network {
                name: "n".into(),
                subnet: Some("10.0.0.0/24".parse().unwrap()),
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                bridge: "bn-n".into(),
                icc: true,
                internal: false,
                masquerade: true,
                gateway_mode: GatewayMode::Routed,
                adopted: Some(Adopted {
                    address_added: false,
                    address6_added: true,
                }),
                mtu: Some(1400),
                non_masquerade: vec!["198.18.0.0/15".parse().unwrap()],
                subnet6: Some("2001:db8:5::/64".parse().unwrap()),
                gateway6: Some("2001:db8:5::1".parse().unwrap()),
                gateway_mode6: GatewayMode::Routed,
            },
        );
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn stores_without_gateway_modes_read_as_nat_and_nat_is_not_written() {
        let old = r#"{"version": 1, "networks": {"n": {"name": "n", "subnet": "10.0.0.0/24",
            "gateway": "10.0.0.1", "bridge": "bn-n", "icc": true, "internal": false,
            "masquerade": true}}, "endpoints": {}}"#;
        let state = Store::parse(old.as_bytes()).unwrap();
        assert_eq!(state.networks["n"].gateway_mode, GatewayMode::Nat);
        let written = serde_json::to_string(&state.networks["n"]).unwrap();
        assert!(!written.contains("gateway_mode"), "{written}");
        for mode in ["nat", "nat-unprotected", "routed", "isolated"] {
            assert_eq!(mode.parse::<GatewayMode>().unwrap().to_string(), mode);
        }
        let err = "bridged".parse::<GatewayMode>().unwrap_err();
        assert_eq!(
            err,
            "invalid gateway mode \"bridged\" (expected nat, nat-unprotected, routed or isolated)"
        );
    }

    #[test]
    fn stores_are_versioned_and_strict() {
        let old = r#"{"networks": {}, "endpoints": {}}"#;
        assert_eq!(Store::parse(old.as_bytes()).unwrap().version, 0);
        let new = serde_json::to_string(&State::default()).unwrap();
        assert!(new.contains("\"version\":1"), "{new}");
        let newer = r#"{"version": 2, "networks": 3}"#;
        let err = Store::parse(newer.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("schema version 2"), "{err}");
        let unknown = r#"{"version": 1, "networks": {}, "endpoints": {}, "x": 1}"#;
        let err = Store::parse(unknown.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("unknown field `x`"), "{err}");
        let nested = r#"{"networks": {"n": {"name": "n", "colour": 1}}, "endpoints": {}}"#;
        let err = Store::parse(nested.as_bytes()).unwrap_err().to_string();
        assert!(
            err.starts_with("networks.n.colour: unknown field `colour`"),
            "{err}"
        );
    }

    #[test]
    fn problems_are_all_reported() {
        let network = |name: &str, subnet: &str, gateway: [u8; 4]| Network {
            name: name.into(),
            subnet: Some(subnet.parse().unwrap()),
            gateway: Some(gateway.into()),
            bridge: format!("bn-{name}"),
            icc: true,
            internal: false,
            masquerade: true,
            gateway_mode: GatewayMode::Nat,
            adopted: None,
            mtu: None,
            non_masquerade: Vec::new(),
            subnet6: None,
            gateway6: None,
            gateway_mode6: GatewayMode::Nat,
        };
        let endpoint = |name: &str, network: &str, ip: [u8; 4], port: u16| Endpoint {
            name: name.into(),
            mode: Mode::Bridge,
            network: network.into(),
            netns: name.into(),
            netns_created: true,
            ip: ip.into(),
            mac: String::new(),
            veth: format!("ve-{name}"),
            exposed: Vec::new(),
            ports: vec![PortMapping {
                proto: Proto::Tcp,
                port: 80,
                host_ip: None,
                host_port: port,
            }],
            cni: None,
            ip6: None,
        };
        let mut state = State::default();
        for n in [
            network("a", "10.0.0.0/24", [10, 0, 0, 1]),
            network("b", "10.0.0.0/16", [10, 0, 0, 1]),
            network("c", "127.0.0.0/24", [127, 0, 0, 1]),
        ] {
            state.networks.insert(n.name.clone(), n);
        }
        for e in [
            endpoint("e1", "a", [10, 0, 0, 2], 8080),
            endpoint("e2", "a", [10, 0, 0, 2], 8081),
            endpoint("e3", "a", [10, 0, 0, 3], 8080),
            endpoint("e4", "gone", [10, 0, 0, 4], 8082),
            endpoint("e5", "b", [10, 0, 0, 5], 8083),
            endpoint("e6", "a", [10, 0, 1, 6], 8084),
        ] {
            state.endpoints.insert(e.name.clone(), e);
        }
        let problems: Vec<String> = state.problems().iter().map(ToString::to_string).collect();
        let names: Vec<&str> = problems
            .iter()
            .map(|p| p.split(' ').nth(1).unwrap())
            .collect();
        assert_eq!(
            names,
            ["b", "c", "e2", "e3", "e4", "e5", "e6"],
            "{problems:#?}"
        );
        assert!(
            problems[4].contains("names network gone"),
            "{}",
            problems[4]
        );
    }

    #[test]
    fn ipv4_only_stores_are_unchanged_and_ipv6_fields_round_trip() {
        let old = r#"{"version": 1, "networks": {"n": {"name": "n", "subnet": "10.0.0.0/24",
            "gateway": "10.0.0.1", "bridge": "bn-n", "icc": true, "internal": false,
            "masquerade": true}}, "endpoints": {"e": {"name": "e", "network": "n",
            "netns": "e", "netns_created": true, "ip": "10.0.0.2", "mac": "",
            "veth": "ve-e", "exposed": [], "ports": []}}}"#;
        let state = Store::parse(old.as_bytes()).unwrap();
        assert_eq!(state.networks["n"].subnet6, None);
        assert_eq!(state.networks["n"].gateway6, None);
        assert_eq!(state.endpoints["e"].ip6, None);
        let written = serde_json::to_string(&state).unwrap();
        for field in ["subnet6", "gateway6", "ip6"] {
            assert!(!written.contains(field), "{written}");
        }
        let mut state = state;
        let n = state.networks.get_mut("n").unwrap();
        n.subnet6 = Some("2001:db8:5::/64".parse().unwrap());
        n.gateway6 = Some("2001:db8:5::1".parse().unwrap());
        state.endpoints.get_mut("e").unwrap().ip6 = Some("2001:db8:5::2".parse().unwrap());
        let written = serde_json::to_string(&state).unwrap();
        assert!(
            written.contains(r#""subnet6":"2001:db8:5::/64""#),
            "{written}"
        );
        assert!(
            written.contains(r#""gateway6":"2001:db8:5::1""#),
            "{written}"
        );
        assert!(written.contains(r#""ip6":"2001:db8:5::2""#), "{written}");
        assert_eq!(Store::parse(written.as_bytes()).unwrap(), state);
        assert!(state.problems().is_empty(), "{:?}", state.problems());
        assert_eq!(
            state.taken_addresses6(&state.networks["n"]),
            BTreeSet::from([
                "2001:db8:5::1".parse().unwrap(),
                "2001:db8:5::2".parse().unwrap()
            ])
        );
    }

    #[test]
    fn ipv6_problems_are_reported() {
        let network = |name: &str, subnet: &str, subnet6: Option<&str>, gateway6: Option<&str>| {
            let subnet: Ipv4Net = subnet.parse().unwrap();
            Network {
                name: name.into(),
                subnet: Some(subnet),
                gateway: ipam::default_gateway(&subnet),
                bridge: format!("bn-{name}"),
                icc: true,
                internal: true,
                masquerade: true,
                gateway_mode: GatewayMode::Nat,
                adopted: None,
                mtu: None,
                non_masquerade: Vec::new(),
                subnet6: subnet6.map(|s| s.parse().unwrap()),
                gateway6: gateway6.map(|g| g.parse().unwrap()),
                gateway_mode6: GatewayMode::Nat,
            }
        };
        let endpoint = |name: &str, network: &str, ip: [u8; 4], ip6: Option<&str>| Endpoint {
            name: name.into(),
            mode: Mode::Bridge,
            network: network.into(),
            netns: name.into(),
            netns_created: true,
            ip: ip.into(),
            mac: String::new(),
            veth: format!("ve-{name}"),
            exposed: Vec::new(),
            ports: Vec::new(),
            cni: None,
            ip6: ip6.map(|a| a.parse().unwrap()),
        };
        let mut state = State::default();
        for n in [
            network(
                "a",
                "10.0.0.0/24",
                Some("2001:db8:5::/64"),
                Some("2001:db8:5::1"),
            ),
            network(
                "b",
                "10.1.0.0/24",
                Some("2001:db8:5::/48"),
                Some("2001:db8:5::1"),
            ),
            network(
                "c",
                "10.2.0.0/24",
                Some("2001:db8:6::/64"),
                Some("2001:db8:7::1"),
            ),
            network("d", "10.3.0.0/24", Some("fe80::/64"), Some("fe80::1")),
            network("e", "10.4.0.0/24", Some("2001:db8:8::/64"), None),
            network("f", "10.5.0.0/24", None, None),
        ] {
            state.networks.insert(n.name.clone(), n);
        }
        // IPv6 only: g is sound, h has no subnet at all.
        for (name, v6) in [("g", Some("2001:db8:a::/64")), ("h", None)] {
            let mut n = network(name, "10.6.0.0/24", v6, v6.map(|_| "2001:db8:a::1"));
            (n.subnet, n.gateway) = (None, None);
            state.networks.insert(n.name.clone(), n);
        }
        for e in [
            endpoint("e1", "a", [10, 0, 0, 2], Some("2001:db8:5::2")),
            endpoint("e2", "a", [10, 0, 0, 3], Some("2001:db8:5::2")),
            endpoint("e3", "a", [10, 0, 0, 4], Some("2001:db8:5::1")),
            endpoint("e4", "a", [10, 0, 0, 5], Some("2001:db8:6::5")),
            endpoint("e5", "f", [10, 5, 0, 2], Some("2001:db8:9::2")),
            endpoint("e6", "a", [10, 0, 0, 6], None),
            endpoint("e7", "g", [0, 0, 0, 0], Some("2001:db8:a::2")),
            endpoint("e8", "g", [10, 6, 0, 2], Some("2001:db8:a::3")),
        ] {
            state.endpoints.insert(e.name.clone(), e);
        }
        let problems: Vec<String> = state.problems().iter().map(ToString::to_string).collect();
        let names: Vec<&str> = problems
            .iter()
            .map(|p| p.split(' ').nth(1).unwrap())
            .collect();
        assert_eq!(
            names,
            ["b", "c", "d", "e", "h", "e2", "e3", "e4", "e5", "e8"],
            "{problems:#?}"
        );
    }

    #[test]
    fn interface_names_fit() {
        assert_eq!(ifname("bn-", "web"), "bn-web");
        let long = ifname("bn-", "a-very-long-network-name");
        assert!(long.len() <= 15 && long.starts_with("bn-"), "{long}");
        assert_ne!(long, ifname("bn-", "a-very-long-network-namf"));
    }

    #[test]
    fn names() {
        assert!(check_name("network", "web_1.a-b").is_ok());
        for bad in ["", "-a", "a b", "a/b"] {
            assert!(check_name("network", bad).is_err());
        }
    }
}
