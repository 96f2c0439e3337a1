//! The shaping policy: a link-shaping TCP proxy (this kernel has no netem qdisc): each direction
//! is delayed by half the RTT, both directions share one bandwidth cap per
//! direction across all connections, a new connection pays one extra round
//! trip (the TCP handshake), and bytes, connections and HTTP requests are
//! counted. The link can be changed while the proxy runs, so one proxy serves
//! every case of a benchmark.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Largest piece read from one side before it is paced and queued.
const PIECE: usize = 64 << 10;
/// Pieces in flight per direction of a connection (a window far above the
/// bandwidth-delay product of any link we model, so TCP never limits it).
const QUEUE: usize = 1024;

/// The modelled link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Round-trip time; each direction gets half.
    pub rtt: Duration,
    /// Bytes per second in each direction, shared by all connections (0: unlimited).
    pub bytes_per_sec: u64,
}

impl Link {
    /// No delay, no cap: the proxy only counts.
    pub const LOOPBACK: Link = Link {
        rtt: Duration::ZERO,
        bytes_per_sec: 0,
    };

    /// A link of `rtt_ms` milliseconds round trip and `mbit` Mbit/s.
    pub fn new(rtt_ms: u64, mbit: u64) -> Link {
        Link {
            rtt: Duration::from_millis(rtt_ms),
            bytes_per_sec: mbit * 1_000_000 / 8,
        }
    }
}

/// Counters since the proxy started (take differences for a window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Bytes from the upstream to clients.
    pub bytes_down: u64,
    /// Bytes from clients to the upstream.
    pub bytes_up: u64,
    /// Accepted connections.
    pub connections: u64,
    /// HTTP requests (header blocks sent upstream; requests here have no body).
    pub requests: u64,
}

impl Counters {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            bytes_down: self.bytes_down.saturating_sub(earlier.bytes_down),
            bytes_up: self.bytes_up.saturating_sub(earlier.bytes_up),
            connections: self.connections.saturating_sub(earlier.connections),
            requests: self.requests.saturating_sub(earlier.requests),
        }
    }
}

/// One direction's shared pacing: the time the link is busy until.
#[derive(Debug)]
struct Pacer {
    busy_until: std::sync::Mutex<Instant>,
}

impl Pacer {
    fn new() -> Self {
        Pacer {
            busy_until: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Waits until `len` bytes have been serialised onto the link.
    async fn send(&self, len: usize, bytes_per_sec: u64) {
        if bytes_per_sec == 0 {
            return;
        }
        let done = {
            let Ok(mut busy) = self.busy_until.lock() else {
                return;
            };
            let start = (*busy).max(Instant::now());
            *busy = start + Duration::from_secs_f64(len as f64 / bytes_per_sec as f64);
            *busy
        };
        tokio::time::sleep_until(done).await;
    }
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    link: RwLock<Link>,
    down: Pacer,
    up: Pacer,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    connections: AtomicU64,
    requests: AtomicU64,
}

impl Shared {
    fn link(&self) -> Link {
        self.link.read().map(|l| *l).unwrap_or(Link::LOOPBACK)
    }
}

/// A running shaping proxy; stops when dropped.
#[derive(Debug)]
pub struct Shaper {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Shaper {
    /// Listens on `listen` and forwards every connection to `upstream` over `link`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        link: Link,
    ) -> std::io::Result<Shaper> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            link: RwLock::new(link),
            down: Pacer::new(),
            up: Pacer::new(),
            bytes_down: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Shaper { shared, addr, task })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the link for new pieces of traffic (connections keep going).
    pub fn set_link(&self, link: Link) {
        if let Ok(mut l) = self.shared.link.write() {
            *l = link;
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> Counters {
        let s = &self.shared;
        Counters {
            bytes_down: s.bytes_down.load(Ordering::Relaxed),
            bytes_up: s.bytes_up.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(client, shared.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "shaper accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Which way a pump carries bytes.
#[derive(Clone, Copy)]
enum Dir {
    Up,
    Down,
}

async fn serve(client: TcpStream, shared: Arc<Shared>) {
    // The handshake's round trip: the client's first bytes wait for it.
    let rtt = shared.link().rtt;
    if !rtt.is_zero() {
        tokio::time::sleep(rtt).await;
    }
    let upstream = match TcpStream::connect(shared.upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "shaper cannot reach the upstream");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = pump(cr, uw, shared.clone(), Dir::Up);
    let down = pump(ur, cw, shared, Dir::Down);
    tokio::join!(up, down);
}

/// Carries one direction: read, pace on the shared link, delay by half the
/// RTT, write. A reader and a writer task, so pieces overlap in flight.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    dir: Dir,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader_shared = shared.clone();
    let reader = async move {
        let mut requests = HeaderEnds::default();
        let mut buf = vec![0u8; PIECE];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let link = reader_shared.link();
            let (pacer, counter) = match dir {
                Dir::Up => (&reader_shared.up, &reader_shared.bytes_up),
                Dir::Down => (&reader_shared.down, &reader_shared.bytes_down),
            };
            counter.fetch_add(n as u64, Ordering::Relaxed);
            if let Dir::Up = dir {
                let seen = requests.feed(&buf[..n]);
                reader_shared.requests.fetch_add(seen, Ordering::Relaxed);
            }
            pacer.send(n, link.bytes_per_sec).await;
            let arrive = Instant::now() + link.rtt / 2;
            if tx.send((arrive, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((arrive, piece)) = rx.recv().await {
            tokio::time::sleep_until(arrive).await;
            if to.write_all(&piece).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Counts `\r\n\r\n` (ends of HTTP header blocks) across piece boundaries.
#[derive(Debug, Default)]
struct HeaderEnds {
    tail: [u8; 3],
    tail_len: usize,
}

impl HeaderEnds {
    fn feed(&mut self, piece: &[u8]) -> u64 {
        let mut joined = Vec::with_capacity(self.tail_len + piece.len());
        joined.extend_from_slice(&self.tail[..self.tail_len]);
        joined.extend_from_slice(piece);
        let count = joined.windows(4).filter(|w| w == b"\r\n\r\n").count() as u64;
        let keep = joined.len().min(3);
        self.tail[..keep].copy_from_slice(&joined[joined.len() - keep..]);
        self.tail_len = keep;
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_ends_are_counted_across_pieces() {
        let mut h = HeaderEnds::default();
        assert_eq!(h.feed(b"GET / HTTP/1.1\r\nHost: x\r"), 0);
        assert_eq!(h.feed(b"\n\r"), 0);
        assert_eq!(h.feed(b"\nGET /b HTTP/1.1\r\n\r\n"), 2);
        assert_eq!(h.feed(b"HEAD /c HTTP/1.1\r\n\r\n"), 1);
    }

    /// An upstream answering every request line with `size` bytes.
    async fn upstream(size: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let mut ends = HeaderEnds::default();
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        for _ in 0..ends.feed(&buf[..n]) {
                            if s.write_all(&vec![7u8; size]).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn request(addr: SocketAddr, size: usize) -> Duration {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let mut got = vec![0u8; size];
        s.read_exact(&mut got).await.expect("read");
        started.elapsed()
    }

    #[tokio::test]
    async fn delay_bandwidth_and_counters() {
        let up = upstream(250_000).await;
        let shaper = Shaper::start(SocketAddr::from(([127, 0, 0, 1], 0)), up, Link::new(40, 20))
            .await
            .expect("start");
        // 2 round trips (handshake + request) and 250 kB at 2.5 MB/s = 100 ms.
        let t = request(shaper.addr(), 250_000).await;
        assert!(t >= Duration::from_millis(175), "{t:?}");
        assert!(t < Duration::from_millis(600), "{t:?}");
        // Two connections at once share the cap: 500 kB take 200 ms or more.
        let both = Instant::now();
        let (a, b) = tokio::join!(
            request(shaper.addr(), 250_000),
            request(shaper.addr(), 250_000)
        );
        assert!(a.max(b) >= Duration::from_millis(270), "{a:?} {b:?}");
        assert!(both.elapsed() < Duration::from_millis(900));
        let c = shaper.counters();
        assert_eq!((c.connections, c.requests), (3, 3));
        assert_eq!(c.bytes_down, 750_000);
        // Loopback: only counting.
        shaper.set_link(Link::LOOPBACK);
        let t = request(shaper.addr(), 250_000).await;
        assert!(t < Duration::from_millis(150), "{t:?}");
        assert_eq!(shaper.counters().since(&c).requests, 1);
    }
}
