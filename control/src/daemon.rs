//! The daemon: owns the desired state, realizes it in network namespaces, compiles it into
//! tables for the dataplane, and serves the control socket.
//!
//! Threads: the dataplane workers (`pacific_dataplane::ports`), one accept thread for the control
//! socket plus one thread per connected client, one signal thread. Clients never touch packets:
//! a request takes the control lock, changes the state, realizes it, and publishes a new table
//! snapshot; the workers pick the snapshot up between packets (DESIGN.md, "Concurrency").
//!
//! Realization is the lab half of an apply: a pod is a network namespace `{prefix}-{ns}-{pod}`
//! whose `eth0` is a TAP the daemon created inside it; pods with container ports run Pacific's
//! test server (`pacific netexec`) in place of their image. The T0 uplink is a TAP inside the
//! upstream router's namespace, which also holds the outside hosts. Everything created is written
//! to the lab record so `pacific lab down` can remove it even after a SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde_json::{json, Value};

use pacific_dataplane::conntrack::{ConntrackConfig, Timeouts};
use pacific_dataplane::pipeline::Pipeline;
use pacific_dataplane::ports::Dataplane;
use pacific_dataplane::tables::{Ipv4Net, PortId, RuleCounters, Tables};
use pacific_dataplane::tap::{TapDevice, TapOptions};

use crate::compile::{self, PortOwner, RuleSlots, TransitSlots, UPLINK_PEER_MAC};
use crate::lab::netns::{self, PodInterface};
use crate::lab::outside::{self, OutsideHost as LabOutsideHost, UpstreamRouter};
use crate::lab::record::{self, LabRecord};
use crate::model::manifest::{parse_manifests_and_skipped, parse_object_refs_and_skipped};
use crate::model::objects::{selects, State, Uplink};
use crate::model::store::{ApplyError, ApplyOutcome, Store};
use crate::netexec;
use crate::rpc::{self, RpcError};
use crate::views;

/// How the daemon was asked to run.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub workers: usize,
    /// Prefix of every namespace the daemon creates (`pac` by default; tests use their own).
    pub prefix: String,
    /// Set when `pacific lab up` started this daemon: `lab down` then stops it.
    pub started_by_lab: bool,
    /// The binary to run as the test server (`pacific netexec`).
    pub exe: PathBuf,
    /// Connection-table size and timeouts.
    pub conntrack: ConntrackConfig,
    /// How long workers poll after a frame before they sleep (`Dataplane::start_with`).
    pub busy_poll: Duration,
}

impl DaemonConfig {
    pub fn state_dir(&self) -> PathBuf {
        self.socket
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    pub fn record_path(&self) -> PathBuf {
        record_path_for(&self.socket)
    }
}

/// Where the lab record of the daemon on `socket` lives (beside the socket).
pub fn record_path_for(socket: &Path) -> PathBuf {
    let dir = socket
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let stem = socket
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("pacific");
    dir.join(format!("{stem}.lab.json"))
}

/// The lock a daemon holds on `socket` while it lives (beside it, named after it).
pub fn lock_path_for(socket: &Path) -> PathBuf {
    let stem = socket
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("pacific");
    record_path_for(socket).with_file_name(format!("{stem}.lock"))
}

/// Takes the lock of the daemon on `socket` (creating its directory and file): `None` when
/// another process holds it, a daemon that runs or is starting there.
pub fn lock_socket(socket: &Path) -> Result<Option<std::fs::File>, String> {
    let path = lock_path_for(socket);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Where `lab up` logs the daemon it starts on `socket`: beside it, named after it as its lab
/// record is (`pacific.sock`: `pacific-daemon.log`), so two labs in one directory keep their
/// logs apart.
pub fn log_path_for(socket: &Path) -> PathBuf {
    let record = record_path_for(socket);
    let stem = socket
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("pacific");
    record.with_file_name(format!("{stem}-daemon.log"))
}

/// What has been realized of one pod.
struct RealizedPod {
    port: PortId,
    netns: String,
    /// The pod as it was built (its address, MAC and segment): a pod deleted from the state
    /// keeps its port from this while its server drains.
    pod: crate::model::objects::Pod,
    /// The test server's pid, when the pod has ports.
    server: Option<u32>,
    /// The test-server command line and MESSAGE it was started with (a change restarts it).
    server_args: Vec<String>,
    server_message: Option<String>,
}

/// The mutable control state, behind one lock.
struct Control {
    store: Store,
    pods: BTreeMap<(String, String), RealizedPod>,
    /// Cluster workloads (TKG replicas) running as processes in node namespaces.
    /// Keyed by (cluster namespace, replica); the server as it was started (its node's
    /// namespace, arguments and message), so a replica that moves or changes is restarted.
    workloads: BTreeMap<(String, String), (u32, WorkloadServer)>,
    /// Outside hosts as realized: namespace, test server, and the spec they were built from.
    outside: BTreeMap<String, (String, Option<u32>, crate::model::objects::OutsideHost)>,
    ports: BTreeMap<PortOwner, PortId>,
    next_port: PortId,
    slots: RuleSlots,
    transit: TransitSlots,
    generation: u64,
    record: LabRecord,
    /// The prefixes (the segments) the upstream router routes to T0 now.
    routed_pools: Vec<Ipv4Net>,
    /// The uplink transit the upstream router is configured for now (an `Uplink` object may
    /// move it).
    routed_uplink: Uplink,
    /// Ports removed by `realize` whose connections are still to be forgotten (once the tables
    /// without them are published).
    gone_ports: Vec<PortId>,
    /// When each route of the published tables appeared (their uptime in `get routes`).
    route_since: views::RouteSince,
    /// Why each pod of the state without a port has none: what building it last failed with
    /// (`get pods` shows it, and each apply tries again).
    pod_errors: BTreeMap<(String, String), String>,
}

pub struct Daemon {
    config: DaemonConfig,
    hostname: String,
    started: Instant,
    control: Mutex<Control>,
    tables: Arc<ArcSwap<Tables>>,
    pub pipeline: Arc<Pipeline>,
    dataplane: Mutex<Dataplane>,
    counters: Arc<RuleCounters>,
    upstream: UpstreamRouter,
    shutdown: AtomicBool,
    /// The control connections being served, by number.
    clients: Mutex<BTreeMap<u64, ClientSlot>>,
    next_client: AtomicU64,
    /// Held while the upstream router is brought in line with the tables, so that two requests
    /// finishing at once cannot interleave their `ip route` commands and leave the routes of
    /// the older tables (a deleted namespace's /32s kept, a new VIP's missing).
    upstream_sync: Mutex<Vec<Ipv4Net>>,
}

/// At most this many control connections at once. A new one beyond them closes the one idle
/// longest (between requests), so that connections that send nothing cannot lock every CLI
/// out until they time out; when every one is in a request, it is answered with an error.
const MAX_CLIENTS: usize = 256;

/// One control connection: its socket (to close it when it is the one idle longest) and
/// whether it is in a request, else since when it has been idle.
struct ClientSlot {
    stream: UnixStream,
    busy: bool,
    since: Instant,
}

/// Open files the daemon wants: a port holds a TAP fd per worker (two on two cores), so the
/// usual soft limit of 1024 ran out near 500 pods, and pods past it were listed Running with no
/// port (their `ip` and TAP opens failed with "Too many open files").
const OPEN_FILES_WANTED: u64 = 1 << 16;

/// The (soft, hard) open-file limits to ask for, given the present ones: the soft limit up to
/// [`OPEN_FILES_WANTED`], the hard one raised to it too if that is lower (root may), never
/// either lowered.
fn open_file_limits(soft: u64, hard: u64) -> (u64, u64) {
    let hard = hard.max(OPEN_FILES_WANTED);
    (soft.max(OPEN_FILES_WANTED).min(hard), hard)
}

/// Raises RLIMIT_NOFILE as [`open_file_limits`] says; where the hard limit may not be raised,
/// the soft one goes up to it. Returns the soft limit in force.
fn raise_open_file_limit() -> u64 {
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) } != 0 {
        return 0;
    }
    let (soft, hard) = open_file_limits(now.rlim_cur, now.rlim_max);
    for (cur, max) in [(soft, hard), (soft.min(now.rlim_max), now.rlim_max)] {
        let want = libc::rlimit {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return cur;
        }
    }
    now.rlim_cur
}
/// A client that sends nothing, or reads none of its answers, for this long is disconnected, so
/// idle or stuck clients cannot hold every slot.
const CLIENT_IDLE: Duration = Duration::from_secs(120);
/// How often the upstream router's uplink is looked at for a flap (its routes go with it).
const UPSTREAM_LINK_CHECK: Duration = Duration::from_secs(1);
/// How long a pod's test server gets to drain after SIGTERM (it answers what it holds, then
/// exits: `netexec::DRAIN_MAX`) before SIGKILL: a small terminationGracePeriodSeconds.
const SERVER_DRAIN_GRACE: Duration = Duration::from_millis(3500);
/// How long new test servers get, all together, to listen on their ports before their pods are
/// published anyway (and the apply warns).
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `ip -o link show` says the link is administratively up (`UP` among its flags).
fn link_is_up(shown: &str) -> bool {
    shown
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"))
}

/// The longest request line accepted (a manifest travels in one line).
const MAX_REQUEST: usize = 8 << 20;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// One line of the daemon's log, on stderr, after the time ([`pacific_dataplane::log::line`]:
/// never a panic when stderr is gone).
pub fn log(msg: impl AsRef<str>) {
    pacific_dataplane::log::line(format_args!("pacific: {}", msg.as_ref()));
}

impl Daemon {
    /// Starts the dataplane and the upstream router with the T0 uplink; does not serve yet.
    pub fn start(config: DaemonConfig) -> Result<Arc<Daemon>, String> {
        // Before anything is touched: the lab record, the upstream router and its uplink belong
        // to the daemon that answers there.
        refuse_if_answered(&config.socket)?;
        check_socket_path(&config.socket)?;
        // Two daemons started on one socket at once (two `lab up`s) both found no one answering;
        // the second then failed on the T0 uplink and, cleaning up, deleted the first one's
        // upstream router. The lock beside the socket is held as long as this process lives.
        // A daemon just killed holds it until its last thread is gone; one starting answers soon.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(lock) = lock_socket(&config.socket)? {
                std::mem::forget(lock);
                break;
            }
            refuse_if_answered(&config.socket)?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "another daemon holds {} and does not answer on {}: stop it, or give this \
                     one another --socket",
                    lock_path_for(&config.socket).display(),
                    config.socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        refuse_if_answered(&config.socket)?;
        let open_files = raise_open_file_limit();
        if open_files < OPEN_FILES_WANTED {
            log(format!(
                "open files limited to {open_files} (RLIMIT_NOFILE): a port takes one per \
                 worker, so a lab of more than about {} pods will not get them all",
                (open_files / 2).saturating_sub(64)
            ));
        }
        std::fs::create_dir_all(config.state_dir())
            .map_err(|e| format!("cannot create {}: {e}", config.state_dir().display()))?;
        match record::clear_stale(&config.record_path()) {
            Ok(None) => {}
            Ok(Some(summary)) => log(format!(
                "the last daemon on {} died without cleaning up; its leftovers: {summary}",
                config.socket.display()
            )),
            Err(e) => {
                return Err(format!(
                    "cannot remove what the last daemon on {} left behind ({e}); \
                     `pacific --socket {} lab down` removes it",
                    config.socket.display(),
                    config.socket.display()
                ))
            }
        }
        // The prefix names the lab's namespaces, whatever its socket: a second daemon of one
        // prefix (on another socket) found the first one's upstream router, failed at its uplink
        // (`TUNSETIFF uplink: Device or resource busy`) and recorded that namespace as its own,
        // for its `lab down` to delete under the first daemon. Refused before anything is made.
        // A TAP that is not persistent lives only while a daemon holds it open, so the uplink
        // tells a running daemon from the leftover of one that was SIGKILLed (reused as it is).
        let upstream_netns = format!("{}-upstream", config.prefix);
        if netns::netns_exists(&upstream_netns) && netns::link_exists(&upstream_netns, "uplink") {
            return Err(format!(
                "the namespace {upstream_netns} exists: another daemon runs with the prefix {} \
                 (on another socket than {}); give this one another --prefix, or stop that one \
                 (`pacific --socket ITS-SOCKET lab down`)",
                config.prefix,
                config.socket.display()
            ));
        }
        let hostname = hostname();
        let store = Store::new(&hostname);
        let counters = Arc::new(RuleCounters::with_slots(compile::RULE_SLOTS));
        let tables = Arc::new(ArcSwap::from_pointee(Tables::default()));
        let pipeline = Arc::new(Pipeline::with_config(Arc::clone(&tables), config.conntrack));
        let dataplane =
            Dataplane::start_with(pipeline.clone(), config.workers.max(1), config.busy_poll)
                .map_err(|e| format!("cannot start the dataplane workers: {e}"))?;
        let uplink = store.state().uplink.clone();
        let upstream = UpstreamRouter {
            netns: upstream_netns,
            uplink_ifname: "uplink".to_string(),
            uplink_addr: uplink.peer_addr,
            uplink_prefix_len: uplink.prefix_len,
            t0_addr: uplink.t0_addr,
            hosts_gateway: Ipv4Addr::new(198, 51, 100, 1),
            hosts_prefix_len: 24,
        };
        let mut record = LabRecord::load(&config.record_path())
            .ok()
            .flatten()
            .unwrap_or_default();
        record.prefix = config.prefix.clone();
        record.daemon_pid = Some(std::process::id());
        record.daemon_started_by_lab = config.started_by_lab;
        record.socket = config.socket.clone();
        let daemon = Arc::new(Daemon {
            hostname,
            started: Instant::now(),
            control: Mutex::new(Control {
                store,
                pods: BTreeMap::new(),
                workloads: BTreeMap::new(),
                outside: BTreeMap::new(),
                ports: BTreeMap::new(),
                next_port: 0,
                slots: RuleSlots::default(),
                transit: TransitSlots::default(),
                generation: 0,
                routed_pools: Vec::new(),
                routed_uplink: uplink.clone(),
                gone_ports: Vec::new(),
                route_since: views::RouteSince::new(),
                pod_errors: BTreeMap::new(),
                record,
            }),
            tables,
            pipeline,
            dataplane: Mutex::new(dataplane),
            counters,
            upstream,
            shutdown: AtomicBool::new(false),
            clients: Mutex::new(BTreeMap::new()),
            next_client: AtomicU64::new(0),
            upstream_sync: Mutex::new(Vec::new()),
            config,
        });
        daemon.save_record();
        // A daemon that cannot start takes down what it made (the upstream router's namespace,
        // the record): it used to exit with them left behind, for the next start to report as
        // the leftovers of a daemon that "died without cleaning up".
        if let Err(e) = daemon.create_uplink() {
            daemon.dataplane.lock().shutdown();
            let _ = netns::delete_netns(&daemon.upstream.netns);
            let _ = std::fs::remove_file(daemon.config.record_path());
            return Err(e);
        }
        let mut control = daemon.control.lock();
        daemon.publish(&mut control);
        drop(control);
        Ok(daemon)
    }

    fn save_record(&self) {
        let control = self.control.lock();
        if let Err(e) = control.record.save(&self.config.record_path()) {
            log(format!("cannot write the lab record: {e}"));
        }
    }

    /// The upstream router namespace and the T0 uplink TAP inside it.
    fn create_uplink(&self) -> Result<(), String> {
        let r = &self.upstream;
        {
            let mut control = self.control.lock();
            control.record.add_namespace(&r.netns);
        }
        self.save_record();
        outside::create_upstream_router(r).map_err(|e| e.to_string())?;
        let tap = TapDevice::create_in_netns(
            &netns::netns_path(&r.netns),
            &r.uplink_ifname,
            &self.tap_options(),
        )
        .map_err(|e| format!("cannot create the T0 uplink: {e}"))?;
        netns::ip_netns(
            &r.netns,
            &[
                "link",
                "set",
                "dev",
                &r.uplink_ifname,
                "address",
                &UPLINK_PEER_MAC.to_string(),
            ],
        )
        .map_err(|e| e.to_string())?;
        // No segment yet: `sync_upstream` routes them as namespaces come.
        let pools = Vec::new();
        outside::configure_uplink(r, &pools).map_err(|e| e.to_string())?;
        let mut control = self.control.lock();
        control.routed_pools = pools;
        let port = control.next_port;
        control.next_port += 1;
        self.dataplane
            .lock()
            .add_port(port, tap)
            .map_err(|e| format!("cannot attach the uplink: {e}"))?;
        control.ports.insert(PortOwner::Uplink, port);
        Ok(())
    }

    fn tap_options(&self) -> TapOptions {
        TapOptions {
            queues: self.config.workers.max(1),
            vnet_hdr: true,
            offloads: true,
        }
    }

    /// Compiles the current state and publishes the tables.
    fn publish(&self, control: &mut Control) {
        self.publish_state(control, None);
    }

    /// [`Daemon::publish`] of tables compiled from `state` when given, else from the store's.
    fn publish_state(&self, control: &mut Control, state: Option<&State>) {
        let Control {
            store,
            ports,
            generation,
            slots,
            transit,
            route_since,
            ..
        } = control;
        *generation += 1;
        let tables = compile::compile_with(
            state.unwrap_or_else(|| store.state()),
            ports,
            *generation,
            &self.counters,
            slots,
            transit,
        );
        *route_since = views::route_times(&tables, route_since, unix_now());
        tables.carry_lb_counts(&self.tables.load());
        self.tables.store(Arc::new(tables));
    }

    /// Serves the control socket until shutdown. Removes a stale socket file first; refuses to
    /// start when another daemon answers on it.
    pub fn serve(self: &Arc<Daemon>) -> Result<(), String> {
        let path = &self.config.socket;
        refuse_if_answered(path)?;
        check_socket_path(path)?;
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        log(format!(
            "control socket {}; {} worker(s)",
            path.display(),
            self.config.workers
        ));
        let keeper = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name("pacific-bgp".into())
            .spawn(move || keeper.keep_upstream_session());
        while !self.shutdown.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok(_) if self.shutdown.load(Ordering::Relaxed) => break,
                Ok((stream, _)) => {
                    let Some(id) = self.admit(&stream) else {
                        let mut s = stream;
                        let _ = writeln!(
                            s,
                            "{}",
                            rpc::error_response(&Value::Null, &RpcError::server_busy())
                        );
                        continue;
                    };
                    let daemon = Arc::clone(self);
                    let spawned = std::thread::Builder::new()
                        .name("pacific-client".into())
                        .spawn(move || {
                            daemon.client(stream, id);
                            daemon.clients.lock().remove(&id);
                        });
                    if spawned.is_err() {
                        self.clients.lock().remove(&id);
                    }
                }
                Err(e) => {
                    log(format!("accept: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let _ = std::fs::remove_file(path);
        Ok(())
    }

    /// Asks `serve` to return: sets the flag, then wakes the blocking accept with a connection
    /// of our own.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
        let _ = UnixStream::connect(&self.config.socket);
    }

    /// Gives `stream` a client slot: a free one, else the one of the connection idle longest,
    /// which is closed. None when every connection is in a request.
    fn admit(&self, stream: &UnixStream) -> Option<u64> {
        let copy = stream.try_clone().ok()?;
        let mut clients = self.clients.lock();
        if clients.len() >= MAX_CLIENTS {
            let idlest = clients
                .iter()
                .filter(|(_, c)| !c.busy)
                .min_by_key(|(_, c)| c.since)
                .map(|(id, _)| *id)?;
            if let Some(c) = clients.remove(&idlest) {
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
            }
        }
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        clients.insert(
            id,
            ClientSlot {
                stream: copy,
                busy: false,
                since: Instant::now(),
            },
        );
        Some(id)
    }

    /// One client of the control socket (see [`serve_client`]).
    fn client(&self, stream: UnixStream, id: u64) {
        // Idle since the end of its last request, or since it was accepted (not since its
        // thread first got to run, which may be after later connections' threads).
        let busy = |busy: bool| {
            if let Some(c) = self.clients.lock().get_mut(&id).filter(|c| c.busy != busy) {
                c.busy = busy;
                c.since = Instant::now();
            }
        };
        serve_client(
            stream,
            CLIENT_IDLE,
            &self.shutdown,
            busy,
            |method, params| self.dispatch(method, params),
        );
    }

    /// Routes one method call.
    pub fn dispatch(&self, method: &str, params: &Value) -> Result<Value, RpcError> {
        match method {
            "apply" => self.apply(params, false),
            "delete" => self.apply(params, true),
            "daemon.status" => {
                rpc::no_params(params)?;
                Ok(json!({
                "pid": std::process::id(),
                "prefix": self.config.prefix,
                "workers": self.config.workers,
                "busy_poll_us": self.config.busy_poll.as_micros() as u64,
                "uptime_seconds": self.started.elapsed().as_secs(),
                "generation": self.tables.load().generation,
                "connections": self.pipeline.conntrack.len(),
                "conntrack": {
                    "max": self.pipeline.conntrack.config().max_connections,
                    "timeouts_seconds": conntrack_timeouts(self.pipeline.conntrack.config()),
                    "created": self.pipeline.conntrack.stats.created.load(Ordering::Relaxed),
                    "expired": self.pipeline.conntrack.stats.expired.load(Ordering::Relaxed),
                    "evicted": self.pipeline.conntrack.stats.evicted.load(Ordering::Relaxed),
                    "refused": self.pipeline.conntrack.stats.refused.load(Ordering::Relaxed),
                    "removed": self.pipeline.conntrack.stats.removed.load(Ordering::Relaxed),
                },
                "fragments": {
                    "followed": self.pipeline.fragments.len(),
                    "reassembling": self.pipeline.reassembly.len(),
                    "reassembly_evicted": self.pipeline.reassembly.evicted(),
                    "held_before_first": self.pipeline.fragments.early_len(),
                    "held_dropped": self.pipeline.fragments.early_dropped(),
                },
                "session_affinity": {
                    "clients": self.pipeline.affinity.len(),
                    "max": self.pipeline.affinity.max(),
                    "unremembered_when_full": self.pipeline.affinity.full.load(Ordering::Relaxed),
                },
                "started_by_lab": self.config.started_by_lab,
                }))
            }
            "daemon.shutdown" => {
                rpc::no_params(params)?;
                self.request_shutdown();
                Ok(json!({"stopping": true}))
            }
            "lab.reset" => {
                rpc::no_params(params)?;
                self.reset();
                Ok(json!({"reset": true}))
            }
            "exec.resolve" => {
                rpc::only_params(params, &["target"])?;
                let target: String = rpc::param(params, "target")?;
                self.resolve(&target).map(|ns| json!({"netns": ns}))
            }
            _ => {
                let control = self.control.lock();
                let tables = self.tables.load_full();
                let ctx = views::ViewContext {
                    state: control.store.state(),
                    tables: &tables,
                    pipeline: &self.pipeline,
                    dataplane: &self.dataplane,
                    ports: &control.ports,
                    netns_of: &|ns: &str, pod: &str| {
                        control
                            .pods
                            .get(&(ns.to_string(), pod.to_string()))
                            .map(|p| p.netns.clone())
                    },
                    now: unix_now(),
                    upstream_netns: &self.upstream.netns,
                    route_since: &control.route_since,
                    pod_errors: &control.pod_errors,
                };
                views::dispatch(&ctx, method, params)
            }
        }
    }

    /// `apply` and `delete`: validate the whole request, change the state, realize, publish.
    fn apply(&self, params: &Value, delete: bool) -> Result<Value, RpcError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Params {
            manifest: String,
            namespace: Option<String>,
            cluster: Option<String>,
            /// `delete` only: pass over objects that are not there (kubectl's
            /// `--ignore-not-found`).
            ignore_not_found: Option<bool>,
        }
        let p: Params = rpc::params(params)?;
        if p.ignore_not_found.is_some() && !delete {
            return Err(RpcError::invalid_params(
                "ignore_not_found",
                "only delete takes ignore_not_found",
            ));
        }
        // Blamed on the request, not on the manifest's metadata.namespace it would fill in.
        for (member, value) in [("namespace", &p.namespace), ("cluster", &p.cluster)] {
            if value.as_deref() == Some("") {
                return Err(RpcError::invalid_params(member, "must not be empty"));
            }
        }
        let ignore_not_found = p.ignore_not_found.unwrap_or(false);
        let (namespace, cluster) = (p.namespace.as_deref(), p.cluster.as_deref());
        let now = unix_now();
        // As kubectl: a file of nothing (empty, comments, `---` alone) is an error, not a no-op.
        let nothing = || {
            let verb = if delete { "delete" } else { "apply" };
            RpcError::invalid_params("manifest", format!("no objects passed to {verb}"))
        };
        // Objects of kinds Pacific does not model (ConfigMap, Secret...) are reported, not
        // applied; a file of nothing else changes nothing.
        let (outcomes, skipped, before) = if delete {
            let (refs, skipped) = parse_object_refs_and_skipped(&p.manifest, namespace, cluster)
                .map_err(|e| RpcError::manifest(&e))?;
            if refs.is_empty() {
                if skipped.is_empty() {
                    return Err(nothing());
                }
                return Ok(json!({"results": skipped, "errors": [], "warnings": []}));
            }
            let mut control = self.control.lock();
            let before = control.store.state().generation;
            let deleted = control.store.delete_refs_with(refs, now, ignore_not_found);
            (deleted, skipped, before)
        } else {
            let (manifests, skipped) = parse_manifests_and_skipped(&p.manifest, namespace, cluster)
                .map_err(|e| RpcError::manifest(&e))?;
            if manifests.is_empty() {
                if skipped.is_empty() {
                    return Err(nothing());
                }
                return Ok(json!({"results": skipped, "errors": [], "warnings": []}));
            }
            let mut control = self.control.lock();
            let before = control.store.state().generation;
            (control.store.apply(manifests, now), skipped, before)
        };
        let outcomes = outcomes.map_err(|e: ApplyError| RpcError::apply(&e))?;
        let mut control = self.control.lock();
        // Pods that could not be built before this request and that it does not name (nor
        // their deployment): their problem stands, and is a warning here, not this apply's
        // error (kubectl apply fails only for what it applied; `get pods` shows them).
        let standing: BTreeSet<(String, String)> = control
            .pod_errors
            .keys()
            .filter(|(ns, name)| {
                let owner = control
                    .store
                    .state()
                    .pods
                    .get(&(ns.clone(), name.clone()))
                    .and_then(|p| p.owner.clone());
                !outcomes.iter().any(|o| {
                    o.namespace.as_deref() == Some(ns.as_str())
                        && match o.kind.as_str() {
                            "Pod" => o.name == *name,
                            "Deployment" => owner.as_deref() == Some(o.name.as_str()),
                            _ => false,
                        }
                })
            })
            .cloned()
            .collect();
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        let ports_before = control.ports.clone();
        warnings.extend(memberless_guest_load_balancers(
            control.store.state(),
            &outcomes,
        ));
        for (pod, problem) in self.realize(&mut control) {
            if pod.is_some_and(|key| standing.contains(&key)) {
                warnings.push(problem);
            } else {
                errors.push(problem);
            }
        }
        // Tables of the same state and ports are the tables in force: an apply that changed
        // nothing keeps their generation (kubectl's metadata.generation does not move on an
        // unchanged apply either), and connections are not looked at again for it.
        if control.store.state().generation != before || control.ports != ports_before {
            self.publish(&mut control);
        }
        let gone = std::mem::take(&mut control.gone_ports);
        drop(control);
        self.forget_connections_of(&gone);
        self.save_record();
        self.sync_upstream();
        let mut results: Vec<String> = outcomes.iter().map(|o| o.to_string()).collect();
        results.extend(skipped);
        Ok(json!({"results": results, "errors": errors, "warnings": warnings}))
    }

    /// Brings namespaces, TAPs and test servers in line with the state. Returns the problems met
    /// (the state stays applied; a pod whose namespace could not be built is left out of the
    /// dataplane and reported, with its key).
    fn realize(&self, control: &mut Control) -> Vec<(Option<(String, String)>, String)> {
        let mut problems = Vec::new();
        let mut pod_problems = Vec::new();
        let state = control.store.state().clone();
        // Pods that went away or changed address. A pod that went away while pods that replace
        // it (a rollout's, with addresses of their own) come serves until they do, as a rolling
        // update's old pods do: it goes once they listen. One whose address changed, or whose
        // address a new pod takes, goes first.
        let taken: BTreeSet<std::net::Ipv4Addr> = state
            .pods
            .iter()
            .filter(|(key, p)| control.pods.get(*key).is_none_or(|r| r.pod.ip != p.ip))
            .map(|(_, p)| p.ip)
            .collect();
        type Retiring = Vec<((String, String), bool)>;
        let (first, later): (Retiring, Retiring) = control
            .pods
            .iter()
            .filter(|(key, r)| {
                state
                    .pods
                    .get(*key)
                    .is_none_or(|p| p.ip != r.pod.ip || p.mac != r.pod.mac)
            })
            .map(|(key, r)| {
                (
                    key.clone(),
                    state.pods.contains_key(key) || taken.contains(&r.pod.ip),
                )
            })
            .partition(|(_, now)| *now);
        let first: Vec<(String, String)> = first.into_iter().map(|(k, _)| k).collect();
        let later: Vec<(String, String)> = later.into_iter().map(|(k, _)| k).collect();
        self.retire_pods(control, &state, first, &mut problems);
        // New pods.
        for (key, pod) in &state.pods {
            if control.pods.contains_key(key) {
                continue;
            }
            match self.realize_pod(control, &state, key) {
                Ok(r) => {
                    control
                        .ports
                        .insert(PortOwner::Pod(key.0.clone(), key.1.clone()), r.port);
                    control.pods.insert(key.clone(), r);
                    control.pod_errors.remove(key);
                }
                Err(e) => {
                    pod_problems.push((
                        key.clone(),
                        format!("pod {}/{}: {e}", pod.namespace, pod.name),
                    ));
                    control.pod_errors.insert(key.clone(), e);
                }
            }
        }
        control
            .pod_errors
            .retain(|key, _| state.pods.contains_key(key));
        // Test servers follow the pods' ports and MESSAGE.
        let mut starting = Vec::new();
        for (key, pod) in &state.pods {
            let args = server_args(&state, pod);
            let message = message_of(&pod.containers);
            let Some(r) = control.pods.get_mut(key) else {
                continue;
            };
            if r.server_args == args
                && r.server_message == message
                && r.server.is_none_or(netns::pid_alive)
            {
                continue;
            }
            if let Some(pid) = r.server.take() {
                netns::terminate_pids(&[pid], SERVER_DRAIN_GRACE);
            }
            r.server_args = args.clone();
            r.server_message = message.clone();
            if !args.is_empty() {
                match self.spawn_server(&r.netns, &pod.name, &args, message) {
                    Ok(pid) => {
                        r.server = Some(pid);
                        control.record.add_pid(pid);
                        starting.push((pid, server_ports(pod), key.clone()));
                    }
                    Err(e) => problems.push(format!(
                        "test server of {}/{}: {e}",
                        pod.namespace, pod.name
                    )),
                }
            }
        }
        // Ready before they are published: the tables sent a new pod's first connections to a
        // server that did not listen yet, and they were refused.
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        for (pid, (tcp, udp), (ns, name)) in starting {
            if !netns::wait_listening(pid, &tcp, &udp, deadline) && netns::pid_alive(pid) {
                problems.push(format!(
                    "test server of {ns}/{name}: not listening after {} s",
                    SERVER_START_TIMEOUT.as_secs()
                ));
            }
        }
        self.retire_pods(control, &state, later, &mut problems);
        self.realize_workloads(control, &state, &mut problems);
        self.realize_outside(control, &state, &mut problems);
        let problems: Vec<(Option<(String, String)>, String)> = pod_problems
            .into_iter()
            .map(|(key, p)| (Some(key), p))
            .chain(problems.into_iter().map(|p| (None, p)))
            .collect();
        for (_, p) in &problems {
            log(p);
        }
        problems
    }

    /// Takes pods that went away or changed address out of the dataplane: out of the tables
    /// first, then their servers drain, then their ports and namespaces go.
    fn retire_pods(
        &self,
        control: &mut Control,
        state: &State,
        stale: Vec<(String, String)>,
        problems: &mut Vec<String>,
    ) {
        if !stale.is_empty() {
            // Tables without them as endpoints first, then their servers drain, then their
            // ports and namespaces go. Published after, a scale-down's new connections were sent,
            // for that while, to a pod already gone (curl timed out, or waited for its SYN to be
            // sent again). Gone with their pods at once, the requests in flight to them were
            // lost with their interfaces, and their clients waited in vain. A deleted pod keeps
            // its port (its address, no endpoint) while it drains, as a terminating pod does; one
            // whose address changed loses it at once, the new address wanting the key.
            let mut draining = state.clone();
            for key in &stale {
                let owner = PortOwner::Pod(key.0.clone(), key.1.clone());
                match control.pods.get(key) {
                    Some(r) if !state.pods.contains_key(key) => {
                        draining.pods.insert(key.clone(), r.pod.clone());
                    }
                    _ => {
                        control.ports.remove(&owner);
                    }
                }
            }
            self.publish_state(control, Some(&draining));
            let servers: Vec<u32> = stale
                .iter()
                .filter_map(|key| control.pods.get_mut(key)?.server.take())
                .collect();
            netns::terminate_pids(&servers, SERVER_DRAIN_GRACE);
            for key in &stale {
                control
                    .ports
                    .remove(&PortOwner::Pod(key.0.clone(), key.1.clone()));
            }
            self.publish(control);
        }
        for key in stale {
            if let Some(r) = control.pods.remove(&key) {
                self.dataplane.lock().remove_port(r.port);
                control.gone_ports.push(r.port);
                control
                    .ports
                    .remove(&PortOwner::Pod(key.0.clone(), key.1.clone()));
                if let Err(e) = netns::delete_netns(&r.netns) {
                    problems.push(e.to_string());
                }
                control.record.namespaces.retain(|n| *n != r.netns);
                // Workloads that ran on this node went with its namespace.
                control
                    .workloads
                    .retain(|_, (pid, _)| netns::pid_alive(*pid));
            }
        }
    }

    /// A name for a new namespace standing for `key`: `base` unless it is too long or another
    /// pod, an outside host or the upstream router has it, else a shortened, hashed variant.
    fn free_netns_name(&self, control: &Control, base: String, key: &str) -> String {
        let taken = |n: &str| {
            n == self.upstream.netns
                || control.pods.values().any(|r| r.netns == n)
                || control.outside.values().any(|(ns, _, _)| ns == n)
        };
        (0..)
            .map(|attempt| fit_netns_name(base.clone(), key, attempt))
            .find(|n| !taken(n))
            .unwrap_or(base)
    }

    fn realize_pod(
        &self,
        control: &mut Control,
        state: &State,
        key: &(String, String),
    ) -> Result<RealizedPod, String> {
        let pod = state.pods.get(key).ok_or("pod vanished")?;
        let segment = state
            .segments()
            .into_iter()
            .find(|s| s.segment.name == pod.segment)
            .map(|s| s.segment.clone())
            .ok_or_else(|| format!("segment {} not found", pod.segment))?;
        let base = format!("{}-{}-{}", self.config.prefix, pod.namespace, pod.name);
        let netns_name =
            self.free_netns_name(control, base, &format!("{}/{}", pod.namespace, pod.name));
        control.record.add_namespace(&netns_name);
        if let Err(e) = control.record.save(&self.config.record_path()) {
            log(format!("cannot write the lab record: {e}"));
        }
        let created = !netns::netns_exists(&netns_name);
        let built = self.build_pod_port(control, pod, &segment, &netns_name);
        if built.is_err() && created {
            // A namespace this attempt made goes with it: the next apply tries afresh, and a
            // pod that is deleted before it ever got its port leaves none behind.
            if netns::delete_netns(&netns_name).is_ok() {
                control.record.namespaces.retain(|n| *n != netns_name);
            }
        }
        let port = built?;
        Ok(RealizedPod {
            port,
            netns: netns_name,
            pod: pod.clone(),
            server: None,
            server_args: Vec::new(),
            server_message: None,
        })
    }

    /// The pod's namespace, its TAP and interface, and its port in the dataplane.
    fn build_pod_port(
        &self,
        control: &mut Control,
        pod: &crate::model::objects::Pod,
        segment: &crate::model::objects::Segment,
        netns_name: &str,
    ) -> Result<PortId, String> {
        netns::add_netns(netns_name).map_err(|e| e.to_string())?;
        let tap =
            TapDevice::create_in_netns(&netns::netns_path(netns_name), "eth0", &self.tap_options())
                .map_err(|e| e.to_string())?;
        netns::configure_pod_interface(
            netns_name,
            &PodInterface {
                ifname: "eth0".to_string(),
                mac: pod.mac,
                addr: pod.ip,
                prefix_len: segment.subnet.prefix_len(),
                gateway: segment.gateway,
                mtu: 1500,
            },
        )
        .map_err(|e| e.to_string())?;
        let port = control.next_port;
        control.next_port += 1;
        self.dataplane
            .lock()
            .add_port(port, tap)
            .map_err(|e| e.to_string())?;
        Ok(port)
    }

    fn spawn_server(
        &self,
        netns_name: &str,
        name: &str,
        args: &[String],
        message: Option<String>,
    ) -> Result<u32, String> {
        let exe = self.config.exe.to_string_lossy().to_string();
        let mut argv = vec![
            exe,
            "netexec".to_string(),
            "--name".to_string(),
            name.to_string(),
        ];
        argv.extend(args.iter().cloned());
        let env: Vec<(String, String)> = message
            .map(|m| ("MESSAGE".to_string(), m))
            .into_iter()
            .collect();
        let log_path = self
            .config
            .state_dir()
            .join(format!("{}.netexec.log", self.config.prefix));
        netns::spawn_in_netns(netns_name, &argv, &env, &log_path).map_err(|e| e.to_string())
    }

    /// TKG replicas: one test server per replica in its node's namespace, listening on its
    /// container ports and on the nodePorts of the services that select it (SO_REUSEPORT lets
    /// replicas on one node share a nodePort, as kube-proxy spreads them).
    fn realize_workloads(&self, control: &mut Control, state: &State, problems: &mut Vec<String>) {
        let mut wanted: BTreeMap<(String, String), WorkloadServer> = state
            .cluster_workloads
            .iter()
            .filter_map(|(key, w)| {
                let node = control.pods.get(&(w.namespace.clone(), w.node.clone()))?;
                let server = WorkloadServer {
                    netns: node.netns.clone(),
                    args: workload_args(state, w),
                    message: message_of(&w.containers),
                };
                Some((key.clone(), server))
            })
            .collect();
        // The nodes without a replica relay their nodePorts (named after the node, which is
        // also what they answer /hostname with, and `/` so no replica name is taken).
        for ((namespace, node), forwards) in nodeport_relays(state) {
            let Some(realized) = control.pods.get(&(namespace.clone(), node.clone())) else {
                continue;
            };
            let args = forwards
                .iter()
                .flat_map(|f| ["--forward".to_string(), f.to_string()])
                .collect();
            let server = WorkloadServer {
                netns: realized.netns.clone(),
                args,
                message: None,
            };
            wanted.insert((namespace, format!("{node}/")), server);
        }
        // Servers that went away, changed or died. Their replacements (a rollout's replicas,
        // new names on the same nodePorts, or the same replica with new ports or MESSAGE) start
        // first and listen beside them (SO_REUSEPORT), as a rolling update's new pods come up
        // before the old ones go; only then do the old ones drain, so no connection finds a
        // node with nothing listening.
        let gone: Vec<(String, String)> = control
            .workloads
            .iter()
            .filter(|(k, (pid, running))| {
                wanted.get(*k).is_none_or(|w| w != running) || !netns::pid_alive(*pid)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let ending: Vec<u32> = gone
            .iter()
            .filter_map(|key| control.workloads.remove(key))
            .map(|(pid, _)| pid)
            .collect();
        let mut starting = Vec::new();
        for (key, w) in wanted {
            if control.workloads.contains_key(&key) || w.args.is_empty() {
                continue;
            }
            let name = key.1.trim_end_matches('/');
            match self.spawn_server(&w.netns, name, &w.args, w.message.clone()) {
                Ok(pid) => {
                    control.record.add_pid(pid);
                    starting.push((pid, workload_ports(&w.args), key.1.clone()));
                    control.workloads.insert(key, (pid, w));
                }
                Err(e) => problems.push(format!("replica {}: {e}", key.1)),
            }
        }
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        for (pid, (tcp, udp), name) in starting {
            if !netns::wait_listening(pid, &tcp, &udp, deadline) && netns::pid_alive(pid) {
                problems.push(format!(
                    "replica {name}: not listening after {} s",
                    SERVER_START_TIMEOUT.as_secs()
                ));
            }
        }
        // All at once: each drains (see `netexec`) for up to SERVER_DRAIN_GRACE.
        netns::terminate_pids(&ending, SERVER_DRAIN_GRACE);
    }

    fn realize_outside(&self, control: &mut Control, state: &State, problems: &mut Vec<String>) {
        // Hosts deleted, and hosts whose address or ports changed (rebuilt below).
        let same = |a: &crate::model::objects::OutsideHost,
                    b: &crate::model::objects::OutsideHost| {
            (a.addr, a.prefix_len, &a.http_ports, &a.udp_ports)
                == (b.addr, b.prefix_len, &b.http_ports, &b.udp_ports)
        };
        let gone: Vec<String> = control
            .outside
            .iter()
            .filter(|(k, (_, _, built))| {
                !state.outside_hosts.get(*k).is_some_and(|h| same(h, built))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for name in gone {
            if let Some((ns, _, _)) = control.outside.remove(&name) {
                // The pair goes now: with the namespace alone, the kernel removes the router's
                // end later, and a host rebuilt at once would find it half there.
                let veth = outside::host_veth_name(&name);
                let _ = netns::ip_netns(&self.upstream.netns, &["link", "del", "dev", &veth]);
                if let Err(e) = netns::delete_netns(&ns) {
                    problems.push(e.to_string());
                }
                control.record.namespaces.retain(|n| *n != ns);
            }
        }
        for (name, host) in &state.outside_hosts {
            if control.outside.contains_key(name) {
                continue;
            }
            let ns = self.free_netns_name(
                control,
                format!("{}-ext-{}", self.config.prefix, name),
                &format!("ext/{name}"),
            );
            control.record.add_namespace(&ns);
            let _ = control.record.save(&self.config.record_path());
            let h = LabOutsideHost {
                name: name.clone(),
                addr: host.addr,
                prefix_len: host.prefix_len,
                http_ports: host.http_ports.clone(),
            };
            // Outside hosts may sit on any subnet: the upstream router takes that subnet's first
            // address on its host bridge and is the host's default gateway there.
            let router = match self.host_gateway(host.addr, host.prefix_len) {
                Ok(router) => router,
                Err(e) => {
                    problems.push(format!("outside host {name}: {e}"));
                    continue;
                }
            };
            if let Err(e) = outside::add_outside_host(&router, &ns, &h) {
                problems.push(format!("outside host {name}: {e}"));
                continue;
            }
            let mut args = Vec::new();
            for p in &host.http_ports {
                args.extend(["--http".to_string(), p.to_string()]);
            }
            for p in &host.udp_ports {
                args.extend(["--udp".to_string(), p.to_string()]);
            }
            let mut pid = None;
            if !args.is_empty() {
                match self.spawn_server(&ns, name, &args, None) {
                    Ok(p) => {
                        control.record.add_pid(p);
                        pid = Some(p);
                    }
                    Err(e) => problems.push(format!("test server of ext/{name}: {e}")),
                }
            }
            control
                .outside
                .insert(name.clone(), (ns, pid, host.clone()));
        }
        self.prune_host_gateways(state);
    }

    /// Removes from the host bridge the gateway addresses no outside host uses any more (an
    /// `Uplink` may want that subnet next).
    fn prune_host_gateways(&self, state: &State) {
        let wanted: BTreeSet<String> = state
            .outside_hosts
            .values()
            .filter_map(|h| {
                let subnet = Ipv4Net::new(h.addr, h.prefix_len)?;
                Some(format!("{}/{}", subnet.nth(1)?, h.prefix_len))
            })
            .collect();
        let Ok(out) = netns::ip_netns(
            &self.upstream.netns,
            &["-4", "-o", "addr", "show", "dev", outside::HOSTS_BRIDGE],
        ) else {
            return;
        };
        for line in out.lines() {
            let mut words = line.split_whitespace();
            let Some(cidr) = words.by_ref().skip_while(|w| *w != "inet").nth(1) else {
                continue;
            };
            if !wanted.contains(cidr) {
                let _ = netns::ip_netns(
                    &self.upstream.netns,
                    &["addr", "del", cidr, "dev", outside::HOSTS_BRIDGE],
                );
            }
        }
    }

    /// The upstream router as seen from an outside host at `addr/len`: its gateway on that
    /// subnet (the first usable address), added to the host bridge when new.
    fn host_gateway(&self, addr: Ipv4Addr, len: u8) -> Result<UpstreamRouter, String> {
        let subnet = Ipv4Net::new(addr, len).ok_or_else(|| format!("bad prefix length {len}"))?;
        let gateway = subnet
            .nth(1)
            .filter(|_| len < 31)
            .ok_or_else(|| format!("{subnet} has no room for a gateway"))?;
        if gateway == addr {
            return Err(format!(
                "{addr} is the gateway address of {subnet}; pick another"
            ));
        }
        let cidr = format!("{gateway}/{len}");
        netns::ip_netns(
            &self.upstream.netns,
            &["addr", "replace", &cidr, "dev", outside::HOSTS_BRIDGE],
        )
        .map_err(|e| e.to_string())?;
        Ok(UpstreamRouter {
            hosts_gateway: gateway,
            hosts_prefix_len: len,
            ..self.upstream.clone()
        })
    }

    /// The upstream router routes to T0 what T0 routes to its T1s: the namespaces' segments
    /// (static routes, so traffic from outside reaches the DFW), and learns every VIP and egress
    /// IP (the seed's eBGP /32s). Not the whole pools: an address of a pool that no segment, VIP
    /// or egress IP holds would bounce between the router and T0's default route until its TTL
    /// ran out.
    fn sync_upstream(&self) {
        // The tables are read under the lock: whichever request syncs last sees the newest.
        let mut synced = self.upstream_sync.lock();
        let (routes, segments) = self.upstream_routes();
        synced.clear();
        let wanted: Vec<Ipv4Net> = routes.iter().chain(&segments).copied().collect();
        let (pools, stale, uplink, moved) = {
            let mut control = self.control.lock();
            let state = control.store.state();
            let pools = segments;
            let uplink = state.uplink.clone();
            let stale: Vec<Ipv4Net> = control
                .routed_pools
                .iter()
                .filter(|p| !pools.contains(p))
                .copied()
                .collect();
            let moved = control.routed_uplink != uplink;
            control.routed_pools = pools.clone();
            control.routed_uplink = uplink.clone();
            (pools, stale, uplink, moved)
        };
        let upstream = UpstreamRouter {
            uplink_addr: uplink.peer_addr,
            uplink_prefix_len: uplink.prefix_len,
            t0_addr: uplink.t0_addr,
            ..self.upstream.clone()
        };
        // A moved uplink: the router's old transit address goes (and with it every route via
        // the old T0 address); the pools and /32s are routed again below via the new one.
        if moved {
            let _ = netns::ip_netns(
                &upstream.netns,
                &["addr", "flush", "dev", &upstream.uplink_ifname],
            );
        }
        // Pools no longer in force are no longer routed to T0.
        for pool in stale {
            let _ = netns::ip_netns(&upstream.netns, &["route", "del", &pool.to_string()]);
        }
        let mut ok = true;
        if let Err(e) = outside::configure_uplink(&upstream, &pools) {
            log(format!(
                "cannot route the pools on the upstream router: {e}"
            ));
            ok = false;
        }
        if let Err(e) = outside::sync_bgp_routes(&upstream, &routes) {
            log(format!("cannot update the upstream router's routes: {e}"));
            ok = false;
        }
        // A failed sync is not retried by the flap check (it would fail, and log, each second).
        if ok {
            *synced = wanted;
        }
    }

    /// What the upstream router routes to T0 by the tables in force: the /32s it learns (VIPs
    /// and egress IPs) and the namespaces' segments, each sorted.
    fn upstream_routes(&self) -> (Vec<Ipv4Net>, Vec<Ipv4Net>) {
        use pacific_dataplane::tables::RouteOrigin;
        let tables = self.tables.load();
        let t0_routes = tables
            .gateways
            .first()
            .map(|t0| t0.routes.routes())
            .unwrap_or_default();
        let of = |keep: fn(RouteOrigin) -> bool| {
            let mut v: Vec<Ipv4Net> = t0_routes
                .iter()
                .filter(|r| keep(r.origin))
                .map(|r| r.prefix)
                .collect();
            v.sort();
            v.dedup();
            v
        };
        (
            of(|o| matches!(o, RouteOrigin::LbVip | RouteOrigin::Nat)),
            of(|o| matches!(o, RouteOrigin::T1Connected)),
        )
    }

    /// Whether a route the last sync gave the upstream router via the uplink is gone (as after
    /// the link went down: Linux takes its routes with it). Under the sync's lock, so a change
    /// being synced is not taken for a loss. False when that cannot be told.
    fn upstream_routes_missing(&self) -> bool {
        let synced = self.upstream_sync.lock();
        if synced.is_empty() {
            return false;
        }
        let shown = netns::ip_netns(
            &self.upstream.netns,
            &["-4", "route", "show", "dev", &self.upstream.uplink_ifname],
        );
        match shown.map(|text| outside::parse_route_destinations(&text)) {
            Ok(Ok(present)) => synced.iter().any(|net| !present.contains(net)),
            _ => false,
        }
    }

    /// The eBGP session's part that outlives a link flap: Linux removes a link's routes when
    /// it goes down, so an `ip link set uplink down` and `up` on the upstream router left it
    /// with no route to a VIP, an egress IP or a segment until the next change. A session
    /// would come back with the link and advertise them again: when the router's uplink is
    /// seen up with routes missing, they are synced again. Checked every
    /// [`UPSTREAM_LINK_CHECK`] until shutdown. By the routes, not by seeing the link down and
    /// then up: a flap shorter than a check (`ip link set uplink down; ip link set uplink up`)
    /// went unseen and left the router without its routes for good.
    fn keep_upstream_session(&self) {
        while !self.shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(UPSTREAM_LINK_CHECK);
            let shown = netns::ip_netns(
                &self.upstream.netns,
                &["-o", "link", "show", "dev", &self.upstream.uplink_ifname],
            );
            // An error (the namespace going away at shutdown) says nothing about the session.
            let Ok(shown) = shown else { continue };
            // While the link is down its routes cannot be put back.
            if !link_is_up(&shown) || !self.upstream_routes_missing() {
                continue;
            }
            if self.shutdown.load(Ordering::Relaxed) {
                break;
            }
            log("the upstream router's uplink is up without its routes: they are advertised again");
            self.sync_upstream();
        }
    }

    /// `pacific exec NS/POD` and `ext/HOST`: the namespace to enter. A deployment's name stands
    /// for its pod when it has exactly one.
    fn resolve(&self, target: &str) -> Result<String, RpcError> {
        let Some((ns, name)) = target.split_once('/') else {
            return Err(RpcError::invalid_params(
                "target",
                format!("{target:?}: expected NAMESPACE/POD or ext/HOST"),
            ));
        };
        let control = self.control.lock();
        if ns == "ext" {
            return match control.outside.get(name) {
                Some((netns_name, _, _)) => Ok(netns_name.clone()),
                None if name == "upstream" || name == "router" => Ok(self.upstream.netns.clone()),
                None => Err(RpcError::not_found(
                    "target",
                    format!("no outside host {name:?}"),
                )),
            };
        }
        if let Some(r) = control.pods.get(&(ns.to_string(), name.to_string())) {
            return Ok(r.netns.clone());
        }
        // A mistyped namespace is named as such, not as a pod missing from it.
        let namespaces = &control.store.state().namespaces;
        if !namespaces.contains_key(ns) {
            let known: Vec<&str> = namespaces.keys().map(String::as_str).collect();
            return Err(RpcError::not_found(
                "target",
                format!(
                    "namespace {ns:?} not found (namespaces: {}; ext/HOST for outside hosts)",
                    known.join(", ")
                ),
            ));
        }
        // A pod of the state without its port (yet) is named as such, not as missing.
        if control
            .store
            .state()
            .pods
            .contains_key(&(ns.to_string(), name.to_string()))
        {
            let why = control
                .pod_errors
                .get(&(ns.to_string(), name.to_string()))
                .map_or("its port is not built yet".to_string(), |e| {
                    format!("building its port failed: {e}")
                });
            return Err(RpcError::new(
                rpc::code::CONFLICT,
                format!("pod {ns}/{name} is not running: {why}"),
            ));
        }
        // A deployment's name stands for its pods.
        let matches: Vec<&RealizedPod> = control
            .store
            .state()
            .pods
            .values()
            .filter(|p| p.namespace == ns && p.owner.as_deref() == Some(name))
            .filter_map(|p| control.pods.get(&(p.namespace.clone(), p.name.clone())))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.netns.clone()),
            [] => Err(RpcError::not_found(
                "target",
                format!("no pod {name:?} in namespace {ns:?}"),
            )),
            _ => Err(RpcError::invalid_params(
                "target",
                format!(
                    "{name:?} matches {} pods in {ns:?}; name one",
                    matches.len()
                ),
            )),
        }
    }

    /// Forgets the connections from or to removed ports (a deleted pod or namespace): they would
    /// otherwise linger in `pacific get nat`, under whoever gets the addresses next, and hold
    /// their SNAT ports, until they time out.
    fn forget_connections_of(&self, ports: &[PortId]) {
        if ports.is_empty() {
            return;
        }
        self.pipeline.conntrack.remove_where(|c| {
            ports.contains(&c.in_port) || c.actions.iter().any(|a| ports.contains(&a.out_port))
        });
    }

    /// Removes everything realized and empties the state (used by `lab down` when the daemon was
    /// not started by the lab, and on shutdown).
    pub fn reset(&self) {
        let mut control = self.control.lock();
        let pods: Vec<RealizedPod> = std::mem::take(&mut control.pods).into_values().collect();
        // Every test server at once: each drains for up to SERVER_DRAIN_GRACE, so one by one
        // (as deleting each namespace would end them) a lab of 600 pods took a minute more.
        let servers: Vec<u32> = std::mem::take(&mut control.workloads)
            .into_values()
            .map(|(pid, _)| pid)
            .chain(pods.iter().filter_map(|r| r.server))
            .chain(control.outside.values().filter_map(|(_, pid, _)| *pid))
            .collect();
        netns::terminate_pids(&servers, SERVER_DRAIN_GRACE);
        for r in pods {
            self.dataplane.lock().remove_port(r.port);
            let _ = netns::delete_netns(&r.netns);
        }
        control.ports.retain(|owner, _| *owner == PortOwner::Uplink);
        for (_, (ns, _, _)) in std::mem::take(&mut control.outside) {
            let _ = netns::delete_netns(&ns);
        }
        control.store = Store::new(&self.hostname);
        let upstream = self.upstream.netns.clone();
        control.record.namespaces.retain(|n| *n == upstream);
        control.record.pids.clear();
        control.gone_ports.clear();
        self.publish(&mut control);
        drop(control);
        // Nothing is left for any connection to go to (nor its NAT binding to hold).
        self.pipeline.conntrack.remove_where(|_| true);
        self.save_record();
        self.sync_upstream();
    }

    /// Stops the dataplane, removes every namespace and process it created, and the socket.
    pub fn stop(&self) {
        self.reset();
        self.dataplane.lock().shutdown();
        let _ = netns::delete_netns(&self.upstream.netns);
        let _ = std::fs::remove_file(&self.config.socket);
        let _ = std::fs::remove_file(self.config.record_path());
    }
}

/// A TKG replica's test server: the node namespace it runs in and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WorkloadServer {
    netns: String,
    args: Vec<String>,
    message: Option<String>,
}

/// A replica listens on its container ports and on the nodePorts of the services of its cluster
/// that select it (SO_REUSEPORT lets replicas on one node share a nodePort, spread by the
/// kernel as kube-proxy would).
fn workload_args(state: &State, w: &crate::model::objects::ClusterWorkload) -> Vec<String> {
    use crate::model::objects::Protocol;
    let mut ports: BTreeSet<(Protocol, u16)> = w
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().map(|p| (p.protocol, p.container_port)))
        .collect();
    for svc in state.services.values() {
        if svc.cluster.as_deref() != Some(w.cluster.as_str()) || svc.namespace != w.namespace {
            continue;
        }
        let selected = svc
            .selector
            .as_ref()
            .is_some_and(|sel| !sel.is_empty() && selects(sel, &w.labels));
        if selected {
            ports.extend(
                svc.ports
                    .iter()
                    .filter_map(|p| p.node_port.map(|np| (p.protocol, np))),
            );
        }
    }
    ports
        .into_iter()
        .flat_map(|(protocol, port)| {
            let flag = match protocol {
                Protocol::Tcp => "--http",
                Protocol::Udp => "--udp",
            };
            [flag.to_string(), port.to_string()]
        })
        .collect()
}

/// The TCP and UDP ports a workload server's `args` (see [`workload_args`] and the relays'
/// `--forward`) have it listen on.
fn workload_ports(args: &[String]) -> (Vec<u16>, Vec<u16>) {
    let (mut tcp, mut udp) = (BTreeSet::new(), BTreeSet::new());
    for pair in args.windows(2) {
        let (flag, value) = (pair[0].as_str(), pair[1].as_str());
        match flag {
            "--http" => tcp.extend(value.parse::<u16>()),
            "--udp" => udp.extend(value.parse::<u16>()),
            "--forward" => {
                if let Ok(f) = value.parse::<netexec::Forward>() {
                    if f.udp {
                        udp.insert(f.port)
                    } else {
                        tcp.insert(f.port)
                    };
                }
            }
            _ => {}
        }
    }
    (tcp.into_iter().collect(), udp.into_iter().collect())
}

/// A LoadBalancer of a TKG cluster that this request applied, one of whose ports has no nodePort
/// (`allocateLoadBalancerNodePorts: false` and none named): the SLB reaches a guest's service
/// only through its nodePort on the nodes, so that port's VIP has no pool member and refuses
/// every connection. The API server takes such a service, so it is applied, with a warning
/// rather than in silence (NCP would report it only in the load balancer's status).
fn memberless_guest_load_balancers(state: &State, outcomes: &[ApplyOutcome]) -> Vec<String> {
    use crate::model::objects::{cluster_key, ServiceType};
    let mut warnings = Vec::new();
    for o in outcomes
        .iter()
        .filter(|o| o.kind == "Service" && o.action != "deleted")
    {
        let (Some(ns), Some(cluster)) = (o.namespace.as_deref(), o.cluster.as_deref()) else {
            continue;
        };
        let key = (cluster_key(ns, cluster), o.name.clone());
        let Some(svc) = state.services.get(&key) else {
            continue;
        };
        if svc.service_type != ServiceType::LoadBalancer || svc.tkg_control_plane.is_some() {
            continue;
        }
        for port in svc.ports.iter().filter(|p| p.node_port.is_none()) {
            let vip = svc
                .load_balancer_ip
                .map_or_else(|| "its VIP".to_string(), |v| format!("VIP {v}"));
            warnings.push(format!(
                "service {} in TKG cluster {}: port {} has no nodePort \
                 (allocateLoadBalancerNodePorts: false), so {vip}:{} has no member: \
                 NSX reaches a guest cluster's services through the nodes' nodePorts; \
                 name a nodePort or allocate them",
                o.name, key.0, port.port, port.port
            ));
        }
    }
    warnings
}

/// kube-proxy opens a service's nodePort on every node of the cluster (`externalTrafficPolicy:
/// Cluster`) and sends what a node without a replica receives on to one with a replica: the
/// lab's nodes without one relay each nodePort to the nodes that have one (the replicas
/// listen on it themselves, [`workload_args`]). By (supervisor namespace, node name). A
/// `Local` service is not relayed: a node without a replica refuses, as kube-proxy's does.
fn nodeport_relays(state: &State) -> BTreeMap<(String, String), Vec<netexec::Forward>> {
    use crate::model::objects::Protocol;
    let mut relays: BTreeMap<(String, String), Vec<netexec::Forward>> = BTreeMap::new();
    for svc in state.services.values() {
        let Some(cluster) = svc.cluster.as_deref() else {
            continue;
        };
        if svc.external_traffic_local {
            continue;
        }
        let Some(selector) = svc.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let busy: BTreeSet<&str> = state
            .workloads_in(&svc.namespace, cluster)
            .filter(|w| selects(selector, &w.labels))
            .map(|w| w.node.as_str())
            .collect();
        let nodes: Vec<&crate::model::objects::Pod> =
            state.tkg_nodes(&svc.namespace, cluster).collect();
        let targets: Vec<Ipv4Addr> = nodes
            .iter()
            .filter(|p| busy.contains(p.name.as_str()))
            .map(|p| p.ip)
            .collect();
        if targets.is_empty() {
            continue; // nothing to relay to: every node refuses
        }
        for port in &svc.ports {
            let Some(node_port) = port.node_port else {
                continue;
            };
            let forward = netexec::Forward {
                udp: port.protocol == Protocol::Udp,
                port: node_port,
                targets: targets
                    .iter()
                    .map(|&ip| SocketAddrV4::new(ip, node_port))
                    .collect(),
            };
            for idle in nodes.iter().filter(|p| !busy.contains(p.name.as_str())) {
                relays
                    .entry((svc.namespace.clone(), idle.name.clone()))
                    .or_default()
                    .push(forward.clone());
            }
        }
    }
    relays
}

/// An error when a daemon already answers on `socket`: a second one would take over its lab
/// record and its upstream router's uplink.
/// Whether a daemon may listen on `socket`: a path short enough for a Unix socket's address,
/// where nothing but a socket (a dead daemon's, which it then replaces) or nothing at all is.
/// A regular file there (a mistyped `--socket`) is refused rather than deleted.
pub fn check_socket_path(socket: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    // sockaddr_un's sun_path: 108 bytes, the last one the terminating NUL.
    const SUN_PATH_MAX: usize = 107;
    let len = socket.as_os_str().as_bytes().len();
    if len > SUN_PATH_MAX {
        return Err(format!(
            "the socket path {} is {len} bytes; a Unix socket's path is at most {SUN_PATH_MAX}: \
             give a shorter --socket",
            socket.display()
        ));
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if !meta.file_type().is_socket() => {
            let what = if meta.is_dir() {
                "a directory"
            } else if meta.is_file() {
                "a regular file"
            } else {
                "not a socket"
            };
            Err(format!(
                "{} is {what}, not a daemon's socket: give another --socket (or remove it)",
                socket.display()
            ))
        }
        _ => Ok(()),
    }
}

fn refuse_if_answered(socket: &Path) -> Result<(), String> {
    if UnixStream::connect(socket).is_err() {
        return Ok(());
    }
    Err(format!(
        "another daemon already answers on {}; stop it first (`pacific --socket {} lab down`) \
         or give this one another --socket",
        socket.display(),
        socket.display()
    ))
}

/// One client: newline-delimited JSON-RPC requests, answered in order. A bad line gets an error
/// response; the connection stays open. A client that sends nothing for `idle`, or does not read
/// its answers for `idle` (it pipelines requests and never reads, so a write blocks), is
/// disconnected: neither holds a client slot for longer.
fn serve_client(
    stream: UnixStream,
    idle: Duration,
    shutdown: &AtomicBool,
    busy: impl Fn(bool),
    mut dispatch: impl FnMut(&str, &Value) -> Result<Value, RpcError>,
) {
    let _ = stream.set_read_timeout(Some(idle));
    let _ = stream.set_write_timeout(Some(idle));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = std::io::BufWriter::new(write_half);
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        // Between requests (also after a blank or oversized line) the connection is idle.
        busy(false);
        line.clear();
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        match limited.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        busy(true);
        if line.len() > MAX_REQUEST {
            let err = RpcError::invalid_request(format!("request longer than {MAX_REQUEST} bytes"));
            let _ = writeln!(writer, "{}", rpc::error_response(&Value::Null, &err));
            let _ = writer.flush();
            // Skip the rest of the oversized line without keeping it.
            if !discard_line(&mut reader) {
                return;
            }
            continue;
        }
        // JSON text is UTF-8 (RFC 8259): a line that is not is refused, not repaired (a
        // replacement character would silently change a name or a manifest).
        let response = match std::str::from_utf8(&line) {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => rpc::handle_line(text, &mut dispatch),
            Err(e) => Some(rpc::error_response(
                &Value::Null,
                &RpcError::new(
                    rpc::code::PARSE_ERROR,
                    format!(
                        "parse error: invalid UTF-8 at byte {} of the request",
                        e.valid_up_to()
                    ),
                ),
            )),
        };
        // Answered: a client that does not read its answer (the write blocks) is no longer in a
        // request, and its slot may go to a new connection as an idle one's does.
        busy(false);
        if let Some(response) = response {
            if writeln!(writer, "{response}")
                .and_then(|_| writer.flush())
                .is_err()
            {
                return;
            }
        }
        if shutdown.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Reads and drops bytes up to the end of the current line. False at EOF or on an error.
fn discard_line(reader: &mut BufReader<UnixStream>) -> bool {
    loop {
        let (done, used) = match reader.fill_buf() {
            Ok([]) | Err(_) => return false,
            Ok(buf) => match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, buf.len()),
            },
        };
        reader.consume(used);
        if done {
            return true;
        }
    }
}

/// The namespace of a pod: `{prefix}-{namespace}-{pod}`, shortened (see [`fit_netns_name`]) when
/// that is longer than a namespace name may be.
pub fn pod_netns(prefix: &str, namespace: &str, pod: &str) -> String {
    fit_netns_name(
        format!("{prefix}-{namespace}-{pod}"),
        &format!("{namespace}/{pod}"),
        0,
    )
}

/// The longest namespace name the lab creates (`netns::validate_netns_name`).
const NETNS_NAME_MAX: usize = 64;

/// `base` when it fits and `attempt` is 0; otherwise `base` cut short and followed by a hash of
/// `key` (what the name stands for) and `attempt`, so that two objects whose readable names are
/// too long, or the same (pod `b-c` of namespace `a` and pod `c` of namespace `a-b` are both
/// `{prefix}-a-b-c`), still get namespaces of their own.
fn fit_netns_name(base: String, key: &str, attempt: u32) -> String {
    if attempt == 0 && base.len() <= NETNS_NAME_MAX {
        return base;
    }
    // FNV-1a: the same name for the same object from one run to the next.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(attempt.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let suffix = format!("-{:08x}", (h ^ (h >> 32)) as u32);
    let mut cut = base.len().min(NETNS_NAME_MAX - suffix.len());
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = base[..cut].trim_end_matches(['-', '.']);
    format!("{head}{suffix}")
}

/// The test server's arguments for a pod: HTTP on its TCP container ports, echo on its UDP ones.
fn server_args(_state: &State, pod: &crate::model::objects::Pod) -> Vec<String> {
    let (tcp, udp) = server_ports(pod);
    let http = tcp.into_iter().map(|p| ("--http", p));
    let udp = udp.into_iter().map(|p| ("--udp", p));
    http.chain(udp)
        .flat_map(|(flag, port)| [flag.to_string(), port.to_string()])
        .collect()
}

/// The TCP and UDP ports a pod's test server listens on: its containers' ports, each once.
fn server_ports(pod: &crate::model::objects::Pod) -> (Vec<u16>, Vec<u16>) {
    let mut tcp = BTreeSet::new();
    let mut udp = BTreeSet::new();
    for p in pod.containers.iter().flat_map(|c| &c.ports) {
        match p.protocol {
            crate::model::objects::Protocol::Tcp => tcp.insert(p.container_port),
            crate::model::objects::Protocol::Udp => udp.insert(p.container_port),
        };
    }
    (tcp.into_iter().collect(), udp.into_iter().collect())
}

fn message_of(containers: &[crate::model::objects::Container]) -> Option<String> {
    containers
        .iter()
        .find_map(|c| c.env.get("MESSAGE").cloned())
}

/// The connection timeouts as `--conntrack-timeout` names them, in seconds (what
/// `daemon.status` reports, so a user can see what a running daemon was started with).
fn conntrack_timeouts(config: &ConntrackConfig) -> Value {
    let timeouts = &config.timeouts;
    Value::Object(
        Timeouts::NAMES
            .iter()
            .filter_map(|name| Some((name.to_string(), json!(timeouts.get(name)? / 1000))))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_server_listens_on_its_ports_and_relays() {
        let args: Vec<String> = [
            "--http",
            "8080",
            "--udp",
            "53",
            "--forward",
            "tcp:30000=172.211.0.66:30000",
            "--forward",
            "udp:31053=172.211.0.66:31053",
            "--http",
            "30001",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        assert_eq!(
            workload_ports(&args),
            (vec![8080, 30000, 30001], vec![53, 31053])
        );
        assert_eq!(workload_ports(&[]), (vec![], vec![]));
    }

    #[test]
    fn each_socket_has_its_own_log_and_record_and_the_default_keeps_its_names() {
        let default = Path::new("/run/pacific/pacific.sock");
        assert_eq!(
            log_path_for(default),
            Path::new("/run/pacific/pacific-daemon.log")
        );
        assert_eq!(
            record_path_for(default),
            Path::new("/run/pacific/pacific.lab.json")
        );
        let other = Path::new("/run/pacific/other.sock");
        assert_eq!(
            log_path_for(other),
            Path::new("/run/pacific/other-daemon.log")
        );
        assert_ne!(record_path_for(other), record_path_for(default));
    }

    #[test]
    fn open_file_limits_rise_to_what_a_big_lab_needs_and_never_fall() {
        // The usual shell default: 1024 soft, a hard limit above what is wanted.
        assert_eq!(open_file_limits(1024, 524_288), (65_536, 524_288));
        // `ulimit -n 1024` set both: root raises the hard limit too.
        assert_eq!(open_file_limits(1024, 1024), (65_536, 65_536));
        // Already more than wanted: left as it is.
        assert_eq!(open_file_limits(1 << 20, 1 << 20), (1 << 20, 1 << 20));
        assert_eq!(open_file_limits(100_000, 200_000), (100_000, 200_000));
    }

    #[test]
    fn the_upstream_uplink_is_up_by_its_up_flag_only() {
        let up = "3: uplink: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq state UNKNOWN";
        let down = "3: uplink: <BROADCAST,MULTICAST> mtu 1500 qdisc mq state DOWN";
        let no_carrier = "3: uplink: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 state DOWN";
        assert!(link_is_up(up));
        assert!(!link_is_up(down));
        assert!(link_is_up(no_carrier));
        assert!(!link_is_up("3: uplink: <BROADCAST,LOWER_UP> mtu 1500"));
        assert!(!link_is_up(""));
    }

    /// A client that pipelines requests and never reads its answers fills the socket; the
    /// write of an answer then blocks. It is disconnected after the idle time, as a silent
    /// client is, instead of holding its thread and client slot until it goes away.
    #[test]
    fn a_client_that_never_reads_is_disconnected() {
        let (server, client) = UnixStream::pair().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let shutdown = AtomicBool::new(false);
            serve_client(
                server,
                Duration::from_millis(300),
                &shutdown,
                |_| {},
                |_, _| Ok(json!("x".repeat(64 << 10))),
            );
            let _ = done_tx.send(());
        });
        let mut writer = client.try_clone().unwrap();
        std::thread::spawn(move || {
            let request = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}\n";
            for _ in 0..100_000 {
                if writer.write_all(request.as_bytes()).is_err() {
                    return;
                }
            }
        });
        assert!(
            done_rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "the client's thread is still blocked writing to a client that does not read"
        );
        drop(client);
    }

    /// 256 clients that pipeline requests and never read their answers locked every CLI out
    /// (busy, -32004) until the write timeout: blocked writing an answer, each counted as in a
    /// request. Answered, it is idle, and a new connection may take its slot.
    #[test]
    fn a_client_blocked_writing_its_answer_is_not_in_a_request() {
        let (server, client) = UnixStream::pair().unwrap();
        let state = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&state);
        std::thread::spawn(move || {
            let shutdown = AtomicBool::new(false);
            serve_client(
                server,
                Duration::from_secs(5),
                &shutdown,
                move |busy| seen.lock().push(busy),
                |_, _| Ok(json!("x".repeat(64 << 10))),
            );
        });
        let mut writer = client.try_clone().unwrap();
        let request = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\"}\n";
        for _ in 0..20 {
            writer.write_all(request.as_bytes()).unwrap();
        }
        // The answers (64 KiB each) fill the socket: the server blocks writing one.
        std::thread::sleep(Duration::from_millis(500));
        let calls = state.lock().clone();
        assert!(calls.contains(&true), "no request was served: {calls:?}");
        assert_eq!(
            calls.last(),
            Some(&false),
            "a client blocked writing its answer still counts as in a request"
        );
        drop(client);
    }

    #[test]
    fn pod_namespace_names_fit_and_stay_apart() {
        assert_eq!(pod_netns("pac", "ns-dev", "testbox"), "pac-ns-dev-testbox");
        // Realistic names (a namespace, a deployment and its pod hashes) exceed the 64
        // characters a namespace name may have: shortened, deterministically, and valid.
        let long = pod_netns(
            "pac",
            "payments-production",
            "checkout-api-gateway-service-h4r9bkq54n-mj7mx",
        );
        assert!(long.len() <= NETNS_NAME_MAX, "{long}");
        assert!(netns::validate_netns_name(&long).is_ok(), "{long}");
        assert!(
            long.starts_with("pac-payments-production-checkout"),
            "{long}"
        );
        assert_eq!(
            long,
            pod_netns(
                "pac",
                "payments-production",
                "checkout-api-gateway-service-h4r9bkq54n-mj7mx"
            )
        );
        let other = pod_netns(
            "pac",
            "payments-production",
            "checkout-api-gateway-service-h4r9bkq54n-zzzzz",
        );
        assert_ne!(long, other);
        // Two objects with the same readable name: the second attempt differs, and fits.
        let a = fit_netns_name("pac-a-b-c".into(), "a/b-c", 0);
        let b = fit_netns_name("pac-a-b-c".into(), "a-b/c", 1);
        assert_eq!(a, "pac-a-b-c");
        assert_ne!(a, b);
        assert!(b.starts_with("pac-a-b-c-") && netns::validate_netns_name(&b).is_ok());
        assert_ne!(
            fit_netns_name("pac-a-b-c".into(), "a-b/c", 1),
            fit_netns_name("pac-a-b-c".into(), "a-b/c", 2)
        );
    }
}
