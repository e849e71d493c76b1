//! Adopting an existing bridge (Docker's `-b`): `network create --bridge BR` when BR exists
//! takes its subnet and gateway from its address unless given, keeps its address and its
//! ports, and `network rm` or `daemon --cleanup` leave it as found: only what bridgenet added
//! goes (its program on the bridge, its endpoints' veths, the gateway address when the bridge
//! had none).
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{Daemon, Error, bad};
use crate::{
    api::NetworkCreate,
    datapath::Datapath,
    netlink::{ALIAS, Netlink},
    state::{Adopted, GatewayMode, Network},
};

/// A bridge found in place of the one a network create names.
pub(super) struct Found {
    pub index: u32,
    /// Its primary IPv4 address, if any.
    pub address: Option<Ipv4Net>,
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
        Ok(Some(Found {
            index: link.index,
            address,
        }))
    }

    /// Sets up an adopted bridge for `network`: the gateway address when it has none (noted in
    /// `network.adopted`), and up.
    pub(super) async fn adopt_bridge(
        &self,
        network: &Network,
        found: &Found,
    ) -> anyhow::Result<()> {
        if found.address.is_none() {
            self.nl
                .add_address(found.index, network.gateway, network.subnet.prefix_len())
                .await?;
        }
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
    if let Some(Adopted {
        address_added: true,
    }) = network.adopted
    {
        let removed = match nl.link(&network.bridge).await {
            Ok(Some(link)) => nl.del_address(link.index, network.gateway).await,
            Ok(None) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = removed {
            tracing::warn!("bridge {}: {err:#}", network.bridge);
        }
    }
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
