//! The reference CNI plugins (`bridge` + `portmap`, Debian's containernetworking-plugins), called
//! as a runtime calls them: the plugin's binary with the CNI_* environment and its network
//! configuration on stdin, `portmap` given the `bridge` result as `prevResult`. This is what a
//! Kubernetes node or a CNI-backed Podman does for a pod with host ports.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{lab::Lab, rulesets::Mapping};

/// Where Debian installs the plugins.
pub const PLUGINS: &str = "/usr/lib/cni";
/// The network's name and the container's ID (one pod).
const NETWORK: &str = "bench";
const CONTAINER: &str = "bench";

/// One pod attached through the reference plugins, from the host namespace `host`.
pub struct Pod {
    host: String,
    netns: PathBuf,
    /// host-local's leases, kept in the lab's directory rather than /var/lib/cni.
    data_dir: PathBuf,
    /// The `bridge` plugin's ADD result, which `portmap` is given.
    attached: Value,
}

impl Pod {
    /// `bridge` ADD: the bridge `cni0` (gateway 172.17.0.1), the pod's veth with 172.17.0.2/16
    /// and a default route, and the masquerade of its traffic (`ipMasq`).
    pub fn attach(host: &str, endpoint: &str, data_dir: &Path) -> Result<Self> {
        let mut pod = Self {
            host: host.to_owned(),
            netns: Path::new("/run/netns").join(endpoint),
            data_dir: data_dir.to_owned(),
            attached: Value::Null,
        };
        pod.attached = pod.call("bridge", "ADD", &pod.bridge_conf())?;
        Ok(pod)
    }

    /// `portmap` ADD with `mappings`, after a DEL of the previous ones (`previous` non-empty):
    /// a runtime changes a pod's host ports only by attaching it again.
    pub fn map_ports(&self, previous: &[Mapping], mappings: &[Mapping]) -> Result<()> {
        if !previous.is_empty() {
            self.call("portmap", "DEL", &self.portmap_conf(previous))?;
        }
        self.call("portmap", "ADD", &self.portmap_conf(mappings))?;
        Ok(())
    }

    fn bridge_conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "dataDir": self.data_dir,
                "ranges": [[{
                    "subnet": super::rulesets::SUBNET,
                    "rangeStart": super::rulesets::ENDPOINT,
                    "gateway": "172.17.0.1",
                }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
            },
        })
    }

    fn portmap_conf(&self, mappings: &[Mapping]) -> Value {
        let ports: Vec<Value> = mappings
            .iter()
            .map(|m| json!({ "hostPort": m.host, "containerPort": m.container, "protocol": m.proto }))
            .collect();
        json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "snat": true,
            "runtimeConfig": { "portMappings": ports },
            "prevResult": self.attached,
        })
    }

    /// Runs plugin `plugin` with `command` in the host namespace; its result.
    fn call(&self, plugin: &str, command: &str, conf: &Value) -> Result<Value> {
        let mut child = Lab::command_in(&self.host, Path::new(PLUGINS).join(plugin))?
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", CONTAINER)
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", PLUGINS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running the CNI plugin {plugin}"))?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "CNI {plugin} {command}: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if out.stdout.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("CNI {plugin} {command}: the result is not JSON"))
    }
}
