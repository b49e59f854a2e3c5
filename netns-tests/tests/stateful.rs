//! Stateful behaviour: the distributed load balancer's spread, session affinity and endpoint
//! removal; an empty service refusing at once; the stateful firewall dropping unsolicited SYNs;
//! ICMP errors finding their way back through SNAT; SpoofGuard; a simultaneous open (TCP hole
//! punching), a blind RST, a forged ICMP error,
//! an ICMP error about GRE through SNAT, a full connection table making room from
//! half-closed connections, and two pods sharing one source port through SNAT.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pacific_netns_tests::*;

const WORDPRESS: &str = "ns-dev/wordpress";
const HOP: &str = "ext/hop";
const CLIENT: &str = "ns-lb/client";

/// A namespace with a 3-replica web deployment (Pacific's test server on 8080), a client pod,
/// and three ClusterIP services: plain, sticky (ClientIP affinity), and one whose selector
/// matches nothing.
fn ns_lb(replicas: u32) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: ns-lb
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: ns-lb
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: registry.k8s.io/e2e-test-images/agnhost:2.39
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: ns-lb
spec:
  containers:
  - name: client
    image: busybox
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: ns-lb
spec:
  ports:
  - port: 80
    targetPort: 8080
  selector:
    app: web
---
apiVersion: v1
kind: Service
metadata:
  name: web-sticky
  namespace: ns-lb
spec:
  sessionAffinity: ClientIP
  ports:
  - port: 80
    targetPort: 8080
  selector:
    app: web
---
apiVersion: v1
kind: Service
metadata:
  name: nobody
  namespace: ns-lb
spec:
  ports:
  - port: 80
    targetPort: 8080
  selector:
    app: nothing-matches-this
"#
    )
}

/// The seed lab plus `ns_lb(3)`.
fn lb_lab_unchecked(tag: &str) -> Lab {
    let lab = Lab::up(tag);
    lab.apply_ok(&ns_lb(3), None, None);
    lab
}

/// The seed lab plus `ns_lb(3)`, with the web servers answering through the plain service.
fn lb_lab(tag: &str) -> Lab {
    let lab = lb_lab_unchecked(tag);
    let ip = lab.cluster_ip("ns-lb", "web");
    let first = curl_until(
        &lab,
        CLIENT,
        &format!("http://{ip}/hostname"),
        Duration::from_secs(20),
    );
    assert!(
        !first.trim().is_empty(),
        "ns-lb/web at {ip} never answered the client"
    );
    lab
}

/// The names of the pods of deployment `web` in ns-lb.
fn web_pods(lab: &Lab) -> BTreeSet<String> {
    lab.items("pods", Some("ns-lb"))
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| n.starts_with("web-"))
        .map(str::to_string)
        .collect()
}

/// `count` separate connections (`curl /hostname`) from the client to `ip`; answers per name.
fn hostnames(lab: &Lab, ip: &str, count: u32) -> BTreeMap<String, u32> {
    let script = format!(
        "for i in $(seq {count}); do curl -s --max-time 2 http://{ip}/hostname; echo; done"
    );
    let out = lab.sh(CLIENT, &script);
    let mut seen = BTreeMap::new();
    for line in stdout(&out)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        *seen.entry(line.to_string()).or_insert(0) += 1;
    }
    let total: u32 = seen.values().sum();
    assert_eq!(
        total,
        count,
        "{count} connections to {ip} should all answer: {seen:?}\n{}",
        describe(&out)
    );
    seen
}

#[test]
fn cluster_ip_spreads_connections_over_three_endpoints() {
    if !require_netns() {
        return;
    }
    let lab = lb_lab("slbsprd");
    let pods = web_pods(&lab);
    assert_eq!(pods.len(), 3, "3 replicas: {pods:?}");
    let ip = lab.cluster_ip("ns-lb", "web");
    let seen = hostnames(&lab, &ip, 300);
    let names: BTreeSet<String> = seen.keys().cloned().collect();
    assert_eq!(
        names, pods,
        "every endpoint and only endpoints answer: {seen:?}"
    );
    assert!(
        seen.values().all(|&n| n >= 50),
        "300 connections over 3 endpoints, none should get fewer than 50: {seen:?}"
    );
}

#[test]
fn session_affinity_keeps_one_endpoint() {
    if !require_netns() {
        return;
    }
    let lab = lb_lab("slbaff");
    let ip = lab.cluster_ip("ns-lb", "web-sticky");
    let seen = hostnames(&lab, &ip, 20);
    assert_eq!(
        seen.len(),
        1,
        "sessionAffinity: ClientIP should keep one endpoint for 20 connections: {seen:?}"
    );
    assert!(
        web_pods(&lab).contains(seen.keys().next().unwrap()),
        "{seen:?}"
    );
}

#[test]
fn removing_an_endpoint_moves_only_its_share() {
    if !require_netns() {
        return;
    }
    let lab = lb_lab("slbdel");
    let before = web_pods(&lab);
    assert_eq!(before.len(), 3, "3 replicas: {before:?}");
    let sticky = lab.cluster_ip("ns-lb", "web-sticky");
    let affine = hostnames(&lab, &sticky, 5);
    assert_eq!(affine.len(), 1, "{affine:?}");
    let affine = affine.into_keys().next().unwrap_or_default();

    lab.apply_ok(&ns_lb(2), None, None);
    let after = web_pods(&lab);
    assert_eq!(after.len(), 2, "scaled to 2: {after:?}");
    assert!(
        after.is_subset(&before),
        "scaling down must keep the surviving pods: {before:?} -> {after:?}"
    );

    let ip = lab.cluster_ip("ns-lb", "web");
    let seen = hostnames(&lab, &ip, 60);
    let names: BTreeSet<String> = seen.keys().cloned().collect();
    assert_eq!(
        names, after,
        "after scaling to 2, answers come from exactly the survivors: {seen:?}"
    );

    // The client's sticky backend: kept when it survived, moved to a survivor when it did not.
    let sticky_now = hostnames(&lab, &sticky, 10);
    assert_eq!(
        sticky_now.len(),
        1,
        "affinity holds after the change: {sticky_now:?}"
    );
    let now = sticky_now.keys().next().cloned().unwrap_or_default();
    if after.contains(&affine) {
        assert_eq!(
            now, affine,
            "the client's backend survived, so its affinity must not move"
        );
    } else {
        assert!(after.contains(&now), "{now} is not a survivor {after:?}");
    }
}

/// The names that answer `count` connections from the client to `ip`; connections that get no
/// answer (a pod still starting) are left out.
fn answering(lab: &Lab, ip: &str, count: u32) -> BTreeSet<String> {
    let script = format!(
        "for i in $(seq {count}); do curl -s --max-time 2 http://{ip}/hostname; echo; done"
    );
    stdout(&lab.sh(CLIENT, &script))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `sessionAffinity: ClientIP` remembers the pod a client got (kube-proxy's `recent` list, NSX's
/// source-IP persistence): scaling the deployment from 1 replica to 6 keeps the client on its
/// pod while the new pods take other connections. A hash of the client over the backends, what
/// affinity was before, kept a client through this scale-up in 1 case of 6.
#[test]
fn session_affinity_survives_scaling_up() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("slbgrow");
    lab.apply_ok(&ns_lb(1), None, None);
    let sticky = lab.cluster_ip("ns-lb", "web-sticky");
    let first = curl_until(
        &lab,
        CLIENT,
        &format!("http://{sticky}/hostname"),
        Duration::from_secs(20),
    );
    let first = first.trim().to_string();
    let before = web_pods(&lab);
    assert_eq!(before.len(), 1, "1 replica: {before:?}");
    assert!(before.contains(&first), "{first:?} is not {before:?}");

    lab.apply_ok(&ns_lb(6), None, None);
    let pods = web_pods(&lab);
    assert_eq!(pods.len(), 6, "scaled to 6: {pods:?}");
    assert!(pods.contains(&first), "scaling up keeps {first}: {pods:?}");
    // Every new pod answers through the plain service (so the DLB has all six).
    let plain = lab.cluster_ip("ns-lb", "web");
    let mut seen = BTreeSet::new();
    let all = wait_until(Duration::from_secs(30), || {
        seen.extend(answering(&lab, &plain, 30));
        seen == pods
    });
    assert!(
        all,
        "all 6 pods should answer {plain}: {seen:?} of {pods:?}"
    );

    let sticky_now = hostnames(&lab, &sticky, 30);
    assert_eq!(
        sticky_now.keys().collect::<Vec<_>>(),
        vec![&first],
        "after scaling 1 -> 6 the client's 30 connections all reach its pod {first}"
    );
    // The one client is what the daemon remembers (the plain service remembers nobody).
    let status = lab.rpc_ok("daemon.status", &serde_json::json!({}));
    assert_eq!(status["session_affinity"]["clients"], 1, "{status}");
}

#[test]
fn service_without_endpoints_refuses_at_once() {
    if !require_netns() {
        return;
    }
    let lab = lb_lab_unchecked("slbnone");
    let ip = lab.cluster_ip("ns-lb", "nobody");
    let url = format!("http://{ip}/");
    // curl's own time (`pacific exec` starting it can take seconds on a loaded machine).
    let out = lab.exec(
        CLIENT,
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            &url,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl {url} should fail to connect (exit 7, refused):\n{}",
        describe(&out)
    );
    let took: f64 = stdout(&out)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl's time_total: {}", describe(&out)));
    assert!(
        took < 2.0,
        "a service without endpoints should refuse at once, took {took} s"
    );
    // Refused, as a TCP reset says it, not unreachable.
    let nc = lab.exec(CLIENT, &["nc", "-v", "-z", "-w", "2", &ip, "80"]);
    assert!(
        !nc.status.success() && stderr(&nc).contains("Connection refused"),
        "nc to {ip}:80 should be refused:\n{}",
        describe(&nc)
    );
}

#[test]
fn unsolicited_syn_from_outside_gets_no_answer() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("ssyn");
    // wordpress does listen on 80: its own namespace connects.
    let inside = wait_until(Duration::from_secs(15), || {
        lab.exec(
            "ns-dev/testbox",
            &["nc", "-z", "-w", "2", "172.211.0.18", "80"],
        )
        .status
        .success()
    });
    assert!(
        inside,
        "ns-dev/testbox cannot connect to wordpress 172.211.0.18:80"
    );
    let before = lab.dfw_hits("ns-dev", "default-deny-ingress");
    let start = Instant::now();
    let out = lab.exec(HOP, &["nc", "-z", "-w", "2", "172.211.0.18", "80"]);
    assert!(
        !out.status.success(),
        "hop connected to 172.211.0.18:80 past the DFW:\n{}",
        describe(&out)
    );
    // Silently dropped: nc waits out its timeout instead of being refused.
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "the SYN was answered (refused?) instead of dropped:\n{}",
        describe(&out)
    );
    let after = lab.dfw_hits("ns-dev", "default-deny-ingress");
    assert!(
        after > before,
        "ns-dev default-deny-ingress hits did not grow ({before} -> {after})"
    );
}

#[test]
fn traceroute_works_through_snat() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("strace");
    // The path is SNATed: ext/internet sees the egress IP, not the pod.
    let seen = curl_until(
        &lab,
        WORDPRESS,
        "http://198.51.100.100/clientip",
        Duration::from_secs(15),
    );
    assert!(
        seen.starts_with("172.60.96.2:"),
        "wordpress's traffic should leave as 172.60.96.2, ext/internet saw {seen:?}"
    );
    // ICMP-echo traceroute: time-exceeded errors from beyond T0 are addressed to the egress IP
    // and must be translated back to the pod.
    let out = lab.exec(
        WORDPRESS,
        &[
            "traceroute",
            "-I",
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
        "hop 1 is the T1:\n{ctx}"
    );
    let upstream = hops
        .iter()
        .position(|h| h.as_deref() == Some("203.0.113.1"));
    assert!(
        upstream.is_some_and(|u| u >= 2),
        "the upstream router 203.0.113.1 answers after the T1 and T0:\n{ctx}"
    );
    assert_eq!(
        hops.last().cloned().flatten().as_deref(),
        Some("198.51.100.100"),
        "traceroute reaches the destination:\n{ctx}"
    );
}

#[test]
fn spoofguard_drops_foreign_source_addresses() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("sspoof");
    let testbox = "ns-dev/testbox";
    assert!(
        ping_until(&lab, testbox, "172.211.0.18", Duration::from_secs(10)),
        "testbox cannot reach wordpress with its own address"
    );
    let wordpress = lab.pod_by_ip("ns-dev", "172.211.0.18");
    let mac = wordpress["mac"].as_str().unwrap_or_default().to_string();
    // Forged sources: ns-prod's nginx-local and an address from the ingress pool. A permanent
    // neighbour entry makes sure the forged IP packets leave (ARP might be what is dropped).
    for cmd in [
        vec!["ip", "addr", "add", "172.211.0.130/32", "dev", "eth0"],
        vec!["ip", "addr", "add", "172.80.0.99/32", "dev", "eth0"],
        vec![
            "ip",
            "neigh",
            "replace",
            "172.211.0.18",
            "lladdr",
            &mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    ] {
        let out = lab.exec(testbox, &cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in testbox:\n{}",
            describe(&out)
        );
    }
    for forged in ["172.211.0.130", "172.80.0.99"] {
        let before = lab.port_drops("172.211.0.20", "spoofguard");
        let r = ping(&lab, testbox, "172.211.0.18", 3, &["-I", forged]);
        assert_eq!(r.transmitted, 3, "ping -I {forged} did not run: {r:?}");
        assert_eq!(
            r.received, 0,
            "testbox pinging from {forged} must get no reply: {r:?}"
        );
        let after = lab.port_drops("172.211.0.20", "spoofguard");
        assert!(after >= before + 3, "testbox's port should count the forged packets as spoofguard drops ({before} -> {after})");
    }
}

/// TCP hole punching through the SNAT: the pod and an outside host connect to each other from
/// fixed ports at about the same time. The pod's SYN opens the binding and is dropped by the
/// host's own firewall (as the NAT on the far side of a real hole punch drops it); the host's SYN
/// to the binding crosses it, reaches the pod, and the simultaneous open (RFC 9293 3.5) connects
/// both, as through a Linux router. The host's SYN was dropped as `conntrack-invalid`, and both
/// connects timed out.
#[test]
fn a_simultaneous_open_through_snat_connects_both_ends() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("ssimo");
    let internet = "ext/internet";
    let fw = lab.exec(
        internet,
        &[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "40020",
            "--tcp-flags",
            "SYN,ACK",
            "SYN",
            "-j",
            "DROP",
        ],
    );
    assert!(
        fw.status.success(),
        "iptables in ext/internet: {}",
        describe(&fw)
    );
    let punch = |from: &str, to: &str| {
        format!(
            "echo hello-from-{from} | timeout 25 socat -t 2 - \
             TCP:{to}:40020,bind=0.0.0.0:40020,reuseaddr,connect-timeout=15"
        )
    };
    let pod = std::thread::scope(|s| {
        let pod = s.spawn(|| lab.sh(WORDPRESS, &punch("pod", "198.51.100.100")));
        // The outside host connects once the pod's SYN is out (its connect is under way).
        let syn_sent = wait_until(Duration::from_secs(30), || {
            stdout(&lab.exec(
                WORDPRESS,
                &["ss", "-Htn", "state", "syn-sent", "sport = :40020"],
            ))
            .contains(":40020")
        });
        assert!(syn_sent, "the pod never started its connect");
        let outside = lab.sh(internet, &punch("outside", "172.60.96.2"));
        assert!(
            stdout(&outside).contains("hello-from-pod"),
            "the outside host's connect to the binding got nothing from the pod: {}",
            describe(&outside)
        );
        pod.join().expect("the pod's side")
    });
    assert!(
        stdout(&pod).contains("hello-from-outside"),
        "the pod's connect got nothing from the outside host: {}",
        describe(&pod)
    );
}

/// A RST that neither end sent (a blind one, far outside the window, here with a checksum the
/// pod's stack refuses) passes through the SNAT to the pod, which ignores it; the connection
/// carries on, as through a Linux router, whose conntrack ignores a RST outside the window.
/// Pacific took the RST as the end of the connection and dropped both ends' next segments as
/// `conntrack-invalid`: the echo of the second line never came.
#[test]
fn a_connection_through_snat_outlives_a_blind_rst() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("sbrst");
    let internet = "ext/internet";
    let server = lab.sh(
        internet,
        "setsid timeout 60 socat TCP-LISTEN:7010,reuseaddr EXEC:cat >/dev/null 2>&1 &",
    );
    assert!(
        server.status.success(),
        "echo server: {}",
        describe(&server)
    );
    wait_listening(&lab, internet, "-t", 7010);
    // The RST goes once the first line came back (the connection is up through the SNAT), the
    // second line once the RST reached the pod (its stack counts the bad checksum).
    let first = lab.dir.join("rst.first");
    let go = lab.dir.join("rst.go");
    let checksum_errors = tcp_checksum_errors(&lab, WORDPRESS);
    let echoed = std::thread::scope(|s| {
        let client = s.spawn(|| {
            lab.sh(
                WORDPRESS,
                &format!(
                    "(echo one; {wait_go}; echo two; sleep 1) | timeout 40 socat - \
                     TCP:198.51.100.100:7010,bind=0.0.0.0:43212,reuseaddr | tee {first}",
                    wait_go = wait_for_file(&go),
                    first = first.display()
                ),
            )
        });
        let up = wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(&first).is_ok_and(|t| t.contains("one"))
        });
        // TCP header from 7010 to the binding (the pod's own port, which the SNAT keeps):
        // seq 12345, RST, checksum left zero; the host's kernel puts the IP header on.
        let rst = lab.sh(
            internet,
            "printf '\\033\\142\\250\\314\\000\\000\\060\\071\\000\\000\\000\\000\
             \\120\\004\\000\\000\\000\\000\\000\\000' | socat -u - IP-SENDTO:172.60.96.2:6",
        );
        let reached = wait_until(Duration::from_secs(20), || {
            tcp_checksum_errors(&lab, WORDPRESS) > checksum_errors
        });
        std::fs::write(&go, "").expect("create the go file");
        assert!(up, "the first line never came back before the RST");
        assert!(rst.status.success(), "the blind RST: {}", describe(&rst));
        assert!(reached, "the blind RST never reached the pod");
        client.join().expect("the pod's side")
    });
    assert_eq!(
        stdout(&echoed).lines().collect::<Vec<_>>(),
        ["one", "two"],
        "both lines come back: {}",
        describe(&echoed)
    );
}

/// The TCP segments `target`'s stack refused for their checksum (`InCsumErrors` of
/// /proc/net/snmp).
fn tcp_checksum_errors(lab: &Lab, target: &str) -> u64 {
    let snmp = stdout(&lab.exec(target, &["cat", "/proc/net/snmp"]));
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        panic!("no Tcp counters in {target}'s /proc/net/snmp:\n{snmp}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "InCsumErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no InCsumErrors in {target}'s /proc/net/snmp:\n{snmp}"))
}

/// Waits until something in `target` listens on `port` (`proto` is ss's `-t` or `-u`): servers
/// started in the background take their time on a loaded machine.
fn wait_listening(lab: &Lab, target: &str, proto: &str, port: u16) {
    let listening = wait_until(Duration::from_secs(30), || {
        stdout(&lab.exec(target, &["ss", "-Hln", proto, &format!("sport = :{port}")]))
            .contains(&format!(":{port}"))
    });
    assert!(listening, "nothing in {target} listens on port {port}");
}

/// A shell loop that waits (up to 30 s) for `file` to exist.
fn wait_for_file(file: &std::path::Path) -> String {
    format!(
        "for i in $(seq 600); do [ -e {f} ] && break; sleep 0.05; done",
        f = file.display()
    )
}

/// An ICMP error from a pod of another namespace, quoting ns-dev's translated UDP flow to the
/// outside (as the outside host would, to the egress IP), is not taken for an error about that
/// flow: it does not come in where the flow's packets left. It was passed to wordpress past the
/// DFW that keeps ns-prod from ns-dev, and its connected socket failed with connection refused.
#[test]
fn an_icmp_error_forged_by_another_namespace_does_not_reach_a_flow() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("sicmpf");
    let internet = "ext/internet";
    let echo = lab.sh(
        internet,
        "setsid timeout 60 socat UDP-RECVFROM:5300,fork EXEC:cat >/dev/null 2>&1 &",
    );
    assert!(echo.status.success(), "UDP echo: {}", describe(&echo));
    wait_listening(&lab, internet, "-u", 5300);
    // The forged error goes once the first datagram came back (the flow is up through the
    // SNAT), the second datagram half a second after it was sent.
    let first = lab.dir.join("icmpf.first");
    let go = lab.dir.join("icmpf.go");
    let echoed = std::thread::scope(|s| {
        let client = s.spawn(|| {
            lab.sh(
                WORDPRESS,
                &format!(
                    "(echo one; {wait_go}; sleep 0.5; echo two; sleep 1) | timeout 40 socat - \
                     UDP:198.51.100.100:5300,bind=0.0.0.0:41999,reuseaddr | tee {first}",
                    wait_go = wait_for_file(&go),
                    first = first.display()
                ),
            )
        });
        let up = wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(&first).is_ok_and(|t| t.contains("one"))
        });
        // Port unreachable quoting 172.60.96.2:41999 -> 198.51.100.100:5300 (the SNAT keeps the
        // pod's port), checksums computed; the kernel of ns-prod/testbox adds its own IP header.
        let forged = lab.sh(
            "ns-prod/testbox",
            "printf '\\003\\003\\145\\134\\000\\000\\000\\000\\105\\000\\000\\040\\000\\001\
             \\100\\000\\074\\021\\007\\366\\254\\074\\140\\002\\306\\063\\144\\144\\244\\017\
             \\024\\264\\000\\014\\000\\000\\160\\151\\156\\147' \
             | socat -u - IP-SENDTO:172.60.96.2:1",
        );
        std::fs::write(&go, "").expect("create the go file");
        assert!(
            up,
            "the first datagram never came back before the forged error"
        );
        assert!(
            forged.status.success(),
            "the forged error: {}",
            describe(&forged)
        );
        client.join().expect("the pod's side")
    });
    assert_eq!(
        stdout(&echoed).lines().collect::<Vec<_>>(),
        ["one", "two"],
        "both datagrams come back: {}",
        describe(&echoed)
    );
}

/// A protocol without ports through the SNAT (GRE here) gets its ICMP errors back: the outside
/// host's "protocol 47 unreachable", sent to the egress IP, reaches the pod with the quoted
/// packet's source translated back, as a frag-needed for a GRE tunnel would. It was taken for an
/// error about nothing tracked and never reached the pod.
#[test]
fn an_icmp_error_about_gre_through_snat_reaches_the_pod() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("sgre");
    let started = lab.dir.join("gre.tcpdump");
    let seen = std::thread::scope(|s| {
        let capture = s.spawn(|| {
            lab.sh(
                WORDPRESS,
                &format!(
                    "timeout 40 tcpdump -c 1 -lni eth0 -v 'icmp[icmptype] == icmp-unreach' \
                     2>{}",
                    started.display()
                ),
            )
        });
        // The GRE goes once tcpdump captures (it prints "listening on" then).
        let listening = wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(&started).is_ok_and(|t| t.contains("listening on"))
        });
        assert!(listening, "tcpdump in {WORDPRESS} never started capturing");
        // An empty GRE header (version 0, protocol 0): the host has no tunnel for it.
        let gre = lab.sh(
            WORDPRESS,
            "printf '\\000\\000\\000\\000' | socat -u - IP-SENDTO:198.51.100.100:47",
        );
        assert!(gre.status.success(), "sending GRE: {}", describe(&gre));
        capture.join().expect("the capture")
    });
    let text = stdout(&seen);
    assert!(
        text.contains("198.51.100.100 > 172.211.0.18: ICMP 198.51.100.100 protocol 47 unreachable")
            && text.contains("172.211.0.18 > 198.51.100.100: GRE"),
        "the pod should see the host's protocol unreachable, quoting its own address: {}",
        describe(&seen)
    );
}

/// A connection table full of the pod's connections to a server that never closes its end
/// (`--conntrack-max 200`): new connections are refused and counted (`conntrack-full`), the
/// open ones stay, and once the pod closes them (half-closed: FIN_WAIT, the server's end still
/// open) new ones connect at once, as a Linux router's full table drops closing connections
/// for new ones (`tcp_can_early_drop`). The half-closed ones were kept as established, and every
/// new connection was refused for the 120 s of FIN_WAIT.
#[test]
fn a_full_table_makes_room_from_half_closed_connections() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with_options("ctfullhc", None, &["--conntrack-max", "200"]);
    let internet = "ext/internet";
    let server = "import socket\n\
                  s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  s.bind(('0.0.0.0', 7001)); s.listen(1024); held = []\n\
                  while True:\n\
                  \x20   held.append(s.accept()[0])\n";
    let out = lab.sh(
        internet,
        &format!("setsid timeout 90 python3 -c \"{server}\" >/dev/null 2>&1 &"),
    );
    assert!(out.status.success(), "{}", describe(&out));
    wait_listening(&lab, internet, "-t", 7001);
    // Fills the table, tries a few more, closes its end of all of them, tries again.
    let client = "import socket, time\n\
                  def tries(n):\n\
                  \x20   got = []\n\
                  \x20   for i in range(n):\n\
                  \x20       s = socket.socket(); s.settimeout(0.5)\n\
                  \x20       try:\n\
                  \x20           s.connect(('198.51.100.100', 7001)); got.append(s)\n\
                  \x20       except OSError:\n\
                  \x20           s.close()\n\
                  \x20   return got\n\
                  held = tries(200)\n\
                  over = tries(5)\n\
                  for s in held + over: s.close()\n\
                  time.sleep(0.5)\n\
                  after = tries(20)\n\
                  print(len(held), len(over), len(after))\n";
    let out = lab.exec("ns-dev/testbox", &["python3", "-c", client]);
    let counts: Vec<u32> = stdout(&out)
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(counts.len(), 3, "{}", describe(&out));
    assert_eq!(counts[0], 200, "the table's 200 connections: {counts:?}");
    assert_eq!(counts[1], 0, "past the table's size: {counts:?}");
    assert!(
        lab.port_drops("172.211.0.20", "conntrack-full") >= 5,
        "{}",
        stdout(&lab.pacific(&["get", "ports"]))
    );
    assert_eq!(
        counts[2], 20,
        "new connections once the pod closed its end of the others: {counts:?}"
    );
}

/// Two pods of ns-dev (one egress IP) talk to the same outside server port at once from the
/// same source port (TCP, UDP) or with the same echo identifier: both are answered, as through
/// Linux's MASQUERADE, and `get nat` shows the second on another port (identifier) of the
/// egress IP.
#[test]
fn two_pods_with_one_source_port_share_the_egress_ip() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("snatsame");
    let internet = "ext/internet";
    // UDP-RECVFROM answers each datagram to whoever sent it (UDP-LISTEN's fork may give the
    // second pod's datagram to the child serving the first).
    let out = lab.sh(
        internet,
        "setsid timeout 60 socat TCP-LISTEN:7002,reuseaddr,fork EXEC:cat >/dev/null 2>&1 & \
         setsid timeout 60 socat UDP-RECVFROM:7002,fork EXEC:cat >/dev/null 2>&1 &",
    );
    assert!(out.status.success(), "{}", describe(&out));
    wait_listening(&lab, internet, "-t", 7002);
    wait_listening(&lab, internet, "-u", 7002);
    let pods = [
        ("ns-dev/wordpress", "172.211.0.18"),
        ("ns-dev/testbox", "172.211.0.20"),
    ];
    let cases = [
        ("tcp", "(echo hi; sleep 2) | timeout 10 socat -t 3 - TCP:198.51.100.100:7002,sourceport=44000,reuseaddr"),
        ("udp", "(echo hi; sleep 2) | timeout 10 socat -t 3 - UDP:198.51.100.100:7002,sourceport=44000"),
        ("icmp", "ping -n -c 3 -i 0.5 -W 2 -e 4242 198.51.100.100 | grep -c ' from '"),
    ];
    for (proto, script) in cases {
        let lab = &lab;
        let outs = std::thread::scope(|s| {
            let runs: Vec<_> = pods
                .iter()
                .map(|(pod, _)| s.spawn(move || lab.sh(pod, script)))
                .collect();
            // While both run: the second flow was given another port of the egress IP.
            std::thread::sleep(Duration::from_millis(800));
            let nat = lab.items("nat", Some("ns-dev"));
            let runs: Vec<_> = runs.into_iter().map(|r| r.join().expect("run")).collect();
            (nat, runs)
        });
        let (nat, runs) = outs;
        for ((pod, _), out) in pods.iter().zip(&runs) {
            let text = stdout(out);
            let answered = if proto == "icmp" {
                text.trim() == "3"
            } else {
                text.trim() == "hi"
            };
            assert!(answered, "{proto} from {pod}: {}", describe(out));
        }
        let translated: BTreeSet<String> = nat
            .iter()
            .filter(|n| n["protocol"] == proto)
            .filter(|n| {
                let original = n["original"].as_str().unwrap_or_default();
                original.contains("-> 198.51.100.100")
                    && pods.iter().any(|(_, ip)| original.starts_with(ip))
            })
            .filter_map(|n| n["translated"].as_str().map(str::to_string))
            .collect();
        assert_eq!(translated.len(), 2, "{proto}: {nat:?}");
        assert!(
            translated.iter().all(|t| t.starts_with("172.60.96.2")),
            "{proto}: {translated:?}"
        );
    }
}

/// A ClusterIP's port that its service lacks is refused at once (curl: connection refused),
/// as kube-proxy rejects it; an address of the service pool that no ClusterIP holds gets no
/// answer at all (curl times out), as kube-proxy's nftables mode drops it, and the drop is
/// counted `no-service` on the pod's port.
#[test]
fn an_unallocated_cluster_ip_is_silent_where_a_port_its_service_lacks_is_refused() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("nosvccip");
    let pod = "ns-dev/testbox";
    let cip = lab.cluster_ip("ns-dev", "wordpress");
    let out = lab.sh(pod, &format!("curl -s -m 3 http://{cip}:81/; echo rc=$?"));
    assert!(
        stdout(&out).trim_end().ends_with("rc=7"),
        "a missing port is refused: {}",
        describe(&out)
    );
    let before = lab.port_drops("172.211.0.20", "no-service");
    let out = lab.sh(pod, "curl -s -m 2 http://172.96.200.200/; echo rc=$?");
    assert!(
        stdout(&out).trim_end().ends_with("rc=28"),
        "an unallocated ClusterIP is silent: {}",
        describe(&out)
    );
    let dropped = lab.port_drops("172.211.0.20", "no-service") - before;
    assert!(dropped >= 1, "no-service drops: {dropped}");
}
