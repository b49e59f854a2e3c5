//! netbench: Pacific against the Linux kernel, end to end, in network namespaces.
//!
//! The same client and server are wired twice: through a kernel router namespace with kube-proxy's
//! iptables rules ([`kernel`], the layout the baseline figures of KERNEL-REFERENCE.md come from)
//! and through a Pacific daemon on TAP ports ([`pacific`]). Each [`Scenario`] runs on one rig and
//! then the other (the order alternates between scenarios so neither rig always goes first), and
//! the [`report`] pairs the figures.
//!
//! The loads: TCP bulk with iperf3 ([`iperf`]), and loads of our own where iperf3 would measure
//! itself: UDP packets per second ([`udp`]), new connections per second and request/response
//! latency ([`tcp`]). Ours run inside the namespaces as hidden subcommands of this same binary
//! (`ip netns exec NS netbench udp-send ...`), each bounded in count and time, each printing one
//! line of JSON. Everything the run creates is named `pacnb<pid>...` and removed by guards when
//! the run ends, fails or is interrupted ([`cmd`]).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde::Serialize;

pub mod cmd;
pub mod iperf;
pub mod kernel;
pub mod link;
pub mod netns;
pub mod pacific;
pub mod report;
pub mod tcp;
pub mod udp;

use cmd::Background;
use report::{Outcome, Report, Run};

/// An error of the harness: what failed, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Where the loads go, in one rig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub client_ns: String,
    pub server_ns: String,
    /// The namespace of the host outside (the kernel rig's server namespace holds its address).
    pub outside_ns: String,
    pub server_ip: Ipv4Addr,
    pub cluster_ip: Ipv4Addr,
    pub outside_ip: Ipv4Addr,
}

impl Endpoints {
    /// The address the client aims at for `path`.
    pub fn target(&self, path: PathKind) -> Ipv4Addr {
        match path {
            PathKind::PodToPod => self.server_ip,
            PathKind::ClusterIp => self.cluster_ip,
            PathKind::Outside => self.outside_ip,
        }
    }
}

/// A topology the loads run through.
pub trait Rig {
    /// `kernel` or `Pacific`.
    fn label(&self) -> &'static str;
    fn endpoints(&self) -> &Endpoints;
    /// A running count of the packets the router sent towards the server.
    fn forwarded_packets(&self) -> Result<u64>;
    /// What [`Rig::forwarded_packets`] reads, for the notes.
    fn forwarded_counter(&self) -> String;
}

/// The sysctls both rigs get (KERNEL-REFERENCE.md): no TIME_WAIT buckets at either end, a wide
/// ephemeral port range at the client, so connection-rate figures do not measure port collisions.
pub fn tune_endpoint_sysctls(client_ns: &str, server_ns: &str) -> Result<()> {
    for ns in [client_ns, server_ns] {
        netns::sysctl(ns, "net.ipv4.tcp_max_tw_buckets", "0")?;
    }
    netns::sysctl(client_ns, "net.ipv4.ip_local_port_range", "1024 65000")
}

/// Which way a TCP bulk load goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PathKind {
    /// Client pod to server pod.
    PodToPod,
    /// Client pod to the ClusterIP in front of the server (DNAT).
    ClusterIp,
    /// Client pod to a host outside (SNAT).
    Outside,
}

impl PathKind {
    fn label(self) -> &'static str {
        match self {
            PathKind::PodToPod => "pod->pod",
            PathKind::ClusterIp => "pod->ClusterIP (DNAT)",
            PathKind::Outside => "pod->outside (SNAT)",
        }
    }
}

/// One load through one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    TcpBulk {
        path: PathKind,
        streams: u32,
    },
    /// 64-byte UDP payloads, client pod to server pod.
    Udp64,
    /// New TCP connections per second through the ClusterIP.
    ConnRate,
    /// Request/response round trips, client pod to server pod.
    Latency,
}

impl Scenario {
    pub fn label(self) -> String {
        match self {
            Scenario::TcpBulk { path, streams } => format!(
                "TCP {}, {streams} stream{}",
                path.label(),
                if streams == 1 { "" } else { "s" }
            ),
            Scenario::Udp64 => format!("UDP {} B pod->pod", UDP_PAYLOAD),
            Scenario::ConnRate => "TCP connections via ClusterIP".to_string(),
            Scenario::Latency => "TCP round trip pod->pod".to_string(),
        }
    }

    /// The scenarios of a run: all of them, or the short list of `--quick`.
    pub fn plan(quick: bool) -> Vec<Scenario> {
        let mut v = vec![Scenario::TcpBulk {
            path: PathKind::PodToPod,
            streams: 1,
        }];
        if !quick {
            for path in [PathKind::PodToPod, PathKind::ClusterIp, PathKind::Outside] {
                for streams in [1, 4] {
                    if !(path == PathKind::PodToPod && streams == 1) {
                        v.push(Scenario::TcpBulk { path, streams });
                    }
                }
            }
        }
        // Latency before the connection rate: the thousands of short connections the latter
        // leaves in the routers' connection tables (TIME_WAIT) must not meet the former's one.
        v.extend([Scenario::Udp64, Scenario::Latency, Scenario::ConnRate]);
        v
    }
}

/// UDP payload bytes (as `iperf3 -u -l 64` in the baseline): 106-byte Ethernet frames.
pub const UDP_PAYLOAD: usize = 64;
/// Threads of the connection-rate generator.
pub const CONN_THREADS: usize = 2;

/// Durations and bounds of each load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub tcp_seconds: u32,
    pub udp_seconds: f64,
    pub udp_count: u64,
    pub conn_seconds: f64,
    pub conn_max: u64,
    pub rr_seconds: f64,
    pub rr_count: u64,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                tcp_seconds: 2,
                udp_seconds: 2.0,
                udp_count: 10_000_000,
                conn_seconds: 2.0,
                conn_max: 500_000,
                rr_seconds: 2.0,
                rr_count: 50_000,
            }
        } else {
            Settings {
                tcp_seconds: 5,
                udp_seconds: 5.0,
                udp_count: 50_000_000,
                conn_seconds: 5.0,
                conn_max: 2_000_000,
                rr_seconds: 5.0,
                rr_count: 200_000,
            }
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "netbench",
    about = "Pacific against the kernel router: TCP bulk, UDP pps, connections/s and latency, in network namespaces (run as root)"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    /// Short loads and fewer scenarios: under a minute in all.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Run one rig only (default: both).
    #[arg(long, value_parser = ["kernel", "pacific"])]
    only: Option<String>,
    /// Pacific's worker threads (default: the daemon's own, a worker per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Pacific's `--busy-poll-us` (default: the daemon's own).
    #[arg(long, value_name = "MICROSECONDS")]
    busy_poll_us: Option<u64>,
}

/// The roles netbench plays inside a namespace (hidden: the harness starts them).
#[derive(Subcommand, Debug)]
enum Role {
    #[command(hide = true)]
    UdpSend {
        #[arg(long)]
        dst: SocketAddrV4,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = UDP_PAYLOAD)]
        payload: usize,
    },
    #[command(hide = true)]
    UdpSink {
        #[arg(long, default_value_t = udp::PORT)]
        port: u16,
        #[arg(long, default_value_t = 500)]
        quiet_ms: u64,
        #[arg(long)]
        seconds: f64,
    },
    #[command(hide = true)]
    TcpEcho {
        #[arg(long, default_value_t = tcp::ECHO_PORT)]
        port: u16,
        #[arg(long)]
        seconds: f64,
    },
    #[command(hide = true)]
    TcpConnect {
        #[arg(long)]
        dst: SocketAddrV4,
        #[arg(long, default_value_t = CONN_THREADS)]
        threads: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long)]
        max: u64,
    },
    #[command(hide = true)]
    TcpRr {
        #[arg(long)]
        dst: SocketAddrV4,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        seconds: f64,
    },
}

/// The entry point of the `netbench` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(role) => play(role),
        None => bench(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netbench: {e}");
            ExitCode::from(1)
        }
    }
}

fn secs(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| Error::new(format!("{s} is not a duration in seconds")))
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string(v).map_err(|e| Error::new(e.to_string()))?
    );
    Ok(())
}

fn ready() {
    use std::io::Write;
    println!("ready");
    let _ = std::io::stdout().flush();
}

/// Runs one hidden role and prints its JSON line.
fn play(role: Role) -> Result<()> {
    fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
        move |e| Error::new(format!("{what}: {e}"))
    }
    match role {
        Role::UdpSend {
            dst,
            count,
            seconds,
            payload,
        } => print_json(
            &udp::send(&udp::SendConfig {
                dst,
                payload,
                count,
                limit: secs(seconds)?,
            })
            .map_err(io("udp-send"))?,
        ),
        Role::UdpSink {
            port,
            quiet_ms,
            seconds,
        } => {
            let cfg = udp::SinkConfig {
                port,
                quiet: Duration::from_millis(quiet_ms),
                limit: secs(seconds)?,
            };
            print_json(&udp::sink(&cfg, ready).map_err(io("udp-sink"))?)
        }
        Role::TcpEcho { port, seconds } => {
            tcp::serve_echo(port, secs(seconds)?, ready).map_err(io("tcp-echo"))
        }
        Role::TcpConnect {
            dst,
            threads,
            seconds,
            max,
        } => print_json(&tcp::connect_rate(dst, threads, secs(seconds)?, max)),
        Role::TcpRr {
            dst,
            count,
            seconds,
        } => print_json(&tcp::round_trips(dst, count, secs(seconds)?).map_err(io("tcp-rr"))?),
    }
}

/// The servers of one rig, stopped when dropped.
struct Servers {
    _all: Vec<Background>,
}

impl Servers {
    /// iperf3 in the server namespace (and in the outside host's, when that is another one) and
    /// our echo server, each waited for until it listens. They outlive the run by at most
    /// `lifetime` (the echo server ends by itself; iperf3 is killed by the guard).
    fn start(exe: &Path, ep: &Endpoints, lifetime: Duration) -> Result<Servers> {
        let mut all = Vec::new();
        let mut iperf_namespaces = vec![ep.server_ns.as_str()];
        if ep.outside_ns != ep.server_ns {
            iperf_namespaces.push(ep.outside_ns.as_str());
        }
        for ns in iperf_namespaces {
            all.push(Background::spawn_quiet(&iperf::server_args(ns))?);
            wait_listening(ns, iperf::PORT, all.last_mut())?;
        }
        let exe = exe.to_string_lossy();
        let mut echo = Background::spawn(&cmd::in_ns(
            &ep.server_ns,
            &[
                exe.as_ref(),
                "tcp-echo",
                "--seconds",
                &lifetime.as_secs().to_string(),
            ],
        ))?;
        expect_ready(&mut echo)?;
        all.push(echo);
        Ok(Servers { _all: all })
    }
}

fn expect_ready(b: &mut Background) -> Result<()> {
    match b.read_line()? {
        l if l == "ready" => Ok(()),
        other => Err(Error::new(format!(
            "`{}` printed {other:?} instead of ready",
            b.line()
        ))),
    }
}

/// Waits until something listens on TCP `port` in `ns` (iperf3 prints nothing we can wait for
/// when its output is not a terminal).
fn wait_listening(ns: &str, port: u16, server: Option<&mut Background>) -> Result<()> {
    let mut server = server;
    for _ in 0..100 {
        cmd::check_interrupted()?;
        let out = cmd::run(&cmd::in_ns(
            ns,
            &["ss", "-Hltn", &format!("sport = :{port}")],
        ))?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        if let Some(s) = server.as_deref_mut() {
            if s.has_exited() {
                return Err(Error::new(format!("`{}` exited at start", s.line())));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Error::new(format!(
        "nothing listens on port {port} in {ns} after 5 s"
    )))
}

/// Runs one of our hidden roles in `ns` to completion and parses its JSON line.
fn role_in_ns<T: serde::de::DeserializeOwned>(
    exe: &Path,
    ns: &str,
    args: &[String],
    limit: Duration,
) -> Result<T> {
    let mut argv = vec![exe.to_string_lossy().into_owned()];
    argv.extend(args.iter().cloned());
    let full = cmd::in_ns(ns, &argv);
    let out = cmd::run_for(&full, None, limit)?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "`{}` failed: {}",
            cmd::display(&full),
            out.stderr.trim()
        )));
    }
    serde_json::from_str(out.stdout.trim())
        .map_err(|e| Error::new(format!("`{}` printed no report: {e}", cmd::display(&full))))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Runs `scenario` on `rig`.
fn measure(scenario: Scenario, rig: &dyn Rig, exe: &Path, s: &Settings) -> Result<Outcome> {
    let ep = rig.endpoints();
    match scenario {
        Scenario::TcpBulk { path, streams } => {
            iperf::run_client(&ep.client_ns, ep.target(path), s.tcp_seconds, streams)
                .map(Outcome::Tcp)
        }
        Scenario::Udp64 => {
            let quiet_ms = 500;
            let sink_args = strings(&[
                "udp-sink",
                "--port",
                &udp::PORT.to_string(),
                "--quiet-ms",
                &quiet_ms.to_string(),
                "--seconds",
                &(s.udp_seconds + 5.0).to_string(),
            ]);
            let mut argv = vec![exe.to_string_lossy().into_owned()];
            argv.extend(sink_args);
            let mut sink = Background::spawn(&cmd::in_ns(&ep.server_ns, &argv))?;
            expect_ready(&mut sink)?;
            let before = rig.forwarded_packets()?;
            let client_before = link::read(&ep.client_ns, "eth0")?;
            let dst = SocketAddrV4::new(ep.server_ip, udp::PORT).to_string();
            let send_args = strings(&[
                "udp-send",
                "--dst",
                &dst,
                "--count",
                &s.udp_count.to_string(),
                "--seconds",
                &s.udp_seconds.to_string(),
                "--payload",
                &UDP_PAYLOAD.to_string(),
            ]);
            let sent: udp::SendReport =
                role_in_ns(exe, &ep.client_ns, &send_args, secs(s.udp_seconds + 10.0)?)?;
            let got: udp::SinkReport =
                serde_json::from_str(sink.finish(secs(s.udp_seconds + 10.0)?)?.trim())
                    .map_err(|e| Error::new(format!("udp-sink printed no report: {e}")))?;
            let after = rig.forwarded_packets()?;
            let client_dropped = link::read(&ep.client_ns, "eth0")?
                .tx_dropped
                .saturating_sub(client_before.tx_dropped);
            Ok(Outcome::Udp(udp::UdpOutcome::new(
                UDP_PAYLOAD,
                &sent,
                after.saturating_sub(before),
                client_dropped,
                &got,
            )))
        }
        Scenario::ConnRate => {
            let dst = SocketAddrV4::new(ep.cluster_ip, tcp::ECHO_PORT).to_string();
            let args = strings(&[
                "tcp-connect",
                "--dst",
                &dst,
                "--threads",
                &CONN_THREADS.to_string(),
                "--seconds",
                &s.conn_seconds.to_string(),
                "--max",
                &s.conn_max.to_string(),
            ]);
            let r: tcp::ConnReport =
                role_in_ns(exe, &ep.client_ns, &args, secs(s.conn_seconds + 10.0)?)?;
            if r.connections == 0 {
                return Err(Error::new(format!(
                    "no connection to {dst} completed ({} failed)",
                    r.failures
                )));
            }
            Ok(Outcome::ConnRate(r))
        }
        Scenario::Latency => {
            let dst = SocketAddrV4::new(ep.server_ip, tcp::ECHO_PORT).to_string();
            let args = strings(&[
                "tcp-rr",
                "--dst",
                &dst,
                "--count",
                &s.rr_count.to_string(),
                "--seconds",
                &s.rr_seconds.to_string(),
            ]);
            role_in_ns(exe, &ep.client_ns, &args, secs(s.rr_seconds + 10.0)?).map(Outcome::Latency)
        }
    }
}

/// The `pacific` binary: `PACIFIC_BIN`, else the workspace's release build, else its debug build.
fn find_pacific_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PACIFIC_BIN") {
        return Ok(PathBuf::from(p));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    for profile in ["release", "debug"] {
        let p = workspace.join("target").join(profile).join("pacific");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::new(format!(
        "no pacific binary: set PACIFIC_BIN, or build it with `cargo build --release -p pacific-control --bin pacific` (looked in {}/target)",
        workspace.display()
    )))
}

fn require_tools() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::new(
            "netbench builds network namespaces and must run as root",
        ));
    }
    for (tool, probe) in [
        ("ip", "-V"),
        ("iptables-restore", "--version"),
        ("iperf3", "--version"),
        ("ss", "-V"),
    ] {
        cmd::run(&[tool, probe]).map_err(|e| Error::new(format!("{tool} is needed: {e}")))?;
    }
    Ok(())
}

fn notes(
    rigs: &[Box<dyn Rig>],
    s: &Settings,
    (workers, busy_poll_us): (usize, u64),
) -> Vec<String> {
    let mut n = vec![
        format!(
            "kernel rig: client {}/24 -- veth -- router namespace (ip_forward=1, kube-proxy-style iptables-nft rules: ClusterIP DNAT + mark + MASQUERADE --random-fully, FORWARD policy DROP with KUBE-FORWARD, DFW-equivalent conntrack rules, egress MASQUERADE to the outside) -- veth -- server {}/24 (also holding the outside address {}/32). veths: txqueuelen {}, qdisc noqueue, offloads at kernel defaults.",
            kernel::CLIENT_IP, kernel::SERVER_IP, kernel::OUTSIDE_IP, kernel::TXQUEUELEN
        ),
        format!("Pacific rig: one daemon (--workers {workers} --busy-poll-us {busy_poll_us}), pods on TAP ports in namespace {}: pod->pod is switched inside one segment (the kernel rig routes between two subnets); the ClusterIP is DNAT at the client's port with no source NAT (kube-proxy also masquerades); the outside host sits behind the T0 uplink and the lab's upstream-router namespace (one more kernel hop than the kernel rig) and sees the namespace's egress IP.", pacific::NAMESPACE),
        "sysctls on both rigs: net.ipv4.tcp_max_tw_buckets=0 in the client and server namespaces (and Pacific's outside host), net.ipv4.ip_local_port_range=\"1024 65000\" in the client.".to_string(),
        format!("TCP bulk: iperf3 -t {} -P k; the figure is the receiver's rate (end.sum_received).", s.tcp_seconds),
        format!(
            "UDP: {UDP_PAYLOAD}-byte payloads (106-byte frames), one flow, our generator (sendmmsg, batches of {}) for at most {} datagrams or {} s; sent = accepted by the sender's socket; received = counted by our sink (recvmmsg, {} MiB receive buffer, stops 0.5 s after the last datagram); rates are over the sender's active time; loss = 1 - received/sent; the JSON adds the client interface's tx drops (packets lost before the router).",
            udp::BATCH, s.udp_count, s.udp_seconds, udp::SINK_RCVBUF >> 20
        ),
        format!("connections: {CONN_THREADS} threads for {} s, each connection = connect to ClusterIP:{} + 16-byte request + its echo + close (our echo server, {} accept threads).", s.conn_seconds, tcp::ECHO_PORT, tcp::SERVER_THREADS),
        format!("latency: up to {} round trips (or {} s) over one TCP connection (TCP_NODELAY) to the server pod, 16 bytes each way; p50/p99 by nearest rank.", s.rr_count, s.rr_seconds),
        "ratio = Pacific / kernel: above 1 is better for throughput and rates, below 1 is better for latency and loss.".to_string(),
    ];
    for rig in rigs {
        n.push(format!(
            "UDP forwarded on the {} rig = {}.",
            rig.label(),
            rig.forwarded_counter()
        ));
    }
    n
}

fn host() -> report::Host {
    report::Host {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// The benchmark: build the rigs, run every scenario on each, print and save the report.
fn bench(cli: &Cli) -> Result<()> {
    cmd::install_interrupt_handler()?;
    require_tools()?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::new(format!("cannot find my own binary: {e}")))?;
    let settings = Settings::new(cli.quick);
    let scenarios = Scenario::plan(cli.quick);
    let pid = std::process::id();
    let want = |rig: &str| cli.only.is_none() || cli.only.as_deref() == Some(rig);
    let pacific_bin = if want("pacific") {
        Some(find_pacific_bin()?)
    } else {
        None
    };

    // Declared before the servers, so the servers are stopped first when the run unwinds.
    let mut rigs: Vec<Box<dyn Rig>> = Vec::new();
    let mut workers = (0, 0);
    if want("kernel") {
        eprintln!("netbench: building the kernel rig (pacnb{pid}-k-*)");
        rigs.push(Box::new(kernel::KernelRig::build(&format!(
            "pacnb{pid}-k"
        ))?));
    }
    if let Some(bin) = pacific_bin {
        eprintln!(
            "netbench: starting Pacific ({}) with prefix pacnb{pid}p",
            bin.display()
        );
        let rig = pacific::PacificRig::start(
            bin,
            &format!("pacnb{pid}p"),
            cli.workers,
            cli.busy_poll_us,
        )?;
        workers = (rig.workers, rig.busy_poll_us);
        rigs.push(Box::new(rig));
    }
    cmd::check_interrupted()?;
    let lifetime = Duration::from_secs(if cli.quick { 120 } else { 600 });
    let mut servers = Vec::new();
    for rig in &rigs {
        servers.push(Servers::start(&exe, rig.endpoints(), lifetime)?);
        // One exchange per path first, so neighbour resolution is not part of any figure.
        let ep = rig.endpoints();
        for dst in [ep.server_ip, ep.outside_ip] {
            let _ = cmd::run_for(
                &cmd::in_ns(
                    &ep.client_ns,
                    &["ping", "-c", "1", "-W", "1", &dst.to_string()],
                ),
                None,
                Duration::from_secs(3),
            );
        }
    }

    let mut runs = Vec::new();
    for (i, scenario) in scenarios.iter().enumerate() {
        let order: Vec<&Box<dyn Rig>> = if i % 2 == 0 {
            rigs.iter().collect()
        } else {
            rigs.iter().rev().collect()
        };
        for rig in order {
            if cmd::interrupted() {
                break;
            }
            eprintln!("netbench: {} on {}", scenario.label(), rig.label());
            let result = measure(*scenario, rig.as_ref(), &exe, &settings);
            if let Err(e) = &result {
                eprintln!("netbench:   failed: {e}");
            }
            runs.push(Run {
                scenario: scenario.label(),
                rig: rig.label().to_string(),
                error: result.as_ref().err().map(ToString::to_string),
                outcome: result.ok(),
            });
            // Let iperf3's server get ready for its next test.
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    let report = Report {
        quick: cli.quick,
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        host: host(),
        rows: report::rows(&runs),
        notes: notes(&rigs, &settings, workers),
        runs,
    };
    println!("{}", report::table(&report));
    for note in &report.notes {
        println!("- {note}");
    }
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| Error::new(e.to_string()))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))?;
    }
    drop(servers);
    drop(rigs);
    cmd::check_interrupted()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_plan_is_the_short_list() {
        let q = Scenario::plan(true);
        assert_eq!(
            q,
            [
                Scenario::TcpBulk {
                    path: PathKind::PodToPod,
                    streams: 1
                },
                Scenario::Udp64,
                Scenario::Latency,
                Scenario::ConnRate
            ]
        );
        let full = Scenario::plan(false);
        assert_eq!(full.len(), 9);
        assert_eq!(
            full.iter()
                .filter(|s| matches!(s, Scenario::TcpBulk { .. }))
                .count(),
            6
        );
        assert_eq!(full[0].label(), "TCP pod->pod, 1 stream");
        assert_eq!(
            Scenario::TcpBulk {
                path: PathKind::Outside,
                streams: 4
            }
            .label(),
            "TCP pod->outside (SNAT), 4 streams"
        );
    }

    #[test]
    fn cli_parses_the_run_and_the_hidden_roles() {
        let c = Cli::try_parse_from(["netbench", "--quick", "--json", "/tmp/x.json"]).unwrap();
        assert!(c.quick && c.role.is_none());
        let c = Cli::try_parse_from([
            "netbench",
            "udp-send",
            "--dst",
            "198.18.1.2:9000",
            "--count",
            "10",
            "--seconds",
            "1.5",
        ])
        .unwrap();
        assert!(matches!(
            c.role,
            Some(Role::UdpSend {
                count: 10,
                payload: 64,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["netbench", "--only", "router"]).is_err());
    }
}
