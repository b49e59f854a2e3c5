//! The UDP load: a bounded generator (`sendmmsg`) and a sink (`recvmmsg`) of our own.
//!
//! Why not `iperf3 -u -b 0`: its sender is single-threaded and makes one `send` per datagram, and on
//! the kernel rig forwarding runs in the sender's context, so iperf3 measures its own syscall
//! rate (KERNEL-REFERENCE.md). Batches of [`BATCH`] datagrams per `sendmmsg` take most of the
//! syscall cost out. The generator sends a fixed count or stops at a time limit, whichever comes
//! first, on one connected socket (one flow, as a router sees it). The sink counts what arrives
//! and stops by itself after a quiet period once traffic has started, or at a deadline, so neither
//! can outlive the scenario.
//!
//! Both run inside a namespace as netbench's own hidden subcommands (`ip netns exec NS netbench
//! udp-send ...`), and report one line of JSON. `libc` is used directly for the two batch calls
//! (std has no wrapper); each `unsafe` block says why it is sound.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Datagrams per `sendmmsg` / `recvmmsg` call.
pub const BATCH: usize = 64;
/// The port the sink listens on.
pub const PORT: u16 = 9000;
/// The sink's receive buffer: large enough that a scheduling hiccup of the sink does not show up
/// as router loss. Set with `SO_RCVBUFFORCE` (we run as root) so `net.core.rmem_max` does not cap it.
pub const SINK_RCVBUF: usize = 4 << 20;
/// Room for one datagram in the sink (the bench sends 64-byte payloads; anything larger is
/// counted, truncated).
const SLOT: usize = 2048;

/// What the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendConfig {
    pub dst: SocketAddrV4,
    /// UDP payload bytes per datagram.
    pub payload: usize,
    /// Stop after this many datagrams...
    pub count: u64,
    /// ... or after this long, whichever comes first.
    pub limit: Duration,
}

/// What the generator did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SendReport {
    /// Datagrams the socket accepted.
    pub sent: u64,
    /// `sendmmsg` calls that failed with a transient error (no buffer space, a refused port).
    pub send_errors: u64,
    /// From the first call to the last.
    pub seconds: f64,
}

/// Sends `cfg.count` datagrams (or as many as fit in `cfg.limit`) to `cfg.dst` in batches.
pub fn send(cfg: &SendConfig) -> io::Result<SendReport> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect(cfg.dst)?;
    let fd = sock.as_raw_fd();
    // A recognisable payload, the same bytes in every datagram.
    let payload: Vec<u8> = b"pacific-netbench"
        .iter()
        .copied()
        .cycle()
        .take(cfg.payload)
        .collect();
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| {
            // SAFETY: mmsghdr is a plain C struct of integers and pointers, for which all-zero
            // bytes are a valid value (no name, no control data, empty iovec list).
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            // One shared iovec: the kernel only reads it and the payload, which outlive the calls.
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let start = Instant::now();
    let (mut sent, mut send_errors) = (0u64, 0u64);
    while sent < cfg.count && start.elapsed() < cfg.limit {
        let n = (cfg.count - sent).min(BATCH as u64) as libc::c_uint;
        // SAFETY: `fd` is an open UDP socket owned by `sock`; `msgs` holds BATCH >= n initialised
        // headers, each pointing at `iov` and `payload`, all alive and unmoved for this call.
        let rc = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n, 0) };
        if rc >= 0 {
            sent += rc as u64;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            // A full queue, or an ICMP port unreachable from before the sink was up.
            Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED) => {
                send_errors += 1;
                std::thread::yield_now();
            }
            _ => return Err(err),
        }
    }
    Ok(SendReport {
        sent,
        send_errors,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// When the sink stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkConfig {
    pub port: u16,
    /// Stop this long after the last datagram, once at least one arrived.
    pub quiet: Duration,
    /// Stop this long after starting in any case.
    pub limit: Duration,
}

/// What the sink counted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SinkReport {
    pub received: u64,
    pub bytes: u64,
    /// From the first datagram to the last.
    pub seconds: f64,
}

/// Binds the sink's socket, calls `ready` (the harness waits for it before it starts the
/// generator), and counts datagrams until the quiet period or the limit.
pub fn sink(cfg: &SinkConfig, ready: impl FnOnce()) -> io::Result<SinkReport> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, cfg.port))?;
    let fd = sock.as_raw_fd();
    let size = SINK_RCVBUF as libc::c_int;
    // SAFETY: `fd` is an open socket; the option value is a c_int that lives across the call and
    // its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The receive call wakes at least this often to check the clock.
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut buffers = vec![0u8; SLOT * BATCH];
    let mut iovs: Vec<libc::iovec> = buffers
        .chunks_mut(SLOT)
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: as in `send`: all-zero is a valid mmsghdr.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    ready();
    let start = Instant::now();
    let (mut received, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now.duration_since(start) >= cfg.limit
            || last.is_some_and(|l| now.duration_since(l) >= cfg.quiet)
        {
            break;
        }
        // SAFETY: `fd` is an open UDP socket; `msgs` holds BATCH headers whose iovecs point into
        // `buffers` (SLOT bytes each), all alive and unmoved for this call; no timeout pointer.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc > 0 {
            let now = Instant::now();
            first.get_or_insert(now);
            last = Some(now);
            received += rc as u64;
            bytes += msgs[..rc as usize]
                .iter()
                .map(|m| u64::from(m.msg_len))
                .sum::<u64>();
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => {}
            _ => return Err(err),
        }
    }
    let seconds = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    Ok(SinkReport {
        received,
        bytes,
        seconds,
    })
}

/// The UDP scenario's outcome on one rig: what was sent, forwarded and received.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UdpOutcome {
    pub payload_bytes: usize,
    pub sent: u64,
    /// Packets the router put on the server's link (the counter each rig names in the notes).
    pub forwarded: u64,
    pub received: u64,
    /// Packets the client's own interface dropped on transmit (a full queue in front of the
    /// router: on Pacific, the TAP ring the daemon reads from).
    pub client_tx_dropped: u64,
    /// The sender's active time: every rate below is over it.
    pub seconds: f64,
    /// 1 - received / sent.
    pub loss: f64,
}

impl UdpOutcome {
    pub fn new(
        payload_bytes: usize,
        sent: &SendReport,
        forwarded: u64,
        client_tx_dropped: u64,
        sink: &SinkReport,
    ) -> UdpOutcome {
        let loss = if sent.sent == 0 {
            0.0
        } else {
            1.0 - (sink.received.min(sent.sent) as f64 / sent.sent as f64)
        };
        UdpOutcome {
            payload_bytes,
            sent: sent.sent,
            forwarded,
            received: sink.received,
            client_tx_dropped,
            seconds: sent.seconds,
            loss,
        }
    }

    /// Packets per second over the sender's active time.
    pub fn rate(&self, packets: u64) -> f64 {
        if self.seconds > 0.0 {
            packets as f64 / self.seconds
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_rates_follow_the_counts() {
        let sent = SendReport {
            sent: 1000,
            send_errors: 0,
            seconds: 2.0,
        };
        let got = SinkReport {
            received: 900,
            bytes: 900 * 64,
            seconds: 1.9,
        };
        let o = UdpOutcome::new(64, &sent, 950, 50, &got);
        assert!((o.loss - 0.1).abs() < 1e-12);
        assert_eq!(o.rate(o.received), 450.0);
        assert_eq!(o.rate(o.forwarded), 475.0);
        let none = UdpOutcome::new(
            64,
            &SendReport {
                sent: 0,
                send_errors: 3,
                seconds: 0.0,
            },
            0,
            0,
            &got,
        );
        assert_eq!((none.loss, none.rate(5)), (0.0, 0.0));
    }

    /// The generator and the sink on loopback inside a namespace of our own: every datagram the
    /// generator reports sent arrives, with its 64-byte payload. Needs root and iproute2.
    #[test]
    fn generator_and_sink_agree_in_a_namespace() {
        if !nix_is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = format!("pacu-nb{}-udp", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("skipped: cannot create a namespace");
            return;
        }
        struct Gone(String);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        let _gone = Gone(ns.clone());
        // Enter the namespace on a thread of our own (setns affects only the calling thread).
        let ns2 = ns.clone();
        let (sent, got) = std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns2}")).unwrap();
            // SAFETY: setns on an open namespace file; it changes only this thread's namespace.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            assert!(std::process::Command::new("ip")
                .args(["-n", &ns2, "link", "set", "lo", "up"])
                .status()
                .unwrap()
                .success());
            let (tx, rx) = std::sync::mpsc::channel();
            let sink = std::thread::spawn(move || {
                // The new thread was created by a thread inside the namespace, so it is too.
                sink(
                    &SinkConfig {
                        port: 9555,
                        quiet: Duration::from_millis(200),
                        limit: Duration::from_secs(5),
                    },
                    || tx.send(()).unwrap(),
                )
                .unwrap()
            });
            rx.recv().unwrap();
            let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9555);
            let sent = send(&SendConfig {
                dst,
                payload: 64,
                count: 1000,
                limit: Duration::from_secs(2),
            })
            .unwrap();
            (sent, sink.join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(sent.sent, 1000);
        assert_eq!(got.received, 1000);
        assert_eq!(got.bytes, 64_000);
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
