//! TCP traffic between the tests' namespaces: a one-connection echo server, a round trip, and
//! a connection that must not get through.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use crate::topology::enter;

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// An echo server for one connection in `netns`; returns the peer address it saw.
pub fn echo_once(netns: &str, bind: &str) -> std::thread::JoinHandle<SocketAddr> {
    let listener = enter(netns, || TcpListener::bind(bind).expect("bind"));
    std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = [0u8; 4096];
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
    let to: SocketAddr = to.parse().unwrap();
    let mut stream = enter(netns, || {
        TcpStream::connect_timeout(&to, TIMEOUT).expect("connect")
    });
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"hello bridgenet").unwrap();
    let mut back = [0u8; 15];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"hello bridgenet");
    stream.shutdown(std::net::Shutdown::Write).unwrap();
}

/// Whether a connection from `netns` to `to` fails within a second (refused or dropped).
pub fn refused(netns: &str, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    enter(netns, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_err()
    })
}
