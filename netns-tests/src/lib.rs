//! The harness of Pacific's end-to-end tests: each test builds its own lab with the real
//! `pacific` binary, in network namespaces of its own, and checks what a user would see with the
//! real tools (`ping`, `curl`, `traceroute`, `nc`) run inside those namespaces.
//!
//! Why this way: the product's promise is "these commands behave like the seed's transcripts",
//! so the tests drive the CLI exactly as a person would, never the crates' internals. Each lab is
//! isolated by its own socket (in its own temporary directory) and its own namespace prefix, so
//! tests can run in parallel threads. Every lab is a guard ([`Lab`]): dropping it (also while a
//! test unwinds from a failed assertion) runs `pacific lab down`, then, as a last resort, deletes
//! any namespace left with the lab's prefix and ends any process still naming the lab's socket.
//!
//! Every child process is bounded: commands run in their own process group and are killed (the
//! group, by id) when they overrun, so a hung daemon fails a test instead of hanging the suite.
//! Waiting is done by polling a condition with a deadline ([`wait_until`]), never by sleeping a
//! guessed time.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long any single CLI call may take before the test fails (lab up builds dozens of
/// namespaces on a loaded two-core machine, hence generous).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a command run inside the lab (`pacific exec`) may take.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// The `pacific` binary: `$PACIFIC_BIN`, else `<workspace>/target/debug/pacific`.
pub fn pacific_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PACIFIC_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "PACIFIC_BIN={} is not a file", p.display());
        return p;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(manifest);
    let p = workspace.join("target/debug/pacific");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (or set PACIFIC_BIN)",
        p.display()
    );
    p
}

/// True when the netns tests can run here (root, `ip`, `/dev/net/tun`). Otherwise prints why
/// and returns false, so the test returns early (a skip), unless `PACIFIC_REQUIRE_NETNS=1`,
/// which turns the skip into a failure (CI must run them).
pub fn require_netns() -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let tun = Path::new("/dev/net/tun").exists();
    let why = if !root {
        "not running as root"
    } else if !ip {
        "the `ip` command (iproute2) is missing"
    } else if !tun {
        "/dev/net/tun is missing"
    } else {
        return true;
    };
    if std::env::var("PACIFIC_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("netns tests cannot run: {why}, and PACIFIC_REQUIRE_NETNS=1");
    }
    eprintln!("skipping: netns tests need root, iproute2 and /dev/net/tun ({why})");
    false
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; true when it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` in its own process group with `stdin` fed in, collecting its output; kills the
/// group (by its id) and panics when it runs longer than `timeout`.
pub fn run_bounded(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_string();
        // A thread, so a child that does not read its input cannot block us.
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let out = reader(child.stdout.take().expect("stdout is piped"));
    let err = reader(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                kill_group(child.id());
                let _ = child.wait();
                panic!("{what} did not finish within {timeout:?}");
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals the process group we created for our own
    // child (process_group(0) made its id the group id); no memory is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A printable account of a command's outcome, for assertion messages.
pub fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// Namespaces (`ip netns list`) whose names start with `{prefix}-`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    netns_starting_with(&format!("{prefix}-"))
}

/// Deletes every namespace named `{prefix}-*` (what a test's daemon may have left).
pub fn delete_netns_with_prefix(prefix: &str) {
    for ns in netns_with_prefix(prefix) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "delete", &ns]);
        let _ = run_bounded(cmd, None, Duration::from_secs(20));
    }
}

/// Namespaces whose names start with `start`.
pub fn netns_starting_with(start: &str) -> Vec<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "list"]);
    let o = run_bounded(cmd, None, Duration::from_secs(20));
    stdout(&o)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(start))
        .map(str::to_string)
        .collect()
}

/// Pids of the processes inside namespace `ns` (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<u32> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "pids", ns]);
    let o = run_bounded(cmd, None, Duration::from_secs(20));
    stdout(&o)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A process's command line, arguments joined by spaces; None when it is gone.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        // Zombies and kernel threads have none.
        return None;
    }
    Some(
        raw.split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Pids of the live processes whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| cmdline(pid).is_some_and(|c| c.contains(needle)))
        .collect()
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) on a positive pid of a process this test started (directly or through
    // `pacific lab up`); no memory is involved.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// One lab: a daemon with its own socket in its own temporary directory, its own namespace
/// prefix, and the lab applied. Dropping it removes everything (see the module note).
pub struct Lab {
    /// The short tag the test gave.
    pub tag: String,
    /// `/tmp/pacific-test-<tag>-<pid>`.
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The namespace prefix: `pac<tag>p<pid>`, lower case.
    pub prefix: String,
    /// What `pacific lab up` printed.
    pub up_output: Output,
}

impl Lab {
    /// Builds the seed lab (no file given to `lab up`).
    pub fn up(tag: &str) -> Lab {
        Lab::start(tag, None)
    }

    /// Builds the lab described by `yaml`.
    pub fn up_with(tag: &str, yaml: &str) -> Lab {
        Lab::start(tag, Some(yaml))
    }

    /// Builds the seed lab against a daemon started here with `pacific daemon` (not by `lab up`):
    /// `lab down` then resets that daemon instead of stopping it.
    pub fn up_on_own_daemon(tag: &str) -> Lab {
        Lab::start_on(tag, None, true, &[])
    }

    /// Builds the lab of `yaml` (the seed lab without) with more `lab up` options (the
    /// daemon's, which `lab up` hands on).
    pub fn up_with_options(tag: &str, yaml: Option<&str>, options: &[&str]) -> Lab {
        Lab::start_on(tag, yaml, false, options)
    }

    fn start(tag: &str, yaml: Option<&str>) -> Lab {
        Lab::start_on(tag, yaml, false, &[])
    }

    fn start_on(tag: &str, yaml: Option<&str>, own_daemon: bool, options: &[&str]) -> Lab {
        let tag = tag.to_ascii_lowercase();
        assert!(
            !tag.is_empty() && tag.len() <= 8 && tag.bytes().all(|b| b.is_ascii_alphanumeric()),
            "a lab tag is 1-8 letters or digits: {tag:?}"
        );
        let dir = std::env::temp_dir().join(format!("pacific-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // The pid keeps two runs of the suite (a developer's and CI's) out of each other's way.
        let prefix = format!("pac{tag}p{}", std::process::id());
        // A crashed earlier run may have left namespaces of this tag behind: remove those whose
        // run is gone.
        let stale = format!("pac{tag}p");
        for ns in netns_starting_with(&stale) {
            let pid: String = ns[stale.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let alive = pid
                .parse::<u32>()
                .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                delete_netns(&ns);
            }
        }
        let mut lab = Lab {
            tag,
            socket: dir.join("pacific.sock"),
            dir,
            prefix,
            up_output: Output {
                status: ExitStatus::default(),
                stdout: Vec::new(),
                stderr: Vec::new(),
            },
        };
        if own_daemon {
            let log = std::fs::File::create(lab.dir.join("pacific-daemon.log"))
                .unwrap_or_else(|e| panic!("cannot create the daemon log: {e}"));
            let err = log.try_clone().expect("the daemon log");
            let child = Command::new(pacific_bin())
                .arg("--socket")
                .arg(&lab.socket)
                .args(["daemon", "--workers", "2", "--prefix", &lab.prefix])
                .env_remove("PACIFIC_SOCKET")
                .env_remove("PACIFIC_PREFIX")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start pacific daemon: {e}"));
            // Reaped by whoever ends it (the test, or `Drop`'s last resort); not waited for here.
            std::mem::forget(child);
            assert!(
                wait_until(Duration::from_secs(30), || {
                    UnixStream::connect(&lab.socket).is_ok()
                }),
                "the daemon never answered on {}:\n{}",
                lab.socket.display(),
                lab.daemon_log()
            );
        }
        let mut args = vec!["lab".to_string(), "up".to_string()];
        if let Some(yaml) = yaml {
            let file = lab.dir.join("lab.yaml");
            std::fs::write(&file, yaml)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
            args.push(file.display().to_string());
        }
        args.extend([
            "--prefix".to_string(),
            lab.prefix.clone(),
            "--workers".to_string(),
            "2".to_string(),
        ]);
        args.extend(options.iter().map(|o| o.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = lab.pacific(&argv);
        // `lab` is dropped (and cleans up) when this assertion fails.
        assert!(
            out.status.success(),
            "pacific lab up failed:\n{}\n--- daemon log ---\n{}",
            describe(&out),
            lab.daemon_log()
        );
        lab.up_output = out;
        lab
    }

    /// Runs `pacific --socket <ours> ARGS...`.
    pub fn pacific(&self, args: &[&str]) -> Output {
        self.pacific_stdin(args, None)
    }

    /// Runs `pacific --socket <ours> ARGS...` with `stdin` as its standard input.
    pub fn pacific_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(pacific_bin());
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("PACIFIC_SOCKET")
            .env_remove("PACIFIC_PREFIX");
        run_bounded(cmd, stdin, CLI_TIMEOUT)
    }

    /// `pacific exec TARGET -- ARGV...`: ARGV run in a pod's (`ns/pod`, `ns/deployment`) or an
    /// outside host's (`ext/host`) namespace.
    pub fn exec(&self, target: &str, argv: &[&str]) -> Output {
        let mut args = vec!["exec", target, "--"];
        args.extend_from_slice(argv);
        let mut cmd = Command::new(pacific_bin());
        cmd.arg("--socket").arg(&self.socket).args(&args);
        run_bounded(cmd, None, EXEC_TIMEOUT)
    }

    /// `sh -c SCRIPT` inside `target`.
    pub fn sh(&self, target: &str, script: &str) -> Output {
        self.exec(target, &["sh", "-c", script])
    }

    /// `pacific get KIND [-n NS] -o json`, parsed; panics when the command fails.
    pub fn get_json(&self, kind: &str, ns: Option<&str>) -> Value {
        let mut args = vec!["get", kind];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        args.extend(["-o", "json"]);
        let out = self.pacific(&args);
        assert!(
            out.status.success(),
            "pacific get {kind} failed:\n{}",
            describe(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "pacific get {kind} -o json printed no JSON ({e}):\n{}",
                describe(&out)
            )
        })
    }

    /// The `items` of `get_json`.
    pub fn items(&self, kind: &str, ns: Option<&str>) -> Vec<Value> {
        let v = self.get_json(kind, ns);
        v["items"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("pacific get {kind} -o json has no items array: {v}"))
    }

    /// `pacific apply [-n NS] [--cluster C] -f -` with `yaml` on standard input.
    pub fn apply(&self, yaml: &str, ns: Option<&str>, cluster: Option<&str>) -> Output {
        self.manifest_cmd("apply", yaml, ns, cluster)
    }

    /// `pacific delete [-n NS] [--cluster C] -f -` with `yaml` on standard input.
    pub fn delete(&self, yaml: &str, ns: Option<&str>, cluster: Option<&str>) -> Output {
        self.manifest_cmd("delete", yaml, ns, cluster)
    }

    fn manifest_cmd(
        &self,
        verb: &str,
        yaml: &str,
        ns: Option<&str>,
        cluster: Option<&str>,
    ) -> Output {
        let mut args = vec![verb];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        if let Some(c) = cluster {
            args.extend(["--cluster", c]);
        }
        args.extend(["-f", "-"]);
        self.pacific_stdin(&args, Some(yaml))
    }

    /// Applies `yaml` and panics (with the daemon's log) when it is rejected.
    pub fn apply_ok(&self, yaml: &str, ns: Option<&str>, cluster: Option<&str>) -> Output {
        let out = self.apply(yaml, ns, cluster);
        assert!(
            out.status.success(),
            "apply failed:\n{}\n{yaml}",
            describe(&out)
        );
        out
    }

    /// `pacific rpc METHOD PARAMS` through the CLI.
    pub fn rpc(&self, method: &str, params: &Value) -> Output {
        self.pacific(&["rpc", method, &params.to_string()])
    }

    /// The result of `pacific rpc METHOD PARAMS`, parsed; panics when it fails.
    pub fn rpc_ok(&self, method: &str, params: &Value) -> Value {
        let out = self.rpc(method, params);
        assert!(
            out.status.success(),
            "pacific rpc {method} failed:\n{}",
            describe(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "pacific rpc {method} printed no JSON ({e}):\n{}",
                describe(&out)
            )
        })
    }

    /// A raw connection to the control socket.
    pub fn connect(&self) -> RpcConn {
        RpcConn::connect(&self.socket)
    }

    /// The upstream router's namespace.
    pub fn upstream_netns(&self) -> String {
        format!("{}-upstream", self.prefix)
    }

    /// Runs `ip -n NS ARGS...` (read-only inspection of a lab namespace).
    pub fn ip_in(&self, ns: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(ns).args(args);
        run_bounded(cmd, None, Duration::from_secs(20))
    }

    /// `pacific lab down`.
    pub fn down(&self) -> Output {
        self.pacific(&["lab", "down", "--prefix", &self.prefix])
    }

    /// The daemon's log, for failure messages.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pacific-daemon.log")).unwrap_or_default()
    }

    /// The pod of namespace `ns` whose IP is `ip` (a row of `get pods -o json`).
    pub fn pod_by_ip(&self, ns: &str, ip: &str) -> Value {
        let pods = self.items("pods", Some(ns));
        pods.iter()
            .find(|p| p["ip"].as_str() == Some(ip))
            .cloned()
            .unwrap_or_else(|| panic!("no pod with IP {ip} in {ns}: {}", Value::Array(pods)))
    }

    /// The name of the pod of namespace `ns` whose IP is `ip`.
    pub fn pod_name_by_ip(&self, ns: &str, ip: &str) -> String {
        self.pod_by_ip(ns, ip)["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The hit count of DFW rule `name` (a suffix, e.g. `default-deny-ingress`) in `section`.
    pub fn dfw_hits(&self, section: &str, name: &str) -> u64 {
        let rules = self.items("dfw", None);
        let rule = rules
            .iter()
            .find(|r| {
                r["section"].as_str() == Some(section)
                    && r["name"].as_str().is_some_and(|n| n.ends_with(name))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no DFW rule {name} in section {section}: {}",
                    Value::Array(rules.clone())
                )
            });
        rule["hits"]
            .as_u64()
            .unwrap_or_else(|| panic!("DFW rule without a numeric hits count: {rule}"))
    }

    /// The drop count for `reason` on the port whose IP is `ip` (0 when it never dropped).
    pub fn port_drops(&self, ip: &str, reason: &str) -> u64 {
        let ports = self.items("ports", None);
        let port = ports
            .iter()
            .find(|p| p["ip"].as_str() == Some(ip))
            .unwrap_or_else(|| panic!("no port with IP {ip}: {}", Value::Array(ports.clone())));
        port["drops"]
            .get(reason)
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// The services of every namespace (and TKG cluster).
    pub fn services(&self) -> Vec<Value> {
        self.items("svc", None)
    }

    /// The external IP of the service called `name` (searching every namespace).
    pub fn service_vip(&self, name: &str) -> Option<String> {
        self.services()
            .iter()
            .find(|s| s["name"].as_str() == Some(name) && s["external_ip"].is_string())
            .and_then(|s| s["external_ip"].as_str().map(str::to_string))
    }

    /// The ClusterIP of service `name` in namespace `ns`.
    pub fn cluster_ip(&self, ns: &str, name: &str) -> String {
        let svcs = self.items("svc", Some(ns));
        svcs.iter()
            .find(|s| s["name"].as_str() == Some(name))
            .and_then(|s| s["cluster_ip"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                panic!(
                    "no service {name} with a ClusterIP in {ns}: {}",
                    Value::Array(svcs.clone())
                )
            })
    }

    /// Pids of the processes inside every namespace of this lab.
    pub fn lab_processes(&self) -> Vec<(u32, String)> {
        netns_with_prefix(&self.prefix)
            .iter()
            .flat_map(|ns| netns_pids(ns))
            .filter_map(|pid| cmdline(pid).map(|c| (pid, c)))
            .collect()
    }

    /// What the lab left behind: namespaces with its prefix, processes naming its socket, the
    /// socket file. Empty when `lab down` did its job.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = netns_with_prefix(&self.prefix)
            .into_iter()
            .map(|n| format!("namespace {n}"))
            .collect();
        let sock = self.socket.display().to_string();
        left.extend(
            pids_with_cmdline(&sock)
                .into_iter()
                .map(|p| format!("process {p}: {}", cmdline(p).unwrap_or_default())),
        );
        if self.socket.exists() {
            left.push(format!("socket {sock}"));
        }
        left
    }
}

fn delete_netns(ns: &str) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "delete", ns]);
    let _ = run_bounded(cmd, None, Duration::from_secs(20));
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Never panic here: a panic while unwinding aborts the whole test binary.
        let down = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.down()));
        match down {
            Ok(o) if !o.status.success() => {
                eprintln!("lab {}: lab down failed:\n{}", self.tag, describe(&o))
            }
            Err(_) => eprintln!("lab {}: lab down did not finish", self.tag),
            Ok(_) => {}
        }
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Last resort: processes we started (they name our socket) and namespaces we made.
            for pid in pids_with_cmdline(&self.socket.display().to_string()) {
                eprintln!("lab {}: killing leftover process {pid}", self.tag);
                signal(pid, libc::SIGKILL);
            }
            for ns in netns_with_prefix(&self.prefix) {
                eprintln!("lab {}: deleting leftover namespace {ns}", self.tag);
                delete_netns(&ns);
            }
        }));
        if std::thread::panicking() {
            let log = self.daemon_log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "lab {}: daemon log (last lines):\n{}",
                self.tag,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw JSON-RPC connection: one JSON object per line each way.
pub struct RpcConn {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl RpcConn {
    /// Connects to `socket`; reads time out after 30 s so a silent daemon fails the test.
    pub fn connect(socket: &Path) -> RpcConn {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set a read timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone the socket"));
        RpcConn {
            writer: stream,
            reader,
            next_id: 1,
        }
    }

    /// Writes `text` as is (no newline added).
    pub fn send_raw(&mut self, text: &str) {
        self.writer
            .write_all(text.as_bytes())
            .expect("write to the control socket");
    }

    /// Writes `bytes` as they are (they need not be UTF-8; no newline added).
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .expect("write to the control socket");
    }

    /// Reads one response line, parsed.
    pub fn read_response(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("no answer from the daemon: {e}"));
        assert!(n > 0, "the daemon closed the connection");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the daemon answered something not JSON ({e}): {line:?}"))
    }

    /// Sends one line and reads the answer.
    pub fn roundtrip_raw(&mut self, line: &str) -> Value {
        self.send_raw(line);
        if !line.ends_with('\n') {
            self.send_raw("\n");
        }
        self.read_response()
    }

    /// Calls `method` with `params`; the whole response object.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let resp = self.roundtrip_raw(&req.to_string());
        assert_eq!(
            resp["id"],
            json!(id),
            "response to request {id} carries another id: {resp}"
        );
        resp
    }
}

/// `curl -s --max-time 5 URL` from `from`; the body (empty when it failed).
pub fn curl(lab: &Lab, from: &str, url: &str) -> String {
    stdout(&lab.exec(from, &["curl", "-s", "--max-time", "5", url]))
}

/// Polls `curl` from `from` until it answers something non-empty (servers start with the lab)
/// or `timeout` passes; the last answer.
pub fn curl_until(lab: &Lab, from: &str, url: &str, timeout: Duration) -> String {
    let mut last = String::new();
    wait_until(timeout, || {
        last = stdout(&lab.exec(from, &["curl", "-s", "--max-time", "2", url]));
        !last.trim().is_empty()
    });
    last
}

/// What a ping run showed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingResult {
    pub transmitted: u32,
    pub received: u32,
    /// The shortest round-trip time in ms, when any reply came.
    pub min_ms: Option<f64>,
    /// The average round-trip time in ms, when any reply came.
    pub avg_ms: Option<f64>,
}

/// `ping -c COUNT -i 0.2 -W 1 DST [EXTRA...]` from `from`.
pub fn ping(lab: &Lab, from: &str, dst: &str, count: u32, extra: &[&str]) -> PingResult {
    let count_s = count.to_string();
    // No -w: with a deadline, ping keeps sending until COUNT replies arrive.
    let mut argv = vec!["ping", "-n", "-c", &count_s, "-i", "0.2", "-W", "1"];
    argv.extend_from_slice(extra);
    argv.push(dst);
    let out = lab.exec(from, &argv);
    parse_ping(&stdout(&out))
}

/// Received replies of `ping -c COUNT` from `from` to `dst`.
pub fn ping_received(lab: &Lab, from: &str, dst: &str, count: u32) -> u32 {
    ping(lab, from, dst, count, &[]).received
}

/// Polls single pings until one is answered (the first packets may wait for ARP); true when
/// one was.
pub fn ping_until(lab: &Lab, from: &str, dst: &str, timeout: Duration) -> bool {
    wait_until(timeout, || ping(lab, from, dst, 1, &[]).received == 1)
}

/// Parses iputils ping's summary ("3 packets transmitted, 3 received", "rtt min/avg/max/mdev = ").
pub fn parse_ping(text: &str) -> PingResult {
    let mut r = PingResult {
        transmitted: 0,
        received: 0,
        min_ms: None,
        avg_ms: None,
    };
    for line in text.lines() {
        if line.contains("packets transmitted") {
            let nums: Vec<u32> = line
                .split(',')
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect();
            r.transmitted = nums.first().copied().unwrap_or(0);
            r.received = nums.get(1).copied().unwrap_or(0);
        }
        if let Some(stats) = line
            .split(" = ")
            .nth(1)
            .filter(|_| line.starts_with("rtt") || line.starts_with("round-trip"))
        {
            let times: Vec<f64> = stats
                .split('/')
                .filter_map(|v| v.trim().trim_end_matches(" ms").parse().ok())
                .collect();
            r.min_ms = times.first().copied();
            r.avg_ms = times.get(1).copied();
        }
    }
    r
}

/// The hops of `traceroute -n` output: for each TTL, the first address that answered (None for
/// `* * *`).
pub fn parse_traceroute(text: &str) -> Vec<Option<String>> {
    text.lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|t| t.parse::<u32>().is_ok())
        })
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .find(|w| w.parse::<std::net::Ipv4Addr>().is_ok())
                .map(str::to_string)
        })
        .collect()
}

/// The lines of `text` that are kubectl-style apply results (`kind/name ACTION`), and delete's
/// (`kind "name" deleted`, given as `kind/name`).
pub fn apply_actions(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (obj, action) = (w.next()?, w.next()?);
            if let Some(name) = action.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                // `delete` prints as kubectl does: `pod "web" deleted`.
                return (w.next() == Some("deleted") && w.next().is_none())
                    .then(|| (format!("{obj}/{name}"), "deleted".to_string()));
            }
            (w.next().is_none()
                && obj.contains('/')
                && ["created", "configured", "unchanged"].contains(&action))
            .then(|| (obj.to_string(), action.to_string()))
        })
        .collect()
}

/// A bash script that holds keep-alive HTTP connections (bash's `/dev/tcp` keeps a test free of
/// other tools). `hold.sh IP PORT N URLPATH GO OUT`: opens N keep-alive HTTP connections to IP:PORT, asks
/// URLPATH on each and appends `held BODY` to OUT, then waits for the file GO and asks again on
/// each, appending `again BODY` (`none` when the connection failed or gave no answer in 3 s).
/// Each answer that did not come in 3 s (the connection silent, not closed or reset) also
/// appends a line `silent` to `OUT.silent`, so a test can tell the two without a clock.
pub const HOLD_SCRIPT: &str = r#"ip=$1; port=$2; n=$3; path=$4; go=$5; out=$6
# A write to a closed connection fails (EPIPE), and says none, instead of killing the shell.
trap '' PIPE
get() {
  printf 'GET %s HTTP/1.1\r\nHost: x\r\n\r\n' "$path" >&$1 2>/dev/null || { echo none; return; }
  local len=0 line body rc=0
  while IFS= read -r -t 3 line <&$1 || { rc=$?; false; }; do
    line=${line%$'\r'}
    [ -z "$line" ] && break
    case "${line,,}" in content-length:*) len=${line#*:}; len=${len// /};; esac
  done
  [ "$rc" -gt 128 ] && echo silent >> "$out.silent"
  [ "$len" -gt 0 ] 2>/dev/null && IFS= read -r -t 3 -N "$len" body <&$1
  echo "${body:-none}"
}
for i in $(seq 3 $((n+2))); do
  eval "exec $i<>/dev/tcp/$ip/$port" && echo "held $(get $i)" >> "$out" || echo "held none" >> "$out"
done
for t in $(seq 400); do [ -e "$go" ] && break; sleep 0.1; done
for i in $(seq 3 $((n+2))); do echo "again $(get $i)" >> "$out"; done
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summaries() {
        let text = "PING 172.211.0.19 (172.211.0.19) 56(84) bytes of data.\n\
                    64 bytes from 172.211.0.19: icmp_seq=1 ttl=64 time=0.081 ms\n\n\
                    --- 172.211.0.19 ping statistics ---\n\
                    3 packets transmitted, 3 received, 0% packet loss, time 405ms\n\
                    rtt min/avg/max/mdev = 0.070/0.082/0.095/0.010 ms\n";
        assert_eq!(
            parse_ping(text),
            PingResult {
                transmitted: 3,
                received: 3,
                min_ms: Some(0.070),
                avg_ms: Some(0.082)
            }
        );
        let lost = "--- 172.211.0.18 ping statistics ---\n3 packets transmitted, 0 received, 100% packet loss, time 2050ms\n";
        assert_eq!(
            parse_ping(lost),
            PingResult {
                transmitted: 3,
                received: 0,
                min_ms: None,
                avg_ms: None
            }
        );
        let errors = "5 packets transmitted, 0 received, +5 errors, 100% packet loss, time 4ms\n";
        assert_eq!(parse_ping(errors).received, 0);
    }

    #[test]
    fn parses_traceroute_hops() {
        let text = "traceroute to 198.51.100.100 (198.51.100.100), 8 hops max, 60 byte packets\n \
                    1  172.211.0.17  0.231 ms\n 2  100.64.0.1  0.3 ms\n 3  *\n 4  203.0.113.1  0.5 ms\n \
                    5  198.51.100.100  0.6 ms\n";
        assert_eq!(
            parse_traceroute(text),
            vec![
                Some("172.211.0.17".to_string()),
                Some("100.64.0.1".to_string()),
                None,
                Some("203.0.113.1".to_string()),
                Some("198.51.100.100".to_string())
            ]
        );
    }

    #[test]
    fn finds_apply_actions() {
        let text = "namespace/ns-dev unchanged\nservice/wordpress configured\n\nNamespaces (T1 gateway):\n";
        assert_eq!(
            apply_actions(text),
            vec![
                ("namespace/ns-dev".into(), "unchanged".into()),
                ("service/wordpress".into(), "configured".into())
            ]
        );
    }

    #[test]
    fn bounded_commands_are_killed_when_they_overrun() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_bounded(cmd, None, Duration::from_millis(200))
        }));
        assert!(r.is_err());
        let mut cmd = Command::new("cat");
        cmd.arg("-");
        let o = run_bounded(cmd, Some("hello"), Duration::from_secs(10));
        assert_eq!(stdout(&o), "hello");
    }
}
