//! A lab for the control plane: a world namespace (198.18.0.1) wired to a host namespace
//! (uplink0 198.18.0.2, default route to the world) where the `bridgenet` daemon runs with
//! its socket, state dir and bpf filesystem in a private temporary directory. The CLI drives
//! it. Dropping the lab kills the daemon (by its pid), runs `daemon --cleanup`, deletes every
//! namespace it handed out and unmounts the bpf filesystem.
use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crate::Topology;

static NEXT_NS: AtomicUsize = AtomicUsize::new(0);

pub struct ControlLab {
    pub topo: Topology,
    pub dir: tempfile::TempDir,
    xdp: String,
    /// More keys for the daemon's config file.
    extra: serde_json::Value,
    daemon: Option<Child>,
    /// Endpoint namespace names handed out, deleted on drop if still there.
    netns_names: Vec<String>,
}

/// The bridgenet binary next to the test binary (target/debug/bridgenet).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in target/debug/deps");
    let bin = dir.join("bridgenet");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p bridgenet` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// How the daemon is stopped.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    Term,
    Kill,
}

/// IPv6 on the lab's uplink link (`ipv6_to_world`): the host's uplink and the world.
pub const UPLINK6: &str = "2001:db8:ff::2";
pub const WORLD6: &str = "2001:db8:ff::1";

impl ControlLab {
    /// Adds IPv6 address `cidr` to `iface` in the lab's namespace `ns`, IPv6 enabled there.
    pub fn addr6(&self, ns: &str, iface: &str, cidr: &str) {
        let netns = self.topo.ns(ns);
        netns.sysctl(&format!("net.ipv6.conf.{iface}.disable_ipv6"), "0");
        netns.ip(&["-6", "addr", "add", cidr, "dev", iface, "nodad"]);
    }

    /// IPv6 on the uplink's link: `UPLINK6` on the host's uplink0, `WORLD6` on the world's
    /// eth0 (the daemon takes the uplink's address for NAT66 and ports published on IPv6).
    /// Returns once `status` shows the daemon took the address (it follows uplink addresses
    /// on its own ticks).
    pub fn ipv6_to_world(&self) {
        self.addr6("host", "uplink0", &format!("{UPLINK6}/64"));
        self.addr6("world", "eth0", &format!("{WORLD6}/64"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let status = self.json(&["status"]);
            if status["uplinks"][0]["addr6"] == UPLINK6 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not take the uplink's IPv6 address: {status}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Builds the lab and starts the daemon.
    /// The lab with `uplink_xdp` on its veth uplink too (`"xdp": "on"`), so that the tests
    /// cover it.
    pub fn up() -> Self {
        Self::up_with_xdp("on")
    }

    /// The lab with the daemon's `xdp` option set to `xdp`.
    pub fn up_with_xdp(xdp: &str) -> Self {
        Self::up_with_config(xdp, serde_json::json!({}))
    }

    /// The lab with more keys in the daemon's config file (`{"conntrack-max": 4096}`).
    pub fn up_with_config(xdp: &str, extra: serde_json::Value) -> Self {
        let mut lab = Self::prepared_with(xdp, extra);
        lab.start();
        lab
    }

    /// The lab without its daemon: a test writes a store or starts the daemon its own way.
    pub fn prepared() -> Self {
        Self::prepared_with("on", serde_json::json!({}))
    }

    /// A lab (its daemon not started) with `extra` keys in the daemon's config file.
    pub fn prepared_with(xdp: &str, extra: serde_json::Value) -> Self {
        let mut topo = Topology::new();
        topo.netns("world")
            .netns("host")
            .veth(("world", "eth0"), ("host", "uplink0"))
            .addr("world", "eth0", "198.18.0.1/24")
            .addr("host", "uplink0", "198.18.0.2/24")
            .route("host", "default", "198.18.0.1");
        Self::on(topo, xdp, extra)
    }

    /// A lab (its daemon not started) whose daemon runs in the namespace tagged `host` of
    /// `topo`, wired by the caller (a cluster's node on its fabric).
    pub fn on(topo: Topology, xdp: &str, extra: serde_json::Value) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bnt-control-")
            .tempdir()
            .expect("temporary directory");
        Self {
            topo,
            dir,
            xdp: xdp.to_owned(),
            extra,
            daemon: None,
            netns_names: Vec::new(),
        }
    }

    /// The pid of the daemon the lab started, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("bridgenet.sock")
    }

    pub fn bpffs(&self) -> PathBuf {
        self.dir.path().join("bpffs")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The daemon's options: the socket as a flag, the rest in a `--config` file.
    fn daemon_args(&self) -> Vec<String> {
        let config = self.dir.path().join("daemon.json");
        let mut json = serde_json::json!({
            "state-dir": self.state_dir(),
            "bpffs": self.bpffs(),
            "xdp": self.xdp,
        });
        if let (Some(json), Some(extra)) = (json.as_object_mut(), self.extra.as_object()) {
            json.extend(extra.clone());
        }
        std::fs::write(&config, json.to_string()).expect("writing daemon.json");
        vec![
            "--socket".into(),
            self.socket().display().to_string(),
            "daemon".into(),
            "--config".into(),
            config.display().to_string(),
        ]
    }

    /// A command that runs in the host namespace only (not `ip netns exec`, whose private
    /// mount namespace would take the bpf filesystem and the daemon's namespaces with it).
    fn in_host(&self, program: &Path) -> Command {
        let netns = File::open(format!("/run/netns/{}", self.topo.ns("host").name()))
            .expect("host namespace");
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe; the file stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Starts the daemon and waits until it answers.
    pub fn start(&mut self) {
        let cmd = self.in_host(&binary());
        self.start_with(cmd);
    }

    /// Starts the daemon through `ip netns exec HOST` (a private mount namespace, as an
    /// operator might) and waits until it answers.
    pub fn start_through_ip_netns_exec(&mut self) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.topo.ns("host").name()])
            .arg(binary());
        self.start_with(cmd);
    }

    /// Starts the daemon expecting it to refuse: waits for it to exit (not answering
    /// meanwhile) and returns what it wrote to stderr.
    pub fn start_refused(&mut self) -> String {
        assert!(self.daemon.is_none(), "the daemon already runs");
        let before = self.log().len();
        let mut child = self.spawn(self.in_host(&binary()));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(!status.success(), "the daemon exited with {status}");
                return self.log()[before..].to_owned();
            }
            if Instant::now() > deadline || self.listens() {
                // SAFETY: a signal to the child this lab started.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
                let _ = child.wait();
                panic!("the daemon did not refuse to start:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a second `daemon EXTRA...` on this lab's state dir and bpf filesystem but on socket
    /// `socket` in the host namespace; returns its exit status and stderr, or None (after
    /// killing it by its pid) when it still runs after `timeout`.
    pub fn second_daemon(
        &self,
        socket: &Path,
        extra: &[&str],
        timeout: Duration,
    ) -> Option<(bool, String)> {
        let mut args = self.daemon_args();
        args[1] = socket.display().to_string();
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut child = self
            .in_host(&binary())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the second daemon");
        let deadline = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                // SAFETY: a signal to the child this lab started.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child
            .wait_with_output()
            .expect("the second daemon's output");
        Some((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn spawn(&self, mut cmd: Command) -> Child {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        cmd.args(self.daemon_args())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the daemon")
    }

    fn start_with(&mut self, cmd: Command) {
        assert!(self.daemon.is_none(), "the daemon already runs");
        let child = self.spawn(cmd);
        self.daemon = Some(child);
        // Loading and verifying the programs takes seconds under QEMU's software emulation.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if self.listens() {
                let out = self.cli(&["network", "ls"]);
                assert!(
                    out.status.success(),
                    "the daemon listens but does not answer: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
                return;
            }
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                self.daemon = None;
                panic!("the daemon exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the daemon accepts connections on its socket, which it binds once it is ready.
    /// Polled instead of running the CLI: an exec every 100 ms costs seconds of CPU under
    /// emulation, taken from the daemon's own start.
    fn listens(&self) -> bool {
        std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
    }

    /// Stops the daemon we started, by its pid.
    pub fn stop(&mut self, how: Stop) {
        let mut child = self.daemon.take().expect("the daemon runs");
        let signal = match how {
            Stop::Term => libc::SIGTERM,
            Stop::Kill => libc::SIGKILL,
        };
        // SAFETY: a signal to the child this lab started.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let status = child.wait().expect("waiting for the daemon");
        if let Stop::Term = how {
            assert!(
                status.success(),
                "the daemon exited with {status}:\n{}",
                self.log()
            );
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the daemon: what happens while it cannot act.
    pub fn freeze(&self, frozen: bool) {
        let child = self.daemon.as_ref().expect("the daemon runs");
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: a signal to the child this lab started.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    }

    /// Runs `bridgenet daemon --cleanup` in the host namespace (the daemon must be stopped),
    /// panicking unless it succeeds.
    pub fn cleanup(&self) {
        let mut args = self.daemon_args();
        args.push("--cleanup".into());
        let out = self
            .in_host(&binary())
            .args(&args)
            .output()
            .expect("running daemon --cleanup");
        assert!(
            out.status.success(),
            "daemon --cleanup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs `bridgenet --socket SOCK ARGS` (in the test's namespace: only the socket matters).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("running bridgenet")
    }

    /// Runs the CLI, panicking unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "bridgenet {} failed: {}\ndaemon log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI, panicking unless it fails with exactly one line on stderr; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "bridgenet {} succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "bridgenet {}: not one line on stderr: {stderr:?}",
            args.join(" ")
        );
        stderr.trim_end().to_owned()
    }

    /// The CLI's JSON output of a listing.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("JSON")
    }

    /// The host end of endpoint `name`'s veth, as `endpoint ls` lists it.
    pub fn endpoint_veth(&self, name: &str) -> String {
        let endpoints = self.json(&["endpoint", "ls"]);
        endpoints
            .as_array()
            .expect("endpoint ls is a list")
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["veth"].as_str())
            .unwrap_or_else(|| panic!("{name}'s veth in endpoint ls: {endpoints}"))
            .to_owned()
    }

    /// `ip -s -j link show LINK` in the daemon's namespace: the link's stats64 (`rx`, `tx`).
    pub fn link_stats(&self, link: &str) -> serde_json::Value {
        let out = self.topo.ns("host").ip(&["-s", "-j", "link", "show", link]);
        let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
        links[0]["stats64"].clone()
    }

    /// One of `bridgenet stats`'s counters (0 when it has not counted anything).
    pub fn stat(&self, program: &str, outcome: &str) -> u64 {
        self.json(&["stats"])
            .as_array()
            .expect("stats is a list")
            .iter()
            .find(|s| s["program"] == program && s["outcome"] == outcome)
            .map_or(0, |s| s["count"].as_u64().expect("a count"))
    }

    /// A unique name for an endpoint namespace (the harness prefix, so leftovers of killed
    /// runs are removed by the next run), deleted on drop if it still exists.
    pub fn netns_name(&mut self, tag: &str) -> String {
        let name = format!(
            "bnt-{}-c{}-{tag}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
        self.netns_names.push(name.clone());
        name
    }

    /// Endpoint `name` on the default network in a namespace of its own, with the given `-p`
    /// options; returns its namespace.
    pub fn endpoint(&mut self, name: &str, publish: &[&str]) -> String {
        let ns = self.netns_name(name);
        let mut args = vec![
            "endpoint",
            "create",
            name,
            "--network",
            "bridge",
            "--netns",
            &ns,
        ];
        for p in publish {
            args.extend(["-p", p]);
        }
        self.ok(&args);
        ns
    }

    /// Detaches `program` from `iface` as an operator would, `bpftool link detach` on the link
    /// the daemon pinned (XDP always; TC with tcx, Linux 6.6+).
    pub fn detach_link(&self, program: &str, iface: &str) {
        let prefix = format!("link_{program}_{iface}_");
        let pin = std::fs::read_dir(self.bpffs())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .unwrap_or_else(|| panic!("no pinned link of {program} on {iface}"));
        let out = Command::new("bpftool")
            .args(["link", "detach", "pinned"])
            .arg(pin.path())
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "detaching {program} from {iface}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a program in a named namespace and returns its output.
    pub fn exec_in(&self, netns: &str, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", netns, program])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Everything that must not change when a command is refused: the daemon's view (networks,
    /// endpoints, ports, filter rules), the host namespace's links, addresses and routes, the lab's
    /// namespaces, and the published ports, subnets (IPv4 and IPv6), endpoints' IPv6 addresses
    /// and filter in the pinned maps.
    pub fn snapshot(&self) -> String {
        let host = self.topo.ns("host");
        let mut netns: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| self.netns_names.contains(n))
                    .collect()
            })
            .unwrap_or_default();
        netns.sort();
        let dump = |map: &str| {
            let out = Command::new("bpftool")
                .args(["-j", "map", "dump", "pinned"])
                .arg(self.bpffs().join(map))
                .output()
                .expect("bpftool");
            assert!(out.status.success(), "bpftool map dump {map}");
            let mut entries: Vec<serde_json::Value> =
                serde_json::from_slice(&out.stdout).expect("bpftool JSON");
            entries.sort_by_key(|e| e.to_string());
            serde_json::Value::Array(entries).to_string()
        };
        [
            self.ok(&["network", "ls", "--json"]),
            self.ok(&["endpoint", "ls", "--json"]),
            self.ok(&["port", "ls", "--json"]),
            self.ok(&["filter", "ls", "--json"]),
            host.ip(&["-o", "link"])
                .lines()
                .map(strip_stats)
                .collect::<Vec<_>>()
                .join("\n"),
            // An IPv6 link-local address is `tentative` for its first second (DAD).
            host.ip(&["-o", "addr"]).replace(" tentative", ""),
            // `linkdown` comes and goes with the carrier of a bridge's ports.
            host.ip(&["route"]).replace(" linkdown", ""),
            netns.join(" "),
            dump("PUBLISH"),
            dump("SUBNETS"),
            dump("SUBNETS6"),
            dump("ENDPOINTS6"),
            dump("FILTER"),
            dump("FILTER_STATE"),
        ]
        .join("\n---\n")
    }
}

/// A line of `ip -o link` as index, name and bridge: flags such as LOWER_UP change by
/// themselves (a bridge loses its carrier when its last port goes).
fn strip_stats(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let master = words
        .iter()
        .position(|w| *w == "master")
        .and_then(|i| words.get(i + 1))
        .unwrap_or(&"-");
    format!(
        "{} {} master {master}",
        words[0],
        words.get(1).unwrap_or(&"")
    )
}

impl Drop for ControlLab {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            // SAFETY: a signal to the child this lab started.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
        }
        let mut args = self.daemon_args();
        args.push("--cleanup".into());
        match self.in_host(&binary()).args(&args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: bridgenet daemon --cleanup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => eprintln!("warning: bridgenet daemon --cleanup: {err}"),
        }
        for name in &self.netns_names {
            if Path::new("/run/netns").join(name).exists() {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
        // --cleanup unmounts it; a failed cleanup must not leave a mount behind.
        let _ = nix::mount::umount2(&self.bpffs(), nix::mount::MntFlags::MNT_DETACH);
    }
}
