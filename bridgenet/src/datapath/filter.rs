//! The user filter in the maps: ordered rules compiled into the `FILTER` LPM trie, swapped in
//! atomically, and their per-rule counters.
//!
//! The trie holds one logical trie per match class (network named or not, port named or not):
//! the key is the class's fixed fields, then the source prefix. At a rule's prefix P the value
//! is the first rule of the class whose prefix contains P. A lookup returns the longest stored
//! prefix Q containing the source; every rule of the class that matches the source has a prefix
//! containing the source, so (prefixes being nested) containing Q: the value at Q is the first
//! of them. The program takes the first of the (at most four) class answers.
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};
use aya::maps::{
    Array, PerCpuArray, PerCpuValues,
    lpm_trie::{Key, LpmTrie},
};
use bridgenet_common::{FilterKey, FilterMatch, FilterState, Subnet, filter, maps};
use ipnet::Ipv4Net;

use super::{Datapath, Proto, wire};

/// One rule as the datapath sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Source prefix (0.0.0.0/0: any source).
    pub src: Ipv4Net,
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
    pub src: Ipv4Addr,
    /// The destination endpoint's network, if known.
    pub network: Option<u32>,
    /// Protocol and destination port; None when the packet has none (other protocols, later
    /// fragments).
    pub port: Option<(Proto, u16)>,
}

/// The trie key (without generation) and value of each entry for `rules`, in order.
pub fn compile(rules: &[Rule]) -> Vec<(Key<FilterKey>, FilterMatch)> {
    let mut out: Vec<(Key<FilterKey>, FilterMatch)> = Vec::new();
    for rule in rules {
        let src = rule.src.trunc();
        let key = Key::new(
            filter::FIXED_BITS + u32::from(src.prefix_len()),
            key_of(rule),
        );
        if out
            .iter()
            .any(|(k, _)| k.data() == key.data() && k.prefix_len() == key.prefix_len())
        {
            continue;
        }
        // The first rule of the class whose prefix contains this one (at worst, this rule).
        let (order, first) = rules
            .iter()
            .enumerate()
            .find(|(_, r)| same_class(r, rule) && r.src.contains(&src))
            .expect("the rule itself matches");
        out.push((
            key,
            FilterMatch {
                order: order as u32,
                slot: first.slot,
                action: if first.drop {
                    filter::DROP
                } else {
                    filter::ALLOW
                },
                _pad: 0,
            },
        ));
    }
    out
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
        src: wire(rule.src.network()),
    }
}

/// The first rule that matches `probe`, by its position: the plain definition of the
/// semantics, which the compiled trie must agree with.
pub fn first_match(rules: &[Rule], probe: &Probe) -> Option<usize> {
    rules.iter().position(|r| {
        r.src.contains(&probe.src)
            && r.network.is_none_or(|n| probe.network == Some(n))
            && r.port.is_none_or(|p| probe.port == Some(p))
    })
}

/// What the program finds in compiled `entries` for `probe`: the order of the deciding rule,
/// with the kernel's longest-prefix match per class done here by hand.
pub fn lookup(entries: &[(Key<FilterKey>, FilterMatch)], probe: &Probe) -> Option<FilterMatch> {
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
            src: Ipv4Net::default(),
            network,
            port,
            drop: false,
            slot: 0,
        });
        let longest = entries
            .iter()
            .filter(|(k, _)| {
                let d = k.data();
                (d.class, d.proto, d.dport, d.network)
                    == (fixed.class, fixed.proto, fixed.dport, fixed.network)
                    && prefix(k).contains(&probe.src)
            })
            .max_by_key(|(k, _)| k.prefix_len());
        if let Some((_, found)) = longest
            && best.is_none_or(|b| found.order < b.order)
        {
            best = Some(*found);
        }
    }
    best
}

fn prefix(key: &Key<FilterKey>) -> Ipv4Net {
    let len = (key.prefix_len() - filter::FIXED_BITS) as u8;
    Ipv4Net::new(super::from_wire(key.data().src), len).expect("a prefix of at most 32 bits")
}

impl Datapath {
    /// Replaces the filter's rules, atomically for the programs: the new rules go into the
    /// unused generation of the trie, then one write switches the programs to it. The old
    /// generation is removed on the next change, long after any packet stopped using it.
    pub fn set_filter(&mut self, rules: &[Rule]) -> Result<()> {
        if rules.len() > filter::MAX_RULES as usize {
            bail!("more than {} filter rules", filter::MAX_RULES);
        }
        let states: Array<_, FilterState> = Array::try_from(self.map_mut(maps::FILTER_STATE)?)?;
        let state = states.get(&0, 0)?;
        let mut trie: LpmTrie<_, FilterKey, FilterMatch> =
            LpmTrie::try_from(self.map_mut(maps::FILTER)?)?;
        // The same rules already in use (a restart's reconcile): nothing to do.
        let entry = |k: &Key<FilterKey>, v: FilterMatch| {
            let mut data = k.data();
            data.generation = 0;
            (k.prefix_len(), data, v)
        };
        let mut active = Vec::new();
        for item in trie.iter() {
            let (k, v) = item?;
            if u32::from(k.data().generation) == state.generation {
                active.push(entry(&k, v));
            }
        }
        let compiled: Vec<_> = compile(rules).iter().map(|(k, v)| entry(k, *v)).collect();
        if state.rules == rules.len() as u32
            && active.len() == compiled.len()
            && compiled.iter().all(|e| active.contains(e))
        {
            return Ok(());
        }
        let generation = (state.generation ^ 1) as u8;
        let stale: Vec<Key<FilterKey>> = trie
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.data().generation == generation)
            .collect();
        for key in stale {
            trie.remove(&key).context("removing a stale filter entry")?;
        }
        for (key, value) in compile(rules) {
            let mut data = key.data();
            data.generation = generation;
            trie.insert(&Key::new(key.prefix_len(), data), value, 0)
                .context("writing a filter entry")?;
        }
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

    /// Addresses from a small pool, so that prefixes nest, overlap and repeat often.
    fn addr(rng: &mut Rng) -> Ipv4Addr {
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
        Ipv4Addr::from(a)
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
        let len = [0, 8, 16, 24, 31, 32][rng.below(6) as usize];
        Rule {
            src: Ipv4Net::new(addr(rng), len).unwrap().trunc(),
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

    /// The compiled trie decides exactly as a first-match walk over the rules in order.
    #[test]
    fn compiled_rules_agree_with_first_match() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let mut decided = 0;
        for _ in 0..3000 {
            let n = rng.below(24) as usize;
            let rules: Vec<Rule> = (0..n).map(|i| random_rule(&mut rng, i as u16)).collect();
            let entries = compile(&rules);
            assert!(entries.len() <= rules.len());
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
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let probe = Probe {
            src: Ipv4Addr::new(10, 0, 0, 5),
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
}
