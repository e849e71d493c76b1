use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use aya::programs::TcAttachType;
use bridgenet::{
    cli::{self, CtCmd, EndpointCmd, FilterCmd, NetworkCmd, PortCmd},
    daemon,
    datapath::{Datapath, TcMode},
};
use clap::{Parser, Subcommand};

/// bridgenet: Docker-style bridge networking with an eBPF dataplane.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The daemon's API socket [env: BRIDGENET_SOCKET; default: /run/bridgenet/bridgenet.sock]
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: it manages the network namespace it is started in.
    Daemon {
        /// Where the store is kept [default: /var/lib/bridgenet]
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Where maps and links are pinned; a bpf filesystem is mounted there when it is not on
        /// one [default: /sys/fs/bpf/bridgenet]
        #[arg(long)]
        bpffs: Option<PathBuf>,
        /// Interfaces to masquerade on; default: those holding the default routes.
        #[arg(long)]
        uplink: Vec<String>,
        /// Where uplink_xdp goes: auto (every uplink but veths, where native XDP costs more
        /// than it saves), on, off [default: auto]
        #[arg(long)]
        xdp: Option<daemon::XdpPolicy>,
        /// Flows the conntrack table holds, as Linux's nf_conntrack_max; past it new flows
        /// take the room of ones not yet assured, else are dropped [default: 262144]
        #[arg(long)]
        conntrack_max: Option<u32>,
        /// Events a second per CPU that the datapath emits at most for `monitor` (a flood's
        /// cost); what is over it is counted as lost [default: 1000]
        #[arg(long)]
        monitor_rate: Option<u32>,
        /// Also serve Docker's network driver protocol (`docker network create -d bridgenet`).
        #[arg(long)]
        docker: bool,
        /// Docker's plugin socket; implies --docker [default:
        /// /run/docker/plugins/bridgenet.sock]
        #[arg(long)]
        docker_socket: Option<PathBuf>,
        /// Docker's API socket, asked for container names in `port ls` [default:
        /// /var/run/docker.sock]
        #[arg(long)]
        docker_host: Option<PathBuf>,
        /// Serve Prometheus metrics on http://ADDR:PORT/metrics (off by default; any address
        /// given is served, as Docker's metrics-addr: 127.0.0.1 keeps them on the host).
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<std::net::SocketAddr>,
        /// Log lines as text or as one JSON object each (journald, log shippers)
        /// [default: text]
        #[arg(long, value_enum)]
        log_format: Option<daemon::config::LogFormat>,
        /// A JSON file with the same options (keys socket, state-dir, bpffs, uplinks, xdp,
        /// conntrack-max, monitor-rate, docker, docker-socket, docker-host, metrics, log-format); flags
        /// win.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Remove everything bridgenet created in this namespace, then exit.
        #[arg(long)]
        cleanup: bool,
    },
    /// Bridge networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Endpoints: network namespaces attached to networks.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Published ports.
    #[command(subcommand)]
    Port(PortCmd),
    /// Tracked flows.
    #[command(subcommand)]
    Ct(CtCmd),
    /// User filter rules for traffic from uplinks to endpoints (Docker's DOCKER-USER).
    #[command(subcommand)]
    Filter(FilterCmd),
    /// The datapath's packet counters per program and outcome.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Whether the datapath is healthy: programs, maps, conntrack, recent drops. Exits
    /// non-zero when something is detached, missing or full.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Drops as they happen (and with --flows the flows opened and closed), one line each,
    /// with the program, interface, endpoint, packet and reason, until Ctrl-C.
    Monitor(cli::MonitorArgs),
    /// Attach the packet counters to interfaces and print their counts every second until Ctrl-C.
    Watch {
        /// Interfaces in this network namespace.
        #[arg(required = true)]
        ifaces: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            // One line: clap's first, without the usage block.
            let text = err.render().to_string();
            eprintln!(
                "bridgenet: {}",
                text.lines().next().unwrap_or("invalid arguments")
            );
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bridgenet: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Daemon {
            state_dir,
            bpffs,
            uplink,
            xdp,
            conntrack_max,
            monitor_rate,
            docker,
            docker_socket,
            docker_host,
            metrics,
            log_format,
            config,
            cleanup,
        } => {
            let config = match &config {
                Some(path) => daemon::config::Config::load(path)?,
                None => daemon::config::Config::default(),
            };
            let docker_socket = match (docker_socket, docker || config.docker) {
                (Some(socket), _) => Some(socket),
                (None, true) => Some(
                    config
                        .docker_socket
                        .clone()
                        .unwrap_or_else(|| bridgenet::docker::DEFAULT_SOCKET.into()),
                ),
                (None, false) => None,
            };
            let options = daemon::Options {
                // --socket, then BRIDGENET_SOCKET, then the file, then the default.
                socket: match (
                    &cli.socket,
                    std::env::var_os("BRIDGENET_SOCKET"),
                    config.socket,
                ) {
                    (None, None, Some(socket)) => socket,
                    _ => cli::socket_path(cli.socket),
                },
                state_dir: state_dir
                    .or(config.state_dir)
                    .unwrap_or_else(|| "/var/lib/bridgenet".into()),
                bpffs: bpffs
                    .or(config.bpffs)
                    .unwrap_or_else(|| "/sys/fs/bpf/bridgenet".into()),
                uplinks: if uplink.is_empty() {
                    config.uplinks
                } else {
                    uplink
                },
                xdp: xdp.or(config.xdp).unwrap_or_default(),
                conntrack_max: conntrack_max
                    .or(config.conntrack_max)
                    .unwrap_or(bridgenet_common::CT_MAX_FLOWS),
                monitor_rate: monitor_rate.or(config.monitor_rate).unwrap_or(1000),
                docker_host: docker_host
                    .or(config.docker_host)
                    .unwrap_or_else(|| bridgenet::docker::names::DEFAULT_HOST.into()),
                api: bridgenet::server::router,
                services: docker_socket
                    .into_iter()
                    .map(|socket| (socket, bridgenet::docker::router as daemon::MakeRouter))
                    .collect(),
                metrics: metrics
                    .or(config.metrics)
                    .map(|addr| (addr, bridgenet::metrics::router as daemon::MakeRouter)),
            };
            if cleanup {
                daemon::cleanup(options)
            } else {
                let logs = tracing_subscriber::fmt()
                    .with_writer(std::io::stderr)
                    .with_env_filter(
                        tracing_subscriber::EnvFilter::try_from_default_env()
                            .unwrap_or_else(|_| "info".into()),
                    );
                match log_format.or(config.log_format).unwrap_or_default() {
                    daemon::config::LogFormat::Text => logs
                        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                        .init(),
                    daemon::config::LogFormat::Json => logs.json().init(),
                }
                daemon::run(options)
            }
        }
        command => run_client(cli::socket_path(cli.socket), command),
    }
}

fn run_client(socket: PathBuf, command: Command) -> Result<()> {
    // A listing whose reader went away (`bridgenet ct ls | head`) ends quietly, as other
    // Unix tools do, instead of panicking on a broken pipe. Clients only: the daemon keeps
    // Rust's default, where a closed socket is an error to handle.
    // SAFETY: sets a signal disposition before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match command {
        Command::Daemon { .. } => unreachable!("handled by run"),
        Command::Network(cmd) => cli::network(&socket, cmd),
        Command::Endpoint(cmd) => cli::endpoint(&socket, cmd),
        Command::Port(cmd) => cli::port(&socket, cmd),
        Command::Ct(cmd) => cli::ct(&socket, cmd),
        Command::Filter(cmd) => cli::filter(&socket, cmd),
        Command::Stats { json } => cli::stats(&socket, json),
        Command::Status { json } => cli::status(&socket, json),
        Command::Monitor(args) => cli::monitor(&socket, args),
        Command::Watch { ifaces } => watch(&ifaces),
    }
}

fn watch(ifaces: &[String]) -> Result<()> {
    let mut dp = Datapath::load()?;
    let mut names = std::collections::BTreeMap::new();
    for iface in ifaces {
        dp.attach_tc_count(iface, TcAttachType::Ingress, TcMode::Auto)?;
        dp.attach_tc_count(iface, TcAttachType::Egress, TcMode::Auto)?;
        names.insert(
            nix::net::if_::if_nametoindex(iface.as_str())?,
            iface.clone(),
        );
    }
    println!(
        "counting packets on {} (TC ingress and egress); Ctrl-C stops",
        ifaces.join(", ")
    );
    loop {
        std::thread::sleep(Duration::from_secs(1));
        for (ifindex, counters) in dp.if_counters()? {
            let name = names.get(&ifindex).map_or("?", String::as_str);
            println!(
                "{name:<12} {:>8} packets {:>10} bytes",
                counters.packets, counters.bytes
            );
        }
    }
}
