//! What the control plane needs beyond loading: unpublish, forget a subnet or an endpoint.
use std::{collections::HashMap as StdHashMap, net::Ipv4Addr};

use anyhow::Result;
use aya::maps::{
    Array, HashMap, MapError, PerCpuHashMap, PerCpuValues,
    lpm_trie::{Key, LpmTrie},
};
use bridgenet_common::{
    Endpoint, EndpointPeer, NonMasquerade6Key, NonMasqueradeKey, PublishKey, PublishTarget,
    PublishedBy, Subnet, SubnetBlocks, maps,
};
use bytemuck::Zeroable;
use ipnet::{IpNet, Ipv4Net};

use super::{Datapath, Proto, from_wire, wire};

/// A missing key is not an error for a removal: the goal (the key is absent) holds.
/// (aya says so with KeyNotFound for some maps, with the syscall's ENOENT for hash maps.)
pub(super) fn absent_ok(result: Result<(), MapError>) -> Result<()> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

impl Datapath {
    /// Removes the published port `proto` `host_port` on `host_addr` (None: every address).
    pub fn unpublish(
        &mut self,
        proto: Proto,
        host_addr: Option<Ipv4Addr>,
        host_port: u16,
    ) -> Result<()> {
        let mut publish: HashMap<_, PublishKey, PublishTarget> =
            HashMap::try_from(self.map_mut(maps::PUBLISH)?)?;
        let key = publish_key(proto, host_addr, host_port);
        let Ok(target) = publish.get(&key, 0) else {
            return Ok(());
        };
        absent_ok(publish.remove(&key))?;
        self.update_published_by(&key, &target, false)
    }

    /// Adds (`add`) or removes the host side of the mapping `host` -> `target` in
    /// `PUBLISHED_BY`: added when its endpoint port has a free slot (a fifth mapping's flows go
    /// to `CT_EXCEPTIONS`), and the endpoint port's key removed with its last slot.
    pub(super) fn update_published_by(
        &mut self,
        host: &PublishKey,
        target: &PublishTarget,
        add: bool,
    ) -> Result<()> {
        let mut map: HashMap<_, PublishKey, PublishedBy> =
            HashMap::try_from(self.map_mut(maps::PUBLISHED_BY)?)?;
        let key = published_by_key(host, target);
        let before = map.get(&key, 0).unwrap_or_default();
        let (mut by, slot) = (before, host_slot(host));
        if add {
            add_slot(&mut by, slot);
        } else {
            by.hosts
                .iter_mut()
                .filter(|h| **h == slot)
                .for_each(|h| *h = PublishTarget::default());
        }
        if by == before {
            Ok(())
        } else if by.hosts.iter().all(|h| h.port == 0) {
            absent_ok(map.remove(&key))
        } else {
            Ok(map.insert(key, by, 0)?)
        }
    }

    /// Makes `PUBLISHED_BY` hold the mappings of `PUBLISH`: slots of mappings that are gone
    /// are emptied, the others stay where they are (the flows of a mapping that did not fit
    /// stay in `CT_EXCEPTIONS`), and mappings without a slot take the free ones.
    pub(super) fn rebuild_published_by(&mut self) -> Result<()> {
        let mut want: StdHashMap<PublishKey, Vec<PublishTarget>> = StdHashMap::new();
        for (host, target) in self.published()? {
            want.entry(published_by_key(&host, &target))
                .or_default()
                .push(host_slot(&host));
        }
        let mut map: HashMap<_, PublishKey, PublishedBy> =
            HashMap::try_from(self.map_mut(maps::PUBLISHED_BY)?)?;
        let held: Vec<(PublishKey, PublishedBy)> = map.iter().collect::<Result<_, _>>()?;
        for (key, _) in &held {
            if !want.contains_key(key) {
                absent_ok(map.remove(key))?;
            }
        }
        let held: StdHashMap<PublishKey, PublishedBy> = held.into_iter().collect();
        for (key, mut slots) in want {
            // Which of more than four mappings get the free slots: the same at every load.
            slots.sort_by_key(|s| (s.port, s.addr));
            let before = held.get(&key).copied().unwrap_or_default();
            let mut by = before;
            by.hosts
                .iter_mut()
                .filter(|h| !slots.contains(h))
                .for_each(|h| *h = PublishTarget::default());
            for slot in slots {
                add_slot(&mut by, slot);
            }
            if by != before {
                map.insert(key, by, 0)?;
            }
        }
        Ok(())
    }

    /// Every endpoint port's host ports (`PUBLISHED_BY`), as the programs read them.
    pub fn published_by(&self) -> Result<Vec<(PublishKey, PublishedBy)>> {
        let map: HashMap<_, PublishKey, PublishedBy> = HashMap::try_from(
            self.ebpf
                .map(maps::PUBLISHED_BY)
                .ok_or_else(|| anyhow::anyhow!("map PUBLISHED_BY missing"))?,
        )?;
        Ok(map.iter().collect::<Result<_, _>>()?)
    }

    /// The remote prefixes (either family) network `network` (its id) reaches unmasqueraded,
    /// and that reach its endpoints directly: replaces what it had (empty: none).
    pub fn set_non_masquerade(&mut self, network: u32, cidrs: &[IpNet]) -> Result<()> {
        let (mut want, mut want6) = (Vec::new(), Vec::new());
        // The prefix length counts the network's 32 bits too.
        for cidr in cidrs {
            let len = 32 + u32::from(cidr.prefix_len());
            match cidr {
                IpNet::V4(net) => want.push(Key::new(
                    len,
                    NonMasqueradeKey {
                        network,
                        addr: wire(net.network()),
                    },
                )),
                IpNet::V6(net) => want6.push(Key::new(
                    len,
                    NonMasquerade6Key {
                        network,
                        addr: net.network().octets(),
                    },
                )),
            }
        }
        replace_prefixes(
            self.map_mut(maps::NON_MASQUERADE)?,
            &want,
            |k: &NonMasqueradeKey| k.network == network,
        )?;
        replace_prefixes(
            self.map_mut(maps::NON_MASQUERADE6)?,
            &want6,
            |k: &NonMasquerade6Key| k.network == network,
        )
    }

    /// Forgets a managed subnet: its traffic is no longer masqueraded.
    pub fn remove_subnet(&mut self, subnet: Ipv4Net) -> Result<()> {
        let mut subnets: LpmTrie<_, u32, Subnet> = LpmTrie::try_from(self.map_mut(maps::SUBNETS)?)?;
        let key = Key::new(u32::from(subnet.prefix_len()), wire(subnet.network()));
        absent_ok(subnets.remove(&key))?;
        // After the subnet: another one may share its blocks.
        self.rebuild_subnet_blocks()
    }

    /// Adds the /16 blocks `subnet` overlaps to `SUBNET_BLOCKS`.
    pub(super) fn add_subnet_blocks(&mut self, subnet: Ipv4Net) -> Result<()> {
        let mut map: Array<_, SubnetBlocks> = Array::try_from(self.map_mut(maps::SUBNET_BLOCKS)?)?;
        let mut blocks = map.get(&0, 0)?;
        blocks.add(u32::from(subnet.network()), subnet.prefix_len());
        map.set(0, blocks, 0)?;
        Ok(())
    }

    /// Makes `SUBNET_BLOCKS` the blocks of the subnets in `SUBNETS`, marked ready with the
    /// next generation (the programs' cached answers about the subnets go stale).
    pub(super) fn rebuild_subnet_blocks(&mut self) -> Result<()> {
        let mut blocks = SubnetBlocks::zeroed();
        for (subnet, _) in self.subnets()? {
            blocks.add(u32::from(subnet.network()), subnet.prefix_len());
        }
        let mut map: Array<_, SubnetBlocks> = Array::try_from(self.map_mut(maps::SUBNET_BLOCKS)?)?;
        blocks.ready = map.get(&0, 0)?.next_generation();
        map.set(0, blocks, 0)?;
        Ok(())
    }

    /// Tells the programs that `SUBNETS` changed: the next generation in `SUBNET_BLOCKS`, if
    /// it is ready (before, nothing is cached).
    pub(super) fn subnets_changed(&mut self) -> Result<()> {
        let mut map: Array<_, SubnetBlocks> = Array::try_from(self.map_mut(maps::SUBNET_BLOCKS)?)?;
        let mut blocks = map.get(&0, 0)?;
        if blocks.ready != 0 {
            blocks.ready = blocks.next_generation();
            map.set(0, blocks, 0)?;
        }
        Ok(())
    }

    /// Forgets the endpoint behind the veth `ifindex`, both families.
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<()> {
        let mut endpoints: HashMap<_, u32, Endpoint> =
            HashMap::try_from(self.map_mut(maps::ENDPOINTS)?)?;
        absent_ok(endpoints.remove(&ifindex))?;
        self.remove_endpoint6(ifindex)
    }

    /// Lets the fast path send what is for `addr` straight to the peer of veth `veth`, when the
    /// FIB routes it to `bridge`. An entry that says so already keeps its counters.
    pub fn add_endpoint_peer(&mut self, addr: Ipv4Addr, veth: u32, bridge: u32) -> Result<()> {
        let mut peers: PerCpuHashMap<_, u32, EndpointPeer> =
            PerCpuHashMap::try_from(self.map_mut(maps::ENDPOINT_PEERS)?)?;
        if let Ok(values) = peers.get(&wire(addr), 0)
            && values.iter().all(|v| v.veth == veth && v.bridge == bridge)
        {
            return Ok(());
        }
        let peer = EndpointPeer {
            veth,
            bridge,
            ..Default::default()
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
        peers.insert(wire(addr), PerCpuValues::try_from(vec![peer; cpus])?, 0)?;
        Ok(())
    }

    /// Stops the fast path into the endpoint at `addr`.
    pub fn remove_endpoint_peer(&mut self, addr: Ipv4Addr) -> Result<()> {
        let mut peers: PerCpuHashMap<_, u32, EndpointPeer> =
            PerCpuHashMap::try_from(self.map_mut(maps::ENDPOINT_PEERS)?)?;
        absent_ok(peers.remove(&wire(addr)))
    }

    /// Every endpoint the fast path goes into, by address, with its counters summed over CPUs.
    pub fn endpoint_peers(&self) -> Result<Vec<(Ipv4Addr, EndpointPeer)>> {
        let map = self
            .ebpf
            .map(maps::ENDPOINT_PEERS)
            .ok_or_else(|| anyhow::anyhow!("map ENDPOINT_PEERS missing"))?;
        let peers: PerCpuHashMap<_, u32, EndpointPeer> = PerCpuHashMap::try_from(map)?;
        let mut out = Vec::new();
        for entry in peers.iter() {
            let (addr, per_cpu) = entry?;
            let mut total = per_cpu[0];
            total.packets = per_cpu.iter().map(|p| p.packets).sum();
            total.bytes = per_cpu.iter().map(|p| p.bytes).sum();
            out.push((from_wire(addr), total));
        }
        Ok(out)
    }

    /// The ifindexes of every endpoint veth the programs know.
    pub fn endpoint_ifindexes(&self) -> Result<Vec<u32>> {
        let map = self
            .ebpf
            .map(maps::ENDPOINTS)
            .ok_or_else(|| anyhow::anyhow!("map ENDPOINTS missing"))?;
        let endpoints: HashMap<_, u32, Endpoint> = HashMap::try_from(map)?;
        Ok(endpoints.keys().collect::<Result<_, _>>()?)
    }

    /// Forgets one of the host's addresses (an uplink's old address).
    pub fn remove_host_addr(&mut self, addr: Ipv4Addr) -> Result<()> {
        let mut addrs: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(maps::HOST_ADDRS)?)?;
        absent_ok(addrs.remove(&wire(addr)))
    }

    /// Every managed subnet with its masquerade flag.
    pub fn subnets(&self) -> Result<Vec<(Ipv4Net, bool)>> {
        let map = self
            .ebpf
            .map(maps::SUBNETS)
            .ok_or_else(|| anyhow::anyhow!("map SUBNETS missing"))?;
        let subnets: LpmTrie<_, u32, Subnet> = LpmTrie::try_from(map)?;
        let mut out = Vec::new();
        for entry in subnets.iter() {
            let (key, value) = entry?;
            let net = Ipv4Net::new(from_wire(key.data()), key.prefix_len() as u8)?;
            out.push((net, value.masquerade != 0));
        }
        Ok(out)
    }
}

/// The key of a published port as the programs look it up.
pub fn publish_key(proto: Proto, host_addr: Option<Ipv4Addr>, host_port: u16) -> PublishKey {
    PublishKey {
        addr: host_addr.map_or(0, wire),
        port: host_port.to_be(),
        proto: proto as u8,
        _pad: 0,
    }
}

/// `PUBLISHED_BY`'s key for the mapping `host` -> `target`: the endpoint's side.
fn published_by_key(host: &PublishKey, target: &PublishTarget) -> PublishKey {
    PublishKey {
        addr: target.addr,
        port: target.port,
        proto: host.proto,
        _pad: 0,
    }
}

/// `PUBLISHED_BY`'s slot for the mapping on `host`: its host address (0: any) and port.
fn host_slot(host: &PublishKey) -> PublishTarget {
    PublishTarget {
        addr: host.addr,
        port: host.port,
        _pad: 0,
    }
}

/// Puts `slot` in the first free slot of `by` unless it is there (or no slot is free).
fn add_slot(by: &mut PublishedBy, slot: PublishTarget) {
    if by.hosts.contains(&slot) {
        return;
    }
    if let Some(free) = by.hosts.iter_mut().find(|h| h.port == 0) {
        *free = slot;
    }
}

/// Makes the prefixes of `trie` that `ours` selects (one network's) exactly `want`.
fn replace_prefixes<K: aya::Pod + PartialEq>(
    map: &mut aya::maps::Map,
    want: &[Key<K>],
    ours: impl Fn(&K) -> bool,
) -> Result<()> {
    let mut trie: LpmTrie<_, K, u32> = LpmTrie::try_from(map)?;
    let stale: Vec<Key<K>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| ours(&k.data()))
        .filter(|k| {
            !want
                .iter()
                .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
        })
        .collect();
    for k in &stale {
        absent_ok(trie.remove(k))?;
    }
    for k in want {
        trie.insert(k, 1, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mappings_of_an_endpoint_port_share_its_published_by_slots_up_to_four() {
        let target = PublishTarget {
            addr: wire(Ipv4Addr::new(172, 17, 0, 2)),
            port: 80u16.to_be(),
            _pad: 0,
        };
        let host = Ipv4Addr::new(198, 18, 0, 2);
        let hosts = [
            publish_key(Proto::Tcp, None, 80),
            publish_key(Proto::Tcp, None, 8080),
            publish_key(Proto::Tcp, Some(host), 8080),
            publish_key(Proto::Tcp, None, 8081),
            publish_key(Proto::Tcp, None, 8082),
        ];
        // One key for all: the endpoint's side.
        let key = published_by_key(&hosts[0], &target);
        assert!(hosts.iter().all(|h| published_by_key(h, &target) == key));
        assert_eq!(
            (key.addr, key.port, key.proto),
            (target.addr, target.port, 6)
        );
        let mut by = PublishedBy::default();
        for h in &hosts {
            add_slot(&mut by, host_slot(h));
        }
        add_slot(&mut by, host_slot(&hosts[1]));
        let slots: Vec<(u32, u16)> = by
            .hosts
            .iter()
            .map(|h| (h.addr, u16::from_be(h.port)))
            .collect();
        // The fifth does not fit; a mapping already there is not added twice.
        assert_eq!(slots, [(0, 80), (0, 8080), (wire(host), 8080), (0, 8081)]);
    }
}
