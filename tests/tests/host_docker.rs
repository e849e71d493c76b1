//! Docker with bridgenet as its network driver: a real dockerd (Debian's docker.io 20.10)
//! started in the test's host namespace with a private mount namespace (its own data, exec
//! and run dirs, a tmpfs on /run/docker/plugins, vfs storage, no iptables, no bridge), the
//! bridgenet daemon with `--docker` in the same network and mount namespaces, a busybox image
//! made with `docker import`, and real traffic from a world namespace through the uplink.
//!
//! Host kernel only (the runner keeps `host_*` binaries out of the emulated kernels): what is
//! tested here is Docker's calls into the driver and their translation into the daemon's
//! operations, which do not depend on the kernel version; the datapath they drive is covered
//! by the kernel matrix (`netns_*`, `control_*`), and dockerd under software emulation would
//! cost minutes per kernel for nothing more.
use std::{
    io::{Read as _, Write as _},
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use bridgenet_tests::{
    Topology,
    control::binary,
    http::{self, client_of, get, write_www},
    topology,
};

const HOST: &str = "198.18.0.2";

struct DockerLab {
    topo: Topology,
    dir: tempfile::TempDir,
    dockerd: Option<Child>,
    bridgenet: Option<Child>,
    world_httpd: Option<Child>,
}

/// Stops a child we started, by its pid: SIGTERM, then SIGKILL after `grace`.
fn stop(child: &mut Child, grace: Duration) {
    // SAFETY: a signal to a child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl DockerLab {
    fn up() -> Self {
        let mut topo = Topology::new();
        topo.netns("world")
            .netns("host")
            .veth(("world", "eth0"), ("host", "uplink0"))
            .addr("world", "eth0", "198.18.0.1/24")
            .addr("host", "uplink0", "198.18.0.2/24")
            .route("host", "default", "198.18.0.1");
        let dir = tempfile::Builder::new()
            .prefix("bnt-docker-")
            .tempdir()
            .expect("temporary directory");
        let mut lab = Self {
            topo,
            dir,
            dockerd: None,
            bridgenet: None,
            world_httpd: None,
        };
        lab.start_dockerd();
        lab.start_bridgenet();
        lab.import_busybox();
        lab.start_world_httpd();
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn host_netns(&self) -> String {
        format!("/run/netns/{}", self.topo.ns("host").name())
    }

    /// dockerd in the host namespace and a private mount namespace, as runtimes.md shows.
    fn start_dockerd(&mut self) {
        let d = self.dir.path().display().to_string();
        std::fs::write(self.path("daemon.json"), "{}").unwrap();
        let script = format!(
            "mkdir -p /run/docker/plugins && mount -t tmpfs tmpfs /run/docker/plugins && \
             exec nsenter --net={netns} dockerd --config-file {d}/daemon.json \
             --data-root {d}/data --exec-root {d}/exec -H unix://{d}/docker.sock \
             --pidfile {d}/docker.pid --iptables=false --ip-masq=false --bridge=none \
             --storage-driver=vfs",
            netns = self.host_netns()
        );
        let log = std::fs::File::create(self.path("dockerd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        self.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.docker(&["version"]).status.success() {
                return;
            }
            if let Some(status) = self.dockerd.as_mut().unwrap().try_wait().unwrap() {
                self.dockerd = None;
                panic!("dockerd exited ({status}):\n{}", self.log("dockerd.log"));
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer:\n{}",
                self.log("dockerd.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn dockerd_pid(&self) -> String {
        self.dockerd
            .as_ref()
            .expect("dockerd runs")
            .id()
            .to_string()
    }

    /// `bridgenet ARGS` in dockerd's network and mount namespaces.
    fn in_dockerd_namespaces(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.dockerd_pid(), "-m", "-n", "--"])
            .arg(binary());
        cmd
    }

    fn daemon_args(&self) -> Vec<String> {
        let config = self.path("bridgenet.json");
        let json = serde_json::json!({
            "state-dir": self.path("state"),
            "bpffs": self.path("bpffs"),
            "docker": true,
        });
        std::fs::write(&config, json.to_string()).unwrap();
        vec![
            "--socket".into(),
            self.path("bridgenet.sock").display().to_string(),
            "daemon".into(),
            "--config".into(),
            config.display().to_string(),
        ]
    }

    fn start_bridgenet(&mut self) {
        let log = std::fs::File::create(self.path("bridgenet.log")).unwrap();
        let child = self
            .in_dockerd_namespaces()
            .args(self.daemon_args())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting bridgenet");
        self.bridgenet = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .bridgenet_log()
            .contains("/run/docker/plugins/bridgenet.sock")
        {
            if let Some(status) = self.bridgenet.as_mut().unwrap().try_wait().unwrap() {
                self.bridgenet = None;
                panic!("bridgenet exited ({status}):\n{}", self.bridgenet_log());
            }
            assert!(
                Instant::now() < deadline,
                "bridgenet did not start:\n{}",
                self.bridgenet_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn bridgenet_log(&self) -> String {
        self.log("bridgenet.log")
    }

    /// The busybox image (see `http::busybox_root`), imported as `bb`.
    fn import_busybox(&self) {
        let root = self.path("image");
        http::busybox_root(&root);
        let tar = self.path("bb.tar");
        http::tar(&root, &tar);
        self.docker_ok(&["import", &tar.display().to_string(), "bb"]);
    }

    /// The world's own server (198.18.0.1:8000), whose CGI shows the address a request came
    /// from: what masquerade leaves.
    fn start_world_httpd(&mut self) {
        let www = self.path("world-www");
        write_www(&www);
        let child = Command::new("ip")
            .args(["netns", "exec", self.topo.ns("world").name()])
            .args(["busybox", "httpd", "-f", "-p", "8000", "-h"])
            .arg(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the world's httpd");
        self.world_httpd = Some(child);
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.path("docker.sock").display()))
            .args(args)
            .env("DOCKER_CONFIG", self.path("client"))
            .output()
            .expect("running docker")
    }

    fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {} failed: {}\nbridgenet log:\n{}",
            args.join(" "),
            text(&out),
            self.bridgenet_log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn bridgenet(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("--socket")
            .arg(self.path("bridgenet.sock"))
            .args(args)
            .output()
            .expect("running bridgenet")
    }

    fn bridgenet_ok(&self, args: &[&str]) -> String {
        let out = self.bridgenet(args);
        assert!(
            out.status.success(),
            "bridgenet {} failed: {}",
            args.join(" "),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// GET from the world namespace; see `get`.
    fn world_get(&self, url: &str) -> Option<String> {
        get(self.topo.ns("world").name(), url)
    }

    /// GET that must succeed, retried for a few seconds while the container starts.
    fn world_get_ok(&self, url: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(body) = self.world_get(url) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "GET {url} from the world failed\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// What a failed check prints: the daemon's log and counters, the containers' interfaces.
    fn diagnostics(&self) -> String {
        let mut out = format!("bridgenet log:\n{}\n", self.bridgenet_log());
        out += &text(&self.bridgenet(&["stats"]));
        out += &self.topo.ns("host").ip(&["-d", "addr"]);
        let ids = self.docker(&["ps", "-q"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            out += &text(&self.docker(&["exec", id, "ip", "addr"]));
            out += &text(&self.docker(&["exec", id, "ip", "route"]));
        }
        out
    }

    /// The bridgenet endpoint of a container on a Docker network.
    fn endpoint_of(&self, container: &str, network: &str) -> String {
        let id = self.docker_ok(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").EndpointID}}}}"),
            container,
        ]);
        format!("docker-{}", &id[..12])
    }

    fn network_name(&self, network: &str) -> String {
        let id = self.docker_ok(&["network", "inspect", "-f", "{{.Id}}", network]);
        format!("docker-{}", &id[..12])
    }
}

/// GET from namespace `ns` (HTTP/1.0 by hand: Debian's busybox wget crashes here); the body's
/// last line, or None when it fails.
impl Drop for DockerLab {
    fn drop(&mut self) {
        if let Ok(secs) = std::env::var("BNT_DOCKER_PAUSE") {
            // Debugging: time to look at a failed lab before it goes.
            eprintln!("lab {} kept for {secs} s", self.dir.path().display());
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(60)));
        }
        if self.dockerd.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        if let Some(mut child) = self.bridgenet.take() {
            stop(&mut child, Duration::from_secs(10));
        }
        if self.dockerd.is_some() {
            // In dockerd's mount namespace: the bpf filesystem is mounted there.
            let mut args = self.daemon_args();
            args.push("--cleanup".into());
            let _ = self.in_dockerd_namespaces().args(args).output();
        }
        if let Some(mut child) = self.dockerd.take() {
            stop(&mut child, Duration::from_secs(20));
        }
        // The containerd dockerd started, should dockerd have died without stopping it.
        let pidfile = self.path("exec/containerd/containerd.pid");
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<libc::pid_t>().ok())
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            // SAFETY: the containerd of the dockerd this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut child) = self.world_httpd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn docker_run_publishes_through_bridgenet() {
    let lab = DockerLab::up();
    lab.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridgenet",
        "--subnet",
        "198.19.7.0/24",
        "--gateway",
        "198.19.7.1",
        "web",
    ]);
    let network = lab.network_name("web");
    let networks = lab.bridgenet_ok(&["network", "ls"]);
    assert!(networks.contains(&network), "{networks}");
    assert!(networks.contains("198.19.7.0/24"), "{networks}");

    // -p 8080:80 and -p HOST:8081:80; the client's address reaches the container.
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web1",
        "--network",
        "web",
        "-p",
        "8080:80",
        "-p",
        "198.18.0.2:8081:80",
        "-p",
        "127.0.0.1::80",
        "bb",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    assert_eq!(
        lab.world_get_ok(&format!("http://{HOST}:8080/index.html")),
        "hello from busybox"
    );
    assert_eq!(
        client_of(&lab.world_get_ok(&format!("http://{HOST}:8080/cgi-bin/ip"))),
        "198.18.0.1",
        "the container sees the client's address"
    );
    assert_eq!(
        client_of(&lab.world_get_ok(&format!("http://{HOST}:8081/cgi-bin/ip"))),
        "198.18.0.1"
    );
    let web1 = lab.endpoint_of("web1", "web");
    let ports = lab.bridgenet_ok(&["port", "ls", &web1]);
    assert!(ports.contains("80/tcp -> 0.0.0.0:8080"), "{ports}");
    assert!(ports.contains("80/tcp -> 198.18.0.2:8081"), "{ports}");

    // -p 127.0.0.1::80: the host's own processes only (no proxy: bridgenet's host access).
    let listing = lab.bridgenet_ok(&["port", "ls", &web1, "--json"]);
    let entries: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let local = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["host_ip"] == "127.0.0.1")
        .and_then(|e| e["host_port"].as_u64())
        .unwrap_or_else(|| panic!("no 127.0.0.1 port: {listing}"));
    let host_ns = lab.topo.ns("host").name().to_owned();
    assert_eq!(
        get(&host_ns, &format!("http://127.0.0.1:{local}/index.html")).as_deref(),
        Some("hello from busybox"),
        "the host reaches 127.0.0.1:{local}"
    );
    assert!(
        lab.world_get(&format!("http://{HOST}:{local}/index.html"))
            .is_none(),
        "the world must not reach the 127.0.0.1 port {local}"
    );

    let inspect = lab.docker_ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"web\").IPAddress}} {{(index .NetworkSettings.Networks \"web\").Gateway}}",
        "web1",
    ]);
    assert_eq!(inspect, "198.19.7.2 198.19.7.1");

    // Masquerade out: the world sees the host's address.
    let out = lab.docker_ok(&[
        "exec",
        "web1",
        "sh",
        "-c",
        "printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc 198.18.0.1 8000",
    ]);
    assert_eq!(
        client_of(&out),
        HOST,
        "masqueraded with the uplink's address: {out}"
    );

    // -P with --expose: the host port is drawn; Docker cannot show it, bridgenet does.
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "exp",
        "--network",
        "web",
        "--expose",
        "90",
        "-P",
        "bb",
        "httpd",
        "-f",
        "-p",
        "90",
        "-h",
        "/www",
    ]);
    let exp = lab.endpoint_of("exp", "web");
    let listing = lab.bridgenet_ok(&["port", "ls", &exp, "--json"]);
    let entries: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let entry = &entries.as_array().expect("a list")[0];
    assert_eq!(entry["port"], 90, "{listing}");
    let drawn = entry["host_port"].as_u64().expect("a host port");
    assert_eq!(
        client_of(&lab.world_get_ok(&format!("http://{HOST}:{drawn}/cgi-bin/ip"))),
        "198.18.0.1"
    );

    // UDP: -p 5353:53/udp to a python3 echo (the host's /usr, read-only).
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "udp",
        "--network",
        "web",
        "-p",
        "5353:53/udp",
        "-v",
        "/usr:/usr:ro",
        "bb",
        "/usr/bin/python3",
        "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('',53))\n\
         while True:\n d,a=s.recvfrom(512)\n s.sendto(a[0].encode()+b' '+d,a)",
    ]);
    let reply = topology::enter(lab.topo.ns("world").name(), || {
        let sock = UdpSocket::bind("198.18.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..30 {
            sock.send_to(b"ping", (HOST, 5353)).unwrap();
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                return Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from));
            }
        }
        None
    });
    let (reply, from) = reply.expect("a UDP reply through -p 5353:53/udp");
    assert_eq!(
        reply, "198.18.0.1 ping",
        "the echo saw the client's address"
    );
    assert_eq!(from.to_string(), format!("{HOST}:5353"));

    // No iptables or nftables rule in the namespace.
    let host = lab.topo.ns("host");
    let iptables = host.exec("iptables-save", &[]);
    let rules: Vec<&str> = iptables.lines().filter(|l| l.starts_with("-A")).collect();
    assert!(rules.is_empty(), "iptables rules: {rules:?}");
    let nft = host.exec("nft", &["list", "ruleset"]);
    assert!(!nft.contains("rule") && !nft.contains("chain"), "{nft}");

    // A second bridgenet network on the same container (docker network connect): a second
    // interface, and the published ports of the first network keep working.
    lab.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridgenet",
        "--subnet",
        "198.19.13.0/24",
        "web2",
    ]);
    lab.docker_ok(&["network", "connect", "web2", "web1"]);
    let addrs = lab.docker_ok(&["exec", "web1", "ip", "-4", "addr"]);
    assert!(addrs.contains("198.19.13.2/24"), "{addrs}");
    assert!(addrs.contains("198.19.7.2/24"), "{addrs}");
    assert_eq!(
        lab.world_get_ok(&format!("http://{HOST}:8080/index.html")),
        "hello from busybox"
    );
    let endpoints = lab.bridgenet_ok(&["endpoint", "ls"]);
    assert!(
        endpoints.contains(&lab.endpoint_of("web1", "web2")),
        "{endpoints}"
    );
    lab.docker_ok(&["network", "disconnect", "web2", "web1"]);
    lab.docker_ok(&["network", "rm", "web2"]);

    // docker rm -f closes the ports and removes the endpoint.
    lab.docker_ok(&["rm", "-f", "web1"]);
    assert!(
        lab.world_get(&format!("http://{HOST}:8080/index.html"))
            .is_none(),
        "8080 still answers after docker rm -f"
    );
    let ports = lab.bridgenet_ok(&["port", "ls"]);
    assert!(!ports.contains(":8080"), "{ports}");
    let endpoints = lab.bridgenet_ok(&["endpoint", "ls"]);
    assert!(!endpoints.contains(&web1), "{endpoints}");

    // docker network rm: the bridgenet network and its bridge go.
    lab.docker_ok(&["rm", "-f", "exp", "udp"]);
    lab.docker_ok(&["network", "rm", "web"]);
    let networks = lab.bridgenet_ok(&["network", "ls"]);
    assert!(!networks.contains(&network), "{networks}");
    let links = host.ip(&["-br", "link"]);
    assert!(!links.contains("br-"), "{links}");
}

#[test]
fn docker_refused_options_fail_in_one_line_and_change_nothing() {
    let lab = DockerLab::up();
    let before = lab.bridgenet_ok(&["network", "ls"]);
    let out = lab.docker(&[
        "network",
        "create",
        "-d",
        "bridgenet",
        "--subnet",
        "198.19.8.0/24",
        "-o",
        "foo=bar",
        "bad",
    ]);
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("unsupported option foo"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(lab.bridgenet_ok(&["network", "ls"]), before);

    lab.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridgenet",
        "--subnet",
        "198.19.9.0/24",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "quiet",
    ]);
    let name = lab.network_name("quiet");
    let inspect = lab.bridgenet_ok(&["network", "inspect", &name]);
    assert!(inspect.contains("\"icc\": false"), "{inspect}");
    let bridge = format!("br-{}", &name["docker-".len()..]);
    let link = lab.topo.ns("host").ip(&["link", "show", &bridge]);
    assert!(link.contains("mtu 1400"), "{link}");

    // enable_icc=false: containers of the network do not reach each other; the MTU is on
    // the containers' interfaces too.
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "icc1",
        "--network",
        "quiet",
        "bb",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "icc2",
        "--network",
        "quiet",
        "bb",
        "sleep",
        "600",
    ]);
    let icc1 = lab.docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.quiet.IPAddress}}",
        "icc1",
    ]);
    let fetch = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {icc1} 80");
    let out = lab.docker(&["exec", "icc2", "sh", "-c", &fetch]);
    assert!(
        !text(&out).contains("hello from busybox"),
        "icc2 reached icc1 with enable_icc=false: {}",
        text(&out)
    );
    let stats = lab.bridgenet_ok(&["stats"]);
    assert!(stats.contains("drop_icc"), "{stats}");
    // The same request to the world's server goes through: the refusal above is the network's.
    let world = fetch.replace(&format!("{icc1} 80"), "198.18.0.1 8000");
    let out = lab.docker_ok(&["exec", "icc2", "sh", "-c", &world]);
    assert!(out.contains("hello from busybox"), "{out}");
    let link = lab.docker_ok(&["exec", "icc2", "ip", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1400"), "{link}");
    lab.docker_ok(&["rm", "-f", "icc1", "icc2"]);

    // SCTP: refused before the container starts; no endpoint is left.
    let out = lab.docker(&[
        "run",
        "-d",
        "--name",
        "sctp",
        "--network",
        "quiet",
        "-p",
        "5000:5000/sctp",
        "bb",
        "sleep",
        "30",
    ]);
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("SCTP is not supported by bridgenet"), "{err}");
    let endpoints = lab.bridgenet_ok(&["endpoint", "ls"]);
    assert!(!endpoints.contains("docker-"), "{endpoints}");
}

#[test]
fn docker_containers_keep_working_across_a_bridgenet_kill_and_restart() {
    let mut lab = DockerLab::up();
    lab.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridgenet",
        "--subnet",
        "198.19.10.0/24",
        "again",
    ]);
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "one",
        "--network",
        "again",
        "-p",
        "8080:80",
        "bb",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let url = format!("http://{HOST}:8080/index.html");
    assert_eq!(lab.world_get_ok(&url), "hello from busybox");

    let mut child = lab.bridgenet.take().expect("bridgenet runs");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        lab.world_get(&url).as_deref(),
        Some("hello from busybox"),
        "the published port answers while bridgenet is down"
    );
    lab.start_bridgenet();
    assert!(
        lab.bridgenet_log()
            .contains("reconciled 2 networks, 1 endpoints"),
        "{}",
        lab.bridgenet_log()
    );
    assert_eq!(lab.world_get_ok(&url), "hello from busybox");

    // After the restart: a new container, docker rm -f, docker network rm.
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "two",
        "--network",
        "again",
        "-p",
        "8081:80",
        "bb",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    assert_eq!(
        lab.world_get_ok(&format!("http://{HOST}:8081/index.html")),
        "hello from busybox"
    );
    lab.docker_ok(&["rm", "-f", "one"]);
    assert!(
        lab.world_get(&url).is_none(),
        "8080 answers after docker rm -f"
    );
    lab.docker_ok(&["rm", "-f", "two"]);
    lab.docker_ok(&["network", "rm", "again"]);
    let endpoints = lab.bridgenet_ok(&["endpoint", "ls"]);
    assert!(!endpoints.contains("docker-"), "{endpoints}");
}

/// One call of the driver protocol straight to the plugin socket, seen through dockerd's
/// mount namespace; returns the JSON answer.
fn driver_call(lab: &DockerLab, call: &str, body: serde_json::Value) -> serde_json::Value {
    let socket = format!(
        "/proc/{}/root/run/docker/plugins/bridgenet.sock",
        lab.dockerd_pid()
    );
    let mut conn = std::os::unix::net::UnixStream::connect(&socket).expect("the plugin socket");
    let body = body.to_string();
    write!(
        conn,
        "POST /{call} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap_or_else(|e| panic!("{call}: {e}\n{}", lab.bridgenet_log()));
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("{call}: {e}\n{}", lab.bridgenet_log()));
    let (_, json) = response.split_once("\r\n\r\n").expect("an HTTP answer");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{call}: {e}: {response}"))
}

#[test]
fn docker_driver_calls_are_idempotent_and_internal_networks_stay_inside() {
    let lab = DockerLab::up();
    let net = "a".repeat(64);
    let ep = "b".repeat(64);
    let create = serde_json::json!({
        "NetworkID": net, "Options": {"com.docker.network.enable_ipv6": false},
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "198.19.11.0/24",
                      "Gateway": "198.19.11.1/24"}],
        "IPv6Data": []
    });
    let endpoint = serde_json::json!({
        "NetworkID": net, "EndpointID": ep,
        "Interface": {"Address": "198.19.11.2/24", "AddressIPv6": "", "MacAddress": ""},
        "Options": {}
    });
    let portmap = serde_json::json!({
        "NetworkID": net, "EndpointID": ep,
        "Options": {"com.docker.network.portmap": [
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8090, "HostPortEnd": 8090}
        ]}
    });
    let ids = serde_json::json!({"NetworkID": net, "EndpointID": ep});
    // Docker repeats calls after a restart of either side: each answer is the same, no Err.
    for _ in 0..2 {
        assert_eq!(
            driver_call(&lab, "NetworkDriver.CreateNetwork", create.clone()),
            serde_json::json!({})
        );
    }
    for _ in 0..2 {
        let answer = driver_call(&lab, "NetworkDriver.CreateEndpoint", endpoint.clone());
        assert_eq!(
            answer["Interface"]["MacAddress"], "02:42:c6:13:0b:02",
            "{answer}"
        );
    }
    let join = driver_call(&lab, "NetworkDriver.Join", ids.clone());
    assert_eq!(join["Gateway"], "198.19.11.1", "{join}");
    assert_eq!(join["InterfaceName"]["DstPrefix"], "eth", "{join}");
    for _ in 0..2 {
        let answer = driver_call(
            &lab,
            "NetworkDriver.ProgramExternalConnectivity",
            portmap.clone(),
        );
        assert_eq!(answer, serde_json::json!({}));
    }
    let ports = lab.bridgenet_ok(&["port", "ls"]);
    assert_eq!(
        ports.matches("80/tcp -> 0.0.0.0:8090").count(),
        1,
        "{ports}"
    );
    for call in [
        "NetworkDriver.RevokeExternalConnectivity",
        "NetworkDriver.RevokeExternalConnectivity",
        "NetworkDriver.Leave",
        "NetworkDriver.DeleteEndpoint",
        "NetworkDriver.DeleteEndpoint",
        "NetworkDriver.DeleteNetwork",
        "NetworkDriver.DeleteNetwork",
    ] {
        assert_eq!(
            driver_call(&lab, call, ids.clone()),
            serde_json::json!({}),
            "{call}"
        );
    }
    assert!(!lab.bridgenet_ok(&["port", "ls"]).contains("8090"));
    assert!(
        !lab.bridgenet_ok(&["network", "ls"])
            .contains("docker-aaaaaaaaaaaa")
    );
    let unknown = driver_call(&lab, "NetworkDriver.AllocateNetwork", ids);
    assert!(
        unknown["Err"]
            .as_str()
            .unwrap_or("")
            .contains("does not implement"),
        "{unknown}"
    );

    // --internal: no way out, also with the default route Docker installs.
    lab.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridgenet",
        "--internal",
        "--subnet",
        "198.19.12.0/24",
        "inner",
    ]);
    let name = lab.network_name("inner");
    let inspect = lab.bridgenet_ok(&["network", "inspect", &name]);
    assert!(inspect.contains("\"internal\": true"), "{inspect}");
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "inside",
        "--network",
        "inner",
        "bb",
        "sleep",
        "600",
    ]);
    let fetch = "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 2 198.18.0.1 8000";
    let out = lab.docker(&["exec", "inside", "sh", "-c", fetch]);
    assert!(
        !text(&out).contains("hello from busybox"),
        "an --internal container reached the world: {}",
        text(&out)
    );
    let stats = lab.bridgenet_ok(&["stats"]);
    assert!(stats.contains("drop_internal"), "{stats}");
}
