//! ICMP errors (destination unreachable, fragmentation needed, time exceeded, parameter
//! problem) about a tracked flow: the outer header gets the flow's translation, and the quoted
//! packet the opposite one, so that the error reaches the right host and makes sense there.
//! Every checksum is updated field by field: outer IPv4, quoted IPv4, quoted L4 (when present
//! in the packet) and the ICMP checksum over all of it. This is what lets path MTU discovery
//! work through masquerade and published ports.
use aya_ebpf::programs::TcContext;
use bridgenet_common::{CtKey, flow_kind, outcome};

use crate::{
    conntrack::{self, search},
    header,
    parse::{ICMP, IP_DADDR_OFF, IP_SADDR_OFF, Inner, Packet, TCP, UDP},
};

/// Translates an ICMP error whose quoted packet belongs to a tracked flow: the outcome to
/// count; PASSED, untouched, when the flow is not tracked or is the host's own. `nat_addr`:
/// 0 for an error from outside (`uplink_ingress`), else the address of the uplink it leaves
/// through (`uplink_egress`, whose errors come from inside).
// A BPF subprogram of its own: inlined, its locals would push the caller past the
// 512-byte stack limit. It returns a scalar: an enum came back through the caller's stack,
// and a stack pointer left in R0 at its exit fails the verifier.
#[inline(never)]
pub fn translate(ctx: &mut TcContext, packet: &Packet, inner: &Inner, nat_addr: u32) -> u32 {
    // The quoted packet went the other way: its reverse is what this side sends.
    let mut key = inner.key.reversed();
    let flow = if nat_addr == 0 {
        conntrack::CONNTRACK.get_ptr(key)
    } else {
        let sent = key;
        conntrack::find_inside(&sent, nat_addr, search::ALL, &mut key).map(|f| f.cast_const())
    };
    let Some(flow) = flow else {
        return outcome::PASSED;
    };
    let (kind, inside_addr, inside_port) =
        unsafe { ((*flow).kind, (*flow).inside_addr, (*flow).inside_port) };
    if kind == flow_kind::HOST || kind == flow_kind::HAIRPIN {
        return outcome::PASSED;
    }
    // From outside, to the inside end; from inside, from the flow's outside address.
    let result = if nat_addr == 0 {
        rewrite(ctx, packet, inner, false, inside_addr, inside_port)
    } else {
        rewrite(ctx, packet, inner, true, key.daddr, key.dport)
    };
    match result {
        Ok(()) if nat_addr != 0 => outcome::SNAT,
        Ok(()) => outcome::DNAT,
        Err(_) => outcome::DROP_REWRITE_FAILED,
    }
}

/// Rewrites an ICMP error so that it quotes `quoted` (a packet as its sender sent it) and goes
/// from that packet's destination back to its source: `result`, or DROP_REWRITE_FAILED. For
/// hairpin, whose flows are translated on both sides.
// A BPF subprogram of its own: the hairpin stage's frame holds the parsed packet already.
#[inline(never)]
pub fn rewrite_quoting(
    ctx: &mut TcContext,
    packet: &Packet,
    inner: &Inner,
    quoted: &CtKey,
    result: u32,
) -> u32 {
    // Each call rewrites one side (outer source and quoted destination, then outer destination
    // and quoted source), reading only that side's old values.
    match rewrite(ctx, packet, inner, true, quoted.daddr, quoted.dport)
        .and_then(|()| rewrite(ctx, packet, inner, false, quoted.saddr, quoted.sport))
    {
        Ok(()) => result,
        Err(_) => outcome::DROP_REWRITE_FAILED,
    }
}

/// `snat`: the outer source and the quoted destination become `addr` (and the quoted
/// destination port `port`); else the outer destination and the quoted source.
#[inline(always)]
fn rewrite(
    ctx: &mut TcContext,
    packet: &Packet,
    inner: &Inner,
    snat: bool,
    addr: u32,
    port: u16,
) -> Result<(), i64> {
    let icmp_csum = packet.l4_off + 2;
    // Outer header: the address only; the ICMP checksum does not cover it.
    let (outer_off, outer_old) = if snat {
        (IP_SADDR_OFF, packet.key.saddr)
    } else {
        (IP_DADDR_OFF, packet.key.daddr)
    };
    if outer_old != addr {
        header::set_addr(ctx, outer_off, outer_old, addr).ok_or(-1)?;
    }

    // Quoted header: the opposite side of the flow.
    let k = inner.key;
    let (addr_off, old_addr, port_off, old_port) = if snat {
        (inner.ip_off + 16, k.daddr, inner.l4_off + 2, k.dport)
    } else {
        (inner.ip_off + 12, k.saddr, inner.l4_off, k.sport)
    };
    let port_off = if k.proto == ICMP {
        inner.l4_off + 4
    } else {
        port_off
    };
    let inner_ip_csum = inner.ip_off + 10;
    let inner_l4_csum = match k.proto {
        TCP => inner.l4_off + 16,
        UDP => inner.l4_off + 6,
        _ => inner.l4_off + 2,
    };

    if old_addr != addr {
        let old_ip_csum: u16 = ctx.load(inner_ip_csum)?;
        ctx.store(addr_off, &addr, 0)?;
        replace(ctx, inner_ip_csum, u64::from(old_addr), u64::from(addr), 4)?;
        let new_ip_csum: u16 = ctx.load(inner_ip_csum)?;
        replace(ctx, icmp_csum, u64::from(old_addr), u64::from(addr), 4)?;
        replace(
            ctx,
            icmp_csum,
            u64::from(old_ip_csum),
            u64::from(new_ip_csum),
            2,
        )?;
        // The quoted TCP/UDP checksum covers the addresses through its pseudo-header.
        if k.proto != ICMP {
            fix_quoted_l4(
                ctx,
                inner,
                inner_l4_csum,
                icmp_csum,
                u64::from(old_addr),
                u64::from(addr),
                4,
            )?;
        }
    }
    if old_port != port {
        ctx.store(port_off, &port, 0)?;
        replace(ctx, icmp_csum, u64::from(old_port), u64::from(port), 2)?;
        fix_quoted_l4(
            ctx,
            inner,
            inner_l4_csum,
            icmp_csum,
            u64::from(old_port),
            u64::from(port),
            2,
        )?;
    }
    Ok(())
}

/// Updates the quoted L4 checksum for a changed field, and the ICMP checksum for that update.
/// A checksum cut off by the quote, or a UDP checksum of 0 (none), is left alone.
#[inline(always)]
fn fix_quoted_l4(
    ctx: &mut TcContext,
    inner: &Inner,
    csum_off: usize,
    icmp_csum: usize,
    from: u64,
    to: u64,
    size: u64,
) -> Result<(), i64> {
    if !inner.has_l4_csum {
        return Ok(());
    }
    let old: u16 = ctx.load(csum_off)?;
    if inner.key.proto == UDP && old == 0 {
        return Ok(());
    }
    replace(ctx, csum_off, from, to, size)?;
    let new: u16 = ctx.load(csum_off)?;
    replace(ctx, icmp_csum, u64::from(old), u64::from(new), 2)
}

/// A plain one's complement update of the checksum at `off` (no pseudo-header involved).
#[inline(always)]
fn replace(ctx: &mut TcContext, off: usize, from: u64, to: u64, size: u64) -> Result<(), i64> {
    ctx.l3_csum_replace(off, from, to, size)
}
