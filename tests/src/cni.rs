//! Drives `bridgenet-cni` as a container runtime does: the command and the container in the
//! environment, the network configuration on stdin, the result or error on stdout.
use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::Value;

/// The plugin next to the `bridgenet` binary (target/debug/bridgenet-cni).
pub fn binary() -> PathBuf {
    let bin = crate::control::binary().with_file_name("bridgenet-cni");
    assert!(
        bin.exists(),
        "{} is missing: `cargo build -p bridgenet` builds it",
        bin.display()
    );
    bin
}

/// What one call printed and how it exited.
#[derive(Debug)]
pub struct Answer {
    pub status: i32,
    /// stdout as JSON; Null when it printed nothing.
    pub out: Value,
}

impl Answer {
    /// The error code of a failed call, panicking when it succeeded.
    pub fn code(&self) -> u64 {
        assert_ne!(self.status, 0, "succeeded: {}", self.out);
        assert!(self.out["msg"].is_string(), "no msg: {}", self.out);
        assert_eq!(
            self.out["msg"].as_str().unwrap().lines().count(),
            1,
            "not one line: {}",
            self.out
        );
        self.out["code"].as_u64().expect("an error code")
    }

    /// The output of a successful call, panicking with the error otherwise.
    pub fn ok(&self) -> &Value {
        assert_eq!(self.status, 0, "failed: {}", self.out);
        &self.out
    }
}

/// One call: `CNI_COMMAND=command` with `vars` (`CNI_CONTAINERID`, ...) and `conf` on stdin.
pub fn call(command: &str, vars: &[(&str, &str)], conf: &Value) -> Answer {
    call_raw(Some(command), vars, conf.to_string().as_bytes())
}

/// A call with the environment and stdin exactly as given (no command: `CNI_COMMAND` unset).
pub fn call_raw(command: Option<&str>, vars: &[(&str, &str)], stdin: &[u8]) -> Answer {
    let mut cmd = Command::new(binary());
    cmd.env_clear()
        .env("CNI_PATH", binary().parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(command) = command {
        cmd.env("CNI_COMMAND", command);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("running bridgenet-cni");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}"))
    };
    Answer {
        status: out.status.code().unwrap_or(-1),
        out: json,
    }
}

/// The environment of ADD, CHECK and DEL for one attachment.
pub fn attachment<'a>(
    container: &'a str,
    ifname: &'a str,
    netns: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", container),
        ("CNI_IFNAME", ifname),
        ("CNI_NETNS", netns),
    ]
}
