//! The daemon: owns the datapath, the kernel objects and the store of the network namespace it
//! runs in, and serves the API. `networks`, `endpoints`, `ports`, `cni` hold the verbs, `reconcile` the restart logic,
//! `conntrack` the flow listing and garbage collection.
mod adopt;
mod attachments;
mod cni;
pub mod config;
mod conntrack;
mod deletions;
mod endpoints;
mod filter;
mod gateway_modes;
mod monitor;
mod namespaces;
mod networks;
mod ports;
mod reconcile;
mod revoke;
mod status;

pub use conntrack::{count_flows, proto_name, stream_flows};
pub use endpoints::peer_name;
pub use monitor::{Monitor, stream as stream_monitor};
pub use status::{GcTotals, Observation, census, walk_census};

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::sync::Mutex;

use crate::{
    datapath::{Datapath, LoadOptions},
    netlink::{Link, Netlink, Watch},
    state::{SCHEMA_VERSION, State, Store},
};

/// How the daemon was started.
#[derive(Clone, Debug)]
pub struct Options {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Where maps are pinned; a bpf filesystem is mounted there when it is not on one.
    pub bpffs: PathBuf,
    /// Interfaces whose address masquerade uses; empty: those holding the default routes.
    pub uplinks: Vec<String>,
    /// Where `uplink_xdp` is attached.
    pub xdp: XdpPolicy,
    /// Flows the conntrack table holds (two entries each).
    pub conntrack_max: u32,
    /// Events a second per CPU that the datapath emits at most for `monitor`.
    pub monitor_rate: u32,
    /// Docker's API socket, asked for container names (`port ls`).
    pub docker_host: PathBuf,
    /// The routes of bridgenet's own API, served on `socket` (given by the caller so that the
    /// daemon does not depend on its HTTP front end).
    pub api: MakeRouter,
    /// More APIs over the same daemon, each on its own socket (Docker's network driver).
    pub services: Vec<(PathBuf, MakeRouter)>,
    /// Prometheus metrics over HTTP on this TCP address (off when None).
    pub metrics: Option<(std::net::SocketAddr, MakeRouter)>,
}

/// Builds the routes of a service of `Options::services`.
pub type MakeRouter = fn(Arc<Mutex<Daemon>>, &Options) -> axum::Router;

/// Where the daemon attaches `uplink_xdp`. Its drops are repeated by `uplink_ingress`, so it
/// is a saving, never the only check: on a veth, native XDP gives up GRO and costs bulk TCP
/// two thirds of its throughput (measured with `cargo xtask bench`), more than it saves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpPolicy {
    /// On every uplink but veths.
    #[default]
    Auto,
    /// On every uplink (native where the driver has it, else generic).
    On,
    /// Nowhere.
    Off,
}

impl std::str::FromStr for XdpPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(format!("invalid --xdp {s:?} (expected auto, on or off)")),
        }
    }
}

/// What an operation reports to the API: the kind decides the HTTP status.
#[derive(Debug)]
pub enum Error {
    BadRequest(String),
    NotFound(String),
    Conflict(String),
    Internal(anyhow::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BadRequest(m) | Error::NotFound(m) | Error::Conflict(m) => f.write_str(m),
            Error::Internal(err) => write!(f, "{err:#}"),
        }
    }
}

/// A refusal of the caller's request (HTTP 400).
fn bad(msg: impl Into<String>) -> Error {
    Error::BadRequest(msg.into())
}

impl From<anyhow::Error> for Error {
    fn from(err: anyhow::Error) -> Self {
        Error::Internal(err)
    }
}

/// An uplink and the address masquerade uses on it.
#[derive(Clone, Debug)]
struct Uplink {
    name: String,
    index: u32,
    addr: Ipv4Addr,
    /// The IPv6 address NAT66 masquerades with (`follow_uplink_addresses` sets it).
    addr6: Option<Ipv6Addr>,
    /// Whether `uplink_xdp` goes on it.
    xdp: bool,
}

/// The daemon's state while it runs. Every API call holds it locked, so operations never
/// interleave.
pub struct Daemon {
    state: State,
    store: Store,
    dp: Datapath,
    nl: Netlink,
    uplinks: Vec<Uplink>,
    /// Where maps and uplink links are pinned.
    pin_dir: PathBuf,
    state_dir: PathBuf,
    /// What `status` and the metrics report beyond the kernel's state.
    observed: status::Observed,
    monitor: Arc<monitor::Monitor>,
    /// Endpoint veths being deleted after their removal was answered.
    deletions: deletions::Deletions,
}

/// BPF_FS_MAGIC from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Marker in the state dir: the daemon mounted the bpf filesystem and `--cleanup` unmounts it.
const MOUNTED_MARKER: &str = "bpffs-mounted";

/// Locked (flock) by the daemon that uses the state dir, holding its pid.
const LOCK_FILE: &str = "lock";

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(options: Options) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(options))
}

async fn serve(options: Options) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the daemon needs root (CAP_NET_ADMIN, CAP_BPF)");
    }
    refuse_if_running(&options.socket).await?;
    // Before anything changes: an address that cannot be served is refused.
    let metrics = match &options.metrics {
        Some((addr, make)) => {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("serving metrics on {addr}"))?;
            listener.set_nonblocking(true)?;
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "metrics on {addr}: reachable from other hosts, as Docker's metrics-addr is"
                );
            }
            Some((tokio::net::TcpListener::from_std(listener)?, *make))
        }
        None => None,
    };
    if options.conntrack_max < 16 {
        bail!(
            "--conntrack-max {} is too small (16 flows at the least)",
            options.conntrack_max
        );
    }
    if options.monitor_rate == 0 {
        bail!("--monitor-rate 0 would lose every event a monitor asks for (1 at the least)");
    }
    // Before anything changes: an uplink the programs cannot work on is refused.
    let nl = Netlink::new()?;
    let uplinks = resolve_uplinks(&nl, &options.uplinks).await?;
    create_private_dir(&options.state_dir)?;
    // Held until the daemon exits: two daemons on one state dir would fight over its maps.
    let _lock = lock_state_dir(&options.state_dir)?;
    // Before anything changes: a store this build cannot read is refused as it is.
    let store = Store::new(&options.state_dir);
    let first_start = !store.exists();
    let state = store.load()?;
    mount_bpffs(&options.bpffs, &options.state_dir)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .context("enabling net.ipv4.ip_forward in the daemon's namespace")?;

    let mut dp = Datapath::load_with(&LoadOptions {
        pin_dir: Some(options.bpffs.clone()),
        conntrack_flows: options.conntrack_max,
        verify_all: true,
    })?;
    forward_ebpf_logs(&mut dp);
    let (events, control) = dp.take_monitor()?;
    let monitor = monitor::Monitor::start(events, control, options.monitor_rate)?;
    let mut daemon = Daemon {
        state,
        store,
        dp,
        nl,
        uplinks: Vec::new(),
        pin_dir: options.bpffs.clone(),
        state_dir: options.state_dir.clone(),
        observed: status::Observed::new(options.services.first().map(|(s, _)| s.clone())),
        monitor: monitor.clone(),
        deletions: deletions::Deletions::default(),
    };
    if daemon.state.version < SCHEMA_VERSION {
        daemon.state.version = SCHEMA_VERSION;
        daemon.store.save(&daemon.state)?;
        tracing::warn!(
            "{} had no schema version: read as version {SCHEMA_VERSION} and rewritten with it",
            options.state_dir.join("state.json").display()
        );
    }
    daemon.attach_uplinks(uplinks, options.xdp)?;
    daemon
        .dp
        .attach_host_access(&options.bpffs, &options.state_dir)?;
    tracing::info!("host access: published ports answer on the host's addresses and 127.0.0.1");
    daemon.reconcile().await?;
    // The new programs are in place: the old ones no longer add to older pinned maps.
    daemon.dp.finish_upgrade()?;
    if first_start {
        daemon.create_default_network().await?;
    }
    let daemon = Arc::new(Mutex::new(daemon));

    let listener = bind(&options.socket)?;
    tracing::info!("listening on {}", options.socket.display());
    tokio::spawn(background(daemon.clone()));
    tokio::spawn(on_changes(daemon.clone(), Watch::new()?));
    for (socket, make) in &options.services {
        refuse_if_running(socket).await?;
        let listener = bind(socket)?;
        tracing::info!("listening on {}", socket.display());
        let app = make(daemon.clone(), &options);
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    if let Some((listener, make)) = metrics {
        tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
        let app = make(daemon.clone(), &options);
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let app = (options.api)(daemon.clone(), &options);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            monitor.stop();
        })
        .await?;
    daemon.lock().await.deletions.wait_all().await;
    let _ = std::fs::remove_file(&options.socket);
    for (socket, _) in &options.services {
        let _ = std::fs::remove_file(socket);
    }
    tracing::info!("stopped; the kernel keeps the maps, the store keeps the state");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("stopping");
}

/// Every second: follow uplink address changes, put back detached programs; every ten
/// seconds: expire conntrack entries.
async fn background(daemon: Arc<Mutex<Daemon>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for n in 0u64.. {
        tick.tick().await;
        let mut d = daemon.lock().await;
        if let Err(err) = d.follow_uplink_addresses().await {
            tracing::warn!("watching uplink addresses: {err:#}");
        }
        if let Err(err) = d.restore_attachments().await {
            tracing::warn!("checking attached programs: {err:#}");
        }
        if let Err(err) = d.follow_moved_peers().await {
            tracing::warn!("following the runtime's endpoints: {err:#}");
        }
        if n % 10 == 0
            && let Err(err) = d.snapshot_counters()
        {
            tracing::warn!("reading the counters: {err:#}");
        }
        drop(d);
        if n % 10 == 0
            && let Err(err) = conntrack::conntrack_gc(&daemon).await
        {
            tracing::warn!("conntrack garbage collection: {err:#}");
        }
    }
}

/// The programs' warnings (aya-log) go to the daemon's log, target `bridgenet_ebpf`.
fn forward_ebpf_logs(dp: &mut Datapath) {
    use tokio::io::{Interest, unix::AsyncFd};
    let logger = match aya_log::EbpfLogger::init(dp.ebpf_mut()) {
        Ok(logger) => logger,
        Err(err) => return tracing::warn!("the programs' log is unavailable: {err}"),
    };
    // SAFETY: the logger owns its ring buffer's fd, which lives as long as the AsyncFd.
    let mut fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(err) => {
            return tracing::warn!("the programs' log is unavailable: {}", err.into_parts().1);
        }
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// On every link, address or TC filter change in the namespace: follow the uplink addresses
/// and put back detached programs at once, not at the next tick.
async fn on_changes(daemon: Arc<Mutex<Daemon>>, mut watch: Watch) {
    while watch.changed().await {
        // Changes come in bursts (an address and its routes, a veth pair): take them together.
        tokio::time::sleep(Duration::from_millis(50)).await;
        watch.drain();
        let mut d = daemon.lock().await;
        if let Err(err) = d.follow_uplink_addresses().await {
            tracing::warn!("watching uplink addresses: {err:#}");
        }
        if let Err(err) = d.restore_attachments().await {
            tracing::warn!("checking attached programs: {err:#}");
        }
        if let Err(err) = d.follow_moved_peers().await {
            tracing::warn!("following the runtime's endpoints: {err:#}");
        }
    }
    tracing::warn!("rtnetlink notifications stopped; polling every second only");
}

/// Fails when a daemon already answers on `socket`; removes a stale socket file.
async fn refuse_if_running(socket: &Path) -> Result<()> {
    if tokio::net::UnixStream::connect(socket).await.is_ok() {
        bail!("a daemon already listens on {}", socket.display());
    }
    if socket.exists() {
        std::fs::remove_file(socket)?;
    }
    Ok(())
}

/// The API socket, usable by root only.
fn bind(socket: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = socket.parent() {
        create_private_dir(dir)?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// An exclusive lock on the state dir, released when the process exits whatever the way;
/// fails with one line naming the daemon that holds it.
fn lock_state_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::Write as _;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0)?;
            write!(lock, "{}", std::process::id())?;
            Ok(lock)
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another daemon (pid {}) uses the state directory {}: stop it first, or give \
                 this one its own --state-dir",
                pid.trim(),
                dir.display()
            )
        }
        Err((_, err)) => Err(err).with_context(|| format!("locking {}", path.display())),
    }
}

/// Whether the daemon runs in another mount namespace than the process that started it (as
/// under `ip netns exec`): what it mounts there vanishes when it exits.
fn private_mount_namespace() -> bool {
    let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    match (ns("self".into()), ns(nix::unistd::getppid().to_string())) {
        (Some(own), Some(parent)) => own != parent,
        _ => false,
    }
}

fn is_bpffs(dir: &Path) -> Result<bool> {
    let fs = nix::sys::statfs::statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    Ok(fs.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

/// Mounts a bpf filesystem at `dir` unless it is on one already (inside `ip netns exec`,
/// /sys/fs/bpf is not mounted), and notes it in the state dir for `--cleanup`.
fn mount_bpffs(dir: &Path, state_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if is_bpffs(dir)? {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting a bpf filesystem at {}", dir.display()))?;
    std::fs::write(
        state_dir.join(MOUNTED_MARKER),
        dir.as_os_str().as_encoded_bytes(),
    )?;
    tracing::info!("mounted a bpf filesystem at {}", dir.display());
    if private_mount_namespace() {
        tracing::warn!(
            "the daemon runs in a mount namespace of its own (ip netns exec?): the bpf \
             filesystem it mounted at {} and the datapath pinned there vanish when it exits, so \
             a restart starts from nothing; start it with `nsenter --net=NETNS` instead, or \
             mount a bpf filesystem there first",
            dir.display()
        );
    }
    Ok(())
}

/// The uplinks (`names`, else the interfaces holding the default routes) with their primary
/// IPv4 addresses. Refuses one without an Ethernet header (tun, WireGuard, ipip): the programs
/// read the IPv4 header after 14 bytes of Ethernet and would leave its packets untranslated.
async fn resolve_uplinks(nl: &Netlink, names: &[String]) -> Result<Vec<(Link, Ipv4Addr)>> {
    let names = if names.is_empty() {
        nl.default_route_links().await?
    } else {
        names.to_vec()
    };
    if names.is_empty() {
        tracing::warn!("no uplink: no --uplink and no default route; nothing is masqueraded");
    }
    let mut out = Vec::new();
    for name in names {
        let link = nl
            .link(&name)
            .await?
            .with_context(|| format!("no interface {name}"))?;
        if !link.ethernet {
            bail!(
                "uplink {name} has no Ethernet header (a tun, WireGuard or ipip device): \
                 bridgenet masquerades on Ethernet uplinks only"
            );
        }
        let addr = nl
            .addresses(link.index)
            .await?
            .first()
            .map(|net| net.addr())
            .with_context(|| format!("uplink {name} has no IPv4 address"))?;
        out.push((link, addr));
    }
    Ok(out)
}

impl Daemon {
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Attaches the uplink programs to each uplink (from `resolve_uplinks`) with its address.
    fn attach_uplinks(&mut self, uplinks: Vec<(Link, Ipv4Addr)>, xdp: XdpPolicy) -> Result<()> {
        for (link, addr) in uplinks {
            let (name, index) = (link.name.clone(), link.index);
            self.dp.set_uplink_addr(index, addr)?;
            // A pinned address from before is not trusted: the next follow sets it.
            self.dp.set_uplink6(index, None)?;
            let xdp = match xdp {
                XdpPolicy::Auto => !link.veth,
                XdpPolicy::On => true,
                XdpPolicy::Off => false,
            };
            self.uplinks.push(Uplink {
                name: name.clone(),
                index,
                addr,
                addr6: None,
                xdp,
            });
            for a in self.attachments().iter().filter(|a| a.iface == name) {
                self.attach(a)?;
            }
            let xdp = if xdp { "with" } else { "without" };
            tracing::info!("uplink {name}: masquerade with {addr}, {xdp} uplink_xdp");
        }
        Ok(())
    }

    /// Updates masquerade when an uplink's primary address changed, IPv4 or IPv6.
    async fn follow_uplink_addresses(&mut self) -> Result<()> {
        for i in 0..self.uplinks.len() {
            let uplink = self.uplinks[i].clone();
            let addr6 = self.nl.global_address6(uplink.index).await?;
            if addr6 != uplink.addr6 {
                let show = |a: Option<Ipv6Addr>| a.map_or("none".to_string(), |a| a.to_string());
                tracing::info!(
                    "uplink {}: IPv6 address {} -> {}",
                    uplink.name,
                    show(uplink.addr6),
                    show(addr6)
                );
                self.dp.set_uplink6(uplink.index, addr6)?;
                self.uplinks[i].addr6 = addr6;
                if let Some(old) = uplink.addr6 {
                    self.revoke_masquerade6(old)?;
                }
            }
            let Some(addr) = self
                .nl
                .addresses(uplink.index)
                .await?
                .first()
                .map(|n| n.addr())
            else {
                continue;
            };
            if addr != uplink.addr {
                tracing::info!("uplink {}: address {} -> {addr}", uplink.name, uplink.addr);
                self.dp.remove_host_addr(uplink.addr)?;
                self.dp.set_uplink_addr(uplink.index, addr)?;
                self.uplinks[i].addr = addr;
                self.revoke_masquerade(uplink.addr)?;
            }
        }
        Ok(())
    }

    /// Forwards IPv6 in the daemon's namespace, once a network sends IPv6 out (as Docker
    /// does for an IPv6 network). An uplink that takes Router Advertisements (`accept_ra` 1)
    /// would stop once forwarding is on and lose its default route: it gets 2, which takes
    /// them anyway.
    fn enable_ipv6_forwarding(&self) -> Result<()> {
        let conf = std::path::Path::new("/proc/sys/net/ipv6/conf");
        for uplink in &self.uplinks {
            let accept_ra = conf.join(&uplink.name).join("accept_ra");
            if std::fs::read_to_string(&accept_ra).is_ok_and(|v| v.trim() == "1") {
                std::fs::write(&accept_ra, "2")
                    .with_context(|| format!("setting accept_ra of {} to 2", uplink.name))?;
            }
        }
        std::fs::write(conf.join("all/forwarding"), "1")
            .context("enabling IPv6 forwarding in the daemon's namespace")
    }

    fn save(&self) -> Result<(), Error> {
        self.store.save(&self.state).map_err(Error::Internal)
    }
}

/// `bridgenet daemon --cleanup`: removes what bridgenet created in this namespace (bridges,
/// veths, the namespaces it made, pins, state), then exits.
pub fn cleanup(options: Options) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            if tokio::net::UnixStream::connect(&options.socket)
                .await
                .is_ok()
            {
                bail!(
                    "a daemon listens on {}: stop it first",
                    options.socket.display()
                );
            }
            // A daemon on another socket may still use the state dir.
            let _lock = if options.state_dir.exists() {
                Some(lock_state_dir(&options.state_dir)?)
            } else {
                None
            };
            // First: the host access hooks run for every socket of the machine.
            Datapath::detach_host_access(&options.bpffs);
            let store = Store::new(&options.state_dir);
            let state = store.load().unwrap_or_else(|err| {
                eprintln!("bridgenet: {err:#}; removing only what carries bridgenet's alias");
                State::default()
            });
            let nl = Netlink::new()?;
            for endpoint in state.endpoints.values() {
                if let Some(veth) = endpoint.veth() {
                    nl.delete_named(veth).await?;
                }
                if endpoint.netns_created {
                    namespaces::delete_netns(&endpoint.netns);
                }
            }
            for network in state.networks.values() {
                if network.adopted.is_some() {
                    adopt::release(&nl, network, &options.bpffs, &options.state_dir).await;
                } else {
                    nl.delete_named(&network.bridge).await?;
                }
            }
            // Links left by a create that crashed before the store was written.
            for link in nl.links().await? {
                if link.alias.as_deref() == Some(crate::netlink::ALIAS) {
                    let _ = nl.delete(link.index).await;
                }
            }
            let links = nl.links().await?;
            let names: Vec<String> = links.into_iter().map(|l| l.name).collect();
            Datapath::detach_pinned(&options.bpffs, &options.state_dir, &names);
            crate::datapath::layout::remove_pins(&options.bpffs);
            let marker = options.state_dir.join(MOUNTED_MARKER);
            if marker.exists() {
                // Gone already when the daemon mounted it in a mount namespace of its own.
                if is_bpffs(&options.bpffs).unwrap_or(false) {
                    nix::mount::umount(&options.bpffs)
                        .with_context(|| format!("unmounting {}", options.bpffs.display()))?;
                }
                let _ = std::fs::remove_dir(&options.bpffs);
                std::fs::remove_file(marker)?;
            }
            store.remove()?;
            let _ = std::fs::remove_file(&options.socket);
            println!(
                "removed {} networks, {} endpoints, pins and state",
                state.networks.len(),
                state.endpoints.len()
            );
            Ok(())
        })
}
