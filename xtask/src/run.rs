//! `cargo xtask run`: a self-contained lab (its own namespaces, removed on exit), or the
//! bridgenet binary with the given arguments.
use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::setup;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: &[String]) -> Result<()> {
    setup::build_tools()?;
    setup::programs(setup::TEST_PROGRAMS)?;
    setup::cargo(&["build", "--quiet", "--package", "bridgenet"])?;
    let binary = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/bridgenet");
    if !args.is_empty() {
        let status = Command::new(&binary).args(args).status()?;
        std::process::exit(status.code().unwrap_or(1));
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let lab = Lab::new()?;
    lab.show(&binary)
}

/// Namespaces of the lab, named after this process so that two labs never collide.
struct Lab {
    world: String,
    host: String,
}

impl Lab {
    fn new() -> Result<Self> {
        let pid = std::process::id();
        let lab = Self {
            world: format!("bn-lab-{pid}-world"),
            host: format!("bn-lab-{pid}-host"),
        };
        println!("lab: creating namespaces {} and {}", lab.world, lab.host);
        for ns in [&lab.world, &lab.host] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n", &lab.world, "link", "add", "eth0", "type", "veth", "peer", "name", "uplink0",
            "netns", &lab.host,
        ])?;
        ip(&[
            "-n",
            &lab.world,
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            "eth0",
        ])?;
        ip(&[
            "-n",
            &lab.host,
            "addr",
            "add",
            "198.18.0.2/24",
            "dev",
            "uplink0",
        ])?;
        ip(&["-n", &lab.world, "link", "set", "eth0", "up"])?;
        ip(&["-n", &lab.host, "link", "set", "uplink0", "up"])?;
        Ok(lab)
    }

    fn show(&self, binary: &std::path::Path) -> Result<()> {
        println!(
            "lab: world 198.18.0.1 --veth-- 198.18.0.2 uplink0 (host namespace, where bridgenet runs)"
        );
        let mut watcher = Command::new("ip")
            .args(["netns", "exec", &self.host])
            .arg(binary)
            .args(["watch", "uplink0"])
            .spawn()?;
        std::thread::sleep(Duration::from_secs(2));
        println!("lab: the world pings the host 5 times; bridgenet's counters on uplink0 go up");
        let ping = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.world,
                "ping",
                "-c",
                "5",
                "-i",
                "0.2",
                "-q",
                "198.18.0.2",
            ])
            .status()?;
        if !ping.success() {
            bail!("ping from the world failed");
        }
        println!("lab: up; Ctrl-C removes everything");
        while !STOP.load(Ordering::SeqCst) {
            if watcher.try_wait()?.is_some() {
                bail!("bridgenet exited");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // SAFETY: sending SIGINT to the child we started.
        unsafe { libc::kill(watcher.id() as libc::pid_t, libc::SIGINT) };
        let _ = watcher.wait();
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.world, &self.host] {
            let _ = ip(&["netns", "del", ns]);
        }
        println!("lab: removed");
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
