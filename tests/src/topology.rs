//! Named network namespaces, veth pairs, bridges, addresses, routes and sysctls for tests.
use std::{
    collections::BTreeMap,
    fs::File,
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
};

use nix::sched::{CloneFlags, setns};

/// Prefix of every namespace the harness creates; the pid after it finds leftovers of killed runs.
const PREFIX: &str = "bnt-";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// One network namespace, deleted (with every interface inside it) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with a unique name that contains `tag`, with lo up.
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        let name = format!(
            "{PREFIX}{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        // IPv4 only: IPv6 neighbour discovery would add packets that tests do not send.
        netns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        netns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NS ARGS`, panicking with ip's message when it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run(&mut cmd)
    }

    /// Runs a program inside the namespace and returns its output, whatever its exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("running {program} in {}: {err}", self.name))
    }

    /// Runs a program inside the namespace, panicking when it fails; returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        run(&mut cmd)
    }

    /// Sets a net.* sysctl inside the namespace. Written from a thread that entered it (/proc/sys/net
    /// is the opener's namespace's) rather than by `ip netns exec sysctl`: two execs, a second of
    /// software emulation in the kernel matrix, for each of the hundreds the tests set.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.enter(|| std::fs::write(&path, value))
            .unwrap_or_else(|err| panic!("sysctl {key}={value} in {}: {err}", self.name));
    }

    /// The index of interface `iface` inside the namespace.
    pub fn ifindex(&self, iface: &str) -> u32 {
        self.enter(|| nix::net::if_::if_nametoindex(iface))
            .unwrap_or_else(|err| panic!("ifindex of {iface} in {}: {err}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace: BPF attach calls and sockets made
    /// there act on this namespace and nothing else.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        enter(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete namespace {}", self.name);
        }
    }
}

/// A set of namespaces wired together, built step by step; dropping it removes everything.
#[derive(Debug, Default)]
pub struct Topology {
    namespaces: BTreeMap<String, Netns>,
}

impl Topology {
    pub fn new() -> Self {
        remove_leftovers();
        Self::default()
    }

    /// Adds a namespace known in this topology as `tag`.
    pub fn netns(&mut self, tag: &str) -> &mut Self {
        let netns = Netns::new(tag);
        self.namespaces.insert(tag.to_owned(), netns);
        self
    }

    /// The namespace added as `tag`.
    pub fn ns(&self, tag: &str) -> &Netns {
        self.namespaces
            .get(tag)
            .unwrap_or_else(|| panic!("no namespace {tag} in this topology"))
    }

    /// A veth pair from `a_if` in namespace `a` to `b_if` in namespace `b`, both ends up.
    pub fn veth(&mut self, (a, a_if): (&str, &str), (b, b_if): (&str, &str)) -> &mut Self {
        let b_name = self.ns(b).name().to_owned();
        self.ns(a).ip(&[
            "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b_name,
        ]);
        self.ns(a).ip(&["link", "set", a_if, "up"]);
        self.ns(b).ip(&["link", "set", b_if, "up"]);
        self
    }

    /// A Linux bridge `name` in namespace `ns`, up.
    pub fn bridge(&mut self, ns: &str, name: &str) -> &mut Self {
        self.ns(ns).ip(&["link", "add", name, "type", "bridge"]);
        self.ns(ns).ip(&["link", "set", name, "up"]);
        self
    }

    /// Puts `iface` on bridge `bridge` in namespace `ns`.
    pub fn attach_to_bridge(&mut self, ns: &str, iface: &str, bridge: &str) -> &mut Self {
        self.ns(ns).ip(&["link", "set", iface, "master", bridge]);
        self
    }

    /// Adds address `cidr` (e.g. 198.18.0.1/24) to `iface` in namespace `ns`.
    pub fn addr(&mut self, ns: &str, iface: &str, cidr: &str) -> &mut Self {
        self.ns(ns).ip(&["addr", "add", cidr, "dev", iface]);
        self
    }

    /// Adds a route to `dst` (a CIDR or `default`) via `gateway` in namespace `ns`.
    pub fn route(&mut self, ns: &str, dst: &str, gateway: &str) -> &mut Self {
        self.ns(ns).ip(&["route", "add", dst, "via", gateway]);
        self
    }

    /// Sets a sysctl in namespace `ns`.
    pub fn sysctl(&mut self, ns: &str, key: &str, value: &str) -> &mut Self {
        self.ns(ns).sysctl(key, value);
        self
    }
}

/// Runs `f` on a thread that has entered the namespace named `name` under /run/netns.
pub fn enter<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> R {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
                setns(file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|err| panic!("setns {path}: {err}"));
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs a command, panicking with its stderr when it fails; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|err| panic!("{cmd:?}: {err}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes namespaces left by test processes that no longer run (killed before their drops).
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// The running kernel's release string, e.g. 6.1.0-56-amd64.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The MAC address of `iface` in the namespace named `netns`.
pub fn mac_of(netns: &str, iface: &str) -> [u8; 6] {
    enter(netns, || {
        nix::ifaddrs::getifaddrs()
            .expect("getifaddrs")
            .filter(|a| a.interface_name == iface)
            .find_map(|a| a.address?.as_link_addr()?.addr())
    })
    .unwrap_or_else(|| panic!("no MAC for {iface} in {netns}"))
}
