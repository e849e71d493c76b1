//! Address management as Docker does it: default pools, gateway, sequential addresses, MACs.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{Ipv4Net, Ipv6Net};

/// Docker's default pools: 172.17.0.0/16 to 172.31.0.0/16, then 192.168.0.0/16 in /20s.
pub fn default_pools() -> impl Iterator<Item = Ipv4Net> {
    let sixteens = (17..=31).map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16).unwrap());
    let twenties = (0..16u8).map(|i| Ipv4Net::new(Ipv4Addr::new(192, 168, i * 16, 0), 20).unwrap());
    sixteens.chain(twenties)
}

/// Whether two subnets share an address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Ranges no network may use: the kernel treats their addresses specially (never forwards
/// them, or answers them itself), so endpoints there would be unreachable or leak.
pub const RESERVED: [(Ipv4Addr, u8, &str); 5] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved, with broadcast"),
];

/// The reserved range `subnet` overlaps, with its name.
pub fn reserved(subnet: &Ipv4Net) -> Option<(Ipv4Net, &'static str)> {
    RESERVED
        .iter()
        .map(|&(addr, len, what)| (Ipv4Net::new(addr, len).expect("valid prefix"), what))
        .find(|(range, _)| overlaps(subnet, range))
}

/// The first default pool that overlaps none of `taken` (other networks and routes).
pub fn free_subnet(taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    default_pools().find(|pool| !taken.iter().any(|t| overlaps(pool, t)))
}

/// The default gateway: the subnet's first host.
pub fn default_gateway(subnet: &Ipv4Net) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 1;
    (first < u32::from(subnet.broadcast())).then(|| Ipv4Addr::from(first))
}

/// Whether `ip` can be given to a host of `subnet` (not its network or broadcast address).
pub fn is_host(subnet: &Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network() && ip != subnet.broadcast()
}

/// The next free address, sequential from the subnet's second host; `taken` holds the
/// gateway and every endpoint's address.
pub fn next_address(subnet: &Ipv4Net, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let start = u32::from(subnet.network()) + 2;
    let end = u32::from(subnet.broadcast());
    (start..end)
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip))
}

/// Checks an address asked for with `--ip`.
pub fn check_address(
    subnet: &Ipv4Net,
    ip: Ipv4Addr,
    taken: &BTreeSet<Ipv4Addr>,
) -> Result<(), String> {
    if !is_host(subnet, ip) {
        return Err(format!("address {ip} is not a host address of {subnet}"));
    }
    if taken.contains(&ip) {
        return Err(format!("address {ip} is already in use in {subnet}"));
    }
    Ok(())
}

/// Whether two IPv6 subnets share an address.
pub fn overlaps6(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// IPv6 ranges no network may use: the unspecified, loopback and IPv4-mapped addresses
/// (::/8), link-local (fe80::/10: the kernel gives every interface its own there) and
/// multicast.
pub const RESERVED6: [(Ipv6Addr, u8, &str); 3] = [
    (
        Ipv6Addr::UNSPECIFIED,
        8,
        "loopback, unspecified and IPv4-mapped",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// The reserved IPv6 range `subnet` overlaps, with its name.
pub fn reserved6(subnet: &Ipv6Net) -> Option<(Ipv6Net, &'static str)> {
    RESERVED6
        .iter()
        .map(|&(addr, len, what)| (Ipv6Net::new(addr, len).expect("valid prefix"), what))
        .find(|(range, _)| overlaps6(subnet, range))
}

/// The default IPv6 gateway (Docker 27): the subnet's first address after the network
/// address; None when the subnet has no room for it and an endpoint.
pub fn default_gateway6(subnet: &Ipv6Net) -> Option<Ipv6Addr> {
    let first = u128::from(subnet.network()) + 1;
    (first < u128::from(subnet.broadcast())).then(|| Ipv6Addr::from(first))
}

/// Whether `ip` can be given to a host of the IPv6 `subnet` (not its network address, the
/// subnet-router anycast address; IPv6 has no broadcast).
pub fn is_host6(subnet: &Ipv6Net, ip: Ipv6Addr) -> bool {
    subnet.contains(&ip) && ip != subnet.network()
}

/// The lowest free IPv6 address after the gateway, else (wrapping around) after the network
/// address; `taken` holds the gateway and every endpoint's address.
pub fn next_address6(
    subnet: &Ipv6Net,
    gateway: Ipv6Addr,
    taken: &BTreeSet<Ipv6Addr>,
) -> Option<Ipv6Addr> {
    let network = u128::from(subnet.network());
    let last = u128::from(subnet.broadcast());
    let gateway = u128::from(gateway).clamp(network, last);
    // Each range is walked only past taken addresses: as many steps as endpoints, at most.
    let free = |from: u128, to: u128| {
        let mut at = from;
        while at <= to {
            if !taken.contains(&Ipv6Addr::from(at)) {
                return Some(Ipv6Addr::from(at));
            }
            at = at.checked_add(1)?;
        }
        None
    };
    gateway
        .checked_add(1)
        .and_then(|from| free(from, last))
        .or_else(|| free(network + 1, gateway))
}

/// Checks an IPv6 address asked for with `--ip6`.
pub fn check_address6(
    subnet: &Ipv6Net,
    gateway: Ipv6Addr,
    ip: Ipv6Addr,
    taken: &BTreeSet<Ipv6Addr>,
) -> Result<(), String> {
    if !is_host6(subnet, ip) {
        return Err(format!("address {ip} is not a host address of {subnet}"));
    }
    if ip == gateway {
        return Err(format!("address {ip} is the gateway of {subnet}"));
    }
    if taken.contains(&ip) {
        return Err(format!("address {ip} is already in use in {subnet}"));
    }
    Ok(())
}

/// Docker's MAC for an address: 02:42 followed by the address's four bytes.
pub fn mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// An endpoint's MAC: Docker's for its IPv4 address, or on an IPv6-only network 02:42
/// followed by the last four bytes of its IPv6 address (the datapath's `--icc=false` check
/// recognizes siblings by either scheme).
pub fn endpoint_mac(ip: Ipv4Addr, ip6: Option<Ipv6Addr>) -> [u8; 6] {
    match ip6 {
        Some(ip6) if ip.is_unspecified() => {
            let o = ip6.octets();
            [0x02, 0x42, o[12], o[13], o[14], o[15]]
        }
        _ => mac(ip),
    }
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// `aa:bb:cc:dd:ee:ff` (either case), a unicast address.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    (parts.next().is_none() && out[0] & 1 == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn reserved_ranges() {
        assert_eq!(
            reserved(&net("127.1.0.0/16")).unwrap().0,
            net("127.0.0.0/8")
        );
        assert_eq!(reserved(&net("0.0.0.0/0")).unwrap().0, net("0.0.0.0/8"));
        assert_eq!(
            reserved(&net("255.255.255.255/32")).unwrap().0,
            net("240.0.0.0/4")
        );
        assert_eq!(
            reserved(&net("128.0.0.0/1")).unwrap().0,
            net("169.254.0.0/16")
        );
        for ok in [
            "10.0.0.0/8",
            "172.17.0.0/16",
            "198.18.0.0/15",
            "223.255.255.0/24",
        ] {
            assert_eq!(reserved(&net(ok)), None, "{ok}");
        }
    }

    #[test]
    fn pools_skip_taken_subnets() {
        assert_eq!(free_subnet(&[]), Some(net("172.17.0.0/16")));
        assert_eq!(
            free_subnet(&[net("172.17.0.0/16"), net("172.18.5.0/24")]),
            Some(net("172.19.0.0/16"))
        );
        let all16: Vec<_> = (17..=31)
            .map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16).unwrap())
            .collect();
        assert_eq!(free_subnet(&all16), Some(net("192.168.0.0/20")));
        let mut taken = all16.clone();
        taken.push(net("192.168.0.0/24"));
        assert_eq!(free_subnet(&taken), Some(net("192.168.16.0/20")));
        // A route covering everything (but not the default route) exhausts the pools.
        assert_eq!(free_subnet(&[net("128.0.0.0/1")]), None);
    }

    #[test]
    fn gateway_and_sequential_addresses() {
        let s = net("172.17.0.0/16");
        let gw = default_gateway(&s).unwrap();
        assert_eq!(gw, Ipv4Addr::new(172, 17, 0, 1));
        let mut taken = BTreeSet::from([gw]);
        let a = next_address(&s, &taken).unwrap();
        assert_eq!(a, Ipv4Addr::new(172, 17, 0, 2));
        taken.insert(a);
        assert_eq!(next_address(&s, &taken), Some(Ipv4Addr::new(172, 17, 0, 3)));
    }

    #[test]
    fn small_subnets_exhaust() {
        let s = net("10.0.0.0/30");
        let gw = default_gateway(&s).unwrap();
        let mut taken = BTreeSet::from([gw]);
        let a = next_address(&s, &taken).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 2));
        taken.insert(a);
        assert_eq!(next_address(&s, &taken), None);
        assert_eq!(default_gateway(&net("10.0.0.0/31")), None);
    }

    #[test]
    fn requested_addresses_are_checked() {
        let s = net("10.1.0.0/24");
        let taken = BTreeSet::from([Ipv4Addr::new(10, 1, 0, 1)]);
        assert!(check_address(&s, Ipv4Addr::new(10, 1, 0, 9), &taken).is_ok());
        assert!(check_address(&s, Ipv4Addr::new(10, 1, 0, 1), &taken).is_err());
        assert!(check_address(&s, Ipv4Addr::new(10, 1, 0, 0), &taken).is_err());
        assert!(check_address(&s, Ipv4Addr::new(10, 1, 0, 255), &taken).is_err());
        assert!(check_address(&s, Ipv4Addr::new(10, 2, 0, 9), &taken).is_err());
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_gateway_and_sequential_addresses() {
        let s = net6("2001:db8:5::/64");
        let gw = default_gateway6(&s).unwrap();
        assert_eq!(gw, ip6("2001:db8:5::1"));
        let mut taken = BTreeSet::from([gw]);
        let a = next_address6(&s, gw, &taken).unwrap();
        assert_eq!(a, ip6("2001:db8:5::2"));
        taken.insert(a);
        assert_eq!(next_address6(&s, gw, &taken), Some(ip6("2001:db8:5::3")));
        // A freed address is taken again first.
        taken.insert(ip6("2001:db8:5::3"));
        taken.remove(&a);
        assert_eq!(next_address6(&s, gw, &taken), Some(ip6("2001:db8:5::2")));
        // No broadcast in IPv6: the last address is a host's.
        assert!(is_host6(&s, ip6("2001:db8:5::ffff:ffff:ffff:ffff")));
        assert!(!is_host6(&s, ip6("2001:db8:5::")));
    }

    #[test]
    fn ipv6_addresses_follow_a_given_gateway_and_wrap_around() {
        let s = net6("2001:db8:6::/64");
        let gw = ip6("2001:db8:6::10");
        let taken = BTreeSet::from([gw]);
        assert_eq!(next_address6(&s, gw, &taken), Some(ip6("2001:db8:6::11")));
        // A gateway at the top: addresses after the network address.
        let gw = ip6("2001:db8:6::ffff:ffff:ffff:ffff");
        let taken = BTreeSet::from([gw]);
        assert_eq!(next_address6(&s, gw, &taken), Some(ip6("2001:db8:6::1")));
        // A /126 holds a gateway and two endpoints.
        let s = net6("2001:db8:7::/126");
        let gw = default_gateway6(&s).unwrap();
        let mut taken = BTreeSet::from([gw]);
        for want in ["2001:db8:7::2", "2001:db8:7::3"] {
            let a = next_address6(&s, gw, &taken).unwrap();
            assert_eq!(a, ip6(want));
            taken.insert(a);
        }
        assert_eq!(next_address6(&s, gw, &taken), None);
        // A /127 or /128 has no room for a gateway and an endpoint.
        assert_eq!(default_gateway6(&net6("2001:db8:8::/127")), None);
        assert_eq!(default_gateway6(&net6("2001:db8:8::/128")), None);
    }

    #[test]
    fn requested_ipv6_addresses_are_checked() {
        let s = net6("2001:db8:5::/64");
        let gw = ip6("2001:db8:5::1");
        let taken = BTreeSet::from([gw, ip6("2001:db8:5::2")]);
        assert!(check_address6(&s, gw, ip6("2001:db8:5::99"), &taken).is_ok());
        let err = |ip: &str| check_address6(&s, gw, ip6(ip), &taken).unwrap_err();
        assert!(err("2001:db8:5::1").contains("is the gateway"));
        assert!(err("2001:db8:5::2").contains("already in use"));
        assert!(err("2001:db8:5::").contains("not a host address"));
        assert!(err("2001:db8:6::2").contains("not a host address"));
    }

    #[test]
    fn ipv6_reserved_ranges_and_overlap() {
        for (bad, range) in [
            ("::/0", "::/8"),
            ("::1/128", "::/8"),
            ("::ffff:0:0/96", "::/8"),
            ("fe80::/64", "fe80::/10"),
            ("fe00::/7", "fe80::/10"),
            ("ff02::/16", "ff00::/8"),
        ] {
            assert_eq!(reserved6(&net6(bad)).unwrap().0, net6(range), "{bad}");
        }
        for ok in ["2001:db8::/8", "2001:db8::/32", "2001:db8:5::/64"] {
            assert_eq!(reserved6(&net6(ok)), None, "{ok}");
        }
        assert!(overlaps6(
            &net6("2001:db8::/48"),
            &net6("2001:db8:0:0:5::/64")
        ));
        assert!(overlaps6(
            &net6("2001:db8:0:0:5::/64"),
            &net6("2001:db8::/48")
        ));
        assert!(!overlaps6(
            &net6("2001:db8:5::/64"),
            &net6("2001:db8:6::/64")
        ));
    }

    #[test]
    fn docker_mac() {
        assert_eq!(
            mac_string(&mac(Ipv4Addr::new(172, 17, 0, 2))),
            "02:42:ac:11:00:02"
        );
    }

    #[test]
    fn overlap() {
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.1.0.0/16")));
        assert!(overlaps(&net("10.1.0.0/16"), &net("10.0.0.0/8")));
        assert!(!overlaps(&net("10.0.0.0/16"), &net("10.1.0.0/16")));
    }
}
