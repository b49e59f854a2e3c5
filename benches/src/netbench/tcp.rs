//! The TCP loads of our own: an echo server, a connection-rate generator and a round-trip timer.
//!
//! One tiny server serves both TCP loads on both rigs, so the server's cost is the same on each
//! side and only the router differs: it accepts on a few threads that each serve one connection
//! to completion, and echoes every byte until the peer closes.
//!
//! - Connection rate: [`connect_rate`] opens connections from `threads` threads for a fixed time
//!   (and at most a fixed count): connect, one 16-byte request, wait for its echo, close. Closing
//!   first puts the client in TIME_WAIT; the sysctls the harness sets (KERNEL-REFERENCE.md:
//!   `tcp_max_tw_buckets=0`, a wide `ip_local_port_range`) keep TIME_WAIT collisions from
//!   measuring themselves instead of the router.
//! - Latency: [`round_trips`] sends small requests over one connection (`TCP_NODELAY`) and waits
//!   for each echo; p50 and p99 of the round-trip times, by the nearest-rank method.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The port of the echo server on every rig (and of the ClusterIP service that fronts it).
pub const ECHO_PORT: u16 = 7000;
/// Threads blocked in `accept` on the echo server.
pub const SERVER_THREADS: usize = 4;
/// The request of the connection-rate load and of the latency load.
pub const REQUEST: &[u8; 16] = b"GET / netbench\r\n";
/// A stalled connection gives up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the echo protocol on `0.0.0.0:port` for `lifetime`, then returns (the process exits).
/// Calls `ready` once the socket listens.
pub fn serve_echo(port: u16, lifetime: Duration, ready: impl FnOnce()) -> io::Result<()> {
    // std sets SO_REUSEADDR on listeners, so a restarted server does not wait for TIME_WAIT.
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    for _ in 0..SERVER_THREADS {
        let l = listener.try_clone()?;
        std::thread::spawn(move || {
            for conn in l.incoming() {
                match conn {
                    Ok(c) => {
                        let _ = echo(c);
                    }
                    // EMFILE, a reset before accept: keep serving.
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
    }
    ready();
    std::thread::sleep(lifetime);
    Ok(())
}

fn echo(mut c: TcpStream) -> io::Result<()> {
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 4096];
    loop {
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        c.write_all(&buf[..n])?;
    }
}

/// One connection: connect, send [`REQUEST`], read its echo, close.
fn one_connection(dst: SocketAddr) -> io::Result<()> {
    let mut c = TcpStream::connect_timeout(&dst, IO_TIMEOUT)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.write_all(REQUEST)?;
    let mut answer = [0u8; REQUEST.len()];
    c.read_exact(&mut answer)?;
    if &answer != REQUEST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the echo differs from the request",
        ));
    }
    Ok(())
}

/// What the connection-rate load did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConnReport {
    pub threads: usize,
    /// Connections that completed the request and its answer.
    pub connections: u64,
    /// Connections that failed (refused, timed out, reset).
    pub failures: u64,
    pub seconds: f64,
    /// `connections / seconds`.
    pub per_second: f64,
}

/// Opens connections to `dst` from `threads` threads for `duration`, at most `max` in all.
pub fn connect_rate(dst: SocketAddrV4, threads: usize, duration: Duration, max: u64) -> ConnReport {
    let attempts = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (attempts, done, failed) = (
                Arc::clone(&attempts),
                Arc::clone(&done),
                Arc::clone(&failed),
            );
            std::thread::spawn(move || {
                // Each attempt takes a ticket first, so the threads together stop at exactly `max`.
                while Instant::now() < deadline && attempts.fetch_add(1, Ordering::Relaxed) < max {
                    match one_connection(SocketAddr::V4(dst)) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let seconds = start.elapsed().as_secs_f64();
    let connections = done.load(Ordering::Relaxed);
    ConnReport {
        threads: threads.max(1),
        connections,
        failures: failed.load(Ordering::Relaxed),
        seconds,
        per_second: connections as f64 / seconds.max(1e-9),
    }
}

/// What the latency load measured, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RrReport {
    pub round_trips: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
}

/// Times up to `count` request/answer round trips over one connection to `dst`, for at most
/// `limit`.
pub fn round_trips(dst: SocketAddrV4, count: u64, limit: Duration) -> io::Result<RrReport> {
    let mut c = TcpStream::connect_timeout(&SocketAddr::V4(dst), IO_TIMEOUT)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut answer = [0u8; REQUEST.len()];
    // One untimed exchange first: the path (ARP, the flow cache, conntrack) is set up by it.
    c.write_all(REQUEST)?;
    c.read_exact(&mut answer)?;
    let mut samples_ns: Vec<u64> = Vec::with_capacity(count.min(1 << 20) as usize);
    let start = Instant::now();
    while (samples_ns.len() as u64) < count && start.elapsed() < limit {
        let t = Instant::now();
        c.write_all(REQUEST)?;
        c.read_exact(&mut answer)?;
        samples_ns.push(t.elapsed().as_nanos() as u64);
    }
    summarize(&mut samples_ns)
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no round trip completed"))
}

/// p50, p99, mean and max of round-trip times given in nanoseconds (sorted in place).
pub fn summarize(samples_ns: &mut [u64]) -> Option<RrReport> {
    samples_ns.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let n = samples_ns.len() as u64;
    Some(RrReport {
        round_trips: n,
        p50_us: us(percentile(samples_ns, 50.0)?),
        p99_us: us(percentile(samples_ns, 99.0)?),
        mean_us: us(samples_ns.iter().sum::<u64>() / n.max(1)),
        max_us: us(*samples_ns.last()?),
    })
}

/// The `p`th percentile of `sorted` (ascending) by the nearest-rank method: the smallest value
/// such that at least `p` percent of the samples are at or below it. `None` when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        // Five samples: p50 is the 3rd, p99 the 5th (the maximum).
        let v = [10, 20, 30, 40, 1000];
        assert_eq!(percentile(&v, 50.0), Some(30));
        assert_eq!(percentile(&v, 99.0), Some(1000));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summaries_are_in_microseconds() {
        let mut ns = vec![30_000, 10_000, 20_000, 40_000];
        let r = summarize(&mut ns).unwrap();
        assert_eq!(
            (r.round_trips, r.p50_us, r.p99_us, r.mean_us, r.max_us),
            (4, 20.0, 40.0, 25.0, 40.0)
        );
        assert!(summarize(&mut []).is_none());
    }
}
