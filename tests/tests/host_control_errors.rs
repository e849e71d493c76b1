//! Every refused command: one line on stderr, a non-zero exit, and nothing changed (the
//! daemon's view, the host namespace's links, addresses and routes, the namespaces, and the
//! pinned maps are the same before and after).
//!
//! Host only (xtask keeps `host_*` binaries out of the emulated kernels): refusals of the CLI and
//! the API are decided before the datapath is touched and do not depend on the kernel's version,
//! which the matrix tests through the datapath, attach and restart tests.
use bridgenet_tests::control::ControlLab;

/// Runs a refused command and checks that nothing changed; returns its message.
fn refused(lab: &ControlLab, args: &[&str], expect: &str) {
    let before = lab.snapshot();
    let err = lab.fails(args);
    assert!(
        err.contains(expect),
        "bridgenet {}: expected {expect:?} in {err:?}",
        args.join(" ")
    );
    assert_eq!(
        before,
        lab.snapshot(),
        "bridgenet {} changed something",
        args.join(" ")
    );
}

#[test]
fn bad_input_changes_nothing() {
    let mut lab = ControlLab::up();
    lab.ok(&["network", "create", "small", "--subnet", "10.30.0.0/30"]);
    let ns1 = lab.netns_name("one");
    lab.ok(&[
        "endpoint",
        "create",
        "one",
        "--network",
        "small",
        "--netns",
        &ns1,
        "-p",
        "8080:80",
        "-p",
        "10.0.0.1:9090:90/udp",
    ]);
    let spare = lab.netns_name("spare");

    // Invalid CIDR, address, port, SPEC.
    refused(
        &lab,
        &["network", "create", "n", "--subnet", "10.0.0.0/33"],
        "invalid subnet",
    );
    refused(
        &lab,
        &["network", "create", "n", "--subnet", "banana"],
        "invalid subnet",
    );
    refused(
        &lab,
        &[
            "network",
            "create",
            "n",
            "--subnet",
            "10.40.0.0/24",
            "--gateway",
            "10.41.0.1",
        ],
        "not a host address",
    );
    refused(
        &lab,
        &[
            "network",
            "create",
            "n",
            "--subnet",
            "10.40.0.0/24",
            "--gateway",
            "x",
        ],
        "invalid gateway",
    );
    refused(
        &lab,
        &["port", "publish", "one", "70000:80"],
        "invalid port spec",
    );
    refused(
        &lab,
        &["port", "publish", "one", "1-2:3-5"],
        "invalid port spec",
    );
    refused(
        &lab,
        &["port", "publish", "one", "8081:80/sctp"],
        "invalid port spec",
    );
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "e",
            "--network",
            "bridge",
            "--netns",
            &spare,
            "--ip",
            "300.1.1.1",
        ],
        "invalid address",
    );
    // Subnets that overlap a network or a route of the namespace.
    refused(
        &lab,
        &["network", "create", "n", "--subnet", "10.30.0.0/16"],
        "overlaps network small",
    );
    refused(
        &lab,
        &["network", "create", "n", "--subnet", "172.17.5.0/24"],
        "overlaps network bridge",
    );
    refused(
        &lab,
        &["network", "create", "n", "--subnet", "198.18.0.0/16"],
        "overlaps a route",
    );
    // Names and bridges already taken.
    refused(&lab, &["network", "create", "small"], "already exists");
    refused(
        &lab,
        &["network", "create", "n", "--bridge", "uplink0"],
        "already exists",
    );
    // A port already published on the same address and protocol (also inside one command).
    refused(
        &lab,
        &["port", "publish", "one", "8080:81"],
        "already published",
    );
    refused(
        &lab,
        &["port", "publish", "one", "10.0.0.1:9090:91/udp"],
        "already published",
    );
    refused(
        &lab,
        &["port", "publish", "one", "9090:92/udp"],
        "already published",
    );
    refused(
        &lab,
        &["port", "publish", "one", "7000:1", "7000:2"],
        "given twice",
    );
    // Unknown network or endpoint, and unpublishing what is not published.
    refused(&lab, &["network", "inspect", "nope"], "no network nope");
    refused(&lab, &["network", "rm", "nope"], "no network nope");
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "e",
            "--network",
            "nope",
            "--netns",
            &spare,
        ],
        "no network nope",
    );
    refused(&lab, &["endpoint", "rm", "nope"], "no endpoint nope");
    refused(&lab, &["port", "publish", "nope", "80"], "no endpoint nope");
    refused(&lab, &["port", "ls", "nope"], "no endpoint nope");
    refused(
        &lab,
        &["port", "unpublish", "one", "8080:99"],
        "no published port",
    );
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "one",
            "--network",
            "small",
            "--netns",
            &spare,
        ],
        "already exists",
    );
    // Addresses outside the subnet or taken, and exhausted IPAM (a /30 has one endpoint).
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "e",
            "--network",
            "small",
            "--netns",
            &spare,
            "--ip",
            "10.31.0.2",
        ],
        "not a host address",
    );
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "e",
            "--network",
            "small",
            "--netns",
            &spare,
            "--ip",
            "10.30.0.1",
        ],
        "already in use",
    );
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "e",
            "--network",
            "small",
            "--netns",
            &spare,
        ],
        "no free address",
    );
    // A missing namespace (a path bridgenet must not create), or one that holds an endpoint.
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "e",
            "--network",
            "bridge",
            "--netns",
            "/proc/999999999/ns/net",
        ],
        "does not exist",
    );
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "e",
            "--network",
            "bridge",
            "--netns",
            &ns1,
        ],
        "already holds endpoint one",
    );
    // A create that fails halfway (the endpoint's namespace already has an eth0) leaves
    // nothing behind: no veth, no map entry, and the namespace is not removed.
    let busy = lab.netns_name("busy");
    for args in [
        vec!["netns", "add", &busy],
        vec![
            "-n", &busy, "link", "add", "eth0", "type", "veth", "peer", "name", "other",
        ],
    ] {
        let status = std::process::Command::new("ip")
            .args(&args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?}");
    }
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "e",
            "--network",
            "bridge",
            "--netns",
            &busy,
            "-p",
            "6000:60",
        ],
        "eth0",
    );
    // Modes: unknown, or given what they do not take.
    refused(
        &lab,
        &[
            "endpoint", "create", "e", "--netns", &spare, "--mode", "host",
        ],
        "invalid mode",
    );
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "e",
            "--network",
            "bridge",
            "--netns",
            &spare,
            "--mode",
            "none",
        ],
        "mode none has no network",
    );
    refused(
        &lab,
        &["endpoint", "create", "e", "--mode", "container:nope"],
        "no endpoint nope",
    );
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "e",
            "--mode",
            "container:one",
            "-p",
            "80",
        ],
        "shares one's network",
    );
    refused(
        &lab,
        &["endpoint", "create", "e", "--netns", &spare],
        "--network is required",
    );
    // User filter rules: bad source, port, protocol, action, network or rule id.
    for (args, expect) in [
        (&["--src", "banana"][..], "invalid source"),
        (&["--src", "10.0.0.0/33"], "invalid source"),
        (&["--dport", "70000"], "invalid port"),
        (&["--dport", "0"], "invalid port"),
        (&["--dport", "80/sctp"], "invalid port"),
        (&["--network", "nope"], "no network nope"),
    ] {
        let mut all = vec!["filter", "add"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--action", "drop"]);
        refused(&lab, &all, expect);
    }
    refused(
        &lab,
        &["filter", "add", "--action", "reject"],
        "invalid action",
    );
    refused(&lab, &["filter", "add", "--src", "10.0.0.0/8"], "--action");
    refused(&lab, &["filter", "rm", "99"], "no filter rule 99");
    refused(&lab, &["filter", "rm", "x"], "invalid filter rule id");
    // A network a rule names cannot be removed under it.
    lab.ok(&["network", "create", "lone"]);
    let id = lab.ok(&["filter", "add", "--network", "lone", "--action", "drop"]);
    refused(
        &lab,
        &["network", "rm", "lone"],
        &format!("network lone is named by filter rules {}", id.trim()),
    );
    // Removing a network that still has endpoints.
    refused(
        &lab,
        &["network", "rm", "small"],
        "still has endpoints: one",
    );

    // After all that, the lab still works as before.
    assert_eq!(
        lab.ok(&["port", "ls", "one"]),
        "80/tcp -> 0.0.0.0:8080\n90/udp -> 10.0.0.1:9090\n"
    );
}

#[test]
fn exhausted_default_pools_are_refused() {
    let lab = ControlLab::up();
    // A route covering every default pool: no subnet is left for a network without --subnet.
    lab.topo
        .ns("host")
        .ip(&["route", "add", "172.16.0.0/12", "via", "198.18.0.1"]);
    lab.topo
        .ns("host")
        .ip(&["route", "add", "192.168.0.0/16", "via", "198.18.0.1"]);
    refused(&lab, &["network", "create", "n"], "no free subnet");
}

#[test]
fn input_reserved_subnets_are_refused() {
    let lab = ControlLab::up();
    for (subnet, range) in [
        ("0.0.0.0/8", "0.0.0.0/8"),
        ("0.1.2.0/24", "0.0.0.0/8"),
        ("127.5.0.0/16", "127.0.0.0/8"),
        ("169.254.1.0/24", "169.254.0.0/16"),
        ("169.0.0.0/8", "169.254.0.0/16"),
        ("224.1.0.0/16", "224.0.0.0/4"),
        ("239.255.0.0/24", "224.0.0.0/4"),
        ("240.0.0.0/4", "240.0.0.0/4"),
        ("255.255.255.0/24", "240.0.0.0/4"),
        ("128.0.0.0/1", "169.254.0.0/16"),
    ] {
        refused(&lab, &["network", "create", "n", "--subnet", subnet], range);
    }
    // Next to them is fine.
    lab.ok(&["network", "create", "n", "--subnet", "198.19.7.0/24"]);
}

/// Every refusal of a dual-stack network or an IPv6 address: one line, nothing changed (no
/// bridge, no subnet in SUBNETS6, no store written).
#[test]
fn ipv6_refusals_change_nothing() {
    let mut lab = ControlLab::up();
    lab.ok(&[
        "network",
        "create",
        "six",
        "--ipv6",
        "--subnet",
        "198.18.5.0/24",
        "--subnet",
        "2001:db8:5::/64",
        "--internal",
    ]);
    let ns1 = lab.netns_name("one");
    lab.ok(&[
        "endpoint",
        "create",
        "one",
        "--network",
        "six",
        "--netns",
        &ns1,
    ]);
    let spare = lab.netns_name("spare");
    let create = |extra: &[&'static str]| {
        let mut args = vec!["network", "create", "n"];
        args.extend_from_slice(extra);
        args
    };
    for (args, expect) in [
        // The CLI's grammar: one --subnet and one --gateway per family, --ipv6 with an IPv6
        // subnet and only with one.
        (
            create(&["--subnet", "198.18.6.0/24", "--subnet", "2001:db8:6::/64"]),
            "IPv6 subnet 2001:db8:6::/64 needs --ipv6",
        ),
        (
            create(&["--ipv6", "--subnet", "198.18.6.0/24", "--internal"]),
            "--ipv6 needs an IPv6 --subnet",
        ),
        (
            create(&["--ipv6", "--internal"]),
            "--ipv6 needs an IPv6 --subnet",
        ),
        (
            create(&["--subnet", "198.18.6.0/24", "--subnet", "198.18.7.0/24"]),
            "--subnet given twice for IPv4",
        ),
        (
            create(&[
                "--ipv6",
                "--internal",
                "--subnet",
                "2001:db8:6::/64",
                "--subnet",
                "2001:db8:7::/64",
            ]),
            "--subnet given twice for IPv6",
        ),
        (
            create(&[
                "--ipv6",
                "--internal",
                "--subnet",
                "2001:db8:6::/64",
                "--gateway",
                "2001:db8:6::1",
                "--gateway",
                "2001:db8:6::2",
            ]),
            "--gateway given twice for IPv6",
        ),
        (
            create(&["--subnet", "198.18.6.0/24", "--gateway", "2001:db8:6::1"]),
            "no IPv6 --subnet is given",
        ),
        // The daemon's checks.
        (
            create(&[
                "--ipv6",
                "--masquerade=false",
                "--subnet",
                "198.18.6.0/24",
                "--subnet",
                "2001:db8:6::/64",
            ]),
            "IPv6 leaves a network without masquerade only in IPv6 gateway mode routed",
        ),
        (
            create(&[
                "--ipv6",
                "--gateway-mode6",
                "isolated",
                "--subnet",
                "198.18.6.0/24",
                "--subnet",
                "2001:db8:6::/64",
            ]),
            "IPv6 gateway mode isolated: use gateway mode isolated",
        ),
        (
            create(&[
                "--gateway-mode6",
                "nat-unprotected",
                "--subnet",
                "198.18.6.0/24",
            ]),
            "IPv6 gateway mode nat-unprotected given without an IPv6 subnet",
        ),
        (
            create(&[
                "--ipv6",
                "--internal",
                "--subnet",
                "198.18.6.0/24",
                "--subnet",
                "2001:db8:6::/64",
                "--gateway",
                "2001:db8:7::1",
            ]),
            "gateway 2001:db8:7::1 is not a host address of 2001:db8:6::/64",
        ),
        (
            create(&[
                "--ipv6",
                "--internal",
                "--subnet",
                "2001:db8:6::/64",
                "--gateway",
                "2001:db8:6::zz",
            ]),
            "invalid IPv6 gateway",
        ),
        (
            create(&["--ipv6", "--internal", "--subnet", "2001:db8:6::/129"]),
            "invalid IPv6 subnet",
        ),
        (
            create(&["--ipv6", "--internal", "--subnet", "2001:db8::/16"]),
            "overlaps network six",
        ),
        (
            create(&["--ipv6", "--internal", "--subnet", "2001:db8:5::/80"]),
            "overlaps network six",
        ),
        (
            create(&["--ipv6", "--internal", "--subnet", "fe80::/64"]),
            "link-local",
        ),
        (
            create(&["--ipv6", "--internal", "--subnet", "ff05::/64"]),
            "multicast",
        ),
        (
            create(&["--ipv6", "--internal", "--subnet", "2001:db8:6::/127"]),
            "no room",
        ),
        // Whatever else is right, a network that exists is refused before its IPv6 side.
        (
            vec![
                "network",
                "create",
                "six",
                "--ipv6",
                "--internal",
                "--subnet",
                "2001:db8:6::/64",
            ],
            "already exists",
        ),
    ] {
        refused(&lab, &args, expect);
    }
    let endpoint = |extra: &[&'static str]| {
        let mut args: Vec<String> = ["endpoint", "create", "e", "--netns", &spare]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    for (args, expect) in [
        (
            endpoint(&["--network", "bridge", "--ip6", "2001:db8:5::9"]),
            "network bridge has no IPv6 subnet",
        ),
        (
            endpoint(&["--network", "six", "--ip6", "2001:db8:5::1"]),
            "address 2001:db8:5::1 is the gateway of 2001:db8:5::/64",
        ),
        (
            endpoint(&["--network", "six", "--ip6", "2001:db8:5::"]),
            "not a host address of 2001:db8:5::/64",
        ),
        (
            endpoint(&["--network", "six", "--ip6", "2001:db8:6::2"]),
            "not a host address of 2001:db8:5::/64",
        ),
        (
            endpoint(&["--network", "six", "--ip6", "2001:db8:5::2"]),
            "address 2001:db8:5::2 is already in use",
        ),
        (
            endpoint(&["--network", "six", "--ip6", "198.18.5.9"]),
            "invalid IPv6 address",
        ),
        (
            endpoint(&["--mode", "none", "--ip6", "2001:db8:5::9"]),
            "mode none has no network",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&lab, &args, expect);
    }
    refused(
        &lab,
        &[
            "endpoint",
            "create",
            "e",
            "--mode",
            "container:one",
            "--ip6",
            "2001:db8:5::9",
        ],
        "shares one's network",
    );
    // The endpoint that was there keeps its address.
    let one: serde_json::Value =
        serde_json::from_str(&lab.ok(&["endpoint", "inspect", "one"])).unwrap();
    assert_eq!(one["ip6"], "2001:db8:5::2", "{one}");
}
