//! Named network namespaces the bench creates, removed when the guard is dropped.
//!
//! Every name starts with `pacnb<pid>` so two runs never collide and a leftover is easy to trace
//! to its run. Removal is best effort and silent: a guard runs on the way out of a failure and
//! must not hide the error that caused it.

use super::cmd;
use super::Result;

/// Namespaces created through [`Namespaces::add`]; all deleted on drop, newest first.
#[derive(Debug, Default)]
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    pub fn new() -> Namespaces {
        Namespaces::default()
    }

    /// Creates namespace `name` (with `lo` up) and takes charge of removing it: from before
    /// `ip netns add` runs, since a Ctrl-C reaches `ip` too and may end it once the namespace
    /// is made but before it says so (deleting a namespace that is not there does nothing).
    pub fn add(&mut self, name: &str) -> Result<()> {
        self.names.push(name.to_string());
        cmd::run(&["ip", "netns", "add", name])?;
        cmd::run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.drain(..).rev() {
            let _ = cmd::run(&["ip", "netns", "del", &name]);
        }
    }
}

/// The namespaces whose names start with `prefix` (from `ip netns list`).
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let out = cmd::run(&["ip", "netns", "list"]).unwrap_or_default();
    names_with_prefix(&out, prefix)
}

/// Parses `ip netns list` (`NAME` or `NAME (id: N)` per line) and keeps the names with `prefix`.
pub fn names_with_prefix(listing: &str, prefix: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Sets sysctl `key` to `value` inside `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    cmd::run(&cmd::in_ns(
        ns,
        &["sysctl", "-q", "-w", &format!("{key}={value}")],
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_is_filtered_by_prefix() {
        let out = "pacnb12p-bench-client (id: 4)\npacnb12-k-router (id: 1)\npacnb123-k-client\npac-dev-wordpress\n";
        assert_eq!(names_with_prefix(out, "pacnb12-"), vec!["pacnb12-k-router"]);
        assert_eq!(
            names_with_prefix(out, "pacnb12p-"),
            vec!["pacnb12p-bench-client"]
        );
        assert!(names_with_prefix("", "pacnb").is_empty());
    }
}
