//! Host access to published ports with no proxy: cgroup sock_addr hooks rewrite, at the socket,
//! the destination a process of the daemon's namespace connects or sends to (a host address or
//! 127.0.0.0/8, and a published port) to the endpoint; the peer the socket reports
//! (getpeername, the source of a UDP reply) stays what the process used. No packet ever
//! carries a 127/8 address off the host.
//!
//! The hooks sit on the cgroup v2 root, so they run for every socket of the machine: each
//! first checks that the socket lives in the daemon's namespace and leaves any other alone.
//! They always allow: they translate, never block.
//!
//! IPv6 sockets (the `*6` hooks) that name an IPv4-mapped address (`::ffff:a.b.c.d`, what a
//! dual-stack socket uses for IPv4) are translated as IPv4 and stay mapped: the endpoint is
//! `::ffff:` and its address. Other IPv6 destinations are translated with the ports published
//! on IPv6 (`PUBLISH6`): `::1`, an uplink's IPv6 address or a network's IPv6 gateway.
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::map,
    maps::{Array, LruHashMap},
    programs::SockAddrContext,
};
use bridgenet_common::{
    HostAccessConfig, HostPeer, HostPeer6, HostPeer6Key, HostPeerKey, PublishKey, PublishTarget,
};

use crate::{
    nat::{PUBLISH, is_host_addr, subnet_of},
    nat6,
    parse::{TCP, UDP},
};

/// Set by the daemon: the cookie of its network namespace (0: act on no socket).
#[map]
pub static HOST_ACCESS_CONFIG: Array<HostAccessConfig> = Array::with_max_entries(1, 0);

/// What each translated socket used, so that its peer shows that rather than the endpoint.
#[map]
pub static HOST_PEERS: LruHashMap<HostPeerKey, HostPeer> = LruHashMap::with_max_entries(65_536, 0);

/// `HOST_PEERS` for IPv6 sockets translated to an endpoint's IPv6 address.
#[map]
pub static HOST_PEERS6: LruHashMap<HostPeer6Key, HostPeer6> =
    LruHashMap::with_max_entries(65_536, 0);

/// What a sock_addr hook returns to let the call go on.
const ALLOW: i32 = 1;

/// Whether the socket belongs to the daemon's network namespace. Every hook asks this first.
#[inline(always)]
fn in_daemon_netns(ctx: &SockAddrContext) -> bool {
    let Some(config) = HOST_ACCESS_CONFIG.get(0) else {
        return false;
    };
    let cookie = config.netns_cookie;
    cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == cookie
}

/// The destination (address, port, protocol) the call carries, network byte order.
#[inline(always)]
fn destination(ctx: &SockAddrContext) -> (u32, u16, u8) {
    let sa = ctx.sock_addr;
    // Volatile: one 4-byte load per field, as the verifier wants for the context.
    unsafe {
        let addr = read_volatile(addr_of!((*sa).user_ip4));
        let port = read_volatile(addr_of!((*sa).user_port)) as u16;
        let proto = read_volatile(addr_of!((*sa).protocol)) as u8;
        (addr, port, proto)
    }
}

#[inline(always)]
fn set_destination(ctx: &SockAddrContext, addr: u32, port: u16) {
    let sa = ctx.sock_addr;
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), addr);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(port));
    }
}

/// An address of this host: 127.0.0.0/8, an uplink's address or a network's gateway.
#[inline(always)]
fn is_host_address(addr: u32) -> bool {
    u32::from_be(addr) >> 24 == 127
        || is_host_addr(addr)
        || subnet_of(addr).is_some_and(|subnet| subnet.gateway == addr)
}

/// The endpoint behind `addr:port` when it is published there: the port published on that
/// very address first, then on every address (for a host address only), as `nat::published`.
#[inline(never)]
fn published_at(addr: u32, port: u16, proto: u8) -> Option<PublishTarget> {
    if proto != TCP && proto != UDP {
        return None;
    }
    let mut key = PublishKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    if let Some(target) = unsafe { PUBLISH.get(key) } {
        return Some(*target);
    }
    if !is_host_address(addr) {
        return None;
    }
    key.addr = 0;
    unsafe { PUBLISH.get(key) }.copied()
}

/// connect(2), TCP and UDP: a published port on a host address leads to its endpoint.
#[inline(always)]
pub fn connect4(ctx: &SockAddrContext) -> i32 {
    if !in_daemon_netns(ctx) {
        return ALLOW;
    }
    translate(ctx);
    ALLOW
}

/// sendto/sendmsg(2) with an address, UDP: as connect.
#[inline(always)]
pub fn sendmsg4(ctx: &SockAddrContext) -> i32 {
    if !in_daemon_netns(ctx) {
        return ALLOW;
    }
    translate(ctx);
    ALLOW
}

/// recvfrom/recvmsg(2), UDP: a reply from an endpoint the socket was translated to comes
/// from the address and port the application sent to.
#[inline(always)]
pub fn recvmsg4(ctx: &SockAddrContext) -> i32 {
    if !in_daemon_netns(ctx) {
        return ALLOW;
    }
    restore_peer(ctx);
    ALLOW
}

/// getpeername(2): a translated socket's peer is the address and port it connected to.
#[inline(always)]
pub fn getpeername4(ctx: &SockAddrContext) -> i32 {
    if !in_daemon_netns(ctx) {
        return ALLOW;
    }
    restore_peer(ctx);
    ALLOW
}

/// The IPv4 address in an IPv4-mapped `user_ip6` (network byte order), if it is one.
#[inline(always)]
fn mapped_destination(ctx: &SockAddrContext) -> Option<(u32, u16, u8)> {
    let sa = ctx.sock_addr;
    // One 4-byte load per word, as the verifier wants for the context.
    let (w0, w1, w2, w3, port, proto) = unsafe {
        (
            read_volatile(addr_of!((*sa).user_ip6[0])),
            read_volatile(addr_of!((*sa).user_ip6[1])),
            read_volatile(addr_of!((*sa).user_ip6[2])),
            read_volatile(addr_of!((*sa).user_ip6[3])),
            read_volatile(addr_of!((*sa).user_port)) as u16,
            read_volatile(addr_of!((*sa).protocol)) as u8,
        )
    };
    (w0 == 0 && w1 == 0 && w2 == MAPPED_PREFIX).then_some((w3, port, proto))
}

/// `0000:ffff` of `::ffff:0:0/96`, as the third 32-bit word reads in network byte order.
const MAPPED_PREFIX: u32 = 0x0000_ffff_u32.to_be();

#[inline(always)]
fn set_mapped_destination(ctx: &SockAddrContext, addr: u32, port: u16) {
    let sa = ctx.sock_addr;
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), 0);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), 0);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), MAPPED_PREFIX);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), addr);
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(port));
    }
}

/// connect(2) and sendmsg(2) on an IPv6 socket: to an IPv4-mapped address as IPv4, else
/// with the ports published on IPv6.
#[inline(always)]
pub fn connect6(ctx: &SockAddrContext) -> i32 {
    if !in_daemon_netns(ctx) {
        return ALLOW;
    }
    match mapped_destination(ctx) {
        Some((addr, port, proto)) => {
            if let Some((addr, port)) = translate_to(ctx, addr, port, proto) {
                set_mapped_destination(ctx, addr, port);
            }
        }
        None => translate6(ctx),
    }
    ALLOW
}

/// recvmsg(2) and getpeername(2) on an IPv6 socket: the peer it was translated from, mapped
/// or IPv6.
#[inline(always)]
// By reference: 32-byte keys by value are one more copy on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn restore_peer6(ctx: &SockAddrContext) -> i32 {
    if !in_daemon_netns(ctx) {
        return ALLOW;
    }
    match mapped_destination(ctx) {
        Some((addr, port, _)) => {
            if let Some((addr, port)) = peer_of(ctx, addr, port) {
                set_mapped_destination(ctx, addr, port);
            }
        }
        None => {
            let (addr, port, _) = destination6(ctx);
            let key = HostPeer6Key {
                socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
                addr,
                port,
                _pad: [0; 6],
            };
            if let Some(peer) = unsafe { HOST_PEERS6.get(&key) } {
                set_destination6(ctx, &peer.addr, peer.port);
            }
        }
    }
    ALLOW
}

/// The IPv6 destination (address, port, protocol) the call carries, network byte order.
#[inline(always)]
fn destination6(ctx: &SockAddrContext) -> ([u8; 16], u16, u8) {
    let sa = ctx.sock_addr;
    let mut addr = [0u8; 16];
    // One 4-byte load per word, as the verifier wants for the context; each word holds the
    // address's bytes in memory order.
    let (port, proto) = unsafe {
        for (i, chunk) in addr.chunks_exact_mut(4).enumerate() {
            let word = read_volatile(addr_of!((*sa).user_ip6[i]));
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        (
            read_volatile(addr_of!((*sa).user_port)) as u16,
            read_volatile(addr_of!((*sa).protocol)) as u8,
        )
    };
    (addr, port, proto)
}

#[inline(always)]
fn set_destination6(ctx: &SockAddrContext, addr: &[u8; 16], port: u16) {
    let sa = ctx.sock_addr;
    unsafe {
        for (i, chunk) in addr.chunks_exact(4).enumerate() {
            let word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            write_volatile(addr_of_mut!((*sa).user_ip6[i]), word);
        }
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(port));
    }
}

/// Rewrites an IPv6 destination to the endpoint when it is a port published on IPv6 on a
/// host address, and remembers what the application used.
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
fn translate6(ctx: &SockAddrContext) {
    let (addr, port, proto) = destination6(ctx);
    let Some(target) = nat6::published_at(&addr, port, proto) else {
        return;
    };
    let key = HostPeer6Key {
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: target.addr,
        port: target.port,
        _pad: [0; 6],
    };
    let peer = HostPeer6 {
        addr,
        port,
        _pad: 0,
    };
    // An LRU map makes room; failing or not, the call goes to the endpoint.
    let _ = HOST_PEERS6.insert(&key, &peer, 0);
    set_destination6(ctx, &target.addr, target.port);
}

/// What the socket used before it was translated to `addr:port`, if it was.
#[inline(always)]
fn peer_of(ctx: &SockAddrContext, addr: u32, port: u16) -> Option<(u32, u16)> {
    let key = HostPeerKey {
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr,
        port,
        _pad: 0,
    };
    unsafe { HOST_PEERS.get(key) }.map(|peer| (peer.addr, peer.port))
}

/// Puts back the address the application used when the call shows an endpoint this socket
/// was translated to.
#[inline(always)]
fn restore_peer(ctx: &SockAddrContext) {
    let (addr, port, _) = destination(ctx);
    if let Some((addr, port)) = peer_of(ctx, addr, port) {
        set_destination(ctx, addr, port);
    }
}

/// Rewrites the destination to the endpoint when it is a published port on a host address,
/// and remembers what the application used.
#[inline(always)]
fn translate(ctx: &SockAddrContext) {
    let (addr, port, proto) = destination(ctx);
    if let Some((addr, port)) = translate_to(ctx, addr, port, proto) {
        set_destination(ctx, addr, port);
    }
}

/// The endpoint's address and port when `addr:port` is a published port on a host address;
/// what the application used is remembered for its peer.
#[inline(always)]
fn translate_to(ctx: &SockAddrContext, addr: u32, port: u16, proto: u8) -> Option<(u32, u16)> {
    let target = published_at(addr, port, proto)?;
    let key = HostPeerKey {
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: target.addr,
        port: target.port,
        _pad: 0,
    };
    let peer = HostPeer {
        addr,
        port,
        _pad: 0,
    };
    // An LRU map makes room; failing or not, the call goes to the endpoint.
    let _ = HOST_PEERS.insert(key, peer, 0);
    Some((target.addr, target.port))
}
