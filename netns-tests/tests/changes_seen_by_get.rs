//! After a change, `pacific get` tells what changed (found by exploratory QA).

use std::time::{Duration, Instant};

use pacific_netns_tests::*;
use serde_json::json;

const LAB: &str = "\
apiVersion: pacific.dev/v1
kind: Pools
metadata: {name: default}
spec:
  pods: 10.64.0.0/16
  services: 10.65.0.0/16
  ingress: 10.66.0.0/16
  egress: 10.67.0.0/16
---
apiVersion: pacific.dev/v1
kind: Uplink
metadata: {name: default}
spec:
  t0Address: 203.0.113.2
  peerAddress: 203.0.113.1
  prefixLength: 24
---
apiVersion: v1
kind: Namespace
metadata: {name: old}
";

const NEW: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: new}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: new}
spec: {type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}
";

/// The uptime `pacific get routes` prints at the end of the line of `prefix`.
fn uptime_seconds(text: &str, prefix: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.contains(&format!(" {prefix} ")))
        .unwrap_or_else(|| panic!("no route {prefix} in:\n{text}"));
    let hms = line.rsplit(", ").next().unwrap_or_default();
    let parts: Vec<u64> = hms.split(':').filter_map(|p| p.parse().ok()).collect();
    assert_eq!(parts.len(), 3, "no uptime at the end of {line:?}");
    parts[0] * 3600 + parts[1] * 60 + parts[2]
}

/// Every route showed the age of the lab's oldest namespace: a VIP and a segment applied a
/// second ago read as old as the lab, so the table could not tell what a change had added.
#[test]
fn get_routes_shows_each_routes_own_uptime() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qartage", LAB);
    std::thread::sleep(Duration::from_secs(3));
    let applied = Instant::now();
    lab.apply_ok(NEW, None, None);
    let vip = lab.service_vip("web").expect("the new service's VIP");
    let new_subnet = lab
        .items("namespaces", None)
        .into_iter()
        .find(|n| n["name"] == "new")
        .and_then(|n| n["subnet"].as_str().map(str::to_string))
        .expect("namespace new's subnet");
    let old_subnet = lab
        .items("namespaces", None)
        .into_iter()
        .find(|n| n["name"] == "old")
        .and_then(|n| n["subnet"].as_str().map(str::to_string))
        .expect("namespace old's subnet");
    let out = lab.pacific(&["get", "routes"]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    // Under load the calls since the apply take seconds of their own: a new route is at most
    // that old (whole seconds, hence the one more), and 3 s younger than the old segment.
    let since_apply = applied.elapsed().as_secs() + 1;
    let old_uptime = uptime_seconds(&text, &old_subnet);
    assert!(
        old_uptime >= 3,
        "the old namespace's segment route is as old as the lab:\n{text}"
    );
    for prefix in [format!("{vip}/32"), new_subnet] {
        let uptime = uptime_seconds(&text, &prefix);
        assert!(
            uptime <= since_apply && uptime + 3 <= old_uptime,
            "the route to {prefix}, applied {since_apply} s ago at most, shows an older uptime:\n{text}"
        );
    }
    // The same in the JSON scripts read: each row has its own time.
    let rows = lab.items("routes", None);
    let created = |prefix: &str| {
        rows.iter()
            .find(|r| r["prefix"] == prefix)
            .and_then(|r| r["created"].as_u64())
            .unwrap_or_else(|| panic!("no created time for {prefix} in {rows:?}"))
    };
    assert!(created(&format!("{vip}/32")) >= created(&old_subnet) + 3);
    // A default route through another peer is a new route too.
    assert!(uptime_seconds(&text, "0.0.0.0/0") >= 3, "{text}");
    let applied = Instant::now();
    lab.apply_ok(
        "apiVersion: pacific.dev/v1
kind: Uplink
metadata: {name: default}
spec: {t0Address: 203.0.113.2, peerAddress: 203.0.113.3, prefixLength: 24}
",
        None,
        None,
    );
    let text = stdout(&lab.pacific(&["get", "routes"]));
    let since_apply = applied.elapsed().as_secs() + 1;
    assert!(text.contains("0.0.0.0/0 [1/0] via 203.0.113.3"), "{text}");
    let uptime = uptime_seconds(&text, "0.0.0.0/0");
    let old_uptime = uptime_seconds(&text, &old_subnet);
    assert!(
        uptime <= since_apply && uptime + 3 <= old_uptime,
        "the default route via the new peer, applied {since_apply} s ago at most, shows the old \
         one's uptime:\n{text}"
    );
}

/// `get pods -A -n old` listed only `old`'s pods, without the NAMESPACE column: kubectl lists
/// every namespace when `-A` is given, whatever `-n` says, and scripts written for it expect
/// that.
#[test]
fn all_namespaces_wins_over_a_namespace_as_in_kubectl() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qaallns", LAB);
    let pod = |ns: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: {ns}}}\n\
             spec: {{containers: [{{name: c, image: x}}]}}\n"
        )
    };
    lab.apply_ok(
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: new}}\n---\n{}---\n{}",
            pod("old"),
            pod("new")
        ),
        None,
        None,
    );
    let out = lab.pacific(&["get", "pods", "-A", "-n", "old", "-o", "json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut namespaces: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["namespace"].as_str())
        .collect();
    namespaces.sort_unstable();
    assert_eq!(namespaces, ["new", "old"], "{listed}");
    let out = lab.pacific(&["get", "pods", "-n", "old", "-A"]);
    let text = stdout(&out);
    assert!(
        text.starts_with("NAMESPACE") && text.contains("new "),
        "the table of every namespace:\n{}",
        describe(&out)
    );
    // Without -A, -n still narrows.
    let out = lab.pacific(&["get", "pods", "-n", "old", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
}

/// A TKG cluster's service and the supervisor namespace's own service of the same name, as an
/// application applied to both gives: `get svc -n old` printed two `web` rows and no NAMESPACE
/// column, so nothing told which was the guest's.
#[test]
fn a_namespaces_listing_tells_its_guest_clusters_objects_apart() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qaguest", LAB);
    lab.apply_ok(
        "apiVersion: run.tanzu.vmware.com/v1alpha1
kind: TanzuKubernetesCluster
metadata: {name: guest, namespace: old}
spec:
  topology:
    controlPlane: {count: 1}
    workers: {count: 1}
",
        None,
        None,
    );
    let web = "apiVersion: v1
kind: Service
metadata: {name: web}
spec: {type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}
";
    lab.apply_ok(web, Some("old"), None);
    lab.apply_ok(web, Some("old"), Some("guest"));
    for kind in ["svc", "deployments"] {
        if kind == "deployments" {
            let deployment = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}
";
            lab.apply_ok(deployment, Some("old"), None);
            lab.apply_ok(deployment, Some("old"), Some("guest"));
        }
        let out = lab.pacific(&["get", kind, "-n", "old"]);
        assert!(out.status.success(), "{}", describe(&out));
        let text = stdout(&out);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().take(2).collect())
            .collect();
        for want in [["NAMESPACE", "NAME"], ["old", "web"], ["old/guest", "web"]] {
            assert!(
                rows.iter().any(|r| *r == want),
                "get {kind} -n old has no row {want:?}:\n{text}"
            );
        }
    }
    // Only the namespace's own: no column to tell apart, as kubectl prints it.
    lab.delete(web, Some("old"), Some("guest"));
    let out = lab.pacific(&["get", "svc", "-n", "old"]);
    assert!(stdout(&out).starts_with("NAME "), "{}", describe(&out));
}

/// `get nat` listed connections in the table's hash order, so a pod's flows were scattered and
/// a re-run shuffled them. It lists them by namespace, then protocol and original tuple, with
/// ports (and addresses) compared as numbers: source port 2000 before 10000.
#[test]
fn get_nat_lists_connections_in_order() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qanatord");
    let url = "http://198.51.100.100/clientip";
    // Made in reverse order, so that the order listed is not the order made.
    for (pod, port) in [
        ("ns-dev/testbox", "10000"),
        ("ns-dev/testbox", "2000"),
        ("ns-dev/wordpress", "10000"),
        ("ns-dev/wordpress", "2000"),
    ] {
        let out = lab.exec(pod, &["curl", "-s", "-m", "3", "--local-port", port, url]);
        assert!(
            out.status.success(),
            "{pod} -> outside:\n{}",
            describe(&out)
        );
    }
    let rows: Vec<(String, String, u16)> = lab.rpc_ok("nat.list", &json!({}))["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            let original = r["original"].as_str()?;
            let (src, _) = original.split_once(" -> ")?;
            let (ip, port) = src.rsplit_once(':')?;
            let ns = r["namespace"].as_str().unwrap_or("").to_string();
            Some((ns, ip.to_string(), port.parse().ok()?))
        })
        .filter(|(_, _, port)| *port == 2000 || *port == 10000)
        .collect();
    assert_eq!(rows.len(), 4, "the four connections: {rows:?}");
    let mut sorted = rows.clone();
    sorted.sort_by_key(|(ns, ip, port)| (ns.clone(), ip.parse::<std::net::Ipv4Addr>().ok(), *port));
    assert_eq!(rows, sorted, "get nat is not in order");
    let text = stdout(&lab.pacific(&["get", "nat"]));
    let first = |needle: &str| text.find(needle).unwrap_or(usize::MAX);
    assert!(
        first(":2000 ") < first(":10000 "),
        "port 2000 is listed after 10000:\n{text}"
    );
}
