//! The `pacific` command line: a kubectl-like front end to the control socket, the daemon, the
//! lab and the test server.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use pacific_dataplane::conntrack::ConntrackConfig;

use crate::client::{self, CallError};
use crate::daemon::{log_path_for, record_path_for, Daemon, DaemonConfig};
use crate::describe;
use crate::lab::record::{teardown, LabRecord};
use crate::model::manifest::Kind;
use crate::netexec::{self, NetexecConfig};

/// `println!` that stops quietly when stdout is closed (`pacific get nat | head`) instead of
/// panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!`, likewise.
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// The seed lab, applied by `pacific lab up` when no file is given.
pub const SEED_LAB: &str = include_str!("seed-lab.yaml");

#[derive(Parser, Debug)]
#[command(
    name = "pacific",
    version,
    about = "Pacific: NSX-T style T1/T0 networking, DFW, SNAT and load balancing for network namespaces, in userspace"
)]
struct Cli {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        env = "PACIFIC_SOCKET",
        default_value = DEFAULT_SOCKET
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

/// Where the daemon listens unless told otherwise.
const DEFAULT_SOCKET: &str = "/run/pacific/pacific.sock";

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the dataplane and the control socket (as root).
    Daemon(DaemonArgs),
    /// Build or remove the lab: a daemon, the seed lab's namespaces, pods and outside hosts.
    Lab {
        #[command(subcommand)]
        action: LabCmd,
    },
    /// List objects: namespaces, pods, segments, routes, ports, svc, endpoints, dfw, nat, outside, deployments, tkc, netpol.
    Get(GetArgs),
    /// Show objects in detail, as kubectl describe: svc, pods or ns (`pacific describe svc web -n ns-dev`).
    Describe {
        /// svc (services), pods or ns (namespaces); or KIND/NAME (`svc/web`).
        kind: String,
        /// The object's name (none: every one of that kind).
        name: Option<String>,
        /// Only this namespace (without it, every namespace's objects of that name).
        #[arg(short = 'n', long, value_parser = NonEmptyStringValueParser::new())]
        namespace: Option<String>,
    },
    /// Create or update objects from YAML manifests (Kubernetes and Pacific kinds).
    #[command(override_usage = "pacific apply [OPTIONS] -f <FILENAME>...")]
    Apply(ApplyArgs),
    /// Delete the objects named in YAML manifests, or KIND NAME... (`pacific delete ns team`).
    Delete(DeleteArgs),
    /// Run a command inside a pod's namespace (NS/POD) or an outside host's (ext/HOST).
    Exec {
        /// NS/POD, NS/DEPLOYMENT, ext/HOST; with -n, POD or kubectl's pod/POD, deploy/NAME.
        target: String,
        /// The namespace of a target that names none (`pacific exec -n team web -- ...`).
        #[arg(short = 'n', long, value_parser = NonEmptyStringValueParser::new())]
        namespace: Option<String>,
        /// kubectl's -i (--stdin): accepted; the command always has the caller's standard input.
        #[arg(short = 'i', long = "stdin")]
        _stdin: bool,
        /// kubectl's -t (--tty): accepted; the command always has the caller's terminal.
        #[arg(short = 't', long = "tty")]
        _tty: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Pacific's test server: HTTP (/, /hostname, /clientip, /echo?msg=) and UDP echo.
    Netexec {
        /// Serve HTTP on this TCP port (repeatable).
        #[arg(long = "http")]
        http: Vec<u16>,
        /// Echo UDP datagrams on this port (repeatable).
        #[arg(long = "udp")]
        udp: Vec<u16>,
        /// The name it answers /hostname with (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Relay a port to other addresses (a TKG node's nodePort with no local replica):
        /// tcp:PORT=IP:PORT[,IP:PORT...] or udp:...
        #[arg(long = "forward", value_name = "PROTO:PORT=TARGETS")]
        forward: Vec<netexec::Forward>,
    },
    /// Send one raw JSON-RPC call and print the result (for scripts).
    Rpc {
        method: String,
        /// The params object, as JSON.
        #[arg(default_value = "{}")]
        params: String,
    },
}

/// The daemon's `--conntrack-max` when none is given.
const DEFAULT_CONNTRACK_MAX: usize = 1 << 20;

#[derive(Args, Debug)]
struct DaemonArgs {
    /// Worker threads (and TAP queues per port): 1-256.
    #[arg(long, default_value_t = default_workers(), value_parser = parse_workers)]
    workers: usize,
    /// Prefix of every namespace the daemon creates (letters, digits and `_`: with a `-`, one
    /// lab's `{prefix}-*` could hold another's namespaces).
    #[arg(long, env = "PACIFIC_PREFIX", default_value = "pac", value_parser = parse_prefix)]
    prefix: String,
    /// Set by `pacific lab up` when it starts the daemon.
    #[arg(long, hide = true)]
    started_by_lab: bool,
    /// The most connections tracked at once (past it the soonest-expiring not yet established
    /// are evicted; with none, a new connection is dropped, `conntrack-full` in `get ports`).
    #[arg(long, default_value_t = DEFAULT_CONNTRACK_MAX)]
    conntrack_max: usize,
    /// A connection timeout, NAME=SECONDS (repeatable): tcp-syn-sent, tcp-established,
    /// tcp-fin-wait, tcp-close-wait, tcp-time-wait, tcp-close, udp, udp-stream, icmp, ...
    #[arg(long = "conntrack-timeout", value_name = "NAME=SECONDS")]
    conntrack_timeouts: Vec<String>,
    /// After a frame, workers keep polling their queues for this long (yielding the core in
    /// between) before they sleep: no wake-up per frame under a steady exchange. 0 disables; at
    /// most 1000000 (a second).
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 50, value_parser = parse_busy_poll_us)]
    busy_poll_us: u64,
}

impl DaemonArgs {
    fn conntrack(&self) -> Result<ConntrackConfig, String> {
        conntrack_config(self.conntrack_max, &self.conntrack_timeouts)
    }
}

/// The connection table of `--conntrack-max` and `--conntrack-timeout`s, or what is wrong with
/// them (checked by `lab up` too, before it starts a daemon with them).
/// The longest `--conntrack-timeout`, in seconds (136 years).
const MAX_CONNTRACK_TIMEOUT_SECS: u64 = u32::MAX as u64;

fn conntrack_config(max: usize, timeouts: &[String]) -> Result<ConntrackConfig, String> {
    if max == 0 {
        return Err("--conntrack-max must be at least 1".to_string());
    }
    if max > ConntrackConfig::MAX_CONNECTIONS {
        return Err(format!(
            "--conntrack-max must be at most {} (the index for it is allocated at start: \
             32 bytes per connection)",
            ConntrackConfig::MAX_CONNECTIONS
        ));
    }
    let mut config = ConntrackConfig {
        max_connections: max,
        ..Default::default()
    };
    for spec in timeouts {
        let (name, secs) = spec
            .split_once('=')
            .ok_or_else(|| format!("--conntrack-timeout {spec:?}: expected NAME=SECONDS"))?;
        let secs: u64 = secs.parse().map_err(|_| {
            format!("--conntrack-timeout {spec:?}: {secs:?} is not a number of seconds")
        })?;
        // Zero would end every connection with the packet that made it: no reply, no NAT.
        if secs == 0 {
            return Err(format!(
                "--conntrack-timeout {spec:?}: a timeout is at least 1 second"
            ));
        }
        // Past this the milliseconds would be clamped, and daemon.status show another number
        // than the one given (Linux's conntrack timeouts are 32-bit as well).
        if secs > MAX_CONNTRACK_TIMEOUT_SECS {
            return Err(format!(
                "--conntrack-timeout {spec:?}: a timeout is at most \
                 {MAX_CONNTRACK_TIMEOUT_SECS} seconds"
            ));
        }
        config
            .timeouts
            .set(name, secs * 1000)
            .map_err(|e| format!("--conntrack-timeout: {e}"))?;
    }
    Ok(config)
}

/// A namespace prefix: 1-32 letters, digits or `_`. No `-`, so that no lab's `{prefix}-*` (what
/// `lab down` sweeps) can match another lab's namespaces (`pac` and `pac-x` would).
fn parse_prefix(s: &str) -> Result<String, String> {
    let ok =
        (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: a prefix is 1-32 letters, digits or '_' (no '-': `lab down` removes \
             {s}-*, which would hold the namespaces of a lab whose prefix begins {s}-)"
        ))
    }
}

/// The most workers: a worker reads one queue of every TAP, and a TAP has at most 256 queues
/// (the kernel's `MAX_TAP_QUEUES`).
const MAX_WORKERS: usize = 256;

/// `--workers`: 1 to [`MAX_WORKERS`]. Zero was taken and reported (`0 worker(s)`, `"workers":
/// 0`) while one ran; past 256 the daemon failed at its first TAP with `TUNSETIFF uplink:
/// Argument list too long`, naming no option.
fn parse_workers(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of workers"))?;
    if !(1..=MAX_WORKERS).contains(&n) {
        return Err(format!(
            "{n} workers: between 1 and {MAX_WORKERS} (a TAP has at most {MAX_WORKERS} \
             queues, one per worker)"
        ));
    }
    Ok(n)
}

/// The longest `--busy-poll-us`: a second. Past it a worker would spin for minutes or days after
/// a frame, holding a core.
const MAX_BUSY_POLL_US: u64 = 1_000_000;

fn parse_busy_poll_us(s: &str) -> Result<u64, String> {
    let us: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of microseconds"))?;
    if us > MAX_BUSY_POLL_US {
        return Err(format!(
            "{us} us: at most {MAX_BUSY_POLL_US} (a second); 0 disables busy polling"
        ));
    }
    Ok(us)
}

/// A worker per core, at most four. (Half the cores was tried, since the pods of a lab share
/// the cores with the workers: on 2 cores, netbench's connection rate and round trips were
/// within the runs' spread of each other, and TCP with 4 streams lost a third.)
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
}

#[derive(Subcommand, Debug)]
enum LabCmd {
    /// Start a daemon if none answers, apply the lab (the embedded seed lab without FILE), print a summary.
    Up {
        /// The lab's manifest, or a directory of them (without: the embedded seed lab, `pacific
        /// lab show`).
        file: Option<PathBuf>,
        /// Workers of the daemon this starts, 1-256 (default: a worker per core, at most 4).
        #[arg(long, value_parser = parse_workers)]
        workers: Option<usize>,
        /// The prefix of the daemon this starts (default `pac`); given, and a daemon of another
        /// prefix answers on the socket, nothing is done.
        #[arg(long, env = "PACIFIC_PREFIX", value_parser = parse_prefix)]
        prefix: Option<String>,
        /// The daemon's `--busy-poll-us`, when this starts it (default: the daemon's).
        #[arg(long, value_name = "MICROSECONDS", value_parser = parse_busy_poll_us)]
        busy_poll_us: Option<u64>,
        /// The daemon's `--conntrack-max`, when this starts it.
        #[arg(long, value_name = "CONNECTIONS")]
        conntrack_max: Option<usize>,
        /// The daemon's `--conntrack-timeout NAME=SECONDS` (repeatable), when this starts it:
        /// tcp-established, tcp-time-wait, udp, udp-stream, icmp, ...
        #[arg(long = "conntrack-timeout", value_name = "NAME=SECONDS")]
        conntrack_timeouts: Vec<String>,
    },
    /// Remove everything the lab created: namespaces, TAPs, processes, the daemon it started.
    Down {
        /// The lab's prefix (default: the record's, else `pac`); given, and the lab on the socket
        /// has another, nothing is done.
        #[arg(long, env = "PACIFIC_PREFIX", value_parser = parse_prefix)]
        prefix: Option<String>,
    },
    /// Print the embedded seed lab.
    Show,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Output {
    Wide,
    Json,
    Yaml,
    Name,
}

#[derive(Args, Debug)]
struct GetArgs {
    /// namespaces, pods, segments, routes, ports, svc, endpoints, dfw, nat, outside,
    /// deployments, tkc or netpol (kubectl's short names and plurals too); several as `pods,svc`; `all` for pods,
    /// services, deployments and TKG clusters.
    kind: String,
    /// Objects of that kind, by name (or, as `pod/web svc/web`, KIND/NAME each).
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Only this namespace (for routes: its T1's table instead of T0's).
    #[arg(short = 'n', long, value_parser = NonEmptyStringValueParser::new())]
    namespace: Option<String>,
    /// All namespaces (the default when -n is not given; with -n too, as kubectl has it).
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// wide (more columns), json or yaml (the control socket's answer), name (`pod/web`).
    #[arg(short = 'o', long)]
    output: Option<Output>,
    /// Only objects with these labels: `app=web`, `tier!=db`, `canary`, `!legacy`, comma
    /// separated (kubectl's equality-based selectors).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// A LABELS column.
    #[arg(long)]
    show_labels: bool,
    /// Tables without their header line (for `| wc -l` and the like).
    #[arg(long)]
    no_headers: bool,
}

#[derive(Args, Debug)]
struct ApplyArgs {
    /// A manifest file, a directory (its .yaml, .yml and .json files, in name order), or - for
    /// standard input; repeatable, applied together (all or nothing).
    #[arg(short = 'f', long, required_unless_present = "without_f")]
    filename: Vec<PathBuf>,
    /// The namespace of objects that name none (one that names another is refused).
    #[arg(short = 'n', long, value_parser = NonEmptyStringValueParser::new())]
    namespace: Option<String>,
    /// Apply inside this TKG cluster (of the namespace given with -n).
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    cluster: Option<String>,
    /// Files named without -f (`pacific apply web.yaml`): refused, saying how to give them.
    #[arg(hide = true, value_name = "FILE")]
    without_f: Vec<PathBuf>,
}

impl ApplyArgs {
    /// The `-f` files; files named without `-f` are an error that shows the command with it.
    fn files(&self) -> Result<&[PathBuf], String> {
        match self.without_f.first() {
            Some(file) => Err(format!(
                "manifests are given with -f: `pacific apply -f {}`",
                file.display()
            )),
            None => Ok(&self.filename),
        }
    }
}

#[derive(Args, Debug)]
struct DeleteArgs {
    /// KIND NAME... or KIND/NAME...: the objects to delete, as `kubectl delete ns team` or
    /// `kubectl delete svc/web deploy/web` (instead of -f). KIND:
    /// namespaces, pods, svc, deployments, endpoints, tkc, netpol, outside (short names and
    /// plurals too).
    #[arg(value_name = "KIND NAME", conflicts_with = "filename")]
    objects: Vec<String>,
    /// A manifest file, a directory (its .yaml, .yml and .json files), or - for standard input;
    /// repeatable.
    #[arg(short = 'f', long, required_unless_present = "objects")]
    filename: Vec<PathBuf>,
    /// The namespace of objects that name none (one that names another is refused).
    #[arg(short = 'n', long, value_parser = NonEmptyStringValueParser::new())]
    namespace: Option<String>,
    /// Delete inside this TKG cluster (of the namespace given with -n).
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    cluster: Option<String>,
    /// Pass over objects that are not there instead of failing (and deleting nothing), as
    /// kubectl's --ignore-not-found: a teardown deletes what is left.
    #[arg(long)]
    ignore_not_found: bool,
}

/// `delete KIND NAME...` (or `KIND/NAME...`, as `kubectl delete svc/web deploy/web`) as a
/// manifest of those objects (their names only, which is all delete reads).
fn manifest_of_names(objects: &[String]) -> Result<String, String> {
    if objects.first().is_some_and(|o| o.contains('/')) {
        let mut docs = Vec::with_capacity(objects.len());
        for object in objects {
            match object.split_once('/') {
                Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {
                    docs.push(manifest_of_names(&[kind.to_string(), name.to_string()])?);
                }
                _ => {
                    return Err(format!(
                        "{object:?}: expected KIND/NAME, as the objects before it (or KIND NAME...)"
                    ))
                }
            }
        }
        return Ok(docs.join("\n---\n"));
    }
    let (kind, names) = objects
        .split_first()
        .ok_or("name a KIND and NAME, or give -f FILE")?;
    if names.is_empty() {
        return Err(format!("`pacific delete {kind}` needs a NAME (or -f FILE)"));
    }
    let (api_version, kind) = match without_group(kind).as_str() {
        "namespaces" | "namespace" | "ns" => ("v1", "Namespace"),
        "pods" | "pod" | "po" => ("v1", "Pod"),
        "services" | "service" | "svc" => ("v1", "Service"),
        "endpoints" | "ep" => ("v1", "Endpoints"),
        "deployments" | "deployment" | "deploy" => ("apps/v1", "Deployment"),
        "tkc" | "tanzukubernetesclusters" | "tanzukubernetescluster" => {
            ("run.tanzu.vmware.com/v1alpha1", "TanzuKubernetesCluster")
        }
        "outside" | "ext" | "hosts" => ("pacific.dev/v1", "OutsideHost"),
        "networkpolicies" | "networkpolicy" | "netpol" => ("networking.k8s.io/v1", "NetworkPolicy"),
        other => {
            return Err(format!(
                "cannot delete {other:?} by name: expected namespaces, pods, svc, deployments, endpoints, tkc, netpol or outside (or -f FILE)"
            ))
        }
    };
    Ok(names
        .iter()
        .map(|name| {
            json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}).to_string()
        })
        .collect::<Vec<_>>()
        .join("\n---\n"))
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return usage_exit_code(&e);
        }
    };
    match run(cli) {
        Ok(code) => code,
        // kubectl's `Error from server (NotFound): ...` stands as it is.
        Err(message) if message.starts_with("Error from server") => {
            eprintln!("{message}");
            ExitCode::from(1)
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

/// A command line that does not parse (an unknown flag, a missing argument, `get` with no
/// kind) exits 1, as kubectl's, not clap's 2: a script tells it from success the same way, and
/// nothing was done. `--help` and `--version` exit 0.
fn usage_exit_code(e: &clap::Error) -> ExitCode {
    if e.use_stderr() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let socket = cli.socket;
    match cli.command {
        Cmd::Daemon(args) => {
            let conntrack = args.conntrack()?;
            run_daemon(
                &socket,
                args.workers,
                &args.prefix,
                args.started_by_lab,
                conntrack,
                Duration::from_micros(args.busy_poll_us),
            )
        }
        Cmd::Lab {
            action:
                LabCmd::Up {
                    file,
                    workers,
                    prefix,
                    busy_poll_us,
                    conntrack_max,
                    conntrack_timeouts,
                },
        } => lab_up(
            &socket,
            file.as_deref(),
            prefix.as_deref(),
            &LabDaemon {
                workers,
                busy_poll_us,
                conntrack_max,
                conntrack_timeouts,
            },
        ),
        Cmd::Lab {
            action: LabCmd::Down { prefix },
        } => lab_down(&socket, prefix.as_deref()),
        Cmd::Lab {
            action: LabCmd::Show,
        } => {
            out_raw!("{SEED_LAB}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Get(args) => get(&socket, &args),
        Cmd::Describe {
            kind,
            name,
            namespace,
        } => describe(&socket, &kind, name.as_deref(), namespace.as_ref()),
        Cmd::Apply(args) => {
            let manifest = read_manifests(args.files()?)?;
            let (ns, cluster) = (args.namespace.as_deref(), args.cluster.as_deref());
            apply(&socket, "apply", &manifest, ns, cluster, false)
        }
        Cmd::Delete(args) => {
            let manifest = if args.filename.is_empty() {
                ManifestText::of_names(manifest_of_names(&args.objects)?)
            } else {
                read_manifests(&args.filename)?
            };
            let (ns, cluster) = (args.namespace.as_deref(), args.cluster.as_deref());
            apply(
                &socket,
                "delete",
                &manifest,
                ns,
                cluster,
                args.ignore_not_found,
            )
        }
        Cmd::Exec {
            target,
            namespace,
            command,
            ..
        } => {
            let resolved = match exec_deployment(&target, namespace.as_deref()) {
                Some((ns, name)) => {
                    let pods = call(&socket, "pods.list", json!({ "namespace": ns }))?;
                    deployment_pod(&pods, name)
                        .map_or_else(|| format!("{ns}/{name}"), |pod| format!("{ns}/{pod}"))
                }
                None => exec_target(&target, namespace.as_deref())?,
            };
            exec(&socket, &resolved, &command)
        }
        Cmd::Netexec {
            http,
            udp,
            name,
            forward,
        } => {
            let name = name
                .or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|s| s.trim().to_string())
                })
                .unwrap_or_default();
            let message = std::env::var("MESSAGE").ok();
            netexec::run(&NetexecConfig {
                http_ports: http,
                udp_ports: udp,
                name,
                message,
                forwards: forward,
            })
            .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rpc { method, params } => {
            // A member twice is refused here as the daemon refuses it, not sent with one of them.
            let params =
                crate::rpc::parse_strict(&params).map_err(|(path, e)| match path.as_str() {
                    "" => format!("params are not JSON: {e}"),
                    _ => format!("params.{e}"),
                })?;
            let result = call(&socket, &method, params)?;
            out!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn call(socket: &Path, method: &str, params: Value) -> Result<Value, String> {
    client::call(socket, method, params).map_err(|e| match e {
        CallError::Rpc {
            message,
            data: Some(data),
            ..
        } => {
            let mut m = message;
            if let Some(doc) = data.get("document").and_then(Value::as_u64) {
                if !m.contains("document") {
                    m = format!("document {doc}: {m}");
                }
            }
            m
        }
        other => other.to_string(),
    })
}

fn run_daemon(
    socket: &Path,
    workers: usize,
    prefix: &str,
    started_by_lab: bool,
    conntrack: ConntrackConfig,
    busy_poll: Duration,
) -> Result<ExitCode, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let config = DaemonConfig {
        socket: socket.to_path_buf(),
        workers,
        prefix: prefix.to_string(),
        started_by_lab,
        exe,
        conntrack,
        busy_poll,
    };
    let daemon = Daemon::start(config)?;
    install_signal_handlers(Arc::clone(&daemon))?;
    let served = daemon.serve();
    crate::daemon::log("stopping");
    daemon.stop();
    served?;
    Ok(ExitCode::SUCCESS)
}

fn install_signal_handlers(daemon: Arc<Daemon>) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        // The terminal `pacific daemon` runs in closes (an ssh session ends): stopped as by
        // Ctrl-C, not killed with the lab left behind.
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("pacific-signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                daemon.request_shutdown();
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The options `lab up` starts a daemon with (when none answers on the socket).
struct LabDaemon {
    workers: Option<usize>,
    busy_poll_us: Option<u64>,
    conntrack_max: Option<usize>,
    conntrack_timeouts: Vec<String>,
}

impl LabDaemon {
    /// Whether any option beyond the defaults was given (a running daemon keeps its own).
    fn given(&self) -> bool {
        self.workers.is_some()
            || self.busy_poll_us.is_some()
            || self.conntrack_max.is_some()
            || !self.conntrack_timeouts.is_empty()
    }

    /// The daemon's arguments for them.
    fn args(&self) -> Vec<String> {
        let workers = self.workers.unwrap_or_else(default_workers);
        let mut args = vec!["--workers".to_string(), workers.to_string()];
        args.extend(self.busy_poll_us.map(|us| format!("--busy-poll-us={us}")));
        args.extend(self.conntrack_max.map(|n| format!("--conntrack-max={n}")));
        args.extend(
            self.conntrack_timeouts
                .iter()
                .map(|t| format!("--conntrack-timeout={t}")),
        );
        args
    }
}

fn lab_up(
    socket: &Path,
    file: Option<&Path>,
    prefix: Option<&str>,
    daemon: &LabDaemon,
) -> Result<ExitCode, String> {
    // Bad table options are refused before anything starts, as the daemon would refuse them.
    conntrack_config(
        daemon.conntrack_max.unwrap_or(DEFAULT_CONNTRACK_MAX),
        &daemon.conntrack_timeouts,
    )?;
    // A directory too, as `apply -f DIR` reads it.
    let manifest = match file {
        Some(f) => read_manifests(&[f.to_path_buf()])?,
        None => ManifestText {
            text: SEED_LAB.to_string(),
            sources: Vec::new(),
            name_files: false,
            from_names: false,
        },
    };
    let started = match client::call(socket, "daemon.status", json!({})) {
        Ok(status) => {
            refuse_other_prefix(socket, prefix, status["prefix"].as_str())?;
            if daemon.given() {
                eprintln!(
                    "note: a daemon already answers on {}: it keeps the options it was started \
                     with (`pacific rpc daemon.status` shows them)",
                    socket.display()
                );
            }
            false
        }
        Err(_) => {
            // The daemon clears what a dead one left (`record::clear_stale`); said here too, where
            // the user looks, not only in the daemon's log.
            let stale = LabRecord::load(&record_path_for(socket)).ok().flatten();
            if stale.is_some_and(|r| !r.daemon_lives()) {
                eprintln!(
                    "note: the last daemon on {} died without cleaning up: its namespaces and \
                     processes are removed first",
                    socket.display()
                );
            }
            start_daemon(socket, prefix.unwrap_or(DEFAULT_PREFIX), daemon)?;
            true
        }
    };
    let result = match client::call(socket, "apply", json!({ "manifest": manifest.text })) {
        Ok(result) => result,
        Err(e) => {
            let error = manifest.error("apply", e);
            if !started {
                return Err(error);
            }
            // Nothing of the file was applied: the daemon this `lab up` started, and its
            // upstream router, would be all there is of the lab. They go, as they came.
            stop_started_daemon(socket, prefix.unwrap_or(DEFAULT_PREFIX));
            return Err(format!(
                "{error}\n(nothing applied: the daemon `lab up` started is stopped again)"
            ));
        }
    };
    let code = print_apply(&result);
    print_summary(socket)?;
    let problems = strings_of(&result, "errors");
    if !problems.is_empty() {
        // Said again after the summary, where it would scroll out of sight.
        eprintln!(
            "error: the lab is up, but {} thing(s) of it could not be built (above)",
            problems.len()
        );
    }
    Ok(code)
}

/// Stops the daemon `lab up` just started on `socket`, as `lab down` would, and waits for it.
fn stop_started_daemon(socket: &Path, prefix: &str) {
    let pid = client::call(socket, "daemon.status", json!({}))
        .ok()
        .and_then(|status| status.get("pid").and_then(Value::as_u64))
        .and_then(|pid| u32::try_from(pid).ok());
    let _ = client::call(socket, "daemon.shutdown", json!({}));
    if let Some(pid) = pid {
        wait_for_shutdown(pid, prefix);
    }
}

/// Starts `pacific daemon` in the background, detached, logging beside the socket, and waits
/// for it to answer.
fn start_daemon(socket: &Path, prefix: &str, daemon: &LabDaemon) -> Result<(), String> {
    crate::daemon::check_socket_path(socket)?;
    let dir = socket.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let log_path = log_path_for(socket);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(exe)
        .arg("--socket")
        .arg(socket)
        .args(["daemon", "--prefix", prefix, "--started-by-lab"])
        .args(daemon.args())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if client::daemon_answers(socket) {
            // The daemon outlives us; a thread would only wait for it in vain.
            std::mem::forget(child);
            return Ok(());
        }
        // A daemon another `lab up` started at the same time holds the socket's lock, and
        // ours gave way to it: that one answers soon.
        if let Ok(Some(status)) = child.try_wait() {
            if matches!(crate::daemon::lock_socket(socket), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(format!(
                "the daemon exited ({status}) before answering; its log {} ends with:\n{}",
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "the daemon did not answer on {} within 30 s (log: {})",
        socket.display(),
        log_path.display()
    ))
}

/// The prefix of a daemon (or lab record) that no `--prefix` names.
const DEFAULT_PREFIX: &str = "pac";

/// An error when `--prefix` was given and the lab on `socket` has another: `lab up --prefix
/// mine` or `lab down --prefix mine` without `--socket` must not apply to, or remove, the lab
/// on the default socket.
fn refuse_other_prefix(
    socket: &Path,
    given: Option<&str>,
    found: Option<&str>,
) -> Result<(), String> {
    match (given, found) {
        (Some(given), Some(found)) if !found.is_empty() && given != found => Err(format!(
            "the lab on {} has the prefix {found}, not {given}: nothing done (give the \
             {given} lab's socket with --socket)",
            socket.display()
        )),
        _ => Ok(()),
    }
}

/// How long `lab down` waits for a daemon's status before it takes the daemon for hung.
const HUNG_AFTER: Duration = Duration::from_secs(10);

fn lab_down(socket: &Path, given_prefix: Option<&str>) -> Result<ExitCode, String> {
    let record_path = record_path_for(socket);
    let record = LabRecord::load(&record_path).ok().flatten();
    // A daemon that is hung (stopped, deadlocked) kept `lab down` waiting for minutes on end.
    let mut killed = false;
    let status = match client::call_within(socket, "daemon.status", json!({}), HUNG_AFTER) {
        Err(CallError::NoAnswer(why)) => {
            let hung = record
                .as_ref()
                .filter(|r| r.daemon_started_by_lab && r.daemon_lives())
                .and_then(|r| r.daemon_pid);
            let Some(pid) = hung else {
                return Err(format!(
                    "{why}: nothing done (it was not started by `lab up`)"
                ));
            };
            // The lab's own daemon: ended as a dead one, and what it left removed from the
            // record as after a SIGKILL.
            eprintln!("note: {why}: its process {pid} is ended");
            crate::lab::netns::terminate_pids(&[pid], Duration::from_secs(1));
            killed = true;
            None
        }
        other => other.ok(),
    };
    let found = status
        .as_ref()
        .and_then(|s| s["prefix"].as_str())
        .or(record.as_ref().map(|r| r.prefix.as_str()));
    refuse_other_prefix(socket, given_prefix, found)?;
    let prefix = given_prefix.unwrap_or(DEFAULT_PREFIX);
    let prefix = record.as_ref().map_or(prefix.to_string(), |r| {
        if r.prefix.is_empty() {
            prefix.to_string()
        } else {
            r.prefix.clone()
        }
    });
    if killed {
        // Its threads close its TAPs (the T0 uplink too) as they exit, after it is a zombie.
        let deadline = Instant::now() + Duration::from_secs(10);
        while served_elsewhere(&prefix, record.as_ref()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if status.is_none() && served_elsewhere(&prefix, record.as_ref()) {
        return Err(format!(
            "no daemon answers on {}, but one of the prefix {prefix} runs (its T0 uplink in \
             {prefix}-upstream is open): nothing done; give that daemon's --socket",
            socket.display()
        ));
    }
    let namespaces_before = crate::lab::netns::list_netns_with_prefix(&format!("{prefix}-"))
        .map(|v| v.len())
        .unwrap_or(0);
    let nothing_there = status.is_none() && record.is_none() && namespaces_before == 0;
    let mut stopped = None;
    // A daemon the lab did not start goes on running: its upstream router (with the T0 uplink)
    // stays, or the next `lab up` against it would find no outside world.
    let mut keep = Vec::new();
    if let Some(status) = status {
        let ours = status
            .get("started_by_lab")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if ours {
            let pid = status.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32;
            let _ = client::call(socket, "daemon.shutdown", json!({}));
            wait_for_shutdown(pid, &prefix);
            stopped = Some(pid);
        } else {
            let _ = client::call(socket, "lab.reset", json!({}));
            let daemon_prefix = status
                .get("prefix")
                .and_then(Value::as_str)
                .unwrap_or(&prefix);
            keep.push(format!("{daemon_prefix}-upstream"));
        }
    }
    let summary = teardown(&record_path, &prefix, &keep).map_err(|e| e.to_string())?;
    // Only a dead daemon's socket: a file a mistyped `--socket` names stays.
    if !client::daemon_answers(socket) && crate::daemon::check_socket_path(socket).is_ok() {
        let _ = std::fs::remove_file(socket);
    }
    let remaining =
        crate::lab::netns::list_netns_with_prefix(&format!("{prefix}-")).unwrap_or_default();
    let left = remaining.iter().filter(|ns| !keep.contains(ns)).count();
    let removed = namespaces_before.saturating_sub(remaining.len());
    for line in lab_down_report(socket, nothing_there, stopped, removed, &summary) {
        out!("{line}");
    }
    if left > 0 {
        return Err(format!(
            "{left} namespace(s) named {prefix}-* could not be removed"
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a daemon of `prefix` lives that is not the one `record` names: its T0 uplink TAP is
/// there, and a TAP (not persistent) is there only while a daemon holds it open. `lab down`
/// with a forgotten `--socket` but the right `--prefix` found no daemon and no record on its
/// socket, and swept every `{prefix}-*` namespace from under the daemon serving them.
fn served_elsewhere(prefix: &str, record: Option<&LabRecord>) -> bool {
    use crate::lab::netns;
    let recorded_lives = record
        .and_then(|r| r.daemon_pid)
        .is_some_and(netns::pid_alive);
    let upstream = format!("{prefix}-upstream");
    // The daemon names its uplink `uplink` (`Daemon::start`).
    !recorded_lives && netns::netns_exists(&upstream) && netns::link_exists(&upstream, "uplink")
}

/// What `lab down` prints: what it stopped and removed, the leftovers line only when there were
/// leftovers, and one plain line when there was no lab at all.
/// Waits for the lab's daemon to exit while it is still removing namespaces: a large lab (some
/// hundreds of pods) takes longer than any fixed wait. Gives up after 20 s without progress;
/// the record then lets the caller clean up what the daemon left.
fn wait_for_shutdown(pid: u32, prefix: &str) {
    const STALL: Duration = Duration::from_secs(20);
    let count = || {
        crate::lab::netns::list_netns_with_prefix(&format!("{prefix}-"))
            .map(|v| v.len())
            .unwrap_or(0)
    };
    let mut left = count();
    let mut progress_at = Instant::now();
    let mut checked_at = Instant::now();
    while crate::lab::netns::pid_alive(pid) && progress_at.elapsed() < STALL {
        std::thread::sleep(Duration::from_millis(50));
        if checked_at.elapsed() >= Duration::from_millis(500) {
            checked_at = Instant::now();
            let now = count();
            if now < left {
                left = now;
                progress_at = Instant::now();
            }
        }
    }
}

fn lab_down_report(
    socket: &Path,
    nothing_there: bool,
    stopped: Option<u32>,
    removed: usize,
    summary: &crate::lab::record::TeardownSummary,
) -> Vec<String> {
    if nothing_there && *summary == Default::default() {
        return vec![format!(
            "lab down: no lab on {} (no daemon answers, none recorded): nothing to remove",
            socket.display()
        )];
    }
    let mut lines = vec![match stopped {
        Some(pid) => {
            format!(
                "lab down: stopped the lab's daemon (pid {pid}); {removed} namespace(s) removed"
            )
        }
        None => format!("lab down: {removed} namespace(s) removed"),
    }];
    if *summary != Default::default() {
        lines.push(format!("lab down: leftovers cleaned: {summary}"));
    }
    lines
}

fn read_manifest(path: &Path) -> Result<String, String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}

/// What `-f` gave (or `delete KIND NAME...` made): the manifest sent, and where each of its
/// documents came from, so that an error names the file and the document in it.
#[derive(Debug)]
struct ManifestText {
    text: String,
    /// Each file's name and how many documents of `text` are its, in order.
    sources: Vec<(String, usize)>,
    /// Whether errors name the file: several files, or files found in a directory (one file
    /// named on the command line is the file the user means).
    name_files: bool,
    /// Made from `delete KIND NAME...`: no file and no document to speak of.
    from_names: bool,
}

impl ManifestText {
    fn of_names(text: String) -> ManifestText {
        ManifestText {
            text,
            sources: Vec::new(),
            name_files: false,
            from_names: true,
        }
    }

    /// The file (and the document in it) of `document`, 1-based in the whole text.
    fn locate(&self, document: u64) -> Option<(&str, u64)> {
        let mut first = 1u64;
        for (name, count) in &self.sources {
            let count = *count as u64;
            if document < first.saturating_add(count) {
                return Some((name, document - first + 1));
            }
            first = first.saturating_add(count);
        }
        None
    }

    /// `text` with each `document N` of the joined manifest (`also in document 3`) as the
    /// file's and its document.
    fn relocate(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("document ") {
            let (before, after) = rest.split_at(at + "document ".len());
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let found = after[..digits].parse().ok().and_then(|d| self.locate(d));
            match found {
                Some((file, k)) => {
                    out.push_str(&before[..at]);
                    out.push_str(&format!("{file}: document {k}"));
                }
                None => {
                    out.push_str(before);
                    out.push_str(&after[..digits]);
                }
            }
            rest = &after[digits..];
        }
        out.push_str(rest);
        out
    }

    /// The daemon's error, with the file and its document for `document N`, and kubectl's
    /// `Error from server (NotFound): services "web" not found` for an object not there.
    fn error(&self, verb: &str, e: CallError) -> String {
        let CallError::Rpc {
            code,
            message,
            data: Some(data),
        } = e
        else {
            return e.to_string();
        };
        let document = data.get("document").and_then(Value::as_u64);
        let at = document.and_then(|d| self.locate(d));
        let kind = data["kind"].as_str().and_then(Kind::from_kind);
        let name = data["name"].as_str();
        if let (crate::rpc::code::NOT_FOUND, Some("metadata.name"), Some(kind), Some(name)) =
            (code, data["field"].as_str(), kind, name)
        {
            let object = format!("{} {name:?} not found", kind.plural());
            return match at {
                Some((file, _)) if !self.from_names => {
                    format!("Error from server (NotFound): error when {verb}ing {file:?}: {object}")
                }
                _ => format!("Error from server (NotFound): {object}"),
            };
        }
        // `delete KIND NAME...`: no file, no document; the object as kubectl names it.
        if let (true, Some(kind), Some(name)) = (self.from_names, kind, name) {
            let field = data["field"].as_str().unwrap_or_default();
            let plain = message
                .split_once("): ")
                .map_or(message.as_str(), |(_, m)| m);
            let plain = plain.strip_prefix(&format!("{field}: ")).unwrap_or(plain);
            return format!("{}/{name}: {plain}", kind.resource());
        }
        let Some(d) = document else {
            return message;
        };
        let lead = format!("document {d}");
        // The message's own `document N` (not the start of `document N0`).
        let rest = message
            .strip_prefix(&lead)
            .filter(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()));
        match (at.filter(|_| self.name_files), rest) {
            (Some((file, k)), Some(rest)) => {
                format!("{file}: document {k}{}", self.relocate(rest))
            }
            (Some((file, k)), None) => {
                format!("{file}: document {k}: {}", self.relocate(&message))
            }
            (None, Some(_)) => message,
            (None, None) if self.from_names => message,
            (None, None) => format!("{lead}: {message}"),
        }
    }
}

/// The manifests of `-f` arguments, as kubectl reads them: files in the order given, a
/// directory's `.yaml`, `.yml` and `.json` files in name order (not its subdirectories), `-`
/// standard input. One file is sent as it is; several are joined, each after a `---` of its
/// own, so that each document keeps its place and an error can name its file.
fn read_manifests(paths: &[PathBuf]) -> Result<ManifestText, String> {
    // As kubectl: standard input is read once; a second `-` would get nothing (or be taken as
    // another copy of the same objects).
    if paths.iter().filter(|p| *p == Path::new("-")).count() > 1 {
        return Err("standard input cannot be used for multiple arguments".to_string());
    }
    let mut files: Vec<(String, String)> = Vec::new();
    let mut from_directory = false;
    for path in paths {
        if path == Path::new("-") {
            files.push(("-".to_string(), read_manifest(path)?));
            continue;
        }
        let meta =
            std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !meta.is_dir() {
            files.push((path.display().to_string(), read_manifest(path)?));
            continue;
        }
        from_directory = true;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
            })
            .collect();
        entries.sort();
        if entries.is_empty() {
            return Err(format!(
                "{}: the directory holds no .yaml, .yml or .json file",
                path.display()
            ));
        }
        for entry in entries {
            files.push((entry.display().to_string(), read_manifest(&entry)?));
        }
    }
    if let [(name, text)] = &files[..] {
        return Ok(ManifestText {
            sources: vec![(name.clone(), usize::MAX)],
            text: text.clone(),
            name_files: from_directory,
            from_names: false,
        });
    }
    let mut text = String::new();
    let mut sources = Vec::with_capacity(files.len());
    for (name, file) in files {
        let (part, documents) = manifest_part(&file);
        text.push_str(&part);
        sources.push((name, documents));
    }
    Ok(ManifestText {
        text,
        sources,
        name_files: true,
        from_names: false,
    })
}

/// One file's text as a part of a joined manifest, and how many documents the daemon will count
/// in it (numbered as in the file alone): the file, after a `---` unless it begins with one, or
/// for a file of several JSON objects one after the other (not YAML), each of them so.
fn manifest_part(file: &str) -> (String, usize) {
    use serde::Deserialize as _;
    let file = file.strip_prefix('\u{feff}').unwrap_or(file);
    if file.trim_start().starts_with('{') {
        let objects: Result<Vec<Value>, _> = serde_json::Deserializer::from_str(file)
            .into_iter()
            .collect();
        if let Some(objects) = objects.ok().filter(|o| o.len() > 1) {
            let part = objects.iter().map(|o| format!("---\n{o}\n")).collect();
            return (part, objects.len());
        }
    }
    // A file that begins with its own `---` (after comments) keeps it as its first document's
    // start; any other gets one, so that its first document is not the previous file's last.
    let explicit = file
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .is_some_and(|l| l.starts_with("---"));
    let part = if explicit {
        format!("{file}\n")
    } else {
        format!("---\n{file}\n")
    };
    let mut documents = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(&part) {
        documents += 1;
        // The daemon stops at the first error too: later documents are not counted.
        if serde_yaml_ng::Value::deserialize(doc).is_err() {
            break;
        }
    }
    (part, documents)
}

fn apply(
    socket: &Path,
    method: &str,
    manifest: &ManifestText,
    namespace: Option<&str>,
    cluster: Option<&str>,
    ignore_not_found: bool,
) -> Result<ExitCode, String> {
    let mut params = json!({ "manifest": manifest.text });
    if ignore_not_found {
        params["ignore_not_found"] = json!(true);
    }
    if let Some(ns) = namespace {
        params["namespace"] = json!(ns);
    }
    if let Some(c) = cluster {
        params["cluster"] = json!(c);
    }
    let verb = if method == "delete" { "delet" } else { "apply" };
    let mut result = client::call(socket, method, params).map_err(|e| manifest.error(verb, e))?;
    if method == "delete" {
        if let Some(lines) = result.get_mut("results").and_then(Value::as_array_mut) {
            for line in lines.iter_mut() {
                if let Some(text) = line.as_str().map(deleted_as_kubectl_says) {
                    *line = json!(text);
                }
            }
        }
    }
    Ok(print_apply(&result))
}

/// kubectl's `pod "web" deleted` for the daemon's `pod/web deleted` (`-o name` is kubectl's
/// only `pod/web` form); any other line as it is.
fn deleted_as_kubectl_says(line: &str) -> String {
    match line
        .strip_suffix(" deleted")
        .and_then(|object| object.split_once('/'))
    {
        Some((resource, name)) if !resource.contains(' ') && !name.contains(' ') => {
            format!("{resource} {name:?} deleted")
        }
        _ => line.to_string(),
    }
}

/// Prints what the daemon did with each object, then what it could not build of them (a pod
/// without its TAP, an outside host's test server): the request is applied, but those objects
/// do not work, so the exit code is 1, as kubectl's when some object of a file failed. What
/// still cannot be built of earlier requests (another pod's standing CreateContainerError) is a
/// warning: this apply did not fail for it.
fn print_apply(result: &Value) -> ExitCode {
    for line in result
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out!("{}", line.as_str().unwrap_or_default());
    }
    for w in strings_of(result, "warnings") {
        eprintln!("warning: {w}");
    }
    let errors = strings_of(result, "errors");
    for e in &errors {
        eprintln!("error: {e}");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The daemon's `errors` or `warnings` of an applied request.
fn strings_of(result: &Value, field: &str) -> Vec<String> {
    result
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|w| w.as_str().map_or_else(|| w.to_string(), str::to_string))
        .collect()
}

/// `exec`'s target as the daemon resolves it (NS/NAME): with `-n NS`, kubectl's `POD`,
/// `pod/POD` or `deploy/NAME` in NS.
fn exec_target(target: &str, namespace: Option<&str>) -> Result<String, String> {
    let Some(ns) = namespace else {
        if !target.contains('/') {
            return Err(format!(
                "{target:?}: give NS/POD or ext/HOST (`ns-dev/{target}`), or -n NS {target}"
            ));
        }
        return Ok(target.to_string());
    };
    let name = match target.split_once('/') {
        None => target,
        Some((kind, name)) => match Kind::parse(kind) {
            Some(Kind::Pod | Kind::Deployment) if !name.is_empty() => name,
            _ => {
                return Err(format!(
                "{target:?} with -n {ns}: give POD, pod/POD or deploy/NAME (or NS/POD without -n)"
            ))
            }
        },
    };
    Ok(format!("{ns}/{name}"))
}

/// `exec -n NS deploy/NAME`: the namespace and the deployment's name.
fn exec_deployment<'a>(target: &'a str, namespace: Option<&'a str>) -> Option<(&'a str, &'a str)> {
    let (kind, name) = target.split_once('/')?;
    match Kind::parse(kind) {
        Some(Kind::Deployment) if !name.is_empty() => Some((namespace?, name)),
        _ => None,
    }
}

/// The pod `kubectl exec deploy/NAME` runs in: one of the deployment's running pods, the
/// oldest (then the first by name), as kubectl picks the most active; `None` when it has none
/// running, so that the daemon says why.
fn deployment_pod(pods: &Value, deployment: &str) -> Option<String> {
    pods.get("items")?
        .as_array()?
        .iter()
        .filter(|p| p["owner"].as_str() == Some(deployment))
        .filter(|p| p["status"].as_str() == Some("Running"))
        .filter_map(|p| Some((p["created"].as_u64().unwrap_or(0), p["name"].as_str()?)))
        .min()
        .map(|(_, name)| name.to_string())
}

fn exec(socket: &Path, target: &str, command: &[String]) -> Result<ExitCode, String> {
    let resolved = call(socket, "exec.resolve", json!({ "target": target }))?;
    let netns = resolved
        .get("netns")
        .and_then(Value::as_str)
        .ok_or("the daemon named no namespace")?;
    // Through `sh -c 'exec "$@"'`, so a command that cannot run exits as a shell says it: 127
    // not found, 126 not executable (`ip netns exec` itself says 1 or 255).
    // SIGINT, SIGTERM, SIGHUP or SIGQUIT sent to `pacific exec` alone (`kill -INT`, a
    // script's `timeout`) go on to the command, as kubectl's stream closing ends it: never
    // left running in the pod after `pacific exec` is gone.
    let forwarded = [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ];
    let mut signals = signal_hook::iterator::Signals::new(forwarded)
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let handle = signals.handle();
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c", "exec \"$@\"", "sh"])
        .args(command)
        .spawn()
        .map_err(|e| format!("cannot run ip netns exec: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let forwarder = std::thread::Builder::new()
        .name("pacific-exec-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                // SAFETY: kill(2) on our own child's pid, which is not reaped before this
                // thread is stopped (below), so the pid names no other process.
                unsafe { libc::kill(pid, sig) };
            }
        })
        .map_err(|e| e.to_string())?;
    // Wait for the command to end without reaping it (WNOWAIT), stop forwarding, then reap.
    loop {
        // SAFETY: a zeroed siginfo_t is valid for waitid(2) to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) on our own child with a valid siginfo_t pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    handle.close();
    let _ = forwarder.join();
    let status = child.wait();
    let status = status.map_err(|e| format!("cannot wait for the command: {e}"))?;
    Ok(exit_code_of(status))
}

/// The exit code a shell reports for `status`: the command's own, or 128 + the signal that
/// ended it (143 for SIGTERM, 130 for SIGINT), as `kubectl exec` and `sh` do.
fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig.clamp(0, 127)) as u8),
        (None, None) => ExitCode::from(128 + 9),
    }
}

fn print_summary(socket: &Path) -> Result<(), String> {
    let pods = call(socket, "pods.list", json!({}))?;
    let namespaces = call(socket, "namespaces.list", json!({}))?;
    let outside = call(socket, "outside.list", json!({}))?;
    let services = call(socket, "services.list", json!({}))?;
    out!();
    out!("Namespaces (T1 gateway, segment, egress IP):");
    for ns in rows(&namespaces) {
        out!(
            "  {:<12} {:<16} gateway {:<15} egress {}",
            s(&ns["name"]),
            s(&ns["subnet"]),
            s(&ns["gateway"]),
            s(&ns["egress_ip"])
        );
    }
    out!("Pods:");
    for p in rows(&pods) {
        // A pod the daemon could not build says so here, where the user looks for it.
        let status = match p["status"].as_str() {
            Some(status) if !running(p) => match p["message"].as_str() {
                Some(why) => format!("   {status}: {why}"),
                None => format!("   {status}"),
            },
            _ => String::new(),
        };
        out!(
            "  {:<48} {}{status}",
            format!("{}/{}", s(&p["namespace"]), s(&p["name"])),
            s(&p["ip"])
        );
    }
    out!("Services with VIPs:");
    for svc in rows(&services).filter(|v| !v["external_ip"].is_null()) {
        out!(
            "  {:<48} {} -> VIP {}",
            format!("{}/{}", s(&svc["namespace"]), s(&svc["name"])),
            s(&svc["cluster_ip"]),
            s(&svc["external_ip"])
        );
    }
    // The upstream router is T0's default next hop (the `Uplink` object's peer address).
    let peer = call(socket, "routes.list", json!({}))
        .ok()
        .and_then(|t0| {
            rows(&t0)
                .find(|r| s(&r["prefix"]) == "0.0.0.0/0")
                .map(|r| s(&r["via"]))
        })
        .unwrap_or_else(|| "?".to_string());
    if rows(&outside).next().is_some() {
        out!("Outside hosts (behind the upstream router, {peer}):");
        for h in rows(&outside) {
            out!("  ext/{:<12} {}", s(&h["name"]), s(&h["address"]));
        }
    } else {
        out!("No outside hosts (the upstream router is {peer}).");
    }
    out!();
    let tries = try_commands(&namespaces, &pods, &services, &outside);
    if !tries.is_empty() {
        // Commands to paste: they name the socket when it is not the default one.
        let socket_arg = if socket == Path::new(DEFAULT_SOCKET) {
            String::new()
        } else {
            format!("--socket {} ", socket.display())
        };
        out!("Try:");
        for t in tries {
            out!("  pacific {socket_arg}exec {t}");
        }
    }
    Ok(())
}

/// Example commands that fit the lab as applied: a pod pinging a neighbour, an outside host
/// fetching a VIP, a pod tracing its way out.
fn try_commands(
    namespaces: &Value,
    pods: &Value,
    services: &Value,
    outside: &Value,
) -> Vec<String> {
    let supervisor: Vec<String> = rows(namespaces)
        .filter(|n| n["supervisor"].as_bool() == Some(true))
        .map(|n| s(&n["name"]))
        .collect();
    let mut workload: Vec<&Value> = rows(pods)
        .filter(|p| !supervisor.contains(&s(&p["namespace"])) && p["tkg_node"].is_null())
        // A pod that was not built would answer nothing.
        .filter(|p| running(p))
        .collect();
    // Pods of deployments first: they are the ones with services.
    workload.sort_by_key(|p| p["owner"].is_null());
    // A deployment's name stands for its pod when it has just one.
    let target = |p: &Value| {
        let ns = s(&p["namespace"]);
        let name = match p["owner"].as_str() {
            Some(owner)
                if rows(pods)
                    .filter(|q| q["owner"].as_str() == Some(owner) && s(&q["namespace"]) == ns)
                    .count()
                    == 1 =>
            {
                owner.to_string()
            }
            _ => s(&p["name"]),
        };
        format!("{ns}/{name}")
    };
    let mut tries = Vec::new();
    if let Some(a) = workload.first() {
        if let Some(b) = workload
            .iter()
            .skip(1)
            .find(|b| b["namespace"] == a["namespace"])
        {
            tries.push(format!("{} -- ping -c1 {}", target(a), s(&b["ip"])));
        }
    }
    let host = rows(outside).next();
    // The service's first TCP port (`80:30000/TCP,53:30002/UDP`): curl speaks nothing else.
    let first_port = |v: &Value| -> Option<String> {
        s(&v["ports"])
            .split(',')
            .find(|p| p.ends_with("/TCP"))
            .and_then(|p| p.split([':', '/']).next())
            .map(str::to_string)
    };
    // A VIP that answers: a service with ready endpoints (one whose selector matches nothing
    // refuses every connection), port 80 if one has it.
    let vip = rows(services)
        .filter(|v| !v["external_ip"].is_null() && v["type"] == "LoadBalancer")
        .filter(|v| v["endpoints"].as_array().is_some_and(|e| !e.is_empty()))
        .filter_map(|v| first_port(v).map(|port| (v, port)))
        .min_by_key(|(_, port)| port != "80");
    if let (Some(h), Some((v, port))) = (host, vip) {
        let url = if port == "80" {
            format!("http://{}/", s(&v["external_ip"]))
        } else {
            format!("http://{}:{port}/", s(&v["external_ip"]))
        };
        tries.push(format!("ext/{} -- curl -s {url}", s(&h["name"])));
    }
    if let (Some(a), Some(h)) = (workload.first(), rows(outside).last()) {
        let addr = s(&h["address"]);
        let ip = addr.split('/').next().unwrap_or_default();
        tries.push(format!("{} -- traceroute -n {ip}", target(a)));
    }
    tries
}

/// Whether `pods.list` shows the pod running (a row without a status counts as running).
fn running(pod: &Value) -> bool {
    pod["status"]
        .as_str()
        .is_none_or(|status| status == "Running")
}

fn rows(v: &Value) -> impl Iterator<Item = &Value> {
    v.get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// A JSON value as table text: strings bare, null as `<none>` (as `describe` shows it too).
use crate::describe::text as s;

/// `kubectl`'s AGE: 45s, 12m, 5h, 3d.
pub fn age(created: u64, now: u64) -> String {
    let d = now.saturating_sub(created);
    match d {
        0..=119 => format!("{d}s"),
        120..=7199 => format!("{}m", d / 60),
        7200..=172_799 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86400),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Prints rows as a kubectl-style table: upper-case headers, columns padded, three spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{:<w$}   ", cell, w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// A kind as typed, lower case, kubectl's `RESOURCE.GROUP` (what `-o name` prints:
/// `deployment.apps`, `outsidehost.pacific.dev`) as the resource Pacific's verbs take.
fn without_group(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    match k.as_str() {
        "deployment.apps" | "deployments.apps" => "deployments".into(),
        "outsidehost" | "outsidehosts" | "outsidehost.pacific.dev" | "outsidehosts.pacific.dev" => {
            "outside".into()
        }
        "tanzukubernetescluster.run.tanzu.vmware.com"
        | "tanzukubernetesclusters.run.tanzu.vmware.com" => "tkc".into(),
        "networkpolicy.networking.k8s.io" | "networkpolicies.networking.k8s.io" => {
            "networkpolicies".into()
        }
        _ => k,
    }
}

/// The `*.list` method of a kind as typed (kubectl's short names and plurals, any case).
fn list_method(kind: &str) -> Result<&'static str, String> {
    Ok(match without_group(kind).as_str() {
        "namespaces" | "namespace" | "ns" => "namespaces.list",
        "pods" | "pod" | "po" => "pods.list",
        "segments" | "segment" | "seg" => "segments.list",
        "routes" | "route" => "routes.list",
        "ports" | "port" => "ports.list",
        "services" | "service" | "svc" => "services.list",
        "endpoints" | "ep" => "endpoints.list",
        "dfw" | "rules" | "firewall" => "dfw.list",
        "nat" => "nat.list",
        "outside" | "ext" | "hosts" => "outside.list",
        "deployments" | "deployment" | "deploy" => "deployments.list",
        "tkc" | "tanzukubernetesclusters" | "tanzukubernetescluster" => "tkc.list",
        "networkpolicies" | "networkpolicy" | "netpol" => "networkpolicies.list",
        other => {
            return Err(format!(
                "unknown kind {other:?}: expected namespaces, pods, segments, routes, ports, svc, endpoints, dfw, nat, outside, deployments, tkc, netpol or all"
            ))
        }
    })
}

/// `get pods,svc` and `get all` (pods, services, deployments, TKG clusters, as kubectl's
/// `all` holds the workloads and services): one listing after the other, each name as
/// `pod/web`, kinds with nothing left out.
fn get(socket: &Path, args: &GetArgs) -> Result<ExitCode, String> {
    // Each kind's method and the names asked of it, in the order given.
    let mut wanted: Vec<(&str, Vec<String>)> = Vec::new();
    if args.kind.contains('/') {
        // `get pod/web svc/web`, as kubectl takes it.
        for target in std::iter::once(&args.kind).chain(&args.names) {
            let Some((kind, name)) = target
                .split_once('/')
                .filter(|(k, n)| !k.is_empty() && !n.is_empty())
            else {
                return Err(format!(
                    "{target:?}: expected KIND/NAME, as the objects before it (or KIND NAME...)"
                ));
            };
            let method = list_method(kind)?;
            match wanted.iter_mut().find(|(m, _)| *m == method) {
                Some((_, names)) => names.push(name.to_string()),
                None => wanted.push((method, vec![name.to_string()])),
            }
        }
    } else if args.kind.eq_ignore_ascii_case("all") {
        for method in ["pods.list", "services.list", "deployments.list", "tkc.list"] {
            wanted.push((method, Vec::new()));
        }
    } else {
        for kind in args.kind.split(',') {
            let method = list_method(kind)?;
            if !wanted.iter().any(|(m, _)| *m == method) {
                wanted.push((method, args.names.clone()));
            }
        }
    }
    let several = wanted.len() > 1;
    if several {
        if !args.names.is_empty() && !args.kind.contains('/') {
            return Err(format!(
                "`pacific get {}` takes no NAME: name one kind (`pacific get svc web`) or \
                 KIND/NAME each (`pacific get pod/web svc/web`)",
                args.kind
            ));
        }
        if let Some((m, _)) = wanted
            .iter()
            .find(|(m, _)| matches!(*m, "routes.list" | "nat.list"))
        {
            return Err(format!(
                "`{}` lists alone: it is no table of named objects",
                m.trim_end_matches(".list")
            ));
        }
    }
    let selector = args.selector.as_deref().map(parse_selector).transpose()?;
    let namespace = args.namespace.as_ref().filter(|_| !args.all_namespaces);
    let mut results = Vec::new();
    // As kubectl: the objects found are shown, and each one not found is an error after them.
    let mut missing = Vec::new();
    for (method, names) in &wanted {
        let mut result = if names.is_empty() {
            fetch(socket, &args.kind, method, None, namespace)?
        } else {
            let mut merged: Option<Value> = None;
            for name in names {
                match fetch(socket, &args.kind, method, Some(name), namespace) {
                    Ok(r) => match merged.as_mut().and_then(|m| m["items"].as_array_mut()) {
                        Some(items) => items.extend(rows(&r).cloned()),
                        None => merged = Some(r),
                    },
                    Err(e) if e.starts_with("Error from server (NotFound)") => missing.push(e),
                    Err(e) => return Err(e),
                }
            }
            match merged {
                Some(r) => r,
                None => continue,
            }
        };
        if let (Some(selector), Some(items)) = (&selector, result["items"].as_array_mut()) {
            if *method == "routes.list" {
                return Err("`get routes` takes no -l: routes have no labels".to_string());
            }
            items.retain(|item| selector.iter().all(|r| r.matches(&item["labels"])));
        }
        results.push((*method, result));
    }
    if missing.is_empty() {
        return show(args, several, namespace, &results);
    }
    if results.is_empty() {
        // Nothing to show: no empty listing, no `null` for a script to take as an answer.
        if missing.len() == 1 {
            return Err(missing.remove(0));
        }
    } else {
        show(args, several, namespace, &results)?;
    }
    for m in missing {
        eprintln!("{m}");
    }
    Ok(ExitCode::from(1))
}

/// `describe KIND NAME` (or `KIND/NAME`): the object `get` finds, laid out as kubectl
/// describes it; several (no NAME, or one name in several namespaces) one after the other.
fn describe(
    socket: &Path,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&String>,
) -> Result<ExitCode, String> {
    let (kind, name) = match kind.split_once('/') {
        Some((k, n)) if name.is_none() && !k.is_empty() && !n.is_empty() => (k, Some(n)),
        Some(_) => {
            return Err(format!(
                "{kind:?}: expected KIND NAME or KIND/NAME (`pacific describe svc/web`)"
            ))
        }
        None => (kind, name),
    };
    let method = list_method(kind)?;
    let layout: fn(&Value) -> String = match method {
        "services.list" => describe::service,
        "pods.list" => describe::pod,
        "namespaces.list" => describe::namespace,
        _ => {
            return Err(format!(
                "`pacific describe {kind}`: describe takes svc, pods or ns (`pacific get {kind}` lists them)"
            ))
        }
    };
    let name = name.map(str::to_string);
    let result = fetch(socket, kind, method, name.as_ref(), namespace)?;
    let texts: Vec<String> = rows(&result).map(layout).collect();
    if texts.is_empty() {
        no_resources(namespace);
    }
    out_raw!("{}", texts.join("\n\n"));
    Ok(ExitCode::SUCCESS)
}

/// Prints the listings `get` fetched, in the output asked for.
fn show(
    args: &GetArgs,
    several: bool,
    namespace: Option<&String>,
    results: &[(&str, Value)],
) -> Result<ExitCode, String> {
    match args.output {
        Some(Output::Json | Output::Yaml) => {
            // Several kinds: one list, each item saying its kind (as kubectl's `List`).
            let answer = if several {
                let items: Vec<Value> = results
                    .iter()
                    .flat_map(|(method, result)| {
                        rows(result).map(move |item| {
                            let mut item = item.clone();
                            item["kind"] = json!(kind_of(method));
                            item
                        })
                    })
                    .collect();
                json!({ "items": items })
            } else {
                let result = results.last().map(|(_, r)| r.clone()).unwrap_or_default();
                // One object asked for by name (`get svc web`, `get svc/web`): the object
                // itself, as kubectl prints it, not a list of one.
                let named = args.names.len() + usize::from(args.kind.contains('/'));
                match rows(&result).collect::<Vec<_>>()[..] {
                    [item] if named == 1 => item.clone(),
                    _ => result,
                }
            };
            let answer = as_kubectl_list(answer);
            if args.output == Some(Output::Json) {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&answer).unwrap_or_default()
                );
            } else {
                let text = serde_yaml_ng::to_string(&answer)
                    .map_err(|e| format!("cannot print the answer as YAML: {e}"))?;
                out_raw!("{text}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(Output::Name) => {
            for (method, result) in results {
                let resource = name_resource(method)?;
                for item in rows(result) {
                    out!("{resource}/{}", s(&item["name"]));
                }
            }
            if results.iter().all(|(_, r)| rows(r).next().is_none()) {
                no_resources(namespace);
            }
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let wide = args.output == Some(Output::Wide);
    let now = now();
    let mut tables = Vec::new();
    for (method, result) in results {
        let items: Vec<&Value> = rows(result).collect();
        if *method == "routes.list" {
            tables.push(routes_text(result, now));
            continue;
        }
        if items.is_empty() {
            continue;
        }
        // A supervisor namespace's listing holds its TKG clusters' objects too (`NS/CLUSTER`):
        // it spans namespaces then, and NAMESPACE tells a guest's `web` from the namespace's.
        let spans = items
            .iter()
            .any(|v| v["namespace"].as_str().is_some_and(|n| n.contains('/')));
        let mut columns = columns(method, namespace.is_none() || spans, wide, now);
        if several {
            let resource = name_resource(method)?;
            for c in columns.iter_mut().filter(|c| c.0 == "NAME") {
                c.1 = Box::new(move |v: &Value| format!("{resource}/{}", s(&v["name"])));
            }
        }
        if args.show_labels {
            columns.push(pairs("LABELS", "labels", "="));
        }
        let headers: Vec<&str> = columns.iter().map(|c| c.0).collect();
        let cells: Vec<Vec<String>> = items
            .iter()
            .map(|v| columns.iter().map(|c| (c.1)(v)).collect())
            .collect();
        let text = table(&headers, &cells);
        if args.no_headers {
            let body = text.split_once('\n').map_or("", |(_, rest)| rest);
            tables.push(body.to_string());
        } else {
            tables.push(text);
        }
    }
    if tables.is_empty() {
        no_resources(namespace);
        return Ok(ExitCode::SUCCESS);
    }
    // Without headers, one row a line and nothing else (no blank line between kinds).
    let between = if args.no_headers { "" } else { "\n" };
    out_raw!("{}", tables.join(between));
    Ok(ExitCode::SUCCESS)
}

/// A listing as kubectl prints one with `-o json`/`-o yaml`, empty or not: `kind: List`,
/// `apiVersion: v1` and `metadata` beside its `items` (an object asked for by name as it is).
fn as_kubectl_list(mut answer: Value) -> Value {
    if let Some(map) = answer.as_object_mut().filter(|m| m.contains_key("items")) {
        map.entry("apiVersion").or_insert(json!("v1"));
        map.entry("kind").or_insert(json!("List"));
        map.entry("metadata")
            .or_insert(json!({ "resourceVersion": "" }));
    }
    answer
}

/// kubectl's words for an empty listing (on stderr, exit 0).
fn no_resources(namespace: Option<&String>) {
    match namespace {
        Some(ns) => eprintln!("No resources found in {ns} namespace."),
        None => eprintln!("No resources found"),
    }
}

/// One kind's listing, as the daemon answers it: NAME picked out, a NAME not there an error.
fn fetch(
    socket: &Path,
    kind: &str,
    method: &str,
    name: Option<&String>,
    namespace: Option<&String>,
) -> Result<Value, String> {
    let mut params = json!({});
    let takes_name = !matches!(
        method,
        "routes.list" | "ports.list" | "dfw.list" | "nat.list" | "outside.list"
    );
    // Outside hosts are named objects too, though their list takes no name: picked out here.
    let pick = (method == "outside.list")
        .then_some(name.map(String::as_str))
        .flatten();
    // As kubectl: `-A` lists every namespace even when `-n` names one; namespaces and outside
    // hosts are in no namespace, and `-n` does not narrow them (`get ns -n x` lists them all).
    if let Some(ns) = namespace {
        if !matches!(method, "outside.list" | "namespaces.list") {
            params["namespace"] = json!(ns);
        }
    }
    if let Some(name) = name {
        if !takes_name && pick.is_none() {
            return Err(format!("`pacific get {kind}` takes no NAME"));
        }
        if takes_name {
            params["name"] = json!(name);
        }
    }
    // Endpoints are the services' own (`services.list` has each one's): listed as kubectl's
    // `get endpoints`, one per service with a selector or with Endpoints applied.
    let rpc = if method == "endpoints.list" {
        "services.list"
    } else {
        method
    };
    let mut result = match client::call(socket, rpc, params) {
        Ok(result) => result,
        // A namespace that is not there holds nothing: as kubectl, `get pods -n missing` is
        // `No resources found in missing namespace.` (exit 0), `-o json` an empty list, and
        // `get pod web -n missing` is `pods "web" not found`. Routes are one namespace's
        // gateway, no list of objects: a namespace not there has none to show.
        Err(CallError::Rpc { code, data, .. })
            if code == crate::rpc::code::NOT_FOUND
                && data
                    .as_ref()
                    .is_some_and(|d| d["field"] == "params.namespace") =>
        {
            if method == "routes.list" {
                return Err(format!(
                    "Error from server (NotFound): namespaces {:?} not found",
                    namespace.map_or("", String::as_str)
                ));
            }
            json!({ "items": [] })
        }
        Err(other) => return Err(other.to_string()),
    };
    if let (Some(name), Some(items)) = (pick, result["items"].as_array_mut()) {
        items.retain(|item| item["name"].as_str() == Some(name));
    }
    if method == "endpoints.list" {
        if let Some(items) = result["items"].as_array_mut() {
            items.retain(|svc| {
                !svc["selector"].is_null()
                    || svc["endpoints"].as_array().is_some_and(|e| !e.is_empty())
            });
            for svc in items.iter_mut() {
                *svc = json!({
                    "name": svc["name"],
                    "namespace": svc["namespace"],
                    "labels": svc["labels"],
                    "endpoints": svc["endpoints"],
                    "created": svc["created"],
                });
            }
        }
    }
    // A named object that is not there is an error, as kubectl has it, in every output format.
    if let Some(name) = name.filter(|_| rows(&result).next().is_none()) {
        if method != "routes.list" {
            return Err(format!(
                "Error from server (NotFound): {} {name:?} not found",
                resource_of(method)
            ));
        }
    }
    Ok(result)
}

/// The manifest kind of a listing's rows (`kind` of each item when kinds are listed together).
fn kind_of(method: &str) -> &'static str {
    match method {
        "namespaces.list" => "Namespace",
        "pods.list" => "Pod",
        "segments.list" => "Segment",
        "ports.list" => "Port",
        "services.list" => "Service",
        "endpoints.list" => "Endpoints",
        "dfw.list" => "Rule",
        "outside.list" => "OutsideHost",
        "deployments.list" => "Deployment",
        "tkc.list" => "TanzuKubernetesCluster",
        "networkpolicies.list" => "NetworkPolicy",
        _ => "",
    }
}

/// What `-o name` and a listing of several kinds put before a name: kubectl's `pod/web`,
/// `deployment.apps/web`.
fn name_resource(method: &str) -> Result<&'static str, String> {
    Ok(match method {
        "namespaces.list" => "namespace",
        "pods.list" => "pod",
        "segments.list" => "segment",
        "ports.list" => "port",
        "services.list" => "service",
        "endpoints.list" => "endpoints",
        "dfw.list" => "rule",
        "outside.list" => "outsidehost.pacific.dev",
        "deployments.list" => "deployment.apps",
        "tkc.list" => "tanzukubernetescluster.run.tanzu.vmware.com",
        "networkpolicies.list" => "networkpolicy.networking.k8s.io",
        other => {
            return Err(format!(
                "`get {}` has no names to print",
                other.trim_end_matches(".list")
            ))
        }
    })
}

/// One requirement of a label selector (`-l app=web,tier!=db,canary,!legacy`).
#[derive(Debug, PartialEq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl LabelRequirement {
    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::Absent(k) => get(k).is_none(),
        }
    }
}

/// kubectl's equality-based selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated, all
/// of them to hold. Set-based ones (`k in (a,b)`) are refused, by name.
fn parse_selector(text: &str) -> Result<Vec<LabelRequirement>, String> {
    let bad = |why: &str| format!("-l {text:?}: {why}");
    // As kubectl: an empty selector selects everything.
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    if text.contains('(') || text.contains(" in ") || text.contains(" notin ") {
        return Err(bad(
            "set-based selectors (in, notin) are not supported: use k=v, k!=v, k or !k",
        ));
    }
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        let ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if ok {
            Ok(k.to_string())
        } else {
            Err(bad(&format!("{k:?} is not a label key")))
        }
    };
    text.split(',')
        .map(|part| {
            let part = part.trim();
            if let Some((k, v)) = part.split_once("!=") {
                Ok(LabelRequirement::NotEquals(key(k)?, v.trim().to_string()))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Ok(LabelRequirement::Equals(key(k)?, v.trim().to_string()))
            } else if let Some(k) = part.strip_prefix('!') {
                Ok(LabelRequirement::Absent(key(k)?))
            } else {
                Ok(LabelRequirement::Exists(key(part)?))
            }
        })
        .collect()
}

/// The resource a `*.list` method lists, in kubectl's plural (`services "web" not found`),
/// whatever short name or case the kind was typed in.
fn resource_of(method: &str) -> &'static str {
    match method {
        "namespaces.list" => "namespaces",
        "pods.list" => "pods",
        "segments.list" => "segments.pacific.dev",
        "services.list" => "services",
        "endpoints.list" => "endpoints",
        "deployments.list" => "deployments.apps",
        "tkc.list" => "tanzukubernetesclusters.run.tanzu.vmware.com",
        "outside.list" => "outsidehosts.pacific.dev",
        "networkpolicies.list" => "networkpolicies.networking.k8s.io",
        _ => "objects",
    }
}

/// A column of a `pacific get` table: its header and how a row's cell is made.
type Column = (&'static str, Box<dyn Fn(&Value) -> String>);

/// A plain field of the row.
fn field(header: &'static str, name: &'static str) -> Column {
    (header, Box::new(move |v: &Value| s(&v[name])))
}

/// `k=v,k=v` of an object field, `<none>` when empty.
fn pairs(header: &'static str, name: &'static str, sep: &'static str) -> Column {
    (
        header,
        Box::new(move |v: &Value| {
            let text = match &v[name] {
                Value::Object(m) => m
                    .iter()
                    .map(|(k, x)| format!("{k}{sep}{}", s(x)))
                    .collect::<Vec<_>>()
                    .join(","),
                Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
                _ => String::new(),
            };
            if text.is_empty() {
                "<none>".to_string()
            } else {
                text
            }
        }),
    )
}

/// kubectl's ENDPOINTS cell: the first three `ip:port`, then how many more; `<none>`.
fn endpoints_cell(v: &Value) -> String {
    let all: Vec<String> = v["endpoints"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    crate::describe::endpoints_text(&all)
}

/// The columns of each kind's table, as `kubectl get` lays them out (`-o wide` adds some).
fn columns(method: &str, with_ns: bool, wide: bool, now: u64) -> Vec<Column> {
    let age_column = || -> Column {
        (
            "AGE",
            Box::new(move |v: &Value| age(v["created"].as_u64().unwrap_or(now), now)),
        )
    };
    let mut c: Vec<Column> = Vec::new();
    // kubectl shows NAMESPACE only when the listing spans namespaces (no `-n`).
    let namespaced = matches!(
        method,
        "pods.list"
            | "services.list"
            | "endpoints.list"
            | "deployments.list"
            | "tkc.list"
            | "networkpolicies.list"
    );
    if namespaced && with_ns {
        c.push(field("NAMESPACE", "namespace"));
    }
    match method {
        "namespaces.list" => {
            c.extend([
                field("NAME", "name"),
                field("STATUS", "status"),
                age_column(),
            ]);
            if wide {
                c.extend([
                    field("SEGMENT", "segment"),
                    field("SUBNET", "subnet"),
                    field("GATEWAY", "gateway"),
                    field("T1", "t1"),
                    field("EGRESS-IP", "egress_ip"),
                ]);
            }
        }
        "pods.list" => {
            c.extend([
                field("NAME", "name"),
                field("READY", "ready"),
                field("STATUS", "status"),
                field("RESTARTS", "restarts"),
                age_column(),
            ]);
            if wide {
                c.extend([
                    field("IP", "ip"),
                    field("NODE", "node"),
                    field("PORT", "port"),
                    field("MAC", "mac"),
                ]);
            }
        }
        "segments.list" => c.extend([
            field("NAME", "name"),
            field("NAMESPACE", "namespace"),
            field("SUBNET", "subnet"),
            field("GATEWAY", "gateway"),
            field("T1", "t1"),
            field("PORTS", "ports"),
        ]),
        "ports.list" => c.extend([
            field("NAME", "name"),
            field("ID", "id"),
            field("KIND", "kind"),
            field("IP", "ip"),
            field("RX-PACKETS", "rx_packets"),
            field("RX-BYTES", "rx_bytes"),
            field("TX-PACKETS", "tx_packets"),
            field("TX-BYTES", "tx_bytes"),
            pairs("DROPS", "drops", "="),
        ]),
        "endpoints.list" => {
            c.extend([
                field("NAME", "name"),
                ("ENDPOINTS", Box::new(endpoints_cell)),
                age_column(),
            ]);
        }
        "services.list" => {
            c.extend([
                field("NAME", "name"),
                field("TYPE", "type"),
                field("CLUSTER-IP", "cluster_ip"),
                field("EXTERNAL-IP", "external_ip"),
                field("PORT(S)", "ports"),
                age_column(),
            ]);
            if wide {
                c.extend([
                    pairs("SELECTOR", "selector", "="),
                    pairs("ENDPOINTS", "endpoints", ""),
                ]);
            }
        }
        "dfw.list" => c.extend([
            field("PRIORITY", "priority"),
            field("SECTION", "section"),
            field("RULE", "name"),
            field("DIRECTION", "direction"),
            field("SOURCES", "sources"),
            field("DESTINATIONS", "destinations"),
            field("SERVICES", "services"),
            field("APPLIED-TO", "applied_to"),
            field("ACTION", "action"),
            field("HITS", "hits"),
        ]),
        "nat.list" => c.extend([
            field("NAMESPACE", "namespace"),
            field("PROTO", "protocol"),
            field("ORIGINAL", "original"),
            field("TRANSLATED", "translated"),
            field("TYPE", "type"),
            field("STATE", "state"),
            field("PACKETS", "packets"),
        ]),
        "outside.list" => c.extend([
            field("NAME", "name"),
            field("ADDRESS", "address"),
            pairs("HTTP", "http_ports", ""),
            pairs("UDP", "udp_ports", ""),
            age_column(),
        ]),
        "networkpolicies.list" => c.extend([
            field("NAME", "name"),
            field("POD-SELECTOR", "pod_selector"),
            age_column(),
        ]),
        "deployments.list" => c.extend([
            field("NAME", "name"),
            field("READY", "ready"),
            field("UP-TO-DATE", "up_to_date"),
            field("AVAILABLE", "available"),
            age_column(),
        ]),
        _ => c.extend([
            field("NAME", "name"),
            field("CONTROL PLANE", "control_plane"),
            field("WORKER", "workers"),
            field("SEGMENT", "segment"),
            field("SUBNET", "subnet"),
            age_column(),
        ]),
    }
    c
}

/// A gateway's routing table in the style of the seed's router (FRR's `show ip route`), with
/// NSX's codes for routes a T1 advertised to T0.
fn routes_text(result: &Value, now: u64) -> String {
    // Each route's uptime, from when it entered the tables (the listing's, from a daemon that
    // gives none per route).
    let uptime = |r: &Value| {
        let since = r["created"]
            .as_u64()
            .or_else(|| result["created"].as_u64())
            .unwrap_or(now);
        let d = now.saturating_sub(since);
        format!("{:02}:{:02}:{:02}", d / 3600, (d / 60) % 60, d % 60)
    };
    let mut out = format!(
        "Gateway {}\nCodes: C - connected, S - static, t1c - Tier1-connected, t1l - Tier1-LB VIP,\n       t1n - Tier1-NAT, > - selected route, * - FIB route\n\n",
        s(&result["gateway"])
    );
    for r in rows(result) {
        let code = s(&r["code"]);
        let prefix = s(&r["prefix"]);
        let intf = s(&r["interface"]);
        let uptime = uptime(r);
        if r["local"].as_bool() == Some(true) {
            out.push_str(&format!("{code}>* {prefix} is local ({intf}), {uptime}\n"));
        } else if r["connected"].as_bool() == Some(true) {
            out.push_str(&format!(
                "{code}>* {prefix} is directly connected, {intf}, {uptime}\n"
            ));
        } else {
            out.push_str(&format!(
                "{code}>* {prefix} [{}/{}] via {}, {intf}, {uptime}\n",
                s(&r["distance"]),
                s(&r["metric"]),
                s(&r["via"])
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pacific --help` and `pacific get --help` name every kind `get` lists, and `delete
    /// --help` every kind `delete KIND NAME` takes: a user reading only the help finds them.
    /// `pacific apply web.yaml` (no -f) says how to give the file, as does no file at all.
    /// `-f - -f -`: standard input is read once, as kubectl has it ("standard input cannot be
    /// used for multiple arguments"), not its text sent again as a second file (or nothing).
    #[test]
    fn standard_input_given_twice_is_refused() {
        let e = read_manifests(&[PathBuf::from("-"), PathBuf::from("-")]).unwrap_err();
        assert!(
            e.contains("standard input cannot be used for multiple arguments"),
            "{e}"
        );
    }

    #[test]
    fn apply_without_f_shows_the_command_with_it() {
        let args = |argv: &[&str]| match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Cmd::Apply(a)) => Ok(a),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        let stray = args(&["pacific", "apply", "web.yaml"]).unwrap();
        assert_eq!(
            stray.files().unwrap_err(),
            "manifests are given with -f: `pacific apply -f web.yaml`"
        );
        let given = args(&["pacific", "apply", "-f", "web.yaml"]).unwrap();
        assert_eq!(given.files().unwrap(), [PathBuf::from("web.yaml")]);
        let none = args(&["pacific", "apply"]).unwrap_err();
        assert!(none.contains("--filename"), "{none}");
    }

    #[test]
    fn help_names_every_kind_get_and_delete_take() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let top = cli.render_help().to_string();
        let get = cli
            .find_subcommand_mut("get")
            .unwrap()
            .render_long_help()
            .to_string();
        let delete = cli
            .find_subcommand_mut("delete")
            .unwrap()
            .render_long_help()
            .to_string();
        let listed = list_method("nope").unwrap_err();
        let kinds = listed.split("expected ").nth(1).unwrap();
        for kind in kinds.replace(" or ", ", ").split(", ") {
            assert!(list_method(kind).is_ok() || kind == "all", "{kind}");
            assert!(get.contains(kind), "get --help lacks {kind}:\n{get}");
            if kind != "all" {
                assert!(top.contains(kind), "--help lacks {kind}:\n{top}");
            }
        }
        for kind in [
            "namespaces",
            "pods",
            "svc",
            "deployments",
            "endpoints",
            "tkc",
            "netpol",
        ] {
            assert!(
                manifest_of_names(&[kind.into(), "x".into()]).is_ok(),
                "{kind}"
            );
            assert!(
                delete.contains(kind),
                "delete --help lacks {kind}:\n{delete}"
            );
        }
    }

    /// Files joined for one request keep their documents' places: an error in the daemon's
    /// count of the whole is found again in its file, whatever the files begin or end with.
    #[test]
    fn joined_files_name_the_file_and_document_at_fault() {
        let dir = std::env::temp_dir().join(format!("pacific-cli-join-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let ns = |n: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}}}\n");
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write(
            "10-a.yaml",
            &format!("---\n# first\n{}---\n{}---\n", ns("a"), ns("b")),
        );
        write(
            "20-c.json",
            r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"c"}}{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"d"}}"#,
        );
        write("30-empty.yml", "# nothing yet\n");
        write("40-bad.yaml", &format!("\u{feff}{}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: e, labls: {{}}}}\n", ns("x")));
        write("notes.txt", "not a manifest");
        write("sub/50-z.yaml", &ns("z"));
        let joined = read_manifests(std::slice::from_ref(&dir)).unwrap();
        let names: Vec<String> = joined.sources.iter().map(|(n, _)| n.clone()).collect();
        let file = |n: &str| dir.join(n).display().to_string();
        assert_eq!(
            names,
            [
                file("10-a.yaml"),
                file("20-c.json"),
                file("30-empty.yml"),
                file("40-bad.yaml")
            ]
        );
        let e = crate::model::parse_manifests(&joined.text, None, None).unwrap_err();
        assert_eq!(
            joined.locate(e.document as u64),
            Some((file("40-bad.yaml").as_str(), 2))
        );
        assert!(e.field.contains("labls"), "{e}");
        // The good files alone: every namespace, in order.
        let good = read_manifests(&[
            dir.join("10-a.yaml"),
            dir.join("20-c.json"),
            dir.join("30-empty.yml"),
        ])
        .unwrap();
        let parsed = crate::model::parse_manifests(&good.text, None, None).unwrap();
        let parsed: Vec<&str> = parsed.iter().map(|m| m.name()).collect();
        assert_eq!(parsed, ["a", "b", "c", "d"]);
        // The message names the file and its document, not the joined text's.
        let error = CallError::Rpc {
            code: crate::rpc::code::INVALID,
            message: format!(
                "document {} (Namespace e): metadata.labls: unknown field",
                e.document
            ),
            data: Some(
                json!({"document": e.document, "kind": "Namespace", "name": "e", "field": "metadata.labls"}),
            ),
        };
        assert_eq!(
            joined.error("apply", error),
            format!(
                "{}: document 2 (Namespace e): metadata.labls: unknown field",
                file("40-bad.yaml")
            )
        );
        // A file numbers its documents as it does alone, whether or not it begins with `---`.
        for text in ["# c\n---\n", "---\n", "", "# c\n"] {
            let bad = format!("{text}{}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: f, labls: {{}}}}\n", ns("y"));
            write("sub/late.yaml", &bad);
            let alone = crate::model::parse_manifests(&bad, None, None).unwrap_err();
            let joined =
                read_manifests(&[dir.join("10-a.yaml"), dir.join("sub/late.yaml")]).unwrap();
            let e = crate::model::parse_manifests(&joined.text, None, None).unwrap_err();
            assert_eq!(
                joined.locate(e.document as u64),
                Some((file("sub/late.yaml").as_str(), alone.document as u64)),
                "{text:?}"
            );
        }
        std::fs::remove_file(dir.join("sub/late.yaml")).unwrap();
        // A duplicate names both places in their files.
        let twice = read_manifests(&[dir.join("10-a.yaml"), dir.join("10-a.yaml")]).unwrap();
        let e = crate::model::parse_manifests(&twice.text, None, None).unwrap_err();
        let error = CallError::Rpc {
            code: crate::rpc::code::INVALID,
            message: e.to_string(),
            data: Some(json!({"document": e.document, "kind": "Namespace", "field": e.field})),
        };
        let a = file("10-a.yaml");
        assert_eq!(
            twice.error("apply", error),
            format!("{a}: document 1 (Namespace a): metadata.name: duplicate Namespace a (also in {a}: document 1)")
        );
        let e = read_manifests(&[dir.join("sub").join("none")]).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::remove_file(dir.join("sub/50-z.yaml")).unwrap();
        let e = read_manifests(&[dir.join("sub")]).unwrap_err();
        assert!(e.contains("no .yaml, .yml or .json file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `delete svc web nosuch` said `document 2 (Service nosuch): metadata.name: service
    /// default/nosuch not found`, and `get SVC nosuch` `svc "nosuch" not found`: kubectl's words.
    #[test]
    fn objects_not_found_are_named_as_kubectl_names_them() {
        let not_found = |kind: &str, name: &str| CallError::Rpc {
            code: crate::rpc::code::NOT_FOUND,
            message: format!("document 2 ({kind} {name}): metadata.name: not found"),
            data: Some(
                json!({"document": 2, "kind": kind, "name": name, "field": "metadata.name"}),
            ),
        };
        let names = ManifestText::of_names(
            manifest_of_names(&["svc".into(), "web".into(), "nosuch".into()]).unwrap(),
        );
        assert_eq!(
            names.error("delet", not_found("Service", "nosuch")),
            r#"Error from server (NotFound): services "nosuch" not found"#
        );
        assert_eq!(
            names.error("delet", not_found("Deployment", "web")),
            r#"Error from server (NotFound): deployments.apps "web" not found"#
        );
        let file = ManifestText {
            text: String::new(),
            sources: vec![("app.yaml".into(), usize::MAX)],
            name_files: false,
            from_names: false,
        };
        assert_eq!(
            file.error("delet", not_found("Pod", "tool")),
            r#"Error from server (NotFound): error when deleting "app.yaml": pods "tool" not found"#
        );
        assert_eq!(resource_of("services.list"), "services");
        // Any other refusal of `delete KIND NAME` names the object, not a document.
        let managed = CallError::Rpc {
            code: crate::rpc::code::CONFLICT,
            message:
                "document 1 (Pod web-1): metadata.name: pod web-1 is managed by deployment web"
                    .into(),
            data: Some(
                json!({"document": 1, "kind": "Pod", "name": "web-1", "field": "metadata.name"}),
            ),
        };
        assert_eq!(
            names.error("delet", managed),
            "pod/web-1: pod web-1 is managed by deployment web"
        );
    }

    /// `exec -it` and `exec -n NS POD` were usage errors: kubectl's habits.
    #[test]
    fn exec_takes_kubectl_targets() {
        assert_eq!(exec_target("team/web", None).unwrap(), "team/web");
        assert_eq!(exec_target("web", Some("team")).unwrap(), "team/web");
        assert_eq!(exec_target("pod/web", Some("team")).unwrap(), "team/web");
        assert_eq!(exec_target("deploy/web", Some("team")).unwrap(), "team/web");
        assert_eq!(
            exec_deployment("deploy/web", Some("team")),
            Some(("team", "web"))
        );
        assert_eq!(
            exec_deployment("deployment.apps/web", Some("team")),
            Some(("team", "web"))
        );
        assert_eq!(exec_deployment("pod/web", Some("team")), None);
        assert_eq!(exec_deployment("team/web", None), None);
        assert!(exec_target("svc/web", Some("team")).is_err());
        assert!(exec_target("pod/", Some("team")).is_err());
        // kubectl's habit without -n: the error says both ways to name it.
        let e = exec_target("web", None).unwrap_err();
        assert!(e.contains("NS/POD") && e.contains("-n NS web"), "{e}");
        let parsed =
            Cli::try_parse_from(["pacific", "exec", "-it", "-n", "team", "web", "--", "sh"]);
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    /// `get -l` was refused as an unexpected argument: kubectl's equality-based selectors.
    #[test]
    fn label_selectors_read_as_kubectl_reads_them() {
        use LabelRequirement::*;
        assert_eq!(
            parse_selector("app=web, tier!=db,canary,!legacy,env==prod").unwrap(),
            [
                Equals("app".into(), "web".into()),
                NotEquals("tier".into(), "db".into()),
                Exists("canary".into()),
                Absent("legacy".into()),
                Equals("env".into(), "prod".into()),
            ]
        );
        let keeps = |sel: &str, labels: Value| {
            parse_selector(sel)
                .unwrap()
                .iter()
                .all(|r| r.matches(&labels))
        };
        assert!(keeps("app=web", json!({"app": "web", "x": "y"})));
        assert!(!keeps("app=web", json!({"app": "db"})));
        assert!(!keeps("app=web", json!({})));
        assert!(keeps("app!=web", json!({})));
        assert!(keeps("!legacy,app", json!({"app": "web"})));
        assert!(!keeps("!legacy", json!({"legacy": "1"})));
        // A row without labels has none.
        assert!(!keeps("app", Value::Null));
        assert!(keeps("", json!({})));
        for bad in ["app in (web)", "=web", "a b=c", "app=web,"] {
            assert!(parse_selector(bad).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from([
            "pacific",
            "get",
            "pods,svc",
            "-l",
            "app=web",
            "--show-labels",
            "-o",
            "name"
        ])
        .is_ok());
    }

    /// `lab up` suggested curling the first VIP by name, even one whose service selects no pod
    /// (refused) or whose first port is UDP: the hint names a VIP that answers, on a TCP port.
    #[test]
    fn the_curl_hint_names_a_vip_that_answers() {
        let namespaces = json!({"items": [{"name": "alpha", "supervisor": false}]});
        let pods = json!({"items": [{"namespace": "alpha", "name": "web-1", "ip": "172.211.5.2",
            "owner": "web", "tkg_node": null}]});
        let outside = json!({"items": [{"name": "jump", "address": "198.51.100.20/24"}]});
        let svc = |name: &str, vip: &str, ports: &str, endpoints: Value| {
            json!({"namespace": "alpha", "name": name, "type": "LoadBalancer",
                "external_ip": vip, "ports": ports, "endpoints": endpoints})
        };
        let services = json!({"items": [
            svc("empty", "172.80.50.3", "80:30004/TCP", json!([])),
            svc("dns", "172.80.50.4", "53:30005/UDP", json!(["172.211.5.2:5353"])),
            svc("web", "172.80.50.1", "53:30002/UDP,8443:30001/TCP", json!(["172.211.5.2:9443"])),
        ]});
        let tries = try_commands(&namespaces, &pods, &services, &outside);
        assert!(
            tries.contains(&"ext/jump -- curl -s http://172.80.50.1:8443/".to_string()),
            "{tries:?}"
        );
    }

    /// `pacific exec` reports a command killed by a signal as a shell does, 128 + the signal
    /// (it said 137, SIGKILL's, whatever the signal).
    /// `get pods -o json` with nothing was `{"items": []}`: kubectl's is a `List`.
    #[test]
    fn listings_print_as_kubectl_lists() {
        assert_eq!(
            as_kubectl_list(json!({"items": []})),
            json!({"apiVersion": "v1", "kind": "List", "items": [],
                   "metadata": {"resourceVersion": ""}})
        );
        let pod = json!({"name": "web", "namespace": "team"});
        assert_eq!(as_kubectl_list(pod.clone()), pod);
    }

    /// `delete` said `pod/web deleted`: kubectl says `pod "web" deleted`.
    #[test]
    fn deletions_read_as_kubectl_prints_them() {
        assert_eq!(
            deleted_as_kubectl_says("pod/web deleted"),
            r#"pod "web" deleted"#
        );
        assert_eq!(
            deleted_as_kubectl_says("deployment.apps/web deleted"),
            r#"deployment.apps "web" deleted"#
        );
        assert_eq!(
            deleted_as_kubectl_says("configmap/x skipped: not modelled"),
            "configmap/x skipped: not modelled"
        );
    }

    /// Usage errors exited 2 (clap's): kubectl exits 1.
    #[test]
    fn usage_errors_exit_1_as_kubectl_help_exits_0() {
        for args in [
            &["pacific", "get", "--bogus", "pods"][..],
            &["pacific", "get"],
            &["pacific", "exec", "ns-dev/testbox"],
            &["pacific", "apply"],
            &["pacific", "get", "pods", "-n"],
            &["pacific", "frobnicate"],
            &["pacific", "apply", "--dry-run=client", "-f", "x.yaml"],
        ] {
            let e = Cli::try_parse_from(args).expect_err("a usage error");
            assert_eq!(usage_exit_code(&e), ExitCode::from(1), "{args:?}");
        }
        for args in [&["pacific", "--help"][..], &["pacific", "get", "--help"]] {
            let e = Cli::try_parse_from(args).expect_err("help");
            assert_eq!(usage_exit_code(&e), ExitCode::SUCCESS, "{args:?}");
        }
    }

    #[test]
    fn exec_exit_codes_follow_the_shell() {
        let code = |script: &str| {
            let status = Command::new("sh").args(["-c", script]).status().unwrap();
            format!("{:?}", exit_code_of(status))
        };
        let want = |n: u8| format!("{:?}", ExitCode::from(n));
        assert_eq!(code("exit 7"), want(7));
        assert_eq!(code("kill -TERM $$"), want(143));
        // (Not SIGINT: a shell started in the background, as `./test.sh &` is, ignores it, and
        // so do its children.)
        assert_eq!(code("kill -USR1 $$"), want(138));
        assert_eq!(code("kill -KILL $$"), want(137));
    }

    #[test]
    fn an_explicit_prefix_must_be_the_labs() {
        let socket = Path::new("/run/pacific/pacific.sock");
        let e = refuse_other_prefix(socket, Some("qa2"), Some("pac")).unwrap_err();
        assert!(
            e.contains("has the prefix pac, not qa2: nothing done"),
            "{e}"
        );
        assert!(refuse_other_prefix(socket, Some("pac"), Some("pac")).is_ok());
        // No prefix given, or no lab there to disagree: nothing to refuse.
        assert!(refuse_other_prefix(socket, None, Some("pac")).is_ok());
        assert!(refuse_other_prefix(socket, Some("qa2"), None).is_ok());
        assert!(refuse_other_prefix(socket, Some("qa2"), Some("")).is_ok());
    }

    /// `pacific get outside` showed a host's ports as JSON arrays (`[80]`, `[]`).
    #[test]
    fn outside_ports_read_as_lists() {
        let cells = |host: Value| -> Vec<String> {
            columns("outside.list", false, false, 0)
                .iter()
                .map(|(_, cell)| cell(&host))
                .collect()
        };
        let row = cells(json!({"name": "internet", "address": "198.51.100.100/24",
            "http_ports": [80, 8080], "udp_ports": [], "created": 0}));
        assert_eq!(row[2], "80,8080");
        assert_eq!(row[3], "<none>");
    }

    /// A second `lab down` said "0 namespace(s) removed" and "leftovers cleaned: 0 process(es)
    /// stopped, 0 namespace(s) deleted, record absent"; every `lab down` printed that line.
    #[test]
    fn lab_down_says_plainly_what_it_did() {
        use crate::lab::record::TeardownSummary;
        let socket = Path::new("/run/pacific/pacific.sock");
        let none = TeardownSummary::default();
        assert_eq!(
            lab_down_report(socket, true, None, 0, &none),
            ["lab down: no lab on /run/pacific/pacific.sock (no daemon answers, none recorded): \
              nothing to remove"]
        );
        assert_eq!(
            lab_down_report(socket, false, Some(42), 14, &none),
            ["lab down: stopped the lab's daemon (pid 42); 14 namespace(s) removed"]
        );
        let after_kill = TeardownSummary {
            processes_killed: 3,
            namespaces_deleted: 14,
            record_removed: true,
            ..Default::default()
        };
        let lines = lab_down_report(socket, false, None, 14, &after_kill);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].starts_with("lab down: leftovers cleaned: 3 process(es)"));
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(100, 145), "45s");
        assert_eq!(age(0, 720), "12m");
        assert_eq!(age(0, 5 * 3600), "5h");
        assert_eq!(age(0, 3 * 86400), "3d");
    }

    #[test]
    fn namespace_column_only_when_the_listing_spans_namespaces() {
        for method in ["pods.list", "services.list", "deployments.list", "tkc.list"] {
            let headers = |with_ns| -> Vec<&str> {
                columns(method, with_ns, false, 0)
                    .iter()
                    .map(|c| c.0)
                    .collect()
            };
            assert_eq!(headers(true)[..2], ["NAMESPACE", "NAME"], "{method}");
            assert_eq!(headers(false)[0], "NAME", "{method}");
            assert!(!headers(false).contains(&"NAMESPACE"), "{method}");
        }
    }

    #[test]
    fn tables_pad_columns() {
        let t = table(
            &["NAME", "IP"],
            &[vec!["wordpress-1".into(), "172.211.0.18".into()]],
        );
        assert_eq!(t, "NAME          IP\nwordpress-1   172.211.0.18\n");
    }

    #[test]
    fn cli_parses_the_documented_commands() {
        Cli::try_parse_from(["pacific", "get", "pods", "-n", "ns-dev", "-o", "wide"]).unwrap();
        Cli::try_parse_from(["pacific", "apply", "-n", "ns-dev", "-f", "-"]).unwrap();
        Cli::try_parse_from([
            "pacific",
            "exec",
            "ns-dev/wordpress",
            "--",
            "ping",
            "-c1",
            "172.211.0.19",
        ])
        .unwrap();
        Cli::try_parse_from(["pacific", "lab", "up"]).unwrap();
        Cli::try_parse_from([
            "pacific",
            "daemon",
            "--socket",
            "/tmp/x.sock",
            "--workers",
            "2",
        ])
        .unwrap();
        assert!(Cli::try_parse_from(["pacific", "get"]).is_err());
        Cli::try_parse_from(["pacific", "describe", "svc", "web", "-n", "ns-dev"]).unwrap();
        Cli::try_parse_from(["pacific", "describe", "-n", "ns-dev", "svc/web"]).unwrap();
        assert!(Cli::try_parse_from(["pacific", "describe"]).is_err());
        // A prefix with a `-` would let one lab's sweep take another's namespaces.
        for bad in ["qd-x", "", "a.b", "thirty_three_characters_long_xxxx"] {
            for cmd in [&["lab", "down"][..], &["lab", "up"], &["daemon"]] {
                let mut argv = vec!["pacific"];
                argv.extend_from_slice(cmd);
                argv.extend(["--prefix", bad]);
                assert!(
                    Cli::try_parse_from(argv).is_err(),
                    "{cmd:?} --prefix {bad:?}"
                );
            }
        }
        Cli::try_parse_from(["pacific", "lab", "down", "--prefix", "pacnb123p"]).unwrap();
    }

    /// The daemon options `pacific lab up ARGS...` parses to.
    fn lab_up_daemon(args: &[&str]) -> LabDaemon {
        let mut argv = vec!["pacific", "lab", "up"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Cmd::Lab {
                action:
                    LabCmd::Up {
                        workers,
                        busy_poll_us,
                        conntrack_max,
                        conntrack_timeouts,
                        ..
                    },
            } => LabDaemon {
                workers,
                busy_poll_us,
                conntrack_max,
                conntrack_timeouts,
            },
            other => panic!("not lab up: {other:?}"),
        }
    }

    /// `lab up --workers N` to a daemon that already runs says it keeps its own (it said nothing,
    /// and the daemon went on with its count); without it, the default count is handed on.
    #[test]
    fn lab_up_workers_counts_as_an_option_given() {
        let lab = lab_up_daemon;
        let one = lab(&["--workers", "1"]);
        assert!(one.given());
        assert_eq!(one.args()[..2], ["--workers", "1"]);
        let none = lab(&[]);
        assert!(!none.given());
        assert_eq!(
            none.args(),
            ["--workers".to_string(), default_workers().to_string()]
        );
    }

    /// The daemon's table and polling options: defaults, and the sizes it refuses with a
    /// message that names the option.
    #[test]
    fn daemon_options_are_checked_before_anything_starts() {
        let daemon = |args: &[&str]| -> DaemonArgs {
            let argv = ["pacific", "daemon"].iter().chain(args);
            match Cli::try_parse_from(argv).expect("parses").command {
                Cmd::Daemon(args) => args,
                other => panic!("not the daemon: {other:?}"),
            }
        };
        let defaults = daemon(&[]);
        assert_eq!(defaults.busy_poll_us, 50);
        assert_eq!(defaults.conntrack().unwrap().max_connections, 1 << 20);
        assert_eq!(daemon(&["--busy-poll-us", "0"]).busy_poll_us, 0);
        // As `lab up --busy-poll-us 7` hands it on.
        assert_eq!(daemon(&["--busy-poll-us=7"]).busy_poll_us, 7);
        match Cli::try_parse_from(["pacific", "lab", "up", "--busy-poll-us", "7"])
            .expect("parses")
            .command
        {
            Cmd::Lab {
                action: LabCmd::Up { busy_poll_us, .. },
            } => assert_eq!(busy_poll_us, Some(7)),
            other => panic!("not lab up: {other:?}"),
        }
        // `lab up` hands the table's options on as the daemon takes them.
        let lab = lab_up_daemon(&[
            "--conntrack-timeout",
            "udp=5",
            "--conntrack-timeout=icmp=3",
            "--conntrack-max",
            "9",
        ]);
        let mut argv = vec!["pacific", "daemon"];
        let args = lab.args();
        argv.extend(args.iter().map(String::as_str));
        let Cmd::Daemon(d) = Cli::try_parse_from(argv).expect("parses").command else {
            panic!("not the daemon")
        };
        let config = d.conntrack().unwrap();
        assert_eq!(config.max_connections, 9);
        assert_eq!(config.timeouts.get("udp"), Some(5000));
        assert_eq!(config.timeouts.get("icmp"), Some(3000));
        for bad in ["0", "16777217"] {
            let err = daemon(&["--conntrack-max", bad]).conntrack().unwrap_err();
            assert!(err.starts_with("--conntrack-max must be"), "{err}");
        }
        let most = ConntrackConfig::MAX_CONNECTIONS.to_string();
        assert!(daemon(&["--conntrack-max", &most]).conntrack().is_ok());
        let err = daemon(&["--conntrack-timeout", "udp=x"])
            .conntrack()
            .unwrap_err();
        assert!(err.contains("--conntrack-timeout"), "{err}");
        let err = daemon(&["--conntrack-timeout", "udp=0"])
            .conntrack()
            .unwrap_err();
        assert!(err.contains("at least 1 second"), "{err}");
        // u64::MAX seconds was taken, and daemon.status showed 18446744073709551.
        for huge in ["udp=18446744073709551615", "udp=4294967296"] {
            let err = daemon(&["--conntrack-timeout", huge])
                .conntrack()
                .unwrap_err();
            assert!(err.contains("at most 4294967295 seconds"), "{err}");
        }
        let most = daemon(&["--conntrack-timeout", "tcp-established=4294967295"])
            .conntrack()
            .unwrap();
        assert_eq!(most.timeouts.tcp_established, 4_294_967_295_000);
        let one = daemon(&["--conntrack-timeout", "udp=1"])
            .conntrack()
            .unwrap();
        assert_eq!(one.timeouts.udp, 1000);
    }
}
