//! Endpoints: create (mode bridge, none or container), set up (also for reconcile) and
//! remove. A failed create undoes its own steps: no veth, namespace or map entry is left.
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;

use super::{
    Daemon, Error, bad,
    namespaces::{create_netns, delete_netns},
    networks::network_options,
    ports::parse_specs,
};
use bridgenet_common::programs;

use crate::{
    api::EndpointCreate,
    datapath::{Datapath, Hook},
    netlink::{self, EndpointLink, VethPeer},
    state::{
        CniAttachment, Endpoint, Mode, Network, PortSpec, check_name, ifname, ipam, netns_path,
        ports::parse_expose,
    },
};

impl Daemon {
    pub fn endpoint(&self, name: &str) -> Result<&Endpoint, Error> {
        self.state
            .endpoints
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("no endpoint {name}")))
    }

    pub async fn endpoint_create(&mut self, req: EndpointCreate) -> Result<Endpoint, Error> {
        self.endpoint_create_for(req, None).await
    }

    /// `endpoint_create` for a CNI attachment (`cni`): the interface in the namespace gets the
    /// attachment's name.
    pub(super) async fn endpoint_create_for(
        &mut self,
        req: EndpointCreate,
        cni: Option<CniAttachment>,
    ) -> Result<Endpoint, Error> {
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
            Mode::Bridge => self.bridge_endpoint(&req, cni).await?,
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
    async fn bridge_endpoint(
        &self,
        req: &EndpointCreate,
        cni: Option<CniAttachment>,
    ) -> Result<Endpoint, Error> {
        if req.network.is_empty() {
            return Err(bad(
                "--network is required (or --mode none|container:ENDPOINT)",
            ));
        }
        let network = self.network(&req.network)?.clone();
        let ip = self.endpoint_ip(req, &network)?;
        let ip6 = self.endpoint_ip6(req, &network)?;
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
        super::ports::ipv6_needed(&req.name, ip6.is_some(), &specs)?;
        super::ports::ipv4_needed(&req.name, !ip.is_unspecified(), &mut specs)?;
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
            None => ipam::endpoint_mac(ip, ip6),
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
            cni,
            ip6,
        })
    }

    /// The IPv4 address of a new endpoint on `network`: the one asked for (`--ip`), checked,
    /// else the lowest free one after the gateway; 0.0.0.0 on an IPv6-only network.
    fn endpoint_ip(&self, req: &EndpointCreate, network: &Network) -> Result<Ipv4Addr, Error> {
        let Some(subnet) = network.subnet else {
            return match &req.ip {
                Some(_) => Err(bad(format!(
                    "network {} has no IPv4 subnet: --ip does not apply",
                    network.name
                ))),
                None => Ok(Ipv4Addr::UNSPECIFIED),
            };
        };
        let taken = self.state.taken_addresses(network);
        match &req.ip {
            Some(s) => {
                let ip: Ipv4Addr = s.parse().map_err(|_| {
                    bad(format!("invalid address {s:?} (expected an IPv4 address)"))
                })?;
                ipam::check_address(&subnet, ip, &taken).map_err(Error::Conflict)?;
                Ok(ip)
            }
            None => ipam::next_address(&subnet, &taken).ok_or_else(|| {
                Error::Conflict(format!(
                    "no free address left in network {} ({subnet})",
                    network.name
                ))
            }),
        }
    }

    /// The IPv6 address of a new endpoint on `network`: the one asked for (`--ip6`), checked,
    /// else the lowest free one after the gateway; None on a network without IPv6.
    fn endpoint_ip6(
        &self,
        req: &EndpointCreate,
        network: &Network,
    ) -> Result<Option<Ipv6Addr>, Error> {
        let (Some(subnet6), Some(gateway6)) = (network.subnet6, network.gateway6) else {
            return match &req.ip6 {
                Some(_) => Err(bad(format!(
                    "network {} has no IPv6 subnet: --ip6 does not apply",
                    network.name
                ))),
                None => Ok(None),
            };
        };
        let taken = self.state.taken_addresses6(network);
        let ip6 = match &req.ip6 {
            Some(s) => {
                let ip: Ipv6Addr = s.parse().map_err(|_| {
                    bad(format!(
                        "invalid IPv6 address {s:?} (expected an address such as 2001:db8:5::10)"
                    ))
                })?;
                ipam::check_address6(&subnet6, gateway6, ip, &taken).map_err(Error::Conflict)?;
                ip
            }
            None => ipam::next_address6(&subnet6, gateway6, &taken).ok_or_else(|| {
                Error::Conflict(format!(
                    "no free IPv6 address left in network {} ({subnet6})",
                    network.name
                ))
            })?,
        };
        Ok(Some(ip6))
    }

    /// Mode none: a namespace with lo only (Docker's `--network none`).
    fn none_endpoint(&self, req: &EndpointCreate) -> Result<Endpoint, Error> {
        if !req.network.is_empty() || req.ip.is_some() || req.ip6.is_some() || Self::publishes(req)
        {
            return Err(bad(
                "mode none has no network: --network, --ip, --ip6, -p, --expose and -P do not \
                 apply",
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
            cni: None,
            ip6: None,
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
        if !req.network.is_empty() || req.ip.is_some() || req.ip6.is_some() || Self::publishes(req)
        {
            return Err(bad(format!(
                "mode container:{shared} shares {shared}'s network: --network, --ip, --ip6, -p, \
                 --expose and -P do not apply (publish on {shared})"
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
            cni: None,
            ip6: other.ip6,
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
                self.deletions.wait_for(&endpoint.veth).await;
                self.endpoint_link(endpoint, &network).await?;
                self.endpoint_datapath(endpoint, &network).await?;
            }
            Mode::None => netlink::in_netns(&path, netlink::lo_up).await?,
            Mode::Container(_) => {}
        }
        for m in &endpoint.ports {
            self.open_mapping(endpoint, m)?;
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
            endpoint.mac_bytes(),
            network_options(network).id,
        )?;
        // Before the program on the veth: it passes IPv6 from the endpoint only from there.
        if let Some(ip6) = endpoint.ip6 {
            self.dp.add_endpoint6(index, ip6)?;
        }
        self.dp.attach_pinned(
            programs::ENDPOINT_INGRESS,
            &endpoint.veth,
            Hook::TcIngress,
            &self.pin_dir,
            &self.state_dir,
        )?;
        self.open_peer_path(endpoint, index, &network.bridge).await
    }

    /// Opens the fast path into `endpoint`, whose veth's host end is `veth`, on `bridge`;
    /// waits (does nothing) while a runtime's container end is still in the daemon's
    /// namespace, where `bpf_redirect_peer` would drop what it sends (`follow_moved_peers`).
    async fn open_peer_path(
        &mut self,
        endpoint: &Endpoint,
        veth: u32,
        bridge: &str,
    ) -> anyhow::Result<()> {
        if endpoint.for_runtime() && self.nl.link(&peer_name(&endpoint.name)).await?.is_some() {
            return Ok(());
        }
        // Keyed by the IPv4 address, which IPv6's fast path reads from the endpoint's MAC.
        let Some(ip) = endpoint.ipv4() else {
            return Ok(());
        };
        let bridge = self.nl.index(bridge).await?;
        self.dp.add_endpoint_peer(ip, veth, bridge)
    }

    /// Opens the fast path into the runtime's endpoints whose container end the runtime moved
    /// out of the daemon's namespace since. Without runtime endpoints, reads nothing.
    pub(super) async fn follow_moved_peers(&mut self) -> anyhow::Result<()> {
        let runtime: Vec<_> = self
            .state
            .endpoints
            .values()
            .filter(|e| e.for_runtime())
            .cloned()
            .collect();
        if runtime.is_empty() {
            return Ok(());
        }
        let known: std::collections::BTreeSet<_> = self
            .dp
            .endpoint_peers()?
            .into_iter()
            .map(|(addr, _)| addr)
            .collect();
        for endpoint in runtime
            .iter()
            .filter(|e| e.ipv4().is_some_and(|ip| !known.contains(&ip)))
        {
            let (Some(veth), Some(network)) = (
                self.nl.link(&endpoint.veth).await?,
                self.state.networks.get(&endpoint.network),
            ) else {
                continue;
            };
            let bridge = network.bridge.clone();
            self.open_peer_path(endpoint, veth.index, &bridge).await?;
        }
        Ok(())
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
        // For the runtime, the peer keeps a name of ours, as libnetwork expects: Docker moves,
        // renames and configures it.
        let runtime = endpoint.for_runtime();
        let peer = if runtime {
            peer_name(&endpoint.name)
        } else {
            endpoint.ifname().to_owned()
        };
        let mtu = network.mtu.filter(|_| !runtime);
        let end = VethPeer {
            name: &peer,
            netns: &file,
            mac: (!runtime).then(|| endpoint.mac_bytes()),
            mtu,
        };
        self.nl
            .create_veth(&endpoint.veth, end, bridge, mtu)
            .await?;
        if runtime {
            return Ok(());
        }
        let link = EndpointLink {
            ifname: peer,
            ip: endpoint.ipv4().zip(network.subnet.map(|s| s.prefix_len())),
            gateway: network.gateway.filter(|_| !network.internal),
            ip6: endpoint
                .ip6
                .zip(network.subnet6)
                .map(|(ip6, subnet6)| (ip6, subnet6.prefix_len())),
            // As for IPv4, and as Docker: an internal network has no default route.
            gateway6: network.gateway6.filter(|_| !network.internal),
        };
        netlink::in_netns(&path, move |nl| netlink::configure_endpoint(nl, link)).await
    }

    /// Removes whatever of the endpoint exists, its veth in the background (`deletions`);
    /// never fails (used to undo and to remove).
    async fn endpoint_teardown(&mut self, endpoint: &Endpoint) {
        for m in &endpoint.ports {
            if let Err(err) = self.close_mappings(endpoint, &[*m], &[]) {
                tracing::warn!("unpublishing {m}: {err:#}");
            }
        }
        if let Some(veth) = endpoint.veth() {
            if let Some(ip) = endpoint.ipv4()
                && let Err(err) = self.dp.remove_endpoint_peer(ip)
            {
                tracing::warn!("closing the fast path into {}: {err:#}", endpoint.name);
            }
            match self.nl.link(veth).await {
                Ok(Some(link)) => {
                    if let Err(err) = self.dp.remove_endpoint(link.index) {
                        tracing::warn!("forgetting endpoint {}: {err:#}", endpoint.name);
                    }
                    // Cut off from here on: the veth itself goes after the answer. A new
                    // endpoint may take its address, and so its MAC, before.
                    if let Err(err) = self
                        .nl
                        .forget_learned(link.index, endpoint.mac_bytes())
                        .await
                    {
                        tracing::warn!("{err:#}");
                    }
                    self.deletions.start(&self.nl, veth, link.index);
                }
                Ok(None) => {}
                Err(err) => tracing::warn!("deleting {veth}: {err:#}"),
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
            self.conntrack_remove_addr(endpoint.ip, endpoint.ip6)?;
        }
        self.state.endpoints.remove(name);
        self.save()?;
        tracing::info!("endpoint {name} removed");
        Ok(endpoint)
    }
}

/// The container end of a runtime's endpoint veth pair, until the runtime moves it and names it
/// `eth0` (bridgenet's own endpoints get their final name at once).
pub fn peer_name(endpoint: &str) -> String {
    ifname("vp-", endpoint)
}
