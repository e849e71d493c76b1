//! What a conntrack GC pass over a large table costs: its duration (the daemon's `status`),
//! the daemon's CPU over a window holding one pass, and how long API requests wait while
//! passes run (a pass that held the daemon's lock would show as the worst latency).
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Config, Results, check_stop,
    lab::{self, Lab, Variant},
    load,
};

/// GC runs every 10 s: a window this long holds at least one pass.
pub const WINDOW: Duration = Duration::from_millis(10_500);

pub struct GcCost {
    pub flows: u64,
    /// The last pass, as `status` reports it.
    pub pass_ms: u64,
    /// The daemon's CPU (user + system) in one window, which holds one pass.
    pub cpu_secs: f64,
    /// API requests (`GET /networks`, one connection each) during one window: how many, their
    /// median and their worst latency.
    pub requests: usize,
    pub api_p50_ms: f64,
    pub api_max_ms: f64,
}

/// Masqueraded UDP flows from the endpoint to the client fill the table (three quarters of
/// `cfg.flows`); both windows end within a UDP flow's 30-s timeout of its datagram, so that
/// the passes walk the whole table rather than expire it.
pub fn measure(cfg: &Config, binary: &Path, r: &mut Results) -> Result<()> {
    let lab = Lab::new(Variant::Bridgenet, "gc", binary, &[1])?;
    let pid = lab.daemon_pid().context("the daemon's pid")?;
    let flows = cfg.flows / 4 * 3;
    load::udp_flows(&lab.ns("ep"), lab::CLIENT, flows)?;
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < WINDOW {
        check_stop()?;
        let t = Instant::now();
        lab.api("GET", "/networks", None)?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    let cpu0 = cpu_secs(pid)?;
    std::thread::sleep(WINDOW);
    let cpu = cpu_secs(pid)? - cpu0;

    let status: serde_json::Value = serde_json::from_str(&lab.cli(&["status", "--json"])?)?;
    let tracked = status["conntrack"]["flows"].as_u64().unwrap_or(0);
    if tracked < u64::from(flows) / 10 * 9 {
        bail!("only {tracked} of {flows} flows were tracked");
    }
    let pass_ms = status["conntrack"]["last_gc"]["duration_ms"]
        .as_u64()
        .context("no GC pass in status")?;
    latencies.sort_by(f64::total_cmp);
    r.gc = Some(GcCost {
        flows: tracked,
        pass_ms,
        cpu_secs: cpu,
        requests: latencies.len(),
        api_p50_ms: latencies[latencies.len() / 2],
        api_max_ms: *latencies.last().unwrap(),
    });
    Ok(())
}

/// utime + stime of process `pid`, in seconds.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}
