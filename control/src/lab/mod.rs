//! The lab: network namespaces that stand in for pods, TKG nodes, the upstream router and the
//! outside hosts of the seed (SEED-LAB.md), and the record that lets `pacific lab down` remove
//! all of it.
//!
//! All namespace work goes through iproute2 (`ip`, `ip -n NS`, `ip netns exec`) rather than
//! netlink sockets and `setns` of our own: the lab is not on the packet path, the commands are the
//! ones a person would type to check the result, every failure arrives with the exact command line
//! and the kernel's own message, and the lab needs no `unsafe` (the dataplane's TAP module has it).
//! Nothing here touches the root namespace's addresses or routes.
//!
//! - [`netns`]: wrappers over iproute2 (namespaces, links, processes inside namespaces).
//! - [`record`]: what the lab created, saved to disk, and the teardown that removes it.
//! - [`outside`]: the upstream router holding the T0 uplink, the hosts behind it, and the /32
//!   routes that emulate the T0's eBGP advertisements.

use std::fmt;
use std::process::Output;

pub mod netns;
pub mod outside;
pub mod record;

/// A lab operation that failed: the command that was run (or the operation tried) and what the
/// system said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabError {
    /// The command line as a person could paste it, or the operation when no command was run.
    pub command: String,
    /// The command's stderr (trimmed), or the error that prevented running it.
    pub stderr: String,
}

impl LabError {
    /// An error about `command` with a free-form explanation.
    pub fn new(command: impl Into<String>, stderr: impl Into<String>) -> LabError {
        LabError {
            command: command.into(),
            stderr: stderr.into(),
        }
    }

    /// A command that ran and failed: keeps its stderr, or its exit status when stderr is empty.
    pub(crate) fn from_output(command: String, out: &Output) -> LabError {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let stderr = if stderr.is_empty() {
            format!("exited with {}", out.status)
        } else {
            stderr
        };
        LabError { command, stderr }
    }
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed: {}", self.command, self.stderr)
    }
}

impl std::error::Error for LabError {}

/// Shared helpers for the lab's tests that need root and iproute2.
#[cfg(test)]
pub(crate) mod test_support {
    use std::os::unix::fs::MetadataExt;

    use super::netns;

    /// True when namespace tests can run here. Without root they are skipped with a message,
    /// unless `PACIFIC_REQUIRE_NETNS=1`, which turns the skip into a failure (for CI that must run
    /// them).
    pub fn netns_available(test: &str) -> bool {
        let root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let ip = std::process::Command::new("ip")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if root && ip {
            return true;
        }
        let why = if root {
            "the `ip` command (iproute2) is missing"
        } else {
            "not running as root"
        };
        if std::env::var("PACIFIC_REQUIRE_NETNS").as_deref() == Ok("1") {
            panic!("{test}: {why}, and PACIFIC_REQUIRE_NETNS=1");
        }
        eprintln!("skipping {test}: {why}");
        false
    }

    /// `pacu-lab-<tag>-<pid>`: unique to the test and to this test process.
    pub fn ns_name(tag: &str) -> String {
        format!("pacu-lab-{tag}-{}", std::process::id())
    }

    /// Deletes the namespaces it holds when dropped, also when the test panics.
    #[derive(Default)]
    pub struct NsGuard(pub Vec<String>);

    impl NsGuard {
        pub fn add(&mut self, name: &str) -> String {
            self.0.push(name.to_string());
            name.to_string()
        }
    }

    impl Drop for NsGuard {
        fn drop(&mut self) {
            for ns in &self.0 {
                if let Err(e) = netns::delete_netns(ns) {
                    eprintln!("cleanup: {e}");
                }
            }
        }
    }
}
