//! Conntrack (layout v3): one LRU element per IPv4 flow, keyed by the flow's tuple as its
//! packets arrive from outside. The inside hooks compute that key from their own tuple
//! (`find_inside`): the reversed tuple for untranslated flows, `PUBLISHED_BY` for replies of
//! published ports, the keyed port sequence for masquerade and hairpin; `CT_EXCEPTIONS` for
//! the few flows none of these finds. Userspace expires flows by state and age.
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use bridgenet_common::{
    CT_MAX_FLOWS, CtFlow, CtKey, EmbryoSlot, NatConfig, ct_flags, ct_usage, direction, embryo_ring,
    flow_kind, outcome, port_hash, tcp_seen,
};

use crate::{
    nat,
    parse::{Packet, TCP},
    tcp::{self, FlowHalf, Half, Sides},
};

pub const EEXIST: i32 = 17;

/// LRU, sized by the loader above the limit in `CT_USAGE`, so that the limit (not eviction)
/// decides: new flows past it are refused, tracked ones are never pushed out by a flood.
#[map]
pub static CONNTRACK: LruHashMap<CtKey, CtFlow> = LruHashMap::with_max_entries(CT_MAX_FLOWS, 0);

/// Flows the inside hooks cannot compute the key of (a port past `port_hash::FOUND_WITHIN`,
/// a published port past `PUBLISHED_BY`'s slots, a client that came in through another
/// address than its reply leaves from), by their inside tuple: the flow's key. Empty in the
/// steady state; looked up only while `ct_usage::EXCEPTIONS` is not 0.
#[map]
pub static CT_EXCEPTIONS: HashMap<CtKey, CtKey> =
    HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

#[map]
pub static CT_USAGE: Array<u64> = Array::with_max_entries(ct_usage::SLOTS, 0);

/// Flows in the order they were admitted, one ring per side (`embryo_ring`), sized by the
/// loader (`ct_usage::RING_SIZE` each).
#[map]
static EMBRYOS: Array<EmbryoSlot> = Array::with_max_entries(1, 0);

/// A new flow is built here, not on the stack (80 bytes that the deepest chain of calls, the
/// hairpin path's, does not have on Linux 6.1), and inserted from here; `key` is the key of
/// the flow the last opening packet made or found, for `count_opening`.
#[repr(C)]
pub struct Opening {
    pub flow: CtFlow,
    pub key: CtKey,
}

#[map]
static OPENING: PerCpuArray<Opening> = PerCpuArray::with_max_entries(1, 0);

/// Takes room for `flows` new flows; false when the table is at its limit.
#[inline(always)]
pub fn reserve(flows: u64) -> bool {
    reserve_in(ct_usage::ENTRIES, ct_usage::LIMIT, flows)
}

/// `reserve` in the count and limit of `CT_USAGE`'s slots `count` and `limit`: IPv4's
/// table or IPv6's.
#[inline(always)]
pub fn reserve_in(count: u32, limit: u32, entries: u64) -> bool {
    let (Some(count), Some(limit)) = (CT_USAGE.get_ptr_mut(count), CT_USAGE.get(limit)) else {
        return false;
    };
    // Add first, then check: concurrent new flows may each see the other's room taken and
    // both back out (a refusal near the limit), but the count never drifts.
    add(count, entries);
    if unsafe { core::ptr::read_volatile(count) } > *limit {
        add(count, entries.wrapping_neg());
        return false;
    }
    true
}

/// Gives back room taken by `reserve` for a flow that was not inserted after all.
#[inline(always)]
pub fn release(flows: u64) {
    release_in(ct_usage::ENTRIES, flows);
}

/// `release` of room taken by `reserve_in` in the count of slot `count`.
#[inline(always)]
pub fn release_in(count: u32, entries: u64) {
    if let Some(count) = CT_USAGE.get_ptr_mut(count) {
        add(count, entries.wrapping_neg());
    }
}

/// An atomic add (BPF_XADD): the BPF target has no atomic types in core, but the instruction
/// exists on every kernel.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn add(counter: *mut u64, value: u64) {
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, value,
        )
    };
}

/// Host builds only type-check the programs.
#[cfg(not(target_arch = "bpf"))]
pub fn add(counter: *mut u64, value: u64) {
    unsafe { *counter = (*counter).wrapping_add(value) };
}

/// A flow's last-seen time: CLOCK_MONOTONIC_COARSE, a tick behind CLOCK_MONOTONIC at most,
/// which costs about half of the precise clock's read on every tracked packet. The timeouts it
/// serves are seconds, and userspace subtracts it from CLOCK_MONOTONIC saturating.
#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Counts a packet of `sides`' direction and records what it says about the flow's state:
/// PASSED, or the outcome to drop it with. For a flow of either family.
#[inline(always)]
pub fn track<S: Sides>(ctx: &TcContext, sides: S, proto: u8, seg: &tcp::Segment) -> u32 {
    let e = sides.mine();
    unsafe {
        *e.last_seen() = now();
        *e.packets() += 1;
        *e.bytes() += u64::from(ctx.len());
    }
    if proto == TCP {
        return tcp::track(ctx, sides, seg);
    }
    if !e.assured() {
        assure_datagram(e, sides.other());
    }
    outcome::PASSED
}

/// UDP and ICMP: assured once both sides spoke and one spoke again (one packet each way, as a
/// spoofed flood answered by a server makes, is not enough).
#[inline(always)]
fn assure_datagram<H: Half>(e: H, peer: Option<H>) {
    let Some(peer) = peer else {
        return;
    };
    let (mine, theirs) = unsafe { (*e.packets(), *peer.packets()) };
    if mine > 0 && theirs > 0 && mine + theirs >= 3 {
        e.set_assured(true);
        peer.set_assured(true);
    }
}

/// Counts and tracks a packet of `flow`'s direction `dir`: PASSED or the drop.
#[inline(always)]
pub fn touch(ctx: &TcContext, flow: *mut CtFlow, dir: usize, packet: &Packet) -> u32 {
    track(ctx, FlowHalf { flow, dir }, packet.key.proto, &packet.tcp)
}

/// The flow a packet from outside belongs to (its key is the packet's tuple), counted and
/// tracked; Err with the outcome to drop the packet with (a RST outside the flow's window).
#[inline(always)]
pub fn lookup_outside(ctx: &TcContext, packet: &Packet) -> Result<Option<*mut CtFlow>, u32> {
    let Some(flow) = CONNTRACK.get_ptr_mut(packet.key) else {
        return Ok(None);
    };
    let dir = unsafe { (*flow).outside_direction() };
    match touch(ctx, flow, dir, packet) {
        outcome::PASSED => Ok(Some(flow)),
        drop => Err(drop),
    }
}

/// Which kinds of flow `find_inside` looks for (in this order: the cheapest first).
pub mod search {
    /// Replies of published ports, through `PUBLISHED_BY`.
    pub const PUBLISHED: u8 = 2;
    /// Untranslated flows (routed, nat-unprotected, the host's): the reversed tuple.
    pub const REVERSED: u8 = 1;
    /// Masquerade, through the keyed port sequence.
    pub const MASQUERADE: u8 = 4;
    pub const ALL: u8 = REVERSED | PUBLISHED | MASQUERADE;
}

/// The flow whose inside end sends `tuple`, as an inside hook sees it (the endpoint's or the
/// host's packet before translation), among the kinds `kinds` says; its key is written to
/// `key`. `nat_addr` is the address of the uplink the packet leaves through: masquerade's,
/// and a port published on any host address answers from it.
#[inline(always)]
pub fn find_inside(
    tuple: &CtKey,
    nat_addr: u32,
    kinds: u8,
    key: &mut CtKey,
) -> Option<*mut CtFlow> {
    if let Some(flow) = find_computed(tuple, nat_addr, kinds, key) {
        return Some(flow);
    }
    if kinds & search::MASQUERADE == 0 {
        return None;
    }
    *key = masquerade_key(tuple, nat_addr);
    probe(tuple, flow_kind::MASQUERADE, key)
}

/// The key of the masquerade flow of `tuple` leaving with `nat_addr`, but its port: the
/// remote end's reply to that address.
#[inline(always)]
pub fn masquerade_key(tuple: &CtKey, nat_addr: u32) -> CtKey {
    CtKey {
        saddr: tuple.daddr,
        daddr: nat_addr,
        sport: tuple.dport,
        dport: 0,
        proto: tuple.proto,
        _pad: [0; 3],
    }
}

/// `find_inside` but masquerade's sequence: one or a few lookups, whose keys need no hash;
/// and `CT_EXCEPTIONS`, which holds the flows of every kind that none of the searches finds.
// A BPF subprogram of its own, apart from `probe`: callers that need no masquerade flow
// (`nat::publish`) have no call to the hash below them, which Linux 6.1's limit of 512 bytes
// of stack per chain of calls counts whether it runs or not.
#[inline(never)]
pub fn find_computed(
    tuple: &CtKey,
    nat_addr: u32,
    kinds: u8,
    key: &mut CtKey,
) -> Option<*mut CtFlow> {
    if kinds & search::PUBLISHED != 0
        && let Some(flow) = find_published(tuple, nat_addr, key)
    {
        return Some(flow);
    }
    if kinds & search::REVERSED != 0 {
        *key = tuple.reversed();
        if let Some(flow) = inside_match(key, tuple, flow_kind::ROUTED, flow_kind::HOST) {
            return Some(flow);
        }
    }
    find_exception(tuple, key)
}

/// The flow at `key` if it is of kind `a` or `b` and `tuple`'s sender's (`CtFlow::sent_by`).
#[inline(always)]
fn inside_match(key: &CtKey, tuple: &CtKey, a: u8, b: u8) -> Option<*mut CtFlow> {
    let flow = CONNTRACK.get_ptr_mut(key)?;
    let f = unsafe { &*flow };
    (f.sent_by(a, tuple) || f.sent_by(b, tuple)).then_some(flow)
}

/// A reply of a published port: `tuple` from the endpoint's port, to the client; the flow's
/// key has the host side of one of the mappings of that port.
#[inline(always)]
fn find_published(tuple: &CtKey, nat_addr: u32, key: &mut CtKey) -> Option<*mut CtFlow> {
    let by = nat::published_by(tuple)?;
    *key = tuple.reversed();
    for i in 0..bridgenet_common::PUBLISHED_BY_SLOTS {
        let host = by.hosts[i];
        if host.port == 0 {
            continue;
        }
        key.daddr = if host.addr == 0 { nat_addr } else { host.addr };
        key.dport = host.port;
        if let Some(flow) = inside_match(key, tuple, flow_kind::PUBLISHED, flow_kind::PUBLISHED) {
            return Some(flow);
        }
    }
    None
}

/// Masquerade's and hairpin's flows: `key` with its destination port set to each candidate of
/// the keyed sequence of `tuple` (the sender's) in turn, up to `port_hash::FOUND_WITHIN`,
/// until a flow of kind `kind` whose inside end sent `tuple`. A free candidate does not end
/// the search: the flow may sit past one that ended.
// A BPF subprogram of its own: the hash's state must not sit in the callers' frames. The
// candidates through bpf_loop (Linux 5.17+): the verifier checks one step, not each of nine
// in turn for every state a caller reaches it in (half of endpoint_ingress's verification).
#[inline(never)]
pub fn probe(tuple: &CtKey, kind: u8, key: &mut CtKey) -> Option<*mut CtFlow> {
    let hash = nat::port_hash4(tuple);
    let config = nat::nat_config();
    let original = u16::from_be(tuple.sport);
    // Nearly every flow has the first candidate it can have (0, or 1 when 0 is not one):
    // looked up here, without the loop's set-up (20-30 ns of a tracked masqueraded segment);
    // the loop goes on from the next.
    let first = u32::from(port_hash::candidate(&config, original, hash, 0).is_none());
    if let Some(port) = port_hash::candidate(&config, original, hash, first) {
        key.dport = port.to_be();
        if let Some(flow) = CONNTRACK.get_ptr_mut(*key)
            && unsafe { (*flow).sent_by(kind, tuple) }
        {
            return Some(flow);
        }
    }
    let mut probe = Probe {
        tuple,
        key,
        found: core::ptr::null_mut(),
        hash,
        config,
        original,
        kind,
        next: first as u8 + 1,
        _pad: [0; 4],
    };
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(
            port_hash::FOUND_WITHIN - first,
            probe_step as *mut core::ffi::c_void,
            (&raw mut probe).cast(),
            0,
        );
    }
    (!probe.found.is_null()).then_some(probe.found)
}

/// What `probe_step` looks for, and the flow once found.
#[repr(C)]
struct Probe {
    tuple: *const CtKey,
    key: *mut CtKey,
    found: *mut CtFlow,
    hash: u64,
    config: NatConfig,
    original: u16,
    kind: u8,
    /// The candidate the loop's step 0 tries (`probe` tried the ones before).
    next: u8,
    _pad: [u8; 4],
}

/// Step `step` of a probe, candidate `next + step`: 0 to go on to the next, 1 to stop (found).
#[inline(never)]
extern "C" fn probe_step(step: u32, ctx: *mut core::ffi::c_void) -> i64 {
    let p = unsafe { &mut *ctx.cast::<Probe>() };
    let i = step + u32::from(p.next);
    let Some(port) = port_hash::candidate(&p.config, p.original, p.hash, i) else {
        return 0;
    };
    let (key, tuple) = unsafe { (&mut *p.key, &*p.tuple) };
    key.dport = port.to_be();
    let Some(flow) = CONNTRACK.get_ptr_mut(*key) else {
        return 0;
    };
    if unsafe { (*flow).sent_by(p.kind, tuple) } {
        p.found = flow;
        return 1;
    }
    0
}

/// A flow entered in `CT_EXCEPTIONS` under `tuple`, its key written to `key`.
#[inline(always)]
fn find_exception(tuple: &CtKey, key: &mut CtKey) -> Option<*mut CtFlow> {
    if *CT_USAGE.get(ct_usage::EXCEPTIONS)? == 0 {
        return None;
    }
    *key = *unsafe { CT_EXCEPTIONS.get(tuple) }?;
    CONNTRACK.get_ptr_mut(*key)
}

/// Enters the flow at `key`, whose inside end sends `tuple`, in `CT_EXCEPTIONS`; false when
/// that map is full (the caller then removes the flow).
#[inline(always)]
pub fn add_exception(tuple: &CtKey, key: &CtKey) -> bool {
    if CT_EXCEPTIONS.insert(tuple, key, 0).is_err() {
        return false;
    }
    if let Some(count) = CT_USAGE.get_ptr_mut(ct_usage::EXCEPTIONS) {
        add(count, 1);
    }
    true
}

/// Removes the flow at `key` (and its exception), giving back its room.
#[inline(always)]
pub fn remove_flow(key: &CtKey) {
    let Some(flow) = (unsafe { CONNTRACK.get(key) }) else {
        return;
    };
    let exception = flow.flags & ct_flags::EXCEPTION != 0;
    let inside = if exception {
        flow.inside_tuple(key)
    } else {
        CtKey::default()
    };
    if CONNTRACK.remove(key).is_err() {
        return;
    }
    release(1);
    if exception && CT_EXCEPTIONS.remove(inside).is_ok() {
        release_in(ct_usage::EXCEPTIONS, 1);
    }
}

/// Takes room for a new flow and its turn in its side's `EMBRYOS` ring (`side`:
/// `embryo_ring::OUTSIDE` or `INSIDE`): Ok(ring_seq), or the outcome to drop the packet with.
/// When the table is full, the flows in the next slots of the ring make room if they are still
/// not assured (the oldest half-open or unanswered flows first, as Linux's early_drop): a
/// flood of such flows cannot lock out the others, which the table keeps until they close.
/// The same side's flows go first; the other side's only when the next ones of this side
/// are all assured, so that a flood never ends the other side's handshakes.
#[inline(always)]
pub fn admit(side: u32) -> Result<u32, u32> {
    let seq = next_ring_seq(side);
    if reserve(1) {
        return Ok(seq);
    }
    for i in 0..EVICT_TRIES {
        let victim = match i {
            0 => seq,
            i if i < OWN_SIDE_TRIES => next_ring_seq(side),
            _ => next_ring_seq(side ^ 1),
        };
        evict(victim);
        if reserve(1) {
            return Ok(seq);
        }
    }
    Err(outcome::DROP_CT_FULL)
}

/// Slots of the rings a new flow may look at for room, and how many of them on its own side.
pub const EVICT_TRIES: u32 = 8;
pub const OWN_SIDE_TRIES: u32 = 6;

/// The next turn of `side`'s ring (never 0). Not atomic: two CPUs may take the same slot, and
/// the flow whose record is overwritten is then left to GC instead of eviction.
#[inline(always)]
fn next_ring_seq(side: u32) -> u32 {
    let side = side & 1;
    let slot = if side == embryo_ring::INSIDE {
        ct_usage::RING_CURSOR_INSIDE
    } else {
        ct_usage::RING_CURSOR
    };
    let Some(cursor) = CT_USAGE.get_ptr_mut(slot) else {
        return 2 | side;
    };
    unsafe {
        let turn = ((core::ptr::read_volatile(cursor) + 1) % (1 << 31)).max(1);
        core::ptr::write_volatile(cursor, turn);
        (turn as u32) << 1 | side
    }
}

#[inline(always)]
fn ring_slot(seq: u32) -> Option<*mut EmbryoSlot> {
    let size = *CT_USAGE.get(ct_usage::RING_SIZE)?;
    if size == 0 {
        return None;
    }
    let index = u64::from(seq & 1) * size + u64::from(seq >> 1) % size;
    EMBRYOS.get_ptr_mut(index as u32)
}

/// Removes the flow recorded in `seq`'s slot if it is still not assured.
#[inline(always)]
fn evict(seq: u32) {
    let Some(slot) = ring_slot(seq) else {
        return;
    };
    let old = unsafe { *slot };
    unsafe { (*slot).seq = 0 };
    if old.seq == 0 {
        return;
    }
    let Some(flow) = (unsafe { CONNTRACK.get(old.key) }) else {
        return;
    };
    if flow.ring_seq != old.seq || flow.flags & ct_flags::ASSURED != 0 {
        return;
    }
    remove_flow(&old.key);
    count_evicted();
}

/// Counts a flow that was not assured evicted to make room (`ct_usage::EVICTED`).
#[inline(always)]
pub fn count_evicted() {
    if let Some(evicted) = CT_USAGE.get_ptr_mut(ct_usage::EVICTED) {
        add(evicted, 1);
    }
}

/// Records an admitted flow (its key) in its ring slot.
#[inline(always)]
fn record(key: &CtKey, seq: u32) {
    if let Some(slot) = ring_slot(seq) {
        unsafe {
            *slot = EmbryoSlot {
                key: *key,
                seq,
                _pad: 0,
            }
        };
    }
}

/// When the inside tuple of a new published flow is held by another flow that is closed (a
/// FIN from both sides, or a reset), that flow is over: it is removed so that the new one can
/// start, as Linux's conntrack replaces a TIME_WAIT entry. True when it was removed.
#[inline(always)]
pub fn evict_closed(key: &CtKey, flow: *mut CtFlow) -> bool {
    let f = unsafe { &*flow };
    let [o, r] = f.tcp_seen;
    let both_fin = o & r & tcp_seen::FIN != 0;
    let reset = (o | r) & tcp_seen::RST != 0;
    if !both_fin && !reset {
        return false;
    }
    remove_flow(key);
    true
}

/// Whether a packet with no flow may open one: for TCP only a SYN (no ACK, RST or FIN). The rest
/// belongs to a connection that is not tracked (any more): it must not become a new flow, let
/// alone a masqueraded one from the port of a published service.
#[inline(always)]
pub fn opens_flow(packet: &Packet) -> bool {
    opens(packet.key.proto, packet.tcp.flags)
}

/// `opens_flow` for a packet of either family.
#[inline(always)]
pub fn opens(proto: u8, tcp_flags: u8) -> bool {
    proto != TCP || tcp_flags & (tcp::SYN | tcp::ACK | tcp::RST | tcp::FIN) == tcp::SYN
}

/// Why a new flow could not be tracked.
pub enum InsertError {
    /// The key is taken: another flow uses that tuple.
    Exists,
    /// The map refused the flow.
    Full,
}

/// Begins a new flow of `kind` whose inside end is `inside_addr:inside_port` on `side`
/// (`admit`'s): its room and ring turn taken, the flow made afresh in this CPU's `OPENING`
/// element (see `Opening`) for `insert_opening`. The flow, or the outcome to drop the packet
/// with (nothing taken). Once begun, a flow that is not inserted gives its room back
/// (`release`).
#[inline(always)]
pub fn open_flow(
    side: u32,
    kind: u8,
    flags: u8,
    inside_addr: u32,
    inside_port: u16,
) -> Result<*mut CtFlow, u32> {
    let seq = admit(side)?;
    let Some(opening) = OPENING.get_ptr_mut(0) else {
        release(1);
        return Err(outcome::DROP_CT_FULL);
    };
    unsafe {
        // Zeroed through `mem`: `write_bytes` is a byte loop in the programs.
        let flow: *mut CtFlow = crate::mem::zeroed(&mut *(&raw mut (*opening).flow).cast());
        (*flow).last_seen_ns = now();
        (*flow).ring_seq = seq;
        (*flow).kind = kind;
        (*flow).flags = flags;
        (*flow).inside_addr = inside_addr;
        (*flow).inside_port = inside_port;
        Ok(flow)
    }
}

/// The flow `open_flow` made in this CPU's `OPENING` element.
#[inline(always)]
pub fn opening() -> Option<*mut CtFlow> {
    let opening = OPENING.get_ptr_mut(0)?;
    Some(unsafe { &raw mut (*opening).flow })
}

/// Inserts the `OPENING` flow under `key` unless the key is taken: recorded in its ring slot,
/// and `key` made the one `count_opening` counts the packet in.
#[inline(always)]
pub fn insert_opening(key: &CtKey) -> Result<(), InsertError> {
    let Some(opening) = OPENING.get_ptr_mut(0) else {
        return Err(InsertError::Full);
    };
    let flow = unsafe { &(*opening).flow };
    match CONNTRACK.insert(key, flow, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            record(key, flow.ring_seq);
            unsafe { (*opening).key = *key };
            Ok(())
        }
        Err(err) if err == -EEXIST => Err(InsertError::Exists),
        Err(_) => Err(InsertError::Full),
    }
}

/// Makes `key` (a flow the packet found opened on another CPU) the one `count_opening` counts
/// it in.
#[inline(always)]
pub fn opened_by_another(key: &CtKey) {
    if let Some(opening) = OPENING.get_ptr_mut(0) {
        unsafe { (*opening).key = *key };
    }
}

/// Counts the packet that opened a flow (or found it opened on another CPU) in it, as any
/// later one: the original direction. Called by the program entries once the flow is open,
/// not by the stage that opened it: the window tracking's frame on top of that stage's would
/// pass the 512 bytes of stack that Linux 6.1 allows a call chain.
#[inline(always)]
pub fn count_opening(ctx: &TcContext, packet: &Packet) {
    let Some(opening) = OPENING.get_ptr_mut(0) else {
        return;
    };
    // Taken, so that a later packet whose stage opened nothing cannot count in this flow.
    let key = unsafe { (*opening).key };
    unsafe {
        crate::mem::zeroed(&mut *(&raw mut (*opening).key).cast::<core::mem::MaybeUninit<CtKey>>())
    };
    if let Some(flow) = CONNTRACK.get_ptr_mut(key) {
        let _ = touch(ctx, flow, direction::ORIGINAL as usize, packet);
    }
}
