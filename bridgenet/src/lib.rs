//! bridgenet: an eBPF dataplane for Docker-style bridge networking.
//!
//! Layers, one module each: `datapath` loads and attaches the eBPF programs and reads their
//! maps; `netlink` makes bridges, veth pairs, addresses and routes; `state` is what the daemon
//! manages (with IPAM and the `-p` grammar) and its store; `daemon` runs the verbs and
//! reconciles after restarts; `api` is the HTTP/JSON interface's types and client, `server` its
//! routes over the daemon, `metrics` its Prometheus exposition, `docker` Docker's network
//! driver protocol over the same daemon; `cni` the CNI plugin `bridgenet-cni`, a client of the
//! API; `cli` is the command line that drives the API.
pub mod api;
pub mod cli;
pub mod cni;
pub mod daemon;
pub mod datapath;
pub mod docker;
pub mod metrics;
pub mod netlink;
pub mod server;
pub mod state;
