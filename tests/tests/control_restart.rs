//! Restarts: the daemon stopped with SIGTERM or SIGKILL comes back with its networks,
//! endpoints and published ports, keeps established flows, and repairs what someone else
//! deleted while it was down.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use bridgenet_tests::control::{ControlLab, Stop};
use bridgenet_tests::layout_v1::downgrade_pins;
use bridgenet_tests::sockets;
use bridgenet_tests::topology::enter;

const TIMEOUT: Duration = Duration::from_secs(5);

/// An echo server in `netns` that serves every connection until the test ends.
fn echo_server(netns: &str, bind: &str) {
    let listener = enter(netns, || sockets::tcp_listener(bind));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.expect("accept");
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn connect(netns: &str, to: &str) -> TcpStream {
    let to: SocketAddr = to.parse().unwrap();
    let stream = enter(netns, || {
        TcpStream::connect_timeout(&to, TIMEOUT).expect("connect")
    });
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

fn echo(stream: &mut TcpStream, what: &str) {
    stream.write_all(what.as_bytes()).expect("send");
    let mut back = vec![0u8; what.len()];
    stream
        .read_exact(&mut back)
        .unwrap_or_else(|err| panic!("{what}: no echo: {err}"));
    assert_eq!(back, what.as_bytes());
}

fn setup(lab: &mut ControlLab) -> String {
    let ns = lab.netns_name("ep");
    lab.ok(&["network", "create", "other", "--subnet", "10.50.0.0/24"]);
    lab.ok(&[
        "endpoint",
        "create",
        "ep",
        "--network",
        "bridge",
        "--netns",
        &ns,
        "-p",
        "8080:80",
    ]);
    echo_server(&ns, "0.0.0.0:80");
    echo_server(lab.topo.ns("world").name(), "198.18.0.1:7000");
    ns
}

fn restart_keeps_everything(how: Stop) {
    let mut lab = ControlLab::up();
    let ns = setup(&mut lab);
    let world = lab.topo.ns("world").name().to_owned();
    // One flow through DNAT and one through masquerade, established before the restart.
    let mut inbound = connect(&world, "198.18.0.2:8080");
    let mut outbound = connect(&ns, "198.18.0.1:7000");
    echo(&mut inbound, "before, in");
    echo(&mut outbound, "before, out");
    let before = lab.snapshot();
    // An endpoint removed right before the stop: its veth, deleted after the answer, is gone
    // after the restart all the same (SIGTERM: before the daemon exits; SIGKILL: at the
    // latest by the next start's reconcile), which the snapshot shows.
    let gone = lab.netns_name("gone");
    lab.ok(&[
        "endpoint",
        "create",
        "gone",
        "--network",
        "bridge",
        "--netns",
        &gone,
    ]);
    lab.ok(&["endpoint", "rm", "gone"]);

    lab.stop(how);
    if let Stop::Term = how {
        let links = lab.topo.ns("host").ip(&["-o", "link"]);
        assert!(
            !links.contains("ve-gone"),
            "left behind by SIGTERM: {links}"
        );
    }
    lab.start();

    assert_eq!(before, lab.snapshot(), "the restart changed the state");
    assert_eq!(lab.ok(&["port", "ls", "ep"]), "80/tcp -> 0.0.0.0:8080\n");
    // The established flows go on (conntrack lives in the pinned maps), with no reset.
    echo(&mut inbound, "after, in");
    echo(&mut outbound, "after, out");
    // And new ones work.
    echo(&mut connect(&world, "198.18.0.2:8080"), "new, in");
    echo(&mut connect(&ns, "198.18.0.1:7000"), "new, out");
}

#[test]
fn sigterm_restart_keeps_networks_endpoints_ports_and_flows() {
    restart_keeps_everything(Stop::Term);
}

#[test]
fn sigkill_restart_keeps_networks_endpoints_ports_and_flows() {
    restart_keeps_everything(Stop::Kill);
}

/// `bpftool map update pinned MAP key KEY value VALUE` (bytes; every CPU's for a per-CPU map).
fn bpftool_update(map: &Path, key: &[&str], value: &[&str]) {
    let out = std::process::Command::new("bpftool")
        .args(["map", "update", "pinned"])
        .arg(map)
        .arg("key")
        .args(key)
        .arg("value")
        .args(value)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn restart_repairs_what_others_deleted_and_removes_what_is_stale() {
    let mut lab = ControlLab::up();
    let ns = setup(&mut lab);
    lab.stop(Stop::Kill);

    let host = lab.topo.ns("host");
    // Someone deletes the endpoint's veth and the other network's bridge...
    host.ip(&["link", "del", "ve-ep"]);
    host.ip(&["link", "del", "bn-other"]);
    // ...and leaves a bridge that looks like bridgenet's and a stale published port
    // (0.0.0.0:7777/tcp -> 172.17.0.99:77) in the pinned map.
    host.ip(&["link", "add", "bn-stale", "type", "bridge"]);
    host.ip(&["link", "set", "bn-stale", "alias", "bridgenet"]);
    let publish = lab.bpffs().join("PUBLISH");
    bpftool_update(
        &publish,
        &["0", "0", "0", "0", "0x1e", "0x61", "6", "0"],
        &["172", "17", "0", "99", "0", "77", "0", "0"],
    );
    // ...and a fast path into 172.17.0.99, an endpoint that is no more (veth 9999, bridge 1).
    let peers = lab.bpffs().join("ENDPOINT_PEERS");
    let mut value = vec!["0x0f", "0x27", "0", "0", "1", "0", "0", "0"];
    value.extend(["0"; 16]);
    bpftool_update(&peers, &["172", "17", "0", "99"], &value);

    lab.start();

    let host = lab.topo.ns("host");
    let links = host.ip(&["-o", "link"]);
    assert!(links.contains("ve-ep@"), "the veth is back: {links}");
    assert!(links.contains("bn-other"), "the bridge is back: {links}");
    assert!(
        !links.contains("bn-stale"),
        "the stale bridge is gone: {links}"
    );
    let addr = host.ip(&["-o", "addr", "show", "dev", "bn-other"]);
    assert!(addr.contains("10.50.0.1/24"), "{addr}");
    let dump = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&publish)
        .output()
        .unwrap();
    let entries: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(
        entries.as_array().unwrap().len(),
        1,
        "only 8080 stays published: {entries}"
    );
    // The fast path goes into the endpoint's new veth, and nowhere else.
    let dump = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&peers)
        .output()
        .unwrap();
    let entries: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    // bpftool prints bytes as hex strings ("0xac").
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect()
    };
    assert_eq!(bytes(&entries[0]["key"]), [172, 17, 0, 2], "{entries:?}");
    let veth = host.ifindex("ve-ep").to_le_bytes();
    for v in entries[0]["values"].as_array().unwrap() {
        assert_eq!(bytes(&v["value"])[..4], veth, "into ve-ep: {entries:?}");
    }
    // The endpoint is reachable through its published port and reaches the world again.
    let world = lab.topo.ns("world").name().to_owned();
    echo(&mut connect(&world, "198.18.0.2:8080"), "repaired, in");
    let mut out = connect(&ns, "198.18.0.1:7000");
    echo(&mut out, "repaired, out");
    let peer = out.local_addr().unwrap();
    assert_eq!(
        peer.ip(),
        Ipv4Addr::new(172, 17, 0, 2),
        "same address as before"
    );
}

/// kill -9 twenty times (three under emulation, where a start takes 10 to 20 s) while two flows
/// (one through DNAT, one through masquerade) carry traffic, also while the daemon is down: no
/// flow sees a reset or loses data.
#[test]
fn kill_9_during_traffic_again_and_again_resets_no_flow() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let mut lab = ControlLab::up();
    let ns = setup(&mut lab);
    let world = lab.topo.ns("world").name().to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = |mut stream: TcpStream, tag: &'static str| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                echo(&mut stream, &format!("{tag} {n}"));
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };
    let inbound = traffic(connect(&world, "198.18.0.2:8080"), "in");
    let outbound = traffic(connect(&ns, "198.18.0.1:7000"), "out");
    let kills = bridgenet_tests::repetitions(20, 3);
    for _ in 0..kills {
        lab.stop(Stop::Kill);
        // Traffic goes on while no daemon runs.
        std::thread::sleep(Duration::from_millis(50));
        lab.start();
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let n_in = inbound.join().expect("the inbound flow broke");
    let n_out = outbound.join().expect("the outbound flow broke");
    assert!(
        n_in > 20 && n_out > 20,
        "too little traffic: {n_in} in, {n_out} out"
    );
    eprintln!("{kills} restarts under traffic: {n_in} inbound and {n_out} outbound echoes");
}

/// An upgrade from a daemon of layout v1: its pins (made here from the live ones, as that
/// daemon would have left them) are migrated, and the flows established before go on.
#[test]
fn an_upgrade_from_layout_v1_pins_keeps_established_flows() {
    let mut lab = ControlLab::up();
    let ns = setup(&mut lab);
    let world = lab.topo.ns("world").name().to_owned();
    let mut inbound = connect(&world, "198.18.0.2:8080");
    let mut outbound = connect(&ns, "198.18.0.1:7000");
    echo(&mut inbound, "before, in");
    echo(&mut outbound, "before, out");

    lab.stop(Stop::Kill);
    let entries = downgrade_pins(&lab.bpffs());
    assert!(entries >= 4, "{entries} conntrack entries");
    lab.start();

    let log = lab.log();
    let line =
        format!("pinned map CONNTRACK: layout v1 -> v3: {entries} entries migrated, 0 dropped");
    assert!(log.contains(&line), "no {line:?} in the log:\n{log}");
    assert!(log.contains("pinned map STATS: layout v1 -> v2: "), "{log}");
    assert!(
        log.contains("pinned map CT_USAGE: layout v1 -> v3: "),
        "{log}"
    );
    assert!(
        log.contains("pinned map EMBRYOS: layout v1 -> v2: 0 entries migrated, 0 dropped"),
        "{log}"
    );
    for old in ["CONNTRACK", "STATS", "CT_USAGE", "EMBRYOS"] {
        assert!(!lab.bpffs().join(old).exists(), "the v1 pin {old} is left");
    }
    echo(&mut inbound, "after, in");
    echo(&mut outbound, "after, out");
    echo(&mut connect(&world, "198.18.0.2:8080"), "new, in");
    echo(&mut connect(&ns, "198.18.0.1:7000"), "new, out");
    assert!(
        lab.stat("uplink_ingress", "dnat") > 0,
        "counters carried over"
    );
}
