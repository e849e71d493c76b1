//! Events for `bridgenet monitor`: drops and new flows, into a ring buffer. Nothing is
//! emitted while no monitor is attached, and at most `MonitorConfig::rate` events a second
//! per CPU while one is: under a flood, what is not emitted is only counted (`MONITOR_LOST`).
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use bridgenet_common::{CtKey, MonitorBudget, MonitorConfig, MonitorEvent, monitor};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    parse::{ICMP, TCP, UDP},
    parse6::{DADDR_OFF, ETH_P_IPV6, ICMP6, IP6_LEN, IP6_OFF, Packet6, SADDR_OFF},
};

#[map]
static MONITOR_EVENTS: RingBuf = RingBuf::with_byte_size(monitor::RING_BYTES, 0);

#[map]
static MONITOR_CONFIG: Array<MonitorConfig> = Array::with_max_entries(1, 0);

#[map]
static MONITOR_BUDGET: PerCpuArray<MonitorBudget> = PerCpuArray::with_max_entries(1, 0);

#[map]
static MONITOR_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const SECOND_NS: u64 = 1_000_000_000;

/// A frame's bytes, as TC and XDP give them.
pub trait Frame {
    fn read<T: Copy>(&self, offset: usize) -> Option<T>;
    fn ifindex(&self) -> u32;
}

impl Frame for TcContext {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        self.load::<T>(offset).ok()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        let at = self.data() + offset;
        if at + core::mem::size_of::<T>() > self.data_end() {
            return None;
        }
        // In bounds, checked just above; packet data has no alignment.
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
}

/// The rate a monitor allows for events of `kind`; None when none wants them.
#[inline(always)]
fn wanted(kind: u32) -> Option<u32> {
    let config = MONITOR_CONFIG.get(0)?;
    (config.kinds & kind != 0).then_some(config.rate)
}

/// A dropped packet, with its program, interface, reason and addresses.
#[inline(never)]
pub fn drop<F: Frame>(frame: &F, program: u32, reason: u32) {
    let Some(rate) = wanted(monitor::DROPS) else {
        return;
    };
    let mut event = MonitorEvent {
        kind: monitor::KIND_DROP,
        program: program as u8,
        outcome: reason as u8,
        ifindex: frame.ifindex(),
        ..MonitorEvent::default()
    };
    read_tuple(frame, &mut event);
    emit(&event, rate);
}

/// A flow the packet opened (`key`, as it came) and its translation (the packet as it is now).
#[inline(never)]
pub fn flow_opened(ctx: &TcContext, program: u32, result: u32, key: &CtKey) {
    let Some(rate) = wanted(monitor::FLOWS) else {
        return;
    };
    let mut now = MonitorEvent::default();
    read_tuple(ctx, &mut now);
    let event = MonitorEvent {
        kind: monitor::KIND_FLOW_OPENED,
        program: program as u8,
        outcome: result as u8,
        proto: key.proto,
        ifindex: ctx.ifindex(),
        saddr: key.saddr,
        daddr: key.daddr,
        sport: key.sport,
        dport: key.dport,
        nat_saddr: now.saddr,
        nat_daddr: now.daddr,
        nat_sport: now.sport,
        nat_dport: now.dport,
        ether_type: now.ether_type,
        _pad: [0; 6],
        saddr6: [0; 16],
        daddr6: [0; 16],
        nat_saddr6: [0; 16],
        nat_daddr6: [0; 16],
    };
    emit(&event, rate);
}

/// `flow_opened` for IPv6: the flow `packet` opened (its key, as it came) and the packet as it
/// is now, whose transport header is where it was (NAT66 changes no header's length).
#[inline(never)]
pub fn flow_opened6(ctx: &TcContext, program: u32, result: u32, packet: &Packet6) {
    let Some(rate) = wanted(monitor::FLOWS) else {
        return;
    };
    let key = &packet.key;
    let mut event = MonitorEvent {
        kind: monitor::KIND_FLOW_OPENED,
        program: program as u8,
        outcome: result as u8,
        proto: key.proto,
        ifindex: ctx.ifindex(),
        sport: key.sport,
        dport: key.dport,
        ether_type: u16::from_be(ETH_P_IPV6),
        saddr6: key.saddr,
        daddr6: key.daddr,
        ..MonitorEvent::default()
    };
    if let (Some(saddr), Some(daddr)) = (
        ctx.read::<[u8; 16]>(SADDR_OFF),
        ctx.read::<[u8; 16]>(DADDR_OFF),
    ) {
        event.nat_saddr6 = saddr;
        event.nat_daddr6 = daddr;
    }
    // ICMPv6 shows no ports.
    if (key.proto == TCP || key.proto == UDP)
        && let Some(ports) = ctx.read::<[u16; 2]>(packet.l4_off)
    {
        (event.nat_sport, event.nat_dport) = (ports[0], ports[1]);
    }
    emit(&event, rate);
}

#[inline(always)]
fn emit(event: &MonitorEvent, rate: u32) {
    let emitted = admit(rate) && MONITOR_EVENTS.output::<MonitorEvent>(event, 0).is_ok();
    if !emitted && let Some(lost) = MONITOR_LOST.get_ptr_mut(0) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *lost += 1 };
    }
}

/// This CPU's token bucket: `rate` tokens a second, at most `rate` saved up.
#[inline(always)]
fn admit(rate: u32) -> bool {
    let Some(budget) = MONITOR_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    let budget = unsafe { &mut *budget };
    let now = unsafe { bpf_ktime_get_ns() };
    let rate = u64::from(rate);
    let elapsed = now.wrapping_sub(budget.refilled_ns).min(SECOND_NS);
    let refill = elapsed * rate / SECOND_NS;
    if refill > 0 {
        budget.tokens = (budget.tokens + refill).min(rate);
        budget.refilled_ns = now;
    }
    if budget.tokens == 0 {
        return false;
    }
    budget.tokens -= 1;
    true
}

/// The frame's ethertype and, for IPv4 and IPv6, its addresses, protocol and ports (ICMP: type and
/// code, and the echo identifier), as far as the frame holds them.
#[inline(always)]
fn read_tuple<F: Frame>(frame: &F, event: &mut MonitorEvent) {
    let Some(ether_type) = frame.read::<u16>(12) else {
        return;
    };
    event.ether_type = u16::from_be(ether_type);
    let l4 = if ether_type == ETH_P_IPV6 {
        let Some(ip) = frame.read::<[u8; IP6_LEN]>(IP6_OFF) else {
            return;
        };
        event.proto = ip[6];
        event.saddr6.copy_from_slice(&ip[8..24]);
        event.daddr6.copy_from_slice(&ip[24..40]);
        IP6_OFF + IP6_LEN
    } else if ether_type == EtherType::Ipv4 as u16 {
        let Some(ip) = frame.read::<Ipv4Hdr>(EthHdr::LEN) else {
            return;
        };
        event.saddr = u32::from_ne_bytes(ip.src_addr);
        event.daddr = u32::from_ne_bytes(ip.dst_addr);
        event.proto = ip.proto;
        let ihl = ip.ihl() as usize;
        if ihl < Ipv4Hdr::LEN || ip.frag_offset() != 0 {
            return;
        }
        EthHdr::LEN + ihl
    } else {
        return;
    };
    match event.proto {
        TCP | UDP => {
            if let Some(ports) = frame.read::<[u16; 2]>(l4) {
                event.sport = ports[0];
                event.dport = ports[1];
            }
        }
        ICMP | ICMP6 => {
            if let Some(head) = frame.read::<[u16; 3]>(l4) {
                // Type and code as on the wire, then (after the checksum) the identifier.
                event.sport = head[0];
                event.dport = head[2];
            }
        }
        _ => {}
    }
}
