//! The API and the store under bad input (issue 10, item 10): raw malformed requests get the
//! JSON error shape (huge port ranges: `host_port_ranges.rs`), a second daemon on the same state
//! dir is refused, mismatched stores are refused or repaired with one line each, and a daemon
//! started through `ip netns exec` warns and can be cleaned up after.
//!
//! Host only (xtask keeps `host_*` binaries out of the emulated kernels): the API's and the store's
//! answers to bad input are decided before the datapath is touched and do not depend on the
//! kernel's version, which the matrix tests through the datapath, attach and restart tests.
use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    time::Duration,
};

use bridgenet_tests::control::{ControlLab, Stop};

/// Sends one raw HTTP/1.1 request over the daemon's socket; returns the status, the
/// content type and the body.
fn raw(
    lab: &ControlLab,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut stream = UnixStream::connect(lab.socket()).expect("connecting to the daemon");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: bridgenet\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        request.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reading the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Checks that an answer is an error in the API's one shape, `{"error": "one line"}`, whose
/// message contains `expect`.
fn json_error(answer: &(u16, String, String), expect: &str, what: &str) {
    let (status, content_type, body) = answer;
    assert!(
        (400..500).contains(status),
        "{what}: status {status}, body {body:?}"
    );
    assert_eq!(
        content_type, "application/json",
        "{what}: not JSON (status {status}, body {body:?})"
    );
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: body {body:?}: {e}"));
    let object = value.as_object().expect("an object");
    assert_eq!(object.len(), 1, "{what}: {body}");
    let message = object["error"].as_str().expect("a message");
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "{what}: {message:?}"
    );
    assert!(
        message.to_lowercase().contains(&expect.to_lowercase()),
        "{what}: expected {expect:?} in {message:?}"
    );
}

/// A raw request (method, path, content type, body), the text its error must contain, and
/// what it tries.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, &'a str, &'a str);

#[test]
fn input_api_errors_are_json() {
    let lab = ControlLab::up();
    let json = Some("application/json");
    let good = r#"{"name":"x","subnet":null,"gateway":null,"bridge":null,"icc":true,"internal":false,"masquerade":true}"#;
    // The daemon's own errors: the shape every other answer must have.
    json_error(
        &raw(&lab, "GET", "/networks/nope", None, ""),
        "no network nope",
        "an unknown network",
    );
    let before = lab.snapshot();
    let cases: &[Case] = &[
        (
            "POST",
            "/networks",
            json,
            "{\"name\": ",
            "EOF",
            "truncated JSON",
        ),
        (
            "POST",
            "/networks",
            json,
            "not json",
            "expected",
            "not JSON",
        ),
        (
            "POST",
            "/networks",
            json,
            r#"{"name":5,"subnet":null,"gateway":null,"bridge":null,"icc":true,"internal":false,"masquerade":true}"#,
            "name",
            "a wrong type",
        ),
        (
            "POST",
            "/networks",
            json,
            r#"{"name":"x","icc":true}"#,
            "missing field",
            "a missing field",
        ),
        (
            "POST",
            "/networks",
            json,
            r#"{"name":"x","subnet":null,"gateway":null,"bridge":null,"icc":true,"internal":false,"masquerade":true,"colour":"red"}"#,
            "colour",
            "an unknown field",
        ),
        (
            "POST",
            "/networks",
            Some("text/plain"),
            good,
            "content-type",
            "a wrong content type",
        ),
        (
            "POST",
            "/networks",
            None,
            good,
            "content-type",
            "no content type",
        ),
        (
            "POST",
            "/endpoints/x/publish",
            json,
            "[]",
            "PortSpecs",
            "a wrong shape",
        ),
        ("GET", "/nope", None, "", "/nope", "an unknown path"),
        ("DELETE", "/networks", None, "", "DELETE", "a wrong method"),
        (
            "GET",
            "/ports?endpoint=a&endpoint=b",
            None,
            "",
            "endpoint",
            "a bad query",
        ),
        (
            "GET",
            "/networks/%FF",
            None,
            "",
            "utf-8",
            "a bad path parameter",
        ),
    ];
    for (method, path, content_type, body, expect, what) in cases {
        let answer = raw(&lab, method, path, *content_type, body);
        json_error(&answer, expect, what);
    }
    assert_eq!(
        before,
        lab.snapshot(),
        "a refused request changed something"
    );
}

#[test]
fn input_second_daemon_on_the_state_dir_is_refused() {
    let lab = ControlLab::up();
    let other = lab.dir.path().join("other.sock");
    for extra in [&[][..], &["--cleanup"]] {
        let (ok, stderr) = lab
            .second_daemon(&other, extra, Duration::from_secs(30))
            .expect("a second daemon on the same state dir still ran after 30 s");
        assert!(!ok, "the second daemon {extra:?} succeeded: {stderr}");
        let last = stderr.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("bridgenet: ") && last.contains("state directory"),
            "{stderr}"
        );
        assert!(!other.exists(), "the second daemon made its socket");
    }
    // The first one is untouched.
    lab.ok(&["network", "inspect", "bridge"]);
}

/// A store as an older or foreign bridgenet might have left it.
fn network(name: &str, third: u8) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "subnet": format!("198.19.{third}.0/24"),
        "gateway": format!("198.19.{third}.1"),
        "bridge": format!("bn-{name}"),
        "icc": true,
        "internal": false,
        "masquerade": true,
    })
}

fn endpoint(name: &str, network: &str, netns: &str, ip: &str, host_port: u16) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "mode": "bridge",
        "network": network,
        "netns": netns,
        "netns_created": true,
        "ip": ip,
        "mac": "02:42:c6:13:00:02",
        "veth": format!("ve-{name}"),
        "exposed": [],
        "ports": [{"proto": "tcp", "port": 80, "host_ip": null, "host_port": host_port}],
    })
}

fn write_store(lab: &ControlLab, store: &str) {
    std::fs::create_dir_all(lab.state_dir()).unwrap();
    std::fs::write(lab.state_dir().join("state.json"), store).unwrap();
}

#[test]
fn input_store_with_dangling_names_is_repaired() {
    let mut lab = ControlLab::prepared();
    let (a, b, c) = (
        lab.netns_name("a"),
        lab.netns_name("b"),
        lab.netns_name("c"),
    );
    let store = serde_json::json!({
        "version": 1,
        "networks": {"good": network("good", 50)},
        "endpoints": {
            "fine": endpoint("fine", "good", &c, "198.19.50.2", 8082),
            "lost1": endpoint("lost1", "gone1", &a, "198.19.60.2", 8080),
            "lost2": endpoint("lost2", "gone2", &b, "198.19.61.2", 8081),
        },
    });
    write_store(&lab, &store.to_string());
    lab.start();
    let log = lab.log();
    assert!(!log.contains("panicked"), "{log}");
    // Every problem reported, one line each.
    for (ep, net) in [("lost1", "gone1"), ("lost2", "gone2")] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("endpoint {ep}")) && l.contains(net))
            .collect();
        assert_eq!(lines.len(), 1, "endpoint {ep}: {log}");
    }
    // The sound part of the store works; the broken endpoints are only removable.
    assert!(lab.topo.ns("host").ip(&["-o", "link"]).contains("ve-fine"));
    assert_eq!(lab.ok(&["port", "ls", "fine"]), "80/tcp -> 0.0.0.0:8082\n");
    let publish = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(lab.bpffs().join("PUBLISH"))
        .output()
        .unwrap();
    let entries: serde_json::Value = serde_json::from_slice(&publish.stdout).unwrap();
    assert_eq!(
        entries.as_array().unwrap().len(),
        1,
        "only fine's port is published: {entries}"
    );
    lab.ok(&["endpoint", "rm", "lost1"]);
    lab.ok(&["endpoint", "rm", "lost2"]);
    lab.stop(Stop::Term);
    lab.start();
    assert!(!lab.log().contains("panicked"));
}

#[test]
fn input_store_without_version_is_upgraded() {
    let mut lab = ControlLab::prepared();
    let store = serde_json::json!({
        "networks": {"good": network("good", 51)},
        "endpoints": {},
    });
    write_store(&lab, &store.to_string());
    lab.start();
    let lines: Vec<String> = lab
        .log()
        .lines()
        .filter(|l| l.contains("schema version"))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "{}", lab.log());
    lab.ok(&["network", "inspect", "good"]);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.state_dir().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(saved["version"], 1, "{saved}");
    lab.stop(Stop::Term);
}

#[test]
fn input_bad_stores_are_refused_with_one_line() {
    let mut lab = ControlLab::prepared();
    let mut unknown = network("good", 52);
    unknown["colour"] = "red".into();
    let cases = [
        (
            serde_json::json!({"version": 1, "networks": {"good": unknown}, "endpoints": {}})
                .to_string(),
            "colour",
        ),
        (
            serde_json::json!({"version": 1, "networks": {}, "endpoints": {}, "extra": 1})
                .to_string(),
            "extra",
        ),
        (
            serde_json::json!({"version": 99, "networks": {}, "endpoints": {}}).to_string(),
            "version 99",
        ),
        ("{\"networks\": {".to_owned(), "state.json"),
        (
            // `subnet` may be absent (an IPv6-only network): the next required field is named.
            serde_json::json!({"version": 1, "networks": {"good": {"name": "good"}}, "endpoints": {}})
                .to_string(),
            "missing field `bridge`",
        ),
    ];
    for (store, expect) in cases {
        write_store(&lab, &store);
        let out = lab.start_refused();
        let errors: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("bridgenet: "))
            .collect();
        assert_eq!(errors.len(), 1, "{store}: {out}");
        assert!(
            errors[0].contains(expect),
            "{store}: expected {expect:?} in {out}"
        );
        assert!(!out.contains("panicked"), "{out}");
        let after = std::fs::read_to_string(lab.state_dir().join("state.json")).unwrap();
        assert_eq!(after, store, "a refused store was changed");
    }
}

#[test]
fn input_daemon_through_ip_netns_exec_warns_and_cleans_up() {
    let mut lab = ControlLab::prepared();
    lab.start_through_ip_netns_exec();
    let warnings: Vec<String> = lab
        .log()
        .lines()
        .filter(|l| l.contains("mount namespace"))
        .map(str::to_owned)
        .collect();
    lab.stop(Stop::Term);
    // The bpf filesystem it mounted went with its mount namespace; --cleanup still works.
    let cleanup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lab.cleanup()));
    assert_eq!(
        warnings.len(),
        1,
        "expected one warning about the private mount namespace:\n{}",
        lab.log()
    );
    assert!(
        cleanup.is_ok(),
        "daemon --cleanup failed after the bpf filesystem went"
    );
    assert!(!lab.state_dir().join("bpffs-mounted").exists());
}

/// A dual-stack internal network and its endpoints: subnet6, gateway6 and ip6 in the API and
/// the listings; the bridge has gateway6, each endpoint's interface its ip6 and the link-local
/// address its MAC gives it, and no default route (the network is internal), also where the namespace
/// turns IPv6 off for new interfaces; the daemon's restart puts a removed gateway6 back and
/// keeps the IPv6 subnet in the datapath; `network rm` takes it out.
#[test]
fn dual_stack_internal_network_and_endpoints() {
    let mut lab = ControlLab::prepared();
    // The daemon's namespace turns IPv6 off for new interfaces: its bridge gets it back.
    lab.topo
        .ns("host")
        .sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    lab.start();
    lab.ok(&[
        "network",
        "create",
        "six",
        "--ipv6",
        "--subnet",
        "2001:db8:5::/64",
        "--subnet",
        "198.18.5.0/24",
        "--internal",
    ]);
    let net = inspect(&lab, "network", "six");
    assert_eq!(net["subnet"], "198.18.5.0/24", "{net}");
    assert_eq!(net["subnet6"], "2001:db8:5::/64", "{net}");
    assert_eq!(net["gateway"], "198.18.5.1", "{net}");
    assert_eq!(net["gateway6"], "2001:db8:5::1", "{net}");
    let ls = lab.ok(&["network", "ls"]);
    let line = ls
        .lines()
        .find(|l| l.starts_with("six "))
        .expect("six listed");
    assert!(
        line.contains("198.18.5.0/24,2001:db8:5::/64") && line.contains("198.18.5.1,2001:db8:5::1"),
        "{ls}"
    );
    // IPv4-only networks show no IPv6 fields.
    let bridge = inspect(&lab, "network", "bridge");
    assert!(bridge.get("subnet6").is_none(), "{bridge}");

    // One endpoint takes the next addresses, one asks for its IPv6 address, in a namespace
    // that turns IPv6 off for new interfaces.
    let ns1 = lab.netns_name("six1");
    let ns2 = lab.netns_name("six2");
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &ns2])
        .status()
        .unwrap();
    assert!(status.success());
    let out = lab.exec_in(
        &ns2,
        "sysctl",
        &["-qw", "net.ipv6.conf.default.disable_ipv6=1"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        lab.ok(&[
            "endpoint",
            "create",
            "e1",
            "--network",
            "six",
            "--netns",
            &ns1
        ]),
        "e1 198.18.5.2 2001:db8:5::2\n"
    );
    assert_eq!(
        lab.ok(&[
            "endpoint",
            "create",
            "e2",
            "--network",
            "six",
            "--netns",
            &ns2,
            "--ip6",
            "2001:db8:5::99",
        ]),
        "e2 198.18.5.3 2001:db8:5::99\n"
    );
    let e1 = inspect(&lab, "endpoint", "e1");
    assert_eq!(e1["ip"], "198.18.5.2", "{e1}");
    assert_eq!(e1["ip6"], "2001:db8:5::2", "{e1}");
    let eps = lab.json(&["endpoint", "ls"]);
    let e2 = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "e2")
        .expect("e2 listed");
    assert_eq!(e2["ip6"], "2001:db8:5::99", "{eps}");
    let ls = lab.ok(&["endpoint", "ls"]);
    assert!(ls.contains("198.18.5.2,2001:db8:5::2"), "{ls}");

    let check = |ns: &str, ip6: &str| {
        let addrs = String::from_utf8_lossy(
            &lab.exec_in(ns, "ip", &["-6", "addr", "show", "dev", "eth0"])
                .stdout,
        )
        .into_owned();
        // Without duplicate address detection: usable at once, never tentative.
        let global = addrs
            .lines()
            .find(|l| l.contains(&format!("inet6 {ip6}/64")))
            .unwrap_or_else(|| panic!("no {ip6} in {addrs}"));
        assert!(!global.contains("tentative"), "{addrs}");
        assert!(addrs.contains("inet6 fe80::"), "{addrs}");
        let routes =
            String::from_utf8_lossy(&lab.exec_in(ns, "ip", &["-6", "route"]).stdout).into_owned();
        // Internal, so no default route (as for IPv4, and as Docker): the subnet's only.
        assert!(routes.contains("2001:db8:5::/64 dev eth0"), "{routes}");
        assert!(!routes.contains("default"), "{routes}");
        let disabled = String::from_utf8_lossy(
            &lab.exec_in(ns, "sysctl", &["-n", "net.ipv6.conf.eth0.disable_ipv6"])
                .stdout,
        )
        .into_owned();
        assert_eq!(disabled.trim(), "0");
    };
    check(&ns1, "2001:db8:5::2");
    check(&ns2, "2001:db8:5::99");
    let host = lab.topo.ns("host");
    let bridge_addrs = host.ip(&["-6", "addr", "show", "dev", "bn-six"]);
    assert!(
        bridge_addrs.contains("inet6 2001:db8:5::1/64"),
        "{bridge_addrs}"
    );
    let subnets6 = |lab: &ControlLab| {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(lab.bpffs().join("SUBNETS6"))
            .output()
            .expect("bpftool");
        assert!(out.status.success());
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(subnets6(&lab), 1);

    // A restart puts the gateway6 someone removed back, and keeps the subnet in the datapath.
    host.ip(&["addr", "del", "2001:db8:5::1/64", "dev", "bn-six"]);
    lab.stop(Stop::Term);
    lab.start();
    let bridge_addrs = lab
        .topo
        .ns("host")
        .ip(&["-6", "addr", "show", "dev", "bn-six"]);
    assert!(
        bridge_addrs.contains("inet6 2001:db8:5::1/64"),
        "{bridge_addrs}"
    );
    assert_eq!(subnets6(&lab), 1);
    assert_eq!(inspect(&lab, "endpoint", "e1")["ip6"], "2001:db8:5::2");
    // A freed address is the next one handed out again.
    lab.ok(&["endpoint", "rm", "e1"]);
    let ns3 = lab.netns_name("six3");
    assert_eq!(
        lab.ok(&[
            "endpoint",
            "create",
            "e3",
            "--network",
            "six",
            "--netns",
            &ns3
        ]),
        "e3 198.18.5.2 2001:db8:5::2\n"
    );
    lab.ok(&["endpoint", "rm", "e3"]);
    lab.ok(&["endpoint", "rm", "e2"]);
    lab.ok(&["network", "rm", "six"]);
    assert_eq!(subnets6(&lab), 0);
}

/// `KIND inspect NAME`, which always prints JSON.
fn inspect(lab: &ControlLab, kind: &str, name: &str) -> serde_json::Value {
    serde_json::from_str(&lab.ok(&[kind, "inspect", name])).expect("JSON")
}
