//! The daemon's life as an operator meets it: options it cannot run with are refused before it
//! makes anything, and it cleans up after itself however it ends.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pacific_netns_tests::*;

/// A socket and a prefix of our own, for a daemon started here rather than by `Lab` (the lab's
/// `lab up` would not get as far as these tests need, or would start it otherwise). Dropping it
/// removes whatever is left: the daemon (by its socket on its command line), its namespaces.
struct OwnDaemon {
    dir: PathBuf,
    socket: PathBuf,
    prefix: String,
}

impl OwnDaemon {
    fn new(tag: &str) -> OwnDaemon {
        let dir = std::env::temp_dir().join(format!("pacific-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the daemon");
        OwnDaemon {
            socket: dir.join("pacific.sock"),
            prefix: format!("pac{tag}p{}", std::process::id()),
            dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(pacific_bin());
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("PACIFIC_SOCKET")
            .env_remove("PACIFIC_PREFIX");
        cmd
    }

    /// `pacific --socket SOCKET ARGS...`, given at most `secs` seconds.
    fn run(&self, args: &[&str], secs: u64) -> Output {
        run_bounded(self.command(args), None, Duration::from_secs(secs))
    }

    fn record(&self) -> PathBuf {
        self.dir.join("pacific.lab.json")
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        for pid in pids_with_cmdline(&self.socket.display().to_string()) {
            signal(pid, libc::SIGKILL);
        }
        delete_netns_with_prefix(&self.prefix);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `--workers 0` was taken: the daemon ran (one worker) while it said `0 worker(s)` and
/// `daemon.status` `"workers": 0`. `--workers 1000` failed only at the first TAP, with `cannot
/// create the T0 uplink: TUNSETIFF uplink: Argument list too long`, naming no option, and left
/// the upstream router's namespace and the lab record behind. A `--busy-poll-us` of days was
/// taken. Each is now refused at once, naming the option, with nothing made.
#[test]
fn daemon_options_out_of_range_are_refused_naming_the_option() {
    if !require_netns() {
        return;
    }
    let own = OwnDaemon::new("qa3opt");
    let prefix = own.prefix.clone();
    for (option, value) in [
        ("--workers", "0"),
        ("--workers", "1000"),
        ("--busy-poll-us", "100000000000"),
    ] {
        let cmd = own.command(&["daemon", "--prefix", &prefix, option, value]);
        let out = run_bounded(cmd, None, Duration::from_secs(30));
        assert_eq!(
            out.status.code(),
            Some(1),
            "pacific daemon {option} {value} (a usage error, exit 1 as kubectl's):\n{}",
            describe(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains(option) && err.contains(value),
            "the error names {option} {value}: {err}"
        );
        assert_eq!(netns_with_prefix(&prefix), Vec::<String>::new());
        assert!(!own.record().exists(), "{option} {value} left a record");
        // `lab up` refuses them as well, before it starts a daemon.
        let cmd = own.command(&["lab", "up", "--prefix", &prefix, option, value]);
        let out = run_bounded(cmd, None, Duration::from_secs(60));
        assert!(!out.status.success(), "lab up {option} {value} succeeded");
        assert!(stderr(&out).contains(option), "{}", describe(&out));
        assert_eq!(netns_with_prefix(&prefix), Vec::<String>::new());
        assert!(
            !own.socket.exists(),
            "lab up {option} {value} started a daemon"
        );
    }
    // The bounds themselves are good: a daemon of 256 workers starts (and stops on SIGTERM).
    let mut child = own
        .command(&["daemon", "--prefix", &prefix, "--workers", "256"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pacific daemon");
    let answered = wait_until(Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&own.socket).is_ok()
    });
    signal(child.id(), libc::SIGTERM);
    let _ = child.wait();
    assert!(answered, "a daemon of 256 workers never answered");
}

/// The daemon logged with `eprintln!`, which panics when stderr is a pipe whose reader has gone
/// (`pacific daemon 2>&1 | head`, a logger that died): its next line (here the `stopping` of a
/// SIGTERM) killed it with a panic, leaving its namespaces, socket and record behind. It now
/// drops the lines nobody reads and stops cleanly.
#[test]
fn a_daemon_whose_log_reader_is_gone_still_stops_cleanly() {
    if !require_netns() {
        return;
    }
    let own = OwnDaemon::new("qa3log");
    let mut child = own
        .command(&["daemon", "--prefix", &own.prefix, "--workers", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pacific daemon");
    // Read its log up to the line that says it serves, then close the pipe.
    let mut log = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut line = String::new();
    let mut serving = false;
    for _ in 0..20 {
        line.clear();
        if log.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains("control socket") {
            serving = true;
            break;
        }
    }
    drop(log);
    assert!(
        serving,
        "the daemon never said it serves (last line {line:?})"
    );
    assert!(wait_until(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&own.socket).is_ok()
    }));
    assert_eq!(
        netns_with_prefix(&own.prefix),
        vec![format!("{}-upstream", own.prefix)]
    );
    signal(child.id(), libc::SIGTERM);
    let stopped = wait_until(Duration::from_secs(30), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    assert!(stopped, "the daemon did not stop on SIGTERM");
    let status = child.wait().expect("the daemon's status");
    assert!(status.success(), "the daemon ended with {status}");
    assert_eq!(netns_with_prefix(&own.prefix), Vec::<String>::new());
    assert!(!own.socket.exists(), "the socket was left behind");
    assert!(!own.record().exists(), "the lab record was left behind");
}

/// The upstream router's uplink flapping faster than the daemon looks at it (once a second):
/// `ip link set uplink down` and `up` back to back took every route through it away, and the
/// daemon, which waited to see the link down before it advertised them again, never did. The
/// VIP and the outside stayed unreachable until the next change. It now looks for the routes.
#[test]
fn a_quick_flap_of_the_routers_uplink_gives_its_routes_back() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa3flap");
    let upstream = lab.upstream_netns();
    let vip = "http://172.80.88.5/hostname";
    assert!(curl_until(&lab, "ext/hop", vip, Duration::from_secs(10)).starts_with("wordpress-"));
    // Down and up in one `ip` run: milliseconds apart.
    let batch = lab.dir.join("flap.batch");
    std::fs::write(&batch, "link set dev uplink down\nlink set dev uplink up\n")
        .expect("the batch file");
    let out = lab.ip_in(&upstream, &["-batch", &batch.display().to_string()]);
    assert!(out.status.success(), "{}", describe(&out));
    let bgp = || stdout(&lab.ip_in(&upstream, &["route", "show", "proto", "bgp"]));
    let back = wait_until(Duration::from_secs(10), || bgp().contains("172.80.88.5 "));
    assert!(back, "the router's routes after the flap:\n{}", bgp());
    assert!(
        curl_until(&lab, "ext/hop", vip, Duration::from_secs(20)).starts_with("wordpress-"),
        "the VIP stays unreachable after the flap"
    );
    // The segments are routed back too: a pod reaches the outside.
    let out = lab.exec(
        "ns-dev/testbox",
        &["ping", "-c", "1", "-W", "2", "198.51.100.100"],
    );
    assert!(out.status.success(), "{}", describe(&out));
}

/// Two sockets, one prefix (a forgotten `--socket`, with the right `--prefix`). Before, a second
/// daemon of the prefix failed at its uplink (`TUNSETIFF uplink: Device or resource busy`) and
/// recorded the first one's upstream router as its own; `lab down` on that socket, finding no
/// daemon there, deleted every namespace of the prefix from under the daemon serving them: the
/// lab was gone while its daemon ran on. Now the daemon refuses to start and `lab down` does
/// nothing, each saying why.
#[test]
fn a_second_socket_with_a_running_labs_prefix_leaves_that_lab_alone() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa3pfx");
    let vip = "http://172.80.88.5/hostname";
    assert!(curl_until(&lab, "ext/hop", vip, Duration::from_secs(10)).starts_with("wordpress-"));
    let namespaces = netns_with_prefix(&lab.prefix);
    let other = OwnDaemon::new("qa3pfo");
    let daemon = other.run(&["daemon", "--prefix", &lab.prefix, "--workers", "2"], 30);
    let down = other.run(&["lab", "down", "--prefix", &lab.prefix], 60);
    assert_eq!(netns_with_prefix(&lab.prefix), namespaces);
    assert!(
        curl(&lab, "ext/hop", vip).starts_with("wordpress-"),
        "the lab's VIP stopped answering"
    );
    assert_eq!(daemon.status.code(), Some(1), "{}", describe(&daemon));
    assert!(
        stderr(&daemon).contains(&format!(
            "another daemon runs with the prefix {}",
            lab.prefix
        )),
        "{}",
        describe(&daemon)
    );
    assert!(!other.record().exists(), "the refused daemon left a record");
    assert_eq!(down.status.code(), Some(1), "{}", describe(&down));
    assert!(
        stderr(&down).contains("nothing done"),
        "{}",
        describe(&down)
    );
    // The lab's own `lab down` still takes it all away.
    let out = lab.down();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

/// A `--socket` that names a regular file (a typo, `--socket notes.txt`): `pacific daemon`,
/// `lab up` and `lab down` each deleted the file (a daemon took it for a dead one's socket,
/// `lab down` for its own) and the lab came up on its name. They now refuse it, naming it, and
/// the file stays. A path too long for a Unix socket's address is refused as too long, with
/// nothing made, rather than after the daemon started as `path must be shorter than SUN_LEN`.
#[test]
fn a_socket_path_that_is_a_file_or_too_long_is_refused_and_the_file_kept() {
    if !require_netns() {
        return;
    }
    let own = OwnDaemon::new("qa24sock");
    let prefix = own.prefix.clone();
    std::fs::write(&own.socket, "my notes\n").expect("a regular file");
    for args in [
        vec!["daemon", "--prefix", &prefix],
        vec!["lab", "up", "--prefix", &prefix],
        vec!["lab", "down", "--prefix", &prefix],
    ] {
        let out = own.run(&args, 60);
        assert_eq!(
            std::fs::read_to_string(&own.socket).ok().as_deref(),
            Some("my notes\n"),
            "pacific {args:?} deleted the file at the socket path:\n{}",
            describe(&out)
        );
        assert_eq!(netns_with_prefix(&prefix), Vec::<String>::new());
        if args[0] != "lab" || args[1] != "down" {
            assert!(
                !out.status.success(),
                "pacific {args:?}: {}",
                describe(&out)
            );
            assert!(
                stderr(&out).contains("is a regular file, not a daemon's socket"),
                "pacific {args:?}: {}",
                describe(&out)
            );
        }
    }
    let long = own.dir.join(format!("{}.sock", "s".repeat(110)));
    let mut cmd = Command::new(pacific_bin());
    cmd.arg("--socket")
        .arg(&long)
        .args(["lab", "up", "--prefix", &prefix])
        .env_remove("PACIFIC_SOCKET")
        .env_remove("PACIFIC_PREFIX");
    let out = run_bounded(cmd, None, Duration::from_secs(60));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("a Unix socket's path is at most 107"),
        "{}",
        describe(&out)
    );
    assert_eq!(netns_with_prefix(&prefix), Vec::<String>::new());
}

/// `lab up FILE` with a FILE the daemon refuses (a mistyped field): the request failed with a
/// clear error, but the daemon `lab up` had just started stayed, with its upstream router's
/// namespace and the lab record: a lab of nothing the user did not know was up. It is stopped
/// again now; a lab that was up before keeps running through a refused `lab up`.
#[test]
fn lab_up_with_a_refused_file_leaves_no_daemon_it_started() {
    if !require_netns() {
        return;
    }
    let own = OwnDaemon::new("qa24bad");
    let prefix = own.prefix.clone();
    let bad = own.dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n---\napiVersion: v1\n\
         kind: Pod\nmetadata:\n  name: web\n  namespace: team\nspec:\n  containers:\n  \
         - name: web\n    image: nginx\n    prots: [{containerPort: 80}]\n",
    )
    .expect("a manifest");
    let good = own.dir.join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n",
    )
    .expect("a manifest");
    let bad_arg = bad.display().to_string();
    let lab_up_bad = || own.run(&["lab", "up", "--prefix", &prefix, &bad_arg], 60);
    let out = lab_up_bad();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr(&out).contains("prots"), "{}", describe(&out));
    assert!(
        wait_until(Duration::from_secs(10), || netns_with_prefix(&prefix)
            .is_empty()),
        "lab up of a refused file left {:?}",
        netns_with_prefix(&prefix)
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&own.socket).is_err(),
        "a daemon still answers after a refused lab up"
    );
    assert!(!own.record().exists(), "a lab record was left");
    // A lab that is up stays up through a refused file.
    let out = own.run(
        &[
            "lab",
            "up",
            "--prefix",
            &prefix,
            &good.display().to_string(),
        ],
        60,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let out = lab_up_bad();
    assert!(!out.status.success(), "{}", describe(&out));
    let status = own.run(&["rpc", "daemon.status"], 10);
    assert!(
        status.status.success(),
        "the running lab went: {}",
        describe(&status)
    );
    let out = own.run(&["lab", "down", "--prefix", &prefix], 60);
    assert!(out.status.success(), "{}", describe(&out));
}

/// `lab up` of a file with a pod the daemon cannot build (its namespace already holds an
/// `eth0`): the error named the pod, but the summary after it listed the pod with its address
/// as if it ran, and `Try:` offered pinging it from its neighbour. The summary now gives its
/// status and why, and suggests only pods that run.
#[test]
fn lab_up_summary_shows_a_pod_it_could_not_build_and_suggests_no_ping_to_it() {
    if !require_netns() {
        return;
    }
    let own = OwnDaemon::new("qa24half");
    let prefix = own.prefix.clone();
    let taken = format!("{prefix}-team-web");
    let made = Command::new("ip").args(["netns", "add", &taken]).status();
    assert!(made.is_ok_and(|s| s.success()), "ip netns add {taken}");
    let dummy = Command::new("ip")
        .args(["-n", &taken, "tuntap", "add", "dev", "eth0", "mode", "tap"])
        .status();
    assert!(dummy.is_ok_and(|s| s.success()), "an eth0 in {taken}");
    let file = own.dir.join("half.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\napiVersion: v1\n\
         kind: Pod\nmetadata: {name: web, namespace: team}\n\
         spec: {containers: [{name: web, image: nginx}]}\n---\napiVersion: v1\nkind: Pod\n\
         metadata: {name: ok, namespace: team}\n\
         spec: {containers: [{name: web, image: nginx}]}\n",
    )
    .expect("a manifest");
    let out = own.run(
        &[
            "lab",
            "up",
            "--prefix",
            &prefix,
            &file.display().to_string(),
        ],
        60,
    );
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(stderr(&out).contains("pod team/web"), "{}", describe(&out));
    let text = stdout(&out);
    let web = text
        .lines()
        .find(|l| l.trim_start().starts_with("team/web "))
        .unwrap_or_else(|| panic!("no team/web in the summary:\n{text}"));
    assert!(web.contains("CreateContainerError"), "{web}");
    let web_ip = web
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        !text.contains(&format!("ping -c1 {web_ip}")),
        "the summary suggests pinging the pod that was not built:\n{text}"
    );
    let out = own.run(&["lab", "down", "--prefix", &prefix], 60);
    assert!(out.status.success(), "{}", describe(&out));
}

/// Two `lab up`s on one fresh socket at once (two terminals, a script run twice): each found
/// no daemon and started one. The second daemon failed on the T0 uplink and, cleaning up after
/// itself, deleted the upstream router's namespace of the first, which went on running without
/// it: both `lab up`s said the lab was up, and no pod reached the upstream router. The second
/// daemon now gives way to the first (a lock beside the socket) and both `lab up`s apply to it.
#[test]
fn two_lab_ups_at_once_on_one_socket_share_one_daemon_and_its_upstream_router() {
    if !require_netns() {
        return;
    }
    let own = OwnDaemon::new("qa24race");
    let prefix = own.prefix.clone();
    let file = own.dir.join("lab.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\napiVersion: v1\n\
         kind: Pod\nmetadata: {name: ok, namespace: team}\n\
         spec: {containers: [{name: web, image: nginx}]}\n",
    )
    .expect("a manifest");
    let file = file.display().to_string();
    let ups: Vec<_> = (0..2)
        .map(|_| {
            let cmd = own.command(&["lab", "up", "--prefix", &prefix, &file]);
            std::thread::spawn(move || run_bounded(cmd, None, Duration::from_secs(60)))
        })
        .collect();
    for up in ups {
        let out = up.join().expect("lab up");
        assert!(out.status.success(), "{}", describe(&out));
    }
    let upstream = format!("{prefix}-upstream");
    assert!(
        netns_with_prefix(&prefix).contains(&upstream),
        "the upstream router's namespace is gone: {:?}",
        netns_with_prefix(&prefix)
    );
    let ping = own.run(
        &["exec", "team/ok", "--", "ping", "-c1", "-W2", "203.0.113.1"],
        20,
    );
    assert!(
        ping.status.success(),
        "a pod does not reach the upstream router: {}",
        describe(&ping)
    );
    let out = own.run(&["lab", "down", "--prefix", &prefix], 60);
    assert!(out.status.success(), "{}", describe(&out));
}

/// `pacific daemon` run in a terminal that closes (an ssh session ending) gets SIGHUP, whose
/// default killed it where it stood: the pods' namespaces and processes, the upstream router,
/// the socket and the lab record all stayed. SIGHUP now stops it as SIGTERM and SIGINT do.
#[test]
fn a_daemon_whose_terminal_hangs_up_removes_its_lab() {
    if !require_netns() {
        return;
    }
    let own = OwnDaemon::new("qa24hup");
    let prefix = own.prefix.clone();
    let mut child = own
        .command(&["daemon", "--prefix", &prefix])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pacific daemon");
    let answered = wait_until(Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&own.socket).is_ok()
    });
    assert!(answered, "the daemon never answered");
    let out = run_bounded(
        own.command(&["apply", "-f", "-"]),
        Some(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\napiVersion: v1\n\
             kind: Pod\nmetadata: {name: ok, namespace: team}\n\
             spec: {containers: [{name: web, image: nginx}]}\n",
        ),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        netns_with_prefix(&prefix).len() >= 2,
        "the pod's namespace was not made"
    );
    signal(child.id(), libc::SIGHUP);
    let ended = wait_until(Duration::from_secs(15), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    assert!(ended, "the daemon did not end on SIGHUP");
    assert_eq!(netns_with_prefix(&prefix), Vec::<String>::new());
    assert!(!own.socket.exists(), "the socket was left behind");
    assert!(!own.record().exists(), "the lab record was left behind");
}

/// `lab down` of a lab whose daemon hangs (stopped with SIGSTOP here, as a deadlock would
/// leave it): `lab down` waited five minutes for its status, then as long again for each
/// request after it. It now gives a daemon `lab up` started 10 s, then ends it and removes the
/// lab from its record, as after a SIGKILL.
#[test]
fn lab_down_of_a_hung_daemon_ends_it_and_removes_the_lab() {
    if !require_netns() {
        return;
    }
    let own = OwnDaemon::new("qa24hung");
    let prefix = own.prefix.clone();
    let file = own.dir.join("lab.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\napiVersion: v1\n\
         kind: Pod\nmetadata: {name: ok, namespace: team}\n\
         spec: {containers: [{name: web, image: nginx}]}\n",
    )
    .expect("a manifest");
    let out = own.run(
        &[
            "lab",
            "up",
            "--prefix",
            &prefix,
            &file.display().to_string(),
        ],
        60,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(own.record()).expect("the lab record"))
            .expect("the record is JSON");
    let pid = record["daemon_pid"].as_u64().expect("the daemon's pid") as u32;
    signal(pid, libc::SIGSTOP);
    let started = std::time::Instant::now();
    let out = own.run(&["lab", "down", "--prefix", &prefix], 45);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "lab down took {:?}",
        started.elapsed()
    );
    assert_eq!(netns_with_prefix(&prefix), Vec::<String>::new());
    assert!(!own.socket.exists(), "the socket was left behind");
}
