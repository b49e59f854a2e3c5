//! The world outside T0 as the manifests describe it: an `Uplink` other than the default, a
//! change of it on a live lab, outside hosts on subnets of their own, changed and deleted at run
//! time, and pool addresses nobody holds (which must not loop between the router and T0).
//!
//! Address plan: pods 10.244.0.0/16, services 10.96.0.0/16, ingress 10.80.0.0/16, egress
//! 10.60.0.0/16 (inside the lab's namespaces only); T0 uplink 203.0.113.10/29 (peer .9), later
//! moved to 203.0.113.130/25 (peer .129); outside hosts `web` 198.51.100.50/24 and `far`
//! 203.0.113.77/27.

use std::process::Output;
use std::time::Duration;

use pacific_netns_tests::*;

const LAB: &str = r#"apiVersion: pacific.dev/v1
kind: Pools
metadata:
  name: default
spec:
  pods: 10.244.0.0/16
  services: 10.96.0.0/16
  ingress: 10.80.0.0/16
  egress: 10.60.0.0/16
---
apiVersion: pacific.dev/v1
kind: Uplink
metadata:
  name: default
spec:
  t0Address: 203.0.113.10
  peerAddress: 203.0.113.9
  prefixLength: 29
---
apiVersion: pacific.dev/v1
kind: OutsideHost
metadata:
  name: web
spec:
  address: 198.51.100.50/24
  httpPorts: [80]
---
apiVersion: pacific.dev/v1
kind: OutsideHost
metadata:
  name: far
spec:
  address: 203.0.113.77/27
  httpPorts: [80]
---
apiVersion: v1
kind: Namespace
metadata:
  name: team-a
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: team-a
spec:
  replicas: 1
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
      - name: api
        image: api
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: team-a
spec:
  type: LoadBalancer
  selector: {app: api}
  ports:
  - port: 443
    targetPort: 8080
"#;

fn curl(lab: &Lab, from: &str, url: &str) -> Output {
    lab.exec(from, &["curl", "-s", "-m", "3", url])
}

/// Pod -> outside (egress SNAT) and outside -> VIP both work.
fn assert_north_south(lab: &Lab, when: &str) {
    let pod = "team-a/api";
    let out = curl(lab, pod, "http://198.51.100.50/clientip");
    assert!(
        stdout(&out).starts_with("10.60.0.1:"),
        "{when}: pod -> outside should leave as 10.60.0.1:\n{}\n--- upstream ---\n{}",
        describe(&out),
        stdout(&lab.ip_in(&lab.upstream_netns(), &["addr"]))
    );
    let vip = lab.service_vip("api").expect("api has a VIP");
    let out = curl(lab, "ext/far", &format!("http://{vip}:443/hostname"));
    assert!(
        stdout(&out).starts_with("api-"),
        "{when}: outside -> VIP {vip}:\n{}",
        describe(&out)
    );
}

#[test]
fn uplink_and_outside_hosts_follow_the_manifests() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qaout", LAB);
    let upstream = lab.upstream_netns();

    // The router holds the Uplink's peer address, not the default 203.0.113.1/24.
    let addrs = stdout(&lab.ip_in(&upstream, &["-br", "addr", "show", "dev", "uplink"]));
    assert!(addrs.contains("203.0.113.9/29"), "{addrs}");
    assert!(
        stdout(&lab.up_output).contains("behind the upstream router, 203.0.113.9"),
        "{}",
        stdout(&lab.up_output)
    );
    assert_north_south(&lab, "custom uplink");

    // A pool address no segment, VIP or egress IP holds is not bounced between the router and
    // T0 until its TTL runs out.
    for unused in ["10.244.200.5", "10.96.0.99", "10.80.3.3", "10.60.3.3"] {
        let out = lab.exec("ext/web", &["ping", "-c", "1", "-W", "1", unused]);
        assert!(
            !stdout(&out).contains("Time to live exceeded"),
            "{unused} loops:\n{}",
            describe(&out)
        );
    }

    // The uplink moves on a live lab.
    lab.apply_ok(
        "apiVersion: pacific.dev/v1\nkind: Uplink\nmetadata: {name: default}\nspec: {t0Address: 203.0.113.130, peerAddress: 203.0.113.129, prefixLength: 25}\n",
        None,
        None,
    );
    let addrs = stdout(&lab.ip_in(&upstream, &["-br", "addr", "show", "dev", "uplink"]));
    assert!(
        addrs.contains("203.0.113.129/25") && !addrs.contains("203.0.113.9/"),
        "{addrs}"
    );
    assert_north_south(&lab, "moved uplink");

    // An outside host re-applied with another address and port is rebuilt with them.
    lab.apply_ok(
        "apiVersion: pacific.dev/v1\nkind: OutsideHost\nmetadata: {name: far}\nspec: {address: 203.0.113.78/27, httpPorts: [80, 8000]}\n",
        None,
        None,
    );
    let out = curl(&lab, "team-a/api", "http://203.0.113.78:8000/clientip");
    assert!(
        stdout(&out).starts_with("10.60.0.1:"),
        "changed host:\n{}",
        describe(&out)
    );

    // Hosts the router could not serve are refused whole, naming the field; nothing changes.
    let before = lab.get_json("outside", None);
    for bad in [
        // Its own subnet's first address: the router's gateway there.
        "198.51.100.129/25",
        // On the uplink transit.
        "203.0.113.140/25",
        // No room for a gateway.
        "198.51.100.77/32",
        // Its subnet covers the pod pool.
        "10.1.2.3/8",
    ] {
        let out = lab.apply(
            &format!("apiVersion: pacific.dev/v1\nkind: OutsideHost\nmetadata: {{name: bad}}\nspec: {{address: {bad}}}\n"),
            None,
            None,
        );
        assert!(
            !out.status.success() && stderr(&out).contains("spec.address"),
            "{bad} accepted:\n{}",
            describe(&out)
        );
    }
    // An Uplink onto the hosts' subnet is refused too.
    let out = lab.apply(
        "apiVersion: pacific.dev/v1\nkind: Uplink\nmetadata: {name: default}\nspec: {t0Address: 198.51.100.2, peerAddress: 198.51.100.1, prefixLength: 24}\n",
        None,
        None,
    );
    assert!(!out.status.success(), "{}", describe(&out));
    assert_eq!(lab.get_json("outside", None), before);

    // A deleted host's gateway address leaves the router's host bridge.
    lab.apply_ok(
        "apiVersion: pacific.dev/v1\nkind: OutsideHost\nmetadata: {name: tmp}\nspec: {address: 198.51.100.202/29}\n",
        None,
        None,
    );
    let br = || stdout(&lab.ip_in(&upstream, &["-br", "addr", "show", "dev", "br0"]));
    assert!(br().contains("198.51.100.201/29"), "{}", br());
    let out = lab.delete(
        "apiVersion: pacific.dev/v1\nkind: OutsideHost\nmetadata: {name: tmp}\n",
        None,
        None,
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!br().contains("198.51.100.201/29"), "{}", br());
}

/// The upstream router's uplink goes down and comes back (`ip link set uplink down`, `up`):
/// Linux took every route through it away with the link, as a BGP session would withdraw them;
/// the session comes back with the link and so do the routes: the pod reaches the outside
/// again and the outside the VIP (they stayed unreachable until the next change).
#[test]
fn a_flap_of_the_routers_uplink_gives_its_routes_back() {
    if !require_netns() {
        return;
    }
    let lab = Lab::up_with("qa4flap", LAB);
    let upstream = lab.upstream_netns();
    assert_north_south(&lab, "before the flap");
    let vip = lab.service_vip("api").expect("api has a VIP");
    let link = |state: &str| {
        let out = lab.ip_in(&upstream, &["link", "set", "dev", "uplink", state]);
        assert!(out.status.success(), "{}", describe(&out));
    };
    link("down");
    let bgp = || stdout(&lab.ip_in(&upstream, &["route", "show", "proto", "bgp"]));
    assert!(
        !bgp().contains(&vip),
        "the link took its routes:\n{}",
        bgp()
    );
    // Long enough for the daemon to see the link down.
    std::thread::sleep(Duration::from_secs(3));
    link("up");
    let back = wait_until(Duration::from_secs(15), || {
        stdout(&curl(
            &lab,
            "ext/far",
            &format!("http://{vip}:443/hostname"),
        ))
        .starts_with("api-")
    });
    assert!(
        back,
        "the VIP {vip} stays unreachable after the flap; the router's routes:\n{}",
        stdout(&lab.ip_in(&upstream, &["route"]))
    );
    assert_north_south(&lab, "after the flap");
}
