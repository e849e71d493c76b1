//! Test harness: namespace topologies built from scratch and removed on drop (also when a test
//! panics), and helpers for running the real programs with BPF_PROG_TEST_RUN.
//!
//! Nothing here touches the namespace the tests run in: every interface is created inside a
//! namespace of the topology, and deleting the namespaces removes all of it.
pub mod control;
pub mod layout_v1;
pub mod packet;
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

/// A kernel-dependent test prints its condition with this macro, so that the runner's output
/// says what was tested where.
#[macro_export]
macro_rules! kernel_note {
    ($($arg:tt)*) => { eprintln!("kernel {}: {}", $crate::topology::kernel_release(), format!($($arg)*)) };
}
