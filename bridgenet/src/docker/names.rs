//! Container names for `port ls`, from Docker's API (`daemon --docker-host`): Docker cannot
//! show the ports a network driver published, so bridgenet shows them by container. The
//! daemon asks Docker (`GET /networks/ID`: its containers with their names and endpoint IDs)
//! outside its lock, bounded in time, and keeps the answer for a few seconds; when Docker does
//! not answer, endpoints keep their names (`docker-` and Docker's endpoint ID).
use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::Mutex;

/// Docker's API socket when `--docker-host` is not given.
pub const DEFAULT_HOST: &str = "/var/run/docker.sock";

/// How long a question to Docker may take in all.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How long an answer is reused.
const FRESH: Duration = Duration::from_secs(3);

/// Container names by bridgenet endpoint name, cached.
pub struct ContainerNames {
    host: PathBuf,
    cache: Mutex<Option<Answer>>,
}

/// Docker's last answer: when, for which networks, the names.
struct Answer {
    at: Instant,
    networks: Vec<String>,
    names: HashMap<String, String>,
}

#[derive(Deserialize)]
struct DockerNetwork {
    #[serde(rename = "Containers", default)]
    containers: HashMap<String, DockerEndpoint>,
}

#[derive(Deserialize)]
struct DockerEndpoint {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
}

impl ContainerNames {
    pub fn new(host: PathBuf) -> Self {
        Self {
            host,
            cache: Mutex::new(None),
        }
    }

    /// The container name of each endpoint of the Docker networks among `networks` (bridgenet
    /// network names; Docker's are `docker-` and 12 hex digits of its ID). Empty when Docker
    /// does not answer in time.
    pub async fn of(&self, networks: &[String]) -> HashMap<String, String> {
        let mut cache = self.cache.lock().await;
        if let Some(last) = cache.as_ref()
            && last.at.elapsed() < FRESH
            && last.networks == networks
        {
            return last.names.clone();
        }
        let names = match tokio::time::timeout(TIMEOUT, self.ask(networks)).await {
            Ok(Ok(names)) => names,
            Ok(Err(err)) => {
                tracing::debug!("container names from {}: {err:#}", self.host.display());
                HashMap::new()
            }
            Err(_) => {
                tracing::debug!("container names: {} did not answer", self.host.display());
                HashMap::new()
            }
        };
        *cache = Some(Answer {
            at: Instant::now(),
            networks: networks.to_vec(),
            names: names.clone(),
        });
        names
    }

    async fn ask(&self, networks: &[String]) -> Result<HashMap<String, String>> {
        let mut names = HashMap::new();
        for network in networks {
            let Some(id) = network.strip_prefix("docker-") else {
                continue;
            };
            let found: DockerNetwork = self.get(&format!("/networks/{id}")).await?;
            for endpoint in found.containers.into_values() {
                if let Some(short) = endpoint.endpoint_id.get(..12) {
                    names.insert(format!("docker-{short}"), endpoint.name);
                }
            }
        }
        Ok(names)
    }

    /// GET `path` on Docker's API socket, decoded from JSON.
    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T> {
        let stream = tokio::net::UnixStream::connect(&self.host)
            .await
            .with_context(|| format!("connecting to {}", self.host.display()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", "docker")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("GET {path}: {status}");
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_docker_there_are_no_names_and_no_wait() {
        let names = ContainerNames::new("/nonexistent/docker.sock".into());
        let started = Instant::now();
        let found = names
            .of(&["docker-0123456789ab".into(), "bridge".into()])
            .await;
        assert!(found.is_empty());
        assert!(started.elapsed() < TIMEOUT);
    }

    #[test]
    fn dockers_network_answer_names_endpoints() {
        let answer = r#"{"Name": "web", "Containers": {"3f2a": {"Name": "web1",
            "EndpointID": "0a6b1c2d3e4f5a6b7c8d", "IPv4Address": "198.19.7.2/24"}}}"#;
        let network: DockerNetwork = serde_json::from_str(answer).unwrap();
        let endpoint = &network.containers["3f2a"];
        assert_eq!(endpoint.name, "web1");
        assert_eq!(&endpoint.endpoint_id[..12], "0a6b1c2d3e4f");
    }
}
