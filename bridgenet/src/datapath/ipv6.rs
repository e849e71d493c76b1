//! IPv6 in the datapath: a network's IPv6 subnet (`SUBNETS6`) and each endpoint's IPv6
//! address (`ENDPOINTS6`), which `endpoint_ingress` checks what an endpoint sends against,
//! each uplink's IPv6 address (`UPLINKS6`), which NAT66 masquerades with, and the ports
//! published on IPv6 (`PUBLISH6`).
use std::net::Ipv6Addr;

use anyhow::Result;
use aya::maps::{
    HashMap,
    lpm_trie::{Key, LpmTrie},
};
use bridgenet_common::{Publish6Key, Publish6Target, Subnet6, maps};
use ipnet::Ipv6Net;

use super::{Datapath, NetworkOptions, Proto, control::absent_ok};

/// The key of a port published on IPv6 as the programs look it up (`::`: the uplink's address).
pub fn publish6_key(proto: Proto, host_addr: Ipv6Addr, host_port: u16) -> Publish6Key {
    Publish6Key {
        addr: host_addr.octets(),
        port: host_port.to_be(),
        proto: proto as u8,
        _pad: 0,
    }
}

fn key(subnet: Ipv6Net) -> Key<[u8; 16]> {
    Key::new(u32::from(subnet.prefix_len()), subnet.network().octets())
}

impl Datapath {
    /// Adds the IPv6 subnet of a network, with the network's options (its `id`, icc,
    /// internal; `options.gateway` is the IPv4 one and unused here).
    pub fn add_network6(
        &mut self,
        subnet: Ipv6Net,
        gateway: Ipv6Addr,
        options: &NetworkOptions,
    ) -> Result<()> {
        let mut subnets: LpmTrie<_, [u8; 16], Subnet6> =
            LpmTrie::try_from(self.map_mut(maps::SUBNETS6)?)?;
        let value = Subnet6 {
            network: options.id,
            flags: options.flags(),
            gateway: gateway.octets(),
        };
        subnets.insert(&key(subnet), value, 0)?;
        // Its bridge's routes come with it: the fast paths' kept answers go stale.
        self.subnets_changed()
    }

    /// Forgets a network's IPv6 subnet.
    pub fn remove_subnet6(&mut self, subnet: Ipv6Net) -> Result<()> {
        let mut subnets: LpmTrie<_, [u8; 16], Subnet6> =
            LpmTrie::try_from(self.map_mut(maps::SUBNETS6)?)?;
        absent_ok(subnets.remove(&key(subnet)))?;
        self.subnets_changed()
    }

    /// Every managed IPv6 subnet.
    pub fn subnets6(&self) -> Result<Vec<Ipv6Net>> {
        let map = self
            .ebpf
            .map(maps::SUBNETS6)
            .ok_or_else(|| anyhow::anyhow!("map SUBNETS6 missing"))?;
        let subnets: LpmTrie<_, [u8; 16], Subnet6> = LpmTrie::try_from(map)?;
        let mut out = Vec::new();
        for entry in subnets.iter() {
            let (key, _) = entry?;
            out.push(Ipv6Net::new(
                Ipv6Addr::from(key.data()),
                key.prefix_len() as u8,
            )?);
        }
        Ok(out)
    }

    /// Records the IPv6 address of the endpoint behind veth `ifindex` (whose `add_endpoint`
    /// gave its MAC and network): the one global address it may send from, besides the
    /// link-local address its MAC gives it.
    pub fn add_endpoint6(&mut self, ifindex: u32, addr: Ipv6Addr) -> Result<()> {
        let mut endpoints: HashMap<_, u32, [u8; 16]> =
            HashMap::try_from(self.map_mut(maps::ENDPOINTS6)?)?;
        endpoints.insert(ifindex, addr.octets(), 0)?;
        Ok(())
    }

    /// Forgets the IPv6 address of the endpoint behind veth `ifindex`, if it had one.
    pub(super) fn remove_endpoint6(&mut self, ifindex: u32) -> Result<()> {
        let mut endpoints: HashMap<_, u32, [u8; 16]> =
            HashMap::try_from(self.map_mut(maps::ENDPOINTS6)?)?;
        absent_ok(endpoints.remove(&ifindex))
    }

    /// Sets the IPv6 address NAT66 masquerades with on uplink `ifindex`; None: the uplink has
    /// none, and IPv6 from the managed subnets does not leave through it.
    /// It is also a host address (`HOST_ADDRS6`): ports published on `::` answer there to the
    /// host's own sockets; the old one is no longer one unless another uplink has it.
    pub fn set_uplink6(&mut self, ifindex: u32, addr: Option<Ipv6Addr>) -> Result<()> {
        let mut uplinks: HashMap<_, u32, [u8; 16]> =
            HashMap::try_from(self.map_mut(maps::UPLINKS6)?)?;
        let old = uplinks.get(&ifindex, 0).ok();
        match addr {
            Some(addr) => uplinks.insert(ifindex, addr.octets(), 0)?,
            None => absent_ok(uplinks.remove(&ifindex))?,
        }
        let still: Vec<[u8; 16]> = uplinks
            .iter()
            .filter_map(|e| e.ok().map(|(_, a)| a))
            .collect();
        let mut host: HashMap<_, [u8; 16], u32> =
            HashMap::try_from(self.map_mut(maps::HOST_ADDRS6)?)?;
        if let Some(old) = old.filter(|old| !still.contains(old)) {
            absent_ok(host.remove(&old))?;
        }
        if let Some(addr) = addr {
            host.insert(addr.octets(), 1, 0)?;
        }
        Ok(())
    }

    /// Publishes `proto` port `host_port` on `host_addr` (`::`: the uplink's IPv6 address) to
    /// `[target]:target_port`.
    pub fn publish6(
        &mut self,
        proto: Proto,
        host_addr: Ipv6Addr,
        host_port: u16,
        target: Ipv6Addr,
        target_port: u16,
    ) -> Result<()> {
        let mut publish: HashMap<_, Publish6Key, Publish6Target> =
            HashMap::try_from(self.map_mut(maps::PUBLISH6)?)?;
        let value = Publish6Target {
            addr: target.octets(),
            port: target_port.to_be(),
            _pad: 0,
        };
        publish.insert(publish6_key(proto, host_addr, host_port), value, 0)?;
        Ok(())
    }

    /// Unpublishes a port published on IPv6, if it was.
    pub fn unpublish6(&mut self, proto: Proto, host_addr: Ipv6Addr, host_port: u16) -> Result<()> {
        let mut publish: HashMap<_, Publish6Key, Publish6Target> =
            HashMap::try_from(self.map_mut(maps::PUBLISH6)?)?;
        absent_ok(publish.remove(&publish6_key(proto, host_addr, host_port)))
    }

    /// Every port published on IPv6: (key, target), as the programs store them.
    pub fn published6(&self) -> Result<Vec<(Publish6Key, Publish6Target)>> {
        let map = self
            .ebpf
            .map(maps::PUBLISH6)
            .ok_or_else(|| anyhow::anyhow!("map PUBLISH6 missing"))?;
        let map: HashMap<_, Publish6Key, Publish6Target> = HashMap::try_from(map)?;
        Ok(map.iter().collect::<Result<_, _>>()?)
    }
}
