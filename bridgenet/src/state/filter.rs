//! User filter rules as the store keeps them, and the grammar of `filter add`'s options.
use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Proto;

/// What a rule does with the packets it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Drop,
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Action::Allow),
            "drop" => Ok(Action::Drop),
            _ => Err(format!("invalid action {s:?} (allow or drop)")),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Drop => "drop",
        })
    }
}

/// `--dport PORT[/PROTO]`: the destination port as it arrives (a published host port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dport {
    pub port: u16,
    pub proto: Proto,
}

impl FromStr for Dport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid port {s:?} (expected PORT[/PROTO] such as 8080 or 53/udp)");
        let (port, proto) = match s.split_once('/') {
            Some((port, proto)) => (port, proto.parse::<Proto>().map_err(|_| bad())?),
            // Docker's default protocol.
            None => (s, Proto::Tcp),
        };
        match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Dport { port, proto }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Dport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.proto)
    }
}

/// `--src CIDR` of either family (an address alone is a /32 or a /128).
pub fn parse_src(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
        format!("invalid source {s:?} (expected a CIDR such as 10.1.0.0/24 or 2001:db8::/32)")
    })
}

/// One rule. Rules are evaluated in the order they were added; the first that matches decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Stable: never reused for another rule.
    pub id: u32,
    /// The destination endpoint's network; None: any.
    pub network: Option<String>,
    /// Source prefix, of its family only; None: any source of either family.
    pub src: Option<IpNet>,
    /// None: every protocol and port.
    pub dport: Option<Dport>,
    pub action: Action,
    /// Index of the rule's packet counter in the datapath (reused after `filter rm`).
    pub slot: u16,
}

/// The rules in order, and the next rule id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub rules: Vec<Rule>,
    pub next_id: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert_eq!(
            "8080".parse::<Dport>().unwrap(),
            Dport {
                port: 8080,
                proto: Proto::Tcp
            }
        );
        assert_eq!("53/udp".parse::<Dport>().unwrap().proto, Proto::Udp);
        for bad in ["0", "70000", "80/sctp", "x", "80/", ""] {
            assert!(bad.parse::<Dport>().is_err(), "{bad}");
        }
        assert_eq!(parse_src("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_src("10.1.2.3/16").unwrap().to_string(), "10.1.0.0/16");
        assert_eq!(parse_src("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_src("2001:db8:1:2::9/48").unwrap().to_string(),
            "2001:db8:1::/48"
        );
        for bad in ["10.0.0.0/33", "banana", "2001:db8::/129", "[::1]"] {
            assert!(parse_src(bad).is_err(), "{bad}");
        }
        assert_eq!("drop".parse::<Action>().unwrap(), Action::Drop);
        assert!("reject".parse::<Action>().is_err());
    }
}
