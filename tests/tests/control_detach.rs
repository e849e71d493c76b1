//! Programs detached by someone else: the rest fails closed while the daemon cannot act (it is
//! frozen with SIGSTOP here), and the daemon puts them back as soon as it can.
use std::time::{Duration, Instant};

use bridgenet::datapath::tcx_supported;
use bridgenet_tests::control::ControlLab;
use bridgenet_tests::kernel_note;
use bridgenet_tests::sockets;
use bridgenet_tests::traffic::{echo_once, refused, roundtrip};

/// Detaches `program` from `iface` the way an operator would: `bpftool link detach` on its
/// pinned link (tcx and XDP), `tc filter del` for a netlink filter (before Linux 6.6).
fn detach(lab: &ControlLab, program: &str, iface: &str, xdp: bool) {
    let prefix = format!("link_{program}_{iface}_");
    let pin = std::fs::read_dir(lab.bpffs())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix));
    let host = lab.topo.ns("host").name().to_owned();
    let out = match pin {
        Some(pin) if xdp || tcx_supported() => std::process::Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(pin.path())
            .output()
            .unwrap(),
        _ => lab.exec_in(&host, "tc", &["filter", "del", "dev", iface, "ingress"]),
    };
    assert!(
        out.status.success(),
        "detaching {program} from {iface}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for_log(lab: &ControlLab, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn detached_programs_fail_closed_then_come_back() {
    let mut lab = ControlLab::up();
    let ns = lab.netns_name("ep1");
    lab.ok(&[
        "endpoint",
        "create",
        "ep1",
        "--network",
        "bridge",
        "--netns",
        &ns,
        "-p",
        "8080:80",
    ]);
    let world = lab.topo.ns("world").name().to_owned();
    // The world knows the way to the endpoints: only the programs keep it out.
    lab.exec_in(
        &world,
        "ip",
        &["route", "add", "172.17.0.0/16", "via", "198.18.0.2"],
    );
    let server = echo_once(&world, "198.18.0.1:7000");
    roundtrip(&ns, "198.18.0.1:7000");
    server.join().unwrap();
    let _listener = bridgenet_tests::topology::enter(&ns, || sockets::tcp_listener("0.0.0.0:81"));
    assert!(refused(&world, "172.17.0.2:81"));
    let xdp_before = lab.stat("uplink_xdp", "drop_endpoint_direct");
    assert!(xdp_before > 0, "uplink_xdp dropped nothing");

    lab.freeze(true);
    detach(&lab, "endpoint_ingress", "ve-ep1", false);
    detach(&lab, "uplink_xdp", "uplink0", true);
    kernel_note!(
        "endpoint_ingress and uplink_xdp detached, tcx: {}",
        tcx_supported()
    );

    // Without endpoint_ingress, what ep1 sends is dropped on the bridge, not routed unchecked.
    let _world_listener =
        bridgenet_tests::topology::enter(&world, || sockets::tcp_listener("198.18.0.1:7001"));
    assert!(refused(&ns, "198.18.0.1:7001"));
    // Without uplink_xdp, uplink_ingress still keeps the world away from the endpoint.
    assert!(refused(&world, "172.17.0.2:81"));

    lab.freeze(false);
    wait_for_log(
        &lab,
        "endpoint_ingress was detached from ve-ep1 by someone else",
    );
    wait_for_log(&lab, "uplink_xdp was detached from uplink0 by someone else");
    assert!(lab.stat("bridge_ingress", "drop_unchecked") > 0);
    // The program's own warning, through aya-log into the daemon's log.
    wait_for_log(&lab, "without the endpoint check: its program is detached");
    assert!(lab.stat("uplink_ingress", "drop_endpoint_direct") > 0);

    // Back: ep1 reaches the world again, the published port answers, and XDP drops again.
    let server = echo_once(&world, "198.18.0.1:7002");
    roundtrip(&ns, "198.18.0.1:7002");
    server.join().unwrap();
    let server = echo_once(&ns, "0.0.0.0:80");
    roundtrip(&world, "198.18.0.2:8080");
    server.join().unwrap();
    assert!(refused(&world, "172.17.0.2:81"));
    assert!(lab.stat("uplink_xdp", "drop_endpoint_direct") > xdp_before);
    // Restored once, not again and again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lab.log().matches("by someone else").count(),
        2,
        "{}",
        lab.log()
    );
}

#[test]
fn uplink_xdp_stays_off_a_veth_uplink_by_default_and_tc_drops_alone() {
    let mut lab = ControlLab::up_with_xdp("auto");
    let ns = lab.netns_name("ep1");
    lab.ok(&[
        "endpoint",
        "create",
        "ep1",
        "--network",
        "bridge",
        "--netns",
        &ns,
    ]);
    assert!(lab.log().contains("without uplink_xdp"), "{}", lab.log());
    let host = lab.topo.ns("host").name().to_owned();
    let link = lab.exec_in(&host, "ip", &["-d", "link", "show", "uplink0"]);
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    assert!(!link.contains("xdp"), "{link}");
    // uplink_ingress alone keeps the world away from the endpoint.
    let world = lab.topo.ns("world").name().to_owned();
    lab.exec_in(
        &world,
        "ip",
        &["route", "add", "172.17.0.0/16", "via", "198.18.0.2"],
    );
    let _listener = bridgenet_tests::topology::enter(&ns, || sockets::tcp_listener("0.0.0.0:81"));
    assert!(refused(&world, "172.17.0.2:81"));
    assert!(lab.stat("uplink_ingress", "drop_endpoint_direct") > 0);
    assert_eq!(lab.stat("uplink_xdp", "drop_endpoint_direct"), 0);
}
