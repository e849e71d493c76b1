//! Docker's `-p` grammar: `HPORT:CPORT`, `IP:HPORT:CPORT`, `IP::CPORT`, `CPORT`, an optional
//! `/tcp` or `/udp` suffix, and ranges `H1-H2:C1-C2` of the same length. An IPv6 `IP` is
//! written in brackets (`[::]:8080:80`, `[2001:db8::1]:8080:80`).
use std::{
    collections::{HashMap, hash_map::RandomState},
    fmt,
    hash::BuildHasher as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
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
    /// As Docker 27: None, every host address of each family the endpoint has (0.0.0.0 and
    /// [::]); `0.0.0.0` every IPv4 address only; `::` IPv6 only (the uplinks' IPv6
    /// addresses); another address, that one.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
}

impl PortMapping {
    /// Whether both cannot be published together: same protocol and host port, and host
    /// addresses that overlap.
    pub fn clashes_with(&self, other: &PortMapping) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && hosts_overlap(self.host_ip, other.host_ip)
    }

    /// Where it is published on IPv4, if it is: None for every host address.
    pub fn host_v4(&self) -> Option<Option<Ipv4Addr>> {
        match self.host_ip {
            None => Some(None),
            Some(IpAddr::V4(ip)) => Some((!ip.is_unspecified()).then_some(ip)),
            Some(IpAddr::V6(_)) => None,
        }
    }

    /// Where it is published on IPv6 (when its endpoint has an IPv6 address), if it is: `::`
    /// for the uplinks' IPv6 addresses.
    pub fn host_v6(&self) -> Option<Ipv6Addr> {
        match self.host_ip {
            None => Some(Ipv6Addr::UNSPECIFIED),
            Some(IpAddr::V6(ip)) => Some(ip),
            Some(IpAddr::V4(_)) => None,
        }
    }

    /// The `-p` SPEC that publishes exactly this mapping.
    pub fn spec(&self) -> String {
        let (proto, port, host_port) = (self.proto, self.port, self.host_port);
        match self.host_ip {
            None => format!("{host_port}:{port}/{proto}"),
            Some(ip) => format!("{}:{host_port}:{port}/{proto}", host_addr(ip)),
        }
    }

    /// Its host address and port as `port ls` and `docker port` show them.
    pub fn host(&self) -> String {
        let ip = self
            .host_ip
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        format!("{}:{}", host_addr(ip), self.host_port)
    }
}

/// A host address as specs write it: an IPv6 one in brackets, before its `:PORT`.
pub fn host_addr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    }
}

/// Whether two host addresses of mappings overlap: either is every address of both families,
/// or both are of one family and equal or one is that family's every address.
pub fn hosts_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(a), Some(b)) => {
            a.is_ipv4() == b.is_ipv4() && (a == b || a.is_unspecified() || b.is_unspecified())
        }
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} -> {}", self.port, self.proto, self.host())
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
type HostUse = (Option<IpAddr>, Clash);

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
    cursors: HashMap<(Proto, Option<IpAddr>), (u32, u32)>,
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

    fn clash_at(&self, proto: Proto, host_ip: Option<IpAddr>, port: u16) -> Option<Clash> {
        self.used
            .get(&(proto, port))?
            .iter()
            .find(|(ip, _)| hosts_overlap(*ip, host_ip))
            .map(|(_, clash)| *clash)
    }

    /// Adds a mapping of this request (checked with [`Self::clash`] first).
    pub fn insert(&mut self, m: &PortMapping) {
        self.add(m.proto, m.host_ip, m.host_port, Clash::Repeated);
    }

    fn add(&mut self, proto: Proto, host_ip: Option<IpAddr>, port: u16, why: Clash) {
        self.used
            .entry((proto, port))
            .or_default()
            .push((host_ip, why));
    }

    /// A free host port for `proto` on `host_ip`, taken at once; None when the range is full.
    pub fn draw(&mut self, proto: Proto, host_ip: Option<IpAddr>) -> Option<u16> {
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
    pub host_ip: Option<IpAddr>,
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
        mut draw: impl FnMut(Proto, Option<IpAddr>) -> Result<u16, String>,
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
        let expected = "expected [[IP:]HPORT:]CPORT[/PROTO], an IPv6 IP in brackets";
        let (host_ip, rest) = match body.strip_prefix('[') {
            Some(v6) => {
                let (ip, rest) = v6.split_once("]:").ok_or_else(|| bad(expected))?;
                let ip: Ipv6Addr = ip
                    .parse()
                    .map_err(|_| bad(&format!("{ip:?} is not an IPv6 address")))?;
                (Some(IpAddr::V6(ip)), Some(rest))
            }
            None => (None, None),
        };
        let parts: Vec<&str> = rest.unwrap_or(body).split(':').collect();
        let (ip, host, container) = match (rest, parts.as_slice()) {
            (_, [c]) if rest.is_none() => (None, None, *c),
            (_, [h, c]) if rest.is_some() => (None, (!h.is_empty()).then_some(*h), *c),
            (None, [h, c]) => (None, Some(*h), *c),
            (None, [ip, h, c]) => (Some(*ip), (!h.is_empty()).then_some(*h), *c),
            _ => return Err(bad(expected)),
        };
        let host_ip = match ip {
            None => host_ip,
            Some(ip) => Some(IpAddr::V4(ip.parse().map_err(|_| {
                bad(&format!(
                    "{ip:?} is not an IPv4 address (an IPv6 one goes in brackets)"
                ))
            })?)),
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
                host_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                host_ports: Some((8080, 8080)),
                ports: (80, 80)
            }
        );
        assert_eq!(spec("10.0.0.1::80").host_ports, None);
        assert_eq!(
            spec("10.0.0.1::80").host_ip,
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(spec("80").host_ports, None);
        assert_eq!(spec("80:80").host_ip, None, "both families");
        assert_eq!(
            spec("0.0.0.0:80:80").host_ip,
            Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            "IPv4 only, as Docker 27"
        );
        assert_eq!(
            spec("[::]:8080:80/udp"),
            PortSpec {
                proto: Proto::Udp,
                host_ip: Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
                host_ports: Some((8080, 8080)),
                ports: (80, 80)
            }
        );
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(spec("[2001:db8::1]::80").host_ip, Some(one));
        assert_eq!(spec("[2001:db8::1]::80").host_ports, None);
        for m in [
            "8080:80",
            "0.0.0.0:8080:80/udp",
            "[::]:8080:80",
            "[2001:db8::1]:1:2",
        ] {
            let mapping = spec(m).mappings(|_, _| unreachable!()).unwrap()[0];
            assert_eq!(spec(&mapping.spec()).host_ip, mapping.host_ip, "{m}");
        }
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
            "::1:80:80",
            "[::1]:80",
            "[::1:80:80",
            "[1.2.3.4]:80:80",
            "[fe80::zz]:80:80",
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
        let first = |s: &str| spec(s).mappings(|_, _| unreachable!()).unwrap()[0];
        let (v4_any, v6_any) = (first("0.0.0.0:8080:80"), first("[::]:8080:80"));
        let v6_one = first("[2001:db8::1]:8080:80");
        assert!(!v4_any.clashes_with(&v6_any), "one family each");
        assert!(any.clashes_with(&v6_any) && any.clashes_with(&v4_any));
        assert!(v6_any.clashes_with(&v6_one) && !v6_one.clashes_with(&one));
        assert!(v4_any.clashes_with(&one));
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
