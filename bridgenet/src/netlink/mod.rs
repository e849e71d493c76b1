//! Links, addresses and routes over rtnetlink: bridges, veth pairs into endpoint namespaces,
//! and what the daemon reads (routes, uplink addresses).
use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};
use futures_util::TryStreamExt as _;
use ipnet::{Ipv4Net, Ipv6Net};
use nix::sched::{CloneFlags, setns};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{
            AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
        },
        link::{
            InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage,
            LinkXdp, XdpAttached,
        },
        neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourMessage},
        route::{RouteAddress, RouteAttribute, RouteType},
        tc::{TcAttribute, TcFilterBpfOption, TcOption},
    },
};

/// The alias bridgenet sets on every link it creates, to find stale ones after a crash.
pub const ALIAS: &str = "bridgenet";

/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;

/// An rtnetlink connection in the namespace of the thread that opened it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// Notifications of changed links, IPv4 addresses and TC filters in this namespace.
pub struct Watch {
    messages: futures_channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    // The connection runs while a handle to it lives.
    _handle: Handle,
}

impl Watch {
    /// Subscribes; the connection's task runs on the current tokio runtime.
    pub fn new() -> Result<Self> {
        use rtnetlink::{
            constants::{RTMGRP_IPV4_IFADDR, RTMGRP_LINK, RTMGRP_TC},
            sys::AsyncSocket as _,
        };
        let (mut connection, handle, messages) =
            rtnetlink::new_connection().context("opening rtnetlink")?;
        let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_TC;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&rtnetlink::sys::SocketAddr::new(0, groups))
            .context("subscribing to rtnetlink notifications")?;
        tokio::spawn(connection);
        Ok(Self {
            messages,
            _handle: handle,
        })
    }

    /// Waits for the next change; false when the connection is gone.
    pub async fn changed(&mut self) -> bool {
        use futures_util::StreamExt as _;
        self.messages.next().await.is_some()
    }

    /// Forgets the changes already queued (they are handled together with the last one).
    pub fn drain(&mut self) {
        while self.messages.try_recv().is_ok() {}
    }
}

/// A link as bridgenet looks at it.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub controller: Option<u32>,
    /// The id of the XDP program attached to it.
    pub xdp_program: Option<u32>,
    /// How that program is attached: native (the driver's), generic, offload.
    pub xdp_mode: Option<&'static str>,
    /// A veth pair's end.
    pub veth: bool,
    /// A Linux bridge.
    pub bridge: bool,
    /// Its frames have an Ethernet header (ARPHRD_ETHER), which the uplink programs need;
    /// tun, WireGuard and ipip devices carry bare IP packets.
    pub ethernet: bool,
    /// The kernel's counters of the link (IFLA_STATS64).
    pub traffic: Traffic,
}

/// What a link received and sent, as the kernel counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl Netlink {
    /// Opens a connection; its task runs on the current tokio runtime.
    pub fn new() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut stream = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await? {
            out.push(link_of(msg));
        }
        Ok(out)
    }

    /// Link `name`, asked for by name: one message whatever the number of links (a dump
    /// grows with every endpoint).
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        // The kernel refuses or truncates longer names: no such link can exist.
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Ok(None);
        }
        let mut answer = self.handle.link().get().match_name(name).execute();
        match answer.try_next().await {
            Ok(msg) => Ok(msg.map(link_of)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(err) => Err(err).with_context(|| format!("looking up link {name}")),
        }
    }

    /// Creates bridge `name` with `gateway/prefix` and MAC `mac`, up. A MAC of its own keeps
    /// the bridge from taking its lowest port's, which changes as ports come and go.
    /// A bridge with MAC `mac` and, unless None (an IPv6-only network), IPv4 address
    /// `gateway/prefix`.
    pub async fn create_bridge(
        &self,
        name: &str,
        gateway: Option<(Ipv4Addr, u8)>,
        mac: [u8; 6],
    ) -> Result<u32> {
        let index = self.add_bridge(name, Some(mac)).await?;
        if let Some((gateway, prefix)) = gateway {
            self.add_address(index, gateway, prefix).await?;
        }
        Ok(index)
    }

    /// A bridge with no address: the host has no route to its subnet (gateway mode isolated).
    pub async fn create_bare_bridge(&self, name: &str) -> Result<u32> {
        self.add_bridge(name, None).await
    }

    async fn add_bridge(&self, name: &str, mac: Option<[u8; 6]>) -> Result<u32> {
        let mut bridge = LinkBridge::new(name).alias(ALIAS).up();
        if let Some(mac) = mac {
            bridge = bridge.address(mac.to_vec());
        }
        self.handle
            .link()
            .add(bridge.build())
            .execute()
            .await
            .with_context(|| format!("creating bridge {name}"))?;
        self.index(name).await
    }

    pub async fn add_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        self.handle
            .address()
            .add(index, ip.into(), prefix)
            .execute()
            .await
            .with_context(|| format!("adding {ip}/{prefix} to link {index}"))
    }

    /// Adds IPv6 address `ip/prefix` to link `index` without duplicate address detection
    /// (IFA_F_NODAD): bridgenet hands out the addresses, and a tentative address would leave
    /// the first second of an endpoint without IPv6.
    pub async fn add_address6(&self, index: u32, ip: Ipv6Addr, prefix: u8) -> Result<()> {
        let mut request = self.handle.address().add(index, ip.into(), prefix);
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        request
            .execute()
            .await
            .with_context(|| format!("adding {ip}/{prefix} to link {index}"))
    }

    /// The IPv6 addresses of link `index` (link-local ones included).
    pub async fn addresses6(&self, index: u32) -> Result<Vec<Ipv6Net>> {
        let mut out = Vec::new();
        for msg in self.all_address_messages(index).await? {
            let addr = msg.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(std::net::IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = addr {
                out.push(Ipv6Net::new(ip, msg.header.prefix_len)?);
            }
        }
        Ok(out)
    }

    /// The IPv6 address NAT66 masquerades with on link `index`: its first global one that is
    /// usable (not tentative, deprecated or failed duplicate address detection).
    pub async fn global_address6(&self, index: u32) -> Result<Option<Ipv6Addr>> {
        for msg in self.all_address_messages(index).await? {
            let usable = !msg.header.flags.intersects(
                AddressHeaderFlags::Tentative
                    | AddressHeaderFlags::Deprecated
                    | AddressHeaderFlags::Dadfailed,
            );
            if msg.header.scope != AddressScope::Universe || !usable {
                continue;
            }
            let addr = msg.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(std::net::IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            });
            if addr.is_some() {
                return Ok(addr);
            }
        }
        Ok(None)
    }

    /// Every address message of link `index`, both families.
    async fn all_address_messages(&self, index: u32) -> Result<Vec<AddressMessage>> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await? {
            out.push(msg);
        }
        Ok(out)
    }

    /// Removes address `ip`, either family, from link `index` (absent: nothing to do).
    pub async fn del_address(&self, index: u32, ip: std::net::IpAddr) -> Result<()> {
        use std::net::IpAddr;
        for msg in self.all_address_messages(index).await? {
            // IPv4's own address is IFA_LOCAL (IFA_ADDRESS is the peer's on point-to-point
            // links); IPv6 has IFA_ADDRESS only.
            let this = msg.attributes.iter().any(|attr| match (attr, ip) {
                (AddressAttribute::Local(a), IpAddr::V4(_))
                | (AddressAttribute::Address(a), IpAddr::V6(_)) => *a == ip,
                _ => false,
            });
            if this {
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .with_context(|| format!("removing {ip} from link {index}"))?;
            }
        }
        Ok(())
    }

    /// The IPv4 addresses of link `index`, primary first.
    pub async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        let messages = self.address_messages(index).await?;
        Ok(messages.into_iter().map(|(_, addr)| addr).collect())
    }

    /// The IPv4 addresses of link `index` with the messages that carry them.
    async fn address_messages(&self, index: u32) -> Result<Vec<(AddressMessage, Ipv4Net)>> {
        let mut out = Vec::new();
        for msg in self.all_address_messages(index).await? {
            let local = msg.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(std::net::IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local {
                let addr = Ipv4Net::new(ip, msg.header.prefix_len)?;
                out.push((msg, addr));
            }
        }
        Ok(out)
    }

    pub async fn index(&self, name: &str) -> Result<u32> {
        self.link(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| anyhow!("no interface {name}"))
    }

    pub async fn delete(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .with_context(|| format!("deleting link {index}"))
    }

    /// `bridge fdb del MAC dev PORT master`: the bridge forgets that `mac` is behind `port`,
    /// where it would otherwise go on sending frames for `mac` until the port is gone.
    pub async fn forget_learned(&self, port: u32, mac: [u8; 6]) -> Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = port;
        message.header.flags = NeighbourFlags::Controller;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        match self.handle.neighbours().del(message).execute().await {
            // ENOENT: nothing learned there (nothing sent from it yet).
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => Ok(()),
            Err(err) => Err(err)
                .with_context(|| format!("forgetting what the bridge learned on link {port}")),
        }
    }

    /// Deletes link `index`; Ok(false) when there is no such link (any more).
    pub async fn delete_if_present(&self, index: u32) -> Result<bool> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
            Err(err) => Err(err).with_context(|| format!("deleting link {index}")),
        }
    }

    /// Deletes link `name` when it exists.
    pub async fn delete_named(&self, name: &str) -> Result<()> {
        if let Some(link) = self.link(name).await? {
            self.delete(link.index).await?;
        }
        Ok(())
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("setting link {index} up"))
    }

    /// A veth pair: `host` on `bridge` and up (with the network's `mtu`), its peer made
    /// directly in its namespace as `peer` says. Moving a link between namespaces afterwards
    /// costs an RCU grace period (13 ms of a 40-ms endpoint create here), renaming it another
    /// request.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: VethPeer<'_>,
        bridge: u32,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut end = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.name.to_owned())
            .setns_by_fd(peer.netns.as_raw_fd());
        if let Some(mac) = peer.mac {
            end = end.address(mac.to_vec());
        }
        if let Some(mtu) = peer.mtu {
            end = end.mtu(mtu);
        }
        let mut link = LinkVeth::new(host, peer.name)
            .alias(ALIAS)
            .controller(bridge)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(end.build())));
        if let Some(mtu) = mtu {
            link = link.mtu(mtu);
        }
        self.handle
            .link()
            .add(link.build())
            .execute()
            .await
            .with_context(|| {
                format!(
                    "creating veth pair {host} - {} (is there one already?)",
                    peer.name
                )
            })
    }

    /// Sets the MTU of link `index`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("setting the MTU of link {index} to {mtu}"))
    }

    /// Puts link `index` on bridge `bridge`.
    pub async fn set_controller(&self, index: u32, bridge: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(bridge).build())
            .execute()
            .await
            .with_context(|| format!("putting link {index} on bridge {bridge}"))
    }

    /// Unicast routes of the main table: (destination, output interface).
    pub async fn routes(&self) -> Result<Vec<(Ipv4Net, Option<u32>)>> {
        let mut stream = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await? {
            let mut table = u32::from(msg.header.table);
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if table == RT_TABLE_MAIN && msg.header.kind == RouteType::Unicast {
                out.push((
                    Ipv4Net::new(dst, msg.header.destination_prefix_length)?,
                    oif,
                ));
            }
        }
        Ok(out)
    }

    /// The ids of the BPF programs in the netlink TC filters of link `index` (clsact ingress
    /// or egress); none when it has no clsact qdisc.
    pub async fn tc_program_ids(&self, index: u32, ingress: bool) -> Result<Vec<u32>> {
        let request = self.handle.traffic_filter(index as i32).get();
        let request = if ingress {
            request.ingress()
        } else {
            request.egress()
        };
        let mut stream = request.execute();
        let mut out = Vec::new();
        loop {
            match stream.try_next().await {
                Ok(Some(msg)) => {
                    for attr in &msg.attributes {
                        if let TcAttribute::Options(options) = attr {
                            out.extend(options.iter().filter_map(|o| match o {
                                TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                                _ => None,
                            }));
                        }
                    }
                }
                Ok(None) => break,
                // No clsact qdisc (someone deleted it): no filter.
                Err(rtnetlink::Error::NetlinkError(_)) => break,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(out)
    }

    /// Names of the interfaces that hold a default route.
    pub async fn default_route_links(&self) -> Result<Vec<String>> {
        let links = self.links().await?;
        let mut out = Vec::new();
        for (dst, oif) in self.routes().await? {
            if dst.prefix_len() == 0
                && let Some(link) = links.iter().find(|l| Some(l.index) == oif)
                && !out.contains(&link.name)
            {
                out.push(link.name.clone());
            }
        }
        Ok(out)
    }
}

fn link_of(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        alias: None,
        controller: None,
        xdp_program: None,
        xdp_mode: None,
        veth: false,
        bridge: false,
        ethernet: msg.header.link_layer_type == LinkLayerType::Ether,
        traffic: Traffic::default(),
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::IfAlias(a) => link.alias = Some(a),
            LinkAttribute::Stats64(s) => {
                link.traffic = Traffic {
                    rx_packets: s.rx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_packets: s.tx_packets,
                    tx_bytes: s.tx_bytes,
                };
            }
            LinkAttribute::Controller(c) => link.controller = Some(c),
            LinkAttribute::LinkInfo(infos) => {
                link.veth = infos.contains(&LinkInfo::Kind(InfoKind::Veth));
                link.bridge = infos.contains(&LinkInfo::Kind(InfoKind::Bridge));
            }
            LinkAttribute::Xdp(xdp) => {
                link.xdp_program = xdp.iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) => Some(*id),
                    _ => None,
                });
                link.xdp_mode = xdp.iter().find_map(|x| match x {
                    LinkXdp::Attached(XdpAttached::Driver) => Some("native"),
                    LinkXdp::Attached(XdpAttached::SocketBuffer) => Some("generic"),
                    LinkXdp::Attached(XdpAttached::Hardware) => Some("offload"),
                    LinkXdp::Attached(XdpAttached::Multiple) => Some("multiple"),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

/// The endpoint's end of a veth pair, as `Netlink::create_veth` makes it.
pub struct VethPeer<'a> {
    pub name: &'a str,
    /// The namespace it is made in.
    pub netns: &'a File,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
}

/// How the endpoint's end of the veth pair (made with its name, MAC and MTU) is set up inside
/// its namespace. It is brought up there: a veth end cannot be up before its pair exists.
pub struct EndpointLink {
    /// Its name in the namespace: `eth0`, or the one a CNI runtime gave.
    pub ifname: String,
    /// Its IPv4 address and prefix length; None on an IPv6-only network.
    pub ip: Option<(Ipv4Addr, u8)>,
    /// None for internal and IPv6-only networks: no default route.
    pub gateway: Option<Ipv4Addr>,
    /// Its IPv6 address and prefix length, on a network with an IPv6 subnet.
    pub ip6: Option<(Ipv6Addr, u8)>,
    /// The IPv6 default route's gateway (the bridge's IPv6 address).
    pub gateway6: Option<Ipv6Addr>,
}

/// Makes sure IPv6 is on for interface `ifname` in the calling thread's namespace: sets
/// `net.ipv6.conf.IFNAME.disable_ipv6` to 0 when it is 1 (a host or namespace that disables
/// IPv6 by default). Call it only in namespaces the daemon manages, for its own interfaces.
pub fn enable_ipv6(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    let now = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {path} (is IPv6 off in this kernel?)"))?;
    if now.trim() != "0" {
        std::fs::write(&path, "0")
            .with_context(|| format!("enabling IPv6: writing 0 to {path}"))?;
    }
    Ok(())
}

/// Turns IPv6 off on interface `ifname` of the calling thread's namespace (an endpoint of a
/// network without IPv6, as Docker does): its kernel then sends no router solicitation, MLD
/// report or duplicate address detection, which `endpoint_ingress` would only drop. Nothing to
/// do in a kernel without IPv6.
pub fn disable_ipv6(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::read_to_string(&path) {
        Ok(now) if now.trim() == "1" => Ok(()),
        Ok(_) => std::fs::write(&path, "1")
            .with_context(|| format!("disabling IPv6: writing 1 to {path}")),
        Err(_) => Ok(()),
    }
}

/// Runs `f` with an rtnetlink connection inside the namespace `path`, on a dedicated thread
/// (setns changes the calling thread only, so the daemon's other threads stay where they are).
pub async fn in_netns<R, F, Fut>(path: &Path, f: F) -> Result<R>
where
    R: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<R>>,
{
    let file = File::open(path).with_context(|| format!("opening namespace {}", path.display()))?;
    let thread = std::thread::spawn(move || -> Result<R> {
        setns(&file, CloneFlags::CLONE_NEWNET).context("entering the endpoint namespace")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move { f(Netlink::new()?).await })
    });
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow!("the namespace thread panicked"))?
}

/// Inside the endpoint namespace: its interface (eth0) up with its address, lo up, the default
/// route.
pub async fn configure_endpoint(nl: Netlink, link: EndpointLink) -> Result<()> {
    let index = nl.index(&link.ifname).await?;
    // Before it is up, so that the kernel gives it its link-local address then, or none.
    if link.ip6.is_some() {
        enable_ipv6(&link.ifname)?;
    } else {
        disable_ipv6(&link.ifname)?;
    }
    nl.set_up(index).await?;
    let lo = nl.index("lo").await?;
    nl.set_up(lo).await?;
    if let Some((ip, prefix)) = link.ip {
        nl.add_address(index, ip, prefix).await?;
    }
    if let Some((ip6, prefix)) = link.ip6 {
        nl.add_address6(index, ip6, prefix).await?;
        if let Some(gateway6) = link.gateway6 {
            nl.handle
                .route()
                .add(
                    RouteMessageBuilder::<Ipv6Addr>::new()
                        .gateway(gateway6)
                        .output_interface(index)
                        .build(),
                )
                .execute()
                .await
                .context("adding the IPv6 default route")?;
        }
    }
    if let Some(gateway) = link.gateway {
        nl.handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gateway)
                    .build(),
            )
            .execute()
            .await
            .context("adding the default route")?;
    }
    Ok(())
}

/// Inside a namespace: lo up (an endpoint of mode none).
pub async fn lo_up(nl: Netlink) -> Result<()> {
    let lo = nl.index("lo").await?;
    nl.set_up(lo).await
}

/// Inside a namespace: the IPv4 and IPv6 addresses of interface `name` (the endpoint's end
/// of its veth pair), None when there is no such interface.
pub async fn link_addresses(
    nl: Netlink,
    name: String,
) -> Result<Option<(Vec<Ipv4Net>, Vec<Ipv6Net>)>> {
    match nl.link(&name).await? {
        Some(link) => Ok(Some((
            nl.addresses(link.index).await?,
            nl.addresses6(link.index).await?,
        ))),
        None => Ok(None),
    }
}
