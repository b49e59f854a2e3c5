//! `pacific` as a script drives it, compared with what kubectl prints and returns. Each test
//! failed before its fix (found by exploratory QA).
//!
//! Address plan: pods 198.18.0.0/16, services 198.19.0.0/24, ingress 198.19.1.0/24, egress
//! 198.19.2.0/24 (RFC 2544); the T0 uplink 203.0.113.0/24.

use std::process::{Command, Stdio};
use std::time::Duration;

use pacific_netns_tests::*;

const LAB: &str = "\
apiVersion: pacific.dev/v1
kind: Pools
metadata: {name: default}
spec: {pods: 198.18.0.0/16, services: 198.19.0.0/24, ingress: 198.19.1.0/24, egress: 198.19.2.0/24}
---
apiVersion: pacific.dev/v1
kind: Uplink
metadata: {name: default}
spec: {t0Address: 203.0.113.2, peerAddress: 203.0.113.1, prefixLength: 24}
---
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: team, labels: {app: web}}
spec: {containers: [{name: c, image: busybox}]}
";

/// `get pods -n missing` was `Error from server (NotFound): namespaces "missing" not found`,
/// exit 1: kubectl says `No resources found in missing namespace.` on stderr and exits 0, for
/// every kind, with an empty list for `-o json`; a name asked for there is not found.
#[test]
fn a_namespace_not_there_lists_nothing_as_kubectl_does() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("kscns", LAB);
    for kind in [
        "pods", "svc", "deploy", "ep", "netpol", "tkc", "segments", "ports", "dfw", "nat", "all",
        "pods,svc",
    ] {
        let o = lab.pacific(&["get", kind, "-n", "missing"]);
        assert!(
            o.status.success(),
            "get {kind} -n missing: {}",
            describe(&o)
        );
        assert_eq!(stdout(&o), "", "get {kind} -n missing: {}", describe(&o));
        assert_eq!(
            stderr(&o).trim(),
            "No resources found in missing namespace.",
            "get {kind} -n missing"
        );
    }
    let o = lab.pacific(&["get", "pods", "-n", "missing", "-o", "json"]);
    assert!(o.status.success(), "{}", describe(&o));
    let list: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(list["items"], serde_json::json!([]), "{}", describe(&o));
    assert_eq!(list["kind"], "List", "{}", describe(&o));

    let o = lab.pacific(&["get", "pod", "web", "-n", "missing"]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert_eq!(
        stderr(&o).trim(),
        r#"Error from server (NotFound): pods "web" not found"#
    );
    // The namespace that is there still lists its pod.
    let o = lab.pacific(&["get", "pods", "-n", "team", "-o", "name"]);
    assert_eq!(stdout(&o).trim(), "pod/web", "{}", describe(&o));
    // Namespaces are in no namespace: `-n` does not narrow them, as kubectl lists them all.
    let o = lab.pacific(&["get", "ns", "-n", "missing", "-o", "name"]);
    assert!(
        o.status.success() && stdout(&o).lines().any(|l| l == "namespace/team"),
        "{}",
        describe(&o)
    );
}

/// SIGINT sent to `pacific exec` alone (a script's `kill -INT`, `timeout -s INT`) ended
/// `pacific exec` and left the command running in the pod: it is passed on, the command ends
/// and `pacific exec` exits 130, as the shell reports a command ended by SIGINT. Standard
/// input is piped through and exit codes pass through.
#[test]
fn exec_passes_stdin_exit_codes_and_sigint_through() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("kscexec", LAB);
    let o = lab.pacific_stdin(&["exec", "team/web", "--", "cat"], Some("hi\n"));
    assert_eq!(stdout(&o), "hi\n", "{}", describe(&o));
    let o = lab.exec("team/web", &["sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
    let o = lab.exec("team/web", &["timeout", "1", "sleep", "5"]);
    assert_eq!(o.status.code(), Some(124), "{}", describe(&o));
    let o = lab.exec("team/web", &["nosuchcommand"]);
    assert_eq!(o.status.code(), Some(127), "{}", describe(&o));
    assert!(stderr(&o).contains("nosuchcommand"), "{}", describe(&o));

    let mut child = Command::new(pacific_bin())
        .arg("--socket")
        .arg(&lab.socket)
        .args(["exec", "team/web", "--", "sleep", "4077"])
        .stdin(Stdio::null())
        .spawn()
        .expect("pacific exec");
    // The command itself (not `pacific exec`, whose command line holds it too).
    let sleeps = || {
        pids_with_cmdline("sleep 4077")
            .into_iter()
            .filter(|&pid| cmdline(pid).is_some_and(|c| c.trim() == "sleep 4077"))
            .collect::<Vec<_>>()
    };
    let running = || !sleeps().is_empty();
    assert!(
        wait_until(Duration::from_secs(10), running),
        "the command never started"
    );
    signal(child.id(), libc::SIGINT);
    let ended = wait_until(Duration::from_secs(5), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    // The command's end is its own (SIGINT delivered): a moment to go.
    wait_until(Duration::from_secs(2), || sleeps().is_empty());
    let left = sleeps();
    for pid in &left {
        signal(*pid, libc::SIGKILL);
    }
    if !ended {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    assert!(ended, "pacific exec did not end on SIGINT");
    assert!(left.is_empty(), "the command was left running: {left:?}");
    assert_eq!(status.code(), Some(130));
}
