//! Docker's own attach, beside bridgenet's endpoint times: a dockerd (Debian's 20.10) in a
//! host namespace of the bench and a private mount namespace, as the Docker tests run it
//! (`tests/tests/host_docker.rs`: its own data, exec and run directories, vfs storage, no
//! iptables, no default bridge), with bridgenet's daemon as its network driver in the same
//! namespaces. One container; then it is connected to and disconnected from a network through
//! Docker's API, the attach that `docker run` and `docker network connect` wait for: once on a
//! network of Docker's bridge driver, once on one of bridgenet's (`-d bridgenet`).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    EndpointTimes, check_stop,
    lab::{self, PREFIX},
};

/// What a client of Docker 20.10's API names in its paths.
const API: &str = "/v1.41";
/// The container, and the networks it is attached to: `base` (where it starts) and the two
/// measured, each with its subnet.
const CONTAINER: &str = "bench";
const NETWORKS: [(&str, &str, &str); 3] = [
    ("base", "bridge", "198.19.1.0/24"),
    ("docker-bridge", "bridge", "198.19.2.0/24"),
    ("bridgenet", "bridgenet", "198.19.3.0/24"),
];
/// A removed veth is deleted by the kernel after the answer, holding RTNL (see
/// `super::endpoints`): each attach follows a pause of this after the last detach.
const SETTLE: Duration = Duration::from_millis(100);

/// dockerd and bridgenet's daemon (`--docker`), in namespaces of their own; dropping it
/// removes the container, the networks, both daemons and the namespaces.
pub struct Dockerd {
    dir: PathBuf,
    binary: PathBuf,
    namespaces: Vec<String>,
    dockerd: Option<Child>,
    bridgenet: Option<Child>,
}

impl Dockerd {
    /// Both daemons up, the busybox image imported, the networks made and the container
    /// running on `base`.
    pub fn start(binary: &Path) -> Result<Self> {
        let prefix = format!("{PREFIX}{}-docker", std::process::id());
        let mut d = Self {
            dir: std::env::temp_dir().join(&prefix),
            binary: binary.to_owned(),
            namespaces: Vec::new(),
            dockerd: None,
            bridgenet: None,
        };
        std::fs::create_dir_all(&d.dir)?;
        let (outside, host) = (format!("{prefix}-outside"), format!("{prefix}-host"));
        crate::netns::outside_and_host(&outside, &host, &mut d.namespaces)?;
        d.start_dockerd(&host)?;
        d.start_bridgenet()?;
        d.import_busybox()?;
        for (name, driver, subnet) in NETWORKS {
            d.docker(&["network", "create", "-d", driver, "--subnet", subnet, name])?;
        }
        d.docker(&[
            "run",
            "-d",
            "--name",
            CONTAINER,
            "--network",
            "base",
            "bb",
            "sleep",
            "86400",
        ])?;
        Ok(d)
    }

    /// `n` attaches of the container to `network` and detaches from it, through Docker's API
    /// (`cli` false: one request each on its socket) or its CLI (`docker network connect` and
    /// `disconnect`, a process each).
    pub fn attach_times(
        &self,
        how: &str,
        network: &str,
        n: u32,
        cli: bool,
    ) -> Result<EndpointTimes> {
        let mut times = EndpointTimes {
            how: how.into(),
            create: Vec::new(),
            remove: Vec::new(),
        };
        let body = serde_json::json!({ "Container": CONTAINER });
        for _ in 0..n {
            check_stop()?;
            for (verb, samples) in [
                ("connect", &mut times.create),
                ("disconnect", &mut times.remove),
            ] {
                let t = Instant::now();
                if cli {
                    self.docker(&["network", verb, network, CONTAINER])?;
                } else {
                    let path = format!("{API}/networks/{network}/{verb}");
                    lab::unix_request(&self.socket(), "POST", &path, Some(&body))?;
                }
                samples.push(t.elapsed().as_secs_f64());
            }
            std::thread::sleep(SETTLE);
        }
        Ok(times)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("docker.sock")
    }

    /// dockerd in `host`'s network namespace and a private mount namespace with a /run of its
    /// own (a tmpfs, with /run/docker/plugins for the driver's socket and the machine's
    /// /run/netns bound back for nsenter): nothing is made on the machine's /run.
    fn start_dockerd(&mut self, host: &str) -> Result<()> {
        let d = self.dir.display();
        std::fs::write(self.path("daemon.json"), "{}")?;
        let script = format!(
            "mkdir {d}/machine-run && mount --rbind /run {d}/machine-run && \
             mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/netns /run/docker/plugins && \
             mount --rbind {d}/machine-run/netns /run/netns && \
             exec nsenter --net=/run/netns/{host} dockerd --config-file {d}/daemon.json \
             --data-root {d}/data --exec-root {d}/exec -H unix://{d}/docker.sock \
             --pidfile {d}/docker.pid --iptables=false --ip-masq=false --bridge=none \
             --storage-driver=vfs"
        );
        let log = std::fs::File::create(self.path("dockerd.log"))?;
        // unshare, sh and nsenter exec in turn: the child's pid is dockerd's.
        self.dockerd = Some(
            Command::new("unshare")
                .args(["-m", "--propagation", "private", "sh", "-c", &script])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting dockerd")?,
        );
        self.wait_for(
            "dockerd",
            |d| &mut d.dockerd,
            |d| lab::unix_request(&d.socket(), "GET", "/_ping", None).is_ok(),
        )
    }

    /// bridgenet's daemon with `--docker`, in dockerd's network and mount namespaces (Docker
    /// moves the veths the driver makes from there, and finds its socket in
    /// /run/docker/plugins).
    fn start_bridgenet(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.path("bridgenet.log"))?;
        let child = self
            .in_dockerd_namespaces()?
            .args(self.bridgenet_args())
            .args(["--docker", "--docker-host"])
            .arg(self.socket())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting bridgenet")?;
        // For `remove_leftovers` (dockerd writes its own).
        std::fs::write(self.path("bridgenet.pid"), child.id().to_string())?;
        self.bridgenet = Some(child);
        self.wait_for(
            "bridgenet",
            |d| &mut d.bridgenet,
            |d| {
                std::fs::read_to_string(d.path("bridgenet.log"))
                    .is_ok_and(|log| log.contains("/run/docker/plugins/bridgenet.sock"))
            },
        )
    }

    fn bridgenet_args(&self) -> Vec<String> {
        crate::netns::daemon_args(&self.dir)
    }

    fn in_dockerd_namespaces(&self) -> Result<Command> {
        let Some(dockerd) = &self.dockerd else {
            bail!("dockerd is not running");
        };
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &dockerd.id().to_string(), "-m", "-n", "--"])
            .arg(&self.binary);
        Ok(cmd)
    }

    /// Waits up to a minute for `ready`; fails with the log `WHAT.log` when the daemon `what`
    /// (the child `child` gives) exits or does not get ready.
    fn wait_for(
        &mut self,
        what: &str,
        child: fn(&mut Self) -> &mut Option<Child>,
        ready: impl Fn(&Self) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(self) {
            let child = child(self);
            let exited = child.as_mut().map(|c| c.try_wait()).transpose()?.flatten();
            if exited.is_some() || Instant::now() > deadline {
                if exited.is_some() {
                    // Reaped: its pid is no longer ours to signal.
                    *child = None;
                }
                bail!(
                    "{what} did not start ({exited:?}); its log:\n{}",
                    std::fs::read_to_string(self.path(&format!("{what}.log"))).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The busybox image as the Docker tests make it (`docker import` of a directory with
    /// busybox-static and its `sleep`), as `bb`.
    fn import_busybox(&self) -> Result<()> {
        let root = self.path("image");
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static")?;
        std::os::unix::fs::symlink("busybox", root.join("bin/sleep"))?;
        let tar = self.path("bb.tar");
        let (root, tar) = (root.display().to_string(), tar.display().to_string());
        let args = ["-C", &root, "-cf", &tar, "."];
        lab::checked(Command::new("tar").args(args).output()?, "tar", &args)?;
        self.docker(&["import", &tar, "bb"])?;
        Ok(())
    }

    /// `docker -H SOCKET ARGS` (Debian's client); its stdout, or its stderr as the error.
    fn docker(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .env("DOCKER_CONFIG", self.path("client"))
            .output()
            .context("running docker")?;
        lab::checked(out, "docker", args)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            let path = format!("{API}/containers/{CONTAINER}?force=1");
            let _ = lab::unix_request(&self.socket(), "DELETE", &path, None);
        }
        if let Some(mut child) = self.bridgenet.take() {
            stop(&mut child);
        }
        if self.dockerd.is_some() {
            // In dockerd's mount namespace, where the bpf filesystem is mounted.
            let mut args = self.bridgenet_args();
            args.push("--cleanup".into());
            match self
                .in_dockerd_namespaces()
                .and_then(|mut c| Ok(c.args(&args).output()?))
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "bench: docker cleanup: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(err) => eprintln!("bench: docker cleanup: {err:#}"),
            }
        }
        if let Some(mut child) = self.dockerd.take() {
            stop(&mut child);
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = lab::ip(&["netns", "del", &ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops the daemons of runs whose process is gone (killed before `Drop` ran), by the pids in
/// their run's directory, and removes the directory; the caller then removes the namespaces.
pub fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with("-docker") || !lab::of_dead_run(&name) {
            continue;
        }
        let run = entry.path();
        for file in ["bridgenet.pid", "docker.pid"] {
            terminate(&run, file);
        }
        let _ = std::fs::remove_dir_all(&run);
    }
}

/// The pid in `run`'s `file`, if that process runs with `run` on its command line: a pid
/// reused by another process is left alone.
fn started_in(run: &Path, file: &str) -> Option<libc::pid_t> {
    let pid = std::fs::read_to_string(run.join(file)).ok()?;
    let pid: libc::pid_t = pid.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let run = run.as_os_str().as_encoded_bytes();
    cmdline.windows(run.len()).any(|w| w == run).then_some(pid)
}

/// SIGTERM to the process in `run`'s `file` (see `started_in`), then SIGKILL if it still runs
/// after 20 s.
fn terminate(run: &Path, file: &str) {
    let Some(pid) = started_in(run, file) else {
        return;
    };
    eprintln!("bench: stopping {file} {pid} of a run that is gone");
    // A zombie's command line is empty: gone.
    stop_pid(pid, || started_in(run, file).is_none());
}

/// SIGTERM to a daemon this module started, then SIGKILL after 20 s; reaped.
fn stop(child: &mut Child) {
    stop_pid(child.id() as libc::pid_t, || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    let _ = child.wait();
}

/// SIGTERM to `pid`, then SIGKILL unless `gone` says it ended within 20 s.
fn stop_pid(pid: libc::pid_t, mut gone: impl FnMut() -> bool) {
    // SAFETY: signals to a process a bench run started, by its pid, which the callers checked
    // is still that process's.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if gone() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !gone() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    /// A run killed before its `Drop`: its daemon (a shell with the run's directory on its
    /// command line) is stopped by the pid in its file, and the directory removed; a file that
    /// names a process started without that directory (this test's own) stops nothing.
    #[test]
    fn a_dead_runs_daemons_are_stopped_and_no_other_process() {
        // A pid that is gone: a child that ended.
        let mut ended = Command::new("true").spawn().unwrap();
        ended.wait().unwrap();
        let run = std::env::temp_dir().join(format!("{PREFIX}{}-docker", ended.id()));
        std::fs::create_dir_all(&run).unwrap();
        // The shell stops its sleep when it is stopped, so that nothing outlives the test.
        let mut daemon = Command::new("sh")
            .args(["-c", "trap 'kill $!; exit 0' TERM; sleep 60 & wait"])
            .arg(&run)
            .spawn()
            .unwrap();
        std::fs::write(run.join("docker.pid"), daemon.id().to_string()).unwrap();
        std::fs::write(run.join("bridgenet.pid"), std::process::id().to_string()).unwrap();
        let pid = daemon.id() as libc::pid_t;
        // spawn returns once exec has let go of the parent, a moment before the new command
        // line is in place.
        let deadline = Instant::now() + Duration::from_secs(10);
        while started_in(&run, "docker.pid").is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(started_in(&run, "docker.pid"), Some(pid));
        assert_eq!(started_in(&run, "bridgenet.pid"), None);

        let t = Instant::now();
        remove_leftovers();
        let status = daemon.wait().unwrap();
        assert!(
            status.success() || status.signal() == Some(libc::SIGTERM),
            "{status:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        assert!(!run.exists());
    }
}
