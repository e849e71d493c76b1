//! What Docker's remote network driver protocol (libnetwork) sends, and how its options become
//! bridgenet's: every refusal is one line, found before anything changes.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::{GatewayMode, Proto};

/// `/NetworkDriver.CreateNetwork`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub aux_addresses: Option<BTreeMap<String, String>>,
}

/// Calls that name a network only (`DeleteNetwork`) or an endpoint too.
#[derive(Debug, Deserialize)]
pub struct Ids {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default)]
    pub endpoint_id: String,
    /// The endpoint options (`com.docker.network.portmap`, ...), in the calls that carry them.
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, Value>>,
}

/// `/NetworkDriver.CreateEndpoint`.
#[derive(Debug, Deserialize)]
pub struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: Option<Interface>,
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Interface {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(
        rename = "AddressIPv6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub address_ipv6: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

/// One entry of `com.docker.network.portmap`. Proto is a number: 6 tcp, 17 udp, 132 sctp;
/// HostPort 0 leaves the host port to the driver.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    pub proto: u8,
    pub port: u16,
    #[serde(rename = "HostIP", default)]
    pub host_ip: String,
    #[serde(default)]
    pub host_port: u16,
    #[serde(default)]
    pub host_port_end: u16,
}

pub const PORTMAP: &str = "com.docker.network.portmap";
const GENERIC: &str = "com.docker.network.generic";
const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
const ENABLE_IPV4: &str = "com.docker.network.enable_ipv4";
const INTERNAL: &str = "com.docker.network.internal";

const BRIDGE_NAME: &str = "com.docker.network.bridge.name";
const ENABLE_ICC: &str = "com.docker.network.bridge.enable_icc";
const ENABLE_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
const HOST_BINDING: &str = "com.docker.network.bridge.host_binding_ipv4";
const MTU: &str = "com.docker.network.driver.mtu";
const GATEWAY_MODE: &str = "com.docker.network.bridge.gateway_mode_ipv4";
const GATEWAY_MODE6: &str = "com.docker.network.bridge.gateway_mode_ipv6";

/// A Docker network as bridgenet makes it.
#[derive(Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub subnet: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// `--ipv6`: the IPv6 subnet and gateway of Docker's IPAM.
    pub subnet6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    pub bridge: Option<String>,
    pub icc: bool,
    pub internal: bool,
    pub masquerade: bool,
    pub gateway_mode: GatewayMode,
    pub gateway_mode6: GatewayMode,
    pub extras: Extras,
}

/// What a Docker network keeps beside bridgenet's network (kept in the driver's own file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extras {
    /// `host_binding_ipv4`: the host address of ports published without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    /// `com.docker.network.driver.mtu`, on the bridge and every veth pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// Docker's booleans are Go's strconv.ParseBool.
fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("option {key}={value:?}: expected true or false")),
    }
}

fn json_bool(key: &str, value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => parse_bool(key, s),
        _ => Err(format!("option {key}: expected true or false, not {value}")),
    }
}

impl CreateNetwork {
    /// The network to make, or the one line that says why not.
    pub fn spec(&self) -> Result<NetworkSpec, String> {
        let mut internal = false;
        let mut ipv6 = false;
        let mut generic = BTreeMap::new();
        for (key, value) in &self.options {
            match key.as_str() {
                ENABLE_IPV6 => ipv6 = json_bool(key, value)?,
                ENABLE_IPV4 if !json_bool(key, value)? => {
                    return Err("bridgenet networks are IPv4: enable_ipv4 cannot be false".into());
                }
                ENABLE_IPV4 => {}
                INTERNAL => internal = json_bool(key, value)?,
                GENERIC => {
                    let Value::Object(map) = value else {
                        return Err(format!("option {GENERIC}: expected an object"));
                    };
                    for (k, v) in map {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        generic.insert(k.clone(), v);
                    }
                }
                other => return Err(format!("unsupported option {other}")),
            }
        }
        let (subnet, gateway) = match self.ipv4_data.as_deref() {
            Some([data]) => ipam(data)?,
            Some([]) | None => return Err("Docker's IPAM gave no IPv4 subnet".into()),
            Some(_) => return Err("bridgenet networks have one subnet: give one --subnet".into()),
        };
        let (subnet6, gateway6) = match (ipv6, self.ipv6_data.as_deref()) {
            (false, None | Some([])) => (None, None),
            (false, Some(_)) => return Err("Docker gave IPv6 subnets without --ipv6".into()),
            (true, Some([data])) => {
                let (subnet6, gateway6) = ipam(data)?;
                (Some(subnet6), gateway6)
            }
            (true, None | Some([])) => {
                return Err("--ipv6 needs an IPv6 --subnet (bridgenet picks no IPv6 pool)".into());
            }
            (true, Some(_)) => {
                return Err("bridgenet networks have one IPv6 subnet: give one".into());
            }
        };
        let mut spec = NetworkSpec {
            subnet,
            gateway,
            subnet6,
            gateway6,
            bridge: None,
            icc: true,
            internal,
            masquerade: true,
            gateway_mode: GatewayMode::Nat,
            gateway_mode6: GatewayMode::Nat,
            extras: Extras::default(),
        };
        for (key, value) in &generic {
            match key.as_str() {
                BRIDGE_NAME => spec.bridge = Some(value.clone()),
                ENABLE_ICC => spec.icc = parse_bool(key, value)?,
                ENABLE_MASQUERADE => spec.masquerade = parse_bool(key, value)?,
                HOST_BINDING => {
                    let ip: Ipv4Addr = value
                        .parse()
                        .map_err(|_| format!("option {key}={value:?}: expected an IPv4 address"))?;
                    spec.extras.host_ip = (!ip.is_unspecified()).then_some(ip);
                }
                MTU => {
                    let mtu = value
                        .parse::<u32>()
                        .ok()
                        .filter(|m| (68..=65535).contains(m))
                        .ok_or_else(|| format!("option {key}={value:?}: expected 68 to 65535"))?;
                    spec.extras.mtu = Some(mtu);
                }
                GATEWAY_MODE | GATEWAY_MODE6 => {
                    let mode = value.parse().map_err(|_| {
                        format!("option {key}={value:?}: expected {}", GatewayMode::NAMES)
                    })?;
                    if key == GATEWAY_MODE {
                        spec.gateway_mode = mode;
                    } else {
                        spec.gateway_mode6 = mode;
                    }
                }
                _ => {
                    return Err(format!(
                        "unsupported option {key} (bridgenet takes {BRIDGE_NAME}, {ENABLE_ICC}, \
                         {ENABLE_MASQUERADE}, {HOST_BINDING}, {MTU}, {GATEWAY_MODE}, \
                         {GATEWAY_MODE6})"
                    ));
                }
            }
        }
        if spec.gateway_mode == GatewayMode::Isolated && !spec.internal {
            return Err(format!(
                "option {GATEWAY_MODE}=isolated needs an internal network (--internal)"
            ));
        }
        Ok(spec)
    }
}

/// The pool and the gateway (`198.19.7.1/24`, `2001:db8:7::1/64`) of Docker's IPAM.
fn ipam<N: FromStr + Prefixed>(data: &IpamData) -> Result<(N, Option<N::Addr>), String> {
    let pool: N = data
        .pool
        .parse()
        .map_err(|_| format!("Docker's IPAM gave an invalid pool {:?}", data.pool))?;
    if data.aux_addresses.as_ref().is_some_and(|a| !a.is_empty()) {
        return Err("auxiliary addresses (--aux-address) are not supported by bridgenet".into());
    }
    let gateway = if data.gateway.is_empty() {
        None
    } else {
        let gw: N = data
            .gateway
            .parse()
            .map_err(|_| format!("Docker's IPAM gave an invalid gateway {:?}", data.gateway))?;
        Some(gw.address())
    };
    Ok((pool, gateway))
}

/// An IPv4 or IPv6 prefix, for `ipam`.
trait Prefixed {
    type Addr;
    fn address(&self) -> Self::Addr;
}

impl Prefixed for Ipv4Net {
    type Addr = Ipv4Addr;
    fn address(&self) -> Ipv4Addr {
        self.addr()
    }
}

impl Prefixed for Ipv6Net {
    type Addr = Ipv6Addr;
    fn address(&self) -> Ipv6Addr {
        self.addr()
    }
}

/// The addresses Docker gives an endpoint (`198.19.7.2/24`, and `2001:db8:7::2/64` on an
/// IPv6 network).
pub fn endpoint_address(iface: Option<&Interface>) -> Result<(Ipv4Addr, Option<Ipv6Addr>), String> {
    let iface = iface.ok_or("Docker gave the endpoint no interface")?;
    let net: Ipv4Net = iface.address.parse().map_err(|_| {
        format!(
            "Docker gave the endpoint an invalid address {:?}",
            iface.address
        )
    })?;
    let ip6 = match iface.address_ipv6.as_str() {
        "" => None,
        a => {
            let net6: Ipv6Net = a
                .parse()
                .map_err(|_| format!("Docker gave the endpoint an invalid IPv6 address {a:?}"))?;
            Some(net6.addr())
        }
    };
    Ok((net.addr(), ip6))
}

/// The port bindings of an endpoint's options as bridgenet SPECs (`IP:HPORT:CPORT/PROTO`),
/// host ports left open for HostPort 0. A host port range (`-p 8080-8090:80`) becomes the
/// first of its ports for which `free` says yes.
pub fn port_specs(
    options: Option<&BTreeMap<String, Value>>,
    default_host_ip: Option<Ipv4Addr>,
    free: impl Fn(Proto, Option<IpAddr>, u16) -> bool,
) -> Result<Vec<String>, String> {
    let Some(value) = options.and_then(|o| o.get(PORTMAP)) else {
        return Ok(Vec::new());
    };
    let bindings: Vec<PortBinding> = match value {
        Value::Null => Vec::new(),
        v => serde_json::from_value(v.clone()).map_err(|e| format!("invalid {PORTMAP}: {e}"))?,
    };
    let mut specs = Vec::new();
    for b in bindings {
        let proto = match b.proto {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            132 => {
                return Err(format!(
                    "port {}/sctp: SCTP is not supported by bridgenet (publish tcp or udp)",
                    b.port
                ));
            }
            n => return Err(format!("port {}: unsupported protocol number {n}", b.port)),
        };
        // As Docker 27: "" every family the endpoint has (or host_binding_ipv4), 0.0.0.0 IPv4
        // only, :: IPv6 only.
        let host_ip: Option<IpAddr> = match b.host_ip.as_str() {
            "" => default_host_ip.map(IpAddr::V4),
            s => Some(s.parse::<IpAddr>().map_err(|_| {
                format!(
                    "port {}/{proto}: host address {s:?} is not an IP address",
                    b.port
                )
            })?),
        };
        let end = b.host_port_end.max(b.host_port);
        let host_port = (b.host_port != 0).then(|| {
            (b.host_port..=end)
                .find(|&p| free(proto, host_ip, p))
                .unwrap_or(b.host_port)
        });
        let ip = host_ip.map(crate::state::ports::host_addr);
        specs.push(match (ip, host_port) {
            (None, None) => format!("{}/{proto}", b.port),
            (None, Some(h)) => format!("{h}:{}/{proto}", b.port),
            (Some(ip), None) => format!("{ip}::{}/{proto}", b.port),
            (Some(ip), Some(h)) => format!("{ip}:{h}:{}/{proto}", b.port),
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(options: Value, pool: &str) -> CreateNetwork {
        serde_json::from_value(serde_json::json!({
            "NetworkID": "751e0000000000000000",
            "Options": options,
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": "198.19.7.1/24", "Pool": pool}],
            "IPv6Data": []
        }))
        .unwrap()
    }

    #[test]
    fn what_dockerd_20_10_sends_becomes_a_network() {
        let req = create(
            serde_json::json!({"com.docker.network.enable_ipv6": false,
                "com.docker.network.generic": {"com.docker.network.bridge.enable_icc": "false",
                    "com.docker.network.bridge.host_binding_ipv4": "198.18.0.2",
                    "com.docker.network.driver.mtu": "1400",
                    "com.docker.network.bridge.name": "web0"}}),
            "198.19.7.0/24",
        );
        let spec = req.spec().unwrap();
        assert_eq!(spec.subnet, "198.19.7.0/24".parse().unwrap());
        assert_eq!(spec.gateway, Some(Ipv4Addr::new(198, 19, 7, 1)));
        assert_eq!(spec.bridge.as_deref(), Some("web0"));
        assert!(!spec.icc && spec.masquerade && !spec.internal);
        assert_eq!(spec.extras.host_ip, Some(Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(spec.extras.mtu, Some(1400));
    }

    #[test]
    fn an_ipv6_network_and_endpoint_take_docker_s_ipv6_subnet_and_address() {
        let mut req = create(
            serde_json::json!({"com.docker.network.enable_ipv6": true,
                "com.docker.network.internal": true}),
            "198.19.7.0/24",
        );
        req.ipv6_data = Some(vec![IpamData {
            pool: "2001:db8:7::/64".into(),
            gateway: "2001:db8:7::1/64".into(),
            aux_addresses: None,
        }]);
        let spec = req.spec().unwrap();
        assert_eq!(spec.subnet6, Some("2001:db8:7::/64".parse().unwrap()));
        assert_eq!(spec.gateway6, Some("2001:db8:7::1".parse().unwrap()));
        assert!(spec.internal);
        let iface = Interface {
            address: "198.19.7.2/24".into(),
            address_ipv6: "2001:db8:7::2/64".into(),
            mac_address: String::new(),
        };
        assert_eq!(
            endpoint_address(Some(&iface)).unwrap(),
            (
                Ipv4Addr::new(198, 19, 7, 2),
                Some("2001:db8:7::2".parse().unwrap())
            )
        );
        // IPv6 subnets without --ipv6, or two of them, are refused.
        let one = req.ipv6_data.clone().unwrap().remove(0);
        req.ipv6_data = Some(vec![one.clone(), one]);
        assert!(req.spec().unwrap_err().contains("one IPv6 subnet"));
        req.options.clear();
        assert!(req.spec().unwrap_err().contains("without --ipv6"));
    }

    #[test]
    fn unknown_and_unsupported_options_are_refused_in_one_line() {
        for (options, want) in [
            (
                serde_json::json!({"com.docker.network.generic": {"foo": "bar"}}),
                "unsupported option foo",
            ),
            (
                serde_json::json!({"com.docker.network.enable_ipv6": true}),
                "--ipv6 needs an IPv6 --subnet",
            ),
            (
                serde_json::json!({"com.docker.network.generic":
                    {"com.docker.network.bridge.enable_icc": "maybe"}}),
                "expected true or false",
            ),
            (
                serde_json::json!({"com.docker.network.generic":
                    {"com.docker.network.bridge.gateway_mode_ipv4": "bridged"}}),
                "expected nat, nat-unprotected, routed or isolated",
            ),
            (
                serde_json::json!({"com.docker.network.generic":
                    {"com.docker.network.bridge.gateway_mode_ipv4": "isolated"}}),
                "isolated needs an internal network",
            ),
        ] {
            let err = create(options, "198.19.7.0/24").spec().unwrap_err();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn gateway_modes_are_taken() {
        for mode in ["nat", "nat-unprotected", "routed"] {
            let req = create(
                serde_json::json!({"com.docker.network.generic":
                    {"com.docker.network.bridge.gateway_mode_ipv4": mode}}),
                "198.19.7.0/24",
            );
            assert_eq!(req.spec().unwrap().gateway_mode.as_str(), mode);
            let req = create(
                serde_json::json!({"com.docker.network.generic":
                    {"com.docker.network.bridge.gateway_mode_ipv6": mode}}),
                "198.19.7.0/24",
            );
            let spec = req.spec().unwrap();
            assert_eq!(
                (spec.gateway_mode, spec.gateway_mode6.as_str()),
                (GatewayMode::Nat, mode),
                "gateway_mode_ipv6 is IPv6's own"
            );
        }
        let req = create(
            serde_json::json!({"com.docker.network.internal": true, "com.docker.network.generic":
                {"com.docker.network.bridge.gateway_mode_ipv4": "isolated"}}),
            "198.19.7.0/24",
        );
        assert_eq!(req.spec().unwrap().gateway_mode, GatewayMode::Isolated);
    }

    #[test]
    fn portmap_becomes_specs() {
        let options: BTreeMap<String, Value> = serde_json::from_value(serde_json::json!({
            "com.docker.network.portmap": [
                {"Proto": 6, "IP": "", "Port": 90, "HostIP": "", "HostPort": 0, "HostPortEnd": 0},
                {"Proto": 6, "IP": "", "Port": 81, "HostIP": "127.0.0.1", "HostPort": 0, "HostPortEnd": 0},
                {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
                {"Proto": 17, "IP": "", "Port": 53, "HostIP": "", "HostPort": 5353, "HostPortEnd": 5353},
                {"Proto": 6, "IP": "", "Port": 82, "HostIP": "", "HostPort": 9000, "HostPortEnd": 9005},
                {"Proto": 6, "IP": "", "Port": 80, "HostIP": "::", "HostPort": 8081, "HostPortEnd": 8081},
                {"Proto": 6, "IP": "", "Port": 80, "HostIP": "0.0.0.0", "HostPort": 8082, "HostPortEnd": 8082},
                {"Proto": 6, "IP": "", "Port": 80, "HostIP": "2001:db8::1", "HostPort": 0, "HostPortEnd": 0}
            ]
        }))
        .unwrap();
        let specs = port_specs(Some(&options), None, |_, _, p| p >= 9002).unwrap();
        assert_eq!(
            specs,
            [
                "90/tcp",
                "127.0.0.1::81/tcp",
                "8080:80/tcp",
                "5353:53/udp",
                "9002:82/tcp",
                "[::]:8081:80/tcp",
                "0.0.0.0:8082:80/tcp",
                "[2001:db8::1]::80/tcp"
            ]
        );
        for s in &specs {
            s.parse::<crate::state::PortSpec>().unwrap();
        }
        let bound = port_specs(
            Some(&options),
            Some(Ipv4Addr::new(198, 18, 0, 2)),
            |_, _, _| true,
        )
        .unwrap();
        assert_eq!(bound[0], "198.18.0.2::90/tcp");
        assert_eq!(
            bound[5], "[::]:8081:80/tcp",
            "host_binding_ipv4 is for IPv4"
        );
        let bad: BTreeMap<String, Value> = serde_json::from_value(serde_json::json!({
            "com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostIP": "eth0", "HostPort": 80}]
        }))
        .unwrap();
        let err = port_specs(Some(&bad), None, |_, _, _| true).unwrap_err();
        assert_eq!(
            err,
            "port 80/tcp: host address \"eth0\" is not an IP address"
        );
        let sctp: BTreeMap<String, Value> = serde_json::from_value(serde_json::json!({
            "com.docker.network.portmap": [{"Proto": 132, "Port": 5000, "HostPort": 5000}]
        }))
        .unwrap();
        let err = port_specs(Some(&sctp), None, |_, _, _| true).unwrap_err();
        assert_eq!(
            err,
            "port 5000/sctp: SCTP is not supported by bridgenet (publish tcp or udp)"
        );
    }
}
