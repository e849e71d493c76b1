//! Raw sockets inside the tests' namespaces: crafted packets (built with etherparse) sent from
//! one namespace, and every frame an interface of another receives, captured with AF_PACKET.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::topology::enter;

fn check(ret: libc::c_int, what: &str) -> libc::c_int {
    assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
    ret
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    }
}

fn sockaddr_in6(addr: Ipv6Addr) -> libc::sockaddr_in6 {
    // SAFETY: a zeroed sockaddr_in6 is valid; the fields are set below.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_addr.s6_addr = addr.octets();
    sa
}

/// Sends each of `packets` from one raw socket in `netns`.
fn send_raw(netns: &str, protocol: libc::c_int, to: IpAddr, packets: &[&[u8]]) {
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = enter(netns, || {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = check(
            unsafe { libc::socket(family, libc::SOCK_RAW, protocol) },
            "raw socket",
        );
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    let (v4, v6);
    let (addr, len): (*const libc::sockaddr, usize) = match to {
        IpAddr::V4(a) => {
            v4 = sockaddr_in(a);
            ((&raw const v4).cast(), size_of::<libc::sockaddr_in>())
        }
        IpAddr::V6(a) => {
            v6 = sockaddr_in6(a);
            ((&raw const v6).cast(), size_of::<libc::sockaddr_in6>())
        }
    };
    for data in packets {
        // SAFETY: the buffer and address outlive the call.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                0,
                addr,
                len as libc::socklen_t,
            )
        };
        assert_eq!(
            sent,
            data.len() as isize,
            "sendto {to}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Sends a whole IPv4 packet (header included, as given: only the kernel's checksum and total
/// length are filled in) from `netns` to `to`.
pub fn send_ipv4(netns: &str, to: Ipv4Addr, packet: &[u8]) {
    send_raw(netns, libc::IPPROTO_RAW, to.into(), &[packet]);
}

/// Sends whole IPv6 packets (header included, as given) from `netns` to `to`, from one socket.
pub fn send_ipv6(netns: &str, to: Ipv6Addr, packets: &[&[u8]]) {
    send_raw(netns, libc::IPPROTO_RAW, to.into(), packets);
}

/// Sends an ICMP message (header with its checksum, and body) from `netns` to `to`; the kernel
/// writes the IPv4 header with the namespace's source address.
pub fn send_icmp(netns: &str, to: Ipv4Addr, message: &[u8]) {
    send_raw(netns, libc::IPPROTO_ICMP, to.into(), &[message]);
}

/// Sends an Ethernet frame as it is out of `iface` of `netns`.
pub fn send_frame(netns: &str, iface: &str, frame: &[u8]) {
    let capture = Capture::open(netns, iface);
    // SAFETY: the buffer outlives the call; the socket is bound to the interface.
    let sent = unsafe {
        libc::send(
            capture.fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
        )
    };
    assert_eq!(
        sent,
        frame.len() as isize,
        "send on {iface}: {}",
        std::io::Error::last_os_error()
    );
}

/// Every frame that `iface` of a namespace receives or sends, from the moment it is opened.
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    pub fn open(netns: &str, iface: &str) -> Self {
        let iface = iface.to_owned();
        enter(netns, move || {
            let protocol = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the descriptor is owned right away.
            let fd = check(
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) },
                "AF_PACKET socket",
            );
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let ifindex = nix::net::if_::if_nametoindex(iface.as_str()).expect("interface");
            // SAFETY: a zeroed sockaddr_ll is valid; the fields are set below.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = protocol;
            addr.sll_ifindex = ifindex as i32;
            // SAFETY: the address outlives the call.
            check(
                unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&raw const addr).cast(),
                        size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                },
                "binding the capture",
            );
            Self { fd }
        })
    }

    /// The frames seen until `wait` has passed.
    pub fn frames(&self, wait: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if ready <= 0 {
                continue;
            }
            // SAFETY: the buffer outlives the call.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                out.push(buf[..n as usize].to_vec());
            }
        }
    }
}

/// The IPv4 source, destination and protocol of an Ethernet frame, if it carries IPv4.
pub fn ipv4_of(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8)> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let addr = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
    Some((addr(26), addr(30), frame[23]))
}
