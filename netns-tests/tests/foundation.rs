//! Foundation: the seed lab comes up, forwards between pods, to their gateway and to the
//! outside, shows its hops to traceroute, answers ARP with the router MAC, is idempotent to
//! re-apply, and `lab down` leaves nothing behind, also after the daemon was SIGKILLed.

use std::time::Duration;

use pacific_netns_tests::*;

const WORDPRESS: &str = "ns-dev/wordpress";
const ROUTER_MAC: &str = "02:ac:00:00:00:01";

#[test]
fn pod_to_pod_in_one_segment() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("fpod");
    assert!(
        ping_until(&lab, WORDPRESS, "172.211.0.19", Duration::from_secs(10)),
        "wordpress never reached wordpress-mysql"
    );
    let r = ping(&lab, WORDPRESS, "172.211.0.19", 5, &[]);
    assert_eq!(r.received, 5, "wordpress -> 172.211.0.19: {r:?}");
    // `pacific exec` exits as the command did, as a shell reports it.
    for (argv, code) in [
        (&["sh", "-c", "exit 3"][..], 3),
        (&["no-such-command-here"], 127),
        (&["sh", "-c", "kill -TERM $$"], 143),
    ] {
        let out = lab.exec(WORDPRESS, argv);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{argv:?}: {}",
            describe(&out)
        );
    }
}

#[test]
fn pod_to_its_gateway_and_arp_shows_the_router_mac() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("fgw");
    assert!(
        ping_until(&lab, WORDPRESS, "172.211.0.17", Duration::from_secs(10)),
        "wordpress never reached its gateway"
    );
    let r = ping(&lab, WORDPRESS, "172.211.0.17", 3, &[]);
    assert_eq!(r.received, 3, "wordpress -> gateway 172.211.0.17: {r:?}");
    let neigh = lab.exec(WORDPRESS, &["ip", "neigh", "show", "172.211.0.17"]);
    let text = stdout(&neigh);
    assert!(
        text.contains(&format!("lladdr {ROUTER_MAC}")),
        "the gateway's ARP entry in wordpress should carry the router MAC {ROUTER_MAC}:\n{}",
        describe(&neigh)
    );
}

#[test]
fn pod_to_outside_host_and_back() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("fout");
    assert!(
        ping_until(&lab, WORDPRESS, "198.51.100.100", Duration::from_secs(10)),
        "wordpress never reached ext/internet"
    );
    let r = ping(&lab, WORDPRESS, "198.51.100.100", 3, &[]);
    assert_eq!(r.received, 3, "wordpress -> 198.51.100.100: {r:?}");
    // And a TCP exchange both ways: ext/internet's web server answers the pod.
    let body = curl_until(
        &lab,
        WORDPRESS,
        "http://198.51.100.100/hostname",
        Duration::from_secs(10),
    );
    assert!(
        !body.trim().is_empty(),
        "ext/internet's web server did not answer wordpress"
    );
    // The outside hosts by name, as `kubectl get KIND NAME` works.
    let out = lab.pacific(&["get", "outside", "hop"]);
    let text = stdout(&out);
    assert!(
        out.status.success() && text.contains("hop") && !text.contains("internet"),
        "get outside hop: {}",
        describe(&out)
    );
    let out = lab.pacific(&["get", "outside", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
}

/// Datagrams larger than the MTU cross in fragments (the kernel fragments a 3000-byte ping):
/// through SNAT to the outside and back, and within a segment; the DFW still stops them.
#[test]
fn large_pings_cross_in_fragments() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("ffrag");
    assert!(
        ping_until(&lab, WORDPRESS, "198.51.100.100", Duration::from_secs(10)),
        "wordpress never reached ext/internet"
    );
    for (from, dst) in [
        (WORDPRESS, "198.51.100.100"),
        (WORDPRESS, "172.211.0.19"),
        ("ext/hop", "198.51.100.100"),
        // The router's own addresses put the request together and answer in fragments: the
        // T1 gateway, T0 one gateway further in, a VIP and T0's uplink from the outside.
        (WORDPRESS, "172.211.0.17"),
        (WORDPRESS, "100.64.0.0"),
        ("ext/hop", "172.80.88.5"),
        ("ext/hop", "203.0.113.2"),
    ] {
        let r = ping(&lab, from, dst, 3, &["-s", "3000"]);
        assert_eq!(r.received, 3, "{from} -> {dst}, 3000-byte pings: {r:?}");
    }
    // Every datagram put together was answered: none is left half-assembled.
    let status = lab.rpc_ok("daemon.status", &serde_json::json!({}));
    assert_eq!(status["fragments"]["reassembling"], 0, "{status}");
    // The reply is as long as the request, and ages a step per gateway on its way back.
    let out = lab.exec(
        WORDPRESS,
        &["ping", "-c", "1", "-W", "2", "-s", "5000", "100.64.0.0"],
    );
    assert!(
        stdout(&out).contains("5008 bytes from 100.64.0.0: icmp_seq=1 ttl=63"),
        "{}",
        describe(&out)
    );
    // Still denied: the outside to a pod, and another namespace.
    let r = ping(&lab, "ext/hop", "172.211.0.18", 2, &["-s", "3000"]);
    assert_eq!((r.transmitted, r.received), (2, 0), "hop -> pod: {r:?}");
    let r = ping(&lab, WORDPRESS, "172.211.0.130", 2, &["-s", "3000"]);
    assert_eq!(
        (r.transmitted, r.received),
        (2, 0),
        "ns-dev -> ns-prod: {r:?}"
    );
    // The later fragments of what the DFW dropped were counted, not forwarded.
    let ports = lab.rpc_ok("ports.list", &serde_json::json!({}));
    let fragment_drops: u64 = ports["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["drops"]["fragment"].as_u64())
        .sum();
    assert!(fragment_drops >= 4, "fragment drops counted: {ports}");
}

/// A pod that raised its MTU to 9000 meets the gateways' 1500 at its T1, as behind a Linux
/// router: a don't-fragment packet past it gets "fragmentation needed" with the MTU, its
/// kernel learns the path MTU, and without don't-fragment the T1 cuts the packet up.
#[test]
fn a_pod_with_a_bigger_mtu_learns_the_path_mtu_from_its_t1() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("fmtu");
    assert!(
        ping_until(&lab, WORDPRESS, "198.51.100.100", Duration::from_secs(10)),
        "wordpress never reached ext/internet"
    );
    let out = lab.exec(WORDPRESS, &["ip", "link", "set", "eth0", "mtu", "9000"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = lab.exec(
        WORDPRESS,
        &[
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "8000",
            "198.51.100.100",
        ],
    );
    assert!(
        stdout(&out).contains("From 172.211.0.17 icmp_seq=1 Frag needed and DF set (mtu = 1500)"),
        "{}",
        describe(&out)
    );
    let out = lab.exec(WORDPRESS, &["ip", "route", "get", "198.51.100.100"]);
    assert!(
        stdout(&out).contains("mtu 1500"),
        "path MTU learnt: {}",
        describe(&out)
    );
    assert_eq!(lab.port_drops("172.211.0.18", "frag-needed"), 1);
    // Its ping past 1500 to its gateway arrives whole, and is answered in fragments of at
    // most 1500 bytes, as a Linux router cuts what it answers.
    let out = lab.sh(
        WORDPRESS,
        // The ping goes once tcpdump captures (it says "listening on" then), not after a
        // guessed second a loaded machine may not give it.
        "f=$(mktemp); e=$(mktemp); timeout 30 tcpdump -l -nn -v -i eth0 -c 3 \
         src host 172.211.0.17 and icmp >$f 2>$e & \
         for i in $(seq 400); do grep -q 'listening on' $e && break; sleep 0.05; done; \
         ping -n -c 1 -W 5 -s 3000 172.211.0.17; wait; cat $f; rm $f $e",
    );
    let text = stdout(&out);
    assert!(
        text.contains("3008 bytes from 172.211.0.17: icmp_seq=1 ttl=64"),
        "{}",
        describe(&out)
    );
    let lengths: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split("proto ICMP (1), length ").nth(1))
        .filter_map(|l| l.trim_end_matches(')').parse().ok())
        .collect();
    assert_eq!(lengths, [1500, 1500, 68], "the reply's fragments: {text}");
    // Without don't-fragment: through in fragments, to the outside and to another segment.
    for dst in ["198.51.100.100", "172.211.0.67"] {
        let r = ping(&lab, WORDPRESS, dst, 2, &["-M", "dont", "-s", "8000"]);
        assert_eq!(
            r.received, 2,
            "wordpress -> {dst}, 8000 bytes, DF clear: {r:?}"
        );
    }
}

/// A pod with MTU 9000 pinging or tracing a gateway past its T1 (the T0, another namespace's
/// T1) learns 1500 from its T1, as behind Linux routers: the T1 forwards it over a 1500 link,
/// so it refuses a bigger don't-fragment packet rather than let the T0 answer it whole.
#[test]
fn tracepath_to_the_t0_from_a_bigger_mtu_learns_1500_at_the_t1() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa36pmtu");
    assert!(
        ping_until(&lab, WORDPRESS, "100.64.0.0", Duration::from_secs(10)),
        "wordpress never reached the T0"
    );
    let out = lab.exec(WORDPRESS, &["ip", "link", "set", "eth0", "mtu", "9000"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = lab.exec(
        WORDPRESS,
        &["timeout", "20", "tracepath", "-n", "-m", "4", "100.64.0.0"],
    );
    let text = stdout(&out);
    assert!(
        text.contains("172.211.0.17") && text.contains("Resume: pmtu 1500 hops 2 back 2"),
        "hop 1 the T1, the T0 reached at hop 2 with the path MTU 1500: {}",
        describe(&out)
    );
    for dst in ["203.0.113.2", "172.211.0.129"] {
        let out = lab.exec(
            WORDPRESS,
            &[
                "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", "3000", dst,
            ],
        );
        assert!(
            stdout(&out)
                .contains("From 172.211.0.17 icmp_seq=1 Frag needed and DF set (mtu = 1500)"),
            "{dst}: {}",
            describe(&out)
        );
    }
}

/// `ping -R` to a gateway: the reply's record route lists the gateway twice (recorded on
/// receipt and on sending) and no NOP, as a Linux router answers it.
#[test]
fn ping_with_record_route_to_a_gateway_lists_it_as_linux_does() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("frr");
    assert!(
        ping_until(&lab, WORDPRESS, "172.211.0.17", Duration::from_secs(10)),
        "wordpress never reached its gateway"
    );
    let out = lab.exec(
        WORDPRESS,
        &["ping", "-n", "-c", "1", "-W", "2", "-R", "172.211.0.17"],
    );
    let text = stdout(&out);
    assert!(
        text.contains("RR: \t172.211.0.18\n\t172.211.0.17\n\t172.211.0.17\n\t172.211.0.18\n"),
        "{}",
        describe(&out)
    );
    assert!(!text.contains("NOP"), "{}", describe(&out));
}

#[test]
fn traceroute_lists_t1_t0_upstream_and_destination() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("ftrace");
    assert!(
        ping_until(
            &lab,
            "ns-dev/testbox",
            "198.51.100.100",
            Duration::from_secs(10)
        ),
        "testbox never reached ext/internet"
    );
    let out = lab.exec(
        "ns-dev/testbox",
        &[
            "traceroute",
            "-n",
            "-q",
            "1",
            "-w",
            "1",
            "-m",
            "8",
            "198.51.100.100",
        ],
    );
    let hops = parse_traceroute(&stdout(&out));
    let ctx = describe(&out);
    assert_eq!(
        hops.first().cloned().flatten().as_deref(),
        Some("172.211.0.17"),
        "hop 1 must be the T1 (ns-dev's gateway):\n{ctx}"
    );
    let upstream = hops
        .iter()
        .position(|h| h.as_deref() == Some("203.0.113.1"));
    let dest = hops
        .iter()
        .position(|h| h.as_deref() == Some("198.51.100.100"));
    let (Some(upstream), Some(dest)) = (upstream, dest) else {
        panic!(
            "traceroute must list the upstream router 203.0.113.1 and then the destination:\n{ctx}"
        )
    };
    assert!(
        upstream >= 2,
        "a T0 hop must sit between the T1 and the upstream router:\n{ctx}"
    );
    assert!(
        hops[1..upstream].iter().all(Option::is_some),
        "the T0 hop(s) must answer (no `*`):\n{ctx}"
    );
    assert_eq!(
        dest,
        upstream + 1,
        "the destination follows the upstream router:\n{ctx}"
    );
    assert_eq!(
        dest + 1,
        hops.len(),
        "traceroute stops at the destination:\n{ctx}"
    );
}

#[test]
fn an_address_no_pod_has_is_host_unreachable_once_arp_would_have_failed() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa19arp");
    // 172.211.0.75 is in ns-dev's TKG segment (routed through the T1), and no node has it. A
    // Linux router answers "Destination Host Unreachable" once ARP for it failed (3 probes, 1 s
    // apart), as does a TCP connect's "No route to host": about 3 s later, not at once.
    let started = std::time::Instant::now();
    let out = lab.exec(
        "ns-dev/testbox",
        &["ping", "-n", "-c", "1", "-W", "6", "172.211.0.75"],
    );
    let took = started.elapsed();
    let ctx = describe(&out);
    assert!(
        stdout(&out).contains("From 172.211.0.17 icmp_seq=1 Destination Host Unreachable"),
        "the T1 must say the host is unreachable:
{ctx}"
    );
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_millis(5500),
        "the error must come once ARP would have failed (~3 s), came after {took:?}:
{ctx}"
    );
    let started = std::time::Instant::now();
    let out = lab.sh(
        "ns-dev/testbox",
        "nc -vz -w 8 172.211.0.76 80 2>&1; echo rc=$?",
    );
    let took = started.elapsed();
    let ctx = describe(&out);
    assert!(
        stdout(&out).contains("No route to host"),
        "connect must fail with no route to host:
{ctx}"
    );
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_millis(6000),
        "connect must fail once ARP would have failed (~3 s), after {took:?}:
{ctx}"
    );
}

#[test]
fn lab_down_leaves_nothing() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("fdown");
    let namespaces = netns_with_prefix(&lab.prefix);
    assert!(
        namespaces.iter().any(|n| n == &lab.upstream_netns()),
        "lab up made no {}: {namespaces:?}",
        lab.upstream_netns()
    );
    assert!(
        !pids_with_cmdline(&lab.socket.display().to_string()).is_empty(),
        "no daemon process names the socket"
    );
    let inside = lab.lab_processes();
    assert!(
        !inside.is_empty(),
        "no test server runs inside the lab's namespaces"
    );
    let out = lab.down();
    assert!(out.status.success(), "lab down failed:\n{}", describe(&out));
    assert_eq!(
        lab.leftovers(),
        Vec::<String>::new(),
        "lab down left these behind"
    );
    let alive: Vec<_> = inside
        .iter()
        .filter(|(pid, cmd)| cmdline(*pid).as_deref() == Some(cmd.as_str()))
        .collect();
    assert!(
        alive.is_empty(),
        "processes of the lab's namespaces survived lab down: {alive:?}"
    );
    // Idempotent: a second lab down succeeds and still leaves nothing.
    let again = lab.down();
    assert!(
        again.status.success(),
        "a second lab down failed:\n{}",
        describe(&again)
    );
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn lab_down_after_the_daemon_was_killed_leaves_nothing() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("fkill");
    let status = lab.rpc_ok("daemon.status", &serde_json::json!({}));
    let pid = status["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("daemon.status has no pid: {status}")) as u32;
    let cmd = cmdline(pid).unwrap_or_default();
    assert!(
        cmd.contains(&lab.socket.display().to_string()),
        "pid {pid} is not our daemon: {cmd}"
    );
    let inside = lab.lab_processes();
    signal(pid, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || cmdline(pid).is_none()),
        "the daemon {pid} survived SIGKILL"
    );
    let out = lab.down();
    assert!(
        out.status.success(),
        "lab down after a SIGKILL failed:\n{}",
        describe(&out)
    );
    assert_eq!(
        lab.leftovers(),
        Vec::<String>::new(),
        "lab down after a SIGKILL left these behind"
    );
    let alive: Vec<_> = inside
        .iter()
        .filter(|(p, c)| cmdline(*p).as_deref() == Some(c.as_str()))
        .collect();
    assert!(
        alive.is_empty(),
        "processes of the lab's namespaces survived: {alive:?}"
    );
}

/// `lab up` after the daemon was SIGKILLed builds the lab afresh: the dead daemon's test
/// servers do not go on running (and answering) beside the new ones.
#[test]
fn lab_up_after_the_daemon_was_killed_leaves_no_old_servers() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with(
        "fkillup",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: qa-a}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: qa-a}\n\
         spec: {containers: [{name: web, image: x, ports: [{containerPort: 80}]}]}\n",
    );
    let pid = lab.rpc_ok("daemon.status", &serde_json::json!({}))["pid"]
        .as_u64()
        .unwrap_or_default() as u32;
    let old = lab.lab_processes();
    assert!(
        old.iter().any(|(_, c)| c.contains("netexec")),
        "no test server runs in the lab: {old:?}"
    );
    signal(pid, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || cmdline(pid).is_none()),
        "the daemon {pid} survived SIGKILL"
    );
    let file = lab.dir.join("lab.yaml").display().to_string();
    let out = lab.pacific(&[
        "lab",
        "up",
        &file,
        "--prefix",
        &lab.prefix,
        "--workers",
        "2",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("died without cleaning up"),
        "lab up does not say it cleans up after the dead daemon: {}",
        describe(&out)
    );
    let survivors: Vec<_> = old
        .iter()
        .filter(|(p, c)| cmdline(*p).as_deref() == Some(c.as_str()))
        .collect();
    assert!(
        survivors.is_empty(),
        "the killed daemon's processes still run after lab up: {survivors:?}"
    );
    let servers = lab
        .lab_processes()
        .into_iter()
        .filter(|(_, c)| c.contains("netexec"))
        .count();
    assert_eq!(servers, 1, "{:?}", lab.lab_processes());
}

#[test]
fn lab_up_twice_is_idempotent() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("ftwice");
    let ips = |lab: &Lab| {
        let mut v: Vec<(String, String, String)> = lab
            .items("pods", None)
            .iter()
            .map(|p| {
                (
                    p["namespace"].as_str().unwrap_or_default().to_string(),
                    p["name"].as_str().unwrap_or_default().to_string(),
                    p["ip"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = ips(&lab);
    assert!(
        before.len() >= 8,
        "the seed lab has at least 8 pods: {before:?}"
    );
    let out = lab.pacific(&["lab", "up", "--prefix", &lab.prefix, "--workers", "2"]);
    assert!(
        out.status.success(),
        "second lab up failed:\n{}",
        describe(&out)
    );
    let actions = apply_actions(&stdout(&out));
    assert!(
        !actions.is_empty(),
        "the second lab up printed no apply results:\n{}",
        describe(&out)
    );
    let changed: Vec<_> = actions.iter().filter(|(_, a)| a != "unchanged").collect();
    assert!(
        changed.is_empty(),
        "the second lab up changed objects: {changed:?}\n{}",
        describe(&out)
    );
    assert_eq!(ips(&lab), before, "pods changed their IPs");
    // Still one daemon, and it still forwards.
    assert_eq!(
        pids_with_cmdline(&format!("{} daemon", lab.socket.display())).len(),
        1,
        "lab up started a second daemon"
    );
    assert!(
        ping_until(&lab, WORDPRESS, "172.211.0.19", Duration::from_secs(10)),
        "no forwarding after the second lab up"
    );
}

/// `lab down` against a daemon the lab did not start resets it and leaves it running: its
/// upstream router (with the T0 uplink) must stay, so that the next `lab up` on that daemon has
/// an outside world again. SIGTERM then removes the rest.
#[test]
fn lab_down_keeps_the_upstream_router_of_a_daemon_it_did_not_start() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_on_own_daemon("fown");
    let upstream = lab.upstream_netns();
    let out = lab.down();
    assert!(out.status.success(), "lab down failed:\n{}", describe(&out));
    assert_eq!(
        netns_with_prefix(&lab.prefix),
        vec![upstream.clone()],
        "lab down should leave exactly the running daemon's upstream router"
    );
    let out = lab.pacific(&["lab", "up", "--prefix", &lab.prefix, "--workers", "2"]);
    assert!(
        out.status.success(),
        "lab up again failed:\n{}",
        describe(&out)
    );
    assert!(
        !stderr(&out).contains("warning") && !stderr(&out).contains("error"),
        "lab up again warned:\n{}",
        describe(&out)
    );
    let out = lab.exec(
        WORDPRESS,
        &["curl", "-s", "-m", "3", "http://198.51.100.100/clientip"],
    );
    assert!(
        stdout(&out).starts_with("172.60.96.2:"),
        "the outside is unreachable after lab down and up on a standing daemon:\n{}",
        describe(&out)
    );
    let pid = lab.rpc_ok("daemon.status", &serde_json::json!({}))["pid"]
        .as_u64()
        .expect("daemon.status has a pid") as u32;
    signal(pid, libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(20), || cmdline(pid)
            .is_none_or(|c| c.is_empty())),
        "the daemon {pid} survived SIGTERM"
    );
    assert!(
        wait_until(Duration::from_secs(10), || netns_with_prefix(&lab.prefix)
            .is_empty()),
        "SIGTERM left namespaces: {:?}",
        netns_with_prefix(&lab.prefix)
    );
}
