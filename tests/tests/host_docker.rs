//! Docker with bridgenet as its network driver: a real dockerd (Debian's docker.io 20.10)
//! started in the test's host namespace with a private mount namespace (its own data, exec
//! and run dirs, a tmpfs over /run, vfs storage, no iptables, no bridge), the
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
    net::TcpStream,
    os::unix::fs::MetadataExt as _,
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

    /// dockerd in the host namespace and a private mount namespace, as runtimes.md shows,
    /// with a /run of its own: a tmpfs over /run in that namespace (a mount point that always
    /// exists), where /run/docker/plugins is made, and the machine's /run/netns bound back into
    /// it (for nsenter). Nothing is created on the machine's /run, and two labs at once share
    /// nothing there.
    fn start_dockerd(&mut self) {
        let d = self.dir.path().display().to_string();
        std::fs::write(self.path("daemon.json"), "{}").unwrap();
        let script = format!(
            "mkdir {d}/machine-run && mount --rbind /run {d}/machine-run && \
             mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/netns /run/docker/plugins && \
             mount --rbind {d}/machine-run/netns /run/netns && \
             exec nsenter --net={netns} {dockerd}",
            netns = self.host_netns(),
            dockerd = self.dockerd_command(),
        );
        let log = std::fs::File::create(self.path("dockerd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        self.dockerd = Some(child);
        self.wait_for_dockerd();
    }

    fn dockerd_command(&self) -> String {
        let d = self.dir.path().display().to_string();
        format!(
            "dockerd --config-file {d}/daemon.json \
             --data-root {d}/data --exec-root {d}/exec -H unix://{d}/docker.sock \
             --pidfile {d}/docker.pid --iptables=false --ip-masq=false --bridge=none \
             --storage-driver=vfs"
        )
    }

    fn wait_for_dockerd(&mut self) {
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

    /// Restarts dockerd with `--live-restore` (reloaded with SIGHUP first): the containers keep
    /// running while it is down. The new dockerd starts in bridgenet's network and mount
    /// namespaces, which outlive the old one (bridgenet holds them).
    fn restart_dockerd_live(&mut self) {
        std::fs::write(self.path("daemon.json"), r#"{"live-restore": true}"#).unwrap();
        let pid = self.dockerd.as_ref().expect("dockerd runs").id() as libc::pid_t;
        // SAFETY: a signal to the dockerd this test started.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log("dockerd.log").contains("Reloaded configuration") {
            assert!(
                Instant::now() < deadline,
                "dockerd did not reload:\n{}",
                self.log("dockerd.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut old = self.dockerd.take().unwrap();
        stop(&mut old, Duration::from_secs(20));
        let bridgenet = self
            .bridgenet
            .as_ref()
            .expect("bridgenet runs")
            .id()
            .to_string();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path("dockerd.log"))
            .unwrap();
        let child = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "exec nsenter -t {bridgenet} -m -n {}",
                    self.dockerd_command()
                ),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("restarting dockerd");
        self.dockerd = Some(child);
        self.wait_for_dockerd();
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
            "docker-host": self.path("docker.sock"),
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

    /// `docker ARGS` must fail with one line that contains `want`.
    fn refused(&self, args: &[&str], want: &str) {
        let out = self.docker(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = text(&out);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
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
    let had_run_docker = Path::new("/run/docker").exists();
    let lab = DockerLab::up();
    // Nothing of the lab lands on the machine's /run: dockerd's is a filesystem of its own.
    let machine = std::fs::metadata("/run").unwrap().dev();
    let dockerd_run = format!("/proc/{}/root/run", lab.dockerd_pid());
    assert_ne!(
        std::fs::metadata(&dockerd_run).unwrap().dev(),
        machine,
        "dockerd uses the machine's /run"
    );
    assert!(
        had_run_docker || !Path::new("/run/docker").exists(),
        "the lab made /run/docker on the machine"
    );
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
    // Once Docker moved the container end of the veth into the container (bridgenet follows
    // that from rtnetlink's notices), published packets go straight into it.
    let peer_path = || {
        let stats: serde_json::Value =
            serde_json::from_str(&lab.bridgenet_ok(&["stats", "--json"])).unwrap();
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["program"] == "uplink_ingress" && s["outcome"] == "fast_path_peer")
            .map_or(0, |s| s["count"].as_u64().unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while peer_path() == 0 {
        assert!(
            Instant::now() < deadline,
            "no published packet went straight into web1"
        );
        lab.world_get_ok(&format!("http://{HOST}:8080/index.html"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let web1 = lab.endpoint_of("web1", "web");
    let ports = lab.bridgenet_ok(&["port", "ls", &web1]);
    assert!(ports.contains("80/tcp -> 0.0.0.0:8080"), "{ports}");
    assert!(ports.contains("80/tcp -> 198.18.0.2:8081"), "{ports}");
    // Docker's names (asked of its API): `port ls CONTAINER` in `docker port` format, and the
    // container's name across endpoints.
    let by_name = lab.bridgenet_ok(&["port", "ls", "web1"]);
    assert_eq!(by_name, ports, "port ls web1");
    let all = lab.bridgenet_ok(&["port", "ls"]);
    assert!(all.contains("web1: 80/tcp -> 0.0.0.0:8080"), "{all}");
    let endpoints = lab.bridgenet_ok(&["endpoint", "ls"]);
    assert!(
        endpoints
            .lines()
            .any(|l| l.starts_with(&web1) && l.contains(" web1 ")),
        "{endpoints}"
    );

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
        let sock = std::net::UdpSocket::bind("198.18.0.1:0").expect("bind");
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
    lab.refused(
        &[
            "network",
            "create",
            "-d",
            "bridgenet",
            "--subnet",
            "198.19.8.0/24",
            "-o",
            "foo=bar",
            "bad",
        ],
        "unsupported option foo",
    );
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

    // Every other refused option: one line each, nothing made.
    let before = lab.bridgenet_ok(&["network", "ls"]);
    for (args, want) in [
        (
            vec![
                "--subnet",
                "198.19.30.0/24",
                "--ipv6",
                "--subnet",
                "2001:db8:30::/64",
                "-o",
                "com.docker.network.bridge.enable_ip_masquerade=false",
            ],
            "IPv6 leaves a network without masquerade only in IPv6 gateway mode routed",
        ),
        (
            vec!["--subnet", "198.19.30.0/24", "--subnet", "198.19.31.0/24"],
            "one subnet",
        ),
        (
            vec![
                "--subnet",
                "198.19.30.0/24",
                "-o",
                "com.docker.network.bridge.gateway_mode_ipv4=bridged",
            ],
            "expected nat, nat-unprotected, routed or isolated",
        ),
        (
            vec![
                "--subnet",
                "198.19.30.0/24",
                "-o",
                "com.docker.network.bridge.gateway_mode_ipv4=isolated",
            ],
            "isolated needs an internal network",
        ),
        (
            vec![
                "--subnet",
                "198.19.30.0/24",
                "-o",
                "com.docker.network.bridge.enable_icc=maybe",
            ],
            "expected true or false",
        ),
    ] {
        let mut all = vec!["network", "create", "-d", "bridgenet"];
        all.extend(args);
        all.push("refused");
        lab.refused(&all, want);
    }
    assert_eq!(lab.bridgenet_ok(&["network", "ls"]), before);

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
    // A live TCP connection through a published port (an echo server, `cat` behind nc).
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "echo",
        "--network",
        "again",
        "-p",
        "9000:9000",
        "bb",
        "nc",
        "-l",
        "-p",
        "9000",
        "-e",
        "cat",
    ]);
    let url = format!("http://{HOST}:8080/index.html");
    assert_eq!(lab.world_get_ok(&url), "hello from busybox");
    let mut conn = live_connection(&lab, &format!("{HOST}:9000"));
    echoes(&mut conn, "before");

    let mut child = lab.bridgenet.take().expect("bridgenet runs");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        lab.world_get(&url).as_deref(),
        Some("hello from busybox"),
        "the published port answers while bridgenet is down"
    );
    echoes(&mut conn, "while bridgenet is down");
    lab.start_bridgenet();
    // The same connection after the restart: bytes flow both ways, no reset.
    echoes(&mut conn, "after the restart");
    assert!(
        lab.bridgenet_log()
            .contains("reconciled 2 networks, 2 endpoints"),
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
    lab.docker_ok(&["rm", "-f", "two", "echo"]);
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

/// A TCP connection from the world to `addr`, retried while the container starts.
fn live_connection(lab: &DockerLab, addr: &str) -> TcpStream {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let world = lab.topo.ns("world").name().to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let conn = topology::enter(&world, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        });
        if let Ok(mut conn) = conn {
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // nc accepts before `cat` runs: a first exchange proves the echo is up.
            let mut probe = [0u8; 6];
            if conn.write_all(b"probe\n").is_ok() && conn.read_exact(&mut probe).is_ok() {
                return conn;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no connection to {addr}\n{}",
            lab.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Sends a line on `conn` and reads it back from the echo server: the connection is alive
/// (a reset fails the read or the write).
fn echoes(conn: &mut TcpStream, what: &str) {
    let line = format!("{what}\n");
    conn.write_all(line.as_bytes())
        .unwrap_or_else(|err| panic!("writing {what:?}: {err}"));
    let mut back = vec![0u8; line.len()];
    conn.read_exact(&mut back)
        .unwrap_or_else(|err| panic!("reading back {what:?}: {err}"));
    assert_eq!(String::from_utf8_lossy(&back), line);
}

/// A container on Docker network `net` running httpd on 80 and 81, publishing `-p HOST:80`;
/// its address on `net`.
fn run_two_port_httpd(lab: &DockerLab, name: &str, net: &str, host_port: u16) -> String {
    let publish = format!("{host_port}:80");
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        "-p",
        &publish,
        "bb",
        "sh",
        "-c",
        "httpd -p 81 -h /www && exec httpd -f -p 80 -h /www",
    ]);
    lab.docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        name,
    ])
}

/// The address the world's server saw a container's request come from (None: no answer).
fn seen_by_world(lab: &DockerLab, container: &str) -> Option<String> {
    let out = lab.docker(&[
        "exec",
        container,
        "sh",
        "-c",
        "printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w 3 198.18.0.1 8000",
    ]);
    let body = text(&out);
    body.contains("200").then(|| client_of(&body).to_owned())
}

#[test]
fn docker_gateway_modes_with_traffic_routed_from_the_world() {
    let lab = DockerLab::up();
    let world = lab.topo.ns("world");
    // The world routes the containers' subnets to the host (direct routing).
    world.ip(&["route", "add", "198.19.20.0/22", "via", HOST]);
    for (net, subnet, opts) in [
        (
            "gw-nat",
            "198.19.20.0/24",
            vec!["-o", "com.docker.network.bridge.gateway_mode_ipv4=nat"],
        ),
        (
            "gw-unprot",
            "198.19.21.0/24",
            vec![
                "-o",
                "com.docker.network.bridge.gateway_mode_ipv4=nat-unprotected",
            ],
        ),
        (
            "gw-routed",
            "198.19.22.0/24",
            vec!["-o", "com.docker.network.bridge.gateway_mode_ipv4=routed"],
        ),
        (
            "gw-isolated",
            "198.19.23.0/24",
            vec![
                "--internal",
                "-o",
                "com.docker.network.bridge.gateway_mode_ipv4=isolated",
            ],
        ),
    ] {
        let mut args = vec!["network", "create", "-d", "bridgenet", "--subnet", subnet];
        args.extend(opts);
        args.push(net);
        lab.docker_ok(&args);
    }
    let networks = lab.bridgenet_ok(&["network", "ls"]);
    for shown in [
        "gateway-mode=nat-unprotected",
        "gateway-mode=routed",
        "gateway-mode=isolated",
    ] {
        assert!(networks.contains(shown), "{shown}: {networks}");
    }
    let inspect = lab.bridgenet_ok(&["network", "inspect", &lab.network_name("gw-routed")]);
    assert!(
        inspect.contains("\"gateway_mode\": \"routed\""),
        "{inspect}"
    );
    let url = |addr: &str, port: u16| format!("http://{addr}:{port}/cgi-bin/ip");

    // nat: the published port, with the client's address; no direct access; masquerade out.
    let nat = run_two_port_httpd(&lab, "gw-nat1", "gw-nat", 8091);
    assert_eq!(client_of(&lab.world_get_ok(&url(HOST, 8091))), "198.18.0.1");
    assert!(
        lab.world_get(&url(&nat, 80)).is_none(),
        "nat: {nat}:80 reached directly"
    );
    assert_eq!(seen_by_world(&lab, "gw-nat1").as_deref(), Some(HOST));

    // nat-unprotected: also any container port routed to, the client's address kept.
    let unprot = run_two_port_httpd(&lab, "gw-unprot1", "gw-unprot", 8092);
    assert_eq!(client_of(&lab.world_get_ok(&url(HOST, 8092))), "198.18.0.1");
    assert_eq!(
        client_of(&lab.world_get_ok(&url(&unprot, 80))),
        "198.18.0.1"
    );
    assert_eq!(
        client_of(&lab.world_get_ok(&url(&unprot, 81))),
        "198.18.0.1"
    );
    assert_eq!(seen_by_world(&lab, "gw-unprot1").as_deref(), Some(HOST));

    // routed: the published container port at the container's address, nothing else (the
    // host port is not used, as with Docker); out with the container's own address.
    let routed = run_two_port_httpd(&lab, "gw-routed1", "gw-routed", 8093);
    assert_eq!(
        client_of(&lab.world_get_ok(&url(&routed, 80))),
        "198.18.0.1"
    );
    assert!(
        lab.world_get(&url(&routed, 81)).is_none(),
        "routed: unpublished port 81 reached"
    );
    assert!(
        lab.world_get(&url(HOST, 8093)).is_none(),
        "routed: host port 8093 opened"
    );
    assert_eq!(
        seen_by_world(&lab, "gw-routed1").as_deref(),
        Some(routed.as_str())
    );
    let stats = lab.bridgenet_ok(&["stats"]);
    assert!(stats.contains("drop_unpublished"), "{stats}");

    // isolated: no way in (the world, the host) or out; its bridge has no address.
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "gw-iso1",
        "--network",
        "gw-isolated",
        "bb",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let iso = lab.docker_ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"gw-isolated\").IPAddress}}",
        "gw-iso1",
    ]);
    assert!(
        lab.world_get(&url(&iso, 80)).is_none(),
        "isolated: reached from the world"
    );
    let host_ns = lab.topo.ns("host").name().to_owned();
    assert!(
        get(&host_ns, &url(&iso, 80)).is_none(),
        "isolated: reached from the host"
    );
    assert_eq!(
        seen_by_world(&lab, "gw-iso1"),
        None,
        "isolated: reached the world"
    );
    let iso_net = lab.network_name("gw-isolated");
    let bridge = format!("br-{}", &iso_net["docker-".len()..]);
    let addrs = lab.topo.ns("host").ip(&["-4", "addr", "show", &bridge]);
    assert!(
        !addrs.contains("inet "),
        "isolated bridge with an address: {addrs}"
    );
}

#[test]
fn docker_adopts_an_existing_bridge_and_leaves_it_as_found() {
    let lab = DockerLab::up();
    let host = lab.topo.ns("host");
    host.ip(&["link", "add", "bb0", "type", "bridge"]);
    host.ip(&["addr", "add", "198.19.25.1/24", "dev", "bb0"]);
    host.ip(&["link", "set", "bb0", "up"]);
    let found = host.ip(&["-4", "-o", "addr", "show", "dev", "bb0"]);
    // Docker's IPAM must give the bridge's subnet: another is refused in one line.
    lab.refused(
        &[
            "network",
            "create",
            "-d",
            "bridgenet",
            "--subnet",
            "198.19.26.0/24",
            "-o",
            "com.docker.network.bridge.name=bb0",
            "wrong",
        ],
        "bridge bb0 has 198.19.25.1/24",
    );

    lab.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridgenet",
        "--subnet",
        "198.19.25.0/24",
        "--gateway",
        "198.19.25.1",
        "-o",
        "com.docker.network.bridge.name=bb0",
        "adopted",
    ]);
    let inspect = lab.bridgenet_ok(&["network", "inspect", &lab.network_name("adopted")]);
    assert!(inspect.contains("\"adopted\""), "{inspect}");
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "onbb0",
        "--network",
        "adopted",
        "-p",
        "8095:80",
        "bb",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let ports = host.ip(&["-o", "link", "show", "master", "bb0"]);
    assert_eq!(
        ports.lines().count(),
        1,
        "the container's veth on bb0: {ports}"
    );
    assert_eq!(
        client_of(&lab.world_get_ok(&format!("http://{HOST}:8095/cgi-bin/ip"))),
        "198.18.0.1"
    );
    assert_eq!(seen_by_world(&lab, "onbb0").as_deref(), Some(HOST));

    lab.docker_ok(&["rm", "-f", "onbb0"]);
    lab.docker_ok(&["network", "rm", "adopted"]);
    assert_eq!(host.ip(&["-4", "-o", "addr", "show", "dev", "bb0"]), found);
    assert_eq!(host.ip(&["-o", "link", "show", "master", "bb0"]), "");
    // bridgenet's program is off it: no pinned link left (the bpf filesystem is mounted in
    // dockerd's mount namespace).
    let bpffs = format!(
        "/proc/{}/root{}",
        lab.dockerd_pid(),
        lab.path("bpffs").display()
    );
    let pins: Vec<String> = std::fs::read_dir(&bpffs)
        .expect("the pin directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        pins.iter().any(|p| p.starts_with("link_uplink_ingress_")),
        "{pins:?}"
    );
    assert!(!pins.iter().any(|p| p.contains("_bb0_")), "{pins:?}");
}

#[test]
fn docker_containers_keep_working_across_a_dockerd_live_restore_restart() {
    let mut lab = DockerLab::up();
    lab.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridgenet",
        "--subnet",
        "198.19.27.0/24",
        "live",
    ]);
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "echo",
        "--network",
        "live",
        "-p",
        "9001:9000",
        "bb",
        "nc",
        "-l",
        "-p",
        "9000",
        "-e",
        "cat",
    ]);
    let mut conn = live_connection(&lab, &format!("{HOST}:9001"));
    echoes(&mut conn, "before");
    lab.restart_dockerd_live();
    // The established connection goes on, with no reset.
    echoes(&mut conn, "after the dockerd restart");
    let running = lab.docker_ok(&["ps", "--format", "{{.Names}}"]);
    assert!(running.contains("echo"), "{running}");

    // After the restart: a new container, docker rm -f, docker network rm.
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "live",
        "-p",
        "8096:80",
        "bb",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    assert_eq!(
        lab.world_get_ok(&format!("http://{HOST}:8096/index.html")),
        "hello from busybox"
    );
    lab.docker_ok(&["rm", "-f", "echo", "web"]);
    assert!(
        lab.world_get(&format!("http://{HOST}:8096/index.html"))
            .is_none()
    );
    lab.docker_ok(&["network", "rm", "live"]);
    let endpoints = lab.bridgenet_ok(&["endpoint", "ls"]);
    assert!(!endpoints.contains("docker-"), "{endpoints}");
    let networks = lab.bridgenet_ok(&["network", "ls"]);
    assert!(!networks.contains("198.19.27.0/24"), "{networks}");
}

#[test]
fn docker_networks_are_isolated_but_reach_each_others_published_ports() {
    let lab = DockerLab::up();
    for (net, subnet) in [("left", "198.19.28.0/24"), ("right", "198.19.29.0/24")] {
        lab.docker_ok(&[
            "network",
            "create",
            "-d",
            "bridgenet",
            "--subnet",
            subnet,
            net,
        ]);
    }
    let mut addrs = Vec::new();
    for (name, net, publish) in [("l1", "left", "8097:80"), ("r1", "right", "8098:80")] {
        lab.docker_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            net,
            "-p",
            publish,
            "bb",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ]);
        addrs.push(lab.docker_ok(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            name,
        ]));
    }
    let fetch = |container: &str, addr: &str, port: u16| {
        let cmd = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr} {port}");
        text(&lab.docker(&["exec", container, "sh", "-c", &cmd]))
    };
    // Directly: isolated, both ways.
    assert!(
        !fetch("l1", &addrs[1], 80).contains("hello from busybox"),
        "left reached right"
    );
    assert!(
        !fetch("r1", &addrs[0], 80).contains("hello from busybox"),
        "right reached left"
    );
    assert!(lab.bridgenet_ok(&["stats"]).contains("drop_isolation"));
    // Through a host address, the other's published port: reached, both ways.
    assert!(
        fetch("l1", HOST, 8098).contains("hello from busybox"),
        "left to right's 8098"
    );
    assert!(
        fetch("r1", HOST, 8097).contains("hello from busybox"),
        "right to left's 8097"
    );
}

/// `--ipv6 --internal`: each container gets Docker's IPv6 address, reaches the other over
/// IPv6 and nothing out of the network; the daemon's endpoint carries the address.
#[test]
fn docker_ipv6_internal_network_containers_talk_over_ipv6() {
    let lab = DockerLab::up();
    lab.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridgenet",
        "--internal",
        "--ipv6",
        "--subnet",
        "198.19.40.0/24",
        "--subnet",
        "2001:db8:40::/64",
        "six",
    ]);
    let name = lab.network_name("six");
    let inspect = lab.bridgenet_ok(&["network", "inspect", &name]);
    assert!(
        inspect.contains("\"subnet6\": \"2001:db8:40::/64\""),
        "{inspect}"
    );
    let mut addrs = Vec::new();
    for c in ["v6a", "v6b"] {
        lab.docker_ok(&[
            "run",
            "-d",
            "--name",
            c,
            "--network",
            "six",
            "bb",
            "sleep",
            "300",
        ]);
        addrs.push(lab.docker_ok(&[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"six\").GlobalIPv6Address}}",
            c,
        ]));
    }
    assert!(addrs[0].starts_with("2001:db8:40::"), "{addrs:?}");
    let endpoint = lab.endpoint_of("v6b", "six");
    let inspect = lab.bridgenet_ok(&["endpoint", "inspect", &endpoint]);
    assert!(
        inspect.contains(&format!("\"ip6\": \"{}\"", addrs[1])),
        "{inspect}"
    );
    // Docker's address may still be tentative for a moment (duplicate address detection).
    let ping = |to: &str| {
        (0..10).any(|_| {
            let out = lab.docker(&[
                "exec", "v6a", "busybox", "ping", "-6", "-c", "1", "-W", "1", to,
            ]);
            out.status.success() || {
                std::thread::sleep(Duration::from_millis(500));
                false
            }
        })
    };
    assert!(ping(&addrs[1]), "v6a does not reach v6b over IPv6");
    let routes = lab.docker_ok(&["exec", "v6a", "ip", "-6", "route"]);
    assert!(
        !routes.contains("default"),
        "an internal network has no default route: {routes}"
    );
    let stats = lab.bridgenet_ok(&["stats"]);
    assert!(!stats.contains("drop_spoofed"), "{stats}");
    assert!(!stats.contains("drop_protocol"), "{stats}");
    lab.docker_ok(&["rm", "-f", "v6a", "v6b"]);
    lab.docker_ok(&["network", "rm", "six"]);
}

/// `docker network create --ipv6` without `--internal`: the container gets a default IPv6
/// route through the network's gateway, and its IPv6 reaches the world masqueraded with the
/// uplink's IPv6 address, as with Docker 27's ip6tables rules; its published ports answer
/// on IPv6 as Docker 27 publishes them.
#[test]
fn docker_ipv6_network_reaches_the_world_masqueraded() {
    let lab = DockerLab::up();
    // The lab's namespaces start with IPv6 off.
    for (ns, iface, addr) in [
        ("host", "uplink0", "2001:db8:ff::2/64"),
        ("world", "eth0", "2001:db8:ff::1/64"),
    ] {
        let ns = lab.topo.ns(ns);
        ns.sysctl(&format!("net.ipv6.conf.{iface}.disable_ipv6"), "0");
        ns.ip(&["-6", "addr", "add", addr, "dev", iface, "nodad"]);
    }
    lab.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridgenet",
        "--ipv6",
        "--subnet",
        "198.19.41.0/24",
        "--subnet",
        "2001:db8:41::/64",
        "out6",
    ]);
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "w6",
        "--network",
        "out6",
        "bb",
        "sleep",
        "300",
    ]);
    let routes = lab.docker_ok(&["exec", "w6", "ip", "-6", "route"]);
    assert!(
        routes.contains("default via 2001:db8:41::1"),
        "no default IPv6 route via the gateway: {routes}"
    );
    // Docker's address may still be tentative for a moment (duplicate address detection).
    let reached = (0..10).any(|_| {
        let out = lab.docker(&[
            "exec",
            "w6",
            "busybox",
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "1",
            "2001:db8:ff::1",
        ]);
        out.status.success() || {
            std::thread::sleep(Duration::from_millis(500));
            false
        }
    });
    assert!(reached, "w6 does not reach the world over IPv6");
    let stats = lab.bridgenet_ok(&["stats"]);
    assert!(stats.contains("snat"), "{stats}");

    // Ports published as Docker 27 does: -p 8080:80 on both families, -p [::]:8081:80 on
    // IPv6 only; the container sees each client's own address.
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "web6",
        "--network",
        "out6",
        "-p",
        "8080:80",
        "-p",
        "[::]:8081:80",
        "bb",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    for url in [
        "http://[2001:db8:ff::2]:8080/cgi-bin/ip",
        "http://[2001:db8:ff::2]:8081/cgi-bin/ip",
    ] {
        assert_eq!(client_of(&lab.world_get_ok(url)), "2001:db8:ff::1", "{url}");
    }
    assert_eq!(
        client_of(&lab.world_get_ok(&format!("http://{HOST}:8080/cgi-bin/ip"))),
        "198.18.0.1"
    );
    assert_eq!(
        lab.world_get(&format!("http://{HOST}:8081/cgi-bin/ip")),
        None
    );
    let ports = lab.bridgenet_ok(&["port", "ls"]);
    for line in [
        "80/tcp -> 0.0.0.0:8080",
        "80/tcp -> [::]:8080",
        "80/tcp -> [::]:8081",
    ] {
        assert!(ports.contains(line), "{line} missing from: {ports}");
    }
    lab.docker_ok(&["rm", "-f", "web6"]);
    assert_eq!(
        lab.world_get("http://[2001:db8:ff::2]:8080/cgi-bin/ip"),
        None
    );

    lab.docker_ok(&["rm", "-f", "w6"]);
    lab.docker_ok(&["network", "rm", "out6"]);

    // gateway_mode_ipv6=routed: the published container port at the container's own IPv6
    // address, reached with the client's address; IPv4 stays nat.
    lab.topo.ns("world").ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:42::/64",
        "via",
        "2001:db8:ff::2",
    ]);
    lab.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridgenet",
        "--ipv6",
        "--subnet",
        "198.19.42.0/24",
        "--subnet",
        "2001:db8:42::/64",
        "-o",
        "com.docker.network.bridge.gateway_mode_ipv6=routed",
        "r6",
    ]);
    let networks = lab.bridgenet_ok(&["network", "ls"]);
    assert!(networks.contains("gateway-mode6=routed"), "{networks}");
    lab.docker_ok(&[
        "run",
        "-d",
        "--name",
        "r6web",
        "--network",
        "r6",
        "-p",
        "8082:80",
        "bb",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let addr = lab.docker_ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.r6.GlobalIPv6Address}}",
        "r6web",
    ]);
    let url = format!("http://[{}]:80/cgi-bin/ip", addr.trim());
    assert_eq!(
        client_of(&lab.world_get_ok(&url)),
        "2001:db8:ff::1",
        "{url}"
    );
    lab.docker_ok(&["rm", "-f", "r6web"]);
    lab.docker_ok(&["network", "rm", "r6"]);
}
