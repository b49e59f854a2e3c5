//! Thin wrappers over iproute2 for the lab: namespaces, links inside them, and processes run in
//! them.
//!
//! Each function runs one or a few `ip` commands and turns a failure into a [`LabError`] carrying
//! the command line and the command's stderr, so a failed `pacific lab up` says exactly what to
//! retype to see the problem. Operations are idempotent where the lab re-runs them (adding an
//! existing namespace, deleting a missing one, `addr replace`, `route replace`), because a lab is
//! often brought up over the remains of a crashed one.
//!
//! Processes are signalled with the `kill` command and watched through `/proc`, not with
//! `libc::kill`, which would need `unsafe` in a module that has no other reason for it.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use pacific_dataplane::tables::MacAddr;

use super::LabError;

/// Where `ip netns add` mounts a namespace.
pub const NETNS_DIR: &str = "/run/netns";
/// How long processes get to exit after SIGTERM before they get SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
/// Transmit queue length for lab links: the kernel default of 1000 drops bursts a userspace
/// router can emit in one batch.
pub const LAB_TXQUEUELEN: &str = "10000";

/// Gives `dev` in `ns` no queueing discipline (`tc qdisc replace ... root noqueue`), before its
/// queue length is raised and it comes up. A multiqueue TAP has 256 transmit queues whatever
/// number the daemon opens, and the default `mq` root hangs a pfifo_fast on each, whose three
/// bands take a ring of `txqueuelen` slots: about 100 MB of unreclaimable kernel memory a port at
/// [`LAB_TXQUEUELEN`], so a lab of 160 pods held 16 GB and the OOM killer took the daemon. A TAP
/// drops when its own ring (that same length) is full rather than stopping the queue, so the
/// qdisc held nothing anyway.
pub fn no_queue_discipline(ns: &str, dev: &str) -> Result<(), LabError> {
    run_checked(
        "tc",
        &["-n", ns, "qdisc", "replace", "dev", dev, "root", "noqueue"],
    )
    .map(drop)
}

/// Runs `program args...`; on success returns its stdout.
pub fn run_checked<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, LabError> {
    let out = run_output(program, args)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::from_output(command_line(program, args), &out))
    }
}

/// Runs `program args...` and returns its output whatever its exit status; an error only when it
/// could not be started.
fn run_output<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output, LabError> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            LabError::new(
                command_line(program, args),
                format!("cannot run {program}: {e}"),
            )
        })
}

/// `program args...` quoted so that a person can paste it into a shell.
pub fn command_line<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut line = program.to_string();
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(&a.as_ref().to_string_lossy()));
    }
    line
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `ip ARGS...`.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run_checked("ip", args)
}

/// `ip -n NS ARGS...`: an `ip` command acting inside namespace `ns`.
pub fn ip_netns(ns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut full = Vec::with_capacity(args.len() + 2);
    full.extend_from_slice(&["-n", ns]);
    full.extend_from_slice(args);
    ip(&full)
}

/// Checks that `name` is a namespace name we are willing to create or delete: it becomes a file
/// name under /run/netns, so no slashes, no `.`/`..`, nothing a shell would mangle.
pub fn validate_netns_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(LabError::new(
            format!("namespace name {name:?}"),
            "must be 1-64 characters of letters, digits, '-', '_' or '.', not starting with '.' or '-'",
        ))
    }
}

/// The file that pins namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// True when `ip netns add NAME` has been run and not undone.
pub fn netns_exists(name: &str) -> bool {
    validate_netns_name(name).is_ok() && netns_path(name).exists()
}

/// Creates namespace `name`; nothing to do when it exists.
pub fn add_netns(name: &str) -> Result<(), LabError> {
    validate_netns_name(name)?;
    if netns_exists(name) {
        return Ok(());
    }
    match ip(&["netns", "add", name]) {
        Ok(_) => Ok(()),
        // Lost a race with another creator: the namespace is there, which is what we wanted.
        Err(_) if netns_exists(name) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes namespace `name` after ending every process inside it (SIGTERM, then SIGKILL after
/// [`TERM_GRACE`]). A process left inside would keep the namespace, and the links in it, alive
/// after `ip netns del`. Nothing to do when the namespace does not exist.
pub fn delete_netns(name: &str) -> Result<(), LabError> {
    validate_netns_name(name)?;
    if !netns_exists(name) {
        return Ok(());
    }
    // Twice: a process may fork while the first round is being killed.
    for _ in 0..2 {
        let pids = netns_pids(name)?;
        if pids.is_empty() {
            break;
        }
        terminate_pids(&pids, TERM_GRACE);
    }
    match ip(&["netns", "del", name]) {
        Ok(_) => Ok(()),
        Err(_) if !netns_exists(name) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every namespace `ip netns list` shows.
pub fn list_netns() -> Result<Vec<String>, LabError> {
    Ok(parse_netns_list(&ip(&["netns", "list"])?))
}

/// Every namespace whose name starts with `prefix`.
pub fn list_netns_with_prefix(prefix: &str) -> Result<Vec<String>, LabError> {
    Ok(list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// Parses `ip netns list`, whose lines are `NAME` or `NAME (id: N)`.
pub fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The processes whose network namespace is `name` (`ip netns pids NAME`).
pub fn netns_pids(name: &str) -> Result<Vec<u32>, LabError> {
    let out = ip(&["netns", "pids", name])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Runs `argv` inside namespace `ns` (`ip netns exec NS ARGV...`) and returns its output, whatever
/// its exit status; an error only when it could not be started.
pub fn exec_in_netns<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> Result<Output, LabError> {
    run_output("ip", &netns_exec_args(ns, argv))
}

/// Like [`exec_in_netns`], but a non-zero exit is an error; returns stdout.
pub fn exec_in_netns_checked<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> Result<String, LabError> {
    run_checked("ip", &netns_exec_args(ns, argv))
}

fn netns_exec_args<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["netns".into(), "exec".into(), ns.into()];
    args.extend(argv.iter().map(|a| a.as_ref().to_os_string()));
    args
}

/// Sets sysctls (`key=value`) inside namespace `ns`. `/proc/sys/net` shows the namespace of the
/// process reading it, so this has to run in the namespace. Unknown keys are ignored (`-e`): a
/// kernel without IPv6 has nothing to disable.
pub fn sysctl_in_netns(ns: &str, settings: &[&str]) -> Result<(), LabError> {
    let mut argv = vec!["sysctl", "-e", "-q", "-w"];
    argv.extend_from_slice(settings);
    exec_in_netns_checked(ns, &argv).map(|_| ())
}

/// Turns IPv6 off in `ns`, for existing and future links: the seed is IPv4-only, and router
/// solicitations and DAD probes would otherwise be the first frames on every port.
pub fn disable_ipv6(ns: &str) -> Result<(), LabError> {
    sysctl_in_netns(
        ns,
        &[
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )
}

/// Starts `argv` inside `ns`, detached: its own process group (a Ctrl-C at the terminal that ran
/// `pacific lab up` does not reach it), stdin from /dev/null, stdout and stderr appended to `log`.
/// Returns its pid (`ip netns exec` execs the program, so the pid is the program's). A thread
/// waits for it so that it never lingers as a zombie of a long-lived daemon.
pub fn spawn_in_netns<S: AsRef<OsStr>>(
    ns: &str,
    argv: &[S],
    env: &[(String, String)],
    log: &Path,
) -> io::Result<u32> {
    if argv.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "spawn_in_netns: empty command",
        ));
    }
    validate_netns_name(ns)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open log {}: {e}", log.display())))?;
    let err = out.try_clone()?;
    let child = Command::new("ip")
        .args(netns_exec_args(ns, argv))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot run {}: {e}",
                    command_line("ip", &netns_exec_args(ns, argv))
                ),
            )
        })?;
    let pid = child.id();
    reap_later(child)?;
    Ok(pid)
}

/// The children `spawn_in_netns` started and nobody waits for yet.
static UNREAPED: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// Hands `child` to the one reaper thread, which collects every exited child a few times a second,
/// so that none lingers as a zombie of a long-lived daemon (a lab of 600 pods once had a thread
/// each waiting for its process). Waiting on each `Child` rather than on any pid leaves alone the
/// children that `Command::output` waits for itself.
fn reap_later(child: Child) -> io::Result<()> {
    static REAPER: OnceLock<io::Result<()>> = OnceLock::new();
    lock_unreaped().push(child);
    let started = REAPER.get_or_init(|| {
        thread::Builder::new()
            .name("reaper".into())
            .spawn(|| loop {
                thread::sleep(Duration::from_millis(250));
                // An error from try_wait means there is nothing left to wait for.
                lock_unreaped().retain_mut(|c| matches!(c.try_wait(), Ok(None)));
            })
            .map(drop)
    });
    match started {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot start the reaper thread: {e}"),
        )),
    }
}

fn lock_unreaped() -> std::sync::MutexGuard<'static, Vec<Child>> {
    // A panic elsewhere while holding the lock leaves a list that is still sound.
    UNREAPED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// True when process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `PID (COMM) STATE ...`; COMM may contain spaces and parentheses, so split at the last ')'.
    match stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
    {
        Some(state) => state != "Z" && state != "X",
        None => false,
    }
}

/// Waits until process `pid` has a TCP listener of its own on each of `tcp` and a socket of its
/// own bound to each of `udp` (as `/proc/PID/net/tcp` and `udp` show them, among the sockets of
/// its file descriptors), or until `deadline`, or until `pid` is gone. True when they are all
/// there. Its own: the old server it replaces may still listen on the same ports in the same
/// namespace (SO_REUSEPORT), and is no sign that the new one does.
pub fn wait_listening(pid: u32, tcp: &[u16], udp: &[u16], deadline: Instant) -> bool {
    let all_there = || {
        let table = |proto: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{proto}"));
        let (Ok(tcp_table), Ok(udp_table)) = (table("tcp"), table("udp")) else {
            return false;
        };
        let own = socket_inodes(pid);
        let listening = socket_table_ports(&tcp_table, Some(TCP_LISTEN), Some(&own));
        let bound = socket_table_ports(&udp_table, None, Some(&own));
        tcp.iter().all(|p| listening.contains(p)) && udp.iter().all(|p| bound.contains(p))
    };
    loop {
        if all_there() {
            return true;
        }
        if !pid_alive(pid) || Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// `st` of a listening socket in `/proc/net/tcp` (`TCP_LISTEN` in the kernel's `tcp_states.h`).
const TCP_LISTEN: &str = "0A";

/// The inodes of the sockets among the file descriptors of `pid` (links `socket:[INODE]`).
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    fds.filter_map(|fd| {
        let target = std::fs::read_link(fd.ok()?.path()).ok()?;
        let target = target.to_str()?;
        target
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    })
    .collect()
}

/// The local ports in a `/proc/net/tcp` or `/proc/net/udp` table, of the sockets in state `state`
/// (any state when `None`) whose inode is one of `inodes` (any when `None`). A line reads
/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`, the
/// addresses as `HEXADDR:HEXPORT`.
fn socket_table_ports(
    table: &str,
    state: Option<&str>,
    inodes: Option<&BTreeSet<u64>>,
) -> BTreeSet<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let local = fields.next()?;
            let st = fields.nth(1)?;
            if state.is_some_and(|want| want != st) {
                return None;
            }
            if let Some(inodes) = inodes {
                let inode: u64 = fields.nth(5)?.parse().ok()?;
                if !inodes.contains(&inode) {
                    return None;
                }
            }
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// The command line of `pid` with its NUL separators turned into spaces, if readable.
pub fn pid_cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text: String = String::from_utf8_lossy(&raw).replace('\0', " ");
    Some(text.trim_end().to_string())
}

/// Sends `signal` (a name such as `TERM` or `KILL`) to `pid` with the `kill` command. A process
/// that is already gone is not an error.
pub fn signal_pid(pid: u32, signal: &str) -> Result<(), LabError> {
    match run_checked("kill", &["-s", signal, &pid.to_string()]) {
        Ok(_) => Ok(()),
        Err(_) if !pid_alive(pid) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A failure on stderr, or nothing when stderr is gone (the daemon calls this while it stops:
/// `eprintln!` would panic there and leave the rest of the lab behind).
fn report(e: &dyn std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "lab: {e}");
}

/// SIGTERM to every pid, up to `grace` for them to exit, SIGKILL to the survivors. Returns how
/// many were alive at the start. Best effort: a pid that cannot be signalled is reported on stderr.
pub fn terminate_pids(pids: &[u32], grace: Duration) -> usize {
    let alive: Vec<u32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
    for &pid in &alive {
        if let Err(e) = signal_pid(pid, "TERM") {
            report(&e);
        }
    }
    let deadline = Instant::now() + grace;
    while alive.iter().any(|&p| pid_alive(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    for &pid in alive.iter().filter(|&&p| pid_alive(p)) {
        if let Err(e) = signal_pid(pid, "KILL") {
            report(&e);
        }
    }
    // SIGKILL is not instantaneous: give the kernel a moment to tear the processes down.
    let deadline = Instant::now() + Duration::from_secs(1);
    while alive.iter().any(|&p| pid_alive(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    alive.len()
}

/// True when link `ifname` exists in namespace `ns`.
pub fn link_exists(ns: &str, ifname: &str) -> bool {
    ip_netns(ns, &["link", "show", "dev", ifname]).is_ok()
}

/// How a pod's (or node VM's) interface is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    /// The name inside the namespace, normally `eth0`.
    pub ifname: String,
    pub mac: MacAddr,
    /// The pod's own address (host bits kept) and its segment's prefix length.
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The segment gateway (the T1's address on the segment).
    pub gateway: Ipv4Addr,
    pub mtu: u16,
}

/// Configures a pod interface that already sits in `ns` (a TAP the daemon moved there): IPv6 off,
/// `lo` up, MAC, MTU and queue length, link up, address, default route via the gateway. Safe to
/// repeat. An address from an earlier, different configuration is not removed.
pub fn configure_pod_interface(ns: &str, intf: &PodInterface) -> Result<(), LabError> {
    if intf.prefix_len > 32 {
        return Err(LabError::new(
            format!("configure {} in {ns}", intf.ifname),
            format!("prefix length {} is over 32", intf.prefix_len),
        ));
    }
    let dev = intf.ifname.as_str();
    disable_ipv6(ns)?;
    ip_netns(ns, &["link", "set", "dev", "lo", "up"])?;
    let (mac, mtu) = (intf.mac.to_string(), intf.mtu.to_string());
    no_queue_discipline(ns, dev)?;
    ip_netns(
        ns,
        &[
            "link",
            "set",
            "dev",
            dev,
            "address",
            &mac,
            "mtu",
            &mtu,
            "txqueuelen",
            LAB_TXQUEUELEN,
        ],
    )?;
    ip_netns(ns, &["link", "set", "dev", dev, "up"])?;
    let cidr = format!("{}/{}", intf.addr, intf.prefix_len);
    ip_netns(ns, &["addr", "replace", &cidr, "dev", dev])?;
    ip_netns(
        ns,
        &[
            "route",
            "replace",
            "default",
            "via",
            &intf.gateway.to_string(),
            "dev",
            dev,
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::test_support::{netns_available, ns_name, NsGuard};

    #[test]
    fn parses_netns_list() {
        let text = "pac-dev-wordpress (id: 3)\npac-ext-router (id: 0)\nplain\n\n";
        assert_eq!(
            parse_netns_list(text),
            vec!["pac-dev-wordpress", "pac-ext-router", "plain"]
        );
        assert!(parse_netns_list("").is_empty());
    }

    #[test]
    fn reads_ports_from_proc_net_tables() {
        // From a pod running `netexec --http 80 --udp 53`, with a client connection on 8080.
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 81127 1 0000000000000000 100 0 0 10 0
   1: 4F00D3AC:1F90 0500D3AC:C350 01 00000000:00000000 00:00000000 00000000     0        0 81200 1 0000000000000000 20 4 30 10 -1
";
        let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  180: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 81128 2 0000000000000000 0
";
        assert_eq!(
            socket_table_ports(tcp, Some(TCP_LISTEN), None),
            BTreeSet::from([80])
        );
        assert_eq!(
            socket_table_ports(tcp, None, None),
            BTreeSet::from([80, 8080])
        );
        assert_eq!(socket_table_ports(udp, None, None), BTreeSet::from([53]));
        assert!(socket_table_ports("", None, None).is_empty());
        assert!(socket_table_ports("header\n   0: garbage\n", None, None).is_empty());
        // Only the sockets of the inodes asked for: another process's listener is not ours.
        let ours = BTreeSet::from([81200, 81128]);
        assert!(socket_table_ports(tcp, Some(TCP_LISTEN), Some(&ours)).is_empty());
        assert_eq!(
            socket_table_ports(tcp, None, Some(&ours)),
            BTreeSet::from([8080])
        );
        assert_eq!(
            socket_table_ports(udp, None, Some(&ours)),
            BTreeSet::from([53])
        );
    }

    #[test]
    fn waits_for_a_listener_of_its_own_process() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let (tcp_port, udp_port) = (
            listener.local_addr().unwrap().port(),
            udp.local_addr().unwrap().port(),
        );
        let soon = Instant::now() + Duration::from_secs(5);
        assert!(wait_listening(
            std::process::id(),
            &[tcp_port],
            &[udp_port],
            soon
        ));
        // A UDP port is no TCP listener: not there, and the wait ends at its deadline.
        let now = Instant::now() + Duration::from_millis(20);
        assert!(!wait_listening(std::process::id(), &[udp_port], &[], now));
        // Another process of the same namespace (a replacement server beside the old one)
        // does not listen because this one does.
        let mut other = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let now = Instant::now() + Duration::from_millis(50);
        let seen = wait_listening(other.id(), &[tcp_port], &[udp_port], now);
        let _ = other.kill();
        let _ = other.wait();
        assert!(!seen, "a listener of another process counted as its own");
    }

    #[test]
    fn quotes_command_lines() {
        assert_eq!(
            command_line("ip", &["-n", "a b", "it's", "x/24"]),
            r"ip -n 'a b' 'it'\''s' x/24"
        );
        assert_eq!(command_line("ip", &[""]), "ip ''");
    }

    #[test]
    fn rejects_bad_namespace_names() {
        for bad in ["", ".", "..", "a/b", "-x", "a b", &"x".repeat(65)] {
            assert!(validate_netns_name(bad).is_err(), "{bad:?}");
            assert!(add_netns(bad).is_err());
        }
        assert!(validate_netns_name("pac-dev_1.x").is_ok());
    }

    #[test]
    fn failed_command_carries_command_line_and_stderr() {
        let e = ip(&["link", "show", "dev", "pacu-no-such-link"]).unwrap_err();
        assert_eq!(e.command, "ip link show dev pacu-no-such-link");
        assert!(!e.stderr.is_empty());
        assert!(e
            .to_string()
            .starts_with("`ip link show dev pacu-no-such-link` failed: "));
    }

    #[test]
    fn own_process_is_alive_and_readable() {
        let me = std::process::id();
        assert!(pid_alive(me));
        assert!(pid_cmdline(me).is_some());
        assert!(!pid_alive(u32::MAX));
    }

    #[test]
    fn namespace_lifecycle_is_idempotent() {
        if !netns_available("namespace_lifecycle_is_idempotent") {
            return;
        }
        let mut guard = NsGuard::default();
        let ns = guard.add(&ns_name("life"));
        add_netns(&ns).unwrap();
        add_netns(&ns).unwrap();
        assert!(netns_exists(&ns));
        assert_eq!(netns_path(&ns), PathBuf::from(format!("/run/netns/{ns}")));
        assert_eq!(list_netns_with_prefix(&ns).unwrap(), vec![ns.clone()]);
        // Commands run inside: a new namespace has only `lo`.
        let out = exec_in_netns(&ns, &["ip", "-o", "link", "show"]).unwrap();
        let links = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success());
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains(": lo:"));
        delete_netns(&ns).unwrap();
        delete_netns(&ns).unwrap();
        assert!(!netns_exists(&ns));
        assert!(list_netns_with_prefix(&ns).unwrap().is_empty());
    }

    #[test]
    fn pod_interface_is_configured_and_reaches_its_gateway() {
        if !netns_available("pod_interface_is_configured_and_reaches_its_gateway") {
            return;
        }
        let mut guard = NsGuard::default();
        let pod = guard.add(&ns_name("pod"));
        let gw = guard.add(&ns_name("podgw"));
        add_netns(&pod).unwrap();
        add_netns(&gw).unwrap();
        // Stand-in for the TAP the daemon would move into the pod: a veth whose far end plays the
        // T1 gateway.
        ip_netns(
            &gw,
            &[
                "link", "add", "t1", "type", "veth", "peer", "name", "eth0", "netns", &pod,
            ],
        )
        .unwrap();
        ip_netns(&gw, &["addr", "add", "172.211.0.17/28", "dev", "t1"]).unwrap();
        ip_netns(&gw, &["link", "set", "t1", "up"]).unwrap();
        let intf = PodInterface {
            ifname: "eth0".into(),
            mac: "02:50:00:00:00:12".parse().unwrap(),
            addr: Ipv4Addr::new(172, 211, 0, 18),
            prefix_len: 28,
            gateway: Ipv4Addr::new(172, 211, 0, 17),
            mtu: 1500,
        };
        configure_pod_interface(&pod, &intf).unwrap();
        configure_pod_interface(&pod, &intf).unwrap();

        let link = ip_netns(&pod, &["link", "show", "dev", "eth0"]).unwrap();
        assert!(link.contains("link/ether 02:50:00:00:00:12"), "{link}");
        assert!(
            link.contains("mtu 1500") && link.contains("qlen 10000") && link.contains(",UP"),
            "{link}"
        );
        let addrs = ip_netns(&pod, &["-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
        assert_eq!(addrs.matches("inet ").count(), 1, "{addrs}");
        assert!(addrs.contains("172.211.0.18/28"), "{addrs}");
        assert_eq!(ip_netns(&pod, &["-6", "addr", "show"]).unwrap().trim(), "");
        let routes = ip_netns(&pod, &["route", "show", "default"]).unwrap();
        assert_eq!(routes.trim(), "default via 172.211.0.17 dev eth0");
        let ping = exec_in_netns(&pod, &["ping", "-c", "1", "-W", "2", "172.211.0.17"]).unwrap();
        assert!(
            ping.status.success(),
            "{}",
            String::from_utf8_lossy(&ping.stdout)
        );
    }

    #[test]
    fn pod_tap_gets_no_queue_per_transmit_queue() {
        if !netns_available("pod_tap_gets_no_queue_per_transmit_queue") {
            return;
        }
        let mut guard = NsGuard::default();
        let pod = guard.add(&ns_name("podmq"));
        add_netns(&pod).unwrap();
        // A multiqueue TAP, as the daemon makes a port: 256 transmit queues.
        ip_netns(
            &pod,
            &[
                "tuntap",
                "add",
                "mode",
                "tap",
                "multi_queue",
                "name",
                "eth0",
            ],
        )
        .unwrap();
        let intf = PodInterface {
            ifname: "eth0".into(),
            mac: "02:50:00:00:00:13".parse().unwrap(),
            addr: Ipv4Addr::new(172, 211, 0, 19),
            prefix_len: 28,
            gateway: Ipv4Addr::new(172, 211, 0, 17),
            mtu: 1500,
        };
        configure_pod_interface(&pod, &intf).unwrap();
        configure_pod_interface(&pod, &intf).unwrap();

        let link = ip_netns(&pod, &["link", "show", "dev", "eth0"]).unwrap();
        assert!(
            link.contains("qlen 10000") && link.contains(",UP"),
            "{link}"
        );
        // Under the default mq root each of the 256 queues got a pfifo_fast with rings of 10000
        // slots (about 100 MB of kernel memory for this one port).
        let qdiscs = run_checked("tc", &["-n", &pod, "qdisc", "show", "dev", "eth0"]).unwrap();
        assert_eq!(qdiscs.lines().count(), 1, "{qdiscs}");
        assert!(qdiscs.contains("qdisc noqueue"), "{qdiscs}");
    }

    #[test]
    fn spawned_process_runs_inside_and_dies_with_the_namespace() {
        if !netns_available("spawned_process_runs_inside_and_dies_with_the_namespace") {
            return;
        }
        let mut guard = NsGuard::default();
        let ns = guard.add(&ns_name("spawn"));
        add_netns(&ns).unwrap();
        let log = std::env::temp_dir().join(format!("{ns}.log"));
        let _ = std::fs::remove_file(&log);
        let env = [(
            "PACU_GREETING".to_string(),
            "hello from the pod".to_string(),
        )];
        let pid = spawn_in_netns(
            &ns,
            &["sh", "-c", "echo \"$PACU_GREETING\"; exec sleep 30"],
            &env,
            &log,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !netns_pids(&ns).unwrap().contains(&pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(netns_pids(&ns).unwrap().contains(&pid));
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("hello")
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "hello from the pod\n"
        );
        delete_netns(&ns).unwrap();
        assert!(!pid_alive(pid));
        assert!(!netns_exists(&ns));
        let _ = std::fs::remove_file(&log);
    }

    /// A process that exits is collected (not left a zombie of the daemon), by the one reaper.
    #[test]
    fn exited_processes_are_reaped() {
        if !netns_available("exited_processes_are_reaped") {
            return;
        }
        let mut guard = NsGuard::default();
        let ns = guard.add(&ns_name("reap"));
        add_netns(&ns).unwrap();
        let log = std::env::temp_dir().join(format!("{ns}.log"));
        let pids: Vec<u32> = (0..3)
            .map(|_| spawn_in_netns(&ns, &["true"], &[], &log).unwrap())
            .collect();
        let gone = |pid: &u32| !Path::new(&format!("/proc/{pid}")).exists();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pids.iter().all(gone) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(pids.iter().all(gone), "zombies left: {pids:?}");
        let threads = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == "reaper")
            .count();
        assert_eq!(threads, 1, "one reaper for every process");
        delete_netns(&ns).unwrap();
        let _ = std::fs::remove_file(&log);
    }
}
