//! bridgenet: an eBPF dataplane for Docker-style bridge networking.
//!
//! Layers, one module each: `datapath` loads and attaches the eBPF programs and reads their maps.
pub mod datapath;
