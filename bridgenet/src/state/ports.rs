//! Docker's `-p` grammar: `HPORT:CPORT`, `IP:HPORT:CPORT`, `IP::CPORT`, `CPORT`, an optional
//! `/tcp` or `/udp` suffix, and ranges `H1-H2:C1-C2` of the same length.
use std::{
    collections::{HashMap, hash_map::RandomState},
    fmt,
    hash::BuildHasher as _,
    net::Ipv4Addr,
    str::FromStr,
};

use serde::{Deserialize, Serialize};

/// The protocols a port can be published for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("unsupported protocol {s:?} (tcp or udp)")),
        }
    }
}

/// One published port: what `port ls` prints as `80/tcp -> 0.0.0.0:8080`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub proto: Proto,
    /// The endpoint's port.
    pub port: u16,
    /// None: every host address (Docker's 0.0.0.0).
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
}

impl PortMapping {
    /// Whether both cannot be published together: same protocol and host port, and the same
    /// host address or one of them on every address.
    pub fn clashes_with(&self, other: &PortMapping) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && (self.host_ip == other.host_ip || self.host_ip.is_none() || other.host_ip.is_none())
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        write!(f, "{}/{} -> {ip}:{}", self.port, self.proto, self.host_port)
    }
}

/// Why a mapping cannot be added to a [`PortTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clash {
    /// With a port published before.
    Published,
    /// With another port of the same request.
    Repeated,
}

/// A host address using a port (None: every address), and since when.
type HostUse = (Option<Ipv4Addr>, Clash);

/// The host ports in use, indexed by protocol and port, so that a request's clash checks and
/// draws cost a constant per port however many are published (60,000 with `--expose 1-60000
/// -P` took minutes with a scan of every published port for each).
pub struct PortTable {
    /// Per protocol and host port: the host addresses using it (None: every address) and
    /// whether it was published before this request.
    used: HashMap<(Proto, u16), Vec<HostUse>>,
    /// The range ports are drawn from.
    range: (u16, u16),
    /// Per protocol and host address: the random offset draws start from, and how far they
    /// got (ports are never freed while a table lives, so no draw goes back).
    cursors: HashMap<(Proto, Option<Ipv4Addr>), (u32, u32)>,
}

impl PortTable {
    /// The ports of `published`, drawing from `range`.
    pub fn new(published: impl IntoIterator<Item = PortMapping>, range: (u16, u16)) -> Self {
        let mut table = Self {
            used: HashMap::new(),
            range,
            cursors: HashMap::new(),
        };
        for m in published {
            table.add(m.proto, m.host_ip, m.host_port, Clash::Published);
        }
        table
    }

    /// What `m` clashes with, if anything (see [`PortMapping::clashes_with`]).
    pub fn clash(&self, m: &PortMapping) -> Option<Clash> {
        self.clash_at(m.proto, m.host_ip, m.host_port)
    }

    fn clash_at(&self, proto: Proto, host_ip: Option<Ipv4Addr>, port: u16) -> Option<Clash> {
        self.used
            .get(&(proto, port))?
            .iter()
            .find(|(ip, _)| *ip == host_ip || ip.is_none() || host_ip.is_none())
            .map(|(_, clash)| *clash)
    }

    /// Adds a mapping of this request (checked with [`Self::clash`] first).
    pub fn insert(&mut self, m: &PortMapping) {
        self.add(m.proto, m.host_ip, m.host_port, Clash::Repeated);
    }

    fn add(&mut self, proto: Proto, host_ip: Option<Ipv4Addr>, port: u16, why: Clash) {
        self.used
            .entry((proto, port))
            .or_default()
            .push((host_ip, why));
    }

    /// A free host port for `proto` on `host_ip`, taken at once; None when the range is full.
    pub fn draw(&mut self, proto: Proto, host_ip: Option<Ipv4Addr>) -> Option<u16> {
        let (lo, hi) = self.range;
        let span = u32::from(hi.checked_sub(lo)?) + 1;
        let (start, mut next) = *self.cursors.entry((proto, host_ip)).or_insert_with(|| {
            (
                RandomState::new().hash_one((proto, host_ip)) as u32 % span,
                0,
            )
        });
        let mut found = None;
        while next < span && found.is_none() {
            let port = lo + ((start + next) % span) as u16;
            next += 1;
            if self.clash_at(proto, host_ip, port).is_none() {
                found = Some(port);
            }
        }
        self.cursors.insert((proto, host_ip), (start, next));
        let port = found?;
        self.add(proto, host_ip, port, Clash::Repeated);
        Some(port)
    }
}

/// A parsed SPEC, before random host ports are drawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub proto: Proto,
    pub host_ip: Option<Ipv4Addr>,
    /// None: a random free host port for each endpoint port.
    pub host_ports: Option<(u16, u16)>,
    pub ports: (u16, u16),
}

impl PortSpec {
    /// The endpoint ports of the spec, in order.
    pub fn endpoint_ports(&self) -> impl Iterator<Item = u16> {
        self.ports.0..=self.ports.1
    }

    /// The mappings, with `draw` choosing a host port where the spec leaves it open.
    pub fn mappings(
        &self,
        mut draw: impl FnMut(Proto, Option<Ipv4Addr>) -> Result<u16, String>,
    ) -> Result<Vec<PortMapping>, String> {
        let mut out = Vec::new();
        for (i, port) in self.endpoint_ports().enumerate() {
            let host_port = match self.host_ports {
                Some((first, _)) => first + i as u16,
                None => draw(self.proto, self.host_ip)?,
            };
            out.push(PortMapping {
                proto: self.proto,
                port,
                host_ip: self.host_ip,
                host_port,
            });
        }
        Ok(out)
    }
}

impl FromStr for PortSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid port spec {spec:?}: {why}");
        let (body, proto) = match spec.rsplit_once('/') {
            Some((body, proto)) => (body, proto.parse().map_err(|e: String| bad(&e))?),
            None => (spec, Proto::Tcp),
        };
        let parts: Vec<&str> = body.split(':').collect();
        let (ip, host, container) = match parts.as_slice() {
            [c] => (None, None, *c),
            [h, c] => (None, Some(*h), *c),
            [ip, h, c] => (Some(*ip), (!h.is_empty()).then_some(*h), *c),
            _ => return Err(bad("expected [[IP:]HPORT:]CPORT[/PROTO]")),
        };
        let host_ip = match ip {
            None => None,
            Some(ip) => {
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| bad(&format!("{ip:?} is not an IPv4 address")))?;
                (!ip.is_unspecified()).then_some(ip)
            }
        };
        let ports = port_range(container).map_err(|e| bad(&e))?;
        let host_ports = host.map(port_range).transpose().map_err(|e| bad(&e))?;
        if let Some((h1, h2)) = host_ports
            && h2 - h1 != ports.1 - ports.0
        {
            return Err(bad("the host and endpoint ranges differ in length"));
        }
        Ok(PortSpec {
            proto,
            host_ip,
            host_ports,
            ports,
        })
    }
}

/// `P` or `P1-P2`, ports 1 to 65535.
fn port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(s)?, port(s)?),
    };
    if a > b {
        return Err(format!("range {s} ends before it starts"));
    }
    Ok((a, b))
}

fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?} is not a port (1-65535)")),
    }
}

/// `--expose PORT[/PROTO]` (also a range `P1-P2`).
pub fn parse_expose(s: &str) -> Result<Vec<(u16, Proto)>, String> {
    let bad = |why: String| format!("invalid --expose {s:?}: {why}");
    let (body, proto) = match s.rsplit_once('/') {
        Some((body, proto)) => (body, proto.parse().map_err(bad)?),
        None => (s, Proto::Tcp),
    };
    let (a, b) = port_range(body).map_err(bad)?;
    Ok((a..=b).map(|p| (p, proto)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> PortSpec {
        s.parse().unwrap()
    }

    #[test]
    fn docker_forms() {
        assert_eq!(
            spec("8080:80"),
            PortSpec {
                proto: Proto::Tcp,
                host_ip: None,
                host_ports: Some((8080, 8080)),
                ports: (80, 80)
            }
        );
        assert_eq!(
            spec("127.0.0.1:8080:80/udp"),
            PortSpec {
                proto: Proto::Udp,
                host_ip: Some(Ipv4Addr::LOCALHOST),
                host_ports: Some((8080, 8080)),
                ports: (80, 80)
            }
        );
        assert_eq!(spec("10.0.0.1::80").host_ports, None);
        assert_eq!(
            spec("10.0.0.1::80").host_ip,
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(spec("80").host_ports, None);
        assert_eq!(spec("0.0.0.0:80:80").host_ip, None);
        assert_eq!(spec("8000-8002:9000-9002").ports, (9000, 9002));
    }

    #[test]
    fn ranges_expand_in_order() {
        let maps = spec("8000-8001:9000-9001/udp")
            .mappings(|_, _| unreachable!())
            .unwrap();
        assert_eq!(
            maps.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["9000/udp -> 0.0.0.0:8000", "9001/udp -> 0.0.0.0:8001"]
        );
    }

    #[test]
    fn random_host_ports_are_drawn() {
        let mut next = 40000;
        let maps = spec("80-81")
            .mappings(|_, _| {
                next += 1;
                Ok(next)
            })
            .unwrap();
        assert_eq!(maps[0].host_port, 40001);
        assert_eq!(maps[1].host_port, 40002);
    }

    #[test]
    fn bad_specs_are_rejected() {
        for bad in [
            "",
            "0",
            "65536",
            "abc",
            "80/sctp",
            "1.2.3:80:80",
            "8000-8001:80",
            "90-80",
            "1:2:3:4",
            ":80",
            "80:",
            "-1",
        ] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn clashes() {
        let any = spec("8080:80").mappings(|_, _| unreachable!()).unwrap()[0];
        let one = spec("10.0.0.1:8080:81")
            .mappings(|_, _| unreachable!())
            .unwrap()[0];
        let other = spec("10.0.0.2:8080:81")
            .mappings(|_, _| unreachable!())
            .unwrap()[0];
        let udp = spec("8080:80/udp").mappings(|_, _| unreachable!()).unwrap()[0];
        assert!(any.clashes_with(&one));
        assert!(!one.clashes_with(&other));
        assert!(!any.clashes_with(&udp));
    }

    #[test]
    fn table_draws_every_free_port_once_and_finds_clashes() {
        let published = spec("10.0.0.1:40001:80")
            .mappings(|_, _| unreachable!())
            .unwrap();
        let mut table = PortTable::new(published, (40000, 40003));
        // 40001 is taken on 10.0.0.1, so for every address too.
        let mut drawn: Vec<u16> = std::iter::from_fn(|| table.draw(Proto::Tcp, None)).collect();
        drawn.sort_unstable();
        assert_eq!(drawn, [40000, 40002, 40003]);
        assert_eq!(table.draw(Proto::Udp, None).map(|p| p / 4 * 4), Some(40000));
        let any = spec("40001:81").mappings(|_, _| unreachable!()).unwrap()[0];
        assert_eq!(table.clash(&any), Some(Clash::Published));
        let other = spec("10.0.0.2:40009:81")
            .mappings(|_, _| unreachable!())
            .unwrap()[0];
        assert_eq!(table.clash(&other), None);
        table.insert(&other);
        assert_eq!(table.clash(&other), Some(Clash::Repeated));
    }

    #[test]
    fn table_is_linear() {
        // Counted in probes, not timed: drawing every port of the range looks at each once.
        let mut table = PortTable::new([], (1024, 65535));
        for _ in 0..64512 {
            assert!(table.draw(Proto::Tcp, None).is_some());
        }
        assert_eq!(table.draw(Proto::Tcp, None), None);
        let (_, probes) = table.cursors[&(Proto::Tcp, None)];
        assert_eq!(probes, 64512);
    }

    #[test]
    fn expose() {
        assert_eq!(parse_expose("80").unwrap(), [(80, Proto::Tcp)]);
        assert_eq!(
            parse_expose("53-54/udp").unwrap(),
            [(53, Proto::Udp), (54, Proto::Udp)]
        );
        assert!(parse_expose("x").is_err());
    }
}
