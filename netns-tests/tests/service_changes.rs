//! What connections already open see when a user changes a Service or a namespace under them,
//! compared with kube-proxy (its conntrack keeps the translation of established flows; its
//! rules see only new connections) and NSX.
//!
//! Address plan: pods 198.18.0.0/16, services 198.19.0.0/24, ingress 198.19.1.0/24, egress
//! 198.19.2.0/24; T0 uplink 203.0.113.0/24; outside hosts `client` 198.51.100.20 and `web`
//! 198.51.100.200.

use std::path::{Path, PathBuf};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use pacific_netns_tests::*;
use serde_json::Value;

const TESTER: &str = "shop/tester";
const CLIENT: &str = "ext/client";
const WEB_IP: &str = "198.51.100.200";

/// The lab: namespace `shop` (egress IP `egress`), 2 api replicas serving HTTP on 9090, a
/// tester pod, outside hosts `client` and `web`.
fn lab_yaml(egress: &str) -> String {
    format!(
        r#"apiVersion: pacific.dev/v1
kind: Pools
metadata: {{name: default}}
spec: {{pods: 198.18.0.0/16, services: 198.19.0.0/24, ingress: 198.19.1.0/24, egress: 198.19.2.0/24}}
---
apiVersion: pacific.dev/v1
kind: Uplink
metadata: {{name: default}}
spec: {{t0Address: 203.0.113.2, peerAddress: 203.0.113.1, prefixLength: 24}}
---
apiVersion: pacific.dev/v1
kind: OutsideHost
metadata: {{name: client}}
spec: {{address: 198.51.100.20/24}}
---
apiVersion: pacific.dev/v1
kind: OutsideHost
metadata: {{name: web}}
spec: {{address: 198.51.100.200/24, httpPorts: [80]}}
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {{ncp/static_snat_ip: {egress}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: api, namespace: shop}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: api}}}}
  template:
    metadata: {{labels: {{app: api}}}}
    spec:
      containers:
      - name: api
        image: registry.k8s.io/e2e-test-images/agnhost:2.39
        ports: [{{containerPort: 9090}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: tester, namespace: shop}}
spec:
  containers: [{{name: tester, image: busybox}}]
"#
    )
}

/// Service `name` in `shop` over the api pods: `port` -> 9090, of `kind` (`ClusterIP` or
/// `LoadBalancer`), with `extra` lines added to its spec and `annotations` to its metadata.
fn svc(name: &str, kind: &str, port: u16, extra: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\n  \
         annotations: {{{annotations}}}\nspec:\n  type: {kind}\n{extra}  ports:\n  - port: {port}\n    \
         targetPort: 9090\n  selector: {{app: api}}\n"
    )
}

struct Held<'s> {
    handle: ScopedJoinHandle<'s, std::process::Output>,
    go: PathBuf,
    out: PathBuf,
    held: Vec<String>,
}

/// Opens `n` connections from `from` to `ip:port` asking `path`, and waits until each answered.
fn hold<'s>(
    scope: &'s Scope<'s, '_>,
    lab: &'s Lab,
    from: &'s str,
    (ip, port): (&str, u16),
    n: usize,
    path: &str,
    name: &str,
) -> Held<'s> {
    let script = lab.dir.join("hold.sh");
    std::fs::write(&script, HOLD_SCRIPT).expect("write hold.sh");
    let go = lab.dir.join(format!("{name}.go"));
    let out = lab.dir.join(format!("{name}.out"));
    let _ = std::fs::remove_file(&go);
    let _ = std::fs::remove_file(&out);
    let args = [
        "timeout".to_string(),
        "60".to_string(),
        "bash".to_string(),
        script.display().to_string(),
        ip.to_string(),
        port.to_string(),
        n.to_string(),
        path.to_string(),
        go.display().to_string(),
        out.display().to_string(),
    ];
    let handle = scope.spawn(move || {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.exec(from, &argv)
    });
    let ok = wait_until(Duration::from_secs(30), || lines(&out, "held").len() >= n);
    let held = lines(&out, "held");
    assert!(
        ok && held.iter().all(|h| h != "none"),
        "{name}: the connections never all answered: {held:?}"
    );
    Held {
        handle,
        go,
        out,
        held,
    }
}

impl Held<'_> {
    /// Lets the script ask again on each connection; the answers.
    fn again(self) -> Vec<String> {
        std::fs::write(&self.go, "").expect("create the go file");
        let done = self.handle.join().expect("the hold thread");
        let again = lines(&self.out, "again");
        assert_eq!(again.len(), self.held.len(), "{}", describe(&done));
        again
    }
}

/// Where `HOLD_SCRIPT` notes each answer it waited out (see there).
fn silent_file(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".silent");
    PathBuf::from(name)
}

fn lines(out: &Path, word: &str) -> Vec<String> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(word)?.strip_prefix(' ').map(str::to_string))
        .collect()
}

/// `curl` from `from`: its exit code and body (3 s at most).
fn curl_exit(lab: &Lab, from: &str, url: &str) -> (i32, String) {
    let o = lab.exec(from, &["curl", "-s", "--max-time", "3", url]);
    (o.status.code().unwrap_or(-1), stdout(&o))
}

fn vip(lab: &Lab, name: &str) -> String {
    lab.service_vip(name)
        .unwrap_or_else(|| panic!("{name} has no VIP: {}", Value::Array(lab.services())))
}

#[test]
fn a_port_change_keeps_connections_on_the_old_port() {
    if !require_netns() {
        return;
    }
    // `port: 80` -> `port: 8080`: kube-proxy's rules for :80 go, but the conntrack entries of
    // connections open on :80 keep their translation; new connections to :80 are refused as to
    // any unused port, those to :8080 are balanced.
    let lab = Lab::up_with("svchgprt", &lab_yaml("198.19.2.5"));
    let both = |port| {
        format!(
            "{}---\n{}",
            svc("api", "ClusterIP", port, "", ""),
            svc("api-public", "LoadBalancer", port, "", "")
        )
    };
    lab.apply_ok(&both(80), None, None);
    let cluster_ip = lab.cluster_ip("shop", "api");
    let vip = vip(&lab, "api-public");
    curl_until(
        &lab,
        CLIENT,
        &format!("http://{vip}/hostname"),
        Duration::from_secs(20),
    );
    std::thread::scope(|s| {
        let via_cip = hold(s, &lab, TESTER, (&cluster_ip, 80), 2, "/hostname", "cip");
        let via_vip = hold(s, &lab, CLIENT, (&vip, 80), 2, "/hostname", "vip");
        let pod_vip = hold(s, &lab, TESTER, (&vip, 80), 2, "/hostname", "podvip");
        lab.apply_ok(&both(8080), None, None);
        let held = [
            ("ClusterIP", via_cip),
            ("VIP", via_vip),
            ("a pod's VIP", pod_vip),
        ];
        for (name, h) in held {
            let before = h.held.clone();
            assert_eq!(
                h.again(),
                before,
                "{name}: connections open on the old port go on with their pods"
            );
        }
    });
    for (from, ip) in [(TESTER, &cluster_ip), (CLIENT, &vip)] {
        let (code, _) = curl_exit(&lab, from, &format!("http://{ip}/hostname"));
        assert_eq!(code, 7, "{ip}:80 refuses a new connection (curl exit 7)");
        let (code, body) = curl_exit(&lab, from, &format!("http://{ip}:8080/hostname"));
        assert!(
            code == 0 && body.starts_with("api-"),
            "{ip}:8080: {code} {body:?}"
        );
    }
}

#[test]
fn a_vip_withdrawn_or_moved_ends_its_connections() {
    if !require_netns() {
        return;
    }
    // LoadBalancer -> ClusterIP, or a new `loadBalancerIP`: NCP deletes the virtual server and
    // the T1 stops advertising the VIP, so the upstream router no longer sends its packets here
    // (as MetalLB withdrawing the address in front of kube-proxy): connections through the old
    // VIP end, however long conntrack would hold them. Those through the ClusterIP go on, and
    // so do a pod's through the VIP.
    let lab = Lab::up_with("svchgvip", &lab_yaml("198.19.2.5"));
    let lb = |extra: &str| svc("api", "LoadBalancer", 80, extra, "");
    lab.apply_ok(&lb(""), None, None);
    let cluster_ip = lab.cluster_ip("shop", "api");
    let old = vip(&lab, "api");
    curl_until(
        &lab,
        CLIENT,
        &format!("http://{old}/hostname"),
        Duration::from_secs(20),
    );
    std::thread::scope(|s| {
        let via_cip = hold(s, &lab, TESTER, (&cluster_ip, 80), 2, "/hostname", "tcip");
        let via_vip = hold(s, &lab, CLIENT, (&old, 80), 2, "/hostname", "tvip");
        let pod_vip = hold(s, &lab, TESTER, (&old, 80), 2, "/hostname", "tpvip");
        lab.apply_ok(&svc("api", "ClusterIP", 80, "", ""), None, None);
        let before = via_cip.held.clone();
        assert_eq!(via_cip.again(), before, "the ClusterIP's connections go on");
        // A pod's own connections through the VIP never leave the dataplane: as kube-proxy's
        // in-cluster shortcut for a LoadBalancer IP, conntrack keeps them.
        let before = pod_vip.held.clone();
        assert_eq!(
            pod_vip.again(),
            before,
            "a pod's connections via the VIP go on"
        );
        assert_eq!(via_vip.again(), ["none", "none"], "the VIP is gone");
    });
    assert_ne!(
        curl_exit(&lab, CLIENT, &format!("http://{old}/hostname")).0,
        0
    );
    // Back to LoadBalancer, then moved to another address of the ingress pool.
    lab.apply_ok(&lb(""), None, None);
    let first = vip(&lab, "api");
    let moved = if first == "198.19.1.77" {
        "198.19.1.78"
    } else {
        "198.19.1.77"
    };
    curl_until(
        &lab,
        CLIENT,
        &format!("http://{first}/hostname"),
        Duration::from_secs(20),
    );
    std::thread::scope(|s| {
        let via_vip = hold(s, &lab, CLIENT, (&first, 80), 2, "/hostname", "mvip");
        lab.apply_ok(&lb(&format!("  loadBalancerIP: {moved}\n")), None, None);
        assert_eq!(via_vip.again(), ["none", "none"], "the old VIP is gone");
    });
    assert_eq!(vip(&lab, "api"), moved);
    let (code, body) = curl_exit(&lab, CLIENT, &format!("http://{moved}/hostname"));
    assert!(
        code == 0 && body.starts_with("api-"),
        "{moved}: {code} {body:?}"
    );
    assert_ne!(
        curl_exit(&lab, CLIENT, &format!("http://{first}/hostname")).0,
        0
    );
}

#[test]
fn an_egress_ip_change_resets_open_snat_connections() {
    if !require_netns() {
        return;
    }
    // A new `ncp/static_snat_ip`: the old address goes back to the pool (another namespace may
    // get it), and the outside host knows the connection by it. As Linux MASQUERADE when its
    // address changes, the connections translated to the old address end; new ones leave with
    // the new address.
    let lab = Lab::up_with("svchgsnt", &lab_yaml("198.19.2.5"));
    let seen = curl_until(
        &lab,
        TESTER,
        &format!("http://{WEB_IP}/clientip"),
        Duration::from_secs(20),
    );
    assert!(seen.starts_with("198.19.2.5:"), "{seen}");
    std::thread::scope(|s| {
        let open = hold(s, &lab, TESTER, (WEB_IP, 80), 2, "/clientip", "snat");
        assert!(
            open.held.iter().all(|h| h.starts_with("198.19.2.5:")),
            "{:?}",
            open.held
        );
        lab.apply_ok(&lab_yaml("198.19.2.6"), None, None);
        let silent = silent_file(&open.out);
        assert_eq!(
            open.again(),
            ["none", "none"],
            "the connections on the old address end"
        );
        // Reset, not left silent: the hold script waited out none of its 3 s for an answer
        // (told by the script itself, not by a clock a loaded machine slows).
        assert!(
            !silent.exists(),
            "a connection on the old address went silent instead of being reset: {}",
            std::fs::read_to_string(&silent).unwrap_or_default()
        );
    });
    let (code, body) = curl_exit(&lab, TESTER, &format!("http://{WEB_IP}/clientip"));
    assert!(
        code == 0 && body.starts_with("198.19.2.6:"),
        "{code} {body:?}"
    );
}

#[test]
fn affinity_and_algorithm_changes_keep_open_connections() {
    if !require_netns() {
        return;
    }
    // sessionAffinity and the lb-algorithm decide only where new connections go, as
    // kube-proxy's rules (and NSX's pool algorithm) do: the open ones stay with their pods.
    let lab = Lab::up_with("svchgalg", &lab_yaml("198.19.2.5"));
    let plain = svc("api", "LoadBalancer", 80, "", "");
    let sticky = svc(
        "api",
        "LoadBalancer",
        80,
        "  sessionAffinity: ClientIP\n",
        "",
    );
    let hashed = svc(
        "api",
        "LoadBalancer",
        80,
        "  sessionAffinity: ClientIP\n",
        "pacific.dev/lb-algorithm: source-ip-hash",
    );
    let lc = svc(
        "api",
        "LoadBalancer",
        80,
        "",
        "pacific.dev/lb-algorithm: least-connections",
    );
    lab.apply_ok(&plain, None, None);
    let cluster_ip = lab.cluster_ip("shop", "api");
    let vip = vip(&lab, "api");
    curl_until(
        &lab,
        CLIENT,
        &format!("http://{vip}/hostname"),
        Duration::from_secs(20),
    );
    for (i, next) in [&sticky, &hashed, &lc, &plain].into_iter().enumerate() {
        std::thread::scope(|s| {
            let via_cip = hold(
                s,
                &lab,
                TESTER,
                (&cluster_ip, 80),
                4,
                "/hostname",
                &format!("c{i}"),
            );
            let via_vip = hold(
                s,
                &lab,
                CLIENT,
                (&vip, 80),
                4,
                "/hostname",
                &format!("v{i}"),
            );
            let pod_vip = hold(
                s,
                &lab,
                TESTER,
                (&vip, 80),
                2,
                "/hostname",
                &format!("p{i}"),
            );
            lab.apply_ok(next, None, None);
            let held = [
                ("ClusterIP", via_cip),
                ("VIP", via_vip),
                ("a pod's VIP", pod_vip),
            ];
            for (name, h) in held {
                let before = h.held.clone();
                assert_eq!(
                    h.again(),
                    before,
                    "{name}, change {i}: the connections stay"
                );
            }
        });
    }
}
