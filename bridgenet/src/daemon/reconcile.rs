//! On start, makes the kernel match the store: re-creates missing bridges, veth pairs and map
//! entries, and removes links and map entries bridgenet made that the store no longer has.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
};

use anyhow::{Context as _, Result};
use bridgenet_common::{Publish6Target, PublishTarget};

use super::{Daemon, gateway_modes, ports::wire_proto};
use crate::{
    datapath::{Datapath, conntrack, publish_key, publish6_key, wire},
    netlink::{self, ALIAS},
    state::{Endpoint, Mode, Network, Problem},
};

impl Daemon {
    /// Reports every problem, one line each, and goes on with the rest: the store's
    /// inconsistencies (what they name is left out of the datapath) and what could not be
    /// repaired. Only a datapath that cannot be read stops it.
    pub(super) async fn reconcile(&mut self) -> Result<()> {
        let mut skipped = BTreeSet::new();
        let problems = self.state.problems();
        for problem in &problems {
            tracing::warn!("store: {problem}");
            let (Problem::Network(name, _) | Problem::Endpoint(name, _)) = problem;
            skipped.insert(name.clone());
        }
        let mut failures = 0;
        let networks: Vec<_> = self
            .state
            .networks
            .values()
            .filter(|n| !skipped.contains(&n.name))
            .cloned()
            .collect();
        for network in &networks {
            if let Err(err) = self.reconcile_network(network).await {
                failures += 1;
                tracing::warn!("reconcile: network {}: {err:#}", network.name);
            }
        }
        let managed: BTreeSet<_> = networks.iter().filter_map(|n| n.subnet).collect();
        for (subnet, _) in self.dp.subnets()? {
            if !managed.contains(&subnet) {
                tracing::info!("reconcile: forgetting subnet {subnet}");
                self.dp.remove_subnet(subnet)?;
            }
        }
        let managed6: BTreeSet<_> = networks.iter().filter_map(|n| n.subnet6).collect();
        for subnet6 in self.dp.subnets6()? {
            if !managed6.contains(&subnet6) {
                tracing::info!("reconcile: forgetting subnet {subnet6}");
                self.dp.remove_subnet6(subnet6)?;
            }
        }

        let endpoints: Vec<_> = self
            .state
            .endpoints
            .values()
            .filter(|e| !skipped.contains(&e.name))
            .cloned()
            .collect();
        let mut endpoint_ifindexes = BTreeSet::new();
        // (address, veth) of each endpoint with a veth, as the fast path may go into it.
        let mut peers = BTreeSet::new();
        for endpoint in &endpoints {
            match self.reconcile_endpoint(endpoint).await {
                Ok(ifindex) => {
                    endpoint_ifindexes.extend(ifindex);
                    peers.extend(ifindex.zip(endpoint.ipv4()).map(|(i, ip)| (ip, i)));
                }
                Err(err) => {
                    failures += 1;
                    tracing::warn!("reconcile: endpoint {}: {err:#}", endpoint.name);
                }
            }
        }
        for ifindex in self.dp.endpoint_ifindexes()? {
            if !endpoint_ifindexes.contains(&ifindex) {
                tracing::info!("reconcile: forgetting the endpoint of veth {ifindex}");
                self.dp.remove_endpoint(ifindex)?;
            }
        }
        for (addr, peer) in self.dp.endpoint_peers()? {
            if !peers.contains(&(addr, peer.veth)) {
                tracing::info!("reconcile: closing the fast path into {addr}");
                self.dp.remove_endpoint_peer(addr)?;
            }
        }

        // Published ports: exactly the store's.
        let mut wanted = BTreeMap::new();
        for (endpoint, m) in self
            .state
            .mappings()
            .filter(|(e, _)| !skipped.contains(&e.name))
        {
            let m = self.state.opened(endpoint, m);
            let Some(host_ip) = m.host_v4() else {
                continue;
            };
            let key = publish_key(wire_proto(m.proto), host_ip, m.host_port);
            wanted.insert(
                (key.addr, key.port, key.proto),
                (m.proto, host_ip, m.host_port, endpoint.ip, m.port),
            );
        }
        for (key, target) in self.dp.published()? {
            let id = (key.addr, key.port, key.proto);
            let keep = wanted.get(&id).is_some_and(|w| {
                target
                    == PublishTarget {
                        addr: wire(w.3),
                        port: w.4.to_be(),
                        _pad: 0,
                    }
            });
            if !keep {
                let proto = if key.proto == 17 {
                    crate::datapath::Proto::Udp
                } else {
                    crate::datapath::Proto::Tcp
                };
                let addr = (key.addr != 0).then(|| crate::datapath::from_wire(key.addr));
                tracing::info!(
                    "reconcile: removing stale published port {}",
                    u16::from_be(key.port)
                );
                self.dp.unpublish(proto, addr, u16::from_be(key.port))?;
                // Its flows too (a crash between an unpublish and its revocation).
                self.dp.revoke(conntrack::uses_mapping(
                    key.proto,
                    addr,
                    u16::from_be(key.port),
                    crate::datapath::from_wire(target.addr),
                    u16::from_be(target.port),
                ))?;
            }
        }
        for (proto, host_ip, host_port, ip, port) in wanted.into_values() {
            self.dp
                .publish(wire_proto(proto), host_ip, host_port, ip, port)?;
        }
        self.reconcile_published6(&skipped)?;

        // The user filter: exactly the store's rules (after the subnets, whose ids it uses).
        if let Err(err) = self.apply_filter() {
            failures += 1;
            tracing::warn!("reconcile: filter: {err:#}");
        }

        // Links bridgenet made that the store does not know (a crash in the middle of a create).
        let known: BTreeSet<String> = self
            .state
            .networks
            .values()
            .map(|n| n.bridge.clone())
            .chain(self.state.endpoints.values().map(|e| e.veth.clone()))
            .collect();
        for link in self.nl.links().await? {
            if link.alias.as_deref() == Some(ALIAS) && !known.contains(&link.name) {
                tracing::info!("reconcile: removing stale link {}", link.name);
                self.nl.delete(link.index).await?;
            }
        }
        // Attachments of interfaces that are gone or no longer ours.
        let mut keep = Vec::new();
        for a in self.attachments() {
            if let Some(link) = self.nl.link(&a.iface).await? {
                keep.push((a.program, a.iface, link.index));
            }
        }
        Datapath::prune_attachments(&self.pin_dir, &self.state_dir, &keep);
        tracing::info!(
            "reconciled {} networks, {} endpoints",
            self.state.networks.len(),
            self.state.endpoints.len()
        );
        if !problems.is_empty() || failures > 0 {
            tracing::warn!(
                "reconcile: {} problems in the store and {failures} failed repairs, reported \
                 above; the rest works",
                problems.len()
            );
        }
        Ok(())
    }

    /// The network's bridge, gateway address and datapath entries.
    async fn reconcile_network(&mut self, network: &Network) -> Result<()> {
        match self.nl.link(&network.bridge).await? {
            None if network.adopted.is_some() => {
                anyhow::bail!("adopted bridge {} is gone", network.bridge);
            }
            None => {
                tracing::info!("reconcile: re-creating bridge {}", network.bridge);
                Datapath::forget_attachments(&self.pin_dir, &self.state_dir, &network.bridge);
                self.create_network_bridge(network).await?;
            }
            Some(link) => {
                let addrs = self.nl.addresses(link.index).await?;
                if let (Some(gateway), Some(subnet)) = (network.gateway, network.subnet)
                    && gateway_modes::bridge_has_address(network)
                    && !addrs.iter().any(|a| a.addr() == gateway)
                {
                    tracing::info!("reconcile: gateway address back on {}", network.bridge);
                    self.nl
                        .add_address(link.index, gateway, subnet.prefix_len())
                        .await?;
                }
                self.nl.set_up(link.index).await?;
                self.bridge_gateway6(network, link.index).await?;
            }
        }
        self.network_datapath(network)
    }

    /// The endpoint's namespace, veth pair and datapath entries; its veth's index, if it has
    /// one in place.
    async fn reconcile_endpoint(&mut self, endpoint: &Endpoint) -> Result<Option<u32>> {
        if endpoint.for_runtime() {
            // The runtime holds the container end: nothing to re-create without it.
            if !self.reconcile_runtime_endpoint(endpoint).await? {
                return Ok(None);
            }
            return Ok(Some(self.nl.index(&endpoint.veth).await?));
        }
        let path = endpoint.netns_path();
        if !path.exists() {
            if endpoint.netns_created {
                tracing::info!("reconcile: re-creating namespace {}", endpoint.netns);
                super::namespaces::create_netns(&endpoint.netns)?;
                if endpoint.mode == Mode::None {
                    netlink::in_netns(&path, netlink::lo_up).await?;
                }
            } else {
                tracing::warn!(
                    "endpoint {}: namespace {} is gone; `endpoint rm {}` removes it",
                    endpoint.name,
                    endpoint.netns,
                    endpoint.name
                );
                return Ok(None);
            }
        }
        let Some(veth) = endpoint.veth() else {
            return Ok(None);
        };
        let network = self
            .state
            .networks
            .get(&endpoint.network)
            .with_context(|| format!("no network {}", endpoint.network))?
            .clone();
        let host = self.nl.link(veth).await?;
        let ifname = endpoint.ifname().to_owned();
        let inside = netlink::in_netns(&path, move |nl| netlink::link_addresses(nl, ifname))
            .await?
            .is_some();
        match host {
            Some(link) if inside => {
                let bridge = self.nl.index(&network.bridge).await?;
                if link.controller != Some(bridge) {
                    tracing::info!("reconcile: {veth} back on {}", network.bridge);
                    self.nl.set_controller(link.index, bridge).await?;
                }
            }
            other => {
                // Half a pair cannot be repaired: start over.
                if let Some(link) = other {
                    self.nl.delete(link.index).await?;
                }
                Datapath::forget_attachments(&self.pin_dir, &self.state_dir, veth);
                tracing::info!("reconcile: re-creating the veth pair of {}", endpoint.name);
                self.endpoint_link(endpoint, &network).await?;
            }
        }
        self.endpoint_datapath(endpoint, &network).await?;
        Ok(Some(self.nl.index(veth).await?))
    }
}

impl Daemon {
    /// An endpoint whose container end the runtime moved: its veth back on the bridge and in
    /// the datapath while the pair exists; when it is gone (the container with it), the
    /// runtime's DeleteEndpoint removes the endpoint. Returns whether the pair exists.
    async fn reconcile_runtime_endpoint(
        &mut self,
        endpoint: &crate::state::Endpoint,
    ) -> Result<bool> {
        let network = self.state.networks[&endpoint.network].clone();
        let Some(link) = self.nl.link(&endpoint.veth).await? else {
            tracing::warn!(
                "endpoint {}: its veth pair is gone; the runtime's next call removes it",
                endpoint.name
            );
            return Ok(false);
        };
        let bridge = self.nl.index(&network.bridge).await?;
        if link.controller != Some(bridge) {
            self.nl.set_controller(link.index, bridge).await?;
        }
        self.endpoint_datapath(endpoint, &network).await?;
        Ok(true)
    }

    /// Ports published on IPv6: exactly the store's, for endpoints with an IPv6 address; a
    /// stale one goes with its flows (a crash between an unpublish and its revocation).
    fn reconcile_published6(&mut self, skipped: &BTreeSet<String>) -> Result<()> {
        let mut wanted = BTreeMap::new();
        for (endpoint, m) in self
            .state
            .mappings()
            .filter(|(e, _)| !skipped.contains(&e.name))
        {
            if let (Some(ip6), Some((host, host_port))) =
                (endpoint.ip6, self.state.opened6(endpoint, m))
            {
                let key = publish6_key(wire_proto(m.proto), host, host_port);
                let target = Publish6Target {
                    addr: ip6.octets(),
                    port: m.port.to_be(),
                    _pad: 0,
                };
                wanted.insert(
                    bytemuck::bytes_of(&key).to_vec(),
                    (key, target, (*m, host, host_port), ip6),
                );
            }
        }
        for (key, target) in self.dp.published6()? {
            let keep = wanted
                .get(bytemuck::bytes_of(&key))
                .is_some_and(|w| w.1 == target);
            if keep {
                continue;
            }
            let (host, port) = (Ipv6Addr::from(key.addr), u16::from_be(key.port));
            let proto = if key.proto == 17 {
                crate::datapath::Proto::Udp
            } else {
                crate::datapath::Proto::Tcp
            };
            tracing::info!("reconcile: removing stale published port [{host}]:{port}");
            self.dp.unpublish6(proto, host, port)?;
            self.dp.revoke6(conntrack::uses_mapping6(
                key.proto,
                host,
                port,
                Ipv6Addr::from(target.addr),
                u16::from_be(target.port),
            ))?;
        }
        for (_, _, (m, host, host_port), ip6) in wanted.into_values() {
            self.dp
                .publish6(wire_proto(m.proto), host, host_port, ip6, m.port)?;
        }
        Ok(())
    }
}
