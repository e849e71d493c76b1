//! `cargo xtask test`: builds the test binaries once, runs them on the running kernel, then
//! boots each kernel of the matrix with virtme-ng and runs the same binaries inside it.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cargo_metadata::Message;

use crate::{setup, static_keys};

/// Test binaries named so (`tests/tests/host_*.rs`) run on the host's kernel only: what they
/// test does not depend on the kernel (Docker's calls into the driver), and the matrix covers
/// the datapath. They are left out of the guests' plans, not counted as skipped there.
const HOST_ONLY_PREFIX: &str = "host_";

/// How long one kernel of the matrix may take, boot included (software emulation is slow).
const VM_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// The file, beside a guest's report, that names the test binary the guest runs.
const PROGRESS: &str = "progress";
/// In a guest's directory: its kernel's log, the test runner's exit status, and the guest's
/// memory over time.
const DMESG: &str = "dmesg";
const RUNNER_STATUS: &str = "runner-status";
const MEMORY: &str = "memory";
/// In a guest's directory: one line per test binary that ran to its end
/// (`FILE PASSED FAILED IGNORED CRASHED`), for resuming in a new guest when one goes down.
const DONE: &str = "done";
/// Also there: the guest's console (warnings and worse: a panic, an oops) and QEMU's log of
/// CPU resets (a triple fault), which say how a guest that went down without a word ended.
const CONSOLE: &str = "console";
const QEMU_LOG: &str = "qemu.log";
/// Where the tests run again after a guest went down, under the kernel's directory.
const RESUMED: &str = "resumed";

/// Test counts of one run of the binaries on one kernel.
#[derive(Debug, Default)]
struct Summary {
    kernel: String,
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Binaries that exited non-zero without reporting a failed test (crash, abort).
    crashed: Vec<String>,
    /// How the first guest went down when the tests resumed in a second one.
    resumed_after: Option<String>,
}

impl Summary {
    fn ok(&self) -> bool {
        // An ignored test is a test that did not run: not allowed to pass as green.
        self.failed == 0 && self.ignored == 0 && self.crashed.is_empty() && self.passed > 0
    }
}

pub fn test(kernels: &[String], host: bool, filter: Option<&str>) -> Result<()> {
    setup::build_tools()?;
    setup::programs(setup::TEST_PROGRAMS)?;
    if host {
        setup::programs(setup::DOCKER_PROGRAMS)?;
        setup::programs(setup::PODMAN_PROGRAMS)?;
    }
    let mut images = Vec::new();
    let mut vng = PathBuf::from("vng");
    if !kernels.is_empty() {
        setup::programs(setup::VM_PROGRAMS)?;
        vng = setup::virtme_ng()?;
        for series in kernels {
            images.push(kernel_image(series)?);
        }
    }
    if !nix_is_root() {
        bail!("the tests create namespaces and load BPF programs: run as root");
    }

    let binaries = build_tests()?;
    let mut summaries = Vec::new();
    if host {
        summaries.push(run_binaries(&binaries, filter, 2, None)?);
    }
    if !images.is_empty() {
        let staged = stage(&binaries)?;
        for image in &images {
            summaries.push(run_in_vm(&vng, image, &staged, filter)?);
        }
    }

    println!("\nkernel matrix:");
    for s in &summaries {
        let verdict = if s.ok() { "ok" } else { "FAILED" };
        println!(
            "  {:<28} {:>4} passed, {} failed, {} ignored{}{} -> {verdict}",
            s.kernel,
            s.passed,
            s.failed,
            s.ignored,
            if s.crashed.is_empty() {
                String::new()
            } else {
                format!(", crashed: {}", s.crashed.join(" "))
            },
            s.resumed_after
                .as_ref()
                .map_or_else(String::new, |why| format!(" (in a second guest: {why})"))
        );
    }
    let passed: u64 = summaries.iter().map(|s| s.passed).sum();
    let failed: u64 = summaries
        .iter()
        .map(|s| s.failed + s.ignored + s.crashed.len() as u64)
        .sum();
    println!("{passed} passed, {failed} failed");
    if summaries.iter().any(|s| !s.ok()) {
        bail!("tests failed");
    }
    Ok(())
}

/// `cargo test --no-run` for the workspace; returns the test binaries.
fn build_tests() -> Result<Vec<PathBuf>> {
    println!("build: cargo test --workspace --no-run");
    let mut child = Command::new("cargo")
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut binaries = Vec::new();
    for message in Message::parse_stream(BufReader::new(stdout)) {
        if let Message::CompilerArtifact(artifact) = message?
            && artifact.profile.test
            && let Some(executable) = artifact.executable
        {
            binaries.push(executable.into_std_path_buf());
        }
    }
    if !child.wait()?.success() {
        bail!("building the tests failed");
    }
    Ok(binaries)
}

/// Runs each test binary, echoing its output, and adds up libtest's result lines. `progress`
/// is given in a guest of the matrix, which is said to the tests by `BRIDGENET_TEST_EMULATED`
/// (stress loops run fewer repetitions there).
fn run_binaries(
    binaries: &[PathBuf],
    filter: Option<&str>,
    threads: u32,
    // In a guest: the file that names the binary running, for when the guest dies.
    progress: Option<&Path>,
) -> Result<Summary> {
    let mut summary = Summary {
        kernel: kernel_release(),
        ..Default::default()
    };
    // A filter that names a test file (`control_monitor`) runs that file's tests only.
    let file = filter.filter(|f| binaries.iter().any(|b| test_file(b) == Some(f)));
    for binary in binaries {
        if file.is_some_and(|f| test_file(binary) != Some(f)) {
            continue;
        }
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--test-threads={threads}"));
        if let Some(progress) = progress {
            fs::write(progress, binary.display().to_string())?;
            cmd.env("BRIDGENET_TEST_EMULATED", "1");
            // The guest's own process keeps -1000 (see `guest`); its tests do not.
            // SAFETY: open(2), write(2) and close(2) on constant C strings, with no allocation,
            // between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
                    if fd >= 0 {
                        libc::write(fd, c"0".as_ptr().cast(), 1);
                        libc::close(fd);
                    }
                    Ok(())
                });
            }
        }
        if let Some(filter) = filter.filter(|_| file.is_none()) {
            cmd.arg(filter);
        }
        let started = Instant::now();
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", binary.display()))?;
        let stdout = child.stdout.take().context("test stdout")?;
        let (passed_before, failed_before, ignored_before) =
            (summary.passed, summary.failed, summary.ignored);
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(counts) = line.strip_prefix("test result: ") {
                let (passed, failed, ignored) = parse_result(counts);
                summary.passed += passed;
                summary.failed += failed;
                summary.ignored += ignored;
            }
        }
        let status = child.wait()?;
        // Where a kernel's time goes, binary by binary: the matrix has a time limit.
        println!(
            "=== {}: {:.0?}",
            test_file(binary).unwrap_or_default(),
            started.elapsed()
        );
        let file_name = binary
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let crashed = !status.success() && summary.failed == failed_before;
        if let Some(progress) = progress {
            let mut done = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(progress.with_file_name(DONE))?;
            writeln!(
                done,
                "{file_name} {} {} {} {}",
                summary.passed - passed_before,
                summary.failed - failed_before,
                summary.ignored - ignored_before,
                u8::from(crashed)
            )?;
        }
        if crashed {
            summary.crashed.push(file_name);
        }
    }
    Ok(summary)
}

/// The test file a test binary was built from: `control_monitor` for
/// `target/debug/deps/control_monitor-0123abcd`.
fn test_file(binary: &Path) -> Option<&str> {
    let name = binary.file_name()?.to_str()?;
    Some(name.rsplit_once('-').map_or(name, |(file, _)| file))
}

fn host_only(binary: &Path) -> bool {
    binary
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(HOST_ONLY_PREFIX))
}

/// Parses `ok. 3 passed; 0 failed; 1 ignored; ...` into (passed, failed, ignored).
fn parse_result(counts: &str) -> (u64, u64, u64) {
    let mut out = (0, 0, 0);
    for part in counts.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(label), Some(number)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(number) = number.parse::<u64>() else {
            continue;
        };
        match label {
            "passed" => out.0 = number,
            "failed" => out.1 = number,
            "ignored" => out.2 = number,
            _ => {}
        }
    }
    out
}

/// Where the guests find the binaries: `target/matrix/bin`, laid out as `target` is
/// (`debug/bridgenet`, `debug/deps/TEST`), so that tests find the daemon next to themselves.
fn staging_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/matrix/bin")
}

/// Copies the guests' test binaries and the programs they run (`bridgenet`, `bridgenet-cni`)
/// into the staging dir without their debug info: a guest copies them into its memory, because
/// each exec from the host's filesystem (9p, uncached) costs a second of software emulation,
/// and the tests run the CLI hundreds of times. Returns the staged test binaries.
fn stage(binaries: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let dir = staging_dir();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("debug/deps"))?;
    let strip = |from: &Path, to: &Path| -> Result<()> {
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .args([from, to])
            .status()
            .context("running objcopy")?;
        if !status.success() {
            bail!("objcopy --strip-debug {} failed", from.display());
        }
        Ok(())
    };
    let programs = binaries
        .first()
        .and_then(|b| b.parent())
        .and_then(Path::parent)
        .context("test binaries outside target/debug/deps")?;
    for program in ["bridgenet", "bridgenet-cni"] {
        strip(&programs.join(program), &dir.join("debug").join(program))?;
    }
    let mut staged = Vec::new();
    for binary in binaries.iter().filter(|b| !host_only(b)) {
        let to = dir
            .join("debug/deps")
            .join(binary.file_name().context("a test binary without a name")?);
        strip(binary, &to)?;
        staged.push(to);
    }
    Ok(staged)
}

/// In a guest: copies the staging dir into memory (tmpfs); returns where it is.
fn copy_staged_into_memory() -> Result<PathBuf> {
    let to = Path::new("/dev/shm/bridgenet-matrix");
    let status = Command::new("cp")
        .arg("-a")
        .arg(staging_dir())
        .arg(to)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!(
            "copying {} into {} failed",
            staging_dir().display(),
            to.display()
        );
    }
    Ok(to.to_owned())
}

/// Inside a VM: runs the binaries listed in `plan` and writes the summary to `report`.
pub fn guest(plan: &Path, report: &Path) -> Result<()> {
    let plan = fs::read_to_string(plan)?;
    let mut lines = plan.lines();
    let filter = lines.next().filter(|f| !f.is_empty());
    let memory = copy_staged_into_memory()?;
    let staging = staging_dir();
    let binaries: Vec<PathBuf> = lines
        .map(|line| match Path::new(line).strip_prefix(&staging) {
            Ok(relative) => memory.join(relative),
            Err(_) => PathBuf::from(line),
        })
        .collect();
    // When memory runs out, the kernel should end a test binary (reported as crashed) rather
    // than this process, whose report says what ran; a guest's root may lower its own score.
    let _ = fs::write("/proc/self/oom_score_adj", "-1000");
    let _keys = static_keys::hold();
    let progress = report.with_file_name(PROGRESS);
    let summary = run_binaries(&binaries, filter, 2, Some(&progress))?;
    let report_text = format!(
        "{}\n{} {} {}\n{}\n",
        summary.kernel,
        summary.passed,
        summary.failed,
        summary.ignored,
        summary.crashed.join(" ")
    );
    fs::write(report, report_text)?;
    Ok(())
}

/// Boots `image` under QEMU (software emulation: nested KVM does not work here) with the host's
/// filesystem, and runs the test binaries inside it through `xtask guest-test`. A guest that goes
/// down without a report (the emulated 6.12 kernel sometimes does, with nothing in its log, or
/// while it boots) is followed by a second one, once, which runs the binary that was running and
/// those after it: every test still runs to its end, and the summary says that it took two
/// guests and why. Two down in a row fail the run.
fn run_in_vm(
    vng: &Path,
    image: &Path,
    binaries: &[PathBuf],
    filter: Option<&str>,
) -> Result<Summary> {
    let name = image
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/matrix")
        .join(&name);
    let _ = fs::remove_dir_all(&dir);
    let dir = boot_dir(&dir)?;
    let started = Instant::now();
    // Also a guest that went down before any test binary: the emulated 6.12 kernel has
    // panicked while booting (Oops: int3 in enqueue_timer, the same stray breakpoint).
    let first = match boot(vng, image, &name, &dir, binaries, filter)? {
        Boot::Report(summary) => return Ok(summary),
        Boot::Down(first) => first,
    };
    let left: Vec<PathBuf> = binaries
        .iter()
        .filter(|b| {
            let file_name = b.file_name().unwrap_or_default().to_string_lossy();
            !first.done.iter().any(|d| *d == file_name)
        })
        .cloned()
        .collect();
    println!(
        "\n=== {name}: {}; the test binaries it did not finish run in a second guest",
        first.why
    );
    let again = boot_dir(&dir.join(RESUMED))?;
    match boot(vng, image, &name, &again, &left, filter)? {
        Boot::Report(rest) => {
            let mut summary = first.summary;
            summary.kernel = rest.kernel;
            summary.passed += rest.passed;
            summary.failed += rest.failed;
            summary.ignored += rest.ignored;
            summary.crashed.extend(rest.crashed);
            summary.resumed_after = Some(first.why);
            println!("=== {name}: done in {:.0?}, two guests", started.elapsed());
            Ok(summary)
        }
        Boot::Down(second) => bail!(
            "{name}: two guests in a row went down: {}; then {}",
            first.why,
            second.why
        ),
    }
}

/// How one guest ended: with its report, or down without one.
enum Boot {
    Report(Summary),
    Down(Down),
}

/// A guest that went down: why (as far as its files say), the counts of the binaries that ran
/// to their end, and their file names.
struct Down {
    why: String,
    summary: Summary,
    done: Vec<String>,
}

fn boot_dir(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    Ok(dir.canonicalize()?)
}

/// Runs `binaries` in one guest whose files go to `dir`.
fn boot(
    vng: &Path,
    image: &Path,
    name: &str,
    dir: &Path,
    binaries: &[PathBuf],
    filter: Option<&str>,
) -> Result<Boot> {
    let plan = dir.join("plan");
    let report = dir.join("report");
    let mut plan_text = format!("{}\n", filter.unwrap_or(""));
    for binary in binaries {
        plan_text.push_str(&format!("{}\n", binary.display()));
    }
    fs::write(&plan, plan_text)?;

    let xtask = std::env::current_exe()?;
    // The kernel's log is kept for when the guest writes no report (a test process the
    // kernel killed, a warning before a crash): followed as it is written, so that a guest
    // that dies on the way (a panic) leaves what it logged up to then.
    // So is how the runner ended (its exit status, 128 + N for signal N) and the guest's
    // memory every 5 s: a guest that stopped without a report says whether the runner was
    // killed, the memory ran out, or the whole guest went down.
    let script = dir.join("guest.sh");
    fs::write(
        &script,
        format!(
            "dmesg --follow > '{dmesg}' 2>&1 &\nfollower=$!\n\
             while :; do \
             echo \"$(cut -d' ' -f1 /proc/uptime) $(grep -E '^(MemAvailable|Slab|Percpu):' /proc/meminfo | tr -s ' ' | tr '\\n' ' ')\"; \
             sleep 5; done > '{memory}' 2>&1 &\nsampler=$!\n\
             '{xtask}' guest-test --plan '{plan}' --report '{report}'\n\
             echo $? > '{status}'\nkill $follower $sampler\n",
            dmesg = dir.join(DMESG).display(),
            memory = dir.join(MEMORY).display(),
            xtask = xtask.display(),
            plan = plan.display(),
            report = report.display(),
            status = dir.join(RUNNER_STATUS).display(),
        ),
    )?;
    let guest_cmd = format!("sh '{}'", script.display());
    println!("\n=== {name}: booting with virtme-ng (software emulation)");
    let started = Instant::now();
    let mut child = Command::new(vng)
        .arg("--run")
        .arg(image)
        .args(["--disable-kvm", "--cpus", "2", "--memory", "3G", "--rwdir"])
        .arg(dir)
        // The kernel's console (on vng's stderr) at warnings and worse: what a panic or an oops
        // prints reaches the host even when the guest cannot write its log any more.
        .args(["--verbose", "--append", "loglevel=4"])
        .arg(format!(
            "--qemu-opts=-d cpu_reset -D {}",
            dir.join(QEMU_LOG).display()
        ))
        .arg("--")
        .arg(&guest_cmd)
        .stdin(Stdio::null())
        // Piped, not inherited: QEMU reopens the guest's stdout and stderr through /proc/self/fd
        // with O_TRUNC, which would truncate a log file the caller redirected us to.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running vng")?;
    let echoes = [
        echo_console(child.stdout.take().context("vng stdout")?, None),
        echo_console(
            child.stderr.take().context("vng stderr")?,
            Some(fs::File::create(dir.join(CONSOLE))?),
        ),
    ];
    let vng_status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > VM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name}: no result within {VM_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for echo in echoes {
        let _ = echo.join();
    }
    let Ok(text) = fs::read_to_string(&report) else {
        let running = fs::read_to_string(dir.join(PROGRESS)).map_or_else(
            |_| "before any test binary".into(),
            |b| {
                format!(
                    "while {} ran",
                    test_file(Path::new(b.trim())).unwrap_or_default()
                )
            },
        );
        print_tail(
            name,
            "the guest kernel's last messages",
            &dir.join(DMESG),
            40,
        );
        print_tail(
            name,
            "the guest's memory (uptime, kB)",
            &dir.join(MEMORY),
            6,
        );
        print_tail(name, "the guest's console", &dir.join(CONSOLE), 40);
        // QEMU logs every CPU reset, the boot's too; a triple fault is what matters.
        let triple_faults = fs::read_to_string(dir.join(QEMU_LOG))
            .unwrap_or_default()
            .matches("Triple fault")
            .count();
        let runner = fs::read_to_string(dir.join(RUNNER_STATUS)).map_or_else(
            |_| "did not return (the guest went down under it)".into(),
            |s| format!("exited with {}", s.trim()),
        );
        let (summary, done) = done_so_far(&dir.join(DONE));
        return Ok(Boot::Down(Down {
            why: format!(
                "the guest wrote no report: it stopped {running}; the test runner {runner}; \
                 vng {vng_status}; QEMU logged {triple_faults} triple faults"
            ),
            summary,
            done,
        }));
    };
    let mut lines = text.lines();
    let kernel = lines.next().unwrap_or_default().to_owned();
    let counts: Vec<u64> = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|n| n.parse().ok())
        .collect();
    let crashed = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    println!("=== {name}: done in {:.0?}", started.elapsed());
    Ok(Boot::Report(Summary {
        kernel,
        passed: counts.first().copied().unwrap_or(0),
        failed: counts.get(1).copied().unwrap_or(0),
        ignored: counts.get(2).copied().unwrap_or(0),
        crashed,
        resumed_after: None,
    }))
}

/// The counts of the binaries a guest ran to their end, from its `done` file, and their names.
fn done_so_far(path: &Path) -> (Summary, Vec<String>) {
    let mut summary = Summary::default();
    let mut done = Vec::new();
    for line in fs::read_to_string(path).unwrap_or_default().lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [file_name, passed, failed, ignored, crashed] = fields[..] else {
            continue;
        };
        let number = |n: &str| n.parse::<u64>().unwrap_or(0);
        summary.passed += number(passed);
        summary.failed += number(failed);
        summary.ignored += number(ignored);
        if crashed == "1" {
            summary.crashed.push(file_name.to_owned());
        }
        done.push(file_name.to_owned());
    }
    (summary, done)
}

/// Prints the readable lines of a guest console stream (it carries terminal escapes and blank
/// padding), and keeps them in `copy` when given.
fn echo_console(
    stream: impl std::io::Read + Send + 'static,
    mut copy: Option<fs::File>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
            let line = strip_escapes(&String::from_utf8_lossy(&line));
            if !line.trim().is_empty() {
                println!("{line}");
                if let Some(file) = copy.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
            }
        }
    })
}

/// Removes ANSI escape sequences and carriage returns.
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ parameters final-byte; other escapes are two characters.
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The vmlinuz of the newest Debian `linux-image-SERIES.*-amd64-unsigned`, installed with apt
/// when no such kernel is in /boot yet.
fn kernel_image(series: &str) -> Result<PathBuf> {
    if let Some(image) = find_image(series) {
        println!("setup: kernel {series} present ({})", image.display());
        return Ok(image);
    }
    let package = newest_kernel_package(series)?;
    setup::apt_install(&[&package])?;
    find_image(series).with_context(|| format!("{package} installed no /boot/vmlinuz-{series}.*"))
}

fn find_image(series: &str) -> Option<PathBuf> {
    let prefix = format!("vmlinuz-{series}.");
    let mut images: Vec<PathBuf> = fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&prefix)
                && name.ends_with("-amd64")
                && !name.contains("cloud")
                && !name.contains("-rt-")
        })
        .collect();
    images.sort();
    images.pop()
}

fn newest_kernel_package(series: &str) -> Result<String> {
    let pattern = format!(
        "^linux-image-{}\\.[0-9].*-amd64-unsigned$",
        series.replace('.', "\\.")
    );
    let search = || -> Result<Vec<String>> {
        let out = Command::new("apt-cache")
            .args(["search", "--names-only", &pattern])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| !name.contains("cloud") && !name.contains("-rt-"))
            .map(str::to_owned)
            .collect())
    };
    let mut names = search()?;
    if names.is_empty() {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        names = search()?;
    }
    // Version order (6.1.0-9 before 6.1.0-10), as `sort -V` does.
    names.sort_by_key(|name| {
        name.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    names.pop().with_context(|| {
        format!("no Debian package matches {pattern}; is this Debian 12 with apt sources?")
    })
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Prints the last `count` lines of a guest's file `path`, if it wrote one, under `what`.
fn print_tail(name: &str, what: &str, path: &Path, count: usize) {
    if let Ok(text) = fs::read_to_string(path) {
        let lines: Vec<&str> = text.lines().collect();
        println!("=== {name}: {what}:");
        for line in &lines[lines.len().saturating_sub(count)..] {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_result_lines_are_counted() {
        let line =
            "ok. 3 passed; 1 failed; 2 ignored; 0 measured; 5 filtered out; finished in 0.4s";
        assert_eq!(parse_result(line), (3, 1, 2));
        assert_eq!(
            parse_result("FAILED. 0 passed; 4 failed; 0 ignored"),
            (0, 4, 0)
        );
    }

    #[test]
    fn host_only_binaries_stay_out_of_the_guests() {
        assert!(host_only(Path::new(
            "target/debug/deps/host_docker-0123abcd"
        )));
        assert!(!host_only(Path::new(
            "target/debug/deps/control_restart-0123abcd"
        )));
    }

    #[test]
    fn a_test_file_is_named_by_its_binary() {
        let binary = Path::new("target/debug/deps/control_monitor-0123abcd");
        assert_eq!(test_file(binary), Some("control_monitor"));
    }

    #[test]
    fn console_escapes_are_removed() {
        assert_eq!(
            strip_escapes("\x1b[0m\x1b[?25htest a ... ok\r"),
            "test a ... ok"
        );
        assert_eq!(strip_escapes("   \x1b[2J  ").trim(), "");
    }

    #[test]
    fn ignored_tests_and_empty_runs_are_not_green() {
        let ok = Summary {
            passed: 1,
            ..Default::default()
        };
        assert!(ok.ok());
        assert!(
            !Summary {
                passed: 1,
                ignored: 1,
                ..Default::default()
            }
            .ok()
        );
        assert!(
            !Summary::default().ok(),
            "a kernel that ran no test is a failure"
        );
        assert!(
            !Summary {
                passed: 1,
                crashed: vec!["x".into()],
                ..Default::default()
            }
            .ok()
        );
    }

    #[test]
    fn a_guests_finished_binaries_are_counted_from_its_done_file() {
        let dir = std::env::temp_dir().join(format!("xtask-done-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let done = dir.join(DONE);
        fs::write(
            &done,
            "packet_nat-0a 12 0 0 0\ncontrol_api-1b 3 1 0 0\ncontrol_edge-2c 0 0 0 1\ncut",
        )
        .unwrap();
        let (summary, names) = done_so_far(&done);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            (summary.passed, summary.failed, summary.ignored),
            (15, 1, 0)
        );
        assert_eq!(summary.crashed, ["control_edge-2c"]);
        assert_eq!(
            names,
            ["packet_nat-0a", "control_api-1b", "control_edge-2c"]
        );
        assert!(done_so_far(&dir.join("none")).1.is_empty());
    }
}
