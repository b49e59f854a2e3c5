//! `networking.k8s.io/v1 NetworkPolicy` as a network engineer checks it: curl, nc and ping
//! between pods before a policy, with it and after it is deleted. A pod a policy selects takes
//! only what some policy allows in that direction (the DFW drops the rest silently, so a denied
//! client times out rather than being refused); pods no policy selects keep the namespace's
//! defaults.
//!
//! Address plan: the seed's pools (pods 172.211.0.0/16, inside the lab's namespaces only);
//! outside hosts `client` 198.51.100.20 and `web` 198.51.100.200, both serving HTTP on 80.

use std::time::Duration;

use pacific_netns_tests::*;

const LAB: &str = r#"apiVersion: pacific.dev/v1
kind: OutsideHost
metadata:
  name: client
spec:
  address: 198.51.100.20/24
  httpPorts: [80]
---
apiVersion: pacific.dev/v1
kind: OutsideHost
metadata:
  name: web
spec:
  address: 198.51.100.200/24
  httpPorts: [80]
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: Namespace
metadata:
  name: bank
  labels:
    team: money
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  containers:
  - name: web
    image: nginx
    ports:
    - containerPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: db
  namespace: shop
  labels: {app: db}
spec:
  containers:
  - name: mysql
    image: mysql
    ports:
    - name: mysql
      containerPort: 3306
---
apiVersion: v1
kind: Pod
metadata:
  name: other
  namespace: shop
  labels: {app: other}
spec:
  containers:
  - name: other
    image: busybox
    ports:
    - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: shop
spec:
  selector: {app: db}
  ports:
  - port: 3306
---
apiVersion: v1
kind: Pod
metadata:
  name: teller
  namespace: bank
  labels: {app: teller}
spec:
  containers:
  - name: teller
    image: busybox
"#;

/// "Only app=web may reach app=db, on its port" (the port by name: `mysql`, 3306 on db).
const DB_FROM_WEB: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-from-web
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: db}
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: web}
    ports:
    - protocol: TCP
      port: mysql
"#;

/// The pods of namespaces labelled team=money may reach db too.
const DB_FROM_BANK: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-from-bank
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: db}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {team: money}
    ports:
    - port: 3306
"#;

/// other may reach db and 198.51.100.0/24 except the web host, nothing else.
const OTHER_EGRESS: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: other-egress
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: other}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector:
        matchLabels: {app: db}
    ports:
    - port: 3306
  - to:
    - ipBlock:
        cidr: 198.51.100.0/24
        except: [198.51.100.200/32]
"#;

/// `curl` from `from` with a 2 s limit: its body and exit code (28: timed out; 7: refused).
fn curl_rc(lab: &Lab, from: &str, url: &str) -> (String, i32) {
    let out = lab.sh(
        from,
        &format!("curl -s --max-time 2 {url}; rc=$?; echo; echo rc=$rc"),
    );
    let text = stdout(&out);
    let rc = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("rc="))
        .and_then(|rc| rc.trim().parse().ok())
        .unwrap_or(-1);
    let body = text
        .lines()
        .filter(|l| !l.starts_with("rc=") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    (body, rc)
}

/// `nc -z -w 2 IP PORT` from `from`: true when the connection was made.
fn nc_connects(lab: &Lab, from: &str, ip: &str, port: u16) -> bool {
    lab.exec(from, &["nc", "-z", "-w", "2", ip, &port.to_string()])
        .status
        .success()
}

fn ip_of(lab: &Lab, ns: &str, name: &str) -> String {
    let pods = lab.items("pods", Some(ns));
    pods.iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["ip"].as_str())
        .unwrap_or_else(|| panic!("no pod {ns}/{name}: {pods:?}"))
        .to_string()
}

/// The answer of db's test server (its pod name) to `from`, asserted.
fn assert_reaches(lab: &Lab, from: &str, url: &str, want: &str, when: &str) {
    let (body, rc) = curl_rc(lab, from, url);
    assert_eq!(
        (body.as_str(), rc),
        (want, 0),
        "{when}: {from} -> {url} should answer {want}"
    );
}

/// A denied connection: curl times out (the DFW drops silently, nothing refuses it).
fn assert_times_out(lab: &Lab, from: &str, url: &str, when: &str) {
    let (body, rc) = curl_rc(lab, from, url);
    assert_eq!(
        (body.as_str(), rc),
        ("", 28),
        "{when}: {from} -> {url} should time out"
    );
}

#[test]
fn network_policies_allow_what_they_name_and_isolate_the_rest() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("npol", LAB);
    let db = ip_of(&lab, "shop", "db");
    let other = ip_of(&lab, "shop", "other");
    let cluster_ip = lab.cluster_ip("shop", "db");
    let db_url = format!("http://{db}:3306/hostname");
    let svc_url = format!("http://{cluster_ip}:3306/hostname");
    let other_url = format!("http://{other}:8080/hostname");
    assert_eq!(
        curl_until(&lab, "shop/web", &db_url, Duration::from_secs(20)),
        "db",
        "db's server does not answer"
    );

    // Before any policy: every pod of shop reaches db; bank's pod does not (namespace default).
    for from in ["shop/web", "shop/other"] {
        assert_reaches(&lab, from, &db_url, "db", "no policy");
        assert_reaches(&lab, from, &svc_url, "db", "no policy, ClusterIP");
        assert!(
            ping_until(&lab, from, &db, Duration::from_secs(5)),
            "{from} pings db"
        );
    }
    assert_times_out(&lab, "bank/teller", &db_url, "no policy, other namespace");
    assert_reaches(
        &lab,
        "shop/other",
        "http://198.51.100.200/hostname",
        "web",
        "no policy, outside",
    );

    // db takes only web, on its port.
    let out = lab.apply_ok(DB_FROM_WEB, None, None);
    assert!(
        stdout(&out).contains("networkpolicy.networking.k8s.io/db-from-web created"),
        "{}",
        describe(&out)
    );
    let listing = stdout(&lab.pacific(&["get", "netpol", "-n", "shop"]));
    assert!(
        listing.contains("POD-SELECTOR")
            && listing
                .lines()
                .any(|l| l.starts_with("db-from-web") && l.contains("app=db")),
        "{listing}"
    );
    assert_reaches(&lab, "shop/web", &db_url, "db", "db-from-web");
    assert_reaches(&lab, "shop/web", &svc_url, "db", "db-from-web, ClusterIP");
    assert!(nc_connects(&lab, "shop/web", &db, 3306), "web's nc to db");
    assert_times_out(&lab, "shop/other", &db_url, "db-from-web");
    assert_times_out(&lab, "shop/other", &svc_url, "db-from-web, ClusterIP");
    assert!(
        !nc_connects(&lab, "shop/other", &db, 3306),
        "other's nc to db"
    );
    assert_eq!(
        ping_received(&lab, "shop/web", &db, 2),
        0,
        "web's ping to db"
    );
    assert_eq!(
        ping_received(&lab, "shop/other", &db, 2),
        0,
        "other's ping to db"
    );
    // Pods no policy selects keep the defaults: web still reaches other.
    assert_reaches(
        &lab,
        "shop/web",
        &other_url,
        "other",
        "db-from-web, unselected",
    );
    assert!(lab.dfw_hits("shop", "shop/db-from-web/ingress-0") >= 3);
    assert!(lab.dfw_hits("shop", "shop/db-from-web/isolate-ingress") >= 3);
    let dfw = stdout(&lab.pacific(&["get", "dfw", "-n", "shop"]));
    assert!(
        dfw.lines().any(|l| l.contains("shop/db-from-web/ingress-0")
            && l.contains(&format!("{db}/32"))
            && l.contains("tcp/3306")),
        "{dfw}"
    );

    // A namespaceSelector lets bank's pod in, ahead of the namespace default that drops it.
    lab.apply_ok(DB_FROM_BANK, None, None);
    assert_reaches(&lab, "bank/teller", &db_url, "db", "db-from-bank");
    assert_times_out(&lab, "shop/other", &db_url, "db-from-bank");
    assert_reaches(&lab, "shop/web", &db_url, "db", "db-from-bank");

    // Deleting the policies gives the defaults back.
    let out = lab.pacific(&[
        "delete",
        "netpol",
        "db-from-web",
        "db-from-bank",
        "-n",
        "shop",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(lab.items("netpol", Some("shop")).is_empty());
    assert_reaches(&lab, "shop/other", &db_url, "db", "deleted");
    assert!(
        ping_until(&lab, "shop/other", &db, Duration::from_secs(5)),
        "other pings db"
    );
    assert_times_out(&lab, "bank/teller", &db_url, "deleted, other namespace");

    // An egress policy: other reaches db (also through its ClusterIP) and the client host, not
    // the web host that the ipBlock excepts.
    lab.apply_ok(OTHER_EGRESS, None, None);
    assert_times_out(
        &lab,
        "shop/other",
        "http://198.51.100.200/hostname",
        "other-egress",
    );
    assert_reaches(
        &lab,
        "shop/other",
        "http://198.51.100.20/hostname",
        "client",
        "other-egress",
    );
    assert_reaches(&lab, "shop/other", &db_url, "db", "other-egress");
    assert_reaches(
        &lab,
        "shop/other",
        &svc_url,
        "db",
        "other-egress, ClusterIP",
    );
    assert_eq!(
        ping_received(&lab, "shop/other", &db, 2),
        0,
        "other's ping to db"
    );
    // Connections to other still come in (egress isolation leaves their replies alone).
    assert_reaches(
        &lab,
        "shop/web",
        &other_url,
        "other",
        "other-egress, ingress",
    );
    assert_reaches(
        &lab,
        "shop/web",
        "http://198.51.100.200/hostname",
        "web",
        "other-egress, unselected",
    );
}

/// db isolated both ways, as `policyTypes: [Ingress, Egress]` with no rules does it.
const DB_DENY_ALL: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-deny-all
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: db}
  policyTypes: [Ingress, Egress]
"#;

/// A dual-stack "egress only to the client host" policy, as users copy it: the IPv6 block
/// names nothing here, the IPv4 one still allows.
const OTHER_DUAL_STACK: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: other-dual-stack
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: other}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 198.51.100.20/32}
    - ipBlock: {cidr: "2001:db8::/64"}
"#;

/// A pod cannot block access to itself: db, isolated both ways, still reaches itself through
/// its own ClusterIP, while web does not reach it. A dual-stack policy applies.
#[test]
fn an_isolated_pod_reaches_itself_and_a_dual_stack_policy_applies() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("npself", LAB);
    let db = ip_of(&lab, "shop", "db");
    let svc_url = format!("http://{}:3306/hostname", lab.cluster_ip("shop", "db"));
    assert_eq!(
        curl_until(
            &lab,
            "shop/web",
            &format!("http://{db}:3306/hostname"),
            Duration::from_secs(20)
        ),
        "db",
        "db's server does not answer"
    );
    lab.apply_ok(DB_DENY_ALL, None, None);
    assert_reaches(&lab, "shop/db", &svc_url, "db", "db-deny-all, db to itself");
    assert_times_out(&lab, "shop/web", &svc_url, "db-deny-all, web to db");

    let out = lab.apply(OTHER_DUAL_STACK, None, None);
    assert!(out.status.success(), "{}", describe(&out));
    assert_reaches(
        &lab,
        "shop/other",
        "http://198.51.100.20/hostname",
        "client",
        "other-dual-stack",
    );
    assert_times_out(
        &lab,
        "shop/other",
        "http://198.51.100.200/hostname",
        "other-dual-stack, not named",
    );
}

/// A default deny of both directions for shop, DNS-like UDP 53 out of every pod, UDP 5000-5353
/// into dns, an ipBlock (less one host) into db, whose LoadBalancer keeps the client's address.
const UDP_AND_VIP: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: dns
  namespace: shop
  labels: {app: dns}
spec:
  containers:
  - name: dns
    ports:
    - {name: dns, containerPort: 53, protocol: UDP}
    - {containerPort: 5353, protocol: UDP}
    - {containerPort: 6000, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata:
  name: db-lb
  namespace: shop
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: db}
  ports:
  - port: 80
    targetPort: 3306
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny
  namespace: shop
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-dns
  namespace: shop
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports:
    - {protocol: UDP, port: 53}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: dns-in
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: dns}
  ingress:
  - from:
    - namespaceSelector: {}
    ports:
    - {protocol: UDP, port: dns}
    - {protocol: UDP, port: 5000, endPort: 5353}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db-from-outside
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: db}
  ingress:
  - from:
    - ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.200/32]}
"#;

/// One datagram from `from` to IP:PORT: what dns's UDP echo sends back (empty: nothing).
fn udp_echo(lab: &Lab, from: &str, ip: &str, port: u16) -> String {
    let out = lab.sh(
        from,
        &format!("echo ping-{port} | timeout 3 nc -u -w 1 {ip} {port}"),
    );
    stdout(&out).trim().to_string()
}

#[test]
fn a_default_deny_lets_udp_53_out_and_a_local_vip_in_from_its_ip_block() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("npudp", LAB);
    let db = ip_of(&lab, "shop", "db");
    assert_eq!(
        curl_until(
            &lab,
            "shop/web",
            &format!("http://{db}:3306/hostname"),
            Duration::from_secs(20)
        ),
        "db",
        "db's server does not answer"
    );
    lab.apply_ok(UDP_AND_VIP, None, None);
    let dns = ip_of(&lab, "shop", "dns");
    let vip = lab.service_vip("db-lb").unwrap_or_default();
    let echoed = wait_until(Duration::from_secs(10), || {
        udp_echo(&lab, "shop/web", &dns, 53) == "ping-53"
    });
    assert!(echoed, "web's UDP 53 to dns is allowed both ways");
    // Web's egress allows only UDP 53; dns takes 5000-5353 from any namespace.
    assert_eq!(
        udp_echo(&lab, "shop/web", &dns, 5353),
        "",
        "web's egress to 5353"
    );
    assert_eq!(
        udp_echo(&lab, "bank/teller", &dns, 5353),
        "ping-5353",
        "endPort"
    );
    assert_eq!(
        udp_echo(&lab, "bank/teller", &dns, 6000),
        "",
        "past endPort"
    );
    assert_times_out(
        &lab,
        "shop/web",
        &format!("http://{db}:3306/hostname"),
        "TCP out of web",
    );
    // db's egress is denied, yet its replies to an allowed client pass: policies are stateful.
    assert!(!vip.is_empty(), "db-lb has no VIP");
    let (body, rc) = curl_rc(&lab, "ext/client", &format!("http://{vip}/clientip"));
    assert_eq!(rc, 0, "client through the Local VIP, in the ipBlock");
    assert!(
        body.starts_with("198.51.100.20:"),
        "db sees the client: {body}"
    );
    assert_times_out(
        &lab,
        "ext/web",
        &format!("http://{vip}/hostname"),
        "the excepted host",
    );
}
