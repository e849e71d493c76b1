//! TCP traffic between the tests' namespaces: a one-connection echo server, a round trip, and
//! a connection that must not get through.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use crate::topology::enter;

/// Generous: the matrix runs under software emulation.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// An echo server for one connection in `netns`; returns the peer address it saw.
pub fn echo_once(netns: &str, bind: &str) -> std::thread::JoinHandle<SocketAddr> {
    let listener = enter(netns, || TcpListener::bind(bind).expect("bind"));
    std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = stream.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).expect("write");
        }
        peer
    })
}

/// Connects from `netns` to `to`, sends a line and checks that it comes back.
pub fn roundtrip(netns: &str, to: &str) {
    roundtrip_data(netns, to, b"hello bridgenet");
}

/// Connects from `netns` to `to`, sends `data` and checks that it comes back intact (read
/// while writing, so that any size goes through).
pub fn roundtrip_data(netns: &str, to: &str, data: &[u8]) {
    let to: SocketAddr = to.parse().unwrap();
    let mut stream = enter(netns, || {
        TcpStream::connect_timeout(&to, TIMEOUT).expect("connect")
    });
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let reader = {
        let mut stream = stream.try_clone().unwrap();
        let len = data.len();
        std::thread::spawn(move || {
            let mut back = vec![0u8; len];
            stream.read_exact(&mut back).expect("echo");
            back
        })
    };
    stream.write_all(data).expect("send");
    let back = reader.join().unwrap();
    assert!(back == data, "the echo differs from what was sent");
    stream.shutdown(std::net::Shutdown::Write).unwrap();
}

/// Whether a connection from `netns` to `to` fails within a second (refused or dropped).
pub fn refused(netns: &str, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    enter(netns, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_err()
    })
}
