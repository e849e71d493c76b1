//! Networks: create (checking subnet, gateway and bridge before anything changes) and remove.
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::anyhow;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Daemon, Error, adopt, bad, gateway_modes};
use bridgenet_common::{network_flags, programs};

use crate::{
    api::NetworkCreate,
    datapath::{Datapath, Hook, NetworkOptions},
    state::{Adopted, GatewayMode, Network, check_name, ifname, ipam},
};

/// The default network, created on the first start (Docker's `bridge`).
pub const DEFAULT_NETWORK: &str = "bridge";
const DEFAULT_BRIDGE: &str = "bridgenet0";

impl Daemon {
    pub fn network(&self, name: &str) -> Result<&Network, Error> {
        self.state
            .networks
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("no network {name}")))
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
            gateway_mode: GatewayMode::Nat,
            subnet6: None,
            gateway6: None,
            gateway_mode6: GatewayMode::Nat,
            ipv4: true,
        };
        match self.network_create(req).await {
            Ok(net) => {
                tracing::info!(
                    "default network {} on {}",
                    net.name,
                    net.subnets().join(",")
                );
                Ok(())
            }
            Err(err) => Err(anyhow!("creating the default network: {err}")),
        }
    }

    pub async fn network_create(&mut self, req: NetworkCreate) -> Result<Network, Error> {
        self.network_create_with(req, None, Vec::new()).await
    }

    /// `network_create` with an MTU and non-masquerade prefixes (CNI's `mtu` and
    /// `nonMasqueradeCIDRs`).
    pub(super) async fn network_create_with(
        &mut self,
        mut req: NetworkCreate,
        mtu: Option<u32>,
        mut non_masquerade: Vec<IpNet>,
    ) -> Result<Network, Error> {
        check_name("network", &req.name).map_err(bad)?;
        gateway_modes::check(&req)?;
        if self.state.networks.contains_key(&req.name) {
            return Err(Error::Conflict(format!(
                "network {} already exists",
                req.name
            )));
        }
        let found = self.bridge_to_adopt(&req).await?;
        if let Some(found) = &found {
            adopt::defaults_from(found, &mut req)?;
            adopt::defaults_from6(found, &mut req)?;
        }
        let ipv6 = self.ipv6_side(&req)?;
        let ipv4 = if req.ipv4 {
            let taken = self.taken_subnets(found.as_ref().map(|f| f.index)).await?;
            Some(ipv4_side(&req, &taken)?)
        } else {
            no_ipv4(&req, ipv6.is_some(), found.is_some())?;
            None
        };
        if ipv4.is_none()
            && let Some((subnet6, _)) = ipv6
            && let Some(other) = self
                .state
                .networks
                .values()
                .find(|n| n.subnet.is_none() && network_options(n).id == ipv6_only_id(&subnet6))
        {
            return Err(Error::Conflict(format!(
                "subnet {subnet6} has the same network id as IPv6-only network {} (pick \
                 another subnet)",
                other.name
            )));
        }
        let bridge = req
            .bridge
            .clone()
            .unwrap_or_else(|| ifname("bn-", &req.name));
        check_ifname(&bridge)?;
        match &found {
            Some(_) => {}
            None if self.state.networks.values().any(|n| n.bridge == bridge)
                || self.nl.link(&bridge).await?.is_some() =>
            {
                return Err(Error::Conflict(format!(
                    "interface {bridge} already exists"
                )));
            }
            None => {}
        }
        let network = Network {
            name: req.name.clone(),
            subnet: ipv4.map(|(s, _)| s),
            gateway: ipv4.map(|(_, g)| g),
            bridge,
            icc: req.icc,
            internal: req.internal,
            masquerade: req.masquerade,
            gateway_mode: req.gateway_mode,
            adopted: found.as_ref().map(|f| Adopted {
                address_added: f.address.is_none(),
                address6_added: adopt::adds_gateway6(f, ipv6.map(|(_, g)| g)),
            }),
            mtu,
            non_masquerade: {
                non_masquerade.sort();
                non_masquerade.dedup();
                non_masquerade
            },
            subnet6: ipv6.map(|(s, _)| s),
            gateway6: ipv6.map(|(_, g)| g),
            gateway_mode6: req.gateway_mode6,
        };
        let made = match &found {
            Some(found) => self.adopt_bridge(&network, found).await,
            None => self.create_network_bridge(&network).await.map(drop),
        };
        let created = match made {
            Ok(()) => self.network_mtu(&network).await,
            Err(err) => Err(err),
        };
        let created = created.and_then(|_| self.network_datapath(&network));
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
            network.subnets().join(" and "),
            network.bridge
        );
        Ok(network)
    }

    /// The IPv6 subnet and gateway `req` asks for, checked (one line, before anything
    /// changes): a valid prefix outside the reserved ranges and every other network's IPv6
    /// subnet, with room for a gateway and an endpoint, internal or masqueraded.
    fn ipv6_side(&self, req: &NetworkCreate) -> Result<Option<(Ipv6Net, Ipv6Addr)>, Error> {
        let Some(s) = &req.subnet6 else {
            if !req.gateway_mode6.is_nat() {
                return Err(bad(format!(
                    "IPv6 gateway mode {} given without an IPv6 subnet",
                    req.gateway_mode6
                )));
            }
            if let Some(g) = &req.gateway6 {
                return Err(bad(format!(
                    "IPv6 gateway {g} given without an IPv6 subnet"
                )));
            }
            return Ok(None);
        };
        let subnet: Ipv6Net = s.parse().map_err(|_| {
            bad(format!(
                "invalid IPv6 subnet {s:?} (expected a CIDR such as 2001:db8:5::/64)"
            ))
        })?;
        let subnet = subnet.trunc();
        // Out of the network, IPv6 is masqueraded (NAT66) or, in IPv6 gateway mode routed,
        // leaves with the endpoints' own addresses; isolated holds for both families.
        let no_way_out = req.internal || req.gateway_mode == GatewayMode::Isolated;
        match req.gateway_mode6 {
            GatewayMode::Isolated => {
                return Err(bad(
                    "IPv6 gateway mode isolated: use gateway mode isolated, which holds for \
                     both families",
                ));
            }
            GatewayMode::Nat | GatewayMode::NatUnprotected if !no_way_out && !req.masquerade => {
                return Err(bad(
                    "IPv6 leaves a network without masquerade only in IPv6 gateway mode routed \
                     (--gateway-mode6 routed); use --internal for no way out",
                ));
            }
            _ => {}
        }
        if let Some((range, what)) = ipam::reserved6(&subnet) {
            return Err(bad(format!(
                "subnet {subnet} overlaps {range} ({what}), which no network may use"
            )));
        }
        if let Some(other) = self
            .state
            .networks
            .values()
            .find(|n| n.subnet6.is_some_and(|o| ipam::overlaps6(&o, &subnet)))
        {
            return Err(Error::Conflict(format!(
                "subnet {subnet} overlaps network {} ({})",
                other.name,
                other.subnet6.unwrap_or(subnet)
            )));
        }
        let gateway = match &req.gateway6 {
            Some(g) => {
                let gw: Ipv6Addr = g.parse().map_err(|_| {
                    bad(format!(
                        "invalid IPv6 gateway {g:?} (expected an IPv6 address)"
                    ))
                })?;
                if !ipam::is_host6(&subnet, gw) {
                    return Err(bad(format!(
                        "gateway {gw} is not a host address of {subnet}"
                    )));
                }
                gw
            }
            None => ipam::default_gateway6(&subnet)
                .ok_or_else(|| bad(format!("subnet {subnet} has no room for a gateway")))?,
        };
        let room = ipam::next_address6(&subnet, gateway, &[gateway].into());
        if room.is_none() {
            return Err(bad(format!(
                "subnet {subnet} has no room for an endpoint besides its gateway"
            )));
        }
        Ok(Some((subnet, gateway)))
    }

    /// The network's MTU on its bridge (each veth pair gets it when it is made).
    async fn network_mtu(&self, network: &Network) -> anyhow::Result<()> {
        if let Some(mtu) = network.mtu {
            let index = self.nl.index(&network.bridge).await?;
            self.nl.set_mtu(index, mtu).await?;
        }
        Ok(())
    }

    /// The network's subnet and options in the datapath, and the program on its bridge. Also
    /// used by reconcile.
    pub(super) fn network_datapath(&mut self, network: &Network) -> anyhow::Result<()> {
        let options = network_options(network);
        if let Some(subnet) = network.subnet {
            self.dp.add_network(subnet, &options)?;
        }
        self.dp
            .set_non_masquerade(options.id, &network.non_masquerade)?;
        if let (Some(subnet6), Some(gateway6)) = (network.subnet6, network.gateway6) {
            self.dp
                .add_network6(subnet6, gateway6, &network_options6(network))?;
            if options.flags() & network_flags::INTERNAL == 0 {
                self.enable_ipv6_forwarding()?;
            }
        }
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
        self.remove_bridge(network).await;
        let id = network_options(network).id;
        if let Err(err) = self.dp.set_non_masquerade(id, &[]) {
            tracing::warn!(
                "removing non-masquerade prefixes of {}: {err:#}",
                network.name
            );
        }
        if let Some(subnet) = network.subnet
            && let Err(err) = self.dp.remove_subnet(subnet)
        {
            tracing::warn!("removing subnet {subnet}: {err:#}");
        }
        if let Some(subnet6) = network.subnet6
            && let Err(err) = self.dp.remove_subnet6(subnet6)
        {
            tracing::warn!("removing subnet {subnet6}: {err:#}");
        }
    }

    /// The network's bridge gone, or left as found when adopted; never fails (logs).
    async fn remove_bridge(&mut self, network: &Network) {
        if network.adopted.is_some() {
            self.release_bridge(network).await;
            return;
        }
        if let Err(err) = self.nl.delete_named(&network.bridge).await {
            tracing::warn!("deleting bridge {}: {err:#}", network.bridge);
        }
        Datapath::forget_attachments(&self.pin_dir, &self.state_dir, &network.bridge);
    }

    /// Subnets a new network must not overlap: other networks and the namespace's routes
    /// (except the default route and the routes of bridgenet's own bridges, and of the bridge
    /// being adopted, `adopting`).
    async fn taken_subnets(&self, adopting: Option<u32>) -> anyhow::Result<Vec<(String, Ipv4Net)>> {
        let mut taken: Vec<(String, Ipv4Net)> = self
            .state
            .networks
            .values()
            .filter_map(|n| Some((format!("network {}", n.name), n.subnet?)))
            .collect();
        let links = self.nl.links().await?;
        let ours: Vec<u32> = links
            .iter()
            .filter(|l| self.state.networks.values().any(|n| n.bridge == l.name))
            .map(|l| l.index)
            .chain(adopting)
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
        // Its endpoints' veths leave the bridge first.
        self.deletions.wait_all().await;
        if network.adopted.is_some() {
            self.release_bridge(&network).await;
        } else {
            self.nl.delete_named(&network.bridge).await?;
            Datapath::forget_attachments(&self.pin_dir, &self.state_dir, &network.bridge);
        }
        self.dp
            .set_non_masquerade(network_options(&network).id, &[])?;
        if let Some(subnet) = network.subnet {
            self.dp.remove_subnet(subnet)?;
        }
        if let Some(subnet6) = network.subnet6 {
            self.dp.remove_subnet6(subnet6)?;
        }
        self.state.networks.remove(name);
        self.save()?;
        tracing::info!("network {name} removed");
        Ok(network)
    }
}

/// The IPv4 subnet and gateway `req` asks for, checked against the reserved ranges and
/// `taken`; a free subnet from the default pools when none is given.
fn ipv4_side(
    req: &NetworkCreate,
    taken: &[(String, Ipv4Net)],
) -> Result<(Ipv4Net, Ipv4Addr), Error> {
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
            if let Some((what, other)) = taken.iter().find(|(_, t)| ipam::overlaps(&subnet, t)) {
                return Err(Error::Conflict(format!(
                    "subnet {subnet} overlaps {what} ({other})"
                )));
            }
            subnet
        }
        None => {
            let nets: Vec<Ipv4Net> = taken.iter().map(|(_, t)| *t).collect();
            ipam::free_subnet(&nets)
                .ok_or_else(|| Error::Conflict("no free subnet left in the default pools".into()))?
        }
    };
    let gateway = match &req.gateway {
        Some(g) => {
            let gw: Ipv4Addr = g
                .parse()
                .map_err(|_| bad(format!("invalid gateway {g:?} (expected an IPv4 address)")))?;
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
    Ok((subnet, gateway))
}

/// Refuses, in one line, what an IPv6-only network (`--ipv4=false`) cannot have.
fn no_ipv4(req: &NetworkCreate, has_ipv6: bool, adopting: bool) -> Result<(), Error> {
    let why = if !has_ipv6 {
        "--ipv4=false needs --ipv6 and an IPv6 --subnet".to_owned()
    } else if adopting {
        "--ipv4=false: an existing bridge is adopted with its IPv4 address only".to_owned()
    } else if let Some(s) = req.subnet.as_ref().or(req.gateway.as_ref()) {
        format!("--ipv4=false: {s} is IPv4")
    } else if !matches!(req.gateway_mode, GatewayMode::Nat | GatewayMode::Isolated) {
        format!(
            "--ipv4=false: gateway mode {} is IPv4's (--gateway-mode6 is IPv6's)",
            req.gateway_mode
        )
    } else {
        return Ok(());
    };
    Err(bad(why))
}

/// The datapath's id of an IPv6-only network: in 0.0.0.0/8, which no IPv4 subnet (whose
/// address is the id of the others) may use, from a hash of its IPv6 subnet.
fn ipv6_only_id(subnet6: &Ipv6Net) -> u32 {
    // FNV-1a over the prefix and its length.
    let mut hash: u32 = 0x811c_9dc5;
    for b in subnet6
        .network()
        .octets()
        .into_iter()
        .chain([subnet6.prefix_len()])
    {
        hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (hash & 0x00ff_ffff).max(1)
}

/// A network's options as the datapath enforces them; the id is the IPv4 subnet's address,
/// unique because subnets never overlap (`ipv6_only_id` without one).
pub(super) fn network_options(network: &Network) -> NetworkOptions {
    let id = match (network.subnet, network.subnet6) {
        (Some(subnet), _) => u32::from(subnet.network()),
        (None, Some(subnet6)) => ipv6_only_id(&subnet6),
        (None, None) => 0,
    };
    NetworkOptions {
        id,
        gateway: network.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
        masquerade: network.masquerade,
        icc: network.icc,
        internal: network.internal,
        gateway_mode: network.gateway_mode,
    }
}

/// The options of a network's IPv6 subnet: its IPv6 gateway mode; an isolated network has no
/// way out in either family.
fn network_options6(network: &Network) -> NetworkOptions {
    let mut options = network_options(network);
    options.internal |= network.gateway_mode == GatewayMode::Isolated;
    options.gateway_mode = network.gateway_mode6;
    options
}

pub(super) fn check_ifname(name: &str) -> Result<(), Error> {
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
