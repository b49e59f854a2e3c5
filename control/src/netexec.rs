//! `netexec`: Pacific's own test server, run by the lab inside pods.
//!
//! The container images named in the manifests cannot run here, so every pod with ports runs this
//! server in their place. It imitates the parts of Kubernetes' `agnhost netexec` that the seed's
//! observations need: a page that names the pod (or says the Deployment's `MESSAGE`), the client
//! address as the server sees it (to show SNAT and the SLB's automap), an echo, a health check, and
//! a UDP echo.
//!
//! Why this shape:
//! - Std only, blocking sockets, threads. The server is a test fixture that answers a handful of
//!   requests a second; an async runtime would add a dependency and a second concurrency model to
//!   the crate for nothing. Each HTTP listener gets a fixed pool of threads that all block in
//!   `accept` on clones of one socket (the kernel hands each connection to one of them) and serve
//!   it to completion, so a slow client holds one thread, never the listener.
//! - Every socket is bound with `SO_REUSEADDR` and `SO_REUSEPORT` (through `socket2`, so this
//!   module has no `unsafe`): two replicas in one namespace can share a port, and a restarted
//!   server does not wait for `TIME_WAIT` to drain.
//! - Everything is bound before anything is served, so a port conflict is an error the lab sees at
//!   start-up, not a silent half-working pod.
//! - HTTP/1.1 is parsed by hand (RFC 9112): request line, header fields, an optional
//!   `Content-Length` body that is read and discarded so keep-alive stays in step. Bounded: a head
//!   over 16 KiB gets 431 (RFC 6585 §5), a body over 16 KiB 413, a chunked body 501 (RFC 9112 §6.1:
//!   a transfer coding the server does not implement), a malformed request line 400, and each of
//!   those closes the connection because the framing can no longer be trusted.
//! - SIGTERM drains, as a Kubernetes pod's process is asked to before it is killed: the lab has
//!   already taken the pod out of its services, so the server stops keeping connections alive,
//!   answers the requests it holds (and the connections already queued), and exits once it has
//!   been idle for [`DRAIN_QUIET`] (at most [`DRAIN_MAX`]). Killed at once instead, a request in
//!   flight would be reset, or lost with the pod's interface.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};

/// Threads blocked in `accept` per HTTP listener; each serves one connection at a time.
pub const HTTP_THREADS_PER_PORT: usize = 8;
/// The most bytes a request head (request line and header fields) or body may take.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// An idle or stalled connection is closed after this long without a byte.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest UDP payload (the IPv4 maximum less the headers).
const MAX_DATAGRAM: usize = 65_507;
/// After SIGTERM, the server exits once no request has been in hand for this long.
pub const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// After SIGTERM, the server exits after this long even with requests in hand (the lab sends
/// SIGKILL 3.5 s after SIGTERM).
pub const DRAIN_MAX: Duration = Duration::from_secs(3);

/// What one server answers and where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetexecConfig {
    /// TCP ports served with HTTP/1.1.
    pub http_ports: Vec<u16>,
    /// UDP ports that echo every datagram to its sender.
    pub udp_ports: Vec<u16>,
    /// The pod's name: the answer to `/hostname`, and to `/` when there is no message.
    pub name: String,
    /// The pod's `MESSAGE` environment variable: the answer to `/` when set.
    pub message: Option<String>,
    /// Ports forwarded elsewhere: a TKG node's nodePorts where it runs no replica of the
    /// service (see [`Forward`]).
    pub forwards: Vec<Forward>,
}

/// A port whose connections (TCP) or datagrams (UDP) are relayed to other addresses, taken in
/// turn, as kube-proxy's nodePort on a node without a local endpoint sends them to one on
/// another node (`externalTrafficPolicy: Cluster`; the endpoint sees the relaying node as the
/// source, as kube-proxy's masquerade makes it). Written `tcp:PORT=IP:PORT[,IP:PORT...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub udp: bool,
    pub port: u16,
    pub targets: Vec<SocketAddrV4>,
}

impl std::str::FromStr for Forward {
    type Err = String;

    fn from_str(s: &str) -> Result<Forward, String> {
        let bad = || format!("{s:?}: expected tcp:PORT=IP:PORT[,IP:PORT...] (or udp:)");
        let (proto, rest) = s.split_once(':').ok_or_else(bad)?;
        let udp = match proto {
            "tcp" => false,
            "udp" => true,
            _ => return Err(bad()),
        };
        let (port, targets) = rest.split_once('=').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let targets: Vec<SocketAddrV4> = targets
            .split(',')
            .map(|t| t.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        if port == 0 || targets.is_empty() {
            return Err(bad());
        }
        Ok(Forward { udp, port, targets })
    }
}

impl std::fmt::Display for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let targets: Vec<String> = self.targets.iter().map(|t| t.to_string()).collect();
        let proto = if self.udp { "udp" } else { "tcp" };
        write!(f, "{proto}:{}={}", self.port, targets.join(","))
    }
}

/// Binds every port of `cfg`, then serves until SIGTERM, which drains (see [`Drain`]) and ends
/// the process. Returns an error, having served nothing, if any bind fails.
pub fn run(cfg: &NetexecConfig) -> io::Result<()> {
    let server = bind(cfg)?;
    let drain = Arc::new(Drain::default());
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM])?;
    let on_term = Arc::clone(&drain);
    thread::Builder::new()
        .name("netexec-sigterm".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                on_term.start();
                on_term.wait_quiet(DRAIN_QUIET, DRAIN_MAX);
                std::process::exit(0);
            }
        })?;
    server.serve_with(drain)
}

/// What a draining server waits for: the HTTP requests in hand, from the first byte read to the
/// response written (a connection idle between keep-alive requests holds nothing, and a newly
/// accepted one holds one until its first request is answered).
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    in_hand: AtomicUsize,
    /// When the last request in hand was answered (or the drain started).
    last_busy: Mutex<Option<Instant>>,
}

/// One request in hand; answered when dropped.
struct InHand<'a>(&'a Drain);

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_hand.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drain {
    /// From now on, responses close their connections.
    pub fn start(&self) {
        self.touch();
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Returns once no request has been in hand for `quiet`, or after `max`.
    pub fn wait_quiet(&self, quiet: Duration, max: Duration) {
        let deadline = Instant::now() + max;
        while Instant::now() < deadline {
            let idle_since = *self
                .last_busy
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let idle_long_enough = idle_since.is_none_or(|t| t.elapsed() >= quiet);
            if self.in_hand.load(Ordering::SeqCst) == 0 && idle_long_enough {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn in_hand(&self) -> InHand<'_> {
        self.in_hand.fetch_add(1, Ordering::SeqCst);
        InHand(self)
    }

    fn touch(&self) {
        *self
            .last_busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }
}

/// Every socket of a [`NetexecConfig`], bound and listening, not yet served.
#[derive(Debug)]
pub struct BoundServer {
    http: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    relays: Vec<(Relay, Vec<SocketAddrV4>)>,
    cfg: NetexecConfig,
}

#[derive(Debug)]
enum Relay {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Binds `0.0.0.0:PORT` for every port of `cfg`. The error names the port that failed.
pub fn bind(cfg: &NetexecConfig) -> io::Result<BoundServer> {
    let any = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    let mut http = Vec::with_capacity(cfg.http_ports.len());
    for &port in &cfg.http_ports {
        let sock = reusable_socket(Type::STREAM, Protocol::TCP)
            .and_then(|s| s.bind(&any(port).into()).map(|()| s))
            .and_then(|s| s.listen(1024).map(|()| s))
            .map_err(|e| annotate(e, format!("netexec: cannot listen on tcp port {port}")))?;
        http.push(TcpListener::from(sock));
    }
    let mut udp = Vec::with_capacity(cfg.udp_ports.len());
    for &port in &cfg.udp_ports {
        let sock = reusable_socket(Type::DGRAM, Protocol::UDP)
            .and_then(|s| s.bind(&any(port).into()).map(|()| s))
            .map_err(|e| annotate(e, format!("netexec: cannot bind udp port {port}")))?;
        udp.push(UdpSocket::from(sock));
    }
    let mut relays = Vec::with_capacity(cfg.forwards.len());
    for f in &cfg.forwards {
        let port = f.port;
        if f.targets.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("netexec: the forwarded port {port} has no target"),
            ));
        }
        let relay = if f.udp {
            reusable_socket(Type::DGRAM, Protocol::UDP)
                .and_then(|s| s.bind(&any(port).into()).map(|()| Relay::Udp(s.into())))
        } else {
            reusable_socket(Type::STREAM, Protocol::TCP)
                .and_then(|s| s.bind(&any(port).into()).map(|()| s))
                .and_then(|s| s.listen(1024).map(|()| Relay::Tcp(s.into())))
        }
        .map_err(|e| annotate(e, format!("netexec: cannot bind the forwarded port {port}")))?;
        relays.push((relay, f.targets.clone()));
    }
    Ok(BoundServer {
        http,
        udp,
        relays,
        cfg: cfg.clone(),
    })
}

impl BoundServer {
    /// The addresses actually bound (useful when a port was 0).
    pub fn local_addrs(&self) -> io::Result<(Vec<SocketAddr>, Vec<SocketAddr>)> {
        let tcp = self
            .http
            .iter()
            .map(TcpListener::local_addr)
            .collect::<io::Result<_>>()?;
        let udp = self
            .udp
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<io::Result<_>>()?;
        Ok((tcp, udp))
    }

    /// Serves every socket until every thread has ended (in practice: forever).
    pub fn serve(self) -> io::Result<()> {
        self.serve_with(Arc::new(Drain::default()))
    }

    /// [`BoundServer::serve`], its HTTP connections tracked by `drain`.
    pub fn serve_with(self, drain: Arc<Drain>) -> io::Result<()> {
        let mut threads = Vec::new();
        for listener in self.http {
            for i in 0..HTTP_THREADS_PER_PORT {
                let listener = listener.try_clone()?;
                let cfg = self.cfg.clone();
                let drain = Arc::clone(&drain);
                let name = format!("netexec-http-{i}");
                threads.push(
                    thread::Builder::new()
                        .name(name)
                        .spawn(move || accept_loop(&listener, &cfg, &drain))?,
                );
            }
        }
        for sock in self.udp {
            threads.push(
                thread::Builder::new()
                    .name("netexec-udp".into())
                    .spawn(move || udp_echo_loop(&sock))?,
            );
        }
        for (relay, targets) in self.relays {
            let name = "netexec-forward".to_string();
            threads.push(match relay {
                Relay::Tcp(listener) => thread::Builder::new()
                    .name(name)
                    .spawn(move || tcp_relay_loop(&listener, &targets))?,
                Relay::Udp(sock) => thread::Builder::new()
                    .name(name)
                    .spawn(move || udp_relay_loop(sock, &targets))?,
            });
        }
        for t in threads {
            // A panicking thread is a bug in this module; the others keep serving.
            let _ = t.join();
        }
        Ok(())
    }
}

fn reusable_socket(ty: Type, proto: Protocol) -> io::Result<Socket> {
    let sock = Socket::new(Domain::IPV4, ty, Some(proto))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    Ok(sock)
}

fn annotate(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn accept_loop(listener: &TcpListener, cfg: &NetexecConfig, drain: &Drain) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                // Errors on one connection (a reset, a timeout) end that connection only.
                let _ = serve_connection(stream, peer, cfg, drain);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on the error.
                eprintln!("netexec: accept: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn udp_echo_loop(sock: &UdpSocket) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                // A lost reply is what UDP promises; keep echoing the others.
                let _ = sock.send_to(&buf[..n], peer);
            }
            // ECONNREFUSED from an earlier ICMP port-unreachable, EINTR: nothing to do.
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// How long a relayed UDP exchange stays open without a datagram (conntrack's UDP stream
/// timeout is 120 s; a test exchange lasts seconds).
const UDP_RELAY_IDLE: Duration = Duration::from_secs(30);
/// How long a relay waits for a target to accept a connection before it tries the next.
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Relays each accepted connection to the targets in turn (the next one if a target refuses),
/// each direction copied until its end, which is passed on as a half-close.
fn tcp_relay_loop(listener: &TcpListener, targets: &[SocketAddrV4]) {
    let mut next = 0usize;
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("netexec: forward accept: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let order: Vec<SocketAddrV4> = (0..targets.len())
            .map(|i| targets[(next + i) % targets.len()])
            .collect();
        next = next.wrapping_add(1);
        let spawned = thread::Builder::new()
            .name("netexec-relay".into())
            .spawn(move || {
                let upstream = order.iter().find_map(|t| {
                    TcpStream::connect_timeout(&SocketAddr::V4(*t), RELAY_CONNECT_TIMEOUT).ok()
                });
                // No target answers: the client's connection is closed (a refusal, as near as
                // a relay can make one).
                if let Some(upstream) = upstream {
                    relay_both_ways(client, upstream);
                }
            });
        if let Err(e) = spawned {
            eprintln!("netexec: forward: {e}");
        }
    }
}

fn relay_both_ways(client: TcpStream, upstream: TcpStream) {
    let halves = (client.try_clone(), upstream.try_clone());
    let (Ok(client_back), Ok(upstream_back)) = halves else {
        return;
    };
    let back = thread::Builder::new()
        .name("netexec-relay".into())
        .spawn(move || copy_then_half_close(upstream_back, client_back));
    copy_then_half_close(client, upstream);
    if let Ok(back) = back {
        let _ = back.join();
    }
}

fn copy_then_half_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// Relays datagrams: each client gets its own socket towards a target (taken in turn), whose
/// answers go back to the client from the forwarded port; an exchange idle for
/// [`UDP_RELAY_IDLE`] is forgotten.
fn udp_relay_loop(sock: UdpSocket, targets: &[SocketAddrV4]) {
    use std::collections::hash_map::{Entry, HashMap};
    use std::sync::{Arc, Mutex};
    let sock = Arc::new(sock);
    let sessions: Arc<Mutex<HashMap<SocketAddr, UdpSocket>>> = Arc::default();
    let mut next = 0usize;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match sock.recv_from(&mut buf) {
            Ok(got) => got,
            Err(_) => {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let mut open = sessions.lock().unwrap_or_else(|e| e.into_inner());
        let upstream = match open.entry(client) {
            Entry::Occupied(session) => session.into_mut(),
            Entry::Vacant(session) => {
                let target = targets[next % targets.len()];
                next = next.wrapping_add(1);
                let Ok(upstream) = UdpSocket::bind("0.0.0.0:0").and_then(|u| {
                    u.connect(target)?;
                    u.set_read_timeout(Some(UDP_RELAY_IDLE))?;
                    Ok(u)
                }) else {
                    continue;
                };
                let Ok(answers) = upstream.try_clone() else {
                    continue;
                };
                let (sock, sessions) = (Arc::clone(&sock), Arc::clone(&sessions));
                let spawned =
                    thread::Builder::new()
                        .name("netexec-relay".into())
                        .spawn(move || {
                            let mut buf = vec![0u8; MAX_DATAGRAM];
                            // Until the exchange goes quiet (or the target refuses).
                            while let Ok(n) = answers.recv(&mut buf) {
                                let _ = sock.send_to(&buf[..n], client);
                            }
                            sessions
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&client);
                        });
                if spawned.is_err() {
                    continue;
                }
                session.insert(upstream)
            }
        };
        let _ = upstream.send(&buf[..n]);
    }
}

/// One parsed request: what the router of paths and the framing need.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    /// HTTP/1.1 or later (keep-alive by default) versus HTTP/1.0.
    http11: bool,
    keep_alive: bool,
    content_length: usize,
}

/// Why a request head could not be served; each maps to a status and closes the connection.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// 400: the request line or a header field does not parse.
    Malformed(&'static str),
    /// 413: the declared body is larger than we accept.
    BodyTooLarge,
    /// 501: a transfer coding (chunked) we do not implement.
    TransferEncoding,
    /// 505: a major version other than 1.
    Version,
}

impl HeadError {
    fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::BodyTooLarge => 413,
            HeadError::TransferEncoding => 501,
            HeadError::Version => 505,
        }
    }
}

/// Serves requests on one connection until the client closes, asks to close, times out or errs.
fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: &NetexecConfig,
    drain: &Drain,
) -> io::Result<()> {
    // A new connection's first request is in hand from the start: the client sends it at once.
    let mut in_hand = Some(drain.in_hand());
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // Responses are one write each; do not let Nagle hold the next one behind a delayed ACK.
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Read until the buffer holds a whole head (requests may be pipelined: keep the rest).
        let head_len = loop {
            if let Some(n) = find_head_end(&buf) {
                break n;
            }
            if buf.len() >= MAX_REQUEST_BYTES {
                write_response(
                    &mut stream,
                    431,
                    "request header fields too large\n",
                    false,
                    false,
                )?;
                return linger_close(stream);
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    in_hand.get_or_insert_with(|| drain.in_hand());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if head_len > MAX_REQUEST_BYTES {
            write_response(
                &mut stream,
                431,
                "request header fields too large\n",
                false,
                false,
            )?;
            return linger_close(stream);
        }
        let req = match parse_head(&buf[..head_len]) {
            Ok(req) => req,
            Err(e) => {
                let body = match &e {
                    HeadError::Malformed(why) => format!("bad request: {why}\n"),
                    HeadError::BodyTooLarge => "request body too large\n".to_string(),
                    HeadError::TransferEncoding => {
                        "transfer codings are not supported\n".to_string()
                    }
                    HeadError::Version => "HTTP version not supported\n".to_string(),
                };
                write_response(&mut stream, e.status(), &body, false, false)?;
                return linger_close(stream);
            }
        };
        buf.drain(..head_len);
        // Read and discard the body so the next request starts where it should.
        let mut remaining = req.content_length;
        let have = remaining.min(buf.len());
        buf.drain(..have);
        remaining -= have;
        while remaining > 0 {
            let n = match stream.read(&mut chunk[..remaining.min(4096)]) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            remaining -= n;
        }
        let (status, body) = route(&req.target, peer, cfg);
        let head_only = req.method == "HEAD";
        let keep_alive = req.keep_alive && !drain.draining();
        write_response(&mut stream, status, &body, keep_alive, head_only)?;
        if !keep_alive {
            drop(in_hand);
            return linger_close(stream);
        }
        // A pipelined request already read is still in hand.
        if buf.is_empty() {
            in_hand = None;
        }
    }
}

/// Closes after a final response without resetting it away: shut down our side, then drain what
/// the client still sends for a moment (RFC 9112 §9.6, "tear-down").
fn linger_close(mut stream: TcpStream) -> io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Offset just past the blank line that ends a request head. Accepts bare LF line ends as RFC 9112
/// §2.2 allows a recipient to.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Parses a request head (request line and header fields, RFC 9112 §3 and §5).
fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed("head is not UTF-8"))?;
    // Lines end in CRLF or LF; the head ends in an empty line that yields empty strings here.
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(HeadError::Malformed("empty request"))?;
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => {
            return Err(HeadError::Malformed(
                "request line is not METHOD SP TARGET SP VERSION",
            ))
        }
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(HeadError::Malformed("bad method"));
    }
    if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HeadError::Malformed("bad request target"));
    }
    let digits = version
        .strip_prefix("HTTP/")
        .ok_or(HeadError::Malformed("bad HTTP version"))?;
    let (major, minor) = match digits.as_bytes() {
        [a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => (a - b'0', b - b'0'),
        _ => return Err(HeadError::Malformed("bad HTTP version")),
    };
    if major != 1 {
        return Err(HeadError::Version);
    }
    let http11 = minor >= 1;
    let mut keep_alive = http11;
    let mut content_length: Option<usize> = None;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(HeadError::Malformed("header field without a colon"))?;
        // RFC 9112 §5.1: no whitespace between the field name and the colon.
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(HeadError::Malformed("bad header field name"));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| HeadError::Malformed("bad Content-Length"))?;
            // RFC 9112 §6.3: differing lengths make the framing ambiguous.
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::Malformed("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::TransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            for opt in value.split(',').map(str::trim) {
                if opt.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if opt.eq_ignore_ascii_case("keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_REQUEST_BYTES {
        return Err(HeadError::BodyTooLarge);
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        http11,
        keep_alive,
        content_length,
    })
}

/// RFC 9110 §5.6.2 `tchar`: the characters of a token (methods, field names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The status and body for a request target.
fn route(target: &str, peer: SocketAddr, cfg: &NetexecConfig) -> (u16, String) {
    // absolute-form (`http://host/path`, RFC 9112 §3.2.2) as proxies send it: keep the path.
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/" => {
            let text = cfg.message.as_deref().unwrap_or(&cfg.name);
            (200, format!("{text}\n"))
        }
        "/hostname" => (200, cfg.name.clone()),
        "/clientip" => (200, peer.to_string()),
        "/healthz" => (200, "ok".to_string()),
        "/echo" => {
            let msg = query
                .split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .find(|(k, _)| *k == "msg")
                .map(|(_, v)| percent_decode(v))
                .unwrap_or_default();
            (200, msg)
        }
        _ => (404, format!("404 page not found: {path}\n")),
    }
}

/// Decodes `%XX` escapes and `+` (a space in form-encoded queries, as Go's `FormValue` reads them,
/// which is what agnhost clients expect). Invalid escapes are kept literally.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn write_response(
    stream: &mut TcpStream,
    status: u16,
    body: &str,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nDate: {}\r\nServer: pacific-netexec\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        reason(status),
        http_date(SystemTime::now()),
        body.len()
    );
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes())
}

/// RFC 9110 §5.6.7 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::io::BufReader;
    use std::net::Ipv4Addr;

    fn free_tcp_port() -> u16 {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn free_udp_port() -> u16 {
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Binds `cfg` with fresh ports (`http_ports`/`udp_ports` give how many), retrying when a
    /// picked port was taken by a parallel test between picking and binding.
    fn bind_fresh(cfg: &NetexecConfig) -> (BoundServer, NetexecConfig) {
        for _ in 0..20 {
            let mut cfg = cfg.clone();
            cfg.http_ports = cfg.http_ports.iter().map(|_| free_tcp_port()).collect();
            cfg.udp_ports = cfg.udp_ports.iter().map(|_| free_udp_port()).collect();
            match bind(&cfg) {
                Ok(bound) => return (bound, cfg),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free ports");
    }

    /// Starts a server on fresh ports; returns (http port, udp port).
    fn start(message: Option<&str>) -> (u16, u16) {
        let cfg = NetexecConfig {
            http_ports: vec![0],
            udp_ports: vec![0],
            name: "wordpress-7d9f".into(),
            message: message.map(str::to_string),
            ..Default::default()
        };
        let (bound, cfg) = bind_fresh(&cfg);
        thread::spawn(move || bound.serve());
        (cfg.http_ports[0], cfg.udp_ports[0])
    }

    fn connect(port: u16) -> TcpStream {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// Reads one response: (status, headers lowercased, body).
    fn read_response(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>, String) {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        (status, headers, String::from_utf8(body).unwrap())
    }

    fn get(port: u16, path: &str) -> (u16, Vec<(String, String)>, String) {
        let mut s = connect(port);
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        read_response(&mut BufReader::new(s))
    }

    /// Starts a relay of a fresh TCP and a fresh UDP port to `targets` (plus one target that
    /// refuses, first in turn, to show the relay moves on); returns the two ports.
    fn start_relay(http: u16, udp: u16) -> (u16, u16) {
        let refusing = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_tcp_port());
        let to = |p| SocketAddrV4::new(Ipv4Addr::LOCALHOST, p);
        for _ in 0..20 {
            let (t, u) = (free_tcp_port(), free_udp_port());
            let cfg = NetexecConfig {
                name: "node".into(),
                forwards: vec![
                    format!("tcp:{t}={refusing},{}", to(http)).parse().unwrap(),
                    Forward {
                        udp: true,
                        port: u,
                        targets: vec![to(udp)],
                    },
                ],
                ..Default::default()
            };
            match bind(&cfg) {
                Ok(bound) => {
                    thread::spawn(move || bound.serve());
                    return (t, u);
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free ports");
    }

    #[test]
    fn a_forwarded_port_relays_to_its_targets_both_ways() {
        let (http, udp) = start(None);
        let (t, u) = start_relay(http, udp);
        // TCP, through the refusing target to the next, more than once.
        for _ in 0..3 {
            assert_eq!(get(t, "/hostname").2, "wordpress-7d9f");
        }
        // A half-close passes: the server sees the end of the request and still answers.
        let mut s = connect(t);
        write!(s, "GET /echo?msg=half HTTP/1.0\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (status, _, body) = read_response(&mut BufReader::new(s));
        assert_eq!((status, body.as_str()), (200, "half"));
        // UDP: the answer comes back from the forwarded port.
        let c = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 2048];
        for payload in [&b"one"[..], &[7u8; 1400][..]] {
            c.send_to(payload, (Ipv4Addr::LOCALHOST, u)).unwrap();
            let (n, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from.port()), (payload, u));
        }
    }

    #[test]
    fn forwards_parse_and_print_alike() {
        let f: Forward = "udp:31053=172.211.0.66:31053,172.211.0.67:31053"
            .parse()
            .unwrap();
        assert!(f.udp && f.port == 31053 && f.targets.len() == 2);
        assert_eq!(
            f.to_string(),
            "udp:31053=172.211.0.66:31053,172.211.0.67:31053"
        );
        for bad in [
            "tcp:80",
            "sctp:1=1.2.3.4:5",
            "tcp:0=1.2.3.4:5",
            "tcp:80=",
            "tcp:x=1.2.3.4:5",
        ] {
            assert!(bad.parse::<Forward>().is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_answer_as_documented() {
        let (port, _) = start(None);
        let (status, headers, body) = get(port, "/");
        assert_eq!((status, body.as_str()), (200, "wordpress-7d9f\n"));
        assert!(headers.contains(&("content-type".into(), "text/plain; charset=utf-8".into())));
        assert!(headers.contains(&("connection".into(), "close".into())));
        assert_eq!(get(port, "/hostname").2, "wordpress-7d9f");
        assert_eq!(get(port, "/healthz").2, "ok");
        assert_eq!(
            get(port, "/echo?msg=hello%20world%21+x&other=1").2,
            "hello world! x"
        );
        assert_eq!(get(port, "/echo?a=b&msg=caf%C3%A9").2, "café");
        assert_eq!(get(port, "/echo").2, "");
        assert_eq!(get(port, "http://pod/hostname").2, "wordpress-7d9f");

        // /clientip shows the peer address of the client's own socket.
        let mut s = connect(port);
        let local = s.local_addr().unwrap();
        write!(
            s,
            "GET /clientip HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let (status, _, body) = read_response(&mut BufReader::new(s));
        assert_eq!((status, body), (200, local.to_string()));
    }

    #[test]
    fn root_says_the_message_when_set() {
        let msg = "I just deployed a PodVM on the Tanzu Kubernetes Cluster!!";
        let (port, _) = start(Some(msg));
        assert_eq!(get(port, "/").2, format!("{msg}\n"));
        assert_eq!(get(port, "/hostname").2, "wordpress-7d9f");
    }

    #[test]
    fn keep_alive_serves_two_requests_on_one_connection() {
        let (port, _) = start(None);
        let s = connect(port);
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        w.write_all(b"GET /hostname HTTP/1.1\r\nHost: pod\r\n\r\n")
            .unwrap();
        let (status, headers, body) = read_response(&mut r);
        assert_eq!((status, body.as_str()), (200, "wordpress-7d9f"));
        assert!(!headers.iter().any(|(k, _)| k == "connection"));
        // A POST with a body, then a pipelined GET: the body must not be read as a request.
        w.write_all(b"POST /healthz HTTP/1.1\r\nHost: pod\r\nContent-Length: 5\r\n\r\nhelloGET /echo?msg=2 HTTP/1.1\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut r).2, "ok");
        assert_eq!(read_response(&mut r).2, "2");
        // HEAD: headers with the length of the body, no body.
        w.write_all(b"HEAD /hostname HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
        assert!(
            rest.contains("Content-Length: 14\r\n") && rest.ends_with("\r\n\r\n"),
            "{rest}"
        );
    }

    #[test]
    fn a_drain_answers_the_request_in_hand_and_ends_keep_alive() {
        let cfg = NetexecConfig {
            http_ports: vec![0],
            name: "web-0".into(),
            ..Default::default()
        };
        let (bound, cfg) = bind_fresh(&cfg);
        let drain = Arc::new(Drain::default());
        let serving = Arc::clone(&drain);
        thread::spawn(move || bound.serve_with(serving));
        let port = cfg.http_ports[0];
        // An idle keep-alive connection holds nothing; a half-sent request does.
        let idle = connect(port);
        let mut w = idle.try_clone().unwrap();
        let mut r = BufReader::new(idle);
        w.write_all(b"GET /hostname HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut r).2, "web-0");
        let busy = connect(port);
        let mut busy_w = busy.try_clone().unwrap();
        busy_w
            .write_all(b"GET /hostname HTTP/1.1\r\nHost: pod\r\n")
            .unwrap();
        // Once the server holds it (a loaded machine may accept it late).
        let held = Instant::now() + Duration::from_secs(10);
        while drain.in_hand.load(Ordering::SeqCst) == 0 && Instant::now() < held {
            thread::sleep(Duration::from_millis(5));
        }

        drain.start();
        let (done_tx, done) = std::sync::mpsc::channel();
        let waiting = Arc::clone(&drain);
        thread::spawn(move || {
            waiting.wait_quiet(DRAIN_QUIET, Duration::from_secs(30));
            let _ = done_tx.send(());
        });
        assert!(
            done.recv_timeout(Duration::from_millis(400)).is_err(),
            "the drain ended with a request in hand"
        );
        busy_w.write_all(b"\r\n").unwrap();
        let (status, headers, body) = read_response(&mut BufReader::new(busy));
        assert_eq!((status, body.as_str()), (200, "web-0"));
        assert!(headers.contains(&("connection".into(), "close".into())));
        done.recv_timeout(Duration::from_secs(10))
            .expect("the drain ends once the request is answered");
        // The idle connection's next request is answered too, and closes it.
        w.write_all(b"GET /hostname HTTP/1.1\r\n\r\n").unwrap();
        let (_, headers, _) = read_response(&mut r);
        assert!(headers.contains(&("connection".into(), "close".into())));
    }

    #[test]
    fn http10_closes_by_default() {
        let (port, _) = start(None);
        let mut s = connect(port);
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        assert!(
            all.starts_with("HTTP/1.1 200 OK\r\n") && all.ends_with("\r\n\r\nok"),
            "{all}"
        );
    }

    #[test]
    fn unknown_path_is_404() {
        let (port, _) = start(None);
        let (status, _, body) = get(port, "/nope");
        assert_eq!(status, 404);
        assert!(body.contains("/nope"));
    }

    #[test]
    fn malformed_request_line_is_400_and_closes() {
        let (port, _) = start(None);
        let mut s = connect(port);
        s.write_all(b"GARBAGE\r\n\r\n").unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
        assert!(all.contains("Connection: close\r\n"));
    }

    #[test]
    fn oversized_head_is_431() {
        let (port, _) = start(None);
        let mut s = connect(port);
        let big = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_BYTES)
        );
        // The server may close before reading everything; a write error is fine.
        let _ = s.write_all(big.as_bytes());
        let mut all = String::new();
        let _ = s.read_to_string(&mut all);
        assert!(all.starts_with("HTTP/1.1 431 "), "{all}");
    }

    #[test]
    fn udp_echoes_each_datagram() {
        let (_, port) = start(None);
        let c = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 2048];
        for payload in [&b"ping"[..], &[0u8; 1400][..], b""] {
            c.send_to(payload, (Ipv4Addr::LOCALHOST, port)).unwrap();
            let (n, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], payload);
            assert_eq!(from.port(), port);
        }
    }

    #[test]
    fn bind_fails_when_a_port_is_taken_without_reuseport() {
        // A plain std listener does not set SO_REUSEPORT, so our bind must fail and say which port.
        let taken = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let cfg = NetexecConfig {
            http_ports: vec![port],
            name: "x".into(),
            ..Default::default()
        };
        let err = bind(&cfg).unwrap_err();
        assert!(
            err.to_string().contains(&format!("tcp port {port}")),
            "{err}"
        );
    }

    #[test]
    fn two_servers_share_a_port() {
        let cfg = NetexecConfig {
            http_ports: vec![0],
            udp_ports: vec![0],
            name: "a".into(),
            ..Default::default()
        };
        let (a, cfg) = bind_fresh(&cfg);
        let b = bind(&NetexecConfig {
            name: "b".into(),
            ..cfg.clone()
        })
        .unwrap();
        assert_eq!(a.local_addrs().unwrap(), b.local_addrs().unwrap());
        assert_eq!(a.local_addrs().unwrap().0[0].port(), cfg.http_ports[0]);
    }

    #[test]
    fn parse_head_rules() {
        let ok = parse_head(b"GET /x HTTP/1.1\nHost: a\n\n").unwrap();
        assert_eq!(
            (
                ok.method.as_str(),
                ok.target.as_str(),
                ok.http11,
                ok.keep_alive
            ),
            ("GET", "/x", true, true)
        );
        let ka = parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(ka.keep_alive && !ka.http11);
        assert_eq!(
            parse_head(b"GET / HTTP/2.0\r\n\r\n"),
            Err(HeadError::Version)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::TransferEncoding)
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"),
            Err(HeadError::BodyTooLarge)
        );
        for bad in [
            &b"GET  / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET / HTTX/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(HeadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_end_and_decoding() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }
}
