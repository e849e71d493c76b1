//! Sockets bound to a fixed port, again and again within a test.
//!
//! A socket a test has just closed can live on for a moment in a child that another test
//! thread is spawning: fork copies the descriptor table, and only exec closes the copy. Binding
//! the same port in that moment fails with EADDRINUSE, so these retry, for a bounded time.
//! `expect_refused` retries for the same reason: one lost datagram or ICMP error is no failure.
use std::{
    fmt::Debug,
    io::ErrorKind,
    net::{TcpListener, ToSocketAddrs, UdpSocket},
    time::{Duration, Instant},
};

/// Longer than any spawn takes, even under emulation.
const PATIENCE: Duration = Duration::from_secs(10);

/// A TCP listener on `addr`, waiting out a closed one that a spawning child still holds.
pub fn tcp_listener(addr: impl ToSocketAddrs + Debug + Copy) -> TcpListener {
    retry(addr, || TcpListener::bind(addr))
}

/// A UDP socket on `addr`, waiting out a closed one that a spawning child still holds.
pub fn udp_socket(addr: impl ToSocketAddrs + Debug + Copy) -> UdpSocket {
    retry(addr, || UdpSocket::bind(addr))
}

fn retry<S>(addr: impl Debug, bind: impl Fn() -> std::io::Result<S>) -> S {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match bind() {
            Ok(socket) => return socket,
            Err(err) if err.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("bind {addr:?}: {err}"),
        }
    }
}

/// Sends `payload` on a connected UDP socket until the kernel reports the far port closed
/// (an ICMP port unreachable turned into ECONNREFUSED), up to five datagrams two seconds apart.
/// One try is not a check: a datagram can be lost, and ICMP errors are rate-limited, on 6.1
/// by one budget that every namespace of the machine shares (a flood in a parallel test
/// drains it). An answer, or no error after the last try, fails the test.
pub fn expect_refused(sock: &UdpSocket, payload: &[u8], what: &str) {
    let refused = |err: &std::io::Error| err.kind() == ErrorKind::ConnectionRefused;
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        // An error that arrived after the last wait is reported by this send.
        match sock.send(payload) {
            Err(err) if refused(&err) => return,
            Err(err) => panic!("{what}: send: {err}"),
            Ok(_) => {}
        }
        match sock.recv(&mut buf) {
            Err(err) if refused(&err) => return,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("{what}: expected the port refused, got {other:?}"),
        }
    }
    panic!("{what}: no port unreachable came back for five datagrams");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Sets the flag when dropped, also while a panic unwinds.
    struct Stop<'a>(&'a AtomicBool);

    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// The race itself: sibling threads spawn children while one rebinds a port it has just
    /// closed (a plain bind fails here about once in 150 tries). In a namespace of its own.
    #[test]
    fn a_port_closed_while_children_spawn_binds_again() {
        crate::require_root();
        let mut topo = crate::Topology::new();
        topo.netns("rebind");
        crate::topology::enter(topo.ns("rebind").name(), || {
            let stop = AtomicBool::new(false);
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| {
                        while !stop.load(Ordering::Relaxed) {
                            std::process::Command::new("true").status().unwrap();
                        }
                    });
                }
                let _stop = Stop(&stop);
                for _ in 0..500 {
                    drop(udp_socket("127.0.0.1:9191"));
                    drop(tcp_listener("127.0.0.1:9192"));
                }
            });
        });
    }
}
