//! Flows outlive nothing they used: a port unpublished (or moved to another endpoint) and an
//! uplink's old address, IPv4 or IPv6, take their tracked flows with them at once, so that the
//! next packet finds the current mapping (moby #8795: a UDP client that keeps sending would
//! otherwise never reach the new endpoint). An endpoint's removal revokes its flows, both
//! families', in `conntrack.rs`.
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Daemon, ports::wire_proto};
use crate::{
    datapath::conntrack,
    state::{Endpoint, PortMapping},
};

impl Daemon {
    /// Revokes the flows of `removed`, mappings of `endpoint` (after their removal), in both
    /// families: IPv4's as the datapath opened them (a routed network's at the endpoint).
    pub(super) fn revoke_mappings(
        &mut self,
        endpoint: &Endpoint,
        removed: &[PortMapping],
    ) -> anyhow::Result<()> {
        let (target, target6) = (endpoint.ip, endpoint.ip6);
        let proto = |m: &PortMapping| wire_proto(m.proto) as u8;
        let tests: Vec<_> = removed
            .iter()
            .map(|m| self.state.opened(endpoint, m))
            .filter_map(|m| {
                let host = m.host_v4()?;
                let (port, host_port) = (m.port, m.host_port);
                Some(conntrack::uses_mapping(
                    proto(&m),
                    host,
                    host_port,
                    target,
                    port,
                ))
            })
            .collect();
        let tests6: Vec<_> = removed
            .iter()
            .filter_map(|m| {
                let ((host, host_port), target6) = (self.state.opened6(endpoint, m)?, target6?);
                Some(conntrack::uses_mapping6(
                    proto(m),
                    host,
                    host_port,
                    target6,
                    m.port,
                ))
            })
            .collect();
        let mut report = self.dp.revoke(|k, e| tests.iter().any(|t| t(k, e)))?;
        if !tests6.is_empty() {
            report.flows += self
                .dp
                .revoke6(|k, e| tests6.iter().any(|t| t(k, e)))?
                .flows;
        }
        if report.flows > 0 {
            let ports: Vec<String> = removed.iter().map(ToString::to_string).collect();
            tracing::info!(
                "revoked {} flows of the unpublished ports {} (to {})",
                report.flows,
                ports.join(", "),
                endpoint.name
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
