//! `bridgenet status` on every kernel (tcx or netlink, XDP attach modes differ): healthy with
//! everything attached; a program that someone else displaced is named and the exit status
//! is non-zero; healthy again once the daemon put it back.
use std::time::{Duration, Instant, SystemTime};

use bridgenet::datapath::{Datapath, tcx_supported};
use bridgenet_tests::{control::ControlLab, kernel_note, topology::enter, traffic::refused};
use serde_json::Value;

fn status(lab: &ControlLab) -> (bool, Value, String) {
    let out = lab.cli(&["status", "--json"]);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "status --json: {err}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn program<'a>(s: &'a Value, program: &str, iface: &str) -> &'a Value {
    s["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["program"] == program && p["iface"] == iface)
        .unwrap_or_else(|| panic!("{program} on {iface} in {s:#}"))
}

#[test]
fn status_names_a_displaced_program_until_the_daemon_puts_it_back() {
    let unix_ms = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let started = unix_ms();
    let mut lab = ControlLab::up();
    lab.endpoint("ep1", &[]);
    // A known drop: the world straight to an endpoint.
    let world = lab.topo.ns("world").name().to_owned();
    lab.exec_in(
        &world,
        "ip",
        &["route", "add", "172.17.0.0/16", "via", "198.18.0.2"],
    );
    assert!(refused(&world, "172.17.0.2:81"));

    let (ok, s, stderr) = status(&lab);
    assert!(ok, "status: {stderr}\n{s:#}");
    assert_eq!(s["problems"], serde_json::json!([]));
    let tc_mode = if tcx_supported() { "tcx" } else { "netlink" };
    // Endpoint veths take netlink filters on every kernel (a tcx attach waits for RCU).
    for (p, iface, mode) in [
        ("uplink_ingress", "uplink0", tc_mode),
        ("uplink_egress", "uplink0", tc_mode),
        ("bridge_ingress", "bridgenet0", tc_mode),
        ("endpoint_ingress", "ve-ep1", "netlink"),
    ] {
        let row = program(&s, p, iface);
        assert_eq!(row["attached"], true, "{row}");
        assert_eq!(row["mode"], mode, "{row}");
    }
    let xdp = program(&s, "uplink_xdp", "uplink0");
    assert_eq!(xdp["attached"], true);
    let xdp_mode = xdp["mode"].as_str().unwrap().to_owned();
    assert!(
        xdp_mode == "xdp native" || xdp_mode == "xdp generic",
        "{xdp}"
    );
    assert_eq!(s["uplinks"][0]["name"], "uplink0");
    assert_eq!(s["uplinks"][0]["addr"], "198.18.0.2");
    assert_eq!(s["uplinks"][0]["xdp"], xdp_mode.trim_start_matches("xdp "));
    let ct = s["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "CONNTRACK")
        .unwrap();
    assert_eq!(ct["layout_version"], 3);
    assert_eq!(s["conntrack"]["limit"], 262_144);
    // The daemon's first GC pass runs at its start; the bench lines passes up by their end.
    let gc = &s["conntrack"]["last_gc"];
    let ended = gc["ended_unix_ms"].as_u64().unwrap_or(0);
    assert!((started..=unix_ms()).contains(&ended), "{gc}");
    let drops = s["drops"].as_array().unwrap();
    assert!(
        drops
            .iter()
            .any(|d| d["outcome"] == "drop_endpoint_direct" && d["count"].as_u64() > Some(0)),
        "the drop in the last minute: {drops:?}"
    );
    kernel_note!("tc attach mode {tc_mode}, uplink_xdp {xdp_mode}");
    eprintln!("{}", lab.ok(&["status"]));

    // Someone detaches uplink_xdp and puts an XDP program of their own on the uplink: the
    // daemon cannot attach its own again while that one holds the hook.
    lab.freeze(true);
    lab.detach_link("uplink_xdp", "uplink0");
    let host = lab.topo.ns("host").name().to_owned();
    let mut intruder = Datapath::load().unwrap();
    enter(&host, || intruder.attach_xdp_count("uplink0").unwrap());
    lab.freeze(false);
    std::thread::sleep(Duration::from_secs(2));
    let (ok, s, stderr) = status(&lab);
    assert!(!ok, "status passed with uplink_xdp displaced: {s:#}");
    assert!(
        stderr.contains("uplink_xdp is not attached to uplink0"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(program(&s, "uplink_xdp", "uplink0")["attached"], false);
    assert_eq!(s["uplinks"][0]["xdp"], "detached");
    assert_eq!(program(&s, "uplink_ingress", "uplink0")["attached"], true);
    let text = lab.cli(&["status"]);
    assert!(!text.status.success());
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("UNHEALTHY"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    // The intruder goes: the daemon attaches uplink_xdp again by itself, and status is
    // healthy.
    drop(intruder);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, s, stderr) = status(&lab);
        if ok {
            assert_eq!(program(&s, "uplink_xdp", "uplink0")["attached"], true);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still unhealthy: {stderr}\n{}",
            lab.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Logged once while it could not be put back, then once when it was.
    let log = lab.log();
    for (line, times) in [
        ("uplink_xdp was detached from uplink0 by someone else", 1),
        ("uplink_xdp on uplink0: cannot attach it again", 1),
        ("uplink_xdp is attached to uplink0 again", 1),
    ] {
        assert_eq!(log.matches(line).count(), times, "{line}:\n{log}");
    }
}
