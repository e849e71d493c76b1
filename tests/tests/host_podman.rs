//! Podman with bridgenet as its network: Debian's podman 4.3 (CNI backend) run in the control
//! lab's host namespace with its own storage, run dir, containers.conf and CNI config
//! directory (a bridgenet conflist; the plugin directory holds only `bridgenet-cni` and the
//! reference `loopback`), a busybox image made with `podman import`, real traffic from the
//! world namespace.
//!
//! Host kernel only (the runner keeps `host_*` binaries out of the emulated kernels): what is
//! tested is Podman's CNI calls and their translation into the daemon's operations, which do
//! not depend on the kernel version; the matrix covers the datapath they drive.
use std::{
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use bridgenet_tests::{
    cni,
    control::{ControlLab, UPLINK6, WORLD6},
    http::{self, client_of, get},
};

const HOST: &str = "198.18.0.2";

struct PodmanLab {
    lab: ControlLab,
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl PodmanLab {
    fn up() -> Self {
        Self::up_with(serde_json::json!({}))
    }

    /// The lab with `extra` keys in bridgenet-cni's configuration (`subnet6`, ...).
    fn up_with(extra: serde_json::Value) -> Self {
        let lab = ControlLab::up();
        let this = Self { lab };
        let plugins = this.path("cni-plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        std::os::unix::fs::symlink(cni::binary(), plugins.join("bridgenet-cni")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/cni/loopback", plugins.join("loopback")).unwrap();
        std::fs::write(
            this.path("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = []\n[network]\ncni_plugin_dirs = [\"{}\"]\n",
                plugins.display()
            ),
        )
        .unwrap();
        // No registry: the image is imported, and nothing is pulled.
        std::fs::write(
            this.path("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        std::fs::create_dir_all(this.path("net.d")).unwrap();
        let mut plugin = serde_json::json!({
            "type": "bridgenet-cni",
            "network": "podman-bn",
            "subnet": "198.19.20.0/24",
            "socket": this.lab.socket(),
            "capabilities": {"portMappings": true, "ips": true, "mac": true},
        });
        for (key, value) in extra.as_object().unwrap() {
            plugin[key] = value.clone();
        }
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "bn",
            "plugins": [plugin],
        });
        std::fs::write(
            this.path("net.d/bridgenet.conflist"),
            serde_json::to_string_pretty(&conflist).unwrap(),
        )
        .unwrap();
        let root = this.path("image");
        http::busybox_root(&root);
        let tar = this.path("bb.tar");
        http::tar(&root, &tar);
        this.podman_ok(&[
            "import",
            "--change",
            "EXPOSE 80",
            &tar.display().to_string(),
            "bb",
        ]);
        this
    }

    fn path(&self, name: &str) -> PathBuf {
        self.lab.dir.path().join(name)
    }

    /// podman in the host namespace with its own storage and configuration (runtimes.md).
    fn podman(&self, args: &[&str]) -> Output {
        let d = self.lab.dir.path().display().to_string();
        Command::new("nsenter")
            .arg(format!(
                "--net=/run/netns/{}",
                self.lab.topo.ns("host").name()
            ))
            .arg("podman")
            .args([
                "--root",
                &format!("{d}/root"),
                "--runroot",
                &format!("{d}/run"),
            ])
            .args([
                "--network-backend",
                "cni",
                "--cni-config-dir",
                &format!("{d}/net.d"),
            ])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(["--storage-driver", "vfs", "--tmpdir", &format!("{d}/tmp")])
            .args(args)
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .output()
            .expect("running podman")
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {} failed: {}\nbridgenet log:\n{}",
            args.join(" "),
            text(&out),
            self.lab.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `podman run -d --network bn ARGS bb httpd`: the container's ID.
    fn run_httpd(&self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d", "--network", "bn"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["bb", "httpd", "-f", "-p", "80", "-h", "/www"]);
        self.podman_ok(&all)
    }

    /// GET that must succeed, retried for a few seconds while the container starts.
    fn get_ok(&self, ns: &str, url: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(body) = get(ns, url) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "GET {url} from {ns} failed\nbridgenet log:\n{}",
                self.lab.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn world(&self) -> String {
        self.lab.topo.ns("world").name().to_owned()
    }
}

impl Drop for PodmanLab {
    fn drop(&mut self) {
        // Podman's containers (and their namespaces) go before the lab's daemon and namespaces.
        let out = self.podman(&["rm", "-af", "-t", "0"]);
        if !out.status.success() {
            eprintln!("podman rm -af: {}", text(&out));
        }
    }
}

#[test]
fn podman_runs_publishes_and_removes_through_bridgenet() {
    let lab = PodmanLab::up();
    assert!(lab.podman_ok(&["network", "ls"]).contains("bn"));

    // -p 8080:80: from the world, with the client's address.
    let web = lab.run_httpd(&["-p", "8080:80"]);
    let url = format!("http://{HOST}:8080/cgi-bin/ip");
    assert_eq!(client_of(&lab.get_ok(&lab.world(), &url)), "198.18.0.1");
    assert_eq!(lab.podman_ok(&["port", &web]), "80/tcp -> 0.0.0.0:8080");
    let ports = lab.lab.ok(&["port", "ls"]);
    assert!(
        ports.contains(&format!("cni-{}: 80/tcp -> 0.0.0.0:8080", &web[..12])),
        "{ports}"
    );

    // -p 127.0.0.1:8081:80: the host only.
    lab.run_httpd(&["-p", "127.0.0.1:8081:80"]);
    let host = lab.lab.topo.ns("host").name().to_owned();
    assert_eq!(
        lab.get_ok(&host, "http://127.0.0.1:8081/index.html"),
        "hello from busybox"
    );
    assert_eq!(
        get(&lab.world(), &format!("http://{HOST}:8081/index.html")),
        None
    );

    // -P: the image's EXPOSE 80 on a port Podman drew; `podman port` and bridgenet agree.
    let drawn = lab.run_httpd(&["-P"]);
    let line = lab.podman_ok(&["port", &drawn]);
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("podman port: {line:?}"));
    assert!(
        lab.lab
            .ok(&["port", "ls"])
            .contains(&format!("0.0.0.0:{port}"))
    );
    let url_p = format!("http://{HOST}:{port}/cgi-bin/ip");
    assert_eq!(client_of(&lab.get_ok(&lab.world(), &url_p)), "198.18.0.1");

    // rm -f closes the port and removes the endpoint.
    lab.podman_ok(&["rm", "-f", "-t", "0", &web]);
    assert_eq!(get(&lab.world(), &url), None);
    assert!(!lab.lab.ok(&["port", "ls"]).contains(":8080"));
    assert!(!lab.lab.ok(&["endpoint", "ls"]).contains(&web[..12]));

    // No iptables or nftables rule in the namespace.
    let rules = lab.lab.topo.ns("host").exec("iptables-save", &[]);
    assert!(!rules.contains("-A "), "iptables rules: {rules}");
    let nft = lab.lab.topo.ns("host").exec("nft", &["list", "ruleset"]);
    assert!(nft.trim().is_empty(), "nftables rules: {nft}");
}

/// A dual-stack network (`subnet6` in the conflist): `--ip`, `--ip6`, `--mac-address` and
/// `-p 8080:80` as Podman's own networks take them. The world reaches the port over IPv6 and IPv4, each with its own
/// address; Podman shows the IPv6 address bridgenet gave; rm closes both families.
#[test]
fn podman_dual_stack_containers_publish_on_both_families() {
    let lab = PodmanLab::up_with(serde_json::json!({"subnet6": "2001:db8:20::/64"}));
    lab.lab.ipv6_to_world();
    let web = lab.run_httpd(&["--ip6", "2001:db8:20::99", "-p", "8080:80"]);
    let url6 = format!("http://[{UPLINK6}]:8080/cgi-bin/ip");
    assert_eq!(client_of(&lab.get_ok(&lab.world(), &url6)), WORLD6);
    let url = format!("http://{HOST}:8080/cgi-bin/ip");
    assert_eq!(client_of(&lab.get_ok(&lab.world(), &url)), "198.18.0.1");
    let shown = lab.podman_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.bn.GlobalIPv6Address}}",
        &web,
    ]);
    assert_eq!(shown, "2001:db8:20::99");
    let ports = lab.lab.ok(&["port", "ls"]);
    assert!(
        ports.contains(&format!("cni-{}: 80/tcp -> [::]:8080", &web[..12])),
        "{ports}"
    );
    // Podman sends one static address and the MAC in CNI_ARGS, two addresses as `ips`.
    let fixed = lab.run_httpd(&["--ip", "198.19.20.77", "--mac-address", "02:00:c6:13:14:4d"]);
    let both = lab.run_httpd(&["--ip", "198.19.20.78", "--ip6", "2001:db8:20::78"]);
    for (id, v4, v6) in [
        (&fixed, "198.19.20.77", "2001:db8:20::2"),
        (&both, "198.19.20.78", "2001:db8:20::78"),
    ] {
        let shown = lab.podman_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.bn.IPAddress}} \
             {{.NetworkSettings.Networks.bn.GlobalIPv6Address}}",
            id,
        ]);
        assert_eq!(shown, format!("{v4} {v6}"));
    }
    let mac = lab.podman_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.bn.MacAddress}}",
        &fixed,
    ]);
    assert_eq!(mac, "02:00:c6:13:14:4d");

    lab.podman_ok(&["rm", "-f", "-t", "0", &web]);
    assert_eq!(get(&lab.world(), &url6), None);
    assert!(!lab.lab.ok(&["port", "ls"]).contains(":8080"));
}
