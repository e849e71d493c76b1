//! Loads the embedded eBPF object, attaches its programs and reads its maps.
use std::{collections::BTreeMap, net::Ipv4Addr, os::fd::AsFd as _, path::PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, Map, PerCpuArray, PerCpuHashMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        Program, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use bridgenet_common::{
    CtEntry, CtFlow, CtKey, Endpoint, IfCounters, NatConfig, PublishKey, PublishTarget, Subnet,
    Uplink, embryo_ring, maps, network_flags, outcome, port_hash::PortSecret, program_id, programs,
    stats_index,
};
use ipnet::Ipv4Net;

pub use crate::state::GatewayMode;

mod attach;
mod batch;
mod control;
mod inspect;
mod ipv6;
pub use inspect::MapFill;
pub use ipv6::publish6_key;
pub mod host_access;
pub mod layout;
pub use attach::{Hook, uses_tcx};
pub use control::publish_key;

/// The object built from bridgenet-ebpf by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bridgenet-ebpf"));

/// A network's options, as the datapath enforces them.
#[derive(Clone, Debug)]
pub struct NetworkOptions {
    /// Distinct per network: endpoints of different networks cannot reach each other.
    pub id: u32,
    pub gateway: Ipv4Addr,
    pub masquerade: bool,
    /// Endpoints of the network may reach each other (Docker's default).
    pub icc: bool,
    /// No traffic out of the network.
    pub internal: bool,
    pub gateway_mode: GatewayMode,
}

impl NetworkOptions {
    /// The `network_flags` the options give the network's subnets.
    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if !self.icc {
            flags |= network_flags::NO_ICC;
        }
        // An isolated network is internal (its bridge has no address besides).
        if self.internal || self.gateway_mode == GatewayMode::Isolated {
            flags |= network_flags::INTERNAL;
        }
        match self.gateway_mode {
            GatewayMode::NatUnprotected => flags |= network_flags::DIRECT_ANY,
            GatewayMode::Routed => flags |= network_flags::ROUTED,
            GatewayMode::Nat | GatewayMode::Isolated => {}
        }
        flags
    }
}

/// Room a conntrack map has past its limit of `limit` elements: `limit / share`. The LRU map
/// keeps free elements on per-CPU lists (up to 128 each) and evicts to fill one when the
/// others hold the rest: the room covers those lists too, so that the kernel never evicts a
/// tracked flow.
fn headroom(limit: u32, share: u32) -> u32 {
    let cpus = aya::util::nr_cpus().map_or(64, |n| n as u32);
    (limit / share).max(256 * cpus)
}

/// `headroom`'s share for `CONNTRACK` (one element per flow): docs/conntrack.md.
const HEADROOM_SHARE: u32 = 16;
/// `headroom`'s share for `CONNTRACK6` (two entries per flow).
const HEADROOM_SHARE6: u32 = 8;

/// The IPv6 table's limit, in entries, for an IPv4 limit of `flows` flows: a quarter of the
/// IPv4 flows' entries in layout v2, two per flow (IPv6 entries are twice the size, and fewer
/// flows are IPv6's).
fn limit6(flows: u32) -> u32 {
    (flows.saturating_mul(2) / 4).max(16)
}

/// How to load the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where maps are pinned (on a bpf filesystem); None keeps them private to this process.
    pub pin_dir: Option<PathBuf>,
    /// Limit of the IPv4 conntrack table, in flows (IPv6's and the embryo rings' follow).
    pub conntrack_flows: u32,
    /// Whether every program is verified at once (the daemon: a program the kernel refuses
    /// stops it before it changes anything), or each on its first use (tests and `watch`: the
    /// verifier is most of a load's time, and a test uses few of the programs).
    pub verify_all: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: None,
            conntrack_flows: bridgenet_common::CT_MAX_FLOWS,
            verify_all: false,
        }
    }
}

/// How a TC program is attached: tcx links exist from Linux 6.6; before that, a netlink
/// filter on a clsact qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    /// tcx where the kernel has it, else netlink (aya's default choice).
    Auto,
    /// Always netlink clsact, as on kernels before 6.6.
    Netlink,
}

pub mod conntrack;
pub mod filter;
pub mod monitor;

/// The loaded programs and maps of one bridgenet datapath.
pub struct Datapath {
    ebpf: Ebpf,
    /// What the load did to pins of older layouts, one per map.
    migrations: Vec<layout::Migration>,
    /// Older conntrack pins that `finish_upgrade` copies again and removes.
    upgrading: Vec<layout::Pin>,
}

impl Datapath {
    /// Loads the programs into the kernel (without attaching them), with private maps.
    pub fn load() -> Result<Self> {
        Self::load_with(&LoadOptions::default())
    }

    /// Loads the programs; with `pin_dir`, every map is pinned there under its layout version,
    /// maps already pinned there (by an earlier daemon) at this build's versions are reused
    /// with their state, older layouts are migrated (see `layout`), newer ones refused.
    pub fn load_with(options: &LoadOptions) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!("this binary was built with AYA_BUILD_SKIP=1 and carries no eBPF programs");
        }
        let mut loader = EbpfLoader::new();
        // Room past the limit for the drift of the datapath's shared count (see conntrack.rs).
        let limit = options.conntrack_flows;
        loader.map_max_entries(
            maps::CONNTRACK,
            limit
                .saturating_add(headroom(limit, HEADROOM_SHARE))
                .max(16),
        );
        let limit6 = limit6(limit);
        loader.map_max_entries(
            maps::CONNTRACK6,
            limit6.saturating_add(headroom(limit6, HEADROOM_SHARE6)),
        );
        // The flows that may make room when the table is full: per side, as many as half the
        // flows of a full table.
        loader.map_max_entries(maps::EMBRYOS, embryo_ring::COUNT * (limit / 2).max(16));
        // Pins carry their layout version; older ones are migrated below, newer ones refused.
        let (pins, mut older): (Vec<(&str, PathBuf)>, _) = match &options.pin_dir {
            Some(dir) => (
                maps::ALL
                    .iter()
                    .map(|name| {
                        (
                            *name,
                            dir.join(layout::pin_name(name, layout::version(name))),
                        )
                    })
                    .collect(),
                layout::older_pins(dir)?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
        if options.verify_all {
            verify_programs(&mut ebpf)?;
        }
        let mut datapath = Self {
            ebpf,
            migrations: Vec::new(),
            upgrading: Vec::new(),
        };
        datapath.set_nat_config(NatConfig::default())?;
        // Pinned by an earlier daemon: its flows' ports follow that key.
        if datapath.port_secret()? == PortSecret::default() {
            let mut key = [0u8; 16];
            getrandom::fill(&mut key).map_err(|err| anyhow!("no random key: {err}"))?;
            datapath.set_port_secret(bytemuck::cast(key))?;
        }
        // Pinned subnets of an earlier daemon (or a map new to this build): blocks to match.
        datapath.rebuild_subnet_blocks()?;
        // Pinned ports of an earlier daemon (or a map new to this build): PUBLISHED_BY to
        // match, before the conntrack migration looks there.
        datapath.rebuild_published_by()?;
        // A pinned table keeps the size it was made with: the limit must leave it its room.
        let capacity = match datapath.ebpf.map(maps::CONNTRACK) {
            Some(aya::maps::Map::LruHashMap(map)) => map.info()?.max_entries(),
            _ => bail!("map CONNTRACK missing or not an LRU hash"),
        };
        let mut usable = limit;
        while usable > 16 && usable.saturating_add(headroom(usable, HEADROOM_SHARE)) > capacity {
            usable -= usable / 16 + 1;
        }
        if usable < limit {
            tracing::warn!(
                "the pinned conntrack table holds {capacity} flows: limit {usable} flows instead \
                 of {limit} until `daemon --cleanup` makes it anew"
            );
        }
        datapath.set_conntrack_limit(u64::from(usable))?;
        // The count first: the conntrack migration sets it to what it kept.
        older.sort_by_key(|pin| pin.map == maps::CONNTRACK);
        for pin in older {
            let migration = datapath.migrate(&pin)?;
            datapath.migrations.push(migration);
            if pin.map == maps::CONNTRACK {
                datapath.upgrading.push(pin);
            }
        }
        Ok(datapath)
    }

    /// What this load did to pins of older layouts (also logged), one per map.
    pub fn migrations(&self) -> &[layout::Migration] {
        &self.migrations
    }

    /// The underlying aya object, for tests that read maps and for aya-log.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Program `name`, verified if it was not yet: for tests that run it with
    /// BPF_PROG_TEST_RUN.
    pub fn program_mut<'a, T>(&'a mut self, name: &str) -> Result<&'a mut T>
    where
        &'a mut T: TryFrom<&'a mut Program, Error = aya::programs::ProgramError>,
    {
        program_mut(&mut self.ebpf, name)
    }

    /// Attaches the TC counter to `iface` in the calling thread's network namespace.
    pub fn attach_tc_count(
        &mut self,
        iface: &str,
        direction: TcAttachType,
        mode: TcMode,
    ) -> Result<()> {
        self.attach_tc(programs::TC_COUNT, iface, direction, mode)
    }

    /// Makes `iface` an uplink: attaches the NAT programs to it and masquerades with `addr`.
    pub fn attach_uplink(&mut self, iface: &str, addr: Ipv4Addr, mode: TcMode) -> Result<()> {
        let ifindex = nix::net::if_::if_nametoindex(iface)
            .with_context(|| format!("no interface {iface}"))?;
        self.set_uplink_addr(ifindex, addr)?;
        self.attach_tc(programs::UPLINK_INGRESS, iface, TcAttachType::Ingress, mode)?;
        self.attach_tc(programs::UPLINK_EGRESS, iface, TcAttachType::Egress, mode)?;
        self.attach_xdp(programs::UPLINK_XDP, iface)?;
        Ok(())
    }

    /// Sets the address masquerade uses on the uplink `ifindex` (and the host address it has).
    pub fn set_uplink_addr(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<()> {
        let mut uplinks: HashMap<_, u32, Uplink> = HashMap::try_from(self.map_mut(maps::UPLINKS)?)?;
        uplinks.insert(ifindex, Uplink { addr: wire(addr) }, 0)?;
        self.add_host_addr(addr)
    }

    /// Records one of the host's addresses: ports published on any address answer on it.
    pub fn add_host_addr(&mut self, addr: Ipv4Addr) -> Result<()> {
        let mut addrs: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(maps::HOST_ADDRS)?)?;
        addrs.insert(wire(addr), 1, 0)?;
        Ok(())
    }

    /// Adds a managed subnet; with `masquerade` its traffic leaves with the uplink's address.
    /// It stands for a network of its own (see `add_network` for the other options).
    pub fn add_subnet(&mut self, subnet: Ipv4Net, masquerade: bool) -> Result<()> {
        let gateway = subnet.hosts().next().unwrap_or(subnet.network());
        let id = u32::from(subnet.network());
        self.add_network(
            subnet,
            &NetworkOptions {
                id,
                gateway,
                masquerade,
                icc: true,
                internal: false,
                gateway_mode: GatewayMode::Nat,
            },
        )
    }

    /// Adds the subnet of a network with its options: isolation from other networks, icc,
    /// internal, masquerade.
    pub fn add_network(&mut self, subnet: Ipv4Net, options: &NetworkOptions) -> Result<()> {
        // Its blocks first: the programs never see a subnet their blocks leave out.
        self.add_subnet_blocks(subnet)?;
        let mut subnets: LpmTrie<_, u32, Subnet> = LpmTrie::try_from(self.map_mut(maps::SUBNETS)?)?;
        let key = Key::new(u32::from(subnet.prefix_len()), wire(subnet.network()));
        let flags = options.flags();
        let internal = flags & network_flags::INTERNAL != 0;
        let routed = options.gateway_mode == GatewayMode::Routed;
        let value = Subnet {
            // An internal network has no way out, masqueraded or not; a routed one leaves
            // with its own addresses.
            masquerade: u32::from(options.masquerade && !internal && !routed),
            network: options.id,
            gateway: wire(options.gateway),
            flags,
        };
        subnets.insert(&key, value, 0)?;
        self.subnets_changed()
    }

    /// Records the endpoint behind the veth whose host end is `ifindex`: the only address and
    /// MAC it may send from, and its network. Its IPv6 address is `add_endpoint6`'s to give:
    /// any an earlier endpoint on that ifindex had is cleared here.
    pub fn add_endpoint(
        &mut self,
        ifindex: u32,
        addr: Ipv4Addr,
        mac: [u8; 6],
        network: u32,
    ) -> Result<()> {
        let mut endpoints: HashMap<_, u32, Endpoint> =
            HashMap::try_from(self.map_mut(maps::ENDPOINTS)?)?;
        endpoints.insert(
            ifindex,
            Endpoint {
                addr: wire(addr),
                mac,
                _pad: [0; 2],
                network,
            },
            0,
        )?;
        self.remove_endpoint6(ifindex)
    }

    /// Attaches the endpoint checks to the host end of an endpoint's veth.
    pub fn attach_endpoint(&mut self, iface: &str, mode: TcMode) -> Result<()> {
        self.attach_tc(
            programs::ENDPOINT_INGRESS,
            iface,
            TcAttachType::Ingress,
            mode,
        )
    }

    /// Publishes `proto` port `host_port` on `host_addr` (None: every host address) to
    /// `target:target_port`.
    pub fn publish(
        &mut self,
        proto: Proto,
        host_addr: Option<Ipv4Addr>,
        host_port: u16,
        target: Ipv4Addr,
        target_port: u16,
    ) -> Result<()> {
        let key = publish_key(proto, host_addr, host_port);
        let value = PublishTarget {
            addr: wire(target),
            port: target_port.to_be(),
            _pad: 0,
        };
        // Its slot first: the replies of the flows it opens look there.
        self.update_published_by(&key, &value, true)?;
        let mut publish: HashMap<_, PublishKey, PublishTarget> =
            HashMap::try_from(self.map_mut(maps::PUBLISH)?)?;
        let old = publish.get(&key, 0).ok();
        publish.insert(key, value, 0)?;
        match old {
            Some(old) if old != value => self.update_published_by(&key, &old, false),
            _ => Ok(()),
        }
    }

    /// Every published port: (key, target), as the programs store them.
    pub fn published(&self) -> Result<Vec<(PublishKey, PublishTarget)>> {
        let map: HashMap<_, PublishKey, PublishTarget> = HashMap::try_from(
            self.ebpf
                .map(maps::PUBLISH)
                .context("map PUBLISH missing")?,
        )?;
        Ok(map.iter().collect::<Result<_, _>>()?)
    }

    /// Sets the port ranges masquerade uses.
    pub fn set_nat_config(&mut self, config: NatConfig) -> Result<()> {
        let mut array: Array<_, NatConfig> = Array::try_from(self.map_mut(maps::NAT_CONFIG)?)?;
        array.set(0, config, 0)?;
        Ok(())
    }

    /// The key of masquerade's port sequence (`port_hash`).
    pub fn port_secret(&self) -> Result<PortSecret> {
        let map = self
            .ebpf
            .map(maps::PORT_SECRET)
            .context("map PORT_SECRET missing")?;
        Ok(Array::<_, PortSecret>::try_from(map)?.get(&0, 0)?)
    }

    /// Sets the key of masquerade's port sequence: the flows opened from then on follow it.
    pub fn set_port_secret(&mut self, secret: PortSecret) -> Result<()> {
        let mut array: Array<_, PortSecret> = Array::try_from(self.map_mut(maps::PORT_SECRET)?)?;
        array.set(0, secret, 0)?;
        Ok(())
    }

    /// The port ranges masquerade uses.
    pub fn nat_config(&self) -> Result<NatConfig> {
        let map = self
            .ebpf
            .map(maps::NAT_CONFIG)
            .context("map NAT_CONFIG missing")?;
        Ok(Array::<_, NatConfig>::try_from(map)?.get(&0, 0)?)
    }

    /// Every IPv4 flow as layout v2's two entries (`CtFlow::entries`): the key its hook looks
    /// up and what it does.
    pub fn conntrack(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        Ok(self
            .flows()?
            .iter()
            .flat_map(|(key, flow)| flow.entries(key))
            .collect())
    }

    /// Every element of the IPv4 conntrack table: one per flow, keyed by its outside tuple.
    pub fn flows(&self) -> Result<Vec<(CtKey, CtFlow)>> {
        let Some(Map::LruHashMap(map)) = self.ebpf.map(maps::CONNTRACK) else {
            bail!("map CONNTRACK missing or not an LRU hash");
        };
        batch::collect(map.fd().as_fd()).context("reading the conntrack table")
    }

    /// Non-zero counters, summed over CPUs: (program, outcome, packets).
    pub fn stats(&self) -> Result<Vec<(&'static str, &'static str, u64)>> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::STATS).context("map STATS missing")?)?;
        let mut out = Vec::new();
        for (p, program) in program_id::NAMES.iter().enumerate() {
            for (o, name) in outcome::NAMES.iter().enumerate() {
                let total: u64 = map.get(&stats_index(p as u32, o as u32), 0)?.iter().sum();
                if total > 0 {
                    out.push((*program, *name, total));
                }
            }
        }
        Ok(out)
    }

    /// The count of one program's outcome, summed over CPUs.
    pub fn stat(&self, program: u32, outcome: u32) -> Result<u64> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::STATS).context("map STATS missing")?)?;
        Ok(map.get(&stats_index(program, outcome), 0)?.iter().sum())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map {name} missing from the object"))
    }

    fn attach_tc(
        &mut self,
        name: &str,
        iface: &str,
        direction: TcAttachType,
        mode: TcMode,
    ) -> Result<()> {
        let program: &mut SchedClassifier = program_mut(&mut self.ebpf, name)?;
        let options = match mode {
            TcMode::Auto => None,
            TcMode::Netlink => Some(TcAttachOptions::Netlink(NlOptions::default())),
        };
        // tcx needs no qdisc; the netlink path (also aya's fallback on old kernels) does.
        if mode == TcMode::Netlink || !tcx_supported() {
            match tc::qdisc_add_clsact(iface) {
                Ok(()) => {}
                Err(tc::TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => {
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("adding clsact qdisc to {iface}"));
                }
            }
        }
        match options {
            None => program.attach(iface, direction),
            Some(options) => program.attach_with_options(iface, direction, options),
        }
        .with_context(|| {
            format!(
                "attaching {} to {iface} ({direction:?})",
                programs::TC_COUNT
            )
        })?;
        Ok(())
    }

    /// Attaches the XDP counter to `iface`: native mode where the driver has it, else generic.
    pub fn attach_xdp_count(&mut self, iface: &str) -> Result<XdpMode> {
        self.attach_xdp(programs::XDP_COUNT, iface)
    }

    /// Attaches XDP program `name` to `iface`: native mode where the driver has it, else generic.
    fn attach_xdp(&mut self, name: &str, iface: &str) -> Result<XdpMode> {
        let program: &mut Xdp = program_mut(&mut self.ebpf, name)?;
        match program.attach(iface, XdpMode::Driver) {
            Ok(_) => Ok(XdpMode::Driver),
            Err(_) => {
                program
                    .attach(iface, XdpMode::Skb)
                    .with_context(|| format!("attaching {name} to {iface}"))?;
                Ok(XdpMode::Skb)
            }
        }
    }

    /// Packet and byte counts per ifindex, summed over CPUs.
    pub fn if_counters(&self) -> Result<BTreeMap<u32, IfCounters>> {
        let map = self
            .ebpf
            .map(maps::IF_COUNTERS)
            .context("map IF_COUNTERS missing")?;
        let map: PerCpuHashMap<_, u32, IfCounters> = PerCpuHashMap::try_from(map)?;
        let mut totals = BTreeMap::new();
        for entry in map.iter() {
            let (ifindex, per_cpu) = entry?;
            let total: &mut IfCounters = totals.entry(ifindex).or_default();
            for counters in per_cpu.iter() {
                total.packets += counters.packets;
                total.bytes += counters.bytes;
            }
        }
        Ok(totals)
    }
}

/// Loads the TC and XDP programs, each in its own thread: the kernel verifies programs
/// independently, and the verifier is most of a daemon's start (seconds on a slow machine).
fn verify_programs(ebpf: &mut Ebpf) -> Result<()> {
    const NAMES: [&str; 7] = [
        programs::TC_COUNT,
        programs::UPLINK_INGRESS,
        programs::UPLINK_EGRESS,
        programs::ENDPOINT_INGRESS,
        programs::BRIDGE_INGRESS,
        programs::XDP_COUNT,
        programs::UPLINK_XDP,
    ];
    let started = std::time::Instant::now();
    let loaded: Vec<(&str, Result<()>)> = std::thread::scope(|scope| {
        let jobs: Vec<_> = ebpf
            .programs_mut()
            .filter(|(name, _)| NAMES.contains(name))
            .map(|(name, program)| scope.spawn(move || (name, verify(name, program))))
            .collect();
        jobs.into_iter()
            .map(|job| job.join().expect("a verifying thread panicked"))
            .collect()
    });
    for name in NAMES {
        if !loaded.iter().any(|(found, _)| *found == name) {
            bail!("program {name} missing from the object");
        }
    }
    for (name, result) in loaded {
        result.with_context(|| format!("verifying program {name}"))?;
    }
    tracing::debug!("programs verified in {:?}", started.elapsed());
    Ok(())
}

/// Program `name` of `ebpf`, verified first if it was not yet (see `LoadOptions::verify_all`).
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    if program.fd().is_err() {
        verify(name, program).with_context(|| format!("verifying program {name}"))?;
    }
    Ok(program.try_into()?)
}

/// Loads `program` into the kernel, which verifies it.
fn verify(name: &str, program: &mut Program) -> Result<()> {
    let started = std::time::Instant::now();
    match program {
        Program::SchedClassifier(tc) => tc.load()?,
        Program::Xdp(xdp) => xdp.load()?,
        Program::CgroupSockAddr(hook) => hook.load()?,
        _ => bail!("not a TC, XDP or cgroup program"),
    }
    // What the verifier walked: the cost of a daemon start, per program. Asking the kernel
    // is a system call per program, made only when the log shows the answer.
    if tracing::enabled!(tracing::Level::DEBUG) {
        let instructions = program
            .info()
            .ok()
            .and_then(|info| info.verified_instruction_count())
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        tracing::debug!(
            "program {name} verified in {:?} ({instructions} instructions walked)",
            started.elapsed()
        );
    }
    Ok(())
}

/// Whether the running kernel has tcx (Linux 6.6 and later).
pub fn tcx_supported() -> bool {
    kernel_version().is_some_and(|v| v >= (6, 6))
}

/// The running kernel's (major, minor) version.
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = nix::sys::utsname::uname()
        .ok()?
        .release()
        .to_str()?
        .to_owned();
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The protocols a port can be published for; the value is the IP protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
}

/// An address as the programs store it: network byte order in a u32.
pub fn wire(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`wire`].
pub fn from_wire(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}
