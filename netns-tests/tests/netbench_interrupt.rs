//! netbench interrupted as a user interrupts it: `timeout -s INT` (which signals netbench and then
//! its whole process group, so netbench sees two SIGINTs at once) must still tear both rigs down.

use pacific_netns_tests::*;
use std::process::Command;
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
    // Early (rigs being built or the first scenario) and later (a scenario on Pacific).
    for seconds in ["3", "7"] {
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "INT", seconds])
            .arg(&netbench)
            .arg("--quick")
            .env("PACIFIC_BIN", pacific_bin());
        let out = run_bounded(cmd, None, Duration::from_secs(120));
        let err = stderr(&out);
        // netbench names its rigs after its pid: `building the kernel rig (pacnbPID-k-*)`.
        let Some(prefix) = err
            .split("(pacnb")
            .nth(1)
            .and_then(|rest| rest.split('-').next())
            .map(|pid| format!("pacnb{pid}"))
        else {
            panic!("netbench did not say its prefix: {}", describe(&out));
        };
        let gone = wait_until(Duration::from_secs(10), || {
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
            "interrupted after {seconds} s, netbench left namespaces {left:?} and processes \
             {procs:?}: {}",
            describe(&out)
        );
    }
}
