//! IPv6 for the tests: the link-local address the kernel derives from a MAC, and the
//! Neighbour Discovery packets a rogue endpoint sends.
use std::net::Ipv6Addr;

use etherparse::PacketBuilder;

/// The prefix the rogue Router Advertisement announces: a route to it, or a default route via
/// a link-local address, shows that someone took it.
pub const ROGUE_PREFIX: &str = "2001:db8:bad";

/// The link-local address Linux derives from `mac` (EUI-64, its default).
pub fn link_local(mac: [u8; 6]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..2].copy_from_slice(&[0xfe, 0x80]);
    a[8..].copy_from_slice(&[
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]);
    a
}

/// An ICMPv6 message (`kind`, the 4 bytes after the checksum, then `body`) from the
/// link-local address of `mac` to all nodes, hop limit 255 as Neighbour Discovery requires.
pub fn icmp6_to_all_nodes(mac: [u8; 6], kind: u8, head: [u8; 4], body: &[u8]) -> Vec<u8> {
    let all_nodes = "ff02::1".parse::<Ipv6Addr>().unwrap().octets();
    let builder = PacketBuilder::ethernet2(mac, [0x33, 0x33, 0, 0, 0, 1])
        .ipv6(link_local(mac), all_nodes, 255)
        .icmpv6_raw(kind, 0, head);
    let mut frame = Vec::with_capacity(builder.size(body.len()));
    builder.write(&mut frame, body).unwrap();
    frame
}

/// A Router Advertisement from `mac`: a default router for 30 minutes, with the on-link and
/// autonomous prefix `ROGUE_PREFIX::/64` (CVE-2020-13401's packet).
pub fn router_advertisement(mac: [u8; 6]) -> Vec<u8> {
    let mut body = vec![0; 8]; // reachable time, retransmission timer
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&mac);
    body.extend_from_slice(&[3, 4, 64, 0xc0]);
    body.extend_from_slice(&3600u32.to_be_bytes());
    body.extend_from_slice(&1800u32.to_be_bytes());
    body.extend_from_slice(&[0; 4]);
    let prefix: Ipv6Addr = format!("{ROGUE_PREFIX}::").parse().unwrap();
    body.extend_from_slice(&prefix.octets());
    icmp6_to_all_nodes(mac, 134, [64, 0, 0x07, 0x08], &body)
}

/// An unsolicited Neighbour Advertisement from `mac` that `target` is at `mac` (override set).
pub fn neighbour_advertisement(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let mut body = target.octets().to_vec();
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&mac);
    icmp6_to_all_nodes(mac, 136, [0x20, 0, 0, 0], &body)
}

/// Routes in `ip -6 route` output that a rogue advertisement would have added.
pub fn rogue_routes(ip_6_route: &str) -> Vec<String> {
    ip_6_route
        .lines()
        .filter(|l| l.contains(ROGUE_PREFIX) || l.starts_with("default via fe80"))
        .map(str::to_owned)
        .collect()
}
