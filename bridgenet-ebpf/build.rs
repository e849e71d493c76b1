//! Rebuild the programs when bpf-linker changes: cargo cannot see that dependency otherwise.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!(
            "cargo:warning=bpf-linker not found ({err}); run `cargo xtask test` once to install it"
        ),
    }
}
