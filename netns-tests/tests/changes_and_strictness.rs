//! Live changes reach what already runs (TKG replicas moved by a resize, a pod whose message
//! changed), and the control socket is strict about bytes, parameters and namespaces. Each test
//! failed before its fix (found by exploratory QA).

use std::time::Duration;

use pacific_netns_tests::*;
use serde_json::{json, Value};

const POOLS: &str = "\
apiVersion: pacific.dev/v1
kind: Pools
metadata: {name: default}
spec:
  pods: 10.44.0.0/16
  services: 10.45.0.0/16
  ingress: 10.46.0.0/16
  egress: 10.47.0.0/16
---
apiVersion: pacific.dev/v1
kind: Uplink
metadata: {name: default}
spec:
  t0Address: 203.0.113.2
  peerAddress: 203.0.113.1
  prefixLength: 24
---
apiVersion: pacific.dev/v1
kind: OutsideHost
metadata: {name: client}
spec:
  address: 198.51.100.20/24
---
apiVersion: v1
kind: Namespace
metadata: {name: team}
";

fn tkc(workers: u32) -> String {
    format!(
        "apiVersion: run.tanzu.vmware.com/v1alpha1
kind: TanzuKubernetesCluster
metadata: {{name: guest, namespace: team}}
spec:
  topology:
    controlPlane: {{count: 1}}
    workers: {{count: {workers}}}
"
    )
}

/// A guest service `name` (of `service_type`, port 80 to 8080, `node_port` pinned when given)
/// and the Deployment of `replicas` it selects.
fn guest_app(name: &str, service_type: &str, node_port: Option<u16>, replicas: u32) -> String {
    let node_port = node_port.map_or(String::new(), |p| format!(", nodePort: {p}"));
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  type: {service_type}
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080{node_port}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: c, image: x, ports: [{{containerPort: 8080}}]}}]
"
    )
}

/// Adding workers to a TKG cluster may place its replicas on other nodes; the replicas' servers
/// must follow them, or the SLB sends every other connection to a node where nothing listens.
#[test]
fn guest_replicas_follow_their_nodes_when_workers_are_added() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qatkc", &format!("{POOLS}---\n{}", tkc(1)));
    lab.apply_ok(
        &guest_app("echo", "LoadBalancer", None, 2),
        Some("team"),
        Some("guest"),
    );
    lab.apply_ok(&tkc(3), None, None);
    let vip = lab
        .service_vip("echo")
        .unwrap_or_else(|| panic!("echo has no VIP: {:?}", lab.services()));
    let url = format!("http://{vip}/hostname");
    assert!(
        wait_until(Duration::from_secs(10), || lab
            .exec("ext/client", &["curl", "-s", "-m", "2", &url])
            .status
            .success()),
        "{url} never answered"
    );
    let script = format!("for i in $(seq 12); do curl -s -m 2 {url} || echo FAILED; echo; done");
    let answers = stdout(&lab.sh("ext/client", &script));
    let lines: Vec<&str> = answers.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.len() == 12 && lines.iter().all(|l| l.starts_with("echo-")),
        "12 curls to {url} after the cluster grew should all be answered by a replica:\n{answers}\n\
         endpoints: {:?}",
        lab.services()
    );
}

/// An error answer with this code, naming this field.
fn assert_refused(resp: &serde_json::Value, code: i64, field: &str, method: &str) {
    assert_eq!(
        (
            resp["error"]["code"].as_i64(),
            resp["error"]["data"]["field"].as_str()
        ),
        (Some(code), Some(field)),
        "{method}: {resp}"
    );
}

/// The control socket refuses what it cannot take as it is: a line that is not UTF-8 (instead of
/// repairing it with replacement characters), parameters a method does not take, and a
/// namespace that does not exist (for every namespaced list, as `pods.list` already did).
#[test]
fn control_socket_refuses_bad_bytes_stray_params_and_unknown_namespaces() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qarpc", POOLS);
    let mut conn = lab.connect();
    conn.send_bytes(b"{\"jsonrpc\":\"2.0\",\"id\":\"\xff\",\"method\":\"daemon.status\"}\n");
    let resp = conn.read_response();
    assert_eq!(resp["error"]["code"], serde_json::json!(-32700), "{resp}");
    conn.send_bytes(
        b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"namespaces.list\",\
          \"params\":{\"name\":\"te\xc3\x28am\"}}\n",
    );
    let resp = conn.read_response();
    assert_eq!(resp["error"]["code"], serde_json::json!(-32700), "{resp}");
    for (method, params, field) in [
        (
            "daemon.status",
            serde_json::json!({"bogus": 1}),
            "params.bogus",
        ),
        (
            "exec.resolve",
            serde_json::json!({"target": "ext/client", "bogus": 1}),
            "params.bogus",
        ),
        (
            "ports.list",
            serde_json::json!({"bogus": 1}),
            "params.bogus",
        ),
    ] {
        let resp = conn.call(method, params);
        assert_refused(&resp, -32602, field, method);
        let message = resp["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.contains("one of: )"), "{method}: {message}");
    }
    for method in ["tkc.list", "nat.list", "pods.list", "services.list"] {
        let resp = conn.call(method, serde_json::json!({"namespace": "nope"}));
        assert_refused(&resp, -32002, "params.namespace", method);
    }
    // The CLI lists nothing there, as kubectl does for a namespace that is not there.
    for kind in ["tkc", "nat"] {
        let out = lab.pacific(&["get", kind, "-n", "nope"]);
        assert!(
            out.status.success()
                && stdout(&out).is_empty()
                && stderr(&out).contains("No resources found in nope namespace."),
            "get {kind} -n nope: {}",
            describe(&out)
        );
    }
    // A file of nothing is an error, as kubectl says "no objects passed to apply".
    for method in ["apply", "delete"] {
        let resp = conn.call(method, serde_json::json!({"manifest": "# nothing\n---\n"}));
        assert_refused(&resp, -32602, "params.manifest", method);
    }
    // The connection still serves, and the good calls still work.
    let resp = conn.call("daemon.status", serde_json::json!({}));
    assert!(resp["result"]["pid"].is_u64(), "{resp}");
    let resp = conn.call("tkc.list", serde_json::json!({"namespace": "team"}));
    assert!(resp["result"]["items"].is_array(), "{resp}");
}

/// A bare pod's spec is fixed once it runs, as the API server holds it: a re-apply that changes
/// its MESSAGE is refused, naming the field, and the running server still answers as before; a
/// label change is taken. A Deployment's template change reaches its replica's server.
#[test]
fn a_changed_message_is_refused_for_a_pod_and_reaches_a_deployment() {
    if !require_netns() {
        return;
    }
    let pod = |message: &str, label: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: msg, namespace: team, labels: {{v: {label}}}}}
spec:
  containers:
  - name: c
    image: x
    ports: [{{containerPort: 80}}]
    env: [{{name: MESSAGE, value: {message}}}]
"
        )
    };
    let deploy = |message: &str| {
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata: {{name: dmsg, namespace: team}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: dmsg}}}}
  template:
    metadata: {{labels: {{app: dmsg}}}}
    spec:
      containers:
      - name: c
        image: x
        ports: [{{containerPort: 80}}]
        env: [{{name: MESSAGE, value: {message}}}]
"
        )
    };
    let lab = Lab::up_with(
        "qamsg",
        &format!("{POOLS}---\n{}---\n{}", pod("first", "a"), deploy("one")),
    );
    let ip_of = |prefix: &str| {
        lab.items("pods", Some("team"))
            .iter()
            .find(|p| p["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .and_then(|p| p["ip"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    // From a neighbour on the segment.
    let tester = "apiVersion: v1
kind: Pod
metadata: {name: tester, namespace: team}
spec:
  containers: [{name: c, image: x}]
";
    lab.apply_ok(tester, None, None);
    let seen = |prefix: &str| {
        let url = format!("http://{}/", ip_of(prefix));
        stdout(&lab.exec("team/tester", &["curl", "-s", "-m", "2", &url]))
            .trim()
            .to_string()
    };
    assert!(
        wait_until(Duration::from_secs(10), || seen("msg") == "first"),
        "pod msg: {:?}",
        seen("msg")
    );
    let out = lab.apply(&pod("second", "a"), None, None);
    assert!(!out.status.success(), "{}", describe(&out));
    let said = stderr(&out);
    assert!(
        said.contains("spec.containers[0].env")
            && said.contains("Forbidden: pod updates may not change fields other than"),
        "{said}"
    );
    let out = lab.apply_ok(&pod("first", "b"), None, None);
    assert_eq!(stdout(&out).trim(), "pod/msg configured");
    assert_eq!(seen("msg"), "first", "the refused MESSAGE reached the pod");
    assert!(
        wait_until(Duration::from_secs(10), || seen("dmsg") == "one"),
        "deployment dmsg: {:?}",
        seen("dmsg")
    );
    lab.apply_ok(&deploy("two"), None, None);
    assert!(
        wait_until(Duration::from_secs(10), || seen("dmsg") == "two"),
        "after the template's MESSAGE changed, dmsg still says {:?}",
        seen("dmsg")
    );
}

/// A Deployment whose template changes (its containerPort, and the service's targetPort with
/// it) rolls its replicas, as Kubernetes does: new pods, with new names and addresses, answer
/// on the new port, and the service answers every request throughout.
#[test]
fn a_template_change_rolls_the_replicas_without_a_gap() {
    if !require_netns() {
        return;
    }
    let app = |port: u16| {
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata: {{name: roll, namespace: team}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: roll}}}}
  template:
    metadata: {{labels: {{app: roll}}}}
    spec:
      containers: [{{name: c, image: x, ports: [{{containerPort: {port}}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: roll, namespace: team}}
spec:
  selector: {{app: roll}}
  ports: [{{port: 80, targetPort: {port}}}]
"
        )
    };
    let tester = "apiVersion: v1\nkind: Pod\nmetadata: {name: tester, namespace: team}\nspec:\n  containers: [{name: c, image: x}]\n";
    let lab = Lab::up_with("qaroll", &format!("{POOLS}---\n{}---\n{tester}", app(8080)));
    let pods = || -> Vec<(String, String)> {
        lab.items("pods", Some("team"))
            .iter()
            .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("roll-")))
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("").to_string(),
                    p["ip"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let old = pods();
    let cip = lab.cluster_ip("team", "roll");
    let out_file = format!("/tmp/qaroll-{}.out", std::process::id());
    // 40 requests, 0.1 s apart, from before the change to well after it.
    let script = format!(
        "(for i in $(seq 40); do curl -s -m 1 http://{cip}/hostname || echo -n FAIL; echo; sleep 0.1; done) \
         > {out_file} 2>&1 < /dev/null &"
    );
    assert!(lab.sh("team/tester", &script).status.success());
    std::thread::sleep(Duration::from_millis(800));
    lab.apply_ok(&app(9090), None, None);
    let new = pods();
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &out_file
        )
        .is_ok_and(|s| s.lines().count() >= 40)),
        "the requests did not end"
    );
    let answers = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    assert_eq!(new.len(), 2, "{new:?}");
    for (name, ip) in &new {
        assert!(
            old.iter().all(|(n, i)| n != name && i != ip),
            "{old:?} -> {new:?}"
        );
        let url = format!("http://{ip}:9090/hostname");
        assert_eq!(
            stdout(&lab.exec("team/tester", &["curl", "-s", "-m", "2", &url])),
            *name
        );
    }
    let lines: Vec<&str> = answers.lines().collect();
    assert!(
        lines.iter().all(|l| !l.contains("FAIL") && !l.is_empty()),
        "a request failed:\n{answers}"
    );
    assert!(
        lines.iter().any(|l| old.iter().any(|(n, _)| n == l)),
        "{answers}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| new.iter().any(|(n, _)| n == l)),
        "{answers}"
    );
}

/// Inside a TKG guest cluster too, a Deployment's template change (here its `MESSAGE`) rolls
/// its replicas, as Kubernetes does: new replicas, their names carrying the new template's hash,
/// serve the new spec, and the service's VIP answers every request throughout.
#[test]
fn a_guest_template_change_rolls_the_replicas_without_a_gap() {
    if !require_netns() {
        return;
    }
    let app = |message: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: groll}}
spec:
  type: LoadBalancer
  selector: {{app: groll}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: groll}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: groll}}}}
  template:
    metadata: {{labels: {{app: groll}}}}
    spec:
      containers:
      - {{name: c, image: x, ports: [{{containerPort: 8080}}], env: [{{name: MESSAGE, value: {message}}}]}}
"
        )
    };
    let lab = Lab::up_with("qagroll", &format!("{POOLS}---\n{}", tkc(2)));
    lab.apply_ok(&app("first"), Some("team"), Some("guest"));
    let vip = lab
        .service_vip("groll")
        .unwrap_or_else(|| panic!("groll has no VIP: {:?}", lab.services()));
    let curl = |path: &str| {
        stdout(&lab.exec(
            "ext/client",
            &["curl", "-s", "-m", "2", &format!("http://{vip}{path}")],
        ))
        .trim()
        .to_string()
    };
    assert!(
        wait_until(Duration::from_secs(10), || curl("/") == "first"),
        "{vip} never answered"
    );
    let out_file = format!("/tmp/qagroll-{}.out", std::process::id());
    // 60 requests, 0.1 s apart, from before the change to well after it.
    let script = format!(
        "(for i in $(seq 60); do curl -s -m 1 http://{vip}/hostname || echo -n FAIL$?; echo; sleep 0.1; done) \
         > {out_file} 2>&1 < /dev/null &"
    );
    assert!(lab.sh("ext/client", &script).status.success());
    std::thread::sleep(Duration::from_millis(800));
    lab.apply_ok(&app("second"), Some("team"), Some("guest"));
    assert!(
        wait_until(Duration::from_secs(15), || std::fs::read_to_string(
            &out_file
        )
        .is_ok_and(|s| s.lines().count() >= 60)),
        "the requests did not end"
    );
    let answers = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    let lines: Vec<&str> = answers.lines().collect();
    // One request in flight at the switch is sometimes reset on a loaded machine (`FAIL56`, about
    // one run in ten with the CPUs busy; the README lists it as left to do); more than one, or a
    // gap, is the replicas restarted in place, as guests were before they rolled.
    let failed = lines.iter().filter(|l| !l.starts_with("groll-")).count();
    assert!(failed <= 1, "{failed} requests failed:\n{answers}");
    // `groll-<template hash>-<5>`: the first answers from the old template's replicas, the last
    // from the new one's.
    let hash = |l: &str| l.rsplit_once('-').map(|(h, _)| h.to_string());
    let (first, last) = (
        lines.first().and_then(|l| hash(l)),
        lines.last().and_then(|l| hash(l)),
    );
    assert_ne!(first, last, "the replicas kept their names:\n{answers}");
    for _ in 0..4 {
        assert_eq!(curl("/"), "second", "the new MESSAGE is not served");
    }
}

/// kube-proxy opens a service's nodePort on every node of a guest cluster: a node without a
/// replica passes the connection on to one with (`externalTrafficPolicy: Cluster`).
#[test]
fn every_node_of_a_guest_cluster_answers_on_the_nodeport() {
    if !require_netns() {
        return;
    }
    let client = "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: team}\nspec:\n  containers: [{name: c, image: x}]\n";
    let lab = Lab::up_with("qanodes", &format!("{POOLS}---\n{}---\n{client}", tkc(3)));
    let app = guest_app("web", "NodePort", Some(31080), 1);
    lab.apply_ok(&app, Some("team"), Some("guest"));
    let nodes: Vec<String> = lab
        .items("pods", Some("team"))
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("guest-")))
        .filter_map(|p| p["ip"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        nodes.len(),
        4,
        "1 control-plane and 3 worker nodes: {nodes:?}"
    );
    for ip in &nodes {
        let url = format!("http://{ip}:31080/hostname");
        let answered = wait_until(Duration::from_secs(10), || {
            stdout(&lab.exec("team/client", &["curl", "-s", "-m", "2", &url])).starts_with("web-")
        });
        assert!(
            answered,
            "node {ip} does not answer on its nodePort ({url})"
        );
    }
}

/// Deleting a namespace ends its connections: its NAT entries do not linger in `get nat` (under
/// `<none>`, or under the next namespace given its addresses) holding SNAT ports until they time
/// out.
#[test]
fn deleting_a_namespace_forgets_its_connections() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qagone");
    let app = "\
apiVersion: v1
kind: Namespace
metadata: {name: gone}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: gone}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: w, image: x, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: gone}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
";
    lab.apply_ok(app, None, None);
    let vip = lab
        .services()
        .into_iter()
        .find(|s| s["namespace"] == "gone")
        .and_then(|s| s["external_ip"].as_str().map(str::to_string))
        .expect("the gone/web VIP");
    let out = lab.exec(
        "gone/web",
        &["curl", "-s", "-m", "3", "http://198.51.100.100/clientip"],
    );
    assert!(out.status.success(), "pod -> outside:\n{}", describe(&out));
    let out = lab.exec(
        "ext/hop",
        &["curl", "-s", "-m", "3", &format!("http://{vip}/")],
    );
    assert!(out.status.success(), "hop -> VIP:\n{}", describe(&out));
    let of_gone = |lab: &Lab| -> Vec<Value> {
        lab.rpc_ok("nat.list", &json!({"all": true}))["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| {
                r["namespace"] == "gone" || r["original"].as_str().unwrap_or("").contains(&vip)
            })
            .collect()
    };
    assert!(
        of_gone(&lab).len() >= 2,
        "the namespace's connections are tracked: {:?}",
        of_gone(&lab)
    );
    let out = lab.delete(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: gone}\n",
        None,
        None,
    );
    assert!(out.status.success(), "delete:\n{}", describe(&out));
    let all = lab.rpc_ok("nat.list", &json!({"all": true}));
    let left: Vec<&Value> = all["items"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|r| {
                    r["namespace"].is_null() || r["original"].as_str().unwrap_or("").contains(&vip)
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "connections of the deleted namespace are still tracked: {left:?}"
    );
}

/// `pacific get ports -n NS` lists that namespace's pod ports, as `-n` does for every other
/// namespaced kind (it listed every port), and an unknown namespace lists nothing, as kubectl.
#[test]
fn get_ports_takes_a_namespace() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qaports");
    let names: Vec<String> = lab
        .items("ports", Some("ns-prod"))
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        !names.is_empty() && names.iter().all(|n| n.starts_with("ns-prod/")),
        "get ports -n ns-prod: {names:?}"
    );
    let out = lab.pacific(&["get", "ports", "-n", "nosuch"]);
    assert!(
        out.status.success()
            && stdout(&out).is_empty()
            && stderr(&out).contains("No resources found in nosuch namespace."),
        "get ports -n nosuch lists nothing, as kubectl:\n{}",
        describe(&out)
    );
}

/// An application's file often carries its ConfigMap and Secret: `apply -f` takes it, names what
/// it skipped (Pacific models no configuration), and applies the rest; `delete -f` of the same
/// file deletes the rest. A file of skipped kinds alone changes nothing.
#[test]
fn an_app_file_with_a_configmap_applies_and_names_what_it_skipped() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qacfg", POOLS);
    let app = "apiVersion: v1
kind: ConfigMap
metadata: {name: web-config, namespace: team}
data: {greeting: hello}
---
apiVersion: v1
kind: Secret
metadata: {name: web-secret, namespace: team}
type: Opaque
stringData: {password: x}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: team}
spec:
  selector: {app: web}
  ports: [{port: 80}]
";
    let out = lab.apply_ok(app, None, None);
    let text = stdout(&out);
    assert!(text.contains("service/web created"), "{}", describe(&out));
    assert!(
        text.contains("configmap/web-config skipped"),
        "{}",
        describe(&out)
    );
    assert!(
        text.contains("secret/web-secret skipped"),
        "{}",
        describe(&out)
    );
    let names = |lab: &Lab| -> Vec<String> {
        lab.items("services", Some("team"))
            .iter()
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(names(&lab), ["web"]);

    let only_config = "apiVersion: v1
kind: ConfigMap
metadata: {name: other, namespace: team}
";
    let out = lab.apply_ok(only_config, None, None);
    assert!(
        stdout(&out).contains("configmap/other skipped"),
        "{}",
        describe(&out)
    );
    assert_eq!(names(&lab), ["web"]);

    let out = lab.delete(app, None, None);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).contains("configmap/web-config skipped"),
        "{}",
        describe(&out)
    );
    assert!(names(&lab).is_empty(), "{:?}", names(&lab));
}

/// `lab up --conntrack-timeout` starts the daemon with it (as `pacific daemon` takes it): the
/// status shows it, and a ping's SNAT binding is gone from `get nat` once it ran out. A bad one
/// is refused before anything starts.
#[test]
fn lab_up_hands_conntrack_timeouts_to_the_daemon() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with_options(
        "qatmo",
        None,
        &["--conntrack-timeout", "icmp=2", "--conntrack-max", "5000"],
    );
    let status = lab.rpc_ok("daemon.status", &json!({}));
    assert_eq!(status["conntrack"]["max"], 5000, "{status}");
    assert_eq!(
        status["conntrack"]["timeouts_seconds"]["icmp"], 2,
        "{status}"
    );
    assert_eq!(
        status["conntrack"]["timeouts_seconds"]["tcp-established"], 432_000,
        "{status}"
    );
    let pings = |lab: &Lab| -> usize {
        lab.items("nat", None)
            .iter()
            .filter(|n| n["protocol"] == "icmp")
            .count()
    };
    let out = lab.exec(
        "ns-dev/testbox",
        &["ping", "-c", "1", "-W", "2", "198.51.100.100"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(pings(&lab), 1);
    assert!(
        wait_until(Duration::from_secs(8), || pings(&lab) == 0),
        "the ping's binding outlived its 2 s: {:?}",
        lab.items("nat", None)
    );

    let out = lab.pacific(&["lab", "up", "--conntrack-timeout", "udp=0"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("at least 1 second"),
        "{}",
        describe(&out)
    );
}

/// `pacific exec ns-deb/wordpress` (a mistyped namespace) said `no pod "wordpress" in
/// namespace "ns-deb"`, sending the user to look for a pod; it now says the namespace is not
/// found and lists the ones there are.
#[test]
fn exec_into_an_unknown_namespace_names_the_namespace() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qaexns", POOLS);
    let out = lab.exec("tema/tester", &["true"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("namespace \"tema\" not found (namespaces: team;"),
        "{err}"
    );
    // A known namespace without that pod still says so.
    let out = lab.exec("team/tester", &["true"]);
    assert!(
        stderr(&out).contains("no pod \"tester\" in namespace \"team\""),
        "{}",
        describe(&out)
    );
}

/// A guest cluster's LoadBalancer with `allocateLoadBalancerNodePorts: false` and no nodePort
/// named has no SLB member (NSX reaches a guest's services through the nodes' nodePorts): the
/// API server takes it, so it is applied, but apply warns that its VIP will refuse, naming the
/// port; a port that names its nodePort is not warned about, and answers.
#[test]
fn a_guest_load_balancer_without_node_ports_is_applied_with_a_warning() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qanonp", &format!("{POOLS}---\n{}", tkc(2)));
    let svc = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  allocateLoadBalancerNodePorts: false
  selector: {app: web}
  ports: [{name: a, port: 80, targetPort: 8080}, {name: b, port: 81, targetPort: 8080, nodePort: 31081}]
";
    let app = guest_app("web", "LoadBalancer", None, 2);
    let deployment = app
        .split("---\n")
        .nth(1)
        .expect("guest_app has a Deployment");
    let out = lab.apply_ok(
        &format!("{svc}---\n{deployment}"),
        Some("team"),
        Some("guest"),
    );
    let warnings: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning, for port 80: {}",
        describe(&out)
    );
    assert!(
        warnings[0].contains("service web in TKG cluster team/guest: port 80 has no nodePort"),
        "{}",
        describe(&out)
    );
    let vip = lab
        .items("svc", Some("team"))
        .iter()
        .find(|s| s["name"] == "web")
        .and_then(|s| s["external_ip"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("web has no VIP: {:?}", lab.items("svc", Some("team"))));
    let url = format!("http://{vip}:81/hostname");
    let answered = wait_until(Duration::from_secs(10), || {
        stdout(&lab.exec("ext/client", &["curl", "-s", "-m", "2", &url])).starts_with("web-")
    });
    assert!(answered, "{url} (nodePort 31081) does not answer");
    // Applying it again warns again: the service still has no member on port 80.
    let again = lab.apply_ok(svc, Some("team"), Some("guest"));
    assert!(
        stderr(&again).contains("port 80 has no nodePort"),
        "{}",
        describe(&again)
    );
}

/// The members of a guest LoadBalancer's VIP are the cluster's worker nodes on its nodePort,
/// every one of them, as the guest's cloud provider selects them all (the seed: "nodePort on
/// each node"), not only those that run a replica; with `externalTrafficPolicy: Local` only
/// those. Every connection to the VIP is answered either way.
#[test]
fn a_guest_load_balancer_has_every_worker_node_as_member() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qaslbw", &format!("{POOLS}---\n{}", tkc(3)));
    lab.apply_ok(
        &guest_app("web", "LoadBalancer", Some(31090), 1),
        Some("team"),
        Some("guest"),
    );
    let workers: Vec<String> = lab
        .items("pods", Some("team"))
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("guest-workers-"))
        })
        .filter_map(|p| p["ip"].as_str().map(|ip| format!("{ip}:31090")))
        .collect();
    assert_eq!(workers.len(), 3, "{workers:?}");
    let members = |lab: &Lab| -> Vec<String> {
        let eps = lab.items("ep", Some("team"));
        let web = eps
            .iter()
            .find(|e| e["name"] == "web")
            .unwrap_or_else(|| panic!("no endpoints of web: {eps:?}"));
        let mut m: Vec<String> = web["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect();
        m.sort();
        m
    };
    let mut sorted = workers.clone();
    sorted.sort();
    assert_eq!(members(&lab), sorted, "every worker node is a member");
    let vip = lab
        .items("svc", Some("team"))
        .iter()
        .find(|s| s["name"] == "web")
        .and_then(|s| s["external_ip"].as_str().map(str::to_string))
        .expect("web has a VIP");
    let url = format!("http://{vip}/hostname");
    assert!(
        wait_until(Duration::from_secs(10), || {
            (0..6).all(|_| {
                stdout(&lab.exec("ext/client", &["curl", "-s", "-m", "2", &url]))
                    .starts_with("web-")
            })
        }),
        "{url} does not answer every connection through the nodes"
    );
    // Local: only the node of the replica, the others would refuse.
    let local = guest_app("web", "LoadBalancer", Some(31090), 1).replace(
        "  type: LoadBalancer\n",
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n",
    );
    lab.apply_ok(&local, Some("team"), Some("guest"));
    assert_eq!(members(&lab).len(), 1, "{:?}", members(&lab));
}

/// `sessionAffinity: ClientIP` in a guest cluster holds per node: the SLB keeps each client on
/// one node, so its members are the nodes that run a replica (a node without one would relay
/// the client's connections to the replicas in turn). With one replica per node, every client
/// gets one replica, connection after connection.
#[test]
fn a_guest_client_ip_affinity_keeps_each_client_on_one_replica() {
    if !require_netns() {
        return;
    }
    let hosts: String = (21..=24)
        .map(|i| {
            format!(
                "---\napiVersion: pacific.dev/v1\nkind: OutsideHost\nmetadata: {{name: c{i}}}\n\
                 spec: {{address: 198.51.100.{i}/24}}\n"
            )
        })
        .collect();
    let lab = Lab::up_with("qaslbaff", &format!("{POOLS}---\n{}{hosts}", tkc(3)));
    let app = guest_app("web", "LoadBalancer", None, 2).replace(
        "  type: LoadBalancer\n",
        "  type: LoadBalancer\n  sessionAffinity: ClientIP\n",
    );
    lab.apply_ok(&app, Some("team"), Some("guest"));
    let vip = lab
        .items("svc", Some("team"))
        .iter()
        .find(|s| s["name"] == "web")
        .and_then(|s| s["external_ip"].as_str().map(str::to_string))
        .expect("web has a VIP");
    let url = format!("http://{vip}/hostname");
    for i in 21..=24 {
        let host = format!("ext/c{i}");
        let answers: Vec<String> = (0..6)
            .map(|_| stdout(&lab.exec(&host, &["curl", "-s", "-m", "2", &url])))
            .collect();
        let distinct: std::collections::BTreeSet<&String> = answers.iter().collect();
        assert!(
            distinct.len() == 1 && answers[0].starts_with("web-"),
            "{host} got {answers:?}"
        );
    }
}
