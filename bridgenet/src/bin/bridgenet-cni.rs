//! `bridgenet-cni`: the CNI plugin. A runtime runs it with `CNI_COMMAND` and the other `CNI_*`
//! variables in the environment and the network configuration on stdin; it asks the bridgenet
//! daemon and prints the result or the error (see `bridgenet::cni`).
use std::io::{Read as _, Write as _};

fn main() {
    let env = std::env::vars().collect();
    let mut stdin = Vec::new();
    // VERSION may come with nothing on stdin; a read error is a configuration that is empty.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let (out, status) = bridgenet::cni::run(&env, &stdin);
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{out}");
    std::process::exit(status);
}
