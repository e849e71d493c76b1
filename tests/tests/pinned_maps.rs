//! Maps pinned on a bpf filesystem outlive the process that loaded them, and a new load adopts
//! them with their state: the basis of restarts without losing flows.
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues};
use bridgenet::datapath::{Datapath, LoadOptions, Proto};
use bridgenet_common::{
    CtEntry, CtKey, EmbryoSlot, action, ct_flags, direction, outcome, port_hash::PortSecret,
    program_id, tcp_seen,
};
use bridgenet_tests::{Bpffs, layout_v1::CtEntryV1, require_root};

#[test]
fn a_second_load_adopts_the_pinned_maps_and_their_state() {
    require_root();
    let bpffs = Bpffs::new("adopt");
    let options = LoadOptions {
        pin_dir: Some(bpffs.0.clone()),
        ..LoadOptions::default()
    };

    let mut first = Datapath::load_with(&options).expect("first load");
    // Masquerade's port key is drawn at the first load, then kept with the pins: the flows
    // of an earlier daemon follow it.
    let secret = first.port_secret().unwrap();
    assert_ne!(secret, PortSecret::default());
    first
        .publish(Proto::Tcp, None, 8080, Ipv4Addr::new(172, 17, 0, 2), 80)
        .unwrap();
    first
        .add_subnet("172.17.0.0/16".parse().unwrap(), true)
        .unwrap();
    drop(first);
    assert!(
        bpffs.0.join("CONNTRACK_v2").exists() && bpffs.0.join("PUBLISH").exists(),
        "maps are pinned by name and layout version"
    );

    let second = Datapath::load_with(&options).expect("second load");
    let published = second.published().unwrap();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(second.port_secret().unwrap(), secret);

    // Without pinning, nothing is shared: another key too.
    let private = Datapath::load().unwrap();
    assert!(private.published().unwrap().is_empty());
    let other = private.port_secret().unwrap();
    assert!(
        other != secret && other != PortSecret::default(),
        "{other:?}"
    );
}

fn key(saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr: u32::from_ne_bytes(saddr),
        daddr: u32::from_ne_bytes(daddr),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

/// Both entries of a flow, as the v1 datapath wrote them.
fn flow_v1(
    original: CtKey,
    reply: CtKey,
    act: (u8, u8),
    nat: ([u32; 2], [u16; 2]),
    packets: (u64, u64),
    seen: (u8, u8),
) -> [(CtKey, CtEntryV1); 2] {
    let entry = |peer, action, direction, i: usize, packets, tcp_seen| CtEntryV1 {
        peer,
        last_seen_ns: 1_000_000 + i as u64,
        packets,
        bytes: packets * 100,
        nat_addr: nat.0[i],
        nat_port: nat.1[i],
        action,
        direction,
        tcp_seen,
        _pad: [0; 7],
    };
    [
        (
            original,
            entry(reply, act.0, direction::ORIGINAL, 0, packets.0, seen.0),
        ),
        (
            reply,
            entry(original, act.1, direction::REPLY, 1, packets.1, seen.1),
        ),
    ]
}

#[test]
fn pins_of_older_layouts_are_migrated_and_what_is_dropped_is_said() {
    require_root();
    let bpffs = Bpffs::new("migrate");
    let wire = |a: [u8; 4]| u32::from_ne_bytes(a);
    let (endpoint, host, world) = ([198, 19, 1, 2], [198, 18, 0, 2], [198, 18, 0, 1]);

    // CONNTRACK v1: a masqueraded UDP flow that saw both directions, a published TCP flow
    // with only its SYN, and an orphan (its other direction is gone).
    let masq = flow_v1(
        key(endpoint, world, 40000, 7000, 17),
        key(world, host, 7000, 61000, 17),
        (action::SNAT, action::DNAT),
        (
            [wire(host), wire(endpoint)],
            [61000u16.to_be(), 40000u16.to_be()],
        ),
        (5, 3),
        (0, 0),
    );
    let published = flow_v1(
        key(world, host, 50000, 8080, 6),
        key(endpoint, world, 80, 50000, 6),
        (action::DNAT, action::SNAT),
        (
            [wire(endpoint), wire(host)],
            [80u16.to_be(), 8080u16.to_be()],
        ),
        (1, 0),
        (tcp_seen::SYN, 0),
    );
    let orphan = flow_v1(
        key(world, host, 50001, 8080, 6),
        key(endpoint, world, 80, 50001, 6),
        (action::DNAT, action::SNAT),
        (
            [wire(endpoint), wire(host)],
            [80u16.to_be(), 8080u16.to_be()],
        ),
        (2, 2),
        (tcp_seen::SYN | tcp_seen::ACK, tcp_seen::SYN | tcp_seen::ACK),
    );
    let mut ct: HashMap<MapData, CtKey, CtEntryV1> = HashMap::create(1024, 0).unwrap();
    for (k, e) in masq.iter().chain(&published).chain(&orphan[..1]) {
        ct.insert(k, e, 0).unwrap();
    }
    ct.pin(bpffs.0.join("CONNTRACK")).unwrap();

    // STATS v1: program * 20 + outcome, per CPU.
    let cpus = aya::util::nr_cpus().unwrap();
    let mut stats: PerCpuArray<MapData, u64> = PerCpuArray::create(5 * 20, 0).unwrap();
    let per_cpu = |base: u64| {
        PerCpuValues::try_from((0..cpus as u64).map(|c| base + c).collect::<Vec<_>>()).unwrap()
    };
    let old_counters = [
        (program_id::UPLINK_EGRESS, outcome::SNAT, 7),
        (program_id::UPLINK_INGRESS, outcome::DROP_PROTOCOL, 11),
        (program_id::BRIDGE_INGRESS, outcome::DROP_UNCHECKED, 2),
    ];
    for (p, o, base) in old_counters {
        stats.set(p * 20 + o, per_cpu(base), 0).unwrap();
    }
    stats.pin(bpffs.0.join("STATS")).unwrap();

    // CT_USAGE v1: entries, limit.
    let mut usage: Array<MapData, u64> = Array::create(2, 0).unwrap();
    usage.set(0, 5, 0).unwrap();
    usage.set(1, 1000, 0).unwrap();
    // Pinning consumes the handles: the pins alone keep the maps.
    usage.pin(bpffs.0.join("CT_USAGE")).unwrap();

    // EMBRYOS v1: one ring for both sides, naming the published flow's SYN.
    let mut ring: Array<MapData, EmbryoSlot> = Array::create(16, 0).unwrap();
    let slot = EmbryoSlot {
        key: published[0].0,
        seq: 1,
        _pad: 0,
    };
    ring.set(1, slot, 0).unwrap();
    ring.pin(bpffs.0.join("EMBRYOS")).unwrap();

    let options = LoadOptions {
        pin_dir: Some(bpffs.0.clone()),
        ..LoadOptions::default()
    };
    let mut dp = Datapath::load_with(&options).expect("a load over v1 pins");

    // Every entry of a whole flow, field for field; the orphan is dropped.
    let entries: std::collections::HashMap<CtKey, CtEntry> =
        dp.conntrack().unwrap().into_iter().collect();
    assert_eq!(entries.len(), 4, "{entries:?}");
    for (flow, assured) in [(&masq, true), (&published, false)] {
        for (k, old) in flow {
            let new = entries
                .get(k)
                .unwrap_or_else(|| panic!("{k:?} not migrated"));
            assert_eq!(
                (new.peer, new.last_seen_ns, new.packets, new.bytes),
                (old.peer, old.last_seen_ns, old.packets, old.bytes)
            );
            assert_eq!(
                (
                    new.nat_addr,
                    new.nat_port,
                    new.action,
                    new.direction,
                    new.tcp_seen
                ),
                (
                    old.nat_addr,
                    old.nat_port,
                    old.action,
                    old.direction,
                    old.tcp_seen
                )
            );
            let flags = if assured { ct_flags::ASSURED } else { 0 };
            assert_eq!(new.flags, flags, "{k:?}: WINDOW_KNOWN and INBOUND unset");
            assert_eq!((new.wscale, new.td_end, new.td_maxwin), (0, 0, 0));
        }
    }
    assert!(!entries.contains_key(&orphan[0].0));
    let cpus = cpus as u64;
    for (p, o, base) in old_counters {
        let sum = base * cpus + cpus * (cpus - 1) / 2;
        assert_eq!(
            dp.stat(p, o).unwrap(),
            sum,
            "{} {}",
            program_id::NAMES[p as usize],
            outcome::NAMES[o as usize]
        );
    }
    assert_eq!(
        dp.conntrack_usage().unwrap().0,
        4,
        "the count is what was kept"
    );

    // One line per map: the map, the versions, what was kept and what was lost.
    let lines: Vec<String> = dp.migrations().iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines.contains(
            &"pinned map EMBRYOS: layout v1 -> v2: 0 entries migrated, 0 dropped".to_owned()
        ),
        "{lines:?}"
    );
    assert!(
        lines.contains(
            &"pinned map CONNTRACK: layout v1 -> v2: 4 entries migrated, 1 dropped (their \
              other direction was missing, or the table was full)"
                .to_owned()
        ),
        "{lines:?}"
    );
    assert!(
        lines.contains(
            &"pinned map STATS: layout v1 -> v2: 3 entries migrated, 0 dropped".to_owned()
        ),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("pinned map CT_USAGE: layout v1 -> v2:")
                && l.ends_with(", 0 dropped")),
        "{lines:?}"
    );

    // The old conntrack pin stays until the new programs are attached (a restarting daemon's
    // old programs still write to it); the others are gone at once.
    for old in ["STATS", "CT_USAGE", "EMBRYOS"] {
        assert!(!bpffs.0.join(old).exists(), "the v1 pin {old} is left");
    }
    assert!(bpffs.0.join("CONNTRACK").exists());
    dp.finish_upgrade().unwrap();
    assert!(!bpffs.0.join("CONNTRACK").exists());
    for pin in [
        "CONNTRACK_v2",
        "STATS_v2",
        "CT_USAGE_v2",
        "EMBRYOS_v2",
        "PUBLISH",
    ] {
        assert!(bpffs.0.join(pin).exists(), "{pin} not pinned");
    }
    drop(dp);

    // The next load adopts the v2 pins as they are.
    let dp = Datapath::load_with(&options).expect("a load over v2 pins");
    assert!(dp.migrations().is_empty());
    assert_eq!(dp.conntrack().unwrap().len(), 4);
    assert_eq!(
        dp.stat(program_id::UPLINK_EGRESS, outcome::SNAT).unwrap(),
        7 * cpus + cpus * (cpus - 1) / 2
    );
}

#[test]
fn a_newer_layout_is_refused_with_one_line() {
    require_root();
    let bpffs = Bpffs::new("newer");
    let ct: HashMap<MapData, CtKey, CtEntry> = HashMap::create(16, 0).unwrap();
    ct.pin(bpffs.0.join("CONNTRACK_v3")).unwrap();
    let err = Datapath::load_with(&LoadOptions {
        pin_dir: Some(bpffs.0.clone()),
        ..LoadOptions::default()
    })
    .err()
    .expect("a load over a newer layout must fail");
    let msg = format!("{err:#}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(
        msg.contains("pinned map CONNTRACK")
            && msg.contains("layout v3")
            && msg.contains("refusing"),
        "{msg}"
    );
    // Nothing was pinned or changed.
    let files: Vec<_> = std::fs::read_dir(&bpffs.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        // The kernel's own iterators on a fresh bpffs (maps.debug, progs.debug).
        .filter(|f| !f.ends_with(".debug"))
        .collect();
    assert_eq!(files, ["CONNTRACK_v3"]);
}
