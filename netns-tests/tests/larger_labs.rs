//! A lab larger than the seed: 20 namespaces, each with two web replicas behind a LoadBalancer
//! and a ClusterIP, built in one `lab up`. Each namespace's pods leave with their own egress
//! IP, each VIP balances over its own replicas, namespaces stay isolated, and a request that
//! needs more egress IPs or VIPs than the pools have left is refused naming the pool, changing
//! nothing.
//!
//! Address plan: pods 198.18.0.0/16, services 198.19.0.0/26, ingress 198.19.1.0/27, egress
//! 198.19.2.0/27 (so 20 namespaces fit and 20 more do not); T0 uplink 203.0.113.0/24; outside
//! host `internet` 198.51.100.100.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pacific_netns_tests::*;
use serde_json::Value;

const NAMESPACES: usize = 20;

fn namespaces_yaml(from: usize, to: usize) -> String {
    let mut docs = Vec::new();
    for i in from..to {
        let ns = format!("team{i:02}");
        docs.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {ns}}}\n\
             spec:\n  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    \
             metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - name: web\n        \
             image: nginx\n        ports: [{{containerPort: 80}}]\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: {ns}}}\n\
             spec:\n  containers: [{{name: c, image: busybox}}]\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {ns}}}\n\
             spec:\n  type: LoadBalancer\n  ports: [{{port: 80}}]\n  selector: {{app: web}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: web-internal, namespace: {ns}}}\n\
             spec:\n  ports: [{{port: 80}}]\n  selector: {{app: web}}\n"
        ));
    }
    docs.join("---\n")
}

fn lab_yaml() -> String {
    format!(
        "apiVersion: pacific.dev/v1\nkind: Pools\nmetadata: {{name: default}}\nspec:\n  \
         pods: 198.18.0.0/16\n  services: 198.19.0.0/26\n  ingress: 198.19.1.0/27\n  \
         egress: 198.19.2.0/27\n---\n\
         apiVersion: pacific.dev/v1\nkind: Uplink\nmetadata: {{name: default}}\n\
         spec: {{t0Address: 203.0.113.2, peerAddress: 203.0.113.1, prefixLength: 24}}\n---\n\
         apiVersion: pacific.dev/v1\nkind: OutsideHost\nmetadata: {{name: internet}}\n\
         spec: {{address: 198.51.100.100/24, httpPorts: [80]}}\n---\n{}",
        namespaces_yaml(0, NAMESPACES)
    )
}

fn curl(lab: &Lab, from: &str, url: &str) -> String {
    stdout(&lab.exec(from, &["curl", "-s", "--max-time", "2", url]))
}

/// What a user sees of the lab: its namespaces, pods and services, ages left out.
fn visible(lab: &Lab) -> Vec<Value> {
    ["namespaces", "pods", "svc"]
        .iter()
        .flat_map(|k| lab.items(k, None))
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("created");
            }
            v
        })
        .collect()
}

#[test]
fn twenty_namespaces_each_egress_vip_clusterip_and_isolation() {
    if !require_netns() {
        return;
    }
    let started = Instant::now();
    let lab = Lab::up_with("lg20", &lab_yaml());
    let up = started.elapsed();
    // Linear work is about a second in a release build: a minute means something quadratic.
    assert!(
        up < Duration::from_secs(40),
        "lab up of {NAMESPACES} namespaces took {up:?}"
    );

    let namespaces = lab.items("namespaces", None);
    assert_eq!(namespaces.len(), NAMESPACES, "{namespaces:?}");
    let services = lab.items("svc", None);
    let pods = lab.items("pods", None);
    let mut egress_seen = BTreeSet::new();
    for n in &namespaces {
        let ns = n["name"].as_str().expect("a namespace name");
        let egress = n["egress_ip"].as_str().expect("an egress IP");
        // Its pods leave as its own egress IP.
        let seen = curl(
            &lab,
            &format!("{ns}/client"),
            "http://198.51.100.100/clientip",
        );
        let seen_ip = seen.split(':').next().unwrap_or_default().to_string();
        assert_eq!(seen_ip, egress, "{ns}: the outside saw {seen:?}");
        egress_seen.insert(seen_ip);

        let replicas: BTreeSet<String> = pods
            .iter()
            .filter(|p| p["namespace"] == ns && p["owner"] == "web")
            .map(|p| p["name"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(replicas.len(), 2, "{ns}: {replicas:?}");
        let svc = |name: &str| {
            services
                .iter()
                .find(|s| s["namespace"] == ns && s["name"] == name)
                .unwrap_or_else(|| panic!("{ns}: no service {name}"))
        };
        // Its VIP answers the outside from each of its replicas (round robin), none other.
        let vip = svc("web")["external_ip"]
            .as_str()
            .expect("a VIP")
            .to_string();
        let answered: BTreeSet<String> = (0..4)
            .map(|_| curl(&lab, "ext/internet", &format!("http://{vip}/hostname")))
            .collect();
        assert_eq!(answered, replicas, "{ns}: VIP {vip}");
        // Its ClusterIP answers its pods.
        let cip = svc("web-internal")["cluster_ip"]
            .as_str()
            .expect("a ClusterIP");
        let h = curl(
            &lab,
            &format!("{ns}/client"),
            &format!("http://{cip}/hostname"),
        );
        assert!(
            replicas.contains(&h),
            "{ns}: ClusterIP {cip} answered {h:?}"
        );
    }
    assert_eq!(
        egress_seen.len(),
        NAMESPACES,
        "egress IPs shared: {egress_seen:?}"
    );

    // Isolation: a pod of team00 reaches no pod of team19, nor does the outside.
    let other = pods
        .iter()
        .find(|p| p["namespace"] == "team19" && p["owner"] == "web")
        .and_then(|p| p["ip"].as_str())
        .expect("a team19 replica")
        .to_string();
    for from in ["team00/client", "ext/internet"] {
        let out = lab.exec(
            from,
            &[
                "curl",
                "-s",
                "--max-time",
                "1",
                &format!("http://{other}/hostname"),
            ],
        );
        assert!(
            !out.status.success(),
            "{from} reached {other}: {}",
            describe(&out)
        );
    }

    // Twenty more namespaces need twenty more egress IPs: the pool has fewer left.
    let before = visible(&lab);
    let out = lab.apply(&namespaces_yaml(NAMESPACES, 2 * NAMESPACES), None, None);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("egress pool 198.19.2.0/27 has no free address left"),
        "{}",
        describe(&out)
    );
    // Twenty more LoadBalancers need twenty more VIPs.
    let more_vips: Vec<String> = (0..NAMESPACES)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web2, namespace: team{i:02}}}\n\
                 spec:\n  type: LoadBalancer\n  ports: [{{port: 81, targetPort: 80}}]\n  \
                 selector: {{app: web}}\n"
            )
        })
        .collect();
    let out = lab.apply(&more_vips.join("---\n"), None, None);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("ingress pool 198.19.1.0/27 has no free address left"),
        "{}",
        describe(&out)
    );
    assert_eq!(visible(&lab), before, "a refused request changed the lab");
    assert!(
        netns_with_prefix(&lab.prefix)
            .iter()
            .all(|n| !n.contains("team2")),
        "a refused request left pod namespaces: {:?}",
        netns_with_prefix(&lab.prefix)
    );
}

/// `lab down` on drop, for a lab this test started by hand.
struct DownOnDrop(std::path::PathBuf, String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let mut cmd = std::process::Command::new(pacific_bin());
        cmd.arg("--socket")
            .arg(&self.0)
            .args(["lab", "down", "--prefix", &self.1]);
        run_bounded(cmd, None, Duration::from_secs(60));
        delete_netns_with_prefix(&self.1);
    }
}

#[test]
fn a_lab_up_the_pools_cannot_hold_leaves_nothing_running() {
    if !require_netns() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pacific-test-lgfull-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a test directory");
    let socket = dir.join("pacific.sock");
    let prefix = format!("paclgfullp{}", std::process::id());
    let _down = DownOnDrop(socket.clone(), prefix.clone());
    // 20 namespaces, 20 egress IPs: a /28 of egress holds 14.
    let yaml = lab_yaml().replace("egress: 198.19.2.0/27", "egress: 198.19.2.0/28");
    let file = dir.join("lab.yaml");
    std::fs::write(&file, yaml).expect("the lab file");
    let mut cmd = std::process::Command::new(pacific_bin());
    cmd.arg("--socket")
        .arg(&socket)
        .arg("lab")
        .arg("up")
        .arg(&file)
        .args(["--prefix", &prefix, "--workers", "1"]);
    let out = run_bounded(cmd, None, Duration::from_secs(60));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("egress pool 198.19.2.0/28 has no free address left"),
        "{}",
        describe(&out)
    );
    // Nothing of it runs: no daemon answers, no namespace of its prefix (the upstream router's
    // neither).
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_err(),
        "a daemon still answers on {}",
        socket.display()
    );
    assert_eq!(netns_with_prefix(&prefix), Vec::<String>::new());
}
