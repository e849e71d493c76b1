//! The rulesets bridgenet is compared with, written as their tools write them for one bridge
//! network (172.17.0.0/16, one container at 172.17.0.2; for IPv6 2001:db8:17::/64 and
//! 2001:db8:17::2) with published ports.
use std::fmt::Write as _;

pub const SUBNET: &str = "172.17.0.0/16";
pub const ENDPOINT: &str = "172.17.0.2";
pub const SUBNET6: &str = "2001:db8:17::/64";
pub const ENDPOINT6: &str = "2001:db8:17::2";

/// The address family of Docker's rules: iptables for IPv4, ip6tables for IPv6 (Docker 20.10
/// with `"ip6tables": true` writes the same chains and rules with the network's IPv6 subnet).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn subnet(self) -> &'static str {
        match self {
            Family::V4 => SUBNET,
            Family::V6 => SUBNET6,
        }
    }

    /// The endpoint's host route, as Docker's per-port ACCEPT and hairpin MASQUERADE match it.
    fn endpoint_host(self) -> String {
        match self {
            Family::V4 => format!("{ENDPOINT}/32"),
            Family::V6 => format!("{ENDPOINT6}/128"),
        }
    }

    /// `--to-destination` of a DNAT to the endpoint's `port`.
    fn to(self, port: u16) -> String {
        match self {
            Family::V4 => format!("{ENDPOINT}:{port}"),
            Family::V6 => format!("[{ENDPOINT6}]:{port}"),
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// The tool of this family with the backend of `iptables` (iptables-nft or -legacy).
    pub fn tool(self, iptables: &str) -> String {
        match self {
            Family::V4 => iptables.to_owned(),
            Family::V6 => iptables.replacen("iptables", "ip6tables", 1),
        }
    }
}

/// One published port: protocol, host port, container port.
#[derive(Clone, Copy)]
pub struct Mapping {
    pub proto: &'static str,
    pub host: u16,
    pub container: u16,
}

/// Docker 20.10's rules for the default bridge `br` and its published ports, in the order
/// Docker appends them, as `iptables-restore` input (nat and filter tables).
///
/// Network creation writes the jumps from PREROUTING/OUTPUT to DOCKER, the subnet's
/// MASQUERADE, the FORWARD rules, the isolation stages and DOCKER-USER; each published port
/// then appends a DNAT rule to nat DOCKER, an ACCEPT to filter DOCKER and a hairpin
/// MASQUERADE to POSTROUTING. Docker expands a range into one set per port.
pub fn docker_restore(br: &str, ports: &[Mapping], family: Family) -> String {
    let (subnet, loopback) = (family.subnet(), family.loopback());
    let mut nat = format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A OUTPUT ! -d {loopback} -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A POSTROUTING -s {subnet} ! -o {br} -j MASQUERADE\n"
    );
    let mut filter = format!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :DOCKER - [0:0]\n:DOCKER-ISOLATION-STAGE-1 - [0:0]\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n\
         :DOCKER-USER - [0:0]\n\
         -A FORWARD -j DOCKER-USER\n\
         -A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
         -A FORWARD -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A FORWARD -o {br} -j DOCKER\n\
         -A FORWARD -i {br} ! -o {br} -j ACCEPT\n\
         -A FORWARD -i {br} -o {br} -j ACCEPT\n"
    );
    let mut dnat = format!("-A DOCKER -i {br} -j RETURN\n");
    for m in ports {
        for rule in docker_port_rules(br, m, family) {
            let line = rule[2..].join(" ");
            match (rule[1].as_str(), rule[2].as_str(), rule[3].as_str()) {
                ("nat", _, "DOCKER") => writeln!(dnat, "{line}"),
                ("nat", _, _) => writeln!(nat, "{line}"),
                _ => writeln!(filter, "{line}"),
            }
            .unwrap();
        }
    }
    filter.push_str(&format!(
        "-A DOCKER-ISOLATION-STAGE-1 -i {br} ! -o {br} -j DOCKER-ISOLATION-STAGE-2\n\
         -A DOCKER-ISOLATION-STAGE-1 -j RETURN\n\
         -A DOCKER-ISOLATION-STAGE-2 -o {br} -j DROP\n\
         -A DOCKER-ISOLATION-STAGE-2 -j RETURN\n\
         -A DOCKER-USER -j RETURN\nCOMMIT\n"
    ));
    format!("{nat}{dnat}COMMIT\n{filter}")
}

/// The three rules Docker appends for one published port, each as the arguments of one
/// `iptables` call (`-t TABLE -A CHAIN ...`), in Docker's order.
pub fn docker_port_rules(br: &str, m: &Mapping, family: Family) -> [Vec<String>; 3] {
    let (p, h, c) = (m.proto, m.host, m.container);
    let (ep, to) = (family.endpoint_host(), family.to(c));
    let words = |s: String| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    [
        words(format!(
            "-t nat -A DOCKER ! -i {br} -p {p} -m {p} --dport {h} -j DNAT --to-destination {to}"
        )),
        words(format!(
            "-t filter -A DOCKER -d {ep} ! -i {br} -o {br} -p {p} -m {p} --dport {c} -j ACCEPT"
        )),
        words(format!(
            "-t nat -A POSTROUTING -s {ep} -d {ep} -p {p} -m {p} --dport {c} -j MASQUERADE"
        )),
    ]
}

/// The base ruleset of Docker's network alone (no port), for timing the per-port calls.
pub fn docker_base(br: &str) -> String {
    docker_restore(br, &[], Family::V4)
}

/// netavark's nftables driver for one network and its ports, as `nft -f` input: one `inet
/// netavark` table; PREROUTING/OUTPUT jump to NETAVARK-HOSTPORT-DNAT for local addresses,
/// which has one `dport -> jump` rule per port into the network's dnat chain, which has, per
/// port, the two SETMARK jumps (hairpin from the subnet and from 127.0.0.1) and the DNAT.
/// netavark's driver writes plain rules there, no verdict map; so does this.
pub fn netavark_nft(br: &str, ports: &[Mapping]) -> String {
    let net = "nv_2f259bab_172_17_0_0_nm16";
    let mut s = format!(
        "flush ruleset
table inet netavark {{
  chain INPUT {{
    type filter hook input priority filter; policy accept;
    ip saddr {SUBNET} meta l4proto {{ tcp, udp }} th dport 53 accept
  }}
  chain FORWARD {{
    type filter hook forward priority filter; policy accept;
    ct state invalid drop
    jump NETAVARK-ISOLATION-1
    ip daddr {SUBNET} ct state established,related accept
    ip saddr {SUBNET} accept
  }}
  chain POSTROUTING {{
    type nat hook postrouting priority srcnat; policy accept;
    meta mark & 0x00002000 == 0x00002000 masquerade
    ip saddr {SUBNET} jump {net}
  }}
  chain PREROUTING {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump NETAVARK-HOSTPORT-DNAT
  }}
  chain OUTPUT {{
    type nat hook output priority -100; policy accept;
    fib daddr type local jump NETAVARK-HOSTPORT-DNAT
  }}
  chain NETAVARK-HOSTPORT-SETMARK {{
    meta mark set meta mark | 0x00002000
  }}
  chain NETAVARK-ISOLATION-1 {{
    iifname \"{br}\" oifname != \"{br}\" jump NETAVARK-ISOLATION-2
  }}
  chain NETAVARK-ISOLATION-2 {{
    oifname \"{br}\" drop
  }}
  chain NETAVARK-ISOLATION-3 {{
    jump NETAVARK-ISOLATION-2
  }}
  chain {net} {{
    ip daddr {SUBNET} accept
    ip daddr != 224.0.0.0/4 masquerade
  }}
"
    );
    let mut jumps = String::from("  chain NETAVARK-HOSTPORT-DNAT {\n");
    let mut dnat = format!("  chain {net}_dnat {{\n");
    for m in ports {
        let (p, h, c) = (m.proto, m.host, m.container);
        writeln!(jumps, "    {p} dport {h} jump {net}_dnat").unwrap();
        writeln!(
            dnat,
            "    ip saddr {SUBNET} {p} dport {h} jump NETAVARK-HOSTPORT-SETMARK\n    \
             ip saddr 127.0.0.1 {p} dport {h} jump NETAVARK-HOSTPORT-SETMARK\n    \
             {p} dport {h} dnat ip to {ENDPOINT}:{c}"
        )
        .unwrap();
    }
    s.push_str(&dnat);
    s.push_str("  }\n");
    s.push_str(&jumps);
    s.push_str("  }\n}\n");
    s
}
