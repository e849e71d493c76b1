//! bridgenet's datapath: thin program entries that call the stages in the modules below.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod counters;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Counts every packet seen by TC on the interface it is attached to, in either direction.
#[classifier]
pub fn tc_count(ctx: TcContext) -> i32 {
    counters::count_interface(unsafe { (*ctx.skb.skb).ifindex }, ctx.len());
    TC_ACT_OK
}

/// Counts every packet that reaches XDP on the interface it is attached to.
#[xdp]
pub fn xdp_count(ctx: XdpContext) -> u32 {
    let len = ctx.data_end().saturating_sub(ctx.data()) as u32;
    counters::count_interface(ctx.ingress_ifindex() as u32, len);
    xdp_action::XDP_PASS
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this, so it is never called.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Host builds (clippy, cargo check) only type-check the programs.
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
