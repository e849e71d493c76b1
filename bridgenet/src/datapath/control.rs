//! What the control plane needs beyond loading: uplinks whose programs outlive the daemon,
//! unpublish, forget a subnet, remove conntrack entries.
use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result};
use aya::{
    maps::{
        HashMap, MapError,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc,
        tc::SchedClassifierLink,
    },
};
use bridgenet_common::{CtEntry, CtKey, PublishKey, PublishTarget, Subnet, maps, programs};
use ipnet::Ipv4Net;

use super::{Datapath, Proto, from_wire, program_mut, tcx_supported, wire};

/// The uplink programs and the hook each is attached to.
const UPLINK_PROGRAMS: [(&str, TcAttachType); 2] = [
    (programs::UPLINK_INGRESS, TcAttachType::Ingress),
    (programs::UPLINK_EGRESS, TcAttachType::Egress),
];

/// Prefix of the pinned uplink links in the pin directory.
pub const LINK_PIN_PREFIX: &str = "link_";

/// Prefix of the files that record the uplink filters before Linux 6.6 (priority, handle).
const NL_RECORD_PREFIX: &str = "nlfilter_";

fn parse_filter(s: &str) -> Option<(u16, u32)> {
    let mut it = s.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// A missing key is not an error for a removal: the goal (the key is absent) holds.
fn absent_ok(result: Result<(), MapError>) -> Result<()> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

impl Datapath {
    /// Makes `iface` an uplink whose programs stay attached after the daemon exits (even on
    /// SIGKILL), so that published ports and masquerade keep working while it restarts. With
    /// tcx (Linux 6.6+) the links are pinned in `pin_dir` (a bpf filesystem) and a restarted
    /// daemon swaps its programs into them atomically; before 6.6 the clsact filters outlive
    /// the process by themselves, `record_dir` notes them, and a restart replaces them.
    pub fn attach_uplink_persistent(
        &mut self,
        iface: &str,
        addr: Ipv4Addr,
        pin_dir: &Path,
        record_dir: &Path,
    ) -> Result<()> {
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .with_context(|| format!("no interface {iface}"))?;
        self.set_uplink_addr(ifindex, addr)?;
        for (name, direction) in UPLINK_PROGRAMS {
            let program: &mut SchedClassifier = program_mut(&mut self.ebpf, name)?;
            if tcx_supported() {
                // The ifindex in the name: a link of a deleted interface is not reused.
                let path = pin_dir.join(format!("{LINK_PIN_PREFIX}{name}_{iface}_{ifindex}"));
                let id = match PinnedLink::from_pin(&path) {
                    Ok(old) => {
                        std::fs::remove_file(&path)?;
                        program
                            .attach_to_link(FdLink::from(old).try_into()?)
                            .with_context(|| format!("replacing {name} on {iface}"))?
                    }
                    Err(_) => program
                        .attach(iface, direction)
                        .with_context(|| format!("attaching {name} to {iface}"))?,
                };
                let link: FdLink = program.take_link(id)?.try_into()?;
                link.pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
            } else {
                // The new filter goes in first (the kernel puts it before the old one), then
                // the previous daemon's filter, recorded in pin_dir, goes: no gap.
                match tc::qdisc_add_clsact(iface) {
                    Ok(()) => {}
                    Err(tc::TcError::NetlinkError(err))
                        if err.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(err) => {
                        return Err(err).with_context(|| format!("adding clsact to {iface}"));
                    }
                }
                let id = program
                    .attach(iface, direction)
                    .with_context(|| format!("attaching {name} to {iface}"))?;
                let link = program.take_link(id)?;
                let record = record_dir.join(format!("{NL_RECORD_PREFIX}{name}_{iface}_{ifindex}"));
                if let Some((priority, handle)) = std::fs::read_to_string(&record)
                    .ok()
                    .and_then(|s| parse_filter(&s))
                    && let Ok(old) = SchedClassifierLink::attached(
                        iface,
                        direction,
                        priority,
                        handle.into(),
                        None,
                    )
                {
                    // Dropping a link detaches it.
                    drop(old);
                }
                let (priority, handle) = (link.priority()?, u32::from(link.handle()?));
                std::fs::write(&record, format!("{priority} {handle}"))?;
                // Dropping the link would detach the filter: keep it past the process.
                std::mem::forget(link);
            }
        }
        Ok(())
    }

    /// Detaches what `attach_uplink_persistent` left in this namespace: unpins the links in
    /// `pin_dir` and removes the uplink filters from every interface in `ifaces`.
    pub fn detach_persistent_uplinks(pin_dir: &Path, record_dir: &Path, ifaces: &[String]) {
        for entries in [pin_dir, record_dir].map(std::fs::read_dir) {
            for entry in entries.into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(LINK_PIN_PREFIX) || name.starts_with(NL_RECORD_PREFIX) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if !tcx_supported() {
            for iface in ifaces {
                for (name, direction) in UPLINK_PROGRAMS {
                    let _ = tc::qdisc_detach_program(iface, direction, name);
                }
            }
        }
    }

    /// Removes the published port `proto` `host_port` on `host_addr` (None: every address).
    pub fn unpublish(
        &mut self,
        proto: Proto,
        host_addr: Option<Ipv4Addr>,
        host_port: u16,
    ) -> Result<()> {
        let mut publish: HashMap<_, PublishKey, PublishTarget> =
            HashMap::try_from(self.map_mut(maps::PUBLISH)?)?;
        absent_ok(publish.remove(&publish_key(proto, host_addr, host_port)))
    }

    /// Forgets a managed subnet: its traffic is no longer masqueraded.
    pub fn remove_subnet(&mut self, subnet: Ipv4Net) -> Result<()> {
        let mut subnets: LpmTrie<_, u32, Subnet> = LpmTrie::try_from(self.map_mut(maps::SUBNETS)?)?;
        let key = Key::new(u32::from(subnet.prefix_len()), wire(subnet.network()));
        absent_ok(subnets.remove(&key))
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

    /// Removes a conntrack entry (one direction of a flow).
    pub fn conntrack_remove(&mut self, key: &CtKey) -> Result<()> {
        let mut ct: HashMap<_, CtKey, CtEntry> = HashMap::try_from(self.map_mut(maps::CONNTRACK)?)?;
        absent_ok(ct.remove(key))
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
