//! `cargo xtask bench [--quick]`: bridgenet against Docker's iptables NAT (iptables-nft and
//! iptables-legacy), netavark-style nftables, the reference CNI plugins (bridge + portmap) and
//! plain routing, on one machine in one run.
//! Each round builds a fresh topology per variant (in a rotating order) and runs every
//! workload through it; then publishing time, memory per flow and the programs' cost from
//! bpf_stats. The report (BENCHMARKS.md and PNG plots) is written from the medians.
mod cni;
mod docker;
mod gc;
mod lab;
mod load;
mod report;
mod rulesets;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lab::{Lab, Variant};
use load::Closer;

use crate::setup;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Programs the bench runs, and the Debian package of each.
const PROGRAMS: &[(&str, &str)] = &[
    ("iperf3", "iperf3"),
    ("iptables-nft", "iptables"),
    ("iptables-legacy", "iptables"),
    ("nft", "nftables"),
    ("bpftool", "bpftool"),
    ("gnuplot", "gnuplot-nox"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/lib/cni/portmap", "containernetworking-plugins"),
    ("/usr/lib/cni/host-local", "containernetworking-plugins"),
    // Docker's attach beside bridgenet's (with setup::DOCKER_PROGRAMS: dockerd and its own).
    ("docker", "docker.io"),
];

/// Sizes and durations of one run.
pub struct Config {
    pub quick: bool,
    pub rounds: usize,
    /// Numbers of published TCP ports the connection and request/response rates are measured at.
    pub counts: Vec<u32>,
    pub time: Duration,
    /// iperf3's length: `-t SECONDS` or, for --quick, `-n BYTES`.
    pub iperf: Vec<String>,
    /// Client threads (and connections) of the rate workloads.
    pub workers: usize,
    /// Mappings published at once for the publishing times.
    pub publish: u32,
    /// Longest time given to publishing one iptables call per rule.
    pub publish_cap: Duration,
    /// Flows created for the memory measurement.
    pub flows: u32,
    /// Endpoints created and removed one after the other for the endpoint times.
    pub endpoints: u32,
    pub out: PathBuf,
}

impl Config {
    fn new(quick: bool) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if quick {
            Self {
                quick,
                rounds: 1,
                counts: vec![1, 100],
                time: Duration::from_millis(300),
                iperf: vec!["-n".into(), "20M".into()],
                workers: 4,
                publish: 300,
                publish_cap: Duration::from_secs(3),
                flows: 10_000,
                endpoints: 5,
                out: root.join("target/bench-quick"),
            }
        } else {
            Self {
                quick,
                rounds: 5,
                counts: vec![1, 100, 1_000, 10_000],
                time: Duration::from_millis(1500),
                iperf: vec!["-t".into(), "2".into()],
                workers: 4,
                publish: 10_000,
                publish_cap: Duration::from_secs(30),
                flows: 262_144,
                endpoints: 40,
                out: root,
            }
        }
    }
}

/// Every number of a run: samples per variant and measurement (one per round), and the
/// one-off measurements.
#[derive(Default)]
pub struct Results {
    pub samples: BTreeMap<(Variant, String), Vec<f64>>,
    pub publish: Vec<Publish>,
    pub memory: Vec<(String, String, f64)>,
    pub costs: Vec<Cost>,
    pub endpoints: Vec<EndpointTimes>,
    pub gc: Option<gc::GcCost>,
    pub load_before: String,
    pub load_after: String,
    pub minutes: f64,
}

impl Results {
    fn add(&mut self, v: Variant, key: &str, value: f64) {
        self.samples
            .entry((v, key.to_owned()))
            .or_default()
            .push(value);
    }
}

pub struct Publish {
    pub how: String,
    pub mappings: u32,
    pub secs: f64,
    /// Mappings done before the cap, when it was reached.
    pub capped: Option<u32>,
}

/// Seconds each create and each remove of an endpoint took, one way of asking.
pub struct EndpointTimes {
    pub how: String,
    pub create: Vec<f64>,
    pub remove: Vec<f64>,
}

pub struct Cost {
    pub workload: String,
    pub program: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

pub fn bench(quick: bool) -> Result<()> {
    let started = Instant::now();
    setup::build_tools()?;
    setup::programs(PROGRAMS)?;
    setup::programs(setup::DOCKER_PROGRAMS)?;
    // --quick takes the debug build, which `cargo xtask test` builds anyway (CI saves a release
    // build); the eBPF programs are optimized in both, the daemon's own times are not.
    let (profile, dir) = if quick {
        ("dev", "debug")
    } else {
        ("release", "release")
    };
    setup::cargo(&[
        "build",
        "--profile",
        profile,
        "--quiet",
        "--package",
        "bridgenet",
    ])?;
    let binary = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(dir)
        .join("bridgenet");
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // The daemons of a killed run hold its namespaces: stopped first.
    docker::remove_leftovers();
    lab::remove_leftovers();
    let root_rules = root_rules();
    let cfg = Config::new(quick);
    let mut results = Results {
        load_before: loadavg(),
        ..Default::default()
    };
    let outcome = run_all(&cfg, &binary, &mut results);
    if root_rules != self::root_rules() {
        eprintln!(
            "bench: WARNING: the root namespace's iptables/nftables rules changed during the run"
        );
    }
    outcome?;
    results.load_after = loadavg();
    results.minutes = started.elapsed().as_secs_f64() / 60.0;
    report::write(&cfg, &results)?;
    println!(
        "bench: done in {:.1} s; report in {}",
        started.elapsed().as_secs_f64(),
        cfg.out.join("BENCHMARKS.md").display()
    );
    Ok(())
}

fn run_all(cfg: &Config, binary: &Path, results: &mut Results) -> Result<()> {
    for round in 0..cfg.rounds {
        // A rotating order, so that no variant always runs first or last in a round.
        let mut order = Variant::ALL.to_vec();
        order.rotate_left(round % Variant::ALL.len());
        for v in order {
            check_stop()?;
            let t = Instant::now();
            measure(cfg, binary, v, round, results)
                .with_context(|| format!("round {}, {}", round + 1, v.name()))?;
            println!(
                "bench: round {}/{} {:<20} {:>5.1} s  {}",
                round + 1,
                cfg.rounds,
                v.name(),
                t.elapsed().as_secs_f64(),
                summary(results, v, cfg)
            );
        }
    }
    type Phase = fn(&Config, &Path, &mut Results) -> Result<()>;
    let phases: [(&str, Phase); 5] = [
        ("publishing times", publishing),
        ("endpoint times", endpoints),
        ("memory per flow", memory),
        ("GC cost", gc::measure),
        ("program cost", costs),
    ];
    for (name, phase) in phases {
        check_stop()?;
        let t = Instant::now();
        phase(cfg, binary, results).context(name)?;
        println!("bench: {name:<30} {:>5.1} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}

fn summary(results: &Results, v: Variant, cfg: &Config) -> String {
    let last = |k: &str| {
        results
            .samples
            .get(&(v, k.to_owned()))
            .and_then(|s| s.last().copied())
            .unwrap_or(f64::NAN)
    };
    let n = cfg.counts.last().unwrap();
    format!(
        "conn/s {:.0} (at {n}: {:.0}), rr/s {:.0}, dnat {:.1} Gbit/s",
        last("conn/1"),
        last(&format!("conn/{n}")),
        last("rr/1"),
        last("tput_dnat_1")
    )
}

/// One variant, one round: every workload at every mapping count.
fn measure(cfg: &Config, binary: &Path, v: Variant, round: usize, r: &mut Results) -> Result<()> {
    let mut lab = Lab::new(v, &round.to_string(), binary, &cfg.counts, true)?;
    let client = lab.ns("client");
    let endpoint = lab.ns("ep");
    for (i, &n) in cfg.counts.iter().enumerate() {
        check_stop()?;
        if v == Variant::CniReference && n > lab::CNI_MOST_MAPPINGS {
            break;
        }
        lab.publish(n)?;
        let to = lab.target(n);
        let conn = load::connections(&client, to, cfg.workers, cfg.time, Closer::Server)
            .with_context(|| format!("{n} mappings"))?;
        r.add(v, &format!("conn/{n}"), conn.rate());
        let conn = load::connections(&client, to, cfg.workers, cfg.time, Closer::Client)
            .with_context(|| format!("{n} mappings, the client closing first"))?;
        r.add(v, &format!("conn_cf/{n}"), conn.rate());
        let mut rr = load::request_response(&client, to, cfg.workers, cfg.time)
            .with_context(|| format!("{n} mappings"))?;
        r.add(v, &format!("rr/{n}"), rr.rate());
        if i == 0 {
            rr.latencies.sort_unstable();
            let pct = |p: f64| rr.latencies[((rr.latencies.len() - 1) as f64 * p) as usize] as f64;
            r.add(v, "lat_p50", pct(0.5) / 1000.0);
            r.add(v, "lat_p99", pct(0.99) / 1000.0);
            let udp = std::net::SocketAddrV4::new(lab.front(), lab::UDP_PORT);
            r.add(
                v,
                "udp",
                load::udp(&client, udp, cfg.workers, cfg.time)?.rate(),
            );
            for streams in [1, 4] {
                let gbit = iperf(cfg, &client, lab.front().into(), lab::IPERF_PORT, streams)?;
                r.add(v, &format!("tput_dnat_{streams}"), gbit);
                let gbit = iperf(
                    cfg,
                    &endpoint,
                    lab::CLIENT.into(),
                    lab::IPERF_MASQ_PORT,
                    streams,
                )?;
                r.add(v, &format!("tput_masq_{streams}"), gbit);
            }
            if lab.ipv6 {
                measure6(cfg, &lab, v, r)?;
            }
        }
        // Plain routing has no mappings: one measurement is its limit at every count.
        if v == Variant::Plain {
            break;
        }
    }
    Ok(())
}

/// The IPv6 workloads at one mapping, under the keys of IPv4's with a 6: the connection and
/// request/response rates, and one stream each way.
fn measure6(cfg: &Config, lab: &Lab, v: Variant, r: &mut Results) -> Result<()> {
    let (client, endpoint) = (lab.ns("client"), lab.ns("ep"));
    let to = lab.target6(1);
    let conn =
        load::connections(&client, to, cfg.workers, cfg.time, Closer::Server).context("IPv6")?;
    r.add(v, "conn6/1", conn.rate());
    let rr = load::request_response(&client, to, cfg.workers, cfg.time).context("IPv6")?;
    r.add(v, "rr6/1", rr.rate());
    let gbit = iperf(cfg, &client, lab.front6().into(), lab::IPERF_PORT, 1)?;
    r.add(v, "tput6_dnat_1", gbit);
    let gbit = iperf(
        cfg,
        &endpoint,
        lab::CLIENT6.into(),
        lab::IPERF_MASQ_PORT6,
        1,
    )?;
    r.add(v, "tput6_masq_1", gbit);
    Ok(())
}

/// iperf3 from namespace `ns` to `server:port` with `streams` streams; Gbit/s received.
fn iperf(cfg: &Config, ns: &str, server: std::net::IpAddr, port: u16, streams: u32) -> Result<f64> {
    let mut args = vec![
        "-c".to_owned(),
        server.to_string(),
        "-p".into(),
        port.to_string(),
        "-P".into(),
        streams.to_string(),
        "-J".into(),
    ];
    args.extend(cfg.iperf.iter().cloned());
    let mut last = String::new();
    // The server may still be starting, or finishing the previous test.
    for _ in 0..20 {
        check_stop()?;
        let out = Lab::command_in(ns, "iperf3")?.args(&args).output()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64()
            && out.status.success()
        {
            return Ok(bps / 1e9);
        }
        last = json["error"].as_str().unwrap_or("no JSON").to_owned();
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("iperf3 to {server}:{port} from {ns}: {last}")
}

/// Time to publish `cfg.publish` mappings: bridgenet's API (one call for the range),
/// iptables with one call per rule as Docker makes them, one iptables-restore, one nft -f.
fn publishing(cfg: &Config, binary: &Path, r: &mut Results) -> Result<()> {
    let n = cfg.publish;
    let whole = |v: Variant, how: &str, r: &mut Results| -> Result<()> {
        let mut lab = Lab::new(v, "pub", binary, &[1], false)?;
        let t = Instant::now();
        lab.publish(n)?;
        r.publish.push(Publish {
            how: how.into(),
            mappings: n,
            secs: t.elapsed().as_secs_f64(),
            capped: None,
        });
        Ok(())
    };
    whole(
        Variant::Bridgenet,
        "bridgenet: one API call (`port publish`)",
        r,
    )?;
    for v in [Variant::IptablesNft, Variant::IptablesLegacy] {
        let tool = v.iptables().unwrap();
        whole(v, &format!("{tool}-restore: one call"), r)?;
        check_stop()?;
        let lab = Lab::new(v, "pub", binary, &[1], false)?;
        let host = lab.ns("host");
        let base = rulesets::docker_base("docker0");
        let mut restore = Lab::command_in(&host, format!("{tool}-restore"))?;
        run_with_stdin(&mut restore, &base)?;
        let t = Instant::now();
        let mut done = 0;
        for m in lab::mappings(n).iter().skip(2) {
            if t.elapsed() > cfg.publish_cap {
                break;
            }
            check_stop()?;
            for rule in rulesets::docker_port_rules("docker0", m, rulesets::Family::V4) {
                let mut args = vec!["-w"];
                args.extend(rule.iter().map(String::as_str));
                Lab::run_in(&host, tool, &args)?;
            }
            done += 1;
        }
        r.publish.push(Publish {
            how: format!("{tool}: one call per rule, as Docker"),
            mappings: n,
            secs: t.elapsed().as_secs_f64(),
            capped: (done < n).then_some(done),
        });
    }
    whole(Variant::Netavark, "nft -f (netavark style): one call", r)?;
    check_stop()?;
    let m = n.min(lab::CNI_MOST_MAPPINGS);
    let mut lab = Lab::new(Variant::CniReference, "pub", binary, &[1], false)?;
    let t = Instant::now();
    lab.publish(m)?;
    r.publish.push(Publish {
        how: "CNI portmap: one ADD (bridge's result as prevResult)".into(),
        mappings: m,
        secs: t.elapsed().as_secs_f64(),
        capped: None,
    });
    Ok(())
}

/// Time to create and to remove an endpoint of its own namespace (what a container start and
/// stop wait for), one after the other: through the API (one HTTP request on the socket) and
/// through the CLI (a process each). The kernel deletes a removed endpoint's veth after the
/// answer, holding RTNL for 25-40 ms, and a create in that time waits for it: each create
/// follows a pause of `SETTLE` after the last removal, but those of one row, which follow the
/// API row's removals at once.
fn endpoints(cfg: &Config, binary: &Path, r: &mut Results) -> Result<()> {
    const SETTLE: Duration = Duration::from_millis(100);
    let lab = Lab::new(Variant::Bridgenet, "eps", binary, &[1], false)?;
    let times = |how: &str| EndpointTimes {
        how: how.into(),
        create: Vec::new(),
        remove: Vec::new(),
    };
    let mut api = times("API: one request on the socket");
    let mut back_to_back = times("API, each create right after the previous removal");
    let mut cli = times("CLI: `bridgenet endpoint create` / `rm`");
    for i in 0..cfg.endpoints {
        check_stop()?;
        // Each in a namespace bridgenet makes and removes, with one published port.
        for (prefix, row) in [("t", &mut api), ("b", &mut back_to_back)] {
            let (name, netns) = (format!("{prefix}{i}"), lab.ns(&format!("{prefix}{i}")));
            let body = serde_json::json!({
                "name": name, "network": "bridge", "netns": netns, "ip": null,
                "publish": [format!("{}:80", 30000 + i)], "expose": [], "publish_all": false
            });
            let t = Instant::now();
            lab.api("POST", "/endpoints", Some(&body))?;
            row.create.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            lab.api("DELETE", &format!("/endpoints/{name}"), None)?;
            row.remove.push(t.elapsed().as_secs_f64());
        }
        std::thread::sleep(SETTLE);

        let name = format!("c{i}");
        let netns = lab.ns(&name);
        let publish = format!("{}:80", 30000 + i);
        let t = Instant::now();
        lab.cli(&[
            "endpoint",
            "create",
            &name,
            "--network",
            "bridge",
            "--netns",
            &netns,
            "-p",
            &publish,
        ])?;
        cli.create.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        lab.cli(&["endpoint", "rm", &name])?;
        cli.remove.push(t.elapsed().as_secs_f64());
        std::thread::sleep(SETTLE);
    }
    r.endpoints.extend([api, back_to_back, cli]);
    drop(lab);

    // Docker's own attach, and bridgenet's under Docker, for the same container.
    let docker = docker::Dockerd::start(binary)?;
    r.endpoints.extend([
        docker.attach_times(
            "Docker 20.10, its bridge driver: `POST /networks/ID/connect` / `disconnect`",
            "docker-bridge",
            cfg.endpoints,
            false,
        )?,
        docker.attach_times(
            "Docker 20.10, bridgenet as its driver (`-d bridgenet`): the same requests",
            "bridgenet",
            cfg.endpoints,
            false,
        )?,
        docker.attach_times(
            "Docker 20.10, its bridge driver: `docker network connect` / `disconnect`",
            "docker-bridge",
            cfg.endpoints,
            true,
        )?,
    ]);
    Ok(())
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    if !child.wait()?.success() {
        bail!("restoring the base ruleset failed");
    }
    Ok(())
}

/// Memory per tracked flow: bridgenet's conntrack map against nf_conntrack.
fn memory(cfg: &Config, binary: &Path, r: &mut Results) -> Result<()> {
    // bridgenet: the conntrack map is an LRU hash, which the kernel preallocates whole.
    let lab = Lab::new(Variant::Bridgenet, "mem", binary, &[1], false)?;
    // The pin carries the layout version (bridgenet_common::layout::CONNTRACK).
    let map = lab.bpffs().join("CONNTRACK_v3");
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(&map)
        .output()?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bpftool map show {}", map.display()))?;
    let bytes = info["bytes_memlock"]
        .as_f64()
        .or_else(|| info["bytes_memlock"].as_str().and_then(|s| s.parse().ok()))
        .context("bytes_memlock")?;
    let entries = info["max_entries"].as_f64().context("max_entries")?;
    // The default limit (bridgenet_common::CT_MAX_FLOWS); the map has room past it so that a
    // flood never evicts a flow.
    let flows = 262_144.0;
    drop(lab);
    r.memory.push((
        "bridgenet".into(),
        format!(
            "CONNTRACK map, preallocated: {entries:.0} entries (1 per flow; the limit is \
             {flows:.0} flows), {:.1} MiB",
            bytes / 1048576.0
        ),
        bytes / flows,
    ));

    // nf_conntrack: real UDP flows from the client into the host under Docker's rules.
    let mut lab = Lab::new(Variant::IptablesNft, "mem", binary, &[1], false)?;
    lab.publish(1)?;
    let (slab0, meminfo0) = (slab("nf_conntrack")?, meminfo_slab()?);
    load::udp_flows(&lab.ns("client"), lab::HOST, cfg.flows)?;
    std::thread::sleep(Duration::from_millis(300));
    let count: f64 = Lab::run_in(
        &lab.ns("host"),
        "cat",
        &["/proc/sys/net/netfilter/nf_conntrack_count"],
    )?
    .trim()
    .parse()?;
    let (slab1, meminfo1) = (slab("nf_conntrack")?, meminfo_slab()?);
    drop(lab);
    if count < cfg.flows as f64 * 0.9 {
        bail!("only {count} of {} flows were tracked", cfg.flows);
    }
    let objsize = slab1.1;
    r.memory.push((
        "nf_conntrack (struct nf_conn only)".into(),
        format!(
            "{count:.0} flows: slab grew by {:.0} objects of {objsize:.0} bytes",
            slab1.0 - slab0.0
        ),
        (slab1.0 - slab0.0) * objsize / count,
    ));
    r.memory.push((
        "nf_conntrack (all kernel slab)".into(),
        format!(
            "{count:.0} flows: Slab in /proc/meminfo grew by {:.1} MiB (nf_conn, its extensions, \
             other activity on the machine)",
            (meminfo1 - meminfo0) / 1048576.0
        ),
        (meminfo1 - meminfo0) / count,
    ));
    Ok(())
}

/// (active objects, object size) of a slab cache.
fn slab(name: &str) -> Result<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/slabinfo")?;
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .with_context(|| format!("no {name} in /proc/slabinfo"))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|w| w.parse().unwrap_or(0.0))
        .collect();
    Ok((f[0], f[2]))
}

/// Slab: of /proc/meminfo, in bytes.
fn meminfo_slab() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("Slab in /proc/meminfo")?;
    Ok(kb * 1024.0)
}

/// Per-packet cost of bridgenet's programs: BPF_ENABLE_STATS held through an fd (the sysctl
/// is left alone), run_time_ns / run_cnt of the programs attached in the host namespace.
fn costs(cfg: &Config, binary: &Path, r: &mut Results) -> Result<()> {
    let mut lab = Lab::new(Variant::Bridgenet, "cost", binary, &[1], true)?;
    lab.publish(1)?;
    let host = lab.ns("host");
    let ids = program_ids(&host, &lab.bpffs())?;
    if ids.is_empty() {
        bail!("no program attached in {host}");
    }
    let _stats = enable_stats()?;
    let client = lab.ns("client");
    let (to, to6) = (lab.target(1), lab.target6(1));
    let workloads: [(&str, Workload); 4] = [
        (
            "connections",
            Box::new(|| {
                load::connections(&client, to, cfg.workers, cfg.time, Closer::Server).map(|_| ())
            }),
        ),
        (
            "request/response",
            Box::new(|| load::request_response(&client, to, cfg.workers, cfg.time).map(|_| ())),
        ),
        (
            "request/response over IPv6",
            Box::new(|| load::request_response(&client, to6, cfg.workers, cfg.time).map(|_| ())),
        ),
        (
            "iperf3 DNAT, 4 streams",
            Box::new(|| iperf(cfg, &client, lab::HOST.into(), lab::IPERF_PORT, 4).map(|_| ())),
        ),
    ];
    for (name, work) in workloads {
        let before = program_stats(&ids)?;
        work()?;
        let after = program_stats(&ids)?;
        for (id, (prog, t1, c1)) in &after {
            let (_, t0, c0) = &before[id];
            if c1 > c0 {
                r.costs.push(Cost {
                    workload: name.into(),
                    program: prog.clone(),
                    runs: c1 - c0,
                    ns_per_run: (t1 - t0) as f64 / (c1 - c0) as f64,
                });
            }
        }
    }
    Ok(())
}

/// One workload of the program-cost step.
type Workload<'a> = Box<dyn Fn() -> Result<()> + 'a>;

/// The ids of the programs attached in namespace `ns`: XDP and tc filters (`bpftool net
/// show`) and the tcx links the daemon pinned in `bpffs` (older bpftools do not list tcx).
fn program_ids(ns: &str, bpffs: &Path) -> Result<Vec<u64>> {
    let mut values = vec![serde_json::from_str(&Lab::run_in(
        ns,
        "bpftool",
        &["-j", "net", "show"],
    )?)?];
    for entry in std::fs::read_dir(bpffs)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("link_") {
            let out = Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(entry.path())
                .output()?;
            values.push(serde_json::from_slice(&out.stdout).unwrap_or_default());
        }
    }
    let json = serde_json::Value::Array(values);
    let mut ids = Vec::new();
    fn walk(v: &serde_json::Value, ids: &mut Vec<u64>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if (k == "id" || k == "prog_id")
                        && let Some(id) = x.as_u64()
                    {
                        ids.push(id);
                    }
                    walk(x, ids);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, ids)),
            _ => {}
        }
    }
    walk(&json, &mut ids);
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// name, run_time_ns, run_cnt of each program.
fn program_stats(ids: &[u64]) -> Result<BTreeMap<u64, (String, u64, u64)>> {
    let mut all = BTreeMap::new();
    for id in ids {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        all.insert(
            *id,
            (
                v["name"].as_str().unwrap_or("?").to_owned(),
                v["run_time_ns"].as_u64().unwrap_or(0),
                v["run_cnt"].as_u64().unwrap_or(0),
            ),
        );
    }
    Ok(all)
}

/// BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): run-time statistics while the returned fd is open.
fn enable_stats() -> Result<std::os::fd::OwnedFd> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    #[repr(C)]
    struct Attr {
        stats_type: u32,
        _pad: [u8; 124],
    }
    let attr = Attr {
        stats_type: 0, // BPF_STATS_RUN_TIME
        _pad: [0; 124],
    };
    // SAFETY: bpf(2) with a zeroed attribute of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &attr as *const Attr,
            std::mem::size_of::<Attr>() as u32,
        )
    };
    if fd < 0 {
        bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that we own.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The root namespace's rules, compared before and after the run.
fn root_rules() -> String {
    let mut all = String::new();
    // Legacy tables by name only: iptables-legacy-save would create them.
    all.push_str(&std::fs::read_to_string("/proc/net/ip_tables_names").unwrap_or_default());
    for (p, args) in [
        ("iptables-nft-save", &[][..]),
        ("nft", &["list", "ruleset"][..]),
    ] {
        if let Ok(out) = Command::new(p).args(args).output() {
            let text = String::from_utf8_lossy(&out.stdout);
            // Drop the timestamps and packet counters of the save formats.
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                all.push_str(line.split(" [").next().unwrap_or(line));
                all.push('\n');
            }
        }
    }
    all
}
