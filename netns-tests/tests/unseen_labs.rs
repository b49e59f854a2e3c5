//! Labs unlike the seed's, run as a checker on a fresh machine would: pools from RFC 2544's
//! 198.18.0.0/15 (pods 198.18.0.0/16, services 198.19.0.0/24, ingress 198.19.1.0/24, egress
//! 198.19.2.0/24), outside hosts in 198.51.100.0/24, T0 uplinks in 203.0.113.0/24.

use pacific_netns_tests::*;

const POOLS: &str = r#"apiVersion: pacific.dev/v1
kind: Pools
metadata: {name: default}
spec: {pods: 198.18.0.0/16, services: 198.19.0.0/24, ingress: 198.19.1.0/24, egress: 198.19.2.0/24}
---
apiVersion: pacific.dev/v1
kind: OutsideHost
metadata: {name: probe}
spec: {address: 198.51.100.77/24, httpPorts: [8000]}
---
apiVersion: v1
kind: Namespace
metadata: {name: alpha, annotations: {ncp/static_snat_ip: 198.19.2.9}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: alpha}
spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: alpha, labels: {app: web}}
spec: {containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: alpha}
spec:
  type: LoadBalancer
  loadBalancerIP: 198.19.1.50
  selector: {app: web}
  ports: [{port: 8080, targetPort: 80}]
"#;

/// A T0 uplink on a /31 (RFC 3021), as point-to-point peering links often are: both addresses
/// are hosts, the upstream router gets its end as a /31, and traffic crosses it both ways.
#[test]
fn a_t0_uplink_on_a_slash_31_carries_traffic_both_ways() {
    if !require_netns() {
        return;
    }
    let uplink = "apiVersion: pacific.dev/v1\nkind: Uplink\nmetadata: {name: default}\n\
                  spec: {t0Address: 203.0.113.131, peerAddress: 203.0.113.130, prefixLength: 31}\n";
    let lab = Lab::up_with("uns31", &format!("{POOLS}---\n{uplink}"));
    let addr = stdout(&lab.ip_in(&lab.upstream_netns(), &["-4", "addr", "show", "uplink"]));
    assert!(
        addr.contains("203.0.113.130/31"),
        "upstream's uplink: {addr}"
    );

    let out = lab.exec(
        "alpha/client",
        &[
            "curl",
            "-s",
            "-m",
            "3",
            "http://198.51.100.77:8000/clientip",
        ],
    );
    assert!(
        stdout(&out).starts_with("198.19.2.9:"),
        "the outside host sees the egress IP: {}",
        describe(&out)
    );
    let out = lab.exec(
        "ext/probe",
        &["curl", "-s", "-m", "3", "http://198.19.1.50:8080/hostname"],
    );
    assert_eq!(
        stdout(&out),
        "web",
        "the VIP from outside: {}",
        describe(&out)
    );
    let out = lab.exec(
        "alpha/client",
        &["traceroute", "-n", "-q1", "-w1", "198.51.100.77"],
    );
    let hops: Vec<String> = stdout(&out)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    assert_eq!(
        hops,
        ["198.18.0.1", "100.64.0.0", "203.0.113.130", "198.51.100.77"],
        "{}",
        describe(&out)
    );
}

/// `allocateLoadBalancerNodePorts: false`: the LoadBalancer gets no nodePort (kubectl's
/// PORT(S) reads `8080/TCP`), unless a port names one, and its VIP answers all the same.
#[test]
fn a_load_balancer_without_node_ports_gets_none_and_still_answers() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("unsnp", POOLS);
    lab.apply_ok(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: alpha}\n\
         spec:\n  type: LoadBalancer\n  loadBalancerIP: 198.19.1.50\n  \
         allocateLoadBalancerNodePorts: false\n  selector: {app: web}\n  \
         ports: [{name: a, port: 8080, targetPort: 80}, {name: b, port: 8081, targetPort: 80, nodePort: 31500}]\n",
        None,
        None,
    );
    let svc = lab.items("svc", Some("alpha"));
    let ports: Vec<&str> = svc
        .iter()
        .filter(|s| s["name"] == "web")
        .filter_map(|s| s["ports"].as_str())
        .collect();
    assert_eq!(ports, ["8080/TCP,8081:31500/TCP"], "{svc:?}");
    let out = lab.exec(
        "ext/probe",
        &["curl", "-s", "-m", "3", "http://198.19.1.50:8080/hostname"],
    );
    assert_eq!(
        stdout(&out),
        "web",
        "the VIP from outside: {}",
        describe(&out)
    );
}

/// Datagrams of one UDP socket (one source port) to a ClusterIP, `n` of them, each waited for
/// up to a second: how many were answered.
fn udp_answers(lab: &Lab, from: &str, ip: &str, port: u16, n: u32) -> u32 {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('0.0.0.0', 40555)); s.settimeout(1.0); s.connect(('{ip}', {port}))\n\
         ok = 0\n\
         for i in range({n}):\n\
         \x20   s.send(b'm%d' % i)\n\
         \x20   try:\n\
         \x20       ok += s.recv(100) == b'm%d' % i\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         print(ok)\n"
    );
    let out = lab.exec(from, &["python3", "-c", &script]);
    stdout(&out)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}", describe(&out)))
}

/// A UDP flow to a ClusterIP whose endpoint's pod is deleted moves to the other endpoint, as
/// kube-proxy flushes a removed UDP endpoint's conntrack entries: the same socket keeps being
/// answered, and `get nat` shows it on the pod that is left.
#[test]
fn a_udp_flow_moves_off_a_deleted_endpoint() {
    if !require_netns() {
        return;
    }
    let echo = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: alpha, labels: {{app: echo}}}}\n\
             spec: {{containers: [{{name: e, image: agnhost, ports: [{{containerPort: 5353, protocol: UDP}}]}}]}}\n"
        )
    };
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: alpha}\n\
               spec: {selector: {app: echo}, ports: [{port: 53, targetPort: 5353, protocol: UDP}]}\n";
    let lab = Lab::up_with(
        "unsudp",
        &format!(
            "{POOLS}---\n{}---\n{}---\n{svc}",
            echo("echo-a"),
            echo("echo-b")
        ),
    );
    let cip = lab.cluster_ip("alpha", "echo");
    assert_eq!(udp_answers(&lab, "alpha/client", &cip, 53, 3), 3);
    let backend_of_flow = |lab: &Lab| -> Option<String> {
        let nat = stdout(&lab.pacific(&["get", "nat", "-n", "alpha"]));
        nat.lines()
            .find(|l| l.contains(":40555 ->") && l.contains("udp"))
            .and_then(|l| l.split_whitespace().nth(7).map(str::to_string))
    };
    let before = backend_of_flow(&lab).expect("the flow in get nat");
    let ip = before.split(':').next().unwrap_or_default().to_string();
    let victim = lab.pod_name_by_ip("alpha", &ip);
    let out = lab.pacific(&["delete", "pod", &victim, "-n", "alpha"]);
    assert!(out.status.success(), "{}", describe(&out));

    assert_eq!(
        udp_answers(&lab, "alpha/client", &cip, 53, 5),
        5,
        "the flow after {victim} went"
    );
    let after = backend_of_flow(&lab).expect("the flow in get nat");
    assert_ne!(after, before, "the flow still on the deleted pod");
}

/// `get endpoints` (`get ep`), as kubectl lists them: a service's addresses, `<none>` for a
/// selector that matches no pod, a selector-less service's only once its Endpoints are applied.
#[test]
fn get_endpoints_lists_each_services_addresses() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("unsep", POOLS);
    lab.apply_ok(
        "apiVersion: v1\nkind: Service\nmetadata: {name: none, namespace: alpha}\n\
         spec: {selector: {app: nothing}, ports: [{port: 80}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: manual, namespace: alpha}\n\
         spec: {ports: [{port: 80}]}\n",
        None,
        None,
    );
    let out = lab.pacific(&["get", "ep", "-n", "alpha", "--no-headers"]);
    let rows: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().take(2).map(str::to_string).collect())
        .collect();
    let ip = lab
        .items("pods", Some("alpha"))
        .iter()
        .find(|p| p["name"] == "web")
        .and_then(|p| p["ip"].as_str().map(str::to_string))
        .unwrap_or_default();
    assert_eq!(
        rows,
        [
            vec!["none".to_string(), "<none>".into()],
            vec!["web".into(), format!("{ip}:80")]
        ],
        "{}",
        describe(&out)
    );
    lab.apply_ok(
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: manual, namespace: alpha}\n\
         subsets: [{addresses: [{ip: 198.18.0.77}], ports: [{port: 8080}]}]\n",
        None,
        None,
    );
    let out = lab.pacific(&["get", "endpoints", "manual", "-n", "alpha", "-o", "name"]);
    assert_eq!(
        stdout(&out).trim(),
        "endpoints/manual",
        "{}",
        describe(&out)
    );
}

/// A pod that is its service's only endpoint reaches itself through the ClusterIP and through
/// the VIP (hairpin): answered, from the segment's gateway address (kube-proxy masquerades a
/// hairpin connection so the answer comes back through it; NSX's DLB and SLB SNAT it).
#[test]
fn a_pod_reaches_itself_through_its_own_cluster_ip_and_vip() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("unshp", POOLS);
    let cip = lab.cluster_ip("alpha", "web");
    for url in [
        format!("http://{cip}:8080/clientip"),
        "http://198.19.1.50:8080/clientip".to_string(),
    ] {
        let out = lab.exec("alpha/web", &["curl", "-s", "-m", "3", &url]);
        assert!(
            stdout(&out).starts_with("198.18.0.1:"),
            "{url}: {}",
            describe(&out)
        );
    }
}
