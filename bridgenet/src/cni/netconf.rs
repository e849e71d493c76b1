//! The network configuration a runtime gives `bridgenet-cni` on stdin, with the capabilities
//! it fills in (`runtimeConfig`), and what it becomes for the daemon.
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::{CniError, code};
use crate::api::{CniAttachment, CniNetwork};

/// The plugin's configuration. Keys it does not know are left alone: runtimes add their own
/// (`capabilities`, `args`, ...).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The bridgenet network; default: `name`.
    pub network: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub bridge: Option<String>,
    pub icc: Option<bool>,
    pub gateway_mode: Option<String>,
    pub mtu: Option<u32>,
    #[serde(default, rename = "nonMasqueradeCIDRs")]
    pub non_masquerade_cidrs: Vec<String>,
    /// The daemon's API socket.
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// The capabilities bridgenet-cni takes: `portMappings`, `ips`, `mac`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMap>,
    #[serde(default)]
    pub ips: Vec<String>,
    pub mac: Option<String>,
}

/// One port mapping: Podman sends `hostPort`, `containerPort`, `protocol`, `hostIP`;
/// containerd's CRI the same keys capitalised.
#[derive(Debug, Deserialize)]
pub struct PortMap {
    #[serde(rename = "hostPort", alias = "HostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort", alias = "ContainerPort")]
    pub container_port: u16,
    #[serde(default, rename = "protocol", alias = "Protocol")]
    pub protocol: String,
    #[serde(default, rename = "hostIP", alias = "HostIP", alias = "hostIp")]
    pub host_ip: String,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl ValidAttachment {
    pub fn attachment(&self) -> CniAttachment {
        CniAttachment {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

impl NetConf {
    /// Parses stdin: not JSON or a wrong type is code 6 (failed to decode).
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let de = &mut serde_json::Deserializer::from_slice(stdin);
        serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!(" at {path}")
            };
            CniError::new(
                code::DECODE,
                format!("invalid network configuration{at}: {}", err.inner()),
            )
        })
    }

    /// The bridgenet network this configuration names, with its settings.
    pub fn network(&self) -> Result<CniNetwork, CniError> {
        for (key, value) in [("subnet", &self.subnet), ("gateway", &self.gateway)] {
            if let Some(v) = value.as_deref().filter(|v| v.contains(':')) {
                return Err(ipv6_refused(&format!("{key} {v}")));
            }
        }
        if self.non_masquerade_cidrs.iter().any(|c| c.is_empty()) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "nonMasqueradeCIDRs: an empty entry (expected CIDRs such as 198.18.0.0/15)",
            ));
        }
        Ok(CniNetwork {
            name: self.network.clone().unwrap_or_else(|| self.name.clone()),
            subnet: self.subnet.clone(),
            gateway: self.gateway.clone(),
            bridge: self.bridge.clone(),
            icc: self.icc,
            gateway_mode: self.gateway_mode.clone(),
            mtu: self.mtu,
            non_masquerade: self.non_masquerade_cidrs.clone(),
        })
    }

    /// `portMappings` as `-p` SPECs (`IP:HOST:CONTAINER/PROTO`), which the daemon checks.
    pub fn publish(&self) -> Result<Vec<String>, CniError> {
        self.runtime_config
            .port_mappings
            .iter()
            .map(|m| {
                let proto = match m.protocol.to_ascii_lowercase().as_str() {
                    "" | "tcp" => "tcp",
                    "udp" => "udp",
                    other => {
                        return Err(CniError::new(
                            code::INVALID_CONFIG,
                            format!(
                                "portMappings: protocol {other:?} is not supported by bridgenet \
                                 (tcp or udp)"
                            ),
                        ));
                    }
                };
                if m.host_port == 0 || m.container_port == 0 {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!(
                            "portMappings: hostPort {} containerPort {}: both must be 1-65535",
                            m.host_port, m.container_port
                        ),
                    ));
                }
                let ip = if m.host_ip.is_empty() {
                    "0.0.0.0"
                } else {
                    &m.host_ip
                };
                Ok(format!("{ip}:{}:{}/{proto}", m.host_port, m.container_port))
            })
            .collect()
    }

    /// The `ips` capability: one IPv4 address (a prefix length, if given, is the network's).
    pub fn ip(&self) -> Result<Option<String>, CniError> {
        if let Some(v6) = self.runtime_config.ips.iter().find(|ip| ip.contains(':')) {
            return Err(ipv6_refused(&format!("ips {v6}")));
        }
        match self.runtime_config.ips.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.split('/').next().unwrap_or(one).to_owned())),
            more => Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "ips: {} addresses given; a bridgenet attachment has one",
                    more.len()
                ),
            )),
        }
    }
}

/// IPv6 asked for in a configuration: refused rather than left out.
fn ipv6_refused(what: &str) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("{what}: IPv6 through CNI is not supported yet"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_port_mapping_spellings_become_specs() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"bridgenet-cni","runtimeConfig":{
                "portMappings":[
                  {"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":""},
                  {"HostPort":5353,"ContainerPort":53,"Protocol":"UDP","HostIP":"127.0.0.1"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            conf.publish().unwrap(),
            ["0.0.0.0:8080:80/tcp", "127.0.0.1:5353:53/udp"]
        );
    }

    #[test]
    fn bad_input_gets_the_spec_codes() {
        let err = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!(err.code, code::DECODE);
        let err = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":"x"}"#)
            .unwrap_err();
        assert!(err.msg.contains("mtu"), "{}", err.msg);
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{
                "portMappings":[{"hostPort":80,"containerPort":80,"protocol":"sctp"}]}}"#,
        )
        .unwrap();
        assert_eq!(conf.publish().unwrap_err().code, code::INVALID_CONFIG);
    }

    #[test]
    fn ipv6_is_refused_not_ignored() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","subnet":"2001:db8:5::/64"}"#,
        )
        .unwrap();
        let err = conf.network().unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert_eq!(
            err.msg,
            "subnet 2001:db8:5::/64: IPv6 through CNI is not supported yet"
        );
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{
                "ips":["198.18.5.7/24","2001:db8:5::7/64"]}}"#,
        )
        .unwrap();
        let err = conf.ip().unwrap_err();
        assert!(err.msg.contains("IPv6 through CNI"), "{}", err.msg);
    }
}
