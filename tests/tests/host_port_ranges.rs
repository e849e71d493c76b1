//! Huge port ranges through the daemon (issue 10, item 10): `endpoint create --expose 1-60000
//! -P`, 60,000-port publishes and their refusals are answered within seconds, and the daemon
//! answers other calls meanwhile (the quadratic checks of old took many minutes).
//!
//! Host only (xtask keeps `host_*` binaries out of the emulated kernels): the daemon's port
//! bookkeeping does not depend on the kernel, and a time bound means nothing under software
//! emulation, where a debug build runs about ten times slower (17 s there for what takes 4 s
//! here).
use std::time::{Duration, Instant};

use bridgenet_tests::control::{ControlLab, Stop};

#[test]
fn input_large_port_ranges_are_quick() {
    let mut lab = ControlLab::up();
    // 64,512 host ports to draw from, in the lab's host namespace only.
    let host = lab.topo.ns("host").name().to_owned();
    let out = lab.exec_in(
        &host,
        "sysctl",
        &["-w", "net.ipv4.ip_local_port_range=1024 65535"],
    );
    assert!(out.status.success(), "sysctl: {out:?}");
    let ns = lab.netns_name("big");
    // Generous for a debug build on a busy machine (serde alone takes seconds for 60,000
    // ports unoptimized); the quadratic checks took many minutes.
    let bound = Duration::from_secs(10);

    // 60,000 exposed ports, each published on a drawn host port; the daemon answers other
    // calls meanwhile.
    let create = std::thread::scope(|s| {
        let create = s.spawn(|| {
            let start = Instant::now();
            let out = lab.cli(&[
                "endpoint",
                "create",
                "big",
                "--network",
                "bridge",
                "--netns",
                &ns,
                "--expose",
                "1-60000",
                "-P",
            ]);
            (out, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let out = lab.cli(&["network", "ls"]);
        let other = start.elapsed();
        eprintln!("network ls during the create: {other:?}");
        assert!(out.status.success(), "network ls: {out:?}");
        assert!(
            other < bound,
            "network ls waited {other:?} during the create"
        );
        create.join().unwrap()
    });
    let (out, took) = create;
    eprintln!("endpoint create --expose 1-60000 -P: {took:?}");
    assert!(
        out.status.success(),
        "endpoint create --expose 1-60000 -P: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < bound,
        "endpoint create --expose 1-60000 -P took {took:?}"
    );
    let ports = lab.json(&["port", "ls", "big"]);
    let ports = ports.as_array().unwrap();
    assert_eq!(ports.len(), 60_000);
    let mut host_ports: Vec<u64> = ports
        .iter()
        .map(|p| p["host_port"].as_u64().unwrap())
        .collect();
    host_ports.sort_unstable();
    host_ports.dedup();
    assert_eq!(host_ports.len(), 60_000, "a host port was drawn twice");
    assert!(
        host_ports.iter().all(|p| (1024..=65535).contains(p)),
        "a host port outside the ephemeral range"
    );

    // A large explicit range: the conflict checks are linear.
    let timed = |args: &[&str]| {
        let start = Instant::now();
        let out = lab.cli(args);
        let took = start.elapsed();
        eprintln!("bridgenet {}: {took:?}", args.join(" "));
        assert!(took < bound, "bridgenet {} took {took:?}", args.join(" "));
        out
    };
    let out = timed(&["port", "publish", "big", "1000-61000:1000-61000/udp"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // More drawn ports than are free: refused with one line, quickly.
    let out = timed(&["port", "publish", "big", "1-10000/udp"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.trim_end().lines().count() == 1,
        "{err:?}"
    );
    assert!(err.contains("no free udp host port"), "{err}");
    // A clash inside a large range, found at once.
    let out = timed(&["port", "publish", "big", "2000-62000:1-60001/udp"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already published"), "{err}");
    let out = timed(&["port", "unpublish", "big", "1000-61000/udp"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = timed(&["endpoint", "rm", "big"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.stop(Stop::Term);
}
