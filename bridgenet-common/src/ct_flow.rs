//! Conntrack layout v3: one element per IPv4 flow (docs/conntrack.md), and its two
//! directions as layout v2 saw them, which the daemon's listing, GC and migration work with.
use bytemuck::{Pod, Zeroable};

use crate::{CtEntry, CtKey, PublishTarget, action, ct_flags, direction};

/// A tracked IPv4 flow (conntrack layout v3): both directions in one element of `CONNTRACK`,
/// keyed by the flow's tuple as its packets arrive on an uplink (its "outside" tuple; for
/// hairpin, the reply as the target's veth sees it). The inside hooks find it from their own
/// tuple without a second element (docs/conntrack.md). Per-direction fields are indexed by
/// `direction::ORIGINAL` and `REPLY`.
///
/// Pinned: a change of this layout changes `layout::CONNTRACK` and needs a migration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtFlow {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// CLOCK_MONOTONIC_COARSE (bpf_ktime_get_coarse_ns) at the last packet, either way.
    pub last_seen_ns: u64,
    /// TCP: the sequence number just past the last byte each direction sent (SYN and FIN
    /// count one), host byte order.
    pub td_end: [u32; 2],
    /// TCP: the largest receive window each direction advertised, scaled: how far past the
    /// other direction's `td_end` it may send.
    pub td_maxwin: [u32; 2],
    /// The turn of its side's `EMBRYOS` ring the flow was admitted at (`embryo_ring`).
    pub ring_seq: u32,
    /// The inside end, network byte order: masquerade's endpoint, a published flow's
    /// endpoint, hairpin's sender; for an untranslated flow the key's destination.
    pub inside_addr: u32,
    /// Hairpin: the host address the sender sent to; 0 for other kinds.
    pub hairpin_addr: u32,
    pub inside_port: u16,
    /// Hairpin: the published port the sender sent to.
    pub hairpin_port: u16,
    /// TCP window scale each direction announced in its SYN (0 when it announced none).
    pub wscale: [u8; 2],
    /// `tcp_seen` bits of the accepted packets of each direction.
    pub tcp_seen: [u8; 2],
    /// `flow_kind`.
    pub kind: u8,
    /// `ct_flags` bits.
    pub flags: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<CtFlow>() == 80);

impl CtFlow {
    /// The direction of the packets that match the flow's key.
    pub const fn outside_direction(&self) -> usize {
        if self.flags & ct_flags::INBOUND != 0 {
            direction::ORIGINAL as usize
        } else {
            direction::REPLY as usize
        }
    }

    /// Whether the flow is of `kind` and its inside end sends `tuple` (an inside hook's tuple
    /// before translation; for hairpin, to the same published address and port): how the
    /// inside hooks tell their flow from another one at the key they computed, and an opener
    /// the same flow opened on another CPU.
    #[inline(always)]
    pub const fn sent_by(&self, kind: u8, tuple: &CtKey) -> bool {
        self.kind == kind
            && self.inside_addr == tuple.saddr
            && self.inside_port == tuple.sport
            && (kind != flow_kind::HAIRPIN
                || self.hairpin_addr == tuple.daddr && self.hairpin_port == tuple.dport)
    }
}

/// What a `CtFlow` is, and so how its inside tuple is found again (docs/conntrack.md).
pub mod flow_kind {
    /// From an endpoint, out with the uplink's address and a port of the keyed sequence
    /// (`port_hash`).
    pub const MASQUERADE: u8 = 1;
    /// To a published port (DNAT); the endpoint's replies find it through `PUBLISHED_BY`.
    pub const PUBLISHED: u8 = 2;
    /// The host's own: tracked so that masquerade never takes its tuple.
    pub const HOST: u8 = 3;
    /// An endpoint to a published port through a host address.
    pub const HAIRPIN: u8 = 4;
    /// An endpoint's own address on both sides (gateway mode routed, nat-unprotected).
    pub const ROUTED: u8 = 5;
}

/// The host ports an endpoint's port is published on: value of `PUBLISHED_BY`, keyed by the
/// endpoint's address, port and protocol (a `PublishKey` of the endpoint's side). Written by
/// the daemon beside `PUBLISH`; a reply of a published flow is found from the endpoint's
/// tuple through it. Slots with port 0 are empty; a mapping on any host address has address
/// 0 there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PublishedBy {
    pub hosts: [PublishTarget; PUBLISHED_BY_SLOTS],
}

/// How many host ports `PUBLISHED_BY` holds per endpoint port: past it a mapping's flows are
/// found through `CT_EXCEPTIONS`.
pub const PUBLISHED_BY_SLOTS: usize = 4;

const _: () = assert!(core::mem::size_of::<PublishedBy>() == 32);

impl PublishedBy {
    /// Whether the published flow at `key` (its tuple as it arrived) came through one of these
    /// mappings at an address its endpoint's replies look for it with: the mapping's own, or
    /// for a mapping on any host address one for which `tried` is true (the address of the
    /// uplink the replies leave through).
    #[inline(always)]
    pub fn answers(&self, key: &CtKey, tried: impl Fn(u32) -> bool) -> bool {
        let mut i = 0;
        while i < PUBLISHED_BY_SLOTS {
            let host = self.hosts[i];
            if host.port != 0
                && host.port == key.dport
                && (host.addr == key.daddr || host.addr == 0 && tried(key.daddr))
            {
                return true;
            }
            i += 1;
        }
        false
    }
}

impl CtFlow {
    /// The flow's tuple as its inside end sends it: from `inside` to the key's source.
    pub const fn inside_key(&self, key: &CtKey) -> CtKey {
        CtKey {
            saddr: self.inside_addr,
            daddr: key.saddr,
            sport: self.inside_port,
            dport: key.sport,
            proto: key.proto,
            _pad: [0; 3],
        }
    }

    /// The tuple the inside hooks see the flow's packets from inside with (for hairpin, the
    /// sender's): the key of the flow's `CT_EXCEPTIONS` entry, when it has one.
    pub const fn inside_tuple(&self, key: &CtKey) -> CtKey {
        if self.kind == flow_kind::HAIRPIN {
            CtKey {
                saddr: self.inside_addr,
                daddr: self.hairpin_addr,
                sport: self.inside_port,
                dport: self.hairpin_port,
                proto: key.proto,
                _pad: [0; 3],
            }
        } else {
            self.inside_key(key)
        }
    }

    /// The tuples of the flow's original and reply directions as layout v2 keyed them (each as
    /// the hook that sees it reads it before translation), from the flow's key.
    pub const fn keys(&self, key: &CtKey) -> [CtKey; 2] {
        if self.kind == flow_kind::HAIRPIN {
            return [self.inside_tuple(key), *key];
        }
        if self.flags & ct_flags::INBOUND != 0 {
            [*key, self.inside_key(key)]
        } else {
            [self.inside_key(key), *key]
        }
    }

    /// The flow as layout v2's two entries, `[original, reply]` with their keys: what the
    /// daemon's listing and GC read, and what a migration from v2 starts from.
    pub fn entries(&self, key: &CtKey) -> [(CtKey, CtEntry); 2] {
        let keys = self.keys(key);
        let outside = self.outside_direction();
        let shared = self.flags & (ct_flags::ASSURED | ct_flags::INBOUND);
        let entry = |d: usize| {
            let (act, nat_addr, nat_port) = match self.kind {
                flow_kind::HOST => (action::HOST, 0, 0),
                flow_kind::HAIRPIN if d == direction::ORIGINAL as usize => {
                    (action::HAIRPIN, key.saddr, key.sport)
                }
                flow_kind::HAIRPIN => (action::HAIRPIN, self.hairpin_addr, self.hairpin_port),
                _ if d == outside => (action::DNAT, self.inside_addr, self.inside_port),
                _ => (action::SNAT, key.daddr, key.dport),
            };
            let known = self.flags & (ct_flags::WINDOW_KNOWN << d) != 0;
            CtEntry {
                peer: keys[d ^ 1],
                last_seen_ns: self.last_seen_ns,
                packets: self.packets[d],
                bytes: self.bytes[d],
                nat_addr,
                nat_port,
                action: act,
                direction: d as u8,
                tcp_seen: self.tcp_seen[d],
                flags: shared | if known { ct_flags::WINDOW_KNOWN } else { 0 },
                wscale: self.wscale[d],
                _pad: 0,
                td_end: self.td_end[d],
                td_maxwin: self.td_maxwin[d],
                ring_seq: if d == direction::ORIGINAL as usize {
                    self.ring_seq
                } else {
                    0
                },
            }
        };
        [(keys[0], entry(0)), (keys[1], entry(1))]
    }

    /// The flow of layout v2's original and reply entries, with its key: the inverse of
    /// `entries`.
    pub fn from_entries(original: (&CtKey, &CtEntry), reply: (&CtKey, &CtEntry)) -> (CtKey, Self) {
        let ((ok, oe), (rk, re)) = (original, reply);
        let inbound = oe.action == action::DNAT;
        let kind = match oe.action {
            action::HOST => flow_kind::HOST,
            action::HAIRPIN => flow_kind::HAIRPIN,
            action::DNAT if (oe.nat_addr, oe.nat_port) == (ok.daddr, ok.dport) => flow_kind::ROUTED,
            action::DNAT => flow_kind::PUBLISHED,
            _ if (oe.nat_addr, oe.nat_port) == (ok.saddr, ok.sport) => flow_kind::ROUTED,
            _ => flow_kind::MASQUERADE,
        };
        let key = if inbound { *ok } else { *rk };
        let (inside_addr, inside_port) = if inbound {
            (oe.nat_addr, oe.nat_port)
        } else {
            (ok.saddr, ok.sport)
        };
        let (hairpin_addr, hairpin_port) = if kind == flow_kind::HAIRPIN {
            (ok.daddr, ok.dport)
        } else {
            (0, 0)
        };
        let known = |e: &CtEntry, d: u8| {
            if e.flags & ct_flags::WINDOW_KNOWN != 0 {
                ct_flags::WINDOW_KNOWN << d
            } else {
                0
            }
        };
        let flags = (oe.flags | re.flags) & (ct_flags::ASSURED | ct_flags::INBOUND)
            | if inbound { ct_flags::INBOUND } else { 0 }
            | known(oe, 0)
            | known(re, 1);
        let flow = Self {
            packets: [oe.packets, re.packets],
            bytes: [oe.bytes, re.bytes],
            last_seen_ns: oe.last_seen_ns.max(re.last_seen_ns),
            td_end: [oe.td_end, re.td_end],
            td_maxwin: [oe.td_maxwin, re.td_maxwin],
            ring_seq: oe.ring_seq,
            inside_addr,
            hairpin_addr,
            inside_port,
            hairpin_port,
            wscale: [oe.wscale, re.wscale],
            tcp_seen: [oe.tcp_seen, re.tcp_seen],
            kind,
            flags,
            _pad: [0; 2],
        };
        (key, flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: u8 = 6;

    fn key(saddr: u32, sport: u16, daddr: u32, dport: u16) -> CtKey {
        CtKey {
            saddr,
            daddr,
            sport,
            dport,
            proto: TCP,
            _pad: [0; 3],
        }
    }

    /// The two entries layout v2's programs write for a flow (nat.rs, hairpin.rs of v2),
    /// with traffic on both.
    fn v2(
        original: CtKey,
        reply: CtKey,
        act: [u8; 2],
        nat: [(u32, u16); 2],
        flags: u8,
    ) -> [(CtKey, CtEntry); 2] {
        let entry = |d: usize| CtEntry {
            peer: if d == 0 { reply } else { original },
            last_seen_ns: 7_000,
            packets: 10 + d as u64,
            bytes: 1000 + d as u64,
            nat_addr: nat[d].0,
            nat_port: nat[d].1,
            action: act[d],
            direction: d as u8,
            tcp_seen: 3 + d as u8 * 4,
            flags: flags | if d == 0 { ct_flags::WINDOW_KNOWN } else { 0 },
            wscale: 7 + d as u8,
            _pad: 0,
            td_end: 100 + d as u32,
            td_maxwin: 200 + d as u32,
            ring_seq: if d == 0 { 42 } else { 0 },
        };
        [(original, entry(0)), (reply, entry(1))]
    }

    fn round_trip(entries: [(CtKey, CtEntry); 2], kind: u8, outside: CtKey) {
        let [(ok, oe), (rk, re)] = entries;
        let (k, flow) = CtFlow::from_entries((&ok, &oe), (&rk, &re));
        assert_eq!(k, outside);
        assert_eq!(flow.kind, kind);
        assert_eq!(flow.entries(&k), entries);
    }

    #[test]
    fn each_kind_of_v2_flow_is_one_flow_that_gives_its_two_entries_back() {
        let (ep, r, nat, c, h, b, g) = (10, 20, 30, 40, 50, 60, 70);
        let masq_o = key(ep, 1000, r, 80);
        let masq_r = key(r, 80, nat, 61000);
        round_trip(
            v2(
                masq_o,
                masq_r,
                [action::SNAT, action::DNAT],
                [(nat, 61000), (ep, 1000)],
                0,
            ),
            flow_kind::MASQUERADE,
            masq_r,
        );
        let publ_o = key(c, 5000, h, 8080);
        let publ_r = key(ep, 80, c, 5000);
        round_trip(
            v2(
                publ_o,
                publ_r,
                [action::DNAT, action::SNAT],
                [(ep, 80), (h, 8080)],
                ct_flags::INBOUND | ct_flags::ASSURED,
            ),
            flow_kind::PUBLISHED,
            publ_o,
        );
        let direct_o = key(c, 5000, ep, 80);
        round_trip(
            v2(
                direct_o,
                direct_o.reversed(),
                [action::DNAT, action::SNAT],
                [(ep, 80), (ep, 80)],
                ct_flags::INBOUND,
            ),
            flow_kind::ROUTED,
            direct_o,
        );
        let out_o = key(ep, 1000, r, 443);
        round_trip(
            v2(
                out_o,
                out_o.reversed(),
                [action::SNAT, action::DNAT],
                [(ep, 1000), (ep, 1000)],
                0,
            ),
            flow_kind::ROUTED,
            out_o.reversed(),
        );
        let host_o = key(h, 33000, r, 443);
        round_trip(
            v2(host_o, host_o.reversed(), [action::HOST; 2], [(0, 0); 2], 0),
            flow_kind::HOST,
            host_o.reversed(),
        );
        let hair_o = key(ep, 1000, h, 8080);
        let hair_r = key(b, 80, g, 61000);
        round_trip(
            v2(
                hair_o,
                hair_r,
                [action::HAIRPIN; 2],
                [(b, 80), (h, 8080)],
                0,
            ),
            flow_kind::HAIRPIN,
            hair_r,
        );
    }

    #[test]
    fn the_inside_key_is_what_the_inside_end_sends() {
        let (ep, r, nat) = (10, 20, 30);
        let reply = key(r, 80, nat, 61000);
        let (_, flow) = CtFlow::from_entries(
            (
                &key(ep, 1000, r, 80),
                &CtEntry {
                    action: action::SNAT,
                    nat_addr: nat,
                    nat_port: 61000,
                    ..CtEntry::default()
                },
            ),
            (&reply, &CtEntry::default()),
        );
        assert_eq!(flow.inside_key(&reply), key(ep, 1000, r, 80));
        assert_eq!(flow.outside_direction(), direction::REPLY as usize);
        assert_eq!(flow.inside_tuple(&reply), key(ep, 1000, r, 80));
    }

    #[test]
    fn a_flow_is_sent_by_its_inside_end_and_a_hairpin_flow_only_to_its_destination() {
        let (ep, r, host) = (10, 20, 50);
        let masq = CtFlow {
            kind: flow_kind::MASQUERADE,
            inside_addr: ep,
            inside_port: 1000,
            ..CtFlow::default()
        };
        assert!(masq.sent_by(flow_kind::MASQUERADE, &key(ep, 1000, r, 80)));
        assert!(masq.sent_by(flow_kind::MASQUERADE, &key(ep, 1000, r, 443)));
        assert!(!masq.sent_by(flow_kind::HAIRPIN, &key(ep, 1000, r, 80)));
        assert!(!masq.sent_by(flow_kind::MASQUERADE, &key(ep, 1001, r, 80)));
        assert!(!masq.sent_by(flow_kind::MASQUERADE, &key(ep + 1, 1000, r, 80)));
        let hairpin = CtFlow {
            kind: flow_kind::HAIRPIN,
            hairpin_addr: host,
            hairpin_port: 8080,
            ..masq
        };
        assert!(hairpin.sent_by(flow_kind::HAIRPIN, &key(ep, 1000, host, 8080)));
        assert!(!hairpin.sent_by(flow_kind::HAIRPIN, &key(ep, 1000, host, 8081)));
        assert!(!hairpin.sent_by(flow_kind::HAIRPIN, &key(ep, 1000, host + 1, 8080)));
    }

    #[test]
    fn a_published_flow_answers_to_its_mapping_and_one_on_any_address_at_the_tried_address() {
        let (client, host, other, uplink) = (20, 50, 51, 60);
        let mut by = PublishedBy::default();
        by.hosts[0] = PublishTarget {
            addr: host,
            port: 8080,
            _pad: 0,
        };
        by.hosts[2] = PublishTarget {
            addr: 0,
            port: 9090,
            _pad: 0,
        };
        let tried = |addr| addr == uplink;
        assert!(by.answers(&key(client, 1000, host, 8080), tried));
        assert!(!by.answers(&key(client, 1000, other, 8080), tried));
        assert!(!by.answers(&key(client, 1000, host, 8081), tried));
        assert!(by.answers(&key(client, 1000, uplink, 9090), tried));
        assert!(!by.answers(&key(client, 1000, host, 9090), tried));
        // An empty slot (port 0) answers nothing, not even port 0 on any address.
        assert!(!by.answers(&key(client, 1000, uplink, 0), tried));
    }
}
