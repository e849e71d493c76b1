//! Adopting an existing bridge (Docker's `-b`): `network create --bridge BR` when BR exists
//! takes its subnet and gateway from its address unless given, keeps its address and its
//! ports, and `network rm` or `daemon --cleanup` leave it as found: only what bridgenet added
//! goes (its program on the bridge, its endpoints' veths, the gateway address when the bridge
//! had none).
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::{Daemon, Error, bad};
use crate::{
    api::NetworkCreate,
    datapath::Datapath,
    netlink::{ALIAS, Netlink},
    state::{GatewayMode, Network},
};

/// A bridge found in place of the one a network create names.
pub(super) struct Found {
    pub index: u32,
    /// Its primary IPv4 address, if any.
    pub address: Option<Ipv4Net>,
    /// Its IPv6 addresses (link-local ones included).
    pub addresses6: Vec<Ipv6Net>,
}

impl Daemon {
    /// The existing bridge `req` names, to adopt; None when it names no existing interface.
    /// Refuses (one line, nothing changed) an interface that is no bridge, one of bridgenet's
    /// own, or an adoption the other options contradict.
    pub(super) async fn bridge_to_adopt(
        &self,
        req: &NetworkCreate,
    ) -> Result<Option<Found>, Error> {
        let Some(name) = &req.bridge else {
            return Ok(None);
        };
        let Some(link) = self.nl.link(name).await? else {
            return Ok(None);
        };
        let ours = self.state.networks.values().any(|n| &n.bridge == name)
            || link.alias.as_deref() == Some(ALIAS);
        if ours || !link.bridge {
            let what = if ours { "bridgenet's" } else { "not a bridge" };
            return Err(Error::Conflict(format!(
                "interface {name} already exists ({what}): name a bridge of your own to adopt, \
                 or a new one"
            )));
        }
        if req.gateway_mode == GatewayMode::Isolated {
            return Err(bad(format!(
                "bridge {name} exists: an adopted bridge keeps its address, which gateway mode \
                 isolated has none of"
            )));
        }
        let address = self.nl.addresses(link.index).await?.first().copied();
        let addresses6 = self.nl.addresses6(link.index).await?;
        Ok(Some(Found {
            index: link.index,
            address,
            addresses6,
        }))
    }

    /// Sets up an adopted bridge for `network`: the gateway address when it has none, the IPv6
    /// gateway when it has not that one (both noted in `network.adopted`; IPv6 turned on), and
    /// up.
    pub(super) async fn adopt_bridge(
        &self,
        network: &Network,
        found: &Found,
    ) -> anyhow::Result<()> {
        if let (None, Some(gateway), Some(subnet)) =
            (&found.address, network.gateway, network.subnet)
        {
            self.nl
                .add_address(found.index, gateway, subnet.prefix_len())
                .await?;
        }
        self.bridge_gateway6(network, found.index).await?;
        self.nl.set_up(found.index).await
    }

    /// Leaves an adopted bridge as it was found: its program off, the address bridgenet added
    /// removed. Never fails (logs), as a bridge removal.
    pub(super) async fn release_bridge(&mut self, network: &Network) {
        release(&self.nl, network, &self.pin_dir, &self.state_dir).await;
    }
}

/// See `Daemon::release_bridge`; also used by `daemon --cleanup`.
pub(super) async fn release(
    nl: &Netlink,
    network: &Network,
    pin_dir: &std::path::Path,
    state_dir: &std::path::Path,
) {
    Datapath::detach_interface(pin_dir, state_dir, &network.bridge);
    let Some(adopted) = &network.adopted else {
        return;
    };
    let removed = match nl.link(&network.bridge).await {
        Ok(Some(link)) => {
            let mut removed = Ok(());
            if let (true, Some(gateway)) = (adopted.address_added, network.gateway) {
                removed = nl.del_address(link.index, gateway.into()).await;
            }
            if let (true, Some(gateway6)) = (adopted.address6_added, network.gateway6) {
                removed = removed.and(nl.del_address(link.index, gateway6.into()).await);
            }
            removed
        }
        Ok(None) => Ok(()),
        Err(err) => Err(err),
    };
    if let Err(err) = removed {
        tracing::warn!("bridge {}: {err:#}", network.bridge);
    }
}

/// Whether the adopted bridge `found` lacks `gateway6`, which bridgenet then adds.
pub(super) fn adds_gateway6(found: &Found, gateway6: Option<Ipv6Addr>) -> bool {
    gateway6.is_some_and(|g| !found.addresses6.iter().any(|a| a.addr() == g))
}

/// Fills in the IPv6 gateway of `req` from the adopted bridge's IPv6 address in the IPv6
/// subnet `req` asks for, when it has one; a gateway given must be that address.
pub(super) fn defaults_from6(found: &Found, req: &mut NetworkCreate) -> Result<(), Error> {
    let Some(Ok(subnet)) = req.subnet6.as_deref().map(str::parse::<Ipv6Net>) else {
        return Ok(());
    };
    let subnet = subnet.trunc();
    let Some(own) = found.addresses6.iter().find(|a| subnet.contains(&a.addr())) else {
        return Ok(());
    };
    if matches!(req.gateway6.as_deref().map(str::parse::<Ipv6Addr>), Some(Ok(g)) if g != own.addr())
    {
        return Err(bad(format!(
            "bridge {} has {own}: give its IPv6 gateway {} or none",
            req.bridge.as_deref().unwrap_or_default(),
            own.addr()
        )));
    }
    req.gateway6.get_or_insert_with(|| own.addr().to_string());
    Ok(())
}

/// Fills in the subnet and gateway of `req` from the address of the bridge it adopts, where
/// not given; those given must be the address's (what does not parse is left to the caller).
pub(super) fn defaults_from(found: &Found, req: &mut NetworkCreate) -> Result<(), Error> {
    let Some(address) = found.address else {
        return Ok(());
    };
    let own = address.trunc();
    let subnet = req.subnet.as_deref().map(str::parse::<Ipv4Net>);
    let gateway = req.gateway.as_deref().map(str::parse::<Ipv4Addr>);
    if matches!(subnet, Some(Ok(s)) if s.trunc() != own)
        || matches!(gateway, Some(Ok(g)) if g != address.addr())
    {
        return Err(bad(format!(
            "bridge {} has {address}: give its subnet {own} and gateway {} or neither",
            req.bridge.as_deref().unwrap_or_default(),
            address.addr()
        )));
    }
    req.subnet.get_or_insert_with(|| own.to_string());
    req.gateway
        .get_or_insert_with(|| address.addr().to_string());
    Ok(())
}
