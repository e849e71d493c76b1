//! Flows outlive nothing they used: a port unpublished (or moved to another endpoint) and an
//! uplink's old address, IPv4 or IPv6, take their tracked flows with them at once, so that the
//! next packet finds the current mapping (moby #8795: a UDP client that keeps sending would
//! otherwise never reach the new endpoint). An endpoint's removal revokes its flows, both
//! families', in `conntrack.rs`.
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Daemon, ports::wire_proto};
use crate::{datapath::conntrack, state::PortMapping};

impl Daemon {
    /// Revokes the flows of `mappings`, published to `target` (after their removal).
    pub(super) fn revoke_mappings(
        &mut self,
        target: Ipv4Addr,
        mappings: &[PortMapping],
    ) -> anyhow::Result<()> {
        let tests: Vec<_> = mappings
            .iter()
            .map(|m| {
                let proto = wire_proto(m.proto) as u8;
                conntrack::uses_mapping(proto, m.host_ip, m.host_port, target, m.port)
            })
            .collect();
        let report = self.dp.revoke(|k, e| tests.iter().any(|t| t(k, e)))?;
        if report.entries > 0 {
            let ports: Vec<String> = mappings.iter().map(ToString::to_string).collect();
            tracing::info!(
                "revoked {} flows of the unpublished ports {} (to {target})",
                report.flows,
                ports.join(", ")
            );
        }
        Ok(())
    }

    /// Revokes the IPv6 flows masqueraded with an uplink's old IPv6 address.
    pub(super) fn revoke_masquerade6(&mut self, old: Ipv6Addr) -> anyhow::Result<()> {
        let report = self.dp.revoke6(conntrack::masqueraded_with6(old))?;
        if report.entries > 0 {
            tracing::info!("revoked {} flows masqueraded with {old}", report.flows);
        }
        Ok(())
    }

    /// Revokes the flows masqueraded with an uplink's old address.
    pub(super) fn revoke_masquerade(&mut self, old: Ipv4Addr) -> anyhow::Result<()> {
        let report = self.dp.revoke(conntrack::masqueraded_with(old))?;
        if report.entries > 0 {
            tracing::info!("revoked {} flows masqueraded with {old}", report.flows);
        }
        Ok(())
    }
}
