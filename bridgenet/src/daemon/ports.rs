//! Published ports: publish and unpublish on an endpoint, list them, draw host ports.
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{Daemon, Error, bad};

use crate::{
    api::PortEntry,
    datapath,
    state::{
        Endpoint, Mode, PortMapping, PortSpec, Proto,
        ports::{Clash, PortTable},
    },
};

impl Daemon {
    /// The endpoint ports of `name` are published to: its own, in mode bridge.
    fn publishable(&self, name: &str) -> Result<Endpoint, Error> {
        let endpoint = self.endpoint(name)?.clone();
        match &endpoint.mode {
            Mode::Bridge => Ok(endpoint),
            Mode::None => Err(bad(format!(
                "endpoint {name} has no network (mode none): no port to publish"
            ))),
            Mode::Container(shared) => Err(bad(format!(
                "endpoint {name} shares {shared}'s network: publish on {shared}"
            ))),
        }
    }

    pub fn publish(&mut self, name: &str, specs: &[String]) -> Result<Vec<PortMapping>, Error> {
        let endpoint = self.publishable(name)?;
        let mut specs = parse_specs(specs)?;
        ipv6_needed(name, endpoint.ip6.is_some(), &specs)?;
        ipv4_needed(name, endpoint.ipv4().is_some(), &mut specs)?;
        let added = self.draw_mappings(&specs)?;
        let mut done = Vec::new();
        for m in &added {
            if let Err(err) = self.open_mapping(&endpoint, m) {
                let _ = self.close_mappings(&endpoint, &done, &endpoint.ports);
                return Err(Error::Internal(err));
            }
            done.push(*m);
        }
        let entry = self.state.endpoints.get_mut(name).expect("checked above");
        entry.ports.extend(added.iter().copied());
        if let Err(err) = self.save() {
            let entry = self.state.endpoints.get_mut(name).expect("checked above");
            entry.ports.truncate(entry.ports.len() - added.len());
            let _ = self.close_mappings(&endpoint, &added, &endpoint.ports);
            return Err(err);
        }
        tracing::info!("endpoint {name}: published {}", list(&added));
        Ok(added)
    }

    pub fn unpublish(&mut self, name: &str, specs: &[String]) -> Result<Vec<PortMapping>, Error> {
        let endpoint = self.publishable(name)?;
        let specs = parse_specs(specs)?;
        let mut removed = Vec::new();
        // A set beside the list: unpublishing 60,000 ports must not be quadratic.
        let mut seen = HashSet::new();
        for spec in &specs {
            let matching: Vec<PortMapping> = endpoint
                .ports
                .iter()
                .filter(|m| matches(spec, m) && seen.insert(**m))
                .copied()
                .collect();
            if matching.is_empty() {
                return Err(Error::NotFound(format!(
                    "endpoint {name} has no published port matching {}",
                    spec_string(spec)
                )));
            }
            removed.extend(matching);
        }
        let kept: Vec<PortMapping> = endpoint
            .ports
            .iter()
            .filter(|m| !seen.contains(m))
            .copied()
            .collect();
        self.close_mappings(&endpoint, &removed, &kept)?;
        self.revoke_mappings(&endpoint, &removed)?;
        let entry = self.state.endpoints.get_mut(name).expect("checked above");
        entry.ports.retain(|m| !seen.contains(m));
        self.save()?;
        tracing::info!("endpoint {name}: unpublished {}", list(&removed));
        Ok(removed)
    }

    pub fn ports(&self, endpoint: Option<&str>) -> Result<Vec<PortEntry>, Error> {
        if let Some(name) = endpoint {
            self.endpoint(name)?;
        }
        let mut out = Vec::new();
        for (e, m) in self
            .state
            .mappings()
            .filter(|(e, _)| endpoint.is_none_or(|n| n == e.name))
        {
            let entry = |mapping| PortEntry {
                endpoint: e.name.clone(),
                container: None,
                mapping,
            };
            // As `docker port`: a port published on both families is a line for each.
            if e.ip6.is_some() && m.host_ip.is_none() {
                for any in [Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()] {
                    out.push(entry(PortMapping {
                        host_ip: Some(any),
                        ..*m
                    }));
                }
            } else {
                out.push(entry(*m));
            }
        }
        Ok(out)
    }

    /// The mappings of `specs`, with random host ports drawn from the host's ephemeral range;
    /// fails when one clashes with a published port or with another of them.
    pub(super) fn draw_mappings(&self, specs: &[PortSpec]) -> Result<Vec<PortMapping>, Error> {
        let (lo, hi) = ephemeral_range();
        let mut table = PortTable::new(self.state.mappings().map(|(_, m)| *m), (lo, hi));
        let mut out = Vec::new();
        for spec in specs {
            let mappings = spec
                .mappings(|proto, host_ip| {
                    table
                        .draw(proto, host_ip)
                        .ok_or_else(|| format!("no free {proto} host port in {lo}-{hi}"))
                })
                .map_err(Error::Conflict)?;
            // Drawn ports are free and taken by the draw; given ones are checked here.
            for m in mappings.iter().filter(|_| spec.host_ports.is_some()) {
                if let Some(clash) = table.clash(m) {
                    let who = match clash {
                        Clash::Published => "already published",
                        Clash::Repeated => "given twice",
                    };
                    return Err(Error::Conflict(format!(
                        "port {}/{} is {who}",
                        m.host(),
                        m.proto
                    )));
                }
                table.insert(m);
            }
            out.extend(mappings);
        }
        Ok(out)
    }
}

pub(super) fn parse_specs(specs: &[String]) -> Result<Vec<PortSpec>, Error> {
    specs.iter().map(|s| s.parse().map_err(bad)).collect()
}

/// Refuses a SPEC on an IPv6 host address for an endpoint without an IPv6 address: bridgenet
/// does not translate between the families (no NAT64), as Docker does not without its
/// userland proxy.
pub(super) fn ipv6_needed(name: &str, has_ip6: bool, specs: &[PortSpec]) -> Result<(), Error> {
    match specs.iter().find_map(|s| s.host_ip.filter(IpAddr::is_ipv6)) {
        Some(ip) if !has_ip6 => Err(bad(format!(
            "endpoint {name} has no IPv6 address: cannot publish on [{ip}] (bridgenet does \
             not translate IPv6 to IPv4)"
        ))),
        _ => Ok(()),
    }
}

/// Refuses a SPEC on an IPv4 host address for an endpoint without an IPv4 address (an
/// IPv6-only network's), for which a SPEC without an address publishes on IPv6 only (`[::]`),
/// as Docker 28.
pub(super) fn ipv4_needed(name: &str, has_ip: bool, specs: &mut [PortSpec]) -> Result<(), Error> {
    if has_ip {
        return Ok(());
    }
    if let Some(ip) = specs.iter().find_map(|s| s.host_ip.filter(IpAddr::is_ipv4)) {
        return Err(bad(format!(
            "endpoint {name} has no IPv4 address: cannot publish on {ip} (bridgenet does not \
             translate IPv4 to IPv6)"
        )));
    }
    for spec in specs {
        spec.host_ip
            .get_or_insert(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
    Ok(())
}

/// Whether an unpublish SPEC names mapping `m`: same protocol and endpoint port, and the same
/// host port and address where the SPEC gives them.
fn matches(spec: &PortSpec, m: &PortMapping) -> bool {
    if !(spec.ports.0..=spec.ports.1).contains(&m.port) {
        return false;
    }
    let i = m.port - spec.ports.0;
    spec.proto == m.proto
        && spec.host_ports.is_none_or(|(h, _)| h + i == m.host_port)
        && (spec.host_ip.is_none()
            || spec.host_ip == m.host_ip
            // `0.0.0.0:` and `[::]:` name a mapping on both families too (it goes from both).
            || spec.host_ip.is_some_and(|ip| ip.is_unspecified()) && m.host_ip.is_none())
}

fn spec_string(spec: &PortSpec) -> String {
    let (a, b) = spec.ports;
    let ports = if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    };
    format!("{ports}/{}", spec.proto)
}

fn list(mappings: &[PortMapping]) -> String {
    mappings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn wire_proto(proto: Proto) -> datapath::Proto {
    match proto {
        Proto::Tcp => datapath::Proto::Tcp,
        Proto::Udp => datapath::Proto::Udp,
    }
}

/// The host's ephemeral port range, from which `-P` and `IP::CPORT` draw host ports.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}
