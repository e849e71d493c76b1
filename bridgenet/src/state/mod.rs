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
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use ports::{PortMapping, PortSpec, Proto};

/// A bridge network, Docker's `docker network create -d bridge`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The Linux bridge.
    pub bridge: String,
    /// Inter-endpoint traffic on the bridge (Docker's enable_icc).
    pub icc: bool,
    /// No traffic to or from outside the network.
    pub internal: bool,
    /// Traffic to the outside leaves with the uplink's address.
    pub masquerade: bool,
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
    /// 0.0.0.0 in mode none; the shared endpoint's in mode container.
    pub ip: Ipv4Addr,
    pub mac: String,
    /// The host end of the veth pair, on the network's bridge; the other end is eth0 in netns.
    /// Empty in the modes without a veth pair.
    pub veth: String,
    /// `--expose`d ports, which `-P` publishes.
    pub exposed: Vec<(u16, Proto)>,
    pub ports: Vec<PortMapping>,
}

impl Endpoint {
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

/// Everything the daemon manages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub networks: BTreeMap<String, Network>,
    pub endpoints: BTreeMap<String, Endpoint>,
    /// User filter rules (absent in stores written before filters existed).
    #[serde(default)]
    pub filter: filter::Filter,
}

impl State {
    /// Addresses taken in `network`: its gateway and its endpoints' addresses.
    pub fn taken_addresses(&self, network: &Network) -> BTreeSet<Ipv4Addr> {
        let mut taken = BTreeSet::from([network.gateway]);
        taken.extend(
            self.endpoints
                .values()
                .filter(|e| e.network == network.name && e.mode == Mode::Bridge)
                .map(|e| e.ip),
        );
        taken
    }

    /// Every published port with its endpoint.
    pub fn mappings(&self) -> impl Iterator<Item = (&Endpoint, &PortMapping)> {
        self.endpoints
            .values()
            .flat_map(|e| e.ports.iter().map(move |m| (e, m)))
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

    pub fn load(&self) -> Result<State> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", self.path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", self.path.display())),
        }
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
                subnet: "10.0.0.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                bridge: "bn-n".into(),
                icc: true,
                internal: false,
                masquerade: true,
            },
        );
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        assert!(!dir.path().join("state.json.tmp").exists());
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
