//! Endpoint modes, as Docker's `--network none` and `--network container:NAME`.
//!
//! Host only (xtask keeps `host_*` binaries out of the emulated kernels): these modes are
//! namespaces and links the daemon makes or joins, with no program of their own; the datapath
//! they lead to is tested on every kernel by the other files.
use bridgenet_tests::control::ControlLab;
use bridgenet_tests::traffic::{echo_once, roundtrip};

#[test]
fn mode_none_and_container() {
    let mut lab = ControlLab::up();
    let web = lab.netns_name("web");
    let alone = lab.netns_name("alone");
    lab.ok(&[
        "endpoint",
        "create",
        "web",
        "--network",
        "bridge",
        "--netns",
        &web,
        "-p",
        "8080:80",
    ]);
    // container:web shares web's namespace and address; no --netns needed.
    assert_eq!(
        lab.ok(&["endpoint", "create", "sidecar", "--mode", "container:web"]),
        "sidecar 172.17.0.2\n"
    );
    let sidecar: serde_json::Value =
        serde_json::from_str(&lab.ok(&["endpoint", "inspect", "sidecar"])).unwrap();
    assert_eq!(sidecar["netns"], web.as_str());
    assert_eq!(sidecar["network"], "bridge");
    assert_eq!(sidecar["mode"]["container"], "web");
    // none: lo only, up.
    lab.ok(&[
        "endpoint", "create", "alone", "--mode", "none", "--netns", &alone,
    ]);
    let links = lab.exec_in(&alone, "ip", &["-o", "link", "show"]);
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");

    let ls = lab.ok(&["endpoint", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("alone") && l.contains(" none ")),
        "{ls}"
    );
    assert!(
        ls.lines()
            .any(|l| l.starts_with("sidecar") && l.contains("container:web")),
        "{ls}"
    );
    // Another endpoint's address is not taken twice: the next one gets .3.
    let other = lab.netns_name("other");
    assert_eq!(
        lab.ok(&[
            "endpoint",
            "create",
            "other",
            "--network",
            "bridge",
            "--netns",
            &other
        ]),
        "other 172.17.0.3\n"
    );

    // A server in the shared namespace answers on web's published port.
    let server = echo_once(&web, "0.0.0.0:80");
    roundtrip(lab.topo.ns("world").name(), "198.18.0.2:8080");
    server.join().unwrap();

    // Ports are published on the namespace's owner; the owner goes last.
    let err = lab.fails(&["port", "publish", "sidecar", "9090:90"]);
    assert!(err.contains("publish on web"), "{err}");
    let err = lab.fails(&["port", "publish", "alone", "9090:90"]);
    assert!(err.contains("mode none"), "{err}");
    let err = lab.fails(&["endpoint", "rm", "web"]);
    assert!(err.contains("shares its namespace with sidecar"), "{err}");
    lab.ok(&["endpoint", "rm", "sidecar"]);
    lab.ok(&["endpoint", "rm", "web"]);
    lab.ok(&["endpoint", "rm", "alone"]);
    assert!(!std::path::Path::new("/run/netns").join(&alone).exists());
}
