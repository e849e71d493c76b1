//! Bad input the CLI refuses before it talks to a daemon: one line on stderr, non-zero exit.
//! (Also makes `cargo test --workspace` build the binary the namespace tests drive.)
use std::process::Command;

fn refuse(args: &[&str], expect: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_bridgenet"))
        .args(["--socket", "/nonexistent/bridgenet.sock"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr:?}");
    assert!(stderr.contains(expect), "{args:?}: {stderr:?}");
}

#[test]
fn bad_specs_names_and_addresses_are_refused_locally() {
    refuse(
        &["port", "publish", "ep", "80:80:80:80"],
        "invalid port spec",
    );
    refuse(&["port", "publish", "ep", "99999"], "invalid port spec");
    refuse(
        &["port", "unpublish", "ep", "8000-8001:80"],
        "differ in length",
    );
    refuse(
        &[
            "endpoint",
            "create",
            "e",
            "--network",
            "n",
            "--netns",
            "x",
            "--ip",
            "1.2.3",
        ],
        "invalid address",
    );
    refuse(
        &[
            "endpoint",
            "create",
            "e",
            "--network",
            "n",
            "--netns",
            "x",
            "--expose",
            "http",
        ],
        "invalid --expose",
    );
    refuse(&["network", "create", "a b"], "invalid network name");
    refuse(&["network", "create", "n", "--icc=maybe"], "invalid value");
}

#[test]
fn a_bad_daemon_config_is_one_clear_line() {
    refuse(
        &["daemon", "--config", "/nonexistent/daemon.json"],
        "reading config /nonexistent/daemon.json",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("daemon.json");
    std::fs::write(&config, r#"{"data-root": "/var/lib/docker"}"#).unwrap();
    refuse(
        &["daemon", "--config", config.to_str().unwrap()],
        "unknown field `data-root`",
    );
}

#[test]
fn no_daemon_is_one_clear_line() {
    refuse(&["network", "ls"], "cannot reach the daemon");
}
