//! Where masquerade's candidate ports for a flow start: SipHash-1-3 of the flow's inside
//! tuple under `PortSecret`. Computed, not drawn at random, so that the tuple names its port
//! again (conntrack layout v3 finds a flow from inside this way, docs/conntrack.md), and keyed
//! with a secret so that no one outside can tell or aim the ports a host will use.
//!
//! Integer operations only: the programs and the daemon run this same code.
use bytemuck::{Pod, Zeroable};

use crate::{Ct6Key, CtKey, NatConfig};

/// `PORT_SECRET`'s value: random for each datapath, kept in its pin across restarts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PortSecret {
    pub k0: u64,
    pub k1: u64,
}

const _: () = assert!(core::mem::size_of::<PortSecret>() == 16);

/// How many hashed ports masquerade tries for a new flow, after its original one when that
/// may be kept, before it gives up (`drop_ports_exhausted`).
pub const TRIES: u32 = 32;

/// How many of a flow's candidates (`candidate` 0 to `FOUND_WITHIN`) the inside hooks probe
/// to find it again (conntrack layout v3): a flow that got a later one is also entered in
/// `CT_EXCEPTIONS`. Fewer than `TRIES`, so that a packet of no flow costs a few lookups.
pub const FOUND_WITHIN: u32 = 8;

/// Candidate `i` (0 to `TRIES`) for the port of a flow whose source port is `original` and
/// whose hash is `hash`, host byte order: 0 is the original port, when it lies outside the
/// host's port range (None when it does not); then the ports of the NAT range from
/// `hash % span` on, one after the other, as Linux's masquerade walks on from its start.
#[inline(always)]
pub fn candidate(config: &NatConfig, original: u16, hash: u64, i: u32) -> Option<u16> {
    if i == 0 {
        let keep = original < config.host_port_min || original > config.host_port_max;
        return keep.then_some(original);
    }
    let span = u32::from(config.port_max.saturating_sub(config.port_min)) + 1;
    let start = (hash % u64::from(span)) as u32;
    Some(config.port_min + ((start + i - 1) % span) as u16)
}

/// The hash of an IPv4 flow's inside tuple (`key`: as the hook that opens it sees it).
#[inline(always)]
pub fn of4(secret: &PortSecret, key: &CtKey) -> u64 {
    // The key's 16 bytes as two little-endian words, from its fields (a byte copy would be a
    // loop in the programs).
    let w0 = u64::from(key.saddr) | u64::from(key.daddr) << 32;
    let w1 = u64::from(key.sport) | u64::from(key.dport) << 16 | u64::from(key.proto) << 32;
    siphash13(secret, [w0, w1])
}

/// `of4` for IPv6: the 40 bytes of the key as five words.
#[inline(always)]
pub fn of6(secret: &PortSecret, key: &Ct6Key) -> u64 {
    let [s0, s1] = halves(&key.saddr);
    let [d0, d1] = halves(&key.daddr);
    let w4 = u64::from(key.sport) | u64::from(key.dport) << 16 | u64::from(key.proto) << 32;
    siphash13(secret, [s0, s1, d0, d1, w4])
}

#[inline(always)]
fn halves(addr: &[u8; 16]) -> [u64; 2] {
    let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = *addr;
    [
        u64::from_le_bytes([a, b, c, d, e, f, g, h]),
        u64::from_le_bytes([i, j, k, l, m, n, o, p]),
    ]
}

/// SipHash-1-3 of `N` little-endian words (8 * N bytes), as the reference defines it.
#[inline(always)]
pub fn siphash13<const N: usize>(secret: &PortSecret, words: [u64; N]) -> u64 {
    let mut v = [
        secret.k0 ^ 0x736f_6d65_7073_6575,
        secret.k1 ^ 0x646f_7261_6e64_6f6d,
        secret.k0 ^ 0x6c79_6765_6e65_7261,
        secret.k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut i = 0;
    while i < N {
        compress(&mut v, words[i]);
        i += 1;
    }
    // The last block holds the message's length in bytes, in its top byte.
    compress(&mut v, ((8 * N) as u64) << 56);
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    round(v);
    v[0] ^= m;
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::hash::Hasher;
    use std::vec::Vec;

    use siphasher::sip::SipHasher13;

    use super::*;

    fn reference(secret: &PortSecret, bytes: &[u8]) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(secret.k0, secret.k1);
        hasher.write(bytes);
        hasher.finish()
    }

    const SECRET: PortSecret = PortSecret {
        k0: 0x0706_0504_0302_0100,
        k1: 0x0f0e_0d0c_0b0a_0908,
    };

    #[test]
    fn it_is_siphash_1_3_of_the_keys_bytes() {
        let key = CtKey {
            saddr: u32::from_ne_bytes([172, 17, 0, 2]),
            daddr: u32::from_ne_bytes([198, 18, 0, 1]),
            sport: 40000u16.to_be(),
            dport: 7000u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        assert_eq!(
            of4(&SECRET, &key),
            reference(&SECRET, bytemuck::bytes_of(&key))
        );
        let mut key6 = Ct6Key {
            saddr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            daddr: [0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            sport: 40000u16.to_be(),
            dport: 53u16.to_be(),
            proto: 17,
            _pad: [0; 3],
        };
        assert_eq!(
            of6(&SECRET, &key6),
            reference(&SECRET, bytemuck::bytes_of(&key6))
        );
        key6.saddr[15] = 3;
        assert_eq!(
            of6(&SECRET, &key6),
            reference(&SECRET, bytemuck::bytes_of(&key6))
        );
        // Lengths other than the keys': every word and the length block are mixed in.
        let le =
            |words: &[u64]| -> Vec<u8> { words.iter().flat_map(|w| w.to_le_bytes()).collect() };
        assert_eq!(siphash13(&SECRET, []), reference(&SECRET, &[]));
        assert_eq!(siphash13(&SECRET, [1]), reference(&SECRET, &le(&[1])));
        assert_eq!(
            siphash13(&SECRET, [1, 2, 3]),
            reference(&SECRET, &le(&[1, 2, 3]))
        );
    }

    #[test]
    fn the_secret_changes_every_port() {
        let key = CtKey {
            saddr: 1,
            daddr: 2,
            sport: 3,
            dport: 4,
            proto: 17,
            _pad: [0; 3],
        };
        let other = PortSecret {
            k0: SECRET.k0 ^ 1,
            ..SECRET
        };
        assert_ne!(of4(&SECRET, &key), of4(&other, &key));
        assert_ne!(of4(&SECRET, &key), of4(&SECRET, &CtKey { sport: 5, ..key }));
    }
}
