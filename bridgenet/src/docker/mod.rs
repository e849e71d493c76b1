//! Docker's remote network driver (libnetwork's protocol, JSON over HTTP on a Unix socket in
//! /run/docker/plugins): `docker network create -d bridgenet` makes a bridgenet network, a
//! container's endpoint a bridgenet endpoint, `-p` published ports, through the daemon's own
//! operations under its lock. Names come from Docker's short IDs: network `docker-<12 hex>`
//! on bridge `br-<12 hex>`, endpoint `docker-<12 hex>`.
//!
//! Every call is idempotent where Docker repeats it (after a restart of either side); every
//! refusal is `{"Err": "one line"}` and changes nothing.
pub mod names;
mod protocol;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{Json, Router, body::Bytes, extract::State, http::Uri, routing::post};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::{
    api::{EndpointCreate, NetworkCreate},
    daemon::{self, Daemon, Error},
    netlink::Netlink,
    state::PortMapping,
};
use protocol::{CreateEndpoint, CreateNetwork, Extras, Ids};

/// Where Docker looks for plugin sockets; the file name is the driver's name.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/bridgenet.sock";

/// The driver's file in the state dir: Docker's options that bridgenet's network has no field
/// for, by network name.
const EXTRAS_FILE: &str = "docker.json";

#[derive(Clone)]
struct Driver {
    daemon: Arc<Mutex<Daemon>>,
    extras: PathBuf,
}

type Reply = Json<Value>;

/// The driver's routes over the daemon (a `daemon::MakeRouter`).
pub fn router(daemon: Arc<Mutex<Daemon>>, options: &daemon::Options) -> Router {
    let driver = Driver {
        daemon,
        extras: options.state_dir.join(EXTRAS_FILE),
    };
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/NetworkDriver.GetCapabilities", post(capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(endpoint_info))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(ok))
        .route(
            "/NetworkDriver.ProgramExternalConnectivity",
            post(program_external),
        )
        .route(
            "/NetworkDriver.RevokeExternalConnectivity",
            post(revoke_external),
        )
        .route("/NetworkDriver.DiscoverNew", post(ok))
        .route("/NetworkDriver.DiscoverDelete", post(ok))
        .fallback(unknown)
        .with_state(driver)
}

/// Docker's short ID: the first 12 characters of a hex ID.
fn short(id: &str) -> Result<&str, String> {
    match id.get(..12) {
        Some(s) if s.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(s),
        _ => Err(format!("invalid Docker ID {id:?}")),
    }
}

/// The bridgenet network of a Docker network ID.
pub fn network_name(id: &str) -> Result<String, String> {
    Ok(format!("docker-{}", short(id)?))
}

/// The bridgenet endpoint of a Docker endpoint ID.
pub fn endpoint_name(id: &str) -> Result<String, String> {
    Ok(format!("docker-{}", short(id)?))
}

/// Docker sends `application/vnd.docker.plugins.v1.x+json`; an empty body is `{}`.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| format!("invalid request: {e}"))
}

fn reply(result: Result<Value, String>) -> Reply {
    match result {
        Ok(v) => Json(v),
        Err(e) => {
            tracing::warn!("docker: refused: {e}");
            Json(json!({ "Err": e }))
        }
    }
}

fn text(err: Error) -> String {
    if let Error::Internal(e) = &err {
        tracing::error!("docker: {e:#}");
    }
    err.to_string()
}

async fn activate() -> Reply {
    Json(json!({"Implements": ["NetworkDriver"]}))
}

async fn capabilities() -> Reply {
    Json(json!({"Scope": "local", "ConnectivityScope": "local"}))
}

async fn ok(_body: Bytes) -> Reply {
    Json(json!({}))
}

/// The body is read before the answer: closing on an unread body resets the connection, and
/// Docker would see a broken pipe instead of the refusal.
async fn unknown(uri: Uri, _body: Bytes) -> Reply {
    reply(Err(format!("bridgenet does not implement {}", uri.path())))
}

impl Driver {
    fn load_extras(&self) -> BTreeMap<String, Extras> {
        std::fs::read(&self.extras)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_extras(&self, extras: &BTreeMap<String, Extras>) -> Result<(), String> {
        write_atomic(
            &self.extras,
            &serde_json::to_vec_pretty(extras).unwrap_or_default(),
        )
        .map_err(|e| format!("writing {}: {e}", self.extras.display()))
    }

    fn extras_of(&self, network: &str) -> Extras {
        self.load_extras().remove(network).unwrap_or_default()
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

async fn create_network(State(driver): State<Driver>, body: Bytes) -> Reply {
    reply(create_network_(&driver, &body).await)
}

async fn create_network_(driver: &Driver, body: &Bytes) -> Result<Value, String> {
    let req: CreateNetwork = parse(body)?;
    let name = network_name(&req.network_id)?;
    let spec = req.spec()?;
    let mut d = driver.daemon.lock().await;
    if let Ok(existing) = d.network(&name) {
        // Docker repeats CreateNetwork for its networks after a restart.
        if existing.subnet == Some(spec.subnet.trunc()) {
            return Ok(json!({}));
        }
        return Err(format!(
            "network {name} exists with subnet {}",
            existing.subnets().join(",")
        ));
    }
    let network = d
        .network_create(NetworkCreate {
            name: name.clone(),
            subnet: Some(spec.subnet.to_string()),
            gateway: spec.gateway.map(|g| g.to_string()),
            bridge: Some(
                spec.bridge
                    .clone()
                    .unwrap_or_else(|| format!("br-{}", short(&req.network_id).unwrap_or(""))),
            ),
            icc: spec.icc,
            internal: spec.internal,
            masquerade: spec.masquerade,
            gateway_mode: spec.gateway_mode,
            subnet6: spec.subnet6.map(|s| s.to_string()),
            gateway6: spec.gateway6.map(|g| g.to_string()),
            gateway_mode6: spec.gateway_mode6,
            ipv4: true,
        })
        .await
        .map_err(text)?;
    let mut all = driver.load_extras();
    all.insert(name.clone(), spec.extras.clone());
    let mut done = driver.save_extras(&all);
    if done.is_ok()
        && let Some(mtu) = spec.extras.mtu
    {
        done = set_mtu(&[&network.bridge], mtu).await;
    }
    if let Err(err) = done {
        let _ = d.network_rm(&name).await;
        return Err(err);
    }
    Ok(json!({}))
}

async fn set_mtu(links: &[&str], mtu: u32) -> Result<(), String> {
    let run = async {
        let nl = Netlink::new()?;
        for link in links {
            let index = nl.index(link).await?;
            nl.set_mtu(index, mtu).await?;
        }
        anyhow::Ok(())
    };
    run.await.map_err(|e| format!("{e:#}"))
}

async fn delete_network(State(driver): State<Driver>, body: Bytes) -> Reply {
    reply(delete_network_(&driver, &body).await)
}

async fn delete_network_(driver: &Driver, body: &Bytes) -> Result<Value, String> {
    let req: Ids = parse(body)?;
    let name = network_name(&req.network_id)?;
    let mut d = driver.daemon.lock().await;
    match d.network_rm(&name).await {
        Ok(_) | Err(Error::NotFound(_)) => {}
        Err(err) => return Err(text(err)),
    }
    let mut all = driver.load_extras();
    if all.remove(&name).is_some() {
        driver.save_extras(&all)?;
    }
    Ok(json!({}))
}

async fn create_endpoint(State(driver): State<Driver>, body: Bytes) -> Reply {
    reply(create_endpoint_(&driver, &body).await)
}

async fn create_endpoint_(driver: &Driver, body: &Bytes) -> Result<Value, String> {
    let req: CreateEndpoint = parse(body)?;
    let network = network_name(&req.network_id)?;
    let name = endpoint_name(&req.endpoint_id)?;
    let (ip, ip6) = protocol::endpoint_address(req.interface.as_ref())?;
    let docker_mac = req
        .interface
        .as_ref()
        .map(|i| i.mac_address.clone())
        .filter(|m| !m.is_empty());
    let extras = driver.extras_of(&network);
    // Refuse bad port bindings now, before the container starts.
    protocol::port_specs(req.options.as_ref(), extras.host_ip, |_, _, _| true)?;
    let mut d = driver.daemon.lock().await;
    let endpoint = match d.endpoint(&name) {
        Ok(existing) if existing.ip == ip && existing.network == network => existing.clone(),
        Ok(existing) => {
            return Err(format!(
                "endpoint {name} exists with address {} on {}",
                existing.ip, existing.network
            ));
        }
        Err(_) => {
            let endpoint = d
                .endpoint_create(EndpointCreate {
                    name: name.clone(),
                    network: network.clone(),
                    netns: String::new(),
                    ip: Some(ip.to_string()),
                    publish: Vec::new(),
                    expose: Vec::new(),
                    publish_all: false,
                    mode: None,
                    mac: docker_mac.clone(),
                    for_runtime: true,
                    ip6: ip6.map(|a| a.to_string()),
                })
                .await
                .map_err(text)?;
            if let Some(mtu) = extras.mtu
                && let Err(err) =
                    set_mtu(&[&endpoint.veth, &daemon::peer_name(&endpoint.name)], mtu).await
            {
                let _ = d.endpoint_rm(&name).await;
                return Err(err);
            }
            endpoint
        }
    };
    // Docker takes a MAC from the driver only when it gave none.
    if docker_mac.is_some() {
        return Ok(json!({}));
    }
    Ok(json!({"Interface": {"MacAddress": endpoint.mac}}))
}

async fn endpoint_info(State(driver): State<Driver>, body: Bytes) -> Reply {
    reply(endpoint_info_(&driver, &body).await)
}

async fn endpoint_info_(driver: &Driver, body: &Bytes) -> Result<Value, String> {
    let req: Ids = parse(body)?;
    let name = endpoint_name(&req.endpoint_id)?;
    let d = driver.daemon.lock().await;
    let endpoint = d.endpoint(&name).map_err(text)?;
    let ports: Vec<String> = endpoint.ports.iter().map(PortMapping::to_string).collect();
    Ok(json!({"Value": {
        "bridgenet.endpoint": endpoint.name,
        "bridgenet.network": endpoint.network,
        "bridgenet.veth": endpoint.veth,
        "bridgenet.ports": ports,
    }}))
}

async fn delete_endpoint(State(driver): State<Driver>, body: Bytes) -> Reply {
    reply(delete_endpoint_(&driver, &body).await)
}

async fn delete_endpoint_(driver: &Driver, body: &Bytes) -> Result<Value, String> {
    let req: Ids = parse(body)?;
    let name = endpoint_name(&req.endpoint_id)?;
    let mut d = driver.daemon.lock().await;
    match d.endpoint_rm(&name).await {
        Ok(_) | Err(Error::NotFound(_)) => Ok(json!({})),
        Err(err) => Err(text(err)),
    }
}

async fn join(State(driver): State<Driver>, body: Bytes) -> Reply {
    reply(join_(&driver, &body).await)
}

async fn join_(driver: &Driver, body: &Bytes) -> Result<Value, String> {
    let req: Ids = parse(body)?;
    let name = endpoint_name(&req.endpoint_id)?;
    let d = driver.daemon.lock().await;
    let endpoint = d.endpoint(&name).map_err(text)?;
    let network = d.network(&endpoint.network).map_err(text)?;
    // Always a gateway: without one Docker adds its own docker_gwbridge network.
    let mut reply = json!({
        "InterfaceName": {"SrcName": daemon::peer_name(&endpoint.name), "DstPrefix": "eth"},
        "Gateway": network.gateway.map(|g| g.to_string()).unwrap_or_default(),
        "DisableGatewayService": false,
    });
    // Docker routes the container's IPv6 through it (IPv6 leaves masqueraded); an internal
    // network has no way out.
    if let Some(gateway6) = network.gateway6.filter(|_| !network.internal) {
        reply["GatewayIPv6"] = json!(gateway6.to_string());
    }
    Ok(reply)
}

async fn program_external(State(driver): State<Driver>, body: Bytes) -> Reply {
    reply(program_external_(&driver, &body).await)
}

async fn program_external_(driver: &Driver, body: &Bytes) -> Result<Value, String> {
    let req: Ids = parse(body)?;
    let network = network_name(&req.network_id)?;
    let name = endpoint_name(&req.endpoint_id)?;
    let extras = driver.extras_of(&network);
    let mut d = driver.daemon.lock().await;
    let endpoint = d.endpoint(&name).map_err(text)?.clone();
    if !endpoint.ports.is_empty() {
        // Programmed already (Docker repeats the call after a restart).
        return Ok(json!({}));
    }
    let taken: Vec<PortMapping> = d.state().mappings().map(|(_, m)| *m).collect();
    let specs = protocol::port_specs(req.options.as_ref(), extras.host_ip, |proto, ip, port| {
        let probe = PortMapping {
            proto,
            port: 0,
            host_ip: ip,
            host_port: port,
        };
        !taken.iter().any(|t| t.clashes_with(&probe))
    })?;
    if specs.is_empty() {
        return Ok(json!({}));
    }
    d.publish(&name, &specs).map_err(text)?;
    Ok(json!({}))
}

async fn revoke_external(State(driver): State<Driver>, body: Bytes) -> Reply {
    reply(revoke_external_(&driver, &body).await)
}

async fn revoke_external_(driver: &Driver, body: &Bytes) -> Result<Value, String> {
    let req: Ids = parse(body)?;
    let name = endpoint_name(&req.endpoint_id)?;
    let mut d = driver.daemon.lock().await;
    let Ok(endpoint) = d.endpoint(&name) else {
        return Ok(json!({}));
    };
    let specs: Vec<String> = endpoint.ports.iter().map(PortMapping::spec).collect();
    if !specs.is_empty() {
        d.unpublish(&name, &specs).map_err(text)?;
    }
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_docker_short_ids() {
        let id = "751e4c3a9f0b1234567890abcdef1234567890abcdef1234567890abcdef1234";
        assert_eq!(network_name(id).unwrap(), "docker-751e4c3a9f0b");
        assert_eq!(endpoint_name(id).unwrap(), "docker-751e4c3a9f0b");
        assert!(network_name("short").is_err());
        assert!(network_name("not-hex-at-all-here").is_err());
    }
}
