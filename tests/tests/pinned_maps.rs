//! Maps pinned on a bpf filesystem outlive the process that loaded them, and a new load adopts
//! them with their state: the basis of restarts without losing flows.
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues};
use bridgenet::datapath::{Datapath, LoadOptions, Proto};
use bridgenet_common::{
    CT_MAX_FLOWS, CtEntry, CtKey, EmbryoSlot, action, ct_flags, ct_usage, direction, maps, outcome,
    port_hash, port_hash::PortSecret, program_id, tcp_seen,
};
use bridgenet_tests::{Bpffs, layout_v1::CtEntryV1, require_root};

/// A bpf filesystem of its own for the test `name`, and the options of a load pinned there.
fn pinned(name: &str) -> (Bpffs, LoadOptions) {
    require_root();
    let bpffs = Bpffs::new(name);
    let options = LoadOptions {
        pin_dir: Some(bpffs.0.clone()),
        ..LoadOptions::default()
    };
    (bpffs, options)
}

#[test]
fn a_second_load_adopts_the_pinned_maps_and_their_state() {
    let (bpffs, options) = pinned("adopt");

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
    let published_by = first.published_by().unwrap();
    assert_eq!(published_by.len(), 1, "{published_by:?}");
    drop(first);
    assert!(
        bpffs.0.join("CONNTRACK_v3").exists() && bpffs.0.join("PUBLISH").exists(),
        "maps are pinned by name and layout version"
    );

    let second = Datapath::load_with(&options).expect("second load");
    let published = second.published().unwrap();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(second.published_by().unwrap(), published_by);
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

    // Every entry of a whole flow, field for field (one time of last use per flow, the later
    // one); the orphan is dropped.
    let entries: std::collections::HashMap<CtKey, CtEntry> =
        dp.conntrack().unwrap().into_iter().collect();
    assert_eq!(entries.len(), 4, "{entries:?}");
    for (flow, assured, inbound) in [(&masq, true, false), (&published, false, true)] {
        let last_seen_ns = flow[0].1.last_seen_ns.max(flow[1].1.last_seen_ns);
        for (k, old) in flow {
            let new = entries
                .get(k)
                .unwrap_or_else(|| panic!("{k:?} not migrated"));
            assert_eq!(
                (new.peer, new.last_seen_ns, new.packets, new.bytes),
                (old.peer, last_seen_ns, old.packets, old.bytes)
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
            // INBOUND: which side of a flow is outside, in layout v3.
            let flags = if assured { ct_flags::ASSURED } else { 0 }
                | if inbound { ct_flags::INBOUND } else { 0 };
            assert_eq!(new.flags, flags, "{k:?}: WINDOW_KNOWN unset");
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
        2,
        "the count is the flows kept"
    );
    // Nothing is published: the published flow is found from inside through CT_EXCEPTIONS,
    // and so is the masqueraded one unless its old port happens to be among its candidates.
    let masq_found = found_as_masquerade(&dp, &masq[0].0, &masq[1].0);
    let exceptions = if masq_found { 1 } else { 2 };
    assert_eq!(usage_slot(&mut dp, ct_usage::EXCEPTIONS), exceptions);
    assert_eq!(exception_keys(&mut dp).len() as u64, exceptions);

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
        lines.contains(&format!(
            "pinned map CONNTRACK: layout v1 -> v3: 4 entries migrated, 1 dropped (their other \
             direction was missing, or the table was full); {exceptions} flows in CT_EXCEPTIONS"
        )),
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
            .any(|l| l.starts_with("pinned map CT_USAGE: layout v1 -> v3:")
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
        "CONNTRACK_v3",
        "STATS_v2",
        "CT_USAGE_v3",
        "EMBRYOS_v2",
        "PUBLISH",
        "PUBLISHED_BY",
        "CT_EXCEPTIONS",
    ] {
        assert!(bpffs.0.join(pin).exists(), "{pin} not pinned");
    }
    drop(dp);

    // The next load adopts the new pins as they are.
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
    ct.pin(bpffs.0.join("CONNTRACK_v4")).unwrap();
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
            && msg.contains("layout v4")
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
    assert_eq!(files, ["CONNTRACK_v4"]);
}

/// `CT_USAGE`'s slot `slot`.
fn usage_slot(dp: &mut Datapath, slot: u32) -> u64 {
    let usage: Array<_, u64> = Array::try_from(dp.ebpf_mut().map(maps::CT_USAGE).unwrap()).unwrap();
    usage.get(&slot, 0).unwrap()
}

/// `CT_EXCEPTIONS`: inside tuple -> the flow's key.
fn exception_keys(dp: &mut Datapath) -> std::collections::HashMap<CtKey, CtKey> {
    let map: HashMap<_, CtKey, CtKey> =
        HashMap::try_from(dp.ebpf_mut().map(maps::CT_EXCEPTIONS).unwrap()).unwrap();
    map.iter().map(Result::unwrap).collect()
}

/// Whether the masquerade flow `inside` -> `outside` (its reply's key) has its port among the
/// candidates the programs probe (port_hash, under the datapath's key).
fn found_as_masquerade(dp: &Datapath, inside: &CtKey, outside: &CtKey) -> bool {
    let hash = port_hash::of4(&dp.port_secret().unwrap(), inside);
    let nat = dp.nat_config().unwrap();
    (0..=port_hash::FOUND_WITHIN).any(|i| {
        port_hash::candidate(&nat, u16::from_be(inside.sport), hash, i)
            == Some(u16::from_be(outside.dport))
    })
}

/// Both entries of a flow, as the v2 datapath wrote them: `flags` (ASSURED, INBOUND) on both,
/// WINDOW_KNOWN on the original's, the embryo ring's turn on the original's, traffic and
/// window tracking on both, the reply's last packet later.
fn flow_v2(
    original: CtKey,
    reply: CtKey,
    act: [u8; 2],
    nat: [([u8; 4], u16); 2],
    flags: u8,
) -> [(CtKey, CtEntry); 2] {
    let entry = |d: usize, peer| CtEntry {
        peer,
        last_seen_ns: 5_000_000 + d as u64 * 1000,
        packets: 3 + d as u64,
        bytes: 300 + d as u64,
        nat_addr: u32::from_ne_bytes(nat[d].0),
        nat_port: nat[d].1.to_be(),
        action: act[d],
        direction: d as u8,
        tcp_seen: if original.proto == 6 {
            tcp_seen::SYN | tcp_seen::ACK
        } else {
            0
        },
        flags: flags | if d == 0 { ct_flags::WINDOW_KNOWN } else { 0 },
        wscale: 7,
        _pad: 0,
        td_end: 1000 + d as u32,
        td_maxwin: 64_000,
        ring_seq: if d == 0 { 9 } else { 0 },
    };
    [(original, entry(0, reply)), (reply, entry(1, original))]
}

#[test]
fn a_v2_table_of_every_kind_of_flow_becomes_one_element_per_flow() {
    let (bpffs, options) = pinned("migrate_v2");
    // What a daemon of layout v2 left besides its table: its uplink, the published port, the
    // port key, the rings (v2, adopted as they are).
    let (ep, ep2, routed) = ([172, 17, 0, 2], [172, 17, 0, 3], [172, 18, 0, 3]);
    let (host, gateway, world, client) = (
        [198, 18, 0, 2],
        [172, 17, 0, 1],
        [198, 18, 0, 1],
        [198, 18, 0, 9],
    );
    let mut first = Datapath::load_with(&options).expect("first load");
    // Replies of a port published on any address try the address of their uplink.
    first.set_uplink_addr(2, Ipv4Addr::from(host)).unwrap();
    first
        .publish(Proto::Tcp, None, 8080, Ipv4Addr::from(ep), 80)
        .unwrap();
    let secret = first.port_secret().unwrap();
    let nat = first.nat_config().unwrap();
    let (ring_size, limit6) = (
        usage_slot(&mut first, ct_usage::RING_SIZE),
        usage_slot(&mut first, ct_usage::LIMIT6),
    );
    drop(first);
    for pin in ["CONNTRACK_v3", "CT_USAGE_v3"] {
        std::fs::remove_file(bpffs.0.join(pin)).unwrap();
    }

    // Masquerade's ports as the v2 datapath of this build chose them: the first candidate of
    // the inside tuple's sequence; one past those the v3 programs probe.
    let candidate = |inside: &CtKey, i| {
        let hash = port_hash::of4(&secret, inside);
        port_hash::candidate(&nat, u16::from_be(inside.sport), hash, i).unwrap()
    };
    let masq_in = key(ep, world, 40000, 7000, 17);
    let masq_late_in = key(ep, world, 40001, 7000, 17);
    let hairpin_in = key(ep2, host, 41000, 8080, 6);
    let (np, np_late, gp) = (
        candidate(&masq_in, 1),
        candidate(&masq_late_in, port_hash::FOUND_WITHIN + 1),
        candidate(&hairpin_in, 1),
    );
    let (snat, dnat) = ([action::SNAT, action::DNAT], [action::DNAT, action::SNAT]);
    let inbound = ct_flags::INBOUND | ct_flags::ASSURED;
    let masquerade = flow_v2(
        masq_in,
        key(world, host, 7000, np, 17),
        snat,
        [(host, np), (ep, 40000)],
        ct_flags::ASSURED,
    );
    let masquerade_late = flow_v2(
        masq_late_in,
        key(world, host, 7000, np_late, 17),
        snat,
        [(host, np_late), (ep, 40001)],
        0,
    );
    // The client's port `sport` to the host's `host_port`, published to ep:`port`.
    let to_published = |sport, host_port, port| {
        flow_v2(
            key(client, host, sport, host_port, 6),
            key(ep, client, port, sport, 6),
            dnat,
            [(ep, port), (host, host_port)],
            inbound,
        )
    };
    let published = to_published(50000, 8080, 80);
    // Published once, by a daemon that then lost the mapping: found from inside only through
    // CT_EXCEPTIONS.
    let published_gone = to_published(50001, 9090, 90);
    let routed_in_key = key(client, routed, 50002, 80, 6);
    let routed_in = flow_v2(
        routed_in_key,
        routed_in_key.reversed(),
        dnat,
        [(routed, 80), (routed, 80)],
        inbound,
    );
    let routed_out_key = key(routed, world, 40002, 443, 6);
    let routed_out = flow_v2(
        routed_out_key,
        routed_out_key.reversed(),
        snat,
        [(routed, 40002), (routed, 40002)],
        ct_flags::ASSURED,
    );
    let host_key = key(host, world, 33000, 443, 6);
    let host_flow = flow_v2(
        host_key,
        host_key.reversed(),
        [action::HOST; 2],
        [([0; 4], 0); 2],
        ct_flags::ASSURED,
    );
    let hairpin = flow_v2(
        hairpin_in,
        key(ep, gateway, 80, gp, 6),
        [action::HAIRPIN; 2],
        [(ep, 80), (host, 8080)],
        ct_flags::ASSURED,
    );
    let flows = [
        &masquerade,
        &masquerade_late,
        &published,
        &published_gone,
        &routed_in,
        &routed_out,
        &host_flow,
        &hairpin,
    ];
    let orphan = to_published(50003, 8080, 80);
    let mut ct: HashMap<MapData, CtKey, CtEntry> = HashMap::create(1024, 0).unwrap();
    for (k, e) in flows.iter().flat_map(|f| f.iter()).chain(&orphan[..1]) {
        ct.insert(k, e, 0).unwrap();
    }
    ct.pin(bpffs.0.join("CONNTRACK_v2")).unwrap();
    // CT_USAGE v2: 8 slots, the count in entries.
    let mut old_usage: Array<MapData, u64> = Array::create(8, 0).unwrap();
    for (slot, value) in [
        (ct_usage::ENTRIES, 17),
        (ct_usage::LIMIT, 2 * u64::from(CT_MAX_FLOWS)),
        (ct_usage::EVICTED, 5),
        (ct_usage::RING_CURSOR, 6),
        (ct_usage::RING_SIZE, ring_size),
        (ct_usage::RING_CURSOR_INSIDE, 7),
        (ct_usage::ENTRIES6, 3),
        (ct_usage::LIMIT6, limit6),
    ] {
        old_usage.set(slot, value, 0).unwrap();
    }
    old_usage.pin(bpffs.0.join("CT_USAGE_v2")).unwrap();

    let mut dp = Datapath::load_with(&options).expect("a load over v2 pins");

    // The v2 entries back, field for field, one time of last use per flow (the later one).
    let want: std::collections::HashMap<CtKey, CtEntry> = flows
        .iter()
        .flat_map(|f| {
            let last_seen_ns = f[0].1.last_seen_ns.max(f[1].1.last_seen_ns);
            f.map(|(k, e)| (k, CtEntry { last_seen_ns, ..e }))
        })
        .collect();
    let got: std::collections::HashMap<CtKey, CtEntry> =
        dp.conntrack().unwrap().into_iter().collect();
    assert_eq!(got.len(), 16, "{got:?}");
    for (k, e) in &want {
        assert_eq!(got.get(k), Some(e), "{k:?}");
    }
    // One element per flow; the two the programs cannot find from inside in CT_EXCEPTIONS.
    let elements = dp.flows().unwrap();
    assert_eq!(elements.len(), 8);
    let want_exceptions: std::collections::HashMap<CtKey, CtKey> = [
        (masq_late_in, masquerade_late[1].0),
        (published_gone[1].0, published_gone[0].0),
    ]
    .into();
    assert_eq!(exception_keys(&mut dp), want_exceptions);
    for (k, flow) in &elements {
        let exception = want_exceptions.values().any(|v| v == k);
        assert_eq!(
            flow.flags & ct_flags::EXCEPTION != 0,
            exception,
            "{k:?}: {flow:?}"
        );
    }

    // The counts: flows, the limit in flows, the counters carried over.
    assert_eq!(dp.conntrack_usage().unwrap(), (8, u64::from(CT_MAX_FLOWS)));
    for (slot, value) in [
        (ct_usage::EVICTED, 5),
        (ct_usage::RING_CURSOR, 6),
        (ct_usage::RING_SIZE, ring_size),
        (ct_usage::RING_CURSOR_INSIDE, 7),
        (ct_usage::ENTRIES6, 3),
        (ct_usage::LIMIT6, limit6),
        (ct_usage::EXCEPTIONS, 2),
    ] {
        assert_eq!(usage_slot(&mut dp, slot), value, "CT_USAGE slot {slot}");
    }
    let lines: Vec<String> = dp.migrations().iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "pinned map CT_USAGE: layout v2 -> v3: 8 entries migrated, 0 dropped",
            "pinned map CONNTRACK: layout v2 -> v3: 16 entries migrated, 1 dropped (their other \
             direction was missing, or the table was full); 2 flows in CT_EXCEPTIONS",
        ]
    );
    dp.finish_upgrade().unwrap();
    assert!(!bpffs.0.join("CONNTRACK_v2").exists());
    assert!(!bpffs.0.join("CT_USAGE_v2").exists());
}
