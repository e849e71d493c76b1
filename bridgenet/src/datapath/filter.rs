//! The user filter in the maps: ordered rules compiled into the `FILTER` LPM trie (IPv4
//! sources) and `FILTER6` (IPv6 sources), swapped in atomically, and their per-rule counters.
//!
//! Each trie holds one logical trie per match class (network named or not, port named or not):
//! the key is the class's fixed fields, then the source prefix. At a rule's prefix P the value
//! is the first rule of the class whose prefix contains P. A lookup returns the longest stored
//! prefix Q containing the source; every rule of the class that matches the source has a prefix
//! containing the source, so (prefixes being nested) containing Q: the value at Q is the first
//! of them. The program takes the first of the (at most four) class answers. A rule without a
//! source is the whole of both families (0.0.0.0/0 and ::/0), one with a source only of its own.
use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use aya::maps::{
    Array, MapData, PerCpuArray, PerCpuValues,
    lpm_trie::{Key, LpmTrie},
};
use bridgenet_common::{FilterKey, FilterKey6, FilterMatch, FilterState, Subnet, filter, maps};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Datapath, Proto, wire};

/// One rule as the datapath sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Source prefix; None: any source of either family.
    pub src: Option<IpNet>,
    /// The destination endpoint's network id (`Subnet::network`); None: any.
    pub network: Option<u32>,
    /// Protocol and destination port as it arrives; None: every protocol and port.
    pub port: Option<(Proto, u16)>,
    pub drop: bool,
    /// Index of the rule's counter.
    pub slot: u16,
}

/// A packet as the filter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub src: IpAddr,
    /// The destination endpoint's network, if known.
    pub network: Option<u32>,
    /// Protocol and destination port; None when the packet has none (other protocols, later
    /// fragments).
    pub port: Option<(Proto, u16)>,
}

/// One compiled entry: the class's fixed fields (`src` and `generation` 0), the source prefix
/// (its family names the trie), and the first rule of the class matching all of the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub fixed: FilterKey,
    pub src: IpNet,
    pub value: FilterMatch,
}

/// The entries of both tries for `rules`, in order.
pub fn compile(rules: &[Rule]) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for rule in rules {
        let fixed = key_of(rule);
        for src in sources(rule) {
            if out.iter().any(|e| e.fixed == fixed && e.src == src) {
                continue;
            }
            // The first rule of the class whose prefix contains this one (at worst, this rule).
            let (order, first) = rules
                .iter()
                .enumerate()
                .find(|(_, r)| same_class(r, rule) && covers(r, &src))
                .expect("the rule itself matches");
            out.push(Entry {
                fixed,
                src,
                value: FilterMatch {
                    order: order as u32,
                    slot: first.slot,
                    action: if first.drop {
                        filter::DROP
                    } else {
                        filter::ALLOW
                    },
                    _pad: 0,
                },
            });
        }
    }
    out
}

/// The source prefixes a rule stands for: its own, or the whole of both families.
fn sources(rule: &Rule) -> Vec<IpNet> {
    match rule.src {
        Some(src) => vec![src.trunc()],
        None => vec![Ipv4Net::default().into(), Ipv6Net::default().into()],
    }
}

/// Whether every source of `src` matches `rule` (never across families).
fn covers(rule: &Rule, src: &IpNet) -> bool {
    rule.src.is_none_or(|s| s.contains(src))
}

fn same_class(a: &Rule, b: &Rule) -> bool {
    a.network == b.network && a.port == b.port
}

fn key_of(rule: &Rule) -> FilterKey {
    let mut class = 0;
    if rule.network.is_some() {
        class |= filter::CLASS_NETWORK;
    }
    if rule.port.is_some() {
        class |= filter::CLASS_PORT;
    }
    FilterKey {
        generation: 0,
        class,
        proto: rule.port.map_or(0, |(p, _)| p as u8),
        _pad: 0,
        dport: rule.port.map_or(0, |(_, port)| port.to_be()),
        _pad2: 0,
        network: rule.network.unwrap_or(0),
        src: 0,
    }
}

/// The first rule that matches `probe`, by its position: the plain definition of the
/// semantics, which the compiled tries must agree with.
pub fn first_match(rules: &[Rule], probe: &Probe) -> Option<usize> {
    rules.iter().position(|r| {
        r.src.is_none_or(|s| s.contains(&probe.src))
            && r.network.is_none_or(|n| probe.network == Some(n))
            && r.port.is_none_or(|p| probe.port == Some(p))
    })
}

/// What the program finds in compiled `entries` for `probe`: the order of the deciding rule,
/// with the kernel's longest-prefix match per class done here by hand.
pub fn lookup(entries: &[Entry], probe: &Probe) -> Option<FilterMatch> {
    let mut best: Option<FilterMatch> = None;
    for class in 0..filter::CLASS_COUNT {
        let network = if class & filter::CLASS_NETWORK != 0 {
            match probe.network {
                Some(n) => Some(n),
                None => continue,
            }
        } else {
            None
        };
        let port = if class & filter::CLASS_PORT != 0 {
            match probe.port {
                Some(p) => Some(p),
                None => continue,
            }
        } else {
            None
        };
        let fixed = key_of(&Rule {
            src: None,
            network,
            port,
            drop: false,
            slot: 0,
        });
        let longest = entries
            .iter()
            .filter(|e| e.fixed == fixed && e.src.contains(&probe.src))
            .max_by_key(|e| e.src.prefix_len());
        if let Some(found) = longest
            && best.is_none_or(|b| found.value.order < b.order)
        {
            best = Some(found.value);
        }
    }
    best
}

/// The keys of both tries: matched as they are, but for the generation.
trait TrieKey: aya::Pod + PartialEq {
    fn generation(&self) -> u8;
    fn set_generation(&mut self, generation: u8);
}

impl TrieKey for FilterKey {
    fn generation(&self) -> u8 {
        self.generation
    }
    fn set_generation(&mut self, generation: u8) {
        self.generation = generation;
    }
}

impl TrieKey for FilterKey6 {
    fn generation(&self) -> u8 {
        self.generation
    }
    fn set_generation(&mut self, generation: u8) {
        self.generation = generation;
    }
}

/// `entries` as `FILTER`'s keys and values (generation 0).
fn keys4(entries: &[Entry]) -> Vec<(Key<FilterKey>, FilterMatch)> {
    entries
        .iter()
        .filter_map(|e| match e.src {
            IpNet::V4(src) => Some((
                Key::new(
                    filter::FIXED_BITS + u32::from(src.prefix_len()),
                    FilterKey {
                        src: wire(src.network()),
                        ..e.fixed
                    },
                ),
                e.value,
            )),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// `entries` as `FILTER6`'s keys and values (generation 0).
fn keys6(entries: &[Entry]) -> Vec<(Key<FilterKey6>, FilterMatch)> {
    entries
        .iter()
        .filter_map(|e| match e.src {
            IpNet::V6(src) => Some((
                Key::new(
                    filter::FIXED_BITS + u32::from(src.prefix_len()),
                    FilterKey6 {
                        generation: 0,
                        class: e.fixed.class,
                        proto: e.fixed.proto,
                        _pad: 0,
                        dport: e.fixed.dport,
                        _pad2: 0,
                        network: e.fixed.network,
                        src: src.network().octets(),
                    },
                ),
                e.value,
            )),
            IpNet::V4(_) => None,
        })
        .collect()
}

/// Whether the entries of `generation` in `trie` are exactly `wanted`.
fn holds<K: TrieKey>(
    trie: &LpmTrie<&mut MapData, K, FilterMatch>,
    generation: u8,
    wanted: &[(Key<K>, FilterMatch)],
) -> Result<bool> {
    let mut active = Vec::new();
    for item in trie.iter() {
        let (k, v) = item?;
        if k.data().generation() == generation {
            let mut data = k.data();
            data.set_generation(0);
            active.push((k.prefix_len(), data, v));
        }
    }
    Ok(active.len() == wanted.len()
        && wanted
            .iter()
            .all(|(k, v)| active.contains(&(k.prefix_len(), k.data(), *v))))
}

/// Writes `entries` into `trie` as `generation`, after removing what that generation held.
fn rewrite<K: TrieKey>(
    trie: &mut LpmTrie<&mut MapData, K, FilterMatch>,
    generation: u8,
    entries: &[(Key<K>, FilterMatch)],
) -> Result<()> {
    let stale: Vec<Key<K>> = trie
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.data().generation() == generation)
        .collect();
    for key in stale {
        trie.remove(&key).context("removing a stale filter entry")?;
    }
    for (key, value) in entries {
        let mut data = key.data();
        data.set_generation(generation);
        trie.insert(&Key::new(key.prefix_len(), data), *value, 0)
            .context("writing a filter entry")?;
    }
    Ok(())
}

impl Datapath {
    /// Replaces the filter's rules, atomically for the programs: the new rules go into the
    /// unused generation of both tries, then one write switches the programs to it. The old
    /// generation is removed on the next change, long after any packet stopped using it.
    pub fn set_filter(&mut self, rules: &[Rule]) -> Result<()> {
        if rules.len() > filter::MAX_RULES as usize {
            bail!("more than {} filter rules", filter::MAX_RULES);
        }
        let states: Array<_, FilterState> = Array::try_from(self.map_mut(maps::FILTER_STATE)?)?;
        let state = states.get(&0, 0)?;
        let compiled = compile(rules);
        let (v4, v6) = (keys4(&compiled), keys6(&compiled));
        let active = state.generation as u8;
        // The same rules already in use (a restart's reconcile): nothing to do.
        if state.rules == rules.len() as u32
            && holds(
                &LpmTrie::try_from(self.map_mut(maps::FILTER)?)?,
                active,
                &v4,
            )?
            && holds(
                &LpmTrie::try_from(self.map_mut(maps::FILTER6)?)?,
                active,
                &v6,
            )?
        {
            return Ok(());
        }
        let generation = active ^ 1;
        rewrite(
            &mut LpmTrie::try_from(self.map_mut(maps::FILTER)?)?,
            generation,
            &v4,
        )?;
        rewrite(
            &mut LpmTrie::try_from(self.map_mut(maps::FILTER6)?)?,
            generation,
            &v6,
        )?;
        let mut states: Array<_, FilterState> = Array::try_from(self.map_mut(maps::FILTER_STATE)?)?;
        states.set(
            0,
            FilterState {
                generation: u32::from(generation),
                rules: rules.len() as u32,
            },
            0,
        )?;
        Ok(())
    }

    /// Packets decided by the rule in `slot`, summed over CPUs.
    pub fn filter_hits(&self, slot: u16) -> Result<u64> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(maps::FILTER_HITS)
                .context("map FILTER_HITS missing")?,
        )?;
        Ok(map.get(&u32::from(slot), 0)?.iter().sum())
    }

    /// Zeroes the counter of `slot`, for a new rule that takes it.
    pub fn reset_filter_hits(&mut self, slot: u16) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
        let mut map: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map_mut(maps::FILTER_HITS)?)?;
        map.set(
            u32::from(slot),
            PerCpuValues::try_from(vec![0u64; cpus])?,
            0,
        )?;
        Ok(())
    }

    /// The network id (`Subnet::network`) the programs have for each managed subnet.
    pub fn network_ids(&self) -> Result<Vec<(Ipv4Net, u32)>> {
        let map = self
            .ebpf
            .map(maps::SUBNETS)
            .context("map SUBNETS missing")?;
        let subnets: LpmTrie<_, u32, Subnet> = LpmTrie::try_from(map)?;
        let mut out = Vec::new();
        for entry in subnets.iter() {
            let (key, value) = entry?;
            let net = Ipv4Net::new(super::from_wire(key.data()), key.prefix_len() as u8)?;
            out.push((net, value.network));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: reproducible random rule sets without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Addresses of both families from a small pool, so that prefixes nest, overlap and
    /// repeat often.
    fn addr(rng: &mut Rng) -> IpAddr {
        let pool = [
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            [10, 0, 1, 1],
            [10, 1, 0, 1],
            [192, 0, 2, 9],
            [0, 0, 0, 0],
        ];
        let mut a = pool[rng.below(pool.len() as u64) as usize];
        if rng.below(4) == 0 {
            a[3] = rng.below(256) as u8;
        }
        if rng.below(3) == 0 {
            // The same shapes in 2001:db8::/32, the last bits at the end.
            let mut v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            v6[4..8].copy_from_slice(&a);
            v6[15] = a[3];
            return IpAddr::from(v6);
        }
        IpAddr::from(a)
    }

    fn network(rng: &mut Rng) -> u32 {
        [7, 8, 9][rng.below(3) as usize]
    }

    fn port(rng: &mut Rng) -> (Proto, u16) {
        let proto = if rng.below(3) == 0 {
            Proto::Udp
        } else {
            Proto::Tcp
        };
        (proto, [80, 443, 8080][rng.below(3) as usize])
    }

    fn random_rule(rng: &mut Rng, slot: u16) -> Rule {
        let src = match addr(rng) {
            IpAddr::V4(a) => {
                let len = [0, 8, 16, 24, 31, 32][rng.below(6) as usize];
                IpNet::from(Ipv4Net::new(a, len).unwrap())
            }
            IpAddr::V6(a) => {
                let len = [0, 32, 48, 64, 127, 128][rng.below(6) as usize];
                IpNet::from(Ipv6Net::new(a, len).unwrap())
            }
        };
        Rule {
            src: (rng.below(5) != 0).then(|| src.trunc()),
            network: (rng.below(2) == 0).then(|| network(rng)),
            port: (rng.below(2) == 0).then(|| port(rng)),
            drop: rng.below(2) == 0,
            slot,
        }
    }

    fn random_probe(rng: &mut Rng) -> Probe {
        Probe {
            src: addr(rng),
            network: (rng.below(5) != 0).then(|| network(rng)),
            port: (rng.below(5) != 0).then(|| port(rng)),
        }
    }

    /// The compiled tries decide exactly as a first-match walk over the rules in order, for
    /// sources of both families and rules with and without a source.
    #[test]
    fn compiled_rules_agree_with_first_match() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let mut decided = 0;
        for _ in 0..3000 {
            let n = rng.below(24) as usize;
            let rules: Vec<Rule> = (0..n).map(|i| random_rule(&mut rng, i as u16)).collect();
            let entries = compile(&rules);
            // Each trie has room for two generations of MAX_RULES entries.
            assert!(keys4(&entries).len() <= rules.len() && keys6(&entries).len() <= rules.len());
            for _ in 0..50 {
                let probe = random_probe(&mut rng);
                let want = first_match(&rules, &probe);
                let got = lookup(&entries, &probe);
                assert_eq!(
                    got.map(|m| m.order as usize),
                    want,
                    "rules {rules:#?}\nprobe {probe:?}"
                );
                if let (Some(m), Some(i)) = (got, want) {
                    assert_eq!(m.slot, rules[i].slot);
                    assert_eq!(m.action == filter::DROP, rules[i].drop);
                    decided += 1;
                }
            }
        }
        // The random sets must exercise matches, not only misses.
        assert!(decided > 30_000, "{decided}");
    }

    #[test]
    fn a_broad_allow_before_a_narrow_drop_wins_and_the_reverse() {
        let net = |s: &str| Some(s.parse::<IpNet>().unwrap());
        let probe = Probe {
            src: "10.0.0.5".parse().unwrap(),
            network: Some(1),
            port: Some((Proto::Tcp, 80)),
        };
        let allow_all = Rule {
            src: net("0.0.0.0/0"),
            network: None,
            port: None,
            drop: false,
            slot: 0,
        };
        let drop_one = Rule {
            src: net("10.0.0.5/32"),
            network: Some(1),
            port: Some((Proto::Tcp, 80)),
            drop: true,
            slot: 1,
        };
        let rules = [allow_all, drop_one];
        assert_eq!(
            lookup(&compile(&rules), &probe).unwrap().action,
            filter::ALLOW
        );
        let rules = [drop_one, allow_all];
        assert_eq!(
            lookup(&compile(&rules), &probe).unwrap().action,
            filter::DROP
        );
    }

    #[test]
    fn a_rule_without_a_source_holds_for_both_families_and_one_with_a_source_for_its_own() {
        let rule = |src: Option<&str>, drop| Rule {
            src: src.map(|s| s.parse().unwrap()),
            network: None,
            port: None,
            drop,
            slot: 0,
        };
        let probe = |src: &str| Probe {
            src: src.parse().unwrap(),
            network: None,
            port: None,
        };
        let rules = [rule(Some("0.0.0.0/0"), true), rule(None, false)];
        let entries = compile(&rules);
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(lookup(&entries, &probe("198.18.0.1")).unwrap().order, 0);
        assert_eq!(lookup(&entries, &probe("2001:db8::1")).unwrap().order, 1);
        let rules = [rule(Some("2001:db8::/32"), true), rule(None, false)];
        let entries = compile(&rules);
        assert_eq!(keys6(&entries).len(), 2);
        assert_eq!(keys4(&entries).len(), 1);
        assert_eq!(lookup(&entries, &probe("2001:db8:5::1")).unwrap().order, 0);
        assert_eq!(lookup(&entries, &probe("2001:db9::1")).unwrap().order, 1);
        assert_eq!(lookup(&entries, &probe("198.18.0.1")).unwrap().order, 1);
    }
}
