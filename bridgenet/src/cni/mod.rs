//! The CNI plugin `bridgenet-cni` (spec 1.1.0; configurations of versions 0.4.0, 1.0.0 and
//! 1.1.0): a runtime (Podman, containerd, CRI-O) runs it with the command in the environment
//! and the network configuration on stdin. It does no datapath or netlink work itself: each
//! command is one call to the daemon's API (`/cni/...`), as the CLI's verbs are. Results and
//! errors have the spec's shape; errors are one line.
pub mod netconf;

use std::{collections::HashMap, path::PathBuf, time::Duration};

use hyper::Method;
use serde_json::{Value, json};

use crate::api::{self, CniAdd, CniAttached, CniAttachment, CniGc, Endpoint, Network, client};
use netconf::NetConf;

/// The configuration versions bridgenet-cni takes; results use the configuration's version.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// How long one call to the daemon may take before the runtime is told to try again.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The spec's error codes, and bridgenet-cni's own from 100 on.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_CONFIG: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_ENV: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// The daemon refused: an address, port or interface is taken.
    pub const CONFLICT: u32 = 100;
    /// CHECK: the attachment is no longer what ADD made.
    pub const CHECK_FAILED: u32 = 101;
    /// The daemon failed (its log says why).
    pub const DAEMON_FAILED: u32 = 102;
}

/// An error in the spec's shape: `{"cniVersion", "code", "msg", "details"}` on stdout.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }

    /// A failed call to the daemon, by what happened: unreachable is "try again later".
    fn from_call(err: anyhow::Error, command: Command) -> Self {
        if let Some(refused) = err.downcast_ref::<client::Refused>() {
            let code = match (refused.status, command) {
                (400, _) => code::INVALID_CONFIG,
                (404, _) => code::UNKNOWN_CONTAINER,
                (409, Command::Check) => code::CHECK_FAILED,
                (409, _) => code::CONFLICT,
                _ => code::DAEMON_FAILED,
            };
            return Self::new(code, refused.message.clone());
        }
        let code = if command == Command::Status {
            code::NOT_AVAILABLE
        } else {
            code::TRY_AGAIN_LATER
        };
        Self::new(code, format!("{err:#}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

/// Runs one command; returns what goes to stdout and the exit code.
pub fn run(env: &HashMap<String, String>, stdin: &[u8]) -> (String, i32) {
    let version = peek_version(stdin);
    match execute(env, stdin) {
        Ok(Some(out)) => (out.to_string(), 0),
        Ok(None) => (String::new(), 0),
        Err(err) => {
            let body = json!({
                "cniVersion": version,
                "code": err.code,
                "msg": err.msg,
            });
            (body.to_string(), 1)
        }
    }
}

/// The configuration's version when it is readable and supported, for the error's shape.
fn peek_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_owned())
}

fn var<'a>(env: &'a HashMap<String, String>, key: &str) -> Result<&'a str, CniError> {
    env.get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("{key} is not set")))
}

fn execute(env: &HashMap<String, String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let command = var(env, "CNI_COMMAND")?;
    let command = Command::parse(command).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_COMMAND {command:?} is not a CNI command (ADD, DEL, CHECK, VERSION, \
                 STATUS, GC)"
            ),
        )
    })?;
    if command == Command::Version {
        return Ok(Some(json!({
            "cniVersion": peek_version(stdin),
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = NetConf::parse(stdin)?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {:?} is not supported (bridgenet-cni takes {})",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    // The spec's rules for the variables: a bad one is code 7 before the daemon is asked.
    let attachment = || -> Result<CniAttachment, CniError> {
        let container_id = var(env, "CNI_CONTAINERID")?;
        let mut chars = container_id.chars();
        let id_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !id_ok {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID {container_id:?}: letters, digits, _ . - (starting with a \
                     letter or digit)"
                ),
            ));
        }
        let ifname = var(env, "CNI_IFNAME")?;
        if ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || ifname.contains(['/', ':'])
            || ifname.chars().any(char::is_whitespace)
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME {ifname:?} is not an interface name (1 to 15 characters)"),
            ));
        }
        Ok(CniAttachment {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        })
    };
    let netns = || -> Result<String, CniError> {
        let netns = var(env, "CNI_NETNS")?;
        if !netns.starts_with('/') {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS {netns:?} is not a path to a network namespace"),
            ));
        }
        Ok(netns.to_owned())
    };
    let socket = conf
        .socket
        .clone()
        .or_else(|| std::env::var_os("BRIDGENET_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(api::DEFAULT_SOCKET));
    let daemon = Daemon { socket, command };
    match command {
        Command::Add => {
            let args = cni_args(env);
            let (ip, ip6) = conf.ips(args.get("IP").copied())?;
            let mac = conf
                .runtime_config
                .mac
                .as_deref()
                .or(args.get("MAC").copied());
            let req = CniAdd {
                attachment: attachment()?,
                netns: netns()?,
                network: conf.network()?,
                ip,
                ip6,
                mac: mac.map(str::to_owned),
                publish: conf.publish()?,
            };
            let attached: CniAttached =
                daemon.call(Method::POST, "/cni/attachments", Some(&req))?;
            Ok(Some(result(&conf.cni_version, &attached)))
        }
        Command::Del => {
            // DEL needs no namespace (it may be gone): only the attachment.
            let a = attachment()?;
            let _: Option<Endpoint> =
                daemon.call(Method::DELETE, &attachment_path(&a), None::<&()>)?;
            Ok(None)
        }
        Command::Check => {
            let a = attachment()?;
            netns()?;
            let prev = conf.prev_result.as_ref().ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "CHECK needs prevResult (ADD's result)",
                )
            })?;
            let attached: CniAttached =
                daemon.call(Method::GET, &attachment_path(&a), None::<&()>)?;
            check_prev(prev, &attached)?;
            Ok(None)
        }
        Command::Status => {
            let _: Vec<Network> = daemon.call(Method::GET, "/networks", None::<&()>)?;
            Ok(None)
        }
        Command::Gc => {
            let req = CniGc {
                network: conf.network()?.name,
                valid: conf
                    .valid_attachments
                    .iter()
                    .flatten()
                    .map(netconf::ValidAttachment::attachment)
                    .collect(),
            };
            let _: Vec<Endpoint> = daemon.call(Method::POST, "/cni/gc", Some(&req))?;
            Ok(None)
        }
        Command::Version => unreachable!("answered above"),
    }
}

/// `CNI_ARGS` (`K=V;K=V`): what runtimes send there besides capabilities. bridgenet-cni
/// takes `IP` and `MAC` (Podman's CNI backend, CRI-O) and ignores the rest, as
/// `IgnoreUnknown=1` asks.
fn cni_args(env: &HashMap<String, String>) -> HashMap<&str, &str> {
    env.get("CNI_ARGS")
        .map(|args| {
            args.split(';')
                .filter_map(|kv| kv.split_once('='))
                .collect()
        })
        .unwrap_or_default()
}

/// The API path of one attachment.
fn attachment_path(a: &CniAttachment) -> String {
    format!("/cni/attachments/{}/{}", a.container_id, a.ifname)
}

struct Daemon {
    socket: PathBuf,
    command: Command,
}

impl Daemon {
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, CniError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::new(code::DAEMON_FAILED, format!("starting: {e}")))?;
        runtime.block_on(async {
            match tokio::time::timeout(TIMEOUT, client::call(&self.socket, method, path, body))
                .await
            {
                Ok(done) => done.map_err(|e| CniError::from_call(e, self.command)),
                Err(_) => Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "the daemon at {} did not answer within {} s",
                        self.socket.display(),
                        TIMEOUT.as_secs()
                    ),
                )),
            }
        })
    }
}

/// ADD's result: the interface in the container, its addresses with the network's gateways,
/// the default routes. Version 0.4.0 results name the IP version of each address.
pub fn result(version: &str, attached: &CniAttached) -> Value {
    let (ep, net) = (&attached.endpoint, &attached.network);
    let mut ips = Vec::new();
    if let (Some(ip), Some(subnet), Some(gateway)) = (ep.ipv4(), net.subnet, net.gateway) {
        ips.push((
            format!("{ip}/{}", subnet.prefix_len()),
            gateway.to_string(),
            "4",
            "0.0.0.0/0",
        ));
    }
    if let (Some(ip6), Some(subnet6), Some(gateway6)) = (ep.ip6, net.subnet6, net.gateway6) {
        ips.push((
            format!("{ip6}/{}", subnet6.prefix_len()),
            gateway6.to_string(),
            "6",
            "::/0",
        ));
    }
    let addresses: Vec<Value> = ips
        .iter()
        .map(|(address, gateway, family, _)| {
            let mut ip = json!({"address": address, "gateway": gateway, "interface": 0});
            if version == "0.4.0" {
                ip["version"] = json!(family);
            }
            ip
        })
        .collect();
    // An internal network has no way out, in either family.
    let routes: Vec<Value> = if net.internal {
        Vec::new()
    } else {
        ips.iter()
            .map(|(_, gateway, _, default)| json!({"dst": default, "gw": gateway}))
            .collect()
    };
    json!({
        "cniVersion": version,
        "interfaces": [{"name": ep.ifname(), "mac": ep.mac, "sandbox": ep.netns}],
        "ips": addresses,
        "routes": routes,
        "dns": {},
    })
}

/// CHECK: the address ADD reported is the endpoint's.
fn check_prev(prev: &Value, attached: &CniAttached) -> Result<(), CniError> {
    let ep = &attached.endpoint;
    let reported = prev
        .get("ips")
        .and_then(|ips| ips.get(0))
        .and_then(|ip| ip.get("address"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let address = reported.split('/').next().unwrap_or_default();
    // The first address is IPv4's, or IPv6's on an IPv6-only network.
    let has = match (ep.ipv4(), ep.ip6) {
        (Some(ip), _) => ip.to_string(),
        (None, Some(ip6)) => ip6.to_string(),
        (None, None) => String::new(),
    };
    if address != has {
        return Err(CniError::new(
            code::CHECK_FAILED,
            format!(
                "prevResult has address {reported:?}, endpoint {} has {has}",
                ep.name
            ),
        ));
    }
    Ok(())
}
