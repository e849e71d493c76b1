//! `bridgenet monitor`: the datapath's events (drops, flows opened) and the flows garbage
//! collection removes, streamed to every attached monitor with its filters applied and the
//! endpoint and network each event is about. The datapath emits only while a monitor is
//! attached, and only the kinds attached monitors want.
use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use bridgenet_common::{MonitorEvent as Raw, action, monitor, outcome, program_id};
use bytes::Bytes;
use ipnet::IpNet;
use tokio::sync::{Mutex, broadcast};

use super::{Daemon, Error, ports::wire_proto, proto_name};
use crate::{
    api::{MonitorEvent, MonitorQuery},
    datapath::{
        conntrack::{Expired, Flow, Flow6},
        from_wire,
        monitor::{MonitorControl, MonitorEvents},
    },
};

/// Events on their way to the monitors; a monitor that falls further behind loses the
/// oldest, and is told how many.
const QUEUE: usize = 8192;

/// What a monitor sees, before its filters and names.
#[derive(Clone)]
enum Event {
    Datapath(Raw),
    Closed(Box<Flow>),
    Closed6(Box<Flow6>),
}

/// The daemon's side of every attached monitor.
pub struct Monitor {
    control: StdMutex<Control>,
    events: broadcast::Sender<Event>,
    rate: u32,
    /// Set when the daemon stops: every stream ends, so that the API's graceful shutdown,
    /// which waits for open requests, does not wait for monitors forever.
    stopping: tokio::sync::watch::Sender<bool>,
}

struct Control {
    maps: MonitorControl,
    /// Attached monitors, and those of them that want flows.
    watching: usize,
    watching_flows: usize,
}

impl Monitor {
    /// Starts reading the programs' ring buffer; nothing is emitted until a monitor attaches.
    pub fn start(events: MonitorEvents, mut maps: MonitorControl, rate: u32) -> Result<Arc<Self>> {
        // A daemon restarted while monitors were attached starts with none.
        maps.configure(0, rate)?;
        let (tx, _) = broadcast::channel(QUEUE);
        let reader = tx.clone();
        // SAFETY: the reader owns its ring buffer's fd, which lives as long as the AsyncFd.
        let mut fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
        }
        .map_err(|err| err.into_parts().1)?;
        tokio::spawn(async move {
            while let Ok(mut guard) = fd.readable_mut().await {
                while let Some(event) = guard.get_inner_mut().read() {
                    // No receiver: the last monitor just went away.
                    let _ = reader.send(Event::Datapath(event));
                }
                guard.clear_ready();
            }
        });
        Ok(Arc::new(Self {
            control: StdMutex::new(Control {
                maps,
                watching: 0,
                watching_flows: 0,
            }),
            events: tx,
            rate,
            stopping: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// Ends every monitor's stream: the daemon is stopping.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Whether an attached monitor wants flows (and so the flows GC removes).
    pub fn watching_flows(&self) -> bool {
        self.lock().watching_flows > 0
    }

    /// Flows garbage collection removed.
    pub(super) fn closed(&self, expired: Expired) {
        // The host's own flows are tracked, not translated: nothing a monitor shows.
        for flow in expired
            .flows
            .into_iter()
            .filter(|f| f.original.1.action != action::HOST)
        {
            let _ = self.events.send(Event::Closed(Box::new(flow)));
        }
        for flow in expired
            .flows6
            .into_iter()
            .filter(|f| f.original.1.track.action != action::HOST)
        {
            let _ = self.events.send(Event::Closed6(Box::new(flow)));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the programs what the attached monitors want.
    fn update(&self, change: impl FnOnce(&mut Control)) {
        let mut c = self.lock();
        change(&mut c);
        let mut kinds = 0;
        if c.watching > 0 {
            kinds |= monitor::DROPS;
        }
        if c.watching_flows > 0 {
            kinds |= monitor::FLOWS;
        }
        if let Err(err) = c.maps.configure(kinds, self.rate) {
            tracing::warn!("monitor: {err:#}");
        }
    }

    fn lost(&self) -> u64 {
        self.lock().maps.lost().unwrap_or(0)
    }
}

/// One attached monitor; detached when dropped (its client went away).
struct Attached {
    monitor: Arc<Monitor>,
    flows: bool,
}

impl Attached {
    fn new(monitor: Arc<Monitor>, flows: bool) -> Self {
        monitor.update(|c| {
            c.watching += 1;
            c.watching_flows += usize::from(flows);
        });
        Self { monitor, flows }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let flows = self.flows;
        self.monitor.update(|c| {
            c.watching -= 1;
            c.watching_flows -= usize::from(flows);
        });
    }
}

/// A monitor's filters, checked against the daemon's state.
pub struct Filter {
    flows: bool,
    endpoint: Option<String>,
    network: Option<String>,
    reason: Option<String>,
    proto: Option<String>,
}

/// What `--proto` takes.
const PROTOS: [&str; 5] = ["tcp", "udp", "icmp", "arp", "ipv6"];

impl Daemon {
    /// A monitor's filters, refused with one line when one names nothing that exists.
    pub fn monitor_filter(&self, q: &MonitorQuery) -> Result<(Arc<Monitor>, Filter), Error> {
        if let Some(reason) = &q.reason {
            let known = outcome::NAMES
                .iter()
                .enumerate()
                .any(|(n, name)| outcome::is_drop(n as u32) && name == reason);
            if !known {
                return Err(Error::BadRequest(format!(
                    "unknown drop reason {reason} (`bridgenet stats` lists them)"
                )));
            }
        }
        if let Some(proto) = &q.proto
            && !PROTOS.contains(&proto.as_str())
        {
            return Err(Error::BadRequest(format!(
                "unknown protocol {proto} (one of {})",
                PROTOS.join(", ")
            )));
        }
        if let Some(endpoint) = &q.endpoint {
            self.endpoint(endpoint)?;
        }
        if let Some(network) = &q.network {
            self.network(network)?;
        }
        let filter = Filter {
            flows: q.flows,
            endpoint: q.endpoint.clone(),
            network: q.network.clone(),
            reason: q.reason.clone(),
            proto: q.proto.clone(),
        };
        Ok((self.monitor.clone(), filter))
    }
}

/// The monitor's events as newline-delimited JSON, until the client goes away: `watching`
/// first, then the events that `filter` keeps, a `lost` line when the count grows, and an
/// empty line every second so that a client gone is noticed while nothing happens.
pub fn stream(
    monitor: Arc<Monitor>,
    filter: Filter,
    daemon: Arc<Mutex<Daemon>>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let watcher = Watcher {
        rx: monitor.events.subscribe(),
        stopping: monitor.stopping.subscribe(),
        lost_at_start: monitor.lost(),
        attached: Attached::new(monitor, filter.flows),
        filter,
        names: Names::default(),
        daemon,
        tick: tokio::time::interval(Duration::from_secs(1)),
        lagged: 0,
        reported: 0,
        started: false,
    };
    futures_util::stream::unfold(watcher, |mut w| async move {
        let line = w.next_line().await?;
        Some((Ok(line), w))
    })
}

struct Watcher {
    attached: Attached,
    rx: broadcast::Receiver<Event>,
    stopping: tokio::sync::watch::Receiver<bool>,
    filter: Filter,
    names: Names,
    daemon: Arc<Mutex<Daemon>>,
    tick: tokio::time::Interval,
    lost_at_start: u64,
    /// Events this monitor fell too far behind to see.
    lagged: u64,
    /// The lost count last sent.
    reported: u64,
    started: bool,
}

impl Watcher {
    async fn next_line(&mut self) -> Option<Bytes> {
        if !self.started {
            self.started = true;
            return Some(json_line(&MonitorEvent {
                time: now(),
                kind: "watching".into(),
                rate: Some(self.attached.monitor.rate),
                ..MonitorEvent::default()
            }));
        }
        loop {
            if *self.stopping.borrow() {
                return None;
            }
            tokio::select! {
                _ = self.stopping.changed() => return None,
                event = self.rx.recv() => match event {
                    Ok(event) => {
                        if let Some(line) = self.render(&event).await {
                            return Some(json_line(&line));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => self.lagged += n,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.tick.tick() => {
                    let lost = self
                        .attached
                        .monitor
                        .lost()
                        .saturating_sub(self.lost_at_start)
                        + self.lagged;
                    if lost > self.reported {
                        self.reported = lost;
                        return Some(json_line(&MonitorEvent {
                            time: now(),
                            kind: "lost".into(),
                            events: Some(lost),
                            ..MonitorEvent::default()
                        }));
                    }
                    return Some(Bytes::from_static(b"\n"));
                }
            }
        }
    }

    /// The event as the API shows it, or None when the filters leave it out.
    async fn render(&mut self, event: &Event) -> Option<MonitorEvent> {
        let f = &self.filter;
        let kept_kind = match event {
            Event::Datapath(raw) => raw.kind == monitor::KIND_DROP || f.flows,
            Event::Closed(_) | Event::Closed6(_) => f.flows,
        };
        if !kept_kind {
            return None;
        }
        self.names.refresh(&self.daemon).await;
        let line = match event {
            Event::Datapath(raw) => self.names.datapath(raw),
            Event::Closed(flow) => self.names.closed(flow),
            Event::Closed6(flow) => self.names.closed6(flow),
        };
        let f = &self.filter;
        let keep = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        let reason_kept = line.kind != "drop" || keep(&f.reason, &line.reason);
        (reason_kept
            && keep(&f.endpoint, &line.endpoint)
            && keep(&f.network, &line.network)
            && keep(&f.proto, &line.proto))
        .then_some(line)
    }
}

fn json_line(event: &MonitorEvent) -> Bytes {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A published port: protocol, host address (None: every one), host port.
type Published = (u8, Option<Ipv4Addr>, u16);

/// The names events are shown with, from the daemon's state at most a second old.
#[derive(Default)]
struct Names {
    taken: Option<Instant>,
    /// Endpoints by the host end of their veth, and by address: (endpoint, network).
    by_veth: HashMap<String, (String, String)>,
    by_addr: HashMap<IpAddr, (String, String)>,
    /// Published ports: (protocol, host address or None for every one, host port) and the
    /// endpoint they go to.
    published: Vec<(Published, (String, String))>,
    /// Networks by bridge, and by subnet.
    by_bridge: HashMap<String, String>,
    subnets: Vec<(IpNet, String)>,
    interfaces: HashMap<u32, String>,
}

impl Names {
    async fn refresh(&mut self, daemon: &Mutex<Daemon>) {
        if self
            .taken
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let d = daemon.lock().await;
        let state = d.state();
        *self = Names {
            taken: Some(Instant::now()),
            ..Names::default()
        };
        for e in state.endpoints.values() {
            let named = (e.name.clone(), e.network.clone());
            if !e.veth.is_empty() {
                self.by_veth.insert(e.veth.clone(), named.clone());
                // Mode container shares its endpoint's address: the veth's owner names it.
                if let Some(ip) = e.ipv4() {
                    self.by_addr.insert(ip.into(), named.clone());
                }
                if let Some(ip6) = e.ip6 {
                    self.by_addr.insert(ip6.into(), named.clone());
                }
            }
            // Monitor events are IPv4's.
            for p in e.ports.iter().filter(|p| p.host_v4().is_some()) {
                let proto = wire_proto(p.proto) as u8;
                let host = p.host_v4().flatten();
                self.published
                    .push(((proto, host, p.host_port), named.clone()));
            }
        }
        for n in state.networks.values() {
            self.by_bridge.insert(n.bridge.clone(), n.name.clone());
            if let Some(subnet) = n.subnet {
                self.subnets.push((subnet.into(), n.name.clone()));
            }
            if let Some(subnet6) = n.subnet6 {
                self.subnets.push((subnet6.into(), n.name.clone()));
            }
        }
    }

    fn interface(&mut self, ifindex: u32) -> String {
        self.interfaces
            .entry(ifindex)
            .or_insert_with(|| match nix::net::if_::if_indextoname(ifindex) {
                Ok(name) => name.to_string_lossy().into_owned(),
                Err(_) => format!("if{ifindex}"),
            })
            .clone()
    }

    /// The endpoint and network an event is about: the interface's, else the one a published
    /// port (`to`: protocol, address, port) goes to, else the first of `addrs` that is an
    /// endpoint's, else a network whose subnet holds one of them.
    fn about(
        &self,
        interface: Option<&str>,
        to: Option<(u8, Ipv4Addr, u16)>,
        addrs: &[IpAddr],
    ) -> (Option<String>, Option<String>) {
        if let Some((e, n)) = interface.and_then(|i| self.by_veth.get(i)) {
            return (Some(e.clone()), Some(n.clone()));
        }
        let published = to.and_then(|(proto, addr, port)| {
            self.published
                .iter()
                .find(|((p, host, hport), _)| {
                    *p == proto && *hport == port && host.is_none_or(|h| h == addr)
                })
                .map(|(_, named)| named)
        });
        if let Some((e, n)) = published {
            return (Some(e.clone()), Some(n.clone()));
        }
        if let Some((e, n)) = addrs.iter().find_map(|a| self.by_addr.get(a)) {
            return (Some(e.clone()), Some(n.clone()));
        }
        let network = interface
            .and_then(|i| self.by_bridge.get(i))
            .or_else(|| {
                addrs.iter().find_map(|a| {
                    self.subnets
                        .iter()
                        .find(|(s, _)| s.contains(a))
                        .map(|(_, n)| n)
                })
            })
            .cloned();
        (None, network)
    }

    fn datapath(&mut self, raw: &Raw) -> MonitorEvent {
        let interface = self.interface(raw.ifindex);
        let mut event = MonitorEvent {
            time: now(),
            program: program_id::NAMES
                .get(usize::from(raw.program))
                .map(|p| p.to_string()),
            ..MonitorEvent::default()
        };
        let ipv6 = raw.ether_type == 0x86dd;
        let (saddr, daddr, nsaddr, ndaddr): (IpAddr, IpAddr, IpAddr, IpAddr) = if ipv6 {
            (
                Ipv6Addr::from(raw.saddr6).into(),
                Ipv6Addr::from(raw.daddr6).into(),
                Ipv6Addr::from(raw.nat_saddr6).into(),
                Ipv6Addr::from(raw.nat_daddr6).into(),
            )
        } else {
            (
                from_wire(raw.saddr).into(),
                from_wire(raw.daddr).into(),
                from_wire(raw.nat_saddr).into(),
                from_wire(raw.nat_daddr).into(),
            )
        };
        let about: Vec<IpAddr>;
        let mut to = None;
        if raw.kind == monitor::KIND_DROP {
            event.kind = "drop".into();
            event.reason = outcome::NAMES
                .get(usize::from(raw.outcome))
                .map(|r| r.to_string());
            match raw.ether_type {
                0x0800 => {
                    event.proto = Some(proto_name(raw.proto));
                    event.src = Some(endpoint_str(raw.proto, saddr, raw.sport));
                    event.dst = Some(endpoint_str(raw.proto, daddr, raw.dport));
                    if raw.proto == 1 {
                        let [kind, code] = raw.sport.to_ne_bytes();
                        event.icmp_type = Some(kind);
                        event.icmp_code = Some(code);
                    } else {
                        to = Some((raw.proto, from_wire(raw.daddr), u16::from_be(raw.dport)));
                    }
                }
                0x0806 => event.proto = Some("arp".into()),
                0x86dd => {
                    // The family, as `--proto` takes it; its first next header shows in the
                    // ports (TCP, UDP) or the ICMPv6 type.
                    event.proto = Some("ipv6".into());
                    event.src = Some(endpoint_str(raw.proto, saddr, raw.sport));
                    event.dst = Some(endpoint_str(raw.proto, daddr, raw.dport));
                    if raw.proto == 58 {
                        let [kind, code] = raw.sport.to_ne_bytes();
                        event.icmp_type = Some(kind);
                        event.icmp_code = Some(code);
                    }
                }
                other => event.proto = Some(format!("0x{other:04x}")),
            }
            about = vec![saddr, daddr];
        } else {
            event.kind = "flow-opened".into();
            event.translation = Some(if u32::from(raw.outcome) == outcome::SNAT {
                "snat".into()
            } else {
                "dnat".into()
            });
            event.proto = Some(proto_name(raw.proto));
            event.src = Some(endpoint_str(raw.proto, saddr, raw.sport));
            event.dst = Some(endpoint_str(raw.proto, daddr, raw.dport));
            event.translated_src = Some(endpoint_str(raw.proto, nsaddr, raw.nat_sport));
            event.translated_dst = Some(endpoint_str(raw.proto, ndaddr, raw.nat_dport));
            // The endpoint's side: the translated destination of a published flow, the
            // source of a masqueraded one.
            about = vec![ndaddr, saddr, daddr];
        }
        (event.endpoint, event.network) = self.about(Some(&interface), to, &about);
        event.interface = Some(interface);
        event
    }

    fn closed(&mut self, flow: &Flow) -> MonitorEvent {
        let (key, entry) = &flow.original;
        let reply = &flow.reply.0;
        let tuple = |a: u32, b: u32| (from_wire(a).into(), from_wire(b).into());
        self.closed_flow(
            key.proto,
            [tuple(key.saddr, key.daddr), tuple(reply.daddr, reply.saddr)],
            [key.sport, key.dport, reply.dport, reply.sport],
            entry.action,
            flow.state.name(),
        )
    }

    fn closed6(&mut self, flow: &Flow6) -> MonitorEvent {
        let (key, entry) = &flow.original;
        let reply = &flow.reply.0;
        let tuple = |a: [u8; 16], b: [u8; 16]| (Ipv6Addr::from(a).into(), Ipv6Addr::from(b).into());
        self.closed_flow(
            key.proto,
            [tuple(key.saddr, key.daddr), tuple(reply.daddr, reply.saddr)],
            [key.sport, key.dport, reply.dport, reply.sport],
            entry.track.action,
            flow.state.name(),
        )
    }

    /// A flow garbage collection removed: its original tuple and its translation (the reply
    /// entry's tuple turned around), ports in network order in the same order.
    fn closed_flow(
        &mut self,
        proto: u8,
        [(src, dst), (translated_src, translated_dst)]: [(IpAddr, IpAddr); 2],
        [sport, dport, translated_sport, translated_dport]: [u16; 4],
        action: u8,
        state: &str,
    ) -> MonitorEvent {
        let mut event = MonitorEvent {
            time: now(),
            kind: "flow-closed".into(),
            proto: Some(proto_name(proto)),
            src: Some(endpoint_str(proto, src, sport)),
            dst: Some(endpoint_str(proto, dst, dport)),
            translation: match action {
                action::SNAT => Some("snat".into()),
                action::DNAT | action::HAIRPIN => Some("dnat".into()),
                _ => None,
            },
            translated_src: Some(endpoint_str(proto, translated_src, translated_sport)),
            translated_dst: Some(endpoint_str(proto, translated_dst, translated_dport)),
            state: Some(state.into()),
            ..MonitorEvent::default()
        };
        (event.endpoint, event.network) = self.about(None, None, &[translated_dst, src, dst]);
        event
    }
}

/// `addr:port` (`[addr]:port` for IPv6) for TCP and UDP, the address alone for other
/// protocols.
fn endpoint_str(proto: u8, addr: IpAddr, port: u16) -> String {
    match proto {
        6 | 17 => std::net::SocketAddr::new(addr, u16::from_be(port)).to_string(),
        _ => addr.to_string(),
    }
}
