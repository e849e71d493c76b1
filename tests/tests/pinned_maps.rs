//! Maps pinned on a bpf filesystem outlive the process that loaded them, and a new load adopts
//! them with their state: the basis of restarts without losing flows.
use std::{net::Ipv4Addr, path::PathBuf, process::Command};

use bridgenet::datapath::{Datapath, LoadOptions, Proto};
use bridgenet_tests::require_root;

/// A private bpf filesystem on a temporary directory, unmounted on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("bridgenet-test-bpffs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
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
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_second_load_adopts_the_pinned_maps_and_their_state() {
    require_root();
    let bpffs = Bpffs::new();
    let options = LoadOptions {
        pin_dir: Some(bpffs.0.clone()),
        ..LoadOptions::default()
    };

    let mut first = Datapath::load_with(&options).expect("first load");
    first
        .publish(Proto::Tcp, None, 8080, Ipv4Addr::new(172, 17, 0, 2), 80)
        .unwrap();
    first
        .add_subnet("172.17.0.0/16".parse().unwrap(), true)
        .unwrap();
    drop(first);
    assert!(
        bpffs.0.join("CONNTRACK").exists(),
        "maps are pinned by name"
    );

    let second = Datapath::load_with(&options).expect("second load");
    let published = second.published().unwrap();
    assert_eq!(published.len(), 1, "{published:?}");

    // Without pinning, nothing is shared.
    let private = Datapath::load().unwrap();
    assert!(private.published().unwrap().is_empty());
}
