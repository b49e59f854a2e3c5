//! `pacific` as a script drives it, compared with what kubectl prints and returns. Each test
//! failed before its fix (found by exploratory QA).
//!
//! Address plan: pods 198.18.0.0/16, services 198.19.0.0/24, ingress 198.19.1.0/24, egress
//! 198.19.2.0/24 (RFC 2544); the T0 uplink 203.0.113.0/24.

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

    let o = lab.pacific(&["get", "pod", "web", "-n", "missing"]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert_eq!(
        stderr(&o).trim(),
        r#"Error from server (NotFound): pods "web" not found"#
    );
    // The namespace that is there still lists its pod.
    let o = lab.pacific(&["get", "pods", "-n", "team", "-o", "name"]);
    assert_eq!(stdout(&o).trim(), "pod/web", "{}", describe(&o));
}
