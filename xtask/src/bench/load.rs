//! The load: small servers in the endpoint's namespace and clients in the client's, both as
//! threads of this process that entered the namespace (`setns` on the thread). Every client
//! loop stops at its deadline; the servers stop when dropped.
use std::{
    fs::File,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Moves the calling thread into the network namespace `/run/netns/NS`.
pub fn enter(ns: &str) -> Result<()> {
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
    // SAFETY: setns on this thread only, with a file we own.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on `n` threads inside namespace `ns` and collects what they return.
fn on_threads<R: Send + 'static>(
    ns: &str,
    n: usize,
    f: impl Fn(usize) -> Result<R> + Send + Sync + 'static,
) -> Result<Vec<R>> {
    let f = Arc::new(f);
    let handles: Vec<JoinHandle<Result<R>>> = (0..n)
        .map(|i| {
            let (ns, f) = (ns.to_owned(), f.clone());
            std::thread::spawn(move || {
                enter(&ns)?;
                f(i)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("load thread panicked"))?
        })
        .collect()
}

/// Request byte of the connection workload: the server answers and closes first, like an
/// HTTP/1.0 server, so its TIME_WAIT is on the server side and the client's ports are free at
/// once. Any other byte is echoed on a kept connection.
const CLOSE: u8 = b'c';

/// The servers of one endpoint: for each TCP port, acceptors that answer each byte with one
/// byte (on IPv4, and for `tcp6_ports` also on IPv6); a UDP echo on `udp_port`.
pub struct Servers {
    stop: Arc<AtomicBool>,
    listeners: Vec<RawFd>,
    _sockets: Vec<TcpListener>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn start(
        ns: &str,
        tcp_ports: &[u16],
        tcp6_ports: &[u16],
        udp_port: u16,
        acceptors: usize,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ports, ports6) = (tcp_ports.to_vec(), tcp6_ports.to_vec());
        let (sockets, udp) = on_threads(ns, 1, move |_| {
            let mut tcp = ports
                .iter()
                .map(|p| TcpListener::bind(("0.0.0.0", *p)).with_context(|| format!("port {p}")))
                .collect::<Result<Vec<_>>>()?;
            for p in &ports6 {
                tcp.push(listen6(*p).with_context(|| format!("port [::]:{p}"))?);
            }
            let udp = UdpSocket::bind(("0.0.0.0", udp_port))?;
            Ok((tcp, udp))
        })?
        .remove(0);
        let mut threads = Vec::new();
        for listener in &sockets {
            for _ in 0..acceptors {
                let (listener, stop) = (listener.try_clone()?, stop.clone());
                threads.push(std::thread::spawn(move || accept_loop(listener, stop)));
            }
        }
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        for _ in 0..2 {
            let (udp, stop) = (udp.try_clone()?, stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        Ok(Self {
            stop,
            listeners: sockets.iter().map(|l| l.as_raw_fd()).collect(),
            _sockets: sockets,
            threads,
        })
    }
}

/// A listener on `[::]:port` for IPv6 only, beside the IPv4 one on the same port.
fn listen6(port: u16) -> Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)).into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut byte = [0u8; 1];
        // A peer silent for 4 s is gone (a client that gave up): free the acceptor.
        let mut idle = 0;
        while !stop.load(Ordering::Relaxed) && idle < 8 {
            match stream.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => {
                    idle = 0;
                    if stream.write_all(&byte).is_err() || byte[0] == CLOSE {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    idle += 1
                }
                Err(_) => break,
            }
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for fd in &self.listeners {
            // SAFETY: our listening sockets, still open; on Linux this wakes a blocked accept.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a client run measured.
pub struct Run {
    pub ops: u64,
    pub errors: u64,
    pub secs: f64,
    /// Per-operation latencies in nanoseconds (request/response only).
    pub latencies: Vec<u64>,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    fn check(self, what: &str, to: impl std::fmt::Display) -> Result<Self> {
        if self.ops == 0 || self.errors * 100 > self.ops {
            bail!(
                "{what} to {to}: {} done, {} failed: the path does not work",
                self.ops,
                self.errors
            );
        }
        Ok(self)
    }
}

fn merge(runs: Vec<Run>, secs: f64) -> Run {
    let mut all = Run {
        ops: 0,
        errors: 0,
        secs,
        latencies: Vec::new(),
    };
    for r in runs {
        all.ops += r.ops;
        all.errors += r.errors;
        all.latencies.extend(r.latencies);
    }
    all
}

/// Which side of a connection closes first, and so holds its TIME_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closer {
    /// As an HTTP/1.0 server: the client's ports are free at once.
    Server,
    /// As HTTP/1.1 clients and load balancers: the client reuses its ports through
    /// TIME_WAIT (tcp_tw_reuse), on tuples whose old flows may still be tracked.
    Client,
}

/// TCP connection rate: each worker connects, sends one byte, reads the answer and closes;
/// `closer` says which side closes first.
pub fn connections(
    ns: &str,
    to: SocketAddr,
    workers: usize,
    time: Duration,
    closer: Closer,
) -> Result<Run> {
    // Any byte but CLOSE is echoed on a kept connection, which the client then closes.
    let request = match closer {
        Closer::Server => CLOSE,
        Closer::Client => b'k',
    };
    let runs = on_threads(ns, workers, move |_| {
        let deadline = Instant::now() + time;
        let mut run = Run {
            ops: 0,
            errors: 0,
            secs: 0.0,
            latencies: Vec::new(),
        };
        let mut byte = [request; 1];
        while Instant::now() < deadline {
            byte[0] = request;
            let ok = (|| -> std::io::Result<()> {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.write_all(&byte)?;
                s.read_exact(&mut byte)?;
                Ok(())
            })();
            match ok {
                Ok(()) => run.ops += 1,
                Err(_) => run.errors += 1,
            }
        }
        Ok(run)
    })?;
    merge(runs, time.as_secs_f64()).check("connections", to)
}

/// Request/response: each worker keeps one connection and exchanges one byte each way; a
/// failed exchange is counted and the connection made again.
pub fn request_response(ns: &str, to: SocketAddr, workers: usize, time: Duration) -> Result<Run> {
    let runs = on_threads(ns, workers, move |_| {
        let connect = || -> std::io::Result<TcpStream> {
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok(s)
        };
        let mut latencies = Vec::with_capacity(1 << 16);
        let mut errors = 0;
        let mut byte = [1u8; 1];
        let deadline = Instant::now() + time;
        let mut stream = None;
        while Instant::now() < deadline {
            let start = Instant::now();
            let s = match stream.take() {
                Some(s) => s,
                None => match connect() {
                    Ok(s) => s,
                    Err(_) => {
                        errors += 1;
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            let mut s = s;
            match s.write_all(&byte).and_then(|_| s.read_exact(&mut byte)) {
                Ok(()) => {
                    latencies.push(start.elapsed().as_nanos() as u64);
                    stream = Some(s);
                }
                Err(_) => errors += 1,
            }
        }
        Ok(Run {
            ops: latencies.len() as u64,
            errors,
            secs: 0.0,
            latencies,
        })
    })?;
    merge(runs, time.as_secs_f64()).check("request/response", to)
}

/// UDP request/response: each worker sends one datagram and waits for the echo.
pub fn udp(ns: &str, to: SocketAddrV4, workers: usize, time: Duration) -> Result<Run> {
    let runs = on_threads(ns, workers, move |_| {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(to)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut run = Run {
            ops: 0,
            errors: 0,
            secs: 0.0,
            latencies: Vec::new(),
        };
        let mut buf = [1u8; 16];
        let deadline = Instant::now() + time;
        while Instant::now() < deadline {
            s.send(&buf[..1])?;
            match s.recv(&mut buf) {
                Ok(_) => run.ops += 1,
                Err(_) => run.errors += 1,
            }
        }
        Ok(run)
    })?;
    merge(runs, time.as_secs_f64()).check("UDP request/response", to)
}

/// Waits until a TCP connection from namespace `ns` to `to` is answered (an IPv6 address is
/// usable once its neighbours are found), for at most `limit`.
pub fn reachable(ns: &str, to: SocketAddr, limit: Duration) -> Result<()> {
    on_threads(ns, 1, move |_| {
        let deadline = Instant::now() + limit;
        loop {
            let last = (|| -> std::io::Result<()> {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(500))?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut byte = [CLOSE; 1];
                s.write_all(&byte)?;
                s.read_exact(&mut byte)
            })();
            match last {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => bail!("{to} does not answer: {err}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })?;
    Ok(())
}

/// Sends one UDP datagram for each of `flows` distinct tuples (source socket, destination
/// port) to `to`'s address, paced so that the receiving backlog does not overflow.
pub fn udp_flows(ns: &str, to: std::net::Ipv4Addr, flows: u32) -> Result<()> {
    on_threads(ns, 1, move |_| {
        let per_socket = 65_535u32;
        let sockets = (0..flows.div_ceil(per_socket))
            .map(|_| UdpSocket::bind("0.0.0.0:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        for i in 0..flows {
            let sock = &sockets[(i / per_socket) as usize];
            let port = 1 + (i % per_socket) as u16;
            sock.send_to(&[0], (to, port))?;
            if i % 500 == 499 {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        Ok(())
    })?;
    Ok(())
}
