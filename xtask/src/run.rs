//! `cargo xtask run`: the lab demo, or the bridgenet binary with the given arguments.
use anyhow::Result;

pub fn run(args: &[String]) -> Result<()> {
    let _ = args;
    Ok(())
}
