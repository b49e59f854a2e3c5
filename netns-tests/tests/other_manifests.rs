//! Labs built from manifests other than the seed's, checked for what a Kubernetes or NSX user
//! would expect of fields the seed does not use.
//!
//! Address plan (RFC 2544's 198.18.0.0/15 for the pools, RFC 5737 outside them): pods
//! 198.18.0.0/16, services 198.19.0.0/24, ingress 198.19.1.0/24, egress 198.19.2.0/24; T0 uplink
//! 203.0.113.0/24; outside hosts `allowed` 198.51.100.150 and `other` 198.51.100.160.

use std::time::Duration;

use pacific_netns_tests::*;
use serde_json::json;

const LAB: &str = r#"apiVersion: pacific.dev/v1
kind: Pools
metadata: {name: default}
spec: {pods: 198.18.0.0/16, services: 198.19.0.0/24, ingress: 198.19.1.0/24, egress: 198.19.2.0/24}
---
apiVersion: pacific.dev/v1
kind: OutsideHost
metadata: {name: allowed}
spec: {address: 198.51.100.150/24}
---
apiVersion: pacific.dev/v1
kind: OutsideHost
metadata: {name: other}
spec: {address: 198.51.100.160/24}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop-1}
---
apiVersion: v1
kind: Namespace
metadata: {name: peer-2, annotations: {ncp/static_snat_ip: 198.19.2.9}}
---
apiVersion: v1
kind: Pod
metadata: {name: cli, namespace: peer-2}
spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cli, namespace: shop-1}
spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop-1}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx
        ports: [{containerPort: 8080}, {containerPort: 5353, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: open, namespace: shop-1}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// `web` admits the `allowed` host and peer-2's egress IP (space-padded, as the API server
/// tolerates), on TCP and UDP.
const RESTRICTED: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop-1}
spec:
  type: LoadBalancer
  loadBalancerSourceRanges: [198.51.100.150/32, " 198.19.2.9/32 "]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
"#;

fn vip(lab: &Lab, name: &str) -> String {
    lab.service_vip(name)
        .unwrap_or_else(|| panic!("service {name} has no VIP"))
}

/// One `curl` of at most 2 s; its body (empty when nothing answered).
fn curl(lab: &Lab, from: &str, url: &str) -> String {
    stdout(&lab.exec(from, &["curl", "-s", "--max-time", "2", url]))
}

fn udp_echo(lab: &Lab, from: &str, ip: &str, port: u16, msg: &str) -> String {
    stdout(&lab.sh(from, &format!("echo {msg} | nc -u -w 1 {ip} {port}")))
        .trim()
        .to_string()
}

#[test]
fn load_balancer_source_ranges_admit_only_their_clients() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qasrcr", LAB);
    lab.apply_ok(RESTRICTED, None, None);
    let (web, open) = (vip(&lab, "web"), vip(&lab, "open"));
    let svc = lab
        .services()
        .into_iter()
        .find(|s| s["name"] == json!("web"))
        .expect("service web listed");
    assert_eq!(
        svc["load_balancer_source_ranges"],
        json!(["198.51.100.150/32", "198.19.2.9/32"]),
        "{svc}"
    );

    // The host in the ranges is served on both ports; the other is not, though it reaches a
    // VIP without ranges on the same backends.
    let seen = curl_until(
        &lab,
        "ext/allowed",
        &format!("http://{web}/clientip"),
        Duration::from_secs(20),
    );
    assert!(!seen.is_empty(), "the allowed host was not served");
    assert_eq!(udp_echo(&lab, "ext/allowed", &web, 53, "hi"), "hi");
    assert!(
        !curl(&lab, "ext/other", &format!("http://{open}/hostname")).is_empty(),
        "the other host does not reach a VIP without source ranges"
    );
    let denied_before = lab.port_drops("203.0.113.2", "dfw-deny");
    assert_eq!(
        curl(&lab, "ext/other", &format!("http://{web}/clientip")),
        "",
        "a host outside loadBalancerSourceRanges was served"
    );
    assert_eq!(udp_echo(&lab, "ext/other", &web, 53, "hi"), "");
    assert!(
        lab.port_drops("203.0.113.2", "dfw-deny") > denied_before,
        "the refused client was not counted as denied on the uplink"
    );

    // Pods are judged by the address the VIP sees: peer-2 arrives as its egress IP (in the
    // ranges), a pod of shop-1 itself as its own address (not in them).
    assert!(!curl(&lab, "peer-2/cli", &format!("http://{web}/clientip")).is_empty());
    assert_eq!(
        curl(&lab, "shop-1/cli", &format!("http://{web}/clientip")),
        ""
    );

    // Without the ranges, everyone is served again.
    lab.apply_ok(
        &RESTRICTED.replace("loadBalancerSourceRanges", "#"),
        None,
        None,
    );
    assert!(!curl(&lab, "ext/other", &format!("http://{web}/clientip")).is_empty());

    // Refused as the API server refuses them, naming the field; nothing changes.
    for (spec, field) in [
        (
            "{loadBalancerSourceRanges: [198.51.100.0/24], ports: [{port: 80}]}",
            "spec.loadBalancerSourceRanges",
        ),
        (
            "{type: LoadBalancer, loadBalancerSourceRanges: [198.51.100.1], ports: [{port: 80}]}",
            "spec.loadBalancerSourceRanges[0]",
        ),
    ] {
        let bad = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: bad, namespace: shop-1}}\nspec: {spec}\n"
        );
        let mut conn = lab.connect();
        let request =
            json!({"jsonrpc": "2.0", "id": 1, "method": "apply", "params": {"manifest": bad}});
        conn.send_raw(&format!("{request}\n"));
        let resp = conn.read_response();
        assert_eq!(
            (
                resp["error"]["code"].as_i64(),
                resp["error"]["data"]["field"].as_str()
            ),
            (Some(-32000), Some(field)),
            "{resp}"
        );
    }
    assert!(lab.service_vip("bad").is_none());
}

const SEED_LAB: &str = include_str!("../../control/src/seed-lab.yaml");
const HELLO_KUBERNETES: &str = include_str!("../../docs/hello-kubernetes.yaml");

/// The seed lab as a user would adapt `pacific lab show`: its namespaces, TKG cluster and outside
/// hosts renamed, every pool moved to 10.x, the hosts readdressed.
fn seed_renamed() -> String {
    [
        ("ns-dev", "team-x"),
        ("ns-prod", "team-y"),
        ("tkg-cluster-01", "tkc-7"),
        ("172.211.", "10.211."),
        ("172.96.", "10.96."),
        ("172.80.", "10.80."),
        ("172.60.", "10.60."),
        ("198.51.100.10/", "198.51.100.11/"),
        ("198.51.100.100/", "198.51.100.101/"),
        ("name: hop", "name: jump"),
        ("name: internet", "name: far"),
    ]
    .iter()
    .fold(SEED_LAB.to_string(), |yaml, (from, to)| {
        yaml.replace(from, to)
    })
}

fn lost_all(out: &std::process::Output) -> bool {
    stdout(out).contains(" 0 received")
}

#[test]
fn the_seed_story_holds_with_other_names_and_addresses() {
    if !require_netns() {
        return;
    }
    let yaml = seed_renamed();
    assert!(!yaml.contains("172.") && !yaml.contains("ns-dev"), "{yaml}");
    let lab = Lab::up_with("qaseedre", &yaml);
    let wordpress = lab.pod_name_by_ip("team-x", "10.211.0.18");
    assert!(wordpress.starts_with("wordpress-"), "{wordpress}");

    // 1. Outside to a pod: denied, silently.
    assert!(lost_all(&lab.exec(
        "ext/jump",
        &["ping", "-c", "2", "-W", "1", "10.211.0.18"]
    )));
    // 2. A pod to the outside: the outside host sees the namespace's egress IP.
    let seen = curl_until(
        &lab,
        "team-x/wordpress",
        "http://198.51.100.101/clientip",
        Duration::from_secs(20),
    );
    assert!(seen.starts_with("10.60.96.2:"), "{seen}");
    // 3. Between namespaces: denied. 4. Inside one: allowed, switched (no TTL step).
    assert!(lost_all(&lab.exec(
        "team-x/wordpress",
        &["ping", "-c", "2", "-W", "1", "10.211.0.130"]
    )));
    let ping = stdout(&lab.exec("team-x/wordpress", &["ping", "-c", "1", "10.211.0.19"]));
    assert!(ping.contains("ttl=64"), "{ping}");
    // 5. The VIP from outside (SLB), 6. the ClusterIP from a pod (DLB).
    assert_eq!(
        curl(&lab, "ext/jump", "http://10.80.88.5/").trim(),
        wordpress
    );
    assert_eq!(
        curl(&lab, "team-x/testbox", "http://10.96.1.90/hostname"),
        wordpress
    );
    // 7. The upstream router: a /32 per VIP and egress IP, via the T0 uplink.
    let routes = stdout(&lab.ip_in(&lab.upstream_netns(), &["route", "show", "proto", "bgp"]));
    for addr in [
        "10.80.88.3",
        "10.80.88.5",
        "10.60.96.1",
        "10.60.96.2",
        "10.60.96.3",
    ] {
        assert!(
            routes.contains(&format!("{addr} via 203.0.113.2 dev uplink")),
            "{addr} missing:\n{routes}"
        );
    }
    // The first hop out is the team-x T1's address on the segment.
    let trace = stdout(&lab.exec(
        "team-x/wordpress",
        &["traceroute", "-n", "-q", "1", "-w", "1", "198.51.100.101"],
    ));
    assert!(
        trace
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains(" 10.211.0.17 ")),
        "{trace}"
    );
    // 8. hello-kubernetes inside the renamed TKG cluster, through the nodes' nodePort.
    lab.apply_ok(HELLO_KUBERNETES, Some("team-x"), Some("tkc-7"));
    let vip = vip(&lab, "hello-kubernetes");
    assert_eq!(vip, "10.80.88.7");
    let message = curl_until(
        &lab,
        "ext/jump",
        &format!("http://{vip}/"),
        Duration::from_secs(20),
    );
    assert_eq!(
        message.trim(),
        "I just deployed a PodVM on the Tanzu Kubernetes Cluster!!"
    );
}

/// A TanzuKubernetesCluster lives in a vSphere Namespace: the supervisor control plane's own
/// namespace is not one, so a cluster applied there is refused and no node VM comes up on the
/// supervisor's T1; the same cluster in a vSphere Namespace still comes up.
#[test]
fn a_tkg_cluster_is_refused_in_the_supervisor_namespace() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa5tkcsv");
    let tkc = "apiVersion: run.tanzu.vmware.com/v1alpha1\nkind: TanzuKubernetesCluster\nmetadata: {name: tkc-qa}\nspec: {topology: {controlPlane: {count: 1}, workers: {count: 2}}}\n";
    let out = lab.apply(tkc, Some("supervisor"), None);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("supervisor") && stderr(&out).contains("vSphere Namespace"),
        "{}",
        describe(&out)
    );
    let clusters = lab.items("tkc", None);
    assert!(
        clusters.iter().all(|c| c["name"] != json!("tkc-qa")),
        "{clusters:?}"
    );
    let nodes: Vec<String> = lab
        .items("pods", Some("supervisor"))
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("tkc-qa-"))
        .collect();
    assert!(nodes.is_empty(), "{nodes:?}");
    assert!(
        lab.services()
            .iter()
            .all(|s| s["name"] != json!("tkc-qa-control-plane-service")),
        "a control-plane VIP was handed out"
    );
    lab.apply_ok(tkc, Some("ns-prod"), None);
    assert!(
        lab.items("tkc", None)
            .iter()
            .any(|c| c["name"] == json!("tkc-qa") && c["namespace"] == json!("ns-prod")),
        "tkc-qa not in ns-prod"
    );
}

/// A v1alpha2 cluster's node pools name its worker VMs, as TKG names them
/// (`<cluster>-<pool>-<hash>-<hash>`), and every node comes up on the cluster's segment.
#[test]
fn tkg_node_pools_name_their_worker_nodes() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up("tkcpools");
    let tkc = "apiVersion: run.tanzu.vmware.com/v1alpha2\nkind: TanzuKubernetesCluster\n\
               metadata: {name: tkc-np, namespace: ns-prod}\n\
               spec:\n  topology:\n    controlPlane: {replicas: 1, vmClass: best-effort-small}\n    \
               nodePools:\n    - {name: small, replicas: 2, vmClass: best-effort-small}\n    \
               - {name: large, replicas: 1, vmClass: best-effort-large}\n";
    lab.apply_ok(tkc, None, None);
    let nodes: Vec<(String, String)> = lab
        .items("pods", Some("ns-prod"))
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("tkc-np-")))
        .map(|p| {
            let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (text("name"), text("ip"))
        })
        .collect();
    let control_planes = nodes
        .iter()
        .filter(|(n, _)| n.starts_with("tkc-np-control-plane-"))
        .count();
    assert_eq!(control_planes, 1, "{nodes:?}");
    let pool_of = |name: &str| name.rsplitn(3, '-').nth(2).unwrap_or_default().to_string();
    let mut pools: Vec<String> = nodes
        .iter()
        .filter(|(n, _)| !n.starts_with("tkc-np-control-plane-"))
        .map(|(n, _)| pool_of(n))
        .collect();
    pools.sort();
    assert_eq!(
        pools,
        ["tkc-np-large", "tkc-np-small", "tkc-np-small"],
        "{nodes:?}"
    );
    let cluster = lab
        .items("tkc", Some("ns-prod"))
        .into_iter()
        .find(|c| c["name"] == json!("tkc-np"))
        .expect("tkc-np listed");
    assert_eq!(cluster["workers"], json!(3), "{cluster}");
    // The nodes are VMs on one segment: the small pool's first reaches the large pool's.
    let small = &nodes
        .iter()
        .find(|(n, _)| pool_of(n) == "tkc-np-small")
        .expect("a small node")
        .0;
    let large_ip = &nodes
        .iter()
        .find(|(n, _)| pool_of(n) == "tkc-np-large")
        .expect("a large node")
        .1;
    assert!(
        ping_until(
            &lab,
            &format!("ns-prod/{small}"),
            large_ip,
            Duration::from_secs(10)
        ),
        "{small} cannot reach the large pool's node at {large_ip}"
    );
}
