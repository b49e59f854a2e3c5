//! Scripts driving the control socket and the CLI (found by exploratory QA): several clients at
//! once, whatever order their requests finish in, leave the lab doing what `get` shows; a
//! teardown deletes what it names, as kubectl's would.

use std::collections::BTreeSet;

use pacific_netns_tests::*;

const LAB: &str = "\
apiVersion: pacific.dev/v1
kind: Pools
metadata: {name: default}
spec:
  pods: 10.54.0.0/16
  services: 10.55.0.0/16
  ingress: 10.56.0.0/16
  egress: 10.57.0.0/16
---
apiVersion: pacific.dev/v1
kind: Uplink
metadata: {name: default}
spec:
  t0Address: 203.0.113.2
  peerAddress: 203.0.113.1
  prefixLength: 24
";

/// Namespace `team{i}`: two pods and a LoadBalancer service (so a VIP and an egress IP, two
/// /32s the upstream router learns).
fn team(i: usize) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: team{i}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: team{i}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: c, image: x, ports: [{{containerPort: 80}}]}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: team{i}}}
spec: {{type: LoadBalancer, selector: {{app: web}}, ports: [{{port: 80}}]}}
"
    )
}

/// The /32s the upstream router has learned, and those T0 says it advertises (its VIP and NAT
/// routes).
fn learned_and_advertised(lab: &Lab) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = lab.ip_in(&lab.upstream_netns(), &["route", "show", "proto", "bgp"]);
    assert!(out.status.success(), "{}", describe(&out));
    let learned = stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| format!("{}/32", p.trim_end_matches("/32")))
        .collect();
    let advertised = lab.get_json("routes", None)["items"]
        .as_array()
        .expect("routes.list items")
        .iter()
        .filter(|r| matches!(r["code"].as_str(), Some("t1l" | "t1n")))
        .filter_map(|r| r["prefix"].as_str().map(str::to_string))
        .collect();
    (learned, advertised)
}

/// Six clients delete (then re-apply) six namespaces at the same moment. Each request
/// brought the upstream router in line with the tables it had published, without a lock: the
/// one that finished last could be the one holding older tables, and the router then kept a
/// deleted namespace's VIP and egress IP (or lacked a new VIP) until some later change.
#[test]
fn concurrent_applies_leave_the_upstream_router_with_the_routes_get_routes_shows() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qaconc", LAB);
    const TEAMS: usize = 6;
    for i in 0..TEAMS {
        lab.apply_ok(&team(i), None, None);
    }
    for round in 0..5 {
        for delete in [true, false] {
            std::thread::scope(|s| {
                for i in 0..TEAMS {
                    let lab = &lab;
                    s.spawn(move || {
                        let out = if delete {
                            lab.delete(&team(i), None, None)
                        } else {
                            lab.apply(&team(i), None, None)
                        };
                        assert!(out.status.success(), "team{i}: {}", describe(&out));
                    });
                }
            });
            let (learned, advertised) = learned_and_advertised(&lab);
            // Each team holds a VIP and an egress IP; none is left once all are deleted.
            let want = if delete { 0 } else { 2 * TEAMS };
            assert_eq!(
                advertised.len(),
                want,
                "round {round}: T0 advertises {advertised:?}"
            );
            assert_eq!(
                learned,
                advertised,
                "round {round}, after concurrent {}: the upstream router's /32s differ from \
                 T0's",
                if delete { "deletes" } else { "applies" }
            );
        }
    }
}

/// A teardown script whose file names an object already gone: `delete -f` fails and deletes
/// nothing (all or nothing), so the lab keeps the rest; `--ignore-not-found`, as in kubectl,
/// deletes what is left, and a second run is a no-op that succeeds. apply does not take it.
#[test]
fn delete_ignore_not_found_tears_down_what_is_left() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qaignnf", LAB);
    let file = team(0);
    lab.apply_ok(&file, None, None);
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: team0}\n";
    let out = lab.delete(service, None, None);
    assert!(out.status.success(), "{}", describe(&out));
    let vip_routes = |lab: &Lab| learned_and_advertised(lab).0.len();
    let before = vip_routes(&lab);

    let out = lab.delete(&file, None, None);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).contains("not found"), "{}", describe(&out));
    assert_eq!(
        lab.items("pods", Some("team0")).len(),
        2,
        "nothing was deleted"
    );

    let path = lab.dir.join("team0.yaml");
    std::fs::write(&path, &file).expect("write the manifest");
    let path = path.display().to_string();
    let out = lab.pacific(&["delete", "--ignore-not-found", "-f", &path]);
    assert!(out.status.success(), "{}", describe(&out));
    let said = stdout(&out);
    assert!(
        said.contains(r#"namespace "team0" deleted"#)
            && said.contains(r#"deployment.apps "web" deleted"#),
        "{said}"
    );
    assert!(!said.contains("service/web"), "{said}");
    let names: Vec<String> = lab
        .items("namespaces", None)
        .iter()
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect();
    assert!(!names.contains(&"team0".to_string()), "{names:?}");
    assert!(
        vip_routes(&lab) < before,
        "team0's egress IP is still learned"
    );
    assert!(
        netns_with_prefix(&lab.prefix)
            .iter()
            .all(|n| !n.contains("team0")),
        "team0's pods are still there"
    );

    let out = lab.pacific(&["delete", "--ignore-not-found", "-f", &path]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "", "{}", describe(&out));

    let out = lab.rpc(
        "apply",
        &serde_json::json!({"manifest": file, "ignore_not_found": true}),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("ignore_not_found"),
        "{}",
        describe(&out)
    );
}

/// `pacific delete ns team0`, as kubectl users type it, needed a manifest file (-f was
/// required); by KIND NAME it deletes those objects, with kubectl's NotFound and exit codes.
#[test]
fn delete_by_kind_and_name_as_kubectl() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qadelkn", LAB);
    lab.apply_ok(&team(0), None, None);
    lab.apply_ok(&team(1), None, None);
    let out = lab.pacific(&["delete", "svc", "web", "-n", "team0"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), r#"service "web" deleted"#);
    assert!(lab.items("svc", Some("team0")).is_empty());
    let out = lab.pacific(&["delete", "svc", "web", "-n", "team0"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).contains("not found"), "{}", describe(&out));
    let out = lab.pacific(&["delete", "ns", "team0", "team1"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        lab.items("namespaces", None).is_empty(),
        "{}",
        describe(&out)
    );
    assert!(netns_with_prefix(&lab.prefix)
        .iter()
        .all(|n| !n.contains("team")));
    let out = lab.pacific(&["delete", "ns", "team0", "--ignore-not-found"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = lab.pacific(&["delete", "bogus", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).contains("bogus"), "{}", describe(&out));
}

/// `pacific delete svc/web deploy/web`, kubectl's TYPE/NAME form, was refused with "needs a
/// NAME": it deletes those objects; a bare NAME among them is an error that deletes nothing.
#[test]
fn delete_by_kind_slash_name_as_kubectl() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qa4delsl", LAB);
    lab.apply_ok(&team(0), None, None);
    let out = lab.pacific(&["delete", "svc/web", "web", "-n", "team0"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(stderr(&out).contains("KIND/NAME"), "{}", describe(&out));
    assert_eq!(lab.items("svc", Some("team0")).len(), 1);
    let out = lab.pacific(&["delete", "svc/web", "deploy/web", "-n", "team0"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout(&out).trim(),
        "service \"web\" deleted\ndeployment.apps \"web\" deleted"
    );
    assert!(lab.items("svc", Some("team0")).is_empty());
    assert!(lab.items("deployments", Some("team0")).is_empty());
    assert!(lab.items("pods", Some("team0")).is_empty());
}

/// 300 clients that send requests and never read their answers (each blocked writing one) do
/// not lock the CLI out with busy (-32004) until the write timeout: `get ns` still answers.
#[test]
fn clients_that_never_read_do_not_lock_the_cli_out() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    if !require_netns() {
        return;
    }
    let lab = Lab::up("qa35fl");
    // 200 answers of a few KB each: more than a socket's buffers hold, so the daemon blocks
    // writing to each client after some dozens of them.
    let requests = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"dfw.list\"}\n".repeat(200);
    let mut clients = Vec::new();
    // A connect the daemon's listen backlog has no room for fails at once: tried again, so that
    // all 300 are connected (and the daemon's 256 slots full) before `get ns`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while clients.len() < 300 && std::time::Instant::now() < deadline {
        let Ok(mut c) = UnixStream::connect(&lab.socket) else {
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        let _ = c.set_nonblocking(true);
        let _ = c.write(requests.as_bytes());
        clients.push(c);
    }
    assert_eq!(clients.len(), 300, "clients connected in 20 s");
    // Their answers fill their sockets, and the daemon blocks writing to each (within a second
    // here). While they are still being served they are in a request, and busy is the right
    // answer to `get ns`; once they block, they must not hold their slots until the 120 s write
    // timeout, so `get ns` is tried for 30 s.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let started = std::time::Instant::now();
    let out = loop {
        let out = lab.pacific(&["get", "ns"]);
        if out.status.success() || started.elapsed() > std::time::Duration::from_secs(30) {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(
        out.status.success() && stdout(&out).contains("ns-dev"),
        "`get ns` beside 300 clients that never read, for 30 s:\n{}",
        describe(&out)
    );
    drop(clients);
}
