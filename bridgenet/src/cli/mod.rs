//! The CLI verbs that talk to the daemon: parse, check what can be checked locally, call the
//! API, print in Docker's formats (or JSON with --json).
mod filter;
mod monitor;
mod status;

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use hyper::Method;
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    api::{
        CtQuery, Endpoint, EndpointCreate, Flow, FlowCount, GatewayMode, Network, NetworkCreate,
        PortEntry, PortMapping, PortSpecs, Stat, client,
    },
    datapath::conntrack::FlowFilter,
    state::{Mode, PortSpec, check_name, ports::parse_expose},
};

pub use filter::{FilterCmd, filter};
pub use monitor::{MonitorArgs, monitor};
pub use status::status;

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create a bridge network.
    Create(NetworkCreateArgs),
    /// List networks.
    Ls(Listing),
    /// Show a network as JSON.
    Inspect { name: String },
    /// Remove a network that has no endpoints.
    Rm { name: String },
}

#[derive(Args)]
pub struct NetworkCreateArgs {
    name: String,
    /// CIDR, once per family (an IPv6 one needs --ipv6); IPv4 default: the first free /16 of
    /// 172.17-172.31, then /20s of 192.168.0.0/16.
    #[arg(long)]
    subnet: Vec<String>,
    /// Once per family; default: the subnet's first host (IPv6: its first address after the
    /// network address).
    #[arg(long)]
    gateway: Vec<String>,
    /// Dual stack: the network also has the IPv6 --subnet given; its IPv6 leaves masqueraded
    /// with the uplink's IPv6 address (gateway mode nat), or not at all (--internal).
    #[arg(long)]
    ipv6: bool,
    /// IPv4 on the network (--ipv4=false with --ipv6: IPv6 only, as Docker 28).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    ipv4: bool,
    /// Name of the Linux bridge; default: bn-NAME.
    #[arg(long)]
    bridge: Option<String>,
    /// Traffic between endpoints of the network (--icc=false to block it).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    icc: bool,
    /// No traffic to or from the outside.
    #[arg(long)]
    internal: bool,
    /// Outbound traffic leaves with the uplink's address (--masquerade=false to route it).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    masquerade: bool,
    /// nat (masquerade; published ports only), nat-unprotected (also any port routed to an
    /// endpoint), routed (no masquerade; published endpoint ports routed to), isolated (no way
    /// in or out; needs --internal), as Docker's gateway_mode_ipv4.
    #[arg(long, default_value = "nat")]
    gateway_mode: GatewayMode,
    /// The same for IPv6, as Docker's gateway_mode_ipv6: nat (NAT66), nat-unprotected or
    /// routed (the endpoints' own IPv6 addresses; published endpoint ports routed to).
    #[arg(long, default_value = "nat")]
    gateway_mode6: GatewayMode,
}

#[derive(Subcommand)]
pub enum EndpointCmd {
    /// Attach a network namespace to a network.
    Create(EndpointCreateArgs),
    /// List endpoints.
    Ls(Listing),
    /// Show an endpoint as JSON.
    Inspect { name: String },
    /// Remove an endpoint (and its namespace, when bridgenet created it).
    Rm { name: String },
}

#[derive(Args)]
pub struct EndpointCreateArgs {
    name: String,
    /// Required in mode bridge.
    #[arg(long, default_value = "")]
    network: String,
    /// A name under /run/netns (created if absent), or a path such as /proc/PID/ns/net.
    /// Not needed in mode container (the shared endpoint's).
    #[arg(long, default_value = "")]
    netns: String,
    /// bridge (a veth pair to the network), none (lo only) or container:ENDPOINT (share its
    /// namespace and address), as Docker's --network modes.
    #[arg(long, default_value = "bridge")]
    mode: String,
    /// Default: the next free address of the network.
    #[arg(long)]
    ip: Option<String>,
    /// On a network with an IPv6 subnet; default: its next free IPv6 address.
    #[arg(long)]
    ip6: Option<String>,
    /// Publish a port: [[IP:]HPORT:]CPORT[/PROTO], ranges H1-H2:C1-C2.
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    publish: Vec<String>,
    /// A port that -P publishes: PORT[/PROTO].
    #[arg(long)]
    expose: Vec<String>,
    /// Publish every --expose'd port on a random host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
}

#[derive(Subcommand)]
pub enum PortCmd {
    /// Publish ports of an endpoint.
    Publish {
        endpoint: String,
        #[arg(required = true)]
        specs: Vec<String>,
    },
    /// Unpublish ports of an endpoint.
    Unpublish {
        endpoint: String,
        #[arg(required = true)]
        specs: Vec<String>,
    },
    /// List published ports as `docker port` does: `80/tcp -> 0.0.0.0:8080`.
    Ls {
        endpoint: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CtCmd {
    /// List tracked flows, like `conntrack -L`, as the daemon walks the table.
    Ls(CtLs),
    /// Remove tracked flows (of one endpoint with --endpoint).
    Flush {
        #[arg(long)]
        endpoint: Option<String>,
    },
}

#[derive(Args)]
pub struct CtLs {
    /// Flows to or from this endpoint's address, translated or not.
    #[arg(long)]
    endpoint: Option<String>,
    /// tcp, udp, icmp, icmpv6 or a protocol number.
    #[arg(long)]
    proto: Option<String>,
    /// ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT, CLOSE, UNREPLIED, REPLIED or ASSURED.
    #[arg(long)]
    state: Option<String>,
    /// The original direction's source address.
    #[arg(long)]
    src: Option<String>,
    /// The original direction's destination address.
    #[arg(long)]
    dst: Option<String>,
    /// A port of either direction, source or destination.
    #[arg(long)]
    port: Option<String>,
    /// Print only the number of flows that match.
    #[arg(long)]
    count: bool,
    /// Print JSON (a list, streamed as it is read).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct Listing {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs one client verb on a small runtime.
fn block_on<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn get<T: DeserializeOwned>(socket: &Path, path: &str) -> Result<T> {
    block_on(client::call(socket, Method::GET, path, None::<&()>))
}

fn send<T: DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
    body: &impl Serialize,
) -> Result<T> {
    block_on(client::call(socket, method, path, Some(body)))
}

fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Checks a name locally, so bad input fails before anything is sent.
fn name(kind: &str, name: &str) -> Result<()> {
    check_name(kind, name).map_err(anyhow::Error::msg)
}

fn specs(specs: &[String]) -> Result<()> {
    for s in specs {
        s.parse::<PortSpec>().map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

pub fn network(socket: &Path, cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Create(a) => {
            name("network", &a.name)?;
            let (subnet, subnet6) = by_family("--subnet", &a.subnet)?;
            let (gateway, gateway6) = by_family("--gateway", &a.gateway)?;
            match (&subnet6, a.ipv6) {
                (Some(s), false) => bail!("IPv6 subnet {s} needs --ipv6"),
                (None, true) => bail!("--ipv6 needs an IPv6 --subnet"),
                _ => {}
            }
            if let (Some(g), None) = (&gateway6, &subnet6) {
                bail!("--gateway {g} is IPv6, but no IPv6 --subnet is given");
            }
            let req = NetworkCreate {
                name: a.name,
                subnet,
                gateway,
                bridge: a.bridge,
                icc: a.icc,
                internal: a.internal,
                masquerade: a.masquerade,
                gateway_mode: a.gateway_mode,
                subnet6,
                gateway6,
                gateway_mode6: a.gateway_mode6,
                ipv4: a.ipv4,
            };
            let net: Network = send(socket, Method::POST, "/networks", &req)?;
            println!("{}", net.name);
        }
        NetworkCmd::Ls(l) => {
            let nets: Vec<Network> = get(socket, "/networks")?;
            if l.json {
                return print_json(&nets);
            }
            let mut table = Table::new();
            table.row(["NAME", "SUBNET", "GATEWAY", "BRIDGE", "OPTIONS"]);
            for n in nets {
                let mut opts = Vec::new();
                if !n.icc {
                    opts.push("icc=false");
                }
                if n.internal {
                    opts.push("internal");
                }
                if !n.masquerade {
                    opts.push("masquerade=false");
                }
                let mode = format!("gateway-mode={}", n.gateway_mode);
                if !n.gateway_mode.is_nat() {
                    opts.push(&mode);
                }
                let mode6 = format!("gateway-mode6={}", n.gateway_mode6);
                if !n.gateway_mode6.is_nat() {
                    opts.push(&mode6);
                }
                let (subnets, gateways) = (n.subnets().join(","), n.gateways().join(","));
                table.row([n.name, subnets, gateways, n.bridge, opts.join(",")]);
            }
            table.print()?;
        }
        NetworkCmd::Inspect { name: n } => {
            name("network", &n)?;
            print_json(&get::<Network>(socket, &format!("/networks/{n}"))?)?;
        }
        NetworkCmd::Rm { name: n } => {
            name("network", &n)?;
            let net: Network = block_on(client::call(
                socket,
                Method::DELETE,
                &format!("/networks/{n}"),
                None::<&()>,
            ))?;
            println!("{}", net.name);
        }
    }
    Ok(())
}

pub fn endpoint(socket: &Path, cmd: EndpointCmd) -> Result<()> {
    match cmd {
        EndpointCmd::Create(a) => {
            name("endpoint", &a.name)?;
            specs(&a.publish)?;
            for e in &a.expose {
                parse_expose(e).map_err(anyhow::Error::msg)?;
            }
            if let Some(ip) = &a.ip
                && ip.parse::<std::net::Ipv4Addr>().is_err()
            {
                bail!("invalid address {ip:?} (expected an IPv4 address)");
            }
            if let Some(ip6) = &a.ip6
                && ip6.parse::<std::net::Ipv6Addr>().is_err()
            {
                bail!("invalid IPv6 address {ip6:?} (expected an address such as 2001:db8:5::10)");
            }
            a.mode.parse::<Mode>().map_err(anyhow::Error::msg)?;
            let req = EndpointCreate {
                name: a.name,
                network: a.network,
                netns: a.netns,
                ip: a.ip,
                publish: a.publish,
                expose: a.expose,
                publish_all: a.publish_all,
                mode: Some(a.mode),
                mac: None,
                for_runtime: false,
                ip6: a.ip6,
            };
            let ep: Endpoint = send(socket, Method::POST, "/endpoints", &req)?;
            let line: Vec<String> = [ep.name.clone()]
                .into_iter()
                .chain(ep.addresses())
                .collect();
            println!("{}", line.join(" "));
        }
        EndpointCmd::Ls(l) => {
            let eps: Vec<Endpoint> = get(socket, "/endpoints")?;
            if l.json {
                return print_json(&eps);
            }
            // Docker's container names, when Docker's API answers the daemon.
            let containers: BTreeMap<String, String> =
                get(socket, "/containers").unwrap_or_default();
            let mut table = Table::new();
            table.row([
                "NAME",
                "CONTAINER",
                "MODE",
                "NETWORK",
                "IP",
                "MAC",
                "NETNS",
                "PORTS",
            ]);
            for e in eps {
                let ports: Vec<String> = e.ports.iter().map(docker_ps_port).collect();
                let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
                let ip = (e.mode != Mode::None).then(|| e.addresses().join(","));
                // Docker's container name, else a CNI attachment's container ID and interface.
                let container = containers.get(&e.name).cloned().or_else(|| {
                    e.cni
                        .as_ref()
                        .map(|c| format!("{}/{}", c.container_id, c.ifname))
                });
                table.row([
                    e.name,
                    dash(container.unwrap_or_default()),
                    e.mode.to_string(),
                    dash(e.network),
                    dash(ip.unwrap_or_default()),
                    dash(e.mac),
                    dash(e.netns),
                    ports.join(", "),
                ]);
            }
            table.print()?;
        }
        EndpointCmd::Inspect { name: n } => {
            name("endpoint", &n)?;
            print_json(&get::<Endpoint>(socket, &format!("/endpoints/{n}"))?)?;
        }
        EndpointCmd::Rm { name: n } => {
            name("endpoint", &n)?;
            let ep: Endpoint = block_on(client::call(
                socket,
                Method::DELETE,
                &format!("/endpoints/{n}"),
                None::<&()>,
            ))?;
            println!("{}", ep.name);
        }
    }
    Ok(())
}

/// Docker's `--subnet` and `--gateway`, given once per family: (IPv4, IPv6). Anything with a
/// colon is IPv6; the daemon checks the values themselves.
fn by_family(flag: &str, values: &[String]) -> Result<(Option<String>, Option<String>)> {
    let (mut v4, mut v6): (Option<String>, Option<String>) = (None, None);
    for v in values {
        let (slot, family) = if v.contains(':') {
            (&mut v6, "IPv6")
        } else {
            (&mut v4, "IPv4")
        };
        if let Some(first) = slot {
            bail!("{flag} given twice for {family} ({first} and {v}): once per family");
        }
        *slot = Some(v.clone());
    }
    Ok((v4, v6))
}

/// `docker ps`'s PORTS column: `0.0.0.0:8080->80/tcp`.
fn docker_ps_port(m: &PortMapping) -> String {
    format!("{}->{}/{}", m.host(), m.port, m.proto)
}

pub fn port(socket: &Path, cmd: PortCmd) -> Result<()> {
    match cmd {
        PortCmd::Publish { endpoint, specs: s } => {
            name("endpoint", &endpoint)?;
            specs(&s)?;
            let done: Vec<PortMapping> = send(
                socket,
                Method::POST,
                &format!("/endpoints/{endpoint}/publish"),
                &PortSpecs { specs: s },
            )?;
            for m in done {
                println!("{m}");
            }
        }
        PortCmd::Unpublish { endpoint, specs: s } => {
            name("endpoint", &endpoint)?;
            specs(&s)?;
            let done: Vec<PortMapping> = send(
                socket,
                Method::POST,
                &format!("/endpoints/{endpoint}/unpublish"),
                &PortSpecs { specs: s },
            )?;
            for m in done {
                println!("{m}");
            }
        }
        PortCmd::Ls { endpoint, json } => {
            let path = match &endpoint {
                Some(e) => {
                    name("endpoint", e)?;
                    format!("/ports?endpoint={e}")
                }
                None => "/ports".into(),
            };
            let entries: Vec<PortEntry> = get(socket, &path)?;
            if json {
                return print_json(&entries);
            }
            for e in entries {
                // `docker port CONTAINER` has no container column; across endpoints, prefix it:
                // the container's name when Docker's API gave it, else the endpoint's.
                match endpoint {
                    Some(_) => println!("{}", e.mapping),
                    None => println!("{}: {}", e.container.unwrap_or(e.endpoint), e.mapping),
                }
            }
        }
    }
    Ok(())
}

pub fn stats(socket: &Path, json: bool) -> Result<()> {
    let stats: Vec<Stat> = get(socket, "/stats")?;
    if json {
        return print_json(&stats);
    }
    println!("{:<16} {:<22} {:>12}", "PROGRAM", "OUTCOME", "PACKETS");
    for s in stats {
        println!("{:<16} {:<22} {:>12}", s.program, s.outcome, s.count);
    }
    Ok(())
}

pub fn ct(socket: &Path, cmd: CtCmd) -> Result<()> {
    match cmd {
        CtCmd::Ls(l) => ct_ls(socket, l)?,
        CtCmd::Flush { endpoint } => {
            let path = match &endpoint {
                Some(e) => {
                    name("endpoint", e)?;
                    format!("/conntrack?endpoint={e}")
                }
                None => "/conntrack".into(),
            };
            let n: usize = block_on(client::call(socket, Method::DELETE, &path, None::<&()>))?;
            println!("{n} flows removed");
        }
    }
    Ok(())
}

fn ct_ls(socket: &Path, l: CtLs) -> Result<()> {
    let query = CtQuery {
        endpoint: l.endpoint,
        proto: l.proto,
        state: l.state,
        src: l.src,
        dst: l.dst,
        port: l.port,
        count: l.count,
    };
    // Bad filters fail here, before anything is sent.
    FlowFilter::parse(
        query.proto.as_deref(),
        query.state.as_deref(),
        query.src.as_deref(),
        query.dst.as_deref(),
        query.port.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    if let Some(e) = &query.endpoint {
        name("endpoint", e)?;
    }
    let path = format!("/conntrack{}", query.to_query());
    if query.count {
        let n: FlowCount = get(socket, &path)?;
        if l.json {
            return print_json(&n);
        }
        println!("{}", n.flows);
        return Ok(());
    }
    // Printed as the lines arrive: a full table is never held here.
    let out = std::cell::RefCell::new(std::io::BufWriter::new(std::io::stdout().lock()));
    let mut n = 0u64;
    block_on(client::stream(
        socket,
        &path,
        |f: Flow| {
            let mut out = out.borrow_mut();
            if l.json {
                let sep = if n == 0 { "[\n" } else { ",\n" };
                write!(out, "{sep}{}", serde_json::to_string(&f)?)?;
            } else {
                writeln!(out, "{}", ct_line(&f))?;
            }
            n += 1;
            Ok(())
        },
        || Ok(out.borrow_mut().flush()?),
    ))?;
    let mut out = out.into_inner();
    if l.json {
        writeln!(out, "{}", if n == 0 { "[]" } else { "\n]" })?;
    }
    out.flush()?;
    eprintln!("{n} flow entries");
    Ok(())
}

/// A flow as a line of `conntrack -L`.
fn ct_line(f: &Flow) -> String {
    let o = &f.original;
    let state = if f.state.is_empty() {
        String::new()
    } else {
        format!(" {}", f.state)
    };
    let mut line = format!(
        "{:<5} {}{state} src={} dst={} sport={} dport={} packets={} bytes={}",
        f.proto, f.timeout, o.src, o.dst, o.sport, o.dport, o.packets, o.bytes
    );
    match &f.reply {
        Some(r) => line.push_str(&format!(
            " src={} dst={} sport={} dport={} packets={} bytes={}",
            r.src, r.dst, r.sport, r.dport, r.packets, r.bytes
        )),
        None => line.push_str(" [reply entry missing]"),
    }
    line
}

/// `--socket`, else BRIDGENET_SOCKET, else the default.
pub fn socket_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("BRIDGENET_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(crate::api::DEFAULT_SOCKET))
}

/// Columns as wide as their widest cell, as `docker ps` aligns them (names of any length stay
/// in line).
struct Table(tabwriter::TabWriter<Vec<u8>>);

impl Table {
    fn new() -> Self {
        Self(tabwriter::TabWriter::new(Vec::new()).padding(3))
    }

    fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let line: Vec<String> = cells
            .into_iter()
            .map(|c| c.as_ref().replace('\t', " "))
            .collect();
        // Writing into memory cannot fail.
        let _ = writeln!(self.0, "{}", line.join("\t"));
    }

    fn print(self) -> Result<()> {
        let text = self.0.into_inner().context("aligning the table")?;
        std::io::stdout().write_all(&text)?;
        Ok(())
    }
}

#[cfg(test)]
mod family_tests {
    use super::by_family;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn subnets_and_gateways_are_sorted_by_family() {
        let (v4, v6) =
            by_family("--subnet", &strings(&["2001:db8:5::/64", "198.18.5.0/24"])).unwrap();
        assert_eq!(v4.as_deref(), Some("198.18.5.0/24"));
        assert_eq!(v6.as_deref(), Some("2001:db8:5::/64"));
        assert_eq!(by_family("--gateway", &[]).unwrap(), (None, None));
        let err = by_family("--subnet", &strings(&["198.18.5.0/24", "198.18.6.0/24"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--subnet given twice for IPv4 (198.18.5.0/24 and 198.18.6.0/24): once per family"
        );
        let err = by_family("--gateway", &strings(&["2001:db8:5::1", "2001:db8:5::2"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("given twice for IPv6"), "{err}");
    }
}

#[cfg(test)]
mod table_tests {
    use super::Table;

    #[test]
    fn columns_line_up_whatever_the_length_of_a_name() {
        let mut table = Table::new();
        table.row(["NAME", "CONTAINER", "IP"]);
        table.row(["docker-3138bc1403e8", "web1", "198.19.40.2"]);
        table.row(["a", "a-container-name-longer-than-16", "198.19.40.3"]);
        let text = String::from_utf8(table.0.into_inner().unwrap()).unwrap();
        let starts: Vec<(usize, usize)> = text
            .lines()
            .map(|line| {
                let second = line.find("   ").unwrap()
                    + line[line.find("   ").unwrap()..]
                        .find(|c: char| c != ' ')
                        .unwrap();
                (second, line.rfind(' ').unwrap() + 1)
            })
            .collect();
        assert!(starts.iter().all(|s| *s == starts[0]), "{text}");
    }
}
