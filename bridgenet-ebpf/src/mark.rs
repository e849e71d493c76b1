//! The skb mark bits one of bridgenet's programs sets for another that sees the packet later
//! (`CHECKED_MARK`, `TRANSLATED_MARK`). A veth clears the marks set in an endpoint's namespace,
//! so an endpoint cannot set them; the program that reads a bit clears it, so it never reaches
//! anything after bridgenet's programs.
use aya_ebpf::programs::TcContext;

#[inline(always)]
pub fn set(ctx: &TcContext, bit: u32) {
    unsafe { (*ctx.skb.skb).mark |= bit };
}

/// Whether the packet carries `bit`, which is then cleared.
#[inline(always)]
pub fn take(ctx: &TcContext, bit: u32) -> bool {
    let skb = ctx.skb.skb;
    let mark = unsafe { (*skb).mark };
    if mark & bit == 0 {
        return false;
    }
    unsafe { (*skb).mark = mark & !bit };
    true
}
