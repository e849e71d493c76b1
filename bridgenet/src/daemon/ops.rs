//! The verbs: create and remove networks and endpoints, publish and unpublish ports. Each
//! checks everything before it changes anything, and undoes its own steps when a later one
//! fails, so a failed create leaves no bridge, veth, namespace or map entry behind.
use std::{collections::HashSet, net::Ipv4Addr, process::Command};

use anyhow::{Context as _, anyhow};
use ipnet::Ipv4Net;

use super::{Daemon, Error};
use bridgenet_common::programs;

use crate::{
    api::{EndpointCreate, NetworkCreate, PortEntry},
    datapath::{self, Datapath, Hook, NetworkOptions},
    netlink::{self, EndpointLink},
    state::{
        Endpoint, Mode, Network, PortMapping, PortSpec, Proto, check_name, ifname, ipam,
        netns_path,
        ports::{Clash, PortTable, parse_expose},
    },
};

/// The default network, created on the first start (Docker's `bridge`).
pub const DEFAULT_NETWORK: &str = "bridge";
const DEFAULT_BRIDGE: &str = "bridgenet0";

fn bad(msg: impl Into<String>) -> Error {
    Error::BadRequest(msg.into())
}

impl Daemon {
    pub fn network(&self, name: &str) -> Result<&Network, Error> {
        self.state
            .networks
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("no network {name}")))
    }

    pub fn endpoint(&self, name: &str) -> Result<&Endpoint, Error> {
        self.state
            .endpoints
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("no endpoint {name}")))
    }

    pub(super) async fn create_default_network(&mut self) -> anyhow::Result<()> {
        let req = NetworkCreate {
            name: DEFAULT_NETWORK.into(),
            subnet: None,
            gateway: None,
            bridge: Some(DEFAULT_BRIDGE.into()),
            icc: true,
            internal: false,
            masquerade: true,
        };
        match self.network_create(req).await {
            Ok(net) => {
                tracing::info!("default network {} on {}", net.name, net.subnet);
                Ok(())
            }
            Err(err) => Err(anyhow!("creating the default network: {err}")),
        }
    }

    pub async fn network_create(&mut self, req: NetworkCreate) -> Result<Network, Error> {
        check_name("network", &req.name).map_err(bad)?;
        if self.state.networks.contains_key(&req.name) {
            return Err(Error::Conflict(format!(
                "network {} already exists",
                req.name
            )));
        }
        let taken = self.taken_subnets().await?;
        let subnet = match &req.subnet {
            Some(s) => {
                let subnet: Ipv4Net = s.parse().map_err(|_| {
                    bad(format!(
                        "invalid subnet {s:?} (expected a CIDR such as 10.1.0.0/24)"
                    ))
                })?;
                let subnet = subnet.trunc();
                if let Some((range, what)) = ipam::reserved(&subnet) {
                    return Err(bad(format!(
                        "subnet {subnet} overlaps {range} ({what}), which no network may use"
                    )));
                }
                if let Some((what, other)) = taken.iter().find(|(_, t)| ipam::overlaps(&subnet, t))
                {
                    return Err(Error::Conflict(format!(
                        "subnet {subnet} overlaps {what} ({other})"
                    )));
                }
                subnet
            }
            None => {
                let nets: Vec<Ipv4Net> = taken.iter().map(|(_, t)| *t).collect();
                ipam::free_subnet(&nets).ok_or_else(|| {
                    Error::Conflict("no free subnet left in the default pools".into())
                })?
            }
        };
        let gateway = match &req.gateway {
            Some(g) => {
                let gw: Ipv4Addr = g.parse().map_err(|_| {
                    bad(format!("invalid gateway {g:?} (expected an IPv4 address)"))
                })?;
                if !ipam::is_host(&subnet, gw) {
                    return Err(bad(format!(
                        "gateway {gw} is not a host address of {subnet}"
                    )));
                }
                gw
            }
            None => ipam::default_gateway(&subnet)
                .ok_or_else(|| bad(format!("subnet {subnet} has no room for a gateway")))?,
        };
        let bridge = req
            .bridge
            .clone()
            .unwrap_or_else(|| ifname("bn-", &req.name));
        check_ifname(&bridge)?;
        if self.state.networks.values().any(|n| n.bridge == bridge)
            || self.nl.link(&bridge).await?.is_some()
        {
            return Err(Error::Conflict(format!(
                "interface {bridge} already exists"
            )));
        }
        let network = Network {
            name: req.name.clone(),
            subnet,
            gateway,
            bridge,
            icc: req.icc,
            internal: req.internal,
            masquerade: req.masquerade,
        };
        let created = match self
            .nl
            .create_bridge(&network.bridge, gateway, subnet.prefix_len())
            .await
        {
            Ok(_) => self.network_datapath(&network),
            Err(err) => Err(err),
        };
        if let Err(err) = created {
            self.undo_network(&network).await;
            return Err(Error::Internal(err));
        }
        self.state
            .networks
            .insert(network.name.clone(), network.clone());
        if let Err(err) = self.save() {
            self.state.networks.remove(&network.name);
            self.undo_network(&network).await;
            return Err(err);
        }
        tracing::info!(
            "network {} created: {} on {}",
            network.name,
            subnet,
            network.bridge
        );
        Ok(network)
    }

    /// The network's subnet and options in the datapath, and the program on its bridge. Also
    /// used by reconcile.
    pub(super) fn network_datapath(&mut self, network: &Network) -> anyhow::Result<()> {
        self.dp
            .add_network(network.subnet, &network_options(network))?;
        self.dp.attach_pinned(
            programs::BRIDGE_INGRESS,
            &network.bridge,
            Hook::TcIngress,
            &self.pin_dir,
            &self.state_dir,
        )
    }

    /// Removes what a failed network create made; never fails.
    async fn undo_network(&mut self, network: &Network) {
        if let Err(err) = self.nl.delete_named(&network.bridge).await {
            tracing::warn!("deleting bridge {}: {err:#}", network.bridge);
        }
        Datapath::forget_attachments(&self.pin_dir, &self.state_dir, &network.bridge);
        if let Err(err) = self.dp.remove_subnet(network.subnet) {
            tracing::warn!("removing subnet {}: {err:#}", network.subnet);
        }
    }

    /// Subnets a new network must not overlap: other networks and the namespace's routes
    /// (except the default route and the routes of bridgenet's own bridges).
    async fn taken_subnets(&self) -> anyhow::Result<Vec<(String, Ipv4Net)>> {
        let mut taken: Vec<(String, Ipv4Net)> = self
            .state
            .networks
            .values()
            .map(|n| (format!("network {}", n.name), n.subnet))
            .collect();
        let links = self.nl.links().await?;
        let ours: Vec<u32> = links
            .iter()
            .filter(|l| self.state.networks.values().any(|n| n.bridge == l.name))
            .map(|l| l.index)
            .collect();
        for (dst, oif) in self.nl.routes().await? {
            if dst.prefix_len() > 0 && !oif.is_some_and(|i| ours.contains(&i)) {
                taken.push((format!("a route in this namespace ({dst})"), dst));
            }
        }
        Ok(taken)
    }

    pub async fn network_rm(&mut self, name: &str) -> Result<Network, Error> {
        let network = self.network(name)?.clone();
        self.check_unfiltered(name)?;
        let users: Vec<&str> = self
            .state
            .endpoints
            .values()
            .filter(|e| e.network == name)
            .map(|e| e.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "network {name} still has endpoints: {}",
                users.join(", ")
            )));
        }
        self.nl.delete_named(&network.bridge).await?;
        Datapath::forget_attachments(&self.pin_dir, &self.state_dir, &network.bridge);
        self.dp.remove_subnet(network.subnet)?;
        self.state.networks.remove(name);
        self.save()?;
        tracing::info!("network {name} removed");
        Ok(network)
    }

    pub async fn endpoint_create(&mut self, req: EndpointCreate) -> Result<Endpoint, Error> {
        check_name("endpoint", &req.name).map_err(bad)?;
        if self.state.endpoints.contains_key(&req.name) {
            return Err(Error::Conflict(format!(
                "endpoint {} already exists",
                req.name
            )));
        }
        let mode: Mode = match &req.mode {
            Some(m) => m.parse().map_err(bad)?,
            None => Mode::Bridge,
        };
        let endpoint = match &mode {
            Mode::Bridge => self.bridge_endpoint(&req).await?,
            Mode::None => self.none_endpoint(&req)?,
            Mode::Container(shared) => self.container_endpoint(&req, shared)?,
        };
        if let Err(err) = self.endpoint_setup(&endpoint).await {
            self.endpoint_teardown(&endpoint).await;
            return Err(Error::Internal(err));
        }
        self.state
            .endpoints
            .insert(endpoint.name.clone(), endpoint.clone());
        if let Err(err) = self.save() {
            self.state.endpoints.remove(&endpoint.name);
            self.endpoint_teardown(&endpoint).await;
            return Err(err);
        }
        tracing::info!(
            "endpoint {} created: mode {}, {} in {}",
            endpoint.name,
            endpoint.mode,
            endpoint.ip,
            endpoint.netns
        );
        Ok(endpoint)
    }

    /// Mode bridge: an address on the network, a veth pair, published ports.
    async fn bridge_endpoint(&self, req: &EndpointCreate) -> Result<Endpoint, Error> {
        if req.network.is_empty() {
            return Err(bad(
                "--network is required (or --mode none|container:ENDPOINT)",
            ));
        }
        let network = self.network(&req.network)?.clone();
        let taken = self.state.taken_addresses(&network);
        let ip = match &req.ip {
            Some(s) => {
                let ip: Ipv4Addr = s.parse().map_err(|_| {
                    bad(format!("invalid address {s:?} (expected an IPv4 address)"))
                })?;
                ipam::check_address(&network.subnet, ip, &taken).map_err(Error::Conflict)?;
                ip
            }
            None => ipam::next_address(&network.subnet, &taken).ok_or_else(|| {
                Error::Conflict(format!(
                    "no free address left in network {} ({})",
                    network.name, network.subnet
                ))
            })?,
        };
        let mut exposed = Vec::new();
        for e in &req.expose {
            exposed.extend(parse_expose(e).map_err(bad)?);
        }
        let mut specs = parse_specs(&req.publish)?;
        if req.publish_all {
            // -P: every exposed port on a random host port.
            specs.extend(exposed.iter().map(|(port, proto)| PortSpec {
                proto: *proto,
                host_ip: None,
                host_ports: None,
                ports: (*port, *port),
            }));
        }
        let ports = self.draw_mappings(&specs)?;
        let (netns, netns_created) = if req.for_runtime {
            (String::new(), false)
        } else {
            self.own_netns(&req.netns)?
        };
        let mac = match &req.mac {
            Some(m) => ipam::parse_mac(m).ok_or_else(|| {
                bad(format!(
                    "invalid MAC address {m:?} (expected aa:bb:cc:dd:ee:ff, unicast)"
                ))
            })?,
            None => ipam::mac(ip),
        };
        let veth = ifname("ve-", &req.name);
        if self.nl.link(&veth).await?.is_some() {
            return Err(Error::Conflict(format!("interface {veth} already exists")));
        }
        Ok(Endpoint {
            name: req.name.clone(),
            mode: Mode::Bridge,
            network: network.name.clone(),
            netns,
            netns_created,
            ip,
            mac: ipam::mac_string(&mac),
            veth,
            exposed,
            ports,
        })
    }

    /// Mode none: a namespace with lo only (Docker's `--network none`).
    fn none_endpoint(&self, req: &EndpointCreate) -> Result<Endpoint, Error> {
        if !req.network.is_empty() || req.ip.is_some() || Self::publishes(req) {
            return Err(bad(
                "mode none has no network: --network, --ip, -p, --expose and -P do not apply",
            ));
        }
        let (netns, netns_created) = self.own_netns(&req.netns)?;
        Ok(Endpoint {
            name: req.name.clone(),
            mode: Mode::None,
            network: String::new(),
            netns,
            netns_created,
            ip: Ipv4Addr::UNSPECIFIED,
            mac: String::new(),
            veth: String::new(),
            exposed: Vec::new(),
            ports: Vec::new(),
        })
    }

    /// Mode container:EP: EP's namespace, address and network (Docker's
    /// `--network container:NAME`); ports are published on EP.
    fn container_endpoint(&self, req: &EndpointCreate, shared: &str) -> Result<Endpoint, Error> {
        let other = self.endpoint(shared)?;
        if let Mode::Container(root) = &other.mode {
            return Err(bad(format!(
                "endpoint {shared} itself shares the namespace of {root}: use container:{root}"
            )));
        }
        if !req.network.is_empty() || req.ip.is_some() || Self::publishes(req) {
            return Err(bad(format!(
                "mode container:{shared} shares {shared}'s network: --network, --ip, -p, --expose \
                 and -P do not apply (publish on {shared})"
            )));
        }
        if !req.netns.is_empty() && netns_path(&req.netns) != other.netns_path() {
            return Err(bad(format!(
                "mode container:{shared} uses {shared}'s namespace {}, not {}",
                other.netns, req.netns
            )));
        }
        Ok(Endpoint {
            name: req.name.clone(),
            mode: Mode::Container(shared.to_owned()),
            network: other.network.clone(),
            netns: other.netns.clone(),
            netns_created: false,
            ip: other.ip,
            mac: other.mac.clone(),
            veth: String::new(),
            exposed: Vec::new(),
            ports: Vec::new(),
        })
    }

    fn publishes(req: &EndpointCreate) -> bool {
        !req.publish.is_empty() || !req.expose.is_empty() || req.publish_all
    }

    /// The namespace of a new endpoint of its own: whether bridgenet creates it, and that no
    /// other endpoint holds it.
    fn own_netns(&self, netns: &str) -> Result<(String, bool), Error> {
        if netns.is_empty() {
            return Err(bad("--netns is required"));
        }
        let path = netns_path(netns);
        let created = if netns.contains('/') {
            if !path.exists() {
                return Err(Error::NotFound(format!(
                    "namespace {} does not exist",
                    path.display()
                )));
            }
            false
        } else {
            check_name("namespace", netns).map_err(bad)?;
            !path.exists()
        };
        if let Some(other) = self
            .state
            .endpoints
            .values()
            .find(|e| e.netns_path() == path)
        {
            return Err(Error::Conflict(format!(
                "namespace {netns} already holds endpoint {}",
                other.name
            )));
        }
        Ok((netns.to_owned(), created))
    }

    /// Namespace, veth pair, eth0 inside, the endpoint program, published ports. Also used by
    /// reconcile.
    pub(super) async fn endpoint_setup(&mut self, endpoint: &Endpoint) -> anyhow::Result<()> {
        let path = endpoint.netns_path();
        if endpoint.netns_created && !path.exists() {
            create_netns(&endpoint.netns)?;
        }
        match &endpoint.mode {
            Mode::Bridge => {
                let network = self.state.networks[&endpoint.network].clone();
                self.endpoint_link(endpoint, &network).await?;
                self.endpoint_datapath(endpoint, &network).await?;
            }
            Mode::None => netlink::in_netns(&path, netlink::lo_up).await?,
            Mode::Container(_) => {}
        }
        for m in &endpoint.ports {
            self.dp.publish(
                wire_proto(m.proto),
                m.host_ip,
                m.host_port,
                endpoint.ip,
                m.port,
            )?;
        }
        Ok(())
    }

    /// What the endpoint program checks (address, MAC, network) and the program on its veth.
    pub(super) async fn endpoint_datapath(
        &mut self,
        endpoint: &Endpoint,
        network: &Network,
    ) -> anyhow::Result<()> {
        let index = self.nl.index(&endpoint.veth).await?;
        self.dp.add_endpoint(
            index,
            endpoint.ip,
            ipam::parse_mac(&endpoint.mac).unwrap_or_else(|| ipam::mac(endpoint.ip)),
            network_options(network).id,
        )?;
        self.dp.attach_pinned(
            programs::ENDPOINT_INGRESS,
            &endpoint.veth,
            Hook::TcIngress,
            &self.pin_dir,
            &self.state_dir,
        )
    }

    /// The veth pair from the bridge to eth0 in the endpoint's namespace.
    pub(super) async fn endpoint_link(
        &self,
        endpoint: &Endpoint,
        network: &Network,
    ) -> anyhow::Result<()> {
        // For the runtime: the peer "moves" into the daemon's own namespace, that is stays.
        let path = if endpoint.for_runtime() {
            "/proc/self/ns/net".into()
        } else {
            endpoint.netns_path()
        };
        let file = std::fs::File::open(&path)
            .with_context(|| format!("opening namespace {}", path.display()))?;
        let bridge = self.nl.index(&network.bridge).await?;
        let peer = peer_name(&endpoint.name);
        self.nl
            .create_veth(&endpoint.veth, &peer, bridge, &file)
            .await?;
        if endpoint.for_runtime() {
            return Ok(());
        }
        let link = EndpointLink {
            peer,
            mac: ipam::parse_mac(&endpoint.mac).unwrap_or_else(|| ipam::mac(endpoint.ip)),
            ip: endpoint.ip,
            prefix: network.subnet.prefix_len(),
            gateway: (!network.internal).then_some(network.gateway),
        };
        netlink::in_netns(&path, move |nl| netlink::configure_endpoint(nl, link)).await
    }

    /// Removes whatever of the endpoint exists; never fails (used to undo and to remove).
    async fn endpoint_teardown(&mut self, endpoint: &Endpoint) {
        for m in &endpoint.ports {
            if let Err(err) = self
                .dp
                .unpublish(wire_proto(m.proto), m.host_ip, m.host_port)
            {
                tracing::warn!("unpublishing {m}: {err:#}");
            }
        }
        if let Some(veth) = endpoint.veth() {
            if let Ok(Some(link)) = self.nl.link(veth).await
                && let Err(err) = self.dp.remove_endpoint(link.index)
            {
                tracing::warn!("forgetting endpoint {}: {err:#}", endpoint.name);
            }
            if let Err(err) = self.nl.delete_named(veth).await {
                tracing::warn!("deleting {veth}: {err:#}");
            }
            Datapath::forget_attachments(&self.pin_dir, &self.state_dir, veth);
        }
        if endpoint.netns_created {
            delete_netns(&endpoint.netns);
        }
    }

    pub async fn endpoint_rm(&mut self, name: &str) -> Result<Endpoint, Error> {
        let endpoint = self.endpoint(name)?.clone();
        let sharing: Vec<&str> = self
            .state
            .endpoints
            .values()
            .filter(|e| e.mode == Mode::Container(name.to_owned()))
            .map(|e| e.name.as_str())
            .collect();
        if !sharing.is_empty() {
            return Err(Error::Conflict(format!(
                "endpoint {name} shares its namespace with {}: remove them first",
                sharing.join(", ")
            )));
        }
        self.endpoint_teardown(&endpoint).await;
        if endpoint.mode == Mode::Bridge {
            // Stale flows would keep sending a reused address's traffic to the old endpoint.
            self.conntrack_remove_addr(endpoint.ip)?;
        }
        self.state.endpoints.remove(name);
        self.save()?;
        tracing::info!("endpoint {name} removed");
        Ok(endpoint)
    }

    /// The endpoint ports of `name` are published to: its own, in mode bridge.
    fn publishable(&self, name: &str) -> Result<Endpoint, Error> {
        let endpoint = self.endpoint(name)?.clone();
        match &endpoint.mode {
            Mode::Bridge => Ok(endpoint),
            Mode::None => Err(bad(format!(
                "endpoint {name} has no network (mode none): no port to publish"
            ))),
            Mode::Container(shared) => Err(bad(format!(
                "endpoint {name} shares {shared}'s network: publish on {shared}"
            ))),
        }
    }

    pub fn publish(&mut self, name: &str, specs: &[String]) -> Result<Vec<PortMapping>, Error> {
        let endpoint = self.publishable(name)?;
        let specs = parse_specs(specs)?;
        let added = self.draw_mappings(&specs)?;
        let mut done = Vec::new();
        for m in &added {
            let result = self.dp.publish(
                wire_proto(m.proto),
                m.host_ip,
                m.host_port,
                endpoint.ip,
                m.port,
            );
            if let Err(err) = result {
                for d in &done {
                    let d: &PortMapping = d;
                    let _ = self
                        .dp
                        .unpublish(wire_proto(d.proto), d.host_ip, d.host_port);
                }
                return Err(Error::Internal(err));
            }
            done.push(*m);
        }
        let entry = self.state.endpoints.get_mut(name).expect("checked above");
        entry.ports.extend(added.iter().copied());
        if let Err(err) = self.save() {
            let entry = self.state.endpoints.get_mut(name).expect("checked above");
            entry.ports.truncate(entry.ports.len() - added.len());
            for m in &added {
                let _ = self
                    .dp
                    .unpublish(wire_proto(m.proto), m.host_ip, m.host_port);
            }
            return Err(err);
        }
        tracing::info!("endpoint {name}: published {}", list(&added));
        Ok(added)
    }

    pub fn unpublish(&mut self, name: &str, specs: &[String]) -> Result<Vec<PortMapping>, Error> {
        let endpoint = self.publishable(name)?;
        let specs = parse_specs(specs)?;
        let mut removed = Vec::new();
        // A set beside the list: unpublishing 60,000 ports must not be quadratic.
        let mut seen = HashSet::new();
        for spec in &specs {
            let matching: Vec<PortMapping> = endpoint
                .ports
                .iter()
                .filter(|m| matches(spec, m) && seen.insert(**m))
                .copied()
                .collect();
            if matching.is_empty() {
                return Err(Error::NotFound(format!(
                    "endpoint {name} has no published port matching {}",
                    spec_string(spec)
                )));
            }
            removed.extend(matching);
        }
        for m in &removed {
            self.dp
                .unpublish(wire_proto(m.proto), m.host_ip, m.host_port)?;
        }
        self.revoke_mappings(endpoint.ip, &removed)?;
        let entry = self.state.endpoints.get_mut(name).expect("checked above");
        entry.ports.retain(|m| !seen.contains(m));
        self.save()?;
        tracing::info!("endpoint {name}: unpublished {}", list(&removed));
        Ok(removed)
    }

    pub fn ports(&self, endpoint: Option<&str>) -> Result<Vec<PortEntry>, Error> {
        if let Some(name) = endpoint {
            self.endpoint(name)?;
        }
        Ok(self
            .state
            .mappings()
            .filter(|(e, _)| endpoint.is_none_or(|n| n == e.name))
            .map(|(e, m)| PortEntry {
                endpoint: e.name.clone(),
                mapping: *m,
            })
            .collect())
    }

    /// The mappings of `specs`, with random host ports drawn from the host's ephemeral range;
    /// fails when one clashes with a published port or with another of them.
    fn draw_mappings(&self, specs: &[PortSpec]) -> Result<Vec<PortMapping>, Error> {
        let (lo, hi) = ephemeral_range();
        let mut table = PortTable::new(self.state.mappings().map(|(_, m)| *m), (lo, hi));
        let mut out = Vec::new();
        for spec in specs {
            let mappings = spec
                .mappings(|proto, host_ip| {
                    table
                        .draw(proto, host_ip)
                        .ok_or_else(|| format!("no free {proto} host port in {lo}-{hi}"))
                })
                .map_err(Error::Conflict)?;
            // Drawn ports are free and taken by the draw; given ones are checked here.
            for m in mappings.iter().filter(|_| spec.host_ports.is_some()) {
                if let Some(clash) = table.clash(m) {
                    let who = match clash {
                        Clash::Published => "already published",
                        Clash::Repeated => "given twice",
                    };
                    let ip = m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                    return Err(Error::Conflict(format!(
                        "port {ip}:{}/{} is {who}",
                        m.host_port, m.proto
                    )));
                }
                table.insert(m);
            }
            out.extend(mappings);
        }
        Ok(out)
    }
}

/// The container end of an endpoint's veth pair, before it is renamed `eth0`.
pub fn peer_name(endpoint: &str) -> String {
    ifname("vp-", endpoint)
}

fn parse_specs(specs: &[String]) -> Result<Vec<PortSpec>, Error> {
    specs.iter().map(|s| s.parse().map_err(bad)).collect()
}

/// Whether an unpublish SPEC names mapping `m`: same protocol and endpoint port, and the same
/// host port and address where the SPEC gives them.
fn matches(spec: &PortSpec, m: &PortMapping) -> bool {
    if !(spec.ports.0..=spec.ports.1).contains(&m.port) {
        return false;
    }
    let i = m.port - spec.ports.0;
    spec.proto == m.proto
        && spec.host_ports.is_none_or(|(h, _)| h + i == m.host_port)
        && (spec.host_ip.is_none() || spec.host_ip == m.host_ip)
}

fn spec_string(spec: &PortSpec) -> String {
    let (a, b) = spec.ports;
    let ports = if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    };
    format!("{ports}/{}", spec.proto)
}

fn list(mappings: &[PortMapping]) -> String {
    mappings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A network's options as the datapath enforces them; the id is the subnet's address, unique
/// because subnets never overlap.
pub(super) fn network_options(network: &Network) -> NetworkOptions {
    NetworkOptions {
        id: u32::from(network.subnet.network()),
        gateway: network.gateway,
        masquerade: network.masquerade,
        icc: network.icc,
        internal: network.internal,
    }
}

pub(super) fn wire_proto(proto: Proto) -> datapath::Proto {
    match proto {
        Proto::Tcp => datapath::Proto::Tcp,
        Proto::Udp => datapath::Proto::Udp,
    }
}

fn check_ifname(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid interface name {name:?} (1 to 15 letters, digits, _ . -)"
        )))
    }
}

/// The host's ephemeral port range, from which `-P` and `IP::CPORT` draw host ports.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}

/// `ip netns add NAME`: a namespace file under /run/netns that outlives the daemon.
pub(super) fn create_netns(name: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "add", name])
        .output()
        .context("running ip netns add")?;
    if !out.status.success() {
        anyhow::bail!(
            "creating namespace {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(super) fn delete_netns(name: &str) {
    match Command::new("ip").args(["netns", "del", name]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::warn!(
            "deleting namespace {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => tracing::warn!("deleting namespace {name}: {err}"),
    }
}
