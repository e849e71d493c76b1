//! Adopting an existing bridge (Docker's `-b`): `network create --bridge BR` when BR exists
//! takes its subnet and gateway, keeps its address and ports, carries endpoints' traffic, and
//! `network rm` and `daemon --cleanup` leave it as it was found; refusals are one line.
//!
//! Host only (xtask keeps `host_*` binaries out of the emulated kernels): adoption is netlink
//! bookkeeping of links and addresses, which does not depend on the kernel's version; the
//! programs on an adopted bridge are those of any network, which the matrix covers.
use bridgenet_tests::control::ControlLab;

/// The host namespace's view of bridge `br`: its addresses and its ports.
fn bridge_view(lab: &ControlLab, br: &str) -> String {
    let host = lab.topo.ns("host");
    let addrs = host.ip(&["-4", "-o", "addr", "show", "dev", br]);
    let addrs: Vec<&str> = addrs
        .split_whitespace()
        .filter(|w| w.contains('/'))
        .collect();
    let ports = host.ip(&["-o", "link", "show", "master", br]);
    let ports: Vec<&str> = ports.lines().filter_map(|l| l.split(": ").nth(1)).collect();
    format!("addrs {addrs:?} ports {ports:?}")
}

/// Whether bridgenet's program is attached to bridge `br`: its pinned tcx link (bpftool of
/// this Debian does not list tcx attachments), or before tcx its netlink filter.
fn program_on(lab: &ControlLab, br: &str) -> bool {
    let pin = format!("link_bridge_ingress_{br}_");
    let pinned = std::fs::read_dir(lab.bpffs())
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(&pin));
    let filters = lab
        .topo
        .ns("host")
        .output("tc", &["filter", "show", "dev", br, "ingress"]);
    pinned || String::from_utf8_lossy(&filters.stdout).contains("bridge_ingress")
}

#[test]
fn an_existing_bridge_is_adopted_and_left_as_it_was_found() {
    let mut lab = ControlLab::prepared();
    let host = lab.topo.ns("host");
    host.ip(&["link", "add", "bridge0", "type", "bridge"]);
    host.ip(&["addr", "add", "198.19.50.1/24", "dev", "bridge0"]);
    host.ip(&[
        "link", "add", "port0", "type", "veth", "peer", "name", "port0p",
    ]);
    host.ip(&["link", "set", "port0", "master", "bridge0"]);
    host.ip(&["link", "set", "bridge0", "up"]);
    // A bridge without an address, and an interface that is no bridge.
    host.ip(&["link", "add", "bridge1", "type", "bridge"]);
    lab.start();
    let found = bridge_view(&lab, "bridge0");
    assert_eq!(found, r#"addrs ["198.19.50.1/24"] ports ["port0@port0p"]"#);

    // Refused, in one line, changing nothing.
    let before = lab.snapshot();
    let err = lab.fails(&[
        "network",
        "create",
        "b0",
        "--bridge",
        "bridge0",
        "--subnet",
        "198.19.51.0/24",
    ]);
    assert!(
        err.contains("bridge bridge0 has 198.19.50.1/24: give its subnet 198.19.50.0/24"),
        "{err}"
    );
    let err = lab.fails(&["network", "create", "b0", "--bridge", "port0"]);
    assert!(
        err.contains("interface port0 already exists (not a bridge)"),
        "{err}"
    );
    let err = lab.fails(&[
        "network",
        "create",
        "b0",
        "--bridge",
        "bridge0",
        "--internal",
        "--gateway-mode",
        "isolated",
    ]);
    assert!(err.contains("gateway mode isolated"), "{err}");
    assert_eq!(lab.snapshot(), before);

    // Subnet and gateway from its address; endpoints on it reach the world (masquerade).
    lab.ok(&["network", "create", "b0", "--bridge", "bridge0"]);
    let net: serde_json::Value =
        serde_json::from_str(&lab.ok(&["network", "inspect", "b0"])).unwrap();
    assert_eq!(net["subnet"], "198.19.50.0/24", "{net}");
    assert_eq!(net["gateway"], "198.19.50.1", "{net}");
    assert_eq!(net["adopted"]["address_added"], false, "{net}");
    assert!(program_on(&lab, "bridge0"));
    let ns = lab.netns_name("a");
    lab.ok(&[
        "endpoint",
        "create",
        "e1",
        "--network",
        "b0",
        "--netns",
        &ns,
    ]);
    for dst in ["198.19.50.1", "198.18.0.1"] {
        let ping = lab.exec_in(&ns, "ping", &["-c", "1", "-W", "3", dst]);
        assert!(ping.status.success(), "ping {dst}: {}", lab.log());
    }
    assert_eq!(lab.stat("uplink_egress", "snat"), 1, "masqueraded once");

    // Removed: the bridge is left with its address and port, without bridgenet's program.
    lab.ok(&["endpoint", "rm", "e1"]);
    lab.ok(&["network", "rm", "b0"]);
    assert_eq!(bridge_view(&lab, "bridge0"), found);
    assert!(!program_on(&lab, "bridge0"));

    // A bridge without an address gets the gateway's, and loses it with the network.
    lab.ok(&[
        "network",
        "create",
        "b1",
        "--bridge",
        "bridge1",
        "--subnet",
        "198.19.52.0/24",
    ]);
    assert_eq!(
        bridge_view(&lab, "bridge1"),
        r#"addrs ["198.19.52.1/24"] ports []"#
    );
    lab.ok(&["network", "rm", "b1"]);
    assert_eq!(bridge_view(&lab, "bridge1"), "addrs [] ports []");

    // daemon --cleanup leaves an adopted bridge as found too.
    lab.ok(&["network", "create", "b0", "--bridge", "bridge0"]);
    lab.ok(&[
        "network",
        "create",
        "b1",
        "--bridge",
        "bridge1",
        "--subnet",
        "198.19.52.0/24",
    ]);
    lab.stop(bridgenet_tests::control::Stop::Term);
    lab.cleanup();
    assert_eq!(bridge_view(&lab, "bridge0"), found);
    assert_eq!(bridge_view(&lab, "bridge1"), "addrs [] ports []");
    assert!(!program_on(&lab, "bridge0"));
}

/// The host namespace's global IPv6 addresses on bridge `br`.
fn addrs6(lab: &ControlLab, br: &str) -> Vec<String> {
    let out = lab
        .topo
        .ns("host")
        .ip(&["-6", "-o", "addr", "show", "dev", br, "scope", "global"]);
    out.split_whitespace()
        .filter(|w| w.contains('/'))
        .map(str::to_owned)
        .collect()
}

/// Adopting a bridge for a dual-stack network: its IPv6 address in the network's IPv6 subnet
/// is the IPv6 gateway (another one given is refused in one line), an endpoint on it reaches
/// that gateway over IPv6, and `network rm` leaves the address; a bridge without one gets the
/// IPv6 gateway's, and loses it with the network.
#[test]
fn an_existing_bridge_is_adopted_for_a_dual_stack_network() {
    let mut lab = ControlLab::prepared();
    let host = lab.topo.ns("host");
    for br in ["bridge2", "bridge3"] {
        host.ip(&["link", "add", br, "type", "bridge"]);
        host.sysctl(&format!("net.ipv6.conf.{br}.disable_ipv6"), "0");
    }
    host.ip(&["addr", "add", "198.19.54.1/24", "dev", "bridge2"]);
    host.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:54::1/64",
        "dev",
        "bridge2",
        "nodad",
    ]);
    host.ip(&["link", "set", "bridge2", "up"]);
    lab.start();

    let before = lab.snapshot();
    let err = lab.fails(&[
        "network",
        "create",
        "b2",
        "--bridge",
        "bridge2",
        "--ipv6",
        "--subnet",
        "2001:db8:54::/64",
        "--gateway",
        "2001:db8:54::9",
    ]);
    assert!(
        err.contains(
            "bridge bridge2 has 2001:db8:54::1/64: give its IPv6 gateway 2001:db8:54::1 or none"
        ),
        "{err}"
    );
    assert_eq!(lab.snapshot(), before);

    lab.ok(&[
        "network",
        "create",
        "b2",
        "--bridge",
        "bridge2",
        "--ipv6",
        "--subnet",
        "2001:db8:54::/64",
    ]);
    let net: serde_json::Value =
        serde_json::from_str(&lab.ok(&["network", "inspect", "b2"])).unwrap();
    assert_eq!(net["subnet"], "198.19.54.0/24", "{net}");
    assert_eq!(net["gateway6"], "2001:db8:54::1", "{net}");
    assert_eq!(
        net["adopted"]["address6_added"],
        serde_json::Value::Null,
        "{net}"
    );
    let ns = lab.netns_name("a");
    lab.ok(&[
        "endpoint",
        "create",
        "e1",
        "--network",
        "b2",
        "--netns",
        &ns,
    ]);
    let reached = (0..10).any(|_| {
        let ping = lab.exec_in(&ns, "ping", &["-6", "-c", "1", "-W", "1", "2001:db8:54::1"]);
        ping.status.success()
    });
    assert!(
        reached,
        "e1 pings the adopted bridge's IPv6 address: {}",
        lab.log()
    );
    lab.ok(&["endpoint", "rm", "e1"]);
    lab.ok(&["network", "rm", "b2"]);
    assert_eq!(addrs6(&lab, "bridge2"), ["2001:db8:54::1/64"]);

    lab.ok(&[
        "network",
        "create",
        "b3",
        "--bridge",
        "bridge3",
        "--ipv6",
        "--subnet",
        "198.19.55.0/24",
        "--subnet",
        "2001:db8:55::/64",
    ]);
    let net: serde_json::Value =
        serde_json::from_str(&lab.ok(&["network", "inspect", "b3"])).unwrap();
    assert_eq!(net["adopted"]["address6_added"], true, "{net}");
    assert_eq!(addrs6(&lab, "bridge3"), ["2001:db8:55::1/64"]);
    lab.ok(&["network", "rm", "b3"]);
    assert!(addrs6(&lab, "bridge3").is_empty());
}
