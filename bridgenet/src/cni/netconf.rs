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
    /// A dual-stack network's IPv6 subnet and gateway (Docker's `--ipv6 --subnet`).
    pub subnet6: Option<String>,
    pub gateway6: Option<String>,
    /// false: an IPv6-only network (Docker 28's `--ipv4=false`), with `subnet6` only.
    pub ipv4: Option<bool>,
    pub bridge: Option<String>,
    pub icc: Option<bool>,
    pub gateway_mode: Option<String>,
    /// IPv6's gateway mode (`gatewayMode6`), as `gatewayMode` for IPv4.
    pub gateway_mode6: Option<String>,
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
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("{key} {v}: an IPv6 {key} goes in {key}6"),
                ));
            }
        }
        for (key, value) in [("subnet6", &self.subnet6), ("gateway6", &self.gateway6)] {
            if let Some(v) = value.as_deref().filter(|v| !v.contains(':')) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("{key} {v}: not an IPv6 address (expected such as 2001:db8:1::/64)"),
                ));
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
            subnet6: self.subnet6.clone(),
            gateway6: self.gateway6.clone(),
            ipv4: self.ipv4,
            bridge: self.bridge.clone(),
            icc: self.icc,
            gateway_mode: self.gateway_mode.clone(),
            gateway_mode6: self.gateway_mode6.clone(),
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
                // No host IP is every address of both families, as Podman's own networks
                // publish on a dual-stack container (the daemon: IPv6 only if it has it).
                let ip = match m.host_ip.as_str() {
                    "" => String::new(),
                    v6 if v6.contains(':') => format!("[{v6}]:"),
                    v4 => format!("{v4}:"),
                };
                Ok(format!("{ip}{}:{}/{proto}", m.host_port, m.container_port))
            })
            .collect()
    }

    /// The static addresses: the `ips` capability and the `IP` of `CNI_ARGS` (`args_ip`, one
    /// address or a comma-separated list: Podman's CNI backend sends a single static address
    /// there, only two or more as `ips`). At most one per family (a prefix length, if given,
    /// is the network's): (IPv4, IPv6).
    pub fn ips(&self, args_ip: Option<&str>) -> Result<(Option<String>, Option<String>), CniError> {
        let from_args = args_ip.into_iter().flat_map(|list| list.split(','));
        let given = self
            .runtime_config
            .ips
            .iter()
            .map(String::as_str)
            .chain(from_args.map(str::trim).filter(|ip| !ip.is_empty()));
        let (mut v4, mut v6) = (None, None);
        for ip in given {
            let (slot, family) = if ip.contains(':') {
                (&mut v6, "IPv6")
            } else {
                (&mut v4, "IPv4")
            };
            if slot.is_some() {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("ips: two {family} addresses given; a bridgenet attachment has one"),
                ));
            }
            *slot = Some(ip.split('/').next().unwrap_or(ip).to_owned());
        }
        Ok((v4, v6))
    }
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
            ["8080:80/tcp", "127.0.0.1:5353:53/udp"]
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
    fn ipv6_goes_in_its_own_keys_and_one_address_per_family() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","subnet":"2001:db8:5::/64"}"#,
        )
        .unwrap();
        let err = conf.network().unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert_eq!(
            err.msg,
            "subnet 2001:db8:5::/64: an IPv6 subnet goes in subnet6"
        );
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","subnet6":"198.18.5.0/24"}"#,
        )
        .unwrap();
        assert!(conf.network().unwrap_err().msg.contains("not an IPv6"));
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","subnet":"198.18.5.0/24",
                "subnet6":"2001:db8:5::/64","gateway6":"2001:db8:5::1","runtimeConfig":{
                "ips":["198.18.5.7/24","2001:db8:5::7/64"],
                "portMappings":[{"hostPort":8080,"containerPort":80,"hostIP":""},
                  {"hostPort":8081,"containerPort":80,"hostIP":"::"},
                  {"hostPort":8082,"containerPort":80,"hostIP":"0.0.0.0"}]}}"#,
        )
        .unwrap();
        let network = conf.network().unwrap();
        assert_eq!(network.subnet6.as_deref(), Some("2001:db8:5::/64"));
        assert_eq!(network.gateway6.as_deref(), Some("2001:db8:5::1"));
        assert_eq!(
            conf.ips(None).unwrap(),
            (Some("198.18.5.7".into()), Some("2001:db8:5::7".into()))
        );
        assert_eq!(
            conf.publish().unwrap(),
            ["8080:80/tcp", "[::]:8081:80/tcp", "0.0.0.0:8082:80/tcp"]
        );
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","runtimeConfig":{
                "ips":["2001:db8:5::7/64","2001:db8:5::8/64"]}}"#,
        )
        .unwrap();
        assert_eq!(
            conf.ips(None).unwrap_err().msg,
            "ips: two IPv6 addresses given; a bridgenet attachment has one"
        );
        // Podman's single static address comes in CNI_ARGS; with `ips`, one per family.
        assert_eq!(
            conf.ips(Some("198.18.5.9")).unwrap_err().msg,
            "ips: two IPv6 addresses given; a bridgenet attachment has one"
        );
        let plain = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#).unwrap();
        assert_eq!(
            plain.ips(Some("2001:db8:5::9")).unwrap(),
            (None, Some("2001:db8:5::9".into()))
        );
        assert_eq!(
            plain.ips(Some("198.18.5.9,2001:db8:5::9")).unwrap(),
            (Some("198.18.5.9".into()), Some("2001:db8:5::9".into()))
        );
    }
}
