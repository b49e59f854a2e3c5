//! Every pod gets a network namespace of its own, whatever its names: long ones (a namespace,
//! a deployment and the pod hashes easily pass the 64 characters a namespace name may have) and
//! ones whose readable `{prefix}-{namespace}-{pod}` is the same (pod `b-c` of namespace `a`, pod
//! `c` of namespace `a-b`). Both used to stay Pending, the apply saying only a warning.

use pacific_netns_tests::*;

const LAB: &str = "apiVersion: v1
kind: Namespace
metadata: {name: a-b}
---
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: a-b}
spec: {containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b-c, namespace: a}
spec: {containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: payments-production}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: checkout-api-gateway-service, namespace: payments-production}
spec:
  replicas: 2
  selector: {matchLabels: {app: co}}
  template:
    metadata: {labels: {app: co}}
    spec: {containers: [{name: c, image: x, ports: [{containerPort: 80}]}]}
";

#[test]
fn long_and_look_alike_pod_names_get_namespaces_of_their_own() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("names", LAB);
    let pods = lab.items("pods", None);
    assert_eq!(pods.len(), 4, "{pods:?}");
    let mut netns: Vec<String> = Vec::new();
    for p in &pods {
        assert_eq!(p["status"], "Running", "{p}");
        let target = format!(
            "{}/{}",
            p["namespace"].as_str().unwrap(),
            p["name"].as_str().unwrap()
        );
        let ip = p["ip"].as_str().unwrap();
        let out = lab.exec(&target, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            stdout(&out).contains(&format!("{ip}/")),
            "{target} should have {ip}: {}",
            describe(&out)
        );
        netns.push(p["netns"].as_str().unwrap().to_string());
    }
    netns.sort();
    netns.dedup();
    assert_eq!(netns.len(), 4, "{netns:?}");
    // Deleting one of the look-alikes leaves the other running.
    lab.delete(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: a-b}\n",
        None,
        None,
    );
    let out = lab.exec("a/b-c", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(out.status.success(), "{}", describe(&out));
    lab.down();
}
