//! Docker's `-p` grammar: `HPORT:CPORT`, `IP:HPORT:CPORT`, `IP::CPORT`, `CPORT`, an optional
//! `/tcp` or `/udp` suffix, and ranges `H1-H2:C1-C2` of the same length.
use std::{fmt, net::Ipv4Addr, str::FromStr};

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
    fn expose() {
        assert_eq!(parse_expose("80").unwrap(), [(80, Proto::Tcp)]);
        assert_eq!(
            parse_expose("53-54/udp").unwrap(),
            [(53, Proto::Udp), (54, Proto::Udp)]
        );
        assert!(parse_expose("x").is_err());
    }
}
