//! CNI attachments (`bridgenet-cni`, `/cni/...`): an endpoint in a namespace the runtime made,
//! with the interface name it gave, found and removed by (container ID, interface name). ADD
//! creates the configuration's network on first use; DEL is idempotent; GC removes the
//! attachments the runtime no longer knows.
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Daemon, Error, bad, networks::check_ifname};
use crate::{
    api::{CniAdd, CniAttached, CniAttachment, CniNetwork, EndpointCreate, NetworkCreate},
    netlink,
    state::{Endpoint, GatewayMode, Network, check_name},
};

/// The endpoint of an attachment: `cni-` and the container ID's first 12 characters, and the
/// interface name unless it is eth0. `endpoint ls` shows the whole ID.
pub fn endpoint_name(a: &CniAttachment) -> String {
    let id: String = a.container_id.chars().take(12).collect();
    if a.ifname == crate::state::DEFAULT_IFNAME {
        format!("cni-{id}")
    } else {
        format!("cni-{id}-{}", a.ifname)
    }
}

impl Daemon {
    /// The endpoint of an attachment, if there is one.
    pub fn cni_endpoint(&self, a: &CniAttachment) -> Option<&Endpoint> {
        self.state
            .endpoints
            .values()
            .find(|e| e.cni.as_ref() == Some(a))
    }

    /// ADD: the network (created on first use), then the endpoint in the runtime's namespace
    /// with its published ports. Changes nothing when it fails.
    pub async fn cni_add(&mut self, req: CniAdd) -> Result<CniAttached, Error> {
        let a = &req.attachment;
        check_name("container ID", &a.container_id).map_err(bad)?;
        check_ifname(&a.ifname)?;
        if !req.netns.contains('/') {
            return Err(bad(format!(
                "CNI_NETNS {:?} is not a path to a network namespace",
                req.netns
            )));
        }
        if let Some(existing) = self.cni_endpoint(a) {
            // The runtime repeats an ADD it saw fail (a timeout): the same answer.
            if existing.netns == req.netns && existing.network == req.network.name {
                let endpoint = existing.clone();
                let network = self.network(&endpoint.network)?.clone();
                return Ok(CniAttached { endpoint, network });
            }
            return Err(Error::Conflict(format!(
                "container {} already has {} on network {} (namespace {})",
                a.container_id, a.ifname, existing.network, existing.netns
            )));
        }
        let name = endpoint_name(a);
        if let Ok(other) = self.endpoint(&name) {
            return Err(Error::Conflict(format!(
                "endpoint {name} exists already (container {})",
                other.cni.as_ref().map_or("-", |c| c.container_id.as_str())
            )));
        }
        let (network, created) = self.cni_network(&req.network).await?;
        let made = self
            .endpoint_create_for(
                EndpointCreate {
                    name,
                    network: network.name.clone(),
                    netns: req.netns.clone(),
                    ip: req.ip.clone(),
                    publish: req.publish.clone(),
                    expose: Vec::new(),
                    publish_all: false,
                    mode: None,
                    mac: req.mac.clone(),
                    for_runtime: false,
                    ip6: req.ip6.clone(),
                },
                Some(a.clone()),
            )
            .await;
        match made {
            Ok(endpoint) => Ok(CniAttached { endpoint, network }),
            Err(err) => {
                if created {
                    let _ = self.network_rm(&network.name).await;
                }
                Err(err)
            }
        }
    }

    /// The configuration's network: created when it does not exist, else it must have the
    /// settings the configuration gives (the error names the first that differs).
    async fn cni_network(&mut self, req: &CniNetwork) -> Result<(Network, bool), Error> {
        let modes = (
            parse_mode("gatewayMode", req.gateway_mode.as_deref())?,
            parse_mode("gatewayMode6", req.gateway_mode6.as_deref())?,
        );
        let gateway_mode = modes.0;
        let non_masquerade = req
            .non_masquerade
            .iter()
            .map(|c| {
                c.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
                    bad(format!(
                        "nonMasqueradeCIDRs: invalid CIDR {c:?} (expected such as 198.18.0.0/15 or 2001:db8::/32)"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(mtu) = req.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(bad(format!("mtu {mtu} is out of range (68-65535)")));
        }
        if let Ok(existing) = self.network(&req.name) {
            let existing = existing.clone();
            differs(&existing, req, modes, &non_masquerade)?;
            return Ok((existing, false));
        }
        let network = self
            .network_create_with(
                NetworkCreate {
                    name: req.name.clone(),
                    subnet: req.subnet.clone(),
                    gateway: req.gateway.clone(),
                    bridge: req.bridge.clone(),
                    icc: req.icc.unwrap_or(true),
                    // As Docker: gateway mode isolated is an internal network.
                    internal: gateway_mode == GatewayMode::Isolated,
                    masquerade: true,
                    gateway_mode,
                    subnet6: req.subnet6.clone(),
                    gateway6: req.gateway6.clone(),
                    gateway_mode6: modes.1,
                    ipv4: req.ipv4.unwrap_or(true),
                },
                req.mtu,
                non_masquerade,
            )
            .await?;
        Ok((network, true))
    }

    /// DEL: removes the attachment's endpoint; nothing to remove is not an error (an unknown
    /// container, a second DEL, a namespace already gone).
    pub async fn cni_del(&mut self, a: &CniAttachment) -> Result<Option<Endpoint>, Error> {
        let Some(name) = self.cni_endpoint(a).map(|e| e.name.clone()) else {
            return Ok(None);
        };
        Ok(Some(self.endpoint_rm(&name).await?))
    }

    /// CHECK: the endpoint is there, its veth on its bridge, its interface in the namespace
    /// with its address.
    pub async fn cni_check(&self, a: &CniAttachment) -> Result<CniAttached, Error> {
        let endpoint = self
            .cni_endpoint(a)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no attachment of container {} with interface {}",
                    a.container_id, a.ifname
                ))
            })?
            .clone();
        let network = self.network(&endpoint.network)?.clone();
        let broken = |why: String| Error::Conflict(format!("endpoint {}: {why}", endpoint.name));
        let path = endpoint.netns_path();
        if !path.exists() {
            return Err(broken(format!("namespace {} is gone", endpoint.netns)));
        }
        let bridge = self.nl.index(&network.bridge).await?;
        match self.nl.link(&endpoint.veth).await? {
            Some(link) if link.controller == Some(bridge) => {}
            Some(_) => {
                return Err(broken(format!(
                    "{} is not on bridge {}",
                    endpoint.veth, network.bridge
                )));
            }
            None => return Err(broken(format!("its veth {} is gone", endpoint.veth))),
        }
        let ifname = endpoint.ifname().to_owned();
        let inside =
            netlink::in_netns(&path, move |nl| netlink::link_addresses(nl, ifname)).await?;
        let Some((addrs, addrs6)) = inside else {
            return Err(broken(format!(
                "no interface {} in {}",
                endpoint.ifname(),
                endpoint.netns
            )));
        };
        let want = endpoint
            .ipv4()
            .zip(network.subnet)
            .and_then(|(ip, subnet)| Ipv4Net::new(ip, subnet.prefix_len()).ok());
        let want6 = endpoint
            .ip6
            .zip(network.subnet6)
            .and_then(|(ip6, subnet6)| Ipv6Net::new(ip6, subnet6.prefix_len()).ok());
        let missing = match want {
            Some(w) if !addrs.contains(&w) => Some(w.to_string()),
            _ => want6.filter(|w| !addrs6.contains(w)).map(|w| w.to_string()),
        };
        if let Some(missing) = missing {
            return Err(broken(format!(
                "interface {} lacks its address {missing}",
                endpoint.ifname()
            )));
        }
        Ok(CniAttached { endpoint, network })
    }

    /// GC: removes the attachments on `network` that `valid` does not list; returns them.
    pub async fn cni_gc(
        &mut self,
        network: &str,
        valid: &[CniAttachment],
    ) -> Result<Vec<Endpoint>, Error> {
        let stale: Vec<String> = self
            .state
            .endpoints
            .values()
            .filter(|e| e.network == network)
            .filter(|e| e.cni.as_ref().is_some_and(|c| !valid.contains(c)))
            .map(|e| e.name.clone())
            .collect();
        let mut removed = Vec::new();
        for name in stale {
            removed.push(self.endpoint_rm(&name).await?);
        }
        Ok(removed)
    }
}

/// The configuration's `gatewayMode` or `gatewayMode6` (`key`; Docker 28's gateway modes);
/// `nat` when not given.
fn parse_mode(key: &str, given: Option<&str>) -> Result<GatewayMode, Error> {
    given.map_or(Ok(GatewayMode::Nat), |m| {
        m.parse().map_err(|e: String| bad(format!("{key}: {e}")))
    })
}

/// The first setting the configuration gives that the existing network lacks.
fn differs(
    n: &Network,
    req: &CniNetwork,
    (gateway_mode, gateway_mode6): (GatewayMode, GatewayMode),
    non_masquerade: &[IpNet],
) -> Result<(), Error> {
    let mismatch = |key: &str, has: String, given: String| {
        Err(bad(format!(
            "network {} exists with {key} {has}, the configuration says {given}",
            n.name
        )))
    };
    let none = || "none".to_owned();
    if let Some(s) = &req.subnet {
        match s.parse::<Ipv4Net>() {
            Ok(s) if Some(s.trunc()) == n.subnet => {}
            _ => {
                let has = n.subnet.map_or_else(none, |s| s.to_string());
                return mismatch("subnet", has, s.clone());
            }
        }
    }
    if let Some(g) = &req.gateway
        && g.parse::<Ipv4Addr>().ok() != n.gateway
    {
        let has = n.gateway.map_or_else(none, |g| g.to_string());
        return mismatch("gateway", has, g.clone());
    }
    if let Some(s) = &req.subnet6 {
        match s.parse::<Ipv6Net>() {
            Ok(s) if Some(s.trunc()) == n.subnet6 => {}
            _ => {
                return mismatch(
                    "subnet6",
                    n.subnet6.map_or_else(none, |s| s.to_string()),
                    s.clone(),
                );
            }
        }
    }
    if let Some(g) = &req.gateway6
        && g.parse::<Ipv6Addr>().ok() != n.gateway6
    {
        return mismatch(
            "gateway6",
            n.gateway6.map_or_else(none, |g| g.to_string()),
            g.clone(),
        );
    }
    if let Some(ipv4) = req.ipv4
        && ipv4 != n.subnet.is_some()
    {
        return mismatch("ipv4", n.subnet.is_some().to_string(), ipv4.to_string());
    }
    if let Some(b) = &req.bridge
        && *b != n.bridge
    {
        return mismatch("bridge", n.bridge.clone(), b.clone());
    }
    if req.gateway_mode.is_some() && gateway_mode != n.gateway_mode {
        return mismatch(
            "gatewayMode",
            n.gateway_mode.to_string(),
            gateway_mode.to_string(),
        );
    }
    if req.gateway_mode6.is_some() && gateway_mode6 != n.gateway_mode6 {
        return mismatch(
            "gatewayMode6",
            n.gateway_mode6.to_string(),
            gateway_mode6.to_string(),
        );
    }
    if let Some(icc) = req.icc
        && icc != n.icc
    {
        return mismatch("icc", n.icc.to_string(), icc.to_string());
    }
    if let Some(mtu) = req.mtu
        && Some(mtu) != n.mtu
    {
        let has = n.mtu.map_or("the default".to_owned(), |m| m.to_string());
        return mismatch("mtu", has, mtu.to_string());
    }
    let mut want = non_masquerade.to_vec();
    want.sort();
    want.dedup();
    if want != n.non_masquerade {
        let list = |v: &[IpNet]| {
            let s: Vec<String> = v.iter().map(ToString::to_string).collect();
            format!("[{}]", s.join(", "))
        };
        return mismatch("nonMasqueradeCIDRs", list(&n.non_masquerade), list(&want));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> Network {
        Network {
            name: "pods".into(),
            subnet: Some("198.18.17.0/24".parse().unwrap()),
            gateway: Some("198.18.17.1".parse().unwrap()),
            bridge: "bn-pods".into(),
            icc: true,
            internal: false,
            masquerade: true,
            mtu: None,
            non_masquerade: vec!["198.18.0.0/28".parse().unwrap()],
            gateway_mode: GatewayMode::Nat,
            adopted: None,
            subnet6: None,
            gateway6: None,
            gateway_mode6: GatewayMode::Nat,
        }
    }

    const NAT: (GatewayMode, GatewayMode) = (GatewayMode::Nat, GatewayMode::Nat);

    #[test]
    fn an_existing_network_must_have_the_settings_given() {
        let n = network();
        let same = CniNetwork {
            name: "pods".into(),
            subnet: Some("198.18.17.9/24".into()),
            ..Default::default()
        };
        let cidrs = ["198.18.0.0/28".parse().unwrap()];
        assert!(differs(&n, &same, NAT, &cidrs).is_ok());
        let other = CniNetwork {
            icc: Some(false),
            ..same.clone()
        };
        let err = differs(&n, &other, NAT, &cidrs).unwrap_err().to_string();
        assert_eq!(
            err,
            "network pods exists with icc true, the configuration says false"
        );
        let err = differs(&n, &same, NAT, &[]).unwrap_err().to_string();
        assert!(err.contains("nonMasqueradeCIDRs [198.18.0.0/28]"), "{err}");
        let routed6 = CniNetwork {
            gateway_mode6: Some("routed".into()),
            ..same.clone()
        };
        let err = differs(
            &n,
            &routed6,
            (GatewayMode::Nat, GatewayMode::Routed),
            &cidrs,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "network pods exists with gatewayMode6 nat, the configuration says routed"
        );
        let ipv6_only = CniNetwork {
            ipv4: Some(false),
            subnet: None,
            ..same.clone()
        };
        let err = differs(&n, &ipv6_only, NAT, &cidrs)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "network pods exists with ipv4 true, the configuration says false"
        );
        let dual = CniNetwork {
            ipv4: Some(true),
            ..same.clone()
        };
        assert!(differs(&n, &dual, NAT, &cidrs).is_ok());
    }

    #[test]
    fn endpoint_names_carry_the_container_id() {
        let a = |id: &str, ifname: &str| CniAttachment {
            container_id: id.into(),
            ifname: ifname.into(),
        };
        assert_eq!(
            endpoint_name(&a("3f2a9c1e07b4d00d00d", "eth0")),
            "cni-3f2a9c1e07b4"
        );
        assert_eq!(endpoint_name(&a("c2", "net1")), "cni-c2-net1");
    }
}
