//! `cargo xtask run`: a self-contained lab (its own namespaces and a private directory,
//! removed on exit) that shows bridgenet at work step by step, or the bridgenet binary with
//! the given arguments.
//!
//! world (198.18.0.1) --veth-- uplink0 (198.18.0.2) host namespace, where the daemon runs
//!   default network "bridge" (172.17.0.0/16): endpoints web (port 8080 published) and app
//!   network "backend": endpoint db
//!   network "inner" (dual stack, internal, 2001:db8:60::/64): endpoints v6a and v6b
use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::netns::ip;
use anyhow::{Context as _, Result, bail};

use crate::setup;

pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

pub(crate) extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: &[String]) -> Result<()> {
    setup::build_tools()?;
    setup::programs(setup::TEST_PROGRAMS)?;
    setup::cargo(&["build", "--quiet", "--package", "bridgenet"])?;
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/bridgenet");
    if !args.is_empty() {
        let status = Command::new(&binary).args(args).status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut lab = Lab::new(binary)?;
    lab.show()
}

/// Everything the lab made; dropping it removes all of it.
struct Lab {
    binary: PathBuf,
    prefix: String,
    dir: PathBuf,
    /// Namespaces the lab made itself (the endpoints' are made and removed by bridgenet).
    namespaces: Vec<String>,
    daemon: Option<Child>,
}

impl Lab {
    fn new(binary: PathBuf) -> Result<Self> {
        let prefix = format!("bn-lab-{}", std::process::id());
        let mut lab = Self {
            binary,
            dir: std::env::temp_dir().join(&prefix),
            prefix,
            namespaces: Vec::new(),
            daemon: None,
        };
        let (world, host) = (lab.ns("world"), lab.ns("host"));
        say(&format!("creating namespaces {world} and {host}"));
        crate::netns::outside_and_host(&world, &host, &mut lab.namespaces)?;
        std::fs::create_dir_all(&lab.dir)?;
        lab.start_daemon()?;
        Ok(lab)
    }

    fn ns(&self, tag: &str) -> String {
        format!("{}-{tag}", self.prefix)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("bridgenet.sock")
    }

    fn daemon_args(&self) -> Vec<String> {
        crate::netns::daemon_args(&self.dir)
    }

    /// A command in the host namespace only: `ip netns exec` would also give it a private
    /// mount namespace, where the bpf filesystem and the endpoints' namespaces would be lost.
    fn in_host(&self) -> Result<Command> {
        crate::netns::command_in(&self.ns("host"), &self.binary)
    }

    fn start_daemon(&mut self) -> Result<()> {
        let log = File::create(self.dir.join("daemon.log"))?;
        say(&format!(
            "starting `bridgenet daemon` in {} (log: {})",
            self.ns("host"),
            self.dir.join("daemon.log").display()
        ));
        self.daemon = Some(
            self.in_host()?
                .args(self.daemon_args())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.quiet(&["network", "ls"]) {
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not answer; its log:\n{}",
                    std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn quiet(&self, args: &[&str]) -> bool {
        Command::new(&self.binary)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Runs `bridgenet ARGS`, echoing the command and its output.
    fn cli(&self, args: &[&str]) -> Result<String> {
        println!("\n  $ bridgenet {}", args.join(" "));
        let out = Command::new(&self.binary)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in text
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            println!("  {line}");
        }
        if !out.status.success() {
            bail!("bridgenet {} failed", args.join(" "));
        }
        Ok(text)
    }

    fn show(&mut self) -> Result<()> {
        let (web, app, db) = (self.ns("web"), self.ns("app"), self.ns("db"));
        step("The daemon made the default network, like Docker's `bridge`.");
        self.cli(&["network", "ls"])?;
        step("Two endpoints on it (namespaces with eth0 on the bridge); web publishes 8080 -> 80.");
        self.cli(&[
            "endpoint",
            "create",
            "web",
            "--network",
            "bridge",
            "--netns",
            &web,
            "-p",
            "8080:80",
        ])?;
        self.cli(&[
            "endpoint",
            "create",
            "app",
            "--network",
            "bridge",
            "--netns",
            &app,
        ])?;
        step("A second network with one endpoint.");
        self.cli(&["network", "create", "backend"])?;
        self.cli(&[
            "endpoint",
            "create",
            "db",
            "--network",
            "backend",
            "--netns",
            &db,
        ])?;
        self.cli(&["endpoint", "ls"])?;

        step("1. The world (198.18.0.1) asks the host's published port 198.18.0.2:8080.");
        say("   web answers on port 80 with the address it sees the request come from.");
        serve(&web, "0.0.0.0:80", "web")?;
        let answer = request(&self.ns("world"), "198.18.0.2:8080")?;
        say(&format!("   world got: {answer}"));
        say("   -> bridgenet rewrote the destination to web's 172.17.0.2:80 in the kernel, and");
        say("      web saw the real client address, not a proxy's.");

        step("2. app opens a connection to the world's server 198.18.0.1:7000.");
        serve(&self.ns("world"), "198.18.0.1:7000", "world")?;
        let answer = request(&app, "198.18.0.1:7000")?;
        say(&format!("   app got: {answer}"));
        say(
            "   -> the world saw the host's uplink address 198.18.0.2 (masquerade), not 172.17.0.3.",
        );

        step("3. Isolation: db (network backend) tries web (network bridge) at 172.17.0.2:80.");
        match request_timeout(&db, "172.17.0.2:80", Duration::from_secs(2)) {
            Ok(answer) => say(&format!(
                "   db got: {answer}\n   -> UNEXPECTED: the networks should be isolated."
            )),
            Err(err) => say(&format!(
                "   -> blocked ({err:#}): endpoint_ingress dropped it (drop_isolation)."
            )),
        }

        step("4. db asks web's published port through the host's address 198.18.0.2:8080.");
        let answer = request(&db, "198.18.0.2:8080")?;
        say(&format!("   db got: {answer}"));
        say("   -> hairpin: published ports stay reachable from every network, and web sees");
        say("      the gateway of its network as the client, as with Docker.");

        step("5. A process on the host asks 127.0.0.1:8080.");
        let answer = request(&self.ns("host"), "127.0.0.1:8080")?;
        say(&format!("   host got: {answer}"));
        say("   -> a cgroup hook sent the connection straight to web: no userland proxy,");
        say("      no route_localnet.");

        step("6. A dual-stack internal network: two endpoints talk over IPv6 too.");
        let (v6a, v6b) = (self.ns("v6a"), self.ns("v6b"));
        self.cli(&[
            "network",
            "create",
            "inner",
            "--ipv6",
            "--subnet",
            "198.19.60.0/24",
            "--subnet",
            "2001:db8:60::/64",
            "--internal",
        ])?;
        for (name, ns) in [("v6a", &v6a), ("v6b", &v6b)] {
            self.cli(&[
                "endpoint",
                "create",
                name,
                "--network",
                "inner",
                "--netns",
                ns,
            ])?;
        }
        serve(&v6b, "[2001:db8:60::3]:80", "v6b")?;
        let answer = request(&v6a, "[2001:db8:60::3]:80")?;
        say(&format!("   v6a got: {answer}"));
        say("   -> endpoint_ingress checked v6a's source address and its Neighbour Discovery;");
        say("      a Router Advertisement from an endpoint would be drop_router.");

        step("Published ports, tracked flows and the datapath's counters:");
        self.cli(&["port", "ls", "web"])?;
        self.cli(&["ct", "ls"])?;
        self.cli(&["stats"])?;

        println!(
            "\nlab: up. Try it from another shell, e.g.\n  \
             BRIDGENET_SOCKET={} {} endpoint ls\n  \
             ip netns exec {} curl -s 198.18.0.2:8080\n\
             Ctrl-C removes everything.",
            self.socket().display(),
            self.binary.display(),
            self.ns("world"),
        );
        while !STOP.load(Ordering::SeqCst) {
            if let Some(daemon) = self.daemon.as_mut()
                && let Some(status) = daemon.try_wait()?
            {
                self.daemon = None;
                bail!("the daemon exited ({status})");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            // SAFETY: SIGTERM to the daemon this lab started.
            unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
            let _ = daemon.wait();
        }
        // Endpoints, their namespaces, bridges, pins and the bpf filesystem.
        match self.in_host().and_then(|mut cmd| {
            let mut args = self.daemon_args();
            args.push("--cleanup".into());
            Ok(cmd.args(args).output()?)
        }) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "lab: cleanup: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(err) => eprintln!("lab: cleanup: {err:#}"),
        }
        for tag in ["web", "app", "db"] {
            let ns = self.ns(tag);
            if Path::new("/run/netns").join(&ns).exists() {
                let _ = ip(&["netns", "del", &ns]);
            }
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        let bpffs = self.dir.join("bpffs");
        if let Ok(c) = std::ffi::CString::new(bpffs.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid C string; a failure (not mounted) is fine.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("lab: removed");
    }
}

pub(crate) fn step(text: &str) {
    println!("\n== {text}");
}

pub(crate) fn say(text: &str) {
    println!("lab: {text}");
}

/// Runs `f` on a thread inside namespace `ns`.
pub(crate) fn in_netns<R: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R> {
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a file we own.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::Error::from(std::io::Error::last_os_error()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))?
}

/// A tiny server in `ns` that answers each connection with who it is and whom it sees.
pub(crate) fn serve(ns: &str, bind: &str, name: &'static str) -> Result<()> {
    let bind = bind.to_owned();
    let listener = in_netns(ns, move || TcpListener::bind(bind))??;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let peer = stream
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let local = stream
                .local_addr()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let _ = writeln!(stream, "hello from {name} ({local}); you are {peer}");
        }
    });
    Ok(())
}

pub(crate) fn request(ns: &str, to: &str) -> Result<String> {
    request_timeout(ns, to, Duration::from_secs(5))
}

pub(crate) fn request_timeout(ns: &str, to: &str, timeout: Duration) -> Result<String> {
    let to: SocketAddr = to.parse()?;
    let mut stream = in_netns(ns, move || TcpStream::connect_timeout(&to, timeout))?
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_read_timeout(Some(timeout))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.trim().to_owned())
}
