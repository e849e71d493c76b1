//! BENCHMARKS.md and the plots (gnuplot, PNG) from one run's results. The "Analysis" section
//! of an existing BENCHMARKS.md (between its markers) is kept: it is written by hand.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{Config, Results, lab::Variant};

const ANALYSIS_START: &str = "<!-- analysis: written by hand, kept by `cargo xtask bench` -->";
const ANALYSIS_END: &str = "<!-- end of analysis -->";

/// Median and spread (half the range, relative to the median) of one measurement.
fn stats(r: &Results, v: Variant, key: &str) -> Option<(f64, f64)> {
    let mut s = r.samples.get(&(v, key.to_owned()))?.clone();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    let spread = if median > 0.0 {
        (s[n - 1] - s[0]) / 2.0 / median
    } else {
        0.0
    };
    Some((median, spread))
}

/// The `q` quantile of `samples` (nearest rank); 0 when there are none.
fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

fn median(r: &Results, v: Variant, key: &str) -> f64 {
    stats(r, v, key).map_or(f64::NAN, |s| s.0)
}

/// Plain routing was measured once (it has no mappings): its value at every count.
fn key_for(v: Variant, key: &str) -> String {
    match (v, key.split_once('/')) {
        (Variant::Plain, Some((w, _))) => format!("{w}/1"),
        _ => key.to_owned(),
    }
}

fn cell(r: &Results, v: Variant, key: &str, digits: usize) -> String {
    match stats(r, v, &key_for(v, key)) {
        Some((m, s)) => format!("{m:.digits$} ±{:.0}%", s * 100.0),
        None => "–".into(),
    }
}

pub fn write(cfg: &Config, r: &Results) -> Result<()> {
    let plots = cfg.out.join("docs/bench");
    std::fs::create_dir_all(&plots)?;
    let report = cfg.out.join("BENCHMARKS.md");
    let analysis = std::fs::read_to_string(&report)
        .ok()
        .and_then(|old| {
            let a = old.find(ANALYSIS_START)? + ANALYSIS_START.len();
            let b = old.find(ANALYSIS_END)?;
            Some(old[a..b].trim().to_owned())
        })
        .unwrap_or_else(|| "(none yet)".into());
    samples_csv(r, &plots.join("samples.csv"))?;
    plot(cfg, r, &plots)?;

    let mut md = String::new();
    let w = &mut md;
    let last = *cfg.counts.last().unwrap();
    writeln!(w, "# Benchmarks\n")?;
    writeln!(
        w,
        "bridgenet against Docker's iptables NAT, netavark-style nftables, the reference CNI plugins \
         (bridge + portmap) and plain routing, \
         measured on one machine in one run of `cargo xtask bench{}` ({:.0} minutes). \
         Everything below the analysis is written by that command; the raw samples are in \
         [docs/bench/samples.csv](docs/bench/samples.csv).\n",
        if cfg.quick { " --quick" } else { "" },
        r.minutes
    )?;
    writeln!(w, "{ANALYSIS_START}\n{analysis}\n{ANALYSIS_END}\n")?;

    writeln!(w, "## Targets\n")?;
    writeln!(w, "Ratios of medians within this run.\n")?;
    writeln!(w, "| target | measured | |\n|---|---|---|")?;
    let bn = Variant::Bridgenet;
    let nft = Variant::IptablesNft;
    let mut target = |name: String, value: f64, goal: f64, higher: bool, unit: &str| {
        let met = if higher { value >= goal } else { value <= goal };
        let _ = writeln!(
            w,
            "| {name} | {value:.2}{unit} | {} |",
            if met { "met" } else { "**missed**" }
        );
    };
    let c = |v, n: u32| median(r, v, &key_for(v, &format!("conn/{n}")));
    target(
        format!("connection rate at {last} mappings >= 4x iptables-nft"),
        c(bn, last) / c(nft, last),
        4.0,
        true,
        "x",
    );
    target(
        format!("connection rate at {last} mappings >= 0.95x bridgenet at 1"),
        c(bn, last) / c(bn, 1),
        0.95,
        true,
        "x",
    );
    target(
        "connection rate at 1 mapping >= 1.2x iptables-nft".into(),
        c(bn, 1) / c(nft, 1),
        1.2,
        true,
        "x",
    );
    target(
        "connection rate at 1 mapping >= 1.1x no NAT".into(),
        c(bn, 1) / c(Variant::Plain, 1),
        1.1,
        true,
        "x",
    );
    target(
        "request/response at 1 mapping >= 1.2x iptables-nft".into(),
        median(r, bn, "rr/1") / median(r, nft, "rr/1"),
        1.2,
        true,
        "x",
    );
    target(
        "request/response at 1 mapping >= 1.1x no NAT".into(),
        median(r, bn, "rr/1") / median(r, Variant::Plain, "rr/1"),
        1.1,
        true,
        "x",
    );
    for (prefix, name) in [
        ("conn_cf", "connection rate, the client closing first,"),
        ("rr", "request/response"),
    ] {
        let m = |n: u32| median(r, bn, &format!("{prefix}/{n}"));
        target(
            format!("{name} at {last} mappings >= 0.95x bridgenet at 1"),
            m(last) / m(1),
            0.95,
            true,
            "x",
        );
    }
    for (key, name) in THROUGHPUT {
        target(
            format!("throughput {name} >= 1.0x iptables-nft"),
            median(r, bn, key) / median(r, nft, key),
            1.0,
            true,
            "x",
        );
        target(
            format!("throughput {name} >= 1.0x no NAT"),
            median(r, bn, key) / median(r, Variant::Plain, key),
            1.0,
            true,
            "x",
        );
    }
    if let Some(p) = r.publish.first() {
        target(
            format!("publishing {} mappings < 1 s", p.mappings),
            p.secs,
            1.0,
            false,
            " s",
        );
    }
    if let Some(e) = r.endpoints.first() {
        for (what, samples) in [("create", &e.create), ("remove", &e.remove)] {
            target(
                format!("endpoint {what} through the API <= 10 ms (median)"),
                quantile(samples, 0.5) * 1000.0,
                10.0,
                false,
                " ms",
            );
        }
    }
    if let Some(gc) = &r.gc {
        target(
            format!(
                "daemon CPU in a window with a GC pass over {} flows <= 0.3 s",
                gc.flows
            ),
            gc.cpu_secs,
            0.3,
            false,
            " s",
        );
        target(
            "API request during a GC pass <= 50 ms (worst)".into(),
            gc.api_max_ms,
            50.0,
            false,
            " ms",
        );
    }
    if let Some((_, _, bytes)) = r.memory.first() {
        // 0.75x the 256 bytes of struct nf_conn.
        target(
            "memory per flow <= 192 bytes".into(),
            *bytes,
            192.0,
            false,
            " B",
        );
    }
    // Per packet, under request/response over IPv4; the socket hooks, which ran only at the
    // connections' start, are not per-packet costs.
    for c in r
        .costs
        .iter()
        .filter(|c| c.workload == "request/response" && c.runs >= 1000)
    {
        let goal = if c.program == "uplink_ingress" {
            250.0
        } else {
            150.0
        };
        target(
            format!(
                "{} under request/response <= {goal:.0} ns per run",
                c.program
            ),
            c.ns_per_run,
            goal,
            false,
            " ns",
        );
    }
    writeln!(w)?;

    writeln!(w, "## Results\n")?;
    writeln!(
        w,
        "Each cell: the median of {} round{}, ± half the range of the rounds relative to the \
         median. Plain routing has no mappings: its one measurement is repeated in every column.\n",
        cfg.rounds,
        if cfg.rounds == 1 { "" } else { "s" }
    )?;
    for (prefix, title) in [
        (
            "conn",
            "TCP connections per second (connect, 1-byte request, response; the server closes first)",
        ),
        (
            "conn_cf",
            "TCP connections per second, the client closing first (its ports reused through TIME_WAIT)",
        ),
        (
            "rr",
            "TCP requests/responses per second (1 byte each way, persistent connections)",
        ),
    ] {
        writeln!(w, "### {title}\n")?;
        let heads: Vec<String> = cfg
            .counts
            .iter()
            .map(|n| format!("{n} mapping{}", if *n == 1 { "" } else { "s" }))
            .collect();
        writeln!(w, "| variant | {} |", heads.join(" | "))?;
        writeln!(w, "|---|{}", "---:|".repeat(cfg.counts.len()))?;
        for v in Variant::ALL {
            let cells: Vec<String> = cfg
                .counts
                .iter()
                .map(|n| cell(r, v, &format!("{prefix}/{n}"), 0))
                .collect();
            writeln!(w, "| {} | {} |", v.name(), cells.join(" | "))?;
        }
        writeln!(w)?;
    }
    writeln!(
        w,
        "### Throughput (iperf3, Gbit/s) and UDP, latency at 1 mapping\n"
    )?;
    writeln!(
        w,
        "| variant | {} | UDP req/resp per s | TCP req/resp p50 µs | p99 µs |",
        THROUGHPUT
            .iter()
            .map(|t| t.1)
            .collect::<Vec<_>>()
            .join(" | ")
    )?;
    writeln!(w, "|---|{}", "---:|".repeat(THROUGHPUT.len() + 3))?;
    for v in Variant::ALL {
        let mut cells: Vec<String> = THROUGHPUT.iter().map(|(k, _)| cell(r, v, k, 2)).collect();
        cells.push(cell(r, v, "udp", 0));
        cells.push(cell(r, v, "lat_p50", 1));
        cells.push(cell(r, v, "lat_p99", 1));
        writeln!(w, "| {} | {} |", v.name(), cells.join(" | "))?;
    }
    writeln!(w)?;

    ipv6(w, r)?;

    writeln!(w, "### Time to publish mappings\n")?;
    writeln!(w, "| how | mappings | time |\n|---|---:|---:|")?;
    for p in &r.publish {
        let time = match p.capped {
            Some(done) => format!(
                "stopped after {:.1} s with {done} done; at that pace {:.0} s or more",
                p.secs,
                p.secs * p.mappings as f64 / done.max(1) as f64
            ),
            None => format!("{:.3} s", p.secs),
        };
        writeln!(w, "| {} | {} | {time} |", p.how, p.mappings)?;
    }
    writeln!(w)?;

    writeln!(w, "### Time to create and remove an endpoint\n")?;
    writeln!(
        w,
        "| how | endpoints | create p50 ms | p90 ms | remove p50 ms | p90 ms |\n\
         |---|---:|---:|---:|---:|---:|"
    )?;
    for e in &r.endpoints {
        let ms = |samples: &[f64], q: f64| format!("{:.1}", quantile(samples, q) * 1000.0);
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            e.how,
            e.create.len(),
            ms(&e.create, 0.5),
            ms(&e.create, 0.9),
            ms(&e.remove, 0.5),
            ms(&e.remove, 0.9)
        )?;
    }
    writeln!(w)?;

    if let Some(gc) = &r.gc {
        writeln!(w, "### Conntrack garbage collection\n")?;
        writeln!(
            w,
            "| flows | last pass | daemon CPU in {:.1} s with one pass | API requests in {:.1} s \
             | p50 ms | during the pass | worst ms during the pass | worst ms outside it |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|",
            super::gc::WINDOW.as_secs_f64(),
            super::gc::WINDOW.as_secs_f64()
        )?;
        writeln!(
            w,
            "| {} | {} ms | {:.2} s | {} | {:.2} | {} | {:.1} | {:.1} |\n",
            gc.flows,
            gc.pass_ms,
            gc.cpu_secs,
            gc.requests,
            gc.api_p50_ms,
            gc.during_pass,
            gc.api_max_ms,
            gc.api_max_outside_ms
        )?;
    }

    writeln!(w, "### Memory per tracked flow\n")?;
    writeln!(
        w,
        "| what | how measured | bytes per flow |\n|---|---|---:|"
    )?;
    for (what, how, per) in &r.memory {
        writeln!(w, "| {what} | {how} | {per:.0} |")?;
    }
    writeln!(w)?;

    writeln!(
        w,
        "### Per-packet cost of bridgenet's programs (bpf_stats)\n"
    )?;
    writeln!(
        w,
        "| workload | program | runs | ns per run |\n|---|---|---:|---:|"
    )?;
    for c in &r.costs {
        writeln!(
            w,
            "| {} | {} | {} | {:.0} |",
            c.workload, c.program, c.runs, c.ns_per_run
        )?;
    }
    writeln!(w)?;

    writeln!(w, "## Plots\n")?;
    for (file, alt) in [
        (
            "conn_rate.png",
            "connections per second against published ports",
        ),
        (
            "rr_rate.png",
            "requests/responses per second against published ports",
        ),
        ("throughput.png", "iperf3 throughput"),
        ("latency.png", "request/response latency"),
    ] {
        writeln!(w, "![{alt}](docs/bench/{file})\n")?;
    }

    writeln!(w, "## Machine\n")?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0);
    writeln!(
        w,
        "- CPU: {cpu}, {} cores; memory {:.0} GiB",
        num_cpus(),
        mem / 1048576.0
    )?;
    writeln!(w, "- Kernel: {}", version("uname", &["-r"]))?;
    writeln!(
        w,
        "- Tools: {}; {}; {}",
        version("iptables-nft", &["--version"]),
        version("nft", &["--version"]),
        version("iperf3", &["--version"])
            .lines()
            .next()
            .unwrap_or("")
    )?;
    writeln!(
        w,
        "- Load average before the run: {}; after: {} (the machine is shared: other builds and \
         tests may have run at the same time)\n",
        r.load_before, r.load_after
    )?;

    writeln!(w, "## Method\n")?;
    writeln!(w, "{}", method(cfg))?;
    writeln!(w, "## How to reproduce\n")?;
    writeln!(
        w,
        "```sh\ncargo xtask bench          # this report: {} rounds, about {:.0} minutes\n\
         cargo xtask bench --quick  # one short round, seconds; CI runs it; report in target/bench-quick/\n```\n\
         It needs root, Linux 6.1+, and installs iperf3, iptables, nftables, bpftool and \
         gnuplot-nox with apt when missing. It builds bridgenet in release mode (`--quick`: \
         the debug build, whose eBPF programs are optimized all the same but whose daemon \
         times, publishing and endpoint times, are not representative).",
        cfg.rounds, r.minutes
    )?;
    std::fs::write(&report, md)?;
    Ok(())
}

/// The measurements of both families at one mapping: IPv6's key, IPv4's, and the heading.
const FAMILIES: [(&str, &str, &str); 4] = [
    ("conn6/1", "conn/1", "connections/s"),
    ("rr6/1", "rr/1", "req/resp per s"),
    ("tput6_dnat_1", "tput_dnat_1", "DNAT 1 stream Gbit/s"),
    ("tput6_masq_1", "tput_masq_1", "masquerade 1 stream Gbit/s"),
];

/// The IPv6 table: each variant measured over IPv6, beside its own IPv4 figures of the same
/// labs, and bridgenet's ratios to the others in each family.
fn ipv6(w: &mut String, r: &Results) -> Result<()> {
    let variants: Vec<Variant> = Variant::ALL.into_iter().filter(|v| v.ipv6()).collect();
    writeln!(w, "### IPv6 at 1 mapping, beside IPv4\n")?;
    writeln!(
        w,
        "The same labs carry both families: a dual-stack network (bridgenet: `network create \
         --ipv6 --subnet 172.17.0.0/16 --subnet 2001:db8:17::/64`, `-p` publishing on both); \
         for *iptables-nft* the same Docker rules written for IPv6 with `ip6tables-nft-restore` \
         as Docker 20.10 writes them with `\"ip6tables\": true` (DNAT to \
         `[2001:db8:17::2]:PORT`, MASQUERADE of the IPv6 subnet); plain IPv6 routing has no rule.\n"
    )?;
    let heads: Vec<String> = FAMILIES
        .iter()
        .map(|(_, _, h)| format!("{h} IPv6 | IPv4"))
        .collect();
    writeln!(w, "| variant | {} |", heads.join(" | "))?;
    writeln!(w, "|---|{}", "---:|".repeat(FAMILIES.len() * 2))?;
    let digits = |key: &str| if key.starts_with("tput") { 2 } else { 0 };
    for &v in &variants {
        let cells: Vec<String> = FAMILIES
            .iter()
            .map(|(k6, k4, _)| {
                format!(
                    "{} | {}",
                    cell(r, v, k6, digits(k6)),
                    cell(r, v, k4, digits(k4))
                )
            })
            .collect();
        writeln!(w, "| {} | {} |", v.name(), cells.join(" | "))?;
    }
    let bn = Variant::Bridgenet;
    for &other in variants.iter().filter(|v| **v != bn) {
        let cells: Vec<String> = FAMILIES
            .iter()
            .map(|(k6, k4, _)| {
                let ratio = |k: &str| median(r, bn, k) / median(r, other, &key_for(other, k));
                format!("{:.2}x | {:.2}x", ratio(k6), ratio(k4))
            })
            .collect();
        writeln!(
            w,
            "| bridgenet / {} | {} |",
            other.name(),
            cells.join(" | ")
        )?;
    }
    writeln!(w)?;
    Ok(())
}

const THROUGHPUT: [(&str, &str); 4] = [
    ("tput_dnat_1", "DNAT 1 stream"),
    ("tput_dnat_4", "DNAT 4 streams"),
    ("tput_masq_1", "masquerade 1 stream"),
    ("tput_masq_4", "masquerade 4 streams"),
];

fn method(cfg: &Config) -> String {
    format!(
        "- **Topology.** Three network namespaces: a client (eth0 198.18.0.1), a host (uplink0 \
198.18.0.2, a bridge, the NAT) and an endpoint (eth0 172.17.0.2/16 on the bridge), joined by veth \
pairs. Each variant gets a fresh set of namespaces in every round, so no variant inherits \
another's netfilter hooks or conntrack entries; the variants run one after the other in an order \
that rotates each round ({rounds} round{s}).\n\
- **Variants.** *bridgenet*: the release build of the daemon (`--quick`: the debug build) in the host namespace, the endpoint \
made with `bridgenet endpoint create --netns` and ports published with `bridgenet port publish`. \
*iptables-nft* and *iptables-legacy*: the rules Docker 20.10 writes for the default bridge \
(`docker0`) and its published ports: nat PREROUTING/OUTPUT jumps to DOCKER (`-m addrtype \
--dst-type LOCAL`), POSTROUTING MASQUERADE of the subnet and a hairpin MASQUERADE per port, \
`DOCKER ! -i docker0 -p tcp --dport H -j DNAT`; filter FORWARD (policy DROP) through DOCKER-USER, \
DOCKER-ISOLATION-STAGE-1/2, the RELATED,ESTABLISHED accept and DOCKER with one ACCEPT per port \
(`xtask/src/bench/rulesets.rs`), loaded with `iptables-restore` of each backend. *nftables \
(netavark)*: one `inet netavark` table as netavark's nftables driver writes it: the hooks' base \
chains, NETAVARK-HOSTPORT-DNAT with one `dport -> jump` rule per port into the network's dnat \
chain, which has per port the two SETMARK jumps and the `dnat ip to`; netavark's driver uses no \
verdict map for ports, and neither does this. *CNI bridge + portmap*: the reference plugins of Debian's containernetworking-plugins as a Kubernetes node runs them, called as a runtime calls them (`xtask/src/bench/cni.rs`): `bridge` ADD (bridge `cni0`, host-local IPAM, `ipMasq`), then `portmap` ADD with the mappings in `runtimeConfig.portMappings` and `bridge`'s result as `prevResult` (a DEL and an ADD when the count changes); `portmap` writes per port two SETMARK jumps and a DNAT into the pod's CNI-DN chain, reached from CNI-HOSTPORT-DNAT; measured up to {cni_most} mappings, since its ADD of 1,000 took over a minute here. *routing, no NAT*: no rule at all (no conntrack \
hook is registered); the client sends to 172.17.0.2 directly: the limit of the path.\n\
- **Mappings.** Published TCP ports host 10000+i -> endpoint 20000+i, plus 9999/udp and 5201 \
(iperf3) published first; the port measured at N mappings is the last one (host 10000+N-1), \
so in the iptables variants its DNAT and ACCEPT rules are the last of their chains. Counts: \
{counts:?}.\n\
- **Load.** A small load tool in this command (`xtask/src/bench/load.rs`), threads that enter \
the namespaces with setns: {workers} client threads in the client namespace, 8 acceptor threads \
per port in the endpoint's. Connection rate: connect, send 1 byte, read 1 byte, close, for \
{time:?} per measurement; the server closes first, like an HTTP/1.0 server, so the \
client's ports are free at once (its TIME_WAIT is on the server side). Request/response: {workers} persistent connections, 1 byte each way; \
latency is the time of each exchange (p50, p99) at 1 mapping. UDP: {workers} sockets, one \
datagram each way to the published 9999/udp. Throughput: iperf3 ({iperf}), through DNAT \
(client -> host:5201 -> endpoint) and through masquerade (endpoint -> client:5202), 1 and 4 \
streams. On a 2-core machine the load tool, the servers and the kernel's forwarding share \
the cores, as they would in production on a small host.\n\
- **IPv6.** In the labs of bridgenet, iptables-nft and plain routing the links also carry IPv6 \
(client 2001:db8:ff::1, uplink0 2001:db8:ff::2, endpoint 2001:db8:17::2/64), and at 1 mapping \
the connection rate, request/response and one iperf3 stream each way are also measured over \
IPv6 to `[2001:db8:ff::2]:10000` (the endpoint's IPv6-only listener on 20000), \
`[2001:db8:ff::2]:5201` and `[2001:db8:ff::1]:5203`; the program costs include \
request/response over IPv6.\n\
- **Publishing time.** {publish} mappings published at once in a fresh host: bridgenet with one \
`port publish ep 10000-...:20000-...` call (CLI -> API -> maps); Docker's way, one `iptables -w` \
call per rule (three per port, appended after the network's base rules; stopped after \
{cap:?} and extrapolated linearly, which is a lower bound since each call grows with the \
table); one `iptables-restore` of the whole ruleset; one `nft -f` of the netavark ruleset; one `portmap` ADD (up to {cni_most} mappings).\n\
- **Endpoint times.** bridgenet: {endpoints} endpoints, each in a namespace the daemon makes \
and removes, with one published port, created and removed one after the other through the API \
(one request on its socket), again with each create right after the previous removal, and \
through the CLI (a process each). Docker: a dockerd (Debian's 20.10) in a namespace of its own \
and a private mount namespace, as the Docker tests run it (vfs storage, `--iptables=false`, \
`--bridge=none`: no rule is written for an attach without ports either way), with bridgenet's \
daemon as its driver; one running container is connected to and disconnected from a network \
{endpoints} times (`POST /networks/ID/connect` and `disconnect`, or `docker network connect` and \
`disconnect`): Docker's bridge driver, then bridgenet's (`-d bridgenet`). That attach is the \
one `docker run` waits for, in a namespace that already exists, without a port. Each create \
follows a pause of 100 ms after the last removal (the kernel deletes a removed veth after the \
answer, holding RTNL for 25-40 ms), but those of the back-to-back row.\n\
- **Memory per flow.** bridgenet: the kernel's `bytes_memlock` of the CONNTRACK map (`bpftool \
map show`), an LRU hash the kernel preallocates whole, divided by the flows it holds (one \
entry per flow, both directions in it; the default limit of 262,144 flows): the same whether it \
is empty or full. nf_conntrack: {flows} UDP flows sent from the client to the host under \
Docker's rules (iptables-nft), counted with the namespace's `nf_conntrack_count`; the growth \
of the `nf_conntrack` slab (struct nf_conn) and of all kernel slab (`Slab:` in /proc/meminfo, \
which adds the conntrack extensions and whatever else the machine did meanwhile) per flow.\n\
- **Conntrack GC.** A fresh bridgenet host; the endpoint opens {gc_flows} masqueraded UDP \
flows (one datagram each to a distinct port of the client), then for {window:?} `GET /networks` \
requests one after the other (one connection each, as `Lab::api`); the requests whose time \
overlapped the pass (its end and duration from `status`) give the longest the API waited for \
it, the others the worst wait without it; then, still within the flows' 30-s timeout, the daemon's CPU (utime + stime of /proc/PID/stat) is read across {window:?}, which holds one GC pass \
(every 10 s) besides the daemon's 1-s ticks. The last pass's duration is `status`'s.\n\
- **Program cost.** `BPF_ENABLE_STATS` through a file descriptor held by this command (the \
`kernel.bpf_stats_enabled` sysctl is not touched), then run_time_ns and run_cnt of the \
programs attached in bridgenet's host namespace (`bpftool net show`), before and after a \
connection, a request/response and an iperf3 run. Statistics are on only for this step, so \
they cost the measured rounds nothing.\n",
        rounds = cfg.rounds,
        s = if cfg.rounds == 1 { "" } else { "s" },
        counts = cfg.counts,
        workers = cfg.workers,
        time = cfg.time,
        iperf = cfg.iperf.join(" "),
        publish = cfg.publish,
        cap = cfg.publish_cap,
        cni_most = super::lab::CNI_MOST_MAPPINGS,
        gc_flows = cfg.flows / 4 * 3,
        window = super::gc::WINDOW,
        flows = cfg.flows,
        endpoints = cfg.endpoints,
    )
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn version(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn samples_csv(r: &Results, path: &Path) -> Result<()> {
    let mut csv = String::from("variant,measurement,round,value\n");
    for ((v, key), values) in &r.samples {
        for (i, x) in values.iter().enumerate() {
            writeln!(csv, "{},{key},{},{x}", v.name().replace(',', ";"), i + 1)?;
        }
    }
    std::fs::write(path, csv)?;
    Ok(())
}

/// Writes the data files and runs gnuplot for the four plots.
fn plot(cfg: &Config, r: &Results, dir: &Path) -> Result<()> {
    let tmp = tempfile(dir)?;
    let mut script = String::from(
        "set terminal pngcairo size 1000,560 font 'sans,11'\nset grid ytics\nset key outside right top\n",
    );
    let colors = [
        "#d62728", "#1f77b4", "#9467bd", "#2ca02c", "#ff7f0e", "#7f7f7f",
    ];
    for (prefix, file, ylabel) in [
        ("conn", "conn_rate.png", "TCP connections per second"),
        ("rr", "rr_rate.png", "TCP requests/responses per second"),
    ] {
        let data = tmp.join(format!("{prefix}.dat"));
        let mut d = String::new();
        for v in Variant::ALL {
            writeln!(d, "# {}", v.name())?;
            for n in &cfg.counts {
                writeln!(
                    d,
                    "{n} {}",
                    median(r, v, &key_for(v, &format!("{prefix}/{n}")))
                )?;
            }
            d.push_str("\n\n");
        }
        std::fs::write(&data, d)?;
        let lines: Vec<String> = Variant::ALL
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "'{}' index {i} using 1:2 with linespoints lw 2 pt 7 lc rgb '{}' {} title '{}'",
                    data.display(),
                    colors[i],
                    if *v == Variant::Plain { "dt 2" } else { "" },
                    v.name()
                )
            })
            .collect();
        writeln!(
            script,
            "set output '{}'\nset title '{ylabel} through one published port'\nset logscale x\n\
             set xlabel 'published TCP ports (mappings)'\nset ylabel '{ylabel}'\nset yrange [0:*]\n\
             set xrange [0.7:{}]\nplot {}\nunset logscale x\n",
            dir.join(file).display(),
            *cfg.counts.last().unwrap() as f64 * 1.4,
            lines.join(", ")
        )?;
    }
    for (file, title, ylabel, groups) in [
        (
            "throughput.png",
            "iperf3 throughput",
            "Gbit/s",
            THROUGHPUT.to_vec(),
        ),
        (
            "latency.png",
            "TCP request/response latency at 1 mapping (4 connections)",
            "microseconds",
            vec![("lat_p50", "p50"), ("lat_p99", "p99")],
        ),
    ] {
        let data = tmp.join(format!("{file}.dat"));
        let mut d = String::new();
        for (key, name) in &groups {
            let values: Vec<String> = Variant::ALL
                .iter()
                .map(|v| format!("{}", median(r, *v, key)))
                .collect();
            // Short labels under the bars: "DNAT 1 stream" -> "DNAT, 1 stream".
            let label = name.replace("masquerade", "masq.").replacen(' ', ", ", 1);
            writeln!(d, "\"{label}\" {}", values.join(" "))?;
        }
        std::fs::write(&data, d)?;
        let bars: Vec<String> = Variant::ALL
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "'{}' using {}{} lc rgb '{}' title '{}'",
                    data.display(),
                    i + 2,
                    if i == 0 { ":xtic(1)" } else { "" },
                    colors[i],
                    v.name()
                )
            })
            .collect();
        writeln!(
            script,
            "set output '{}'\nset title '{title}'\nset xlabel ''\nset ylabel '{ylabel}'\n\
             set xrange [*:*]\nset yrange [0:*]\nset style data histograms\n\
             set style histogram clustered gap 1\nset style fill solid 0.9 border -1\n\
             set boxwidth 0.9\nplot {}\nset style data lines\n",
            dir.join(file).display(),
            bars.join(", ")
        )?;
    }
    let script_path = tmp.join("plots.gp");
    std::fs::write(&script_path, &script)?;
    let out = Command::new("gnuplot")
        .arg(&script_path)
        .output()
        .context("running gnuplot")?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !out.status.success() {
        bail!("gnuplot: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn tempfile(dir: &Path) -> Result<std::path::PathBuf> {
    let tmp = dir.join(format!(".plot-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    Ok(tmp)
}
