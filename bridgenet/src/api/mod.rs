//! The HTTP/JSON API between the CLI and the daemon, on a Unix socket: request and response
//! types and the client (the daemon serves it from `crate::server`).
pub mod client;

use serde::{Deserialize, Serialize};

pub use crate::state::{CniAttachment, Endpoint, GatewayMode, Network, PortMapping};

/// The default socket; `BRIDGENET_SOCKET` or `--socket` override it.
pub const DEFAULT_SOCKET: &str = "/run/bridgenet/bridgenet.sock";

/// `POST /networks`. Addresses stay strings so that the daemon reports bad ones itself.
/// Request bodies refuse unknown fields: a misspelt option must not be ignored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    pub name: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub bridge: Option<String>,
    pub icc: bool,
    pub internal: bool,
    pub masquerade: bool,
    /// Absent: `nat`.
    #[serde(default)]
    pub gateway_mode: GatewayMode,
    /// The IPv6 subnet of a dual-stack network (needs `internal` for now); absent: IPv4 only.
    #[serde(default)]
    pub subnet6: Option<String>,
    /// Absent: the IPv6 subnet's first address after the network address.
    #[serde(default)]
    pub gateway6: Option<String>,
    /// How IPv6 meets the outside (Docker's `gateway_mode_ipv6`); absent: `nat`.
    #[serde(default)]
    pub gateway_mode6: GatewayMode,
    /// false: an IPv6-only network (Docker 28's `--ipv4=false`), with `subnet6` and no IPv4
    /// subnet. Absent: true.
    #[serde(default = "enabled")]
    pub ipv4: bool,
}

fn enabled() -> bool {
    true
}

/// `POST /endpoints`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointCreate {
    pub name: String,
    /// Empty in modes none and container.
    #[serde(default)]
    pub network: String,
    /// Empty in mode container (the shared endpoint's).
    #[serde(default)]
    pub netns: String,
    pub ip: Option<String>,
    /// `-p` SPECs.
    pub publish: Vec<String>,
    /// `--expose` PORT[/PROTO].
    pub expose: Vec<String>,
    /// `-P`.
    pub publish_all: bool,
    /// `--mode bridge|none|container:EP`; None is bridge.
    #[serde(default)]
    pub mode: Option<String>,
    /// The MAC of the endpoint's interface; None: 02:42 followed by the address.
    #[serde(default)]
    pub mac: Option<String>,
    /// The container end of the veth pair stays in the daemon's namespace for the container
    /// runtime to move (Docker's driver); `netns` is then empty.
    #[serde(default)]
    pub for_runtime: bool,
    /// The IPv6 address on a network with an IPv6 subnet; None: the next free one.
    #[serde(default)]
    pub ip6: Option<String>,
}

/// `POST /endpoints/{name}/publish` and `/unpublish`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpecs {
    pub specs: Vec<String>,
}

/// One published port of one endpoint, as `port ls` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortEntry {
    pub endpoint: String,
    /// The Docker container of the endpoint, when Docker's API (`--docker-host`) names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(flatten)]
    pub mapping: PortMapping,
}

/// `POST /filters`: `filter add`'s options, as given (the daemon reports bad ones itself).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterCreate {
    pub network: Option<String>,
    pub src: Option<String>,
    pub dport: Option<String>,
    pub action: String,
}

/// One rule of `GET /filters`, in evaluation order, with the packets it decided.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FilterEntry {
    pub id: u32,
    pub network: Option<String>,
    pub src: Option<ipnet::IpNet>,
    pub dport: Option<crate::state::filter::Dport>,
    pub action: crate::state::filter::Action,
    pub packets: u64,
}

/// One counter of `GET /stats`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stat {
    pub program: String,
    pub outcome: String,
    pub count: u64,
}

/// One direction of a tracked flow.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tuple {
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub packets: u64,
    pub bytes: u64,
}

/// One flow of `GET /conntrack`, like a line of `conntrack -L`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Flow {
    pub proto: String,
    pub state: String,
    /// Seconds until the flow expires unless a packet refreshes it.
    pub timeout: u64,
    pub original: Tuple,
    /// None when the reply direction's entry is missing.
    pub reply: Option<Tuple>,
}

/// `GET /conntrack`'s query: which flows to list. Values stay strings so that the daemon
/// reports bad ones itself. Without `count`, the answer streams one `Flow` per line
/// (newline-delimited JSON, `application/x-ndjson`); a walk that fails midway ends with an
/// `{"error": ...}` line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtQuery {
    /// Flows to or from the endpoint's address, translated or not.
    pub endpoint: Option<String>,
    /// tcp, udp, icmp, icmpv6 or a protocol number.
    pub proto: Option<String>,
    /// A state as `ct ls` shows it (ESTABLISHED, SYN_SENT, ASSURED...), any case.
    pub state: Option<String>,
    /// The original direction's source address.
    pub src: Option<String>,
    /// The original direction's destination address.
    pub dst: Option<String>,
    /// A port of either direction, source or destination.
    pub port: Option<String>,
    /// Answer `FlowCount` instead of the flows.
    #[serde(default)]
    pub count: bool,
}

impl CtQuery {
    /// The query string, `?` included.
    pub fn to_query(&self) -> String {
        // None fields are left out.
        format!("?{}", serde_urlencoded::to_string(self).unwrap_or_default())
    }
}

/// `GET /monitor`'s query: which events to stream. Values stay strings so that the daemon
/// reports bad ones itself. The answer streams one `MonitorEvent` per line
/// (newline-delimited JSON), a `watching` one first, until the client goes away.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorQuery {
    /// Flows opened and closed too, not only drops.
    #[serde(default)]
    pub flows: bool,
    pub endpoint: Option<String>,
    pub network: Option<String>,
    /// A drop reason (`drop_isolation`...): other drops are left out, flows are not.
    pub reason: Option<String>,
    /// tcp, udp, icmp, arp or ipv6.
    pub proto: Option<String>,
}

impl MonitorQuery {
    /// The query string, `?` included.
    pub fn to_query(&self) -> String {
        format!("?{}", serde_urlencoded::to_string(self).unwrap_or_default())
    }
}

/// One line of `GET /monitor`: `type` says which fields it has.
/// - `watching`: the first line; `rate` (events a second per CPU the datapath emits at most).
/// - `drop`: `reason`, `program`, `interface`, the packet (`proto`, `src`, `dst`, ICMP's
///   type and code), and the `endpoint` and `network` it is about when known.
/// - `flow-opened`: `program`, `interface`, the flow as it came (`src`, `dst`), its
///   `translation` (`dnat`, `snat`) and what it became (`translated_src`, `translated_dst`).
/// - `flow-closed`: the same without program and interface, with the flow's last `state`,
///   when garbage collection removes it.
/// - `lost`: `events` the datapath did not emit since this monitor attached (over the rate,
///   or the ring buffer full), when that grows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MonitorEvent {
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translated_src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translated_dst: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

/// `GET /conntrack?count=true`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowCount {
    pub flows: u64,
}

/// `GET /status`: whether the datapath is healthy, and what it is made of.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: u64,
    /// What is wrong, one line each naming its object; empty when healthy.
    pub problems: Vec<String>,
    pub uplinks: Vec<UplinkStatus>,
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapStatus>,
    pub conntrack: ConntrackStatus,
    /// Drops counted over the last `window_secs` (about a minute), by program and reason.
    pub drops: Vec<Stat>,
    pub window_secs: u64,
    /// The Docker driver's socket, when the integration is on.
    pub docker: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub name: String,
    pub addr: std::net::Ipv4Addr,
    /// Its global IPv6 address, which NAT66 and ports published on IPv6 use.
    #[serde(default)]
    pub addr6: Option<std::net::Ipv6Addr>,
    /// native, generic, off (not wanted: `--xdp`) or detached.
    pub xdp: String,
}

/// One program on one interface.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub program: String,
    pub iface: String,
    /// tc ingress, tc egress, xdp.
    pub hook: String,
    /// tcx, netlink (clsact filter, before Linux 6.6), xdp native, xdp generic.
    pub mode: String,
    pub attached: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapStatus {
    pub name: String,
    /// None for arrays, whose slots always exist.
    pub entries: Option<u64>,
    pub limit: u64,
    pub layout_version: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConntrackStatus {
    pub flows: u64,
    pub limit: u64,
    pub by_state: Vec<FlowsInState>,
    pub last_gc: Option<GcPass>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowsInState {
    pub proto: String,
    pub state: String,
    pub flows: u64,
}

/// The last conntrack garbage collection pass.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcPass {
    pub secs_ago: u64,
    /// When it ended, in milliseconds since the Unix epoch: lines the pass up with other
    /// events (the bench's API latencies).
    pub ended_unix_ms: u64,
    pub duration_ms: u64,
    pub flows_expired: u64,
    pub orphans_removed: u64,
}

/// `POST /cni/attachments`: what `bridgenet-cni` asks for on ADD. Addresses stay strings so
/// that the daemon reports bad ones itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniAdd {
    pub attachment: CniAttachment,
    /// The container's namespace (`CNI_NETNS`): a path, which bridgenet never removes.
    pub netns: String,
    pub network: CniNetwork,
    /// The `ips` capability: the endpoint's address, and its IPv6 one on a dual-stack network.
    pub ip: Option<String>,
    #[serde(default)]
    pub ip6: Option<String>,
    /// The `mac` capability.
    pub mac: Option<String>,
    /// The `portMappings` capability as `-p` SPECs.
    pub publish: Vec<String>,
}

/// The network of a CNI configuration: created on first use with these settings; an existing
/// network must have the ones given.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniNetwork {
    pub name: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    /// IPv6 beside IPv4 (a dual-stack network).
    #[serde(default)]
    pub subnet6: Option<String>,
    #[serde(default)]
    pub gateway6: Option<String>,
    /// false: IPv6 only (`NetworkCreate::ipv4`); absent: as the network is, or IPv4 too.
    /// Sent only when given, so that a daemon that predates it takes what did not need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<bool>,
    pub bridge: Option<String>,
    pub icc: Option<bool>,
    pub gateway_mode: Option<String>,
    /// IPv6's gateway mode (Docker's `gateway_mode_ipv6`).
    #[serde(default)]
    pub gateway_mode6: Option<String>,
    pub mtu: Option<u32>,
    /// Destinations the network's endpoints reach with their own address, and sources that
    /// reach them directly (CIDRs).
    #[serde(default)]
    pub non_masquerade: Vec<String>,
}

/// The answer to ADD and CHECK: the attachment's endpoint and its network.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CniAttached {
    pub endpoint: Endpoint,
    pub network: Network,
}

/// `POST /cni/gc`: removes the attachments on `network` that `valid` does not list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CniGc {
    pub network: String,
    pub valid: Vec<CniAttachment>,
}

/// The body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields_and_listings_still_flatten() {
        let entry: PortEntry = serde_json::from_str(
            r#"{"endpoint":"e","proto":"tcp","port":80,"host_ip":null,"host_port":8080}"#,
        )
        .unwrap();
        assert_eq!(entry.mapping.host_port, 8080);
        let err = serde_json::from_str::<PortSpecs>(r#"{"specs":[],"spec":[]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `spec`"), "{err}");
    }

    #[test]
    fn old_clients_need_no_ipv6_fields() {
        let net: NetworkCreate = serde_json::from_str(
            r#"{"name":"n","subnet":null,"gateway":null,"bridge":null,"icc":true,
                "internal":false,"masquerade":true}"#,
        )
        .unwrap();
        assert_eq!((net.subnet6, net.gateway6), (None, None));
        let ep: EndpointCreate = serde_json::from_str(
            r#"{"name":"e","network":"n","netns":"e","ip":null,"publish":[],"expose":[],
                "publish_all":false}"#,
        )
        .unwrap();
        assert_eq!(ep.ip6, None);
        let net: NetworkCreate = serde_json::from_str(
            r#"{"name":"n","subnet":"198.18.5.0/24","gateway":null,"bridge":null,"icc":true,
                "internal":true,"masquerade":true,"subnet6":"fd00:5::/64","gateway6":"fd00:5::1"}"#,
        )
        .unwrap();
        assert_eq!(net.subnet6.as_deref(), Some("fd00:5::/64"));
        assert_eq!(net.gateway6.as_deref(), Some("fd00:5::1"));
    }
}
