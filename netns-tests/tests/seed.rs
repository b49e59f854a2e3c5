//! The seed's observations (SEED-LAB.md, "Observations to reproduce"), one test each, with the
//! seed's own commands and numbers, in the lab `pacific lab up` builds with no file.

use std::collections::BTreeSet;
use std::time::Duration;

use pacific_netns_tests::*;
use serde_json::Value;

const WORDPRESS: &str = "ns-dev/wordpress";
const HOP: &str = "ext/hop";

/// The seed's hello-kubernetes manifest, unchanged (indentation restored).
const HELLO_KUBERNETES: &str = include_str!("../../docs/hello-kubernetes.yaml");
const MESSAGE: &str = "I just deployed a PodVM on the Tanzu Kubernetes Cluster!!";

#[test]
fn obs1_outside_cannot_ping_a_pod_and_the_dfw_counts_it() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("obs1");
    // The path itself works: hop reaches wordpress through its VIP (so the loss below is the
    // firewall, not a missing route).
    let via_vip = curl_until(
        &lab,
        HOP,
        "http://172.80.88.5/hostname",
        Duration::from_secs(15),
    );
    assert!(
        !via_vip.trim().is_empty(),
        "hop cannot reach wordpress even through its VIP 172.80.88.5"
    );
    let before = lab.dfw_hits("ns-dev", "default-deny-ingress");
    let r = ping(&lab, HOP, "172.211.0.18", 3, &[]);
    assert_eq!(r.transmitted, 3, "ping did not run: {r:?}");
    assert_eq!(
        r.received, 0,
        "hop -> 172.211.0.18 must see 100% loss: {r:?}"
    );
    let after = lab.dfw_hits("ns-dev", "default-deny-ingress");
    assert!(
        after > before,
        "ns-dev default-deny-ingress hits did not grow ({before} -> {after})"
    );
}

#[test]
fn obs2_pod_pings_outside_and_is_seen_as_the_egress_ip() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("obs2");
    assert!(
        ping_until(&lab, WORDPRESS, "198.51.100.100", Duration::from_secs(10)),
        "wordpress never reached 198.51.100.100"
    );
    let r = ping(&lab, WORDPRESS, "198.51.100.100", 3, &[]);
    assert_eq!(r.received, 3, "wordpress -> 198.51.100.100: {r:?}");
    let seen = curl_until(
        &lab,
        WORDPRESS,
        "http://198.51.100.100/clientip",
        Duration::from_secs(10),
    );
    let ip = seen
        .trim()
        .rsplit_once(':')
        .map(|(ip, _)| ip)
        .unwrap_or(seen.trim());
    assert_eq!(
        ip, "172.60.96.2",
        "ext/internet must see ns-dev's egress IP, saw {seen:?}"
    );
}

#[test]
fn obs3_pod_cannot_ping_another_namespace() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("obs3");
    // nginx-local itself is up: its own namespace reaches it.
    assert!(
        ping_until(
            &lab,
            "ns-prod/testbox",
            "172.211.0.130",
            Duration::from_secs(10)
        ),
        "ns-prod/testbox cannot reach nginx-local"
    );
    let r = ping(&lab, WORDPRESS, "172.211.0.130", 3, &[]);
    assert_eq!(r.transmitted, 3, "ping did not run: {r:?}");
    assert_eq!(
        r.received, 0,
        "wordpress -> 172.211.0.130 (ns-prod) must see 100% loss: {r:?}"
    );
}

#[test]
fn obs4_pod_pings_its_neighbour_quickly() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("obs4");
    assert!(
        ping_until(&lab, WORDPRESS, "172.211.0.19", Duration::from_secs(10)),
        "wordpress never reached 172.211.0.19"
    );
    let r = ping(&lab, WORDPRESS, "172.211.0.19", 10, &[]);
    assert_eq!(r.received, 10, "wordpress -> 172.211.0.19: {r:?}");
    // The seed saw sub-millisecond. The fastest of 10 measures the path; the average would
    // measure the scheduler of a loaded 2-core machine running tests in parallel.
    let min = r.min_ms.unwrap_or(f64::MAX);
    assert!(
        min < 1.0,
        "fastest RTT {min} ms of {r:?}, the seed saw sub-millisecond"
    );
}

#[test]
fn obs5_hop_reaches_wordpress_through_its_vip() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("obs5");
    let pod = lab.pod_name_by_ip("ns-dev", "172.211.0.18");
    let body = curl_until(&lab, HOP, "http://172.80.88.5/", Duration::from_secs(15));
    assert!(
        body.contains(&pod),
        "curl http://172.80.88.5/ from hop should be served by {pod}, got {body:?}"
    );
    let host = curl(&lab, HOP, "http://172.80.88.5/hostname");
    assert_eq!(host.trim(), pod, "/hostname through the VIP");
}

#[test]
fn obs6_pod_reaches_wordpress_through_its_cluster_ip() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("obs6");
    let pod = lab.pod_name_by_ip("ns-dev", "172.211.0.18");
    let host = curl_until(
        &lab,
        "ns-dev/testbox",
        "http://172.96.1.90/hostname",
        Duration::from_secs(15),
    );
    assert_eq!(
        host.trim(),
        pod,
        "ClusterIP 172.96.1.90:80 from ns-dev/testbox should be served by {pod}"
    );
}

#[test]
fn obs7_upstream_router_learns_vips_and_egress_ips() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("obs7");
    let upstream = lab.upstream_netns();
    let wanted = ["172.80.88.5", "172.80.88.3", "172.60.96.2"];
    let mut last = String::new();
    let learned = wait_until(Duration::from_secs(10), || {
        last = stdout(&lab.ip_in(&upstream, &["route", "show", "proto", "bgp"]));
        wanted
            .iter()
            .all(|ip| route_via(&last, ip).as_deref() == Some("203.0.113.2"))
    });
    assert!(
        learned,
        "{upstream} must hold /32 proto bgp routes to {wanted:?} via 203.0.113.2, has:\n{last}"
    );
    // The operator's view: `pacific get routes` (T0) lists them too.
    let routes = lab.get_json("routes", None);
    let prefixes: Vec<&str> = routes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["prefix"].as_str())
        .collect();
    for ip in wanted {
        let p = format!("{ip}/32");
        assert!(
            prefixes.contains(&p.as_str()),
            "`pacific get routes` lacks {p}: {routes}"
        );
    }
    let text = stdout(&lab.pacific(&["get", "routes"]));
    for ip in wanted {
        assert!(
            text.contains(&format!("{ip}/32")),
            "`pacific get routes` text lacks {ip}/32:\n{text}"
        );
    }
}

/// The gateway of `ip route` line for destination `ip` (written `IP` or `IP/32`).
fn route_via(routes: &str, ip: &str) -> Option<String> {
    routes.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        let dst = w.next()?;
        if dst != ip && dst != format!("{ip}/32") {
            return None;
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        words
            .iter()
            .position(|&x| x == "via")
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
    })
}

#[test]
fn obs8_hello_kubernetes_answers_from_outside_through_its_vip() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("obs8");
    let out = lab.apply_ok(HELLO_KUBERNETES, Some("ns-dev"), Some("tkg-cluster-01"));
    let vip = lab.service_vip("hello-kubernetes").unwrap_or_else(|| {
        panic!(
            "hello-kubernetes got no external IP: {}\napply said:\n{}",
            Value::Array(lab.services()),
            describe(&out)
        )
    });
    assert!(
        vip.starts_with("172.80."),
        "the VIP {vip} is not from the ingress pool"
    );
    let url = format!("http://{vip}/");
    let first = curl_until(&lab, HOP, &url, Duration::from_secs(20));
    assert!(first.contains(MESSAGE), "curl {url} from hop: {first:?}");
    let script = format!("for i in $(seq 30); do curl -s --max-time 2 {url}; echo; done");
    let answers = stdout(&lab.sh(HOP, &script));
    let lines: Vec<&str> = answers.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        30,
        "30 curls from hop to {url} should all answer:\n{answers}"
    );
    assert!(
        lines.iter().all(|l| l.contains(MESSAGE)),
        "every answer is the MESSAGE:\n{answers}"
    );
    let script =
        format!("for i in $(seq 30); do curl -s --max-time 2 http://{vip}/hostname; echo; done");
    let hosts: BTreeSet<String> = stdout(&lab.sh(HOP, &script))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    assert!(
        hosts.len() >= 2,
        "30 connections to {vip} should reach at least 2 of the 3 replicas, reached {hosts:?}"
    );
}

#[test]
fn obs9_get_pods_wide_reads_like_kubectl() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("obs9");
    let out = lab.pacific(&["get", "pods", "-n", "ns-dev", "-o", "wide"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let want = ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"];
    assert!(
        header.len() >= want.len() && header[..want.len()] == want,
        "header {header:?} should start with {want:?}"
    );
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_default();
    let pod = lab.pod_name_by_ip("ns-dev", "172.211.0.18");
    assert!(
        pod.starts_with("wordpress-") && !pod.starts_with("wordpress-mysql"),
        "172.211.0.18 belongs to {pod}"
    );
    let row: Vec<&str> = lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|r| r.first() == Some(&pod.as_str()))
        .unwrap_or_else(|| panic!("no row for {pod}:\n{text}"));
    assert_eq!(row.get(col("IP")), Some(&"172.211.0.18"), "{text}");
    assert_eq!(row.get(col("STATUS")), Some(&"Running"), "{text}");
    assert_eq!(row.get(col("READY")), Some(&"1/1"), "{text}");
    assert!(
        row.get(col("NODE"))
            .is_some_and(|n| !n.is_empty() && *n != "<none>"),
        "{text}"
    );
}
