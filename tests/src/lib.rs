//! Test harness: namespace topologies built from scratch and removed on drop (also when a test
//! panics), and helpers for running the real programs with BPF_PROG_TEST_RUN.
//!
//! Nothing here touches the namespace the tests run in: every interface is created inside a
//! namespace of the topology, and deleting the namespaces removes all of it.
pub mod busy;
pub mod cluster;
pub mod cni;
pub mod control;
pub mod http;
pub mod ipv6;
pub mod layout_v1;
pub mod monitor;
pub mod packet;
pub mod raw;
pub mod sockets;
pub mod topology;
pub mod traffic;

pub use topology::{Netns, Topology};

/// Panics unless the tests run as root: they create namespaces and load BPF programs, and a
/// test that cannot run must fail rather than pass silently.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (CAP_NET_ADMIN, CAP_BPF)"
    );
}

/// Set by `cargo xtask test` in the emulated kernels of the matrix (`xtask guest-test`).
pub const EMULATED_ENV: &str = "BRIDGENET_TEST_EMULATED";

/// Repetitions of a stress loop: `host` on the host, `emulated` under QEMU's software
/// emulation, where each daemon start or GC pass costs ten times more. The kernel-dependent
/// part (loading, pins, attach paths) runs at every repetition; the many repetitions that hunt
/// for races run where they are cheap.
pub fn repetitions(host: u32, emulated: u32) -> u32 {
    if self::emulated() { emulated } else { host }
}

/// Whether the tests run in an emulated kernel of the matrix (see `EMULATED_ENV`).
pub fn emulated() -> bool {
    std::env::var_os(EMULATED_ENV).is_some()
}

/// A kernel-dependent test prints its condition with this macro, so that the runner's output
/// says what was tested where.
#[macro_export]
macro_rules! kernel_note {
    ($($arg:tt)*) => { eprintln!("kernel {}: {}", $crate::topology::kernel_release(), format!($($arg)*)) };
}

/// A private bpf filesystem on a temporary directory, for maps pinned by a test; unmounted and
/// removed on drop.
pub struct Bpffs(pub std::path::PathBuf);

impl Bpffs {
    pub fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("bridgenet-test-bpffs-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a bpf filesystem");
        Self(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}
