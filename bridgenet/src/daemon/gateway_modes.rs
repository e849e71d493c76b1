//! What a network's gateway mode (Docker 28's `gateway_mode_ipv4`) changes outside the
//! datapath's flags: an isolated network's bridge has no address (the host has no way in, its
//! endpoints none out), and a routed network's published ports are opened at the endpoint's
//! own address and port rather than on the host's.
use std::{collections::HashSet, net::Ipv4Addr};

use super::{Daemon, Error, ports::wire_proto};
use crate::{
    api::NetworkCreate,
    state::{Endpoint, GatewayMode, Network, PortMapping},
};

/// Refuses a gateway mode the other options contradict, in one line, before anything changes.
pub(super) fn check(req: &NetworkCreate) -> Result<(), Error> {
    if req.gateway_mode == GatewayMode::Isolated && !req.internal {
        return Err(Error::BadRequest(
            "gateway mode isolated needs --internal (an isolated network has no way in or out)"
                .into(),
        ));
    }
    Ok(())
}

/// Whether the network's bridge carries its gateway address (all but isolated networks).
pub(super) fn bridge_has_address(network: &Network) -> bool {
    network.gateway_mode != GatewayMode::Isolated
}

impl Daemon {
    /// Creates the network's bridge, with its gateway address and Docker's MAC for it unless
    /// isolated.
    pub(super) async fn create_network_bridge(&self, network: &Network) -> anyhow::Result<u32> {
        if bridge_has_address(network) {
            let index = self
                .nl
                .create_bridge(
                    &network.bridge,
                    network.gateway.zip(network.subnet.map(|s| s.prefix_len())),
                    // The fast path out recognizes the gateway's MAC by this scheme.
                    crate::state::ipam::endpoint_mac(
                        network.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        network.gateway6,
                    ),
                )
                .await?;
            self.bridge_gateway6(network, index).await?;
            Ok(index)
        } else {
            self.nl.create_bare_bridge(&network.bridge).await
        }
    }

    /// The IPv6 gateway on the network's bridge `index` (IPv6 on there first), unless it has
    /// it already; nothing for a network without IPv6 or whose bridge has no address.
    pub(super) async fn bridge_gateway6(
        &self,
        network: &Network,
        index: u32,
    ) -> anyhow::Result<()> {
        let (Some(subnet6), Some(gateway6)) = (network.subnet6, network.gateway6) else {
            return Ok(());
        };
        if !bridge_has_address(network) {
            return Ok(());
        }
        crate::netlink::enable_ipv6(&network.bridge)?;
        let present = self.nl.addresses6(index).await?;
        if !present.iter().any(|a| a.addr() == gateway6) {
            self.nl
                .add_address6(index, gateway6, subnet6.prefix_len())
                .await?;
        }
        Ok(())
    }

    /// Opens mapping `m` of `endpoint` in the datapath, where its network's mode says.
    pub(super) fn open_mapping(
        &mut self,
        endpoint: &Endpoint,
        m: &PortMapping,
    ) -> anyhow::Result<()> {
        let at = self.state.opened(endpoint, m);
        if let Some(host) = at.host_v4() {
            self.dp.publish(
                wire_proto(at.proto),
                host,
                at.host_port,
                endpoint.ip,
                at.port,
            )?;
        }
        if let (Some(ip6), Some((host, host_port))) =
            (endpoint.ip6, self.state.opened6(endpoint, m))
        {
            self.dp
                .publish6(wire_proto(m.proto), host, host_port, ip6, m.port)?;
        }
        Ok(())
    }

    /// Closes `closed`, mappings of `endpoint`, in the datapath, except where one of `kept`
    /// (its mappings that stay) is opened too: on a routed network, two host ports of one
    /// endpoint port are one opening. Stops at the first failure.
    pub(super) fn close_mappings(
        &mut self,
        endpoint: &Endpoint,
        closed: &[PortMapping],
        kept: &[PortMapping],
    ) -> anyhow::Result<()> {
        // A set: unpublishing 60,000 ports must not be quadratic.
        let still: HashSet<PortMapping> = kept
            .iter()
            .map(|k| self.state.opened(endpoint, k))
            .collect();
        let still6: HashSet<_> = kept
            .iter()
            .filter_map(|k| Some((k.proto, self.state.opened6(endpoint, k)?)))
            .collect();
        for m in closed {
            let at = self.state.opened(endpoint, m);
            if let Some(host) = at.host_v4()
                && !still.contains(&at)
            {
                self.dp
                    .unpublish(wire_proto(at.proto), host, at.host_port)?;
            }
            if let Some(at6) = self.state.opened6(endpoint, m)
                && !still6.contains(&(m.proto, at6))
            {
                self.dp.unpublish6(wire_proto(m.proto), at6.0, at6.1)?;
            }
        }
        Ok(())
    }
}
