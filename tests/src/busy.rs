//! Busy clients that close first and reuse their ports, and the server they talk to: the
//! traffic of HTTP/1.1 clients and load balancers, against which conntrack must never fail a
//! connection.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{sockets, topology::enter};

/// A server in `netns` on `bind` that answers each connection with "ok" and closes once the
/// client has closed (the client closes first, as HTTP/1.1 clients and load balancers do).
pub fn ok_server(
    netns: &str,
    bind: &str,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let listener = enter(netns, || sockets::tcp_listener(bind));
    listener.set_nonblocking(true).unwrap();
    (0..4)
        .map(|_| {
            let listener = listener.try_clone().unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    };
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let _ = stream.write_all(b"ok");
                    let mut rest = [0u8; 16];
                    let _ = stream.read(&mut rest);
                }
            })
        })
        .collect()
}

/// One connection of a busy client: connect, read the answer, close first. Err says why not.
pub fn one_request(to: SocketAddr) -> Result<(), String> {
    one_request_within(to, Duration::from_secs(3))
}

/// `one_request` with `timeout` for the connect and for the answer.
pub fn one_request_within(to: SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut answer = [0u8; 2];
    stream
        .read_exact(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    Ok(())
}

/// What connect says when the client's own kernel has no free local port (EADDRNOTAVAIL): no
/// packet left, so the datapath had no say; the client pauses and tries again, as real ones do.
const NO_LOCAL_PORT: &str = "connect: Cannot assign requested address";

/// Clients in `netns` open connections to `to` as fast as they can for `time`: (connections,
/// failures with the first few reasons).
pub fn busy_clients(netns: &str, to: SocketAddr, time: Duration) -> (u64, u64, Vec<String>) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let reasons = Arc::new(std::sync::Mutex::new(Vec::new()));
    let no_local_port = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + time;
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (done, failed, reasons) = (done.clone(), failed.clone(), reasons.clone());
            let no_local_port = no_local_port.clone();
            let netns = netns.to_owned();
            std::thread::spawn(move || {
                enter(&netns, || {
                    while Instant::now() < until {
                        match one_request(to) {
                            Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                            Err(reason) if reason.starts_with(NO_LOCAL_PORT) => {
                                std::thread::sleep(Duration::from_millis(20));
                                no_local_port.fetch_add(1, Ordering::Relaxed)
                            }
                            Err(reason) => {
                                let mut reasons = reasons.lock().unwrap();
                                if reasons.len() < 5 {
                                    reasons.push(reason);
                                }
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let reasons = reasons.lock().unwrap().clone();
    eprintln!(
        "the clients found no free local port {} times",
        no_local_port.load(Ordering::Relaxed)
    );
    (
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        reasons,
    )
}
