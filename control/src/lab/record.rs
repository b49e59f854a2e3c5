//! The lab record: what `pacific lab up` created, on disk, so `pacific lab down` can remove all of
//! it, also after the daemon died with SIGKILL and took its memory with it.
//!
//! The record is small JSON, rewritten whole after every change (temporary file + `rename`, which
//! is atomic on one file system), so a crash leaves either the old record or the new one, never a
//! torn file. Teardown does not trust the record alone: it also deletes every namespace carrying
//! the lab's prefix, which catches a namespace created after the last save. It does trust the
//! record for pids, but checks each one first: a pid is killed only while `/proc/PID/cmdline` still
//! mentions `pacific`, because after a reboot or a long time a recorded pid may belong to a
//! stranger.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::netns;
use super::LabError;

/// What the lab created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LabRecord {
    /// Every namespace the lab creates is named `{prefix}-...`.
    pub prefix: String,
    /// The daemon serving this lab, if known.
    pub daemon_pid: Option<u32>,
    /// True when `lab up` started the daemon, so `lab down` should stop it.
    pub daemon_started_by_lab: bool,
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// Namespaces created, in creation order.
    pub namespaces: Vec<String>,
    /// Processes started (test servers in pods and the like).
    pub pids: Vec<u32>,
}

impl LabRecord {
    /// Reads the record at `path`; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> io::Result<Option<LabRecord>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a lab record: {e}", path.display()),
            )
        })
    }

    /// Writes the record to `path` atomically (temporary file in the same directory, then rename),
    /// creating the directory if needed.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let file_name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a file path", path.display()),
            )
        })?;
        let mut tmp_name = file_name.to_os_string();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        std::fs::write(&tmp, json + "\n")
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io::Error::new(
                    e.kind(),
                    format!("cannot save lab record {}: {e}", path.display()),
                )
            })
    }

    /// Notes a namespace (once).
    pub fn add_namespace(&mut self, name: &str) {
        if !self.namespaces.iter().any(|n| n == name) {
            self.namespaces.push(name.to_string());
        }
    }

    /// Notes a process (once).
    pub fn add_pid(&mut self, pid: u32) {
        if !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
    }
}

/// What [`teardown`] did, for printing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TeardownSummary {
    /// Processes that were alive, ours, and were ended.
    pub processes_killed: usize,
    /// Recorded processes left alone because their pid now belongs to something else.
    pub processes_skipped: usize,
    /// Namespaces deleted.
    pub namespaces_deleted: usize,
    /// Whether a record file was found and removed.
    pub record_removed: bool,
}

impl fmt::Display for TeardownSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} process(es) stopped, {} namespace(s) deleted, record {}",
            self.processes_killed,
            self.namespaces_deleted,
            if self.record_removed {
                "removed"
            } else {
                "absent"
            }
        )?;
        if self.processes_skipped > 0 {
            write!(
                f,
                " ({} recorded pid(s) now belong to other programs and were left alone)",
                self.processes_skipped
            )?;
        }
        Ok(())
    }
}

/// True when a command line looks like one of ours (the daemon, or a test server it runs).
pub fn cmdline_is_ours(cmdline: &str) -> bool {
    cmdline.contains("pacific")
}

/// Removes everything the lab made: ends the recorded processes that are still alive and still
/// ours (the daemon too when the lab started it), deletes every recorded namespace and every
/// namespace named `{prefix}-...` (ending the processes inside), removes the daemon's stale socket
/// when the lab owned the daemon, and deletes the record. Safe to repeat; a missing record is not
/// an error (the prefix sweep still runs). The namespaces in `keep` are left alone: those of a
/// daemon that goes on running (its upstream router and the T0 uplink in it).
pub fn teardown(
    record_path: &Path,
    prefix: &str,
    keep: &[String],
) -> Result<TeardownSummary, LabError> {
    if netns::validate_netns_name(prefix).is_err() {
        return Err(LabError::new(
            "lab teardown",
            format!("refusing to tear down with prefix {prefix:?}"),
        ));
    }
    let record =
        LabRecord::load(record_path).map_err(|e| LabError::new("lab teardown", e.to_string()))?;
    let mut summary = TeardownSummary::default();

    // Processes first: the daemon holds the TAP file descriptors, and a server inside a namespace
    // would keep that namespace alive.
    if let Some(rec) = &record {
        let mut pids = rec.pids.clone();
        if rec.daemon_started_by_lab {
            pids.extend(rec.daemon_pid);
        }
        end_our_processes(&pids, &mut summary);
    }

    let mut namespaces: Vec<String> = record
        .as_ref()
        .map(|r| r.namespaces.clone())
        .unwrap_or_default();
    for ns in netns::list_netns_with_prefix(&format!("{prefix}-"))? {
        if !namespaces.contains(&ns) {
            namespaces.push(ns);
        }
    }
    // Reverse creation order: hosts before the router they hang off.
    for ns in namespaces.iter().rev() {
        if keep.contains(ns) || netns::validate_netns_name(ns).is_err() || !netns::netns_exists(ns)
        {
            continue;
        }
        netns::delete_netns(ns)?;
        summary.namespaces_deleted += 1;
    }

    if let Some(rec) = &record {
        let daemon_gone = !matches!(rec.daemon_pid, Some(p) if netns::pid_alive(p));
        if rec.daemon_started_by_lab && daemon_gone && !rec.socket.as_os_str().is_empty() {
            remove_if_exists(&rec.socket)?;
        }
        remove_if_exists(record_path)?;
        summary.record_removed = true;
    }
    Ok(summary)
}

/// What a daemon starting on a socket does with the record a dead daemon left there (it was
/// SIGKILLed or crashed, so it removed nothing): ends the processes the record names and deletes
/// the namespaces it names, then removes the record. Without this the new daemon reused those
/// namespaces with the old test servers still running in them, answering beside the new ones
/// (they share ports through `SO_REUSEPORT`). `None` when there is no record or its daemon lives.
pub fn clear_stale(record_path: &Path) -> Result<Option<TeardownSummary>, LabError> {
    let what = "clearing the last daemon's leftovers";
    let Some(rec) = LabRecord::load(record_path).map_err(|e| LabError::new(what, e.to_string()))?
    else {
        return Ok(None);
    };
    if rec.daemon_lives() {
        return Ok(None);
    }
    let mut summary = TeardownSummary::default();
    end_our_processes(&rec.pids, &mut summary);
    for ns in rec.namespaces.iter().rev() {
        if netns::validate_netns_name(ns).is_ok() && netns::netns_exists(ns) {
            netns::delete_netns(ns)?;
            summary.namespaces_deleted += 1;
        }
    }
    remove_if_exists(record_path)?;
    summary.record_removed = true;
    Ok(Some(summary))
}

impl LabRecord {
    /// Whether the daemon the record names still runs (and is ours, not a reused pid).
    pub fn daemon_lives(&self) -> bool {
        self.daemon_pid.is_some_and(|pid| {
            netns::pid_alive(pid) && netns::pid_cmdline(pid).is_some_and(|c| cmdline_is_ours(&c))
        })
    }
}

/// Ends the processes of `pids` that are alive and still ours (see [`cmdline_is_ours`]).
fn end_our_processes(pids: &[u32], summary: &mut TeardownSummary) {
    let mut ours = Vec::new();
    for &pid in pids.iter().filter(|&&p| netns::pid_alive(p)) {
        match netns::pid_cmdline(pid) {
            Some(cmd) if cmdline_is_ours(&cmd) => ours.push(pid),
            // Unreadable (gone meanwhile) or foreign: leave it.
            Some(_) => summary.processes_skipped += 1,
            None => {}
        }
    }
    summary.processes_killed += netns::terminate_pids(&ours, netns::TERM_GRACE);
}

fn remove_if_exists(path: &Path) -> Result<(), LabError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LabError::new(
            format!("rm {}", path.display()),
            e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::test_support::{netns_available, ns_name, NsGuard};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("pacu-lab-record-{tag}-{}", std::process::id()))
            .join("lab.json")
    }

    #[test]
    fn record_round_trips_and_dedups() {
        let path = temp_path("rt");
        assert_eq!(LabRecord::load(&path).unwrap(), None);
        let mut rec = LabRecord {
            prefix: "pac".into(),
            socket: "/run/pacific/pacific.sock".into(),
            ..Default::default()
        };
        rec.add_namespace("pac-dev-wordpress");
        rec.add_namespace("pac-dev-wordpress");
        rec.add_pid(42);
        rec.add_pid(42);
        rec.daemon_pid = Some(7);
        rec.save(&path).unwrap();
        rec.add_namespace("pac-ext-router");
        rec.save(&path).unwrap();
        let back = LabRecord::load(&path).unwrap().unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.namespaces, vec!["pac-dev-wordpress", "pac-ext-router"]);
        assert_eq!(back.pids, vec![42]);
        // No temporary file is left beside it.
        let dir = path.parent().unwrap();
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
        std::fs::write(&path, "{not json").unwrap();
        let err = LabRecord::load(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("is not a lab record"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ownership_check_wants_pacific_in_the_cmdline() {
        assert!(cmdline_is_ours(
            "/usr/local/bin/pacific daemon --socket /run/pacific/pacific.sock"
        ));
        assert!(cmdline_is_ours("/tmp/pacific-test-sleep-9 30"));
        assert!(!cmdline_is_ours("/usr/sbin/sshd -D"));
    }

    #[test]
    fn teardown_refuses_an_empty_prefix() {
        assert!(teardown(&temp_path("empty"), "", &[]).is_err());
    }

    /// A copy of `sleep` whose command line says "pacific", so the ownership check accepts it.
    struct SleepCopy(PathBuf);

    impl SleepCopy {
        fn new() -> SleepCopy {
            let path =
                std::env::temp_dir().join(format!("pacific-test-sleep-{}", std::process::id()));
            if !path.exists() {
                let tmp = path.with_extension("tmp");
                std::fs::copy("/bin/sleep", &tmp).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            }
            SleepCopy(path)
        }
    }

    impl Drop for SleepCopy {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn teardown_removes_namespaces_and_our_processes_only() {
        if !netns_available("teardown_removes_namespaces_and_our_processes_only") {
            return;
        }
        let prefix = ns_name("td");
        let mut guard = NsGuard::default();
        let recorded = guard.add(&format!("{prefix}-router"));
        let unrecorded = guard.add(&format!("{prefix}-pod"));
        let bystander = guard.add(&format!("{prefix}x-bystander"));
        for ns in [&recorded, &unrecorded, &bystander] {
            netns::add_netns(ns).unwrap();
        }
        let sleep = SleepCopy::new();
        let sleep_path = sleep.0.to_str().unwrap();
        let log = std::env::temp_dir().join(format!("{prefix}.log"));
        // One of ours in a recorded namespace, one only inside an unrecorded prefixed namespace.
        let ours = netns::spawn_in_netns(&recorded, &[sleep_path, "30"], &[], &log).unwrap();
        let inside = netns::spawn_in_netns(&unrecorded, &["sleep", "30"], &[], &log).unwrap();
        // A recorded pid that now belongs to a foreign program (no "pacific" in its cmdline).
        let mut foreign = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let foreign_pid = foreign.id();
        wait_until("the test server to exec", || {
            netns::pid_cmdline(ours).is_some_and(|c| c.contains("pacific"))
        });
        wait_until("sleep to start", || {
            netns::netns_pids(&unrecorded).unwrap().contains(&inside)
        });

        let path = temp_path("td");
        let mut rec = LabRecord {
            prefix: prefix.clone(),
            ..Default::default()
        };
        rec.add_namespace(&recorded);
        rec.add_pid(ours);
        rec.add_pid(foreign_pid);
        rec.save(&path).unwrap();

        let summary = teardown(&path, &prefix, &[]).unwrap();
        let alive_after = netns::pid_alive(foreign_pid);
        let _ = foreign.kill();
        let _ = foreign.wait();
        assert!(alive_after, "a foreign process was killed");
        assert_eq!(
            summary,
            TeardownSummary {
                processes_killed: 1,
                processes_skipped: 1,
                namespaces_deleted: 2,
                record_removed: true
            }
        );
        assert!(summary
            .to_string()
            .starts_with("1 process(es) stopped, 2 namespace(s) deleted, record removed"));
        assert!(!netns::pid_alive(ours) && !netns::pid_alive(inside));
        assert!(!netns::netns_exists(&recorded) && !netns::netns_exists(&unrecorded));
        assert!(
            netns::netns_exists(&bystander),
            "a namespace outside the prefix was deleted"
        );
        assert!(!path.exists());

        // Again: nothing left to do.
        let again = teardown(&path, &prefix, &[]).unwrap();
        assert_eq!(again, TeardownSummary::default());
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
