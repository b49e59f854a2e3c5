//! netbench interrupted as a user interrupts it: `timeout -s INT` (which signals netbench and then
//! its whole process group, so netbench sees two SIGINTs at once) must still tear both rigs down.

use pacific_netns_tests::*;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn netbench_interrupted_by_timeout_leaves_nothing_behind() {
    if !require_netns() {
        return;
    }
    let netbench = pacific_bin().with_file_name("netbench");
    // Under PACIFIC_REQUIRE_NETNS=1 (CI) a missing piece is a failure, as for every netns test.
    let required = std::env::var("PACIFIC_REQUIRE_NETNS").as_deref() == Ok("1");
    if !netbench.is_file() {
        assert!(!required, "{} is missing", netbench.display());
        eprintln!("skipping: {} is missing", netbench.display());
        return;
    }
    for tools in ["timeout", "iperf3", "iptables-restore"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tools}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            assert!(!required, "{tools} is missing");
            eprintln!("skipping: {tools} is missing");
            return;
        }
    }
    // Early (the kernel rig being built) and later (a scenario running). When: once netbench
    // says it got there, not after guessed seconds a loaded machine may not give it; then
    // `timeout` is interrupted, which hands the SIGINT on as when its time is up.
    let dir = std::env::temp_dir().join(format!("pacific-test-nbint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for netbench's output");
    for (when, said) in [
        ("building its rigs", "building the kernel rig"),
        ("running a scenario", " on "),
    ] {
        let log = dir.join("netbench.err");
        let file = std::fs::File::create(&log).expect("netbench's stderr file");
        let mut child = Command::new("timeout")
            .args(["-s", "INT", "300"])
            .arg(&netbench)
            .arg("--quick")
            .env("PACIFIC_BIN", pacific_bin())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("start netbench");
        let err = || std::fs::read_to_string(&log).unwrap_or_default();
        let said_it = || {
            err().lines().any(|l| {
                l.contains(said) && !l.contains("starting Pacific") && !l.contains("failed")
            })
        };
        // (Or until it ended of itself, which the assertions below tell.)
        wait_until(Duration::from_secs(120), || {
            said_it() || matches!(child.try_wait(), Ok(Some(_)))
        });
        let there = said_it();
        signal(child.id(), libc::SIGINT);
        let ended = wait_until(Duration::from_secs(120), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !ended {
            // Its whole group, by its id (process_group(0) made it so).
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
        let err = err();
        assert!(there, "netbench never said {said:?}:\n{err}");
        assert!(ended, "netbench did not end after SIGINT {when}:\n{err}");
        // netbench names its rigs after its pid: `building the kernel rig (pacnbPID-k-*)`.
        let Some(prefix) = err
            .split("(pacnb")
            .nth(1)
            .and_then(|rest| rest.split('-').next())
            .map(|pid| format!("pacnb{pid}"))
        else {
            panic!("netbench did not say its prefix:\n{err}");
        };
        let gone = wait_until(Duration::from_secs(30), || {
            netns_starting_with(&prefix).is_empty()
                && pids_with_cmdline(&format!("{prefix}p")).is_empty()
        });
        let left = netns_starting_with(&prefix);
        let procs = pids_with_cmdline(&format!("{prefix}p"));
        // Clean up after a failure, so one failing run does not leave the machine dirty.
        for pid in &procs {
            signal(*pid, libc::SIGTERM);
        }
        for ns in &left {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        assert!(
            gone,
            "interrupted {when}, netbench left namespaces {left:?} and processes {procs:?}:\n\
             {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
