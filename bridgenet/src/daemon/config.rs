//! `bridgenet daemon --config FILE`: the daemon's options in a JSON file, as Docker keeps its
//! own in daemon.json. Flags on the command line win over the file; the file over defaults.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Deserialize;

/// The keys of the file, all optional: `{"socket": "/run/bridgenet/bridgenet.sock",
/// "state-dir": "/var/lib/bridgenet", "bpffs": "/sys/fs/bpf/bridgenet", "uplinks": ["eth0"],
/// "xdp": "auto", "conntrack-max": 262144, "docker": true,
/// "docker-socket": "/run/docker/plugins/bridgenet.sock", "docker-host": "/var/run/docker.sock"}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
    #[serde(default)]
    pub uplinks: Vec<String>,
    pub xdp: Option<super::XdpPolicy>,
    pub conntrack_max: Option<u32>,
    /// `--monitor-rate EVENTS`.
    pub monitor_rate: Option<u32>,
    /// Serve Docker's network driver protocol.
    #[serde(default)]
    pub docker: bool,
    /// Where (default /run/docker/plugins/bridgenet.sock).
    pub docker_socket: Option<PathBuf>,
    /// Docker's API socket (default /var/run/docker.sock), for container names.
    pub docker_host: Option<PathBuf>,
    /// `--metrics ADDR:PORT`.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--log-format text|json`, as dockerd's.
    pub log_format: Option<LogFormat>,
}

/// How the daemon writes its log: text lines, or one JSON object per line (level, target,
/// message and the fields that name objects: program, interface).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("config {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_docker_style_and_unknown_ones_are_refused() {
        let config: Config =
            serde_json::from_str(r#"{"state-dir": "/tmp/s", "uplinks": ["eth0", "eth1"]}"#)
                .unwrap();
        assert_eq!(config.state_dir, Some(PathBuf::from("/tmp/s")));
        assert_eq!(config.uplinks, ["eth0", "eth1"]);
        assert!(config.socket.is_none() && config.bpffs.is_none());
        assert!(!config.docker && config.docker_socket.is_none());
        let docker: Config =
            serde_json::from_str(r#"{"docker": true, "docker-socket": "/tmp/d.sock"}"#).unwrap();
        assert!(docker.docker);
        assert_eq!(docker.docker_socket, Some(PathBuf::from("/tmp/d.sock")));
        let metrics: Config = serde_json::from_str(r#"{"metrics": "127.0.0.1:9464"}"#).unwrap();
        assert_eq!(metrics.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(serde_json::from_str::<Config>(r#"{"metrics": "localhost"}"#).is_err());
        let json: Config = serde_json::from_str(r#"{"log-format": "json"}"#).unwrap();
        assert_eq!(json.log_format, Some(LogFormat::Json));
        assert!(serde_json::from_str::<Config>(r#"{"log-format": "xml"}"#).is_err());
        let err = serde_json::from_str::<Config>(r#"{"state_dir": "/tmp/s"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `state_dir`"),
            "{err}"
        );
    }
}
