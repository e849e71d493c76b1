//! What a conntrack GC pass over a large table costs: its duration (the daemon's `status`),
//! the daemon's CPU over a window holding one pass, and how long API requests wait while the
//! pass runs (a pass that held the daemon's lock would show as their worst latency), beside
//! the worst wait of the requests outside it.
use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
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
    /// median; how many overlapped the pass and their worst latency; the worst of the others.
    pub requests: usize,
    pub api_p50_ms: f64,
    pub during_pass: usize,
    pub api_max_ms: f64,
    pub api_max_outside_ms: f64,
}

/// Masqueraded UDP flows from the endpoint to the client fill the table (three quarters of
/// `cfg.flows`); both windows end within a UDP flow's 30-s timeout of its datagram, so that
/// the passes walk the whole table rather than expire it.
pub fn measure(cfg: &Config, binary: &Path, r: &mut Results) -> Result<()> {
    let lab = Lab::new(Variant::Bridgenet, "gc", binary, &[1], false)?;
    let pid = lab.daemon_pid().context("the daemon's pid")?;
    let flows = cfg.flows / 4 * 3;
    load::udp_flows(&lab.ns("ep"), lab::CLIENT, flows)?;
    // (when it was sent, ms since the Unix epoch; its latency, ms)
    let mut requests = Vec::new();
    let start = Instant::now();
    while start.elapsed() < WINDOW {
        check_stop()?;
        let sent = unix_ms(SystemTime::now());
        let t = Instant::now();
        lab.api("GET", "/networks", None)?;
        requests.push((sent, t.elapsed().as_secs_f64() * 1000.0));
    }
    let pass = pass_in(&lab, requests[0].0)?;

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
    let overlaps = |&(sent, ms): &(f64, f64)| sent < pass.1 && sent + ms > pass.0;
    let worst = |during: bool| {
        requests
            .iter()
            .filter(|r| overlaps(r) == during)
            .map(|r| r.1)
            .fold(0.0, f64::max)
    };
    let mut latencies: Vec<f64> = requests.iter().map(|r| r.1).collect();
    latencies.sort_by(f64::total_cmp);
    r.gc = Some(GcCost {
        flows: tracked,
        pass_ms,
        cpu_secs: cpu,
        requests: requests.len(),
        api_p50_ms: latencies[latencies.len() / 2],
        during_pass: requests.iter().filter(|r| overlaps(r)).count(),
        api_max_ms: worst(true),
        api_max_outside_ms: worst(false),
    });
    Ok(())
}

/// The GC pass that ran in the request window starting at `since` (ms since the Unix epoch),
/// as (start, end) in the same unit. Passes come every 10 s, so one starts in the window; it
/// may still be running when the window ends.
fn pass_in(lab: &Lab, since: f64) -> Result<(f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let (end, took) = loop {
        let status: serde_json::Value = serde_json::from_str(&lab.cli(&["status", "--json"])?)?;
        let gc = &status["conntrack"]["last_gc"];
        if let (Some(end), Some(took)) = (gc["ended_unix_ms"].as_f64(), gc["duration_ms"].as_f64())
            && end >= since
        {
            break (end, took);
        }
        if Instant::now() > deadline {
            bail!("no GC pass ended during the request window");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if end - took > since + WINDOW.as_secs_f64() * 1000.0 {
        bail!("the last GC pass started after the request window: passes are 10 s apart");
    }
    Ok((end - took, end))
}

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
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
