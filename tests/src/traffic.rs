//! Traffic between the tests' namespaces: a one-connection TCP echo server, a round trip, a
//! connection that must not get through, and numbered UDP streams (one flow each).
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::{sockets, topology::enter};

/// Generous: the matrix runs under software emulation.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// How long `echo_once` waits for its client's next bytes: longer than a daemon restart
/// between two of them under emulation (28 s on 6.1 with two tests verifying programs at
/// once), which would otherwise close the connection the restart must keep. A client that
/// gets no echo still fails after `TIMEOUT`.
const SERVER_IDLE: Duration = Duration::from_secs(120);

/// An echo server for one connection in `netns`; returns the peer address it saw.
pub fn echo_once(netns: &str, bind: &str) -> std::thread::JoinHandle<SocketAddr> {
    let listener = enter(netns, || sockets::tcp_listener(bind));
    std::thread::spawn(move || {
        let (mut stream, peer) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(SERVER_IDLE)).unwrap();
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

/// The address an echo server in `server_ns` saw for a round trip from `client_ns` to `to`.
pub fn seen(server_ns: &str, bind: &str, client_ns: &str, to: &str) -> std::net::IpAddr {
    let server = echo_once(server_ns, bind);
    roundtrip(client_ns, to);
    server.join().unwrap().ip()
}

/// Connects from `netns` to `to` and checks one echo, leaving the connection open while the
/// stream lives: a check of a live flow cannot race its expiry (a closed one goes in seconds).
pub fn open_roundtrip(netns: &str, to: &str) -> TcpStream {
    let to: SocketAddr = to.parse().unwrap();
    let mut stream = enter(netns, || {
        TcpStream::connect_timeout(&to, TIMEOUT).expect("connect")
    });
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"hello").expect("send");
    let mut back = [0u8; 5];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"hello", "the echo differs from what was sent");
    stream
}

/// One echo through a new connection from `netns` to `to`, each step within `limit`: for a
/// test that retries while the path changes under it.
pub fn roundtrip_within(netns: &str, to: &str, limit: Duration) -> std::io::Result<()> {
    let to: SocketAddr = to.parse().unwrap();
    let mut stream = enter(netns, || TcpStream::connect_timeout(&to, limit))?;
    stream.set_read_timeout(Some(limit))?;
    stream.write_all(b"hello")?;
    let mut back = [0u8; 5];
    stream.read_exact(&mut back)?;
    stream.shutdown(std::net::Shutdown::Write)
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
    // A path that swallows full-size segments (path MTU discovery broken) stalls the writer:
    // fail within the timeout, not at the matrix's limit.
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
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

/// Datagrams a `UdpSink` received: (sequence number, source), in order of arrival.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(u64, SocketAddr)>>>;

/// A UDP receiver in a namespace that records the sequence number (the first 8 bytes) and
/// source of every datagram, and answers each with the same bytes when `echo` is set.
pub struct UdpSink {
    pub received: Received,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl UdpSink {
    pub fn new(netns: &str, bind: &str, echo: bool) -> Self {
        use std::sync::atomic::Ordering;
        let socket = enter(netns, || sockets::udp_socket(bind));
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let sink = Self {
            received: Default::default(),
            stop: Default::default(),
        };
        let (received, stop) = (sink.received.clone(), sink.stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if n >= 8 {
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                    received.lock().unwrap().push((seq, from));
                }
                if echo {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        sink
    }

    /// Waits up to `within` for a datagram that `wanted` accepts.
    pub fn wait_for(&self, within: Duration, wanted: impl Fn(u64, SocketAddr) -> bool) -> bool {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if self.any(&wanted) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.any(&wanted)
    }

    pub fn any(&self, wanted: impl Fn(u64, SocketAddr) -> bool) -> bool {
        self.received
            .lock()
            .unwrap()
            .iter()
            .any(|&(seq, from)| wanted(seq, from))
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A UDP client in a namespace that keeps sending numbered datagrams from one socket (one
/// flow) every 10 ms, ignoring errors (an ICMP port unreachable while nothing is published),
/// until dropped; `replies` records what comes back.
pub struct UdpStream {
    /// The sequence number of the next datagram.
    pub next: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub replies: Received,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl UdpStream {
    pub fn new(netns: &str, bind: &str, to: &str) -> Self {
        use std::sync::atomic::Ordering;
        let to: SocketAddr = to.parse().unwrap();
        let socket = enter(netns, || sockets::udp_socket(bind));
        socket
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let stream = Self {
            next: Default::default(),
            replies: Default::default(),
            stop: Default::default(),
        };
        let (next, replies, stop) = (
            stream.next.clone(),
            stream.replies.clone(),
            stream.stop.clone(),
        );
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let seq = next.fetch_add(1, Ordering::SeqCst);
                let _ = socket.send_to(&seq.to_be_bytes(), to);
                // The read timeout paces the stream.
                while let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if n >= 8 {
                        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                        replies.lock().unwrap().push((seq, from));
                    }
                }
            }
        });
        stream
    }

    /// The sequence number the next datagram will carry.
    pub fn now(&self) -> u64 {
        self.next.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
