//! Present so that `bridgenet` can list this crate as a build-dependency: the programs live in
//! `main.rs`, built for the BPF target by `bridgenet/build.rs`.
#![no_std]
