//! Running programs for the harness: inside a namespace, bounded in time, stopped on Ctrl-C.
//!
//! Every tool the bench uses (iproute2, iptables, iperf3, `pacific`, and netbench itself in its
//! hidden load-generator roles) runs as a child process, mostly under `ip netns exec NS`, which
//! `exec`s the command so the child's PID is the tool's own: killing it by PID stops the tool,
//! never anything else. Two shapes:
//! - [`run`] / [`run_for`]: a command that ends by itself; its output is collected on threads (so
//!   a chatty child never blocks on a full pipe) and it is killed if it outlives its time limit or
//!   the user interrupts the run.
//! - [`Background`]: a server that runs until we stop it; dropping the value kills and reaps it.
//!
//! Interruption: SIGINT and SIGTERM only set a flag ([`install_interrupt_handler`]); every wait
//! loop polls it, gives up with an error, and the guards of the rigs unwind and remove what they
//! built. A second Ctrl-C while the first is being handled exits at once (but not a second signal
//! within half a second of the first: `timeout -s INT` sends two for one interruption).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Error, Result};

static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// How long after the first signal a second one is taken for the same interruption. `timeout -s
/// INT` signals its child and then its whole process group, so netbench gets two SIGINTs a few
/// microseconds apart for one interruption: exiting at the second would skip the teardown and leave
/// both rigs (namespaces, the Pacific daemon) behind.
const SAME_INTERRUPTION: Duration = Duration::from_millis(500);

/// Makes SIGINT and SIGTERM set the flag [`interrupted`] reads instead of ending the process, so
/// the rigs can be torn down. A second signal, [`SAME_INTERRUPTION`] or more after the first (a
/// person pressing Ctrl-C again), exits with status 130.
pub fn install_interrupt_handler() -> Result<()> {
    let flag = Arc::clone(INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false))));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| Error::new(format!("cannot install a signal handler: {e}")))?;
    std::thread::Builder::new()
        .name("netbench-signals".into())
        .spawn(move || {
            let mut first: Option<Instant> = None;
            for _ in signals.forever() {
                match first {
                    None => {
                        first = Some(Instant::now());
                        flag.store(true, Ordering::Relaxed);
                    }
                    Some(at) if at.elapsed() >= SAME_INTERRUPTION => {
                        eprintln!("netbench: interrupted again: exiting without tearing down");
                        std::process::exit(130);
                    }
                    Some(_) => {}
                }
            }
        })
        .map_err(|e| Error::new(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

/// Whether the user asked the run to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Fails with a clear error once the run has been interrupted.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        Err(Error::new("interrupted"))
    } else {
        Ok(())
    }
}

/// `ip netns exec NS` followed by `args`: the argument vector that runs `args` inside `ns`.
pub fn in_ns<S: AsRef<str>>(ns: &str, args: &[S]) -> Vec<String> {
    let mut v = vec![
        "ip".to_string(),
        "netns".to_string(),
        "exec".to_string(),
        ns.to_string(),
    ];
    v.extend(args.iter().map(|a| a.as_ref().to_string()));
    v
}

/// The command line as a person could paste it (for error messages).
pub fn display<S: AsRef<str>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref())
        .collect::<Vec<_>>()
        .join(" ")
}

fn command<S: AsRef<str>>(args: &[S]) -> Result<Command> {
    let (prog, rest) = args
        .split_first()
        .ok_or_else(|| Error::new("empty command line"))?;
    let mut cmd = Command::new(prog.as_ref());
    cmd.args(rest.iter().map(|a| a.as_ref()));
    Ok(cmd)
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `args` with a 30 s limit; its stdout, or an error naming the command and its stderr.
pub fn run<S: AsRef<str>>(args: &[S]) -> Result<String> {
    run_checked(args, None, Duration::from_secs(30))
}

/// Like [`run`], feeding `input` on standard input (for `iptables-restore`).
pub fn run_with_input<S: AsRef<str>>(args: &[S], input: &str) -> Result<String> {
    run_checked(args, Some(input), Duration::from_secs(30))
}

fn run_checked<S: AsRef<str>>(args: &[S], input: Option<&str>, limit: Duration) -> Result<String> {
    let out = run_bounded(args, input, limit, Interruptible::No)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let why = if out.stderr.trim().is_empty() {
            out.status.to_string()
        } else {
            out.stderr.trim().to_string()
        };
        Err(Error::new(format!("`{}` failed: {why}", display(args))))
    }
}

/// Runs a load `args` to completion or until `limit` or an interrupt (then it is killed and this
/// is an error), whatever its exit status. The error names the command.
pub fn run_for<S: AsRef<str>>(
    args: &[S],
    input: Option<&str>,
    limit: Duration,
) -> Result<Finished> {
    run_bounded(args, input, limit, Interruptible::Yes)
}

/// Like [`run_for`], but an interrupt does not stop it: for the tear-down that must complete
/// after the user pressed Ctrl-C.
pub fn run_to_end<S: AsRef<str>>(args: &[S], limit: Duration) -> Result<Finished> {
    run_bounded(args, None, limit, Interruptible::No)
}

/// Whether a wait gives up when the user interrupts the run. Setup and tear-down commands are
/// short and must finish (a half-deleted rig is worse than a second's wait); loads are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruptible {
    Yes,
    No,
}

fn run_bounded<S: AsRef<str>>(
    args: &[S],
    input: Option<&str>,
    limit: Duration,
    interruptible: Interruptible,
) -> Result<Finished> {
    let line = display(args);
    let mut cmd = command(args)?;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::new(format!("cannot run `{line}`: {e}")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // Small inputs (a rule set) fit the pipe; a failed write shows up as the tool's error.
        let _ = stdin.write_all(text.as_bytes());
    }
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let status = wait_bounded(&mut child, limit, interruptible)
        .map_err(|e| Error::new(format!("`{line}`: {e}")))?;
    Ok(Finished {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<String>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = p.read_to_string(&mut s);
            s
        })
    })
}

fn join(h: Option<JoinHandle<String>>) -> String {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Waits for `child` at most `limit`, polling so an interrupt is seen; kills it past the limit.
fn wait_bounded(
    child: &mut Child,
    limit: Duration,
    interruptible: Interruptible,
) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => return Err(Error::new(format!("cannot wait: {e}"))),
        }
        let stop = interruptible == Interruptible::Yes && interrupted();
        if stop || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::new(if stop {
                "interrupted".to_string()
            } else {
                format!("still running after {:.0} s, killed", limit.as_secs_f64())
            }));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A long-running child (a server, a sink) that is killed and reaped when dropped.
#[derive(Debug)]
pub struct Background {
    child: Child,
    line: String,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Background {
    /// Starts `args` with stdout piped (read it with [`Background::read_line`]) and stderr
    /// inherited, so a server's complaints reach the terminal.
    pub fn spawn<S: AsRef<str>>(args: &[S]) -> Result<Background> {
        Background::start(args, Stdio::piped())
    }

    /// Starts `args` with stdout discarded (a server whose reports nobody reads must not block
    /// on a full pipe) and stderr inherited.
    pub fn spawn_quiet<S: AsRef<str>>(args: &[S]) -> Result<Background> {
        Background::start(args, Stdio::null())
    }

    fn start<S: AsRef<str>>(args: &[S], stdout: Stdio) -> Result<Background> {
        let line = display(args);
        let mut cmd = command(args)?;
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::new(format!("cannot start `{line}`: {e}")))?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Background {
            child,
            line,
            stdout,
        })
    }

    /// The next line of the child's stdout, trimmed; an error at end of file. Blocks: use only
    /// with children that print promptly or end by themselves (ours have deadlines).
    pub fn read_line(&mut self) -> Result<String> {
        let r = self
            .stdout
            .as_mut()
            .ok_or_else(|| Error::new(format!("`{}`: no stdout", self.line)))?;
        let mut s = String::new();
        match r.read_line(&mut s) {
            Ok(0) => Err(Error::new(format!(
                "`{}` ended before printing what was expected",
                self.line
            ))),
            Ok(_) => Ok(s.trim().to_string()),
            Err(e) => Err(Error::new(format!(
                "`{}`: cannot read its output: {e}",
                self.line
            ))),
        }
    }

    /// Waits until the child ends by itself (at most `limit`) and returns the rest of its stdout.
    pub fn finish(mut self, limit: Duration) -> Result<String> {
        let rest = collect(self.stdout.take());
        let status = wait_bounded(&mut self.child, limit, Interruptible::Yes)
            .map_err(|e| Error::new(format!("`{}`: {e}", self.line)))?;
        let out = join(rest);
        if status.success() {
            Ok(out)
        } else {
            Err(Error::new(format!("`{}` failed: {status}", self.line)))
        }
    }

    /// Whether the child has already ended (a server that failed to start).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The command line (for messages).
    pub fn line(&self) -> &str {
        &self.line
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Kill by our child's own PID (ip netns exec has exec'd the tool), then reap it.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_ns_prefixes_ip_netns_exec() {
        assert_eq!(
            in_ns("pacnb1-k-client", &["iperf3", "-c", "x"]),
            [
                "ip",
                "netns",
                "exec",
                "pacnb1-k-client",
                "iperf3",
                "-c",
                "x"
            ]
        );
    }

    #[test]
    fn run_collects_stdout_and_names_failures() {
        assert_eq!(run(&["echo", "hello"]).unwrap(), "hello\n");
        let e = run(&["sh", "-c", "echo oops >&2; exit 3"]).unwrap_err();
        assert!(
            e.to_string().contains("oops") && e.to_string().contains("sh -c"),
            "{e}"
        );
        assert_eq!(run_with_input(&["cat"], "rules\n").unwrap(), "rules\n");
    }

    #[test]
    fn run_for_kills_at_the_limit() {
        let t = Instant::now();
        let e = run_for(&["sleep", "5"], None, Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn background_reads_lines_and_finishes() {
        let mut b = Background::spawn(&["sh", "-c", "echo ready; echo done"]).unwrap();
        assert_eq!(b.read_line().unwrap(), "ready");
        assert_eq!(b.finish(Duration::from_secs(5)).unwrap(), "done\n");
    }
}
