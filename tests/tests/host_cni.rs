//! The CNI plugin driven as a runtime drives it (environment, JSON on stdin, a real namespace
//! per container), against a daemon in the control lab. Host kernel only: the protocol and
//! the daemon's bookkeeping do not depend on the kernel, and the matrix covers the datapath
//! that the endpoints use.
use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
    time::Duration,
};

use bridgenet_tests::{
    cni::{self, Answer, attachment},
    control::{ControlLab, Stop, UPLINK6, WORLD6},
    traffic::{echo_once, roundtrip, roundtrip_within, seen},
};
use serde_json::{Value, json};

/// A configuration of network `net` on 198.19.N.0/24, with the lab's socket.
fn conf(lab: &ControlLab, version: &str, net: &str, subnet: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": net,
        "type": "bridgenet-cni",
        "subnet": subnet,
        "socket": lab.socket(),
        "capabilities": {"portMappings": true},
    })
}

/// A container namespace as a runtime makes it (`ip netns add`); its path.
fn container_netns(lab: &mut ControlLab, tag: &str) -> (String, String) {
    let name = lab.netns_name(tag);
    let out = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = format!("/run/netns/{name}");
    (name, path)
}

/// The IPv4 addresses (CIDR) and MAC of `ifname` in namespace `ns`.
fn inside(ns: &str, ifname: &str) -> (Vec<String>, String) {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "addr", "show", "dev", ifname])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no {ifname} in {ns}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        Command::new("ip")
            .args(["-n", ns, "link"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let link = &v[0];
    let addrs = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    (addrs, link["address"].as_str().unwrap().to_owned())
}

fn with_ports(mut conf: Value, ports: Value) -> Value {
    conf["runtimeConfig"] = json!({ "portMappings": ports });
    conf
}

fn endpoint_of(lab: &ControlLab, container: &str) -> Option<Value> {
    lab.json(&["endpoint", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cni"]["container_id"] == container)
        .cloned()
}

#[test]
fn version_and_errors_without_a_daemon() {
    let gone = json!({"cniVersion": "1.1.0", "name": "n", "type": "bridgenet-cni",
                      "socket": "/nonexistent/bridgenet.sock"});
    let v = cni::call("VERSION", &[], &json!({"cniVersion": "1.0.0"}));
    assert_eq!(
        v.ok()["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );
    assert_eq!(v.ok()["cniVersion"], "1.0.0");
    // The daemon cannot be reached: STATUS says 50, the others "try again later".
    assert_eq!(cni::call("STATUS", &[], &gone).code(), 50);
    let env = attachment("c0", "eth0", "/run/netns/none");
    assert_eq!(cni::call("ADD", &env, &gone).code(), 11);
    assert_eq!(cni::call("DEL", &env, &gone).code(), 11);
    assert_eq!(cni::call("GC", &[], &gone).code(), 11);
    // A bad environment: 7.
    assert_eq!(
        cni::call_raw(None, &env, gone.to_string().as_bytes()).code(),
        7
    );
    assert_eq!(cni::call("FROB", &env, &gone).code(), 7);
    assert_eq!(cni::call("ADD", &env[1..], &gone).code(), 7);
    assert_eq!(cni::call("ADD", &env[..2], &gone).code(), 7);
    for bad in [
        attachment("../c0", "eth0", "/run/netns/none"),
        attachment("c0", "a-name-far-too-long", "/run/netns/none"),
        attachment("c0", "eth0", "relative"),
    ] {
        assert_eq!(cni::call("ADD", &bad, &gone).code(), 7, "{bad:?}");
    }
    // Not JSON: 6; a version it does not take: 1; a bad capability: 4.
    assert_eq!(cni::call_raw(Some("ADD"), &env, b"{").code(), 6);
    let mut old = gone.clone();
    old["cniVersion"] = json!("0.3.1");
    assert_eq!(cni::call("ADD", &env, &old).code(), 1);
    let sctp = with_ports(
        gone.clone(),
        json!([{"hostPort": 9, "containerPort": 9, "protocol": "sctp"}]),
    );
    assert_eq!(cni::call("ADD", &env, &sctp).code(), 4);
}

#[test]
fn add_check_del_gc_with_real_traffic() {
    let mut lab = ControlLab::up();
    let (ns1, path1) = container_netns(&mut lab, "c1");
    let (ns2, path2) = container_netns(&mut lab, "c2");
    let base = conf(&lab, "1.0.0", "pods", "198.19.7.0/24");
    assert_eq!(cni::call("STATUS", &[], &base).out, Value::Null);
    cni::call("STATUS", &[], &base).ok();

    // DEL before any ADD: nothing to do, success.
    cni::call("DEL", &attachment("c1", "eth0", &path1), &base).ok();

    // ADD with Podman's spelling of portMappings.
    let podman = with_ports(
        base.clone(),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]),
    );
    let env1 = attachment("c1", "eth0", &path1);
    let result = cni::call("ADD", &env1, &podman).ok().clone();
    assert_eq!(result["cniVersion"], "1.0.0");
    let address = result["ips"][0]["address"].as_str().unwrap().to_owned();
    assert_eq!(address, "198.19.7.2/24");
    assert_eq!(result["ips"][0]["gateway"], "198.19.7.1");
    assert_eq!(
        result["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": "198.19.7.1"})
    );
    assert_eq!(result["interfaces"][0]["name"], "eth0");
    assert_eq!(result["interfaces"][0]["sandbox"], path1.as_str());
    let (addrs, mac) = inside(&ns1, "eth0");
    assert_eq!(addrs, [address.as_str()]);
    assert_eq!(result["interfaces"][0]["mac"], mac.as_str());
    // The endpoint with the container ID, and its port.
    let ep = endpoint_of(&lab, "c1").expect("c1's endpoint");
    assert_eq!(ep["name"], "cni-c1");
    assert_eq!(
        lab.ok(&["port", "ls", "cni-c1"]),
        "80/tcp -> 0.0.0.0:8080\n"
    );
    assert!(lab.ok(&["endpoint", "ls"]).contains("c1"));

    // The world reaches the published port; the container sees the client.
    let server = echo_once(&ns1, "0.0.0.0:80");
    roundtrip(lab.topo.ns("world").name(), "198.18.0.2:8080");
    assert_eq!(server.join().unwrap().ip(), Ipv4Addr::new(198, 18, 0, 1));

    // containerd CRI's capitalised keys, on interface net1 of another container; 0.4.0.
    let mut cri = with_ports(
        base.clone(),
        json!([{"HostPort": 8081, "ContainerPort": 81, "Protocol": "TCP", "HostIP": "198.18.0.2"},
               {"HostPort": 5353, "ContainerPort": 53, "Protocol": "UDP"}]),
    );
    cri["cniVersion"] = json!("0.4.0");
    let env2 = attachment("c2", "net1", &path2);
    let result2 = cni::call("ADD", &env2, &cri).ok().clone();
    assert_eq!(result2["ips"][0]["version"], "4");
    let (addrs2, _) = inside(&ns2, "net1");
    assert_eq!(addrs2, [result2["ips"][0]["address"].as_str().unwrap()]);
    assert_eq!(
        lab.ok(&["port", "ls", "cni-c2-net1"]),
        "81/tcp -> 198.18.0.2:8081\n53/udp -> 0.0.0.0:5353\n"
    );
    let server = echo_once(&ns2, "0.0.0.0:81");
    roundtrip(lab.topo.ns("world").name(), "198.18.0.2:8081");
    server.join().unwrap();

    // CHECK with ADD's result passes; a removed veth is noticed.
    let mut checked = base.clone();
    checked["prevResult"] = result.clone();
    cni::call("CHECK", &env1, &checked).ok();
    let mut no_prev = base.clone();
    no_prev.as_object_mut().unwrap().remove("prevResult");
    assert_eq!(cni::call("CHECK", &env1, &no_prev).code(), 4);
    let veth = ep["veth"].as_str().unwrap();
    lab.topo.ns("host").ip(&["link", "del", veth]);
    let broken = cni::call("CHECK", &env1, &checked);
    assert_eq!(broken.code(), 101, "{}", broken.out);
    assert!(
        broken.out["msg"].as_str().unwrap().contains(veth),
        "{}",
        broken.out
    );
    // Unknown attachment: 3.
    assert_eq!(
        cni::call("CHECK", &attachment("nope", "eth0", &path1), &checked).code(),
        3
    );

    // DEL, twice; the port is free again.
    cni::call("DEL", &env1, &base).ok();
    cni::call("DEL", &env1, &base).ok();
    assert!(endpoint_of(&lab, "c1").is_none());
    assert!(!lab.ok(&["port", "ls"]).contains("8080"));

    // GC keeps what is valid and removes the rest.
    // The ips and mac capabilities.
    let (ns3, path3) = container_netns(&mut lab, "c3");
    let mut chosen = base.clone();
    chosen["runtimeConfig"] = json!({"ips": ["198.19.7.33/24"], "mac": "02:00:c6:13:07:21"});
    let result3 = cni::call("ADD", &attachment("c3", "eth0", &path3), &chosen)
        .ok()
        .clone();
    assert_eq!(result3["ips"][0]["address"], "198.19.7.33/24");
    assert_eq!(
        inside(&ns3, "eth0"),
        (
            vec!["198.19.7.33/24".to_owned()],
            "02:00:c6:13:07:21".to_owned()
        )
    );
    let mut gc = base.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c2", "ifname": "net1"}]);
    cni::call("GC", &[], &gc).ok();
    assert!(endpoint_of(&lab, "c3").is_none());
    assert!(endpoint_of(&lab, "c2").is_some());
}

#[test]
fn a_network_with_other_settings_is_refused_and_nothing_changes() {
    let mut lab = ControlLab::up();
    let (_, path1) = container_netns(&mut lab, "c1");
    let base = conf(&lab, "1.0.0", "pods", "198.19.8.0/24");
    cni::call("ADD", &attachment("c1", "eth0", &path1), &base).ok();
    let (_, path2) = container_netns(&mut lab, "c2");
    let before = lab.snapshot();
    let env2 = attachment("c2", "eth0", &path2);
    let refused = |conf: &Value, expect: &str, code: u64| {
        let a: Answer = cni::call("ADD", &env2, conf);
        assert_eq!(a.code(), code, "{}", a.out);
        assert!(a.out["msg"].as_str().unwrap().contains(expect), "{}", a.out);
    };
    let mut other = base.clone();
    other["subnet"] = json!("198.19.9.0/24");
    refused(&other, "subnet 198.19.8.0/24", 4);
    let mut other = base.clone();
    other["icc"] = json!(false);
    refused(&other, "icc", 4);
    let mut other = base.clone();
    other["gatewayMode"] = json!("routed");
    refused(&other, "exists with gatewayMode nat", 4);
    let mut other = base.clone();
    other["gatewayMode"] = json!("bogus");
    refused(&other, "invalid gateway mode", 4);
    let mut other = base.clone();
    other["gatewayMode6"] = json!("bogus");
    refused(&other, "gatewayMode6: invalid gateway mode", 4);
    let mut other = base.clone();
    other["mtu"] = json!(1400);
    refused(&other, "mtu", 4);
    let mut other = base.clone();
    other["nonMasqueradeCIDRs"] = json!(["198.18.0.0/15"]);
    refused(&other, "nonMasqueradeCIDRs", 4);
    let ports = with_ports(
        base.clone(),
        json!([{"hostPort": 70000, "containerPort": 80}]),
    );
    refused(&ports, "hostPort", 6);
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn del_and_add_across_a_daemon_restart() {
    let mut lab = ControlLab::up();
    let (ns1, path1) = container_netns(&mut lab, "c1");
    let (_, path2) = container_netns(&mut lab, "c2");
    let mut base = conf(&lab, "1.1.0", "pods", "198.19.10.0/24");
    base["mtu"] = json!(1400);
    let env1 = attachment("c1", "eth0", &path1);
    cni::call("ADD", &env1, &base).ok();
    let mtu = |ns: &str, dev: &str| {
        let out = Command::new("ip")
            .args(["-n", ns, "-j", "link", "show", "dev", dev])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["mtu"].as_u64().unwrap()
    };
    assert_eq!(mtu(&ns1, "eth0"), 1400);
    let host = lab.topo.ns("host").name().to_owned();
    assert_eq!(mtu(&host, "ve-cni-c1"), 1400);
    lab.stop(Stop::Kill);
    assert_eq!(cni::call("STATUS", &[], &base).code(), 50);
    assert_eq!(
        cni::call("ADD", &attachment("c2", "eth0", &path2), &base).code(),
        11
    );
    lab.start();
    cni::call("STATUS", &[], &base).ok();
    let result = cni::call("ADD", &attachment("c2", "eth0", &path2), &base)
        .ok()
        .clone();
    assert_eq!(result["ips"][0]["address"], "198.19.10.3/24");
    // The runtime removed c1's namespace before DEL: DEL still succeeds.
    let out = Command::new("ip")
        .args(["netns", "del", &ns1])
        .output()
        .unwrap();
    assert!(out.status.success());
    cni::call("DEL", &env1, &base).ok();
    assert!(endpoint_of(&lab, "c1").is_none());
    cni::call("DEL", &env1, &base).ok();
}

/// The IPv6 addresses (CIDR, global scope) of `ifname` in namespace `ns`.
fn inside6(ns: &str, ifname: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            "-n", ns, "-6", "-j", "addr", "show", "dev", ifname, "scope", "global",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["addr_info"]
        .as_array()
        .map(|a| {
            // `ip -j` lists the addresses a filter left out as empty objects.
            a.iter()
                .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
                .collect()
        })
        .unwrap_or_default()
}

/// A dual-stack network through CNI: `subnet6` beside `subnet`, the `ips` capability with an
/// address of each family, a result with both and a default route per family; an empty
/// `hostIP` publishes on both families (as Podman's own networks do), and real IPv6 traffic
/// comes in through the port with the client's address and goes out masqueraded with the
/// uplink's. A configuration whose IPv6 settings differ from the network's is refused.
#[test]
fn a_dual_stack_network_through_cni() {
    let mut lab = ControlLab::up();
    lab.ipv6_to_world();
    let world = lab.topo.ns("world").name().to_owned();
    let (ns1, path1) = container_netns(&mut lab, "c1");
    let mut dual = conf(&lab, "1.0.0", "pods6", "198.19.12.0/24");
    dual["subnet6"] = json!("2001:db8:12::/64");
    let mut add = dual.clone();
    add["runtimeConfig"] = json!({
        "ips": ["198.19.12.9/24", "2001:db8:12::9/64"],
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}],
    });
    let env1 = attachment("c1", "eth0", &path1);
    let result = cni::call("ADD", &env1, &add).ok().clone();
    assert_eq!(
        result["ips"],
        json!([
            {"address": "198.19.12.9/24", "gateway": "198.19.12.1", "interface": 0},
            {"address": "2001:db8:12::9/64", "gateway": "2001:db8:12::1", "interface": 0},
        ])
    );
    assert_eq!(
        result["routes"],
        json!([
            {"dst": "0.0.0.0/0", "gw": "198.19.12.1"},
            {"dst": "::/0", "gw": "2001:db8:12::1"},
        ])
    );
    assert_eq!(inside6(&ns1, "eth0"), ["2001:db8:12::9/64"]);
    assert_eq!(
        lab.ok(&["port", "ls", "cni-c1"]),
        "80/tcp -> 0.0.0.0:8080\n80/tcp -> [::]:8080\n"
    );

    // In over IPv6 and over IPv4, each with the client's own address.
    assert_eq!(
        seen(&ns1, "[::]:80", &world, &format!("[{UPLINK6}]:8080")),
        WORLD6.parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        seen(&ns1, "0.0.0.0:80", &world, "198.18.0.2:8080"),
        Ipv4Addr::new(198, 18, 0, 1)
    );
    // Out over IPv6, masqueraded with the uplink's address.
    assert_eq!(
        seen(&world, "[::]:9000", &ns1, &format!("[{WORLD6}]:9000")),
        UPLINK6.parse::<IpAddr>().unwrap()
    );

    // CHECK with ADD's result passes; the container's IPv6 address removed, it fails.
    let mut checked = dual.clone();
    checked["prevResult"] = result.clone();
    cni::call("CHECK", &env1, &checked).ok();
    let out = Command::new("ip")
        .args([
            "-n",
            &ns1,
            "addr",
            "del",
            "2001:db8:12::9/64",
            "dev",
            "eth0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let broken = cni::call("CHECK", &env1, &checked);
    assert_eq!(broken.code(), 101, "{}", broken.out);
    assert_eq!(
        broken.out["msg"],
        "endpoint cni-c1: interface eth0 lacks its address 2001:db8:12::9/64"
    );

    // Other IPv6 settings than the network's, or IPv6 in the IPv4 keys: one line, nothing made.
    let (_, path2) = container_netns(&mut lab, "c2");
    let env2 = attachment("c2", "eth0", &path2);
    let before = lab.snapshot();
    for (key, value, expect) in [
        (
            "subnet6",
            "2001:db8:13::/64",
            "network pods6 exists with subnet6 2001:db8:12::/64, the configuration says \
             2001:db8:13::/64",
        ),
        (
            "gateway6",
            "2001:db8:12::fe",
            "network pods6 exists with gateway6 2001:db8:12::1, the configuration says \
             2001:db8:12::fe",
        ),
        (
            "subnet",
            "2001:db8:12::/64",
            "subnet 2001:db8:12::/64: an IPv6 subnet goes in subnet6",
        ),
    ] {
        let mut other = dual.clone();
        other[key] = json!(value);
        let a = cni::call("ADD", &env2, &other);
        assert_eq!(a.code(), 4, "{}", a.out);
        assert_eq!(a.out["msg"], expect);
    }
    let mut two = dual.clone();
    two["runtimeConfig"] = json!({"ips": ["2001:db8:12::20/64", "2001:db8:12::21/64"]});
    assert_eq!(cni::call("ADD", &env2, &two).code(), 4);
    assert_eq!(lab.snapshot(), before);

    // A single static address and the MAC in CNI_ARGS, as Podman's CNI backend sends them.
    let mut args = env2.clone();
    args.push((
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAME=c2;IP=2001:db8:12::20;MAC=02:00:c6:13:0c:14",
    ));
    let result2 = cni::call("ADD", &args, &dual).ok().clone();
    assert_eq!(result2["ips"][1]["address"], "2001:db8:12::20/64");
    assert_eq!(result2["interfaces"][0]["mac"], "02:00:c6:13:0c:14");

    // DEL closes the port on both families.
    cni::call("DEL", &env1, &dual).ok();
    assert!(!lab.ok(&["port", "ls"]).contains("8080"));
    assert!(
        roundtrip_within(&world, &format!("[{UPLINK6}]:8080"), Duration::from_secs(2)).is_err()
    );
}

/// An IPv6-only network through CNI (`"ipv4": false` with `subnet6`, as Docker 28's
/// `--ipv4=false`): a result with only the IPv6 address and route, no IPv4 address inside, a
/// port with an empty `hostIP` published on `[::]` only, real traffic in with the client's
/// address and out masqueraded. A configuration that leaves `ipv4` out attaches to it too;
/// one that says otherwise, or gives an IPv4 subnet with it, is refused and changes nothing.
#[test]
fn an_ipv6_only_network_through_cni() {
    let mut lab = ControlLab::up();
    lab.ipv6_to_world();
    let world = lab.topo.ns("world").name().to_owned();
    let (ns1, path1) = container_netns(&mut lab, "c1");
    let mut only6 = conf(&lab, "1.0.0", "pods6only", "");
    only6.as_object_mut().unwrap().remove("subnet");
    only6["ipv4"] = json!(false);
    only6["subnet6"] = json!("2001:db8:14::/64");
    let ports = json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]);
    let env1 = attachment("c1", "eth0", &path1);
    let result = cni::call("ADD", &env1, &with_ports(only6.clone(), ports))
        .ok()
        .clone();
    assert_eq!(
        result["ips"],
        json!([{"address": "2001:db8:14::2/64", "gateway": "2001:db8:14::1", "interface": 0}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "::/0", "gw": "2001:db8:14::1"}])
    );
    assert_eq!(
        inside(&ns1, "eth0").0,
        Vec::<String>::new(),
        "no IPv4 address"
    );
    assert_eq!(inside6(&ns1, "eth0"), ["2001:db8:14::2/64"]);
    assert_eq!(lab.ok(&["port", "ls", "cni-c1"]), "80/tcp -> [::]:8080\n");
    let network: Value =
        serde_json::from_str(&lab.ok(&["network", "inspect", "pods6only"])).unwrap();
    assert!(network.get("subnet").is_none(), "{network}");
    assert_eq!(network["subnet6"], "2001:db8:14::/64");

    // In over IPv6 with the client's address; out masqueraded with the uplink's.
    assert_eq!(
        seen(&ns1, "[::]:80", &world, &format!("[{UPLINK6}]:8080")),
        WORLD6.parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        seen(&world, "[::]:9000", &ns1, &format!("[{WORLD6}]:9000")),
        UPLINK6.parse::<IpAddr>().unwrap()
    );
    let mut checked = only6.clone();
    checked["prevResult"] = result.clone();
    cni::call("CHECK", &env1, &checked).ok();

    // A configuration without `ipv4` attaches to the existing IPv6-only network.
    let (ns2, path2) = container_netns(&mut lab, "c2");
    let env2 = attachment("c2", "eth0", &path2);
    let mut plain = only6.clone();
    plain.as_object_mut().unwrap().remove("ipv4");
    let result2 = cni::call("ADD", &env2, &plain).ok().clone();
    assert_eq!(result2["ips"][0]["address"], "2001:db8:14::3/64");
    assert_eq!(result2["ips"].as_array().unwrap().len(), 1);
    assert_eq!(inside(&ns2, "eth0").0, Vec::<String>::new());

    // Said otherwise: one line each, nothing made.
    let (_, path3) = container_netns(&mut lab, "c3");
    let env3 = attachment("c3", "eth0", &path3);
    let before = lab.snapshot();
    let mut dual = only6.clone();
    dual["ipv4"] = json!(true);
    let mut with_subnet = conf(&lab, "1.0.0", "other6only", "198.19.14.0/24");
    with_subnet["ipv4"] = json!(false);
    with_subnet["subnet6"] = json!("2001:db8:15::/64");
    let mut without_subnet6 = conf(&lab, "1.0.0", "other6only", "");
    without_subnet6.as_object_mut().unwrap().remove("subnet");
    without_subnet6["ipv4"] = json!(false);
    for (conf, expect) in [
        (
            dual,
            "network pods6only exists with ipv4 false, the configuration says true",
        ),
        (with_subnet, "--ipv4=false: 198.19.14.0/24 is IPv4"),
        (
            without_subnet6,
            "--ipv4=false needs --ipv6 and an IPv6 --subnet",
        ),
    ] {
        let a = cni::call("ADD", &env3, &conf);
        assert_eq!(a.code(), 4, "{}", a.out);
        assert_eq!(a.out["msg"], expect);
    }
    assert_eq!(lab.snapshot(), before);

    cni::call("DEL", &env1, &only6).ok();
    cni::call("DEL", &env2, &plain).ok();
    assert!(!lab.ok(&["port", "ls"]).contains("8080"));
}
